//! Masking rules through finalise, as an operator meets them: one upload
//! with two databases of its own (`app`, `crm`), a foreign key to a
//! masked unique column, a partitioned table, a view, a generated column,
//! a table without columns, quoted identifiers with dots and capitals, and
//! an audit table to empty. Sealed with complete rules it is `checked`;
//! its masked values are the same in both databases and in a second
//! image; keys and unique indexes hold; no original value is in any file
//! of the sealed image. Fail closed by default: a script-only image, an
//! image with nothing, a rule on the wrong type and a rule for a column
//! that is gone are each refused with one line, and nothing is sealed.

mod common;

use std::path::Path;
use std::sync::LazyLock;

use common::planted::Planted;
use common::*;
use draupnir::core::{
    AnonymisationStatus, ConnectionInfo, CoreError, ImageId, ImageState, InstanceRef, UploadTarget,
};

/// Every original text value starts with this (e-mails end with
/// `@corp.example`): a search for either over the image's files finds
/// any original that is left.
const ORIGINAL: &str = "orig-";
const DOMAIN: &str = "corp.example";

/// Rules that cover every column of [`UPLOAD`].
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
"Nick.Name" = { sql = "left(md5(\"Nick.Name\"), 12)" }

[app.orders]
id = "keep"
user_email = "email"
note = "redact"

[app.audit_log]
"*" = "truncate"

[app.events]
id = "keep"
who = "first_name"

[app.shapeless]
"*" = "keep"

[app.totals]
a = "keep"
b = "keep"
s = "keep"

[app."Sales.EU"."Leads"]
"E-Mail" = "email"

[crm.contacts]
id = "keep"
email = "email"
"#;

static UPLOAD: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let p = Planted::new();
    p.plant("postgres", "CREATE DATABASE app");
    p.plant("postgres", "CREATE DATABASE crm");
    p.plant(
        "app",
        r#"
        CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE NOT NULL, name text,
          card text, phone text, secret text, notes text, born date, salary numeric,
          "Nick.Name" text);
        INSERT INTO users SELECT g, 'orig-' || g || '@corp.example', 'orig-name-' || g,
          '4111-1111-1111-' || lpad(g::text, 4, '0'), '+47 2222 ' || lpad(g::text, 4, '0'),
          'orig-secret-' || g, 'orig-note-' || g, date '1980-01-01' + g, 1000 + g,
          'orig-nick-' || g
          FROM generate_series(1, 100) g;
        CREATE TABLE orders (id int PRIMARY KEY, user_email text REFERENCES users (email),
          note text);
        INSERT INTO orders SELECT g, 'orig-' || (g % 100 + 1) || '@corp.example',
          'orig-order-' || g FROM generate_series(1, 300) g;
        CREATE TABLE audit_log (id int, payload text);
        INSERT INTO audit_log SELECT g, 'orig-audit-' || g FROM generate_series(1, 50) g;
        CREATE TABLE events (id int, who text) PARTITION BY RANGE (id);
        CREATE TABLE events_low PARTITION OF events FOR VALUES FROM (0) TO (50);
        CREATE TABLE events_high PARTITION OF events FOR VALUES FROM (50) TO (1000);
        INSERT INTO events SELECT g, 'orig-who-' || g FROM generate_series(1, 99) g;
        CREATE VIEW user_emails AS SELECT email FROM users;
        CREATE TABLE shapeless ();
        CREATE TABLE totals (a int, b int, s int GENERATED ALWAYS AS (a + b) STORED);
        INSERT INTO totals (a, b) VALUES (1, 2);
        CREATE SCHEMA "Sales.EU";
        CREATE TABLE "Sales.EU"."Leads" ("E-Mail" text);
        INSERT INTO "Sales.EU"."Leads" VALUES ('orig-lead@corp.example');
        ANALYZE;
        "#,
    );
    p.plant(
        "crm",
        "CREATE TABLE contacts (id int PRIMARY KEY, email text);
         INSERT INTO contacts SELECT g, 'orig-' || g || '@corp.example' FROM generate_series(1, 50) g;
         ANALYZE;",
    );
    p.plant("postgres", "CHECKPOINT");
    p.stop_and_pack()
});

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Files beneath `dir` that hold an original value.
fn originals_in(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let bytes = std::fs::read(e.path()).unwrap();
                if contains(&bytes, ORIGINAL.as_bytes()) || contains(&bytes, DOMAIN.as_bytes()) {
                    found.push(e.path().strip_prefix(dir).unwrap().display().to_string());
                }
            }
        }
    }
    found
}

async fn upload(env: &TestEnv, new: NewImage) -> ImageId {
    let (svc, admin) = (env.svc(), env.admin());
    let img = svc.create_image(&admin, new).unwrap();
    svc.ingest(&admin, img.id, UploadTarget::Stream, &UPLOAD[..])
        .await
        .expect("upload");
    img.id
}

fn with_rules(rules: &str) -> NewImage {
    NewImage {
        rules: Some(rules.to_string()),
        ..NewImage::default()
    }
}

fn in_db(info: &ConnectionInfo, db: &str) -> ConnectionInfo {
    let mut i = info.clone();
    i.database = db.to_string();
    i
}

fn q(info: &ConnectionInfo, db: &str, sql: &str) -> String {
    psql_cert(&in_db(info, db), sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_rules_seal_a_checked_image_with_no_original_left() {
    let env = TestConfig::new()
        .masking("require_coverage = true")
        .open()
        .await;
    let svc = env.svc();
    let admin = env.admin();
    let id = upload(&env, with_rules(RULES)).await;
    let (upload_dir, sealed) = svc.image_path(id);
    assert!(
        !originals_in(&upload_dir).is_empty(),
        "the search finds originals in the upload"
    );
    let image = svc
        .finalise_image(&admin, id, None)
        .await
        .expect("finalise");
    assert_eq!(image.state, ImageState::Ready);
    let m = image.manifest().expect("a manifest");
    assert_eq!(m.status, AnonymisationStatus::Checked, "{m:?}");
    assert_eq!(m.rules_from, vec!["image"]);
    assert_eq!(m.uncovered_columns, 0);
    assert_eq!(m.scan.result, "clean", "{m:?}");
    assert!(m.scan.originals_from_columns >= 10, "{m:?}");
    let users = m
        .tables
        .iter()
        .find(|t| t.table == "app.public.users")
        .expect("users in the manifest");
    assert_eq!(
        (users.masked_columns, users.kept_columns, users.rows),
        (9, 1, Some(100))
    );
    assert!(m
        .tables
        .iter()
        .any(|t| t.table == "app.public.audit_log" && t.truncated && t.rows == Some(0)));
    let left = originals_in(&sealed);
    let info = svc
        .create_instance(&admin, InstanceRef::Id(id))
        .await
        .expect("instance");
    let named: Vec<String> = left
        .iter()
        .map(|f| {
            let node = f.rsplit('/').next().unwrap_or_default();
            let db = if f.starts_with("global/") { "postgres" } else { "app" };
            let sql = format!("SELECT coalesce((SELECT relname FROM pg_class WHERE pg_relation_filenode(oid) = {node}::oid), '?')");
            format!("{f} ({})", psql_cert(&in_db(&info, db), &sql).unwrap_or_default())
        })
        .collect();
    let stats = q(&info, "app", "SELECT string_agg(tablename || '.' || attname || ':' || inherited, ',') FROM pg_stats WHERE most_common_vals::text LIKE '%orig-%' OR histogram_bounds::text LIKE '%orig-%'");
    assert!(
        left.is_empty(),
        "originals left in the sealed image: {named:?} live stats: {stats}"
    );
    // Row counts unchanged, unique in, unique out, the key still joins.
    assert_eq!(
        q(
            &info,
            "app",
            "SELECT count(*), count(DISTINCT email) FROM users"
        ),
        "100|100"
    );
    assert_eq!(
        q(
            &info,
            "app",
            "SELECT count(*) FROM orders o JOIN users u ON u.email = o.user_email"
        ),
        "300"
    );
    assert_eq!(q(&info, "app", "SELECT count(*) FROM audit_log"), "0");
    assert_eq!(
        q(
            &info,
            "app",
            "SELECT count(*) FROM events WHERE who LIKE 'orig-%'"
        ),
        "0"
    );
    assert_eq!(q(&info, "app", "SELECT s FROM totals"), "3");
    // Shapes kept: digits keep the last four and the dashes.
    let card = q(&info, "app", "SELECT card FROM users WHERE id = 7");
    assert!(card.ends_with("-0007") && card.len() == 19, "{card}");
    assert_eq!(q(&info, "app", "SELECT count(notes) FROM users"), "0");
    // The same original gives the same masked value in both databases.
    let app = q(
        &info,
        "app",
        "SELECT string_agg(email, ',' ORDER BY id) FROM users WHERE id <= 50",
    );
    let crm = q(
        &info,
        "crm",
        "SELECT string_agg(email, ',' ORDER BY id) FROM contacts",
    );
    assert_eq!(app, crm);
    assert!(!app.contains(DOMAIN), "{app}");

    // And in a later image of the same data.
    let again = upload(&env, with_rules(RULES)).await;
    svc.finalise_image(&admin, again, None)
        .await
        .expect("second finalise");
    let info2 = svc
        .create_instance(&admin, InstanceRef::Id(again))
        .await
        .expect("instance of the second image");
    assert_eq!(
        q(
            &info2,
            "app",
            "SELECT string_agg(email, ',' ORDER BY id) FROM users WHERE id <= 50"
        ),
        app
    );
    // `latest` is the newest checked image.
    let latest = svc.latest_ready_image().unwrap().expect("latest");
    assert_eq!(latest.id, again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_by_default() {
    // The product's default: require_coverage = true.
    let env = TestConfig::new().masking("").open().await;
    let svc = env.svc();
    let admin = env.admin();

    // A 5.x nightly job: a script and no rules.
    let id = upload(
        &env,
        NewImage::with_script(Some("UPDATE users SET email = 'x' || id;")),
    )
    .await;
    let err = svc
        .finalise_image(&admin, id, None)
        .await
        .expect_err("a script-only image is refused")
        .to_string();
    assert!(
        err.contains("do not cover 22 column(s)") && err.contains("app.public.audit_log.payload"),
        "{err}"
    );
    assert!(err.contains("suggest-rules"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let image = svc.image(&admin, id).unwrap();
    assert_eq!(image.state, ImageState::Failed);
    let (upload_dir, sealed) = svc.image_path(id);
    assert!(!upload_dir.exists() && !sealed.exists());

    // Nothing at all: refused, naming --no-anonymisation.
    let id = upload(&env, NewImage::default()).await;
    let err = svc
        .finalise_image(&admin, id, None)
        .await
        .expect_err("an image with nothing is refused")
        .to_string();
    assert!(err.contains("--no-anonymisation"), "{err}");

    // Declared not personal: sealed, recorded as such, never `checked`.
    let id = upload(&env, NewImage::not_personal()).await;
    let image = svc.finalise_image(&admin, id, None).await.expect("sealed");
    assert_eq!(
        image.anonymisation_status(),
        Some(AnonymisationStatus::None)
    );

    // A transformer that does not fit the column's type: its line.
    let bad = RULES.replace(
        "born = { fn = \"shift_date\", max_days = 30 }",
        "born = \"email\"",
    );
    let id = upload(&env, with_rules(&bad)).await;
    let err = svc
        .finalise_image(&admin, id, None)
        .await
        .expect_err("a misfit is refused")
        .to_string();
    assert!(
        err.contains("rules line 10") && err.contains("born") && err.lines().count() == 1,
        "{err}"
    );

    // A column that is gone since the rules were written.
    let gone = RULES.replace("phone = \"phone\"", "phone = \"phone\"\nfax = \"phone\"");
    let id = upload(&env, with_rules(&gone)).await;
    let err = svc
        .finalise_image(&admin, id, None)
        .await
        .expect_err("a rule for a missing column is refused")
        .to_string();
    assert!(err.contains("no column `fax`"), "{err}");

    // Complete rules that keep a column of e-mail addresses: the leak
    // scan finds them (they look personal, and they equal originals of
    // app's masked e-mails) and refuses the seal, naming the column.
    let leaky = RULES.replace(
        "[crm.contacts]\nid = \"keep\"\nemail = \"email\"",
        "[crm.contacts]\nid = \"keep\"\nemail = \"keep\"",
    );
    assert_ne!(leaky, RULES);
    let id = upload(&env, with_rules(&leaky)).await;
    let err = svc
        .finalise_image(&admin, id, None)
        .await
        .expect_err("the leak scan refuses")
        .to_string();
    assert!(
        err.contains("leak scan: crm.public.contacts.email"),
        "{err}"
    );
    assert!(!err.contains(DOMAIN), "no value in the reason: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // Rules that do not parse are refused when given, with the line.
    let err = svc
        .create_image(&admin, with_rules("[app.users]\nemail = \"emial\"\n"))
        .expect_err("unknown transformer");
    assert!(matches!(err, CoreError::BadInput(_)), "{err:?}");
    let err = err.to_string();
    assert!(
        err.contains("line 2") && err.contains("email"),
        "did you mean: {err}"
    );
    let err = svc
        .create_image(
            &admin,
            NewImage {
                rules: Some(RULES.into()),
                no_anonymisation: true,
                ..NewImage::default()
            },
        )
        .expect_err("not personal but masked");
    assert!(err.to_string().contains("--no-anonymisation"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchecked_images_are_marked_and_never_preferred() {
    let env = TestConfig::new()
        .masking("require_coverage = false")
        .open()
        .await;
    let svc = env.svc();
    let admin = env.admin();
    let checked = upload(&env, with_rules(RULES)).await;
    svc.finalise_image(&admin, checked, None)
        .await
        .expect("checked");
    // Newer, with crm's rules missing: sealed, but unchecked.
    let half = RULES.split("[crm.contacts]").next().unwrap().to_string();
    let unchecked = upload(&env, with_rules(&half)).await;
    let image = svc
        .finalise_image(&admin, unchecked, None)
        .await
        .expect("sealed unchecked");
    let m = image.manifest().unwrap();
    assert_eq!(m.status, AnonymisationStatus::Unchecked);
    assert_eq!(m.uncovered_columns, 2, "{m:?}");
    // A masked key whose references are not masked alike breaks the
    // foreign key: refused, naming it, nothing sealed.
    let broken = RULES.replace("user_email = \"email\"", "user_email = \"keep\"");
    let id = upload(&env, with_rules(&broken)).await;
    let err = svc
        .finalise_image(&admin, id, None)
        .await
        .expect_err("orphans")
        .to_string();
    assert!(
        err.contains("orders_user_email_fkey") && err.contains("300 row(s)"),
        "{err}"
    );
    assert_eq!(
        svc.latest_ready_image().unwrap().map(|i| i.id),
        Some(checked)
    );
    assert_eq!(svc.status().unwrap().status, "unchecked");
    let info = svc
        .create_instance(&admin, InstanceRef::Latest)
        .await
        .expect("latest");
    assert_eq!(info.instance.image_id, checked);
}
