//! The keeper: one task per source that makes its standby exist and keeps
//! it running. It makes the first copy (retrying with back-off while the
//! primary cannot be reached), adopts a standby left running by an
//! earlier daemon or starts it, hands it to the supervisor, reads its
//! position every few seconds into the source's live state, and runs the
//! refresh schedule.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::SourceName;
use crate::core::postgres::process::{self, Postmaster};
use crate::core::postgres::supervisor::{Start, Supervisor};

use super::{Followed, SourceState, STREAMING_WITHIN_SECS};

/// What the keeper asks of the core: when a source was last refreshed,
/// and to refresh it (on the schedule).
pub trait RefreshHook: Send + Sync {
    /// Unix time of the newest image made from `name`.
    fn last_refresh(&self, name: &SourceName) -> Option<u64>;
    fn refresh(&self, name: SourceName) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

pub type Refresher = Arc<dyn RefreshHook>;

/// How often the standby's position is read.
const POLL: Duration = Duration::from_secs(2);
/// After the supervisor gave up on the standby, wait this long, then start
/// it again.
const AFTER_FAILURE: Duration = Duration::from_secs(60);

fn backoff(n: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1 << n.min(6)).min(300))
}

/// Sleep `d`; false when a stop came first.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => !*stop.borrow(),
        _ = stop.changed() => false,
    }
}

pub(super) async fn keep(
    f: Arc<Followed>,
    supervisor: Supervisor<SourceName>,
    mut stop: watch::Receiver<bool>,
    refresher: Refresher,
) {
    let name = f.standby.name.clone();
    let mut tries = 0u32;
    // The first copy.
    while !f.standby.is_made() {
        f.set(|l| {
            l.state = SourceState::Initialising;
            l.reason = Some("copying the primary (pg_basebackup)".into());
        });
        tracing::info!(source = %name, primary = %f.standby.config.primary_conninfo.target(), "making the standby: copying the primary");
        let say = |s: String| tracing::info!(source = %name, "{s}");
        // A stop (the source removed or changed, the daemon going down)
        // ends a copy under way: pg_basebackup is killed with it, and the
        // next keeper starts the copy afresh.
        let made = tokio::select! {
            r = f.standby.make(&say) => r,
            _ = stop.changed() => return,
        };
        match made {
            Ok(()) => tracing::info!(source = %name, "standby copied; starting it"),
            Err(e) => {
                let wait = backoff(tries);
                tries += 1;
                tracing::warn!(source = %name, error = %e, retry_in_s = wait.as_secs(), "cannot copy the primary yet");
                f.set(|l| {
                    l.reason = Some(format!(
                        "cannot copy the primary yet: {e} (retrying in {}s)",
                        wait.as_secs()
                    ))
                });
                if !pause(wait, &mut stop).await {
                    return;
                }
            }
        }
        if *stop.borrow() {
            return;
        }
    }
    loop {
        if let Err(e) = start(&f, &supervisor) {
            tracing::error!(source = %name, error = %e, "cannot start the standby");
            f.set(|l| {
                l.state = SourceState::Failed;
                l.reason = Some(e.to_string());
            });
            if !pause(AFTER_FAILURE, &mut stop).await {
                return;
            }
            continue;
        }
        // Read its position until it fails for good or we are stopped.
        let mut next_refresh = schedule_due(&f, &refresher);
        loop {
            if !pause(POLL, &mut stop).await {
                return;
            }
            let pid = supervisor.pid(&name);
            f.set(|l| l.pid = pid);
            if pid.is_none() && f.live().state == SourceState::Failed {
                // The supervisor gave up: start it again after a pause.
                if !pause(AFTER_FAILURE, &mut stop).await {
                    return;
                }
                break;
            }
            observe(&f).await;
            if next_refresh.is_some_and(|at| tokio::time::Instant::now() >= at) {
                // On a task of its own: the standby is still watched while
                // it runs (the refresh lock keeps refreshes one at a time).
                tracing::info!(source = %name, "scheduled refresh");
                tokio::spawn(refresher.refresh(name.clone()));
                next_refresh = next_after_now(&f);
            }
        }
    }
}

/// When the schedule next wants a refresh.
fn schedule_due(f: &Followed, refresher: &Refresher) -> Option<tokio::time::Instant> {
    let schedule = f.standby.config.refresh_schedule?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let wait = schedule.wait(now, refresher.last_refresh(&f.standby.name).or(Some(now)));
    Some(tokio::time::Instant::now() + wait)
}

/// The schedule's next time after one that just came.
fn next_after_now(f: &Followed) -> Option<tokio::time::Instant> {
    let schedule = f.standby.config.refresh_schedule?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Some(tokio::time::Instant::now() + schedule.wait(now, Some(now)))
}

/// Adopt the standby's postmaster if one runs, or start it; hand it to
/// the supervisor.
fn start(f: &Followed, supervisor: &Supervisor<SourceName>) -> Result<(), super::StandbyError> {
    let standby = &f.standby;
    let pm = match process::running_postmaster(&standby.datadir) {
        Some(pid) => {
            tracing::info!(source = %standby.name, pid, "adopted the running standby");
            Postmaster::Adopted(pid)
        }
        None => {
            standby.reconfigure()?;
            let spec = standby.spec()?;
            process::spawn(&spec).map_err(|e| super::StandbyError::Basebackup(e.to_string()))?
        }
    };
    let spec = standby.spec()?;
    f.set(|l| {
        l.pid = pm.pid();
        l.state = SourceState::Initialising;
        l.reason = Some("starting".into());
    });
    supervisor.watch(standby.name.clone(), spec, pm, None, Start::Unchecked);
    Ok(())
}

/// Read the standby's position and set the live state from it.
async fn observe(f: &Followed) {
    match f.position().await {
        Ok(pos) => {
            let lag = pos.lag_seconds();
            let (state, reason) = if pos.streaming() {
                if lag.is_some_and(|s| s > STREAMING_WITHIN_SECS) {
                    (SourceState::CatchingUp, None)
                } else {
                    (SourceState::Streaming, None)
                }
            } else {
                let why = last_fatal(&f.standby.log_file)
                    .unwrap_or_else(|| "no connection to the primary".into());
                (SourceState::Disconnected, Some(why))
            };
            if f.live().state != state {
                let name = &f.standby.name;
                let why = reason.as_deref().unwrap_or("");
                match state {
                    SourceState::Streaming => tracing::info!(source = %name, "source streaming"),
                    _ => {
                        tracing::warn!(source = %name, state = state.as_str(), reason = why, "source not streaming")
                    }
                }
            }
            f.set(|l| {
                l.state = state;
                l.reason = reason;
            });
        }
        Err(e) => {
            // Not answering yet: a start still replaying to a consistent
            // point.
            f.set(|l| {
                if l.state != SourceState::Failed {
                    l.state = SourceState::Initialising;
                    l.reason = Some(format!("starting: {e}"));
                }
            });
        }
    }
}

/// The last FATAL line of the standby's log (why the WAL receiver is not
/// connected), without its prefix.
fn last_fatal(log: &std::path::Path) -> Option<String> {
    let tail = process::log_tail(log, 40);
    tail.lines()
        .rev()
        .find_map(|l| l.split_once("FATAL:").map(|(_, r)| r.trim().to_owned()))
}
