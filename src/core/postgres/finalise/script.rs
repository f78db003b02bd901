//! Finalise's SQL work: running the operator's anonymisation script with
//! psql as the instance user, the rewrite of every table masking or the
//! script changed, and the statements that hand every object to
//! `draupnir`.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{
    db_err, quote_ident, FinaliseError, FinaliseSpec, Progress, SESSION_OPTIONS, SOCKET_PORT,
};
use crate::core::masking::rules::TableName;
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
            // Then, on the script's last connection, its table statistics
            // are flushed before psql ends (what it changed is rewritten;
            // see `rewrite_changed`), quietly.
            "-c",
            "\\o /dev/null",
            "-c",
            "SELECT pg_stat_force_next_flush()",
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

/// Each table's count of changed and deleted rows (by oid), as the
/// cumulative statistics have it.
pub(super) type Changes = std::collections::HashMap<u32, i64>;

/// Tables and materialized views with their counts of changed and deleted
/// rows, dead rows, and whether a dropped column's data is still in them.
const TABLES_SQL: &str = "
SELECT s.relid, s.schemaname::text, s.relname::text,
       (s.n_tup_upd + s.n_tup_del + s.n_tup_hot_upd)::int8, s.n_dead_tup::int8,
       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = s.relid AND a.attisdropped)
FROM pg_stat_all_tables s JOIN pg_class c ON c.oid = s.relid
WHERE c.relkind IN ('r', 'm') AND s.schemaname <> 'pg_toast'
  AND s.schemaname NOT LIKE 'pg\\_temp\\_%' AND s.schemaname NOT LIKE 'pg\\_toast\\_temp\\_%'";

/// The change counts of every table of the current database (taken before
/// the script, to tell what it changed).
pub(super) async fn changes(c: &tokio_postgres::Client) -> Result<Changes, FinaliseError> {
    Ok(c.query(TABLES_SQL, &[])
        .await
        .map_err(db_err("reading table statistics"))?
        .iter()
        .map(|r| (r.get::<_, u32>(0), r.get::<_, i64>(3)))
        .collect())
}

/// Tables masking rewrote and emptied in one database (rewritten whatever
/// the statistics say).
pub(super) struct Rewrite<'a> {
    pub masked: &'a [TableName],
    pub truncated: &'a [TableName],
}

/// Every old statistic of the listed tables (`$1`, qualified names), their
/// partitions and their indexes (an expression index has statistics of
/// its own), before they are analysed again: `ANALYZE` skips a column
/// whose statistics target is 0 and an empty table, and would leave their
/// old most-common values.
const FORGET_STATISTICS_SQL: &str = "
WITH named AS (
  SELECT n.name::regclass AS relid FROM unnest($1::text[]) AS n(name)
), rels AS (
  -- pg_partition_tree lists nothing for a table that is not partitioned.
  SELECT relid FROM named
  UNION SELECT t.relid FROM named, pg_catalog.pg_partition_tree(named.relid) AS t
), every AS (
  SELECT relid FROM rels UNION SELECT i.indexrelid FROM pg_catalog.pg_index i JOIN rels ON i.indrelid = rels.relid
), gone AS (
  DELETE FROM pg_catalog.pg_statistic WHERE starelid IN (SELECT relid FROM every) RETURNING 1
)
DELETE FROM pg_catalog.pg_statistic_ext_data WHERE stxoid IN
  (SELECT oid FROM pg_catalog.pg_statistic_ext WHERE stxrelid IN (SELECT relid FROM every))";

/// Rewrite every table of the current database that may still hold what
/// masking or the anonymisation script replaced: the tables masking
/// rewrote or emptied, rows the script changed or deleted (their old
/// versions stay in the heap, in indexes and in TOAST until a rewrite),
/// dead rows the upload came with, and columns it dropped (their data
/// stays in every row). Their old statistics are deleted and computed
/// afresh (`ANALYZE`), then `VACUUM (FULL, FREEZE)` of those tables and
/// of `pg_statistic`, then a plain `VACUUM` for the visibility map.
/// Tables nothing touched are left as they are (rewriting a large
/// database whole would cost its size at every finalise). The WAL goes at
/// the end of finalise (`reset_wal`).
pub(super) async fn rewrite_changed(
    c: &tokio_postgres::Client,
    db: &str,
    before: &Changes,
    masked: &Rewrite<'_>,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<(), FinaliseError> {
    let mut due: Vec<String> = masked
        .masked
        .iter()
        .chain(masked.truncated)
        .map(|t| format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.table)))
        .collect();
    for r in c
        .query(TABLES_SQL, &[])
        .await
        .map_err(db_err("reading table statistics"))?
    {
        let changed = r.get::<_, i64>(3) > before.get(&r.get::<_, u32>(0)).copied().unwrap_or(0);
        if changed || r.get::<_, i64>(4) > 0 || r.get::<_, bool>(5) {
            due.push(format!(
                "{}.{}",
                quote_ident(r.get(1)),
                quote_ident(r.get(2))
            ));
        }
    }
    due.sort();
    due.dedup();
    progress(Progress::Step(format!(
        "rewriting {} changed table(s) of {db} (no dead row, old index entry or old statistic is kept)",
        due.len()
    )));
    if !due.is_empty() {
        c.execute(FORGET_STATISTICS_SQL, &[&due])
            .await
            .map_err(db_err("forgetting the changed tables' statistics"))?;
        let list = due.join(", ");
        c.batch_execute(&format!("ANALYZE {list}"))
            .await
            .map_err(db_err("analysing the changed tables"))?;
        c.batch_execute(&format!("VACUUM (FULL, FREEZE) {list}"))
            .await
            .map_err(db_err("rewriting the changed tables"))?;
    }
    // The statistics of changed and dropped tables, now dead rows.
    c.batch_execute("VACUUM (FULL) pg_catalog.pg_statistic, pg_catalog.pg_statistic_ext_data")
        .await
        .map_err(db_err("rewriting pg_statistic"))?;
    if !due.is_empty() {
        // A rewrite leaves the visibility map empty: one plain pass marks
        // every page all-visible and all-frozen, so no instance's queries
        // or autovacuum have to.
        c.batch_execute(&format!("VACUUM (FREEZE) {}", due.join(", ")))
            .await
            .map_err(db_err("setting the visibility map"))?;
    }
    Ok(())
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
             AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                             AND (d.deptype = 'e' OR (c.relkind = 'S' AND d.deptype IN ('a', 'i'))))
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
