//! The SSH command set, run in-process on real streams: output shapes,
//! `--help`, `--json`, exit statuses and one-line errors. (tests/ssh_*.rs
//! drive the same commands through the real OpenSSH client.)

mod common;

use std::process::Command;

use common::*;
use draupnir::core::Actor;
use draupnir::ssh::commands::{self, Io, Session};

struct Ran {
    code: u32,
    out: String,
    err: String,
}

async fn run(env: &TestEnv, who: &Actor, line: &str, stdin: &[u8]) -> Ran {
    let session = Session {
        service: env.svc().clone(),
        actor: who.clone(),
        peer: Some("192.0.2.7".parse().unwrap()),
        ssh_port: 2222,
    };
    let argv = shell_words::split(line).unwrap();
    let mut input = stdin;
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = commands::run(
        &session,
        argv,
        Io {
            stdin: &mut input,
            stdout: &mut out,
            stderr: &mut err,
        },
    )
    .await;
    Ran {
        code,
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
    }
}

fn carol_probe(env: &TestEnv) -> Actor {
    env.user("carol")
}

fn assert_one_line_error(r: &Ran, code: u32, needle: &str) {
    assert_eq!(r.code, code, "exit status; stderr: {}", r.err);
    assert_eq!(r.err.lines().count(), 1, "one line: {:?}", r.err);
    assert!(r.err.starts_with("draupnir: "), "{}", r.err);
    assert!(
        r.err.contains(needle),
        "`{}` should mention `{needle}`",
        r.err.trim()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_story_through_commands() {
    let env = TestEnv::new().await;
    let admin = env.admin();
    let r = run(
        &env,
        &admin,
        "new-image --script -",
        b"DELETE FROM orders WHERE user_id > 5; DELETE FROM users WHERE id > 5;",
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.out.contains("image 1 created"), "{}", r.out);
    assert!(
        r.out.contains("backup.tar.gz localhost:images/1"),
        "{}",
        r.out
    );
    let r = run(&env, &admin, "upload-image 1", &FIXTURE.tar_gz).await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.out.contains("into image 1"), "{}", r.out);
    let r = run(&env, &admin, "finalise-image 1", b"").await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(
        r.out.contains("==> running anonymisation script"),
        "{}",
        r.out
    );
    assert!(
        r.out.contains("DELETE 95"),
        "psql output is streamed: {}",
        r.out
    );
    assert!(
        r.out.contains("image 1 is ready (PostgreSQL 15"),
        "{}",
        r.out
    );
    let r = run(&env, &admin, "done 1 --json", b"").await;
    let v: serde_json::Value = serde_json::from_str(&r.out).unwrap();
    assert_eq!(v["ready"], true);

    let bob = env.user("bob");
    let r = run(&env, &bob, "new-instance latest", b"").await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(
        r.out.contains("instance 1 of image 1 is running"),
        "{}",
        r.out
    );
    assert!(
        r.out
            .contains("eval \"$(ssh -p 2222 localhost env 1)\" && psql"),
        "{}",
        r.out
    );
    let r = run(&env, &bob, "extend-instance 1 4h", b"").await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.out.contains("now lives until"), "{}", r.out);
    assert_one_line_error(
        &run(&env, &bob, "extend-instance 1 soon", b"").await,
        2,
        "duration",
    );
    let r = run(&env, &bob, "status --json", b"").await;
    let v: serde_json::Value = serde_json::from_str(&r.out).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["newest_ready_image"], 1);
    let r = run(&env, &bob, "env 1", b"").await;
    assert_eq!(r.code, 0, "{}", r.err);
    // eval it in a real POSIX shell and run psql with nothing else set.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("env.sh");
    std::fs::write(&script, &r.out).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "eval \"$(cat {})\" && test \"$(stat -c %a \"$PGSSLKEY\")\" = 600 && PGHOST=127.0.0.1 psql -X -At -c 'SELECT count(*) FROM users'",
            script.display()
        ))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("TMPDIR", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5");
    for var in [
        "PGHOST='localhost'",
        "PGUSER='draupnir'",
        "PGSSLMODE=verify-ca",
        "PGSSLROOTCERT=",
        "PGSSLCERT=",
        "PGSSLKEY=",
        "PGDATABASE=",
        "PGPORT=",
    ] {
        assert!(
            r.out.contains(&format!("export {var}")),
            "{var} missing: {}",
            r.out
        );
    }
    let r = run(&env, &bob, "env 1 --json", b"").await;
    let v: serde_json::Value = serde_json::from_str(&r.out).unwrap();
    assert!(v["client_key"].as_str().unwrap().contains("PRIVATE KEY"));
    assert_eq!(v["sslmode"], "verify-ca");

    let r = run(&env, &bob, "instances", b"").await;
    assert!(r.out.starts_with("ID  IMAGE  STATE    PORT"), "{}", r.out);
    assert!(
        r.out.contains("running") && r.out.contains("bob"),
        "{}",
        r.out
    );
    let r = run(&env, &bob, "instance 1", b"").await;
    assert!(
        r.out.contains("192.0.2.7"),
        "the client's address is recorded: {}",
        r.out
    );
    let r = run(&env, &bob, "allow-ip 1 ::ffff:198.51.100.4", b"").await;
    assert_eq!(
        r.out, "198.51.100.4 may now reach instance 1\n",
        "{}",
        r.err
    );
    assert_one_line_error(
        &run(&env, &bob, "allow-ip 1 0.0.0.0", b"").await,
        2,
        "cannot be allow-listed",
    );
    assert_one_line_error(
        &run(&env, &bob, "allow-ip 1 banana", b"").await,
        2,
        "not an IP address",
    );
    assert_one_line_error(
        &run(&env, &carol_probe(&env), "allow-ip 1 198.51.100.9", b"").await,
        1,
        "not found",
    );
    let r = run(&env, &bob, "disallow-ip 1 198.51.100.4", b"").await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert_one_line_error(
        &run(&env, &bob, "disallow-ip 1 198.51.100.4", b"").await,
        1,
        "not found",
    );
    let r = run(&env, &bob, "instances --json", b"").await;
    let v: serde_json::Value = serde_json::from_str(&r.out).unwrap();
    assert_eq!(v[0]["image_id"], 1);
    assert_eq!(v[0]["hostname"], "localhost");
    assert!(v[0]["port"].as_u64().is_some());

    // Another user sees nothing of bob's.
    let carol = env.user("carol");
    let r = run(&env, &carol, "instances", b"").await;
    assert_eq!(r.out.lines().count(), 1, "{}", r.out);
    assert_one_line_error(
        &run(&env, &carol, "env 1", b"").await,
        1,
        "instance 1 not found",
    );
    assert_one_line_error(
        &run(&env, &carol, "destroy-instance 1", b"").await,
        1,
        "not found",
    );
    assert_one_line_error(&run(&env, &carol, "instance 1", b"").await, 1, "not found");
    assert_one_line_error(
        &run(&env, &carol, "instances --all", b"").await,
        1,
        "admin only",
    );
    assert_one_line_error(&run(&env, &carol, "new-image", b"").await, 1, "admin only");
    assert_one_line_error(
        &run(&env, &carol, "upload-image 1", &FIXTURE.tar).await,
        1,
        "admin only",
    );

    let r = run(&env, &bob, "destroy-instance 1", b"").await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(r.out, "instance 1 destroyed\n");
    let r = run(&env, &admin, "images", b"").await;
    assert!(r.out.starts_with("ID  STATE"), "{}", r.out);
    assert!(r.out.contains("ready"), "{}", r.out);
    let r = run(&env, &admin, "destroy-image 1", b"").await;
    assert_eq!(r.code, 0, "{}", r.err);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_usage_errors_and_users() {
    let env = TestEnv::new().await;
    let admin = env.admin();
    for line in ["", "help"] {
        let r = run(&env, &admin, line, b"").await;
        assert_eq!(r.code, 0);
        assert!(r.out.contains("new-instance IMAGE_ID|latest"), "{}", r.out);
    }
    for name in [
        "images",
        "image",
        "new-image",
        "upload-image",
        "finalise-image",
        "done",
        "reset-upload",
        "destroy-image",
        "instances",
        "new-instance",
        "instance",
        "env",
        "destroy-instance",
        "whoami",
        "users",
        "add-user",
        "remove-user",
        "add-key",
        "remove-key",
        "keys",
        "token",
        "version",
    ] {
        let r = run(&env, &admin, &format!("{name} --help"), b"").await;
        assert_eq!(r.code, 0, "{name} --help: {}", r.err);
        assert!(r.out.contains("Usage: ssh draupnir"), "{name}: {}", r.out);
    }
    assert_one_line_error(
        &run(&env, &admin, "frobnicate", b"").await,
        2,
        "unknown command `frobnicate`",
    );
    assert_one_line_error(
        &run(&env, &admin, "new-instance", b"").await,
        2,
        "usage: ssh draupnir new-instance",
    );
    assert_one_line_error(
        &run(&env, &admin, "new-instance abc", b"").await,
        2,
        "not an id",
    );
    assert_one_line_error(
        &run(&env, &admin, "destroy-instance -3", b"").await,
        2,
        "usage",
    );
    assert_one_line_error(
        &run(&env, &admin, "instance 12 --bogus", b"").await,
        2,
        "--bogus",
    );
    assert_one_line_error(
        &run(&env, &admin, "new-instance 77", b"").await,
        1,
        "image 77 not found",
    );
    assert_one_line_error(
        &run(&env, &admin, "finalise-image 77", b"").await,
        1,
        "image 77 not found",
    );
    assert_one_line_error(
        &run(&env, &admin, "new-image --backed-up-at yesterday", b"").await,
        2,
        "RFC 3339",
    );
    let r = run(
        &env,
        &admin,
        "new-image --backed-up-at 2026-11-21T02:00:00Z --json",
        b"",
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&r.out).unwrap();
    assert_eq!(v["backed_up_at"], "2026-11-21T02:00:00Z");
    assert_eq!(v["state"], "uploading");
    assert_one_line_error(
        &run(&env, &admin, "new-instance 1", b"").await,
        1,
        "not ready",
    );
    assert_one_line_error(
        &run(&env, &admin, "upload-image 1", b"not a tarball at all").await,
        1,
        "upload failed",
    );
    let r = run(&env, &admin, "image 1", b"").await;
    assert!(
        r.out.contains("state     failed") && r.out.contains("reason"),
        "{}",
        r.out
    );
    let r = run(&env, &admin, "reset-upload 1", b"").await;
    assert_eq!(r.code, 0, "{}", r.err);

    // Users and keys.
    let r = run(&env, &admin, "add-user dave --email dave@example.com", b"").await;
    assert_eq!(r.code, 0, "{}", r.err);
    let key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE9Yh1l0F1m3mWbVQe1lY6n8r1G0Zf2Vb5tq9c3p6Kxd dave@x";
    let r = run(&env, &admin, "add-key dave", key.as_bytes()).await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.out.contains("SHA256:"), "{}", r.out);
    assert_one_line_error(
        &run(&env, &admin, "add-key dave", b"").await,
        2,
        "no public key",
    );
    assert_one_line_error(
        &run(&env, &admin, "add-key dave", b"ssh-ed25519 AAAA!!").await,
        1,
        "base64",
    );
    assert_one_line_error(
        &run(&env, &admin, "add-user dave", b"").await,
        1,
        "already exists",
    );
    let r = run(&env, &admin, "users --json", b"").await;
    let v: serde_json::Value = serde_json::from_str(&r.out).unwrap();
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["name"] == "dave" && u["email"] == "dave@example.com"));
    let r = run(&env, &admin, "users", b"").await;
    assert!(r.out.starts_with("NAME"), "{}", r.out);
    let r = run(&env, &admin, "keys dave --json", b"").await;
    let v: serde_json::Value = serde_json::from_str(&r.out).unwrap();
    let fp = v[0]["fingerprint"].as_str().unwrap().to_string();
    let dave = env.svc().actor_for("dave").unwrap().unwrap();
    let r = run(&env, &dave, "whoami", b"").await;
    assert_eq!(r.out, "dave (user) <dave@example.com>, 1 key(s)\n");
    assert_one_line_error(&run(&env, &dave, "users", b"").await, 1, "admin only");
    assert_one_line_error(&run(&env, &dave, "keys alice", b"").await, 1, "admin only");
    let r = run(&env, &dave, "token", b"").await;
    let token = r.out.lines().next().unwrap();
    assert_eq!(
        env.svc().authenticate_token(token).unwrap().unwrap().name,
        "dave"
    );
    let r = run(&env, &admin, &format!("remove-key {fp}"), b"").await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert_one_line_error(
        &run(&env, &admin, &format!("remove-key {fp}"), b"").await,
        1,
        "not found",
    );
    let r = run(&env, &admin, "remove-user dave", b"").await;
    assert_eq!(r.code, 0, "{}", r.err);
    let r = run(&env, &admin, "version", b"").await;
    assert!(r.out.starts_with("draupnir "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints command output for a human to look at"]
async fn show_outputs() {
    let env = TestEnv::new().await;
    let admin = env.admin();
    for line in [
        "help",
        "new-instance",
        "new-instance abc",
        "instance 1 --bogus",
        "frobnicate",
        "new-instance --help",
        "images",
        "new-image --script 'select 1'",
        "images",
        "whoami",
        "keys",
    ] {
        let r = run(&env, &admin, line, b"").await;
        println!(
            "$ ssh draupnir {line}   [exit {}]\n{}{}",
            r.code, r.out, r.err
        );
    }
}
