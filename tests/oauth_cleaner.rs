//! The cleaner against a fake OAuth provider: an instance created with an
//! OAuth refresh token is destroyed once the provider says `invalid_grant`,
//! and kept while the provider is down.

mod common;

use std::sync::{Arc, Mutex};

use common::http::*;
use serde_json::json;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Granted,
    Down,
    Revoked,
}

async fn provider(mode: Arc<Mutex<Mode>>) -> std::net::SocketAddr {
    use axum::http::StatusCode as S;
    use axum::routing::{get, post};
    let m = mode.clone();
    let token = move |_body: String| {
        let m = m.clone();
        async move {
            let mode = *m.lock().unwrap();
            match mode {
                Mode::Granted => (
                    S::OK,
                    [("content-type", "application/json")],
                    json!({"access_token": "at", "token_type": "Bearer", "expires_in": 3600})
                        .to_string(),
                ),
                Mode::Down => (
                    S::BAD_GATEWAY,
                    [("content-type", "text/plain")],
                    "down".to_string(),
                ),
                Mode::Revoked => (
                    S::BAD_REQUEST,
                    [("content-type", "application/json")],
                    json!({"error": "invalid_grant"}).to_string(),
                ),
            }
        }
    };
    let userinfo =
        || async { json!({"email": "dev@example.com", "email_verified": true}).to_string() };
    let app = axum::Router::new()
        .route("/token", post(token))
        .route("/userinfo", get(userinfo));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_grant_destroys_outage_keeps() {
    let mode = Arc::new(Mutex::new(Mode::Granted));
    let a = provider(mode.clone()).await;
    let oauth = format!(
        "client_id = \"draupnir-test\"\nclient_secret = \"s3cret\"\nredirect_url = \"https://localhost/oauth_callback\"\n\
         auth_url = \"http://{a}/auth\"\ntoken_url = \"http://{a}/token\"\nuserinfo_url = \"http://{a}/userinfo\"\ncache_ttl = \"1s\""
    );
    let api = Api::start(
        "trusted_user_email_domain = \"@example.com\"",
        "listen_address = \"127.0.0.1:0\"",
        &oauth,
    )
    .await;
    let image = api.env.ready_image(None).await;
    let body = json!({"data": {"type": "instances", "attributes": {"image_id": image}}});
    let r = api
        .call(
            reqwest::Method::POST,
            "/instances",
            Some("rt-dev"),
            Some(body),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let svc = api.env.svc();

    *mode.lock().unwrap() = Mode::Down;
    let report = svc.clean_once().await.unwrap();
    assert!(
        report.access_gone.is_empty(),
        "an outage is not a revocation"
    );
    assert_eq!(api.env.entries("instances").len(), 1);

    *mode.lock().unwrap() = Mode::Granted;
    assert!(svc.clean_once().await.unwrap().access_gone.is_empty());

    *mode.lock().unwrap() = Mode::Revoked;
    let report = svc.clean_once().await.unwrap();
    assert_eq!(report.access_gone.len(), 1, "{report:?}");
    assert!(api.env.entries("instances").is_empty());
    assert!(api.env.postmasters().is_empty());
}
