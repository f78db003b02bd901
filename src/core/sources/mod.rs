//! Sources: production primaries followed by a streaming standby each
//! (`[sources.NAME]`), and what `sources`, `status` and `/metrics` say
//! about them.
//!
//! Owns the set of followed sources and its changes on reload (a new
//! source is copied and started; a removed one is stopped, its standby
//! deleted and its slot dropped on the primary, said first in the log), a
//! keeper task per source (`keeper`), and each one's live state. The
//! standby's postmaster runs under the same [`Supervisor`] code as
//! instances, keyed by the source's name. A refresh is the core's
//! (`crate::core::refresh`); it reads the standby through [`Followed`].

mod keeper;
pub mod lsn;
pub mod primary;
pub mod standby;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{SourceConfig, SourceName, Sources as SourcesConfig};
use crate::core::postgres::cluster::InstanceUser;
use crate::core::postgres::process::Shutdown;
use crate::core::postgres::supervisor::{Event, RestartPolicy, Supervisor};
use crate::core::storage::btrfs;

pub use keeper::{RefreshHook, Refresher};
pub use standby::{Position, Standby, StandbyError};

/// The system user every standby runs as (not the instance user: a
/// standby's files are production data).
pub const STANDBY_USER: &str = "draupnir-standby";

/// A source's state, as `sources` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    /// The first copy is being made (or cannot be yet), or the standby is
    /// starting.
    Initialising,
    /// Connected to the primary, replaying within seconds of it.
    Streaming,
    /// Connected, but further behind than that.
    CatchingUp,
    /// No connection to the primary (the reason is kept).
    Disconnected,
    /// The standby's postmaster keeps exiting; retried after a pause.
    Failed,
}

impl SourceState {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceState::Initialising => "initialising",
            SourceState::Streaming => "streaming",
            SourceState::CatchingUp => "catching up",
            SourceState::Disconnected => "disconnected",
            SourceState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for SourceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Within this many seconds of the primary, a connected standby is
/// `streaming`; further behind, `catching up`.
pub const STREAMING_WITHIN_SECS: f64 = 10.0;

/// What the keeper last saw of one source.
#[derive(Debug, Clone)]
pub struct Live {
    pub state: SourceState,
    pub reason: Option<String>,
    pub position: Option<Position>,
    pub pid: Option<i32>,
    /// The last refresh's outcome that was not an image (a scheduled one
    /// that failed), for `sources`.
    pub last_failure: Option<String>,
}

/// One followed source: its standby, its live state, and the lock that
/// keeps refreshes one at a time.
pub struct Followed {
    pub standby: Arc<Standby>,
    live: Mutex<Live>,
    /// The standby's bootstrap superuser (read once over its socket).
    superuser: tokio::sync::Mutex<Option<String>>,
    pub refreshing: tokio::sync::Mutex<()>,
}

impl Followed {
    pub fn live(&self) -> Live {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, f: impl FnOnce(&mut Live)) {
        f(&mut self.live.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Ask the standby where it is now (and remember it).
    pub async fn position(&self) -> Result<Position, String> {
        let mut su = self.superuser.lock().await;
        let pos = self.standby.position(&mut su).await;
        if let Ok(p) = &pos {
            let p = p.clone();
            self.set(|l| l.position = Some(p));
        }
        pos
    }

    /// A restartpoint on the standby (see [`Standby::checkpoint`]).
    pub async fn checkpoint(&self) -> Result<(), String> {
        let mut su = self.superuser.lock().await;
        self.standby.checkpoint(&mut su).await
    }

    pub fn note_refresh_failure(&self, reason: Option<String>) {
        self.set(|l| l.last_failure = reason);
    }
}

struct Running {
    followed: Arc<Followed>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Everything about sources the core keeps.
pub struct Sources {
    running: Mutex<BTreeMap<SourceName, Running>>,
    /// One [`Sources::apply`] at a time (reloads in a row).
    applying: tokio::sync::Mutex<()>,
    supervisor: Supervisor<SourceName>,
    /// Where standbys live (`data_path/standbys`).
    dir: PathBuf,
    logs: PathBuf,
    bin_root: PathBuf,
    confinement: crate::config::Confinement,
    refresher: Refresher,
}

impl Sources {
    pub fn new(
        dir: PathBuf,
        logs: PathBuf,
        bin_root: PathBuf,
        confinement: crate::config::Confinement,
        refresher: Refresher,
    ) -> Arc<Sources> {
        let (supervisor, events) = Supervisor::new(RestartPolicy::default());
        let sources = Arc::new(Sources {
            running: Mutex::default(),
            applying: Default::default(),
            supervisor,
            dir,
            logs,
            bin_root,
            confinement,
            refresher,
        });
        let weak = Arc::downgrade(&sources);
        let mut events = events;
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                let Some(sources) = weak.upgrade() else { break };
                let Some(f) = sources.get(match &ev {
                    Event::Restarted { id, .. }
                    | Event::Failed { id, .. }
                    | Event::Serving { id, .. }
                    | Event::NotServing { id, .. } => id,
                }) else {
                    continue;
                };
                match ev {
                    Event::Restarted { id, pid } => {
                        tracing::warn!(source = %id, pid, "standby restarted after an unexpected exit");
                        f.set(|l| l.pid = Some(pid));
                    }
                    Event::Failed { id, reason } => {
                        tracing::error!(source = %id, %reason, "standby failed");
                        f.set(|l| {
                            l.state = SourceState::Failed;
                            l.reason = Some(reason);
                            l.pid = None;
                        });
                    }
                    Event::Serving { .. } | Event::NotServing { .. } => {}
                }
            }
        });
        sources
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<SourceName, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, name: &SourceName) -> Option<Arc<Followed>> {
        self.lock().get(name).map(|r| r.followed.clone())
    }

    pub fn all(&self) -> Vec<Arc<Followed>> {
        self.lock().values().map(|r| r.followed.clone()).collect()
    }

    fn standby(&self, name: &SourceName, config: &SourceConfig, user: &InstanceUser) -> Standby {
        Standby {
            name: name.clone(),
            config: config.clone(),
            datadir: self.dir.join(name.as_str()),
            passfile: self.dir.join(format!(".{}.pgpass", name.as_str())),
            log_file: self.logs.join(format!("standby-{name}.log")),
            user: user.clone(),
            bin_root: self.bin_root.clone(),
            confinement: self.confinement,
        }
    }

    /// Follow exactly the configured sources: start the new ones, restart
    /// the changed ones, and remove the ones no longer configured (their
    /// standbys, and their slots on the primaries). Standbys on disk
    /// that no configuration names (removed while the daemon was down)
    /// are removed too.
    pub async fn apply(self: &Arc<Self>, config: &SourcesConfig) {
        let _one = self.applying.lock().await;
        let user = if config.is_empty() {
            None
        } else {
            match InstanceUser::ensure(STANDBY_USER) {
                Ok(u) => Some(u),
                Err(e) => {
                    tracing::error!(error = %e, "cannot make the standby user; no source is followed");
                    None
                }
            }
        };
        // Changed or removed: stop the keeper first.
        let mut removed = Vec::new();
        let mut restarted = Vec::new();
        {
            let mut running = self.lock();
            let names: Vec<SourceName> = running.keys().cloned().collect();
            for name in names {
                let keep = config.get(&name).is_some_and(|c| {
                    *c == running[&name].followed.standby.config && user.is_some()
                });
                if !keep {
                    if let Some(r) = running.remove(&name) {
                        let _ = r.stop.send(true);
                        if config.contains_key(&name) {
                            restarted.push((name, r));
                        } else {
                            removed.push((name, r));
                        }
                    }
                }
            }
        }
        for (name, r) in restarted {
            let _ = r.task.await;
            tracing::info!(source = %name, "source changed: restarting its standby with the new settings");
            self.supervisor.shutdown(&name, Shutdown::Fast).await;
        }
        for (name, r) in removed {
            let _ = r.task.await;
            self.remove(&name, Some(&r.followed.standby)).await;
        }
        if let Some(user) = &user {
            for (name, c) in config {
                if let Some(kept) = self.get(name) {
                    // A rotated password: libpq reads the copy at the next
                    // connection attempt.
                    if let Err(e) = kept.standby.copy_passfile() {
                        tracing::warn!(source = %name, error = %e, "cannot copy the password file");
                    }
                    continue;
                }
                let standby = Arc::new(self.standby(name, c, user));
                let followed = Arc::new(Followed {
                    standby,
                    live: Mutex::new(Live {
                        state: SourceState::Initialising,
                        reason: None,
                        position: None,
                        pid: None,
                        last_failure: None,
                    }),
                    superuser: Default::default(),
                    refreshing: Default::default(),
                });
                let (stop, stop_rx) = watch::channel(false);
                let task = tokio::spawn(keeper::keep(
                    followed.clone(),
                    self.supervisor.clone(),
                    stop_rx,
                    self.refresher.clone(),
                ));
                self.lock().insert(
                    name.clone(),
                    Running {
                        followed,
                        stop,
                        task,
                    },
                );
            }
        }
        // Standbys left on disk by sources removed while we were down.
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let file = entry.file_name();
            let Some(name) = file.to_str().and_then(|n| SourceName::parse(n).ok()) else {
                continue;
            };
            if !config.contains_key(&name) && btrfs::is_subvolume(&entry.path()) {
                self.remove(&name, None).await;
            }
        }
    }

    /// Stop a removed source's standby, drop its slot on the primary
    /// (when its settings are still known) and delete its files.
    async fn remove(&self, name: &SourceName, standby: Option<&Standby>) {
        let datadir = self.dir.join(name.as_str());
        let slot = standby.and_then(|s| s.config.slot.as_ref());
        tracing::warn!(
            source = %name,
            slot = slot.map(|s| s.as_str()),
            "source removed from the configuration: stopping its standby, deleting its copy{}",
            if slot.is_some() { " and dropping its replication slot on the primary" } else { "" }
        );
        self.supervisor.shutdown(name, Shutdown::Fast).await;
        if let Some(pid) = crate::core::postgres::process::running_postmaster(&datadir) {
            let mut pm = crate::core::postgres::process::Postmaster::Adopted(pid);
            pm.stop(std::time::Duration::from_secs(10)).await;
        }
        crate::core::postgres::process::reap_leftovers(&datadir, std::time::Duration::from_secs(5))
            .await;
        if let (Some(s), Some(slot)) = (standby, slot) {
            match s.primary() {
                Ok(p) => match p.drop_slot(slot).await {
                    Ok(()) => {
                        tracing::info!(source = %name, slot = slot.as_str(), "replication slot dropped on the primary")
                    }
                    Err(e) => {
                        tracing::error!(source = %name, slot = slot.as_str(), error = %e, "cannot drop the replication slot on the primary; drop it there (SELECT pg_drop_replication_slot('{}')) or it keeps WAL forever", slot.as_str())
                    }
                },
                Err(e) => {
                    tracing::error!(source = %name, error = %e, "cannot drop the replication slot")
                }
            }
        } else if standby.is_none() {
            tracing::warn!(source = %name, "its settings are gone: a replication slot it had on the primary is left there; drop it on the primary");
        }
        if btrfs::is_subvolume(&datadir) {
            if let Err(e) = btrfs::delete_subvolume(&datadir) {
                tracing::error!(source = %name, error = %e, "cannot delete the standby's copy");
            }
        }
        let _ = std::fs::remove_file(self.dir.join(format!(".{}.pgpass", name.as_str())));
        tracing::info!(source = %name, "source removed");
    }

    /// Stop following without stopping any standby (daemon shutdown).
    pub fn detach(&self) {
        for (_, r) in std::mem::take(&mut *self.lock()) {
            r.task.abort();
        }
        self.supervisor.detach_all();
    }
}
