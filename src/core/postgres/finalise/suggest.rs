//! `suggest-rules`: with the upload's first postmaster running (as
//! finalise starts it), read the catalog and a sample of the values of
//! every non-template database, and write a complete rules file that
//! guesses a rule for each column. The temporary admin role is dropped
//! before the postmaster stops; nothing else of the upload changes.

use super::prepare::superuser_session;
use super::{admin_connect, db_err, quote_ident, sql_err, FinaliseError, FinaliseSpec, Progress};
use crate::core::masking::coverage::Catalog;
use crate::core::masking::detect::Samples;
use crate::core::masking::{run, scan, suggest};
use crate::core::postgres::cluster::{PgBin, ADMIN_ROLE};
use crate::core::postgres::process::{Postmaster, PostmasterSpec};

/// Values sampled per text-like column for the guesses.
const SAMPLE: usize = 50;

pub(super) async fn suggest(
    spec: &FinaliseSpec<'_>,
    bin: &PgBin,
    first: &PostmasterSpec,
    pm: &mut Postmaster,
    password: &str,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<String, FinaliseError> {
    let admin = superuser_session(spec, bin, first, pm, password).await?;
    let boot: String = admin
        .query_one("SELECT rolname::text FROM pg_roles WHERE oid = 10", &[])
        .await
        .map_err(db_err("finding the bootstrap superuser"))?
        .get(0);
    let databases: Vec<String> = admin
        .query(
            "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
            &[],
        )
        .await
        .map_err(db_err("listing databases"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let read = async {
        let mut catalog = Catalog::default();
        let mut samples = Samples::default();
        for db in &databases {
            progress(Progress::Step(format!("reading the catalog of {db}")));
            let c = admin_connect(spec, password, db)
                .await
                .map_err(sql_err("connecting to read the catalog"))?;
            run::read_catalog(&c, db, &mut catalog)
                .await
                .map_err(FinaliseError::from)?;
            let found = scan::sample(&c, db, &catalog, SAMPLE)
                .await
                .map_err(FinaliseError::from)?;
            samples.columns.extend(found.columns);
        }
        let image = spec.masking.image.to_string();
        Ok::<_, FinaliseError>(suggest::suggest_rules_for(Some(&image), &catalog, &samples))
    }
    .await;
    // The admin role cannot drop itself; as the bootstrap superuser, its
    // session can.
    admin
        .batch_execute(&format!(
            "SET SESSION AUTHORIZATION {}; DROP ROLE {ADMIN_ROLE}",
            quote_ident(&boot)
        ))
        .await
        .map_err(db_err("dropping the admin role"))?;
    read
}
