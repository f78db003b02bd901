//! new-instance and destroy latency (issue 7, targets 1, 2 and 6).
//!
//! The floor is done by the benchmark itself on the same image: a
//! writable btrfs snapshot, the three certificate files, `postgres`
//! started as the instance user, and the first certificate-authenticated
//! query. Against it: the core's `create_instance` plus that first query
//! (cold, then with a warm pool), `ssh draupnir new-instance` end to end
//! with the real OpenSSH client, and the core's `destroy_instance`.
//!
//! `cargo bench --bench instances`; `cargo test --bench instances` is the
//! one-round smoke run.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ssh::SshEnv;
use draupnir::core::test_support::btrfs;
use draupnir::core::test_support::cluster::{self, InstanceUser, CLIENT_ROLE};
use draupnir::core::test_support::Confinement;
use draupnir::core::test_support::{pgconn, process};
use draupnir::core::{ConnectionInfo, ImageId, InstanceId, InstanceRef};
use support::chart::Chart;
use support::{Bench, Row, Stats, Target};

#[tokio::main]
async fn main() {
    run().await;
}

/// Connect with the client certificate (polling every millisecond while
/// the server starts) and run one query.
async fn first_query(port: u16, ca: &str, cert: &str, key: &str) {
    let tls = pgconn::tls_connector(ca, Some((cert, key))).expect("tls connector");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match pgconn::connect_tls_with(
            &tls,
            "127.0.0.1",
            port,
            CLIENT_ROLE,
            "postgres",
            Duration::from_secs(5),
        )
        .await
        {
            Ok(client) => {
                let row = client
                    .query_one("SELECT 1", &[])
                    .await
                    .expect("first query");
                let one: i32 = row.get(0);
                assert_eq!(one, 1);
                return;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "instance never answered: {e}");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// Resolves when the child has exited.
async fn exited(child: &mut std::process::Child) {
    loop {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A free port in `from..from + 10` (other benchmarks and tests run too).
fn free_port(from: u16) -> u16 {
    (from..from + 10)
        .find(|p| process::port_free(*p))
        .expect("a free port for the floor")
}

async fn query_instance(info: &ConnectionInfo) {
    let c = &info.credentials;
    first_query(
        info.port,
        &c.ca_certificate,
        &c.client_certificate,
        c.client_key.expose(),
    )
    .await;
}

/// The floor, by hand: snapshot, certificates, `postgres`, first query.
async fn floor_once(snapshot: &Path, scratch: &Path, user: &InstanceUser, port: u16) -> Duration {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let certs = draupnir::certs::issue_instance_certs(
        "floor",
        &names,
        CLIENT_ROLE,
        Duration::from_secs(3600),
    )
    .expect("certificates");
    let dir = scratch.join(format!("floor-{port}"));
    let log = std::fs::File::create(scratch.join("floor.log")).expect("floor log");
    let start = Instant::now();
    btrfs::snapshot(snapshot, &dir, false).expect("snapshot");
    for (name, pem) in [
        (cluster::SERVER_CERT, &certs.server_cert_pem),
        (cluster::SERVER_KEY, certs.server_key_pem.expose()),
        (cluster::CA_CERT, &certs.ca_cert_pem),
    ] {
        cluster::write_owned(&dir, name, pem.as_bytes(), user).expect("write certificate");
    }
    let mut pg = Command::new(Path::new(common::PG_BIN).join("postgres"))
        .arg("-D")
        .arg(&dir)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()))
        .current_dir(&dir)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.try_clone().expect("log"))
        .uid(user.uid)
        .gid(user.gid)
        .spawn()
        .expect("postgres");
    tokio::select! {
        _ = first_query(port, &certs.ca_cert_pem, &certs.client_cert_pem, certs.client_key_pem.expose()) => {}
        _ = exited(&mut pg) => panic!(
            "floor postgres exited: {}",
            std::fs::read_to_string(scratch.join("floor.log")).unwrap_or_default()
        ),
    }
    let took = start.elapsed();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pg.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = pg.wait();
    btrfs::delete_subvolume(&dir).expect("delete floor snapshot");
    took
}

async fn run() {
    let mut bench = Bench::new("instances");
    let base = common::port_base();
    let extra = format!(
        "min_instance_port = {base}\nmax_instance_port = {}\nloopback_size = \"4G\"",
        base + 399
    );
    let env = SshEnv::with(&extra, "").await;
    let svc = env.svc().clone();
    let image = env.env.ready_image(None).await;
    let admin = env.admin();
    let user = env.env.user("bench");
    let (_, snapshot) = svc.image_path(image);
    let instance_user = InstanceUser::ensure(common::INSTANCE_USER).expect("instance user");
    let scratch = env.env.data().join("bench");
    std::fs::create_dir_all(&scratch).expect("scratch dir");

    // Warm up the page cache and the binaries once, untimed.
    floor_once(&snapshot, &scratch, &instance_user, free_port(base + 390)).await;

    // 1. The floor and the core's cold create, interleaved round by round
    // so both see the same machine (other work on it comes and goes).
    // The 100 creates are sequential and stay running.
    // Each round also creates one instance with the Landlock box off, so
    // what the box costs is measured on the same machine at the same time.
    let mut floor = Vec::new();
    let mut cold = Vec::new();
    let mut unboxed = Vec::new();
    let mut ids = Vec::new();
    for i in 0..bench.rounds(100, 1) {
        let port = free_port(base + 380 + (i % 5) as u16);
        floor.push(floor_once(&snapshot, &scratch, &instance_user, port).await);
        for (confinement, times) in [
            (Confinement::Landlock, &mut cold),
            (Confinement::None, &mut unboxed),
        ] {
            support::set_confinement(&svc, confinement);
            let t = Instant::now();
            let info = svc
                .create_instance(&user, InstanceRef::Id(image))
                .await
                .expect("create_instance");
            query_instance(&info).await;
            times.push(t.elapsed());
            ids.push(info.instance.id);
        }
    }
    support::set_confinement(&svc, Confinement::Landlock);
    let floor = Stats::ms(&floor);
    bench.row(Row::new(
        "floor: snapshot + postgres + first cert query",
        None,
        &floor,
        Target::None,
    ));
    let cold = Stats::ms(&cold);
    bench.row(Row::new(
        "core create_instance + first query (cold)",
        Some(&floor),
        &cold,
        Target::RatioAtMost(1.3),
    ));
    let unboxed = Stats::ms(&unboxed);
    bench.row(Row::new(
        "  the same with no Landlock box (confinement = none)",
        Some(&floor),
        &unboxed,
        Target::None,
    ));
    bench.row(Row::new(
        "  boxed vs unboxed",
        Some(&unboxed),
        &cold,
        Target::RatioAtMost(1.1),
    ));
    bench.row(Row::new(
        format!("  … over {} sequential creates", cold.n()),
        None,
        &cold,
        Target::TailAtMost(2.0),
    ));

    // 6. Destroy them all.
    let mut destroy = Vec::new();
    for id in ids.drain(..) {
        let t = Instant::now();
        svc.destroy_instance(&user, id)
            .await
            .expect("destroy_instance");
        destroy.push(t.elapsed());
    }
    let destroy = Stats::ms(&destroy);
    bench.row(Row::new(
        "core destroy_instance",
        None,
        &destroy,
        Target::AtMost(60.0),
    ));
    assert_nothing_left(&env, &svc, &admin);

    // 1. ssh new-instance, end to end with the real OpenSSH client.
    let key = env.new_user_key("sshbench", false);
    let mut over_ssh = Vec::new();
    // What the SSH connection alone costs (handshake, key auth, a trivial
    // command), interleaved with the creates.
    let mut handshake = Vec::new();
    for _ in 0..bench.rounds(30, 1) {
        let t = Instant::now();
        let out = env.ssh(&key, &["whoami"]).await;
        handshake.push(t.elapsed());
        assert!(out.status.success(), "{}", common::ssh::text(&out));
        let t = Instant::now();
        let out = env.ssh(&key, &["new-instance", &image.to_string()]).await;
        over_ssh.push(t.elapsed());
        assert!(out.status.success(), "{}", common::ssh::text(&out));
    }
    let over_ssh = Stats::ms(&over_ssh);
    let handshake = Stats::ms(&handshake);
    bench.row(Row::new(
        "ssh draupnir whoami (connection alone)",
        None,
        &handshake,
        Target::None,
    ));
    bench.row(Row::new(
        "ssh draupnir new-instance (end to end)",
        Some(&floor),
        &over_ssh,
        Target::PlusAtMost(60.0),
    ));
    for inst in svc.list_instances(&admin, true).expect("instances") {
        svc.destroy_instance(&admin, inst.id)
            .await
            .expect("destroy");
    }

    drop(svc);
    drop(env);

    // 2. Warm pool: K started instances per image, handed over.
    let k = 2;
    let env = SshEnv::with(&format!("{extra}\nwarm_instances_per_image = {k}"), "").await;
    let svc = env.svc().clone();
    let image = env.env.ready_image(None).await;
    let user = env.env.user("bench");
    let key = env.new_user_key("sshbench", false);
    let wait_pool = || async {
        let deadline = Instant::now() + Duration::from_secs(120);
        while svc.warm_pool_size(image) < k {
            assert!(Instant::now() < deadline, "the warm pool never filled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let mut warm = Vec::new();
    let mut warm_query = Vec::new();
    let mut handed = std::collections::BTreeSet::new();
    for _ in 0..bench.rounds(30, 1) {
        wait_pool().await;
        let t = Instant::now();
        let info = svc
            .create_instance(&user, InstanceRef::Id(image))
            .await
            .expect("create_instance (warm)");
        warm.push(t.elapsed());
        query_instance(&info).await;
        warm_query.push(t.elapsed());
        assert!(
            handed.insert(info.instance.id),
            "an instance was handed out twice"
        );
    }
    let mut warm_ssh = Vec::new();
    for _ in 0..bench.rounds(30, 1) {
        wait_pool().await;
        let t = Instant::now();
        let out = env.ssh(&key, &["new-instance", &image.to_string()]).await;
        warm_ssh.push(t.elapsed());
        assert!(out.status.success(), "{}", common::ssh::text(&out));
    }
    let (warm, warm_query, warm_ssh) = (
        Stats::ms(&warm),
        Stats::ms(&warm_query),
        Stats::ms(&warm_ssh),
    );
    bench.row(Row::new(
        "core create_instance (warm pool)",
        None,
        &warm,
        Target::AtMost(25.0),
    ));
    bench.row(Row::new(
        "core create_instance + first query (warm)",
        Some(&floor),
        &warm_query,
        Target::None,
    ));
    bench.row(Row::new(
        "ssh draupnir new-instance (warm pool)",
        Some(&floor),
        &warm_ssh,
        Target::None,
    ));

    bench.chart(
        Chart::new("new-instance", "new-instance latency")
            .baseline("floor (by hand)", &floor)
            .draupnir("core, cold (+ first query)", &cold)
            .draupnir("core, cold, no Landlock box", &unboxed)
            .draupnir("ssh new-instance, cold", &over_ssh)
            .draupnir("ssh whoami (the connection alone)", &handshake)
            .draupnir("core, warm pool", &warm)
            .draupnir("core, warm (+ first query)", &warm_query)
            .draupnir("ssh new-instance, warm", &warm_ssh),
    );
    drop(env);
    let (limited_create, unlimited_create, limited_destroy, unlimited_destroy) =
        disk_limits(&mut bench).await;
    bench.chart(
        Chart::new(
            "new-instance-quota",
            "new-instance latency, disk limits on and off",
        )
        .draupnir("no limit (quotas off)", &unlimited_create)
        .draupnir("max_instance_disk (simple quotas)", &limited_create),
    );
    bench.chart(
        Chart::new("destroy", "destroy-instance latency")
            .draupnir("core destroy", &destroy)
            .draupnir("no limit (quotas off)", &unlimited_destroy)
            .draupnir("max_instance_disk (simple quotas)", &limited_destroy),
    );
    bench.finish();
}

/// Issue 17: what `max_instance_disk` (btrfs simple quotas, a qgroup
/// limit per instance) costs new-instance and destroy. Two file systems
/// at once, one with the limit and one without, creates and destroys
/// interleaved so both see the same machine; the instances accumulate
/// (quota groups are said to slow snapshots as their number grows).
async fn disk_limits(bench: &mut Bench) -> (Stats, Stats, Stats, Stats) {
    let env_for = |limit: &str| {
        let base = common::port_base();
        format!(
            "min_instance_port = {base}\nmax_instance_port = {}\nloopback_size = \"4G\"\n{limit}",
            base + 39 + bench.rounds(200, 1) as u16
        )
    };
    let on = SshEnv::with(&env_for("max_instance_disk = \"1G\""), "").await;
    let off = SshEnv::with(&env_for(""), "").await;
    let mut created: [Vec<Duration>; 2] = Default::default();
    let mut destroyed: [Vec<Duration>; 2] = Default::default();
    let mut ids: [Vec<InstanceId>; 2] = Default::default();
    let envs = [&on, &off];
    let mut images = [ImageId::new(0); 2];
    for (k, env) in envs.iter().enumerate() {
        images[k] = env.env.ready_image(None).await;
    }
    for _ in 0..bench.rounds(100, 1) {
        for (k, env) in envs.iter().enumerate() {
            let svc = env.svc();
            let t = Instant::now();
            let info = svc
                .create_instance(&env.admin(), InstanceRef::Id(images[k]))
                .await
                .expect("create_instance");
            query_instance(&info).await;
            created[k].push(t.elapsed());
            ids[k].push(info.instance.id);
        }
    }
    let [ids_on, ids_off] = ids;
    for (on_id, off_id) in ids_on.into_iter().zip(ids_off) {
        for (k, (env, id)) in envs.iter().zip([on_id, off_id]).enumerate() {
            let t = Instant::now();
            env.svc()
                .destroy_instance(&env.admin(), id)
                .await
                .expect("destroy_instance");
            destroyed[k].push(t.elapsed());
        }
    }
    let [c_on, c_off] = created.map(|v| Stats::ms(&v));
    let [d_on, d_off] = destroyed.map(|v| Stats::ms(&v));
    bench.row(Row::new(
        "core create_instance + first query, no disk limit",
        None,
        &c_off,
        Target::None,
    ));
    bench.row(Row::new(
        format!(
            "  … with max_instance_disk (simple quotas), {} instances",
            c_on.n()
        ),
        Some(&c_off),
        &c_on,
        Target::RatioAtMost(1.1),
    ));
    bench.row(Row::new(
        "core destroy_instance, no disk limit",
        None,
        &d_off,
        Target::None,
    ));
    bench.row(Row::new(
        "  … with max_instance_disk (simple quotas)",
        Some(&d_off),
        &d_on,
        Target::RatioAtMost(1.1),
    ));
    for env in envs {
        let admin = env.admin();
        assert_nothing_left(env, env.svc(), &admin);
    }
    (c_on, c_off, d_on, d_off)
}

/// After the destroys: no subvolume, postmaster, row or port left.
fn assert_nothing_left(env: &SshEnv, svc: &draupnir::core::Service, admin: &draupnir::core::Actor) {
    let rows = svc.list_instances(admin, true).expect("instances");
    assert!(rows.is_empty(), "rows left: {rows:?}");
    let subvols = env.env.entries("instances");
    assert!(subvols.is_empty(), "subvolumes left: {subvols:?}");
    let pms: Vec<_> = env
        .env
        .postmasters()
        .into_iter()
        .filter(|(_, d)| d.starts_with(env.env.data().join("instances")))
        .collect();
    assert!(pms.is_empty(), "postmasters left: {pms:?}");
    let cfg = svc.config();
    let listening = support::listening_ports();
    let taken: Vec<u16> = (cfg.min_instance_port..=cfg.max_instance_port)
        .filter(|p| listening.contains(p))
        .collect();
    assert!(taken.is_empty(), "ports still bound: {taken:?}");
}
