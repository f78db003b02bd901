//! Masking throughput (issue 13): a generated `users` table (1 M rows in
//! the full run) with five masked columns (email, name, digits, hash,
//! null), a unique index on the e-mail and an `orders` table whose foreign
//! key references it (its column masked as e-mail too), finalised through
//! the core with those rules, against a hand-written baseline that does
//! the same by SQL on the same upload: `postgres` started on a writable
//! snapshot, one transaction of `UPDATE … SET` with `md5`-based
//! expressions (foreign-key triggers off, as Draupnir's), then
//! `VACUUM FULL` and `ANALYZE`, a clean stop. Both are timed whole (start
//! to stop); Draupnir's also does its fixed work (the access proof, the
//! WAL reset, the snapshot: about half a second on this machine, see the
//! finalise benchmark).
//!
//! Also the sealed image's size: its masked tables and indexes against
//! the same rows loaded fresh (`CREATE TABLE … AS`, same indexes), in an
//! instance of the image.
//!
//! `cargo bench --bench masking`; `cargo test --bench masking` is the
//! one-round smoke run (10 k rows).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{psql_cert, TestConfig};
use draupnir::core::test_support::btrfs;
use draupnir::core::test_support::cluster::InstanceUser;
use draupnir::core::test_support::sync_fs;
use draupnir::core::{Actor, ImageId, InstanceRef, NewImage, Service};
use support::chart::Chart;
use support::pg::fill;
use support::{Bench, Row, Stats, Target, Unit};

const RULES: &str = r#"
[postgres.public.users]
id = "keep"
email = "email"
name = "name"
card = { fn = "digits", keep_last = 4 }
secret = "hash"
notes = "null"

[postgres.public.orders]
id = "keep"
user_email = "email"
"#;

/// The baseline: the same columns by hand, md5-based.
const BASELINE: &[&str] = &[
    "BEGIN;
     SET LOCAL session_replication_role = replica;
     UPDATE users SET email = 'user-' || left(md5(email), 16) || '@example.invalid',
       name = left(md5(name), 12), card = left(md5(card), 12) || right(card, 4),
       secret = md5(secret), notes = NULL;
     UPDATE orders SET user_email = 'user-' || left(md5(user_email), 16) || '@example.invalid';
     COMMIT;",
    "VACUUM FULL users, orders",
    "ANALYZE users, orders",
];

#[tokio::main]
async fn main() {
    run().await;
}

/// `initdb` plus the two tables.
fn build_datadir(root: &Path, rows: u64) -> PathBuf {
    let data = root.join("pgdata");
    common::initdb(&data);
    let port = 5432;
    let tables = format!(
        "CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE NOT NULL, name text,
           card text, secret text, notes text);
         INSERT INTO users SELECT g, 'person' || g || '@corp.example', 'Given' || g || ' Family',
           '4111-' || lpad((g % 10000)::text, 4, '0') || '-1111-' || lpad(g::text, 4, '0'),
           md5(g::text), 'note ' || g FROM generate_series(1, {rows}) g;
         CREATE TABLE orders (id int PRIMARY KEY, user_email text REFERENCES users (email));
         INSERT INTO orders SELECT g, 'person' || (g % {rows} + 1) || '@corp.example'
           FROM generate_series(1, {rows}) g;"
    );
    fill(
        &data,
        port,
        &["fsync=off", "wal_level=minimal", "max_wal_senders=0"],
        &[&tables, "VACUUM (ANALYZE)", "CHECKPOINT"],
    );
    data
}

async fn upload(svc: &Service, admin: &Actor, dir: &Path, rules: Option<&str>) -> ImageId {
    let new = match rules {
        Some(r) => NewImage {
            rules: Some(r.to_string()),
            ..NewImage::default()
        },
        None => NewImage::not_personal(),
    };
    support::pg::upload_dir(svc, admin, dir, new).await
}

/// The baseline once, on a writable snapshot of the upload.
fn baseline_once(source: &Path, scratch: &Path, user: &InstanceUser, port: u16) -> Duration {
    let dir = scratch.join("baseline");
    btrfs::snapshot(source, &dir, false).expect("snapshot");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid)).expect("chown");
    sync_fs(&dir).expect("syncfs");
    let t = Instant::now();
    fill(&dir, port, &[], BASELINE);
    let took = t.elapsed();
    btrfs::delete_subvolume(&dir).expect("delete");
    took
}

async fn run() {
    let mut bench = Bench::new("masking");
    let rows: u64 = if bench.full { 1_000_000 } else { 10_000 };
    let base = common::port_base();
    let env = TestConfig::new()
        .top(&format!(
            "min_instance_port = {base}\nmax_instance_port = {}\nloopback_size = \"8G\"\nmax_image_bytes = \"4G\"",
            base + 39
        ))
        .masking("require_coverage = true")
        .open()
        .await;
    let svc = env.svc().clone();
    let admin = env.admin();
    let user = InstanceUser::ensure(common::INSTANCE_USER).expect("instance user");
    let root = tempfile::Builder::new()
        .prefix("drp-maskbench-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let datadir = build_datadir(root.path(), rows);
    let source = upload(&svc, &admin, &datadir, None).await;
    let (source_dir, _) = svc.image_path(source);
    let scratch = env.data().join("bench");
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let port = base + 39;
    baseline_once(&source_dir, &scratch, &user, port);

    let mut baseline = Vec::new();
    let mut fin = Vec::new();
    let mut last = None;
    for _ in 0..bench.rounds(3, 1) {
        baseline.push(baseline_once(&source_dir, &scratch, &user, port));
        let image = upload(&svc, &admin, &datadir, Some(RULES)).await;
        sync_fs(&env.data()).expect("syncfs");
        let t = Instant::now();
        svc.finalise_image(&admin, image, None)
            .await
            .expect("finalise");
        fin.push(t.elapsed());
        if let Some(old) = last.replace(image) {
            svc.destroy_image(&admin, old, true)
                .await
                .expect("destroy image");
        }
    }
    let baseline = Stats::ms(&baseline);
    let fin = Stats::ms(&fin);
    let label = format!("{} k rows", rows / 1000);
    bench.row(Row::new(
        format!("baseline: md5 UPDATE, VACUUM FULL, ANALYZE ({label})"),
        None,
        &baseline,
        Target::None,
    ));
    bench.row(Row::new(
        format!("core finalise_image with the rules ({label})"),
        Some(&baseline),
        &fin,
        Target::RatioAtMost(1.0),
    ));

    // Size: the sealed tables and indexes against the same rows loaded
    // fresh, in an instance of the sealed image.
    let image = last.expect("an image");
    let info = svc
        .create_instance(&admin, InstanceRef::Id(image))
        .await
        .expect("instance");
    let size = |sql: &str| -> f64 {
        psql_cert(&info, sql)
            .expect("size query")
            .parse::<f64>()
            .expect("a number")
            / 1048576.0
    };
    let sealed = size("SELECT pg_total_relation_size('users') + pg_total_relation_size('orders')");
    psql_cert(
        &info,
        "CREATE TABLE users_fresh AS SELECT * FROM users;
         ALTER TABLE users_fresh ADD PRIMARY KEY (id), ADD UNIQUE (email);
         CREATE TABLE orders_fresh AS SELECT * FROM orders;
         ALTER TABLE orders_fresh ADD PRIMARY KEY (id);",
    )
    .expect("fresh copy");
    let fresh = size(
        "SELECT pg_total_relation_size('users_fresh') + pg_total_relation_size('orders_fresh')",
    );
    bench.row(Row::new(
        "sealed tables and indexes vs the same rows loaded fresh",
        Some(&Stats::new(Unit::MiB, vec![fresh])),
        &Stats::new(Unit::MiB, vec![sealed]),
        Target::RatioAtMost(1.1),
    ));
    bench.chart(
        Chart::new(
            "masking",
            &format!("masking {label}, five columns and a key"),
        )
        .baseline("md5 UPDATE + VACUUM FULL + ANALYZE", &baseline)
        .draupnir("core finalise_image with rules", &fin),
    );
    drop(env);
    bench.finish();
}
