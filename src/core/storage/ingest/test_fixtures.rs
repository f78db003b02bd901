//! Shared test fixtures for the ingest parts: option sets, a temporary
//! destination with an `outside/` that must stay empty, raw tar archives
//! built block by block, gzip/zstd encoders and the common checks. Test
//! code only (the whole module is `#[cfg(test)]`): compiled for
//! `cargo test`, never into the daemon.

#[cfg(test)]
pub(super) use fixtures::*;

#[cfg(test)]
mod fixtures {
    use std::fs;
    use std::io::{self, Write};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};

    use super::super::walk::BLOCK;
    use super::super::{extract, IngestError, Limits, Options, Report};

    pub(crate) fn opts() -> Options {
        Options {
            limits: Limits {
                max_bytes: 1 << 30,
                max_entries: 10_000,
            },
            owner: None,
        }
    }

    pub(crate) fn limited(max_bytes: u64, max_entries: u64) -> Options {
        Options {
            limits: Limits {
                max_bytes,
                max_entries,
            },
            owner: None,
        }
    }

    /// A temp dir holding `root/` (the destination) and `outside/` (must
    /// stay empty).
    pub(crate) struct Env {
        _tmp: tempfile::TempDir,
        pub(crate) top: PathBuf,
        pub(crate) root: PathBuf,
    }

    impl Env {
        pub(crate) fn new() -> Env {
            let tmp = tempfile::tempdir().unwrap();
            let top = tmp.path().to_path_buf();
            let root = top.join("root");
            fs::create_dir(&root).unwrap();
            fs::create_dir(top.join("outside")).unwrap();
            Env {
                _tmp: tmp,
                top,
                root,
            }
        }

        pub(crate) fn extract(&self, data: &[u8]) -> Result<Report, IngestError> {
            extract(data, &self.root, Path::new(""), &opts())
        }

        pub(crate) fn extract_opts(&self, data: &[u8], o: &Options) -> Result<Report, IngestError> {
            extract(data, &self.root, Path::new(""), o)
        }

        /// Nothing but root/ and an empty outside/ beside the destination.
        pub(crate) fn assert_contained(&self) {
            let mut names: Vec<_> = fs::read_dir(&self.top)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            assert_eq!(names, ["outside", "root"]);
            assert_eq!(fs::read_dir(self.top.join("outside")).unwrap().count(), 0);
        }

        /// All paths beneath root, relative, sorted ("dir/" for directories).
        pub(crate) fn listing(&self) -> Vec<String> {
            fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
                for e in fs::read_dir(dir).unwrap() {
                    let e = e.unwrap();
                    let p = e.path();
                    let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                    let ft = fs::symlink_metadata(&p).unwrap().file_type();
                    if ft.is_dir() {
                        out.push(format!("{rel}/"));
                        walk(base, &p, out);
                    } else {
                        out.push(rel);
                    }
                }
            }
            let mut out = Vec::new();
            walk(&self.root, &self.root, &mut out);
            out.sort();
            out
        }
    }

    pub(crate) fn header(name: &[u8], typ: u8, size: u64) -> [u8; BLOCK] {
        let mut h = tar::Header::new_ustar();
        assert!(name.len() <= 100, "use long names for longer paths");
        h.as_mut_bytes()[..name.len()].copy_from_slice(name);
        h.set_mode(0o644);
        h.set_size(size);
        h.set_entry_type(tar::EntryType::new(typ));
        h.set_cksum();
        *h.as_bytes()
    }

    pub(crate) fn pad(out: &mut Vec<u8>) {
        while !out.len().is_multiple_of(BLOCK) {
            out.push(0);
        }
    }

    pub(crate) fn entry(out: &mut Vec<u8>, name: &[u8], typ: u8, data: &[u8]) {
        out.extend_from_slice(&header(name, typ, data.len() as u64));
        out.extend_from_slice(data);
        pad(out);
    }

    pub(crate) fn file(out: &mut Vec<u8>, name: &str, data: &[u8]) {
        entry(out, name.as_bytes(), b'0', data);
    }

    pub(crate) fn dir(out: &mut Vec<u8>, name: &str) {
        entry(out, name.as_bytes(), b'5', b"");
    }

    pub(crate) fn long_name(out: &mut Vec<u8>, name: &[u8]) {
        let mut body = name.to_vec();
        body.push(0);
        entry(out, b"././@LongLink", b'L', &body);
    }

    pub(crate) fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
        let rest = 1 + key.len() + 1 + value.len() + 1;
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        let mut r = format!("{len} {key}=").into_bytes();
        r.extend_from_slice(value);
        r.push(b'\n');
        assert_eq!(r.len(), len);
        r
    }

    pub(crate) fn pax(out: &mut Vec<u8>, records: &[(&str, &[u8])]) {
        let body: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        entry(out, b"PaxHeaders.0/x", b'x', &body);
    }

    pub(crate) fn end(out: &mut Vec<u8>) {
        out.extend_from_slice(&[0u8; 2 * BLOCK]);
    }

    pub(crate) fn archive(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        f(&mut out);
        end(&mut out);
        out
    }

    pub(crate) fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    pub(crate) fn zst(data: &[u8]) -> Vec<u8> {
        zstd::encode_all(data, 3).unwrap()
    }

    /// A pg_basebackup-like archive written by tar::Builder.
    pub(crate) fn builder_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let add_dir = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(mode);
            h.set_size(0);
            b.append_data(&mut h, path, io::empty()).unwrap();
        };
        add_dir(&mut b, "base", 0o755);
        add_dir(&mut b, "pg_wal", 0o1777);
        let add_file = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(mode);
            h.set_uid(1234);
            h.set_gid(1234);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, data).unwrap();
        };
        add_file(&mut b, "PG_VERSION", 0o644, b"16\n");
        add_file(&mut b, "base/1/1234", 0o4755, &vec![7u8; 100_000]);
        add_file(&mut b, "global/pg_control", 0o600, &[1u8; 8192]);
        add_file(&mut b, "empty", 0o644, b"");
        // A long path, stored with a GNU long-name header by the builder.
        let long = format!("base/{}/file", "d".repeat(150));
        add_file(&mut b, &long, 0o644, b"long");
        b.into_inner().unwrap()
    }

    /// What `tar -C dir -cf x .` produces: "./" prefixes.
    pub(crate) fn dot_tar() -> Vec<u8> {
        archive(|a| {
            dir(a, "./");
            file(a, "./PG_VERSION", b"16\n");
            dir(a, "./base/");
            dir(a, "./base/1/");
            file(a, "./base/1/1234", b"relation");
            file(a, "./global/pg_control", b"ctl");
        })
    }

    pub(crate) fn check_builder_result(env: &Env, report: &Report) {
        let long = format!("base/{}/file", "d".repeat(150));
        assert_eq!(fs::read(env.root.join("PG_VERSION")).unwrap(), b"16\n");
        assert_eq!(
            fs::read(env.root.join("base/1/1234")).unwrap(),
            vec![7u8; 100_000]
        );
        assert_eq!(
            fs::read(env.root.join("global/pg_control")).unwrap(),
            [1u8; 8192]
        );
        assert_eq!(fs::read(env.root.join("empty")).unwrap(), b"");
        assert_eq!(fs::read(env.root.join(&long)).unwrap(), b"long");
        assert_eq!(report.entries, 7);
        assert_eq!(report.bytes_written, 3 + 100_000 + 8192 + 4);
        for rel in [
            "PG_VERSION",
            "base/1/1234",
            "global/pg_control",
            "empty",
            &long,
        ] {
            let m = fs::symlink_metadata(env.root.join(rel)).unwrap();
            assert!(m.is_file());
            assert_eq!(m.permissions().mode() & 0o7777, 0o600, "{rel}");
            assert_ne!(m.uid(), 1234);
        }
        for rel in ["base", "base/1", "global", "pg_wal", "base/ddd"] {
            let rel = if rel == "base/ddd" {
                format!("base/{}", "d".repeat(150))
            } else {
                rel.to_string()
            };
            let m = fs::symlink_metadata(env.root.join(&rel)).unwrap();
            assert!(m.is_dir());
            assert_eq!(m.permissions().mode() & 0o7777, 0o700, "{rel}");
        }
        env.assert_contained();
    }

    pub(crate) fn expect_bad_entry(r: Result<Report, IngestError>, reason_part: &str) -> String {
        match r {
            Err(e @ IngestError::BadEntry { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(reason_part), "{msg}");
                assert!(!msg.contains('\n'));
                msg
            }
            other => panic!("expected BadEntry({reason_part}), got {other:?}"),
        }
    }
}
