//! Serialises destroying an image with making instances from it.
//!
//! Everything that works from an image's snapshot — a cold create, a warm
//! handover, a pool refill, `reset-instance` — holds that image's lock
//! shared while it works, and only after checking (under the lock) that
//! the image is ready. Destroying an image takes the lock exclusively:
//! in-flight creates finish first (and their instances are destroyed with
//! the image), then the image is marked `destroying` in the store before
//! anything is deleted, and every later create fails with "image N is
//! being destroyed" (or, once it is gone, "not found"). The snapshot is
//! deleted only after every instance is gone, and a restart finishes a
//! destroy that was cut off (see reconcile).
//!
//! Lock order: an image's lock before an instance's lock and before the
//! pool's refill lock; the refill pass (which holds its lock while it
//! starts warm instances) only ever *tries* an image's lock, so it never
//! waits behind a destroy that waits for it.

use crate::core::model::ImageId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use super::{CoreError, Result, Service};
use crate::core::store::{Image, ImageState};

/// One lock per image id (ids are never reused).
#[derive(Default)]
pub(crate) struct ImageLocks(Mutex<HashMap<ImageId, Arc<RwLock<()>>>>);

impl ImageLocks {
    fn get(&self, id: ImageId) -> Arc<RwLock<()>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default()
            .clone()
    }

    /// The image is gone: its lock is not needed any more (holders keep
    /// their own reference).
    fn forget(&self, id: ImageId) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }
}

/// A shared hold on a ready image: it is not destroyed while this lives.
pub(crate) type ImageHold = OwnedRwLockReadGuard<()>;

/// An image that may be used to make instances, or why not.
fn usable(image: Image) -> Result<Image> {
    match image.state {
        ImageState::Ready => Ok(image),
        ImageState::Destroying => Err(CoreError::ImageDestroying { id: image.id }),
        other => Err(CoreError::ImageNotReady {
            id: image.id,
            state: other.as_str(),
        }),
    }
}

impl Service {
    /// Hold image `id` shared, once it is ready; waits while it is being
    /// destroyed only to report that it was.
    pub(crate) async fn hold_ready_image(&self, id: ImageId) -> Result<(ImageHold, Image)> {
        // Refused at once when it is already known to be going.
        usable(self.image_or_404(id)?)?;
        let hold = self.inner.image_locks.get(id).read_owned().await;
        let image = usable(self.image_or_404(id)?)?;
        Ok((hold, image))
    }

    /// [`Service::hold_ready_image`] without waiting: `None` when the image
    /// is being destroyed (or someone waits to), is not ready, or is gone.
    pub(crate) fn try_hold_ready_image(&self, id: ImageId) -> Option<(ImageHold, Image)> {
        let hold = self.inner.image_locks.get(id).try_read_owned().ok()?;
        let image = usable(self.inner.store.image(id).ok()??).ok()?;
        Some((hold, image))
    }

    /// Hold image `id` exclusively: every create from it that is under way
    /// has ended, and none starts until this is dropped.
    pub(crate) async fn hold_image_exclusively(&self, id: ImageId) -> OwnedRwLockWriteGuard<()> {
        self.inner.image_locks.get(id).write_owned().await
    }

    pub(crate) fn forget_image_lock(&self, id: ImageId) {
        self.inner.image_locks.forget(id);
    }
}
