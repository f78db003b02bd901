//! Running masking on a live database: reading its catalog and foreign
//! keys ([`read_catalog`], [`read_foreign_keys`]) and applying a
//! [`DatabasePlan`] ([`apply`]): the transaction, the orphan check of
//! every foreign key, the commit, then the rewrites. The key's pads are
//! bound as parameters of the keyed statements, never spliced into text.

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::coverage::{CatalogColumn, RelKind, CATALOG_SQL};
use super::key::MaskingKey;
use super::plan::{orphan_check, DatabasePlan, ForeignKey, FOREIGN_KEYS_SQL};
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
    #[error("masking database {database}: foreign key {constraint} of {schema}.{table} has {count} row(s) without a referenced row after masking")]
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

/// Every user column of the database `client` is connected to.
pub async fn read_catalog(client: &Client, database: &str) -> Result<Vec<CatalogColumn>, RunError> {
    let rows = client
        .query(CATALOG_SQL, &[])
        .await
        .map_err(pg(database, "reading the catalog"))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let get = |i| -> Result<String, RunError> {
            r.try_get(i).map_err(pg(database, "reading the catalog"))
        };
        let opt = |i| -> Result<Option<String>, RunError> {
            r.try_get(i).map_err(pg(database, "reading the catalog"))
        };
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
        let max_len: Option<i32> = r.try_get(6).map_err(pg(database, "reading the catalog"))?;
        out.push(CatalogColumn {
            database: database.to_string(),
            column: get(2)?,
            ty: ColumnType {
                sql_type: get(3)?,
                base: get(4)?,
                category: get(5)?.chars().next().unwrap_or('X'),
                max_len: max_len.and_then(|n| u32::try_from(n).ok()),
                not_null: r.try_get(7).map_err(pg(database, "reading the catalog"))?,
            },
            generated: r.try_get(8).map_err(pg(database, "reading the catalog"))?,
            kind,
            schema,
            table,
        });
    }
    Ok(out)
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
/// superuser: `session_replication_role` needs one) with `key`. The
/// transaction rolls back when a statement fails or a foreign key has
/// orphans.
pub async fn apply(client: &Client, plan: &DatabasePlan, key: &MaskingKey) -> Result<(), RunError> {
    let db = plan.database.as_str();
    let fks = read_foreign_keys(client, db).await?;
    let pads = key.pads();
    let (ipad, opad) = (pads.ipad.expose(), pads.opad.expose());
    let keyed: [&(dyn ToSql + Sync); 2] = [ipad, opad];
    client
        .batch_execute("BEGIN")
        .await
        .map_err(pg(db, "BEGIN"))?;
    let outcome = async {
        for s in &plan.transaction {
            let params: &[&(dyn ToSql + Sync)] = if s.keyed { &keyed } else { &[] };
            client
                .execute(s.sql.as_str(), params)
                .await
                .map_err(pg(db, first_words(&s.sql)))?;
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
    for s in &plan.after {
        client
            .execute(s.sql.as_str(), &[])
            .await
            .map_err(pg(db, first_words(&s.sql)))?;
    }
    Ok(())
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
