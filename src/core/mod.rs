//! The core: the one service both front doors call.
//!
//! Owns every decision about images, instances and users, and who may do
//! what (admins manage images and users; users see and destroy only their
//! own instances). Front doors parse input, call a method here with an
//! [`Actor`], and format the result. Below the core, `store`, `storage`
//! and `postgres` act without knowing about users.

mod allowlist;
mod caller;
mod counters;
mod disk;
pub mod doctor;
mod error;
mod identities;
mod image_guard;
mod images;
mod instances;
mod manifest;
mod masking;
mod masking_rules;
mod model;
mod policy;
mod pool;
mod postgres;
mod reconcile;
mod refresh;
mod reload;
mod sources;
mod storage;
mod store;
#[cfg(feature = "test-support")]
pub mod test_support;
mod tokens;
mod users;

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::core::postgres::cluster::InstanceUser;
use crate::core::postgres::supervisor::{self, RestartPolicy, Supervisor};
use crate::core::storage::layout::Layout;
use crate::core::storage::loopback;
use crate::core::store::Store;

pub use allowlist::{allowable, rules_from_store};
pub use caller::{address_key, Actor, Caller, Principal};
pub use counters::{Counted, Histogram, SshSessionGauge, FINALISE_BUCKETS};
pub use disk::DiskUse;
pub use error::{
    BadInput, Conflict, CoreError, FinaliseFailure, InstanceStart, Internal, InvalidState, Missing,
    Quota, Result,
};
pub use identities::{Census, INTEGRATION_USER, POOL_USER, UPLOAD_USER};
pub use images::{FinaliseProgress, Finalising, Upload, UploadTarget};
pub use instances::{ConnectionInfo, InstanceRef, NewInstance};
pub use manifest::{AnonymisationStatus, Manifest, NewImage, ScanManifest, TableManifest};
pub use masking::rules::RulesError as MaskingRulesError;
pub use model::{
    format_ts, ApiToken, Credentials, Fingerprint, Image, ImageId, ImageState, Instance,
    InstanceId, InstanceState, Progress, SshKey, TokenId, User, UserId,
};
pub use policy::{CleanReport, Extension, Status, TokenChecker, TokenStatus};
pub use pool::RefillReport;
pub use reconcile::ReconcileReport;
pub use refresh::{RefreshRefused, SourceSummary, SourceView};
pub use reload::ReloadReport;
pub use sources::{SourceState, STANDBY_USER};

/// Copy the metadata database at `db` to `dest` with SQLite's online
/// backup, and check the copy's integrity (`draupnir backup`).
pub fn backup_database(
    db: &std::path::Path,
    dest: &std::path::Path,
) -> std::result::Result<(), store::StoreError> {
    Store::backup(db, dest)
}

/// Check that a masking rules file parses (`[masking] rules_file` at
/// load; an image's own rules are checked by `create_image`).
pub fn check_masking_rules(text: &str) -> std::result::Result<(), MaskingRulesError> {
    masking::rules::parse(text).map(drop)
}

/// Make a new per-deployment masking key in `state_path`, replacing the
/// old one (`draupnir rotate-masking-key`). Images sealed from now on get
/// different masked values; sealed images keep theirs.
pub fn rotate_masking_key(
    state_path: &std::path::Path,
) -> std::result::Result<std::path::PathBuf, masking::key::KeyError> {
    masking::key::MaskingKey::rotate(state_path)
}

/// Run work that must finish even if the client that asked goes away (it
/// holds disk and processes): on a task of its own; the caller waits for
/// its outcome.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(work)
        .await
        .map_err(|source| error::Internal::Task {
            task: "request task",
            source,
        })?
}

/// Refuse to start when the instance user cannot reach a directory
/// postmasters need; a check that cannot be made is logged, not fatal.
fn reachable(
    checked: std::result::Result<(), crate::core::postgres::reach::ReachError>,
) -> std::result::Result<(), StartError> {
    use crate::core::postgres::reach::ReachError;
    match checked {
        Ok(()) => Ok(()),
        Err(ReachError::Blocked(b)) => Err(StartError::Unreachable(b)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot check that the instance user reaches data_path");
            Ok(())
        }
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Storage(#[from] loopback::LoopbackError),
    #[error("{0}")]
    Store(#[from] crate::core::store::StoreError),
    #[error("{0}")]
    Cluster(#[from] crate::core::postgres::cluster::ClusterError),
    /// The instance user cannot get to `data_path` or the postgres
    /// binaries (one line naming the directory and the `chmod`).
    #[error("{0}")]
    Unreachable(Box<crate::core::postgres::reach::Blocked>),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("max_instance_disk needs btrfs quotas: {0}")]
    DiskLimits(#[source] crate::core::storage::btrfs::BtrfsError),
}

pub(crate) struct Inner {
    /// Swapped whole on reload (SIGHUP); readers take a snapshot.
    pub config: std::sync::RwLock<Arc<Config>>,
    pub store: Store,
    pub layout: Layout,
    pub user: InstanceUser,
    pub supervisor: Supervisor,
    pub logs: PathBuf,
    /// Asks the identity provider about refresh tokens (set by HTTP).
    pub token_checker: std::sync::Mutex<Option<Arc<dyn policy::TokenChecker>>>,
    /// Wakes the allow-list reconcile loop.
    pub guard_wake: Arc<tokio::sync::Notify>,
    /// Serialises destroy/reconcile work on one instance id.
    pub instance_locks: std::sync::Mutex<std::collections::HashSet<InstanceId>>,
    /// Serialises destroying an image with making instances from it.
    pub image_locks: image_guard::ImageLocks,
    /// What the core counts (creates, destroys, finalises, SSH sessions).
    pub counters: counters::Counters,
    /// The warm pool's refill task state.
    pub pool: Arc<pool::PoolState>,
    /// Images receiving an upload stream, and since when (one at a time).
    pub uploads: std::sync::Mutex<std::collections::HashMap<ImageId, std::time::Instant>>,
    /// The followed sources and their standbys.
    pub sources: Arc<sources::Sources>,
}

/// The service. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    pub(crate) inner: Arc<Inner>,
}

impl Service {
    /// Open everything the daemon needs: btrfs at `data_path` (mounting a
    /// loopback file when configured), the state directory, the metadata
    /// database, the instance user; then reconcile disk and processes with
    /// the database and start supervising instances.
    pub async fn open(
        config: Config,
    ) -> std::result::Result<(Service, ReconcileReport), StartError> {
        let io_err = |what: &'static str, path: &std::path::Path| {
            let path = path.to_owned();
            move |source| StartError::Io { what, path, source }
        };
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&config.state_path)
            .map_err(io_err("cannot create state_path", &config.state_path))?;
        std::fs::set_permissions(&config.state_path, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("cannot chmod state_path", &config.state_path))?;
        let logs = config.state_path.join("logs");
        std::fs::create_dir_all(&logs).map_err(io_err("cannot create", &logs))?;
        let user = InstanceUser::ensure(&config.postgres.instance_user)?;
        // Before mounting anything: the way to data_path, and the binaries.
        use crate::core::postgres::reach::{check, check_way};
        reachable(check_way(&user, std::slice::from_ref(&config.data_path)))?;
        reachable(check(
            &user,
            std::slice::from_ref(&config.postgres.bin_root),
        ))?;
        let mounted = loopback::ensure_btrfs(
            &config.data_path,
            &config.state_path,
            config.loopback_size.map(|s| s.0),
        )?;
        if let loopback::Mounted::Loopback { file, created } = &mounted {
            tracing::info!(file = %file.display(), created, data_path = %config.data_path.display(), "mounted loopback btrfs");
        }
        let layout = Layout::new(&config.data_path);
        layout
            .create()
            .map_err(io_err("cannot create directories under", &config.data_path))?;
        reachable(check(
            &user,
            &crate::core::postgres::reach::postmaster_dirs(
                &config.data_path,
                &config.postgres.bin_root,
            ),
        ))?;
        let store = Store::open(&config.database_path())?;
        let (supervisor, events) = Supervisor::new(RestartPolicy::default());
        let standbys = layout.standbys();
        let sources_parts = (
            logs.clone(),
            config.postgres.bin_root.clone(),
            config.postgres.confinement,
        );
        let service = Service {
            inner: Arc::new_cyclic(|weak| Inner {
                sources: sources::Sources::new(
                    standbys,
                    sources_parts.0,
                    sources_parts.1,
                    sources_parts.2,
                    Service::refresher(weak.clone()),
                ),
                config: std::sync::RwLock::new(Arc::new(config)),
                store,
                layout,
                user,
                supervisor,
                logs,
                guard_wake: Arc::default(),
                token_checker: Default::default(),
                instance_locks: Default::default(),
                image_locks: Default::default(),
                pool: Default::default(),
                counters: Default::default(),
                uploads: Default::default(),
            }),
        };
        service
            .prepare_disk_limits()
            .map_err(StartError::DiskLimits)?;
        service.spawn_event_loop(events);
        service.spawn_cleaner();
        service.spawn_disk_watch();
        service.bootstrap_admins()?;
        let report = service.reconcile().await;
        service.spawn_guard();
        // Adopted warm instances count; the pool is refilled to size.
        service.spawn_pool();
        service.follow_sources().await;
        Ok((service, report))
    }

    /// The configuration in force (a snapshot: a reload swaps it whole).
    pub fn config(&self) -> Arc<Config> {
        self.inner
            .config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Turn supervisor events into state changes.
    fn spawn_event_loop(
        &self,
        mut events: tokio::sync::mpsc::UnboundedReceiver<supervisor::Event>,
    ) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                let Some(inner) = weak.upgrade() else { break };
                match ev {
                    supervisor::Event::Restarted { id, pid } => {
                        tracing::info!(instance = %id, pid, "postmaster restarted");
                        let _ = inner.store.set_instance_pid(id, Some(pid));
                    }
                    supervisor::Event::Failed { id, reason } => {
                        tracing::error!(instance = %id, %reason, "instance failed");
                        let _ = inner.store.set_instance_state(
                            id,
                            crate::core::store::InstanceState::Failed,
                            Some(&reason),
                        );
                        let _ = inner.store.set_instance_pid(id, None);
                    }
                    supervisor::Event::Serving { id, pid } => {
                        let _ = inner.store.set_instance_serving(id, Some(pid), None);
                    }
                    supervisor::Event::NotServing { id, pid, reason } => {
                        let _ = inner.store.set_instance_serving(id, pid, Some(&reason));
                    }
                }
            }
        });
    }

    /// Stop supervising without stopping any instance (daemon shutdown);
    /// no warm instance is started any more.
    pub fn shutdown(&self) {
        self.inner.pool.stop();
        self.inner.supervisor.detach_all();
        self.inner.sources.detach();
    }

    /// Follow exactly the configured sources (at start and on reload).
    pub(crate) async fn follow_sources(&self) {
        let cfg = self.config();
        self.inner.sources.apply(&cfg.sources).await;
    }

    /// Count one open SSH session channel until the gauge is dropped.
    pub fn ssh_session(&self) -> SshSessionGauge {
        self.inner.counters.ssh_session()
    }

    /// The supervisor's current PID for an instance (tests, `instance ID`).
    pub fn instance_pid(&self, id: InstanceId) -> Option<i32> {
        self.inner.supervisor.pid(&id)
    }

    pub(crate) fn log_file(&self, kind: &str, id: impl std::fmt::Display) -> PathBuf {
        self.inner.logs.join(format!("{kind}-{id}.log"))
    }
}
