//! Following production (`[sources.NAME]`): a streaming standby of a real
//! primary (PostgreSQL 15 on loopback TCP, a replication role with a
//! scram password in a passfile, a physical slot), `sources`, and
//! `refresh-image` over the real `ssh`: rows committed on the primary
//! just before the refresh are in the new image, masked; the primary's
//! restart is seen and survived; a source that cannot be reached is
//! refused in one line and leaves nothing behind; a removed source's
//! standby and slot go. A daemon killed with SIGKILL leaves its standby
//! streaming, and the next daemon adopts it.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::primary::{Primary, REPL_PASSWORD};
use common::ssh::{text, SshEnv};
use common::*;
use draupnir::config::Config;
use draupnir::core::{InstanceRef, Service};
use serde_json::Value;

/// What the primary holds: personal data in a table the rules cover.
const PRIMARY_SQL: &str = "CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL, note text);
INSERT INTO customers SELECT g, 'orig-' || g || '@corp.example', 'n' || g FROM generate_series(1, 200) g;";

const RULES: &str = r#"
[postgres.public.customers]
id = "keep"
email = "email"
note = "keep"
"#;

async fn sources_json(env: &SshEnv) -> Vec<Value> {
    let out = env.ssh(&env.admin_key, &["sources", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("sources --json");
    v.as_array().cloned().unwrap_or_default()
}

async fn source(env: &SshEnv, name: &str) -> Value {
    sources_json(env)
        .await
        .into_iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("source {name} listed"))
}

/// Wait until source `name` is in `state` (up to `secs`).
async fn wait_state(env: &SshEnv, name: &str, state: &str, secs: u64) -> Value {
    let start = std::time::Instant::now();
    loop {
        let s = source(env, name).await;
        if s["state"] == state {
            return s;
        }
        if start.elapsed() > Duration::from_secs(secs) {
            panic!("source {name} never became {state}: {s}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn subvolumes(env: &TestEnv) -> Vec<String> {
    let mut v = env.entries("image_uploads");
    v.extend(env.entries("image_snapshots"));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_primary_and_refreshes_masked_images() {
    let mut primary = Primary::new(PRIMARY_SQL);
    let passfile = primary.passfile(primary.root.path());
    // A second source whose primary is not there.
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let sections =
        format!(
        "{}[sources.gone]\nprimary_conninfo = \"host=127.0.0.1 port={dead_port} user=nobody\"\n",
        primary.source_section("prod", &passfile, "slot = \"draupnir_prod\"\nmax_lag = \"2s\"")
    );
    let cfg = TestConfig::new()
        .rules_file(RULES)
        .masking("require_coverage = true")
        .sections(&sections);
    let env = SshEnv::with_config(cfg, "").await;

    // The first copy, then streaming; the slot is on the primary.
    let prod = wait_state(&env, "prod", "streaming", 120).await;
    assert_eq!(prod["slot"], "draupnir_prod");
    assert_eq!(
        primary
            .sql("SELECT active FROM pg_replication_slots WHERE slot_name = 'draupnir_prod'")
            .unwrap(),
        "t"
    );
    let gone = source(&env, "gone").await;
    assert_eq!(gone["state"], "initialising", "{gone}");
    assert!(
        gone["reason"]
            .as_str()
            .unwrap_or("")
            .contains("cannot copy the primary yet"),
        "{gone}"
    );
    let out = env.ssh(&env.admin_key, &["sources"]).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("prod") && table.contains("streaming"),
        "{table}"
    );
    assert!(
        table.contains("gone") && table.contains("initialising"),
        "{table}"
    );
    // `draupnir doctor` asks each primary (read-only) and says which answers.
    let out = Command::new(env!("CARGO_BIN_EXE_draupnir"))
        .args(["doctor", "--config"])
        .arg(env.env.dir.path().join("config.toml"))
        .output()
        .expect("doctor runs");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    let line = |name: &str| {
        said.lines()
            .find(|l| l.contains(&format!("source {name} ")))
            .unwrap_or_else(|| panic!("no line for source {name}: {said}"))
            .to_string()
    };
    let ok = line("prod");
    assert!(ok.starts_with("ok") && ok.contains("PostgreSQL 15"), "{ok}");
    let bad = line("gone");
    assert!(bad.starts_with("FAIL") && bad.contains("fix:"), "{bad}");
    assert!(!said.contains(REPL_PASSWORD), "{said}");
    // Nothing of the standby is anyone's to see: not a password, not its files.
    let logs = std::fs::read_dir(env.env.config.state_path.join("logs"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read(e.path()).unwrap_or_default())
        .collect::<Vec<_>>();
    for l in &logs {
        assert!(
            !holds(l, REPL_PASSWORD.as_bytes()),
            "the password is in a log"
        );
    }

    // Rows committed just before the refresh are in the image, masked.
    primary
        .sql("INSERT INTO customers VALUES (1001, 'orig-late@corp.example', 'late')")
        .unwrap();
    let out = env.ssh(&env.admin_key, &["refresh-image", "prod"]).await;
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    assert!(said.contains("==> snapshotting the standby"), "{said}");
    assert!(said.contains("==> masking"), "{said}");
    let last = said.lines().last().unwrap_or("");
    assert!(
        last.starts_with("image ") && last.contains(" is ready"),
        "{said}"
    );
    let id: draupnir::core::ImageId = last.split_whitespace().nth(1).unwrap().parse().unwrap();
    let admin = env.admin();
    let image = env.svc().image(&admin, id).unwrap();
    let m = image.manifest().unwrap();
    assert_eq!(m.status.as_str(), "checked", "{m:?}");
    let src = m.source.expect("the manifest names its source");
    assert_eq!(src.name, "prod");
    assert!(src.lsn.contains('/'), "{src:?}");
    let shown = env.ssh(&env.admin_key, &["image", &id.to_string()]).await;
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains(&format!("source    prod at {}", src.lsn)),
        "{}",
        text(&shown)
    );
    let inst = env
        .svc()
        .create_instance(&admin, InstanceRef::Id(id))
        .await
        .unwrap();
    let info = inst;
    assert_eq!(
        psql_cert(&info, "SELECT count(*) FROM customers").unwrap(),
        "201"
    );
    assert_eq!(
        psql_cert(&info, "SELECT note FROM customers WHERE id = 1001").unwrap(),
        "late"
    );
    assert_eq!(
        psql_cert(
            &info,
            "SELECT count(*) FROM customers WHERE email LIKE 'orig-%'"
        )
        .unwrap(),
        "0"
    );
    let (_, snap) = env.svc().image_path(id);
    assert!(
        files_holding(&snap, &["orig-late@corp.example", "corp.example"]).is_empty(),
        "an original is in the sealed image"
    );
    // `sources` and `status` name the refresh; /metrics has the lag.
    let prod = source(&env, "prod").await;
    assert_eq!(prod["last_refresh_image"], id.to_string());
    let st = env.ssh(&env.admin_key, &["status"]).await;
    assert!(
        String::from_utf8_lossy(&st.stdout).contains("source     prod streaming"),
        "{}",
        text(&st)
    );

    // Far behind (replay paused on the standby, max_lag 2s): refused
    // unless forced.
    let standby_sql = |sql: &str| {
        check(
            Command::new(std::path::Path::new(PG_BIN).join("psql"))
                .args(["-X", "-q", "-A", "-t", "-h"])
                .arg(env.env.data().join("standbys/prod"))
                .args(["-p", "5432", "-U", "postgres", "-d", "template1", "-c", sql]),
        )
    };
    standby_sql("SELECT pg_wal_replay_pause()");
    primary
        .sql("INSERT INTO customers VALUES (1003, 'orig-paused@corp.example', 'paused')")
        .unwrap();
    let images_before = env.svc().list_images(&admin).unwrap().len();
    let out = env.ssh(&env.admin_key, &["refresh-image", "prod"]).await;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("the standby of source prod is")
            && err.contains("behind its primary (max_lag 2s)")
            && err.contains("--force"),
        "{err}"
    );
    assert_eq!(env.svc().list_images(&admin).unwrap().len(), images_before);
    // Connected but not replaying: `catching up`, with its lag.
    let behind = wait_state(&env, "prod", "catching up", 60).await;
    assert!(
        behind["lag_seconds"].as_f64().is_some_and(|s| s > 10.0),
        "{behind}"
    );
    assert!(
        behind["lag_bytes"].as_u64().is_some_and(|b| b > 0),
        "{behind}"
    );
    let out = env
        .ssh(&env.admin_key, &["refresh-image", "prod", "--force"])
        .await;
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    assert!(said.contains("--force: taking the standby"), "{said}");
    standby_sql("SELECT pg_wal_replay_resume()");

    // A source that cannot be reached: one line, nothing made.
    let before = subvolumes(&env.env);
    let images_before = env.svc().list_images(&admin).unwrap().len();
    let out = env.ssh(&env.admin_key, &["refresh-image", "gone"]).await;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("source gone is initialising") && err.contains("nothing was made"),
        "{err}"
    );
    let out = env.ssh(&env.admin_key, &["refresh-image", "nosuch"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("source nosuch not found"));

    // The primary restarts: seen as disconnected (with why), then streaming.
    primary.stop();
    let down = wait_state(&env, "prod", "disconnected", 60).await;
    assert!(
        down["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{down}"
    );
    let out = env.ssh(&env.admin_key, &["refresh-image", "prod"]).await;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot reach the primary of source prod"),
        "{err}"
    );
    assert_eq!(
        subvolumes(&env.env),
        before,
        "a refused refresh left a subvolume"
    );
    assert_eq!(env.svc().list_images(&admin).unwrap().len(), images_before);
    primary.start();
    wait_state(&env, "prod", "streaming", 120).await;
    primary
        .sql("INSERT INTO customers VALUES (1002, 'orig-after@corp.example', 'after')")
        .unwrap();
    let again = env
        .svc()
        .refresh_image(&admin, "prod", false, None)
        .await
        .expect("a refresh after the primary's restart");
    let inst = env
        .svc()
        .create_instance(&admin, InstanceRef::Id(again.id))
        .await
        .unwrap();
    let info = inst;
    assert_eq!(
        psql_cert(&info, "SELECT note FROM customers WHERE id = 1002").unwrap(),
        "after"
    );

    // Removed from the config: standby stopped and deleted, slot dropped.
    let standby = env.env.data().join("standbys/prod");
    assert!(standby.exists());
    let mut config = env.env.config.clone();
    config.sources.clear();
    env.svc().reload(config);
    let start = std::time::Instant::now();
    while standby.exists()
        || !primary
            .sql("SELECT count(*) FROM pg_replication_slots")
            .unwrap()
            .eq("0")
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the removed source's standby or slot is still there"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(sources_json(&env).await.is_empty());
    assert!(env
        .env
        .postmasters()
        .iter()
        .all(|(_, d)| !d.starts_with(env.env.data().join("standbys"))));
}

/// The child's side: a daemon core following a source until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs only as a child process of the SIGKILL test"]
async fn child_daemon() {
    let Ok(path) = std::env::var("DRAUPNIR_CHILD_CONFIG") else {
        return;
    };
    let config = Config::load(&PathBuf::from(path)).unwrap();
    let (_svc, _) = Service::open(config).await.unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
}

struct ChildDaemon(Child);

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_survives_sigkill_of_the_daemon_and_is_adopted() {
    // Its bootstrap superuser is not `postgres`: the daemon maps root to it
    // on the standby once it has read its name.
    let primary = Primary::with_superuser(PRIMARY_SQL, "boss");
    let passfile = primary.passfile(primary.root.path());
    let cfg = TestConfig::new().sections(&primary.source_section("prod", &passfile, ""));
    // The world's own core is closed: the child daemon is the daemon.
    let mut env = cfg.open().await;
    if let Some(s) = env.service.take() {
        s.shutdown();
    }
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_daemon",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DRAUPNIR_CHILD_CONFIG", env.dir.path().join("config.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("child daemon");
    let mut child = ChildDaemon(child);
    let standby = env.data().join("standbys/prod");
    let start = std::time::Instant::now();
    let pid = loop {
        if let Some(pid) = draupnir::core::test_support::process::running_postmaster(&standby) {
            break pid;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no standby started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = child.0.kill();
    let _ = child.0.wait();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        draupnir::core::test_support::process::alive(pid),
        "the standby died with the daemon"
    );
    // The next daemon adopts it (same process) and it streams.
    env.reopen().await;
    let admin = env.admin();
    let start = std::time::Instant::now();
    loop {
        let v = env.svc().sources(&admin).unwrap();
        let s = v[0].summary();
        if s.state == "streaming" {
            assert_eq!(v[0].live.pid, Some(pid), "adopted, not restarted: {s:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never streaming after adoption: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    primary
        .sql("INSERT INTO customers VALUES (2001, 'orig-kill@corp.example', 'kill')")
        .unwrap();
    // Only admins refresh; anyone may look.
    let bob = env.user("bob");
    let err = env
        .svc()
        .refresh_image(&bob, "prod", false, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("admin only"), "{err}");
    assert_eq!(env.svc().sources(&bob).unwrap().len(), 1);
    // Without rules the refresh fails closed; the standby is unharmed.
    let err = env
        .svc()
        .refresh_image(&admin, "prod", false, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no masking rules"), "{err}");
    assert_eq!(
        env.entries("image_uploads"),
        Vec::<String>::new(),
        "a failed refresh left its snapshot"
    );
    assert!(draupnir::core::test_support::process::alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_refreshes_by_itself() {
    let primary = Primary::new(PRIMARY_SQL);
    let passfile = primary.passfile(primary.root.path());
    let cfg = TestConfig::new()
        .rules_file(RULES)
        .masking("require_coverage = true")
        .sections(&primary.source_section("prod", &passfile, "refresh_schedule = \"1m\""));
    let env = cfg.open().await;
    let admin = env.admin();
    // The first refresh comes a minute after the daemon starts (no image
    // from the source yet); nobody asks for it.
    let start = std::time::Instant::now();
    let image = loop {
        let v = env.svc().sources(&admin).unwrap();
        let s = v[0].summary();
        assert!(s.last_refresh_failure.is_none(), "{s:?}");
        assert_eq!(s.refresh_schedule.as_deref(), Some("every 60s"));
        if let Some(i) = &v[0].last_refresh {
            if i.state == draupnir::core::ImageState::Ready {
                break i.clone();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(150),
            "no scheduled refresh: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let m = image.manifest().unwrap();
    assert_eq!(m.status.as_str(), "checked");
    assert_eq!(m.source.unwrap().name, "prod");
}
