//! `draupnir doctor` against a healthy setup and a broken one where each
//! check is made to fail once (the clock check cannot be faked without
//! changing the host's time, so it is only seen passing).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_draupnir");

/// Run doctor on `text`; returns (exit code, stdout).
fn doctor(dir: &Path, name: &str, text: &str, json: bool) -> (Option<i32>, String) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["doctor", "--config"]).arg(&path);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

fn failing(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.starts_with("FAIL"))
        .map(|l| l.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_then_each_check_broken_once() {
    let env = TestEnv::new().await;
    let dir = env.dir.path();
    let key = draupnir::ssh::hostkey::load_or_generate(&env.config.ssh.host_key_path).unwrap();
    let fingerprint = key.fingerprint(russh::keys::HashAlg::Sha256).to_string();

    // Healthy: every line is `ok`, exit 0, the host key's fingerprint shown.
    let (code, out) = doctor(dir, "healthy.toml", &env.config_text, false);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.lines().all(|l| l.starts_with("ok ")), "{out}");
    for name in [
        "config",
        "data_path",
        "free space",
        "postgres",
        "instance_user",
        "confinement",
        "sqlite",
        "iptables",
        "ssh port",
        "http port",
        "host key",
        "clock",
    ] {
        assert!(
            out.lines().any(|l| l[5..].starts_with(name)),
            "{name} missing: {out}"
        );
    }
    assert!(out.contains(&fingerprint), "{out}");
    assert!(out.contains("integrity ok"), "{out}");
    // This kernel (6.18) has Landlock ABI 7: the box holds files, TCP
    // ports, signals and abstract sockets.
    assert!(
        out.contains("Landlock ABI") && out.contains("signals and abstract sockets"),
        "{out}"
    );
    let (code, json) = doctor(dir, "healthy.toml", &env.config_text, true);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["ok"], true);
    assert!(v["checks"].as_array().unwrap().len() >= 11);

    let d = dir.display().to_string();
    let base = env.config_text.clone();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_addr = held.local_addr().unwrap();
    std::fs::create_dir_all(dir.join("state-corrupt")).unwrap();
    std::fs::write(
        dir.join("state-corrupt/draupnir.sqlite3"),
        vec![0x5au8; 8192],
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("plain")).unwrap();

    let cases: Vec<(&str, String, &str)> = vec![
        ("config", format!("{base}\ndata_pth = \"/x\"\n"), "data_pth"),
        (
            "data_path",
            base.replace(&format!("\"{d}/data\""), &format!("\"{d}/plain\""))
                .replace("loopback_size = \"1G\"", ""),
            "not on btrfs",
        ),
        (
            "postgres",
            base.replace("[postgres]", "[postgres]\nbin_root = \"/nonexistent/pg\""),
            "/nonexistent/pg",
        ),
        (
            "instance_user",
            base.replace(
                &format!("instance_user = \"{INSTANCE_USER}\""),
                "instance_user = \"drp-nobody-here\"",
            ),
            "drp-nobody-here",
        ),
        (
            "sqlite",
            base.replace(&format!("\"{d}/state\""), &format!("\"{d}/state-corrupt\"")),
            "state-corrupt",
        ),
        (
            "free space",
            format!("min_free_space = \"100000G\"\n{base}"),
            "min_free_space",
        ),
        (
            "ssh port",
            base.replacen(
                "listen_address = \"127.0.0.1:0\"",
                &format!("listen_address = \"{held_addr}\""),
                1,
            ),
            "in use",
        ),
    ];
    for (check, text, needle) in cases {
        let (code, out) = doctor(dir, "broken.toml", &text, false);
        assert_eq!(code, Some(1), "{check}: {out}");
        let fails = failing(&out);
        assert_eq!(fails.len(), 1, "{check}: only that check fails: {out}");
        assert!(fails[0][5..].starts_with(check), "{check}: {out}");
        assert!(fails[0].contains(needle), "{check}: {out}");
        assert!(fails[0].contains(" — fix: "), "{check}: {out}");
    }
    drop(held);

    // data_path not on btrfs: free space is not judged by the host's disk
    // (above, only data_path failed whatever the host has free). With a
    // loopback file it is judged by the room that file has to grow.
    let plain = base
        .replace(&format!("\"{d}/data\""), &format!("\"{d}/plain\""))
        .replace("loopback_size = \"1G\"", "");
    let (_, out) = doctor(dir, "broken.toml", &plain, false);
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok   free space") && l.contains("not checked")),
        "{out}"
    );
    let with_loop = |size: &str| {
        let text = format!("loopback_size = \"{size}\"\n{plain}");
        doctor(dir, "loop.toml", &text, false)
    };
    let (code, out) = with_loop("1G");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("for the loopback file to grow"), "{out}");
    let (code, out) = with_loop("100000T");
    assert_eq!(code, Some(1), "{out}");
    let fails = failing(&out);
    assert_eq!(fails.len(), 1, "{out}");
    assert!(
        fails[0][5..].starts_with("free space") && fails[0].contains("loopback_size"),
        "{out}"
    );

    // The metadata file gone while data_path holds volumes: a failure
    // pointing at backup-state.
    let admin = env.admin();
    env.svc()
        .create_image(&admin, NewImage::not_personal())
        .unwrap();
    let text = base.replace(&format!("\"{d}/state\""), &format!("\"{d}/state-empty\""));
    let (code, out) = doctor(dir, "missing.toml", &text, false);
    assert_eq!(code, Some(1), "{out}");
    let fails = failing(&out);
    assert_eq!(fails.len(), 1, "{out}");
    assert!(
        fails[0].contains("sqlite") && fails[0].contains("backup-state"),
        "{out}"
    );
}
