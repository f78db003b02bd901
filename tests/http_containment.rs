//! Attacks on the HTTPS front door's edges: two logins waiting on one
//! OAuth `state` (every released 5.x CLI sends `state=1298498081`) must not
//! hand one person's refresh token to another, one address cannot hold many
//! logins open, and a client that sends a whole over-long body before
//! reading (Python's `urllib`) reads the `413` instead of a reset.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::http::*;
use common::DEFAULT_HTTP;
use reqwest::Method;
use serde_json::json;

const BASE: &str =
    "shared_secret = \"the-upload-shared-secret\"\ntrusted_user_email_domain = \"@example.com\"";
/// The state every released 5.x CLI sends (its random generator is never
/// seeded).
const CLI_STATE: &str = "1298498081";
/// `draupnir::http` caps waiting logins per address at this.
const CAP: usize = 4;

/// A provider whose token endpoint turns `alice-code` into alice's
/// refresh token and `bob-code` into bob's.
async fn provider() -> std::net::SocketAddr {
    use axum::routing::post;
    let token = |body: String| async move {
        let refresh = if body.contains("code=alice-code") {
            "rt-alice-secret"
        } else if body.contains("code=bob-code") {
            "rt-bob-secret"
        } else {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                [("content-type", "application/json")],
                json!({"error": "invalid_grant"}).to_string(),
            );
        };
        (
            axum::http::StatusCode::OK,
            [("content-type", "application/json")],
            json!({"access_token": "at", "token_type": "Bearer", "expires_in": 3600,
                   "refresh_token": refresh})
            .to_string(),
        )
    };
    let app = axum::Router::new().route("/token", post(token));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

async fn oauth_api() -> Arc<Api> {
    let a = provider().await;
    let oauth = format!(
        "client_id = \"draupnir-test\"\nclient_secret = \"s3cret\"\nredirect_url = \"https://localhost/oauth_callback\"\n\
         auth_url = \"http://{a}/auth\"\ntoken_url = \"http://{a}/token\"\nuserinfo_url = \"http://{a}/userinfo\"\n\
         callback_timeout = \"4s\""
    );
    Arc::new(Api::start(BASE, DEFAULT_HTTP, &oauth).await)
}

fn wait_on(api: &Arc<Api>, state: &str) -> tokio::task::JoinHandle<Reply> {
    let api = api.clone();
    let body = json!({"data": {"type": "access_tokens", "attributes": {"state": state}}});
    tokio::spawn(async move {
        api.call(Method::POST, "/access_tokens", None, Some(body))
            .await
    })
}

async fn browser_returns(api: &Api, code: &str, state: &str) -> String {
    let r = send(
        api.client
            .get(api.url(&format!("/oauth_callback?code={code}&state={state}"))),
    )
    .await;
    assert_eq!(r.status, 200);
    String::from_utf8_lossy(&r.body).to_string()
}

/// The contract's `400 OAuth Error`, carrying no refresh token.
fn assert_refused(r: &Reply, detail: &str) {
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    r.assert_api_headers();
    let body = String::from_utf8_lossy(&r.body);
    assert!(!body.contains("rt-"), "no token in a refusal: {body}");
    let v = r.json();
    assert_eq!(v["code"], "oauth_error");
    assert_eq!(v["title"], "OAuth Error");
    assert_eq!(v["status"], "400");
    assert!(v["detail"].as_str().unwrap().contains(detail), "{v}");
}

/// Let spawned requests reach the server before the next step.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_logins_on_one_state_get_no_token() {
    let api = oauth_api().await;

    // Two CLIs (an attacker and alice) wait on the fixed state; alice's
    // browser comes back. Neither request gets her token.
    let attacker = wait_on(&api, CLI_STATE);
    settle().await;
    // The second waiter is refused as soon as both wait (whichever came
    // first), and so is the first.
    let alice = wait_on(&api, CLI_STATE).await.unwrap();
    assert_refused(&alice, "same state");
    assert_refused(&attacker.await.unwrap(), "same state");
    // Alice's browser comes back: her token is thrown away.
    let page = browser_returns(&api, "alice-code", CLI_STATE).await;
    assert!(page.contains("Login failed"), "{page}");
    // Whoever waits next gets nothing either, and nor does a later
    // browser: the state takes no token for a while.
    assert_refused(&wait_on(&api, CLI_STATE).await.unwrap(), "same state");
    let page = browser_returns(&api, "bob-code", CLI_STATE).await;
    assert!(page.contains("Login failed"), "{page}");

    // One login alone on its state still works, waiting first...
    let only = wait_on(&api, "a-state-of-its-own");
    settle().await;
    let page = browser_returns(&api, "alice-code", "a-state-of-its-own").await;
    assert!(page.contains("close this tab"), "{page}");
    let r = only.await.unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["refresh_token"], "rt-alice-secret");
    // ... or after its browser came back; the token is handed out once.
    browser_returns(&api, "bob-code", "callback-first").await;
    let r = wait_on(&api, "callback-first").await.unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["refresh_token"], "rt-bob-secret");
    let again = wait_on(&api, "callback-first");
    settle().await;
    browser_returns(&api, "nonsense", "callback-first").await;
    assert_refused(&again.await.unwrap(), "token exchange failed");

    // Two browsers coming back for one state nobody waits on yet: whose
    // token would the next waiter get? Nobody's.
    browser_returns(&api, "alice-code", "two-browsers").await;
    let page = browser_returns(&api, "bob-code", "two-browsers").await;
    assert!(page.contains("Login failed"), "{page}");
    assert_refused(&wait_on(&api, "two-browsers").await.unwrap(), "same state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_a_bounded_number_of_logins() {
    let api = oauth_api().await;
    let waiting: Vec<_> = (0..CAP).map(|i| wait_on(&api, &format!("s{i}"))).collect();
    settle().await;
    // One more from the same address is refused at once.
    assert_refused(
        &wait_on(&api, "one-too-many").await.unwrap(),
        "too many logins",
    );
    // Those waiting are untouched: one gets its token...
    browser_returns(&api, "alice-code", "s0").await;
    let mut waiting = waiting.into_iter();
    let r = waiting.next().unwrap().await.unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    // ... which frees a place for a new login.
    let next = wait_on(&api, "next");
    settle().await;
    browser_returns(&api, "bob-code", "next").await;
    assert_eq!(next.await.unwrap().status, 201);
    // The rest time out with an OAuth Error.
    for w in waiting {
        assert_refused(&w.await.unwrap(), "timed out");
    }
}

/// POST `size` bytes of body to `url` with Python's urllib, which sends
/// the whole body before reading; prints the status and body it read, or
/// the exception it got.
fn urllib_post(url: &str, size: usize, chunked: bool, ca: &std::path::Path) -> String {
    const SCRIPT: &str = r#"
import sys, ssl, urllib.request, urllib.error
url, size, chunked, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "chunked", sys.argv[4]
ctx = ssl.create_default_context(cafile=ca) if url.startswith("https") else None
body = b"x" * size
data = iter([body[i:i + 65536] for i in range(0, size, 65536)]) if chunked else body
headers = {"Draupnir-Version": "5.3.6", "Authorization": "Bearer the-upload-shared-secret",
           "Content-Type": "application/json"}
if chunked:
    headers["Transfer-Encoding"] = "chunked"
req = urllib.request.Request(url, data=data, method="POST", headers=headers)
try:
    r = urllib.request.urlopen(req, context=ctx, timeout=120)
    print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
except Exception as e:
    print("EXCEPTION", type(e).__name__, e)
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(url)
        .arg(size.to_string())
        .arg(if chunked { "chunked" } else { "length" })
        .arg(ca)
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_oversized_body_reads_the_413() {
    let api = Api::start(
        BASE,
        "listen_address = \"127.0.0.1:0\"\ninsecure_listen_address = \"127.0.0.1:0\"\nmax_body_size = \"1M\"",
        "",
    )
    .await;
    let ca = api.env.config.state_path.join("http/tls.crt");
    let plain = api.server().http_addr().expect("plain listener");
    let expected = error_doc(
        413,
        "payload_too_large",
        "Payload Too Large",
        "The request body is too large",
        json!({}),
    );
    // 64 times the limit, with a length and chunked, over TLS and plain.
    for url in [
        format!("https://localhost:{}/images", api.addr.port()),
        format!("http://{plain}/images"),
    ] {
        for chunked in [false, true] {
            let url = url.clone();
            let ca = ca.clone();
            let out =
                tokio::task::spawn_blocking(move || urllib_post(&url, 64 << 20, chunked, &ca))
                    .await
                    .unwrap();
            let (status, body) = out.split_once(' ').unwrap_or((&out, ""));
            assert_eq!(status, "413", "chunked={chunked}: {out}");
            let doc: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(doc, expected);
        }
    }
    assert!(
        api.env
            .svc()
            .list_images(&api.env.admin())
            .unwrap()
            .is_empty(),
        "nothing was created"
    );
    // And the daemon still answers.
    assert_eq!(
        send(api.client.get(api.url("/health_check"))).await.status,
        200
    );
}
