//! The tar walk: a small strict streaming parser (ustar headers and their
//! checksums, GNU long names, PAX `path`/`size`, rejected links, devices and
//! sparse files, the end-of-archive marker and what may follow it) that
//! checks every path and the entry and byte limits, and hands each entry to
//! the destination. [`TarSource`] is what it reads from.

use std::io::{Read, Write};

use super::decode::TarStream;
use super::dest::{Dest, Node};
use super::paths::{bad_entry, io_err, join_rel, normalize, show, MAX_PATH_BYTES};
use super::{IngestError, Limits, Report, COPY_BUF};

/// Size of a tar block.
pub(super) const BLOCK: usize = 512;
/// Largest GNU long-name or PAX extended header body that is accepted.
const MAX_META_BYTES: u64 = 64 * 1024;
/// Most extension headers ('L', 'x', 'g') allowed in a row before an entry.
const MAX_META_IN_A_ROW: u32 = 8;
/// Most zero padding accepted after the end-of-archive marker.
const MAX_TRAILING_ZEROS: u64 = 1024 * 1024;

/// What the tar parser reads from: the decoded stream, in this thread or
/// from the decoding thread (`pipe::pump`).
pub(super) trait TarSource {
    /// One read (retrying on EINTR); 0 means end of stream.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, IngestError>;
    /// Offset in the decoded stream (for messages).
    fn pos(&self) -> u64;
    /// After the end: reject anything left in the compressed input.
    fn finish(&mut self) -> Result<(), IngestError>;

    /// The next bytes of the stream (at most `max`, which `scratch` must
    /// hold), borrowed where the source already has them in memory; empty
    /// at the end of the stream.
    fn next_slice<'a>(
        &'a mut self,
        max: usize,
        scratch: &'a mut [u8],
    ) -> Result<&'a [u8], IngestError> {
        let n = self.read_some(&mut scratch[..max])?;
        Ok(&scratch[..n])
    }

    /// Reads until `buf` is full or the stream ends; returns bytes read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, IngestError> {
        let mut got = 0;
        while got < buf.len() {
            let n = self.read_some(&mut buf[got..])?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(got)
    }
}

impl<R: Read> TarSource for &mut TarStream<R> {
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, IngestError> {
        TarStream::read_some(self, buf)
    }

    fn pos(&self) -> u64 {
        self.pos
    }

    fn finish(&mut self) -> Result<(), IngestError> {
        TarStream::finish(self)
    }
}

#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    pax_path: Option<Vec<u8>>,
    pax_size: Option<u64>,
    pax_linkpath: bool,
    pax_sparse: bool,
    count: u32,
}

impl Pending {
    /// True when no header that changes the next entry is pending (a PAX
    /// global header alone does not count).
    fn is_empty(&self) -> bool {
        self.long_name.is_none()
            && self.pax_path.is_none()
            && self.pax_size.is_none()
            && !self.pax_linkpath
            && !self.pax_sparse
    }
}

struct Extractor<S: TarSource> {
    stream: S,
    dest: Dest,
    base: Vec<u8>,
    limits: Limits,
    buf: Vec<u8>,
    report: Report,
}

fn header_checksum_ok(block: &[u8; BLOCK]) -> bool {
    let header = tar::Header::from_byte_slice(block);
    let Ok(stored) = header.cksum() else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(b)
            }
        })
        .sum();
    sum == stored
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn entry_type_reason(t: u8) -> Option<String> {
    let reason = match t {
        b'0' | b'\0' | b'7' | b'5' => return None,
        b'1' => "is a hard link (links are not allowed)".to_string(),
        b'2' => "is a symbolic link (links are not allowed)".to_string(),
        b'3' => "is a character device (only files and directories are allowed)".to_string(),
        b'4' => "is a block device (only files and directories are allowed)".to_string(),
        b'6' => "is a fifo (only files and directories are allowed)".to_string(),
        b'S' => "is a GNU sparse file (not supported)".to_string(),
        other if other.is_ascii_graphic() => {
            format!("has unsupported entry type '{}'", other as char)
        }
        other => format!("has unsupported entry type 0x{other:02x}"),
    };
    Some(reason)
}

/// Parses the whole tar stream, creating its entries beneath `base` in
/// `dest`; returns how it ended and what was done until then.
pub(super) fn extract_entries<S: TarSource>(
    stream: S,
    dest: Dest,
    base: Vec<u8>,
    limits: Limits,
) -> (Result<(), IngestError>, Report) {
    let mut ex = Extractor {
        stream,
        dest,
        base,
        limits,
        buf: vec![0u8; COPY_BUF],
        report: Report::default(),
    };
    let result = ex.run();
    (result, ex.report)
}

impl<S: TarSource> Extractor<S> {
    /// Reads header after header until the end-of-archive marker.
    fn run(&mut self) -> Result<(), IngestError> {
        let mut block = [0u8; BLOCK];
        let mut pending = Pending::default();
        loop {
            let offset = self.stream.pos();
            self.read_header(&mut block)?;
            if block.iter().all(|&b| b == 0) {
                if !pending.is_empty() {
                    return Err(IngestError::Corrupt(
                        "extended header is not followed by an entry".into(),
                    ));
                }
                return self.finish_archive();
            }
            if !header_checksum_ok(&block) {
                return Err(IngestError::Corrupt(format!(
                    "bad header checksum at offset {offset}"
                )));
            }
            let header = tar::Header::from_byte_slice(&block);
            let typ = block[156];
            let size = header.entry_size().map_err(|_| {
                IngestError::Corrupt(format!("invalid size field in header at offset {offset}"))
            })?;
            if matches!(typ, b'L' | b'x' | b'g') {
                self.extension(typ, size, &mut pending)?;
            } else {
                let header_path = header.path_bytes().into_owned();
                self.entry(typ, size, &header_path, std::mem::take(&mut pending))?;
            }
        }
    }

    /// Reads one header block; the stream must not end before or inside it.
    fn read_header(&mut self, block: &mut [u8; BLOCK]) -> Result<(), IngestError> {
        match self.stream.read_full(block)? {
            BLOCK => Ok(()),
            0 => Err(IngestError::Truncated(
                "missing end-of-archive blocks".into(),
            )),
            _ => Err(IngestError::Truncated(
                "stream ends inside a header block".into(),
            )),
        }
    }

    /// A GNU long-name ('L'), PAX extended ('x') or PAX global ('g') header:
    /// what it says about the next entry goes into `pending`.
    fn extension(&mut self, typ: u8, size: u64, pending: &mut Pending) -> Result<(), IngestError> {
        pending.count += 1;
        if pending.count > MAX_META_IN_A_ROW {
            return Err(IngestError::Corrupt(
                "too many extended headers before one entry".into(),
            ));
        }
        let what = match typ {
            b'L' => "GNU long-name",
            b'x' => "PAX extended",
            _ => "PAX global",
        };
        if size > MAX_META_BYTES {
            return Err(IngestError::HeaderTooLarge {
                what,
                size,
                limit: MAX_META_BYTES,
            });
        }
        match typ {
            b'L' => {
                if pending.long_name.is_some() {
                    return Err(IngestError::Corrupt(
                        "two GNU long-name headers for one entry".into(),
                    ));
                }
                let mut body = self.read_meta_body(size)?;
                // The name is NUL-terminated; a NUL inside it is
                // left in place and rejected by the path rules.
                while body.last() == Some(&0) {
                    body.pop();
                }
                pending.long_name = Some(body);
            }
            b'x' => {
                let body = self.read_meta_body(size)?;
                parse_pax(&body, pending)?;
            }
            _ => self.skip(size + padding(size))?,
        }
        Ok(())
    }

    /// A real entry (file or directory), with the extension headers that
    /// came before it.
    fn entry(
        &mut self,
        typ: u8,
        size: u64,
        header_path: &[u8],
        pending: Pending,
    ) -> Result<(), IngestError> {
        let shown_path: Vec<u8> = pending
            .pax_path
            .clone()
            .or_else(|| pending.long_name.clone())
            .unwrap_or_else(|| header_path.to_vec());
        self.check_entry(typ, &shown_path, &pending)?;

        // Every path source must pass, not only the one that wins.
        for candidate in [
            Some(header_path),
            pending.long_name.as_deref(),
            pending.pax_path.as_deref(),
        ]
        .into_iter()
        .flatten()
        {
            normalize(candidate).map_err(|reason| bad_entry(candidate, reason))?;
        }
        let norm = normalize(&shown_path).map_err(|reason| bad_entry(&shown_path, reason))?;
        let size = pending.pax_size.unwrap_or(size);

        let is_dir = typ == b'5' || (typ == b'\0' && shown_path.last() == Some(&b'/'));
        if is_dir {
            if size != 0 {
                return Err(bad_entry(&shown_path, "is a directory with data"));
            }
            if norm.is_empty() {
                return Ok(()); // "./": the destination itself
            }
            let rel = self.dest_path(&norm, &shown_path)?;
            self.dest
                .place(&rel, Node::Dir { explicit: true }, &shown_path)
        } else {
            if norm.is_empty() || shown_path.last() == Some(&b'/') {
                return Err(bad_entry(&shown_path, "is a file without a file name"));
            }
            let rel = self.dest_path(&norm, &shown_path)?;
            self.write_file(&rel, &shown_path, size)
        }
    }

    /// The rules on an entry's type and on the number of entries, checked
    /// before its path.
    fn check_entry(
        &mut self,
        typ: u8,
        shown_path: &[u8],
        pending: &Pending,
    ) -> Result<(), IngestError> {
        if typ == b'K' {
            return Err(bad_entry(
                shown_path,
                "has a GNU long link name (links are not allowed)",
            ));
        }

        self.report.entries += 1;
        if self.report.entries > self.limits.max_entries {
            return Err(IngestError::TooManyEntries(self.limits.max_entries));
        }

        if let Some(reason) = entry_type_reason(typ) {
            return Err(bad_entry(shown_path, reason));
        }
        if pending.pax_sparse {
            return Err(bad_entry(
                shown_path,
                "is a GNU sparse file (not supported)",
            ));
        }
        if pending.pax_linkpath {
            return Err(bad_entry(
                shown_path,
                "has a link target (links are not allowed)",
            ));
        }
        Ok(())
    }

    /// `norm` beneath the base directory, unless that is too long.
    fn dest_path(&self, norm: &[u8], shown_path: &[u8]) -> Result<Vec<u8>, IngestError> {
        let rel = join_rel(&self.base, norm);
        if rel.len() >= MAX_PATH_BYTES {
            return Err(bad_entry(shown_path, "has a path that is too long"));
        }
        Ok(rel)
    }

    fn write_file(&mut self, rel: &[u8], shown: &[u8], size: u64) -> Result<(), IngestError> {
        let max = self.limits.max_bytes;
        match self.report.bytes_written.checked_add(size) {
            Some(total) if total <= max => {}
            _ => return Err(IngestError::TooLarge(max)),
        }
        self.dest.place(rel, Node::File, shown)?;
        let mut file = self.dest.create_file(rel)?;
        let mut remaining = size;
        while remaining > 0 {
            let want = remaining.min(self.buf.len() as u64) as usize;
            let data = self.stream.next_slice(want, &mut self.buf)?;
            let n = data.len();
            if n == 0 {
                return Err(IngestError::Truncated(format!(
                    "entry '{}' ends early",
                    show(shown)
                )));
            }
            self.report.bytes_written += n as u64;
            if self.report.bytes_written > max {
                return Err(IngestError::TooLarge(max));
            }
            file.write_all(data).map_err(|e| io_err(rel, e))?;
            remaining -= n as u64;
        }
        drop(file);
        self.skip(padding(size))
    }

    /// Reads an extension header body (size already checked) plus padding.
    fn read_meta_body(&mut self, size: u64) -> Result<Vec<u8>, IngestError> {
        let len = usize::try_from(size)
            .map_err(|_| IngestError::Corrupt("extended header size overflows".into()))?;
        let mut body = vec![0u8; len];
        if self.stream.read_full(&mut body)? != len {
            return Err(IngestError::Truncated(
                "stream ends inside an extended header".into(),
            ));
        }
        self.skip(padding(size))?;
        Ok(body)
    }

    /// Discards exactly `n` bytes of the tar stream.
    fn skip(&mut self, mut n: u64) -> Result<(), IngestError> {
        while n > 0 {
            let want = n.min(self.buf.len() as u64) as usize;
            let got = self.stream.read_some(&mut self.buf[..want])?;
            if got == 0 {
                return Err(IngestError::Truncated("stream ends inside an entry".into()));
            }
            n -= got as u64;
        }
        Ok(())
    }

    /// Called after the first zero block: requires the second one, then
    /// drains zero padding to the end of the stream and checks what follows.
    fn finish_archive(&mut self) -> Result<(), IngestError> {
        let mut block = [0u8; BLOCK];
        match self.stream.read_full(&mut block)? {
            BLOCK => {}
            _ => {
                return Err(IngestError::Truncated(
                    "missing end-of-archive blocks".into(),
                ));
            }
        }
        if block.iter().any(|&b| b != 0) {
            return Err(IngestError::Corrupt(
                "lone zero block in the middle of the archive".into(),
            ));
        }
        let mut trailing: u64 = 0;
        loop {
            let n = self.stream.read_some(&mut self.buf)?;
            if n == 0 {
                break;
            }
            if self.buf[..n].iter().any(|&b| b != 0) {
                return Err(IngestError::Corrupt(
                    "trailing data after the end-of-archive marker".into(),
                ));
            }
            trailing += n as u64;
            if trailing > MAX_TRAILING_ZEROS {
                return Err(IngestError::Corrupt(
                    "too much padding after the end-of-archive marker".into(),
                ));
            }
        }
        self.stream.finish()
    }
}

/// Parses PAX extended header records ("<len> <key>=<value>\n").
fn parse_pax(body: &[u8], pending: &mut Pending) -> Result<(), IngestError> {
    let corrupt = || IngestError::Corrupt("malformed PAX extended header".into());
    let mut rest = body;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break; // tolerate NUL padding at the end
        }
        let space = rest.iter().position(|&b| b == b' ').ok_or_else(corrupt)?;
        let len_digits = &rest[..space];
        if len_digits.is_empty() || !len_digits.iter().all(u8::is_ascii_digit) || space > 20 {
            return Err(corrupt());
        }
        let len: usize = std::str::from_utf8(len_digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(corrupt)?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(corrupt());
        }
        let record = &rest[space + 1..len - 1];
        rest = &rest[len..];
        let eq = record.iter().position(|&b| b == b'=').ok_or_else(corrupt)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => {
                if value.contains(&0) {
                    return Err(bad_entry(value, "has a NUL byte in its path"));
                }
                pending.pax_path = Some(value.to_vec());
            }
            b"size" => {
                let size = std::str::from_utf8(value)
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| IngestError::Corrupt("invalid PAX size".into()))?;
                pending.pax_size = Some(size);
            }
            b"linkpath" => pending.pax_linkpath = !value.is_empty(),
            k if k.starts_with(b"GNU.sparse.") => pending.pax_sparse = true,
            _ => {}
        }
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::super::test_fixtures::*;
    use super::super::IngestError;
    use std::fs;
    use std::io::{self, Read};

    #[test]
    fn plain_tar_from_builder() {
        let env = Env::new();
        let data = builder_tar();
        let report = env.extract(&data).unwrap();
        assert_eq!(report.bytes_in, data.len() as u64);
        check_builder_result(&env, &report);
    }

    #[test]
    fn dot_prefixed_entries() {
        let env = Env::new();
        let report = env.extract(&dot_tar()).unwrap();
        assert_eq!(report.entries, 6);
        assert_eq!(
            env.listing(),
            [
                "PG_VERSION",
                "base/",
                "base/1/",
                "base/1/1234",
                "global/",
                "global/pg_control"
            ]
        );
        assert_eq!(fs::read(env.root.join("base/1/1234")).unwrap(), b"relation");
        env.assert_contained();
    }

    #[test]
    fn record_padding_is_accepted() {
        let env = Env::new();
        let mut data = archive(|a| file(a, "a", b"x"));
        data.resize(10240, 0);
        env.extract(&data).unwrap();
        let env = Env::new();
        data.resize(20 * 10240, 0);
        env.extract(&zst(&data)).unwrap();
    }

    #[test]
    fn system_tar_if_available() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("PG_VERSION"), "16\n").unwrap();
        fs::create_dir_all(src.path().join("base/1")).unwrap();
        fs::write(src.path().join("base/1/1234"), vec![3u8; 70_000]).unwrap();
        let long = "n".repeat(120);
        fs::write(src.path().join(&long), "long").unwrap();
        let outdir = tempfile::tempdir().unwrap();
        for (format, compress) in [("gnu", "-z"), ("posix", "--zstd"), ("posix", "-v")] {
            let out = outdir.path().join(format!("x.{format}{compress}"));
            let status = std::process::Command::new("tar")
                .arg(format!("--format={format}"))
                .arg(compress)
                .arg("-C")
                .arg(src.path())
                .arg("-cf")
                .arg(&out)
                .arg(".")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            match status {
                Ok(s) if s.success() => {}
                _ => {
                    eprintln!("tar {format} {compress} unavailable; skipping");
                    continue;
                }
            }
            let env = Env::new();
            let data = fs::read(&out).unwrap();
            let r = env.extract(&data).unwrap();
            assert_eq!(r.entries, 6, "{format} {compress}");
            assert_eq!(fs::read(env.root.join("PG_VERSION")).unwrap(), b"16\n");
            assert_eq!(
                fs::read(env.root.join("base/1/1234")).unwrap(),
                vec![3u8; 70_000]
            );
            assert_eq!(fs::read(env.root.join(&long)).unwrap(), b"long");
        }
    }

    #[test]
    fn dotdot_in_gnu_long_name() {
        let env = Env::new();
        let evil = format!("{}/../../../outside/pwned", "a".repeat(120));
        let r = env.extract(&archive(|a| {
            long_name(a, evil.as_bytes());
            file(a, "innocent", b"x");
        }));
        expect_bad_entry(r, "'..'");
        let r = env.extract(&archive(|a| {
            long_name(a, b"/etc/cron.d/x");
            file(a, "innocent", b"x");
        }));
        expect_bad_entry(r, "absolute");
        env.assert_contained();
        assert!(env.listing().is_empty());
    }

    #[test]
    fn dotdot_in_pax_path() {
        let env = Env::new();
        let r = env.extract(&archive(|a| {
            pax(a, &[("path", b"../outside/pwned")]);
            file(a, "innocent", b"x");
        }));
        expect_bad_entry(r, "'..'");
        let r = env.extract(&archive(|a| {
            pax(a, &[("path", b"/abs/pwned")]);
            file(a, "innocent", b"x");
        }));
        expect_bad_entry(r, "absolute");
        // The overridden plain header is checked too.
        let r = env.extract(&archive(|a| {
            pax(a, &[("path", b"fine")]);
            file(a, "../hidden", b"x");
        }));
        expect_bad_entry(r, "'..'");
        env.assert_contained();
        assert!(env.listing().is_empty());
    }

    #[test]
    fn huge_extension_headers_rejected_before_reading() {
        let env = Env::new();
        for (typ, what) in [(b'L', "long-name"), (b'x', "PAX"), (b'g', "PAX global")] {
            // Declares 1 GiB but provides no body: must be rejected up front,
            // not read (or allocated) and then found truncated.
            let mut data = header(b"././@LongLink", typ, 1 << 30).to_vec();
            data.extend_from_slice(&[b'a'; 4096]);
            let e = env.extract(&data).unwrap_err();
            assert!(matches!(e, IngestError::HeaderTooLarge { .. }), "{e}");
            assert!(e.to_string().contains(what), "{e}");
        }
        // Just over the limit.
        let mut data = Vec::new();
        long_name(&mut data, &vec![b'a'; 64 * 1024]);
        let e = env.extract(&data).unwrap_err();
        assert!(matches!(e, IngestError::HeaderTooLarge { .. }), "{e}");
        env.assert_contained();
    }

    #[test]
    fn too_many_extension_headers() {
        let env = Env::new();
        let data = archive(|a| {
            for _ in 0..20 {
                pax(a, &[("comment", b"x")]);
            }
            file(a, "x", b"x");
        });
        let e = env.extract(&data).unwrap_err();
        assert!(matches!(e, IngestError::Corrupt(_)), "{e}");
    }

    #[test]
    fn links_devices_and_friends_rejected() {
        let cases: [(u8, &str); 9] = [
            (b'1', "hard link"),
            (b'2', "symbolic link"),
            (b'3', "character device"),
            (b'4', "block device"),
            (b'6', "fifo"),
            (b'S', "sparse"),
            (b'V', "unsupported entry type 'V'"),
            (b'D', "unsupported"),
            (b'K', "long link"),
        ];
        for (typ, reason) in cases {
            let env = Env::new();
            let data = archive(|a| {
                file(a, "before", b"b");
                let mut h = tar::Header::new_gnu();
                h.set_path("evil").unwrap();
                h.set_entry_type(tar::EntryType::new(typ));
                h.set_link_name("../outside/target").unwrap();
                h.set_mode(0o777);
                h.set_size(0);
                h.set_cksum();
                a.extend_from_slice(h.as_bytes());
                file(a, "after", b"a");
            });
            let msg = expect_bad_entry(env.extract(&data), reason);
            assert!(msg.starts_with("archive entry "), "{msg}");
            assert_eq!(env.listing(), ["before"], "{}", typ as char);
            env.assert_contained();
        }
    }

    #[test]
    fn symlink_via_builder_rejected() {
        let env = Env::new();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        let target = format!("{}/x", env.top.join("outside").display());
        b.append_link(&mut h, "link", &target).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        b.append_data(&mut h, "link", &b"data"[..]).unwrap();
        let data = b.into_inner().unwrap();
        expect_bad_entry(env.extract(&data), "symbolic link");
        env.assert_contained();
        assert!(env.listing().is_empty());
    }

    #[test]
    fn pax_sparse_and_linkpath_rejected() {
        let env = Env::new();
        let r = env.extract(&archive(|a| {
            pax(a, &[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")]);
            file(a, "GNUSparseFile.0/x", b"");
        }));
        expect_bad_entry(r, "sparse");
        let r = env.extract(&archive(|a| {
            pax(a, &[("linkpath", b"/etc/shadow")]);
            file(a, "x", b"");
        }));
        expect_bad_entry(r, "link");
        env.assert_contained();
        assert!(env.listing().is_empty());
    }

    #[test]
    fn pax_size_overrides_header_size() {
        let env = Env::new();
        let data = archive(|a| {
            pax(a, &[("size", b"5"), ("mtime", b"1.5"), ("uid", b"0")]);
            a.extend_from_slice(&header(b"f", b'0', 0));
            a.extend_from_slice(b"hello");
            pad(a);
        });
        let r = env.extract(&data).unwrap();
        assert_eq!(r.bytes_written, 5);
        assert_eq!(fs::read(env.root.join("f")).unwrap(), b"hello");
    }

    #[test]
    fn malformed_pax_rejected() {
        let env = Env::new();
        for body in [&b"99 path=x\n"[..], b"abc", b"5 a=b\n", b"6 ab\n\n"] {
            let data = archive(|a| {
                entry(a, b"PaxHeaders/x", b'x', body);
                file(a, "x", b"");
            });
            let e = env.extract(&data).unwrap_err();
            assert!(matches!(e, IngestError::Corrupt(_)), "{e}");
        }
    }

    #[test]
    fn max_bytes_checked_from_header() {
        let env = Env::new();
        let data = archive(|a| {
            file(a, "small", &[1u8; 100]);
            file(a, "big", &vec![2u8; 2000]);
        });
        let e = env.extract_opts(&data, &limited(1000, 100)).unwrap_err();
        assert!(matches!(e, IngestError::TooLarge(1000)), "{e}");
        assert_eq!(e.to_string(), "upload exceeds max_image_bytes (1000 bytes)");
        assert_eq!(env.listing(), ["small"]);
        // Exactly at the limit is fine.
        let env = Env::new();
        env.extract_opts(&data, &limited(2100, 100)).unwrap();
    }

    #[test]
    fn gzip_bomb_stops_early() {
        let env = Env::new();
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..4 {
            let mut h = tar::Header::new_gnu();
            h.set_size(4 << 20);
            b.append_data(&mut h, format!("zeros{i}"), io::repeat(0).take(4 << 20))
                .unwrap();
        }
        let bomb = gz(&b.into_inner().unwrap());
        assert!(bomb.len() < 200_000);
        let e = env
            .extract_opts(&bomb, &limited(10 << 20, 100))
            .unwrap_err();
        assert!(matches!(e, IngestError::TooLarge(_)), "{e}");
        let total: u64 = env
            .listing()
            .iter()
            .map(|p| fs::metadata(env.root.join(p)).unwrap().len())
            .sum();
        assert_eq!(total, 8 << 20);
    }

    #[test]
    fn max_entries() {
        let env = Env::new();
        let data = archive(|a| {
            dir(a, "./");
            file(a, "a", b"");
            file(a, "b", b"");
        });
        env.extract_opts(&data, &limited(100, 3)).unwrap();
        let env = Env::new();
        let e = env.extract_opts(&data, &limited(100, 2)).unwrap_err();
        assert!(matches!(e, IngestError::TooManyEntries(2)), "{e}");
    }

    #[test]
    fn truncated_archives() {
        let full = builder_tar();
        let no_end = &full[..full.len() - 1024];
        let env = Env::new();
        let e = env.extract(no_end).unwrap_err();
        assert_eq!(
            e.to_string(),
            "archive is truncated: missing end-of-archive blocks"
        );
        // Only one of the two zero blocks.
        let env = Env::new();
        let e = env.extract(&full[..full.len() - 512]).unwrap_err();
        assert!(matches!(e, IngestError::Truncated(_)), "{e}");
        // Cut inside a file, inside a header.
        for cut in [2048 + 700, 1000, 100] {
            let env = Env::new();
            let e = env.extract(&full[..cut]).unwrap_err();
            assert!(matches!(e, IngestError::Truncated(_)), "{cut}: {e}");
        }
        // Compressed variants of the same.
        let env = Env::new();
        let e = env.extract(&gz(no_end)).unwrap_err();
        assert!(matches!(e, IngestError::Truncated(_)), "{e}");
        let env = Env::new();
        let e = env.extract(&zst(no_end)).unwrap_err();
        assert!(matches!(e, IngestError::Truncated(_)), "{e}");
    }

    #[test]
    fn lone_zero_block_and_trailing_garbage() {
        let env = Env::new();
        let mut data = Vec::new();
        file(&mut data, "a", b"x");
        data.extend_from_slice(&[0u8; 512]);
        file(&mut data, "b", b"y");
        end(&mut data);
        let e = env.extract(&data).unwrap_err();
        assert!(matches!(e, IngestError::Corrupt(_)), "{e}");

        let mut data = archive(|a| file(a, "a", b"x"));
        data.extend_from_slice(b"garbage");
        for d in [data.clone(), gz(&data), zst(&data)] {
            let env = Env::new();
            let e = env.extract(&d).unwrap_err();
            assert!(e.to_string().contains("trailing data"), "{e}");
        }
    }

    #[test]
    fn bad_header_checksum() {
        let env = Env::new();
        let mut data = archive(|a| file(a, "a", b"x"));
        data[0] = b'b';
        let e = env.extract(&data).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        assert!(env.listing().is_empty());
    }
}
