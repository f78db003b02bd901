//! Floods against a running daemon (issue 17, items 1 and 2): banner-only
//! SSH connections, stalled TLS handshakes, stalled request headers and
//! trickled bodies. Each attack runs while a real user's `ssh … whoami`
//! and `GET /health_check` keep working (from another loopback address:
//! the flood's own address is capped), and every flood connection is then
//! shown closed by the server — no timed assertion beyond generous
//! bounds.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::ssh::{text, SshEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The real user's address; the floods come from 127.0.0.1.
const USER_ADDR: &str = "127.0.0.2";

/// Generous bound for "closed by the server" after its deadline.
const SLACK: Duration = Duration::from_secs(15);

/// Read until the server closes (0 bytes or an error); `false` if it is
/// still open after `within`.
async fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
    let mut buf = vec![0u8; 16 << 10];
    let until = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(until, c.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// `ssh -b 127.0.0.2 … whoami` succeeds and names the admin.
async fn whoami_works(s: &SshEnv) {
    let out = s
        .ssh_opts(&s.admin_key, &["-b", USER_ADDR], &["whoami"])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("alice"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn banner_only_ssh_flood_neither_locks_out_nor_outstays_the_deadline() {
    // 8 slots in all, 4 per address (the default: half).
    let s = SshEnv::with("", "auth_timeout = \"3s\"\nmax_unauthenticated = 8").await;
    let addr = s.server.as_ref().unwrap().local_addr();
    // The flood: 40 connections from one address, each sending only a
    // version line and then nothing.
    let mut flood = Vec::new();
    for _ in 0..40 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let _ = c.write_all(b"SSH-2.0-x\r\n").await;
        flood.push(c);
    }
    // A real user gets in while they are all open.
    whoami_works(&s).await;
    // Keep flooding, replacing closed connections, past two deadlines,
    // while the real user keeps logging in.
    let flooder = tokio::spawn(async move {
        let mut opened = 0usize;
        let stop = tokio::time::Instant::now() + Duration::from_secs(8);
        while tokio::time::Instant::now() < stop {
            let mut c = match TcpStream::connect(addr).await {
                Ok(c) => c,
                Err(_) => continue,
            };
            let _ = c.write_all(b"SSH-2.0-x\r\n").await;
            opened += 1;
            tokio::spawn(async move {
                // Held until the server lets go (bounded).
                closed_within(&mut c, Duration::from_secs(30)).await
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        opened
    });
    for _ in 0..4 {
        whoami_works(&s).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let opened = flooder.await.unwrap();
    assert!(opened > 40, "the flood kept going ({opened} connections)");
    // Every connection of the first wave is closed by the server: those
    // over the caps at once, the others at the deadline.
    for (i, mut c) in flood.into_iter().enumerate() {
        assert!(
            closed_within(&mut c, Duration::from_secs(3) + SLACK).await,
            "flood connection {i} still open after auth_timeout + {SLACK:?}"
        );
    }
    whoami_works(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_right_key_offered_last_of_max_auth_attempts_gets_in() {
    let s = SshEnv::with("", "max_auth_attempts = 6").await;
    let dir = s.work.path();
    let mut opts: Vec<String> = Vec::new();
    for i in 0..5 {
        let k = common::ssh::keygen(dir, &format!("stranger{i}"), "x@test");
        opts.extend(["-i".into(), k.display().to_string()]);
    }
    // The admin key (`ssh_opts` adds its `-i` first): put it sixth by
    // offering the strangers first with a config-less identity order.
    let mut cmd = tokio::process::Command::new("ssh");
    let mut base = common::ssh::client_opts(&s.admin_key, None);
    // client_opts ends with `-i ADMIN`: drop it and append it last.
    base.truncate(base.len() - 2);
    cmd.args(base)
        .args(&opts)
        .args(["-i", &s.admin_key.display().to_string()])
        .args(["-p", &s.port.to_string(), "draupnir@127.0.0.1", "whoami"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // A seventh is one too many.
    let k = common::ssh::keygen(dir, "stranger5", "x@test");
    let mut base = common::ssh::client_opts(&s.admin_key, None);
    base.truncate(base.len() - 2);
    let mut cmd = tokio::process::Command::new("ssh");
    cmd.args(base)
        .args(&opts)
        .args(["-i", &k.display().to_string()])
        .args(["-i", &s.admin_key.display().to_string()])
        .args(["-p", &s.port.to_string(), "draupnir@127.0.0.1", "whoami"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
}

/// An HTTPS client bound to the real user's address.
fn user_client(s: &SshEnv, addr: SocketAddr) -> reqwest::Client {
    let pem = std::fs::read(s.env.config.state_path.join("http/tls.crt")).expect("served cert");
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("cert"))
        .resolve("localhost", addr)
        .local_address(USER_ADDR.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

async fn health_works(client: &reqwest::Client, addr: SocketAddr) {
    let r = client
        .get(format!("https://localhost:{}/health_check", addr.port()))
        .send()
        .await
        .expect("health check answered");
    assert!(r.status().is_success(), "{:?}", r.status());
}

/// `openssl s_client` finishing the handshake and then sending nothing.
fn tls_then_silence(addr: SocketAddr) -> tokio::process::Child {
    tokio::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &addr.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl s_client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_http_clients_are_closed_and_leave_https_and_ssh_working() {
    let s = SshEnv::with_http(
        "",
        "",
        "listen_address = \"127.0.0.1:0\"\n\
         insecure_listen_address = \"127.0.0.1:0\"\n\
         header_timeout = \"2s\"\n\
         body_timeout = \"3s\"\n\
         max_connections = 40\n\
         max_connections_per_address = 12",
    )
    .await;
    let http = draupnir::http::serve(s.svc().clone(), &s.env.config)
        .await
        .expect("http starts");
    let tls_addr = http.https_addr().unwrap();
    let plain_addr = http.http_addr().unwrap();
    let client = user_client(&s, tls_addr);
    health_works(&client, tls_addr).await;

    // TLS finished, then silence (a real TLS client), before the raw
    // flood fills this address's places.
    let mut silent_tls: Vec<_> = (0..4).map(|_| tls_then_silence(tls_addr)).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut flood: Vec<(&str, TcpStream)> = Vec::new();
    // TLS handshakes never started (raw TCP, silent), over the per-address
    // cap: the first ones wait for the handshake deadline, the rest are
    // closed at once.
    for _ in 0..20 {
        flood.push(("silent TLS", TcpStream::connect(tls_addr).await.unwrap()));
    }
    // Plain HTTP headers started and never finished.
    for _ in 0..8 {
        let mut c = TcpStream::connect(plain_addr).await.unwrap();
        c.write_all(b"GET /health_check HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        flood.push(("stalled headers", c));
    }
    // A body trickled a byte at a time: answered 408 at body_timeout.
    let mut trickle = TcpStream::connect(plain_addr).await.unwrap();
    trickle
        .write_all(
            b"POST /access_tokens HTTP/1.1\r\nHost: x\r\nDraupnir-Version: 5.3.6\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    let trickler = tokio::spawn(async move {
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..60 {
            if trickle.write_all(b" ").await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(500), trickle.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
            if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                break;
            }
        }
        String::from_utf8_lossy(&answer).to_string()
    });

    // The real user keeps working throughout.
    for _ in 0..3 {
        health_works(&client, tls_addr).await;
        whoami_works(&s).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    let answer = trickler.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");

    for (i, (what, mut c)) in flood.into_iter().enumerate() {
        assert!(
            closed_within(&mut c, Duration::from_secs(3) + SLACK).await,
            "{what} connection {i} still open"
        );
    }
    for (i, child) in silent_tls.iter_mut().enumerate() {
        let done = tokio::time::timeout(Duration::from_secs(2) + SLACK, child.wait()).await;
        assert!(
            done.is_ok(),
            "TLS connection {i} silent after the handshake still open"
        );
    }
    health_works(&client, tls_addr).await;
    whoami_works(&s).await;
    http.shutdown().await;
}
