//! The core's errors: what went wrong, as data (ids, states, the thing
//! refused, the source error), each with the one line a front door shows.
//! Front doors map each variant once to their own status codes and never
//! look at the text.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::certs::CertError;
use crate::config::FreeSpace;
use crate::core::model::{Fingerprint, ImageId, ImageState, InstanceId, InstanceState, TokenId};
use crate::core::policy::human;
use crate::core::postgres::cluster::ClusterError;
use crate::core::postgres::finalise::FinaliseError;
use crate::core::postgres::pgconn::PgConnError;
use crate::core::postgres::process::SpawnError;
use crate::core::postgres::serving::NotServing;
use crate::core::storage::btrfs::BtrfsError;
use crate::core::storage::ingest::IngestError;
use crate::core::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{0} not found")]
    NotFound(Missing),
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
    /// The image or instance is in a state that does not allow this.
    #[error("{0}")]
    InvalidState(InvalidState),
    #[error("{0}")]
    BadInput(BadInput),
    #[error("{0}")]
    Conflict(Conflict),
    #[error("upload failed: {0}")]
    Upload(#[from] IngestError),
    #[error("finalise failed: {0}")]
    Finalise(#[source] FinaliseFailure),
    #[error("no free port left in {min}..{max}")]
    NoFreePort { min: u16, max: u16 },
    /// A quota or the free-space floor.
    #[error("{0}")]
    Quota(Quota),
    #[error("out of disk space: {0}")]
    NoSpace(#[source] BtrfsError),
    #[error("instance could not be started: {0}")]
    InstanceStart(#[source] InstanceStart),
    #[error("internal error: {0}")]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Btrfs(#[source] BtrfsError),
    #[error("internal error: {0}")]
    Internal(#[source] Internal),
    /// A refresh refused before anything was made.
    #[error("{0}")]
    Refresh(#[from] crate::core::refresh::RefreshRefused),
}

/// What was not found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    #[error("image {0}")]
    Image(ImageId),
    /// `latest` named no image: none is ready.
    #[error("image latest (no image is ready)")]
    LatestImage,
    #[error("instance {0}")]
    Instance(InstanceId),
    /// A user, by name.
    #[error("user {0}")]
    User(String),
    #[error("key {0}")]
    Key(Fingerprint),
    /// An API token, by id (someone else's is not found, to a user).
    #[error("token {0}")]
    Token(TokenId),
    /// A source, by the name asked for.
    #[error("source {0}")]
    Source(String),
    #[error("allowed address {address} of instance {instance}")]
    AllowedAddress {
        address: IpAddr,
        instance: InstanceId,
    },
}

impl Missing {
    /// An image (by id or as `latest`).
    pub fn is_image(&self) -> bool {
        matches!(self, Missing::Image(_) | Missing::LatestImage)
    }
}

/// A state that does not allow what was asked.
#[derive(Debug, thiserror::Error)]
pub enum InvalidState {
    /// The upload stream was already ended.
    #[error("upload already finished")]
    UploadFinished,
    #[error("image {id} does not accept uploads (state: {state})")]
    NoUploads { id: ImageId, state: ImageState },
    #[error("image {id} is {state}; only a failed or uploading image can be reset")]
    NotResettable { id: ImageId, state: ImageState },
    #[error("an upload into image {id} is still running")]
    UploadRunning { id: ImageId },
    #[error("image {id} is {state}; suggest-rules reads an upload that is not finalised yet")]
    NotAnUpload { id: ImageId, state: ImageState },
    #[error(
        "image {id} failed ({}); `reset-upload {id}` lets it take a new upload",
        .reason.as_deref().unwrap_or("no reason kept")
    )]
    ImageFailed { id: ImageId, reason: Option<String> },
    #[error("image {id} is already being finalised")]
    AlreadyFinalising { id: ImageId },
    /// The image left the state it was checked in before it was claimed.
    #[error("image {id} changed state; try again")]
    ImageChanged { id: ImageId },
    #[error("image {id} is being finalised; wait for it to finish")]
    ImageFinalising { id: ImageId },
    /// Could not be marked `destroying`: it is in `state` now.
    #[error("image {id} is {state}; try again")]
    ImageMoved { id: ImageId, state: ImageState },
    #[error("instance {id} is {state}")]
    Instance {
        id: InstanceId,
        state: InstanceState,
    },
    #[error("instance {id} has no credentials")]
    NoCredentials { id: InstanceId },
    #[error("instance {id} has no credentials yet")]
    NoCredentialsYet { id: InstanceId },
    #[error("instance {id} is a warm instance waiting in the pool; it has no owner yet")]
    WarmInstance { id: InstanceId },
    /// The warm pool's user has a way in, so it may not own instances.
    #[error("user `{user}` can log in, so it cannot own warm instances; remove it (ssh draupnir remove-user {user})")]
    PoolUserCanLogIn { user: &'static str },
}

/// Input refused by validation.
#[derive(Debug, thiserror::Error)]
pub enum BadInput {
    #[error("{0} cannot be allow-listed")]
    NotAllowListable(IpAddr),
    /// The key type (first 40 characters) is not one we take.
    #[error("not an OpenSSH public key (unknown key type `{0}`)")]
    KeyType(String),
    #[error("the public key's base64 is invalid")]
    KeyBase64,
    #[error("the public key's data does not match its type")]
    KeyMismatch,
    #[error("the user name `{0}` is reserved for the warm pool")]
    ReservedName(String),
    /// An invalid user name (its first 64 characters).
    #[error("invalid user name `{0}`: use letters, digits, '.', '_', '-', '@' (up to 64)")]
    UserName(String),
    #[error("`{0}` is not an e-mail address")]
    Email(String),
    #[error("you cannot remove yourself")]
    RemoveSelf,
    #[error("`{0}` is the warm pool's system user; nobody logs in as it")]
    PoolUser(String),
    #[error("a duration of {} is too long (at most 36500d, 100 years)", human(*.0))]
    SpanTooLong(Duration),
    #[error("a duration of {} is too long", human(*.0))]
    DurationOverflow(Duration),
    #[error("a lifetime of {} is longer than max_instance_ttl ({})", human(*.ttl), human(*.max))]
    LifetimeOverMax { ttl: Duration, max: Duration },
    #[error("a lifetime must be above 0")]
    ZeroLifetime,
    #[error("extend by more than 0")]
    ZeroExtend,
    #[error("that would keep instance {id} past max_instance_ttl ({} from now)", human(*.max))]
    ExtendPastMax { id: InstanceId, max: Duration },
    #[error("the anonymisation script contains a NUL byte")]
    ScriptNul,
    /// The image's own masking rules do not parse (the error has the line).
    #[error("{0}")]
    Rules(#[source] Box<crate::core::masking::rules::RulesError>),
    #[error("rules file `{path}`: {reason}; send the rules on stdin instead: ssh draupnir new-image --rules - < FILE")]
    RulesFile { path: String, reason: &'static str },
    #[error(
        "an image declared not personal (--no-anonymisation) takes no masking rules and no script"
    )]
    NotPersonalButMasked,
    #[error("upload path `{}` must stay inside the image", .0.display())]
    UploadPath(PathBuf),
    #[error("upload needs a file name")]
    NoFileName,
    #[error("reading the upload: {0}")]
    ReadUpload(#[source] std::io::Error),
}

/// Something already there (or already gone) stands in the way.
#[derive(Debug, thiserror::Error)]
pub enum Conflict {
    #[error("user `{0}` already exists")]
    UserExists(String),
    #[error("e-mail `{0}` belongs to another user")]
    EmailTaken(String),
    #[error("key {fingerprint} already belongs to `{owner}`")]
    KeyTaken {
        fingerprint: Fingerprint,
        owner: String,
    },
    #[error("instance {id} was destroyed while it was being created")]
    DestroyedWhileCreating { id: InstanceId },
    #[error("instance {id} is no longer a waiting warm instance (handed over, or being started or destroyed); look again")]
    NoLongerWarm { id: InstanceId },
}

/// Why a finalise failed.
#[derive(Debug, thiserror::Error)]
pub enum FinaliseFailure {
    /// The finalise itself (postgres, the script, the access proof).
    #[error("{0}")]
    Postgres(#[source] FinaliseError),
    /// Sealing the finalised upload (the snapshot, the row).
    #[error("{0}")]
    Seal(#[source] Box<CoreError>),
    /// An earlier finalise failed; the reason is the one kept on the image.
    #[error("{0}")]
    Recorded(String),
}

/// A quota or the free-space floor refused.
#[derive(Debug, thiserror::Error)]
pub enum Quota {
    #[error(
        "this host already runs {count} instances (max_instances_total = {max}); destroy one first"
    )]
    HostInstances { count: usize, max: u32 },
    #[error("you already have {count} instances (max_instances_per_user = {max}); destroy one first (ssh draupnir instances)")]
    UserInstances { count: usize, max: u32 },
    /// `what` (an upload, a new instance) found less than `floor` free.
    #[error(
        "{what} refused: only {} ({:.0}%) free on data_path, below min_free_space ({floor}); destroy instances or images to make room (ssh draupnir instances --all, images)",
        gib(*.free),
        if *.total > 0 { *.free as f64 * 100.0 / *.total as f64 } else { 0.0 }
    )]
    FreeSpace {
        what: String,
        free: u64,
        total: u64,
        floor: FreeSpace,
    },
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// Why an instance's postmaster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum InstanceStart {
    /// The binaries, or writing its files.
    #[error("{0}")]
    Cluster(#[source] ClusterError),
    #[error("{0}")]
    Spawn(#[source] SpawnError),
    #[error("{0}")]
    NotServing(#[source] NotServing),
    /// It did not serve and its log says why (the last lines).
    #[error("{log_tail}")]
    Log {
        #[source]
        why: NotServing,
        log_tail: String,
    },
}

/// A failure that is nobody's input: a task that died, a file we could not
/// write, an invariant broken.
#[derive(Debug, thiserror::Error)]
pub enum Internal {
    #[error("{0}")]
    Join(#[source] tokio::task::JoinError),
    /// A named task (the upload, the finalise, a request) died.
    #[error("{task}: {source}")]
    Task {
        task: &'static str,
        source: tokio::task::JoinError,
    },
    #[error("firewall: {0}")]
    Firewall(#[source] crate::guard::iptables::GuardError),
    #[error("image {0} has no major version")]
    NoMajor(ImageId),
    #[error("{0}")]
    Tls(#[source] PgConnError),
    #[error("{0}")]
    Certs(#[source] CertError),
    #[error("reading {name}: {source}")]
    ReadCert {
        name: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    Cluster(#[source] ClusterError),
    #[error("swapping in the fresh snapshot: {0}")]
    Swap(#[source] std::io::Error),
    #[error("chown {}: {source}", .path.display())]
    Chown {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image {id} still has {left} instance(s) after destroying them")]
    InstancesLeft { id: ImageId, left: usize },
}

impl From<BtrfsError> for CoreError {
    fn from(e: BtrfsError) -> Self {
        if e.is_no_space() {
            CoreError::NoSpace(e)
        } else {
            CoreError::Btrfs(e)
        }
    }
}

macro_rules! wrap {
    ($($inner:ident => $variant:ident),*) => {$(
        impl From<$inner> for CoreError {
            fn from(e: $inner) -> Self {
                CoreError::$variant(e)
            }
        }
    )*};
}

wrap!(
    Missing => NotFound,
    InvalidState => InvalidState,
    BadInput => BadInput,
    Conflict => Conflict,
    FinaliseFailure => Finalise,
    Quota => Quota,
    InstanceStart => InstanceStart,
    Internal => Internal
);

pub type Result<T> = std::result::Result<T, CoreError>;
