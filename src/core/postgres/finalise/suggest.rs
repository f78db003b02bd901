//! `suggest-rules`: with the upload's first postmaster running (as
//! finalise starts it), read the catalog and a sample of the values of
//! every non-template database, and write a complete rules file that
//! guesses a rule for each column. The temporary admin role is dropped
//! before the postmaster stops; nothing else of the upload changes.

use super::mask::read_catalog_of;
use super::prepare::{bootstrap_superuser, database_names, superuser_session};
use super::{db_err, quote_ident, FinaliseError, FinaliseSpec, Progress};
use crate::core::masking::coverage::Catalog;
use crate::core::masking::detect::Samples;
use crate::core::masking::{scan, suggest};
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
    let boot = bootstrap_superuser(&admin).await?;
    let databases = database_names(&admin, "datallowconn AND NOT datistemplate").await?;
    let read = async {
        let mut catalog = Catalog::default();
        let mut samples = Samples::default();
        for db in &databases {
            progress(Progress::Step(format!("reading the catalog of {db}")));
            let c = read_catalog_of(spec, password, db, &mut catalog).await?;
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
