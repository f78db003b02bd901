//! The core's errors: what went wrong, in words a front door can show as
//! one line. Front doors map each variant once to their own status codes.

use crate::core::model::{ImageId, InstanceId};
use crate::core::storage::ingest::IngestError;
use crate::core::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("admin only: {0}")]
    AdminOnly(&'static str),
    /// An instance's key material goes to its owner only (admins and the
    /// upload user may see and destroy it, never connect as its owner).
    #[error("instance {id} is {owner}'s; only its owner gets its credentials")]
    NotOwner { id: InstanceId, owner: String },
    /// One upload stream at a time per image.
    #[error("image {id} is already receiving an upload (started {secs}s ago); wait for it to end")]
    UploadBusy { id: ImageId, secs: u64 },
    #[error("image {id} is not ready (state: {state})")]
    ImageNotReady { id: ImageId, state: &'static str },
    /// The image is being destroyed: nothing new is made from it.
    #[error("image {id} is being destroyed")]
    ImageDestroying { id: ImageId },
    #[error("image {id} has {count} instance(s); destroy them first")]
    ImageHasInstances { id: ImageId, count: usize },
    #[error("{0}")]
    InvalidState(String),
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Conflict(String),
    #[error("upload failed: {0}")]
    Upload(#[from] IngestError),
    #[error("finalise failed: {0}")]
    Finalise(String),
    #[error("no free port left in {min}..{max}")]
    NoFreePort { min: u16, max: u16 },
    /// A quota or the free-space floor.
    #[error("{0}")]
    Quota(String),
    #[error("out of disk space: {0}")]
    NoSpace(String),
    #[error("instance could not be started: {0}")]
    InstanceStart(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        CoreError::Internal(e.to_string())
    }
}

impl From<crate::core::storage::btrfs::BtrfsError> for CoreError {
    fn from(e: crate::core::storage::btrfs::BtrfsError) -> Self {
        if e.is_no_space() {
            CoreError::NoSpace(e.to_string())
        } else {
            CoreError::Internal(e.to_string())
        }
    }
}

pub type Result<T> = std::result::Result<T, CoreError>;
