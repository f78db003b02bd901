//! What every request goes through: the `Draupnir-Version` check, the
//! response headers and error bodies every response carries, access log
//! lines and request metrics, the whole-body deadline, and the extractors
//! that turn a request into an authenticated [`Actor`], a client address, a
//! path id and a strictly parsed JSON body.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{
    ConnectInfo, FromRequest, FromRequestParts, MatchedPath, Path, Request, State,
};
use axum::http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::error::{ApiError, ContractError};
use super::AppState;
use crate::config::parse_api_version;
use crate::core::Actor;

pub const VERSION_HEADER: &str = "draupnir-version";

/// Outermost layer: `Draupnir-Version` on every response, JSON content type
/// unless a route set its own, and a contract error body on any error a
/// layer below produced without one (unknown route, wrong method, body too
/// large, panic).
pub async fn response_headers(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let status = response.status();
    if status.as_u16() >= 400 && response.extensions().get::<ContractError>().is_none() {
        response = ApiError::for_status(status).into_response();
    }
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&state.api_version) {
        headers.insert(VERSION_HEADER, v);
    }
    if !headers.contains_key(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    response
}

/// Who a request turned out to be, filled in by [`Authed`] for the access
/// log.
#[derive(Clone, Default)]
pub struct UserSlot(Arc<Mutex<Option<String>>>);

/// Access log line and request metrics. Never logs the token.
pub async fn access_log(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    };
    let peer = client_addr(&req);
    let slot = UserSlot::default();
    req.extensions_mut().insert(slot.clone());
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let user = slot
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_else(|| "-".into());
    tracing::info!(
        target: "draupnir::http::access",
        method,
        route = %route,
        status,
        ms = started.elapsed().as_millis() as u64,
        user = %user,
        peer = %peer.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        "request"
    );
    state.metrics.request(&route, method, status);
    response
}

/// The version check (LEGACY_API.md), before authentication.
pub async fn require_version(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(given) = req.headers().get(VERSION_HEADER) else {
        return ApiError::missing_version().into_response();
    };
    let given = String::from_utf8_lossy(given.as_bytes()).to_string();
    let (major, minor, _) = state.version;
    let ok = parse_api_version(&given).is_some_and(|(ma, mi, _)| ma == major && mi <= minor);
    if !ok {
        let shown: String = given.chars().take(64).collect();
        return ApiError::invalid_version(&shown, &state.api_version).into_response();
    }
    next.run(req).await
}

/// The peer's address (for the access log).
fn client_addr<B>(req: &axum::http::Request<B>) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The client's address, for [`crate::core::Service::record_address`].
pub struct ClientAddr(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let xff: Vec<&str> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let cfg = state.service.config();
        Ok(ClientAddr(super::forwarded::client_address(
            peer,
            &xff,
            cfg.use_x_forwarded_for,
            &cfg.trusted_proxy_cidrs,
        )))
    }
}

/// The OAuth refresh token a request was authenticated with (set by
/// [`Authed`]), kept on instances so the cleaner notices revocation.
#[derive(Clone)]
pub struct OauthToken(pub String);

/// An authenticated caller: `Authorization: Bearer <token>` turned into an
/// actor, or 401.
pub struct Authed(pub Actor);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty() && t.len() <= 4096)
            .ok_or_else(ApiError::unauthorized)?;
        let (actor, oauth) = state
            .authenticate(token)
            .await
            .ok_or_else(ApiError::unauthorized)?;
        if oauth {
            parts.extensions.insert(OauthToken(token.to_string()));
        }
        if let Some(slot) = parts.extensions.get::<UserSlot>() {
            *slot.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(actor.name().to_string());
        }
        Ok(Authed(actor))
    }
}

/// A JSON body parsed strictly: over the size limit → 413, unreadable or
/// malformed or of the wrong shape → the contract's 400 *Invalid JSON*.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request<Body>, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large()
            } else if caused_by_timeout(&e) {
                ApiError::body_timeout()
            } else {
                ApiError::unreadable_body()
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|_| ApiError::invalid_json())
    }
}

/// Most bytes of an over-long body read and thrown away before answering
/// 413, so the connection can be kept. Longer bodies are answered at once;
/// the connection's lingering close (`linger`) lets a client still
/// writing read the answer.
const DRAIN_CAP: u64 = 8 << 20;

/// Answer 413 to a body whose `Content-Length` is over the limit, after
/// draining it (up to [`DRAIN_CAP`]).
pub async fn refuse_oversized(
    axum::extract::State(limit): axum::extract::State<u64>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => {
            if n <= limit.saturating_add(DRAIN_CAP) {
                let _ =
                    axum::body::to_bytes(req.into_body(), usize::try_from(n).unwrap_or(usize::MAX))
                        .await;
            }
            ApiError::payload_too_large().into_response()
        }
        _ => next.run(req).await,
    }
}

/// Whether an error came from [`BodyDeadline`].
fn caused_by_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyTimedOut>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The request body did not arrive within `body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within the body timeout")]
pub struct BodyTimedOut;

/// `body_timeout` as a total: the whole body must have arrived by then,
/// however it is trickled (a per-read timeout is reset by every byte).
pub async fn body_deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let deadline = tokio::time::Instant::now() + limit;
    let req = req.map(|inner| {
        Body::new(BodyDeadline {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        })
    });
    next.run(req).await
}

/// A request body that fails with [`BodyTimedOut`] once its deadline has
/// passed.
struct BodyDeadline {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for BodyDeadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The `{id}` of a path as given; a segment that is not valid UTF-8 once
/// percent-decoded names nothing here, so it is a 404, not a 400 about
/// the body.
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| PathId(id))
            .map_err(|_| ApiError::not_found())
    }
}
