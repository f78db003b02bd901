//! Running masking on a live database: reading its catalog and foreign
//! keys ([`read_catalog`], [`read_foreign_keys`]) and applying a
//! [`DatabasePlan`] ([`apply`]): the transaction, the orphan check of
//! every foreign key, the commit, then the rewrites. The key's pads are
//! bound as parameters of the keyed statements, never spliced into text.

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::coverage::{Catalog, CatalogColumn, CatalogTable, RelKind, CATALOG_SQL};
use super::key::MaskingKey;
use super::plan::{orphan_check, DatabasePlan, ForeignKey, FOREIGN_KEYS_SQL};
use super::rules::TableName;
use super::transform::ColumnType;

/// Why masking a database failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("masking database {database}: {step}")]
    Postgres {
        database: String,
        step: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("masking database {database}: unknown relkind `{relkind}` of {schema}.{table}")]
    RelKind {
        database: String,
        schema: String,
        table: String,
        relkind: String,
    },
    #[error("masking database {database}: {kind} {name} on {schema}.{table} fires even with session_replication_role = replica and could copy originals; disable or drop it first")]
    Hazard {
        database: String,
        schema: String,
        table: String,
        kind: String,
        name: String,
    },
    #[error("masking database {database}: foreign key {constraint} of {schema}.{table} has {count} row(s) without a referenced row after masking; mask its columns with the same transformer as the columns they reference")]
    Orphans {
        database: String,
        constraint: String,
        schema: String,
        table: String,
        count: i64,
    },
}

fn pg(database: &str, step: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> RunError {
    let database = database.to_string();
    let step = step.into();
    move |source| RunError::Postgres {
        database,
        step,
        source,
    }
}

/// Triggers and UPDATE rules that fire in `replica` mode (enabled
/// ALWAYS or REPLICA), with the root of their table's partition tree:
/// root schema, root table, schema, table, kind, name.
pub const HAZARDS_SQL: &str = "\
SELECT coalesce(rn.nspname, n.nspname)::text, coalesce(rc.relname, c.relname)::text,
       n.nspname::text, c.relname::text, h.kind, h.name
  FROM (SELECT t.tgrelid AS rel, 'trigger'::text AS kind, t.tgname::text AS name
          FROM pg_catalog.pg_trigger t
         WHERE NOT t.tgisinternal AND t.tgenabled IN ('A', 'R')
        UNION ALL
        SELECT r.ev_class, 'rule', r.rulename::text
          FROM pg_catalog.pg_rewrite r
         WHERE r.ev_type = '2' AND r.ev_enabled IN ('A', 'R')) h
  JOIN pg_catalog.pg_class c ON c.oid = h.rel
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_catalog.pg_class rc ON c.relispartition AND rc.oid = pg_catalog.pg_partition_root(c.oid)
  LEFT JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
 ORDER BY 1, 2, 3, 4, 6";

/// Refuse `plan` when a trigger or rule that fires in replica mode is on
/// a table it rewrites (or a partition of one).
async fn refuse_hazards(client: &Client, plan: &DatabasePlan) -> Result<(), RunError> {
    let db = plan.database.as_str();
    let rows = client
        .query(HAZARDS_SQL, &[])
        .await
        .map_err(pg(db, "reading triggers and rules"))?;
    for r in rows {
        let col = |i| -> Result<String, RunError> {
            r.try_get(i).map_err(pg(db, "reading triggers and rules"))
        };
        let (root_schema, root_table) = (col(0)?, col(1)?);
        if plan
            .rewritten
            .iter()
            .any(|t| t.schema == root_schema && t.table == root_table)
        {
            return Err(RunError::Hazard {
                database: db.to_string(),
                schema: col(2)?,
                table: col(3)?,
                kind: col(4)?,
                name: col(5)?,
            });
        }
    }
    Ok(())
}

/// Add the database `client` is connected to, and its user columns and
/// column-less relations, to `catalog`.
pub async fn read_catalog(
    client: &Client,
    database: &str,
    catalog: &mut Catalog,
) -> Result<(), RunError> {
    let rows = client
        .query(CATALOG_SQL, &[])
        .await
        .map_err(pg(database, "reading the catalog"))?;
    catalog.databases.push(database.to_string());
    for r in rows {
        let opt = |i| -> Result<Option<String>, RunError> {
            r.try_get(i).map_err(pg(database, "reading the catalog"))
        };
        let get = |i| -> Result<String, RunError> { Ok(opt(i)?.unwrap_or_default()) };
        let (schema, table, relkind) = (get(0)?, get(1)?, get(9)?);
        let root = opt(10)?.zip(opt(11)?);
        let Some(kind) = RelKind::from_catalog(&relkind, root) else {
            return Err(RunError::RelKind {
                database: database.to_string(),
                schema,
                table,
                relkind,
            });
        };
        let Some(column) = opt(2)? else {
            catalog.columnless.push(CatalogTable {
                name: TableName {
                    database: database.to_string(),
                    schema,
                    table,
                },
                kind,
            });
            continue;
        };
        let max_len: Option<i32> = r.try_get(6).map_err(pg(database, "reading the catalog"))?;
        catalog.columns.push(CatalogColumn {
            database: database.to_string(),
            column,
            ty: ColumnType {
                sql_type: get(3)?,
                base: get(4)?,
                category: get(5)?.chars().next().unwrap_or('X'),
                max_len: max_len.and_then(|n| u32::try_from(n).ok()),
                not_null: r.try_get(7).map_err(pg(database, "reading the catalog"))?,
                unique: r.try_get(12).map_err(pg(database, "reading the catalog"))?,
            },
            generated: r.try_get(8).map_err(pg(database, "reading the catalog"))?,
            kind,
            schema,
            table,
        });
    }
    Ok(())
}

/// Every foreign key of the database `client` is connected to.
pub async fn read_foreign_keys(
    client: &Client,
    database: &str,
) -> Result<Vec<ForeignKey>, RunError> {
    let rows = client
        .query(FOREIGN_KEYS_SQL, &[])
        .await
        .map_err(pg(database, "reading foreign keys"))?;
    rows.iter()
        .map(|r| {
            Ok(ForeignKey {
                name: r.try_get(0)?,
                schema: r.try_get(1)?,
                table: r.try_get(2)?,
                columns: r.try_get(3)?,
                ref_schema: r.try_get(4)?,
                ref_table: r.try_get(5)?,
                ref_columns: r.try_get(6)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(pg(database, "reading foreign keys"))
}

/// Apply `plan` on `client` (connected to `plan.database` as a
/// superuser: `session_replication_role` needs one) with `key`, then its
/// `after` statements (the rewrites). The transaction rolls back when a
/// statement fails or a foreign key has orphans.
#[cfg(any(test, feature = "test-support"))]
pub async fn apply(client: &Client, plan: &DatabasePlan, key: &MaskingKey) -> Result<(), RunError> {
    apply_transaction(client, plan, key).await?;
    let db = plan.database.as_str();
    for s in &plan.after {
        client
            .execute(s.sql.as_str(), &[])
            .await
            .map_err(pg(db, first_words(&s.sql)))?;
    }
    Ok(())
}

/// The transaction of `plan` only (finalise rewrites what it changed
/// itself, with everything else the script changed). Returns each masked
/// table's row count.
pub async fn apply_transaction(
    client: &Client,
    plan: &DatabasePlan,
    key: &MaskingKey,
) -> Result<Vec<(TableName, u64)>, RunError> {
    let db = plan.database.as_str();
    refuse_hazards(client, plan).await?;
    let fks: Vec<ForeignKey> = read_foreign_keys(client, db)
        .await?
        .into_iter()
        .filter(|fk| plan.touches(fk))
        .collect();
    let pads = key.pads();
    let (ipad, opad) = (pads.ipad.expose(), pads.opad.expose());
    let keyed: [&(dyn ToSql + Sync); 2] = [ipad, opad];
    client
        .batch_execute("BEGIN")
        .await
        .map_err(pg(db, "BEGIN"))?;
    let mut rows = Vec::new();
    let outcome = async {
        for s in &plan.transaction {
            let params: &[&(dyn ToSql + Sync)] = if s.keyed { &keyed } else { &[] };
            let n = client
                .execute(s.sql.as_str(), params)
                .await
                .map_err(pg(db, first_words(&s.sql)))?;
            if let Some(t) = &s.masks {
                rows.push((t.clone(), n));
            }
        }
        for fk in &fks {
            let row = client
                .query_one(orphan_check(fk).as_str(), &[])
                .await
                .map_err(pg(db, format!("checking foreign key {}", fk.name)))?;
            let count: i64 = row
                .try_get(0)
                .map_err(pg(db, format!("checking foreign key {}", fk.name)))?;
            if count > 0 {
                return Err(RunError::Orphans {
                    database: db.to_string(),
                    constraint: fk.name.clone(),
                    schema: fk.schema.clone(),
                    table: fk.table.clone(),
                    count,
                });
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(e);
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(pg(db, "COMMIT"))?;
    Ok(rows)
}

/// The statement's verb and target, for an error (never values: the
/// statements hold none).
fn first_words(sql: &str) -> String {
    sql.split(" SET ")
        .next()
        .unwrap_or(sql)
        .chars()
        .take(120)
        .collect()
}
