//! The front doors' sections: `[ssh]`, `[http]` and `[oauth]`, their
//! defaults and the caps derived from them. Each field's reload class is
//! declared with it (see `reload_class`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::reload_class::config_section;
use super::units::{de_duration, ByteSize};
use crate::secret::Secret;

config_section! {
    #[derive(Debug, Clone, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct SshConfig (prefix "ssh.") {
        fixed listen_address: SocketAddr,
        fixed host_key_path: PathBuf,
        live admin_keys: Vec<String>,
        live authorized_keys_file: Option<PathBuf>,
        /// Public-key attempts one connection may make before it is dropped.
        fixed max_auth_attempts: usize,
        /// A connection must authenticate within this time (from accept).
        #[serde(deserialize_with = "de_duration")]
        fixed auth_timeout: Duration,
        /// An authenticated connection with no traffic for this long is closed
        /// (`0s` disables it).
        #[serde(deserialize_with = "de_duration")]
        fixed idle_timeout: Duration,
        /// Session channels (commands, uploads, SFTP) one user may have open at
        /// once, over all their connections.
        fixed max_sessions_per_user: usize,
        /// Connections that have not authenticated yet; more are dropped at once.
        fixed max_unauthenticated: usize,
        /// Unauthenticated connections from one client address (default: half
        /// of `max_unauthenticated`), so one address cannot hold every slot.
        fixed max_unauthenticated_per_address: Option<usize>,
        /// Longest command line `ssh draupnir …` accepts, in bytes.
        fixed max_command_bytes: usize,
    }
}

config_section! {
    #[derive(Debug, Clone, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct HttpConfig (prefix "http.") {
        fixed listen_address: Option<SocketAddr>,
        fixed insecure_listen_address: Option<SocketAddr>,
        live tls_certificate: Option<PathBuf>,
        live tls_private_key: Option<PathBuf>,
        fixed api_version: String,
        fixed metrics: bool,
        /// Largest request body accepted (larger: 413).
        fixed max_body_size: ByteSize,
        /// How long a client may take to send a request body, in all.
        #[serde(deserialize_with = "de_duration")]
        fixed body_timeout: Duration,
        /// How long a client may take for the TLS handshake, and for each
        /// request's headers (an idle kept-alive connection is closed after it).
        #[serde(deserialize_with = "de_duration")]
        fixed header_timeout: Duration,
        /// Open HTTP(S) connections in all (per listener); more are closed at
        /// once. Default: a quarter of the process's open-file limit, at most
        /// 4096, so running short of descriptors hits HTTP, never SSH or
        /// instances.
        fixed max_connections: Option<usize>,
        /// Open HTTP(S) connections from one client address (per listener).
        /// Default: a quarter of the total cap, at most 128, so one address
        /// never holds all of them.
        fixed max_connections_per_address: Option<usize>,
    }
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

/// `[oauth]`: fixed as a whole (a change needs a restart, reported as
/// `oauth`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OauthConfig {
    pub client_id: Option<String>,
    pub client_secret: Option<Secret<String>>,
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
