//! Configuration: the TOML file's types, defaults and validation.
//!
//! Every key is documented in `config.toml.example`. Unknown keys and bad
//! values are refused at start with the key's name and the reason, so a typo
//! never silently falls back to a default. Each field declares whether a
//! reload may change it (`reload_class`); the sections live in `doors`
//! (ssh, http, oauth) and `postgres` (postgres, state), the value types in
//! `units`, the checks in `validate`.

mod doors;
mod masking;
mod postgres;
pub(crate) mod reload_class;
mod sources;
mod units;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use doors::{parse_api_version, HttpConfig, OauthConfig, SshConfig};
pub use masking::{MaskingConfig, MAX_RULES_BYTES};
pub use postgres::{Confinement, PostgresConfig, StateConfig, FORBIDDEN_SETTINGS};
pub use reload_class::{ReloadReport, Reloadable};
pub use sources::{Conninfo, Schedule, SlotName, SourceConfig, SourceName, Sources};
pub use units::{parse_duration, ByteSize, Cidr, FreeSpace, MAX_DURATION, MAX_SIZE};

use crate::secret::Secret;
use reload_class::config_section;
use units::{de_cidrs, de_duration, de_opt_duration};

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
    /// `[masking] rules_file` does not parse (the error has the line).
    #[error("masking rules file {path}: {error}")]
    Rules {
        path: PathBuf,
        #[source]
        error: Box<crate::core::MaskingRulesError>,
    },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

config_section! {
    /// The whole configuration file. Each field's reload class (`live`,
    /// `fixed`, or a `section` with classes of its own) is declared here.
    #[derive(Debug, Clone, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Config (prefix "") {
        /// Where images and instances live; must be btrfs (or `loopback_size` set).
        fixed data_path: PathBuf,
        /// SQLite, credentials and logs. Readable by root only.
        fixed state_path: PathBuf,
        /// When `data_path` is not on btrfs: size of a sparse file formatted as
        /// btrfs and mounted there. `None` refuses to start instead.
        fixed loopback_size: Option<ByteSize>,
        live public_hostname: String,
        fixed environment: Environment,
        fixed shared_secret: Option<Secret<String>>,
        live trusted_user_email_domain: Option<String>,
        live min_instance_port: u16,
        live max_instance_port: u16,
        /// Most decompressed bytes one image may hold.
        live max_image_bytes: ByteSize,
        /// Most archive entries one image may hold.
        live max_image_entries: u64,
        #[serde(deserialize_with = "de_duration")]
        live clean_interval: Duration,
        /// On SIGTERM: how long running uploads and finalises may take to end
        /// before the daemon exits anyway (start-up reconcile then marks them
        /// failed).
        #[serde(deserialize_with = "de_duration")]
        live shutdown_grace: Duration,
        /// Lifetime of a new instance when none is asked for (unset: forever).
        #[serde(deserialize_with = "de_opt_duration")]
        live default_instance_ttl: Option<Duration>,
        /// Longest lifetime an instance may be given or extended to.
        #[serde(deserialize_with = "de_opt_duration")]
        live max_instance_ttl: Option<Duration>,
        /// Destroy an instance with no client connection for this long.
        #[serde(deserialize_with = "de_opt_duration")]
        live instance_idle_limit: Option<Duration>,
        /// Keep only the newest N ready images (older ones without instances go).
        live image_retention: Option<u32>,
        /// `status` is `stale` when no image became ready for this long.
        #[serde(deserialize_with = "de_opt_duration")]
        live expected_image_interval: Option<Duration>,
        live max_instances_per_user: Option<u32>,
        live max_instances_total: Option<u32>,
        /// Most bytes one instance may write (btrfs simple quotas on its
        /// subvolume; the image's shared data does not count). None or 0: no
        /// limit.
        live max_instance_disk: Option<ByteSize>,
        /// Started instances kept ready per ready image, handed over on
        /// `new-instance` (0: no warm pool).
        live warm_instances_per_image: u32,
        /// Refuse new instances and uploads below this much free space on
        /// `data_path`: a percentage (`5%`) or a size (`20G`).
        live min_free_space: FreeSpace,
        live enable_ip_whitelisting: bool,
        #[serde(deserialize_with = "de_duration")]
        live whitelist_reconcile_interval: Duration,
        live use_x_forwarded_for: bool,
        /// Proxies whose `X-Forwarded-For` is believed.
        #[serde(deserialize_with = "de_cidrs")]
        live trusted_proxy_cidrs: Vec<Cidr>,
        section ssh: SshConfig,
        section http: HttpConfig,
        fixed oauth: OauthConfig,
        section postgres: PostgresConfig,
        section masking: MaskingConfig,
        /// Production primaries followed by a streaming standby each
        /// (`[sources.NAME]`); adding or removing one applies at once.
        live sources: Sources,
        fixed state: StateConfig,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Production,
    Development,
    Test,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_path: "/var/lib/draupnir/data".into(),
            state_path: "/var/lib/draupnir/state".into(),
            loopback_size: None,
            public_hostname: "localhost".into(),
            environment: Environment::Production,
            shared_secret: None,
            trusted_user_email_domain: None,
            min_instance_port: 6432,
            max_instance_port: 7432,
            max_image_bytes: ByteSize(1 << 40),
            max_image_entries: 10_000_000,
            clean_interval: Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(60),
            default_instance_ttl: None,
            max_instance_ttl: None,
            instance_idle_limit: None,
            image_retention: None,
            expected_image_interval: None,
            max_instances_per_user: None,
            max_instances_total: None,
            max_instance_disk: None,
            warm_instances_per_image: 0,
            min_free_space: FreeSpace::Percent(5.0),
            enable_ip_whitelisting: false,
            whitelist_reconcile_interval: Duration::from_secs(60),
            use_x_forwarded_for: false,
            trusted_proxy_cidrs: Vec::new(),
            ssh: SshConfig::default(),
            http: HttpConfig::default(),
            oauth: OauthConfig::default(),
            postgres: PostgresConfig::default(),
            masking: MaskingConfig::default(),
            sources: Sources::new(),
            state: StateConfig::default(),
        }
    }
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parse and validate config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string().replace('\n', " ").trim().to_string(),
        })?;
        config.validate()?;
        sources::validate(&config.sources)?;
        config.masking.read_rules()?;
        Ok(config)
    }

    /// Path of the SQLite metadata file.
    pub fn database_path(&self) -> PathBuf {
        self.state_path.join(&self.state.database_file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let c = Config::parse("").expect("empty config is valid");
        assert_eq!(c.min_instance_port, 6432);
        assert_eq!(c.postgres.instance_user, "draupnir-instance");
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../config.toml.example");
        Config::parse(text).expect("config.toml.example must be valid");
    }

    #[test]
    fn debug_shows_no_secret() {
        let c = Config::parse(
            "shared_secret = \"shared-s3cret\"\n[oauth]\nclient_id = \"id\"\nclient_secret = \"client-s3cret\"",
        )
        .expect("valid");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
        assert_eq!(
            c.shared_secret.as_ref().map(|s| s.expose().as_str()),
            Some("shared-s3cret")
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("data_pth = \"/x\"").unwrap_err().to_string();
        assert!(err.contains("data_pth"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = Config::parse("min_instance_port = 7000\nmax_instance_port = 6000")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_instance_port"), "{err}");
        let err = Config::parse(
            "min_instance_port = 7000\nmax_instance_port = 7010\nwarm_instances_per_image = 11",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("warm_instances_per_image"), "{err}");
        let err = Config::parse("clean_interval = \"10 parsecs\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("clean_interval"), "{err}");
        let err = Config::parse("loopback_size = \"12Q\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("loopback_size"), "{err}");
        let err = Config::parse("trusted_proxy_cidrs = [\"10.0.0.0/33\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("trusted_proxy_cidrs"), "{err}");
        let err = Config::parse("[postgres]\ninstance_user = \"root\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("postgres.instance_user"), "{err}");
        let err = Config::parse("[postgres.settings]\nshared_preload_libraries = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("shared_preload_libraries"), "{err}");
        let err = Config::parse("[ssh]\nmax_auth_attempts = 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ssh.max_auth_attempts"), "{err}");
        let err = Config::parse("[ssh]\nauth_timeout = \"0s\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ssh.auth_timeout"), "{err}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!("20G".parse::<ByteSize>().unwrap().0, 20 << 30);
        assert_eq!("512MiB".parse::<ByteSize>().unwrap().0, 512 << 20);
        assert_eq!(
            parse_duration("26h").unwrap(),
            Duration::from_secs(26 * 3600)
        );
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("36500d").unwrap(), MAX_DURATION);
        for absurd in [
            "9999999999h",
            "87600000h",
            "99999999999999d",
            "36501d",
            "99999999999999999999999s",
            "18446744073709551615ms",
        ] {
            let err = parse_duration(absurd).unwrap_err();
            assert!(err.contains("too long"), "{absurd}: {err}");
        }
        assert!(parse_duration("h").unwrap_err().contains("not a duration"));
        for absurd in ["99999999999999T", "1e400", "2000P", "1025P"] {
            assert!(absurd.parse::<ByteSize>().is_err(), "{absurd}");
        }
        for (key, text) in [
            ("clean_interval", "clean_interval = \"9999999999h\""),
            ("max_instance_ttl", "max_instance_ttl = \"87600000h\""),
            ("max_image_bytes", "max_image_bytes = \"99999999999999T\""),
            ("max_image_bytes", "max_image_bytes = 18446744073709551615"),
            ("idle_timeout", "[ssh]\nidle_timeout = \"99999999999999d\""),
        ] {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("too "), "{text}: {err}");
        }
    }
}
