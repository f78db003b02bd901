//! Density (issue 7): 200 running instances of one image on one machine,
//! all accepting connections, and (target 6) 200 destroys that leave
//! nothing behind.
//!
//! The real daemon binary (`draupnir serve`) runs on its own loopback
//! btrfs; everything goes through its front doors with real clients: the
//! image is uploaded with `scp` and sealed with `ssh … finalise-image`,
//! instances are made with `ssh … new-instance` and each answers one
//! certificate-authenticated query (credentials from `ssh … env --json`).
//! Then, with 1 instance and with all of them:
//!
//! * exclusive disk per instance: btrfs quota groups (`btrfs quota
//!   enable`, `quota rescan -w`, `qgroup show --raw`, each instance
//!   subvolume's exclusive bytes), and as a cross-check the file system's
//!   used bytes before and after divided by the number of instances;
//! * PSS per instance: `Pss` of `/proc/PID/smaps_rollup` summed over each
//!   postmaster and all its children (and its shared-memory, private and
//!   file parts); the CPU all instances use while idle;
//! * the daemon's RSS (`VmRSS`) with 1 and with all instances, its CPU
//!   while idle and its open files;
//! * the latency of `ssh draupnir instances` and of `GET /instances`
//!   (HTTPS: a new connection per call, as curl or a 5.x client, and one
//!   kept-alive connection) with 1 instance and with all.
//!
//! Finally every instance is destroyed with `ssh … destroy-instance` and
//! nothing may be left: no row, no subvolume, no process, no bound port,
//! no file the daemon held open for it.
//!
//! `cargo bench --bench density` (200 instances); `cargo test --bench
//! density` is the smoke run (3 instances).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestConfig;
use draupnir::core::test_support::cluster::CLIENT_ROLE;
use draupnir::core::test_support::{pgconn, process};
use serde_json::Value;
use support::chart::Chart;
use support::procfs::{family_of, parents, proc_kib};
use support::{Bench, Row, Stats, Target, Unit};

const BIN: &str = env!("CARGO_BIN_EXE_draupnir");
const API_VERSION: &str = "5.3.6";

#[tokio::main]
async fn main() {
    run().await;
}

/// `draupnir serve` on a private loopback btrfs. Dropping it (also on a
/// panic) stops the daemon, kills every postgres beneath its data path,
/// unmounts the file system and removes the directory.
struct Daemon {
    child: std::process::Child,
    log: Arc<Mutex<Vec<String>>>,
    data_path: PathBuf,
    state_path: PathBuf,
    ssh_port: u16,
    https: SocketAddr,
    /// Dropped last: the file system is unmounted first.
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(dir: tempfile::TempDir, config_text: &str) -> Daemon {
        let config = dir.path().join("config.toml");
        std::fs::write(&config, config_text).expect("config");
        let parsed = draupnir::config::Config::parse(config_text).expect("config parses");
        let mut child = std::process::Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("draupnir serve");
        let stderr = child.stderr.take().expect("stderr");
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut d = Daemon {
            child,
            log,
            data_path: parsed.data_path.clone(),
            state_path: parsed.state_path.clone(),
            ssh_port: 0,
            https: ([127, 0, 0, 1], 0).into(),
            _dir: dir,
        };
        d.wait_line("draupnir is running");
        let ssh = d.wait_line("ssh listening on");
        d.ssh_port = ssh
            .rsplit("127.0.0.1:")
            .next()
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {ssh}"));
        let https = d.wait_line("HTTPS API listening");
        d.https = https
            .split_whitespace()
            .find_map(|w| w.strip_prefix("address="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {https}"));
        d
    }

    /// The first log line containing `needle` (waiting up to 120 s).
    fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the daemon exited ({status}):\n{}", self.tail(30));
            }
            assert!(
                Instant::now() < deadline,
                "the daemon never logged `{needle}`:\n{}",
                self.tail(30)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn tail(&self, n: usize) -> String {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(n)..].join("\n")
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.pid());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        common::kill_postmasters_beneath(&self.data_path);
        for _ in 0..50 {
            let ok = std::process::Command::new("umount")
                .arg(&self.data_path)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok || !common::is_mounted(&self.data_path) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The real OpenSSH client with one key against the daemon.
struct Ssh {
    port: u16,
    key: PathBuf,
    work: PathBuf,
}

impl Ssh {
    fn opts(&self) -> Vec<String> {
        common::ssh::client_opts(&self.key, None)
    }

    async fn run(&self, mut cmd: tokio::process::Command) -> Output {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .current_dir(&self.work)
            .kill_on_drop(true);
        tokio::time::timeout(Duration::from_secs(300), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("timed out: {cmd:?}"))
            .expect("client runs")
    }

    async fn ssh(&self, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.args(self.opts())
            .args(["-p", &self.port.to_string(), "draupnir@127.0.0.1"])
            .args(args);
        self.run(cmd).await
    }

    /// Run a command that must succeed; its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.ssh(args).await;
        assert!(
            out.status.success(),
            "ssh {args:?}: {}",
            common::ssh::text(&out)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    async fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args).await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("ssh {args:?}: {e}: {text}"))
    }

    async fn scp(&self, from: &str, to: &str) {
        let mut cmd = tokio::process::Command::new("scp");
        cmd.args(self.opts())
            .args(["-P", &self.port.to_string(), from])
            .arg(format!("draupnir@127.0.0.1:{to}"));
        let out = self.run(cmd).await;
        assert!(out.status.success(), "scp: {}", common::ssh::text(&out));
    }
}

/// One instance as the benchmark knows it.
struct Inst {
    id: i64,
    port: u16,
}

/// `ssh new-instance`, then `ssh env --json` and one certificate-
/// authenticated query with those credentials.
async fn new_instance(ssh: &Ssh, image: i64) -> (Inst, Duration) {
    let t = Instant::now();
    let v = ssh
        .json(&["new-instance", &image.to_string(), "--json"])
        .await;
    let took = t.elapsed();
    let id: i64 = v["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("instance id");
    let inst = Inst {
        id,
        port: v["port"].as_u64().expect("port") as u16,
    };
    query(ssh, &inst).await;
    (inst, took)
}

async fn query(ssh: &Ssh, inst: &Inst) {
    let env = ssh.json(&["env", &inst.id.to_string(), "--json"]).await;
    let s = |k: &str| env[k].as_str().unwrap_or_default().to_string();
    assert_eq!(env["port"].as_u64(), Some(inst.port as u64));
    let client = pgconn::connect_tls(
        "127.0.0.1",
        inst.port,
        CLIENT_ROLE,
        &s("database"),
        &s("ca_certificate"),
        Some((&s("client_certificate"), &s("client_key"))),
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|e| panic!("instance {} refused its certificate: {e}", inst.id));
    let n: i64 = client
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(n, common::FIXTURE_USERS);
}

/// `VmRSS` of a process, MiB.
fn rss_mib(pid: i32) -> f64 {
    status_kib(pid, "VmRSS:") as f64 / 1024.0
}

fn status_kib(pid: i32, key: &str) -> u64 {
    proc_kib(pid, "status", key)
}

/// Open file descriptors of a process.
fn fds(pid: i32) -> f64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| rd.count())
        .unwrap_or(0) as f64
}

/// User plus system CPU time of these processes, in clock ticks.
fn cpu_ticks(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            let f: Vec<u64> = s
                .rsplit(')')
                .next()?
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse().ok())
                .collect();
            Some(f.iter().sum::<u64>())
        })
        .sum()
}

/// CPU used by these processes over `span`, percent of one core.
fn cpu_percent(pids: &[i32], span: Duration) -> f64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let before = cpu_ticks(pids);
    std::thread::sleep(span);
    let after = cpu_ticks(pids);
    (after.saturating_sub(before)) as f64 / hz / span.as_secs_f64() * 100.0
}

/// One field of a process's `smaps_rollup` (`Pss:`, `Pss_Shmem:`…), KiB.
fn smaps_kib(pid: i32, key: &str) -> u64 {
    proc_kib(pid, "smaps_rollup", key)
}

/// Each instance's processes: its postmaster and every descendant.
fn instance_families(instances_dir: &Path) -> Vec<Vec<i32>> {
    let parents = parents();
    let mut families = Vec::new();
    for (pm, _) in process::postmasters_beneath(instances_dir) {
        families.push(family_of(pm, &parents));
    }
    families
}

/// A `smaps_rollup` field summed over one instance's processes, MiB.
fn family_mib(family: &[i32], key: &str) -> f64 {
    family.iter().map(|p| smaps_kib(*p, key)).sum::<u64>() as f64 / 1024.0
}

fn btrfs(args: &[&str], mnt: &Path) -> String {
    let out = std::process::Command::new("btrfs")
        .args(args)
        .arg(mnt)
        .output()
        .expect("btrfs");
    assert!(
        out.status.success(),
        "btrfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Exclusive bytes of every subvolume under `instances/`, KiB, from
/// btrfs quota groups (enabled, rescanned, read and disabled again).
fn exclusive_kib(mnt: &Path) -> Vec<f64> {
    // subvolume id → path
    let mut ids = HashMap::new();
    for line in btrfs(&["subvolume", "list"], mnt).lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if let (Some(id), Some(path)) = (w.get(1), w.last()) {
            if path.starts_with("instances/") {
                ids.insert(format!("0/{id}"), path.to_string());
            }
        }
    }
    btrfs(&["quota", "enable"], mnt);
    btrfs(&["quota", "rescan", "-w"], mnt);
    let show = btrfs(&["qgroup", "show", "--raw"], mnt);
    btrfs(&["quota", "disable"], mnt);
    let mut excl = Vec::new();
    for line in show.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if let (Some(q), Some(e)) = (w.first(), w.get(2)) {
            if ids.contains_key(*q) {
                excl.push(e.parse::<f64>().expect("exclusive bytes") / 1024.0);
            }
        }
    }
    assert_eq!(excl.len(), ids.len(), "a qgroup per instance:\n{show}");
    excl
}

/// Latencies of listing the instances, and the daemon's RSS meanwhile.
#[derive(Default)]
struct Listing {
    ssh: Vec<Duration>,
    /// A new HTTPS connection per call, as `curl` or a 5.x client makes.
    http_fresh: Vec<Duration>,
    /// One kept-alive HTTPS connection.
    http_kept: Vec<Duration>,
    rss: Vec<f64>,
}

/// `GET /instances`, timed until the whole body has arrived; the body is
/// checked afterwards.
async fn get_instances(http: &reqwest::Client, url: &str, token: &str, expect: usize) -> Duration {
    let t = Instant::now();
    let resp = http
        .get(url)
        .header("Draupnir-Version", API_VERSION)
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /instances");
    let status = resp.status();
    let bytes = resp.bytes().await.expect("body");
    let took = t.elapsed();
    let body: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(expect));
    took
}

/// `ssh draupnir instances` and `GET /instances` (fresh and kept-alive
/// connections), `calls` times each after two untimed warm-ups,
/// interleaved; the daemon's RSS after each round.
async fn list_latency(
    ssh: &Ssh,
    http: &Https,
    calls: usize,
    expect: usize,
    daemon: i32,
) -> Listing {
    let mut l = Listing::default();
    for i in 0..calls + 2 {
        let t = Instant::now();
        let out = ssh.ok(&["instances"]).await;
        let took = t.elapsed();
        assert_eq!(out.lines().count(), expect + 1, "{out}");
        let fresh = get_instances(&http.fresh, &http.url, &http.token, expect).await;
        let kept = get_instances(&http.kept, &http.url, &http.token, expect).await;
        if i >= 2 {
            l.ssh.push(took);
            l.http_fresh.push(fresh);
            l.http_kept.push(kept);
        }
        l.rss.push(rss_mib(daemon));
    }
    l
}

/// HTTPS clients of the daemon's API, trusting its self-signed certificate.
struct Https {
    fresh: reqwest::Client,
    kept: reqwest::Client,
    url: String,
    token: String,
}

impl Https {
    fn new(daemon: &Daemon, token: String) -> Https {
        let pem = std::fs::read(daemon.state_path.join("http/tls.crt")).expect("served cert");
        let client = |idle: usize| {
            reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("cert"))
                .resolve("localhost", daemon.https)
                .pool_max_idle_per_host(idle)
                .build()
                .expect("https client")
        };
        Https {
            fresh: client(0),
            kept: client(1),
            url: format!("https://localhost:{}/instances", daemon.https.port()),
            token,
        }
    }
}

async fn run() {
    let mut bench = Bench::new("density");
    let n: usize = std::env::var("DRAUPNIR_DENSITY_INSTANCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench.full { 200 } else { 3 });
    let calls = bench.rounds(20, 3);

    let work = tempfile::Builder::new()
        .prefix("drp-density-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let key = common::ssh::keygen(work.path(), "admin", "alice@bench");
    std::fs::write(work.path().join("base.tar.gz"), &common::FIXTURE.tar_gz).expect("tarball");
    let dir = tempfile::Builder::new()
        .prefix("drp-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let base = common::port_base();
    let max_port = base + (n as u16).max(40) + 50;
    let config = TestConfig::new()
        .top(&format!(
            "min_instance_port = {base}\nmax_instance_port = {max_port}\nloopback_size = \"8G\""
        ))
        .ssh(&format!(
            "admin_keys = [\"{}\"]",
            common::ssh::public_line(&key)
        ))
        .text(dir.path());
    let daemon = Daemon::start(dir, &config);
    let ssh = Ssh {
        port: daemon.ssh_port,
        key,
        work: work.path().to_owned(),
    };
    let token = ssh.json(&["token", "--json"]).await["token"]
        .as_str()
        .expect("token")
        .to_string();
    let http = Https::new(&daemon, token);

    // The image: scp the fixture, finalise over ssh.
    let image: i64 = ssh
        .json(&["new-image", "--no-anonymisation", "--json"])
        .await["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("image id");
    ssh.scp("base.tar.gz", &format!("images/{image}")).await;
    ssh.ok(&["finalise-image", &image.to_string()]).await;

    let used_before = common::fs_used(&daemon.data_path);
    let fds_0 = fds(daemon.pid());
    let mut instances = Vec::new();
    let mut creates = Vec::new();
    let (inst, took) = new_instance(&ssh, image).await;
    instances.push(inst);
    creates.push(took);

    let at_1 = list_latency(&ssh, &http, calls, 1, daemon.pid()).await;

    let started = Instant::now();
    while instances.len() < n {
        let (inst, took) = new_instance(&ssh, image).await;
        instances.push(inst);
        creates.push(took);
        if instances.len() % 25 == 0 {
            eprintln!(
                "  {} instances running ({:.0} s)",
                instances.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    // All of them at once still answer.
    for inst in &instances {
        query(&ssh, inst).await;
    }

    let instances_dir = daemon.data_path.join("instances");
    let families = instance_families(&instances_dir);
    assert_eq!(families.len(), n, "a postmaster per instance");
    let pss: Vec<f64> = families.iter().map(|f| family_mib(f, "Pss:")).collect();
    let pss_parts: Vec<(&str, Stats)> = [
        ("shared memory (shared_buffers…)", "Pss_Shmem:"),
        ("private (heap, stacks)", "Pss_Anon:"),
        ("binaries and libraries", "Pss_File:"),
    ]
    .into_iter()
    .map(|(what, key)| {
        let v = families.iter().map(|f| family_mib(f, key)).collect();
        (what, Stats::new(Unit::MiB, v))
    })
    .collect();
    let mut procs: Vec<usize> = families.iter().map(Vec::len).collect();
    // What they all cost while nobody uses them.
    let idle = if bench.full { 10 } else { 1 };
    let all: Vec<i32> = families.iter().flatten().copied().collect();
    let instances_cpu = cpu_percent(&all, Duration::from_secs(idle));
    let daemon_cpu = cpu_percent(&[daemon.pid()], Duration::from_secs(idle));
    let fds_n = fds(daemon.pid());
    let used_after = common::fs_used(&daemon.data_path);
    let excl = exclusive_kib(&daemon.data_path);
    let at_n = list_latency(&ssh, &http, calls, n, daemon.pid()).await;

    let pss = Stats::new(Unit::MiB, pss);
    let excl = Stats::new(Unit::KiB, excl);
    let used = Stats::new(
        Unit::KiB,
        vec![(used_after.saturating_sub(used_before)) as f64 / 1024.0 / n as f64],
    );
    let rss_1 = Stats::new(Unit::MiB, at_1.rss);
    let rss_n = Stats::new(Unit::MiB, at_n.rss);
    let (ssh_1, ssh_n) = (Stats::ms(&at_1.ssh), Stats::ms(&at_n.ssh));
    let (fresh_1, fresh_n) = (Stats::ms(&at_1.http_fresh), Stats::ms(&at_n.http_fresh));
    let (kept_1, kept_n) = (Stats::ms(&at_1.http_kept), Stats::ms(&at_n.http_kept));
    bench.row(Row::new(
        format!("exclusive disk per instance (qgroups, n={n})"),
        None,
        &excl,
        Target::AtMost(1024.0),
    ));
    bench.row(Row::new(
        "  fs used bytes after − before, ÷ n",
        None,
        &used,
        Target::None,
    ));
    procs.sort();
    bench.row(Row::new(
        format!(
            "PSS per instance ({} processes each)",
            procs[procs.len() / 2]
        ),
        None,
        &pss,
        Target::AtMost(25.0),
    ));
    for (what, stats) in &pss_parts {
        bench.row(Row::new(
            format!("  of which {what}"),
            None,
            stats,
            Target::None,
        ));
    }
    bench.row(Row::new(
        format!("  CPU of all {n} idle instances, {idle} s"),
        None,
        &Stats::new(Unit::CpuPercent, vec![instances_cpu]),
        Target::None,
    ));
    bench.row(Row::new(
        format!("  daemon CPU, idle, {n} instances, {idle} s"),
        None,
        &Stats::new(Unit::CpuPercent, vec![daemon_cpu]),
        Target::None,
    ));
    bench.row(Row::new(
        format!("  daemon open files, 0 → {n} instances"),
        Some(&Stats::new(Unit::Count, vec![fds_0])),
        &Stats::new(Unit::Count, vec![fds_n]),
        Target::None,
    ));
    bench.row(Row::new(
        format!("daemon RSS, 1 → {n} instances"),
        Some(&rss_1),
        &rss_n,
        Target::AtMost(60.0),
    ));
    for (call, one, all) in [
        ("ssh draupnir instances", &ssh_1, &ssh_n),
        ("GET /instances, new connection", &fresh_1, &fresh_n),
        ("GET /instances, kept-alive", &kept_1, &kept_n),
    ] {
        bench.row(Row::new(
            format!("{call}, 1 → {n}"),
            Some(one),
            all,
            Target::RatioAtMost(1.3),
        ));
    }
    let creates = Stats::ms(&creates);
    bench.row(Row::new(
        format!("  ssh new-instance, over {n} creates"),
        None,
        &creates,
        Target::None,
    ));

    // Destroy them all: nothing may be left.
    let t = Instant::now();
    for inst in &instances {
        ssh.ok(&["destroy-instance", &inst.id.to_string()]).await;
    }
    eprintln!(
        "  {n} instances destroyed in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let rows = ssh.json(&["instances", "--all", "--json"]).await;
    assert_eq!(rows, serde_json::json!([]), "rows left");
    let left: Vec<_> = std::fs::read_dir(&instances_dir)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "subvolumes left: {left:?}");
    let pms = process::postmasters_beneath(&daemon.data_path);
    assert!(pms.is_empty(), "postmasters left: {pms:?}");
    let any: Vec<i32> = parents()
        .keys()
        .copied()
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/cwd"))
                .is_ok_and(|c| c.starts_with(&instances_dir))
        })
        .collect();
    assert!(any.is_empty(), "processes left beneath instances/: {any:?}");
    drop(http);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fds_after = fds(daemon.pid());
    eprintln!("  daemon open files: {fds_0} with 0 instances, {fds_n} with {n}, {fds_after} after the destroys");
    assert!(
        fds_after <= fds_0 + 2.0,
        "the daemon holds {fds_after} files after the destroys, {fds_0} before the creates"
    );
    let listening = support::listening_ports();
    let bound: Vec<u16> = instances
        .iter()
        .map(|i| i.port)
        .filter(|p| listening.contains(p))
        .collect();
    assert!(bound.is_empty(), "ports still bound: {bound:?}");

    let mib = |s: &Stats| {
        Stats::new(
            Unit::MiB,
            (0..=20).map(|i| s.q(i as f64 / 20.0) / 1024.0).collect(),
        )
    };
    bench.chart(
        Chart::new("density-memory", &format!("{n} instances: memory and disk"))
            .draupnir("PSS per instance", &pss)
            .draupnir("exclusive disk per instance", &mib(&excl))
            .baseline("daemon RSS, 1 instance", &rss_1)
            .draupnir(&format!("daemon RSS, {n} instances"), &rss_n),
    );
    bench.chart(
        Chart::new("density-list", &format!("listing instances: 1 vs {n}"))
            .baseline("ssh instances, 1", &ssh_1)
            .draupnir(&format!("ssh instances, {n}"), &ssh_n)
            .baseline("GET /instances (new conn.), 1", &fresh_1)
            .draupnir(&format!("GET /instances (new conn.), {n}"), &fresh_n)
            .baseline("GET /instances (kept-alive), 1", &kept_1)
            .draupnir(&format!("GET /instances (kept-alive), {n}"), &kept_n),
    );
    drop(daemon);
    bench.finish();
}
