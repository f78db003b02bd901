//! Finalise's proof: start once more with the final `pg_hba.conf` on a
//! loopback port and show that only certificate-authenticated `draupnir`
//! gets in, and that it reaches nothing more than its own rights.

use std::time::Duration;

use super::{start, start_failure, FinaliseError, FinaliseSpec, CONNECT_TIMEOUT};
use crate::certs;
use crate::core::postgres::cluster::{self, PgBin, CLIENT_ROLE};
use crate::core::postgres::pgconn::{self, PgConnError};
use crate::core::postgres::process::{self, Postmaster, PostmasterSpec};
use crate::core::postgres::roles;

/// Start once more with the final rules on a loopback port and prove them.
pub(super) async fn prove(
    spec: &FinaliseSpec<'_>,
    bin: &PgBin,
    boot_role: &str,
) -> Result<(), FinaliseError> {
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
        c.server_key_pem.expose().as_bytes(),
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
        tcp: true,
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
        reach: Default::default(),
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
    let with_cert = Some((
        c.client_cert_pem.as_str(),
        c.client_key_pem.expose().as_str(),
    ));
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
