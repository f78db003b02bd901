//! `draupnir doctor`: read-only health checks of a host and its config.
//!
//! Owns the list of checks, each one's verdict, and the fix printed for a
//! failure. It never mounts, creates users, writes the metadata database or
//! changes the firewall: the SQLite file is opened read-only and the
//! allow-list is compared with a dry-run reconcile. The CLI only formats
//! the [`Report`]. The checks themselves are grouped by what they look at:
//! `storage`, `pg`, `state`, `ports`, `sources` and `host`.

use std::path::Path;

use serde::Serialize;

use crate::config::Config;

mod host;
mod pg;
mod ports;
mod sources;
mod state;
mod storage;

use host::{clock, host_key};
use pg::{confinement, image_majors, instance_access, instance_user, postgres};
use ports::port;
use state::{allow_list, sqlite};
use storage::{data_path, disk_limits, free_space};

/// One check's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// What to do about a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Every check, in the order they ran.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    /// One line per check: `ok   name  detail` or
    /// `FAIL name  detail — fix: …`.
    pub fn human(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            let tag = if c.ok { "ok  " } else { "FAIL" };
            out.push_str(&format!("{tag} {:width$}  {}", c.name, c.detail));
            if let Some(fix) = &c.fix {
                out.push_str(&format!(" — fix: {fix}"));
            }
            out.push('\n');
        }
        out
    }
}

fn pass(name: &str, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok: true,
        detail: detail.into(),
        fix: None,
    }
}

fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok: false,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// Run every check against the config file at `config_path`.
pub fn run(config_path: &Path) -> Report {
    let mut checks = Vec::new();
    match Config::load(config_path) {
        Ok(config) => {
            checks.push(pass("config", format!("{} is valid", config_path.display())));
            checks.extend(run_with(&config, config_path));
        }
        Err(e) => checks.push(fail(
            "config",
            e.to_string(),
            format!(
                "edit {} (every key is documented in config.toml.example); the other checks need a valid config",
                config_path.display()
            ),
        )),
    }
    Report {
        ok: checks.iter().all(|c| c.ok),
        checks,
    }
}

/// The checks that need a valid config (read from `config_path`).
pub fn run_with(config: &Config, config_path: &Path) -> Vec<Check> {
    let mut checks = vec![
        data_path(config),
        free_space(config),
        postgres(config),
        instance_user(config),
        confinement(config),
        instance_access(config),
    ];
    if let Some(check) = disk_limits(config) {
        checks.push(check);
    }
    let store = sqlite(config, &mut checks);
    if let Some(store) = &store {
        checks.push(image_majors(config, store));
    }
    allow_list(config, store.as_ref(), &mut checks);
    checks.push(port(
        "ssh port",
        Some(config.ssh.listen_address),
        "[ssh] listen_address",
        config_path,
    ));
    checks.push(port(
        "http port",
        config.http.listen_address,
        "[http] listen_address",
        config_path,
    ));
    if config.http.insecure_listen_address.is_some() {
        checks.push(port(
            "http insecure port",
            config.http.insecure_listen_address,
            "[http] insecure_listen_address",
            config_path,
        ));
    }
    checks.extend(sources::sources(config));
    checks.push(host_key(config));
    checks.push(clock());
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::store::Store;

    #[test]
    fn a_ready_image_of_a_missing_major_fails() {
        let store = Store::open_in_memory().expect("store");
        let config = Config::default();
        let ok = image_majors(&config, &store);
        assert!(ok.ok, "{ok:?}");
        let image = store
            .insert_image(&crate::core::NewImage::default(), None)
            .expect("image");
        store
            .set_image_ready(
                image.id,
                999,
                0,
                "postgres",
                &crate::core::Manifest::legacy(),
            )
            .expect("ready");
        let bad = image_majors(&config, &store);
        assert!(!bad.ok);
        assert!(bad.detail.contains("PostgreSQL 999"), "{bad:?}");
        assert!(bad.fix.is_some());
    }

    #[test]
    fn human_lines() {
        let report = Report {
            ok: false,
            checks: vec![pass("a", "fine"), fail("bbb", "broken", "mend it")],
        };
        assert_eq!(
            report.human(),
            "ok   a    fine\nFAIL bbb  broken — fix: mend it\n"
        );
    }
}
