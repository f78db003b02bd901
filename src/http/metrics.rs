//! Prometheus metrics of the daemon, in the text exposition format.
//!
//! Owns the one counter that is the HTTP front door's own (requests by
//! route, method and status) and the rendering. Everything else is the
//! core's [`Census`], read at scrape time: images and instances by state,
//! image bytes, instances created and destroyed and finalise durations
//! (whichever front door asked), and open SSH sessions.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::core::{Census, FINALISE_BUCKETS};

/// Counters kept by the HTTP front door.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
}

impl Metrics {
    pub fn request(&self, route: &str, method: &str, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((route.to_string(), method.to_string(), status))
            .or_default() += 1;
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
        if !census.sources.is_empty() {
            type Value = fn(&crate::core::SourceSummary) -> Option<String>;
            let per_source: [(&str, &str, Value); 3] = [
                (
                    "draupnir_source_lag_seconds",
                    "How far each source's standby replays behind its primary (absent: unknown).",
                    |s| s.lag_seconds.map(|v| v.to_string()),
                ),
                (
                    "draupnir_source_lag_bytes",
                    "WAL bytes each source's standby has not replayed yet.",
                    |s| s.lag_bytes.map(|v| v.to_string()),
                ),
                (
                    "draupnir_source_streaming",
                    "1 when the source's standby is connected to its primary and within 10s of it.",
                    |s| Some(u8::from(s.state == "streaming").to_string()),
                ),
            ];
            for (metric, help, value) in per_source {
                let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} gauge");
                for s in &census.sources {
                    if let Some(v) = value(s) {
                        let _ = writeln!(out, "{metric}{{source=\"{}\"}} {v}", s.name);
                    }
                }
            }
        }
        if let Some(age) = census.newest_ready_image_age_seconds {
            let _ = writeln!(
                out,
                "# HELP draupnir_newest_ready_image_age_seconds Seconds since the newest ready image became ready.\n# TYPE draupnir_newest_ready_image_age_seconds gauge\ndraupnir_newest_ready_image_age_seconds {age}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP draupnir_ssh_sessions Open SSH sessions.\n# TYPE draupnir_ssh_sessions gauge\ndraupnir_ssh_sessions {}",
            census.counted.ssh_sessions
        );
        let _ = writeln!(
            out,
            "# HELP draupnir_instance_creates_total Instances created (over SSH or HTTP).\n# TYPE draupnir_instance_creates_total counter\ndraupnir_instance_creates_total {}",
            census.counted.instance_creates
        );
        let _ = writeln!(
            out,
            "# HELP draupnir_instance_destroys_total Instances destroyed (over SSH or HTTP).\n# TYPE draupnir_instance_destroys_total counter\ndraupnir_instance_destroys_total {}",
            census.counted.instance_destroys
        );
        {
            let h = &census.counted.finalise;
            let _ = writeln!(
                out,
                "# HELP draupnir_finalise_seconds Finalise durations (from start to a ready image).\n# TYPE draupnir_finalise_seconds histogram"
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::SourceSummary;

    #[test]
    fn sources_have_their_lag_and_state() {
        let source = |name: &str, state: &'static str, lag: Option<f64>| SourceSummary {
            name: name.into(),
            state,
            reason: None,
            primary: "db1:5432".into(),
            slot: None,
            refresh_schedule: None,
            lag_bytes: lag.map(|_| 4096),
            lag_seconds: lag,
            replay_lsn: None,
            last_refresh_image: None,
            last_refresh_at: None,
            last_refresh_failure: None,
        };
        let census = Census {
            sources: vec![
                source("prod", "streaming", Some(0.0)),
                source("eu", "disconnected", None),
            ],
            ..Census::default()
        };
        let text = Metrics::default().render(&census);
        assert!(
            text.contains("# TYPE draupnir_source_lag_seconds gauge"),
            "{text}"
        );
        assert!(
            text.contains("draupnir_source_lag_seconds{source=\"prod\"} 0\n"),
            "{text}"
        );
        assert!(
            !text.contains("draupnir_source_lag_seconds{source=\"eu\"}"),
            "{text}"
        );
        assert!(
            text.contains("draupnir_source_lag_bytes{source=\"prod\"} 4096\n"),
            "{text}"
        );
        assert!(
            text.contains("draupnir_source_streaming{source=\"prod\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("draupnir_source_streaming{source=\"eu\"} 0\n"),
            "{text}"
        );
        let none = Metrics::default().render(&Census::default());
        assert!(!none.contains("draupnir_source"), "{none}");
    }
}
