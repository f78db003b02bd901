//! Prometheus metrics of the daemon, in the text exposition format.
//!
//! Owns the counters the HTTP front door keeps (requests by route, method
//! and status; instance creates and destroys; finalise durations) and the
//! process-wide SSH session gauge ([`SSH_SESSIONS`], for the SSH server to
//! bump). Images and instances by state and image bytes are read from the
//! core at scrape time, so they count work done through any front door.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::core::Census;

/// Open SSH sessions. The SSH front door increments and decrements it.
pub static SSH_SESSIONS: AtomicI64 = AtomicI64::new(0);

const FINALISE_BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

#[derive(Default)]
struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

/// Counters kept by the HTTP front door.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    instance_creates: AtomicU64,
    instance_destroys: AtomicU64,
    finalise: Mutex<Histogram>,
}

impl Metrics {
    pub fn request(&self, route: &str, method: &str, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((route.to_string(), method.to_string(), status))
            .or_default() += 1;
    }

    pub fn instance_created(&self) {
        self.instance_creates.fetch_add(1, Ordering::Relaxed);
    }

    pub fn instance_destroyed(&self) {
        self.instance_destroys.fetch_add(1, Ordering::Relaxed);
    }

    pub fn finalised(&self, took: Duration) {
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

    /// The exposition text.
    pub fn render(&self, census: &Census) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP draupnir_images Images by state.\n# TYPE draupnir_images gauge"
        );
        for state in ["uploading", "finalising", "ready", "failed"] {
            let n = census.images.get(state).copied().unwrap_or(0);
            let _ = writeln!(out, "draupnir_images{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP draupnir_instances Instances by state.\n# TYPE draupnir_instances gauge"
        );
        for state in ["creating", "running", "failed", "destroying"] {
            let n = census.instances.get(state).copied().unwrap_or(0);
            let _ = writeln!(out, "draupnir_instances{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP draupnir_warm_instances Started instances waiting in the warm pool (also counted in draupnir_instances).\n# TYPE draupnir_warm_instances gauge\ndraupnir_warm_instances {}",
            census.warm_instances
        );
        let _ = writeln!(
            out,
            "# HELP draupnir_image_bytes Bytes uploaded into all images.\n# TYPE draupnir_image_bytes gauge\ndraupnir_image_bytes {}",
            census.image_bytes
        );
        if let Some(age) = census.newest_ready_image_age_seconds {
            let _ = writeln!(
                out,
                "# HELP draupnir_newest_ready_image_age_seconds Seconds since the newest ready image became ready.\n# TYPE draupnir_newest_ready_image_age_seconds gauge\ndraupnir_newest_ready_image_age_seconds {age}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP draupnir_ssh_sessions Open SSH sessions.\n# TYPE draupnir_ssh_sessions gauge\ndraupnir_ssh_sessions {}",
            SSH_SESSIONS.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP draupnir_instance_creates_total Instances created over HTTP.\n# TYPE draupnir_instance_creates_total counter\ndraupnir_instance_creates_total {}",
            self.instance_creates.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP draupnir_instance_destroys_total Instances destroyed over HTTP.\n# TYPE draupnir_instance_destroys_total counter\ndraupnir_instance_destroys_total {}",
            self.instance_destroys.load(Ordering::Relaxed)
        );
        {
            let h = self.finalise.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(
                out,
                "# HELP draupnir_finalise_seconds Finalise durations (HTTP requests).\n# TYPE draupnir_finalise_seconds histogram"
            );
            for (i, le) in FINALISE_BUCKETS.iter().enumerate() {
                let n = h.buckets.get(i).copied().unwrap_or(0);
                let _ = writeln!(out, "draupnir_finalise_seconds_bucket{{le=\"{le}\"}} {n}");
            }
            let _ = writeln!(
                out,
                "draupnir_finalise_seconds_bucket{{le=\"+Inf\"}} {}\ndraupnir_finalise_seconds_sum {}\ndraupnir_finalise_seconds_count {}",
                h.count, h.sum, h.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP draupnir_http_requests_total HTTP requests by route, method and status.\n# TYPE draupnir_http_requests_total counter"
        );
        let map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        for ((route, method, status), n) in map.iter() {
            let _ = writeln!(
                out,
                "draupnir_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        out
    }
}
