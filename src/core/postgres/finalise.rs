//! Finalise: turn an uploaded data directory into a safe, anonymised image.
//!
//! Owns DESIGN.md flow 3 from "validate" to "prove": detect the major,
//! neutralise the upload, first start with no TCP listener and `fsync=off`
//! on a socket only root and the password of this finalise open, roles,
//! the anonymisation script (`psql -X -v ON_ERROR_STOP=1` as the instance
//! user), ownership to `draupnir`, the containment of `draupnir`
//! ([`super::roles`]), dropping the temporary admin role, a clean stop, the
//! final `pg_hba.conf`/`pg_ident.conf`, and the proof that only
//! certificate-authenticated `draupnir` gets in and reaches nothing more
//! than its own rights. The read-only snapshot and state changes are the
//! core's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use tokio_postgres::error::SqlState;

use super::cluster::{self, ClusterError, InstanceUser, PgBin, ADMIN_ROLE, CLIENT_ROLE};
use super::pgconn::{self, PgConnError};
use super::process::{self, Postmaster, PostmasterSpec};
use super::roles::{self, Problem};
use super::sandbox::Confinement;
use crate::certs;

pub use crate::core::model::Progress;

/// Why a finalise failed; `Display` is the reason kept on the image.
#[derive(Debug, thiserror::Error)]
pub enum FinaliseError {
    #[error("{0}")]
    Cluster(#[from] ClusterError),
    #[error("postgres did not start: {0}")]
    Start(String),
    #[error("anonymisation script failed: {0}")]
    Script(String),
    /// `code` is the server's SQLSTATE, when the server answered.
    #[error("{step}: {message}")]
    Sql {
        step: &'static str,
        code: Option<SqlState>,
        message: String,
    },
    #[error("access proof failed: {0}")]
    Proof(String),
    /// The role `draupnir` reaches more than its own rights; the first
    /// problems are named, the rest counted.
    #[error("access proof failed: {}", roles::summary(.0))]
    Contained(Vec<Problem>),
    #[error("{0}")]
    Other(String),
}

/// Inputs of one finalise.
pub struct FinaliseSpec<'a> {
    pub datadir: &'a Path,
    pub bin_root: &'a Path,
    pub user: &'a InstanceUser,
    pub script: Option<&'a str>,
    pub database: &'a str,
    pub superuser: &'a str,
    pub settings: &'a BTreeMap<String, String>,
    pub log_file: PathBuf,
    pub start_timeout: Duration,
    /// How its postmasters are boxed (to the upload's directory).
    pub confinement: Confinement,
}

/// The result of a successful finalise.
#[derive(Debug, Clone)]
pub struct Finalised {
    pub major: u32,
}

const SOCKET_PORT: u16 = 5432;
/// Server options of every superuser session of the finalise (the
/// script's psql too, as `PGOPTIONS`): a client's options outrank the
/// settings an upload attached to its databases and roles, so no library
/// the upload names is loaded into a superuser's session.
const SESSION_OPTIONS: &str = "-c session_preload_libraries= -c local_preload_libraries=";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn sql_err(step: &'static str) -> impl Fn(PgConnError) -> FinaliseError {
    move |e| FinaliseError::Sql {
        step,
        code: e.sqlstate().map(SqlState::from_code),
        message: e.to_string(),
    }
}

fn db_err(step: &'static str) -> impl Fn(tokio_postgres::Error) -> FinaliseError {
    move |e| FinaliseError::Sql {
        step,
        code: e.code().cloned(),
        message: pgconn::error_message(&e),
    }
}

/// Quote an identifier for SQL.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Run the whole finalise on `spec.datadir`. Any postmaster it starts is
/// stopped before it returns, success or not.
pub async fn finalise(
    spec: &FinaliseSpec<'_>,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Finalised, FinaliseError> {
    let step = |s: &str| progress(Progress::Step(s.to_string()));
    step("checking data directory");
    if cluster::hoist_single_subdir(spec.datadir)? {
        step("moved the data directory's contents up from its wrapping directory");
    }
    let major = cluster::read_major(spec.datadir)?;
    let bin = cluster::find_bin(spec.bin_root, major)?;

    step("neutralising uploaded configuration");
    cluster::neutralise(spec.datadir, spec.user)?;
    let conf = cluster::durable_conf(spec.settings);
    cluster::write_owned(spec.datadir, "postgresql.conf", conf.as_bytes(), spec.user)?;
    cluster::write_owned(
        spec.datadir,
        "pg_hba.conf",
        cluster::FIRST_START_HBA.as_bytes(),
        spec.user,
    )?;
    cluster::write_owned(
        spec.datadir,
        "pg_ident.conf",
        cluster::first_start_ident(spec.superuser).as_bytes(),
        spec.user,
    )?;
    // The temporary admin role's password: the script's psql gets it in
    // its environment, nothing logs it, the role is dropped at the end.
    let password = hex::encode(rand::random::<[u8; 32]>());

    step("starting postgres (no TCP listener, fsync off)");
    let first = first_start_spec(spec, &bin);
    let mut pm = start(&first).await?;
    let result = prepare_and_anonymise(spec, &bin, &first, &mut pm, &password, progress).await;
    pm.stop(Duration::from_secs(60)).await;
    let boot_role = result?;

    step("restoring durable settings");
    for name in ["postgresql.auto.conf", "postmaster.opts", "postmaster.pid"] {
        let _ = std::fs::remove_file(spec.datadir.join(name));
    }
    cluster::write_owned(spec.datadir, "postgresql.conf", conf.as_bytes(), spec.user)?;
    cluster::write_owned(
        spec.datadir,
        "pg_hba.conf",
        cluster::FINAL_HBA.as_bytes(),
        spec.user,
    )?;
    cluster::write_owned(
        spec.datadir,
        "pg_ident.conf",
        cluster::FINAL_IDENT.as_bytes(),
        spec.user,
    )?;

    step("proving access rules (TLS client certificate only, role draupnir only, contained)");
    let proof = prove(spec, &bin, &boot_role).await;
    for name in [
        cluster::SERVER_CERT,
        cluster::SERVER_KEY,
        cluster::CA_CERT,
        "postmaster.opts",
        "postmaster.pid",
        "postgresql.auto.conf",
        // The activity counters the clean stops saved (initdb's catalog
        // work, the script's changes): kept, they would make autovacuum
        // analyse the same tables in every instance within a minute of
        // its start, each writing its own copy (about 500 KiB of
        // pg_statistic pages and WAL per instance for a fresh initdb).
        // Instances start counting from zero instead; planner statistics
        // (pg_statistic) are kept. PostgreSQL 15 keeps them in
        // pg_stat/pgstat.stat, earlier majors in global.stat and one
        // db_OID.stat per database: every file of pg_stat goes.
    ] {
        let _ = std::fs::remove_file(spec.datadir.join(name));
    }
    for e in std::fs::read_dir(spec.datadir.join("pg_stat"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    proof?;
    step("flushing the data directory to disk");
    sync_fs(spec.datadir).map_err(|e| {
        FinaliseError::Other(format!(
            "flushing {} to disk failed: {e}",
            spec.datadir.display()
        ))
    })?;
    Ok(Finalised { major })
}

fn first_start_spec(spec: &FinaliseSpec<'_>, bin: &PgBin) -> PostmasterSpec {
    PostmasterSpec {
        bin: bin.clone(),
        datadir: spec.datadir.to_owned(),
        port: SOCKET_PORT,
        settings: vec![
            ("listen_addresses".into(), String::new()),
            (
                "unix_socket_directories".into(),
                spec.datadir.display().to_string(),
            ),
            ("ssl".into(), "off".into()),
            ("fsync".into(), "off".into()),
            ("full_page_writes".into(), "off".into()),
            ("synchronous_commit".into(), "off".into()),
            // Autovacuum would run as the owners of the upload's tables
            // (superusers, until the reassignment) and evaluate their
            // index expressions; the vacuum this needs is done after the
            // reassignment instead.
            ("autovacuum".into(), "off".into()),
            // No logical replication apply workers: a subscription that
            // came with the upload must not start pulling data here.
            ("max_logical_replication_workers".into(), "0".into()),
        ],
        log_file: spec.log_file.clone(),
        user: spec.user.clone(),
        confinement: spec.confinement,
    }
}

async fn start(spec: &PostmasterSpec) -> Result<Postmaster, FinaliseError> {
    process::spawn(spec).map_err(|e| FinaliseError::Start(e.to_string()))
}

fn start_failure(log: &Path, last: Option<PgConnError>) -> FinaliseError {
    let tail = process::log_tail(log, 8);
    let detail = if tail.is_empty() {
        last.map(|e| e.to_string()).unwrap_or_default()
    } else {
        tail
    };
    FinaliseError::Start(detail)
}

/// Connect over the private socket as `role` (by peer authentication as
/// root, or with `password`), waiting for start-up. An authentication
/// refusal (such as a missing role) ends the wait at once.
async fn wait_socket(
    spec: &FinaliseSpec<'_>,
    pm: &mut Postmaster,
    role: &str,
    password: Option<&str>,
) -> Result<tokio_postgres::Client, FinaliseError> {
    let start = std::time::Instant::now();
    loop {
        match pgconn::connect_unix_with(
            spec.datadir,
            SOCKET_PORT,
            role,
            password,
            SESSION_OPTIONS,
            "template1",
            CONNECT_TIMEOUT,
        )
        .await
        {
            Ok(c) => return Ok(c),
            Err(e) if e.is_auth_refused() => {
                return Err(FinaliseError::Sql {
                    step: "connecting as the data directory's superuser",
                    code: e.sqlstate().map(SqlState::from_code),
                    message: e.to_string(),
                })
            }
            Err(e) => {
                let gone = pm.pid().is_none_or(|p| !process::alive(p));
                if gone || start.elapsed() > spec.start_timeout {
                    return Err(start_failure(&spec.log_file, Some(e)));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The temporary admin role's connection to `db` over the private socket.
async fn admin_connect(
    spec: &FinaliseSpec<'_>,
    password: &str,
    db: &str,
) -> Result<tokio_postgres::Client, PgConnError> {
    pgconn::connect_unix_with(
        spec.datadir,
        SOCKET_PORT,
        ADMIN_ROLE,
        Some(password),
        SESSION_OPTIONS,
        db,
        CONNECT_TIMEOUT,
    )
    .await
}

/// Everything done while the first, socket-only postmaster runs. Returns
/// the name of the bootstrap superuser.
async fn prepare_and_anonymise(
    spec: &FinaliseSpec<'_>,
    bin: &PgBin,
    first: &PostmasterSpec,
    pm: &mut Postmaster,
    password: &str,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<String, FinaliseError> {
    let step = |s: &str| progress(Progress::Step(s.to_string()));
    step("creating roles");
    // A superuser connection: the configured superuser's (root is mapped to
    // it), which also creates the admin role the script runs as, or the
    // admin role's.
    let admin = match wait_socket(spec, pm, spec.superuser, None).await {
        Ok(su) => {
            su.batch_execute(&roles::create_admin_sql(password))
                .await
                .map_err(db_err("creating the temporary admin role"))?;
            su
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
            wait_socket(spec, pm, ADMIN_ROLE, Some(password)).await?
        }
        Err(e) => return Err(e),
    };
    // Whatever the upload had under the name `draupnir` is renamed away
    // first: the clients' role is Draupnir's own, fresh.
    admin
        .batch_execute(&roles::create_client_sql())
        .await
        .map_err(db_err("creating role draupnir"))?;
    let boot: String = admin
        .query_one("SELECT rolname::text FROM pg_roles WHERE oid = 10", &[])
        .await
        .map_err(db_err("finding the bootstrap superuser"))?
        .get(0);
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
    // The upload's event triggers would run its code as a superuser on the
    // script's DDL and on ours: paused in every database until that
    // database's hygiene is done, then enabled as they were.
    let databases: Vec<String> = admin
        .query(
            "SELECT datname::text FROM pg_database WHERE datallowconn ORDER BY datname",
            &[],
        )
        .await
        .map_err(db_err("listing databases"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut admin = Some(admin);
    let mut paused = BTreeMap::new();
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
        if !triggers.is_empty() {
            paused.insert(db, triggers);
        }
    }
    drop(admin);

    if let Some(script) = spec.script.filter(|s| !s.trim().is_empty()) {
        step("running anonymisation script");
        run_script(spec, bin, script, password, progress).await?;
    }

    step("reassigning ownership to draupnir");
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
            vacuum_what_autovacuum_would(&c, db, progress).await?;
        }
        last = Some(c);
    }

    step("containing role draupnir; dropping temporary admin role");
    // Roles are cluster-wide: the last database's connection will do once
    // the admin role owns nothing in any database. The admin role cannot
    // drop itself; as the bootstrap superuser, its session can.
    let c = match last.or(template1) {
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
        quote_ident(&boot)
    ))
    .await
    .map_err(db_err("dropping the admin role"))?;
    drop(c);
    step("stopping postgres");
    Ok(boot)
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
    let mut cmd = tokio::process::Command::new(bin.postgres());
    cmd.arg("--single").arg("-D").arg(spec.datadir).args([
        "-c",
        "fsync=off",
        "-c",
        "listen_addresses=",
    ]);
    if let Some(dsm) = super::sandbox::dsm_setting(spec.confinement) {
        cmd.args(["-c", dsm]);
    }
    cmd.arg("template1")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir(spec.datadir)
        .uid(spec.user.uid)
        .gid(spec.user.gid)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // Single-user mode runs the upload's catalog too: boxed like any
    // postmaster of it.
    process::confine(&mut cmd, spec.confinement, bin, spec.datadir, SOCKET_PORT)
        .map_err(|e| FinaliseError::Start(e.to_string()))?;
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

/// Run the script with psql as the instance user, streaming its output.
/// psql gets the admin role's password in `PGPASSWORD`: only root and the
/// instance user can read a process's environment, and the password opens
/// nothing once this finalise is over.
async fn run_script(
    spec: &FinaliseSpec<'_>,
    bin: &PgBin,
    script: &str,
    password: &str,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<(), FinaliseError> {
    let psql = if bin.psql().exists() {
        bin.psql()
    } else {
        PathBuf::from("psql")
    };
    let mut child = tokio::process::Command::new(psql)
        .args(["-X", "-v", "ON_ERROR_STOP=1", "--no-password"])
        .arg("-h")
        .arg(spec.datadir)
        .args([
            "-p",
            &SOCKET_PORT.to_string(),
            "-U",
            ADMIN_ROLE,
            "-d",
            spec.database,
            "-f",
            "-",
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LC_ALL", "C.UTF-8")
        .env("PGAPPNAME", "draupnir-anonymise")
        .env("PGPASSWORD", password)
        .env("PGOPTIONS", SESSION_OPTIONS)
        .current_dir("/")
        .uid(spec.user.uid)
        .gid(spec.user.gid)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| FinaliseError::Script(format!("cannot run psql: {e}")))?;
    let stdin = child.stdin.take();
    let script = script.to_owned();
    let writer = tokio::spawn(async move {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(script.as_bytes()).await;
        }
    });
    let mut errors: Vec<String> = Vec::new();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut out_lines = stdout.map(|s| BufReader::new(s).lines());
    let mut err_lines = stderr.map(|s| BufReader::new(s).lines());
    loop {
        tokio::select! {
            line = async { match out_lines.as_mut() { Some(l) => l.next_line().await, None => Ok(None) } }, if out_lines.is_some() => {
                match line { Ok(Some(l)) => progress(Progress::Output(l)), _ => out_lines = None }
            }
            line = async { match err_lines.as_mut() { Some(l) => l.next_line().await, None => Ok(None) } }, if err_lines.is_some() => {
                match line {
                    Ok(Some(l)) => {
                        progress(Progress::Output(l.clone()));
                        errors.push(l);
                        if errors.len() > 20 { errors.remove(0); }
                    }
                    _ => err_lines = None,
                }
            }
            else => break,
        }
    }
    let _ = writer.await;
    let status = child
        .wait()
        .await
        .map_err(|e| FinaliseError::Script(e.to_string()))?;
    if status.success() {
        return Ok(());
    }
    let msg: Vec<&str> = errors
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.contains("ERROR") || l.contains("FATAL") || l.starts_with("psql:"))
        .collect();
    let msg = if msg.is_empty() {
        errors.join(" ")
    } else {
        msg.join(" ")
    };
    Err(FinaliseError::Script(if msg.trim().is_empty() {
        format!("psql exited with {status}")
    } else {
        msg
    }))
}

/// Tables whose statistics say autovacuum would vacuum or analyse them
/// (dead tuples or changes since the last analyse above autovacuum's
/// thresholds), typically the ones the anonymisation script rewrote.
const AUTOVACUUM_DUE_SQL: &str = "
SELECT format('%I.%I', s.schemaname, s.relname)
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE c.relkind IN ('r', 'm')
  AND (s.n_dead_tup > current_setting('autovacuum_vacuum_threshold')::float8
                      + current_setting('autovacuum_vacuum_scale_factor')::float8 * greatest(c.reltuples, 0)
    OR s.n_mod_since_analyze > current_setting('autovacuum_analyze_threshold')::float8
                      + current_setting('autovacuum_analyze_scale_factor')::float8 * greatest(c.reltuples, 0))
ORDER BY 1";

/// Do once, here, what autovacuum would otherwise do in every instance
/// within a minute of its start: each instance would rewrite the same
/// pages and statistics into its own copy-on-write snapshot (a table the
/// script updated would be copied whole into every instance) and spend
/// the same CPU. The image gets pruned pages, a visibility map and fresh
/// planner statistics instead.
async fn vacuum_what_autovacuum_would(
    c: &tokio_postgres::Client,
    db: &str,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<(), FinaliseError> {
    let due: Vec<String> = c
        .query(AUTOVACUUM_DUE_SQL, &[])
        .await
        .map_err(db_err("finding tables autovacuum would process"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if due.is_empty() {
        return Ok(());
    }
    progress(Progress::Step(format!(
        "vacuuming and analysing {} changed table(s) in {db}",
        due.len()
    )));
    c.batch_execute(&format!("VACUUM (ANALYZE) {}", due.join(", ")))
        .await
        .map_err(db_err("vacuuming changed tables"))
}

/// SQL that gives every object in the current database to `draupnir`:
/// what other roles own is reassigned; what the bootstrap superuser owns
/// outside the system schemas is altered one by one (REASSIGN refuses it).
fn reassign_sql(db: &str) -> String {
    format!(
        r#"
DO $draupnir$
DECLARE r record;
BEGIN
  FOR r IN SELECT rolname FROM pg_roles
           WHERE oid <> 10 AND rolname <> '{CLIENT_ROLE}' AND rolname NOT LIKE 'pg\_%'
  LOOP
    EXECUTE format('REASSIGN OWNED BY %I TO {CLIENT_ROLE}', r.rolname);
  END LOOP;
  EXECUTE 'DROP OWNED BY {ADMIN_ROLE}';
  FOR r IN SELECT n.nspname FROM pg_namespace n
           WHERE n.nspowner = 10 AND n.nspname NOT IN ('pg_catalog', 'information_schema')
             AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
             AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass AND d.objid = n.oid AND d.deptype = 'e')
  LOOP
    EXECUTE format('ALTER SCHEMA %I OWNER TO {CLIENT_ROLE}', r.nspname);
  END LOOP;
  FOR r IN SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relowner = 10 AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
             AND n.nspname NOT IN ('pg_catalog', 'information_schema')
             AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
             AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('e', 'a', 'i'))
  LOOP
    EXECUTE format('ALTER %s %I.%I OWNER TO {CLIENT_ROLE}',
      CASE r.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                     WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
      r.nspname, r.relname);
  END LOOP;
  FOR r IN SELECT p.oid::regprocedure AS sig FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE p.proowner = 10 AND n.nspname NOT IN ('pg_catalog', 'information_schema')
             AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
  LOOP
    EXECUTE format('ALTER ROUTINE %s OWNER TO {CLIENT_ROLE}', r.sig);
  END LOOP;
END
$draupnir$;
ALTER DATABASE {db} OWNER TO {CLIENT_ROLE};
"#,
        db = quote_ident(db)
    )
}

/// Start once more with the final rules on a loopback port and prove them.
async fn prove(spec: &FinaliseSpec<'_>, bin: &PgBin, boot_role: &str) -> Result<(), FinaliseError> {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let c = certs::issue_instance_certs("finalise", &names, CLIENT_ROLE, Duration::from_secs(3600))
        .map_err(|e| FinaliseError::Proof(e.to_string()))?;
    cluster::write_owned(
        spec.datadir,
        cluster::SERVER_CERT,
        c.server_cert_pem.as_bytes(),
        spec.user,
    )?;
    cluster::write_owned(
        spec.datadir,
        cluster::SERVER_KEY,
        c.server_key_pem.as_bytes(),
        spec.user,
    )?;
    cluster::write_owned(
        spec.datadir,
        cluster::CA_CERT,
        c.ca_cert_pem.as_bytes(),
        spec.user,
    )?;
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| FinaliseError::Proof(format!("no free loopback port: {e}")))?;
    let pspec = PostmasterSpec {
        bin: bin.clone(),
        datadir: spec.datadir.to_owned(),
        port,
        settings: vec![
            ("listen_addresses".into(), "127.0.0.1".into()),
            (
                "unix_socket_directories".into(),
                spec.datadir.display().to_string(),
            ),
            // Durability is not what this run proves, and the whole file
            // system is flushed once after it (`sync_fs`): without these,
            // the shutdown checkpoint fsyncs file by file for nothing.
            ("fsync".into(), "off".into()),
            ("full_page_writes".into(), "off".into()),
            ("synchronous_commit".into(), "off".into()),
            // Nothing to maintain in a run this short; fewer processes to
            // start and stop.
            ("autovacuum".into(), "off".into()),
            ("max_logical_replication_workers".into(), "0".into()),
        ],
        log_file: spec.log_file.clone(),
        user: spec.user.clone(),
        confinement: spec.confinement,
    };
    let mut pm = start(&pspec).await?;
    let res = prove_running(spec, &mut pm, port, &c, boot_role).await;
    pm.stop(Duration::from_secs(60)).await;
    res
}

async fn prove_running(
    spec: &FinaliseSpec<'_>,
    pm: &mut Postmaster,
    port: u16,
    c: &certs::InstanceCerts,
    boot_role: &str,
) -> Result<(), FinaliseError> {
    let host = "127.0.0.1";
    let db = spec.database;
    let with_cert = Some((c.client_cert_pem.as_str(), c.client_key_pem.as_str()));
    let tls = |role, client| {
        pgconn::connect_tls(
            host,
            port,
            role,
            db,
            &c.ca_cert_pem,
            client,
            CONNECT_TIMEOUT,
        )
    };
    // One connector for the readiness poll (building one per attempt costs
    // more than the attempt).
    let connector = pgconn::tls_connector(&c.ca_cert_pem, with_cert)
        .map_err(|e| FinaliseError::Proof(e.to_string()))?;
    let client = process::until_ready(pm, spec.start_timeout, || {
        pgconn::connect_tls_with(&connector, host, port, CLIENT_ROLE, db, CONNECT_TIMEOUT)
    })
    .await
    .map_err(|last| match last {
        Some(e) if e.is_auth_refused() => {
            FinaliseError::Proof(format!("draupnir with its certificate was refused: {e}"))
        }
        other => start_failure(&spec.log_file, other),
    })?;
    let superuser: bool = client
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| FinaliseError::Proof(pgconn::error_message(&e)))?
        .get(0);
    if superuser {
        return Err(FinaliseError::Proof("role draupnir is a superuser".into()));
    }
    // The other databases over the socket, as root mapped to draupnir:
    // the same role, without a TLS handshake each.
    prove_contained(&client, db, |other: String| async move {
        pgconn::connect_unix(spec.datadir, port, CLIENT_ROLE, &other, CONNECT_TIMEOUT).await
    })
    .await?;
    drop(client);
    // Every refusal is tried at once: each costs the server a fork and an
    // authentication round trip, none depends on another.
    let (plain, no_cert, as_boot, as_postgres) = tokio::join!(
        pgconn::connect_plain(host, port, CLIENT_ROLE, db, CONNECT_TIMEOUT),
        tls(CLIENT_ROLE, None),
        tls(boot_role, with_cert),
        tls("postgres", with_cert),
    );
    if plain.is_ok() {
        return Err(FinaliseError::Proof(
            "plain TCP without TLS was accepted".into(),
        ));
    }
    if no_cert.is_ok() {
        return Err(FinaliseError::Proof(
            "TLS without a client certificate was accepted".into(),
        ));
    }
    for (role, accepted) in [
        (boot_role, as_boot.is_ok()),
        ("postgres", as_postgres.is_ok()),
    ] {
        if accepted {
            return Err(FinaliseError::Proof(format!(
                "role {role} was accepted over TCP"
            )));
        }
    }
    Ok(())
}

/// Prove, as `draupnir` itself, that it reaches nothing beyond its own
/// rights ([`roles::Problem`]): cluster-wide over `client` (connected to
/// `db`), and in every other database it may connect to, each over a
/// connection (as `draupnir`) from `connect`. A few catalog queries per
/// database.
async fn prove_contained<F, Fut>(
    client: &tokio_postgres::Client,
    db: &str,
    connect: F,
) -> Result<(), FinaliseError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<tokio_postgres::Client, PgConnError>>,
{
    let proof_err = |e: tokio_postgres::Error| FinaliseError::Proof(pgconn::error_message(&e));
    let mut problems = roles::cluster_problems(client).await.map_err(proof_err)?;
    problems.extend(
        roles::database_problems(client, db)
            .await
            .map_err(proof_err)?,
    );
    let others: Vec<String> = client
        .query(
            "SELECT datname::text FROM pg_database WHERE datallowconn AND datname <> $1 \
             AND has_database_privilege(datname, 'CONNECT') ORDER BY datname",
            &[&db],
        )
        .await
        .map_err(proof_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for other in others {
        let c = connect(other.clone()).await.map_err(|e| {
            FinaliseError::Proof(format!(
                "draupnir could not connect to database {other}: {e}"
            ))
        })?;
        problems.extend(
            roles::database_problems(&c, &other)
                .await
                .map_err(proof_err)?,
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(FinaliseError::Contained(problems))
    }
}

/// Flush the file system holding `path` (the first start ran with fsync off).
pub fn sync_fs(path: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    rustix::fs::syncfs(&f)?;
    Ok(())
}
