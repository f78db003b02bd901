//! Safe streaming extraction of untrusted `tar` / `tar.gz` / `tar.zst` uploads.
//!
//! This module owns everything between "bytes arrive from an uploader" and
//! "files exist beneath the upload subvolume": compression sniffing, a small
//! strict streaming tar parser (ustar, GNU long names, PAX `path`/`size`),
//! the path rules from SECURITY.md, size/entry limits, and creating files and
//! directories strictly beneath the destination (`openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, or an `O_NOFOLLOW` component walk).
//!
//! The `tar` crate's `unpack` is deliberately not used: it skips `..` entries,
//! rewrites absolute paths, creates links and device nodes, keeps modes, reads
//! unbounded extension headers into memory and accepts truncated archives.
//! Every rejection aborts the whole upload; files already written stay on disk
//! and the caller is expected to discard the destination subvolume.
//!
//! A compressed upload is decoded on the calling thread while a second
//! thread parses the tar and writes the files, through a small bounded
//! queue (see `pipe`); a plain tar is handled on one thread.
//!
//! The parts, one file each:
//! * `bridge`: the async side's [`ChunkSender`] and the blocking reader
//!   behind it ([`spawn_extract`], [`spawn_write_plain`]), with the
//!   pipeline's timing log.
//! * `decode`: compression sniffing ([`Kind`]), the gzip/zstd decoders,
//!   counting the bytes read and telling source errors from decoder errors.
//! * `pipe`: the decoding thread and the writer thread of a compressed
//!   upload, and the bounded queue between them.
//! * `walk`: the strict tar parser (headers, GNU long names, PAX records,
//!   entry types, the end-of-archive marker) and the entry and byte limits.
//! * `paths`: the path rules and how a path is shown in a message.
//! * `dest`: creating directories and files beneath the root, never through
//!   a symlink, with fixed modes and owner.
//!
//! This file holds the public types (options, report, errors) and the entry
//! points [`extract`], [`write_plain`] and [`make_dir`].

mod bridge;
mod decode;
mod dest;
mod paths;
mod pipe;
#[cfg(test)]
mod test_fixtures;
mod walk;

use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;

#[cfg(test)]
pub use bridge::extract_async;
pub use bridge::{spawn_extract, spawn_write_plain, ChunkSender};
pub use decode::Kind;

use decode::{SourceState, TarStream};
use dest::{Dest, Node, Resolver};
use paths::{bad_path, io_err, normalize};

/// Copy buffer for file contents.
const COPY_BUF: usize = 256 * 1024;
/// Target of every part's debug logs: this module's path, as before it was
/// split into files (`RUST_LOG=draupnir::core::storage::ingest=debug`).
const LOG_TARGET: &str = module_path!();

/// Limits for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total decompressed file-content bytes allowed (the caller passes the
    /// remaining budget).
    pub max_bytes: u64,
    /// Most archive entries (files and directories) allowed.
    pub max_entries: u64,
}

/// Owner given to every created file and directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Options for [`extract`] and [`write_plain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub limits: Limits,
    /// When set, every created file and directory is chowned to it.
    pub owner: Option<Owner>,
}

/// What one extraction did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Bytes read from the source (compressed bytes for `.tar.gz`/`.tar.zst`).
    pub bytes_in: u64,
    /// File content bytes written.
    pub bytes_written: u64,
    /// Archive entries processed (files and directories, including `./`).
    pub entries: u64,
}

/// Why an upload was rejected. `Display` is one short human-readable line.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// An archive entry breaks a rule (path, type, duplicate, ...).
    #[error("archive entry '{path}' {reason}")]
    BadEntry { path: String, reason: String },
    /// A path given by the caller (`subdir` / `rel`) breaks a path rule.
    #[error("destination path '{path}' {reason}")]
    BadPath { path: String, reason: String },
    /// A GNU long-name or PAX header is larger than allowed.
    #[error("archive has a {what} header of {size} bytes (limit {limit} bytes)")]
    HeaderTooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    /// More file content than `max_bytes`.
    #[error("upload exceeds max_image_bytes ({0} bytes)")]
    TooLarge(u64),
    /// More entries than `max_entries`.
    #[error("upload exceeds the limit of {0} entries (files and directories)")]
    TooManyEntries(u64),
    /// The archive ends early.
    #[error("archive is truncated: {0}")]
    Truncated(String),
    /// The tar structure is invalid (checksum, trailing data, bad PAX record...).
    #[error("archive is corrupt: {0}")]
    Corrupt(String),
    /// The gzip or zstd stream is invalid.
    #[error("{format} stream is corrupt: {detail}")]
    Decompress {
        format: &'static str,
        detail: String,
    },
    /// Reading from the uploader failed.
    #[error("error reading upload: {0}")]
    Source(#[source] io::Error),
    /// Writing to the destination failed.
    #[error("io error writing '{path}': {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The extraction task died (panic or cancellation).
    #[error("ingest task failed: {0}")]
    Internal(String),
}

/// Returned by [`ChunkSender::send`] when the extractor has already stopped;
/// await the join handle to learn why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ingest has stopped; its join handle has the reason")]
pub struct IngestClosed;

/// Extract a tar stream (compression auto-detected from magic bytes: gzip
/// `1f8b`, zstd `28b52ffd`, else plain tar) into `root.join(subdir)`.
///
/// `root` is the upload subvolume (must exist); `subdir` is a relative path
/// inside it (`""` for the root, `"pg_wal"` for `pg_wal.tar*`). Everything is
/// created beneath `root` only: files mode 0600, directories 0700, chowned to
/// `opts.owner` when set. Archive modes, owners and mtimes are ignored.
pub fn extract<R: Read>(
    source: R,
    root: &Path,
    subdir: &Path,
    opts: &Options,
) -> Result<Report, IngestError> {
    extract_with(source, root, subdir, opts, Resolver::Openat2)
}

/// Store a non-tar upload as a plain file at `rel` (relative path) beneath
/// `root`, creating parent directories (0700); the file gets mode 0600. The
/// same path rules and `max_bytes` limit as [`extract`] apply.
pub fn write_plain<R: Read>(
    source: R,
    root: &Path,
    rel: &Path,
    opts: &Options,
) -> Result<Report, IngestError> {
    write_plain_with(source, root, rel, opts, Resolver::Openat2)
}

/// [`extract`] with a chosen [`Resolver`] (tests try both).
fn extract_with<R: Read>(
    source: R,
    root: &Path,
    subdir: &Path,
    opts: &Options,
    resolver: Resolver,
) -> Result<Report, IngestError> {
    let sub_raw = subdir.as_os_str().as_bytes();
    let base = normalize(sub_raw).map_err(|reason| bad_path(sub_raw, reason))?;
    // Implicitly created directories count against max_entries too.
    let mut dest = Dest::open(root, opts.owner, resolver, opts.limits.max_entries)?;
    dest.ensure_base(&base)?;

    let state = Rc::new(SourceState::default());
    let mut stream = TarStream::open(source, state.clone())?;
    let (result, mut report) = if stream.kind == Kind::Tar {
        walk::extract_entries(&mut stream, dest, base, opts.limits)
    } else {
        pipe::extract_piped(&mut stream, dest, base, opts.limits)
    };
    report.bytes_in = state.bytes_in.get();
    result.map(|()| report)
}

/// [`write_plain`] with a chosen [`Resolver`] (tests try both).
fn write_plain_with<R: Read>(
    source: R,
    root: &Path,
    rel: &Path,
    opts: &Options,
    resolver: Resolver,
) -> Result<Report, IngestError> {
    let raw = rel.as_os_str().as_bytes();
    let norm = normalize(raw).map_err(|reason| bad_path(raw, reason))?;
    if norm.is_empty() {
        return Err(bad_path(raw, "is empty"));
    }
    // The path comes from the caller, so its parents are not limited.
    let mut dest = Dest::open(root, opts.owner, resolver, u64::MAX)?;
    dest.place(&norm, Node::File, raw)?;
    let mut file = dest.create_file(&norm)?;
    let mut report = Report {
        entries: 1,
        ..Report::default()
    };
    let mut src = source;
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(IngestError::Source(e)),
        };
        report.bytes_in += n as u64;
        report.bytes_written += n as u64;
        if report.bytes_written > opts.limits.max_bytes {
            return Err(IngestError::TooLarge(opts.limits.max_bytes));
        }
        file.write_all(&buf[..n]).map_err(|e| io_err(&norm, e))?;
    }
    Ok(report)
}

/// Create the directory `rel` (and its parents) beneath `root`: mode 0700,
/// chowned to `opts.owner`, never through a symlink. An existing directory
/// is fine. (`scp -r` and SFTP `mkdir` create empty directories this way.)
pub fn make_dir(root: &Path, rel: &Path, opts: &Options) -> Result<(), IngestError> {
    let raw = rel.as_os_str().as_bytes();
    let norm = normalize(raw).map_err(|reason| bad_path(raw, reason))?;
    if norm.is_empty() {
        return Ok(());
    }
    let mut dest = Dest::open(root, opts.owner, Resolver::Openat2, u64::MAX)?;
    dest.ensure_base(&norm)
}

#[cfg(test)]
mod tests {
    use super::test_fixtures::*;
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn subdir_pg_wal() {
        let env = Env::new();
        // base.tar first creates pg_wal/, then pg_wal.tar lands inside it.
        env.extract(&archive(|a| dir(a, "pg_wal/"))).unwrap();
        let wal = archive(|a| {
            dir(a, "./");
            file(a, "000000010000000000000001", b"wal");
            dir(a, "archive_status/");
        });
        let r = extract(&wal[..], &env.root, Path::new("pg_wal"), &opts()).unwrap();
        assert_eq!(r.entries, 3);
        assert_eq!(
            fs::read(env.root.join("pg_wal/000000010000000000000001")).unwrap(),
            b"wal"
        );
        assert!(env.root.join("pg_wal/archive_status").is_dir());
        // A fresh nested subdir is created (0700).
        let r = extract(&wal[..], &env.root, Path::new("tblspc/16384"), &opts()).unwrap();
        assert_eq!(r.bytes_written, 3);
        let m = fs::metadata(env.root.join("tblspc")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o700);
        assert!(env
            .root
            .join("tblspc/16384/000000010000000000000001")
            .is_file());
        env.assert_contained();
    }

    #[test]
    fn subdir_rules() {
        let env = Env::new();
        let data = dot_tar();
        for bad in ["../x", "/abs", "a/../../b"] {
            let r = extract(&data[..], &env.root, Path::new(bad), &opts());
            assert!(
                matches!(r, Err(IngestError::BadPath { .. })),
                "{bad}: {r:?}"
            );
        }
        env.assert_contained();
        assert!(env.listing().is_empty());
    }

    #[test]
    fn write_plain_happy_and_rules() {
        let env = Env::new();
        let r = write_plain(
            &b"manifest"[..],
            &env.root,
            Path::new("backup_manifest"),
            &opts(),
        )
        .unwrap();
        assert_eq!(
            r,
            Report {
                bytes_in: 8,
                bytes_written: 8,
                entries: 1
            }
        );
        let r = write_plain(
            &[5u8; 300_000][..],
            &env.root,
            Path::new("./x/y/z.bin"),
            &opts(),
        )
        .unwrap();
        assert_eq!(r.bytes_written, 300_000);
        assert_eq!(
            fs::read(env.root.join("x/y/z.bin")).unwrap(),
            vec![5u8; 300_000]
        );
        let m = fs::metadata(env.root.join("x/y/z.bin")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o600);
        let m = fs::metadata(env.root.join("x/y")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o700);

        for bad in ["../outside/x", "/abs", "x/../../y", "", "."] {
            let r = write_plain(&b"x"[..], &env.root, Path::new(bad), &opts());
            assert!(
                matches!(r, Err(IngestError::BadPath { .. })),
                "{bad}: {r:?}"
            );
        }
        let r = write_plain(&b"x"[..], &env.root, Path::new("backup_manifest"), &opts());
        assert!(r.is_err());
        let e = write_plain(
            &[0u8; 2000][..],
            &env.root,
            Path::new("big"),
            &limited(1000, 1),
        )
        .unwrap_err();
        assert!(matches!(e, IngestError::TooLarge(1000)), "{e}");
        assert!(fs::metadata(env.root.join("big")).unwrap().len() <= 1000);
        env.assert_contained();
    }
}
