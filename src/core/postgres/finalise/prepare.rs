//! Finalise, while the first (socket-only) postmaster runs: pause event
//! triggers, create the temporary admin role in single-user mode, roles,
//! the anonymisation script, vacuum, ownership to `draupnir`, containment
//! and dropping the temporary admin role.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio_postgres::error::SqlState;

use super::mask::{mask_everywhere, scan_everywhere, Masked};
use super::script::{changes, reassign_sql, rewrite_changed, run_script, Changes, Rewrite};
use super::{
    admin_connect, boxed_tool, db_err, quote_ident, sql_err, start, wait_socket, FinaliseError,
    FinaliseSpec, Progress,
};
use crate::core::manifest::Manifest;
use crate::core::postgres::cluster::{PgBin, ADMIN_ROLE};
use crate::core::postgres::process::{Postmaster, PostmasterSpec};
use crate::core::postgres::roles;

/// Everything done while the first, socket-only postmaster runs. Returns
/// the name of the bootstrap superuser, the database the script ran in
/// and the anonymisation manifest.
pub(super) async fn prepare_and_anonymise(
    spec: &FinaliseSpec<'_>,
    bin: &PgBin,
    first: &PostmasterSpec,
    pm: &mut Postmaster,
    password: &str,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<(String, String, Manifest), FinaliseError> {
    let step = |s: &str| progress(Progress::Step(s.to_string()));
    // Until postgres accepts connections: for a refresh's snapshot of a
    // standby, the replay of the WAL it copied.
    step("waiting for postgres to accept connections (replaying the copied WAL)");
    let admin = superuser_session(spec, bin, first, pm, password).await?;
    step("creating roles");
    let (boot, database) = create_client_role(spec, &admin).await?;
    step(&match database.1 {
        Chosen::OnlyOne => format!(
            "using database {} (the upload's only database of its own)",
            database.0
        ),
        Chosen::Configured => format!("using database {} ([postgres] database)", database.0),
    });
    let database = database.0;
    let spec = &FinaliseSpec {
        database: &database,
        ..spec.clone()
    };
    let (mut paused, before, databases) = pause_everywhere(spec, password, admin).await?;

    let masked = mask_everywhere(spec, password, &databases, progress).await?;
    if let Some(script) = spec.script.filter(|s| !s.trim().is_empty()) {
        step("running anonymisation script");
        run_script(spec, bin, script, password, progress).await?;
    }
    let scan = scan_everywhere(spec, password, &databases, &masked, progress).await?;
    let manifest = masked.manifest(spec.masking, scan);

    step("reassigning ownership to draupnir");
    let last = hand_over(spec, password, &mut paused, &before, &masked, progress).await?;

    step("containing role draupnir; dropping temporary admin role");
    contain_and_drop_admin(spec, password, last, &boot).await?;
    step("stopping postgres");
    Ok((boot, database, manifest))
}

/// Why the script runs in the database it does.
enum Chosen {
    /// The upload has exactly one database besides `postgres` and the
    /// templates.
    OnlyOne,
    /// Otherwise: `[postgres] database`.
    Configured,
}

/// Event triggers paused per database: each one's name and `evtenabled`.
type Paused = BTreeMap<String, Vec<(String, String)>>;

/// Per database, each table's count of changed and deleted rows before
/// the script ran (see `script::changed_tables`).
type Before = BTreeMap<String, Changes>;

/// A superuser session on `template1`: the configured superuser's (root is
/// mapped to it), which also creates the admin role the script runs as, or
/// the admin role's.
pub(super) async fn superuser_session(
    spec: &FinaliseSpec<'_>,
    bin: &PgBin,
    first: &PostmasterSpec,
    pm: &mut Postmaster,
    password: &str,
) -> Result<tokio_postgres::Client, FinaliseError> {
    match wait_socket(spec, pm, spec.superuser, None).await {
        Ok(su) => {
            su.batch_execute(&roles::create_admin_sql(password))
                .await
                .map_err(db_err("creating the temporary admin role"))?;
            Ok(su)
        }
        // Root is mapped to the configured superuser only (peer auth), so
        // the server refusing it with 28000 means no such role can log in
        // (`role "…" does not exist`, raised with that code).
        Err(FinaliseError::Sql {
            code: Some(code), ..
        }) if code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            // The upload's superuser has another name: create the admin
            // role in single-user mode, which runs as the bootstrap
            // superuser whatever its name.
            pm.stop(Duration::from_secs(60)).await;
            single_user_create_admin(spec, bin, password).await?;
            *pm = start(first).await?;
            wait_socket(spec, pm, ADMIN_ROLE, Some(password)).await
        }
        Err(e) => Err(e),
    }
}

/// Create Draupnir's own `draupnir` role, check the database is there;
/// returns the name of the bootstrap superuser.
async fn create_client_role(
    spec: &FinaliseSpec<'_>,
    admin: &tokio_postgres::Client,
) -> Result<(String, (String, Chosen)), FinaliseError> {
    // Whatever the upload had under the name `draupnir` is renamed away
    // first: the clients' role is Draupnir's own, fresh.
    admin
        .batch_execute(&roles::create_client_sql())
        .await
        .map_err(db_err("creating role draupnir"))?;
    let boot = bootstrap_superuser(admin).await?;
    let own = database_names(
        admin,
        "NOT datistemplate AND datallowconn AND datname <> 'postgres'",
    )
    .await?;
    if let [only] = &own[..] {
        return Ok((boot, (only.clone(), Chosen::OnlyOne)));
    }
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&spec.database],
        )
        .await
        .map_err(db_err("checking the database"))?;
    if exists.is_none() {
        return Err(FinaliseError::Other(format!(
            "database `{}` does not exist in the upload (set [postgres] database)",
            spec.database
        )));
    }
    Ok((boot, (spec.database.to_string(), Chosen::Configured)))
}

/// The name of the bootstrap superuser (oid 10).
pub(super) async fn bootstrap_superuser(
    c: &tokio_postgres::Client,
) -> Result<String, FinaliseError> {
    Ok(
        c.query_one("SELECT rolname::text FROM pg_roles WHERE oid = 10", &[])
            .await
            .map_err(db_err("finding the bootstrap superuser"))?
            .get(0),
    )
}

/// The names of the databases `filter` (a condition on `pg_database`)
/// selects, in order.
pub(super) async fn database_names(
    c: &tokio_postgres::Client,
    filter: &'static str,
) -> Result<Vec<String>, FinaliseError> {
    Ok(c.query(
        &format!("SELECT datname::text FROM pg_database WHERE {filter} ORDER BY 1"),
        &[],
    )
    .await
    .map_err(db_err("listing the upload's databases"))?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

/// Pause the event triggers of every database that allows connections.
/// Returns them, each database's change counts, and the databases that
/// are not templates (those masking covers).
async fn pause_everywhere(
    spec: &FinaliseSpec<'_>,
    password: &str,
    admin: tokio_postgres::Client,
) -> Result<(Paused, Before, Vec<String>), FinaliseError> {
    // The upload's event triggers would run its code as a superuser on the
    // script's DDL and on ours: paused in every database until that
    // database's hygiene is done, then enabled as they were.
    let listed: Vec<(String, bool)> = admin
        .query(
            "SELECT datname::text, datistemplate FROM pg_database WHERE datallowconn ORDER BY datname",
            &[],
        )
        .await
        .map_err(db_err("listing databases"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let own = listed
        .iter()
        .filter(|(_, template)| !template)
        .map(|(db, _)| db.clone())
        .collect();
    let databases = listed.into_iter().map(|(db, _)| db);
    let mut admin = Some(admin);
    let mut paused = BTreeMap::new();
    let mut before = BTreeMap::new();
    for db in databases {
        // `admin` is connected to template1.
        let c = match admin.take() {
            Some(c) if db == "template1" => c,
            other => {
                admin = other;
                admin_connect(spec, password, &db)
                    .await
                    .map_err(sql_err("connecting to pause event triggers"))?
            }
        };
        let triggers = pause_event_triggers(&c).await?;
        before.insert(db.clone(), changes(&c).await?);
        if !triggers.is_empty() {
            paused.insert(db, triggers);
        }
    }
    drop(admin);
    Ok((paused, before, own))
}

/// Reassign ownership to `draupnir`, the function hygiene, the paused
/// event triggers back and the rewrite, database by database; returns a
/// connection still open for the cluster-wide work.
async fn hand_over(
    spec: &FinaliseSpec<'_>,
    password: &str,
    paused: &mut Paused,
    before: &Before,
    masked: &Masked,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Option<tokio_postgres::Client>, FinaliseError> {
    // Listed after the script, which may create or drop databases. Every
    // database `draupnir` could connect to gets the function hygiene,
    // templates included; the others also the reassignment.
    let c = admin_connect(spec, password, "template1")
        .await
        .map_err(sql_err("connecting to list databases"))?;
    let databases: Vec<(String, bool)> = c
        .query(
            "SELECT datname::text, datistemplate FROM pg_database WHERE datallowconn ORDER BY datname",
            &[],
        )
        .await
        .map_err(db_err("listing databases"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut template1 = Some(c);
    let mut last = None;
    for (db, template) in &databases {
        let c = match template1.take() {
            Some(c) if db == "template1" => c,
            other => {
                template1 = other;
                admin_connect(spec, password, db)
                    .await
                    .map_err(sql_err("connecting to reassign ownership"))?
            }
        };
        if !template {
            c.batch_execute(&reassign_sql(db))
                .await
                .map_err(db_err("reassigning ownership"))?;
        }
        c.batch_execute(&roles::database_hygiene_sql())
            .await
            .map_err(db_err("giving SECURITY DEFINER functions to draupnir"))?;
        if let Some(triggers) = paused.remove(db) {
            restore_event_triggers(&c, &triggers).await?;
        }
        if !template {
            let empty = Changes::default();
            let before = before.get(db).unwrap_or(&empty);
            let masked = Rewrite {
                masked: masked.rewritten.get(db).map(Vec::as_slice).unwrap_or(&[]),
                truncated: masked.truncated.get(db).map(Vec::as_slice).unwrap_or(&[]),
            };
            rewrite_changed(&c, db, before, &masked, progress).await?;
        }
        last = Some(c);
    }
    Ok(last.or(template1))
}

/// Contain `draupnir` cluster-wide and drop the temporary admin role.
async fn contain_and_drop_admin(
    spec: &FinaliseSpec<'_>,
    password: &str,
    last: Option<tokio_postgres::Client>,
    boot: &str,
) -> Result<(), FinaliseError> {
    // Roles are cluster-wide: the last database's connection will do once
    // the admin role owns nothing in any database. The admin role cannot
    // drop itself; as the bootstrap superuser, its session can.
    let c = match last {
        Some(c) => c,
        None => admin_connect(spec, password, "template1")
            .await
            .map_err(sql_err("connecting to drop the admin role"))?,
    };
    c.batch_execute(&roles::cluster_hygiene_sql())
        .await
        .map_err(db_err("containing role draupnir"))?;
    c.batch_execute(&format!(
        "SET SESSION AUTHORIZATION {}; DROP ROLE {ADMIN_ROLE}",
        quote_ident(boot)
    ))
    .await
    .map_err(db_err("dropping the admin role"))?;
    drop(c);
    Ok(())
}

/// Disable the enabled event triggers of the connected database; returns
/// each one's name and `evtenabled` state.
async fn pause_event_triggers(
    c: &tokio_postgres::Client,
) -> Result<Vec<(String, String)>, FinaliseError> {
    let triggers: Vec<(String, String)> = c
        .query(
            "SELECT evtname::text, evtenabled::text FROM pg_event_trigger WHERE evtenabled <> 'D'",
            &[],
        )
        .await
        .map_err(db_err("pausing event triggers"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // Commands on event triggers fire no event trigger.
    let sql: String = triggers
        .iter()
        .map(|(name, _)| format!("ALTER EVENT TRIGGER {} DISABLE;", quote_ident(name)))
        .collect();
    if !sql.is_empty() {
        c.batch_execute(&sql)
            .await
            .map_err(db_err("pausing event triggers"))?;
    }
    Ok(triggers)
}

/// Enable what [`pause_event_triggers`] disabled, as it was.
async fn restore_event_triggers(
    c: &tokio_postgres::Client,
    triggers: &[(String, String)],
) -> Result<(), FinaliseError> {
    let sql: String = triggers
        .iter()
        .map(|(name, state)| {
            let how = match state.as_str() {
                "A" => " ALWAYS",
                "R" => " REPLICA",
                _ => "",
            };
            format!("ALTER EVENT TRIGGER {} ENABLE{how};", quote_ident(name))
        })
        .collect();
    c.batch_execute(&sql)
        .await
        .map_err(db_err("enabling event triggers again"))
}

async fn single_user_create_admin(
    spec: &FinaliseSpec<'_>,
    bin: &PgBin,
    password: &str,
) -> Result<(), FinaliseError> {
    // Single-user mode runs the upload's catalog too: boxed like any
    // postmaster of it.
    let mut cmd = boxed_tool(spec, bin, bin.postgres())?;
    cmd.arg("--single").arg("-D").arg(spec.datadir).args([
        "-c",
        "fsync=off",
        "-c",
        "listen_addresses=",
    ]);
    if let Some(dsm) = crate::core::postgres::sandbox::dsm_setting(spec.confinement) {
        cmd.args(["-c", dsm]);
    }
    cmd.arg("template1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let mut child = cmd
        .spawn()
        .map_err(|e| FinaliseError::Start(format!("single-user mode: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin
            .write_all(roles::create_admin_sql(password).as_bytes())
            .await;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| FinaliseError::Start(format!("single-user mode: {e}")))?;
    // A failing statement is echoed on stderr: never with the password.
    let err = String::from_utf8_lossy(&out.stderr).replace(password, "***");
    if !out.status.success() || err.contains("ERROR") {
        let line = err
            .lines()
            .find(|l| l.contains("ERROR") || l.contains("FATAL"))
            .or(err.lines().last())
            .unwrap_or("");
        return Err(FinaliseError::Start(format!(
            "single-user mode could not create the admin role: {}",
            line.trim()
        )));
    }
    Ok(())
}
