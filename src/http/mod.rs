//! The HTTPS API: wire-compatible with Draupnir 5.x clients
//! (`shared/LEGACY_API.md`).
//!
//! Owns the listeners (HTTPS with rustls, optional plain HTTP) and their
//! limits (connections in all and per address, TLS handshake and header
//! deadlines, a total body deadline), the router and its layers, and
//! turning bearer tokens into actors. Routes parse,
//! authenticate, call [`Service`] and format; every decision about images,
//! instances and users is the core's.

pub(crate) mod conn_limit;
mod error;
pub mod forwarded;
mod linger;
mod listing;
pub mod metrics;
mod middleware;
mod oauth;
mod parse_errors;
mod routes;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use subtle::ConstantTimeEq;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;

use crate::config::{parse_api_version, Config, Environment};
use crate::core::{Actor, Service};

pub use error::ApiError;

/// The bearer token of the integration user (`environment = "test"` only).
pub const INTEGRATION_TOKEN: &str = "the-integration-access-token";

/// Why the HTTP server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("OAuth: {0}")]
    Oauth(String),
}

pub(crate) struct Shared {
    pub service: Service,
    pub api_version: String,
    pub version: (u64, u64, u64),
    shared_secret: Option<crate::secret::Secret<String>>,
    integration: bool,
    pub oauth: Option<oauth::Oauth>,
    pub metrics: metrics::Metrics,
    /// Rendered `GET /instances` bodies (see [`listing`]).
    pub listings: listing::Listings,
}

/// State every handler sees. Cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

fn same(a: &str, b: &str) -> bool {
    // Length is not secret; the bytes are compared in constant time.
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl AppState {
    fn new(service: Service, config: &Config) -> Result<AppState, HttpError> {
        let version = parse_api_version(&config.http.api_version)
            .ok_or_else(|| HttpError::Tls("http.api_version is not X.Y.Z".into()))?;
        Ok(AppState(Arc::new(Shared {
            service,
            api_version: config.http.api_version.clone(),
            version,
            shared_secret: config.shared_secret.clone(),
            integration: config.environment == Environment::Test,
            oauth: oauth::Oauth::from_config(config).map_err(HttpError::Oauth)?,
            metrics: metrics::Metrics::default(),
            listings: listing::Listings::default(),
        })))
    }

    /// Which user a bearer token stands for (LEGACY_API.md
    /// "Authentication"), or `None`; and whether it was an OAuth refresh
    /// token.
    pub async fn authenticate(&self, token: &str) -> Option<(Actor, bool)> {
        if let Some(actor) = self.authenticate_local(token).await {
            return Some((actor, false));
        }
        self.authenticate_oauth(token).await.map(|a| (a, true))
    }

    async fn authenticate_local(&self, token: &str) -> Option<Actor> {
        let svc = &self.service;
        let log = |e: crate::core::CoreError| {
            tracing::error!(error = %e, "authentication lookup failed");
        };
        if let Some(secret) = &self.shared_secret {
            if same(token, secret.expose()) {
                return svc.upload_actor().map_err(log).ok();
            }
        }
        if self.integration && same(token, INTEGRATION_TOKEN) {
            return svc.integration_actor().map_err(log).ok().flatten();
        }
        match svc.authenticate_token(token) {
            Ok(Some(actor)) => Some(actor),
            Ok(None) => None,
            Err(e) => {
                log(e);
                None
            }
        }
    }

    async fn authenticate_oauth(&self, token: &str) -> Option<Actor> {
        let svc = &self.service;
        let log = |e: crate::core::CoreError| {
            tracing::error!(error = %e, "authentication lookup failed");
        };
        let oauth = self.oauth.as_ref()?;
        let email = match oauth.email_for(token).await {
            Ok(Some(email)) => email,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "OAuth provider unavailable");
                return None;
            }
        };
        match svc.actor_for_trusted_email(&email) {
            Ok(Some(actor)) => Some(actor),
            Ok(None) => {
                tracing::info!(email = %email, "OAuth e-mail outside the trusted domain");
                None
            }
            Err(e) => {
                log(e);
                None
            }
        }
    }
}

fn router(state: AppState, config: &Config, extra: Router) -> Router {
    use axum::middleware::from_fn_with_state;
    let api = Router::new()
        .route(
            "/images",
            get(routes::list_images).post(routes::create_image),
        )
        .route(
            "/images/{id}",
            get(routes::show_image).delete(routes::destroy_image),
        )
        .route("/images/{id}/done", post(routes::image_done))
        .route(
            "/instances",
            get(routes::list_instances).post(routes::create_instance),
        )
        .route(
            "/instances/{id}",
            get(routes::show_instance).delete(routes::destroy_instance),
        )
        .route("/access_tokens", post(routes::access_tokens))
        .route_layer(from_fn_with_state(
            state.clone(),
            middleware::require_version,
        ));
    let mut open = Router::new()
        .route("/health_check", get(routes::health_check))
        .route("/status", get(routes::status))
        .route("/authenticate", get(routes::authenticate))
        .route("/oauth_callback", get(routes::oauth_callback));
    if config.http.metrics {
        open = open.route("/metrics", get(routes::metrics));
    }
    api.merge(open)
        .with_state(state.clone())
        .merge(extra)
        .fallback(|| async { ApiError::not_found() })
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                tracing::error!("a request handler panicked");
                use axum::response::IntoResponse;
                ApiError::internal().into_response()
            },
        ))
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(
            usize::try_from(config.http.max_body_size.0).unwrap_or(usize::MAX),
        ))
        // Inside the body timeout, so a slow over-long body is cut off too.
        .layer(axum::middleware::from_fn_with_state(
            config.http.max_body_size.0,
            middleware::refuse_oversized,
        ))
        .layer(from_fn_with_state(
            config.http.body_timeout,
            middleware::body_deadline,
        ))
        .layer(from_fn_with_state(state.clone(), middleware::access_log))
        .layer(from_fn_with_state(state, middleware::response_headers))
}

/// The whole application with `extra` routes under the same layers, for
/// tests that need a route the API does not have (a handler that panics).
#[doc(hidden)]
pub fn app_with(service: Service, config: &Config, extra: Router) -> Result<Router, HttpError> {
    Ok(router(AppState::new(service, config)?, config, extra))
}

/// The running listeners.
pub struct HttpServer {
    https: Option<SocketAddr>,
    http: Option<SocketAddr>,
    handles: Vec<axum_server::Handle<SocketAddr>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The HTTPS listener's certificate, swappable on reload.
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
}

impl HttpServer {
    /// Serve the certificate `config` names (or the generated one) from now
    /// on (SIGHUP); connections already open keep theirs.
    pub fn reload_tls(&self, config: &Config) -> Result<(), HttpError> {
        if let Some(current) = &self.tls {
            current.reload_from_config(tls::server_config(config)?);
        }
        Ok(())
    }

    /// Every address listened on (HTTPS first).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.https.iter().chain(self.http.iter()).copied().collect()
    }

    /// The HTTPS listener's address.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https
    }

    /// The plain HTTP listener's address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    /// Stop accepting, give open requests a few seconds, then close.
    pub async fn shutdown(self) {
        for h in &self.handles {
            h.graceful_shutdown(Some(Duration::from_secs(5)));
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, HttpError> {
    let bind_err = |source| HttpError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

/// Log a failed accept: the listener's own (out of descriptors: the
/// server backs off and retries) loudly, a connection's (over a cap, a
/// failed or slow TLS handshake) quietly.
fn accept_error(listener: &'static str) -> impl Fn(Option<&SocketAddr>, &std::io::Error) {
    move |peer, e| match peer {
        None => tracing::warn!(listener, error = %e, "accept failed"),
        Some(peer) => tracing::debug!(listener, %peer, error = %e, "connection refused"),
    }
}

/// Start the HTTPS listener (`[http] listen_address`) and the optional
/// plain one (`insecure_listen_address`).
pub async fn serve(service: Service, config: &Config) -> Result<HttpServer, HttpError> {
    // reqwest (OAuth) brings ring beside aws-lc-rs: name the process default.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let state = AppState::new(service, config)?;
    if state.oauth.is_some() {
        state
            .service
            .set_token_checker(Arc::new(oauth::Checker(Arc::downgrade(&state.0))));
    }
    let app = router(state, config, Router::new());
    let header_timeout = config.http.header_timeout;
    let cap = config.http.connection_cap();
    let per_address = config.http.connection_cap_per_address();
    tracing::debug!(
        max_connections = cap,
        max_connections_per_address = per_address,
        "HTTP connection caps"
    );
    let mut server = HttpServer {
        https: None,
        http: None,
        handles: Vec::new(),
        tasks: Vec::new(),
        tls: None,
    };
    if let Some(addr) = config.http.listen_address {
        let tls = tls::server_config(config)?;
        let listener = bind(addr)?;
        let local = listener
            .local_addr()
            .map_err(|source| HttpError::Bind { addr, source })?;
        let handle = axum_server::Handle::new();
        let rustls = axum_server::tls_rustls::RustlsConfig::from_config(tls);
        server.tls = Some(rustls.clone());
        let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(rustls)
            .handshake_timeout(header_timeout)
            .acceptor(conn_limit::ConnLimit::new(cap, per_address));
        let acceptor = parse_errors::WithErrorBodies::new(acceptor, &config.http.api_version);
        let mut srv = axum_server::from_tcp(listener)
            .map_err(|source| HttpError::Bind { addr, source })?
            .acceptor(acceptor)
            .first_request_timeout(header_timeout)
            .accept_error_handler(accept_error("https"))
            .handle(handle.clone());
        srv.http_builder()
            .http1()
            .header_read_timeout(Some(header_timeout));
        let make = app
            .clone()
            .into_make_service_with_connect_info::<SocketAddr>();
        server.tasks.push(tokio::spawn(async move {
            if let Err(e) = srv.serve(make).await {
                tracing::error!(error = %e, "HTTPS listener stopped");
            }
        }));
        server.handles.push(handle);
        server.https = Some(local);
        tracing::info!(address = %local, "HTTPS API listening");
    }
    if let Some(addr) = config.http.insecure_listen_address {
        let listener = bind(addr)?;
        let local = listener
            .local_addr()
            .map_err(|source| HttpError::Bind { addr, source })?;
        let handle = axum_server::Handle::new();
        let mut srv = axum_server::from_tcp(listener)
            .map_err(|source| HttpError::Bind { addr, source })?
            .acceptor(parse_errors::WithErrorBodies::new(
                conn_limit::ConnLimit::new(cap, per_address),
                &config.http.api_version,
            ))
            .first_request_timeout(header_timeout)
            .accept_error_handler(accept_error("http"))
            .handle(handle.clone());
        srv.http_builder()
            .http1()
            .header_read_timeout(Some(header_timeout));
        let make = app
            .clone()
            .into_make_service_with_connect_info::<SocketAddr>();
        server.tasks.push(tokio::spawn(async move {
            if let Err(e) = srv.serve(make).await {
                tracing::error!(error = %e, "HTTP listener stopped");
            }
        }));
        server.handles.push(handle);
        server.http = Some(local);
        tracing::warn!(address = %local, "plain HTTP API listening (no TLS)");
    }
    Ok(server)
}
