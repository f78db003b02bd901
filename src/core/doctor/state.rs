//! Doctor's state checks: the SQLite metadata file (opened read-only)
//! and the allow-list compared with a dry-run reconcile.

use super::{fail, pass, Check};
use crate::config::Config;
use crate::core::store::Store;

/// The SQLite check; returns the read-only store when it is usable.
pub(super) fn sqlite(config: &Config, checks: &mut Vec<Check>) -> Option<Store> {
    const NAME: &str = "sqlite";
    let path = config.database_path();
    let restore = format!(
        "stop the daemon and copy the last `draupnir backup-state` copy to {}",
        path.display()
    );
    if !path.exists() {
        let layout = crate::core::storage::layout::Layout::new(&config.data_path);
        let volumes: usize = [layout.snapshots(), layout.instances(), layout.uploads()]
            .iter()
            .map(|d| std::fs::read_dir(d).map(|rd| rd.count()).unwrap_or(0))
            .sum();
        checks.push(if volumes == 0 {
            pass(
                NAME,
                format!("{} absent: created on first start", path.display()),
            )
        } else {
            fail(
                NAME,
                format!(
                    "{} is missing but data_path holds {volumes} image/instance volumes",
                    path.display()
                ),
                restore,
            )
        });
        return None;
    }
    let store = match Store::open_read_only(&path) {
        Ok(s) => s,
        Err(e) => {
            checks.push(fail(NAME, e.to_string(), restore));
            return None;
        }
    };
    let verdict = store.integrity_check().and_then(|r| {
        let version = store.schema_version()?;
        Ok((r, version))
    });
    match verdict {
        Ok((r, version)) if r == "ok" => {
            let known = crate::core::store::MIGRATIONS.len() as i64;
            if version > known {
                checks.push(fail(
                    NAME,
                    format!("schema version {version} is newer than this draupnir ({known})"),
                    "install the draupnir version that wrote it (or newer)",
                ));
                return None;
            }
            checks.push(pass(
                NAME,
                format!("{}: integrity ok, schema {version}", path.display()),
            ));
            Some(store)
        }
        Ok((r, _)) => {
            checks.push(fail(
                NAME,
                format!(
                    "{}: integrity_check: {}",
                    path.display(),
                    r.replace('\n', "; ")
                ),
                restore,
            ));
            None
        }
        Err(e) => {
            checks.push(fail(NAME, format!("{}: {e}", path.display()), restore));
            None
        }
    }
}

pub(super) fn allow_list(config: &Config, store: Option<&Store>, checks: &mut Vec<Check>) {
    if !config.enable_ip_whitelisting {
        checks.push(pass(
            "iptables",
            "not needed (enable_ip_whitelisting = false)",
        ));
        return;
    }
    let desired = match store.map(crate::core::rules_from_store) {
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            checks.push(fail("allow-list", e.to_string(), "see the sqlite check"));
            return;
        }
        None => Default::default(),
    };
    match crate::guard::iptables::reconcile(&desired, true) {
        Err(e) => checks.push(fail(
            "iptables",
            format!("not usable: {e}"),
            "apt-get install iptables; the daemon needs root (CAP_NET_ADMIN) and the xt_tcp module",
        )),
        Ok(changes) => {
            checks.push(pass("iptables", "usable"));
            if changes.is_empty() {
                checks.push(pass(
                    "allow-list",
                    format!(
                        "chain {} matches the database ({} rules)",
                        crate::guard::iptables::CHAIN,
                        desired.len()
                    ),
                ));
            } else {
                let mut what: Vec<String> = changes.added.iter().map(|a| format!("+{a}")).collect();
                what.extend(changes.removed.iter().map(|r| format!("-{r}")));
                checks.push(fail(
                    "allow-list",
                    format!("reconcile would change: {}", what.join(", ")),
                    "start the daemon: it reconciles at start and every whitelist_reconcile_interval",
                ));
            }
        }
    }
}
