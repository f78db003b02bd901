//! Per-instance disk limits (`max_instance_disk`, issue 17).
//!
//! Owns: turning btrfs simple quotas on when a limit is configured,
//! limiting each instance subvolume's exclusive bytes, reporting each
//! instance's disk use, and the watch that lets a postmaster that hit its
//! limit finish crash recovery (a short reserve above the limit, withdrawn
//! once the instance is below its limit again). See docs/disk-limits.md.

use crate::core::model::InstanceId;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use super::{Result, Service};
use crate::core::postgres::process;
use crate::core::postgres::supervisor::log_says_disk_full;
use crate::core::storage::btrfs::{self, QuotaMode};
use crate::core::store::InstanceState;

/// How often running instances are checked against their limits.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Usage this close to the kernel limit counts as "at the limit".
const AT_LIMIT_SLACK: u64 = 2 << 20;

/// Room above its use an instance keeps after a recovery above its
/// limit, so that statements that free space can run.
const ROOM_TO_FREE: u64 = 8 << 20;

/// One instance's disk use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUse {
    /// Bytes this instance wrote (its qgroup's exclusive bytes; with
    /// simple quotas: the extents it owns, the image's shared data not
    /// included).
    pub used: u64,
    /// `max_instance_disk`, when set.
    pub limit: Option<u64>,
}

/// The limit in force, or `None` (absent or 0).
fn configured_limit(svc: &Service) -> Option<u64> {
    svc.config()
        .max_instance_disk
        .map(|s| s.0)
        .filter(|&b| b > 0)
}

/// The reserve granted above `limit` so that PostgreSQL can finish crash
/// recovery (its end-of-recovery checkpoint rewrites what changed since
/// the last checkpoint, bounded by `max_wal_size` below).
pub(crate) fn recovery_reserve(limit: u64) -> u64 {
    (limit / 4).max(64 << 20)
}

/// PostgreSQL settings an instance gets when disk is limited: frequent
/// checkpoints keep both its WAL and the rewrite of crash recovery small.
pub(crate) fn postgres_settings(svc: &Service) -> Vec<(String, String)> {
    if configured_limit(svc).is_none() {
        return Vec::new();
    }
    vec![
        ("max_wal_size".into(), "32MB".into()),
        ("min_wal_size".into(), "32MB".into()),
    ]
}

/// True when the log says postgres is down or in crash recovery because a
/// write did not fit: since the last "ready to accept connections", a
/// disk-full PANIC or FATAL, and postgres went down (a PANIC, startup
/// aborted, shut down, or no lock file). A backend's disk-full FATAL alone
/// leaves postgres serving.
fn recovering_from_full_disk(tail: &str) -> bool {
    let (mut full, mut down) = (false, false);
    for line in tail.lines() {
        if line.contains("database system is ready to accept connections") {
            (full, down) = (false, false);
        } else {
            if log_says_disk_full(line) {
                full = true;
            }
            if line.contains("PANIC:")
                || line.contains("aborting startup due to startup process failure")
                || line.contains("database system is shut down")
                || line.contains("could not create lock file")
                || line.contains("could not write lock file")
            {
                down = true;
            }
        }
    }
    full && down
}

/// What each instance log last said, by its length: a log is read again
/// only when it grew (most instances' logs stay still between passes).
#[derive(Default)]
struct LogVerdicts {
    by_path: HashMap<PathBuf, (u64, bool)>,
    seen: HashSet<PathBuf>,
}

impl LogVerdicts {
    fn recovering(&mut self, log: &Path) -> bool {
        self.seen.insert(log.to_owned());
        let len = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        if let Some(&(l, verdict)) = self.by_path.get(log) {
            if l == len {
                return verdict;
            }
        }
        let verdict = recovering_from_full_disk(&process::log_tail(log, 400));
        self.by_path.insert(log.to_owned(), (len, verdict));
        verdict
    }

    /// Forget instances not seen in this pass (destroyed, stopped).
    fn prune(&mut self) {
        let seen = std::mem::take(&mut self.seen);
        self.by_path.retain(|p, _| seen.contains(p));
    }
}

static LOG_VERDICTS: LazyLock<Mutex<LogVerdicts>> = LazyLock::new(Default::default);

impl Service {
    /// At start: with `max_instance_disk` set, make sure quotas are on
    /// (simple quotas unless the file system already has full qgroups).
    pub(crate) fn prepare_disk_limits(&self) -> std::result::Result<(), btrfs::BtrfsError> {
        if configured_limit(self).is_none() {
            return Ok(());
        }
        let mode = btrfs::enable_simple_quotas(self.inner.layout.root())?;
        tracing::info!(?mode, "instance disk limits on");
        Ok(())
    }

    /// Put the configured limit on a freshly made instance subvolume
    /// (before its postmaster starts). Quotas switched on by a reload
    /// are switched on here.
    pub(crate) fn limit_instance_disk(&self, dir: &Path) -> Result<()> {
        let Some(limit) = configured_limit(self) else {
            return Ok(());
        };
        if btrfs::quota_mode(self.inner.layout.root())? == QuotaMode::Off {
            self.prepare_disk_limits()?;
        }
        let subvol = btrfs::subvolume_id(dir)?;
        btrfs::set_exclusive_limit(self.inner.layout.root(), subvol, Some(limit))?;
        Ok(())
    }

    /// Disk use of the given instances (ids whose subvolume is missing are
    /// left out). Empty when quotas are off. As of the file system's last
    /// commit (a few seconds at most).
    pub fn instance_disk_use(&self, ids: &[InstanceId]) -> HashMap<InstanceId, DiskUse> {
        let root = self.inner.layout.root();
        let usage = match btrfs::qgroup_usage(root) {
            Ok(u) if !u.is_empty() => u,
            Ok(_) => return HashMap::new(),
            Err(e) => {
                tracing::warn!(error = %e, "reading quota groups");
                return HashMap::new();
            }
        };
        let limit = configured_limit(self);
        ids.iter()
            .filter_map(|&id| {
                let subvol = btrfs::subvolume_id(&self.inner.layout.instance(id)).ok()?;
                let u = usage.get(&subvol)?;
                Some((
                    id,
                    DiskUse {
                        used: u.exclusive,
                        limit,
                    },
                ))
            })
            .collect()
    }

    /// One pass of the watch: every running instance's kernel limit is
    /// the configured one, or the limit plus the recovery reserve while a
    /// postmaster that the full limit stopped needs it to recover.
    pub(crate) fn check_disk_limits(&self) {
        let root = self.inner.layout.root();
        let Ok(usage) = btrfs::qgroup_usage(root) else {
            return;
        };
        if usage.is_empty() {
            return;
        }
        let Ok(instances) = self.inner.store.instances(None, None) else {
            return;
        };
        let limit = configured_limit(self);
        let mut logs = LOG_VERDICTS.lock().unwrap_or_else(|p| p.into_inner());
        logs.seen.clear();
        for inst in instances {
            if inst.state != InstanceState::Running {
                continue;
            }
            let dir = self.inner.layout.instance(inst.id);
            let Ok(subvol) = btrfs::subvolume_id(&dir) else {
                continue;
            };
            let Some(u) = usage.get(&subvol) else {
                continue;
            };
            let ceiling = u.max_exclusive;
            let Some(limit) = limit else {
                // The key was removed (reload): lift what is left.
                if ceiling.is_some() {
                    let _ = btrfs::set_exclusive_limit(root, subvol, None);
                }
                continue;
            };
            let used = u.exclusive;
            let log = self.log_file("instance", inst.id);
            let recovering = logs.recovering(&log);
            let want = if recovering {
                // Postgres is down or in crash recovery because a write
                // did not fit: room to finish recovery. No client writes
                // meanwhile (it accepts no connections).
                let want = limit.max(used) + recovery_reserve(limit);
                if ceiling.is_none_or(|c| c < want.saturating_sub(AT_LIMIT_SLACK)) {
                    tracing::warn!(
                        instance = %inst.id,
                        used,
                        limit,
                        "postgres stopped at its disk limit; room to recover"
                    );
                    want
                } else {
                    ceiling.unwrap_or(want)
                }
            } else {
                match ceiling {
                    // Fresh, or a reload raised the limit.
                    None => limit,
                    Some(c) if c <= limit => limit,
                    // Serving again after a recovery: take the room back,
                    // down to what it uses plus enough to free space
                    // (TRUNCATE, DELETE, VACUUM write a little), and down
                    // to the limit once it is below it. Never raised here.
                    Some(c) => c.min(limit.max(used + ROOM_TO_FREE)),
                }
            };
            if ceiling != Some(want) {
                if let Err(e) = btrfs::set_exclusive_limit(root, subvol, Some(want)) {
                    tracing::warn!(instance = %inst.id, error = %e, "setting the disk limit");
                }
            }
        }
        logs.prune();
    }

    /// Run [`Service::check_disk_limits`] every few seconds while the
    /// service lives.
    pub(crate) fn spawn_disk_watch(&self) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_INTERVAL).await;
                let Some(inner) = weak.upgrade() else { break };
                let svc = Service { inner };
                // Blocking ioctls and small reads: off the async workers.
                let _ = tokio::task::spawn_blocking(move || svc.check_disk_limits()).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovering_means_a_disk_full_stop_after_the_last_ready() {
        let full = "PANIC:  could not write to file \"pg_wal/x\": Disk quota exceeded";
        let ready = "LOG:  database system is ready to accept connections";
        assert!(recovering_from_full_disk(&format!(
            "{ready}\n{full}\nLOG: redo"
        )));
        assert!(!recovering_from_full_disk(&format!("{full}\n{ready}")));
        assert!(!recovering_from_full_disk(ready));
        assert!(!recovering_from_full_disk(
            "ERROR:  could not extend file: Disk quota exceeded"
        ));
        let backend = "FATAL:  could not write init file: Disk quota exceeded";
        assert!(!recovering_from_full_disk(&format!("{ready}\n{backend}")));
        let startup = "LOG:  aborting startup due to startup process failure";
        assert!(recovering_from_full_disk(&format!("{backend}\n{startup}")));
        let lock = "FATAL:  could not create lock file \"postmaster.pid\": Disk quota exceeded";
        assert!(recovering_from_full_disk(&format!("{ready}\n{lock}")));
    }

    #[test]
    fn the_reserve_is_a_quarter_and_at_least_64_mib() {
        assert_eq!(recovery_reserve(64 << 20), 64 << 20);
        assert_eq!(recovery_reserve(4 << 30), 1 << 30);
    }
}
