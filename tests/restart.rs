//! Daemon restarts: graceful ones keep instances running and adopt them;
//! a daemon killed with SIGKILL mid-finalise or mid-create leaves, after
//! the next start's reconcile, no orphan subvolume, process or row.
//!
//! The "daemon" killed here is a child process running the core (this test
//! binary re-executed with `DRAUPNIR_CHILD` set), so the kill lands exactly
//! where the test wants it.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use draupnir::config::Config;
use draupnir::core::{test_support::Store, ImageId, ImageState, InstanceState};
use draupnir::core::{InstanceRef, Service, UploadTarget};

/// The child's side: run a scenario in a fresh core until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs only as a child process of the restart tests"]
async fn child_daemon() {
    let Ok(scenario) = std::env::var("DRAUPNIR_CHILD") else {
        return;
    };
    let config = Config::load(&PathBuf::from(
        std::env::var("DRAUPNIR_CHILD_CONFIG").unwrap(),
    ))
    .unwrap();
    let (svc, _) = Service::open(config).await.unwrap();
    let admin = svc.actor_for("alice").unwrap().unwrap();
    match scenario.as_str() {
        "finalise" => {
            let id: ImageId = std::env::var("DRAUPNIR_CHILD_IMAGE")
                .unwrap()
                .parse()
                .unwrap();
            let _ = svc.finalise_image(&admin, id, None).await;
        }
        "create" => {
            for _ in 0..50 {
                let _ = svc.create_instance(&admin, InstanceRef::Latest).await;
            }
        }
        other => panic!("unknown scenario {other}"),
    }
    tokio::time::sleep(Duration::from_secs(600)).await;
}

struct ChildDaemon(Child);

impl ChildDaemon {
    fn start(env: &TestEnv, scenario: &str, image: Option<ImageId>) -> ChildDaemon {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "child_daemon",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DRAUPNIR_CHILD", scenario)
        .env("DRAUPNIR_CHILD_CONFIG", env.dir.path().join("config.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(id) = image {
            cmd.env("DRAUPNIR_CHILD_IMAGE", id.to_string());
        }
        ChildDaemon(cmd.spawn().expect("child daemon"))
    }

    fn kill(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }
}

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("timed out waiting for {what}");
}

/// After reconcile: every instance row is running with a live, verified
/// postmaster and a subvolume, and nothing else exists.
fn assert_consistent(env: &TestEnv) {
    let admin = env.admin();
    let rows = env.svc().list_instances(&admin, true).unwrap();
    let ids: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(env.entries("instances"), sorted, "subvolumes match rows");
    let pms = env.postmasters();
    assert_eq!(pms.len(), rows.len(), "postmasters match rows: {pms:?}");
    for r in &rows {
        assert_eq!(r.state, InstanceState::Running);
        // Credentials go to the owner only.
        let owner = env.svc().actor_for(&r.owner_name).unwrap().expect("owner");
        let info = env.svc().instance_credentials(&owner, r.id).unwrap();
        assert_eq!(psql_cert(&info, "SELECT 1").unwrap(), "1");
    }
    let mut ports: Vec<u16> = rows.iter().map(|r| r.port).collect();
    ports.dedup();
    assert_eq!(ports.len(), rows.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_finalise() {
    let mut env = TestEnv::new().await;
    let admin = env.admin();
    let img = env
        .svc()
        .create_image(&admin, NewImage::with_script(Some("SELECT pg_sleep(120);")))
        .unwrap();
    env.svc()
        .ingest(&admin, img.id, UploadTarget::Stream, &FIXTURE.tar[..])
        .await
        .unwrap();
    env.service.take().unwrap().shutdown();

    let mut child = ChildDaemon::start(&env, "finalise", Some(img.id));
    let store = Store::open(&env.config.database_path()).unwrap();
    let upload = env.data().join("image_uploads").join(img.id.to_string());
    wait_for("finalise to run the script", || {
        store.image(img.id).unwrap().unwrap().state == ImageState::Finalising
            && !draupnir::core::test_support::process::postmasters_beneath(&upload).is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill();

    let report = env.reopen().await;
    assert_eq!(report.failed_images, vec![img.id]);
    let image = env.svc().image(&admin, img.id).unwrap();
    assert_eq!(image.state, ImageState::Failed);
    assert!(image.failure_reason.unwrap().contains("interrupted"));
    assert!(env.entries("image_uploads").is_empty());
    assert!(env.entries("image_snapshots").is_empty());
    assert!(env.postmasters().is_empty(), "{:?}", env.postmasters());
    // And a new image goes through on the restarted core.
    env.ready_image(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_create() {
    let mut env = TestEnv::new().await;
    env.ready_image(None).await;
    env.service.take().unwrap().shutdown();

    let mut child = ChildDaemon::start(&env, "create", None);
    let store = Store::open(&env.config.database_path()).unwrap();
    // Let a couple of instances finish, then kill during the next create.
    wait_for("two instances and a third being created", || {
        let rows = store.instances(None, None).unwrap();
        rows.iter()
            .filter(|r| r.state == InstanceState::Running)
            .count()
            >= 2
            && rows.iter().any(|r| r.state == InstanceState::Creating)
    })
    .await;
    child.kill();

    let report = env.reopen().await;
    assert!(report.removed_instances.len() == 1, "{report:?}");
    assert!(report.adopted.len() >= 2, "{report:?}");
    assert_consistent(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_adopts_and_restarts_instances_and_removes_orphans() {
    let mut env = TestEnv::new().await;
    let admin = env.admin();
    let image = env.ready_image(None).await;
    let a = env
        .svc()
        .create_instance(&admin, InstanceRef::Id(image))
        .await
        .unwrap();
    let b = env
        .svc()
        .create_instance(&admin, InstanceRef::Id(image))
        .await
        .unwrap();
    psql_cert(
        &a,
        "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)",
    )
    .unwrap();
    let pid_a = env.svc().instance_pid(a.instance.id).unwrap();
    let pid_b = env.svc().instance_pid(b.instance.id).unwrap();
    env.service.take().unwrap().shutdown();
    // While the daemon is down, b's postmaster dies and debris appears.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid_b),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for _ in 0..100 {
        if !draupnir::core::test_support::process::alive(pid_b) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    draupnir::core::test_support::btrfs::create_subvolume(&env.data().join("instances/9999"))
        .unwrap();
    draupnir::core::test_support::btrfs::create_subvolume(&env.data().join("image_uploads/777"))
        .unwrap();

    let report = env.reopen().await;
    assert_eq!(report.adopted, vec![a.instance.id]);
    assert_eq!(report.restarted, vec![b.instance.id]);
    assert_eq!(report.orphan_subvolumes.len(), 2, "{report:?}");
    assert_eq!(
        env.svc().instance_pid(a.instance.id),
        Some(pid_a),
        "adopted, not restarted"
    );
    // The restarted postmaster may take a moment to accept connections.
    for _ in 0..200 {
        if psql_cert(&b, "SELECT 1").is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_consistent(&env);
    assert_eq!(psql_cert(&a, "SELECT x FROM kept").unwrap(), "42");
    // The adopted postmaster is still supervised.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid_a),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut back = false;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if env
            .svc()
            .instance_pid(a.instance.id)
            .is_some_and(|p| p != pid_a)
            && psql_cert(&a, "SELECT 1").is_ok()
        {
            back = true;
            break;
        }
    }
    assert!(
        back,
        "adopted instance was not restarted after being killed"
    );
}

/// With the daemon down, an instance's postmaster dies and another process
/// takes its port on 127.0.0.1. At start the postmaster comes up on IPv6
/// alone (postgres only logs that it could not bind IPv4); the readiness
/// check, made the way clients connect, sees that, so the instance is not
/// `running` and says why, and it is started again on its port until the
/// port is free, then serves everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_port_was_taken_is_not_left_running_deaf() {
    let mut env = TestEnv::new().await;
    let admin = env.admin();
    let image = env.ready_image(None).await;
    let info = env
        .svc()
        .create_instance(&admin, InstanceRef::Id(image))
        .await
        .unwrap();
    let (id, port) = (info.instance.id, info.port);
    let pid = env.svc().instance_pid(id).unwrap();
    env.service.take().unwrap().shutdown();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut squatter = None;
    for _ in 0..250 {
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => {
                squatter = Some(l);
                break;
            }
            // The dead postmaster's sockets close as it exits.
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let squatter = squatter.expect("bind the instance's port on 127.0.0.1");

    let report = env.reopen().await;
    assert_eq!(report.restarted, vec![id], "{report:?}");
    let mut inst = env.svc().instance(&admin, id).unwrap();
    for _ in 0..600 {
        if inst.state == InstanceState::Failed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        inst = env.svc().instance(&admin, id).unwrap();
    }
    assert_eq!(inst.state, InstanceState::Failed, "{inst:?}");
    let reason = inst.failure_reason.clone().unwrap_or_default();
    assert!(
        reason.contains(&format!(
            "port {port} on 127.0.0.1 is taken by another process"
        )),
        "{reason}"
    );
    assert_eq!(reason.lines().count(), 1, "{reason}");
    // What a client sees meanwhile: nothing answers on 127.0.0.1.
    let files = ClientFiles::new(&info);
    let conninfo = format!(
        "host=127.0.0.1 port={port} user={} dbname={} sslmode=verify-ca sslrootcert={} sslcert={} sslkey={} connect_timeout=3",
        info.user,
        info.database,
        files.path("root.crt"),
        files.path("client.crt"),
        files.path("client.key")
    );
    let refused = tokio::task::spawn_blocking(move || psql(&conninfo, "SELECT 1"))
        .await
        .unwrap();
    assert!(refused.is_err(), "{refused:?}");
    // Still not running a while later: the retries do not paper over it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.svc().instance(&admin, id).unwrap().state,
        InstanceState::Failed
    );

    // The port is freed: the instance comes back on it, by itself.
    drop(squatter);
    let mut back = false;
    for _ in 0..600 {
        let inst = env.svc().instance(&admin, id).unwrap();
        if inst.state == InstanceState::Running {
            let info = info.clone();
            if tokio::task::spawn_blocking(move || psql_cert(&info, "SELECT 1"))
                .await
                .unwrap()
                .is_ok_and(|out| out == "1")
            {
                assert_eq!(inst.failure_reason, None);
                back = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        back,
        "the instance did not come back once its port was free"
    );
    assert_eq!(env.svc().instance(&admin, id).unwrap().port, port);
    assert_consistent(&env);
}
