//! Finalise's SQL work: running the operator's anonymisation script with
//! psql as the instance user, the rewrite of every table after it, and the
//! statements that hand every object to `draupnir`.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{
    db_err, quote_ident, FinaliseError, FinaliseSpec, Progress, SESSION_OPTIONS, SOCKET_PORT,
};
use crate::core::postgres::cluster::{PgBin, ADMIN_ROLE, CLIENT_ROLE};

/// Run the script with psql as the instance user, streaming its output.
/// psql gets the admin role's password in `PGPASSWORD`: only root and the
/// instance user can read a process's environment, and the password opens
/// nothing once this finalise is over.
pub(super) async fn run_script(
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

/// Rewrite every table of the current database, so that nothing the
/// upload held and the anonymisation script replaced survives in its
/// files: fresh planner statistics from the data as it is now
/// (`ANALYZE`), then every table, index, TOAST table and catalog
/// rewritten without dead rows, old index entries, free-space remnants or
/// the superseded `pg_statistic` rows (`VACUUM (FULL, FREEZE)`), then a
/// plain `VACUUM` for the visibility map. It is also what autovacuum would
/// otherwise do in every instance within a minute of its start, each into
/// its own copy-on-write snapshot: the image gets frozen, compact tables
/// and a visibility map once.
pub(super) async fn rewrite_database(
    c: &tokio_postgres::Client,
    db: &str,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<(), FinaliseError> {
    progress(Progress::Step(format!(
        "rewriting every table of {db} (no dead row, old index entry or old statistic is kept)"
    )));
    c.batch_execute("ANALYZE")
        .await
        .map_err(db_err("analysing the anonymised data"))?;
    c.batch_execute("VACUUM (FULL, FREEZE)")
        .await
        .map_err(db_err("rewriting every table"))?;
    // A rewrite leaves the visibility map empty: one plain pass marks
    // every page all-visible and all-frozen, so no instance's queries or
    // autovacuum have to.
    c.batch_execute("VACUUM (FREEZE)")
        .await
        .map_err(db_err("setting the visibility map"))
}

/// SQL that gives every object in the current database to `draupnir`:
/// what other roles own is reassigned; what the bootstrap superuser owns
/// outside the system schemas is altered one by one (REASSIGN refuses it).
pub(super) fn reassign_sql(db: &str) -> String {
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
