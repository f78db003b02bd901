//! No original byte left behind: canary values planted in an upload (in
//! an indexed column, a TOASTed one, a column `ANALYZE` has seen, and a row
//! changed after a checkpoint, in another database) and replaced by the
//! anonymisation script are found nowhere in the sealed image's files —
//! not in dead rows, indexes, TOAST, `pg_statistic` or `pg_wal`. The same
//! search finds every canary in the upload, so the search is shown to work.
//!
//! The upload's data lives in its own database, `app`, its only one: the
//! script runs there and clients are pointed there, not at `postgres`.

mod common;

use std::path::Path;

use common::planted::Planted;
use common::*;
use draupnir::core::{ImageState, Progress, UploadTarget};

const INDEXED: &str = "canary-indexed-7f3a9c";
const TOASTED: &str = "canary-toasted-51b2e0";
const ANALYSED: &str = "canary-analysed-c4d817";
const CHURNED: &str = "canary-churned-93e6aa";
const CANARIES: [&str; 4] = [INDEXED, TOASTED, ANALYSED, CHURNED];

/// The script masks every column that held a canary in `app` (it names no
/// database: it runs in the upload's only one), then the churned table's
/// in `postgres`, whose canary lives only in a dead row (and the WAL).
const SCRIPT: &str = "UPDATE people SET email = 'person' || id || '@example.invalid', bio = 'redacted', city = 'somewhere';
\\connect postgres
UPDATE accounts SET login = 'user' || id;";

fn planted_upload() -> Vec<u8> {
    let p = Planted::new();
    p.plant("postgres", "CREATE DATABASE app");
    p.plant(
        "app",
        &format!(
            "CREATE TABLE people (id int PRIMARY KEY, email text UNIQUE, bio text, city text);
             ALTER TABLE people ALTER COLUMN bio SET STORAGE EXTERNAL;
             INSERT INTO people SELECT g, 'person' || g || '@example.com', 'short', 'Oslo'
               FROM generate_series(1, 200) g;
             INSERT INTO people VALUES
               (1000, '{INDEXED}@example.com', '{TOASTED}' || repeat(md5('seed'), 200), 'Oslo');
             UPDATE people SET city = '{ANALYSED}' WHERE id <= 150;
             ANALYZE people;"
        ),
    );
    p.plant(
        "postgres",
        &format!(
            "CREATE TABLE accounts (id int PRIMARY KEY, login text);
             INSERT INTO accounts VALUES (1, '{CHURNED}');"
        ),
    );
    p.plant("postgres", "CHECKPOINT");
    p.plant(
        "postgres",
        "UPDATE accounts SET login = 'someone-else' WHERE id = 1",
    );
    p.stop_and_pack()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every regular file beneath `dir`, and which canaries each holds.
fn canaries_in(dir: &Path) -> Vec<(String, &'static str)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let bytes = std::fs::read(e.path()).unwrap();
                for c in CANARIES {
                    if contains(&bytes, c.as_bytes()) {
                        let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                        found.push((rel, c));
                    }
                }
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_canary_survives_in_any_file_of_the_sealed_image() {
    let upload = planted_upload();
    // The search works: every canary is in the upload as it came.
    for c in CANARIES {
        assert!(contains(&upload, c.as_bytes()), "{c} planted in the upload");
    }
    let env = TestEnv::new().await;
    let admin = env.admin();
    let svc = env.svc();
    let img = svc
        .create_image(&admin, NewImage::with_script(Some(SCRIPT)))
        .unwrap();
    svc.ingest(&admin, img.id, UploadTarget::Stream, &upload[..])
        .await
        .expect("upload");
    let (upload_dir, sealed) = svc.image_path(img.id);
    let before = canaries_in(&upload_dir);
    for c in CANARIES {
        assert!(
            before.iter().any(|(_, f)| *f == c),
            "{c} is in the uploaded files: {before:?}"
        );
    }
    assert!(
        before.iter().any(|(f, _)| f.starts_with("pg_wal/")),
        "the upload's WAL holds canaries: {before:?}"
    );
    let steps = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = steps.clone();
    let progress: draupnir::core::FinaliseProgress = std::sync::Arc::new(move |p| {
        if let Progress::Step(s) = p {
            seen.lock().unwrap().push(s);
        }
    });
    let image = svc
        .finalise_image(&admin, img.id, Some(progress))
        .await
        .expect("finalise");
    assert_eq!(image.state, ImageState::Ready);
    let steps = steps.lock().unwrap().clone();
    assert!(
        steps
            .iter()
            .any(|s| s == "using database app (the upload's only database of its own)"),
        "finalise says which database it used: {steps:?}"
    );
    let left = canaries_in(&sealed);
    assert!(
        left.is_empty(),
        "original bytes left in the sealed image: {left:?}"
    );
    // The sealed image still serves, with the masked data, and clients
    // are pointed at the database the data is in.
    let info = svc
        .create_instance(&admin, draupnir::core::InstanceRef::Id(img.id))
        .await
        .expect("instance of the sealed image");
    assert_eq!(info.database, "app");
    assert_eq!(
        psql_cert(&info, "SELECT count(*) FROM people WHERE bio = 'redacted'").unwrap(),
        "201"
    );
}

/// With more than one database of its own, the upload's script runs where
/// `[postgres] database` says (here the default, `postgres`), finalise says
/// so, and clients are pointed there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_several_databases_the_configured_one_is_used() {
    let p = Planted::new();
    p.plant("postgres", "CREATE DATABASE app");
    p.plant("postgres", "CREATE DATABASE crm");
    p.plant(
        "postgres",
        "CREATE TABLE marker (x int); INSERT INTO marker VALUES (1)",
    );
    let upload = p.stop_and_pack();
    let env = TestEnv::new().await;
    let admin = env.admin();
    let svc = env.svc();
    let img = svc
        .create_image(
            &admin,
            NewImage::with_script(Some("UPDATE marker SET x = 2;")),
        )
        .unwrap();
    svc.ingest(&admin, img.id, UploadTarget::Stream, &upload[..])
        .await
        .expect("upload");
    let steps = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = steps.clone();
    let progress: draupnir::core::FinaliseProgress = std::sync::Arc::new(move |p| {
        if let Progress::Step(s) = p {
            seen.lock().unwrap().push(s);
        }
    });
    svc.finalise_image(&admin, img.id, Some(progress))
        .await
        .expect("finalise");
    let steps = steps.lock().unwrap().clone();
    assert!(
        steps
            .iter()
            .any(|s| s == "using database postgres ([postgres] database)"),
        "{steps:?}"
    );
    let info = svc
        .create_instance(&admin, draupnir::core::InstanceRef::Id(img.id))
        .await
        .expect("instance");
    assert_eq!(info.database, "postgres");
    assert_eq!(psql_cert(&info, "SELECT x FROM marker").unwrap(), "2");
}

/// A trigger the upload planted resets the statistics when the script
/// changes its table (it runs as the script's superuser), to make the
/// change counts hide what the script touched. It cannot: a transaction's
/// own counts are added when it ends, after its triggers ran, so the
/// table is still seen as changed, rewritten, and the canary is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_statistics_reset_does_not_hide_a_change() {
    let p = Planted::new();
    p.plant(
        "postgres",
        &format!(
            "CREATE TABLE people (id int PRIMARY KEY, email text UNIQUE);
             INSERT INTO people SELECT g, 'person' || g || '@example.com' FROM generate_series(1, 50) g;
             INSERT INTO people VALUES (1000, '{INDEXED}@example.com');
             CREATE FUNCTION hide() RETURNS trigger LANGUAGE plpgsql AS
               $f$ BEGIN PERFORM pg_stat_reset(); RETURN NULL; END $f$;
             CREATE TRIGGER hide AFTER UPDATE ON people FOR EACH STATEMENT EXECUTE FUNCTION hide();"
        ),
    );
    let upload = p.stop_and_pack();
    assert!(contains(&upload, INDEXED.as_bytes()), "planted");
    let env = TestEnv::new().await;
    let admin = env.admin();
    let svc = env.svc();
    let img = svc
        .create_image(
            &admin,
            NewImage::with_script(Some(
                "UPDATE people SET email = 'person' || id || '@example.invalid';",
            )),
        )
        .unwrap();
    svc.ingest(&admin, img.id, UploadTarget::Stream, &upload[..])
        .await
        .expect("upload");
    let (_, sealed) = svc.image_path(img.id);
    svc.finalise_image(&admin, img.id, None)
        .await
        .expect("finalise");
    let left = canaries_in(&sealed);
    assert!(left.is_empty(), "original bytes left: {left:?}");
}
