//! Reloading the configuration while running (SIGHUP): what can change
//! live is swapped in at once; what needs a restart is named and left as
//! it was until then.

use std::sync::Arc;

use super::Service;
use crate::config::Config;

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Keys whose new values are in force now.
    pub applied: Vec<&'static str>,
    /// Keys that changed but only take effect after a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Compare two configs key by key.
fn diff(old: &Config, new: &Config) -> ReloadReport {
    let mut r = ReloadReport::default();
    let mut key = |name: &'static str, a: String, b: String, live: bool| {
        if a != b {
            if live {
                r.applied.push(name);
            } else {
                r.needs_restart.push(name);
            }
        }
    };
    macro_rules! k {
        ($name:literal, $($f:ident).+, $live:expr) => {
            key($name, format!("{:?}", old.$($f).+), format!("{:?}", new.$($f).+), $live)
        };
    }
    // Read afresh by the core at each use: live.
    k!("public_hostname", public_hostname, true);
    k!("trusted_user_email_domain", trusted_user_email_domain, true);
    k!("min_instance_port", min_instance_port, true);
    k!("max_instance_port", max_instance_port, true);
    k!("max_image_bytes", max_image_bytes, true);
    k!("max_image_entries", max_image_entries, true);
    k!("clean_interval", clean_interval, true);
    k!("default_instance_ttl", default_instance_ttl, true);
    k!("max_instance_ttl", max_instance_ttl, true);
    k!("instance_idle_limit", instance_idle_limit, true);
    k!("image_retention", image_retention, true);
    k!("expected_image_interval", expected_image_interval, true);
    k!("max_instances_per_user", max_instances_per_user, true);
    k!("max_instances_total", max_instances_total, true);
    k!("max_instance_disk", max_instance_disk, true);
    k!("warm_instances_per_image", warm_instances_per_image, true);
    k!("min_free_space", min_free_space, true);
    k!("enable_ip_whitelisting", enable_ip_whitelisting, true);
    k!(
        "whitelist_reconcile_interval",
        whitelist_reconcile_interval,
        true
    );
    k!("use_x_forwarded_for", use_x_forwarded_for, true);
    k!("trusted_proxy_cidrs", trusted_proxy_cidrs, true);
    k!("shutdown_grace", shutdown_grace, true);
    k!("ssh.admin_keys", ssh.admin_keys, true);
    k!("ssh.authorized_keys_file", ssh.authorized_keys_file, true);
    k!("postgres.database", postgres.database, true);
    k!("postgres.superuser", postgres.superuser, true);
    k!("postgres.listen_addresses", postgres.listen_addresses, true);
    k!("postgres.settings", postgres.settings, true);
    k!("postgres.start_timeout", postgres.start_timeout, true);
    k!(
        "postgres.certificate_validity",
        postgres.certificate_validity,
        true
    );
    k!("postgres.bin_root", postgres.bin_root, true);
    k!("postgres.confinement", postgres.confinement, true);
    k!("http.tls_certificate", http.tls_certificate, true);
    k!("http.tls_private_key", http.tls_private_key, true);
    // Fixed when the daemon started.
    k!("data_path", data_path, false);
    k!("state_path", state_path, false);
    k!("loopback_size", loopback_size, false);
    k!("environment", environment, false);
    k!("shared_secret", shared_secret, false);
    k!("postgres.instance_user", postgres.instance_user, false);
    k!("state", state.database_file, false);
    k!("ssh.listen_address", ssh.listen_address, false);
    k!("ssh.host_key_path", ssh.host_key_path, false);
    k!("ssh.max_auth_attempts", ssh.max_auth_attempts, false);
    k!("ssh.auth_timeout", ssh.auth_timeout, false);
    k!("ssh.idle_timeout", ssh.idle_timeout, false);
    k!(
        "ssh.max_sessions_per_user",
        ssh.max_sessions_per_user,
        false
    );
    k!("ssh.max_unauthenticated", ssh.max_unauthenticated, false);
    k!(
        "ssh.max_unauthenticated_per_address",
        ssh.max_unauthenticated_per_address,
        false
    );
    k!("ssh.max_command_bytes", ssh.max_command_bytes, false);
    k!("http.listen_address", http.listen_address, false);
    k!(
        "http.insecure_listen_address",
        http.insecure_listen_address,
        false
    );
    k!("http.api_version", http.api_version, false);
    k!("http.metrics", http.metrics, false);
    k!("http.max_body_size", http.max_body_size, false);
    k!("http.body_timeout", http.body_timeout, false);
    k!("http.header_timeout", http.header_timeout, false);
    k!("http.max_connections", http.max_connections, false);
    k!(
        "http.max_connections_per_address",
        http.max_connections_per_address,
        false
    );
    k!("oauth", oauth, false);
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
        merged.data_path = old.data_path.clone();
        merged.state_path = old.state_path.clone();
        merged.loopback_size = old.loopback_size;
        merged.environment = old.environment;
        merged.shared_secret = old.shared_secret.clone();
        merged.postgres.instance_user = old.postgres.instance_user.clone();
        merged.state = old.state.clone();
        let ssh_live = (
            merged.ssh.admin_keys.clone(),
            merged.ssh.authorized_keys_file.clone(),
        );
        merged.ssh = old.ssh.clone();
        (merged.ssh.admin_keys, merged.ssh.authorized_keys_file) = ssh_live;
        let tls = (
            merged.http.tls_certificate.clone(),
            merged.http.tls_private_key.clone(),
        );
        merged.http = old.http.clone();
        (merged.http.tls_certificate, merged.http.tls_private_key) = tls;
        merged.oauth = old.oauth.clone();
        *self.inner.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(merged);
        if let Err(e) = self.bootstrap_admins() {
            tracing::warn!(error = %e, "admin keys not reloaded");
        }
        self.poke_guard();
        // A new warm_instances_per_image, quota or free-space floor: the
        // pool grows or shrinks to match.
        self.poke_pool();
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
}
