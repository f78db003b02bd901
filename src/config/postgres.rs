//! The `[postgres]` and `[state]` sections: how instance postmasters run,
//! how they are boxed, the settings operators may not override, and where
//! the metadata database lives.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::reload_class::config_section;
use super::units::de_duration;

config_section! {
    #[derive(Debug, Clone, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct PostgresConfig (prefix "postgres.") {
        /// System user every instance postmaster runs as (created if missing).
        fixed instance_user: String,
        /// Directory holding one `<major>/bin` per installed PostgreSQL major.
        live bin_root: PathBuf,
        /// Database the anonymisation script runs in and clients connect to.
        live database: String,
        /// Superuser role of uploaded data directories, used once during finalise.
        live superuser: String,
        /// `listen_addresses` of instance postmasters.
        live listen_addresses: String,
        /// Extra `postgresql.conf` settings written into every finalised image.
        live settings: std::collections::BTreeMap<String, String>,
        /// How long a postmaster may take to accept its first connection.
        #[serde(deserialize_with = "de_duration")]
        live start_timeout: Duration,
        /// How long client certificates stay valid.
        #[serde(deserialize_with = "de_duration")]
        live certificate_validity: Duration,
        /// How each postmaster is boxed (`landlock`, or `none` on a kernel
        /// without Landlock).
        live confinement: Confinement,
    }
}

/// How postmasters are confined (`[postgres] confinement`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Confinement {
    /// Each postmaster in its own Landlock box; refuse to start one when
    /// the kernel cannot.
    #[default]
    Landlock,
    /// No box: every postmaster can reach everything the instance user
    /// can. For kernels without Landlock, knowingly.
    None,
}

/// `[state]`: fixed as a whole (reported as `state`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// SQLite file name, relative to `state_path` unless absolute.
    pub database_file: PathBuf,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            instance_user: "draupnir-instance".into(),
            bin_root: "/usr/lib/postgresql".into(),
            database: "postgres".into(),
            superuser: "postgres".into(),
            listen_addresses: "*".into(),
            settings: Default::default(),
            start_timeout: Duration::from_secs(60),
            certificate_validity: Duration::from_secs(90 * 24 * 3600),
            confinement: Default::default(),
        }
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            database_file: "draupnir.sqlite3".into(),
        }
    }
}

/// Settings Draupnir writes itself; refusing them in `postgres.settings`
/// keeps the security rules of SECURITY.md out of the operator's reach.
pub const FORBIDDEN_SETTINGS: &[&str] = &[
    "listen_addresses",
    "port",
    "ssl",
    "ssl_cert_file",
    "ssl_key_file",
    "ssl_ca_file",
    "ssl_passphrase_command",
    "hba_file",
    "ident_file",
    "data_directory",
    "config_file",
    "unix_socket_directories",
    "archive_mode",
    "archive_command",
    "restore_command",
    "shared_preload_libraries",
    "session_preload_libraries",
    "local_preload_libraries",
    "log_directory",
    "logging_collector",
    "include",
    "include_dir",
    "include_if_exists",
];
