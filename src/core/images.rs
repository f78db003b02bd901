//! Images: create, upload into, finalise, list and destroy.

use crate::core::model::ImageId;
use std::path::{Component, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::error::{BadInput, FinaliseFailure, Internal, InvalidState, Missing};
use super::manifest::{AnonymisationStatus, NewImage};
use super::masking;
use super::{Actor, CoreError, Result, Service};
use crate::core::postgres::finalise::{self, FinaliseSpec, MaskingSpec, Progress};
use crate::core::storage::btrfs;
use crate::core::storage::ingest::{
    self, ChunkSender, IngestError, Limits, Options, Owner, Report,
};
use crate::core::store::{Image, ImageState};

/// Receives finalise progress as it happens.
pub type FinaliseProgress = Arc<dyn Fn(Progress) + Send + Sync>;

/// What [`Service::start_finalise`] did.
pub enum Finalising {
    /// Nothing to do: the image is ready.
    AlreadyReady(Image),
    /// Running; the task ends with the finalised (or failed) image.
    Started(tokio::task::JoinHandle<Result<Image>>),
}

/// What an upload stream is.
#[derive(Debug, Clone)]
pub enum UploadTarget {
    /// A tar stream with no name (stdin of `upload-image`, HTTP body):
    /// extracted at the root of the data directory.
    Stream,
    /// A file with a path relative to the image (`base.tar.gz`,
    /// `pg_wal.tar`, `global/pg_control`): tarballs are extracted
    /// (`pg_wal.tar*` into `pg_wal/`), anything else stored as it is.
    File(PathBuf),
}

enum Plan {
    Extract(PathBuf),
    Plain(PathBuf),
}

const TAR_SUFFIXES: &[&str] = &[".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd"];

fn plan(target: &UploadTarget) -> Result<Plan> {
    let rel = match target {
        UploadTarget::Stream => return Ok(Plan::Extract(PathBuf::new())),
        UploadTarget::File(p) => p,
    };
    let clean: PathBuf = rel
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(BadInput::UploadPath(rel.clone()).into()),
        })
        .collect::<Result<_>>()?;
    let name = clean
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or(BadInput::NoFileName)?;
    let lower = name.to_ascii_lowercase();
    if let Some(stem) = TAR_SUFFIXES.iter().find_map(|s| lower.strip_suffix(s)) {
        if clean.parent().is_some_and(|p| !p.as_os_str().is_empty()) {
            // A tarball inside a copied directory tree is a file like any other.
            return Ok(Plan::Plain(clean));
        }
        return Ok(Plan::Extract(if stem == "pg_wal" {
            PathBuf::from("pg_wal")
        } else {
            PathBuf::new()
        }));
    }
    Ok(Plan::Plain(clean))
}

/// One upload stream into an image. Feed it with [`Upload::write`] and end
/// it with [`Upload::finish`]; dropping it unfinished fails the image (the
/// client went away mid-upload).
pub struct Upload {
    service: Service,
    image_id: ImageId,
    sender: Option<ChunkSender>,
    handle: Option<tokio::task::JoinHandle<std::result::Result<Report, IngestError>>>,
    /// Time [`Upload::write`] waited for room in the extractor's queue
    /// (the extractor is the bound), logged at the end.
    blocked: std::time::Duration,
    started: std::time::Instant,
}

impl Upload {
    pub fn image_id(&self) -> ImageId {
        self.image_id
    }

    /// Pass the next bytes on. An error means the upload was refused (the
    /// image is then `failed` with the reason).
    pub async fn write(&mut self, chunk: Vec<u8>) -> Result<()> {
        let Some(sender) = &self.sender else {
            return Err(InvalidState::UploadFinished.into());
        };
        let t = std::time::Instant::now();
        let sent = sender.send(chunk).await;
        self.blocked += t.elapsed();
        if sent.is_ok() {
            return Ok(());
        }
        // The extractor stopped: learn why.
        self.sender = None;
        match self.join().await {
            Err(e) => Err(e),
            Ok(_) => Err(CoreError::Upload(IngestError::Corrupt(
                "data after the end of the archive".into(),
            ))),
        }
    }

    async fn join(&mut self) -> Result<Report> {
        let Some(handle) = self.handle.take() else {
            return Err(InvalidState::UploadFinished.into());
        };
        let t = std::time::Instant::now();
        let outcome = match handle.await {
            Ok(r) => r.map_err(CoreError::Upload),
            Err(e) => Err(Internal::Task {
                task: "upload task",
                source: e,
            }
            .into()),
        };
        tracing::debug!(
            image = %self.image_id,
            total_ms = self.started.elapsed().as_millis() as u64,
            queue_full_ms = self.blocked.as_millis() as u64,
            drain_ms = t.elapsed().as_millis() as u64,
            "upload stream"
        );
        self.service.end_upload(self.image_id, &outcome);
        outcome
    }

    /// End of stream: wait for the extraction to finish and check it.
    pub async fn finish(mut self) -> Result<Report> {
        self.sender = None;
        self.join().await
    }

    /// Give up with `reason` (a front door found the stream unusable):
    /// the image is `failed` with that reason rather than "interrupted".
    pub async fn fail(mut self, reason: String) {
        let (Some(sender), Some(handle)) = (self.sender.take(), self.handle.take()) else {
            return;
        };
        sender.abort(std::io::Error::other(reason.clone())).await;
        let _ = handle.await;
        self.service.end_upload(
            self.image_id,
            &Err(CoreError::Upload(IngestError::Source(
                std::io::Error::other(reason),
            ))),
        );
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let (Some(sender), Some(handle)) = (self.sender.take(), self.handle.take()) else {
            return;
        };
        let service = self.service.clone();
        let id = self.image_id;
        tokio::spawn(async move {
            sender
                .abort(std::io::Error::other("the upload was interrupted"))
                .await;
            let outcome = match handle.await {
                Ok(Ok(_)) => Err(CoreError::Upload(IngestError::Source(
                    std::io::Error::other("the upload was interrupted"),
                ))),
                Ok(Err(e)) => Err(CoreError::Upload(e)),
                Err(e) => Err(Internal::Join(e).into()),
            };
            service.end_upload(id, &outcome);
        });
    }
}

impl Service {
    pub(crate) fn image_or_404(&self, id: ImageId) -> Result<Image> {
        self.inner
            .store
            .image(id)?
            .ok_or_else(|| Missing::Image(id).into())
    }

    /// All images (any authenticated user may list them).
    pub fn list_images(&self, _actor: &Actor) -> Result<Vec<Image>> {
        Ok(self.inner.store.images()?)
    }

    pub fn image(&self, _actor: &Actor, id: ImageId) -> Result<Image> {
        self.image_or_404(id)
    }

    /// How many files an image whose upload finished holds (`None` for
    /// any other image): counted on disk, for showing one image.
    pub fn uploaded_files(&self, actor: &Actor, id: ImageId) -> Result<Option<u64>> {
        let image = self.image(actor, id)?;
        if !image.upload_finished() {
            return Ok(None);
        }
        Ok(Some(count_files(&self.inner.layout.upload(id))))
    }

    /// The image `latest` means: the newest ready image whose
    /// anonymisation was checked; only when none was, the newest ready one
    /// (`unchecked` or `none`). An unchecked image never silently takes
    /// the place of a checked one.
    pub fn latest_ready_image(&self) -> Result<Option<Image>> {
        let ready: Vec<Image> = self
            .inner
            .store
            .images()?
            .into_iter()
            .filter(|i| i.state == ImageState::Ready)
            .collect();
        let checked = |i: &&Image| i.anonymisation_status() == Some(AnonymisationStatus::Checked);
        let newest = |i: &&Image| (i.created_at, i.id);
        let pick = ready
            .iter()
            .filter(checked)
            .max_by_key(newest)
            .or_else(|| ready.iter().max_by_key(newest));
        Ok(pick.cloned())
    }

    /// Flow 1: a row in `uploading` and an empty upload subvolume. The
    /// image's own rules are parsed now (refused with their line); whether
    /// they fit its columns is known at finalise, once its data is here.
    pub fn create_image(&self, actor: &Actor, mut new: NewImage) -> Result<Image> {
        actor.require_admin("creating images")?;
        // An empty script (a 5.x client's default) is no script.
        new.script = new.script.filter(|s| !s.trim().is_empty());
        if new.script.as_deref().is_some_and(|s| s.contains('\0')) {
            return Err(BadInput::ScriptNul.into());
        }
        if let Some(rules) = &new.rules {
            masking::rules::parse(rules).map_err(|e| BadInput::Rules(Box::new(e)))?;
        }
        if new.no_anonymisation && (new.rules.is_some() || new.script.is_some()) {
            return Err(BadInput::NotPersonalButMasked.into());
        }
        let image = self.inner.store.insert_image(&new, Some(actor.id()))?;
        let dir = self.inner.layout.upload(image.id);
        if let Err(e) = self.make_upload_dir(&dir) {
            let _ = self.inner.store.delete_image(image.id);
            return Err(e);
        }
        tracing::info!(image = %image.id, user = %actor.name(), "image created");
        Ok(image)
    }

    /// Flow 2: start an upload stream into an `uploading` image. One
    /// stream at a time per image, whichever door it comes through
    /// (`upload-image`, `scp`, SFTP): two streams writing one data
    /// directory would ruin both, so a second one is refused at once with
    /// [`CoreError::UploadBusy`] and the first goes on. A client uploading
    /// several files (`scp -r`, SFTP `put -r`) sends them one after the
    /// other, each its own stream.
    pub fn begin_upload(&self, actor: &Actor, id: ImageId, target: UploadTarget) -> Result<Upload> {
        actor.require_admin("uploading images")?;
        let image = self.image_or_404(id)?;
        let plan = plan(&target)?;
        if image.state == ImageState::Uploading {
            self.check_free_space("upload")?;
        }
        {
            // Held across the claim: two streams cannot both see it free.
            let mut uploads = self.inner.uploads.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(since) = uploads.get(&id) {
                return Err(CoreError::UploadBusy {
                    id,
                    secs: since.elapsed().as_secs(),
                });
            }
            if !self.inner.store.begin_upload(id)? {
                let image = self.image_or_404(id)?;
                return Err(InvalidState::NoUploads {
                    id,
                    state: image.state,
                }
                .into());
            }
            uploads.insert(id, std::time::Instant::now());
        }
        let budget = self
            .config()
            .max_image_bytes
            .0
            .saturating_sub(image.size_bytes);
        let opts = self.upload_options(budget);
        let root = self.inner.layout.upload(id);
        let (sender, handle) = match plan {
            Plan::Extract(subdir) => ingest::spawn_extract(root, subdir, opts),
            Plan::Plain(rel) => ingest::spawn_write_plain(root, rel, opts),
        };
        Ok(Upload {
            service: self.clone(),
            image_id: id,
            sender: Some(sender),
            handle: Some(handle),
            blocked: std::time::Duration::ZERO,
            started: std::time::Instant::now(),
        })
    }

    fn upload_options(&self, budget: u64) -> Options {
        Options {
            limits: Limits {
                max_bytes: budget,
                max_entries: self.config().max_image_entries,
            },
            owner: Some(Owner {
                uid: self.inner.user.uid,
                gid: self.inner.user.gid,
            }),
        }
    }

    /// Create an (empty) directory in an uploading image (`scp -r`, SFTP
    /// `mkdir`).
    pub fn upload_mkdir(&self, actor: &Actor, id: ImageId, rel: &std::path::Path) -> Result<()> {
        actor.require_admin("uploading images")?;
        let image = self.image_or_404(id)?;
        if image.state != ImageState::Uploading {
            return Err(InvalidState::NoUploads {
                id,
                state: image.state,
            }
            .into());
        }
        ingest::make_dir(&self.inner.layout.upload(id), rel, &self.upload_options(0))?;
        Ok(())
    }

    /// Make a failed (or stuck uploading) image take a fresh upload: its
    /// upload directory is emptied and it is `uploading` again.
    pub fn reset_upload(&self, actor: &Actor, id: ImageId) -> Result<Image> {
        actor.require_admin("resetting uploads")?;
        let image = self.image_or_404(id)?;
        match image.state {
            ImageState::Failed | ImageState::Uploading => {}
            other => return Err(InvalidState::NotResettable { id, state: other }.into()),
        }
        if image.upload_active {
            return Err(InvalidState::UploadRunning { id }.into());
        }
        let dir = self.inner.layout.upload(id);
        btrfs::delete_subvolume(&dir)?;
        btrfs::delete_subvolume(&self.inner.layout.snapshot(id))?;
        self.make_upload_dir(&dir)?;
        self.inner.store.reset_upload(id)?;
        tracing::info!(image = %id, user = %actor.name(), "upload reset");
        self.image_or_404(id)
    }

    fn make_upload_dir(&self, dir: &std::path::Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        btrfs::create_subvolume(dir)?;
        let owned =
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).and_then(|_| {
                std::os::unix::fs::chown(dir, Some(self.inner.user.uid), Some(self.inner.user.gid))
            });
        if let Err(source) = owned {
            let _ = btrfs::delete_subvolume(dir);
            return Err(Internal::Chown {
                path: dir.to_path_buf(),
                source,
            }
            .into());
        }
        Ok(())
    }

    /// Upload a whole `AsyncRead` (stdin, an HTTP body) into an image.
    pub async fn ingest<R: AsyncRead + Unpin>(
        &self,
        actor: &Actor,
        id: ImageId,
        target: UploadTarget,
        mut reader: R,
    ) -> Result<Report> {
        let mut upload = self.begin_upload(actor, id, target)?;
        loop {
            let mut buf = vec![0u8; 256 * 1024];
            let n = match reader.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    drop(upload);
                    return Err(BadInput::ReadUpload(e).into());
                }
            };
            if n == 0 {
                break;
            }
            buf.truncate(n);
            upload.write(buf).await?;
        }
        upload.finish().await
    }

    /// The stream into image `id` ended: record the outcome, then let the
    /// next stream in (in that order, so the next one sees the image as
    /// this one left it).
    fn end_upload(&self, id: ImageId, outcome: &Result<Report>) {
        self.record_upload(id, outcome);
        self.inner
            .uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    fn record_upload(&self, id: ImageId, outcome: &Result<Report>) {
        match outcome {
            Ok(report) => {
                let _ = self.inner.store.end_upload(id, report.bytes_written);
                // One stream of an upload (one file of `scp -r`): the
                // front doors log the operation.
                tracing::debug!(
                    image = %id,
                    bytes = report.bytes_written,
                    entries = report.entries,
                    "upload finished"
                );
            }
            Err(e) => {
                tracing::warn!(image = %id, error = %e, "upload refused");
                let _ = self.inner.store.fail_image(id, &e.to_string());
                let _ = btrfs::delete_subvolume(&self.inner.layout.upload(id));
            }
        }
    }

    /// Flow 3. Runs to completion even when the caller goes away, so a
    /// cancelled request never leaves the image half-finalised. An image
    /// that is already ready is returned at once.
    pub async fn finalise_image(
        &self,
        actor: &Actor,
        id: ImageId,
        progress: Option<FinaliseProgress>,
    ) -> Result<Image> {
        match self.start_finalise(actor, id, progress)? {
            Finalising::AlreadyReady(image) => Ok(image),
            Finalising::Started(task) => task.await.map_err(|e| Internal::Task {
                task: "finalise task",
                source: e,
            })?,
        }
    }

    /// [`Service::finalise_image`] for clients that retry: when the image
    /// is already being finalised (an earlier request went away), wait for
    /// that finalise to end and answer with its outcome.
    /// Runs to the end even if the caller goes away.
    pub async fn finalise_or_wait(&self, actor: &Actor, id: ImageId) -> Result<Image> {
        let (svc, actor) = (self.clone(), actor.clone());
        super::detached(async move { svc.finalise_or_wait_here(&actor, id).await }).await
    }

    async fn finalise_or_wait_here(&self, actor: &Actor, id: ImageId) -> Result<Image> {
        match self.finalise_image(actor, id, None).await {
            Err(CoreError::InvalidState(
                refused @ (InvalidState::ImageFailed { .. }
                | InvalidState::AlreadyFinalising { .. }
                | InvalidState::UploadRunning { .. }
                | InvalidState::ImageChanged { .. }),
            )) => loop {
                let image = self.image_or_404(id)?;
                match image.state {
                    ImageState::Finalising => {
                        tokio::time::sleep(std::time::Duration::from_millis(250)).await
                    }
                    ImageState::Ready => return Ok(image),
                    ImageState::Failed => {
                        return Err(FinaliseFailure::Recorded(
                            image.failure_reason.unwrap_or_else(|| refused.to_string()),
                        )
                        .into())
                    }
                    ImageState::Uploading => return Err(refused.into()),
                    ImageState::Destroying => return Err(CoreError::ImageDestroying { id }),
                }
            },
            other => other,
        }
    }

    /// Images with an upload streaming in or a finalise running.
    pub fn busy_images(&self) -> Result<Vec<ImageId>> {
        Ok(self
            .inner
            .store
            .images()?
            .into_iter()
            .filter(|i| i.upload_active || i.state == ImageState::Finalising)
            .map(|i| i.id)
            .collect())
    }

    /// Daemon shutdown: stop the warm pool's refill, and wait up to `grace`
    /// for running uploads and finalises (and a warm instance being
    /// started) to end. Returns the images still busy when time ran out
    /// (start-up reconcile marks them failed).
    pub async fn drain(&self, grace: std::time::Duration) -> Vec<ImageId> {
        let deadline = tokio::time::Instant::now() + grace;
        // No new warm instance from now on; one being started may finish.
        self.stop_pool(deadline).await;
        let mut said = Vec::new();
        loop {
            let busy = self.busy_images().unwrap_or_default();
            if busy.is_empty() || tokio::time::Instant::now() >= deadline {
                return busy;
            }
            if busy != said {
                let list: Vec<String> = busy.iter().map(ToString::to_string).collect();
                tracing::info!(
                    "waiting for uploads and finalises to end (images {})",
                    list.join(", ")
                );
                said = busy;
            }
            tokio::time::sleep_until(
                deadline.min(tokio::time::Instant::now() + std::time::Duration::from_millis(500)),
            )
            .await;
        }
    }

    /// Check and start a finalise without waiting for it (`--detach`).
    pub fn start_finalise(
        &self,
        actor: &Actor,
        id: ImageId,
        progress: Option<FinaliseProgress>,
    ) -> Result<Finalising> {
        actor.require_admin("finalising images")?;
        let image = self.image_or_404(id)?;
        match image.state {
            ImageState::Ready => return Ok(Finalising::AlreadyReady(image)),
            ImageState::Failed => {
                return Err(InvalidState::ImageFailed {
                    id,
                    reason: image.failure_reason,
                }
                .into())
            }
            ImageState::Finalising => return Err(InvalidState::AlreadyFinalising { id }.into()),
            ImageState::Destroying => return Err(CoreError::ImageDestroying { id }),
            ImageState::Uploading => {}
        }
        if image.upload_active {
            return Err(InvalidState::UploadRunning { id }.into());
        }
        if !self
            .inner
            .store
            .transition_image(id, ImageState::Uploading, ImageState::Finalising)?
        {
            return Err(InvalidState::ImageChanged { id }.into());
        }
        tracing::info!(image = %id, user = %actor.name(), "finalise started");
        let svc = self.clone();
        Ok(Finalising::Started(tokio::spawn(async move {
            svc.run_finalise(id, image, progress, None).await
        })))
    }

    /// Finalise the upload of `image` (in `finalising`) and seal it;
    /// `origin` is the source a refresh made it from.
    pub(crate) async fn run_finalise(
        &self,
        id: ImageId,
        image: Image,
        progress: Option<FinaliseProgress>,
        origin: Option<crate::core::manifest::SourceManifest>,
    ) -> Result<Image> {
        let started = std::time::Instant::now();
        let upload = self.inner.layout.upload(id);
        let parts = self.finalise_parts(&image, "image");
        let spec = parts.spec(&self.inner.user);
        let report = |p: Progress| {
            if let Progress::Step(s) = &p {
                tracing::debug!(image = %id, step = %s, "finalise");
            }
            if let Some(cb) = &progress {
                cb(p);
            }
        };
        let outcome = match finalise::finalise(&spec, &report).await {
            Ok(mut done) => {
                done.manifest.source = origin;
                report(Progress::Step("taking the read-only snapshot".into()));
                self.seal_image(id, &done)
                    .map_err(|e| FinaliseFailure::Seal(Box::new(e)))
            }
            Err(e) => Err(FinaliseFailure::Postgres(e)),
        };
        match outcome {
            Ok(()) => {
                tracing::info!(
                    image = %id,
                    ms = started.elapsed().as_millis() as u64,
                    "image ready"
                );
                self.inner.counters.finalised(started.elapsed());
                report(Progress::Done);
                if let Err(e) = self.rotate_images().await {
                    tracing::warn!(error = %e, "image rotation failed");
                }
                self.poke_pool();
                self.image_or_404(id)
            }
            Err(reason) => {
                tracing::warn!(image = %id, %reason, "finalise failed");
                self.inner.store.fail_image(id, &reason.to_string())?;
                let _ = btrfs::delete_subvolume(&upload);
                let _ = btrfs::delete_subvolume(&self.inner.layout.snapshot(id));
                Err(reason.into())
            }
        }
    }

    /// What a finalise (or `suggest-rules`) of `image` runs with, from the
    /// configuration in force; its log is `log_file(kind, id)`.
    pub(crate) fn finalise_parts(&self, image: &Image, kind: &str) -> FinaliseParts {
        let cfg = self.config();
        let masking = MaskingSpec {
            image: image.id,
            config_rules: cfg.masking.rules.clone(),
            image_rules: image.masking_rules.clone(),
            require_coverage: cfg.masking.require_coverage,
            not_personal: image.no_anonymisation,
            script: image
                .anonymisation_script
                .as_deref()
                .is_some_and(|s| !s.trim().is_empty()),
            key_dir: cfg.state_path.clone(),
            scan_budget: Some(cfg.masking.scan_sample_bytes.0).filter(|b| *b > 0),
        };
        FinaliseParts {
            upload: self.inner.layout.upload(image.id),
            log_file: self.log_file(kind, image.id),
            script: image.anonymisation_script.clone(),
            cfg,
            masking,
        }
    }

    /// The read-only snapshot, then `ready`. The upload subvolume is
    /// deleted in the background: nothing reads it any more, deleting it
    /// costs a btrfs transaction (tens of milliseconds), and whatever a
    /// restart cuts off, reconcile deletes (a ready image keeps no upload).
    fn seal_image(&self, id: ImageId, done: &finalise::Finalised) -> Result<()> {
        let upload = self.inner.layout.upload(id);
        let snap = self.inner.layout.snapshot(id);
        let size = btrfs::apparent_size(&upload);
        btrfs::snapshot(&upload, &snap, true)?;
        self.inner
            .store
            .set_image_ready(id, done.major, size, &done.database, &done.manifest)?;
        tokio::task::spawn_blocking(move || {
            if let Err(e) = btrfs::delete_subvolume(&upload) {
                tracing::warn!(image = %id, error = %e, "deleting the sealed upload failed");
            }
        });
        Ok(())
    }

    /// Destroy an image. With `cascade` its instances are destroyed first;
    /// without, an image with instances is refused (its warm pool does not
    /// count: it always goes with the image).
    /// Runs to the end even if the caller goes away.
    pub async fn destroy_image(&self, actor: &Actor, id: ImageId, cascade: bool) -> Result<()> {
        let (svc, actor) = (self.clone(), actor.clone());
        super::detached(async move { svc.destroy_image_here(&actor, id, cascade).await }).await
    }

    async fn destroy_image_here(&self, actor: &Actor, id: ImageId, cascade: bool) -> Result<()> {
        actor.require_admin("destroying images")?;
        self.image_or_404(id)?;
        self.destroy_image_unchecked(id, cascade).await?;
        tracing::info!(image = %id, user = %actor.name(), "image destroyed");
        Ok(())
    }

    /// Destroy an image under its exclusive lock (see `image_guard`): the
    /// creates from it under way end first, then it is marked
    /// `destroying` and nothing new is made from it, then its instances,
    /// files and row go. Without `cascade`, an image that has instances
    /// (other than warm ones) once the lock is held is refused and left
    /// as it was.
    pub(crate) async fn destroy_image_unchecked(&self, id: ImageId, cascade: bool) -> Result<()> {
        let _only_us = self.hold_image_exclusively(id).await;
        let image = self.image_or_404(id)?;
        if image.state == ImageState::Finalising {
            return Err(InvalidState::ImageFinalising { id }.into());
        }
        let owned = self
            .inner
            .store
            .instances(None, Some(id))?
            .iter()
            .filter(|i| !i.pooled)
            .count();
        if owned > 0 && !cascade {
            return Err(CoreError::ImageHasInstances { id, count: owned });
        }
        if !self.inner.store.mark_image_destroying(id)? {
            // A finalise started meanwhile (or the row went).
            let image = self.image_or_404(id)?;
            return Err(InvalidState::ImageMoved {
                id,
                state: image.state,
            }
            .into());
        }
        self.finish_image_destroy(id).await?;
        self.forget_image_lock(id);
        Ok(())
    }

    /// The rest of destroying an image already marked `destroying` (also
    /// what a restart does with one): its instances (warm ones first, so
    /// none of them is handed over meanwhile), then — with no instance
    /// left — its snapshot and upload, then its row. A failure leaves it
    /// `destroying`, to be finished by the next attempt or restart.
    pub(crate) async fn finish_image_destroy(&self, id: ImageId) -> Result<()> {
        let instances = self.inner.store.instances(None, Some(id))?;
        for inst in instances.iter().filter(|i| i.pooled) {
            self.inner.store.retire_pooled_instance(inst.id)?;
        }
        for inst in instances {
            self.destroy_instance_unchecked(inst.id).await?;
        }
        let left = self.inner.store.instances(None, Some(id))?.len();
        if left > 0 {
            // Cannot happen under the exclusive lock; never delete the
            // snapshot from under an instance.
            return Err(Internal::InstancesLeft { id, left }.into());
        }
        btrfs::delete_subvolume(&self.inner.layout.upload(id))?;
        btrfs::delete_subvolume(&self.inner.layout.snapshot(id))?;
        self.inner.store.delete_image(id)?;
        Ok(())
    }

    /// Where an image's files are (tests, diagnostics).
    pub fn image_path(&self, id: ImageId) -> (PathBuf, PathBuf) {
        (self.inner.layout.upload(id), self.inner.layout.snapshot(id))
    }
}

/// Regular files beneath `dir` (links not followed; unreadable parts
/// count as empty).
fn count_files(dir: &std::path::Path) -> u64 {
    let mut n = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(e.path()),
                Ok(t) if t.is_file() => n += 1,
                _ => {}
            }
        }
    }
    n
}

/// The owned inputs of a [`FinaliseSpec`].
pub(crate) struct FinaliseParts {
    upload: std::path::PathBuf,
    log_file: std::path::PathBuf,
    script: Option<String>,
    cfg: Arc<crate::config::Config>,
    masking: MaskingSpec,
}

impl FinaliseParts {
    pub(crate) fn spec<'a>(
        &'a self,
        user: &'a crate::core::postgres::cluster::InstanceUser,
    ) -> FinaliseSpec<'a> {
        FinaliseSpec {
            datadir: &self.upload,
            bin_root: &self.cfg.postgres.bin_root,
            user,
            script: self.script.as_deref(),
            database: &self.cfg.postgres.database,
            superuser: &self.cfg.postgres.superuser,
            settings: &self.cfg.postgres.settings,
            log_file: self.log_file.clone(),
            start_timeout: self.cfg.postgres.start_timeout,
            confinement: self.cfg.postgres.confinement,
            masking: &self.masking,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_plans() {
        let p = |s: &str| plan(&UploadTarget::File(s.into()));
        assert!(matches!(p("base.tar.gz").unwrap(), Plan::Extract(d) if d.as_os_str().is_empty()));
        assert!(
            matches!(p("./pg_wal.tar").unwrap(), Plan::Extract(d) if d == std::path::Path::new("pg_wal"))
        );
        assert!(matches!(p("backup.TAR.ZST").unwrap(), Plan::Extract(_)));
        assert!(matches!(p("global/pg_control").unwrap(), Plan::Plain(_)));
        assert!(p("../etc/passwd").is_err());
        assert!(p("/etc/passwd").is_err());
        assert!(matches!(
            plan(&UploadTarget::Stream).unwrap(),
            Plan::Extract(_)
        ));
    }
}
