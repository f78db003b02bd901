//! The `draupnir` binary itself: config refusal, `serve` adopting running
//! instances, and SIGTERM leaving them running.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use draupnir::core::InstanceRef;

const BIN: &str = env!("CARGO_BIN_EXE_draupnir");

#[test]
fn bad_config_is_refused_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("data_pth = \"/x\"", "data_pth"),
        (
            "min_instance_port = 9000\nmax_instance_port = 8000",
            "max_instance_port",
        ),
        ("clean_interval = \"soon\"", "clean_interval"),
        (
            "[postgres]\ninstance_user = \"root\"",
            "postgres.instance_user",
        ),
    ];
    for (text, key) in cases {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    let out = Command::new(BIN)
        .args(["serve", "--config", "/nonexistent/draupnir.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/draupnir.toml"));
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("serve"));
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml.example"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_adopts_instances_and_sigterm_leaves_them_running() {
    let mut env = TestEnv::new().await;
    let admin = env.admin();
    let image = env.ready_image(None).await;
    let info = env
        .svc()
        .create_instance(&admin, InstanceRef::Id(image))
        .await
        .unwrap();
    let pid = env.svc().instance_pid(info.instance.id).unwrap();
    env.service.take().unwrap().shutdown();

    let (mut daemon, rx) = spawn_daemon(&env.dir.path().join("config.toml"));
    let mut running = false;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        if line.contains("draupnir is running") {
            running = true;
            break;
        }
    }
    assert!(running, "daemon did not come up");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = daemon.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        draupnir::core::test_support::process::alive(pid),
        "SIGTERM must not stop instances"
    );
    assert_eq!(psql_cert(&info, "SELECT 1").unwrap(), "1");
    let report = env.reopen().await;
    assert_eq!(report.adopted, vec![info.instance.id]);
}

/// Start `draupnir serve` with this config; its log lines arrive on the
/// receiver.
fn spawn_daemon(
    config: &std::path::Path,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut daemon = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = daemon.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (daemon, rx)
}

/// Wait for a log line containing `needle`; returns it.
fn wait_line(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        if line.contains(needle) {
            return line;
        }
    }
    panic!("the daemon never logged `{needle}`");
}

fn ssh_whoami(port: u16, key: &std::path::Path) -> std::process::Output {
    Command::new("ssh")
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .arg("-p")
        .arg(port.to_string())
        .arg("-i")
        .arg(key)
        .args(["draupnir@127.0.0.1", "whoami"])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_a_key_without_a_restart() {
    let mut env = TestEnv::new().await;
    env.service.take().unwrap().shutdown();
    let config = env.dir.path().join("config.toml");
    let (mut daemon, rx) = spawn_daemon(&config);
    let listening = wait_line(&rx, "ssh listening on");
    let port: u16 = listening
        .rsplit("127.0.0.1:")
        .next()
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {listening}"));
    wait_line(&rx, "draupnir is running");

    let keys = tempfile::tempdir().unwrap();
    let key = common::ssh::keygen(keys.path(), "newadmin", "newadmin@test");
    assert_eq!(
        ssh_whoami(port, &key).status.code(),
        Some(255),
        "unknown key refused"
    );

    // A broken config is refused; the running one stays.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{good}\nno_such_key = 1\n")).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_line(&rx, "configuration not reloaded");

    // Add the key (and change a key that needs a restart).
    let with_key = good.replacen(
        "admin_keys = [",
        &format!(
            "max_auth_attempts = 3\nadmin_keys = [\"{}\", ",
            common::ssh::public_line(&key)
        ),
        1,
    );
    std::fs::write(&config, with_key).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let reloaded = wait_line(&rx, "configuration reloaded");
    assert!(reloaded.contains("ssh.admin_keys"), "{reloaded}");
    assert!(reloaded.contains("ssh.max_auth_attempts"), "{reloaded}");
    let out = ssh_whoami(port, &key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("(admin)"));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(daemon.wait().unwrap().success());
}
