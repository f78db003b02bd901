//! Validation of a parsed configuration: every check, by section, in the
//! order they run (the first failure is the one reported, with its key).

use std::time::Duration;

use super::FORBIDDEN_SETTINGS;
use super::{invalid, parse_api_version, Config, ConfigError, FreeSpace, PostgresConfig};

impl Config {
    /// Every check, in order; the first failure is returned.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.check_paths()?;
        self.check_ports_and_sizes()?;
        self.check_intervals()?;
        self.postgres.validate()?;
        self.check_ssh_and_http()?;
        self.check_oauth_and_admin_keys()
    }

    /// `data_path` and `state_path`.
    fn check_paths(&self) -> Result<(), ConfigError> {
        if !self.data_path.is_absolute() {
            return Err(invalid("data_path", "must be an absolute path"));
        }
        if !self.state_path.is_absolute() {
            return Err(invalid("state_path", "must be an absolute path"));
        }
        if self
            .state_path
            .starts_with(self.data_path.join("instances"))
            || self
                .state_path
                .starts_with(self.data_path.join("image_uploads"))
            || self
                .state_path
                .starts_with(self.data_path.join("image_snapshots"))
        {
            return Err(invalid(
                "state_path",
                "must not be inside the image or instance directories",
            ));
        }
        Ok(())
    }

    /// The instance port range, sizes and the shared secret.
    fn check_ports_and_sizes(&self) -> Result<(), ConfigError> {
        if self.min_instance_port == 0 || self.min_instance_port >= self.max_instance_port {
            return Err(invalid(
                "max_instance_port",
                format!(
                    "must be greater than min_instance_port ({}), and min_instance_port above 0",
                    self.min_instance_port
                ),
            ));
        }
        let ports = u32::from(self.max_instance_port - self.min_instance_port);
        if self.warm_instances_per_image > ports {
            return Err(invalid(
                "warm_instances_per_image",
                format!("must not be more than the instance port range holds ({ports})"),
            ));
        }
        if self.public_hostname.trim().is_empty() {
            return Err(invalid("public_hostname", "must not be empty"));
        }
        if self.max_image_bytes.0 == 0 {
            return Err(invalid("max_image_bytes", "must be above 0"));
        }
        if let Some(size) = self.max_instance_disk {
            if size.0 != 0 && size.0 < 64 << 20 {
                return Err(invalid(
                    "max_instance_disk",
                    "must be 0 (no limit) or at least 64M",
                ));
            }
        }
        if let Some(size) = self.loopback_size {
            if size.0 < 256 << 20 {
                return Err(invalid(
                    "loopback_size",
                    "must be at least 256M (btrfs needs room)",
                ));
            }
        }
        if let Some(secret) = &self.shared_secret {
            if secret.expose().len() < 8 {
                return Err(invalid(
                    "shared_secret",
                    "must be at least 8 characters long",
                ));
            }
        }
        Ok(())
    }

    /// Lifetimes, intervals, retention and the free-space floor.
    fn check_intervals(&self) -> Result<(), ConfigError> {
        if self.clean_interval.is_zero() {
            return Err(invalid("clean_interval", "must be above 0"));
        }
        if let (Some(d), Some(m)) = (self.default_instance_ttl, self.max_instance_ttl) {
            if d > m {
                return Err(invalid(
                    "default_instance_ttl",
                    "must not be longer than max_instance_ttl",
                ));
            }
        }
        for (key, v) in [
            ("default_instance_ttl", self.default_instance_ttl),
            ("max_instance_ttl", self.max_instance_ttl),
            ("instance_idle_limit", self.instance_idle_limit),
            ("expected_image_interval", self.expected_image_interval),
        ] {
            if v.is_some_and(|d| d.is_zero()) {
                return Err(invalid(key, "must be above 0 (leave it unset to disable)"));
            }
        }
        if self.image_retention == Some(0) {
            return Err(invalid(
                "image_retention",
                "must be at least 1 (leave it unset to keep every image)",
            ));
        }
        if let FreeSpace::Percent(p) = self.min_free_space {
            if !(0.0..100.0).contains(&p) {
                return Err(invalid(
                    "min_free_space",
                    "a percentage must be between 0% and 100%",
                ));
            }
        }
        if self.whitelist_reconcile_interval.is_zero() {
            return Err(invalid("whitelist_reconcile_interval", "must be above 0"));
        }
        Ok(())
    }

    /// `[ssh]` and `[http]`.
    fn check_ssh_and_http(&self) -> Result<(), ConfigError> {
        if self.http.tls_certificate.is_some() != self.http.tls_private_key.is_some() {
            return Err(invalid(
                "http.tls_private_key",
                "tls_certificate and tls_private_key must be set together",
            ));
        }
        let ssh = &self.ssh;
        for (key, value, min) in [
            ("ssh.max_auth_attempts", ssh.max_auth_attempts, 1),
            ("ssh.max_sessions_per_user", ssh.max_sessions_per_user, 1),
            ("ssh.max_unauthenticated", ssh.max_unauthenticated, 1),
            ("ssh.max_command_bytes", ssh.max_command_bytes, 256),
            (
                "ssh.max_unauthenticated_per_address",
                ssh.max_unauthenticated_per_address.unwrap_or(1),
                1,
            ),
            (
                "http.max_connections",
                self.http.max_connections.unwrap_or(1),
                1,
            ),
            (
                "http.max_connections_per_address",
                self.http.max_connections_per_address.unwrap_or(1),
                1,
            ),
        ] {
            if value < min {
                return Err(invalid(key, format!("must be at least {min}")));
            }
        }
        if ssh.auth_timeout.is_zero() {
            return Err(invalid("ssh.auth_timeout", "must be above 0"));
        }
        if ssh.host_key_path.as_os_str().is_empty() {
            return Err(invalid("ssh.host_key_path", "must not be empty"));
        }
        if parse_api_version(&self.http.api_version).is_none() {
            return Err(invalid("http.api_version", "must be a version like 5.3.6"));
        }
        if self.http.max_body_size.0 == 0 {
            return Err(invalid("http.max_body_size", "must be above 0"));
        }
        if self.http.body_timeout.is_zero() {
            return Err(invalid("http.body_timeout", "must be above 0"));
        }
        if self.http.header_timeout.is_zero() {
            return Err(invalid("http.header_timeout", "must be above 0"));
        }
        Ok(())
    }

    /// `[oauth]` and `ssh.admin_keys`.
    fn check_oauth_and_admin_keys(&self) -> Result<(), ConfigError> {
        if self.oauth.cache_ttl.is_zero() {
            return Err(invalid("oauth.cache_ttl", "must be above 0"));
        }
        if self.oauth.callback_timeout.is_zero() {
            return Err(invalid("oauth.callback_timeout", "must be above 0"));
        }
        for (key, url) in [
            ("oauth.redirect_url", &self.oauth.redirect_url),
            ("oauth.auth_url", &self.oauth.auth_url),
            ("oauth.token_url", &self.oauth.token_url),
            ("oauth.userinfo_url", &self.oauth.userinfo_url),
        ] {
            if let Some(u) = url {
                if !(u.starts_with("https://") || u.starts_with("http://")) {
                    return Err(invalid(key, "must be an http:// or https:// URL"));
                }
            }
        }
        for key in &self.ssh.admin_keys {
            if key.split_whitespace().count() < 2 {
                return Err(invalid(
                    "ssh.admin_keys",
                    "each entry must be an OpenSSH public key line (`ssh-ed25519 AAAA… comment`)",
                ));
            }
        }
        Ok(())
    }
}

impl PostgresConfig {
    /// `[postgres]`.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let user = &self.instance_user;
        if user.is_empty()
            || user == "root"
            || !user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                "postgres.instance_user",
                "must be a plain system user name other than root",
            ));
        }
        if !self.bin_root.is_absolute() {
            return Err(invalid("postgres.bin_root", "must be an absolute path"));
        }
        for (key, value) in [
            ("postgres.database", &self.database),
            ("postgres.superuser", &self.superuser),
        ] {
            if value.is_empty() || value.contains(['\0', '\n', '"']) {
                let key: &'static str = if key == "postgres.database" {
                    "postgres.database"
                } else {
                    "postgres.superuser"
                };
                return Err(invalid(key, "must be a plain identifier"));
            }
        }
        for (name, value) in &self.settings {
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                || value.contains(['\n', '\''])
            {
                return Err(invalid(
                    "postgres.settings",
                    format!("setting `{name}` has an invalid name or value"),
                ));
            }
            if FORBIDDEN_SETTINGS.contains(&name.as_str()) {
                return Err(invalid(
                    "postgres.settings",
                    format!("setting `{name}` is managed by Draupnir and cannot be set"),
                ));
            }
        }
        if self.start_timeout.is_zero() {
            return Err(invalid("postgres.start_timeout", "must be above 0"));
        }
        if self.certificate_validity < Duration::from_secs(3600) {
            return Err(invalid(
                "postgres.certificate_validity",
                "must be at least 1h",
            ));
        }
        Ok(())
    }
}
