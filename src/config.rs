//! Configuration: the TOML file's types, defaults and validation.
//!
//! Every key is documented in `config.toml.example`. Unknown keys and bad
//! values are refused at start with the key's name and the reason, so a typo
//! never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

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
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where images and instances live; must be btrfs (or `loopback_size` set).
    pub data_path: PathBuf,
    /// SQLite, credentials and logs. Readable by root only.
    pub state_path: PathBuf,
    /// When `data_path` is not on btrfs: size of a sparse file formatted as
    /// btrfs and mounted there. `None` refuses to start instead.
    pub loopback_size: Option<ByteSize>,
    pub public_hostname: String,
    pub environment: Environment,
    pub shared_secret: Option<String>,
    pub trusted_user_email_domain: Option<String>,
    pub min_instance_port: u16,
    pub max_instance_port: u16,
    /// Most decompressed bytes one image may hold.
    pub max_image_bytes: ByteSize,
    /// Most archive entries one image may hold.
    pub max_image_entries: u64,
    #[serde(deserialize_with = "de_duration")]
    pub clean_interval: Duration,
    /// On SIGTERM: how long running uploads and finalises may take to end
    /// before the daemon exits anyway (start-up reconcile then marks them
    /// failed).
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_grace: Duration,
    /// Lifetime of a new instance when none is asked for (unset: forever).
    #[serde(deserialize_with = "de_opt_duration")]
    pub default_instance_ttl: Option<Duration>,
    /// Longest lifetime an instance may be given or extended to.
    #[serde(deserialize_with = "de_opt_duration")]
    pub max_instance_ttl: Option<Duration>,
    /// Destroy an instance with no client connection for this long.
    #[serde(deserialize_with = "de_opt_duration")]
    pub instance_idle_limit: Option<Duration>,
    /// Keep only the newest N ready images (older ones without instances go).
    pub image_retention: Option<u32>,
    /// `status` is `stale` when no image became ready for this long.
    #[serde(deserialize_with = "de_opt_duration")]
    pub expected_image_interval: Option<Duration>,
    pub max_instances_per_user: Option<u32>,
    pub max_instances_total: Option<u32>,
    /// Most bytes one instance may write (btrfs simple quotas on its
    /// subvolume; the image's shared data does not count). None or 0: no
    /// limit.
    pub max_instance_disk: Option<ByteSize>,
    /// Started instances kept ready per ready image, handed over on
    /// `new-instance` (0: no warm pool).
    pub warm_instances_per_image: u32,
    /// Refuse new instances and uploads below this much free space on
    /// `data_path`: a percentage (`5%`) or a size (`20G`).
    pub min_free_space: FreeSpace,
    pub enable_ip_whitelisting: bool,
    #[serde(deserialize_with = "de_duration")]
    pub whitelist_reconcile_interval: Duration,
    pub use_x_forwarded_for: bool,
    /// Proxies whose `X-Forwarded-For` is believed.
    #[serde(deserialize_with = "de_cidrs")]
    pub trusted_proxy_cidrs: Vec<Cidr>,
    pub ssh: SshConfig,
    pub http: HttpConfig,
    pub oauth: OauthConfig,
    pub postgres: PostgresConfig,
    pub state: StateConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Production,
    Development,
    Test,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    pub listen_address: SocketAddr,
    pub host_key_path: PathBuf,
    pub admin_keys: Vec<String>,
    pub authorized_keys_file: Option<PathBuf>,
    /// Public-key attempts one connection may make before it is dropped.
    pub max_auth_attempts: usize,
    /// A connection must authenticate within this time (from accept).
    #[serde(deserialize_with = "de_duration")]
    pub auth_timeout: Duration,
    /// An authenticated connection with no traffic for this long is closed
    /// (`0s` disables it).
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// Session channels (commands, uploads, SFTP) one user may have open at
    /// once, over all their connections.
    pub max_sessions_per_user: usize,
    /// Connections that have not authenticated yet; more are dropped at once.
    pub max_unauthenticated: usize,
    /// Unauthenticated connections from one client address (default: half
    /// of `max_unauthenticated`), so one address cannot hold every slot.
    pub max_unauthenticated_per_address: Option<usize>,
    /// Longest command line `ssh draupnir …` accepts, in bytes.
    pub max_command_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen_address: Option<SocketAddr>,
    pub insecure_listen_address: Option<SocketAddr>,
    pub tls_certificate: Option<PathBuf>,
    pub tls_private_key: Option<PathBuf>,
    pub api_version: String,
    pub metrics: bool,
    /// Largest request body accepted (larger: 413).
    pub max_body_size: ByteSize,
    /// How long a client may take to send a request body, in all.
    #[serde(deserialize_with = "de_duration")]
    pub body_timeout: Duration,
    /// How long a client may take for the TLS handshake, and for each
    /// request's headers (an idle kept-alive connection is closed after it).
    #[serde(deserialize_with = "de_duration")]
    pub header_timeout: Duration,
    /// Open HTTP(S) connections in all (per listener); more are closed at
    /// once. Default: a quarter of the process's open-file limit, at most
    /// 4096, so running short of descriptors hits HTTP, never SSH or
    /// instances.
    pub max_connections: Option<usize>,
    /// Open HTTP(S) connections from one client address (per listener).
    /// Default: a quarter of the total cap, at most 128, so one address
    /// never holds all of them.
    pub max_connections_per_address: Option<usize>,
}

impl SshConfig {
    /// `max_unauthenticated_per_address`, or half of `max_unauthenticated`.
    pub fn unauthenticated_per_address(&self) -> usize {
        self.max_unauthenticated_per_address
            .unwrap_or(self.max_unauthenticated / 2)
            .max(1)
    }
}

impl HttpConfig {
    /// `max_connections`, or a quarter of the soft `RLIMIT_NOFILE` (at
    /// least 16, at most 4096).
    pub fn connection_cap(&self) -> usize {
        if let Some(n) = self.max_connections {
            return n;
        }
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        let soft = if rc == 0 {
            usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
        } else {
            1024
        };
        (soft / 4).clamp(16, 4096)
    }

    /// `max_connections_per_address`, or a quarter of
    /// [`HttpConfig::connection_cap`] (at least 1, at most 128).
    pub fn connection_cap_per_address(&self) -> usize {
        self.max_connections_per_address
            .unwrap_or_else(|| (self.connection_cap() / 4).clamp(1, 128))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OauthConfig {
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub redirect_url: Option<String>,
    pub auth_url: Option<String>,
    pub token_url: Option<String>,
    pub userinfo_url: Option<String>,
    /// How long a refresh token's e-mail is remembered before the provider
    /// is asked again.
    #[serde(deserialize_with = "de_duration")]
    pub cache_ttl: Duration,
    /// How long `POST /access_tokens` waits for the browser's callback.
    #[serde(deserialize_with = "de_duration")]
    pub callback_timeout: Duration,
}

impl Default for OauthConfig {
    fn default() -> Self {
        OauthConfig {
            client_id: None,
            client_secret: None,
            redirect_url: None,
            auth_url: None,
            token_url: None,
            userinfo_url: None,
            cache_ttl: Duration::from_secs(60),
            callback_timeout: Duration::from_secs(60),
        }
    }
}

/// Parse `X.Y.Z` (what `Draupnir-Version` carries).
pub fn parse_api_version(s: &str) -> Option<(u64, u64, u64)> {
    let mut parts = s.trim().split('.');
    let mut next = || -> Option<u64> {
        let p = parts.next()?;
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    let v = (next()?, next()?, next()?);
    parts.next().is_none().then_some(v)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// System user every instance postmaster runs as (created if missing).
    pub instance_user: String,
    /// Directory holding one `<major>/bin` per installed PostgreSQL major.
    pub bin_root: PathBuf,
    /// Database the anonymisation script runs in and clients connect to.
    pub database: String,
    /// Superuser role of uploaded data directories, used once during finalise.
    pub superuser: String,
    /// `listen_addresses` of instance postmasters.
    pub listen_addresses: String,
    /// Extra `postgresql.conf` settings written into every finalised image.
    pub settings: std::collections::BTreeMap<String, String>,
    /// How long a postmaster may take to accept its first connection.
    #[serde(deserialize_with = "de_duration")]
    pub start_timeout: Duration,
    /// How long client certificates stay valid.
    #[serde(deserialize_with = "de_duration")]
    pub certificate_validity: Duration,
    /// How each postmaster is boxed (`landlock`, or `none` on a kernel
    /// without Landlock).
    pub confinement: Confinement,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// SQLite file name, relative to `state_path` unless absolute.
    pub database_file: PathBuf,
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
            state: StateConfig::default(),
        }
    }
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            listen_address: ([0, 0, 0, 0], 2222).into(),
            host_key_path: "keys/ssh_host_ed25519_key".into(),
            admin_keys: Vec::new(),
            authorized_keys_file: None,
            max_auth_attempts: 6,
            auth_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(3600),
            max_sessions_per_user: 10,
            max_unauthenticated: 64,
            max_unauthenticated_per_address: None,
            max_command_bytes: 16 * 1024,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen_address: Some(([0, 0, 0, 0], 8443).into()),
            insecure_listen_address: None,
            tls_certificate: None,
            tls_private_key: None,
            api_version: "5.3.6".into(),
            metrics: false,
            max_body_size: ByteSize(10 << 20),
            body_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(15),
            max_connections: None,
            max_connections_per_address: None,
        }
    }
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
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string().replace('\n', " ").trim().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
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
            if secret.len() < 8 {
                return Err(invalid(
                    "shared_secret",
                    "must be at least 8 characters long",
                ));
            }
        }
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
        let user = &self.postgres.instance_user;
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
        if !self.postgres.bin_root.is_absolute() {
            return Err(invalid("postgres.bin_root", "must be an absolute path"));
        }
        for (key, value) in [
            ("postgres.database", &self.postgres.database),
            ("postgres.superuser", &self.postgres.superuser),
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
        for (name, value) in &self.postgres.settings {
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
        if self.postgres.start_timeout.is_zero() {
            return Err(invalid("postgres.start_timeout", "must be above 0"));
        }
        if self.postgres.certificate_validity < Duration::from_secs(3600) {
            return Err(invalid(
                "postgres.certificate_validity",
                "must be at least 1h",
            ));
        }
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

    /// Path of the SQLite metadata file.
    pub fn database_path(&self) -> PathBuf {
        self.state_path.join(&self.state.database_file)
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

/// An address range such as `10.0.0.0/8` or `fd00::/8` (a bare address
/// is a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not an address range like 10.0.0.0/8");
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let net: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { net, prefix })
    }
}

/// A size in bytes, written as `20G`, `512MiB`, `1048576`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let num: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size like 20G or 512MiB"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            other => return Err(format!("unknown size unit `{other}` (use K, M, G or T)")),
        };
        let bytes = num * mult as f64;
        if !bytes.is_finite() || bytes > MAX_SIZE as f64 {
            return Err(format!("`{s}` is too large (at most 1048576T, 1 EiB)"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) if n > MAX_SIZE => Err(serde::de::Error::custom(format!(
                "{n} is too large (at most 1048576T, 1 EiB)"
            ))),
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The longest duration anything accepts (100 years): a lifetime, an
/// extension or an interval beyond it is a typo or an attack, and every
/// time computed from it stays far inside what dates and clocks can hold.
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

/// The largest size anything accepts (1 EiB).
pub const MAX_SIZE: u64 = 1 << 60;

/// Parse a duration written as `500ms`, `30s`, `10m`, `26h`, `7d`; refused
/// beyond [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let too_long = || format!("`{s}` is too long (at most 36500d, 100 years)");
    let num: u64 = match num.parse() {
        Ok(n) => n,
        // All digits but more than a u64 holds.
        Err(_) if !num.is_empty() => return Err(too_long()),
        Err(_) => return Err(format!("`{s}` is not a duration like 30s, 10m or 26h")),
    };
    let secs = |m: u64| num.checked_mul(m).map(Duration::from_secs);
    let d = match unit.trim() {
        "ms" => Some(Duration::from_millis(num)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        other => {
            return Err(format!(
                "unknown duration unit `{other}` (use ms, s, m, h or d)"
            ))
        }
    };
    match d {
        Some(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(too_long()),
    }
}

fn de_cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| s.parse::<Cidr>().map_err(serde::de::Error::custom))
        .collect()
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A free-space floor: a share of the file system or an absolute size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FreeSpace {
    Percent(f64),
    Bytes(u64),
}

impl FreeSpace {
    /// The floor in bytes for a file system of `total` bytes.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            FreeSpace::Percent(p) => (total as f64 * p / 100.0) as u64,
            FreeSpace::Bytes(b) => b,
        }
    }
}

impl std::fmt::Display for FreeSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FreeSpace::Percent(p) => write!(f, "{p}%"),
            FreeSpace::Bytes(b) => write!(f, "{b} bytes"),
        }
    }
}

impl<'de> Deserialize<'de> for FreeSpace {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Some(p) = s.trim().strip_suffix('%') {
            return p
                .trim()
                .parse::<f64>()
                .map(FreeSpace::Percent)
                .map_err(|_| {
                    serde::de::Error::custom(format!("`{s}` is not a percentage like 5%"))
                });
        }
        s.parse::<ByteSize>()
            .map(|b| FreeSpace::Bytes(b.0))
            .map_err(serde::de::Error::custom)
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
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
        let text = include_str!("../config.toml.example");
        Config::parse(text).expect("config.toml.example must be valid");
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
