//! Containment of the role `draupnir`: an upload that plants a `draupnir`
//! role with superuser and server-program memberships, superuser-owned
//! SECURITY DEFINER functions (in `public`, `pg_catalog`, an extension,
//! another database, `template1`), server-file functions granted to
//! PUBLIC and a library preloaded at login is finalised, and every attack
//! from an instance's client fails; an upload the hygiene cannot fix fails
//! with the list of what is wrong; and the finalise's own socket refuses
//! processes running as the instance user.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::planted::Planted;
use common::*;
use draupnir::core::test_support::pgconn;
use draupnir::core::test_support::roles::{self, Problem};
use draupnir::core::ImageState;
use draupnir::core::Progress;
use draupnir::core::{ConnectionInfo, ImageId, InstanceRef, UploadTarget};

/// A SECURITY DEFINER function `name(cmd text)` that runs `cmd` on the host.
fn runner(name: &str, kind: &str) -> String {
    let returns = if kind == "PROCEDURE" {
        ""
    } else {
        "RETURNS void"
    };
    format!(
        "CREATE {kind} {name}(cmd text) {returns} LANGUAGE plpgsql SECURITY DEFINER AS $f$
         BEGIN EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', cmd); END $f$;"
    )
}

async fn upload_and_finalise(
    env: &TestEnv,
    tar: &[u8],
    script: Option<&str>,
) -> (ImageId, Result<(), String>) {
    let admin = env.admin();
    let img = env
        .svc()
        .create_image(&admin, common::image_with(script))
        .unwrap();
    env.svc()
        .ingest(&admin, img.id, UploadTarget::Stream, tar)
        .await
        .expect("upload");
    let r = env
        .svc()
        .finalise_image(&admin, img.id, None)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    (img.id, r)
}

/// `psql` with the instance's certificate, in database `db`.
fn psql_db(info: &ConnectionInfo, db: &str, sql: &str) -> Result<String, String> {
    let mut info = info.clone();
    info.database = db.into();
    psql_cert(&info, sql)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_roles_and_functions_give_a_client_nothing() {
    let planted = Planted::new();
    planted.plant("template1", &runner("public.run_in_template", "FUNCTION"));
    planted.plant(
        "postgres",
        &format!(
            "CREATE ROLE boss SUPERUSER NOLOGIN;
             CREATE ROLE draupnir LOGIN CREATEROLE;
             GRANT boss TO draupnir WITH ADMIN OPTION;
             GRANT pg_execute_server_program, pg_read_server_files, pg_write_server_files TO draupnir;
             CREATE TABLE t (x text); INSERT INTO t VALUES ('kept');
             ALTER TABLE t OWNER TO draupnir;
             CREATE FUNCTION public.am_i_super() RETURNS text LANGUAGE sql SECURITY DEFINER
               AS $f$ SELECT current_setting('is_superuser') $f$;
             CREATE FUNCTION pg_catalog.promote_me() RETURNS void LANGUAGE plpgsql SECURITY DEFINER
               AS $f$ BEGIN ALTER ROLE draupnir SUPERUSER; END $f$;
             {run} {run_cat} {run_proc} {ext_run}
             ALTER EXTENSION plpgsql ADD FUNCTION public.ext_run(text);
             GRANT EXECUTE ON FUNCTION pg_catalog.lo_import(text) TO PUBLIC;
             GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_file(text) TO PUBLIC;
             ALTER DATABASE postgres SET work_mem = '8MB';",
            run = runner("public.run", "FUNCTION"),
            run_cat = runner("pg_catalog.run_cat", "FUNCTION"),
            run_proc = runner("public.run_proc", "PROCEDURE"),
            ext_run = runner("public.ext_run", "FUNCTION"),
        ),
    );
    planted.plant("postgres", "CREATE DATABASE second");
    planted.plant("second", &runner("public.run2", "FUNCTION"));
    // Last: an event trigger that runs a host command on every DDL (were
    // it to fire during the finalise, it would run as a superuser), and a
    // library every login loads (a missing one here) unless the session
    // overrides it.
    let fired = format!("/tmp/pwned-evt-{}", rand::random::<u64>());
    planted.plant(
        "postgres",
        &format!(
            "CREATE FUNCTION public.on_ddl() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER
               AS $f$ BEGIN EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', 'touch {fired}'); END $f$;
             CREATE EVENT TRIGGER on_ddl ON ddl_command_end EXECUTE FUNCTION public.on_ddl();
             ALTER EVENT TRIGGER on_ddl ENABLE ALWAYS;
             ALTER ROLE ALL SET session_preload_libraries = '/nonexistent/evil';"
        ),
    );
    let tar = planted.stop_and_pack();

    let env = TestEnv::new().await;
    let (image, r) = upload_and_finalise(
        &env,
        &tar,
        // `second` is the upload's only database of its own, so the
        // script would run there: this one works on `postgres`.
        Some("\\connect postgres\nCREATE TABLE anonymised (x int); UPDATE t SET x = x;"),
    )
    .await;
    r.expect("a planted upload is finalised, contained");
    assert!(
        !Path::new(&fired).exists(),
        "the upload's event trigger fired during the finalise"
    );
    let admin = env.admin();
    let mut info = env
        .svc()
        .create_instance(&admin, InstanceRef::Id(image))
        .await
        .unwrap();
    // Clients are pointed at the upload's only database of its own; the
    // attacks below come from `postgres`, where the planted objects are.
    assert_eq!(info.database, "second");
    info.database = "postgres".into();

    // The data is there and the fresh draupnir owns it; the upload's own
    // role of that name was renamed away.
    assert_eq!(psql_cert(&info, "SELECT x FROM t").unwrap(), "kept");
    assert_eq!(
        psql_cert(
            &info,
            "SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles WHERE rolname LIKE 'draupnir%'"
        )
        .unwrap(),
        "draupnir,draupnir_upload_1"
    );
    assert_eq!(
        psql_cert(
            &info,
            "SELECT rolsuper, rolcreaterole, (SELECT count(*) FROM pg_auth_members WHERE member = r.oid) \
             FROM pg_roles r WHERE rolname = current_user"
        )
        .unwrap(),
        "f|f|0"
    );
    // Settings a non-superuser may make stay; superuser-only ones went
    // (the bogus preload library would refuse every login).
    assert_eq!(psql_cert(&info, "SHOW work_mem").unwrap(), "8MB");

    let pwned = format!("/tmp/pwned-{}", rand::random::<u64>());
    let attacks = [
        "SET ROLE boss".to_string(),
        "SET SESSION AUTHORIZATION postgres".to_string(),
        "GRANT boss TO draupnir".to_string(),
        "GRANT pg_execute_server_program TO draupnir".to_string(),
        "ALTER ROLE draupnir SUPERUSER".to_string(),
        format!("COPY (SELECT 1) TO PROGRAM 'touch {pwned}'"),
        "COPY t FROM '/etc/passwd'".to_string(),
        "SELECT pg_read_file('/etc/passwd')".to_string(),
        "SELECT lo_import('/etc/passwd')".to_string(),
        format!("SELECT lo_export(lo_create(0), '{pwned}')"),
        format!("SELECT run('touch {pwned}')"),
        format!("SELECT run_cat('touch {pwned}')"),
        format!("SELECT pg_catalog.run_cat('touch {pwned}')"),
        format!("CALL run_proc('touch {pwned}')"),
        format!("SELECT ext_run('touch {pwned}')"),
        "SELECT promote_me()".to_string(),
        // DDL fires the upload's event trigger, as draupnir now.
        "CREATE TABLE z (x int)".to_string(),
    ];
    for sql in &attacks {
        let r = psql_cert(&info, sql);
        assert!(r.is_err(), "`{sql}` must fail, got {r:?}");
    }
    for (db, f) in [("second", "run2"), ("template1", "run_in_template")] {
        let sql = format!("SELECT {f}('touch {pwned}')");
        let r = psql_db(&info, db, &sql);
        assert!(r.is_err(), "`{sql}` in {db} must fail, got {r:?}");
    }
    assert!(!Path::new(&pwned).exists(), "a host command ran");
    assert!(
        !Path::new(&fired).exists(),
        "the event trigger ran a host command"
    );
    assert_eq!(
        psql_cert(&info, "SELECT evtenabled FROM pg_event_trigger").unwrap(),
        "A",
        "the event trigger is enabled as it was"
    );
    // The planted definer functions run, as draupnir.
    assert_eq!(psql_cert(&info, "SELECT am_i_super()").unwrap(), "off");
    assert_eq!(
        psql_cert(
            &info,
            "SELECT count(*) FROM pg_proc WHERE prosecdef AND pg_get_userbyid(proowner) <> 'draupnir'"
        )
        .unwrap(),
        "0"
    );
    assert_eq!(
        psql_cert(
            &info,
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        )
        .unwrap(),
        "f"
    );
}

/// The upload's bootstrap superuser is itself named `draupnir` (and no
/// role `postgres` exists): the admin role is made in single-user mode,
/// with its password, and the superuser is renamed away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_superuser_named_draupnir_is_renamed_away() {
    let planted = Planted::with_superuser("draupnir");
    planted.plant(
        "postgres",
        &format!(
            "CREATE TABLE t (x text); INSERT INTO t VALUES ('kept'); {}",
            runner("public.run", "FUNCTION")
        ),
    );
    let tar = planted.stop_and_pack();
    let env = TestEnv::new().await;
    let (image, r) = upload_and_finalise(&env, &tar, Some("UPDATE t SET x = 'anonymised';")).await;
    r.expect("finalised");
    let info = env
        .svc()
        .create_instance(&env.admin(), InstanceRef::Id(image))
        .await
        .unwrap();
    assert_eq!(psql_cert(&info, "SELECT x FROM t").unwrap(), "anonymised");
    assert_eq!(
        psql_cert(
            &info,
            "SELECT rolname || ':' || rolsuper FROM pg_roles WHERE oid = 10 OR rolname = current_user ORDER BY oid"
        )
        .unwrap(),
        "draupnir_upload_1:true\ndraupnir:false"
    );
    let pwned = format!("/tmp/pwned-{}", rand::random::<u64>());
    assert!(psql_cert(&info, &format!("SELECT run('touch {pwned}')")).is_err());
    assert!(psql_cert(&info, "SET ROLE draupnir_upload_1").is_err());
    assert!(!Path::new(&pwned).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checks_name_what_is_wrong() {
    let planted = Planted::new();
    planted.plant(
        "postgres",
        "CREATE ROLE boss SUPERUSER NOLOGIN;
         CREATE ROLE draupnir LOGIN CREATEDB;
         GRANT boss, pg_read_server_files TO draupnir;
         CREATE FUNCTION public.f() RETURNS int LANGUAGE sql SECURITY DEFINER AS $f$ SELECT 1 $f$;
         CREATE FUNCTION public.evil() RETURNS void LANGUAGE c AS '$libdir/plpgsql', 'plpgsql_call_handler';
         UPDATE pg_proc SET probin = './evil' WHERE proname = 'evil';
         CREATE FUNCTION public.imp(text) RETURNS oid LANGUAGE internal STRICT AS 'be_lo_import';
         GRANT EXECUTE ON FUNCTION pg_catalog.lo_export(oid, text) TO PUBLIC;
         ALTER ROLE draupnir SET log_min_duration_statement = 0;",
    );
    planted.plant(
        "postgres",
        "CREATE DATABASE closed OWNER draupnir ALLOW_CONNECTIONS false",
    );
    let c = pgconn::connect_unix(
        &planted.data,
        5432,
        "draupnir",
        "postgres",
        Duration::from_secs(10),
    )
    .await
    .expect("connect as draupnir");
    let mut problems = roles::cluster_problems(&c).await.unwrap();
    problems.extend(roles::database_problems(&c, "postgres").await.unwrap());
    let expect = [
        Problem::Attribute("CREATEDB".into()),
        Problem::MemberOf("boss".into()),
        Problem::MemberOf("pg_read_server_files".into()),
        Problem::Reaches("boss".into()),
        Problem::Reaches("pg_read_server_files".into()),
        Problem::Setting {
            database: None,
            name: "log_min_duration_statement".into(),
        },
        Problem::ClosedDatabase("closed".into()),
        Problem::SecurityDefiner {
            database: "postgres".into(),
            function: "f()".into(),
            owner: "postgres".into(),
        },
        Problem::ForeignLibrary {
            database: "postgres".into(),
            function: "evil()".into(),
            library: "./evil".into(),
        },
        Problem::FileFunctionAlias {
            database: "postgres".into(),
            function: "imp(text)".into(),
            internal: "be_lo_import".into(),
        },
        Problem::FileFunction {
            database: "postgres".into(),
            function: "lo_export(oid,text)".into(),
        },
    ];
    for p in &expect {
        assert!(problems.contains(p), "{p:?} missing from {problems:?}");
    }
    assert_eq!(problems.len(), expect.len(), "{problems:?}");
    let line = roles::summary(&problems);
    assert!(!line.contains('\n'));
    assert!(line.contains("(and 6 more)"), "{line}");
    drop(c);

    // The hygiene fixes what it can; an upload with a library outside
    // $libdir then fails its finalise, naming it.
    let tar = planted.stop_and_pack();
    let env = TestEnv::new().await;
    let (image, r) = upload_and_finalise(&env, &tar, None).await;
    let err = r.expect_err("a foreign library must fail the finalise");
    assert!(
        err.contains("access proof failed")
            && err.contains("evil()")
            && err.contains("./evil")
            && err.contains("imp(text)"),
        "{err}"
    );
    assert!(!err.contains("SECURITY DEFINER"), "fixed by hygiene: {err}");
    assert!(!err.contains("member of"), "fixed by hygiene: {err}");
    assert!(!err.contains('\n'), "{err}");
    let img = env.svc().image(&env.admin(), image).unwrap();
    assert_eq!(img.state, ImageState::Failed);

    // Dropping them in the anonymisation script makes it pass.
    let planted_again = tar;
    let (_, r) = upload_and_finalise(
        &env,
        &planted_again,
        Some("DROP FUNCTION public.evil(); DROP FUNCTION public.imp(text);"),
    )
    .await;
    r.expect("fixed by the script");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_finalise_socket_refuses_the_instance_user() {
    let env = TestEnv::new().await;
    let admin = env.admin();
    // The script waits until the test says go (a file in the data
    // directory), so the attempts below meet a finalise in progress.
    let script = "DO $$ BEGIN
         WHILE NOT EXISTS (SELECT 1 FROM pg_ls_dir('.') f WHERE f = 'go') LOOP
           PERFORM pg_sleep(0.05);
         END LOOP; END $$;
         SELECT 'script done';";
    let img = env
        .svc()
        .create_image(&admin, NewImage::with_script(Some(script)))
        .unwrap();
    env.svc()
        .ingest(&admin, img.id, UploadTarget::Stream, &FIXTURE.tar[..])
        .await
        .expect("upload");
    let running = Arc::new(Mutex::new(false));
    let flag = running.clone();
    let svc = env.svc().clone();
    let a = admin.clone();
    let id = img.id;
    let task = tokio::spawn(async move {
        svc.finalise_image(
            &a,
            id,
            Some(Arc::new(move |p| {
                if matches!(&p, Progress::Step(s) if s.contains("anonymisation script")) {
                    *flag.lock().unwrap() = true;
                }
            })),
        )
        .await
    });
    let dir = env.data().join("image_uploads").join(img.id.to_string());
    while !*running.lock().unwrap() {
        assert!(!task.is_finished(), "finalise ended early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for user in ["postgres", "draupnir_finalise", "draupnir"] {
        let out = as_instance_user("psql")
            .args(["-X", "-w", "-A", "-t", "-h"])
            .arg(&dir)
            .args(["-p", "5432", "-U", user, "-d", "postgres"])
            .args(["-c", "SELECT count(*) FROM users"])
            .output()
            .expect("psql");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "the instance user got in as {user}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            err.contains("authentication failed") || err.contains("no password supplied"),
            "{user}: {err}"
        );
    }
    std::fs::write(dir.join("go"), b"").unwrap();
    let ready = task.await.unwrap().expect("finalise");
    assert_eq!(ready.state, ImageState::Ready);
    // Nor can it use an instance's socket afterwards.
    let info = env
        .svc()
        .create_instance(&admin, InstanceRef::Id(img.id))
        .await
        .unwrap();
    let inst = env
        .data()
        .join("instances")
        .join(info.instance.id.to_string());
    let out = as_instance_user("psql")
        .args(["-X", "-w", "-h"])
        .arg(&inst)
        .args([
            "-p",
            &info.port.to_string(),
            "-U",
            "draupnir",
            "-d",
            "postgres",
        ])
        .args(["-c", "SELECT 1"])
        .output()
        .expect("psql");
    assert!(
        !out.status.success(),
        "the instance user got into an instance's socket"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("authentication failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
