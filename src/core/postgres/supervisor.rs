//! The supervisor: keeps one postmaster per instance running and serving.
//!
//! Owns: one watcher task per instance that notices an unexpected exit and
//! restarts the postmaster with back-off, gives up after repeated failures
//! (reporting the log tail), and stops it on request. After every restart
//! and adoption it checks that the postmaster serves its clients (see
//! `serving`); one that cannot — its port taken by another process on one
//! address — is stopped, reported with the reason, and started again on
//! its port with back-off for as long as that lasts (this never counts as
//! a crash, so it comes back once the port is free). Postmasters are known
//! by key only — an instance's id, or a source's name for its standby —
//! and the core turns the events into state changes.

use crate::core::model::InstanceId;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::process::{self, Postmaster, PostmasterSpec, Shutdown};
use super::serving::{NotServing, ServingCheck};

/// What the supervisor tells the core.
#[derive(Debug, Clone)]
pub enum Event<K = InstanceId> {
    /// The postmaster exited unexpectedly and was started again.
    Restarted { id: K, pid: i32 },
    /// Restarting failed too often; the instance is left stopped.
    Failed { id: K, reason: String },
    /// The postmaster serves its clients on every address (after a
    /// restart, an adoption, or a spell of not serving).
    Serving { id: K, pid: i32 },
    /// Clients cannot reach it (`reason`): it was stopped (`pid` None) and
    /// is started again on its port with back-off until they can, or it
    /// runs but has not answered yet (a long recovery) and is waited for.
    NotServing {
        id: K,
        pid: Option<i32>,
        reason: String,
    },
}

/// Whether a postmaster handed to [`Supervisor::watch`] was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Just started and seen serving (a create or reset).
    Serving,
    /// Adopted or restarted by reconcile: check it first.
    Unchecked,
}

/// How hard to try before giving up.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// More than this many unexpected exits within `window` → failed.
    pub max_restarts: usize,
    pub window: Duration,
    /// Fast-shutdown grace before escalating.
    pub stop_grace: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            max_restarts: 5,
            window: Duration::from_secs(120),
            stop_grace: Duration::from_secs(10),
        }
    }
}

struct Watched {
    stop: watch::Sender<Option<Shutdown>>,
    task: JoinHandle<()>,
    pid: Arc<Mutex<Option<i32>>>,
}

/// What a supervised postmaster is known by.
pub trait Key: Clone + Eq + std::hash::Hash + std::fmt::Display + Send + Sync + 'static {}
impl<K: Clone + Eq + std::hash::Hash + std::fmt::Display + Send + Sync + 'static> Key for K {}

/// Cheap to clone; all clones share the watched set.
#[derive(Clone)]
pub struct Supervisor<K: Key = InstanceId> {
    watched: Arc<Mutex<HashMap<K, Watched>>>,
    events: mpsc::UnboundedSender<Event<K>>,
    policy: RestartPolicy,
}

impl<K: Key> Supervisor<K> {
    pub fn new(policy: RestartPolicy) -> (Supervisor<K>, mpsc::UnboundedReceiver<Event<K>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Supervisor {
                watched: Arc::default(),
                events: tx,
                policy,
            },
            rx,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Watched>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watch an already started (or adopted) postmaster for instance `id`;
    /// `check` says how its clients connect (`None`: it is only kept
    /// running).
    pub fn watch(
        &self,
        id: K,
        spec: PostmasterSpec,
        pm: Postmaster,
        check: Option<Arc<ServingCheck>>,
        start: Start,
    ) {
        let (stop_tx, stop_rx) = watch::channel(None);
        let pid = Arc::new(Mutex::new(pm.pid()));
        let task = tokio::spawn(watcher(
            Watch {
                id: id.clone(),
                spec,
                check,
                events: self.events.clone(),
                policy: self.policy.clone(),
                pid_slot: pid.clone(),
            },
            pm,
            start,
            stop_rx,
        ));
        if let Some(old) = self.lock().insert(
            id,
            Watched {
                stop: stop_tx,
                task,
                pid,
            },
        ) {
            old.task.abort();
        }
    }

    /// The current PID of instance `id`'s postmaster, if watched.
    pub fn pid(&self, id: &K) -> Option<i32> {
        let w = self.lock();
        let pid = w.get(id)?.pid.lock().unwrap_or_else(|p| p.into_inner());
        *pid
    }

    /// Stop instance `id`'s postmaster the given way (immediate for an
    /// instance whose data is about to be deleted) and forget it. Returns
    /// when the process is gone.
    pub async fn shutdown(&self, id: &K, mode: Shutdown) {
        let watched = self.lock().remove(id);
        if let Some(w) = watched {
            let _ = w.stop.send(Some(mode));
            let _ = w.task.await;
        }
    }

    /// Stop watching every instance without stopping any postmaster (the
    /// daemon is shutting down; instances keep running).
    pub fn detach_all(&self) {
        for (_, w) in self.lock().drain() {
            w.task.abort();
        }
    }
}

/// True when a postmaster log tail shows postgres stopped by a full disk
/// or quota (a PANIC or FATAL, not a statement's ERROR).
pub fn log_says_disk_full(tail: &str) -> bool {
    tail.lines().any(|l| {
        (l.contains("PANIC:") || l.contains("FATAL:"))
            && (l.contains("No space left on device") || l.contains("Disk quota exceeded"))
    })
}

/// What a watcher task keeps.
struct Watch<K: Key> {
    id: K,
    spec: PostmasterSpec,
    check: Option<Arc<ServingCheck>>,
    events: mpsc::UnboundedSender<Event<K>>,
    policy: RestartPolicy,
    pid_slot: Arc<Mutex<Option<i32>>>,
}

impl<K: Key> Watch<K> {
    /// The back-off before attempt `n` (0-based) of a series.
    fn backoff(&self, n: usize) -> Duration {
        self.policy
            .first_backoff
            .saturating_mul(1 << n.min(16))
            .min(self.policy.max_backoff)
    }

    /// Start the postmaster again; a failure to spawn looks like a
    /// postmaster that exited at once.
    fn respawn(&self) -> Postmaster {
        match process::spawn(&self.spec) {
            Ok(new) => {
                let pid = new.pid();
                *self.pid_slot.lock().unwrap_or_else(|p| p.into_inner()) = pid;
                if let Some(pid) = pid {
                    let _ = self.events.send(Event::Restarted {
                        id: self.id.clone(),
                        pid,
                    });
                }
                new
            }
            Err(e) => {
                tracing::error!(instance = %self.id, error = %e, "cannot restart postmaster");
                *self.pid_slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Postmaster::Adopted(0)
            }
        }
    }

    /// It cannot serve: say why (once per spell), and wait before the next
    /// try. False when a stop was asked for meanwhile.
    async fn not_serving(
        &self,
        why: &NotServing,
        spell: &mut usize,
        stop: &mut watch::Receiver<Option<Shutdown>>,
    ) -> bool {
        if *spell == 0 {
            tracing::warn!(instance = %self.id, reason = %why, "postmaster cannot serve its clients; retrying");
        }
        let _ = self.events.send(Event::NotServing {
            id: self.id.clone(),
            pid: None,
            reason: format!("{why}; retrying"),
        });
        *self.pid_slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let backoff = self.backoff(*spell);
        *spell += 1;
        tokio::select! {
            _ = tokio::time::sleep(backoff) => true,
            _ = stop.changed() => false,
        }
    }
}

async fn watcher<K: Key>(
    w: Watch<K>,
    mut pm: Postmaster,
    start: Start,
    mut stop: watch::Receiver<Option<Shutdown>>,
) {
    let id = w.id.clone();
    let policy = &w.policy;
    let mut exits: VecDeque<Instant> = VecDeque::new();
    // Consecutive tries that could not serve (the back-off grows with it).
    let mut deaf_spell = 0usize;
    // Consecutive exits on a full disk (back-off only).
    let mut full_exits = 0usize;
    let mut verify = start == Start::Unchecked;
    loop {
        if let (true, Some(check)) = (verify, &w.check) {
            let checked = tokio::select! {
                r = check.wait(&mut pm) => Some(r),
                _ = stop.changed() => None,
            };
            let Some(checked) = checked else {
                let mode = (*stop.borrow()).unwrap_or(Shutdown::Fast);
                pm.shutdown(mode, policy.stop_grace).await;
                return;
            };
            match checked {
                Ok(()) => {
                    if let Some(pid) = pm.pid() {
                        let _ = w.events.send(Event::Serving {
                            id: id.clone(),
                            pid,
                        });
                    }
                    if deaf_spell > 0 {
                        tracing::info!(instance = %id, "postmaster serves its clients again");
                    }
                    deaf_spell = 0;
                }
                Err(why) if why.is_deaf() => {
                    pm.stop(policy.stop_grace).await;
                    if !w.not_serving(&why, &mut deaf_spell, &mut stop).await {
                        return;
                    }
                    pm = w.respawn();
                    continue;
                }
                Err(why @ NotServing::NotReady { .. }) => {
                    // Alive, but nothing answered in time (a long crash
                    // recovery answers "starting up"): say so and keep
                    // waiting; it is never killed for being slow.
                    tracing::warn!(instance = %id, reason = %why, "postmaster not ready yet");
                    let _ = w.events.send(Event::NotServing {
                        id: id.clone(),
                        pid: pm.pid(),
                        reason: format!("{why}; still waiting"),
                    });
                    continue;
                }
                Err(_exited) => {}
            }
        }
        verify = true;
        tokio::select! {
            _ = pm.wait() => {}
            _ = stop.changed() => {
                let mode = (*stop.borrow()).unwrap_or(Shutdown::Fast);
                pm.shutdown(mode, policy.stop_grace).await;
                return;
            }
        }
        // Unexpected exit. Another process on the port (postgres exits
        // when it can bind none of its addresses) is waited out, not
        // counted.
        if let Some(taken) = w.check.as_ref().and_then(|c| c.port_taken(None)) {
            if !w.not_serving(&taken, &mut deaf_spell, &mut stop).await {
                return;
            }
            pm = w.respawn();
            continue;
        }
        // One because its disk (or disk limit) is full is not the
        // instance's failure: it is restarted with back-off for as long as
        // it takes (the core's disk watch lets it recover), never counted
        // towards `failed`.
        let disk_full = log_says_disk_full(&process::log_tail(&w.spec.log_file, 20));
        tracing::warn!(instance = %id, disk_full, "postmaster exited unexpectedly");
        let now = Instant::now();
        if disk_full {
            full_exits = full_exits.saturating_add(1);
        } else {
            full_exits = 0;
            exits.push_back(now);
        }
        while exits
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.window)
        {
            exits.pop_front();
        }
        if exits.len() > policy.max_restarts {
            let tail = process::log_tail(&w.spec.log_file, 15);
            *w.pid_slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
            let _ = w.events.send(Event::Failed {
                id,
                reason: format!(
                    "postgres exited {} times within {}s; last log lines:\n{tail}",
                    exits.len(),
                    policy.window.as_secs()
                ),
            });
            return;
        }
        let backoff = w.backoff(
            exits
                .len()
                .saturating_sub(1)
                .max(full_exits.saturating_sub(1)),
        );
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        // Leftovers of the dead postmaster (its backends) may still hold
        // the lock file briefly; postgres itself refuses to start then and
        // the next round retries.
        pm = w.respawn();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_is_a_panic_or_fatal_not_a_statement_error() {
        assert!(log_says_disk_full(
            "x\n2026 [1] PANIC:  could not write to file \"pg_wal/xlogtemp.1\": No space left on device"
        ));
        assert!(log_says_disk_full(
            "2026 [1] PANIC:  could not rename file \"a\" to \"b\": Disk quota exceeded"
        ));
        assert!(log_says_disk_full(
            "FATAL:  could not write init file: Disk quota exceeded"
        ));
        assert!(!log_says_disk_full(
            "ERROR:  could not extend file \"base/5/1\": Disk quota exceeded"
        ));
        assert!(!log_says_disk_full("PANIC:  something else"));
    }
}
