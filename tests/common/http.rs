//! A real HTTPS client against the real HTTP server of a [`TestEnv`]:
//! the served (self-signed) certificate is trusted explicitly and
//! `localhost` resolves to the listener.
#![allow(dead_code)]

use std::net::SocketAddr;

use draupnir::http::HttpServer;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::{TestConfig, TestEnv};

pub const VERSION: &str = "5.3.6";
pub const SECRET: &str = "the-upload-shared-secret";
pub const INTEGRATION: &str = "the-integration-access-token";

pub struct Api {
    pub env: TestEnv,
    pub server: Option<HttpServer>,
    pub client: reqwest::Client,
    pub addr: SocketAddr,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    /// Every API response carries these.
    pub fn assert_api_headers(&self) {
        assert_eq!(
            self.header("content-type"),
            "application/json",
            "{:?}",
            self.status
        );
        assert_eq!(self.header("draupnir-version"), VERSION);
    }
}

/// The contract's error document.
pub fn error_doc(status: u16, code: &str, title: &str, detail: &str, source: Value) -> Value {
    serde_json::json!({
        "id": code, "status": status.to_string(), "code": code,
        "title": title, "detail": detail, "source": source
    })
}

pub fn client_for(env: &TestEnv, addr: SocketAddr) -> reqwest::Client {
    let pem = std::fs::read(env.config.state_path.join("http/tls.crt")).expect("served cert");
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("cert"))
        .resolve("localhost", addr)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

impl Api {
    pub async fn start(extra: &str, http: &str, oauth: &str) -> Api {
        let env = TestConfig::new()
            .top(extra)
            .http(http)
            .oauth(oauth)
            .open()
            .await;
        let server = draupnir::http::serve(env.svc().clone(), &env.config)
            .await
            .expect("http server starts");
        let addr = server.https_addr().expect("https listener");
        let client = client_for(&env, addr);
        Api {
            env,
            server: Some(server),
            client,
            addr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    pub fn server(&self) -> &HttpServer {
        self.server.as_ref().expect("server")
    }

    /// A request with the version header and, when given, a bearer token.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self
            .client
            .request(method, self.url(path))
            .header("Draupnir-Version", VERSION);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        send(req).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }
}

pub async fn send(req: reqwest::RequestBuilder) -> Reply {
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("body").to_vec();
    Reply {
        status,
        headers,
        body,
    }
}
