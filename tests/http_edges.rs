//! The HTTP door's edges (issue 17, item 6): requests hyper refuses before
//! the API code still get the contract's JSON error, `curl --http1.0`
//! completes the TLS handshake, an undecodable path id is a 404, and a
//! document of the wrong `type` is a 409 with nothing created.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::http::*;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BASE: &str = "shared_secret = \"the-upload-shared-secret\"\nenvironment = \"test\"";
const HTTP: &str = "listen_address = \"127.0.0.1:0\"\ninsecure_listen_address = \"127.0.0.1:0\"";

/// Send raw bytes over plain HTTP and read the whole answer.
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before it has read everything.
    let _ = c.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

/// The status and JSON body of a raw answer.
fn parse(answer: &str) -> (u16, Value) {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head: {answer:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {head}"));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("draupnir-version: 5.3.6"),
        "{head}"
    );
    let body: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer}"));
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refused_by_the_parser_get_the_contract_error() {
    let api = Api::start(BASE, HTTP, "").await;
    let plain = api.server().http_addr().unwrap();
    let many_headers: String = (0..1000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_path = format!("/{}", "a".repeat(70 * 1024));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "two Content-Lengths",
            b"POST /images HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}"
                .to_vec(),
            400,
        ),
        (
            "a control character in a header",
            b"GET /health_check HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n".to_vec(),
            400,
        ),
        (
            "1,000 headers",
            format!("GET /health_check HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
            431,
        ),
        (
            "a 70 KB path",
            format!("GET {long_path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
            414,
        ),
    ];
    for (what, request, want) in cases {
        let answer = raw(plain, &request).await;
        let (status, body) = parse(&answer);
        assert_eq!(status, want, "{what}: {answer}");
        assert_eq!(body["status"], want.to_string(), "{what}: {body}");
        assert!(body["code"].is_string(), "{what}: {body}");
        assert!(body["detail"].is_string(), "{what}: {body}");
    }
    // The service still answers normally afterwards.
    let answer = raw(
        plain,
        b"GET /health_check HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Over TLS too: curl sending two Content-Lengths.
    let out = tokio::process::Command::new("curl")
        .args(["-sk", "-X", "POST", "-H", "Content-Length: 1", "-H"])
        .arg("Content-Length: 2")
        .args(["--data-binary", "{}"])
        .arg(format!("https://127.0.0.1:{}/images", api.addr.port()))
        .output()
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(body["status"], "400", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http1_0_completes_the_tls_handshake() {
    let api = Api::start(BASE, HTTP, "").await;
    let out = tokio::process::Command::new("curl")
        .args(["-sk", "--http1.0", "-w", "\n%{http_code}"])
        .arg(format!(
            "https://127.0.0.1:{}/health_check",
            api.addr.port()
        ))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {:?}", out.status);
    assert!(text.trim_end().ends_with("200"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_path_id_is_not_found() {
    let api = Api::start(BASE, HTTP, "").await;
    for path in ["/instances/%ff", "/images/%ff", "/images/%ff/done"] {
        let method = if path.ends_with("done") {
            Method::POST
        } else {
            Method::GET
        };
        let r = api.call(method, path, Some(INTEGRATION), None).await;
        assert_eq!(r.status.as_u16(), 404, "{path}: {:?}", r.json());
        r.assert_api_headers();
        assert_eq!(r.json()["code"], "resource_not_found", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_of_the_wrong_type_is_a_conflict() {
    let api = Api::start(BASE, HTTP, "").await;
    let before = api.get("/instances", SECRET).await.json();
    let r = api
        .call(
            Method::POST,
            "/instances",
            Some(SECRET),
            Some(json!({"data": {"type": "images", "attributes": {"image_id": "1"}}})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 409, "{:?}", r.json());
    r.assert_api_headers();
    assert_eq!(r.json()["code"], "conflict");
    let r = api
        .call(
            Method::POST,
            "/images",
            Some(SECRET),
            Some(json!({"data": {"type": "instances", "attributes": {}}})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 409, "{:?}", r.json());
    assert_eq!(api.get("/instances", SECRET).await.json(), before);
    assert_eq!(
        api.get("/images", SECRET).await.json()["data"],
        json!([]),
        "no image was created"
    );
}
