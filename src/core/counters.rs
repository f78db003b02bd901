//! What the core counts as it works, whichever front door asked: instances
//! created and destroyed, how long finalises took, and open SSH sessions.
//!
//! `/metrics` reads them through [`Service::census`](super::Service::census);
//! the SSH front door holds an [`SshSessionGauge`] for as long as a session
//! channel runs. Only the core bumps the domain counters.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds (seconds) of the finalise-duration histogram's buckets.
pub const FINALISE_BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// A histogram of finalise durations: cumulative counts per bucket of
/// [`FINALISE_BUCKETS`], the count and the sum.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

#[derive(Default)]
pub(crate) struct Counters {
    ssh_sessions: Arc<AtomicI64>,
    instance_creates: AtomicU64,
    instance_destroys: AtomicU64,
    finalise: Mutex<Histogram>,
}

/// The counters' values at one moment.
#[derive(Debug, Default, Clone)]
pub struct Counted {
    /// Open SSH session channels.
    pub ssh_sessions: i64,
    /// Instances created (for a user; warm-pool starts are not counted).
    pub instance_creates: u64,
    /// Instances destroyed at a user's or admin's request.
    pub instance_destroys: u64,
    /// Finalises that ended with a ready image.
    pub finalise: Histogram,
}

impl Counters {
    pub(crate) fn instance_created(&self) {
        self.instance_creates.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn instance_destroyed(&self) {
        self.instance_destroys.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn finalised(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let mut h = self.finalise.lock().unwrap_or_else(|p| p.into_inner());
        if h.buckets.is_empty() {
            h.buckets = vec![0; FINALISE_BUCKETS.len()];
        }
        for (i, le) in FINALISE_BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    pub(crate) fn ssh_session(&self) -> SshSessionGauge {
        self.ssh_sessions.fetch_add(1, Ordering::Relaxed);
        SshSessionGauge(self.ssh_sessions.clone())
    }

    pub(crate) fn snapshot(&self) -> Counted {
        let mut finalise = self
            .finalise
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if finalise.buckets.is_empty() {
            finalise.buckets = vec![0; FINALISE_BUCKETS.len()];
        }
        Counted {
            ssh_sessions: self.ssh_sessions.load(Ordering::Relaxed),
            instance_creates: self.instance_creates.load(Ordering::Relaxed),
            instance_destroys: self.instance_destroys.load(Ordering::Relaxed),
            finalise,
        }
    }
}

/// One open SSH session channel, counted until dropped.
pub struct SshSessionGauge(Arc<AtomicI64>);

impl Drop for SshSessionGauge {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
