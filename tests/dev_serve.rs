//! `packaging/dev-serve.sh`: it runs the daemon in the foreground, says in
//! one line when it is ready (with an `ssh` and a `curl` to try), and
//! `--remove` takes away everything it made: the daemon, the loop-mounted
//! data file, the state, the instance user and the config.

mod common;

use std::io::{BufRead, BufReader};
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
host_key_path = "keys/ssh_host_ed25519_key"
admin_keys = ["{ADMIN_KEY}"]
[http]
listen_address = "127.0.0.1:{http_port}"
[postgres]
instance_user = "{user}"
"#,
            r = root.display(),
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
    assert!(user_exists(&user));
    // The rest of the log is drained so the daemon never blocks on it.
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());

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
    drain.join().unwrap();
    assert!(!is_mounted(&data));
    assert!(!data.exists() && !root.join("state").exists() && !root.exists());
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
