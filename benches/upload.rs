//! Uploading a backup (issue 7, target 3).
//!
//! The baseline is what an operator does without Draupnir: a real OpenSSH
//! `sshd` started here on its own loopback port (own config, host key and
//! `authorized_keys`), `scp` of the same `.tar.gz` into a directory on the
//! same btrfs file system, then `tar xzf` there. Against it: Draupnir's
//! `scp … images/N` in SFTP mode and with `-O`, timed until the image's
//! data directory is fully extracted (`scp` returns only after the core
//! has finished the upload; the benchmark checks that). Raw throughput:
//! `scp` of the uncompressed `.tar` into each server, in MB/s.
//!
//! Both servers get the same client (the real `scp`/`ssh`, same key, same
//! options) and no `-c`: each server's own cipher choice shows.
//!
//! The data directory is made once per run: `initdb`, then (full run)
//! `pgbench -i` plus a table of less compressible text with an index,
//! packed with the system `tar` and `gzip` as an operator would.
//!
//! `cargo bench --bench upload`; `cargo test --bench upload` is the
//! one-round smoke run on a small data directory. With
//! `RUST_LOG=draupnir::core::storage::ingest=debug,draupnir::core::images=debug`
//! every upload also logs where its extractor waited (for input, or for
//! room in its queue) and the CPU of its decoding and writing threads;
//! `DRAUPNIR_BENCH_PERF=DIR` records each copy with `perf` (see [`scp`]).
//! Findings: `docs/bench/upload-notes.md` and BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ssh::{keygen, public_line, SshEnv};
use common::{as_instance_user, check};
use draupnir::core::ImageState;
use support::chart::Chart;
use support::{Bench, Row, Stats, Target, Unit};

#[tokio::main]
async fn main() {
    run().await;
}

/// `pgbench -i` scale and rows of the text table in a full run.
const PGBENCH_SCALE: u32 = 12;
const TEXT_ROWS: u32 = 900_000;

/// The data directory, packed.
struct Dataset {
    _dir: tempfile::TempDir,
    tar: PathBuf,
    tar_gz: PathBuf,
    /// `zstd -3`, when the `zstd` tool is installed (an informative row).
    tar_zst: Option<PathBuf>,
    /// Regular-file bytes in the data directory (what an upload writes).
    file_bytes: u64,
    files: u64,
}

fn size_of(p: &Path) -> u64 {
    std::fs::metadata(p).expect("stat").len()
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

/// Regular files and their bytes beneath `dir` (not following links).
fn tree_size(dir: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let md = e.path().symlink_metadata().expect("lstat");
        if md.is_dir() {
            let (f, b) = tree_size(&e.path());
            files += f;
            bytes += b;
        } else if md.is_file() {
            files += 1;
            bytes += md.len();
        }
    }
    (files, bytes)
}

/// `initdb`, some data, a clean stop; packed as `.tar` and `.tar.gz` with
/// the system tools.
fn build_dataset(full: bool) -> Dataset {
    let dir = tempfile::Builder::new()
        .prefix("drp-bench-upload-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("pgdata");
    let t = Instant::now();
    common::initdb(&data);
    let mut pg = as_instance_user("postgres")
        .arg("-D")
        .arg(&data)
        .args(["-c", "listen_addresses=", "-c", "fsync=off", "-p", "5432"])
        .args(["-c", "max_wal_size=96MB", "-c", "min_wal_size=32MB"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", data.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("postgres");
    let host = data.display().to_string();
    let psql = |sql: &str| {
        as_instance_user("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", &host])
            .args(["-p", "5432", "-U", "postgres", "-d", "postgres", "-c", sql])
            .output()
            .expect("psql")
    };
    let mut up = false;
    for _ in 0..400 {
        if psql("SELECT 1").status.success() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(up, "dataset postgres never started");
    let mut sql = String::from(
        "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL);
         INSERT INTO users SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 1000) g;",
    );
    if full {
        check(
            as_instance_user("pgbench")
                .args(["-q", "-i", "-s", &PGBENCH_SCALE.to_string(), "-h", &host])
                .args(["-p", "5432", "-U", "postgres", "postgres"]),
        );
        // Text that compresses like real rows do (hex digests, ~2:1), not
        // like pgbench's blank filler.
        sql.push_str(&format!(
            "CREATE TABLE events (id bigint PRIMARY KEY, user_id int, at timestamptz, kind text, payload text);
             INSERT INTO events SELECT g, g % 1000 + 1, now() - g * interval '1 second',
                 (ARRAY['login','view','buy','logout'])[g % 4 + 1],
                 md5(g::text) || md5((g * 31)::text) || md5((g * 7)::text)
             FROM generate_series(1, {TEXT_ROWS}) g;
             CREATE INDEX ON events (user_id, at);
             CHECKPOINT;"
        ));
    }
    let out = psql(&sql);
    assert!(
        out.status.success(),
        "dataset sql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pg.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = pg.wait();
    let tar = dir.path().join("base.tar");
    let tar_gz = dir.path().join("base.tar.gz");
    check(
        Command::new("tar")
            .arg("-C")
            .arg(&data)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    );
    let gz = std::fs::File::create(&tar_gz).expect("create .tar.gz");
    let st = Command::new("gzip")
        .arg("-c")
        .arg(&tar)
        .stdout(gz)
        .status()
        .expect("gzip");
    assert!(st.success(), "gzip failed");
    let tar_zst = dir.path().join("base.tar.zst");
    let zst = Command::new("zstd")
        .args(["-q", "-3", "-o"])
        .arg(&tar_zst)
        .arg(&tar)
        .status();
    let tar_zst = matches!(zst, Ok(s) if s.success()).then_some(tar_zst);
    let (files, file_bytes) = tree_size(&data);
    eprintln!(
        "dataset: {files} files, {:.0} MiB of file data; .tar {:.0} MiB, .tar.gz {:.0} MiB (gzip -6), .tar.zst {} (zstd -3); built in {:.0} s",
        mib(file_bytes),
        mib(size_of(&tar)),
        mib(size_of(&tar_gz)),
        tar_zst
            .as_deref()
            .map(|p| format!("{:.0} MiB", mib(size_of(p))))
            .unwrap_or_else(|| "skipped (no zstd tool)".into()),
        t.elapsed().as_secs_f64()
    );
    Dataset {
        _dir: dir,
        tar,
        tar_gz,
        tar_zst,
        file_bytes,
        files,
    }
}

/// A real OpenSSH `sshd` on a loopback port with its own config, host key
/// and `authorized_keys`. Killed on drop (also when the benchmark panics).
struct Sshd {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Sshd {
    fn start(client_key: &Path) -> Sshd {
        let dir = tempfile::Builder::new()
            .prefix("drp-sshd-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let host_key = keygen(dir.path(), "ssh_host_ed25519_key", "bench-sshd");
        let auth = dir.path().join("authorized_keys");
        std::fs::write(&auth, format!("{}\n", public_line(client_key))).unwrap();
        // Privilege separation directory Debian's sshd insists on.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().unwrap().port()
        };
        // Debian's defaults where they matter for speed (sftp-server as
        // the SFTP subsystem, no cipher list: OpenSSH's own order).
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\n\
                 HostKey {hk}\n\
                 AuthorizedKeysFile {auth}\n\
                 PidFile none\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\n\
                 Subsystem sftp /usr/lib/openssh/sftp-server\n\
                 LogLevel ERROR\n",
                hk = host_key.display(),
                auth = auth.display()
            ),
        )
        .unwrap();
        let log = dir.path().join("sshd.log");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .args(["-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("sshd log"))
            .spawn()
            .expect("start /usr/sbin/sshd (install openssh-server)");
        let mut me = Sshd {
            child,
            port,
            _dir: dir,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(st)) = me.child.try_wait() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("sshd exited ({st}): {log}");
            }
            assert!(Instant::now() < deadline, "sshd never listened on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        me
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client options both servers get: those of the tests, without
/// forcing a cipher.
fn client_opts(key: &Path) -> Vec<String> {
    common::ssh::client_opts(key, None)
}

/// A server to copy to.
struct Server {
    name: &'static str,
    port: u16,
    user: &'static str,
}

/// `scp [-O] FILE USER@127.0.0.1:DEST`, timed.
///
/// With `DRAUPNIR_BENCH_PERF=DIR` each copy runs under a system-wide
/// `perf record -g` (client, server and kernel), written to
/// `DIR/SERVER-FILE[-O].data` (the last round's stays): for finding where
/// the time goes, not for figures.
async fn scp(key: &Path, to: &Server, legacy: bool, file: &Path, dest: &str) -> Duration {
    let mut cmd = match std::env::var_os("DRAUPNIR_BENCH_PERF") {
        Some(dir) => {
            let name = format!(
                "{}-{}{}.data",
                to.name,
                file.file_name().unwrap_or_default().to_string_lossy(),
                if legacy { "-O" } else { "" }
            );
            let mut c = tokio::process::Command::new("perf");
            c.args(["record", "-q", "-a", "-g", "-F", "999", "-o"])
                .arg(Path::new(&dir).join(name))
                .args(["--", "scp"]);
            c
        }
        None => tokio::process::Command::new("scp"),
    };
    cmd.args(client_opts(key))
        .args(["-P", &to.port.to_string()]);
    if legacy {
        cmd.arg("-O");
    }
    cmd.arg(file)
        .arg(format!("{}@127.0.0.1:{dest}", to.user))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let t = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(600), cmd.output())
        .await
        .expect("scp timed out")
        .expect("scp");
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "scp {} to port {} failed: {}",
        file.display(),
        to.port,
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// The cipher a server picks for this client (`ssh -v`).
fn negotiated_cipher(key: &Path, to: &Server, remote_cmd: &str) -> String {
    let out = Command::new("ssh")
        .args(client_opts(key))
        .args(["-v", "-p", &to.port.to_string()])
        .arg(format!("{}@127.0.0.1", to.user))
        .arg(remote_cmd)
        .stdin(Stdio::null())
        .output()
        .expect("ssh -v");
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| l.split("kex: client->server cipher: ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("?")
        .to_string()
}

/// Flush the file system so one measure's writeback does not land in the
/// next one's time (untimed).
fn settle(path: &Path) {
    common::fs_used(path);
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// One Draupnir upload of `file` into a new image, timed until `scp`
/// returns — which must mean the image is fully extracted: checked.
async fn draupnir_upload(
    env: &SshEnv,
    to: &Server,
    legacy: bool,
    file: &Path,
    ds: &Dataset,
) -> Duration {
    let svc = env.svc();
    let admin = env.admin();
    let id = env.new_image();
    let took = scp(&env.admin_key, to, legacy, file, &format!("images/{id}")).await;
    // No waiting: when scp has returned, the core has finished the upload.
    let image = svc.image(&admin, id).expect("image");
    assert_eq!(image.state, ImageState::Uploading, "{image:?}");
    assert!(
        !image.upload_active,
        "upload still running after scp returned"
    );
    assert_eq!(
        image.size_bytes, ds.file_bytes,
        "extracted bytes differ from the data directory"
    );
    let (upload_dir, _) = svc.image_path(id);
    assert_eq!(tree_size(&upload_dir), (ds.files, ds.file_bytes));
    svc.destroy_image(&admin, id, true)
        .await
        .expect("destroy image");
    settle(&env.env.data());
    took
}

async fn run() {
    let mut bench = Bench::new("upload");
    let ds = build_dataset(bench.full);
    let env = SshEnv::with("loopback_size = \"12G\"\nmax_image_bytes = \"8G\"", "").await;
    let key = env.admin_key.clone();
    let sshd = Sshd::start(&key);
    let openssh = Server {
        name: "sshd",
        port: sshd.port,
        user: "root",
    };
    let draupnir = Server {
        name: "draupnir",
        port: env.port,
        user: "draupnir",
    };
    eprintln!(
        "ciphers chosen for OpenSSH's default client order: sshd {}, draupnir {}",
        negotiated_cipher(&key, &openssh, "true"),
        negotiated_cipher(&key, &draupnir, "whoami")
    );
    let base = env.env.data().join("openssh");
    std::fs::create_dir_all(&base).unwrap();
    let tar_bytes = size_of(&ds.tar);

    let rounds = bench.rounds(7, 1);
    let mut b_scp = Vec::new();
    let mut b_tar = Vec::new();
    let mut b_total = Vec::new();
    let mut d_sftp = Vec::new();
    let mut d_legacy = Vec::new();
    let mut b_raw = Vec::new();
    let mut b_raw_legacy = Vec::new();
    let mut d_raw = Vec::new();
    let mut d_raw_legacy = Vec::new();
    let mut d_zst = Vec::new();
    // A full run starts with one untimed round (page cache, binaries).
    let first = if bench.full { 0 } else { 1 };
    for round in first..=rounds {
        let timed = round > 0;
        // Baseline: scp the .tar.gz into a directory on the same btrfs,
        // then tar xzf there.
        let dir = base.join(format!("r{round}"));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = scp(
            &key,
            &openssh,
            false,
            &ds.tar_gz,
            &format!("{}/", dir.display()),
        )
        .await;
        let t = Instant::now();
        check(
            Command::new("tar")
                .args(["xzf", "base.tar.gz"])
                .current_dir(&dir),
        );
        let unpack = t.elapsed();
        assert_eq!(
            tree_size(&dir),
            (ds.files + 1, ds.file_bytes + size_of(&ds.tar_gz))
        );
        std::fs::remove_dir_all(&dir).unwrap();
        settle(&base);

        let sftp = draupnir_upload(&env, &draupnir, false, &ds.tar_gz, &ds).await;
        let legacy = draupnir_upload(&env, &draupnir, true, &ds.tar_gz, &ds).await;
        let zst = match &ds.tar_zst {
            Some(f) => Some(draupnir_upload(&env, &draupnir, false, f, &ds).await),
            None => None,
        };

        // Raw: the uncompressed .tar.
        let raw_dest = format!("{}/raw.tar", base.display());
        let raw = scp(&key, &openssh, false, &ds.tar, &raw_dest).await;
        std::fs::remove_file(base.join("raw.tar")).unwrap();
        settle(&base);
        let raw_legacy = scp(&key, &openssh, true, &ds.tar, &raw_dest).await;
        std::fs::remove_file(base.join("raw.tar")).unwrap();
        settle(&base);
        let d_raw_one = draupnir_upload(&env, &draupnir, false, &ds.tar, &ds).await;
        let d_raw_legacy_one = draupnir_upload(&env, &draupnir, true, &ds.tar, &ds).await;

        eprintln!(
            "  round {round}{}: openssh scp {:.0} + tar {:.0} ms; draupnir sftp {:.0} ms, -O {:.0} ms, .tar.zst {:.0} ms; raw MB/s: sshd {:.0} / -O {:.0}, draupnir {:.0} / -O {:.0}",
            if timed { "" } else { " (warm-up)" },
            copy.as_secs_f64() * 1000.0,
            unpack.as_secs_f64() * 1000.0,
            sftp.as_secs_f64() * 1000.0,
            legacy.as_secs_f64() * 1000.0,
            zst.map_or(f64::NAN, |z| z.as_secs_f64() * 1000.0),
            mbps(tar_bytes, raw),
            mbps(tar_bytes, raw_legacy),
            mbps(tar_bytes, d_raw_one),
            mbps(tar_bytes, d_raw_legacy_one),
        );
        if !timed {
            continue;
        }
        b_scp.push(copy);
        b_tar.push(unpack);
        b_total.push(copy + unpack);
        d_sftp.push(sftp);
        d_legacy.push(legacy);
        d_zst.extend(zst);
        b_raw.push(mbps(tar_bytes, raw));
        b_raw_legacy.push(mbps(tar_bytes, raw_legacy));
        d_raw.push(mbps(tar_bytes, d_raw_one));
        d_raw_legacy.push(mbps(tar_bytes, d_raw_legacy_one));
    }

    // Per-round ratios: each round's Draupnir figure against the same
    // round's baseline (less sensitive to load that drifts over the run).
    let paired = |d: &[f64], b: &[f64]| {
        let v: Vec<f64> = d.iter().zip(b).map(|(d, b)| d / b).collect();
        Stats::new(Unit::Ms, v).p50()
    };
    let secs = |v: &[Duration]| v.iter().map(Duration::as_secs_f64).collect::<Vec<_>>();
    eprintln!(
        "median of per-round ratios: SFTP {:.2}×, -O {:.2}× the scp + tar xzf total; raw {:.2}× (SFTP), {:.2}× (-O) sshd's MB/s",
        paired(&secs(&d_sftp), &secs(&b_total)),
        paired(&secs(&d_legacy), &secs(&b_total)),
        paired(&d_raw, &b_raw),
        paired(&d_raw_legacy, &b_raw_legacy),
    );
    let b_scp = Stats::ms(&b_scp);
    let b_tar = Stats::ms(&b_tar);
    let b_total = Stats::ms(&b_total);
    let d_sftp = Stats::ms(&d_sftp);
    let d_legacy = Stats::ms(&d_legacy);
    let d_zst = Stats::ms(&d_zst);
    let b_raw = Stats::new(Unit::MBps, b_raw);
    let b_raw_legacy = Stats::new(Unit::MBps, b_raw_legacy);
    let d_raw = Stats::new(Unit::MBps, d_raw);
    let d_raw_legacy = Stats::new(Unit::MBps, d_raw_legacy);
    bench.row(Row::new(
        "baseline: OpenSSH scp .tar.gz",
        None,
        &b_scp,
        Target::None,
    ));
    bench.row(Row::new(
        "baseline: tar xzf on the same btrfs",
        None,
        &b_tar,
        Target::None,
    ));
    bench.row(Row::new(
        "baseline: scp + tar xzf (total)",
        None,
        &b_total,
        Target::None,
    ));
    bench.row(Row::new(
        "scp .tar.gz images/N (SFTP), until extracted",
        Some(&b_total),
        &d_sftp,
        Target::RatioAtMost(0.8),
    ));
    bench.row(Row::new(
        "scp -O .tar.gz images/N, until extracted",
        Some(&b_total),
        &d_legacy,
        Target::RatioAtMost(0.8),
    ));
    if d_zst.n() > 0 {
        // Same data as zstd -3 instead of gzip: what the operator can gain.
        bench.row(Row::new(
            "  same as .tar.zst (SFTP), until extracted",
            Some(&b_total),
            &d_zst,
            Target::None,
        ));
    }
    bench.row(Row::new(
        "raw .tar: scp to sshd vs images/N (SFTP)",
        Some(&b_raw),
        &d_raw,
        Target::RatioAtLeast(1.5),
    ));
    bench.row(Row::new(
        "raw .tar: scp -O to sshd vs images/N",
        Some(&b_raw_legacy),
        &d_raw_legacy,
        Target::RatioAtLeast(1.5),
    ));

    let chart = Chart::new(
        "upload",
        "scp of the backup (.tar.gz unless marked) until the data directory is extracted",
    )
    .baseline("OpenSSH: scp + tar xzf", &b_total)
    .baseline("  of which scp", &b_scp)
    .draupnir("Draupnir: scp (SFTP)", &d_sftp)
    .draupnir("Draupnir: scp -O", &d_legacy);
    let chart = if d_zst.n() > 0 {
        chart.draupnir("Draupnir: scp (SFTP), .tar.zst", &d_zst)
    } else {
        chart
    };
    bench.chart(chart);
    bench.chart(
        Chart::new("upload-raw", "scp of an uncompressed .tar: throughput")
            .baseline("OpenSSH sshd: scp (SFTP)", &b_raw)
            .baseline("OpenSSH sshd: scp -O", &b_raw_legacy)
            .draupnir("Draupnir: scp (SFTP)", &d_raw)
            .draupnir("Draupnir: scp -O", &d_raw_legacy),
    );
    drop(sshd);
    drop(env);
    bench.finish();
}
