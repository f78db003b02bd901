//! OAuth 2 for the legacy CLI: the browser flow (`/authenticate` →
//! provider → `/oauth_callback`, handed to a waiting `POST /access_tokens`)
//! and turning a refresh token into an e-mail address (refresh at the
//! token endpoint, then ask the userinfo endpoint), cached briefly so a
//! burst of requests asks the provider once.
//!
//! Endpoints come from `[oauth]` (Google's by default). Whether the e-mail
//! belongs to a trusted user is the core's decision.
//!
//! A `state` is not a secret (released 5.x CLIs send the same one every
//! time), so a token goes to a waiter only when it is the one request
//! waiting on that state: when two meet, neither gets it, and the state
//! takes no token for a while (see `docs/security.md`, "OAuth sign-in").

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oauth2::basic::{BasicClient, BasicTokenType};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet,
    RedirectUrl, RefreshToken, Scope, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, OnceCell};

use crate::config::Config;
use crate::secret::Secret;

const GOOGLE_AUTH: &str = "https://accounts.google.com/o/oauth2/v2/auth";
const GOOGLE_TOKEN: &str = "https://oauth2.googleapis.com/token";
const GOOGLE_USERINFO: &str = "https://openidconnect.googleapis.com/v1/userinfo";

/// Most callbacks waited for (or waiting for a client) at once.
const MAX_PENDING: usize = 10_000;
/// Most refresh tokens remembered at once.
const MAX_CACHED: usize = 10_000;
/// Most `POST /access_tokens` waiting at once from one client address.
pub const MAX_WAITERS_PER_ADDRESS: usize = 4;

type Client = BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// The token document `POST /access_tokens` answers with (the shape of
/// Go's `oauth2.Token`, which 5.x clients parse).
#[derive(Debug, Clone, Serialize)]
pub struct TokenJson {
    pub access_token: Secret<String>,
    pub token_type: String,
    pub refresh_token: Secret<String>,
    pub expiry: String,
}

/// Why `POST /access_tokens` gives no token (the detail of its `400 OAuth
/// Error`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoginError {
    #[error("{0}")]
    Provider(String),
    #[error("another login waited on the same state at the same time, so neither gets a token; try again in a minute")]
    Collision,
    #[error("too many logins are waiting from your address; finish one first")]
    TooManyFromAddress,
    #[error("too many logins in progress; try again")]
    TooMany,
    #[error("the login was abandoned")]
    Abandoned,
    #[error("timed out waiting for the browser to return")]
    TimedOut,
}

type Outcome = Result<TokenJson, LoginError>;

/// Where the login for one `state` stands.
enum Phase {
    /// Waiting for the callback (with at most one waiter).
    Open,
    /// The callback came before any waiter: the first waiter takes it.
    Answered(Outcome),
    /// Two waiters (or two callbacks) met on this state: until then, every
    /// waiter is refused and every callback thrown away.
    Collided { until: Instant },
}

struct Pending {
    /// Tells this login from a later one on the same state.
    id: u64,
    created: Instant,
    /// Requests waiting on this state now.
    waiters: usize,
    phase: Phase,
    tx: watch::Sender<Option<Outcome>>,
}

impl Pending {
    fn new(phase: Phase) -> Pending {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Pending {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            created: Instant::now(),
            waiters: 0,
            phase,
            tx: watch::channel(None).0,
        }
    }
}

#[derive(Default)]
struct Logins {
    pending: HashMap<String, Pending>,
    /// Waiting requests per client address (`None`: unknown).
    per_address: HashMap<Option<IpAddr>, usize>,
}

impl Logins {
    /// Drop what nobody can use any more.
    fn prune(&mut self, horizon: Duration) {
        let now = Instant::now();
        self.pending.retain(|_, p| {
            p.waiters > 0
                || match p.phase {
                    Phase::Open => false,
                    Phase::Answered(_) => p.created.elapsed() < horizon,
                    Phase::Collided { until } => until > now,
                }
        });
    }
}

/// One waiting request: counted against its state and its address until
/// it ends, however it ends (answered, timed out, or its client gone).
struct Waiter<'a> {
    oauth: &'a Oauth,
    state: String,
    /// The login it waits in ([`Pending::id`]).
    id: u64,
    addr: Option<IpAddr>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut logins = self.oauth.logins();
        if let Some(n) = logins.per_address.get_mut(&self.addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                logins.per_address.remove(&self.addr);
            }
        }
        if let Some(p) = logins
            .pending
            .get_mut(&self.state)
            .filter(|p| p.id == self.id)
        {
            p.waiters = p.waiters.saturating_sub(1);
            if p.waiters == 0 && matches!(p.phase, Phase::Open) {
                logins.pending.remove(&self.state);
            }
        }
    }
}

/// What the provider said about a refresh token: `None` when it refused
/// the token (revoked, unknown) or gave no usable e-mail.
type Lookup = Option<String>;

struct Cached {
    fetched: Instant,
    cell: Arc<OnceCell<Lookup>>,
}

/// Why the provider could not be asked (not cached: the next request asks
/// again).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProviderError(String);

pub struct Oauth {
    client: Client,
    http: reqwest::Client,
    userinfo_url: String,
    ttl: Duration,
    callback_timeout: Duration,
    logins: Mutex<Logins>,
    cache: Mutex<HashMap<String, Cached>>,
}

impl Oauth {
    /// `None` when `[oauth] client_id` is not set.
    pub fn from_config(config: &Config) -> Result<Option<Oauth>, String> {
        let o = &config.oauth;
        let Some(client_id) = &o.client_id else {
            return Ok(None);
        };
        let auth = AuthUrl::new(o.auth_url.clone().unwrap_or_else(|| GOOGLE_AUTH.into()))
            .map_err(|e| format!("oauth.auth_url: {e}"))?;
        let token = TokenUrl::new(o.token_url.clone().unwrap_or_else(|| GOOGLE_TOKEN.into()))
            .map_err(|e| format!("oauth.token_url: {e}"))?;
        let redirect = RedirectUrl::new(
            o.redirect_url
                .clone()
                .unwrap_or_else(|| format!("https://{}/oauth_callback", config.public_hostname)),
        )
        .map_err(|e| format!("oauth.redirect_url: {e}"))?;
        let mut client = BasicClient::new(ClientId::new(client_id.clone()))
            .set_auth_uri(auth)
            .set_token_uri(token)
            .set_redirect_uri(redirect);
        if let Some(secret) = &o.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.expose().clone()));
        }
        // No redirects: the token endpoint must answer itself (oauth2's advice).
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| format!("oauth http client: {e}"))?;
        Ok(Some(Oauth {
            client,
            http,
            userinfo_url: o
                .userinfo_url
                .clone()
                .unwrap_or_else(|| GOOGLE_USERINFO.into()),
            ttl: o.cache_ttl,
            callback_timeout: o.callback_timeout,
            logins: Mutex::default(),
            cache: Mutex::default(),
        }))
    }

    /// The provider's consent URL for `state`, asking for offline access so
    /// a refresh token is issued.
    pub fn authorize_url(&self, state: &str) -> String {
        let state = state.to_string();
        let (url, _) = self
            .client
            .authorize_url(move || CsrfToken::new(state))
            .add_scope(Scope::new("openid".into()))
            .add_scope(Scope::new("email".into()))
            .add_extra_param("access_type", "offline")
            .add_extra_param("prompt", "consent")
            .url();
        url.to_string()
    }

    fn logins(&self) -> std::sync::MutexGuard<'_, Logins> {
        self.logins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long a collided state refuses waiters and callbacks: long
    /// enough for every browser involved to come back.
    fn quarantine(&self) -> Instant {
        Instant::now() + self.callback_timeout * 2
    }

    /// `GET /oauth_callback`: exchange the code and hand the token (or the
    /// failure) to the one request waiting for `state`. False when the
    /// login failed or its token was thrown away.
    pub async fn callback(&self, state: &str, code: Option<&str>, error: Option<&str>) -> bool {
        let outcome = match (code, error) {
            (_, Some(e)) => Err(LoginError::Provider(format!("the provider refused: {e}"))),
            (None, None) => Err(LoginError::Provider("the provider sent no code".into())),
            (Some(code), None) => self.exchange_code(code).await,
        };
        if let Err(e) = &outcome {
            tracing::warn!(error = %e, "oauth callback failed");
        }
        let ok = outcome.is_ok();
        let mut logins = self.logins();
        logins.prune(self.callback_timeout * 2);
        let full = logins.pending.len() >= MAX_PENDING;
        let quarantine = self.quarantine();
        match logins.pending.get_mut(state) {
            None if full => {
                tracing::warn!("too many pending oauth logins; callback dropped");
                false
            }
            None => {
                logins
                    .pending
                    .insert(state.to_string(), Pending::new(Phase::Answered(outcome)));
                ok
            }
            Some(p) => match &p.phase {
                Phase::Open if p.waiters > 0 => {
                    p.tx.send_replace(Some(outcome));
                    logins.pending.remove(state);
                    ok
                }
                Phase::Open => {
                    p.phase = Phase::Answered(outcome);
                    ok
                }
                Phase::Answered(_) => {
                    // Two browsers came back for one state nobody claimed
                    // yet: whose token a waiter would get is unknowable.
                    tracing::warn!(
                        "two OAuth callbacks for one state; neither token is handed out"
                    );
                    p.phase = Phase::Collided { until: quarantine };
                    false
                }
                Phase::Collided { .. } => {
                    tracing::warn!(
                        "OAuth callback for a state two logins waited on; token thrown away"
                    );
                    false
                }
            },
        }
    }

    async fn exchange_code(&self, code: &str) -> Outcome {
        let token = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .request_async(&self.http)
            .await
            .map_err(|e| LoginError::Provider(format!("token exchange failed: {e}")))?;
        let expiry = match token.expires_in() {
            Some(d) => time::OffsetDateTime::now_utc()
                .checked_add(time::Duration::try_from(d).unwrap_or(time::Duration::ZERO))
                .unwrap_or_else(time::OffsetDateTime::now_utc),
            // Go's zero time: "does not expire".
            None => time::macros::datetime!(0001-01-01 00:00:00 UTC),
        };
        Ok(TokenJson {
            access_token: Secret::new(token.access_token().secret().clone()),
            token_type: match token.token_type() {
                BasicTokenType::Bearer => "Bearer".into(),
                other => other.as_ref().to_string(),
            },
            refresh_token: Secret::new(
                token
                    .refresh_token()
                    .map(|r| r.secret().clone())
                    .unwrap_or_default(),
            ),
            expiry: super::routes::timestamp(expiry),
        })
    }

    /// `POST /access_tokens` from `addr`: wait for the callback for
    /// `state`. The token goes to this request only if no other waits on
    /// the same state meanwhile.
    pub async fn wait(&self, state: &str, addr: Option<IpAddr>) -> Outcome {
        let (mut rx, _waiter) = {
            let mut logins = self.logins();
            logins.prune(self.callback_timeout * 2);
            if logins.per_address.get(&addr).copied().unwrap_or(0) >= MAX_WAITERS_PER_ADDRESS {
                tracing::warn!(peer = ?addr, "too many OAuth logins waiting from one address; refused");
                return Err(LoginError::TooManyFromAddress);
            }
            let full = logins.pending.len() >= MAX_PENDING;
            let quarantine = self.quarantine();
            let entry = match logins.pending.get_mut(state) {
                Some(p) => match &p.phase {
                    Phase::Answered(_) if p.waiters == 0 => {
                        // The callback came first: this request takes it,
                        // and the state is done.
                        let Some(Pending {
                            phase: Phase::Answered(outcome),
                            ..
                        }) = logins.pending.remove(state)
                        else {
                            return Err(LoginError::Abandoned);
                        };
                        return outcome;
                    }
                    Phase::Collided { .. } => {
                        tracing::warn!(peer = ?addr, "OAuth login on a state two logins waited on; refused");
                        p.phase = Phase::Collided { until: quarantine };
                        return Err(LoginError::Collision);
                    }
                    _ if p.waiters > 0 => {
                        tracing::warn!(
                            peer = ?addr,
                            "two OAuth logins wait on one state; neither gets a token"
                        );
                        p.phase = Phase::Collided { until: quarantine };
                        p.tx.send_replace(Some(Err(LoginError::Collision)));
                        return Err(LoginError::Collision);
                    }
                    _ => p,
                },
                None if full => return Err(LoginError::TooMany),
                None => logins
                    .pending
                    .entry(state.to_string())
                    .or_insert_with(|| Pending::new(Phase::Open)),
            };
            entry.waiters += 1;
            let id = entry.id;
            let rx = entry.tx.subscribe();
            *logins.per_address.entry(addr).or_default() += 1;
            (
                rx,
                Waiter {
                    oauth: self,
                    state: state.to_string(),
                    id,
                    addr,
                },
            )
        };
        let waited = tokio::time::timeout(self.callback_timeout, async {
            rx.wait_for(|v| v.is_some())
                .await
                .ok()
                .and_then(|v| v.clone())
        })
        .await;
        match waited {
            Ok(Some(outcome)) => outcome,
            Ok(None) => Err(LoginError::Abandoned),
            Err(_) => Err(LoginError::TimedOut),
        }
    }

    /// The e-mail behind a refresh token, cached for `cache_ttl`; `None`
    /// when the provider refuses the token.
    pub async fn email_for(&self, refresh_token: &str) -> Result<Lookup, ProviderError> {
        let key = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            refresh_token.as_bytes(),
        ));
        let cell = {
            let mut map = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, c| c.fetched.elapsed() < self.ttl);
            if map.len() >= MAX_CACHED {
                map.clear();
            }
            map.entry(key)
                .or_insert_with(|| Cached {
                    fetched: Instant::now(),
                    cell: Arc::new(OnceCell::new()),
                })
                .cell
                .clone()
        };
        cell.get_or_try_init(|| self.ask_provider(refresh_token))
            .await
            .cloned()
    }

    /// Is this refresh token still granted? Asked of the provider every
    /// time (no cache): `invalid_grant` is revocation; anything else that
    /// goes wrong is not knowing.
    pub async fn token_status(&self, refresh_token: &str) -> crate::core::TokenStatus {
        use crate::core::TokenStatus;
        use oauth2::basic::BasicErrorResponseType;
        use oauth2::RequestTokenError;
        match self
            .client
            .exchange_refresh_token(&RefreshToken::new(refresh_token.to_string()))
            .request_async(&self.http)
            .await
        {
            Ok(_) => TokenStatus::Valid,
            Err(RequestTokenError::ServerResponse(e))
                if *e.error() == BasicErrorResponseType::InvalidGrant =>
            {
                TokenStatus::Revoked
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask the OAuth provider about a refresh token");
                TokenStatus::Unknown
            }
        }
    }

    async fn ask_provider(&self, refresh_token: &str) -> Result<Lookup, ProviderError> {
        use oauth2::RequestTokenError;
        let token = match self
            .client
            .exchange_refresh_token(&RefreshToken::new(refresh_token.to_string()))
            .request_async(&self.http)
            .await
        {
            Ok(t) => t,
            Err(RequestTokenError::ServerResponse(e)) => {
                tracing::info!(error = %e, "oauth refresh token refused");
                return Ok(None);
            }
            Err(e) => return Err(ProviderError(format!("token endpoint: {e}"))),
        };
        let response = self
            .http
            .get(&self.userinfo_url)
            .bearer_auth(token.access_token().secret())
            .send()
            .await
            .map_err(|e| ProviderError(format!("userinfo endpoint: {e}")))?;
        let status = response.status();
        if status.is_client_error() {
            tracing::info!(%status, "userinfo refused the access token");
            return Ok(None);
        }
        if !status.is_success() {
            return Err(ProviderError(format!(
                "userinfo endpoint answered {status}"
            )));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| ProviderError(format!("userinfo endpoint: {e}")))?;
        #[derive(Deserialize)]
        struct UserInfo {
            email: Option<String>,
            email_verified: Option<serde_json::Value>,
        }
        let info: UserInfo = serde_json::from_slice(&body)
            .map_err(|e| ProviderError(format!("userinfo is not JSON: {e}")))?;
        let verified = match info.email_verified {
            None => true,
            Some(serde_json::Value::Bool(b)) => b,
            Some(serde_json::Value::String(s)) => s == "true",
            Some(_) => false,
        };
        Ok(info.email.filter(|_| verified))
    }
}

/// The cleaner's view of the provider; holds the HTTP state weakly so the
/// service and the front door do not keep each other alive.
pub struct Checker(pub std::sync::Weak<super::Shared>);

impl crate::core::TokenChecker for Checker {
    fn check(
        &self,
        refresh_token: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = crate::core::TokenStatus> + Send + '_>>
    {
        Box::pin(async move {
            match self.0.upgrade() {
                Some(shared) => match &shared.oauth {
                    Some(o) => o.token_status(&refresh_token).await,
                    None => crate::core::TokenStatus::Unknown,
                },
                None => crate::core::TokenStatus::Unknown,
            }
        })
    }
}
