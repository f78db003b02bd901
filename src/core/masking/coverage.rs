//! Coverage: the rules checked against the catalog of every user column
//! of every database (read by [`CATALOG_SQL`]). Says which columns no rule
//! covers (a bounded list, a count, a suggested rule each), refuses rules
//! that name a table or column that does not exist or whose transformer
//! does not fit the column's type, and yields what each table must
//! become ([`TableAction`]). Views and foreign tables hold no data here
//! and are skipped; materialized views are refreshed from their masked
//! tables; a partition is covered by its root's rules; a generated column
//! must be `keep` (it is recomputed from the masked columns).

use std::collections::BTreeSet;

use super::rules::{Position, Rules, TableName, Whole};
use super::transform::{ColumnType, Misfit, Transformer};

/// Uncovered columns listed by name; the rest are only counted.
pub const UNCOVERED_LISTED: usize = 50;

/// The catalog of one database's user columns, one row per column, in
/// schema, table, column order. Reads `pg_catalog` (not
/// `information_schema`, which hides partitions' parents and generated
/// columns' kind) and leaves out system schemas, temporary schemas and
/// tables an extension owns. Columns: schema, table, column, sql type,
/// base typname, typcategory, max length, not null, generated, relkind,
/// root schema and root table (for a partition), whether the column alone
/// keys a unique index. A table without columns has one row whose column
/// fields are NULL.
pub const CATALOG_SQL: &str = "\
SELECT n.nspname::text, c.relname::text, a.attname::text,
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       coalesce(bt.typname, t.typname)::text,
       t.typcategory::text,
       CASE WHEN coalesce(bt.typname, t.typname) IN ('varchar', 'bpchar')
             AND greatest(a.atttypmod, t.typtypmod) > 4
            THEN greatest(a.atttypmod, t.typtypmod) - 4 END,
       coalesce(a.attnotnull, false),
       coalesce(a.attgenerated <> '', false),
       c.relkind::text,
       rn.nspname::text,
       rc.relname::text,
       EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                WHERE i.indrelid = c.oid AND i.indisunique AND i.indnkeyatts = 1
                  AND i.indkey[0] = a.attnum)
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_catalog.pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
  LEFT JOIN pg_catalog.pg_class rc ON c.relispartition AND rc.oid = pg_catalog.pg_partition_root(c.oid)
  LEFT JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND c.relpersistence <> 't'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
   AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                      AND d.objid = coalesce(rc.oid, c.oid) AND d.deptype = 'e')
 ORDER BY 1, 2, a.attnum";

/// What kind of relation a column belongs to (`pg_class.relkind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelKind {
    Table,
    Partitioned,
    /// A partition: its rules are its root's.
    Partition {
        root_schema: String,
        root_table: String,
    },
    View,
    MaterializedView,
    Foreign,
}

impl RelKind {
    /// From `relkind` and the root of a partition.
    pub fn from_catalog(relkind: &str, root: Option<(String, String)>) -> Option<RelKind> {
        Some(match (relkind, root) {
            ("r" | "p", Some((root_schema, root_table))) => RelKind::Partition {
                root_schema,
                root_table,
            },
            ("r", None) => RelKind::Table,
            ("p", None) => RelKind::Partitioned,
            ("v", _) => RelKind::View,
            ("m", _) => RelKind::MaterializedView,
            ("f", _) => RelKind::Foreign,
            _ => return None,
        })
    }

    #[cfg(test)]
    fn holds_data(&self) -> bool {
        matches!(
            self,
            RelKind::Table | RelKind::Partitioned | RelKind::Partition { .. }
        )
    }
}

/// One user column, as the catalog gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogColumn {
    pub database: String,
    pub schema: String,
    pub table: String,
    pub column: String,
    pub ty: ColumnType,
    pub generated: bool,
    pub kind: RelKind,
}

/// A relation with no columns (it holds rows of nothing: nothing to mask).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogTable {
    pub name: TableName,
    pub kind: RelKind,
}

/// The catalog of an upload: its databases (also those without user
/// tables), every user column, and the relations without columns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Catalog {
    pub databases: Vec<String>,
    pub columns: Vec<CatalogColumn>,
    pub columnless: Vec<CatalogTable>,
}

/// A column no rule covers, with a suggested rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uncovered {
    pub table: TableName,
    pub column: String,
    pub suggestion: Transformer,
    /// Why the suggestion (for a comment in a suggested rules file).
    pub because: &'static str,
}

/// A rule that cannot apply: one line each, with the rule's position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleProblem {
    #[error("rules {at}: no database `{database}` in this upload")]
    NoDatabase { at: Position, database: String },
    #[error("rules {at}: no table {table} in this upload")]
    NoTable { at: Position, table: TableName },
    #[error("rules {at}: no column `{column}` in {table}")]
    NoColumn {
        at: Position,
        table: TableName,
        column: String,
    },
    #[error("rules {at}: {table}.{column} ({sql_type}): {misfit}")]
    Misfit {
        at: Position,
        table: TableName,
        column: String,
        sql_type: String,
        #[source]
        misfit: Misfit,
    },
    #[error("rules {at}: {table}.{column} is a generated column; it must be \"keep\" (it is recomputed from the masked columns)")]
    Generated {
        at: Position,
        table: TableName,
        column: String,
    },
    #[error("rules {at}: {table} is a {what}, which holds no data of its own{hint}")]
    NotATable {
        at: Position,
        table: TableName,
        what: &'static str,
        hint: &'static str,
    },
    #[error("rules {at}: {table} is a partition of {root}; write its rules for {root}")]
    Partition {
        at: Position,
        table: TableName,
        root: TableName,
    },
}

/// What one table (not a partition, view or foreign table) becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableAction {
    Truncate,
    /// Columns rewritten (empty when every column is kept).
    Mask(Vec<MaskedColumn>),
    /// Recomputed from its tables after they are masked.
    Refresh,
}

/// A column and its transformer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedColumn {
    pub column: String,
    pub ty: ColumnType,
    pub transformer: Transformer,
}

/// The outcome of checking rules against a catalog.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Coverage {
    /// The first [`UNCOVERED_LISTED`] uncovered columns.
    pub uncovered: Vec<Uncovered>,
    pub uncovered_total: usize,
    pub problems: Vec<RuleProblem>,
    /// Views and foreign tables skipped (they hold no data here).
    pub skipped: Vec<TableName>,
    /// What each table becomes, in name order.
    pub actions: Vec<(TableName, TableAction)>,
}

impl Coverage {
    /// Whether the image may be sealed: every column covered, every rule
    /// applicable.
    pub fn complete(&self) -> bool {
        self.uncovered_total == 0 && self.problems.is_empty()
    }
}

/// Check `rules` against the catalog of every database in the upload.
pub fn check(rules: &Rules, catalog: &Catalog) -> Coverage {
    let mut out = Coverage {
        problems: rule_problems(rules, catalog),
        ..Coverage::default()
    };
    cover_columns(rules, catalog, &mut out);
    out.actions.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn name_of(c: &CatalogColumn) -> TableName {
    TableName {
        database: c.database.clone(),
        schema: c.schema.clone(),
        table: c.table.clone(),
    }
}

/// Rules naming what is not there, or not a table, or whose transformer
/// does not fit.
fn rule_problems(rules: &Rules, catalog: &Catalog) -> Vec<RuleProblem> {
    let mut problems = Vec::new();
    let (databases, columnless, catalog) =
        (&catalog.databases, &catalog.columnless, &catalog.columns);
    for t in &rules.tables {
        if !databases.contains(&t.name.database) {
            problems.push(RuleProblem::NoDatabase {
                at: t.at,
                database: t.name.database.clone(),
            });
            continue;
        }
        let cols: Vec<&CatalogColumn> = catalog.iter().filter(|c| name_of(c) == t.name).collect();
        let kind = match cols.first() {
            Some(first) => &first.kind,
            None => match columnless.iter().find(|e| e.name == t.name) {
                Some(e) => &e.kind,
                None => {
                    problems.push(RuleProblem::NoTable {
                        at: t.at,
                        table: t.name.clone(),
                    });
                    continue;
                }
            },
        };
        let not_table = |what, hint| RuleProblem::NotATable {
            at: t.at,
            table: t.name.clone(),
            what,
            hint,
        };
        match kind {
            RelKind::View => {
                problems.push(not_table("view", "; mask the tables it reads"));
                continue;
            }
            RelKind::Foreign => {
                problems.push(not_table("foreign table", "; it is not in the image"));
                continue;
            }
            RelKind::MaterializedView => {
                problems.push(not_table(
                    "materialized view",
                    "; it is refreshed from its masked tables",
                ));
                continue;
            }
            RelKind::Partition {
                root_schema,
                root_table,
            } => {
                problems.push(RuleProblem::Partition {
                    at: t.at,
                    table: t.name.clone(),
                    root: TableName {
                        database: t.name.database.clone(),
                        schema: root_schema.clone(),
                        table: root_table.clone(),
                    },
                });
                continue;
            }
            RelKind::Table | RelKind::Partitioned => {}
        }
        for rule in &t.columns {
            let Some(col) = cols.iter().find(|c| c.column == rule.column) else {
                problems.push(RuleProblem::NoColumn {
                    at: rule.at,
                    table: t.name.clone(),
                    column: rule.column.clone(),
                });
                continue;
            };
            if col.generated && rule.transformer != Transformer::Keep {
                problems.push(RuleProblem::Generated {
                    at: rule.at,
                    table: t.name.clone(),
                    column: rule.column.clone(),
                });
            } else if let Err(misfit) = rule.transformer.fit(&col.ty) {
                problems.push(RuleProblem::Misfit {
                    at: rule.at,
                    table: t.name.clone(),
                    column: rule.column.clone(),
                    sql_type: col.ty.sql_type.clone(),
                    misfit,
                });
            }
        }
    }
    problems
}

/// Every column of every table: covered (its table's action), or
/// listed with a suggestion.
fn cover_columns(rules: &Rules, catalog: &Catalog, out: &mut Coverage) {
    let columnless = &catalog.columnless;
    let catalog = &catalog.columns;
    // Columns of one table together (stable: column order kept).
    let mut sorted: Vec<&CatalogColumn> = catalog.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.database, &a.schema, &a.table).cmp(&(&b.database, &b.schema, &b.table))
    });
    let mut seen: BTreeSet<TableName> = BTreeSet::new();
    for e in columnless {
        if matches!(e.kind, RelKind::Table | RelKind::Partitioned) {
            let whole = rules
                .table(&e.name.database, &e.name.schema, &e.name.table)
                .and_then(|t| t.whole.map(|(w, _)| w));
            let action = match whole {
                Some(Whole::Truncate) => TableAction::Truncate,
                _ => TableAction::Mask(Vec::new()),
            };
            out.actions.push((e.name.clone(), action));
        }
    }
    for c in sorted {
        let name = name_of(c);
        match &c.kind {
            RelKind::View | RelKind::Foreign => {
                if seen.insert(name.clone()) {
                    out.skipped.push(name);
                }
                continue;
            }
            RelKind::MaterializedView => {
                if seen.insert(name.clone()) {
                    out.actions.push((name, TableAction::Refresh));
                }
                continue;
            }
            RelKind::Partition { .. } => continue,
            RelKind::Table | RelKind::Partitioned => {}
        }
        let rules_of = rules.table(&c.database, &c.schema, &c.table);
        let whole = rules_of.and_then(|t| t.whole.map(|(w, _)| w));
        let own = rules_of.and_then(|t| t.column(&c.column));
        if seen.insert(name.clone()) {
            let action = match whole {
                Some(Whole::Truncate) => TableAction::Truncate,
                _ => TableAction::Mask(Vec::new()),
            };
            out.actions.push((name.clone(), action));
        }
        match (own, whole) {
            (Some(rule), _) => {
                if rule.transformer != Transformer::Keep
                    && !c.generated
                    && rule.transformer.fit(&c.ty).is_ok()
                {
                    if let Some((_, TableAction::Mask(cols))) = out.actions.last_mut() {
                        cols.push(MaskedColumn {
                            column: c.column.clone(),
                            ty: c.ty.clone(),
                            transformer: rule.transformer.clone(),
                        });
                    }
                }
            }
            (None, Some(_)) => {}
            (None, None) if c.generated => {
                // Recomputed from the other columns: nothing of its own.
            }
            (None, None) => {
                out.uncovered_total += 1;
                if out.uncovered.len() < UNCOVERED_LISTED {
                    let (suggestion, because) = suggest(&c.column, &c.ty);
                    out.uncovered.push(Uncovered {
                        table: name,
                        column: c.column.clone(),
                        suggestion,
                        because,
                    });
                }
            }
        }
    }
}

/// A rule guessed from a column's name and type, and why.
pub fn suggest(column: &str, ty: &ColumnType) -> (Transformer, &'static str) {
    let n = column.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| n.contains(w));
    let text = ty.category == 'S';
    if text && has(&["email", "e_mail", "mail"]) {
        return (Transformer::Email, "the name says e-mail");
    }
    if text && has(&["phone", "mobile", "tel", "fax"]) {
        return (Transformer::Phone, "the name says phone number");
    }
    if text
        && has(&[
            "card",
            "pan",
            "iban",
            "account_number",
            "ssn",
            "passport",
            "tax_id",
        ])
    {
        return (
            Transformer::Digits { keep_last: 4 },
            "the name says card or account number",
        );
    }
    if text && has(&["first_name", "firstname", "given_name", "forename"]) {
        return (Transformer::FirstName, "the name says first name");
    }
    if text && has(&["last_name", "lastname", "surname", "family_name"]) {
        return (Transformer::LastName, "the name says last name");
    }
    if text && has(&["name"]) {
        return (Transformer::Name, "the name says a person's name");
    }
    if has(&["password", "secret", "token", "salt"]) {
        return if text {
            (Transformer::Hash, "the name says secret")
        } else {
            (Transformer::Null, "the name says secret")
        };
    }
    if n == "ip"
        || n.ends_with("_ip")
        || has(&["ip_addr", "ipaddr", "ip_address", "remote_addr"])
        || matches!(ty.base.as_str(), "inet" | "cidr")
    {
        return (Transformer::Redact, "an IP address");
    }
    if matches!(ty.base.as_str(), "date" | "timestamp" | "timestamptz")
        && has(&["birth", "born", "dob"])
    {
        return (
            Transformer::ShiftDate { max_days: 30 },
            "the name says birth date",
        );
    }
    if n == "id" || n.ends_with("_id") || matches!(ty.base.as_str(), "uuid") {
        return (Transformer::Keep, "an identifier");
    }
    if matches!(ty.category, 'B' | 'D' | 'E') {
        return (Transformer::Keep, "a boolean, enum or timestamp");
    }
    if ty.category == 'N' {
        return (Transformer::Keep, "a number; review");
    }
    if ty.not_null {
        (Transformer::Redact, "free text; review")
    } else {
        (Transformer::Null, "free text; review")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::masking::rules::parse;

    fn col(db: &str, schema: &str, table: &str, column: &str, base: &str) -> CatalogColumn {
        let category = match base {
            "text" | "varchar" => 'S',
            "int4" | "int8" | "numeric" => 'N',
            "date" | "timestamptz" => 'D',
            "bool" => 'B',
            _ => 'U',
        };
        CatalogColumn {
            database: db.into(),
            schema: schema.into(),
            table: table.into(),
            column: column.into(),
            ty: ColumnType {
                sql_type: base.into(),
                base: base.into(),
                category,
                max_len: None,
                not_null: false,
                unique: false,
            },
            generated: false,
            kind: RelKind::Table,
        }
    }

    fn with(columns: Vec<CatalogColumn>) -> Catalog {
        Catalog {
            databases: vec!["app".into(), "crm".into()],
            columns,
            columnless: vec![],
        }
    }

    fn catalog() -> Vec<CatalogColumn> {
        let mut v = vec![
            col("app", "public", "users", "id", "int4"),
            col("app", "public", "users", "email", "text"),
            col("app", "public", "users", "born", "date"),
            col("app", "My Schema", "Users.2024", "E-Mail", "text"),
            col("app", "public", "audit_log", "payload", "text"),
            col("crm", "public", "contacts", "phone", "text"),
        ];
        let mut gen = col("app", "public", "users", "email_domain", "text");
        gen.generated = true;
        v.push(gen);
        for (table, kind) in [
            ("events", RelKind::Partitioned),
            (
                "events_2024",
                RelKind::Partition {
                    root_schema: "public".into(),
                    root_table: "events".into(),
                },
            ),
        ] {
            let mut c = col("app", "public", table, "ip", "text");
            c.kind = kind;
            v.push(c);
        }
        let mut view = col("app", "public", "active_users", "email", "text");
        view.kind = RelKind::View;
        v.push(view);
        let mut mv = col("app", "public", "user_counts", "n", "int8");
        mv.kind = RelKind::MaterializedView;
        v.push(mv);
        v
    }

    const RULES: &str = r#"[app.users]
id = "keep"
email = "email"
born = { fn = "shift_date", max_days = 10 }

[app."My Schema"."Users.2024"]
"E-Mail" = "hash"

[app.audit_log]
"*" = "truncate"

[app.events]
ip = "redact"

[crm.contacts]
phone = "phone"
"#;

    #[test]
    fn complete_rules_cover_everything() {
        let c = check(&parse(RULES).unwrap(), &with(catalog()));
        assert_eq!(c.problems, vec![]);
        assert_eq!(c.uncovered, vec![]);
        assert!(c.complete());
        assert_eq!(c.skipped.len(), 1, "the view: {:?}", c.skipped);
        let action = |db: &str, schema: &str, table: &str| {
            c.actions
                .iter()
                .find(|(t, _)| t.database == db && t.schema == schema && t.table == table)
                .map(|(_, a)| a.clone())
        };
        assert_eq!(
            action("app", "public", "audit_log"),
            Some(TableAction::Truncate)
        );
        assert_eq!(
            action("app", "public", "user_counts"),
            Some(TableAction::Refresh)
        );
        assert_eq!(
            action("app", "public", "events_2024"),
            None,
            "partition: its root's rules"
        );
        let Some(TableAction::Mask(users)) = action("app", "public", "users") else {
            panic!("users: {:?}", c.actions)
        };
        let masked: Vec<&str> = users.iter().map(|m| m.column.as_str()).collect();
        assert_eq!(
            masked,
            vec!["email", "born"],
            "keep and generated columns are not rewritten"
        );
        let Some(TableAction::Mask(quoted)) = action("app", "My Schema", "Users.2024") else {
            panic!("quoted: {:?}", c.actions)
        };
        assert_eq!(quoted[0].transformer, Transformer::Hash);
    }

    #[test]
    fn uncovered_columns_are_listed_with_suggestions() {
        let rules = parse("[app.users]\nid = \"keep\"\n").unwrap();
        let c = check(&rules, &with(catalog()));
        assert!(!c.complete());
        let got: Vec<String> = c
            .uncovered
            .iter()
            .map(|u| format!("{}.{} = {}", u.table, u.column, u.suggestion))
            .collect();
        assert_eq!(
            got,
            vec![
                "app.My Schema.Users.2024.E-Mail = \"email\"",
                "app.public.audit_log.payload = \"null\"",
                "app.public.events.ip = \"redact\"",
                "app.public.users.email = \"email\"",
                "app.public.users.born = { fn = \"shift_date\", max_days = 30 }",
                "crm.public.contacts.phone = \"phone\"",
            ]
        );
        assert_eq!(c.uncovered_total, 6);
    }

    #[test]
    fn uncovered_list_is_bounded_but_counted() {
        let many: Vec<CatalogColumn> = (0..UNCOVERED_LISTED + 7)
            .map(|i| col("app", "public", "wide", &format!("c{i:03}"), "text"))
            .collect();
        let c = check(&Rules::default(), &with(many));
        assert_eq!(c.uncovered.len(), UNCOVERED_LISTED);
        assert_eq!(c.uncovered_total, UNCOVERED_LISTED + 7);
    }

    #[test]
    fn rules_for_what_is_not_there_are_refused_with_their_line() {
        let rules = parse(
            "[app.users]\nid = \"keep\"\nemail = \"email\"\nborn = \"keep\"\nphone = \"phone\"\n\n[app.gone]\nx = \"keep\"\n\n[nodb.t]\nx = \"keep\"\n",
        )
        .unwrap();
        let c = check(&rules, &with(catalog()));
        let got: Vec<String> = c.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            got,
            vec![
                "rules line 7, column 1: no table app.public.gone in this upload",
                "rules line 5, column 1: no column `phone` in app.public.users",
                "rules line 10, column 1: no database `nodb` in this upload",
            ]
        );
    }

    #[test]
    fn misfits_generated_views_and_partitions_are_refused() {
        let rules = parse(
            "[app.users]\nid = \"email\"\nemail = \"email\"\nborn = { fn = \"noise\", percent = 5 }\nemail_domain = \"hash\"\n\n[app.active_users]\nemail = \"email\"\n\n[app.events_2024]\nip = \"keep\"\n\n[app.user_counts]\nn = \"keep\"\n",
        )
        .unwrap();
        let c = check(&rules, &with(catalog()));
        let got: Vec<String> = c.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            got,
            vec![
                "rules line 7, column 1: app.public.active_users is a view, which holds no data of its own; mask the tables it reads",
                "rules line 10, column 1: app.public.events_2024 is a partition of app.public.events; write its rules for app.public.events",
                "rules line 13, column 1: app.public.user_counts is a materialized view, which holds no data of its own; it is refreshed from its masked tables",
                "rules line 2, column 1: app.public.users.id (int4): `email` needs a text column, not int4",
                "rules line 4, column 1: app.public.users.born (date): `noise` needs a numeric column (integer, numeric, real, double), not date",
                "rules line 5, column 1: app.public.users.email_domain is a generated column; it must be \"keep\" (it is recomputed from the masked columns)",
            ]
        );
        // A misfit is not planned.
        let users = c.actions.iter().find(|(t, _)| t.table == "users").unwrap();
        assert_eq!(
            users.1,
            TableAction::Mask(vec![MaskedColumn {
                column: "email".into(),
                ty: catalog()[1].ty.clone(),
                transformer: Transformer::Email
            }])
        );
    }

    #[test]
    fn a_column_that_disappeared_is_named() {
        // The rules were suggested for a schema that had `users.phone`.
        let rules = parse("[app.users]\n\"*\" = \"keep\"\nphone = \"phone\"\n").unwrap();
        let c = check(&rules, &with(catalog()));
        assert_eq!(
            c.problems,
            vec![RuleProblem::NoColumn {
                at: Position { line: 3, column: 1 },
                table: TableName {
                    database: "app".into(),
                    schema: "public".into(),
                    table: "users".into()
                },
                column: "phone".into()
            }]
        );
    }

    #[test]
    fn a_table_with_no_columns_needs_no_rule_but_may_have_a_star() {
        let mut cat = with(vec![col("app", "public", "users", "id", "int4")]);
        let empty = |table: &str, kind| CatalogTable {
            name: TableName {
                database: "app".into(),
                schema: "public".into(),
                table: table.into(),
            },
            kind,
        };
        cat.columnless.push(empty("nothing", RelKind::Table));
        cat.columnless.push(empty("hollow", RelKind::View));
        let rules = parse("[app.users]\nid = \"keep\"\n").unwrap();
        let c = check(&rules, &cat);
        assert!(c.complete(), "{c:?}");
        assert_eq!(c.actions.len(), 2);
        let rules =
            parse("[app.users]\nid = \"keep\"\n[app.nothing]\n\"*\" = \"truncate\"\n").unwrap();
        let c = check(&rules, &cat);
        assert!(c.complete(), "{c:?}");
        assert_eq!(c.actions[0].1, TableAction::Truncate, "{:?}", c.actions);
        let rules = parse("[app.users]\nid = \"keep\"\n[app.nothing]\nx = \"hash\"\n").unwrap();
        let got: Vec<String> = check(&rules, &cat)
            .problems
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            got,
            vec!["rules line 4, column 1: no column `x` in app.public.nothing"]
        );
        let rules = parse("[app.users]\nid = \"keep\"\n[app.hollow]\n\"*\" = \"keep\"\n").unwrap();
        let c = check(&rules, &cat);
        assert!(matches!(
            c.problems.as_slice(),
            [RuleProblem::NotATable { what: "view", .. }]
        ));
    }

    #[test]
    fn suggestions_from_names_and_types() {
        let t = |n: &str, base: &str| suggest(n, &col("a", "b", "c", n, base).ty).0;
        assert_eq!(t("contact_email", "text"), Transformer::Email);
        assert_eq!(t("mobile", "text"), Transformer::Phone);
        assert_eq!(
            t("card_number", "text"),
            Transformer::Digits { keep_last: 4 }
        );
        assert_eq!(t("iban", "text"), Transformer::Digits { keep_last: 4 });
        assert_eq!(t("first_name", "text"), Transformer::FirstName);
        assert_eq!(t("surname", "text"), Transformer::LastName);
        assert_eq!(t("full_name", "text"), Transformer::Name);
        assert_eq!(t("password_hash", "text"), Transformer::Hash);
        assert_eq!(t("last_ip_address", "text"), Transformer::Redact);
        assert_eq!(
            t("date_of_birth_dob", "date"),
            Transformer::ShiftDate { max_days: 30 }
        );
        assert_eq!(t("customer_id", "int8"), Transformer::Keep);
        assert_eq!(t("created_at", "timestamptz"), Transformer::Keep);
        assert_eq!(t("active", "bool"), Transformer::Keep);
        assert_eq!(t("notes", "text"), Transformer::Null);
    }

    #[test]
    fn relkinds_from_the_catalog() {
        assert_eq!(RelKind::from_catalog("r", None), Some(RelKind::Table));
        assert_eq!(RelKind::from_catalog("p", None), Some(RelKind::Partitioned));
        assert!(matches!(
            RelKind::from_catalog("p", Some(("s".into(), "t".into()))),
            Some(RelKind::Partition { .. })
        ));
        assert_eq!(RelKind::from_catalog("v", None), Some(RelKind::View));
        assert_eq!(
            RelKind::from_catalog("m", None),
            Some(RelKind::MaterializedView)
        );
        assert_eq!(RelKind::from_catalog("f", None), Some(RelKind::Foreign));
        assert_eq!(RelKind::from_catalog("S", None), None);
        assert!(RelKind::Table.holds_data());
        assert!(!RelKind::View.holds_data());
    }
}
