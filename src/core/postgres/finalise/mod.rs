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
//! core's. This file holds the flow and the first start; the work done
//! while it runs is in `prepare` (and the SQL in `script`), the proof in
//! `prove`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_postgres::error::SqlState;

use super::cluster::{self, ClusterError, InstanceUser, PgBin, ADMIN_ROLE};
use super::pgconn::{self, PgConnError};
use super::process::{self, Postmaster, PostmasterSpec};
use super::roles::{self, Problem};
use super::sandbox::Confinement;
use crate::core::masking::coverage::RuleProblem;
use crate::core::masking::key::KeyError;
use crate::core::masking::run::RunError;
use crate::core::masking::scan::ScanError;
use crate::core::model::ImageId;
use crate::core::MaskingRulesError;

mod mask;
mod prepare;
mod prove;
mod script;
mod suggest;

pub use mask::MaskingSpec;
use prepare::prepare_and_anonymise;
use prove::prove;

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
    /// A rules file changed under us and no longer parses.
    #[error("{0}")]
    Rules(#[source] Box<MaskingRulesError>),
    /// Rules that name what is not there, or do not fit a column's type.
    #[error("masking rules do not fit the upload: {}", rule_problems(.0))]
    RuleProblems(Vec<RuleProblem>),
    /// Fail closed: columns without a rule.
    #[error("masking rules do not cover {total} column(s) (fail closed): {}{}; {}", .named.join(", "), if *.total > .named.len() { format!(" and {} more", .total - .named.len()) } else { String::new() }, uncovered_hint(*.image, *.any_rules))]
    Uncovered {
        image: ImageId,
        total: usize,
        named: Vec<String>,
        any_rules: bool,
    },
    #[error("image {image} has no masking rules and no anonymisation script; give rules (ssh draupnir suggest-rules {image}), or create the image with --no-anonymisation if its data is not personal")]
    NoAnonymisation { image: ImageId },
    #[error("{0}")]
    Masking(#[source] Box<RunError>),
    #[error("{0}")]
    Key(#[source] Box<KeyError>),
    #[error("{0}")]
    Scan(#[source] Box<ScanError>),
    /// The leak scan found values that still look personal, or originals.
    #[error("leak scan: {} (nothing sealed; fix the rules)", .0.join("; "))]
    Leaks(Vec<String>),
}

fn rule_problems(problems: &[RuleProblem]) -> String {
    let mut s: Vec<String> = problems.iter().take(5).map(|p| p.to_string()).collect();
    if problems.len() > 5 {
        s.push(format!("and {} more", problems.len() - 5));
    }
    s.join("; ")
}

fn uncovered_hint(image: ImageId, any_rules: bool) -> String {
    if any_rules {
        format!("add a rule for each (suggested rules are above), then `ssh draupnir reset-upload {image}` and upload again; or set [masking] require_coverage = false to seal it unchecked")
    } else {
        format!("give it masking rules: `ssh draupnir reset-upload {image}`, upload again, and `ssh draupnir suggest-rules {image}` prints a rules file to review (for [masking] rules_file, or new-image --rules); or create the image with --no-anonymisation if its data is not personal")
    }
}

/// Inputs of one finalise.
#[derive(Clone)]
pub struct FinaliseSpec<'a> {
    pub datadir: &'a Path,
    pub bin_root: &'a Path,
    pub user: &'a InstanceUser,
    pub script: Option<&'a str>,
    /// Where the script runs when the upload has more than one database
    /// of its own, or none (`[postgres] database`).
    pub database: &'a str,
    pub superuser: &'a str,
    pub settings: &'a BTreeMap<String, String>,
    pub log_file: PathBuf,
    pub start_timeout: Duration,
    /// How its postmasters are boxed (to the upload's directory).
    pub confinement: Confinement,
    pub masking: &'a MaskingSpec,
}

/// The result of a successful finalise.
#[derive(Debug, Clone)]
pub struct Finalised {
    pub major: u32,
    /// The database the script ran in, and clients are pointed at.
    pub database: String,
    /// How it was anonymised.
    pub manifest: crate::core::manifest::Manifest,
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

/// The upload made ready for its first, socket-only start, and started.
struct Started {
    major: u32,
    bin: PgBin,
    conf: String,
    first: PostmasterSpec,
    pm: Postmaster,
    /// The temporary admin role's password: the script's psql gets it in
    /// its environment, nothing logs it, the role is dropped at the end.
    password: String,
}

/// Check the data directory, neutralise the upload's configuration and
/// start its first postmaster (no TCP listener, fsync off).
async fn first_start(
    spec: &FinaliseSpec<'_>,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Started, FinaliseError> {
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
    let password = hex::encode(rand::random::<[u8; 32]>());

    step("starting postgres (no TCP listener, fsync off)");
    let first = first_start_spec(spec, &bin);
    let pm = start(&first).await?;
    Ok(Started {
        major,
        bin,
        conf,
        first,
        pm,
        password,
    })
}

/// Print a complete masking rules file for the upload (`suggest-rules`):
/// start it as finalise does, read every database's catalog and a sample
/// of its values, and guess a rule for each column. The upload stays an
/// upload (its configuration is neutralised, as finalise would).
pub async fn suggest_rules(
    spec: &FinaliseSpec<'_>,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<String, FinaliseError> {
    let Started {
        bin,
        first,
        mut pm,
        password,
        ..
    } = first_start(spec, progress).await?;
    let result = suggest::suggest(spec, &bin, &first, &mut pm, &password, progress).await;
    pm.stop(Duration::from_secs(60)).await;
    for name in ["postmaster.opts", "postmaster.pid"] {
        let _ = std::fs::remove_file(spec.datadir.join(name));
    }
    result
}

/// Run the whole finalise on `spec.datadir`. Any postmaster it starts is
/// stopped before it returns, success or not.
pub async fn finalise(
    spec: &FinaliseSpec<'_>,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Finalised, FinaliseError> {
    let step = |s: &str| progress(Progress::Step(s.to_string()));
    let Started {
        major,
        bin,
        conf,
        first,
        mut pm,
        password,
    } = first_start(spec, progress).await?;
    let result = prepare_and_anonymise(spec, &bin, &first, &mut pm, &password, progress).await;
    pm.stop(Duration::from_secs(60)).await;
    let (boot_role, database, manifest) = result?;
    let spec = &FinaliseSpec {
        database: &database,
        ..spec.clone()
    };

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
    step("removing the write-ahead log (nothing from before the seal is kept)");
    reset_wal(spec, &bin).await?;
    step("flushing the data directory to disk");
    sync_fs(spec.datadir).map_err(|e| {
        FinaliseError::Other(format!(
            "flushing {} to disk failed: {e}",
            spec.datadir.display()
        ))
    })?;
    Ok(Finalised {
        major,
        database: database.clone(),
        manifest,
    })
}

/// Replace the cleanly stopped cluster's write-ahead log with one fresh,
/// empty segment (`pg_resetwal`). The upload's WAL, and what the script
/// and the rewrite logged, hold every original value they touched: in
/// records, in full-page images, and in recycled segments that are only
/// renamed, never cleared. The data files are complete after a clean
/// stop, so nothing is lost; instances start from the fresh segment.
async fn reset_wal(spec: &FinaliseSpec<'_>, bin: &PgBin) -> Result<(), FinaliseError> {
    // It reads the upload's pg_control: boxed like every postgres run on
    // uploaded data.
    let mut cmd = boxed_tool(spec, bin, bin.pg_resetwal())?;
    cmd.arg("-D")
        .arg(spec.datadir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    let out = cmd
        .output()
        .await
        .map_err(|e| FinaliseError::Other(format!("pg_resetwal: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(FinaliseError::Other(format!(
            "pg_resetwal failed: {}",
            err.lines().next().unwrap_or("no message").trim()
        )));
    }
    Ok(())
}

/// `program` (a PostgreSQL tool) to run on the upload's data directory as
/// the instance user, with a clean environment, in the same Landlock box
/// as a postmaster of it; stderr piped for the reason of a failure.
fn boxed_tool(
    spec: &FinaliseSpec<'_>,
    bin: &PgBin,
    program: PathBuf,
) -> Result<tokio::process::Command, FinaliseError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir(spec.datadir)
        .uid(spec.user.uid)
        .gid(spec.user.gid)
        .stderr(std::process::Stdio::piped());
    process::confine(
        &mut cmd,
        spec.confinement,
        bin,
        spec.datadir,
        None,
        &Default::default(),
    )
    .map_err(|e| FinaliseError::Start(e.to_string()))?;
    Ok(cmd)
}

fn first_start_spec(spec: &FinaliseSpec<'_>, bin: &PgBin) -> PostmasterSpec {
    PostmasterSpec {
        bin: bin.clone(),
        datadir: spec.datadir.to_owned(),
        port: SOCKET_PORT,
        tcp: false,
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
        reach: Default::default(),
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

/// Flush the file system holding `path` (the first start ran with fsync off).
pub fn sync_fs(path: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    rustix::fs::syncfs(&f)?;
    Ok(())
}

impl From<RunError> for FinaliseError {
    fn from(e: RunError) -> Self {
        FinaliseError::Masking(Box::new(e))
    }
}

impl From<ScanError> for FinaliseError {
    fn from(e: ScanError) -> Self {
        FinaliseError::Scan(Box::new(e))
    }
}
