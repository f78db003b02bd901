//! Masking rules at the core's surface: an image's own rules read from a
//! file on the Draupnir host (`new-image --rules FILE`), and
//! `suggest-rules` (a complete rules file for an upload's schema, from
//! its catalog and a sample of its values).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::error::{BadInput, FinaliseFailure, InvalidState};
use super::model::{ImageId, ImageState};
use super::postgres::finalise::{self, Progress};
use super::{Actor, CoreError, Result, Service};
use crate::config::MAX_RULES_BYTES;

impl Service {
    /// The text of a rules file on this host, for an image's own rules.
    /// Only a world-readable regular file is read (nothing an admin could
    /// not read on the host anyway); anything else is refused with how to
    /// send the rules on stdin instead.
    pub fn read_rules_file(&self, actor: &Actor, path: &str) -> Result<String> {
        actor.require_admin("creating images")?;
        let refuse = |reason: &'static str| -> CoreError {
            BadInput::RulesFile {
                path: path.chars().take(200).collect(),
                reason,
            }
            .into()
        };
        let p = Path::new(path);
        if !p.is_absolute() {
            return Err(refuse("not an absolute path on the Draupnir host"));
        }
        let file = std::fs::File::open(p).map_err(|_| refuse("cannot be opened"))?;
        let meta = file.metadata().map_err(|_| refuse("cannot be read"))?;
        if !meta.is_file() {
            return Err(refuse("not a regular file"));
        }
        if meta.permissions().mode() & 0o004 == 0 {
            return Err(refuse("not world-readable"));
        }
        if meta.len() > MAX_RULES_BYTES {
            return Err(refuse("larger than 4 MiB"));
        }
        let mut text = String::new();
        file.take(MAX_RULES_BYTES)
            .read_to_string(&mut text)
            .map_err(|_| refuse("not UTF-8 text"))?;
        Ok(text)
    }

    /// `suggest-rules ID`: a complete rules file for an uploaded image
    /// (not finalised, no upload running), to review. The image is held
    /// in `finalising` meanwhile (nothing else touches it) and goes back to
    /// `uploading`. Runs to the end even if the caller goes away.
    pub async fn suggest_rules(
        &self,
        actor: &Actor,
        id: ImageId,
        progress: Option<super::FinaliseProgress>,
    ) -> Result<String> {
        actor.require_admin("suggesting masking rules")?;
        let image = self.image_or_404(id)?;
        if image.state != ImageState::Uploading {
            return Err(InvalidState::NotAnUpload {
                id,
                state: image.state,
            }
            .into());
        }
        if image.upload_active {
            return Err(InvalidState::UploadRunning { id }.into());
        }
        let store = &self.inner.store;
        if !store.transition_image(id, ImageState::Uploading, ImageState::Finalising)? {
            return Err(InvalidState::ImageChanged { id }.into());
        }
        let svc = self.clone();
        super::detached(async move {
            let parts = svc.finalise_parts(&image, "suggest");
            let spec = parts.spec(&svc.inner.user);
            let report = |p: Progress| {
                if let Some(cb) = &progress {
                    cb(p);
                }
            };
            let out = finalise::suggest_rules(&spec, &report).await;
            svc.inner
                .store
                .transition_image(id, ImageState::Finalising, ImageState::Uploading)?;
            out.map_err(|e| FinaliseFailure::Postgres(e).into())
        })
        .await
    }
}
