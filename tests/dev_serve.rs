//! `packaging/dev-serve.sh`: it runs the daemon in the foreground, says in
//! one line when it is ready (with an `ssh` and a `curl` to try), and
//! `--remove` takes away everything it made: the daemon, the loop-mounted
//! data file, the state, the instance user and the config.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_draupnir");

fn script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/dev-serve.sh").to_string()
}

fn user_exists(name: &str) -> bool {
    Command::new("getent")
        .args(["passwd", name])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn dev_serve_says_when_it_is_ready_and_remove_takes_everything_away() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("var-lib-draupnir");
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    let key = common::ssh::keygen(&home.join(".ssh"), "id_ed25519", "dev");
    assert!(key.exists());
    let base = port_base();
    let (ssh_port, http_port) = (base + 38, base + 39);
    let user = format!("drp-dev{}", base);
    let config = dir.path().join("dev/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!(
            r#"data_path = "{r}/data"
state_path = "{r}/state"
loopback_size = "1G"
public_hostname = "localhost"
min_instance_port = {base}
max_instance_port = {max}
[ssh]
listen_address = "127.0.0.1:{ssh_port}"
host_key_path = "{r}/keys/ssh_host_ed25519_key"
admin_keys = ["{pub_key}"]
[http]
listen_address = "127.0.0.1:{http_port}"
[postgres]
instance_user = "{user}"
"#,
            r = root.display(),
            pub_key = common::ssh::public_line(&key),
            max = base + 30,
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut c = Command::new("bash");
        c.arg(script())
            .args(args)
            .env("DRAUPNIR_BIN", BIN)
            .env("DRAUPNIR_DEV_CONFIG", &config)
            .env("HOME", &home)
            .env_remove("SUDO_USER")
            .env_remove("RUST_LOG");
        c
    };

    let mut serve = run(&[])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(serve.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    let ready = loop {
        assert!(Instant::now() < deadline, "no ready line: {seen:#?}");
        let line = lines.next().expect("output ends before ready").unwrap();
        if line.starts_with("draupnir is ready:") {
            break line;
        }
        seen.push(line);
    };
    assert!(
        ready.contains(&format!("ssh -p {ssh_port} localhost help")),
        "{ready}"
    );
    assert!(
        ready.contains(&format!(
            "curl -sk https://localhost:{http_port}/health_check"
        )),
        "{ready}"
    );
    // Start-up says what reconcile did in words, never a Debug struct.
    assert!(
        seen.iter().any(|l| l.contains("reconciled: nothing to do")),
        "{seen:#?}"
    );
    assert!(
        !seen.iter().any(|l| l.contains("ReconcileReport")),
        "{seen:#?}"
    );
    let data = root.join("data");
    assert!(is_mounted(&data));
    let host_key = root.join("keys/ssh_host_ed25519_key");
    assert!(host_key.exists());
    assert!(user_exists(&user));
    // The rest of the log is drained so the daemon never blocks on it.
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());

    // A client that names the server by IP address in its SNI (RFC 6066
    // forbids it; rustls ignores the name): no warning in the log.
    let o = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{http_port}")])
        .args(["-servername", "127.0.0.1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("BEGIN CERTIFICATE"),
        "{}",
        common::ssh::text(&o)
    );

    // An instance, whose postgres keeps running when the daemon stops.
    let ssh = |args: &[&str], stdin: &[u8]| {
        let mut c = Command::new("ssh");
        c.args(common::ssh::client_opts(&key, None))
            .args(["-p", &ssh_port.to_string(), "draupnir@127.0.0.1"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", common::ssh::text(&o));
        o
    };
    let o = ssh(&["new-image", "--no-anonymisation", "--json"], b"");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let image = v["id"].as_str().unwrap().to_string();
    ssh(&["upload-image", &image], &FIXTURE.tar_gz);
    ssh(&["finalise-image", &image], b"");
    ssh(&["new-instance", "latest"], b"");
    let postmasters = postmaster_pids(&data);
    assert_eq!(postmasters.len(), 1, "one instance postgres");

    let out = run(&["--remove"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("stopping the daemon"), "{said}");
    assert!(said.contains("removed"), "{said}");
    // The foreground script ended with its daemon.
    let status = serve.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let log = drain.join().unwrap();
    assert!(!log.iter().any(|l| l.contains("Illegal SNI")), "{log:#?}");
    assert!(
        log.iter().any(|l| l.contains("SIGTERM: stopping")),
        "{log:#?}"
    );
    assert!(!is_mounted(&data));
    for pid in postmasters {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "postgres {pid} still runs"
        );
    }
    assert!(!host_key.exists());
    assert!(!data.exists() && !root.join("state").exists());
    // Only the (here test-made) directory of the host key is left; in the
    // development config it is the repository's keys/.
    let left: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["keys"]);
    assert!(!user_exists(&user), "{user} is still there");
    assert!(!config.exists() && !Path::new(&format!("{}.pid", config.display())).exists());

    // Nothing left: --remove says so; a bad argument is a usage error.
    let out = run(&["--remove"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to remove"));
    let out = run(&["--bogus"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

/// The pids in the postmaster.pid files beneath `data` (instances).
fn postmaster_pids(data: &Path) -> Vec<i32> {
    let out = Command::new("find")
        .arg(data)
        .args(["-maxdepth", "4", "-name", "postmaster.pid"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .filter_map(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
        .collect()
}
