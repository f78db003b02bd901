//! Reloading the configuration while running (SIGHUP): what can change
//! live is swapped in at once; what needs a restart is named and left as
//! it was until then. Which is which is declared with each config field
//! (`crate::config::reload_class`), not listed here.

use std::sync::Arc;

use super::Service;
pub use crate::config::ReloadReport;
use crate::config::{Config, Reloadable};

/// Compare two configs key by key: each field's reload class is declared
/// with the field (`crate::config::reload_class`).
fn diff(old: &Config, new: &Config) -> ReloadReport {
    let mut r = ReloadReport::default();
    old.diff_into(new, &mut r);
    r
}

impl Service {
    /// Put a new configuration in force. Keys that need a restart keep
    /// their old values (they are reported); everything else applies now,
    /// and new admin keys are added.
    pub fn reload(&self, new: Config) -> ReloadReport {
        let old = self.config();
        let report = diff(&old, &new);
        let mut merged = new;
        // Restart-only settings stay as the running daemon has them.
        merged.keep_fixed(&old);
        *self.inner.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(merged);
        if let Err(e) = self.bootstrap_admins() {
            tracing::warn!(error = %e, "admin keys not reloaded");
        }
        self.poke_guard();
        // A new warm_instances_per_image, quota or free-space floor: the
        // pool grows or shrinks to match.
        self.poke_pool();
        // Sources added, changed or removed: followed, restarted, removed.
        let svc = self.clone();
        tokio::spawn(async move { svc.follow_sources().await });
        tracing::info!(applied = ?report.applied, needs_restart = ?report.needs_restart, "configuration reloaded");
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_and_restart_keys_are_told_apart() {
        let old = Config::parse("").unwrap();
        let new = Config::parse(
            "max_instances_per_user = 3\ndata_path = \"/elsewhere\"\n[ssh]\nadmin_keys = [\"ssh-ed25519 AAAA x\"]\nmax_auth_attempts = 2",
        )
        .unwrap();
        let r = diff(&old, &new);
        assert_eq!(r.applied, vec!["max_instances_per_user", "ssh.admin_keys"]);
        assert_eq!(r.needs_restart, vec!["data_path", "ssh.max_auth_attempts"]);
        assert_eq!(diff(&old, &old), ReloadReport::default());
    }

    #[test]
    fn changed_secrets_are_seen_though_redacted() {
        let old = Config::parse("shared_secret = \"one-secret\"").unwrap();
        let new = Config::parse(
            "shared_secret = \"two-secret\"\n[oauth]\nclient_secret = \"x\"\n[http]\ntls_certificate = \"/c\"\ntls_private_key = \"/k\"",
        )
        .unwrap();
        let r = diff(&old, &new);
        assert_eq!(
            r.applied,
            vec!["http.tls_certificate", "http.tls_private_key"]
        );
        assert_eq!(r.needs_restart, vec!["shared_secret", "oauth"]);
        let mut merged = new.clone();
        merged.keep_fixed(&old);
        assert_eq!(merged.shared_secret, old.shared_secret);
        assert_eq!(merged.oauth, old.oauth);
        assert_eq!(merged.http.tls_certificate, new.http.tls_certificate);
    }
}
