//! Refreshing an image from a followed source (issue 15).
//!
//! A production primary of the benchmark's own (PostgreSQL 15 on loopback
//! TCP, the tests' replication role and passfile, a physical slot) holds
//! pgbench-like tables filled with `generate_series` plus a small personal
//! `customers` table; the daemon follows it as source `prod` with the
//! masking rules below, which cover every column (images seal `checked`).
//! The primary grows to about 0.25, 0.5 and 1 GiB (0.25 GiB steps, then
//! 0.5, streamed to the standby as it goes); at each size, rounds of:
//!
//! * the baseline, the full path an operator has without sources:
//!   `pg_basebackup -D - -Ft -X fetch -c fast` of the primary piped into
//!   the real `ssh draupnir upload-image N`, then `ssh draupnir
//!   finalise-image N` (same rules: the config's);
//! * `ssh draupnir refresh-image prod`, once the source is `streaming`
//!   with no lag (waited for, untimed).
//!
//! Both are timed from the client's start to its exit. Each round also
//! runs `Service::refresh_image` with the progress callback: the refresh
//! without the door, and its step times (reported at the largest size);
//! and reads the standby's `pg_control` first, for how much WAL the
//! snapshot's first start replays (from the standby's last restartpoint).
//! (A refresh asks the standby for a restartpoint itself; the WAL figure
//! is read before it, so it shows what that spares.) At the largest size,
//! a diagnostic: the same refresh right after a `CHECKPOINT` on the
//! standby by hand, so the daemon's own has nothing left to do. The file system is flushed and deleted
//! subvolumes cleaned before each timed run.
//!
//! Then the standby's steady-state cost at the largest size: CPU (utime +
//! stime of its postmaster and every descendant, plus the children it
//! reaped, from `/proc`) and memory (PSS and RSS summed) over a window
//! idle and a window under `pgbench -n -c 2` (TPC-B-like) on the primary;
//! during the load, every 0.5 s, the lag `sources` shows
//! (`Service::sources` → `SourceView::summary()`, which the keeper
//! refreshes every 2 s) and the primary's own view
//! (`pg_stat_replication`: bytes not yet replayed and `replay_lag`); then
//! how long the standby takes to catch up once the load stops.
//!
//! `cargo bench --bench refresh`; `cargo test --bench refresh` is the
//! one-round smoke run (a primary of a few MiB, windows of 2 s).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::primary::{Primary, REPL_USER};
use common::ssh::{client_opts, text, SshEnv};
use common::{as_instance_user, TestConfig, PG_BIN};
use draupnir::core::test_support::sync_fs;
use draupnir::core::{Actor, FinaliseProgress, ImageId, ImageState, NewImage, Progress, Service};
use support::chart::Chart;
use support::procfs::{family_of, parents, proc_kib};
use support::{Bench, Row, Stats, Target, Unit};
use tokio::io::AsyncBufReadExt;

#[tokio::main]
async fn main() {
    run().await;
}

/// The source's name in the config.
const SOURCE: &str = "prod";

/// pgbench's four tables (its own DDL) and a small personal table.
const SCHEMA: &str = "
CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88));
CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84));
CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84));
CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22));
CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL, name text NOT NULL, balance int);
INSERT INTO customers SELECT g, 'person' || g || '@corp.example', 'Given' || g || ' Family', g % 1000
  FROM generate_series(1, 10000) g;";

/// Every column covered: the personal table masked, pgbench's kept.
const RULES: &str = r#"
[postgres.public.customers]
id = "keep"
email = "email"
name = "name"
balance = "keep"

[postgres.public.pgbench_branches]
bid = "keep"
bbalance = "keep"
filler = "keep"

[postgres.public.pgbench_tellers]
tid = "keep"
bid = "keep"
tbalance = "keep"
filler = "keep"

[postgres.public.pgbench_accounts]
aid = "keep"
bid = "keep"
abalance = "keep"
filler = "keep"

[postgres.public.pgbench_history]
tid = "keep"
bid = "keep"
aid = "keep"
delta = "keep"
mtime = "keep"
filler = "keep"
"#;

/// Bytes a `pgbench_accounts` row takes with its primary key (pgbench's
/// scale 1: 100 000 rows in about 15 MiB).
const ACCOUNT_ROW_BYTES: u64 = 157;
/// What the `postgres` database holds besides the accounts.
const BASE_MIB: u64 = 10;
/// Rows inserted per transaction while growing the primary.
const CHUNK_ROWS: u64 = 1_000_000;

fn rows_for(mib: u64) -> u64 {
    (mib.saturating_sub(BASE_MIB) * 1048576 / ACCOUNT_ROW_BYTES).max(1000)
}

fn mib(bytes: f64) -> f64 {
    bytes / 1048576.0
}

/// One client command, timed until it exits, with the arrival time of
/// each `==> step` line it prints.
struct Streamed {
    took: Duration,
    /// (step, time from it to the next step or the end), in order; the
    /// first is the connection (before the first step).
    steps: Vec<(String, Duration)>,
    stdout: String,
}

/// The clients' options: the tests', without forcing a cipher (the
/// upload benchmark's choice: the server's own shows).
fn ssh_command(env: &SshEnv, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("ssh");
    cmd.args(client_opts(&env.admin_key, None))
        .args(["-p", &env.port.to_string(), "draupnir@127.0.0.1"])
        .args(args)
        .kill_on_drop(true);
    cmd
}

/// `ssh draupnir ARGS…` with its progress lines timestamped.
async fn ssh_streamed(env: &SshEnv, args: &[&str]) -> Streamed {
    let mut cmd = ssh_command(env, args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let mut child = cmd.spawn().expect("ssh");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut marks = vec![("(ssh connection, before the first step)".to_string(), t)];
    let mut stdout = String::new();
    while let Some(line) = lines.next_line().await.expect("ssh stdout") {
        if let Some(step) = line.strip_prefix("==> ") {
            marks.push((step.to_string(), Instant::now()));
        }
        stdout.push_str(&line);
        stdout.push('\n');
    }
    let out = tokio::time::timeout(Duration::from_secs(900), child.wait_with_output())
        .await
        .expect("ssh timed out")
        .expect("ssh");
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "ssh {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let end = Instant::now();
    let steps = marks
        .iter()
        .enumerate()
        .map(|(i, (s, at))| {
            let next = marks.get(i + 1).map_or(end, |m| m.1);
            (s.clone(), next - *at)
        })
        .collect();
    Streamed {
        took,
        steps,
        stdout,
    }
}

/// A step's name without its figures (LSNs, counts), cut to fit the table.
fn short(step: &str) -> String {
    let step = step.split(" (").next().unwrap_or(step);
    let words: Vec<&str> = step
        .split_whitespace()
        .map(|w| {
            if w.chars().any(|c| c.is_ascii_digit()) {
                "…"
            } else {
                w
            }
        })
        .collect();
    words.join(" ").chars().take(40).collect()
}

/// Flush the file system and wait for deleted subvolumes to be cleaned,
/// so one run's writeback and clean-up are not in the next one's time
/// (untimed). `btrfs filesystem sync` commits and wakes the cleaner,
/// which otherwise waits for the next periodic commit (30 s); repeated
/// until `btrfs subvolume list -d` shows nothing left to clean.
fn settle(data: &Path) {
    let t = Instant::now();
    let btrfs = |args: &[&str]| {
        std::process::Command::new("btrfs")
            .args(args)
            .arg(data)
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    loop {
        btrfs(&["filesystem", "sync"]);
        if btrfs(&["subvolume", "list", "-d"]).is_empty() || t.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    sync_fs(data).expect("syncfs");
    if t.elapsed() > Duration::from_secs(2) {
        eprintln!("    (settling took {:.1} s)", t.elapsed().as_secs_f64());
    }
}

/// The source as the core shows it.
fn source(svc: &Service, admin: &Actor) -> draupnir::core::SourceView {
    svc.sources(admin)
        .expect("sources")
        .into_iter()
        .find(|s| s.name.as_str() == SOURCE)
        .expect("source listed")
}

/// Wait until the source is `streaming` with nothing left to replay.
async fn caught_up(svc: &Service, admin: &Actor, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let s = source(svc, admin).summary();
        if s.state == "streaming" && s.lag_bytes == Some(0) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < within,
            "source {SOURCE} never caught up: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The image is ready and sealed `checked`; then destroyed.
async fn check_and_destroy(svc: &Service, admin: &Actor, id: ImageId, refreshed: bool) {
    let image = svc.image(admin, id).expect("image");
    assert_eq!(image.state, ImageState::Ready, "{image:?}");
    let m = image.manifest().expect("manifest");
    assert_eq!(m.status.as_str(), "checked", "{m:?}");
    assert_eq!(m.source.is_some(), refreshed, "{m:?}");
    svc.destroy_image(admin, id, true)
        .await
        .expect("destroy image");
}

/// The full path: `pg_basebackup … | ssh draupnir upload-image N`, then
/// `ssh draupnir finalise-image N`. Returns both times and the image.
async fn full_path(
    env: &SshEnv,
    primary: &Primary,
    passfile: &Path,
    id: ImageId,
) -> (Duration, Streamed) {
    let t = Instant::now();
    let mut backup = tokio::process::Command::new(Path::new(PG_BIN).join("pg_basebackup"))
        .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
        .args(["-U", REPL_USER, "--no-password"])
        .args(["-D", "-", "-Ft", "-X", "fetch", "-c", "fast"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PGPASSFILE", passfile)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("pg_basebackup");
    let pipe: Stdio = backup
        .stdout
        .take()
        .expect("pg_basebackup stdout")
        .try_into()
        .expect("a pipe");
    let upload = ssh_command(env, &["upload-image", &id.to_string()])
        .stdin(pipe)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh upload-image");
    let (b, u) = tokio::join!(backup.wait_with_output(), upload.wait_with_output());
    let (b, u) = (b.expect("pg_basebackup"), u.expect("ssh upload-image"));
    let uploaded = t.elapsed();
    assert!(
        b.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&b.stderr)
    );
    assert!(u.status.success(), "upload-image: {}", text(&u));
    let fin = ssh_streamed(env, &["finalise-image", &id.to_string()]).await;
    assert!(
        fin.stdout.contains(&format!("image {id} is ready")),
        "{}",
        fin.stdout
    );
    (uploaded, fin)
}

/// `ssh draupnir refresh-image prod`; the new image's id.
async fn refresh(env: &SshEnv) -> (Streamed, ImageId) {
    let r = ssh_streamed(env, &["refresh-image", SOURCE]).await;
    let last = r.stdout.lines().last().unwrap_or("");
    assert!(
        last.starts_with("image ") && last.contains(" is ready"),
        "{}",
        r.stdout
    );
    let id = last
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("an image id");
    (r, id)
}

/// `Service::refresh_image` with the progress callback: its time and the
/// time from each step to the next (the core's own clock, no door).
async fn refresh_core(svc: &Service, admin: &Actor) -> (Duration, Vec<(String, f64)>, ImageId) {
    let marks: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let m = marks.clone();
    let progress: FinaliseProgress = Arc::new(move |p| {
        if let Progress::Step(s) = p {
            m.lock().unwrap().push((s, Instant::now()));
        }
    });
    let t = Instant::now();
    let image = svc
        .refresh_image(admin, SOURCE, false, Some(progress))
        .await
        .expect("refresh_image");
    let took = t.elapsed();
    let end = Instant::now();
    let marks = marks.lock().unwrap().clone();
    let mut steps = vec![(
        "(before the first step)".to_string(),
        marks.first().map_or(end, |m| m.1) - t,
    )];
    for (i, (s, at)) in marks.iter().enumerate() {
        let next = marks.get(i + 1).map_or(end, |m| m.1);
        steps.push((s.clone(), next - *at));
    }
    let steps = steps
        .into_iter()
        .map(|(s, d)| (s, d.as_secs_f64() * 1000.0))
        .collect();
    (took, steps, image.id)
}

fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Where the standby's last restartpoint starts replay from (its
/// `pg_control`): a snapshot of it recovers from there at its first start.
fn standby_redo(standby: &Path) -> Option<u64> {
    let out = std::process::Command::new(Path::new(PG_BIN).join("pg_controldata"))
        .arg("-D")
        .arg(standby)
        .env_clear()
        .env("LC_ALL", "C")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Latest checkpoint's REDO location:"))
        .and_then(parse_lsn)
}

/// MiB of WAL between the standby's last restartpoint and the position a
/// refresh snapshotted (from its step text).
fn wal_to_replay(redo: Option<u64>, steps: &[(String, f64)]) -> Option<f64> {
    let at = steps
        .iter()
        .find_map(|(s, _)| s.strip_prefix("snapshotting the standby at "))
        .and_then(parse_lsn)?;
    Some(mib(at.saturating_sub(redo?) as f64))
}

/// Diagnostic only (not something Draupnir does): `CHECKPOINT` on the
/// standby, over its private socket, so its next restartpoint is recent.
fn standby_checkpoint(standby: &Path) {
    common::check(
        std::process::Command::new(Path::new(PG_BIN).join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(standby)
            .args([
                "-p",
                "5432",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                "CHECKPOINT",
            ])
            .env_clear()
            .env("PATH", "/usr/bin:/bin"),
    );
}

/// Prints the end of the primary's log if the benchmark panics (a
/// primary that went away says why there).
struct PrimaryLog(std::path::PathBuf);

impl Drop for PrimaryLog {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut files: Vec<_> = std::fs::read_dir(&self.0)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            eprintln!("--- {} (last lines)", f.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Grow `pgbench_accounts` from `have` to `want` rows (and pgbench's
/// branches and tellers to match the final scale, once).
fn grow(primary: &Primary, have: u64, want: u64) {
    let mut from = have + 1;
    while from <= want {
        let to = (from + CHUNK_ROWS - 1).min(want);
        primary
            .sql(&format!(
                "INSERT INTO pgbench_accounts SELECT g, (g - 1) / 100000 + 1, 0, ''
                 FROM generate_series({from}, {to}) g"
            ))
            .expect("grow the primary");
        from = to + 1;
    }
    primary
        .sql("VACUUM ANALYZE pgbench_accounts")
        .expect("vacuum");
    primary.sql("CHECKPOINT").expect("checkpoint");
}

/// The postmaster `pm` and every descendant.
fn family(pm: i32) -> Vec<i32> {
    family_of(pm, &parents())
}

/// CPU ticks of each process: utime + stime, and for `pm` also the
/// children it has reaped (cutime + cstime: the short-lived backends).
fn cpu_ticks(pm: i32) -> HashMap<i32, u64> {
    let mut out = HashMap::new();
    for p in family(pm) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let f: Vec<u64> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(11)
            .take(4)
            .filter_map(|v| v.parse().ok())
            .collect();
        let own = if p == pm { 4 } else { 2 };
        out.insert(p, f.iter().take(own).sum());
    }
    out
}

/// CPU of the family between two readings, percent of one core.
fn cpu_percent(before: &HashMap<i32, u64>, after: &HashMap<i32, u64>, span: Duration) -> f64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let ticks: u64 = after
        .iter()
        .map(|(p, t)| t.saturating_sub(before.get(p).copied().unwrap_or(0)))
        .sum();
    ticks as f64 / hz / span.as_secs_f64() * 100.0
}

/// (PSS, RSS) of the family, MiB.
fn memory(pm: i32) -> (f64, f64) {
    let fam = family(pm);
    let pss: u64 = fam
        .iter()
        .map(|p| proc_kib(*p, "smaps_rollup", "Pss:"))
        .sum();
    let rss: u64 = fam.iter().map(|p| proc_kib(*p, "status", "VmRSS:")).sum();
    (pss as f64 / 1024.0, rss as f64 / 1024.0)
}

/// The primary's view of the standby: bytes not yet replayed and
/// `replay_lag` (ms; 0 when none is pending).
fn primary_view(primary: &Primary) -> Option<(f64, f64)> {
    let out = primary
        .sql(&format!(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn),
                    coalesce(extract(epoch FROM replay_lag) * 1000, 0)
             FROM pg_stat_replication WHERE application_name = 'draupnir_{SOURCE}'"
        ))
        .ok()?;
    let (b, ms) = out.split_once('|')?;
    Some((b.trim().parse().ok()?, ms.trim().parse().ok()?))
}

/// What the steady-state windows measured.
#[derive(Default)]
struct Load {
    cpu: f64,
    pss: Vec<f64>,
    rss: Vec<f64>,
    /// `sources`: lag seconds (as ms) and bytes (KiB), every 0.5 s.
    lag_ms: Vec<f64>,
    lag_kib: Vec<f64>,
    /// Samples not `streaming`.
    not_streaming: usize,
    /// `pg_stat_replication` on the primary: KiB not replayed, replay_lag ms.
    primary_kib: Vec<f64>,
    primary_ms: Vec<f64>,
    tps: Option<f64>,
}

/// One window of `span`: idle, or under `pgbench -n -c 2 -T span`.
async fn window(
    svc: &Service,
    admin: &Actor,
    primary: &Primary,
    pm: i32,
    span: Duration,
    load: bool,
) -> Load {
    let mut out = Load::default();
    let before = cpu_ticks(pm);
    let t = Instant::now();
    let mut pgbench = load.then(|| {
        let mut c = as_instance_user("pgbench");
        c.args([
            "-n",
            "-c",
            "2",
            "-j",
            "2",
            "-T",
            &span.as_secs().to_string(),
        ])
        .arg("-h")
        .arg(&primary.data)
        .args([
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
            "postgres",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        tokio::process::Command::from(c)
            .kill_on_drop(true)
            .spawn()
            .expect("pgbench")
    });
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let s = source(svc, admin).summary();
        if s.state != "streaming" {
            out.not_streaming += 1;
        }
        out.lag_ms.extend(s.lag_seconds.map(|s| s * 1000.0));
        out.lag_kib.extend(s.lag_bytes.map(|b| b as f64 / 1024.0));
        if load {
            if let Some((b, ms)) = primary_view(primary) {
                out.primary_kib.push(b / 1024.0);
                out.primary_ms.push(ms);
            }
        }
        let (pss, rss) = memory(pm);
        out.pss.push(pss);
        out.rss.push(rss);
        let done = match &mut pgbench {
            Some(p) => p.try_wait().expect("pgbench").is_some(),
            None => t.elapsed() >= span,
        };
        if done {
            break;
        }
    }
    let took = t.elapsed();
    out.cpu = cpu_percent(&before, &cpu_ticks(pm), took);
    if let Some(p) = pgbench {
        let o = p.wait_with_output().await.expect("pgbench");
        let said = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "pgbench: {said}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        out.tps = said
            .lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok());
    }
    out
}

/// Until the primary sees the standby replay what it had written when
/// the load stopped.
async fn catch_up_after_load(primary: &Primary) -> Duration {
    let end = primary.sql("SELECT pg_current_wal_lsn()").expect("lsn");
    let t = Instant::now();
    loop {
        let done = primary
            .sql(&format!(
                "SELECT count(*) FROM pg_stat_replication
                 WHERE application_name = 'draupnir_{SOURCE}' AND replay_lsn >= '{end}'"
            ))
            .expect("pg_stat_replication");
        if done == "1" {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the standby never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Per size: the times of each path.
struct Size {
    label: String,
    upload: Vec<Duration>,
    finalise: Vec<Duration>,
    full: Vec<Duration>,
    refresh: Vec<Duration>,
    /// `Service::refresh_image`, no door.
    core: Vec<Duration>,
    /// MiB of WAL its start replayed.
    wal: Vec<f64>,
    /// The full path's finalise-image steps, as the ssh client saw them.
    fin_steps: BTreeMap<String, Vec<f64>>,
    /// Diagnostic (largest size): refresh_image after a CHECKPOINT on the
    /// standby, its time, the WAL its start replayed, its start step.
    after_checkpoint: Vec<Duration>,
    after_checkpoint_wal: Vec<f64>,
    after_checkpoint_start: Vec<f64>,
    /// Step → times (first-seen order kept by `order`).
    steps: BTreeMap<String, Vec<f64>>,
    order: Vec<String>,
}

async fn run() {
    let mut bench = Bench::new("refresh");
    let sizes_mib: [u64; 3] = if bench.full {
        [256, 512, 1024]
    } else {
        [12, 16, 20]
    };
    let rounds = bench.rounds(3, 1);
    let span = if bench.full {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(2)
    };
    let final_rows = rows_for(sizes_mib[2]);
    let scale = final_rows.div_ceil(100_000);
    let primary = Primary::new(&format!(
        "{SCHEMA}
         INSERT INTO pgbench_branches SELECT g, 0, '' FROM generate_series(1, {scale}) g;
         INSERT INTO pgbench_tellers SELECT g, (g - 1) / 10 + 1, 0, '' FROM generate_series(1, {}) g;",
        scale * 10
    ));
    // The baseline's pg_basebackup -X fetch needs the WAL from its start
    // until its end: kept whatever the slot says.
    let mut primary = primary;
    primary
        .sql("ALTER SYSTEM SET wal_keep_size = '2GB'")
        .expect("wal_keep_size");
    primary
        .sql("ALTER SYSTEM SET logging_collector = on")
        .expect("logging_collector");
    primary.stop();
    primary.start();
    let _log = PrimaryLog(primary.data.join("log"));
    let passfile = primary.passfile(primary.root.path());
    let cfg = TestConfig::new()
        .top("loopback_size = \"16G\"\nmax_image_bytes = \"8G\"")
        .rules_file(RULES)
        .masking("require_coverage = true")
        .sections(&primary.source_section(SOURCE, &passfile, "slot = \"draupnir_bench\""));
    let env = SshEnv::with_config(cfg, "").await;
    let svc = env.svc().clone();
    let admin = env.admin();
    let data = env.env.data();
    let standby_dir = data.join("standbys").join(SOURCE);
    let first = caught_up(&svc, &admin, Duration::from_secs(180)).await;
    eprintln!(
        "standby made and streaming {:.1} s after the daemon started",
        first.as_secs_f64()
    );

    let mut have = 0;
    let mut results: Vec<Size> = Vec::new();
    for (i, &target) in sizes_mib.iter().enumerate() {
        let want = rows_for(target);
        let t = Instant::now();
        grow(&primary, have, want);
        have = want;
        let grown = t.elapsed();
        let replayed = caught_up(&svc, &admin, Duration::from_secs(900)).await;
        let db: f64 = primary
            .sql("SELECT pg_database_size('postgres')")
            .expect("size")
            .parse()
            .expect("a number");
        let label = format!("{:.0} MiB", mib(db));
        eprintln!(
            "primary at {label} ({want} accounts): grown in {:.1} s, standby caught up {:.1} s later",
            grown.as_secs_f64(),
            replayed.as_secs_f64()
        );
        let mut size = Size {
            label,
            upload: Vec::new(),
            finalise: Vec::new(),
            full: Vec::new(),
            refresh: Vec::new(),
            core: Vec::new(),
            wal: Vec::new(),
            fin_steps: BTreeMap::new(),
            after_checkpoint: Vec::new(),
            after_checkpoint_wal: Vec::new(),
            after_checkpoint_start: Vec::new(),
            steps: BTreeMap::new(),
            order: Vec::new(),
        };
        // A full run starts with one untimed round (page cache, binaries).
        let warm = bench.full && i == 0;
        for round in (if warm { 0 } else { 1 })..=rounds {
            let id = svc
                .create_image(&admin, NewImage::default())
                .expect("create image")
                .id;
            settle(&data);
            let (uploaded, fin) = full_path(&env, &primary, &passfile, id).await;
            check_and_destroy(&svc, &admin, id, false).await;
            caught_up(&svc, &admin, Duration::from_secs(300)).await;
            settle(&data);
            let (r, rid) = refresh(&env).await;
            check_and_destroy(&svc, &admin, rid, true).await;
            // The same through the core, for its step times.
            caught_up(&svc, &admin, Duration::from_secs(300)).await;
            settle(&data);
            let redo = standby_redo(&standby_dir);
            let (core_took, steps, cid) = refresh_core(&svc, &admin).await;
            check_and_destroy(&svc, &admin, cid, true).await;
            let wal = wal_to_replay(redo, &steps);
            let full = uploaded + fin.took;
            eprintln!(
                "  {} round {round}{}: full path {:.0} ms (basebackup | upload-image {:.0} + finalise-image {:.0}); refresh-image {:.0} ms ({:.3}×), through the core {:.0} ms, its start replaying {:.0} MiB of WAL",
                size.label,
                if round == 0 { " (warm-up)" } else { "" },
                full.as_secs_f64() * 1000.0,
                uploaded.as_secs_f64() * 1000.0,
                fin.took.as_secs_f64() * 1000.0,
                r.took.as_secs_f64() * 1000.0,
                r.took.as_secs_f64() / full.as_secs_f64(),
                core_took.as_secs_f64() * 1000.0,
                wal.unwrap_or(f64::NAN)
            );
            for ((s, d), (_, seen)) in steps.iter().zip(r.steps.iter()) {
                eprintln!(
                    "      {d:>8.0} ms (ssh client saw {:>6.0} ms)  {s}",
                    seen.as_secs_f64() * 1000.0
                );
            }
            if round == 0 {
                continue;
            }
            size.upload.push(uploaded);
            size.finalise.push(fin.took);
            size.full.push(full);
            size.refresh.push(r.took);
            size.core.push(core_took);
            size.wal.extend(wal);
            for (st, d) in &fin.steps {
                size.fin_steps
                    .entry(short(st))
                    .or_default()
                    .push(d.as_secs_f64() * 1000.0);
            }
            for (s, ms) in steps {
                let k = short(&s);
                if !size.order.contains(&k) {
                    size.order.push(k.clone());
                }
                size.steps.entry(k).or_default().push(ms);
            }
        }
        // Diagnostic, at the largest size: the same refresh once the
        // standby has made a restartpoint (what its start then replays).
        if i == sizes_mib.len() - 1 {
            for _ in 0..rounds {
                caught_up(&svc, &admin, Duration::from_secs(300)).await;
                standby_checkpoint(&standby_dir);
                settle(&data);
                let redo = standby_redo(&standby_dir);
                let (took, steps, id) = refresh_core(&svc, &admin).await;
                check_and_destroy(&svc, &admin, id, true).await;
                let wal = wal_to_replay(redo, &steps);
                let start = steps
                    .iter()
                    .find(|(s, _)| s.starts_with("waiting for postgres"))
                    .map_or(f64::NAN, |(_, ms)| *ms);
                eprintln!(
                    "  {} after CHECKPOINT on the standby: refresh_image {:.0} ms, replaying {:.0} MiB of WAL; start until ready {start:.0} ms",
                    size.label,
                    took.as_secs_f64() * 1000.0,
                    wal.unwrap_or(f64::NAN)
                );
                size.after_checkpoint.push(took);
                size.after_checkpoint_wal.extend(wal);
                size.after_checkpoint_start.push(start);
            }
        }
        results.push(size);
    }

    // The standby's steady-state cost, at the largest size.
    caught_up(&svc, &admin, Duration::from_secs(300)).await;
    let pm = source(&svc, &admin).live.pid.expect("the standby's pid");
    let idle = window(&svc, &admin, &primary, pm, span, false).await;
    let busy = window(&svc, &admin, &primary, pm, span, true).await;
    let catch_up = catch_up_after_load(&primary).await;
    eprintln!(
        "standby: idle {:.1} % CPU, under load {:.1} % CPU ({:.0} tps); {} sample(s) under load not streaming; caught up {:.0} ms after the load",
        idle.cpu,
        busy.cpu,
        busy.tps.unwrap_or(f64::NAN),
        busy.not_streaming,
        catch_up.as_secs_f64() * 1000.0
    );

    // The table.
    let mut chart = Chart::new(
        "refresh",
        "a fresh masked image: full path vs refresh-image of the standby",
    );
    let mut refresh_stats = Vec::new();
    let mut full_stats = Vec::new();
    for s in &results {
        let full = Stats::ms(&s.full);
        let refresh = Stats::ms(&s.refresh);
        bench.row(Row::new(
            format!("full path, primary of {}", s.label),
            None,
            &full,
            Target::None,
        ));
        bench.row(Row::new(
            "  pg_basebackup -Ft -X fetch | upload-image",
            None,
            &Stats::ms(&s.upload),
            Target::None,
        ));
        bench.row(Row::new(
            "  finalise-image",
            None,
            &Stats::ms(&s.finalise),
            Target::None,
        ));
        bench.row(Row::new(
            format!("refresh-image, primary of {}", s.label),
            Some(&full),
            &refresh,
            Target::RatioAtMost(0.1),
        ));
        bench.row(Row::new(
            "  the same through the core (no ssh)",
            Some(&full),
            &Stats::ms(&s.core),
            Target::None,
        ));
        bench.row(Row::new(
            "  WAL its start replays (last restartpoint on)",
            None,
            &Stats::new(Unit::MiB, s.wal.clone()),
            Target::None,
        ));
        if !s.after_checkpoint.is_empty() {
            bench.row(Row::new(
                "  diagnostic: after CHECKPOINT on the standby",
                Some(&full),
                &Stats::ms(&s.after_checkpoint),
                Target::None,
            ));
            bench.row(Row::new(
                "    WAL its start replays then",
                None,
                &Stats::new(Unit::MiB, s.after_checkpoint_wal.clone()),
                Target::None,
            ));
            bench.row(Row::new(
                "    its step: waiting for postgres (start until ready)",
                None,
                &Stats::new(Unit::Ms, s.after_checkpoint_start.clone()),
                Target::None,
            ));
        }
        chart = chart
            .baseline(&format!("full path, {}", s.label), &full)
            .draupnir(&format!("refresh-image, {}", s.label), &refresh);
        if !s.after_checkpoint.is_empty() {
            chart = chart.draupnir(
                &format!("after CHECKPOINT on standby, {}", s.label),
                &Stats::ms(&s.after_checkpoint),
            );
        }
        full_stats.push(full);
        refresh_stats.push(refresh);
    }
    let (small, large) = (&results[0], &results[results.len() - 1]);
    bench.row(Row::new(
        format!("full path: {} vs {}", large.label, small.label),
        Some(&full_stats[0]),
        &full_stats[full_stats.len() - 1],
        Target::None,
    ));
    bench.row(Row::new(
        format!("refresh-image: {} vs {}", large.label, small.label),
        Some(&refresh_stats[0]),
        &refresh_stats[refresh_stats.len() - 1],
        Target::RatioAtMost(1.25),
    ));
    let mut steps_chart = Chart::new(
        "refresh-steps",
        &format!(
            "refresh_image of a {} primary, steps of 10 ms or more (the core's progress)",
            large.label
        ),
    );
    for k in &large.order {
        let st = Stats::new(Unit::Ms, large.steps[k].clone());
        bench.row(Row::new(format!("  step: {k}"), None, &st, Target::None));
        // Only the long steps: the ssh client sees the short synchronous
        // ones (snapshot, start, flush) arrive in one burst.
        if st.p50() >= 1000.0 {
            if let Some(f) = large.fin_steps.get(k) {
                bench.row(Row::new(
                    "    same step in the full path's finalise (ssh)",
                    None,
                    &Stats::new(Unit::Ms, f.clone()),
                    Target::None,
                ));
            }
        }
        if st.p50() >= 10.0 {
            steps_chart = steps_chart.draupnir(k, &st);
        }
    }
    let one = |unit, v: f64| Stats::new(unit, vec![v]);
    let secs = span.as_secs();
    bench.row(Row::new(
        format!("standby CPU, idle, {secs} s"),
        None,
        &one(Unit::CpuPercent, idle.cpu),
        Target::None,
    ));
    bench.row(Row::new(
        format!("standby CPU, pgbench -c 2 on the primary, {secs} s"),
        None,
        &one(Unit::CpuPercent, busy.cpu),
        Target::None,
    ));
    bench.row(Row::new(
        "  pgbench on the primary meanwhile (tps)",
        None,
        &one(Unit::Count, busy.tps.unwrap_or(f64::NAN)),
        Target::None,
    ));
    bench.row(Row::new(
        "standby PSS, idle",
        None,
        &Stats::new(Unit::MiB, idle.pss.clone()),
        Target::None,
    ));
    bench.row(Row::new(
        "standby PSS, under load",
        None,
        &Stats::new(Unit::MiB, busy.pss.clone()),
        Target::None,
    ));
    bench.row(Row::new(
        "standby RSS (summed), idle",
        None,
        &Stats::new(Unit::MiB, idle.rss.clone()),
        Target::None,
    ));
    bench.row(Row::new(
        "standby RSS (summed), under load",
        None,
        &Stats::new(Unit::MiB, busy.rss.clone()),
        Target::None,
    ));
    let lag_rows: [(&str, &Vec<f64>, Unit); 4] = [
        ("lag under load, sources: seconds", &busy.lag_ms, Unit::Ms),
        ("lag under load, sources: bytes", &busy.lag_kib, Unit::KiB),
        (
            "lag under load, primary: bytes not replayed",
            &busy.primary_kib,
            Unit::KiB,
        ),
        (
            "lag under load, primary: replay_lag",
            &busy.primary_ms,
            Unit::Ms,
        ),
    ];
    for (what, v, unit) in lag_rows {
        let st = Stats::new(unit, v.clone());
        bench.row(Row::new(what, None, &st, Target::None));
        bench.row(Row::new("  max", None, &one(unit, st.max()), Target::None));
    }
    bench.row(Row::new(
        "standby caught up after the load stopped",
        None,
        &Stats::ms(&[catch_up]),
        Target::None,
    ));
    bench.chart(chart);
    bench.chart(steps_chart);
    let t = Instant::now();
    drop(env);
    eprintln!(
        "daemon stopped, standby and file system gone in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    drop(primary);
    eprintln!("primary stopped in {:.1} s", t.elapsed().as_secs_f64());
    bench.finish();
}
