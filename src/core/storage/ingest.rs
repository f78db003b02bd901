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
//! queue (see `extract_piped`); a plain tar is handled on one thread.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Chain, Cursor, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{Gid, Mode, OFlags, ResolveFlags, Uid};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Size of a tar block.
const BLOCK: usize = 512;
/// Largest GNU long-name or PAX extended header body that is accepted.
const MAX_META_BYTES: u64 = 64 * 1024;
/// Longest accepted path (bytes), in the archive and beneath the root.
const MAX_PATH_BYTES: usize = 4096;
/// Longest accepted path component (bytes).
const MAX_COMPONENT_BYTES: usize = 255;
/// Most extension headers ('L', 'x', 'g') allowed in a row before an entry.
const MAX_META_IN_A_ROW: u32 = 8;
/// Most zero padding accepted after the end-of-archive marker.
const MAX_TRAILING_ZEROS: u64 = 1024 * 1024;
/// Copy buffer for file contents.
const COPY_BUF: usize = 256 * 1024;
/// Buffer between the source and the decompressor.
const READ_BUF: usize = 64 * 1024;
/// Chunks buffered between the async side and the blocking extractor.
const CHANNEL_CAPACITY: usize = 16;
/// Decoded bytes per piece handed from the decoding thread to the writer.
const PIPE_CHUNK: usize = 256 * 1024;
/// Decoded pieces queued between them (bounds decoding ahead to 2 MiB).
const PIPE_DEPTH: usize = 8;
/// Longest path shown in an error message (characters).
const MAX_SHOWN_PATH: usize = 200;

const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

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

/// Container format, sniffed from the first bytes of the upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tar,
    TarGz,
    TarZst,
}

impl Kind {
    /// Detects the compression from the first (up to 4) bytes of an upload:
    /// gzip `1f 8b`, zstd `28 b5 2f fd`, anything else is taken as plain tar.
    pub fn detect(prefix: &[u8]) -> Kind {
        if prefix.starts_with(&[0x1f, 0x8b]) {
            Kind::TarGz
        } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Kind::TarZst
        } else {
            Kind::Tar
        }
    }

    fn compression(self) -> &'static str {
        match self {
            Kind::Tar => "tar",
            Kind::TarGz => "gzip",
            Kind::TarZst => "zstd",
        }
    }
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

/// Sending half of [`spawn_extract`] / [`spawn_write_plain`]. Dropping it
/// ends the stream.
#[derive(Debug)]
pub struct ChunkSender {
    tx: mpsc::Sender<Chunk>,
}

type Chunk = Result<Vec<u8>, io::Error>;

impl ChunkSender {
    /// Queues the next chunk of the upload. Fails with [`IngestClosed`] when
    /// the extractor has already stopped (usually because it rejected the
    /// upload); the join handle then carries the reason.
    pub async fn send(&self, chunk: Vec<u8>) -> Result<(), IngestClosed> {
        if chunk.is_empty() {
            return if self.tx.is_closed() {
                Err(IngestClosed)
            } else {
                Ok(())
            };
        }
        self.tx.send(Ok(chunk)).await.map_err(|_| IngestClosed)
    }

    /// Ends the stream with an error (e.g. the uploader disconnected): the
    /// extraction fails with [`IngestError::Source`] instead of reporting a
    /// truncated archive.
    pub async fn abort(self, err: io::Error) {
        // If the extractor already stopped it has its own error; nothing to do.
        let _ = self.tx.send(Err(err)).await;
    }

    /// True once the extractor has stopped reading.
    #[cfg(test)]
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Async bridge to [`extract`]: the extraction runs on
/// `tokio::task::spawn_blocking`, reading the chunks given to the returned
/// [`ChunkSender`]. Must be called from within a tokio runtime.
pub fn spawn_extract(
    root: PathBuf,
    subdir: PathBuf,
    opts: Options,
) -> (ChunkSender, JoinHandle<Result<Report, IngestError>>) {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let handle = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let mut reader = ChannelReader::new(rx);
        let result = extract(&mut reader, &root, &subdir, &opts);
        log_pipeline("extract", started, &reader, &result);
        result
    });
    (ChunkSender { tx }, handle)
}

/// Async bridge to [`write_plain`], like [`spawn_extract`].
pub fn spawn_write_plain(
    root: PathBuf,
    rel: PathBuf,
    opts: Options,
) -> (ChunkSender, JoinHandle<Result<Report, IngestError>>) {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let handle = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let mut reader = ChannelReader::new(rx);
        let result = write_plain(&mut reader, &root, &rel, &opts);
        log_pipeline("write_plain", started, &reader, &result);
        result
    });
    (ChunkSender { tx }, handle)
}

/// Copies an `AsyncRead` to completion through [`spawn_extract`].
#[cfg(test)]
pub async fn extract_async<R: tokio::io::AsyncRead + Unpin>(
    mut source: R,
    root: PathBuf,
    subdir: PathBuf,
    opts: Options,
) -> Result<Report, IngestError> {
    use tokio::io::AsyncReadExt;
    let (tx, handle) = spawn_extract(root, subdir, opts);
    loop {
        let mut chunk = vec![0u8; COPY_BUF];
        match source.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                chunk.truncate(n);
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tx.abort(e).await;
                return join(handle).await;
            }
        }
    }
    drop(tx);
    join(handle).await
}

#[cfg(test)]
async fn join(handle: JoinHandle<Result<Report, IngestError>>) -> Result<Report, IngestError> {
    match handle.await {
        Ok(result) => result,
        Err(e) => Err(IngestError::Internal(e.to_string())),
    }
}

/// Where the extraction thread's time went: waiting for bytes from the
/// uploader (the network side is the bound) or working (decoding and
/// writing are). Logged at debug level.
fn log_pipeline(
    what: &str,
    started: std::time::Instant,
    reader: &ChannelReader,
    result: &Result<Report, IngestError>,
) {
    let total = started.elapsed();
    tracing::debug!(
        what,
        ok = result.is_ok(),
        total_ms = total.as_millis() as u64,
        input_wait_ms = reader.waited.as_millis() as u64,
        work_ms = total.saturating_sub(reader.waited).as_millis() as u64,
        chunks = reader.chunks,
        "ingest pipeline"
    );
}

/// Blocking `Read` over the chunk channel (used on a spawn_blocking thread).
struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
    /// Time spent waiting for the next chunk.
    waited: std::time::Duration,
    chunks: u64,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<Chunk>) -> Self {
        ChannelReader {
            rx,
            cur: Vec::new(),
            pos: 0,
            done: false,
            waited: std::time::Duration::ZERO,
            chunks: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos < self.cur.len() {
                let n = buf.len().min(self.cur.len() - self.pos);
                buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            let t = std::time::Instant::now();
            let next = self.rx.blocking_recv();
            self.waited += t.elapsed();
            match next {
                Some(Ok(chunk)) => {
                    self.chunks += 1;
                    self.cur = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => {
                    self.done = true;
                    self.rx.close();
                    return Err(e);
                }
                None => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Source side: counting, sniffing, decompression.

#[derive(Default)]
struct SourceState {
    bytes_in: Cell<u64>,
    failed: Cell<bool>,
}

/// Counts bytes read from the uploader and remembers whether it failed, so
/// that decoder errors can be told apart from source errors.
struct CountingReader<R> {
    inner: R,
    state: Rc<SourceState>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.state
                    .bytes_in
                    .set(self.state.bytes_in.get().saturating_add(n as u64));
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.state.failed.set(true);
                }
                Err(e)
            }
        }
    }
}

type Inner<R> = BufReader<Chain<Cursor<Vec<u8>>, CountingReader<R>>>;

enum Decoded<R: Read> {
    Plain(Inner<R>),
    // Boxed: zlib-rs keeps its state inline, which makes this variant large.
    Gz(Box<flate2::bufread::GzDecoder<Inner<R>>>),
    Zst(zstd::stream::read::Decoder<'static, Inner<R>>),
}

impl<R: Read> Read for Decoded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoded::Plain(r) => r.read(buf),
            Decoded::Gz(r) => r.read(buf),
            Decoded::Zst(r) => r.read(buf),
        }
    }
}

/// The decompressed tar byte stream plus error classification.
struct TarStream<R: Read> {
    dec: Option<Decoded<R>>,
    kind: Kind,
    state: Rc<SourceState>,
    /// Offset in the decompressed stream (for messages).
    pos: u64,
}

fn map_source_err(state: &SourceState, kind: Kind, e: io::Error) -> IngestError {
    if state.failed.get() || kind == Kind::Tar {
        IngestError::Source(e)
    } else if e.kind() == io::ErrorKind::UnexpectedEof {
        IngestError::Truncated(format!("{} stream ends early", kind.compression()))
    } else {
        IngestError::Decompress {
            format: kind.compression(),
            detail: e.to_string(),
        }
    }
}

impl<R: Read> TarStream<R> {
    fn open(source: R, state: Rc<SourceState>) -> Result<Self, IngestError> {
        let mut counting = CountingReader {
            inner: source,
            state: state.clone(),
        };
        let mut magic = [0u8; 4];
        let mut got = 0;
        while got < magic.len() {
            match counting.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(IngestError::Source(e)),
            }
        }
        if got == 0 {
            return Err(IngestError::Truncated("the upload is empty".into()));
        }
        let kind = Kind::detect(&magic[..got]);
        let inner = BufReader::with_capacity(
            READ_BUF,
            Read::chain(Cursor::new(magic[..got].to_vec()), counting),
        );
        let dec = match kind {
            Kind::Tar => Decoded::Plain(inner),
            Kind::TarGz => Decoded::Gz(Box::new(flate2::bufread::GzDecoder::new(inner))),
            Kind::TarZst => Decoded::Zst(
                zstd::stream::read::Decoder::with_buffer(inner)
                    .map_err(|e| map_source_err(&state, kind, e))?,
            ),
        };
        Ok(TarStream {
            dec: Some(dec),
            kind,
            state,
            pos: 0,
        })
    }

    /// One `read` call (retrying on EINTR); 0 means end of stream.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, IngestError> {
        let Some(dec) = self.dec.as_mut() else {
            return Ok(0);
        };
        loop {
            match dec.read(buf) {
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(map_source_err(&self.state, self.kind, e)),
            }
        }
    }

    /// After the decompressed stream hit EOF: reject anything left in the
    /// compressed input (a second gzip member, garbage after the stream).
    fn finish(&mut self) -> Result<(), IngestError> {
        let kind = self.kind;
        let leftover = match self.dec.take() {
            None | Some(Decoded::Plain(_)) => false,
            Some(Decoded::Gz(d)) => {
                let mut inner = d.into_inner();
                !inner
                    .fill_buf()
                    .map_err(|e| map_source_err(&self.state, kind, e))?
                    .is_empty()
            }
            Some(Decoded::Zst(d)) => {
                let mut inner = d.finish();
                !inner
                    .fill_buf()
                    .map_err(|e| map_source_err(&self.state, kind, e))?
                    .is_empty()
            }
        };
        if leftover {
            return Err(IngestError::Decompress {
                format: kind.compression(),
                detail: "trailing data after the end of the stream \
                         (several members or garbage)"
                    .into(),
            });
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Path rules.

/// Validates an archive/caller path and returns its normalised form
/// (components joined by '/', without "." and empty components).
fn normalize(raw: &[u8]) -> Result<Vec<u8>, &'static str> {
    if raw.contains(&0) {
        return Err("has a NUL byte in its path");
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err("has a path longer than 4096 bytes");
    }
    if raw.first() == Some(&b'/') {
        return Err("has an absolute path");
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err("has a '..' component"),
            _ if comp.len() > MAX_COMPONENT_BYTES => {
                return Err("has a path component longer than 255 bytes");
            }
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(comp);
            }
        }
    }
    Ok(out)
}

/// Lossy, single-line, length-capped rendering of a path for messages.
fn show(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i >= MAX_SHOWN_PATH {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

fn bad_entry(path: &[u8], reason: impl Into<String>) -> IngestError {
    IngestError::BadEntry {
        path: show(path),
        reason: reason.into(),
    }
}

fn bad_path(path: &[u8], reason: impl Into<String>) -> IngestError {
    IngestError::BadPath {
        path: show(path),
        reason: reason.into(),
    }
}

fn io_err(path: &[u8], source: io::Error) -> IngestError {
    IngestError::Io {
        path: show(path),
        source,
    }
}

fn join_rel(base: &[u8], rel: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    if !out.is_empty() && !rel.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(rel);
    out
}

fn split_parent(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&rel[..0], rel),
    }
}

// ---------------------------------------------------------------------------
// Destination side: creating things beneath the root.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolver {
    /// `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`,
    /// falling back to `Walk` on ENOSYS/EPERM.
    Openat2,
    /// `openat(O_NOFOLLOW | O_DIRECTORY)` one component at a time.
    Walk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Dir { explicit: bool },
    File,
}

struct Dest {
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
    fn open(
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
    fn create_file(&mut self, rel: &[u8]) -> Result<File, IngestError> {
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
    fn place(&mut self, rel: &[u8], node: Node, shown: &[u8]) -> Result<(), IngestError> {
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
    fn ensure_base(&mut self, base: &[u8]) -> Result<(), IngestError> {
        if base.is_empty() {
            return Ok(());
        }
        self.place(base, Node::Dir { explicit: false }, base)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Extraction.

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
        let mut ex = Extractor {
            stream: &mut stream,
            dest,
            base,
            limits: opts.limits,
            buf: vec![0u8; COPY_BUF],
            report: Report::default(),
        };
        (ex.run(), ex.report)
    } else {
        extract_piped(&mut stream, dest, base, opts.limits)
    };
    report.bytes_in = state.bytes_in.get();
    result.map(|()| report)
}

/// A compressed archive: decode on this thread and parse the tar and
/// write its files on a second one, so that inflating and writing overlap
/// (each alone keeps a core busy; one after the other was the bound of a
/// `.tar.gz` upload). The queue between them is bounded, so decoding stays
/// at most [`PIPE_DEPTH`] chunks ahead: memory stays small whatever the
/// compression ratio, and when the writer stops (a rejected entry, a
/// limit) decoding stops at its next chunk. Errors arrive in stream order,
/// exactly as with a single thread.
fn extract_piped<R: Read>(
    stream: &mut TarStream<R>,
    dest: Dest,
    base: Vec<u8>,
    limits: Limits,
) -> (Result<(), IngestError>, Report) {
    let (tx, rx) = std::sync::mpsc::sync_channel(PIPE_DEPTH);
    let (spent_tx, spent_rx) = std::sync::mpsc::sync_channel(PIPE_DEPTH + 2);
    std::thread::scope(|scope| {
        let writer = std::thread::Builder::new()
            .name("draupnir-untar".into())
            .spawn_scoped(scope, move || {
                let mut ex = Extractor {
                    stream: PipedStream::new(rx, spent_tx),
                    dest,
                    base,
                    limits,
                    buf: vec![0u8; COPY_BUF],
                    report: Report::default(),
                };
                let result = ex.run();
                ((result, ex.report), thread_cpu())
            });
        let writer = match writer {
            Ok(w) => w,
            Err(e) => {
                return (
                    Err(IngestError::Internal(format!(
                        "cannot start the extraction thread: {e}"
                    ))),
                    Report::default(),
                )
            }
        };
        let (started, cpu_before) = (std::time::Instant::now(), thread_cpu());
        pump(stream, &tx, &spent_rx);
        let decode_cpu = thread_cpu().saturating_sub(cpu_before);
        drop(tx);
        match writer.join() {
            Ok((done, write_cpu)) => {
                tracing::debug!(
                    wall_ms = started.elapsed().as_millis() as u64,
                    decode_cpu_ms = decode_cpu.as_millis() as u64,
                    write_cpu_ms = write_cpu.as_millis() as u64,
                    "ingest threads"
                );
                done
            }
            Err(_) => (
                Err(IngestError::Internal(
                    "the extraction thread panicked".into(),
                )),
                Report::default(),
            ),
        }
    })
}

/// CPU time (user + system) used so far by the calling thread.
fn thread_cpu() -> std::time::Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    std::time::Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Decoded bytes from [`pump`] to the writer thread.
enum Piece {
    Data(Vec<u8>),
    /// End of the decoded stream, with what [`TarStream::finish`] found
    /// (reported only if the tar parser gets that far and asks).
    End(Result<(), IngestError>),
    /// Reading or decoding failed here.
    Fail(IngestError),
}

/// Decode `stream` into [`PIPE_CHUNK`] pieces until it ends, fails, or the
/// writer hangs up.
fn pump<R: Read>(
    stream: &mut TarStream<R>,
    tx: &std::sync::mpsc::SyncSender<Piece>,
    spent: &std::sync::mpsc::Receiver<Vec<u8>>,
) {
    loop {
        // A piece the writer is done with, or a new one.
        let mut chunk = spent.try_recv().unwrap_or_default();
        chunk.resize(PIPE_CHUNK, 0);
        let mut filled = 0;
        let mut stop = None;
        while filled < chunk.len() {
            match stream.read_some(&mut chunk[filled..]) {
                Ok(0) => {
                    stop = Some(Piece::End(stream.finish()));
                    break;
                }
                Ok(n) => filled += n,
                Err(e) => {
                    stop = Some(Piece::Fail(e));
                    break;
                }
            }
        }
        if filled > 0 {
            chunk.truncate(filled);
            if tx.send(Piece::Data(chunk)).is_err() {
                return; // the writer stopped; its result says why
            }
        }
        if let Some(last) = stop {
            let _ = tx.send(last);
            return;
        }
    }
}

/// What the tar parser reads from: the decoded stream, in this thread or
/// from [`pump`].
trait TarSource {
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

/// The writer thread's end of [`extract_piped`].
struct PipedStream {
    rx: std::sync::mpsc::Receiver<Piece>,
    /// Spent pieces go back to [`pump`] to be filled again.
    spent: std::sync::mpsc::SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    at: usize,
    pos: u64,
    end: Option<Result<(), IngestError>>,
}

impl PipedStream {
    fn new(
        rx: std::sync::mpsc::Receiver<Piece>,
        spent: std::sync::mpsc::SyncSender<Vec<u8>>,
    ) -> Self {
        PipedStream {
            rx,
            spent,
            cur: Vec::new(),
            at: 0,
            pos: 0,
            end: None,
        }
    }

    /// Makes sure `cur` has unread bytes; false at the end of the stream.
    fn fill(&mut self) -> Result<bool, IngestError> {
        while self.at == self.cur.len() {
            if self.end.is_some() {
                return Ok(false);
            }
            match self.rx.recv() {
                Ok(Piece::Data(chunk)) => {
                    let spent = std::mem::replace(&mut self.cur, chunk);
                    if spent.capacity() == PIPE_CHUNK {
                        let _ = self.spent.try_send(spent);
                    }
                    self.at = 0;
                }
                Ok(Piece::End(finish)) => self.end = Some(finish),
                Ok(Piece::Fail(e)) => return Err(e),
                Err(_) => {
                    return Err(IngestError::Internal(
                        "the decoding thread stopped early".into(),
                    ))
                }
            }
        }
        Ok(true)
    }

    /// Takes up to `max` unread bytes of `cur`.
    fn take(&mut self, max: usize) -> &[u8] {
        let n = max.min(self.cur.len() - self.at);
        let out = &self.cur[self.at..self.at + n];
        self.at += n;
        self.pos += n as u64;
        out
    }
}

impl TarSource for PipedStream {
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, IngestError> {
        if !self.fill()? {
            return Ok(0);
        }
        let data = self.take(buf.len());
        let n = data.len();
        buf[..n].copy_from_slice(data);
        Ok(n)
    }

    /// File contents are written straight from the piece, not copied first.
    fn next_slice<'a>(
        &'a mut self,
        max: usize,
        _scratch: &'a mut [u8],
    ) -> Result<&'a [u8], IngestError> {
        if !self.fill()? {
            return Ok(&[]);
        }
        Ok(self.take(max))
    }

    fn pos(&self) -> u64 {
        self.pos
    }

    fn finish(&mut self) -> Result<(), IngestError> {
        match self.end.take() {
            Some(r) => r,
            None => Err(IngestError::Internal(
                "finish before the end of the stream".into(),
            )),
        }
    }
}

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

/// Extension-header state that applies to the next real entry.
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

impl<S: TarSource> Extractor<S> {
    fn run(&mut self) -> Result<(), IngestError> {
        let mut block = [0u8; BLOCK];
        let mut pending = Pending::default();
        loop {
            let offset = self.stream.pos();
            match self.stream.read_full(&mut block)? {
                BLOCK => {}
                0 => {
                    return Err(IngestError::Truncated(
                        "missing end-of-archive blocks".into(),
                    ));
                }
                _ => {
                    return Err(IngestError::Truncated(
                        "stream ends inside a header block".into(),
                    ));
                }
            }
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
                        parse_pax(&body, &mut pending)?;
                    }
                    _ => self.skip(size + padding(size))?,
                }
                continue;
            }

            let header_path = header.path_bytes().into_owned();
            let shown_path: Vec<u8> = pending
                .pax_path
                .clone()
                .or_else(|| pending.long_name.clone())
                .unwrap_or_else(|| header_path.clone());

            if typ == b'K' {
                return Err(bad_entry(
                    &shown_path,
                    "has a GNU long link name (links are not allowed)",
                ));
            }

            self.report.entries += 1;
            if self.report.entries > self.limits.max_entries {
                return Err(IngestError::TooManyEntries(self.limits.max_entries));
            }

            if let Some(reason) = entry_type_reason(typ) {
                return Err(bad_entry(&shown_path, reason));
            }
            if pending.pax_sparse {
                return Err(bad_entry(
                    &shown_path,
                    "is a GNU sparse file (not supported)",
                ));
            }
            if pending.pax_linkpath {
                return Err(bad_entry(
                    &shown_path,
                    "has a link target (links are not allowed)",
                ));
            }

            // Every path source must pass, not only the one that wins.
            for candidate in [
                Some(&header_path),
                pending.long_name.as_ref(),
                pending.pax_path.as_ref(),
            ]
            .into_iter()
            .flatten()
            {
                normalize(candidate).map_err(|reason| bad_entry(candidate, reason))?;
            }
            let norm = normalize(&shown_path).map_err(|reason| bad_entry(&shown_path, reason))?;
            let size = pending.pax_size.unwrap_or(size);
            pending = Pending::default();

            let is_dir = typ == b'5' || (typ == b'\0' && shown_path.last() == Some(&b'/'));
            if is_dir {
                if size != 0 {
                    return Err(bad_entry(&shown_path, "is a directory with data"));
                }
                if norm.is_empty() {
                    continue; // "./": the destination itself
                }
                let rel = join_rel(&self.base, &norm);
                if rel.len() >= MAX_PATH_BYTES {
                    return Err(bad_entry(&shown_path, "has a path that is too long"));
                }
                self.dest
                    .place(&rel, Node::Dir { explicit: true }, &shown_path)?;
            } else {
                if norm.is_empty() || shown_path.last() == Some(&b'/') {
                    return Err(bad_entry(&shown_path, "is a file without a file name"));
                }
                let rel = join_rel(&self.base, &norm);
                if rel.len() >= MAX_PATH_BYTES {
                    return Err(bad_entry(&shown_path, "has a path that is too long"));
                }
                self.write_file(&rel, &shown_path, size)?;
            }
        }
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
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn opts() -> Options {
        Options {
            limits: Limits {
                max_bytes: 1 << 30,
                max_entries: 10_000,
            },
            owner: None,
        }
    }

    fn limited(max_bytes: u64, max_entries: u64) -> Options {
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
    struct Env {
        _tmp: tempfile::TempDir,
        top: PathBuf,
        root: PathBuf,
    }

    impl Env {
        fn new() -> Env {
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

        fn extract(&self, data: &[u8]) -> Result<Report, IngestError> {
            extract(data, &self.root, Path::new(""), &opts())
        }

        fn extract_opts(&self, data: &[u8], o: &Options) -> Result<Report, IngestError> {
            extract(data, &self.root, Path::new(""), o)
        }

        /// Nothing but root/ and an empty outside/ beside the destination.
        fn assert_contained(&self) {
            let mut names: Vec<_> = fs::read_dir(&self.top)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            assert_eq!(names, ["outside", "root"]);
            assert_eq!(fs::read_dir(self.top.join("outside")).unwrap().count(), 0);
        }

        /// All paths beneath root, relative, sorted ("dir/" for directories).
        fn listing(&self) -> Vec<String> {
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

    // ---- raw archive construction -------------------------------------

    fn header(name: &[u8], typ: u8, size: u64) -> [u8; BLOCK] {
        let mut h = tar::Header::new_ustar();
        assert!(name.len() <= 100, "use long names for longer paths");
        h.as_mut_bytes()[..name.len()].copy_from_slice(name);
        h.set_mode(0o644);
        h.set_size(size);
        h.set_entry_type(tar::EntryType::new(typ));
        h.set_cksum();
        *h.as_bytes()
    }

    fn pad(out: &mut Vec<u8>) {
        while !out.len().is_multiple_of(BLOCK) {
            out.push(0);
        }
    }

    fn entry(out: &mut Vec<u8>, name: &[u8], typ: u8, data: &[u8]) {
        out.extend_from_slice(&header(name, typ, data.len() as u64));
        out.extend_from_slice(data);
        pad(out);
    }

    fn file(out: &mut Vec<u8>, name: &str, data: &[u8]) {
        entry(out, name.as_bytes(), b'0', data);
    }

    fn dir(out: &mut Vec<u8>, name: &str) {
        entry(out, name.as_bytes(), b'5', b"");
    }

    fn long_name(out: &mut Vec<u8>, name: &[u8]) {
        let mut body = name.to_vec();
        body.push(0);
        entry(out, b"././@LongLink", b'L', &body);
    }

    fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
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

    fn pax(out: &mut Vec<u8>, records: &[(&str, &[u8])]) {
        let body: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        entry(out, b"PaxHeaders.0/x", b'x', &body);
    }

    fn end(out: &mut Vec<u8>) {
        out.extend_from_slice(&[0u8; 2 * BLOCK]);
    }

    fn archive(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        f(&mut out);
        end(&mut out);
        out
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zst(data: &[u8]) -> Vec<u8> {
        zstd::encode_all(data, 3).unwrap()
    }

    /// A pg_basebackup-like archive written by tar::Builder.
    fn builder_tar() -> Vec<u8> {
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
    fn dot_tar() -> Vec<u8> {
        archive(|a| {
            dir(a, "./");
            file(a, "./PG_VERSION", b"16\n");
            dir(a, "./base/");
            dir(a, "./base/1/");
            file(a, "./base/1/1234", b"relation");
            file(a, "./global/pg_control", b"ctl");
        })
    }

    fn check_builder_result(env: &Env, report: &Report) {
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

    fn expect_bad_entry(r: Result<Report, IngestError>, reason_part: &str) -> String {
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

    // ---- happy paths ----------------------------------------------------

    #[test]
    fn plain_tar_from_builder() {
        let env = Env::new();
        let data = builder_tar();
        let report = env.extract(&data).unwrap();
        assert_eq!(report.bytes_in, data.len() as u64);
        check_builder_result(&env, &report);
    }

    #[test]
    fn tar_gz_from_builder() {
        let env = Env::new();
        let data = gz(&builder_tar());
        let report = env.extract(&data).unwrap();
        assert_eq!(report.bytes_in, data.len() as u64);
        check_builder_result(&env, &report);
    }

    #[test]
    fn tar_zst_from_builder() {
        let env = Env::new();
        let data = zst(&builder_tar());
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
    fn walk_resolver_happy_path() {
        let env = Env::new();
        let data = builder_tar();
        let report =
            extract_with(&data[..], &env.root, Path::new(""), &opts(), Resolver::Walk).unwrap();
        check_builder_result(&env, &report);
    }

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
    fn empty_archive_and_empty_upload() {
        let env = Env::new();
        let r = env.extract(&[0u8; 1024]).unwrap();
        assert_eq!(
            r,
            Report {
                bytes_in: 1024,
                bytes_written: 0,
                entries: 0
            }
        );
        let r = env.extract(&gz(&[0u8; 10240])).unwrap();
        assert_eq!(r.entries, 0);
        let e = env.extract(b"").unwrap_err();
        assert!(matches!(e, IngestError::Truncated(_)), "{e}");
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

    // ---- path rules -----------------------------------------------------

    #[test]
    fn dotdot_in_plain_header() {
        let env = Env::new();
        for name in ["a/../b", "../escape", "..", "x/.."] {
            let r = env.extract(&archive(|a| file(a, name, b"pwned")));
            let msg = expect_bad_entry(r, "'..' component");
            assert_eq!(msg, format!("archive entry '{name}' has a '..' component"));
        }
        // Also as a directory entry.
        expect_bad_entry(env.extract(&archive(|a| dir(a, "../d/"))), "'..'");
        env.assert_contained();
        assert!(env.listing().is_empty());
    }

    #[test]
    fn absolute_paths() {
        let env = Env::new();
        let target = env.top.join("outside/abs");
        let name = target.to_str().unwrap();
        expect_bad_entry(env.extract(&archive(|a| file(a, name, b"x"))), "absolute");
        expect_bad_entry(env.extract(&archive(|a| dir(a, "/"))), "absolute");
        env.assert_contained();
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
    fn nul_and_overlong_paths() {
        let env = Env::new();
        let r = env.extract(&archive(|a| {
            pax(a, &[("path", b"a\0/../../b")]);
            file(a, "x", b"x");
        }));
        expect_bad_entry(r, "NUL");
        let r = env.extract(&archive(|a| {
            long_name(a, b"ok\0/../../b");
            file(a, "x", b"x");
        }));
        expect_bad_entry(r, "NUL");
        let long = "a/".repeat(2100);
        let r = env.extract(&archive(|a| {
            long_name(a, long.as_bytes());
            file(a, "x", b"x");
        }));
        expect_bad_entry(r, "longer than 4096");
        let comp = "c".repeat(256);
        let r = env.extract(&archive(|a| {
            pax(a, &[("path", comp.as_bytes())]);
            file(a, "x", b"x");
        }));
        expect_bad_entry(r, "longer than 255");
        // 255 is fine.
        let ok = "c".repeat(255);
        env.extract(&archive(|a| {
            pax(a, &[("path", ok.as_bytes())]);
            file(a, "x", b"x");
        }))
        .unwrap();
        assert_eq!(env.listing(), [ok]);
        env.assert_contained();
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

    // ---- entry types ------------------------------------------------------

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

    // ---- duplicates -------------------------------------------------------

    type Build = dyn Fn(&mut Vec<u8>);

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

    // ---- limits -----------------------------------------------------------

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

    /// A reader that counts what was taken from it.
    struct Counted<'a> {
        data: &'a [u8],
        taken: Rc<Cell<u64>>,
    }

    impl Read for Counted<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = Read::read(&mut self.data, buf)?;
            self.taken.set(self.taken.get() + n as u64);
            Ok(n)
        }
    }

    #[test]
    fn decoding_stops_soon_after_the_writer_refuses() {
        // A refused first entry, then 16 MiB that does not compress: the
        // decoding thread must not read on much past the refusal.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let noise: Vec<u8> = (0..16 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let data = gz(&archive(|a| {
            file(a, "../evil", b"x");
            file(a, "noise", &noise);
        }));
        assert!(data.len() > 16 << 20);
        let env = Env::new();
        let taken = Rc::new(Cell::new(0));
        let source = Counted {
            data: &data,
            taken: taken.clone(),
        };
        let e = extract(source, &env.root, Path::new(""), &opts()).unwrap_err();
        assert!(matches!(e, IngestError::BadEntry { .. }), "{e}");
        assert!(taken.get() < 6 << 20, "read {} bytes", taken.get());
        assert!(env.listing().is_empty());
        env.assert_contained();
    }

    #[test]
    fn tar_split_over_two_gzip_members_is_truncated() {
        // Errors come in stream order with the decoding thread too: the
        // tar ends early (first member) before the second member is seen.
        let tar = archive(|a| file(a, "a", b"hello"));
        let (first, second) = tar.split_at(tar.len() / 2);
        let mut data = gz(first);
        data.extend_from_slice(&gz(second));
        let env = Env::new();
        let e = env.extract(&data).unwrap_err();
        assert!(matches!(e, IngestError::Truncated(_)), "{e}");
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

    // ---- truncation, corruption, trailing data ------------------------------

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

    #[test]
    fn gzip_problems() {
        let tar = archive(|a| file(a, "a", b"hello"));
        let good = gz(&tar);

        let mut bad_crc = good.clone();
        let n = bad_crc.len();
        bad_crc[n - 8] ^= 0xff;
        let mut bad_len = good.clone();
        bad_len[n - 1] ^= 0xff;
        let mut two_members = good.clone();
        two_members.extend_from_slice(&gz(b""));
        let mut garbage = good.clone();
        garbage.extend_from_slice(b"\0\0junk");
        let truncated = good[..n - 4].to_vec();
        let mut corrupt = good.clone();
        corrupt[12] ^= 0x55;
        corrupt[13] ^= 0x55;

        for (name, data) in [
            ("crc", bad_crc),
            ("isize", bad_len),
            ("two members", two_members),
            ("garbage", garbage),
            ("truncated", truncated),
            ("corrupt", corrupt),
        ] {
            let env = Env::new();
            let e = env.extract(&data).unwrap_err();
            let msg = e.to_string();
            eprintln!("gzip {name}: {msg}");
            assert!(
                msg.starts_with("gzip stream") || msg.starts_with("archive is"),
                "{name}: {msg}"
            );
            assert!(!msg.contains('\n'));
        }
        let env = Env::new();
        env.extract(&good).unwrap();
    }

    #[test]
    fn zstd_problems() {
        let tar = archive(|a| file(a, "a", b"hello"));
        let good = zst(&tar);
        let n = good.len();
        let mut garbage = good.clone();
        garbage.extend_from_slice(b"junkjunk");
        let mut corrupt = good.clone();
        corrupt[n / 2] ^= 0xff;
        for (name, data) in [
            ("truncated", good[..n - 3].to_vec()),
            ("garbage", garbage),
            ("corrupt", corrupt),
        ] {
            let env = Env::new();
            let e = env.extract(&data).unwrap_err();
            eprintln!("zstd {name}: {e}");
            assert!(
                matches!(
                    e,
                    IngestError::Decompress { .. }
                        | IngestError::Truncated(_)
                        | IngestError::Corrupt(_)
                ),
                "{name}: {e}"
            );
        }
        // Concatenated frames are valid zstd.
        let env = Env::new();
        let mut two = zst(&tar[..512]);
        two.extend_from_slice(&zst(&tar[512..]));
        env.extract(&two).unwrap();
    }

    // ---- write_plain ------------------------------------------------------

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

    // ---- async bridge -----------------------------------------------------

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn extract_async_from_cursor() {
        let env = Env::new();
        let data = gz(&builder_tar());
        let r = extract_async(
            std::io::Cursor::new(data.clone()),
            env.root.clone(),
            PathBuf::new(),
            opts(),
        )
        .await
        .unwrap();
        assert_eq!(r.bytes_in, data.len() as u64);
        check_builder_result(&env, &r);
    }

    #[tokio::test]
    async fn extract_async_from_duplex() {
        use tokio::io::AsyncWriteExt;
        let env = Env::new();
        let data = zst(&dot_tar());
        let (mut w, r) = tokio::io::duplex(1000);
        let writer = tokio::spawn(async move {
            for chunk in data.chunks(333) {
                w.write_all(chunk).await.unwrap();
            }
        });
        let report = extract_async(r, env.root.clone(), PathBuf::from("pg_wal"), opts())
            .await
            .unwrap();
        writer.await.unwrap();
        assert_eq!(report.entries, 6);
        assert_eq!(
            fs::read(env.root.join("pg_wal/base/1/1234")).unwrap(),
            b"relation"
        );
    }

    #[tokio::test]
    async fn sender_fails_after_rejection() {
        let env = Env::new();
        let (tx, handle) = spawn_extract(env.root.clone(), PathBuf::new(), opts());
        let evil = archive(|a| entry(a, b"link", b'2', b""));
        let mut closed = false;
        for i in 0..100_000 {
            let chunk = if i == 0 {
                evil.clone()
            } else {
                vec![0u8; 4096]
            };
            if tx.send(chunk).await.is_err() {
                closed = true;
                break;
            }
        }
        assert!(closed, "sender never noticed the extractor stopped");
        assert!(tx.is_closed());
        let e = handle.await.unwrap().unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }

    #[tokio::test]
    async fn sender_drop_midway_is_truncation_and_abort_is_source_error() {
        let env = Env::new();
        let data = builder_tar();
        let (tx, handle) = spawn_extract(env.root.clone(), PathBuf::new(), opts());
        tx.send(data[..3000].to_vec()).await.unwrap();
        drop(tx);
        let e = handle.await.unwrap().unwrap_err();
        assert!(matches!(e, IngestError::Truncated(_)), "{e}");

        let env = Env::new();
        let (tx, handle) = spawn_extract(env.root.clone(), PathBuf::new(), opts());
        tx.send(gz(&data)[..100].to_vec()).await.unwrap();
        tx.abort(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "client went away",
        ))
        .await;
        let e = handle.await.unwrap().unwrap_err();
        assert!(matches!(e, IngestError::Source(_)), "{e}");
        assert_eq!(e.to_string(), "error reading upload: client went away");
    }

    #[tokio::test]
    async fn spawn_write_plain_happy() {
        let env = Env::new();
        let (tx, handle) = spawn_write_plain(env.root.clone(), PathBuf::from("a/b"), opts());
        tx.send(b"hello ".to_vec()).await.unwrap();
        tx.send(Vec::new()).await.unwrap();
        tx.send(b"world".to_vec()).await.unwrap();
        drop(tx);
        let r = handle.await.unwrap().unwrap();
        assert_eq!(r.bytes_written, 11);
        assert_eq!(fs::read(env.root.join("a/b")).unwrap(), b"hello world");
    }

    #[test]
    fn messages_are_one_short_line() {
        let name = b"evil\nname/../x".to_vec();
        let e = bad_entry(&name, "has a '..' component");
        assert_eq!(
            e.to_string(),
            "archive entry 'evil\\nname/../x' has a '..' component"
        );
        let e = bad_entry(&vec![b'a'; 5000], "x");
        assert!(e.to_string().len() < 300);
        let e = io_err(b"base/1/1234", io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(
            e.to_string(),
            "io error writing 'base/1/1234': No space left on device (os error 28)"
        );
    }
}
