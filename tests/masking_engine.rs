//! The masking engine against a real PostgreSQL 15: two databases with a
//! foreign key to an e-mail column under a unique index, a quoted schema
//! and table, a generated column, a partitioned table, a view and a
//! truncated table; rules checked against the live catalog, applied with
//! a fixed key, and the result proved: the same original gives the same
//! masked value in every table and database (and the value the Rust HMAC
//! computes), foreign keys and unique indexes hold, NULLs stay NULL, row
//! counts are unchanged, `digits` keeps length, format and the last four.
//! A plan that would orphan a foreign key is rolled back.

mod common;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use draupnir::core::test_support::{coverage, key, pgconn, plan, rules, run, transform};

const KEY: [u8; 32] = [7; 32];

/// A throwaway cluster on a socket in its own data directory.
struct Pg {
    _root: tempfile::TempDir,
    data: PathBuf,
    child: Child,
}

impl Pg {
    fn start() -> Pg {
        let root = tempfile::Builder::new()
            .prefix("drp-mask-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        std::fs::set_permissions(
            root.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let data = root.path().join("pgdata");
        initdb(&data);
        let child = as_instance_user("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-c", "listen_addresses=", "-c", "fsync=off", "-p", "5432"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", data.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        Pg {
            _root: root,
            data,
            child,
        }
    }

    async fn connect(&self, db: &str) -> tokio_postgres::Client {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            match pgconn::connect_unix(&self.data, 5432, "postgres", db, Duration::from_secs(5))
                .await
            {
                Ok(c) => return c,
                Err(_) if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("connect {db}: {e}"),
            }
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
    }
}

const APP_SQL: &str = r#"
CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL UNIQUE, name text,
  card varchar(19), phone text, secret text, notes text, born date,
  salary numeric(10,2), bio text);
INSERT INTO users SELECT g, 'person' || g || '@corp.example',
  CASE WHEN g % 10 <> 0 THEN 'Real Name ' || g END,
  CASE WHEN g % 7 <> 0 THEN '4111-2222-3333-' || lpad(g::text, 4, '0') END,
  '+44 20 7946 ' || lpad(g::text, 4, '0'), md5(g::text), 'note ' || g,
  date '1980-01-01' + g, 1000 + g, 'bio of ' || g
  FROM generate_series(1, 200) g;
CREATE TABLE orders (id int PRIMARY KEY, user_email text REFERENCES users(email), total int);
INSERT INTO orders SELECT g, CASE WHEN g % 9 <> 0 THEN 'person' || (g % 200 + 1) || '@corp.example' END, g
  FROM generate_series(1, 500) g;
CREATE SCHEMA "My Schema";
CREATE TABLE "My Schema"."Users.2024" ("E-Mail" text,
  n int GENERATED ALWAYS AS (length("E-Mail")) STORED);
INSERT INTO "My Schema"."Users.2024" SELECT 'person' || g || '@corp.example' FROM generate_series(1, 50) g;
INSERT INTO "My Schema"."Users.2024" VALUES (NULL);
CREATE TABLE audit_log (payload text);
INSERT INTO audit_log SELECT 'person' || g || '@corp.example' FROM generate_series(1, 30) g;
CREATE VIEW active AS SELECT email FROM users WHERE id < 100;
CREATE TABLE events (id int, ip text) PARTITION BY RANGE (id);
CREATE TABLE events_low PARTITION OF events FOR VALUES FROM (0) TO (100);
CREATE TABLE events_high PARTITION OF events FOR VALUES FROM (100) TO (1000);
INSERT INTO events SELECT g, '10.0.0.' || (g % 250) FROM generate_series(1, 300) g;
CREATE TABLE big (id int PRIMARY KEY, email text UNIQUE, name text, card text, secret text, notes text);
INSERT INTO big SELECT g, 'big' || g || '@corp.example', 'Name ' || g, lpad(g::text, 16, '4'), md5(g::text), 'n' || g
  FROM generate_series(1, 100000) g;
CREATE TABLE big_ref (id int PRIMARY KEY, email text REFERENCES big(email));
INSERT INTO big_ref SELECT g, 'big' || g || '@corp.example' FROM generate_series(1, 100000, 10) g;
CREATE TABLE no_columns ();
INSERT INTO no_columns DEFAULT VALUES;
CREATE TABLE baseline (LIKE big INCLUDING ALL);
INSERT INTO baseline SELECT * FROM big;
"#;

const CRM_SQL: &str = r#"
CREATE TABLE contacts (id int PRIMARY KEY, email text, phone text);
INSERT INTO contacts SELECT g, 'person' || g || '@corp.example', '+44 20 7946 ' || lpad(g::text, 4, '0')
  FROM generate_series(1, 60) g;
"#;

const RULES: &str = r#"
[app.users]
id = "keep"
email = "email"
name = "name"
card = { fn = "digits", keep_last = 4 }
phone = "phone"
secret = "hash"
notes = "null"
born = { fn = "shift_date", max_days = 30 }
salary = { fn = "noise", percent = 10 }
bio = { sql = "left(md5(bio), 12)" }

[app.orders]
id = "keep"
user_email = "email"
total = "keep"

[app."My Schema"."Users.2024"]
"E-Mail" = "email"
n = "keep"

[app.audit_log]
"*" = "truncate"

[app.events]
id = "keep"
ip = "redact"

[app.big]
id = "keep"
email = "email"
name = "name"
card = { fn = "digits", keep_last = 4 }
secret = "hash"
notes = "null"

[app.big_ref]
id = "keep"
email = "email"

[app.baseline]
"*" = "keep"

[app.no_columns]
"*" = "keep"

[crm.contacts]
id = "keep"
email = "email"
phone = "phone"
"#;

async fn strings(c: &tokio_postgres::Client, sql: &str) -> Vec<Option<String>> {
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

fn masked_email(key: &key::MaskingKey, original: &str) -> String {
    format!(
        "user-{}@example.invalid",
        hex::encode(&key.hmac("email", original)[..8])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masking_rules_applied_to_two_databases() {
    let pg = Pg::start();
    let admin = pg.connect("postgres").await;
    for db in ["app", "crm", "bad"] {
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
    }
    let app = pg.connect("app").await;
    let crm = pg.connect("crm").await;
    app.batch_execute(APP_SQL).await.unwrap();
    crm.batch_execute(CRM_SQL).await.unwrap();

    let rules = rules::parse(RULES).unwrap();
    let mut cat = coverage::Catalog::default();
    run::read_catalog(&app, "app", &mut cat).await.unwrap();
    run::read_catalog(&crm, "crm", &mut cat).await.unwrap();
    let cov = coverage::check(&rules, &cat);
    let catalog = &cat.columns;
    let names: Vec<String> = cat.columnless.iter().map(|t| t.name.to_string()).collect();
    assert_eq!(names, vec!["app.public.no_columns"]);
    assert_eq!(cov.problems, vec![], "problems");
    assert_eq!(cov.uncovered, vec![], "uncovered");
    assert!(cov.complete());
    let skipped: Vec<String> = cov.skipped.iter().map(|t| t.to_string()).collect();
    assert_eq!(skipped, vec!["app.public.active"]);
    // The catalog saw the partitions, the generated column and the quoted names.
    let generated: Vec<&str> = catalog
        .iter()
        .filter(|c| c.generated)
        .map(|c| c.column.as_str())
        .collect();
    assert_eq!(generated, vec!["n"]);
    assert!(catalog.iter().any(|c| c.table == "events_low"
        && matches!(&c.kind, coverage::RelKind::Partition { root_table, .. } if root_table == "events")));
    let card = catalog
        .iter()
        .find(|c| c.table == "users" && c.column == "card")
        .unwrap();
    assert_eq!(card.ty.max_len, Some(19));
    assert_eq!(card.ty.sql_type, "character varying(19)");
    let email = catalog
        .iter()
        .find(|c| c.table == "users" && c.column == "email")
        .unwrap();
    assert!(email.ty.not_null);
    assert!(email.ty.unique, "email has a unique index");
    assert!(!card.ty.unique);
    // A low-entropy transformer on a unique column is refused.
    let name_on_email = rules::parse("[app.users]\nemail = \"name\"\n").unwrap();
    let refused = coverage::check(&name_on_email, &cat);
    assert!(
        matches!(
            refused.problems.as_slice(),
            [coverage::RuleProblem::Misfit {
                misfit: transform::Misfit::NotUnique { .. },
                ..
            }]
        ),
        "{:?}",
        refused.problems
    );

    // Originals, kept to compare.
    let users_before = app
        .query("SELECT id, email, card, phone, name, born::text, salary::text, secret FROM users ORDER BY id", &[])
        .await
        .unwrap();
    let counts_before = [
        count(&app, "SELECT count(*) FROM users").await,
        count(&app, "SELECT count(*) FROM orders").await,
        count(&app, "SELECT count(*) FROM \"My Schema\".\"Users.2024\"").await,
        count(&app, "SELECT count(*) FROM events").await,
        count(&app, "SELECT count(*) FROM big").await,
        count(&crm, "SELECT count(*) FROM contacts").await,
    ];

    let key = key::MaskingKey::from_bytes(KEY);
    // The 100k-row table and the one referencing it first, timed alone.
    let is_big = |t: &rules::TableName| t.database == "app" && t.table.starts_with("big");
    let (big, rest): (Vec<_>, Vec<_>) = cov.actions.iter().cloned().partition(|(t, _)| is_big(t));
    let t = Instant::now();
    run::apply(&app, &plan::plan("app", &big), &key)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let big_time = t.elapsed();
    for (db, client) in [("app", &app), ("crm", &crm)] {
        run::apply(client, &plan::plan(db, &rest), &key)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    // Row counts unchanged, the truncated table empty.
    let counts_after = [
        count(&app, "SELECT count(*) FROM users").await,
        count(&app, "SELECT count(*) FROM orders").await,
        count(&app, "SELECT count(*) FROM \"My Schema\".\"Users.2024\"").await,
        count(&app, "SELECT count(*) FROM events").await,
        count(&app, "SELECT count(*) FROM big").await,
        count(&crm, "SELECT count(*) FROM contacts").await,
    ];
    assert_eq!(counts_before, counts_after);
    assert_eq!(count(&app, "SELECT count(*) FROM audit_log").await, 0);

    // Same original, same masked value: the Rust HMAC's, in every table and both databases.
    let users_after = app
        .query("SELECT id, email, card, phone, name, born::text, salary::text, secret, notes FROM users ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(users_before.len(), users_after.len());
    for (b, a) in users_before.iter().zip(&users_after) {
        let id: i32 = a.get(0);
        let orig: String = b.get(1);
        let masked: String = a.get(1);
        assert_eq!(masked, masked_email(&key, &orig), "users.email {id}");
        // digits: same length and format, last four kept, NULL stays NULL.
        let (oc, mc): (Option<String>, Option<String>) = (b.get(2), a.get(2));
        match (oc, mc) {
            (None, None) => {}
            (Some(o), Some(m)) => {
                assert_eq!(o.len(), m.len(), "{o} -> {m}");
                assert_eq!(o[o.len() - 4..], m[m.len() - 4..], "{o} -> {m}");
                for (x, y) in o.chars().zip(m.chars()) {
                    assert_eq!(x.is_ascii_digit(), y.is_ascii_digit(), "{o} -> {m}");
                    if !x.is_ascii_digit() {
                        assert_eq!(x, y, "{o} -> {m}");
                    }
                }
                assert_ne!(o[..14], m[..14], "{o} -> {m}");
            }
            other => panic!("card {id}: {other:?}"),
        }
        // phone: same shape.
        let (op, mp): (String, String) = (b.get(3), a.get(3));
        assert_eq!(op.len(), mp.len());
        assert_ne!(op, mp);
        for (x, y) in op.chars().zip(mp.chars()) {
            assert_eq!(x.is_ascii_digit(), y.is_ascii_digit(), "{op} -> {mp}");
        }
        // name: NULL stays NULL, otherwise a first and a last name from the lists.
        let (on, mn): (Option<String>, Option<String>) = (b.get(4), a.get(4));
        assert_eq!(on.is_none(), mn.is_none(), "name {id}");
        if let Some(m) = mn {
            let (first, last) = m.split_once(' ').unwrap();
            assert!(
                transform::FIRST_NAMES.contains(&first) && transform::LAST_NAMES.contains(&last),
                "{m}"
            );
        }
        // shift_date within 30 days, noise within 10 %.
        let (ob, mb): (String, String) = (b.get(5), a.get(5));
        let diff = count(
            &app,
            &format!("SELECT abs(date '{mb}' - date '{ob}')::bigint"),
        )
        .await;
        assert!(diff <= 30, "{ob} -> {mb}");
        let (os, ms): (String, String) = (b.get(6), a.get(6));
        let (os, ms): (f64, f64) = (os.parse().unwrap(), ms.parse().unwrap());
        assert!((ms - os).abs() <= os * 0.1 + 0.01, "{os} -> {ms}");
        let (osec, msec): (String, String) = (b.get(7), a.get(7));
        assert_eq!(msec, hex::encode(key.hmac("hash", &osec)), "hash {id}");
        let notes: Option<String> = a.get(8);
        assert_eq!(notes, None);
    }
    // Unique in, unique out; FK holds; the references follow their keys.
    assert_eq!(
        count(&app, "SELECT count(DISTINCT email) FROM users").await,
        200
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM orders o JOIN users u ON u.email = o.user_email"
        )
        .await,
        count(
            &app,
            "SELECT count(*) FROM orders WHERE user_email IS NOT NULL"
        )
        .await
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM orders WHERE user_email IS NULL").await,
        500 / 9
    );
    let o = strings(&app, "SELECT user_email FROM orders WHERE id = 1").await;
    assert_eq!(
        o[0].as_deref(),
        Some(masked_email(&key, "person2@corp.example").as_str())
    );
    let q = strings(
        &app,
        "SELECT \"E-Mail\" FROM \"My Schema\".\"Users.2024\" ORDER BY 1 NULLS FIRST",
    )
    .await;
    assert_eq!(q[0], None, "NULL stays NULL");
    assert!(q[1..].iter().all(|e| e
        .as_deref()
        .is_some_and(|e| e.ends_with("@example.invalid"))));
    assert_eq!(
        count(&app, "SELECT count(*) FROM \"My Schema\".\"Users.2024\" s JOIN users u ON u.email = s.\"E-Mail\"").await,
        50
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM \"My Schema\".\"Users.2024\" WHERE n <> 37"
        )
        .await,
        0,
        "generated column recomputed from the masked value"
    );
    let crm_emails = strings(&crm, "SELECT email FROM contacts ORDER BY id").await;
    for (i, e) in crm_emails.iter().enumerate() {
        let orig = format!("person{}@corp.example", i + 1);
        assert_eq!(
            e.as_deref(),
            Some(masked_email(&key, &orig).as_str()),
            "crm {orig}"
        );
    }
    let app_phone = strings(&app, "SELECT phone FROM users WHERE id = 5").await;
    let crm_phone = strings(&crm, "SELECT phone FROM contacts WHERE id = 5").await;
    assert_eq!(app_phone, crm_phone, "phone is keyed on the value only");
    assert_eq!(
        count(&app, "SELECT count(*) FROM events WHERE ip <> 'redacted'").await,
        0,
        "partitions masked through their root"
    );
    // No original left in a masked column.
    assert_eq!(count(&app, "SELECT count(*) FROM users WHERE email LIKE '%corp.example' OR name LIKE 'Real%' OR notes IS NOT NULL").await, 0);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM big WHERE email LIKE '%corp.example'"
        )
        .await,
        0
    );
    assert_eq!(
        count(&app, "SELECT count(DISTINCT email) FROM big").await,
        100_000
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM big_ref r JOIN big b ON b.email = r.email"
        )
        .await,
        10_000
    );

    // The hand-written baseline on the same 100k rows, for comparison.
    let t = Instant::now();
    app.batch_execute(
        "UPDATE baseline SET email = 'user-' || left(md5(email), 16) || '@example.invalid', \
         name = 'Name ' || left(md5(name), 8), card = translate(md5(card), 'abcdef', '123456'), \
         secret = md5(secret), notes = NULL",
    )
    .await
    .unwrap();
    app.batch_execute("VACUUM (FULL, ANALYZE) baseline")
        .await
        .unwrap();
    let baseline = t.elapsed();
    eprintln!(
        "masking 100k rows (email, name, digits, hash, null; unique email referenced by 10k rows), \
         UPDATE + orphan checks + VACUUM (FULL, ANALYZE): {big_time:?}; md5 baseline on the same rows: {baseline:?}"
    );

    // A plan that would orphan a foreign key is refused and rolled back.
    let bad = pg.connect("bad").await;
    bad.batch_execute(
        "CREATE TABLE p (email text PRIMARY KEY); CREATE TABLE c (email text REFERENCES p);
         INSERT INTO p VALUES ('a@x'), ('b@x'); INSERT INTO c VALUES ('a@x'), (NULL);",
    )
    .await
    .unwrap();
    let rules = rules::parse("[bad.p]\nemail = \"email\"\n[bad.c]\nemail = \"keep\"\n").unwrap();
    let mut cat = coverage::Catalog::default();
    run::read_catalog(&bad, "bad", &mut cat).await.unwrap();
    let cov = coverage::check(&rules, &cat);
    assert!(cov.complete(), "{cov:?}");
    let e = run::apply(&bad, &plan::plan("bad", &cov.actions), &key)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, run::RunError::Orphans { constraint, count: 1, .. } if constraint == "c_email_fkey"),
        "{e}"
    );
    assert_eq!(
        strings(&bad, "SELECT email FROM p ORDER BY 1").await,
        vec![Some("a@x".into()), Some("b@x".into())]
    );
}
