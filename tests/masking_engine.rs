//! The masking engine against a real PostgreSQL 15: two databases with a
//! foreign key to an e-mail column under a unique index, a quoted schema
//! and table, a generated column, a partitioned table, a view and a
//! truncated table; rules checked against the live catalog, applied with
//! a fixed key, and the result proved: the same original gives the same
//! masked value in every table and database (and the value the Rust HMAC
//! computes), foreign keys and unique indexes hold, NULLs stay NULL, row
//! counts are unchanged, `digits` keeps length, format and the last four.
//! A plan that would orphan a foreign key is rolled back.
//!
//! Then `suggest-rules` and the leak scan: rules suggested from a live
//! catalog and sampled values parse, cover everything and guess right
//! (e-mails under an odd column name, cards, IBANs, names, quoted names,
//! a generated column, a partitioned table, a view, a column-less table);
//! after masking with them the scan finds only what was deliberately
//! left: a kept column of e-mail addresses and originals copied into
//! another table, by table, column and count, and no original reaches
//! the server's log.

mod common;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use draupnir::core::test_support::{
    coverage, detect, key, pgconn, plan, rules, run, scan, suggest, transform,
};

const KEY: [u8; 32] = [7; 32];

/// A throwaway cluster on a socket in its own data directory.
struct Pg {
    _root: tempfile::TempDir,
    data: PathBuf,
    child: Child,
}

impl Pg {
    fn start() -> Pg {
        Pg::start_logging(None)
    }

    /// With the server's log (stderr) in `log`, when given.
    fn start_logging(log: Option<&std::path::Path>) -> Pg {
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
            .stderr(match log {
                Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
                None => Stdio::null(),
            })
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
    run::apply(&app, &plan::plan("app", &big, &cov.partitioned), &key)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let big_time = t.elapsed();
    for (db, client) in [("app", &app), ("crm", &crm)] {
        run::apply(client, &plan::plan(db, &rest, &cov.partitioned), &key)
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
    let e = run::apply(
        &bad,
        &plan::plan("bad", &cov.actions, &cov.partitioned),
        &key,
    )
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

/// `body` followed by its Luhn check digit (the one digit that makes
/// `detect::luhn` hold).
fn with_luhn(body: &str) -> String {
    let digits: Vec<u32> = body.chars().filter_map(|c| c.to_digit(10)).collect();
    let check = (0..10)
        .find(|d| detect::luhn(&[digits.as_slice(), &[*d]].concat()))
        .unwrap();
    format!("{body}{check}")
}

/// A German IBAN with a valid mod-97 check for `bban` (18 digits).
fn iban_de(bban: &str) -> String {
    let digits = format!("{bban}131400"); // "DE00" as 13 14 0 0
    let rem = digits
        .bytes()
        .fold(0u32, |r, b| (r * 10 + u32::from(b - b'0')) % 97);
    format!("DE{:02}{bban}", 98 - rem)
}

const FIRSTS: [&str; 8] = [
    "John", "Maria", "Hans", "Pierre", "Giulia", "Mehmet", "Rahul", "Wei",
];
const LASTS: [&str; 8] = [
    "Smith", "Garcia", "Müller", "Dubois", "Rossi", "Yılmaz", "Sharma", "Wang",
];

/// The shop: personal data under odd names, quoted names, a generated
/// column, a partitioned table, a view, a column-less table, a table
/// kept on purpose and one holding copies of originals.
fn shop_sql() -> String {
    let mut rows = Vec::new();
    for g in 1..=200u32 {
        let card = with_luhn(&format!("4{:014}", g * 7919));
        let card = if g % 2 == 0 {
            format!(
                "{} {} {} {}",
                &card[..4],
                &card[4..8],
                &card[8..12],
                &card[12..]
            )
        } else {
            card
        };
        let iban = iban_de(&format!("37040044{:010}", g * 31));
        let name = format!("{} {}", FIRSTS[g as usize % 8], LASTS[(g as usize / 8) % 8]);
        rows.push(format!(
            "({g}, 'cust{g}@mail.example.com', '{card}', '{iban}', '{name}', '+44 20 7946 {g:04}', '192.0.2.{}', 'note {g}', {})",
            g % 250,
            g % 3 == 0
        ));
    }
    format!(
        r#"
CREATE TABLE customers (id int PRIMARY KEY, contact text NOT NULL UNIQUE, card varchar(19),
  iban text, full_name text, tel_no text, seen inet, note text,
  created_at timestamptz NOT NULL DEFAULT now(), active bool);
INSERT INTO customers (id, contact, card, iban, full_name, tel_no, seen, note, active) VALUES {};
CREATE SCHEMA "Sales.EU";
CREATE TABLE "Sales.EU"."Orders" ("Buyer Mail" text, total int,
  "Ref" text GENERATED ALWAYS AS ('ref-' || total) STORED);
INSERT INTO "Sales.EU"."Orders" SELECT 'cust' || g || '@mail.example.com', g FROM generate_series(1, 50) g;
CREATE TABLE events (id int, who text) PARTITION BY RANGE (id);
CREATE TABLE events_a PARTITION OF events FOR VALUES FROM (0) TO (50);
CREATE TABLE events_b PARTITION OF events FOR VALUES FROM (50) TO (1000);
INSERT INTO events SELECT g, 'visitor' || g || '@web.example.org' FROM generate_series(1, 120) g;
CREATE VIEW contacts AS SELECT contact FROM customers;
CREATE MATERIALIZED VIEW people AS SELECT full_name, contact FROM customers;
CREATE TABLE nothing ();
CREATE TABLE gen_only (a int, b text GENERATED ALWAYS AS ('ref-' || a) STORED);
INSERT INTO gen_only VALUES (1), (2);
CREATE TABLE kept (id int, email text);
INSERT INTO kept SELECT g, 'staff' || g || '@corp.example' FROM generate_series(1, 5) g;
CREATE TABLE copies (id int, stuff text);
INSERT INTO copies VALUES (1, 'note 17'), (2, 'note 17'), (3, 'note 18'), (4, 'hello world'),
  (5, 'abc'), (6, 'Hans Müller');
"#,
        rows.join(",\n")
    )
}

/// `text` with the rule of `column` under `[section]` replaced by `rule`.
fn set_rule(text: &str, section: &str, column: &str, rule: &str) -> String {
    let mut out = Vec::new();
    let mut inside = false;
    let mut done = false;
    for line in text.lines() {
        if line.starts_with('[') {
            inside = line == section;
        }
        if inside && !done && line.starts_with(&format!("{column} = ")) {
            out.push(format!("{column} = {rule}"));
            done = true;
        } else {
            out.push(line.to_string());
        }
    }
    assert!(done, "{section} {column}\n{text}");
    out.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suggested_rules_mask_and_the_leak_scan_finds_only_what_was_left() {
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("postgres.log");
    let pg = Pg::start_logging(Some(&log));
    let admin = pg.connect("postgres").await;
    admin.batch_execute("CREATE DATABASE shop").await.unwrap();
    let shop = pg.connect("shop").await;
    shop.batch_execute(&shop_sql()).await.unwrap();

    let mut cat = coverage::Catalog::default();
    run::read_catalog(&shop, "shop", &mut cat).await.unwrap();
    let samples = scan::sample(&shop, "shop", &cat, 100).await.unwrap();
    let table = |schema: &str, t: &str| rules::TableName {
        database: "shop".into(),
        schema: schema.into(),
        table: t.into(),
    };
    let customers = table("public", "customers");
    assert_eq!(samples.get(&customers, "contact").len(), 100);
    assert_eq!(samples.get(&customers, "seen")[0], "192.0.2.1/32");
    assert!(samples.get(&customers, "id").is_empty(), "not text");
    assert_eq!(
        samples.get(&table("public", "events"), "who").len(),
        100,
        "the partitioned root"
    );
    assert!(samples.get(&table("public", "events_a"), "who").is_empty());
    assert!(samples
        .get(&table("public", "contacts"), "contact")
        .is_empty());
    assert!(samples.get(&table("Sales.EU", "Orders"), "Ref").is_empty());

    // The suggestion parses, is complete and guesses right.
    let text = suggest::suggest_rules_for(Some("7"), &cat, &samples);
    eprintln!("{text}");
    let suggested = rules::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let cov = coverage::check(&suggested, &cat);
    assert!(cov.complete(), "{cov:?}\n{text}");
    let rule = |schema: &str, t: &str, c: &str| {
        suggested
            .table("shop", schema, t)
            .and_then(|t| t.column(c))
            .map(|r| r.transformer.clone())
    };
    use transform::Transformer as T;
    let want = [
        ("public", "customers", "id", T::Keep),
        ("public", "customers", "contact", T::Email),
        ("public", "customers", "card", T::Digits { keep_last: 4 }),
        ("public", "customers", "iban", T::Digits { keep_last: 4 }),
        ("public", "customers", "full_name", T::Name),
        ("public", "customers", "tel_no", T::Phone),
        ("public", "customers", "seen", T::Redact),
        ("public", "customers", "note", T::Null),
        ("public", "customers", "created_at", T::Keep),
        ("public", "customers", "active", T::Keep),
        ("Sales.EU", "Orders", "Buyer Mail", T::Email),
        ("Sales.EU", "Orders", "total", T::Keep),
        ("public", "events", "id", T::Keep),
        ("public", "events", "who", T::Email),
        ("public", "kept", "email", T::Email),
    ];
    for (schema, t, c, w) in want {
        assert_eq!(rule(schema, t, c), Some(w), "{schema}.{t}.{c}\n{text}");
    }
    assert_eq!(rule("Sales.EU", "Orders", "Ref"), None, "generated");
    assert!(suggested.table("shop", "public", "events_a").is_none());
    assert!(suggested.table("shop", "public", "contacts").is_none());
    assert!(suggested.table("shop", "public", "people").is_none());
    assert!(text
        .contains("#   shop.public.people: a materialized view, refreshed from its masked tables"));
    assert!(suggested
        .table("shop", "public", "nothing")
        .is_some_and(|t| t.whole.is_some()));
    assert!(text.contains("# 100 of 100 sampled values are e-mail addresses"));
    assert!(text.contains("[shop.\"Sales.EU\".Orders]"), "{text}");

    // Mask with it, but keep `kept.email` and `copies.stuff` on purpose.
    let text = set_rule(&text, "[shop.public.kept]", "email", "\"keep\"");
    let text = set_rule(&text, "[shop.public.copies]", "stuff", "\"keep\"");
    let chosen = rules::parse(&text).unwrap();
    let cov = coverage::check(&chosen, &cat);
    assert!(cov.complete(), "{cov:?}");
    let originals = scan::masked_originals(&samples, &cov.actions);
    assert!(originals.get(&table("public", "kept"), "email").is_empty());
    assert_eq!(originals.get(&customers, "note").len(), 100);
    let key = key::MaskingKey::from_bytes(KEY);
    run::apply(
        &shop,
        &plan::plan("shop", &cov.actions, &cov.partitioned),
        &key,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // Every statement of the scan is logged: none may carry an original.
    shop.batch_execute("SET log_statement = 'all'; SET log_parameter_max_length = -1")
        .await
        .unwrap();
    let (findings, _) = scan::scan_within(&shop, "shop", &cat, &originals, None)
        .await
        .unwrap();
    let got: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
    assert_eq!(
        got,
        vec![
            "shop.public.copies.stuff: 4 values equal an original value of a masked column",
            "shop.public.kept.email: 5 sampled values still look like e-mail addresses",
        ]
    );
    assert_eq!(
        findings[1].kind,
        scan::FindingKind::LooksLike(detect::Detector::Email)
    );
    assert_eq!(findings[0].kind, scan::FindingKind::Original);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("count(*) FILTER"),
        "the scan was logged: {logged}"
    );
    for original in ["note 17", "cust5@mail.example.com", "+44 20 7946 0005"] {
        assert!(!logged.contains(original), "{original} in the log");
    }
    assert!(!got.iter().any(|f| f.contains("note 1") || f.contains('@')));

    // A copy in another database, one not in UTF8, is found too.
    admin
        .batch_execute(
            "CREATE DATABASE latin ENCODING 'LATIN1' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'",
        )
        .await
        .unwrap();
    let latin = pg.connect("latin").await;
    latin
        .batch_execute(
            "CREATE TABLE t (x varchar(40)); INSERT INTO t VALUES ('Hans Müller'), ('note 17'), ('x'), ('y'), ('z');",
        )
        .await
        .unwrap();
    let mut latin_cat = coverage::Catalog::default();
    run::read_catalog(&latin, "latin", &mut latin_cat)
        .await
        .unwrap();
    let (found, _) = scan::scan_within(&latin, "latin", &latin_cat, &originals, None)
        .await
        .unwrap();
    let got: Vec<String> = found.iter().map(|f| f.to_string()).collect();
    assert_eq!(
        got,
        vec!["latin.public.t.x: 2 values equal an original value of a masked column"]
    );

    // Within a budget: a table larger than it is searched in a sample of
    // its pages (and named); one that fits is read whole.
    shop.batch_execute(
        "CREATE TABLE bigcopy (id int, v text, pad text);
         INSERT INTO bigcopy SELECT g, 'note 17', repeat('x', 200) FROM generate_series(1, 20000) g;",
    )
    .await
    .unwrap();
    let mut big_cat = coverage::Catalog::default();
    run::read_catalog(&shop, "shop", &mut big_cat)
        .await
        .unwrap();
    let (found, sampled) = scan::scan_within(&shop, "shop", &big_cat, &originals, Some(256 << 10))
        .await
        .unwrap();
    assert_eq!(sampled, vec![table("public", "bigcopy")]);
    let big = found
        .iter()
        .find(|f| f.table.table == "bigcopy" && f.column == "v")
        .expect("the sample finds a leak in every row");
    assert!(big.count > 100 && big.count < 20000, "{big}");
    assert!(found.iter().any(|f| f.table.table == "copies"), "{found:?}");
    let (whole, none) = scan::scan_within(&shop, "shop", &big_cat, &originals, None)
        .await
        .unwrap();
    assert!(none.is_empty());
    assert!(whole
        .iter()
        .any(|f| f.table.table == "bigcopy" && f.count == 20000));
    shop.batch_execute("DROP TABLE bigcopy").await.unwrap();

    // A table gone since the catalog was read: one line, its name.
    shop.batch_execute("DROP TABLE copies").await.unwrap();
    let e = scan::sample(&shop, "shop", &cat, 10).await.unwrap_err();
    assert!(
        matches!(&e, scan::ScanError::Table { table, .. } if table.table == "copies"),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "scanning shop.public.copies: sampling values"
    );
    let e = scan::scan_within(&shop, "shop", &cat, &originals, None)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "scanning shop.public.copies: sampling values"
    );
}

/// The leak scan's cost next to the masking it checks, on a 1M-row table
/// with five masked text columns (run by hand: `cargo test --test
/// masking_engine leak_scan_cost -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: a few minutes"]
async fn leak_scan_cost_on_a_million_rows() {
    let pg = Pg::start();
    let admin = pg.connect("postgres").await;
    admin.batch_execute("CREATE DATABASE big").await.unwrap();
    let db = pg.connect("big").await;
    db.batch_execute(
        "CREATE TABLE people (id int PRIMARY KEY, email text UNIQUE, name text, card text, phone text, secret text);
         INSERT INTO people SELECT g, 'p' || g || '@corp.example', 'John Smith ' || g,
           '4111 1111 ' || lpad(g::text, 8, '0'), '+44 20 ' || lpad(g::text, 8, '0'), md5(g::text)
           FROM generate_series(1, 1000000) g;",
    )
    .await
    .unwrap();
    db.batch_execute("VACUUM ANALYZE people").await.unwrap();
    let rules = rules::parse(
        "[big.people]\nid = \"keep\"\nemail = \"email\"\nname = \"name\"\ncard = { fn = \"digits\", keep_last = 4 }\nphone = \"phone\"\nsecret = \"hash\"\n",
    )
    .unwrap();
    let mut cat = coverage::Catalog::default();
    run::read_catalog(&db, "big", &mut cat).await.unwrap();
    let cov = coverage::check(&rules, &cat);
    assert!(cov.complete());
    let t = Instant::now();
    let samples = scan::sample(&db, "big", &cat, scan::SCAN_PER_COLUMN)
        .await
        .unwrap();
    let sampling = t.elapsed();
    let originals = scan::masked_originals(&samples, &cov.actions);
    let t = Instant::now();
    run::apply(
        &db,
        &plan::plan("big", &cov.actions, &cov.partitioned),
        &key::MaskingKey::from_bytes(KEY),
    )
    .await
    .unwrap();
    let masking = t.elapsed();
    let t = Instant::now();
    let (findings, _) = scan::scan_within(&db, "big", &cat, &originals, None)
        .await
        .unwrap();
    let scanning = t.elapsed();
    assert_eq!(findings, vec![]);
    eprintln!(
        "1M rows, 5 masked text columns, {} originals: sampling before {sampling:?}, \
         masking {masking:?}, leak scan {scanning:?} ({:.1} % of masking)",
        originals.values(),
        100.0 * scanning.as_secs_f64() / masking.as_secs_f64()
    );
    assert!(scanning < masking / 2, "{scanning:?} vs {masking:?}");
}
