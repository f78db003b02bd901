//! The daemon binary under a low open-file limit (issue 17, item 2):
//! hundreds of stalled HTTPS connections take HTTP's places, never the
//! descriptors SSH needs. `draupnir serve` runs as a child with
//! `RLIMIT_NOFILE` lowered to 256 (so `max_connections` defaults to 64 and
//! `max_connections_per_address` to 16); a real `ssh … whoami` works
//! throughout, `/health_check` from an address that is not flooding works
//! while one address floods, and every stalled connection is closed after
//! `header_timeout`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_draupnir");
const NOFILE: libc::rlim_t = 256;

/// Kills the daemon however the test ends.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_daemon(config: &std::path::Path) -> (Daemon, std::sync::mpsc::Receiver<String>) {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: NOFILE,
                rlim_max: NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (Daemon(child), rx)
}

fn wait_line(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        if line.contains(needle) {
            return line;
        }
    }
    panic!("the daemon never logged `{needle}`");
}

fn port_after(line: &str, marker: &str) -> u16 {
    line.rsplit(marker)
        .next()
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line}"))
}

async fn whoami(port: u16, key: &std::path::Path) {
    let out = tokio::process::Command::new("ssh")
        .args(common::ssh::client_opts(key, None))
        .args(["-p", &port.to_string(), "draupnir@127.0.0.1", "whoami"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", common::ssh::text(&out));
}

async fn connect_from(from: IpAddr, to: SocketAddr) -> Option<TcpStream> {
    let sock = TcpSocket::new_v4().ok()?;
    sock.bind(SocketAddr::new(from, 0)).ok()?;
    sock.connect(to).await.ok()
}

async fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, c.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_https_flood_under_a_low_fd_limit_spares_ssh() {
    let keys = tempfile::tempdir().unwrap();
    let key = common::ssh::keygen(keys.path(), "admin", "alice@test");
    let mut env = TestConfig::new()
        .ssh(&format!(
            "admin_keys = [\"{ADMIN_KEY}\", \"{}\"]",
            common::ssh::public_line(&key)
        ))
        .http("listen_address = \"127.0.0.1:0\"\nheader_timeout = \"3s\"")
        .open()
        .await;
    env.service.take().unwrap().shutdown();
    let (_daemon, rx) = spawn_daemon(&env.dir.path().join("config.toml"));
    let ssh_port = port_after(&wait_line(&rx, "ssh listening on"), "127.0.0.1:");
    let https = SocketAddr::from((
        [127, 0, 0, 1],
        port_after(&wait_line(&rx, "HTTPS API listening"), "127.0.0.1:"),
    ));
    wait_line(&rx, "draupnir is running");
    let pem = std::fs::read(env.config.state_path.join("http/tls.crt")).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .resolve("localhost", https)
        .local_address("127.0.0.200".parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let health = || async {
        client
            .get(format!("https://localhost:{}/health_check", https.port()))
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
    };
    assert!(health().await);
    whoami(ssh_port, &key).await;

    // One address floods with 300 silent connections (more than the
    // daemon has descriptors): only its 16 places are held.
    let mut flood = Vec::new();
    let one: IpAddr = "127.0.0.1".parse().unwrap();
    for _ in 0..300 {
        if let Some(c) = connect_from(one, https).await {
            flood.push(c);
        }
    }
    assert!(health().await, "another address is served meanwhile");
    whoami(ssh_port, &key).await;

    // Now 20 addresses at once, 30 each: HTTP's 64 places fill up, SSH
    // keeps its descriptors.
    for i in 2..22u8 {
        let from = IpAddr::from([127, 0, 0, i]);
        for _ in 0..30 {
            if let Some(c) = connect_from(from, https).await {
                flood.push(c);
            }
        }
    }
    for _ in 0..3 {
        whoami(ssh_port, &key).await;
    }
    assert!(flood.len() > 600, "the flood connected ({})", flood.len());
    // Every flood connection is closed by the server: over a cap at once,
    // the others at the handshake deadline.
    for (i, c) in flood.iter_mut().enumerate() {
        assert!(
            closed_within(c, Duration::from_secs(20)).await,
            "flood connection {i} still open"
        );
    }
    drop(flood);
    assert!(health().await, "HTTP serves again once the flood is gone");
    whoami(ssh_port, &key).await;
    let mut log = Vec::new();
    while let Ok(line) = rx.try_recv() {
        log.push(line);
    }
    assert!(
        !log.iter().any(|l| l.contains("ssh accept failed")),
        "SSH ran out of descriptors: {log:?}"
    );
}
