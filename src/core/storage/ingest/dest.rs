//! The destination: creates directories and files strictly beneath the
//! root (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, or an
//! `O_NOFOLLOW` walk one component at a time), with mode 0600 / 0700 and
//! the configured owner, never overwriting; remembers what it created to
//! catch duplicates and file/directory conflicts and to bound the number of
//! entries, implicit parent directories included.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{Gid, Mode, OFlags, ResolveFlags, Uid};

use super::paths::{bad_entry, io_err, split_parent};
use super::{IngestError, Owner};

const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resolver {
    /// `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`,
    /// falling back to `Walk` on ENOSYS/EPERM.
    Openat2,
    /// `openat(O_NOFOLLOW | O_DIRECTORY)` one component at a time.
    Walk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Node {
    Dir { explicit: bool },
    File,
}

pub(super) struct Dest {
    root: OwnedFd,
    owner: Option<Owner>,
    resolver: Resolver,
    /// Everything created (or found as a directory) by this extraction, as a
    /// tree: key = parent id (4 bytes LE) + component, value = (id, node).
    nodes: HashMap<Vec<u8>, (u32, Node)>,
    /// Most nodes (files and directories, implicit ones included).
    max_nodes: u64,
    /// Last parent directory opened, reused for consecutive entries.
    cached_dir: Option<(Vec<u8>, OwnedFd)>,
}

/// Id of the destination directory itself in `Dest::nodes`.
const ROOT_ID: u32 = 0;

fn node_key(parent: u32, name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + name.len());
    key.extend_from_slice(&parent.to_le_bytes());
    key.extend_from_slice(name);
    key
}

fn dir_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

impl Dest {
    pub(super) fn open(
        root: &Path,
        owner: Option<Owner>,
        resolver: Resolver,
        max_nodes: u64,
    ) -> Result<Dest, IngestError> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(root.as_os_str().as_bytes(), e.into()))?;
        Ok(Dest {
            root: fd,
            owner,
            resolver,
            nodes: HashMap::new(),
            max_nodes: max_nodes.min(u64::from(u32::MAX - 1)),
            cached_dir: None,
        })
    }

    /// Opens directory `rel` (normalised, may be empty) beneath the root
    /// without following any symlink.
    fn dir_fd(&mut self, rel: &[u8]) -> io::Result<&OwnedFd> {
        let hit = matches!(&self.cached_dir, Some((p, _)) if p.as_slice() == rel);
        if !hit {
            let fd = self.open_dir_uncached(rel)?;
            self.cached_dir = Some((rel.to_vec(), fd));
        }
        match &self.cached_dir {
            Some((_, fd)) => Ok(fd),
            None => Err(io::Error::other("directory cache is empty")),
        }
    }

    fn open_dir_uncached(&mut self, rel: &[u8]) -> io::Result<OwnedFd> {
        let path: &[u8] = if rel.is_empty() { b"." } else { rel };
        if self.resolver == Resolver::Openat2 {
            match rustix::fs::openat2(
                &self.root,
                OsStr::from_bytes(path),
                dir_flags(),
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            ) {
                Ok(fd) => return Ok(fd),
                Err(e) if e == rustix::io::Errno::NOSYS || e == rustix::io::Errno::PERM => {
                    self.resolver = Resolver::Walk;
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Components are already validated (no "..", no ".", no empty ones),
        // so opening each with O_NOFOLLOW|O_DIRECTORY stays beneath the root.
        let mut cur = rustix::fs::openat(&self.root, ".", dir_flags(), Mode::empty())?;
        for comp in rel.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            cur = rustix::fs::openat(&cur, OsStr::from_bytes(comp), dir_flags(), Mode::empty())?;
        }
        Ok(cur)
    }

    fn set_owner_mode(&self, fd: &OwnedFd, mode: u32) -> io::Result<()> {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?;
        if let Some(o) = self.owner {
            // u32::MAX is chown's "leave unchanged" value.
            let uid = (o.uid != u32::MAX).then(|| Uid::from_raw(o.uid));
            let gid = (o.gid != u32::MAX).then(|| Gid::from_raw(o.gid));
            rustix::fs::fchown(fd, uid, gid)?;
        }
        Ok(())
    }

    /// Creates directory `rel` (its parent exists); an existing directory
    /// (not a symlink) is accepted as is.
    fn mkdir(&mut self, rel: &[u8]) -> io::Result<()> {
        let (parent, name) = split_parent(rel);
        let name = OsStr::from_bytes(name);
        let parent_fd = self.dir_fd(parent)?;
        match rustix::fs::mkdirat(parent_fd, name, Mode::from_raw_mode(DIR_MODE)) {
            Ok(()) => {
                let fd = rustix::fs::openat(
                    parent_fd,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                self.set_owner_mode(&fd, DIR_MODE)
            }
            Err(rustix::io::Errno::EXIST) => {
                // Must be a real directory: a symlink fails with ENOTDIR/ELOOP.
                rustix::fs::openat(parent_fd, name, dir_flags(), Mode::empty())?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Creates a new regular file `rel` (its parent exists).
    pub(super) fn create_file(&mut self, rel: &[u8]) -> Result<File, IngestError> {
        let (parent, name) = split_parent(rel);
        let parent_fd = self.dir_fd(parent).map_err(|e| io_err(rel, e))?;
        let fd = match rustix::fs::openat(
            parent_fd,
            OsStr::from_bytes(name),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(FILE_MODE),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::EXIST) => {
                return Err(bad_entry(rel, "already exists in the destination"));
            }
            Err(e) => return Err(io_err(rel, e.into())),
        };
        self.set_owner_mode(&fd, FILE_MODE)
            .map_err(|e| io_err(rel, e))?;
        Ok(File::from(fd))
    }

    /// Records a new node under `key`, enforcing the node limit (which bounds
    /// this map's memory: each key holds one component, at most 255 bytes).
    fn record(&mut self, key: Vec<u8>, node: Node) -> Result<u32, IngestError> {
        if self.nodes.len() as u64 >= self.max_nodes {
            return Err(IngestError::TooManyEntries(self.max_nodes));
        }
        let id = self.nodes.len() as u32 + 1;
        self.nodes.insert(key, (id, node));
        Ok(id)
    }

    /// Makes sure every parent directory of `rel` exists, then records `rel`
    /// as `node`. Creates directories; for files only checks and records
    /// (the caller creates the file).
    pub(super) fn place(
        &mut self,
        rel: &[u8],
        node: Node,
        shown: &[u8],
    ) -> Result<(), IngestError> {
        let mut parent = ROOT_ID;
        let mut start = 0;
        loop {
            let slash = rel[start..]
                .iter()
                .position(|&b| b == b'/')
                .map(|i| start + i);
            let comp = &rel[start..slash.unwrap_or(rel.len())];
            let key = node_key(parent, comp);
            let Some(end) = slash else {
                break self.place_leaf(rel, key, node, shown);
            };
            let prefix = &rel[..end];
            parent = match self.nodes.get(&key) {
                Some(&(id, Node::Dir { .. })) => id,
                Some((_, Node::File)) => {
                    return Err(bad_entry(shown, "is beneath a path that is a regular file"));
                }
                None => {
                    if self.nodes.len() as u64 >= self.max_nodes {
                        return Err(IngestError::TooManyEntries(self.max_nodes));
                    }
                    self.mkdir(prefix).map_err(|e| io_err(prefix, e))?;
                    self.record(key, Node::Dir { explicit: false })?
                }
            };
            start = end + 1;
        }
    }

    fn place_leaf(
        &mut self,
        rel: &[u8],
        key: Vec<u8>,
        node: Node,
        shown: &[u8],
    ) -> Result<(), IngestError> {
        match (self.nodes.get_mut(&key), node) {
            (None, _) => {}
            (Some((_, existing @ Node::Dir { explicit: false })), Node::Dir { .. }) => {
                // Explicit entry for a directory created as a parent: fine.
                *existing = node;
                return Ok(());
            }
            (Some((_, Node::Dir { .. })), Node::File) => {
                return Err(bad_entry(shown, "is a file where a directory was"));
            }
            (Some((_, Node::File)), Node::Dir { .. }) => {
                return Err(bad_entry(shown, "is a directory where a file was"));
            }
            (Some(_), _) => return Err(bad_entry(shown, "appears twice in the archive")),
        }
        if self.nodes.len() as u64 >= self.max_nodes {
            return Err(IngestError::TooManyEntries(self.max_nodes));
        }
        if let Node::Dir { .. } = node {
            self.mkdir(rel).map_err(|e| io_err(rel, e))?;
        }
        self.record(key, node)?;
        Ok(())
    }

    /// Creates the (already validated) base directory chain, e.g. "pg_wal".
    pub(super) fn ensure_base(&mut self, base: &[u8]) -> Result<(), IngestError> {
        if base.is_empty() {
            return Ok(());
        }
        self.place(base, Node::Dir { explicit: false }, base)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_fixtures::*;
    use super::super::{
        extract, extract_with, write_plain, write_plain_with, IngestError, Options, Owner,
    };
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    type Build = dyn Fn(&mut Vec<u8>);

    #[test]
    fn walk_resolver_happy_path() {
        let env = Env::new();
        let data = builder_tar();
        let report =
            extract_with(&data[..], &env.root, Path::new(""), &opts(), Resolver::Walk).unwrap();
        check_builder_result(&env, &report);
    }

    #[test]
    fn owner_is_applied() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root; skipping");
            return;
        }
        let env = Env::new();
        let o = Options {
            owner: Some(Owner {
                uid: 65534,
                gid: 65534,
            }),
            ..opts()
        };
        extract(&dot_tar()[..], &env.root, Path::new("sub"), &o).unwrap();
        write_plain(&b"x"[..], &env.root, Path::new("plain/dir/f"), &o).unwrap();
        for rel in env.listing() {
            let m = fs::symlink_metadata(env.root.join(&rel)).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65534), "{rel}");
        }
        assert!(env.listing().len() > 8);
    }

    #[test]
    fn modes_and_ownership_in_archive_are_ignored() {
        let env = Env::new();
        let data = archive(|a| {
            let mut h = tar::Header::new_ustar();
            h.set_path("suid").unwrap();
            h.set_mode(0o6777);
            h.set_uid(0);
            h.set_size(1);
            h.set_cksum();
            a.extend_from_slice(h.as_bytes());
            a.push(b'!');
            pad(a);
            let mut h = tar::Header::new_ustar();
            h.set_path("sticky/").unwrap();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o1777);
            h.set_size(0);
            h.set_cksum();
            a.extend_from_slice(h.as_bytes());
        });
        env.extract(&data).unwrap();
        let m = fs::metadata(env.root.join("suid")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o600);
        let m = fs::metadata(env.root.join("sticky")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o700);
    }

    #[test]
    fn duplicates_and_type_conflicts() {
        let cases: [(&Build, &str); 5] = [
            (
                &|a| {
                    file(a, "f", b"1");
                    file(a, "./f", b"2");
                },
                "appears twice",
            ),
            (
                &|a| {
                    dir(a, "d/");
                    file(a, "d", b"2");
                },
                "file where a directory was",
            ),
            (
                &|a| {
                    file(a, "f", b"1");
                    dir(a, "f/");
                },
                "directory where a file was",
            ),
            (
                &|a| {
                    file(a, "f", b"1");
                    file(a, "f/x", b"2");
                },
                "beneath a path that is a regular file",
            ),
            (
                &|a| {
                    dir(a, "d/");
                    dir(a, "./d");
                },
                "appears twice",
            ),
        ];
        for (build, reason) in cases {
            let env = Env::new();
            let mut data = Vec::new();
            build(&mut data);
            end(&mut data);
            expect_bad_entry(env.extract(&data), reason);
            env.assert_contained();
        }
    }

    #[test]
    fn explicit_dir_after_implicit_is_fine() {
        let env = Env::new();
        env.extract(&archive(|a| {
            file(a, "base/1/1234", b"x");
            dir(a, "base/1/");
            dir(a, "base/");
        }))
        .unwrap();
        assert_eq!(env.listing(), ["base/", "base/1/", "base/1/1234"]);
    }

    #[test]
    fn existing_file_in_destination_is_not_overwritten() {
        let env = Env::new();
        fs::write(env.root.join("PG_VERSION"), "keep").unwrap();
        expect_bad_entry(
            env.extract(&archive(|a| file(a, "PG_VERSION", b"new"))),
            "already exists",
        );
        assert_eq!(fs::read(env.root.join("PG_VERSION")).unwrap(), b"keep");
    }

    #[test]
    fn preexisting_symlinks_are_not_followed() {
        for resolver in [Resolver::Openat2, Resolver::Walk] {
            let env = Env::new();
            let outside = env.top.join("outside");
            std::os::unix::fs::symlink(&outside, env.root.join("evil")).unwrap();
            std::os::unix::fs::symlink("../outside", env.root.join("rel")).unwrap();
            std::os::unix::fs::symlink(outside.join("t"), env.root.join("leaf")).unwrap();
            for data in [
                archive(|a| file(a, "evil/pwned", b"x")),
                archive(|a| file(a, "rel/sub/pwned", b"x")),
                archive(|a| dir(a, "evil/d/")),
                archive(|a| file(a, "leaf", b"x")),
                archive(|a| dir(a, "leaf/")),
            ] {
                let r = extract_with(&data[..], &env.root, Path::new(""), &opts(), resolver);
                assert!(r.is_err(), "{resolver:?}: {r:?}");
            }
            let r = extract_with(
                &dot_tar()[..],
                &env.root,
                Path::new("evil"),
                &opts(),
                resolver,
            );
            assert!(r.is_err());
            let r = write_plain_with(&b"x"[..], &env.root, Path::new("evil/x"), &opts(), resolver);
            assert!(r.is_err());
            assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "{resolver:?}");
        }
    }

    #[test]
    fn implicit_directories_count_against_max_entries() {
        let env = Env::new();
        let deep = "d/".repeat(50) + "f";
        let data = archive(|a| {
            long_name(a, deep.as_bytes());
            file(a, "x", b"");
        });
        let e = env.extract_opts(&data, &limited(100, 10)).unwrap_err();
        assert!(matches!(e, IngestError::TooManyEntries(10)), "{e}");
        assert!(env.listing().len() <= 10);
        let env = Env::new();
        env.extract_opts(&data, &limited(100, 51)).unwrap();
    }
}
