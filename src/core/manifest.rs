//! An image's anonymisation manifest: how it was anonymised, recorded at
//! finalise (stored as JSON with the image) and shown by both doors
//! (`ssh draupnir image ID`, `GET /images/:id`). Also what an image was
//! declared with at creation ([`NewImage`]): its own rules, its script,
//! or that its data is not personal.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What `new-image` / `POST /images` asks for.
#[derive(Debug, Clone, Default)]
pub struct NewImage {
    pub backed_up_at: Option<OffsetDateTime>,
    /// SQL run after the rules, for what rules cannot say.
    pub script: Option<String>,
    /// A rules file of this image's own (TOML); its tables replace the
    /// same tables of `[masking] rules_file`.
    pub rules: Option<String>,
    /// Declared not personal: sealed without masking, recorded as `none`.
    pub no_anonymisation: bool,
}

impl NewImage {
    /// An image with a script and nothing else.
    pub fn with_script(script: Option<&str>) -> NewImage {
        NewImage {
            script: script.map(str::to_string),
            ..NewImage::default()
        }
    }

    /// An image declared not personal (`--no-anonymisation`).
    pub fn not_personal() -> NewImage {
        NewImage {
            no_anonymisation: true,
            ..NewImage::default()
        }
    }
}

/// Whether an image's anonymisation was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnonymisationStatus {
    /// Every column of every table covered by a rule, the leak scan clean.
    Checked,
    /// Sealed with `require_coverage = false` while something was not
    /// covered (or the scan found something), or sealed before manifests.
    Unchecked,
    /// Declared not personal (`--no-anonymisation`): nothing masked.
    None,
}

impl AnonymisationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AnonymisationStatus::Checked => "checked",
            AnonymisationStatus::Unchecked => "unchecked",
            AnonymisationStatus::None => "none",
        }
    }
}

impl std::fmt::Display for AnonymisationStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What finalise did to one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableManifest {
    /// `database.schema.table`.
    pub table: String,
    pub masked_columns: u32,
    pub kept_columns: u32,
    pub truncated: bool,
    /// Rows masked (the table's rows: masking changes no row count), 0
    /// when truncated, `None` for a table whose columns are all kept.
    pub rows: Option<i64>,
}

/// The leak scan's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanManifest {
    /// `clean`, `findings` or `skipped`.
    pub result: String,
    /// Masked columns whose sampled original values were searched for in
    /// every text-like column of every table.
    pub originals_from_columns: usize,
    /// One line per finding (table, column, a count; never a value).
    pub findings: Vec<String>,
    /// Tables larger than the scan's budget, searched for originals in a
    /// random sample of their pages (`[masking] scan_sample_bytes`).
    #[serde(default)]
    pub sampled_tables: Vec<String>,
}

/// How an image was anonymised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub status: AnonymisationStatus,
    /// SHA-256 (hex) of the rules in force, as given (config file's text,
    /// then the image's own); `None` without rules.
    pub rules_sha256: Option<String>,
    /// Where the rules came from: `config` (`[masking] rules_file`),
    /// `image` (its own), both, or none.
    pub rules_from: Vec<String>,
    /// Whether an anonymisation script ran after the rules.
    pub script: bool,
    /// Columns no rule covered (sealed only with `require_coverage = false`).
    pub uncovered_columns: usize,
    pub tables: Vec<TableManifest>,
    pub scan: ScanManifest,
    /// One line on why the status is what it is.
    pub summary: String,
    /// For an image made by `refresh-image`: the source and the replay
    /// position it was made at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceManifest>,
}

/// Where a refreshed image's data came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceManifest {
    /// The `[sources.NAME]` it was made from.
    pub name: String,
    /// The standby's replay position (LSN, `0/3000060`) when it was
    /// snapshotted: the image holds every transaction up to it.
    pub lsn: String,
    /// Commit time of the last transaction replayed (RFC 3339), if any.
    pub commit_time: Option<String>,
}

impl Manifest {
    /// What an image sealed before manifests existed reads as.
    pub fn legacy() -> Manifest {
        Manifest {
            status: AnonymisationStatus::Unchecked,
            rules_sha256: None,
            rules_from: Vec::new(),
            script: false,
            uncovered_columns: 0,
            tables: Vec::new(),
            scan: ScanManifest {
                result: "skipped".into(),
                originals_from_columns: 0,
                findings: Vec::new(),
                sampled_tables: Vec::new(),
            },
            summary: "sealed before anonymisation was checked".into(),
            source: None,
        }
    }
}
