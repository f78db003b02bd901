//! `max_instance_disk` (issue 17, item 4): one tenant writing without end
//! gets PostgreSQL's disk-full error from its own limit, while its
//! instance stays up and a neighbour of the same image never notices.
//!
//! Real: btrfs (loopback) with simple quotas, real postmasters, the real
//! `psql` with the instance's client certificate, `ssh … instances`.

mod common;

use std::time::Duration;

use common::ssh::SshEnv;
use common::*;
use draupnir::core::test_support::btrfs;
use draupnir::core::InstanceState;
use draupnir::core::{ConnectionInfo, InstanceId, InstanceRef};
use serde_json::Value;

/// PostgreSQL's answer when a write does not fit: the kernel's EDQUOT /
/// ENOSPC text, or the short write it reports as "could not extend file".
fn is_disk_full(err: &str) -> bool {
    err.contains("Disk quota exceeded")
        || err.contains("No space left on device")
        || (err.contains("could not extend file") && err.contains("Check free disk space"))
}

/// Retry `sql` until it succeeds (postgres may be finishing crash
/// recovery after its limit stopped it), at most a minute.
fn eventually(env: &SshEnv, info: &ConnectionInfo, sql: &str) -> String {
    let log = env
        .env
        .config
        .state_path
        .join(format!("logs/instance-{}.log", info.instance.id));
    let mut last = String::new();
    for _ in 0..120 {
        match psql_cert(info, sql) {
            Ok(out) => return out,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let tail = draupnir::core::test_support::process::log_tail(&log, 40);
    panic!("`{sql}` never succeeded: {last}\n{tail}");
}

/// `instances --json`, after a file system commit (quota groups are
/// updated at commits).
async fn listing(env: &SshEnv) -> Vec<Value> {
    fs_used(&env.env.data());
    let out = env.ssh(&env.admin_key, &["instances", "--json"]).await;
    assert!(out.status.success(), "{}", ssh::text(&out));
    serde_json::from_slice::<Value>(&out.stdout)
        .expect("json")
        .as_array()
        .expect("array")
        .clone()
}

fn disk_of(list: &[Value], id: InstanceId) -> (u64, u64) {
    let row = list
        .iter()
        .find(|r| r["id"] == id.to_string())
        .unwrap_or_else(|| panic!("instance {id} listed: {list:?}"));
    (
        row["disk_bytes"].as_u64().expect("disk_bytes"),
        row["disk_limit_bytes"].as_u64().expect("disk_limit_bytes"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_hits_its_limit_and_stays_up_while_its_neighbour_never_notices() {
    let env = SshEnv::with("max_instance_disk = \"64M\"", "").await;
    let image = env.env.ready_image(None).await;
    let admin = env.admin();
    let writer = env
        .svc()
        .create_instance(&admin, InstanceRef::Id(image))
        .await
        .expect("writer");
    let neighbour = env
        .svc()
        .create_instance(&admin, InstanceRef::Id(image))
        .await
        .expect("neighbour");
    let (w, n) = (writer.instance.id, neighbour.instance.id);

    psql_cert(&writer, "CREATE TABLE t (x text)").expect("create");
    psql_cert(&neighbour, "CREATE TABLE n (x int)").expect("create");

    // ~5 MB a statement; 64M is reached well within 40. When postgres
    // itself stops on the limit (a WAL write or a checkpoint that does not
    // fit: PANIC) the client sees the connection end, or recovery, and
    // writes on once it serves again: its statements must then get the
    // disk-full error.
    let mut error = None;
    let mut interruptions = Vec::new();
    for _ in 0..60 {
        let r = psql_cert(
            &writer,
            "INSERT INTO t SELECT repeat(md5(random()::text), 32) FROM generate_series(1, 5000)",
        );
        // The neighbour connects and writes throughout.
        psql_cert(&neighbour, "INSERT INTO n VALUES (1)").expect("neighbour writes");
        match r {
            Ok(_) => {}
            Err(e) if is_disk_full(&e) => {
                error = Some(e);
                break;
            }
            Err(e) => {
                interruptions.push(e);
                eventually(&env, &writer, "SELECT 1");
            }
        }
    }
    let error = error.unwrap_or_else(|| panic!("no disk-full error; {interruptions:?}"));
    assert!(is_disk_full(&error), "postgres's disk-full error: {error}");
    assert!(interruptions.len() < 10, "{interruptions:?}");

    // The writer's instance is up: it answers (after crash recovery, if
    // its limit stopped postgres itself) and is listed running.
    assert_eq!(eventually(&env, &writer, "SELECT 1"), "1");
    let inst = env.svc().instance(&admin, w).unwrap();
    assert_eq!(inst.state, InstanceState::Running, "{inst:?}");

    // `instances` shows the disk use: the writer at its limit, the
    // neighbour far below; both with the limit.
    let list = listing(&env).await;
    let (w_used, w_limit) = disk_of(&list, w);
    let (n_used, n_limit) = disk_of(&list, n);
    assert_eq!((w_limit, n_limit), (64 << 20, 64 << 20));
    assert!(w_used > 48 << 20, "writer used {w_used}");
    assert!(n_used < 16 << 20, "neighbour used {n_used}");

    // Still over its limit, the writer cannot grow without end.
    let r = psql_cert(
        &writer,
        "INSERT INTO t SELECT repeat(md5(random()::text), 32) FROM generate_series(1, 100000)",
    );
    let e = r.expect_err("100 MB more does not fit");
    // Its statement's error, or (postgres itself stopped on the limit)
    // the connection ends; either way nothing past the limit is kept.
    assert!(
        is_disk_full(&e)
            || e.contains("server closed the connection")
            || e.contains("connection to server was lost")
            || e.contains("because of crash of another server process"),
        "{e}"
    );

    // After making room, the writer writes again.
    eventually(&env, &writer, "TRUNCATE t");
    eventually(&env, &writer, "INSERT INTO t VALUES ('again')");
    assert_eq!(
        eventually(&env, &writer, "SELECT x FROM t"),
        "again",
        "the writer writes after TRUNCATE"
    );

    // The neighbour: new connections, writes, all its rows.
    let count = psql_cert(
        &neighbour,
        "INSERT INTO n VALUES (2); SELECT count(*) FROM n",
    )
    .expect("neighbour");
    let count = count.lines().last().unwrap_or("");
    assert!(count.parse::<u32>().unwrap_or(0) >= 2, "{count}");
    for id in [w, n] {
        let inst = env.svc().instance(&admin, id).unwrap();
        assert_eq!(inst.state, InstanceState::Running, "{inst:?}");
    }

    // A reset instance (a new subvolume) is limited as well.
    env.svc().reset_instance(&admin, w).await.expect("reset");
    let list = listing(&env).await;
    let (used, limit) = disk_of(&list, w);
    assert_eq!(limit, 64 << 20);
    assert!(used < 16 << 20, "fresh after reset: {used}");
    let data = env.env.data();
    let subvol = btrfs::subvolume_id(&data.join(format!("instances/{w}"))).unwrap();
    let kernel = btrfs::qgroup_usage(&data).unwrap();
    assert_eq!(kernel[&subvol].max_exclusive, Some(64 << 20), "{kernel:?}");

    // The text listing has the DISK column.
    let out = env.ssh(&env.admin_key, &["instances"]).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.lines().next().unwrap_or("").contains("DISK"), "{text}");
    assert!(text.contains("of 64.0 MiB"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_limit_disk_use_is_not_shown_and_nothing_is_limited() {
    let env = SshEnv::with("", "").await;
    let image = env.env.ready_image(None).await;
    let admin = env.admin();
    let i = env
        .svc()
        .create_instance(&admin, InstanceRef::Id(image))
        .await
        .expect("instance");
    let list = listing(&env).await;
    let row = list
        .iter()
        .find(|r| r["id"] == i.instance.id.to_string())
        .unwrap();
    assert!(row["disk_bytes"].is_null(), "{row}");
    assert!(row["disk_limit_bytes"].is_null(), "{row}");
    let out = env.ssh(&env.admin_key, &["instances"]).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("DISK"), "{text}");
}

#[test]
fn a_limit_below_64m_is_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = TestConfig::new()
        .top("max_instance_disk = \"1M\"")
        .text(dir.path());
    let err = draupnir::config::Config::parse(&text)
        .expect_err("1M is refused")
        .to_string();
    assert!(err.contains("max_instance_disk"), "{err}");
    assert!(!err.trim().contains('\n'), "{err}");
    let text = TestConfig::new()
        .top("max_instance_disk = \"lots\"")
        .text(dir.path());
    let err = draupnir::config::Config::parse(&text)
        .expect_err("not a size")
        .to_string();
    assert!(err.contains("max_instance_disk"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_says_simple_quotas_are_on_when_a_limit_is_set() {
    let env = TestEnv::with("max_instance_disk = \"1G\"").await;
    let checks = draupnir::core::doctor::run_with(
        &env.config,
        std::path::Path::new("/nonexistent/config.toml"),
    );
    let check = checks
        .iter()
        .find(|c| c.name == "disk limits")
        .expect("a disk limits check");
    assert!(check.ok, "{check:?}");
    assert!(check.detail.contains("simple quotas are on"), "{check:?}");

    let plain = TestEnv::new().await;
    let checks = draupnir::core::doctor::run_with(
        &plain.config,
        std::path::Path::new("/nonexistent/config.toml"),
    );
    assert!(
        !checks.iter().any(|c| c.name == "disk limits"),
        "no check without the key"
    );
}
