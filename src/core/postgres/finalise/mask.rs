//! Finalise's masking: read the catalog of every database of the upload,
//! check the rules against it (fail closed: a column without a rule, or
//! a rule that does not fit, stops the seal unless coverage is not
//! required), sample the originals the leak scan looks for, apply each
//! database's plan, and after the script, the leak scan. Which tables it
//! rewrote is handed to the rewrite (`script::rewrite_changed`), so none
//! of their old rows, index entries or statistics stay.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::{admin_connect, sql_err, FinaliseError, FinaliseSpec, Progress};
use crate::core::manifest::{AnonymisationStatus, Manifest, ScanManifest, TableManifest};
use crate::core::masking::coverage::{self, Catalog, Coverage, TableAction};
use crate::core::masking::detect::Samples;
use crate::core::masking::key::MaskingKey;
use crate::core::masking::plan;
use crate::core::masking::rules::{self, Rules, TableName};
use crate::core::masking::{run, scan, suggest};
use crate::core::model::ImageId;

/// Uncovered columns named in a failure's one line (the progress stream
/// gets a suggested rule for each of the first [`coverage::UNCOVERED_LISTED`]).
const NAMED_IN_ERROR: usize = 10;

/// How one finalise masks, as the core assembled it from the
/// configuration and the image.
#[derive(Clone, Debug)]
pub struct MaskingSpec {
    pub image: ImageId,
    /// `[masking] rules_file`'s text as last loaded.
    pub config_rules: Option<std::sync::Arc<str>>,
    /// The image's own rules.
    pub image_rules: Option<String>,
    pub require_coverage: bool,
    /// Declared not personal (`--no-anonymisation`).
    pub not_personal: bool,
    /// Whether an anonymisation script runs after the rules.
    pub script: bool,
    /// Where the per-deployment key is (`state_path`).
    pub key_dir: std::path::PathBuf,
    /// The leak scan searches a larger table in a sample of this many
    /// bytes (`[masking] scan_sample_bytes`; None: every row).
    pub scan_budget: Option<u64>,
}

impl MaskingSpec {
    /// The rules in force: the configuration's, with the image's tables in
    /// place of the same tables'. Both were parsed when given; a parse
    /// error here means a file changed under us, and is refused.
    fn rules(&self) -> Result<Option<Rules>, FinaliseError> {
        let parse = |t: &str| rules::parse(t).map_err(|e| FinaliseError::Rules(Box::new(e)));
        let config = self.config_rules.as_deref().map(parse).transpose()?;
        let image = self.image_rules.as_deref().map(parse).transpose()?;
        Ok(match (config, image) {
            (Some(c), Some(i)) => Some(c.overlay(i)),
            (c, i) => c.or(i),
        })
    }

    fn rules_from(&self) -> Vec<String> {
        let mut from = Vec::new();
        if self.config_rules.is_some() {
            from.push("config".to_string());
        }
        if self.image_rules.is_some() {
            from.push("image".to_string());
        }
        from
    }

    fn rules_sha256(&self) -> Option<String> {
        if self.config_rules.is_none() && self.image_rules.is_none() {
            return None;
        }
        let mut h = Sha256::new();
        for text in [self.config_rules.as_deref(), self.image_rules.as_deref()]
            .into_iter()
            .flatten()
        {
            h.update((text.len() as u64).to_be_bytes());
            h.update(text.as_bytes());
        }
        Some(hex::encode(h.finalize()))
    }
}

/// What masking did, for the rewrite, the scan and the manifest.
#[derive(Debug, Default)]
pub(super) struct Masked {
    /// Per database: the tables masking rewrote or emptied.
    pub rewritten: BTreeMap<String, Vec<TableName>>,
    /// Per database: the tables it emptied (their old statistics go).
    pub truncated: BTreeMap<String, Vec<TableName>>,
    tables: Vec<TableManifest>,
    /// Values of masked columns sampled before masking, for the leak
    /// scan: in memory only, never logged or stored.
    originals: Samples,
    uncovered: usize,
    status: Option<AnonymisationStatus>,
    summary: String,
}

/// Check the rules against every database of the upload and apply them.
/// `databases` are the upload's non-template databases.
pub(super) async fn mask_everywhere(
    spec: &FinaliseSpec<'_>,
    password: &str,
    databases: &[String],
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Masked, FinaliseError> {
    let step = |s: String| progress(Progress::Step(s));
    let m = spec.masking;
    if m.not_personal {
        step("declared not personal (--no-anonymisation): nothing is masked".into());
        return Ok(Masked {
            status: Some(AnonymisationStatus::None),
            summary: "declared not personal at creation (--no-anonymisation)".into(),
            ..Masked::default()
        });
    }
    let rules = m.rules()?;
    if rules.is_none() && !m.script && !m.require_coverage {
        return Err(FinaliseError::NoAnonymisation { image: m.image });
    }
    let mut catalog = Catalog::default();
    for db in databases {
        read_catalog_of(spec, password, db, &mut catalog).await?;
    }
    let given = rules.is_some();
    let rules = rules.unwrap_or_default();
    let cover = coverage::check(&rules, &catalog);
    step(format!(
        "checking masking rules ({}) against {} column(s) in {} database(s)",
        if given {
            m.rules_from().join(" + ")
        } else {
            "none given".into()
        },
        catalog.columns.len(),
        catalog.databases.len()
    ));
    if !cover.problems.is_empty() {
        return Err(FinaliseError::RuleProblems(cover.problems));
    }
    let status = if cover.complete() {
        AnonymisationStatus::Checked
    } else if m.require_coverage {
        suggest_uncovered(&cover, progress);
        return Err(uncovered_error(m, &cover));
    } else {
        step(format!(
            "{} column(s) have no rule: sealed as unchecked (require_coverage = false)",
            cover.uncovered_total
        ));
        AnonymisationStatus::Unchecked
    };
    let key =
        MaskingKey::load_or_create(&m.key_dir).map_err(|e| FinaliseError::Key(Box::new(e)))?;
    let mut masked = Masked {
        uncovered: cover.uncovered_total,
        status: Some(status),
        ..Masked::default()
    };
    for db in databases {
        let c = admin_connect(spec, password, db)
            .await
            .map_err(sql_err("connecting to sample originals"))?;
        let found = scan::sample(&c, db, &catalog, scan::SCAN_PER_COLUMN)
            .await
            .map_err(FinaliseError::from)?;
        masked
            .originals
            .columns
            .extend(scan::masked_originals(&found, &cover.actions).columns);
    }
    for db in databases {
        let p = plan::plan(db, &cover.actions, &cover.partitioned);
        let mut rows = Vec::new();
        if !p.rewritten.is_empty() {
            step(format!("masking {} table(s) of {db}", p.rewritten.len()));
            let c = admin_connect(spec, password, db)
                .await
                .map_err(sql_err("connecting to mask"))?;
            rows = run::apply_transaction(&c, &p, &key)
                .await
                .map_err(FinaliseError::from)?;
            masked.rewritten.insert(db.clone(), p.rewritten.clone());
        }
        // Materialized views were refreshed from the masked tables: their
        // old statistics go with the rewrite too.
        masked.rewritten.entry(db.clone()).or_default().extend(
            cover
                .actions
                .iter()
                .filter(|(t, a)| t.database == *db && *a == TableAction::Refresh)
                .map(|(t, _)| t.clone()),
        );
        masked.record(db, &cover, &catalog, &rows);
    }
    masked.summary = match status {
        AnonymisationStatus::Checked => "every column of every table is covered by a rule".into(),
        _ if !given => format!(
            "no masking rules: {} column(s) unmasked by rules{}",
            cover.uncovered_total,
            if m.script { " (a script ran)" } else { "" }
        ),
        _ => format!("{} column(s) had no rule", cover.uncovered_total),
    };
    Ok(masked)
}

/// Add `db`'s tables to `catalog` over a connection of the temporary
/// admin role, which is returned for more work there.
pub(super) async fn read_catalog_of(
    spec: &FinaliseSpec<'_>,
    password: &str,
    db: &str,
    catalog: &mut Catalog,
) -> Result<tokio_postgres::Client, FinaliseError> {
    let c = admin_connect(spec, password, db)
        .await
        .map_err(sql_err("connecting to read the catalog"))?;
    run::read_catalog(&c, db, catalog).await?;
    Ok(c)
}

/// The leak scan, after the rules and the script: in every database,
/// values that still look personal, and any original of a masked column
/// found anywhere. Findings refuse the seal when coverage is required (a
/// one-line reason naming table, column and a count, never a value), and
/// mark the image unchecked otherwise.
pub(super) async fn scan_everywhere(
    spec: &FinaliseSpec<'_>,
    password: &str,
    databases: &[String],
    masked: &Masked,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<ScanManifest, FinaliseError> {
    if masked.status == Some(AnonymisationStatus::None) {
        return Ok(ScanManifest {
            result: "skipped".into(),
            originals_from_columns: 0,
            findings: Vec::new(),
            sampled_tables: Vec::new(),
        });
    }
    progress(Progress::Step(format!(
        "leak scan: sampled values, and {} masked column(s)' originals searched for everywhere",
        masked.originals.columns.len()
    )));
    let mut findings = Vec::new();
    let mut sampled = Vec::new();
    for db in databases {
        // Read again: the script may have changed the schema.
        let mut catalog = Catalog::default();
        let c = read_catalog_of(spec, password, db, &mut catalog).await?;
        let (found, in_sample) = scan::scan_within(
            &c,
            db,
            &catalog,
            &masked.originals,
            spec.masking.scan_budget,
        )
        .await
        .map_err(FinaliseError::from)?;
        findings.extend(found);
        sampled.extend(in_sample.iter().map(|t| t.to_string()));
    }
    let findings: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
    if !findings.is_empty() {
        if spec.masking.require_coverage {
            return Err(FinaliseError::Leaks(findings));
        }
        for f in &findings {
            progress(Progress::Output(format!("leak scan: {f}")));
        }
    }
    Ok(ScanManifest {
        result: if findings.is_empty() {
            "clean"
        } else {
            "findings"
        }
        .into(),
        originals_from_columns: masked.originals.columns.len(),
        findings,
        sampled_tables: sampled,
    })
}

impl Masked {
    /// Record the manifest's rows for `db`'s tables.
    fn record(&mut self, db: &str, cover: &Coverage, catalog: &Catalog, rows: &[(TableName, u64)]) {
        for (t, action) in cover.actions.iter().filter(|(t, _)| t.database == db) {
            let columns = catalog
                .columns
                .iter()
                .filter(|c| c.database == t.database && c.schema == t.schema && c.table == t.table)
                .count() as u32;
            let (masked, truncated) = match action {
                TableAction::Truncate => (0, true),
                TableAction::Mask(cols) => (cols.len() as u32, false),
                TableAction::Refresh => continue,
            };
            if truncated {
                self.truncated
                    .entry(db.to_string())
                    .or_default()
                    .push(t.clone());
            }
            let count = match truncated {
                true => Some(0),
                false => rows.iter().find(|(r, _)| r == t).map(|(_, n)| *n as i64),
            };
            self.tables.push(TableManifest {
                table: t.to_string(),
                masked_columns: masked,
                kept_columns: columns.saturating_sub(masked),
                truncated,
                rows: count,
            });
        }
    }

    /// The manifest, once the scan has run.
    pub(super) fn manifest(&self, spec: &MaskingSpec, scan: ScanManifest) -> Manifest {
        let mut status = self.status.unwrap_or(AnonymisationStatus::Unchecked);
        if status == AnonymisationStatus::Checked && scan.result == "findings" {
            status = AnonymisationStatus::Unchecked;
        }
        Manifest {
            status,
            rules_sha256: spec.rules_sha256(),
            rules_from: spec.rules_from(),
            script: spec.script,
            uncovered_columns: self.uncovered,
            tables: self.tables.clone(),
            scan,
            summary: self.summary.clone(),
            source: None,
        }
    }
}

/// Stream a suggested rule for each uncovered column (the first ones), as
/// lines of a rules file the operator can paste.
fn suggest_uncovered(cover: &Coverage, progress: &(dyn Fn(Progress) + Send + Sync)) {
    let out = |s: String| progress(Progress::Output(s));
    out(format!(
        "# {} column(s) have no masking rule; suggested rules (review each):",
        cover.uncovered_total
    ));
    let mut table: Option<&TableName> = None;
    for u in &cover.uncovered {
        if table != Some(&u.table) {
            let t = &u.table;
            out(format!(
                "[{}.{}.{}]",
                suggest::key(&t.database),
                suggest::key(&t.schema),
                suggest::key(&t.table)
            ));
            table = Some(&u.table);
        }
        out(format!(
            "{} = {}   # {}",
            suggest::key(&u.column),
            u.suggestion,
            u.because
        ));
    }
    if cover.uncovered_total > cover.uncovered.len() {
        out(format!(
            "# … and {} more",
            cover.uncovered_total - cover.uncovered.len()
        ));
    }
}

fn uncovered_error(m: &MaskingSpec, cover: &Coverage) -> FinaliseError {
    let named: Vec<String> = cover
        .uncovered
        .iter()
        .take(NAMED_IN_ERROR)
        .map(|u| format!("{}.{}", u.table, u.column))
        .collect();
    FinaliseError::Uncovered {
        image: m.image,
        total: cover.uncovered_total,
        named,
        any_rules: m.config_rules.is_some() || m.image_rules.is_some(),
    }
}
