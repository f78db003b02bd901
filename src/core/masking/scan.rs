//! Sampling a live database and the leak scan run after masking.
//!
//! [`sample`] reads up to N non-NULL values of every text-like column
//! (type category `S`, and `inet`/`cidr`) of every table, one statement
//! per table (a partitioned table through its root, never its leaves
//! again). [`scan`] runs after masking: (a) it samples again and reports
//! each column whose values still look personal ([`super::detect::leaks`];
//! this project's own masked outputs do not count, and in a masked column
//! the detectors whose shape `phone` and `digits` keep by design are not
//! asked), and (b) it counts, in one sequential scan per table, the
//! values of every text-like column equal to an original: a value sampled
//! before masking from a masked column. The originals never reach the
//! server: only their SHA-256 digests do, bound as a `bytea[]` parameter
//! (a statement's text can end up in the server's log), compared with
//! `sha256(convert_to(col::text, 'UTF8')) = ANY($1)`, which PostgreSQL
//! turns into a hash lookup, after a cheaper filter on the originals'
//! byte lengths (`octet_length(col) = ANY($2)`). A table larger than the
//! scan's budget (`[masking] scan_sample_bytes`) is searched in a random
//! sample of about that many bytes of its pages (`TABLESAMPLE SYSTEM`), so
//! the search costs the same on a 1 GiB and a 500 GiB database; such
//! tables are named in the manifest. Findings and errors name a table, a
//! column and a count, never a value.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::coverage::{Catalog, CatalogColumn, RelKind, TableAction};
use super::detect::{detect, leaks, Detector, Samples};
use super::rules::TableName;
use super::transform::{quote_ident, ColumnType};

/// Values the leak scan samples per column.
pub const SCAN_PER_COLUMN: usize = 200;

/// Longer values are not sampled (no detector matches them, and a sample
/// stays small in memory).
pub const MAX_SAMPLED_BYTES: usize = 1024;

/// An original shorter than this (in characters) that no detector
/// recognises is not searched for: `yes`, `n/a` or `1` are everywhere.
pub const MIN_ORIGINAL_CHARS: usize = 6;

/// Why sampling or scanning a database failed (never with a value).
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("scanning database {database}: {step}")]
    Database {
        database: String,
        step: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("scanning {table}: {step}")]
    Table {
        table: TableName,
        step: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// What a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FindingKind {
    /// Sampled values still look like this.
    LooksLike(Detector),
    /// Values equal to an original value of a masked column.
    Original,
}

/// A column where the leak scan found something: where, what, how many.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    pub table: TableName,
    pub column: String,
    pub kind: FindingKind,
    pub count: usize,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.count;
        let s = if n == 1 { "" } else { "s" };
        match self.kind {
            FindingKind::LooksLike(d) if n == 1 => write!(
                f,
                "{}.{}: 1 sampled value still looks like {}",
                self.table,
                self.column,
                d.singular()
            ),
            FindingKind::LooksLike(d) => write!(
                f,
                "{}.{}: {n} sampled values still look like {}",
                self.table,
                self.column,
                d.plural()
            ),
            FindingKind::Original => write!(
                f,
                "{}.{}: {n} value{s} equal{} an original value of a masked column",
                self.table,
                self.column,
                if n == 1 { "s" } else { "" }
            ),
        }
    }
}

/// Whether the scan reads a column's values as text.
fn text_like(ty: &ColumnType) -> bool {
    ty.category == 'S' || matches!(ty.base.as_str(), "inet" | "cidr")
}

/// A relation to read and its text-like columns.
struct Target<'a> {
    name: TableName,
    /// `ONLY schema.table` (a plain table: not its inheritance children,
    /// which are read on their own) or `schema.table` (a partitioned
    /// root: all its partitions).
    from: String,
    columns: Vec<&'a CatalogColumn>,
}

/// The relations of `database` holding data, with their text-like
/// columns (`generated`: also generated ones; `matviews`: also
/// materialized views).
fn targets<'a>(
    catalog: &'a Catalog,
    database: &str,
    generated: bool,
    matviews: bool,
) -> Vec<Target<'a>> {
    let mut by: BTreeMap<TableName, Target<'a>> = BTreeMap::new();
    for c in catalog.columns.iter().filter(|c| c.database == database) {
        let only = match c.kind {
            RelKind::Table => "ONLY ",
            RelKind::Partitioned => "",
            RelKind::MaterializedView if matviews => "",
            _ => continue,
        };
        if !text_like(&c.ty) || (c.generated && !generated) {
            continue;
        }
        let name = TableName {
            database: c.database.clone(),
            schema: c.schema.clone(),
            table: c.table.clone(),
        };
        by.entry(name.clone())
            .or_insert_with(|| Target {
                from: format!("{only}{}.{}", quote_ident(&c.schema), quote_ident(&c.table)),
                name,
                columns: Vec::new(),
            })
            .columns
            .push(c);
    }
    by.into_values().collect()
}

/// Up to `per_column` non-NULL values (of at most [`MAX_SAMPLED_BYTES`])
/// of every text-like, not generated column of every table of
/// `database` (`client` is connected to it), one statement per table.
pub async fn sample(
    client: &Client,
    database: &str,
    catalog: &Catalog,
    per_column: usize,
) -> Result<Samples, ScanError> {
    let mut out = Samples::default();
    for t in targets(catalog, database, false, false) {
        sample_into(client, &t, per_column, &mut out).await?;
    }
    Ok(out)
}

async fn sample_into(
    client: &Client,
    t: &Target<'_>,
    per_column: usize,
    out: &mut Samples,
) -> Result<(), ScanError> {
    let arrays: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            let v = format!("x.{}::text", quote_ident(&c.column));
            format!(
                "ARRAY(SELECT {v} FROM {} AS x WHERE {v} IS NOT NULL AND octet_length({v}) <= {MAX_SAMPLED_BYTES} LIMIT {per_column})",
                t.from
            )
        })
        .collect();
    let sql = format!("SELECT {}", arrays.join(", "));
    let err = |source| ScanError::Table {
        table: t.name.clone(),
        step: "sampling values",
        source,
    };
    let row = client.query_one(sql.as_str(), &[]).await.map_err(err)?;
    for (i, c) in t.columns.iter().enumerate() {
        let values: Vec<String> = row.try_get(i).map_err(err)?;
        out.insert(t.name.clone(), c.column.clone(), values);
    }
    Ok(())
}

/// The originals worth keeping for the leak scan: the sampled values of
/// the columns `actions` rewrite (a transformer other than `keep`) or
/// empty (a truncated table).
pub fn masked_originals(samples: &Samples, actions: &[(TableName, TableAction)]) -> Samples {
    samples.filtered(|table, column| {
        actions.iter().any(|(t, a)| {
            t == table
                && match a {
                    TableAction::Truncate => true,
                    TableAction::Mask(cols) => cols.iter().any(|m| m.column == column),
                    TableAction::Refresh => false,
                }
        })
    })
}

/// The SHA-256 digests of the originals worth searching for, and their
/// lengths in bytes (a cheap first filter: PostgreSQL knows a value's
/// length without reading it).
fn digests(originals: &Samples) -> (Vec<Vec<u8>>, Vec<i32>) {
    let mut lengths = BTreeSet::new();
    let set: BTreeSet<Vec<u8>> = originals
        .columns
        .values()
        .flatten()
        .filter(|v| {
            let t = v.trim();
            !t.is_empty() && (t.chars().count() >= MIN_ORIGINAL_CHARS || detect(t).is_some())
        })
        .filter_map(|v| {
            lengths.insert(i32::try_from(v.len()).ok()?);
            Some(Sha256::digest(v.as_bytes()).to_vec())
        })
        .collect();
    (set.into_iter().collect(), lengths.into_iter().collect())
}

/// The leak scan of `database` (`client` connected to it) after masking;
/// `originals` holds values sampled before masking from the masked
/// columns ([`masked_originals`]); it may hold every database's, so a
/// copy in another database is found too (a column counts as masked here
/// when `originals` has values of it under this database's name).
/// A table larger than `budget` bytes (its pages, all partitions) is
/// searched for originals in a random sample of about `budget` bytes of
/// it (None: every row). Returns the findings, sorted by table and
/// column, and the tables so sampled.
pub async fn scan_within(
    client: &Client,
    database: &str,
    catalog: &Catalog,
    originals: &Samples,
    budget: Option<u64>,
) -> Result<(Vec<Finding>, Vec<TableName>), ScanError> {
    let (unpopulated, utf8) = database_facts(client, database).await?;
    let (digests, lengths) = digests(originals);
    let mut findings = Vec::new();
    let mut sampled_tables = Vec::new();
    for mut t in targets(catalog, database, true, true) {
        if unpopulated.contains(&(t.name.schema.clone(), t.name.table.clone())) {
            continue;
        }
        // (a) still looking personal.
        let mut now = Samples::default();
        let sampled: Vec<&CatalogColumn> =
            t.columns.iter().copied().filter(|c| !c.generated).collect();
        let all = std::mem::replace(&mut t.columns, sampled);
        if !t.columns.is_empty() {
            sample_into(client, &t, SCAN_PER_COLUMN, &mut now).await?;
        }
        t.columns = all;
        for ((table, column), values) in &now.columns {
            let masked = !originals.get(table, column).is_empty();
            for (d, count) in leaks(values) {
                if masked && matches!(d, Detector::Phone | Detector::Card | Detector::Iban) {
                    continue;
                }
                findings.push(Finding {
                    table: table.clone(),
                    column: column.clone(),
                    kind: FindingKind::LooksLike(d),
                    count,
                });
            }
        }
        // (b) originals anywhere: one sequential scan of the table.
        if digests.is_empty() {
            continue;
        }
        let counts: Vec<String> = t
            .columns
            .iter()
            .map(|c| {
                let v = format!("x.{}::text", quote_ident(&c.column));
                // The byte lengths are UTF-8's: only a UTF8 database's match.
                let length = if utf8 {
                    format!("octet_length({v}) = ANY($2::int4[]) AND ")
                } else {
                    String::new()
                };
                format!(
                    "count(*) FILTER (WHERE {length}sha256(convert_to({v}, 'UTF8')) = ANY($1::bytea[]))"
                )
            })
            .collect();
        let err = |source| ScanError::Table {
            table: t.name.clone(),
            step: "searching for original values",
            source,
        };
        let mut sample = String::new();
        if let Some(budget) = budget.filter(|b| *b > 0) {
            let size = table_bytes(client, &t.name).await.map_err(err)?;
            if size > budget {
                let percent = (budget as f64 * 100.0 / size as f64).clamp(0.0001, 100.0);
                sample = format!(" TABLESAMPLE SYSTEM ({percent:.6})");
                sampled_tables.push(t.name.clone());
            }
        }
        let sql = format!("SELECT {} FROM {} AS x{sample}", counts.join(", "), t.from);
        let both: [&(dyn ToSql + Sync); 2] = [&digests, &lengths];
        let row = client
            .query_one(sql.as_str(), if utf8 { &both } else { &both[..1] })
            .await
            .map_err(err)?;
        for (i, c) in t.columns.iter().enumerate() {
            let n: i64 = row.try_get(i).map_err(err)?;
            if n > 0 {
                findings.push(Finding {
                    table: t.name.clone(),
                    column: c.column.clone(),
                    kind: FindingKind::Original,
                    count: usize::try_from(n).unwrap_or(usize::MAX),
                });
            }
        }
    }
    findings.sort();
    Ok((findings, sampled_tables))
}

/// The bytes of a table's main fork, over all its partitions.
async fn table_bytes(client: &Client, t: &TableName) -> Result<u64, tokio_postgres::Error> {
    let name = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.table));
    let row = client
        .query_one(
            "SELECT greatest(pg_catalog.pg_relation_size($1::text::regclass),
                    (SELECT coalesce(sum(pg_catalog.pg_relation_size(relid)), 0)
                       FROM pg_catalog.pg_partition_tree($1::text::regclass)))::int8",
            &[&name],
        )
        .await?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

/// Materialized views not populated (`WITH NO DATA`: nothing to read),
/// and whether the database's encoding is UTF8.
async fn database_facts(
    client: &Client,
    database: &str,
) -> Result<(BTreeSet<(String, String)>, bool), ScanError> {
    let err = |source| ScanError::Database {
        database: database.to_string(),
        step: "reading the encoding",
        source,
    };
    let encoding: String = client
        .query_one("SELECT pg_catalog.getdatabaseencoding()::text", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(err)?;
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'm' AND NOT c.relispopulated",
            &[],
        )
        .await
        .map_err(|source| ScanError::Database {
            database: database.to_string(),
            step: "reading materialized views",
            source,
        })?;
    let unpopulated = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(|source| ScanError::Database {
            database: database.to_string(),
            step: "reading materialized views",
            source,
        })?;
    Ok((unpopulated, encoding == "UTF8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::masking::coverage::MaskedColumn;
    use crate::core::masking::transform::Transformer;

    fn name(table: &str) -> TableName {
        TableName {
            database: "app".into(),
            schema: "public".into(),
            table: table.into(),
        }
    }

    #[test]
    fn findings_say_where_and_how_many_never_what() {
        let f = Finding {
            table: name("users"),
            column: "email".into(),
            kind: FindingKind::LooksLike(Detector::Email),
            count: 3,
        };
        assert_eq!(
            f.to_string(),
            "app.public.users.email: 3 sampled values still look like e-mail addresses"
        );
        let one = Finding {
            count: 1,
            kind: FindingKind::LooksLike(Detector::PersonName),
            ..f.clone()
        };
        assert_eq!(
            one.to_string(),
            "app.public.users.email: 1 sampled value still looks like a person's name"
        );
        let f = Finding {
            kind: FindingKind::Original,
            count: 1,
            ..f
        };
        assert_eq!(
            f.to_string(),
            "app.public.users.email: 1 value equals an original value of a masked column"
        );
    }

    #[test]
    fn originals_are_the_masked_columns_and_truncated_tables() {
        let mut s = Samples::default();
        for (t, c) in [
            ("users", "email"),
            ("users", "note"),
            ("log", "line"),
            ("v", "x"),
        ] {
            s.insert(name(t), c.into(), vec![format!("{t}.{c}")]);
        }
        let ty = crate::core::masking::transform::tests::ty("text", "text", 'S');
        let actions = vec![
            (
                name("users"),
                TableAction::Mask(vec![MaskedColumn {
                    column: "email".into(),
                    ty,
                    transformer: Transformer::Email,
                }]),
            ),
            (name("log"), TableAction::Truncate),
            (name("v"), TableAction::Refresh),
        ];
        let o = masked_originals(&s, &actions);
        let got: Vec<String> = o.columns.keys().map(|(t, c)| format!("{t}.{c}")).collect();
        assert_eq!(got, vec!["app.public.log.line", "app.public.users.email"]);
    }

    #[test]
    fn short_common_originals_are_not_searched() {
        let mut s = Samples::default();
        s.insert(
            name("t"),
            "c".into(),
            vec![
                "yes".into(),
                " ".into(),
                "1.2.3.4".into(),
                "abcdef".into(),
                "abcdef".into(),
            ],
        );
        let (d, lengths) = digests(&s);
        assert_eq!(d.len(), 2, "an IP (detected) and a 6-character value, once");
        assert!(d.contains(&Sha256::digest(b"abcdef").to_vec()));
        assert_eq!(lengths, vec![6, 7]);
    }
}
