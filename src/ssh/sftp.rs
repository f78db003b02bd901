//! The SFTP subsystem (russh-sftp server handler) over the virtual tree of
//! [`super::paths`]: `/images/` lists images, `/images/<id>/…` takes
//! uploads while the core lets it. Opening for write starts a core
//! [`Upload`]; writes must be sequential; CLOSE finishes it and returns the
//! core's verdict. Reading files back, links, renames, removals and
//! attribute changes are refused with *Permission denied*. Three no-ops
//! clients send on their own are accepted: a size "truncate" equal to
//! what was written (`scp`), the mode and times of a file being uploaded
//! (`scp -p`, `put -p`; the core sets modes, times are irrelevant) and of
//! a directory this session made (`scp -r`). Ownership is never accepted.
//!
//! OpenSSH's `scp` and `sftp` print only a status code's words (`No such
//! file`, `Permission denied`, `Failure`), never the message: so a
//! refusal of what the client asked for (not a `stat` probe) also goes,
//! once, as `draupnir: <reason>` on the channel's stderr, which they show,
//! and to the log. The codes come from [`super::error`].

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File, FileAttributes, Handle, Name, OpenFlags, Packet, Status,
    StatusCode, Version,
};
use russh_sftp::server::StatusReply;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::error::Refusal;
use super::format;
use super::paths::{self, PathError, VPath};
use super::session::{Session, SessionSlot};
use crate::core::ImageState;
use crate::core::{CoreError, ImageId, Upload, UploadTarget};

/// Largest SFTP packet a client may send (russh-sftp's limit).
const MAX_PACKET: u32 = 256 * 1024;
/// What we tell OpenSSH it may write (and read) per request: the packet
/// limit minus room for the header, as OpenSSH's own server does.
const MAX_IO: u64 = MAX_PACKET as u64 - 1024;
/// Open handles per session.
const MAX_HANDLES: usize = 64;

enum OpenHandle {
    Dir(Option<Vec<File>>),
    Upload(UploadState),
}

struct UploadState {
    upload: Option<Upload>,
    written: u64,
    /// The core's refusal, kept to answer CLOSE with.
    failed: Option<String>,
    shown: String,
}

/// The channel's stderr.
type Stderr = Box<dyn AsyncWrite + Unpin + Send>;

/// One client's SFTP session.
pub struct SftpSession {
    session: Session,
    _slot: SessionSlot,
    /// Where refusals are told to the client's user.
    stderr: Stderr,
    /// The last refusal told, until a request succeeds (a failed upload
    /// answers every write and the close with the same one: told once).
    last_told: Option<String>,
    handles: HashMap<String, OpenHandle>,
    next_handle: u64,
    /// Directories made in this session (so `scp -r` can stat them).
    made_dirs: HashSet<(ImageId, PathBuf)>,
    /// What this session uploaded: said to the client when it ends its
    /// side ([`summary`]), logged once when the session ends.
    uploaded: Totals,
}

/// Files and bytes an SFTP session uploaded, and into which images.
pub struct Uploaded {
    started: std::time::Instant,
    files: u64,
    bytes: u64,
    images: std::collections::BTreeSet<ImageId>,
}

/// An SFTP session's [`Uploaded`], shared with the server.
pub type Totals = Arc<Mutex<Uploaded>>;

/// The session's one-line summary for the client's stderr (empty when
/// nothing was uploaded): `uploaded 54.4 MiB in 1 file(s) to images/3 in
/// 3.0s (18.1 MiB/s)`.
pub fn summary(totals: &Totals) -> String {
    let u = totals.lock().unwrap_or_else(|p| p.into_inner());
    if u.files == 0 {
        return String::new();
    }
    let took = u.started.elapsed();
    let to: Vec<String> = u.images.iter().map(|i| format!("images/{i}")).collect();
    format!(
        "uploaded {} in {} file(s) to {} in {} ({})\n",
        format::size(u.bytes),
        u.files,
        to.join(", "),
        format::elapsed(took),
        format::rate(u.bytes, took)
    )
}

impl Drop for SftpSession {
    fn drop(&mut self) {
        let u = self.uploaded.lock().unwrap_or_else(|p| p.into_inner());
        if u.files == 0 {
            return;
        }
        let images: Vec<String> = u.images.iter().map(|i| i.to_string()).collect();
        tracing::info!(
            user = %self.session.actor.name(),
            images = %images.join(","),
            files = u.files,
            bytes = u.bytes,
            ms = u.started.elapsed().as_millis() as u64,
            "sftp session ended: upload finished"
        );
    }
}

fn status(id: u32, code: StatusCode, msg: &str) -> Status {
    Status {
        id,
        status_code: code,
        error_message: msg.into(),
        language_tag: "en-US".into(),
    }
}

fn ok(id: u32) -> Status {
    status(id, StatusCode::Ok, "Ok")
}

fn core_err(e: CoreError) -> StatusReply {
    Refusal::from(e).sftp_reply()
}

fn path_err(e: PathError) -> StatusReply {
    let code = match e {
        PathError::Outside(_) => StatusCode::PermissionDenied,
        PathError::NoSuchImage(_) => StatusCode::NoSuchFile,
        PathError::Invalid(_) => StatusCode::BadMessage,
    };
    code.with_message(e.to_string())
}

fn denied(what: &str) -> StatusReply {
    StatusCode::PermissionDenied.with_message(format!("{what} is not supported by Draupnir"))
}

/// A directory's attributes, dated now (`ls -l` shows no 1970).
fn dir_attrs(mode: u32) -> FileAttributes {
    dated_dir(mode, time::OffsetDateTime::now_utc())
}

/// A directory's attributes, dated `at` (an image: when it last changed).
fn dated_dir(mode: u32, at: time::OffsetDateTime) -> FileAttributes {
    let t = u32::try_from(at.unix_timestamp()).unwrap_or(0);
    FileAttributes {
        size: Some(0),
        uid: Some(0),
        gid: Some(0),
        permissions: Some(0o040000 | mode),
        atime: Some(t),
        mtime: Some(t),
        ..Default::default()
    }
}

impl SftpSession {
    pub(crate) fn new(session: Session, slot: SessionSlot, stderr: Stderr) -> Self {
        SftpSession {
            session,
            _slot: slot,
            stderr,
            last_told: None,
            handles: HashMap::new(),
            next_handle: 1,
            made_dirs: HashSet::new(),
            uploaded: Arc::new(Mutex::new(Uploaded {
                started: std::time::Instant::now(),
                files: 0,
                bytes: 0,
                images: Default::default(),
            })),
        }
    }

    /// What the session uploads, as it goes.
    pub(crate) fn totals(&self) -> Totals {
        self.uploaded.clone()
    }

    /// Pass a reply through; a refusal is also told on stderr and logged
    /// (once, however many requests in a row it answers).
    async fn told<T>(&mut self, r: Result<T, StatusReply>) -> Result<T, StatusReply> {
        let Err(reply) = r else {
            self.last_told = None;
            return r;
        };
        let reason = reply
            .error_message
            .as_deref()
            .map(|m| format::one_line(m, 2000))
            .unwrap_or_else(|| format!("{:?}", reply.status_code));
        if self.last_told.as_deref() != Some(reason.as_str()) {
            tracing::info!(
                user = %self.session.actor.name(),
                status = ?reply.status_code,
                %reason,
                "sftp request refused"
            );
            let _ = self
                .stderr
                .write_all(format!("draupnir: {reason}\n").as_bytes())
                .await;
            let _ = self.stderr.flush().await;
            self.last_told = Some(reason);
        }
        Err(reply)
    }

    fn add_handle(&mut self, h: OpenHandle) -> Result<String, StatusReply> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(StatusCode::Failure.with_message("too many open handles"));
        }
        let name = self.next_handle.to_string();
        self.next_handle += 1;
        self.handles.insert(name.clone(), h);
        Ok(name)
    }

    /// Attributes of a place in the tree, or NoSuchFile.
    fn attrs(&self, p: &VPath) -> Result<FileAttributes, StatusReply> {
        match p {
            VPath::Root | VPath::Images => Ok(dir_attrs(0o755)),
            VPath::Image(id) => {
                let image = self
                    .session
                    .service
                    .image(&self.session.actor, *id)
                    .map_err(core_err)?;
                let mode = if image.state == ImageState::Uploading {
                    0o755
                } else {
                    0o555
                };
                Ok(dated_dir(mode, image.updated_at))
            }
            VPath::InImage(id, rel) if self.made_dirs.contains(&(*id, rel.clone())) => {
                Ok(dir_attrs(0o755))
            }
            // Uploaded files are not listed or read back: as far as a
            // client can tell, nothing is there yet (so `scp` opens
            // `target/<name>` only when the target is a directory).
            VPath::InImage(..) => Err(StatusCode::NoSuchFile.with_message("no such file")),
        }
    }

    fn listing(&self, p: &VPath) -> Result<Vec<File>, StatusReply> {
        let mut files = vec![
            File::new(".", dir_attrs(0o755)),
            File::new("..", dir_attrs(0o755)),
        ];
        match p {
            VPath::Root => files.push(File::new("images", dir_attrs(0o755))),
            VPath::Images => {
                let images = self
                    .session
                    .service
                    .list_images(&self.session.actor)
                    .map_err(core_err)?;
                for image in images {
                    let mode = if image.state == ImageState::Uploading {
                        0o755
                    } else {
                        0o555
                    };
                    files.push(File::new(
                        image.id.to_string(),
                        dated_dir(mode, image.updated_at),
                    ));
                }
            }
            other => {
                self.attrs(other)?;
            }
        }
        Ok(files)
    }
}

fn resolve(path: &str) -> Result<VPath, StatusReply> {
    paths::resolve(path).map_err(path_err)
}

impl russh_sftp::server::Handler for SftpSession {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported.with_message("not supported by Draupnir")
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        let mut v = Version::new();
        // Lets OpenSSH send 255 KiB writes instead of 32 KiB (CRATES.md).
        v.extensions
            .insert(russh_sftp::extensions::LIMITS.into(), "1".into());
        Ok(v)
    }

    async fn extended(
        &mut self,
        id: u32,
        request: String,
        _data: Vec<u8>,
    ) -> Result<Packet, Self::Error> {
        if request != russh_sftp::extensions::LIMITS {
            return Err(self.unimplemented());
        }
        let mut data = Vec::with_capacity(32);
        for v in [MAX_PACKET as u64, MAX_IO, MAX_IO, MAX_HANDLES as u64] {
            data.extend_from_slice(&v.to_be_bytes());
        }
        Ok(Packet::ExtendedReply(ExtendedReply { id, data }))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let p = resolve(&path)?;
        Ok(Name {
            id,
            files: vec![File::dummy(p.display())],
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let p = resolve(&path)?;
        Ok(Attrs {
            id,
            attrs: self.attrs(&p)?,
        })
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        self.stat(id, path).await
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        match self.handles.get(&handle) {
            Some(OpenHandle::Dir(_)) => Ok(Attrs {
                id,
                attrs: dir_attrs(0o755),
            }),
            Some(OpenHandle::Upload(u)) => Ok(Attrs {
                id,
                attrs: FileAttributes {
                    size: Some(u.written),
                    permissions: Some(0o100600),
                    ..Default::default()
                },
            }),
            None => Err(StatusCode::Failure.with_message("invalid handle")),
        }
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let r: Result<Handle, StatusReply> = async {
            let p = resolve(&path)?;
            let files = self.listing(&p)?;
            let handle = self.add_handle(OpenHandle::Dir(Some(files)))?;
            Ok(Handle { id, handle })
        }
        .await;
        self.told(r).await
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        match self.handles.get_mut(&handle) {
            Some(OpenHandle::Dir(files)) => match files.take() {
                Some(files) => Ok(Name { id, files }),
                None => Err(StatusCode::Eof.into()),
            },
            _ => Err(StatusCode::Failure.with_message("invalid handle")),
        }
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        _attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let r: Result<Handle, StatusReply> = async {
            let p = resolve(&filename)?;
            let shown = p.display();
            if !pflags.intersects(OpenFlags::WRITE | OpenFlags::APPEND) {
                return Err(StatusCode::PermissionDenied
                    .with_message("uploaded files cannot be read back over SFTP"));
            }
            let (image, rel) = match p {
                VPath::InImage(image, rel) => (image, rel),
                VPath::Image(_) | VPath::Images | VPath::Root => {
                    // An unknown image is not found (`scp f draupnir:images/99/`
                    // opens `images/99/` when its stat fails).
                    self.attrs(&p)?;
                    return Err(StatusCode::Failure.with_message(format!("{shown} is a directory")));
                }
            };
            if self.handles.len() >= MAX_HANDLES {
                return Err(StatusCode::Failure.with_message("too many open handles"));
            }
            let upload = self
                .session
                .service
                .begin_upload(&self.session.actor, image, UploadTarget::File(rel))
                .map_err(core_err)?;
            tracing::debug!(user = %self.session.actor.name(), path = %shown, "sftp upload");
            let handle = self.add_handle(OpenHandle::Upload(UploadState {
                upload: Some(upload),
                written: 0,
                failed: None,
                shown,
            }))?;
            Ok(Handle { id, handle })
        }
        .await;
        self.told(r).await
    }

    async fn read(
        &mut self,
        _id: u32,
        _handle: String,
        _offset: u64,
        _len: u32,
    ) -> Result<Data, Self::Error> {
        let r: Result<Data, StatusReply> = async {
            Err(StatusCode::PermissionDenied
                .with_message("uploaded files cannot be read back over SFTP"))
        }
        .await;
        self.told(r).await
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        let r: Result<Status, StatusReply> = async {
            let Some(OpenHandle::Upload(u)) = self.handles.get_mut(&handle) else {
                return Err(StatusCode::Failure.with_message("invalid handle"));
            };
            if let Some(reason) = &u.failed {
                return Err(StatusCode::Failure.with_message(reason.clone()));
            }
            if offset != u.written {
                let reason = format!(
                    "{}: write at offset {offset} but {} bytes were written so far: \
                     writes must be sequential",
                    u.shown, u.written
                );
                // The stream cannot go on: fail the upload (and the image) now,
                // with this reason.
                if let Some(upload) = u.upload.take() {
                    upload.fail(reason.clone()).await;
                }
                u.failed = Some(reason.clone());
                return Err(StatusCode::Failure.with_message(reason));
            }
            let Some(upload) = u.upload.as_mut() else {
                return Err(StatusCode::Failure.with_message("upload already finished"));
            };
            let len = data.len() as u64;
            if offset == 0 {
                tracing::debug!(path = %u.shown, bytes = len, "first sftp write");
            }
            if let Err(e) = upload.write(data).await {
                // Kept to answer CLOSE with, so always a plain failure.
                let reason = Refusal::from(e).into_message();
                u.upload = None;
                u.failed = Some(reason.clone());
                return Err(StatusCode::Failure.with_message(reason));
            }
            u.written += len;
            Ok(ok(id))
        }
        .await;
        self.told(r).await
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let r: Result<Status, StatusReply> = async {
            if attrs.uid.is_some() || attrs.gid.is_some() {
                return Err(denied("changing ownership"));
            }
            match self.handles.get(&handle) {
                Some(OpenHandle::Upload(u)) => {
                    match attrs.size {
                        // `scp` "truncates" to what it wrote; modes and times are ours.
                        None => Ok(ok(id)),
                        Some(n) if n == u.written => Ok(ok(id)),
                        Some(_) => Err(StatusCode::Failure
                            .with_message("an upload cannot be truncated or extended")),
                    }
                }
                Some(OpenHandle::Dir(_)) => Err(denied("changing attributes")),
                None => Err(StatusCode::Failure.with_message("invalid handle")),
            }
        }
        .await;
        self.told(r).await
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let r: Result<Status, StatusReply> = async {
            // `scp -r` sets the mode of directories it made: a no-op here
            // (modes of uploads are the core's); anything else, and any
            // ownership change, is refused.
            if attrs.uid.is_some() || attrs.gid.is_some() || attrs.size.is_some() {
                return Err(denied("changing attributes"));
            }
            match resolve(&path)? {
                VPath::InImage(image, rel) if self.made_dirs.contains(&(image, rel.clone())) => {
                    Ok(ok(id))
                }
                _ => Err(denied("changing attributes")),
            }
        }
        .await;
        self.told(r).await
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        let r: Result<Status, StatusReply> = async {
            match self.handles.remove(&handle) {
                Some(OpenHandle::Dir(_)) => Ok(ok(id)),
                Some(OpenHandle::Upload(mut u)) => {
                    if let Some(reason) = u.failed.take() {
                        return Err(StatusCode::Failure.with_message(reason));
                    }
                    let Some(upload) = u.upload.take() else {
                        return Err(StatusCode::Failure.with_message("upload already finished"));
                    };
                    let image = upload.image_id();
                    match upload.finish().await {
                        Ok(report) => {
                            tracing::debug!(path = %u.shown, bytes = report.bytes_written, "sftp upload finished");
                            let mut up = self.uploaded.lock().unwrap_or_else(|p| p.into_inner());
                            up.files += 1;
                            up.bytes += report.bytes_written;
                            up.images.insert(image);
                            Ok(ok(id))
                        }
                        Err(e) => Err(core_err(e)),
                    }
                }
                None => Err(StatusCode::Failure.with_message("invalid handle")),
            }
        }
        .await;
        self.told(r).await
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        _attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let r: Result<Status, StatusReply> = async {
            match resolve(&path)? {
                VPath::InImage(image, rel) => {
                    self.session
                        .service
                        .upload_mkdir(&self.session.actor, image, &rel)
                        .map_err(core_err)?;
                    self.made_dirs.insert((image, rel));
                    Ok(ok(id))
                }
                _ => Err(StatusCode::Failure.with_message(
                    "images are created with `new-image`; directories only inside images/<id>/",
                )),
            }
        }
        .await;
        self.told(r).await
    }

    async fn rmdir(&mut self, _id: u32, _path: String) -> Result<Status, Self::Error> {
        let r: Result<Status, StatusReply> = async { Err(denied("removing directories")) }.await;
        self.told(r).await
    }

    async fn remove(&mut self, _id: u32, _filename: String) -> Result<Status, Self::Error> {
        let r: Result<Status, StatusReply> = async { Err(denied("removing files")) }.await;
        self.told(r).await
    }

    async fn rename(
        &mut self,
        _id: u32,
        _oldpath: String,
        _newpath: String,
    ) -> Result<Status, Self::Error> {
        let r: Result<Status, StatusReply> = async { Err(denied("renaming")) }.await;
        self.told(r).await
    }

    async fn symlink(
        &mut self,
        _id: u32,
        _linkpath: String,
        _targetpath: String,
    ) -> Result<Status, Self::Error> {
        let r: Result<Status, StatusReply> = async { Err(denied("creating links")) }.await;
        self.told(r).await
    }

    async fn readlink(&mut self, _id: u32, _path: String) -> Result<Name, Self::Error> {
        let r: Result<Name, StatusReply> = async { Err(denied("reading links")) }.await;
        self.told(r).await
    }
}

/// Serve SFTP on a channel stream in a background task. The handler (and
/// any unfinished upload, which then fails its image) is dropped when the
/// client leaves.
pub async fn run<S>(stream: S, handler: SftpSession)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = russh_sftp::server::Config {
        max_client_packet_len: MAX_PACKET,
    };
    russh_sftp::server::run_with_config(EndOnError::new(stream), handler, config).await;
}

/// A stream that reads as EOF after any I/O error, so russh-sftp's loop
/// (which only stops at EOF) ends instead of spinning on a dead channel.
struct EndOnError<S> {
    inner: S,
    broken: bool,
}

impl<S> EndOnError<S> {
    fn new(inner: S) -> Self {
        EndOnError {
            inner,
            broken: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for EndOnError<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.broken {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Err(_)) => {
                self.broken = true;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for EndOnError<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Err(_))) {
            self.broken = true;
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(r, Poll::Ready(Err(_))) {
            self.broken = true;
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
