//! Finalise latency (issue 7): for a 1 GiB data directory and a
//! one-statement script, `finalise_image` within 1.5× the floor.
//!
//! The data directory is built once per run (full run: `initdb` plus a
//! ~1 GiB table, built with `fsync=off` and `wal_level=minimal`; smoke
//! run: the small test fixture) and uploaded through the core as a `tar`
//! stream, untimed. The floor is done by the benchmark itself on the same
//! btrfs, from a writable snapshot of that upload (untimed): `postgres`
//! started as the instance user, the one statement run with `psql`, a
//! clean (fast) stop, a read-only snapshot. Against it: the core's
//! `finalise_image` on a fresh upload of the same directory, with the time
//! of each step it reports.
//!
//! `cargo bench --bench finalise`; `cargo test --bench finalise` is the
//! one-round smoke run.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestEnv;
use draupnir::core::test_support::btrfs;
use draupnir::core::test_support::cluster::InstanceUser;
use draupnir::core::test_support::Confinement;
use draupnir::core::{test_support::sync_fs, ImageId, Progress};
use draupnir::core::{Actor, FinaliseProgress, Service};
use support::chart::Chart;
use support::pg::{fill, psql, start, stop, wait_ready};
use support::{Bench, Row, Stats, Target, Unit};

/// The one statement of the anonymisation script (and of the floor).
const STATEMENT: &str = "UPDATE users SET email = 'x' || id";

/// Rows of the bulk table in the full run: ~1 GiB of heap (29 rows of
/// ~276 bytes per 8 KiB page).
const BULK_ROWS: u64 = 3_800_000;

#[tokio::main]
async fn main() {
    run().await;
}

/// The data directory to upload: `initdb` plus a `users` table (the
/// statement's) and, in the full run, a ~1 GiB bulk table.
fn build_datadir(root: &Path, full: bool) -> PathBuf {
    let data = root.join("pgdata");
    if !full {
        std::fs::create_dir(&data).expect("mkdir");
        let mut ar = tar::Archive::new(&common::FIXTURE.tar[..]);
        ar.set_preserve_permissions(true);
        ar.set_preserve_ownerships(true);
        ar.unpack(&data).expect("unpack fixture");
        return data;
    }
    common::initdb(&data);
    let port = 5432;
    let users = format!(
        "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL, secret text);
         INSERT INTO users SELECT g, 'user' || g || '@example.com', md5(g::text)
           FROM generate_series(1, {}) g;",
        common::FIXTURE_USERS
    );
    let bulk = format!(
        "CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS digest, repeat('x', 200) AS filler
           FROM generate_series(1, {BULK_ROWS}) g"
    );
    // Minimal WAL: the bulk table is created in the transaction that
    // fills it, so it is written straight to its file, not to pg_wal.
    fill(
        &data,
        port,
        &["fsync=off", "wal_level=minimal", "max_wal_senders=0"],
        // No FREEZE: it would rewrite every page and log each one in full.
        &[&users, &bulk, "VACUUM (ANALYZE)", "CHECKPOINT"],
    );
    data
}

/// Upload `dir` into a new image through the core, as a `tar` stream.
async fn upload(svc: &Service, admin: &Actor, dir: &Path, script: Option<&str>) -> ImageId {
    support::pg::upload_dir(svc, admin, dir, common::image_with(script)).await
}

/// The floor, by hand, from a writable snapshot of the upload.
fn floor_once(source: &Path, scratch: &Path, user: &InstanceUser, port: u16) -> Floor {
    let dir = scratch.join("floor");
    let sealed = scratch.join("floor-sealed");
    btrfs::snapshot(source, &dir, false).expect("snapshot");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid)).expect("chown");
    sync_fs(&dir).expect("syncfs");
    let t = Instant::now();
    let mut pg = start(&dir, port, &[]);
    wait_ready(&dir, &mut pg);
    let ready = t.elapsed();
    psql(&dir, port, &[STATEMENT]);
    let ran = t.elapsed();
    stop(&mut pg);
    let stopped = t.elapsed();
    btrfs::snapshot(&dir, &sealed, true).expect("read-only snapshot");
    let took = t.elapsed();
    btrfs::delete_subvolume(&sealed).expect("delete");
    btrfs::delete_subvolume(&dir).expect("delete");
    Floor {
        took,
        steps: [ready, ran - ready, stopped - ran, took - stopped],
    }
}

/// One floor run and its four parts.
struct Floor {
    took: Duration,
    steps: [Duration; 4],
}

const FLOOR_STEPS: [&str; 4] = [
    "postgres start, until ready",
    "psql: the statement",
    "fast stop (shutdown checkpoint)",
    "read-only snapshot",
];

/// One finalise through the core; returns its time and the time from
/// each reported step to the next.
async fn finalise_once(
    svc: &Service,
    admin: &Actor,
    image: ImageId,
) -> (Duration, Vec<(String, f64)>) {
    let marks: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let m = marks.clone();
    let progress: FinaliseProgress = Arc::new(move |p| {
        if let Progress::Step(s) = p {
            m.lock().unwrap().push((s, Instant::now()));
        }
    });
    let t = Instant::now();
    svc.finalise_image(admin, image, Some(progress))
        .await
        .expect("finalise");
    let took = t.elapsed();
    let marks = marks.lock().unwrap().clone();
    let mut steps = Vec::new();
    let mut prev = ("(before the first step)".to_string(), t);
    for (name, at) in marks {
        steps.push((prev.0.clone(), (at - prev.1).as_secs_f64() * 1000.0));
        prev = (name, at);
    }
    (took, steps)
}

async fn run() {
    let mut bench = Bench::new("finalise");
    let base = common::port_base();
    let env = TestEnv::with(&format!(
        "min_instance_port = {base}\nmax_instance_port = {}\nloopback_size = \"8G\"\nmax_image_bytes = \"4G\"",
        base + 39
    ))
    .await;
    let svc = env.svc().clone();
    let admin = env.admin();
    let user = InstanceUser::ensure(common::INSTANCE_USER).expect("instance user");

    let root = tempfile::Builder::new()
        .prefix("drp-finbench-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (datadir, built) = {
        let (r, full) = (root.path().to_owned(), bench.full);
        support::time(|| build_datadir(&r, full))
    };
    let size = btrfs::apparent_size(&datadir);
    eprintln!(
        "data directory: {:.0} MiB (pg_wal {:.0} MiB), built in {:.1} s",
        size as f64 / 1048576.0,
        btrfs::apparent_size(&datadir.join("pg_wal")) as f64 / 1048576.0,
        built.as_secs_f64()
    );

    // The floor's source: one upload that is never finalised.
    let source = upload(&svc, &admin, &datadir, None).await;
    let (source_dir, _) = svc.image_path(source);
    let scratch = env.data().join("bench");
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let floor_port = base + 39;

    // Warm up the binaries and the page cache once, untimed.
    floor_once(&source_dir, &scratch, &user, floor_port);

    let mut floor = Vec::new();
    let mut floor_steps: [Vec<Duration>; 4] = Default::default();
    let mut fin = Vec::new();
    let mut fin_unboxed = Vec::new();
    let mut steps: BTreeMap<(usize, String), Vec<f64>> = BTreeMap::new();
    for _ in 0..bench.rounds(7, 1) {
        let f = floor_once(&source_dir, &scratch, &user, floor_port);
        floor.push(f.took);
        for (all, d) in floor_steps.iter_mut().zip(f.steps) {
            all.push(d);
        }

        // The same finalise with the Landlock box off, on the same machine
        // at the same time: what the box costs.
        support::set_confinement(&svc, Confinement::None);
        let image = upload(&svc, &admin, &datadir, Some(STATEMENT)).await;
        sync_fs(&env.data()).expect("syncfs");
        let (took, _) = finalise_once(&svc, &admin, image).await;
        fin_unboxed.push(took);
        svc.destroy_image(&admin, image, true)
            .await
            .expect("destroy image");
        support::set_confinement(&svc, Confinement::Landlock);

        let image = upload(&svc, &admin, &datadir, Some(STATEMENT)).await;
        sync_fs(&env.data()).expect("syncfs");
        let (took, s) = finalise_once(&svc, &admin, image).await;
        fin.push(took);
        for (i, (name, ms)) in s.into_iter().enumerate() {
            steps.entry((i, name)).or_default().push(ms);
        }
        svc.destroy_image(&admin, image, true)
            .await
            .expect("destroy image");
    }
    let floor = Stats::ms(&floor);
    let fin = Stats::ms(&fin);
    let label = format!("{:.0} MiB", size as f64 / 1048576.0);
    bench.row(Row::new(
        "floor: start, statement, stop, snapshot",
        None,
        &floor,
        Target::None,
    ));
    for (name, d) in FLOOR_STEPS.iter().zip(&floor_steps) {
        bench.row(Row::new(
            format!("  floor: {name}"),
            None,
            &Stats::ms(d),
            Target::None,
        ));
    }
    bench.row(Row::new(
        format!("core finalise_image ({label})"),
        Some(&floor),
        &fin,
        Target::RatioAtMost(1.5),
    ));
    let fin_unboxed = Stats::ms(&fin_unboxed);
    bench.row(Row::new(
        "  the same with no Landlock box (confinement = none)",
        Some(&floor),
        &fin_unboxed,
        Target::None,
    ));
    bench.row(Row::new(
        "  boxed vs unboxed",
        Some(&fin_unboxed),
        &fin,
        Target::RatioAtMost(1.1),
    ));
    for ((_, name), ms) in &steps {
        bench.row(Row::new(
            format!("  step: {}", short(name)),
            None,
            &Stats::new(Unit::Ms, ms.clone()),
            Target::None,
        ));
    }
    bench.chart(
        Chart::new(
            "finalise",
            &format!("finalise, {label} data directory, one statement"),
        )
        .baseline("floor (by hand)", &floor)
        .draupnir("core finalise_image", &fin),
    );
    svc.destroy_image(&admin, source, true)
        .await
        .expect("destroy source");
    drop(env);
    bench.finish();
}

/// A step's name, cut to fit the table.
fn short(name: &str) -> String {
    if name.starts_with("vacuuming") {
        return "vacuuming and analysing changed tables".into();
    }
    let name = name.split(" (").next().unwrap_or(name);
    name.chars().take(38).collect()
}
