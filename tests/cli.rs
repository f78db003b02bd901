//! Operator-facing CLI bits: shell completions and the man page come from
//! the clap definitions; `serve --log-format json` logs JSON lines and
//! tells systemd READY=1 (then STOPPING=1) on $NOTIFY_SOCKET.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_draupnir");

fn stdout_of(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_and_man_page() {
    let bash = stdout_of(&["completions", "bash"]);
    assert!(
        bash.contains("_draupnir") && bash.contains("backup-state"),
        "{bash}"
    );
    let zsh = stdout_of(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef draupnir"), "{zsh}");
    let fish = stdout_of(&["completions", "fish"]);
    assert!(fish.contains("doctor"));
    let man = stdout_of(&["man"]);
    assert!(man.contains(".TH draupnir"), "{man}");
    assert!(man.contains("doctor") && man.contains("serve"));
    let out = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_json_and_notifies_systemd() {
    let mut env = TestEnv::new().await;
    env.service.take().unwrap().shutdown();
    let sock_path = env.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut daemon = Command::new(BIN)
        .args(["serve", "--log-format", "json", "--config"])
        .arg(env.dir.path().join("config.toml"))
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 60s");
    assert_eq!(&buf[..n], b"READY=1");
    let stderr = daemon.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(daemon.wait().unwrap().success());
    let lines: Vec<String> = rx.iter().collect();
    assert!(!lines.is_empty());
    let mut running = false;
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        running |= v["fields"]["message"] == "draupnir is running";
    }
    assert!(running, "{lines:?}");
}

/// `rotate-masking-key` makes a new key (mode 0600, 32 bytes) in
/// state_path, different each time; `check-config` refuses a rules file
/// that does not parse with one line naming its line.
#[test]
fn masking_key_rotation_and_a_bad_rules_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "data_path = \"{0}/data\"\nstate_path = \"{0}/state\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let key = state.join("masking.key");
    let mut seen = Vec::new();
    for _ in 0..2 {
        let out = stdout_of(&["rotate-masking-key", "-c", cfg]);
        assert!(out.contains("masking.key"), "{out}");
        let meta = std::fs::metadata(&key).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let bytes = std::fs::read(&key).unwrap();
        assert_eq!(bytes.len(), 32);
        seen.push(bytes);
    }
    assert_ne!(seen[0], seen[1], "a new key each time");

    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, "[app.users]\nid = \"keep\"\nemail = \"emial\"\n").unwrap();
    std::fs::write(
        &config,
        format!(
            "data_path = \"{0}/data\"\nstate_path = \"{0}/state\"\n[masking]\nrules_file = \"{1}\"\n",
            dir.path().display(),
            rules.display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "-c", cfg])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("line 3") && err.contains("email"), "{err}");
}
