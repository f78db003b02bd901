//! The statements that apply a database's masking: in one transaction,
//! with `session_replication_role = replica` (no foreign-key or user
//! trigger fires while a referenced key and its references are rewritten
//! one table after the other), truncate what is emptied, rewrite every
//! masked column of each table in one `UPDATE`, then check each foreign
//! key for orphans (the re-validation the disabled triggers skipped) and
//! refresh materialized views. After the commit, `VACUUM (FULL, ANALYZE)`
//! rewrites each masked table and its indexes, so no dead tuple, index
//! entry or statistic keeps an original, and rebuilds every unique index
//! (a duplicate fails there). Unique indexes hold by construction:
//! `email` and `hash` are unique in, unique out.
//!
//! Keyed statements take the key's HMAC pads as `$1` and `$2` (bytea);
//! the key is never part of a statement's text.

use std::collections::BTreeSet;

use super::coverage::TableAction;
use super::rules::TableName;
use super::transform::{quote_ident, KEY_ALIAS};

/// One statement, and whether it takes the key pads as `$1`, `$2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub keyed: bool,
    /// The table an `UPDATE` masks (its row count is the table's).
    pub masks: Option<TableName>,
}

impl Statement {
    fn plain(sql: String) -> Statement {
        Statement {
            sql,
            keyed: false,
            masks: None,
        }
    }
}

/// A database's masking.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DatabasePlan {
    pub database: String,
    /// Run in order inside one transaction.
    pub transaction: Vec<Statement>,
    /// Run after the commit, each on its own (VACUUM cannot run in a
    /// transaction).
    pub after: Vec<Statement>,
    /// Tables the transaction rewrites or empties: the foreign keys from
    /// or to them are checked for orphans.
    pub rewritten: Vec<TableName>,
}

impl DatabasePlan {
    /// Whether `fk` references or belongs to a table this plan rewrites.
    pub fn touches(&self, fk: &ForeignKey) -> bool {
        self.rewritten.iter().any(|t| {
            (t.schema == fk.schema && t.table == fk.table)
                || (t.schema == fk.ref_schema && t.table == fk.ref_table)
        })
    }
}

/// Lists the foreign keys of a database: constraint, referencing schema,
/// table and columns, referenced schema, table and columns (columns as
/// arrays in key order). Each row becomes an orphan check
/// ([`orphan_check`]) after masking.
pub const FOREIGN_KEYS_SQL: &str = "\
SELECT con.conname::text,
       cn.nspname::text, cc.relname::text,
       ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, i)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.i),
       fn.nspname::text, fc.relname::text,
       ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, i)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.i)
  FROM pg_catalog.pg_constraint con
  JOIN pg_catalog.pg_class cc ON cc.oid = con.conrelid
  JOIN pg_catalog.pg_namespace cn ON cn.oid = cc.relnamespace
  JOIN pg_catalog.pg_class fc ON fc.oid = con.confrelid
  JOIN pg_catalog.pg_namespace fn ON fn.oid = fc.relnamespace
 WHERE con.contype = 'f' AND con.conparentid = 0
 ORDER BY 2, 3, 1";

/// A foreign key, as [`FOREIGN_KEYS_SQL`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    pub name: String,
    pub schema: String,
    pub table: String,
    pub columns: Vec<String>,
    pub ref_schema: String,
    pub ref_table: String,
    pub ref_columns: Vec<String>,
}

/// A query counting the rows of `fk`'s table whose key (all columns not
/// NULL: MATCH SIMPLE) has no referenced row: 0 when the key holds.
pub fn orphan_check(fk: &ForeignKey) -> String {
    let not_null: Vec<String> = fk
        .columns
        .iter()
        .map(|c| format!("c.{} IS NOT NULL", quote_ident(c)))
        .collect();
    let matches: Vec<String> = fk
        .columns
        .iter()
        .zip(&fk.ref_columns)
        .map(|(c, r)| format!("p.{} = c.{}", quote_ident(r), quote_ident(c)))
        .collect();
    format!(
        "SELECT count(*) FROM {}.{} AS c WHERE {} AND NOT EXISTS (SELECT 1 FROM {}.{} AS p WHERE {})",
        quote_ident(&fk.schema),
        quote_ident(&fk.table),
        not_null.join(" AND "),
        quote_ident(&fk.ref_schema),
        quote_ident(&fk.ref_table),
        matches.join(" AND ")
    )
}

fn qualified(t: &TableName) -> String {
    format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.table))
}

/// The masking of `database` from its tables' actions (those of
/// [`super::coverage::Coverage::actions`] in that database); `partitioned`
/// names the partitioned tables among them
/// ([`super::coverage::Coverage::partitioned`]): every other table is
/// truncated and updated `ONLY`, so an inheritance parent's statements do
/// not reach its children's rows (they have rules of their own).
pub fn plan(
    database: &str,
    actions: &[(TableName, TableAction)],
    partitioned: &BTreeSet<TableName>,
) -> DatabasePlan {
    let target = |t: &TableName| {
        if partitioned.contains(t) {
            qualified(t)
        } else {
            format!("ONLY {}", qualified(t))
        }
    };
    let mine = || actions.iter().filter(|(t, _)| t.database == database);
    let mut p = DatabasePlan {
        database: database.to_string(),
        ..DatabasePlan::default()
    };
    p.transaction.push(Statement::plain(
        "SET LOCAL session_replication_role = replica".into(),
    ));
    let truncated: Vec<String> = mine()
        .filter(|(_, a)| *a == TableAction::Truncate)
        .map(|(t, _)| {
            p.rewritten.push(t.clone());
            target(t)
        })
        .collect();
    if !truncated.is_empty() {
        p.transaction.push(Statement::plain(format!(
            "TRUNCATE TABLE {}",
            truncated.join(", ")
        )));
    }
    for (t, a) in mine() {
        let TableAction::Mask(cols) = a else {
            continue;
        };
        let sets: Vec<String> = cols
            .iter()
            .filter_map(|c| {
                let col = quote_ident(&c.column);
                c.transformer
                    .expr(&format!("t.{col}"), &c.ty)
                    .map(|e| format!("{col} = {e}"))
            })
            .collect();
        if sets.is_empty() {
            continue;
        }
        let keyed = cols.iter().any(|c| c.transformer.is_keyed());
        let from = if keyed {
            format!(" FROM (SELECT $1::bytea AS ipad, $2::bytea AS opad) AS {KEY_ALIAS}")
        } else {
            String::new()
        };
        p.transaction.push(Statement {
            sql: format!("UPDATE {} AS t SET {}{from}", target(t), sets.join(", ")),
            keyed,
            masks: Some(t.clone()),
        });
        p.after.push(Statement::plain(format!(
            "VACUUM (FULL, ANALYZE) {}",
            qualified(t)
        )));
        p.rewritten.push(t.clone());
    }
    p.transaction.push(Statement::plain(
        "SET LOCAL session_replication_role = origin".into(),
    ));
    for (t, a) in mine() {
        if *a == TableAction::Refresh {
            p.transaction.push(Statement::plain(format!(
                "REFRESH MATERIALIZED VIEW {}",
                qualified(t)
            )));
        }
    }
    for (t, a) in mine() {
        if *a == TableAction::Truncate {
            p.after
                .push(Statement::plain(format!("ANALYZE {}", qualified(t))));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::masking::coverage::MaskedColumn;
    use crate::core::masking::transform::{ColumnType, Transformer};

    fn name(db: &str, schema: &str, table: &str) -> TableName {
        TableName {
            database: db.into(),
            schema: schema.into(),
            table: table.into(),
        }
    }

    fn text() -> ColumnType {
        crate::core::masking::transform::tests::ty("text", "text", 'S')
    }

    #[test]
    fn one_update_per_table_keyed_only_when_needed() {
        let actions = vec![
            (name("app", "public", "log"), TableAction::Truncate),
            (name("app", "public", "kept"), TableAction::Mask(vec![])),
            (
                name("app", "My S", "U.1"),
                TableAction::Mask(vec![
                    MaskedColumn {
                        column: "E".into(),
                        ty: text(),
                        transformer: Transformer::Email,
                    },
                    MaskedColumn {
                        column: "n".into(),
                        ty: text(),
                        transformer: Transformer::Null,
                    },
                ]),
            ),
            (
                name("app", "public", "notes"),
                TableAction::Mask(vec![MaskedColumn {
                    column: "n".into(),
                    ty: text(),
                    transformer: Transformer::Null,
                }]),
            ),
            (name("app", "public", "mv"), TableAction::Refresh),
            (name("other", "public", "x"), TableAction::Truncate),
        ];
        let partitioned = BTreeSet::from([name("app", "public", "notes")]);
        let p = plan("app", &actions, &partitioned);
        let sql: Vec<&str> = p.transaction.iter().map(|s| s.sql.as_str()).collect();
        assert_eq!(sql[0], "SET LOCAL session_replication_role = replica");
        assert_eq!(sql[1], "TRUNCATE TABLE ONLY \"public\".\"log\"");
        assert!(
            sql[2].starts_with("UPDATE ONLY \"My S\".\"U.1\" AS t SET \"E\" = CAST('user-'"),
            "{}",
            sql[2]
        );
        assert!(sql[2].contains(", \"n\" = NULL FROM (SELECT $1::bytea AS ipad, $2::bytea AS opad) AS \"draupnir mask key\""), "{}", sql[2]);
        assert!(p.transaction[2].keyed);
        assert_eq!(sql[3], "UPDATE \"public\".\"notes\" AS t SET \"n\" = NULL");
        assert!(!p.transaction[3].keyed);
        assert_eq!(sql[4], "SET LOCAL session_replication_role = origin");
        assert_eq!(sql[5], "REFRESH MATERIALIZED VIEW \"public\".\"mv\"");
        assert_eq!(sql.len(), 6);
        let after: Vec<&str> = p.after.iter().map(|s| s.sql.as_str()).collect();
        assert_eq!(
            after,
            vec![
                "VACUUM (FULL, ANALYZE) \"My S\".\"U.1\"",
                "VACUUM (FULL, ANALYZE) \"public\".\"notes\"",
                "ANALYZE \"public\".\"log\"",
            ]
        );
        let rewritten: Vec<String> = p.rewritten.iter().map(|t| t.to_string()).collect();
        assert_eq!(
            rewritten,
            vec!["app.public.log", "app.My S.U.1", "app.public.notes"]
        );
        let fk = |schema: &str, table: &str, ref_table: &str| ForeignKey {
            name: "fk".into(),
            schema: schema.into(),
            table: table.into(),
            columns: vec!["a".into()],
            ref_schema: "public".into(),
            ref_table: ref_table.into(),
            ref_columns: vec!["b".into()],
        };
        assert!(p.touches(&fk("public", "orders", "notes")));
        assert!(p.touches(&fk("My S", "U.1", "other")));
        assert!(!p.touches(&fk("public", "kept", "other")));
    }

    #[test]
    fn orphan_check_follows_match_simple() {
        let fk = ForeignKey {
            name: "fk".into(),
            schema: "public".into(),
            table: "orders".into(),
            columns: vec!["a".into(), "b".into()],
            ref_schema: "s".into(),
            ref_table: "users".into(),
            ref_columns: vec!["x".into(), "y".into()],
        };
        assert_eq!(
            orphan_check(&fk),
            "SELECT count(*) FROM \"public\".\"orders\" AS c WHERE c.\"a\" IS NOT NULL AND c.\"b\" IS NOT NULL AND NOT EXISTS (SELECT 1 FROM \"s\".\"users\" AS p WHERE p.\"x\" = c.\"a\" AND p.\"y\" = c.\"b\")"
        );
    }
}
