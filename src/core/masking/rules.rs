//! The masking rules file: parsing the TOML format of issue 13 into
//! [`Rules`], with the line and column of every refused item.
//!
//! Tables are `[database.schema.table]`; the schema may be omitted for
//! `public`: `[app.users]`. The two are told apart by what the table under
//! the database holds: a table whose entries are column rules (strings or
//! inline tables such as `{ fn = "digits" }`) is a table in `public`; one
//! whose entries are tables (`[app.sales.orders]`) is a schema. One that
//! holds both is refused (write `[app.public.NAME]` for the table). Keys
//! are identifiers exactly as PostgreSQL stores them (lower case unless
//! they were quoted at creation); quote those with dots, capitals or
//! spaces: `[app."My Schema"."Users.2024"]`. `"*" = "truncate"` empties a
//! table (no column rules beside it); `"*" = "keep"` keeps every column
//! without a rule of its own. `[app.users]` and `[app.public.users]` are
//! the same table: their rules merge, and a column given in both is
//! refused.

use std::collections::BTreeMap;
use std::fmt;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::transform::{Param, SpecError, Transformer};

/// Where an item is in the rules file (1-based line and column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    /// The position of byte `offset` of `text`.
    pub fn of(text: &str, offset: usize) -> Position {
        let offset = offset.min(text.len());
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let start = before.rfind('\n').map_or(0, |i| i + 1);
        Position {
            line,
            column: before[start..].chars().count() + 1,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// A table a rule names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableName {
    pub database: String,
    pub schema: String,
    pub table: String,
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.database, self.schema, self.table)
    }
}

/// A whole-table rule (`"*"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whole {
    /// Emptied.
    Truncate,
    /// Every column without a rule of its own is declared safe.
    Keep,
}

/// One column's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnRule {
    pub column: String,
    pub transformer: Transformer,
    pub at: Position,
}

/// The rules of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRules {
    pub name: TableName,
    /// Where the table's header (or first key) is.
    pub at: Position,
    pub whole: Option<(Whole, Position)>,
    pub columns: Vec<ColumnRule>,
}

impl TableRules {
    /// The rule of `column`, if it has one of its own.
    pub fn column(&self, column: &str) -> Option<&ColumnRule> {
        self.columns.iter().find(|c| c.column == column)
    }
}

/// A parsed rules file: its tables in name order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rules {
    pub tables: Vec<TableRules>,
}

impl Rules {
    /// `self` (the configuration's rules) with `image`'s tables put in
    /// place of the same tables' (an image's own rules replace a table's
    /// rules as a whole, and add tables).
    pub fn overlay(mut self, image: Rules) -> Rules {
        self.tables
            .retain(|t| !image.tables.iter().any(|i| i.name == t.name));
        self.tables.extend(image.tables);
        self.tables.sort_by(|a, b| a.name.cmp(&b.name));
        self
    }

    /// The rules of a table.
    pub fn table(&self, database: &str, schema: &str, table: &str) -> Option<&TableRules> {
        self.tables.iter().find(|t| {
            t.name.database == database && t.name.schema == schema && t.name.table == table
        })
    }
}

/// Why a rules file is refused: one line each, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    #[error("rules {at}: TOML syntax: {message}")]
    Syntax { at: Position, message: String },
    #[error("rules {at}: {error}")]
    Transformer {
        at: Position,
        #[source]
        error: SpecError,
    },
    #[error("rules {at}: `\"*\"` must be \"truncate\" or \"keep\", not {found}")]
    BadWhole { at: Position, found: String },
    #[error(
        "rules {at}: `\"*\" = \"truncate\"` empties {table}; it takes no column rules (`{column}`)"
    )]
    TruncateWithColumns {
        at: Position,
        table: TableName,
        column: String,
    },
    #[error("rules {at}: {table}.{column} is given twice (first at line {first_line})")]
    ColumnTwice {
        at: Position,
        table: TableName,
        column: String,
        first_line: usize,
    },
    #[error("rules {at}: `\"*\"` of {table} is given twice (first at line {first_line})")]
    WholeTwice {
        at: Position,
        table: TableName,
        first_line: usize,
    },
    #[error("rules {at}: {message}")]
    Shape { at: Position, message: String },
}

impl RulesError {
    /// Where the refused item is.
    pub fn at(&self) -> Position {
        match self {
            RulesError::Syntax { at, .. }
            | RulesError::Transformer { at, .. }
            | RulesError::BadWhole { at, .. }
            | RulesError::TruncateWithColumns { at, .. }
            | RulesError::ColumnTwice { at, .. }
            | RulesError::WholeTwice { at, .. }
            | RulesError::Shape { at, .. } => *at,
        }
    }
}

/// Parse a rules file.
pub fn parse(text: &str) -> Result<Rules, RulesError> {
    let doc = DeTable::parse(text).map_err(|e| RulesError::Syntax {
        at: Position::of(text, e.span().map_or(0, |s| s.start)),
        message: e.message().lines().next().unwrap_or("invalid").to_string(),
    })?;
    let p = Parser { text };
    let mut found = p.tables(doc.get_ref())?;
    // Merge in file order so "first at line" names the earlier one.
    found.sort_by_key(|(_, at, _)| *at);
    let mut tables: BTreeMap<TableName, TableRules> = BTreeMap::new();
    for (name, at, columns) in found {
        let entry = tables.entry(name.clone()).or_insert_with(|| TableRules {
            name: name.clone(),
            at,
            whole: None,
            columns: Vec::new(),
        });
        p.merge(entry, columns)?;
    }
    Ok(Rules {
        tables: tables.into_values().collect(),
    })
}

/// A table found in the document, where, and its entries.
type Found<'a, 'i> = (TableName, Position, &'a DeTable<'i>);

impl Parser<'_> {
    /// Every table of the document (databases, then tables in `public` or
    /// schemas, then tables).
    fn tables<'a, 'i>(&self, doc: &'a DeTable<'i>) -> Result<Vec<Found<'a, 'i>>, RulesError> {
        let p = self;
        let mut found = Vec::new();
        for (db_key, db_value) in doc {
            let db = db_key.get_ref().to_string();
            let Some(db_table) = p.standard_table(db_value) else {
                return Err(p.shape(
                    db_key,
                    format!(
                        "`{db}` must be a table of tables: [{db}.table] or [{db}.schema.table]"
                    ),
                ));
            };
            for (key, value) in db_table {
                let Some(inner) = p.standard_table(value) else {
                    return Err(p.shape(key, format!(
                        "column rule `{}` outside a table: write it under [{db}.table] or [{db}.schema.table]",
                        key.get_ref()
                    )));
                };
                let subtables = inner
                    .iter()
                    .filter(|(_, v)| p.standard_table(v).is_some())
                    .count();
                if subtables == 0 {
                    let name = TableName {
                        database: db.clone(),
                        schema: "public".into(),
                        table: key.get_ref().to_string(),
                    };
                    found.push((name, p.pos(value.span().start), inner));
                } else if subtables == inner.len() {
                    for (tkey, tvalue) in inner {
                        let Some(columns) = p.standard_table(tvalue) else {
                            continue;
                        };
                        if let Some((k, _)) =
                            columns.iter().find(|(_, v)| p.standard_table(v).is_some())
                        {
                            return Err(p.shape(k, format!(
                                "[{db}.{}.{}.{}] is one level too deep: tables are [database.schema.table]",
                                key.get_ref(), tkey.get_ref(), k.get_ref()
                            )));
                        }
                        let name = TableName {
                            database: db.clone(),
                            schema: key.get_ref().to_string(),
                            table: tkey.get_ref().to_string(),
                        };
                        found.push((name, p.pos(tvalue.span().start), columns));
                    }
                } else {
                    return Err(p.shape(key, format!(
                        "[{db}.{0}] holds both column rules and tables; write [{db}.public.{0}] for the table in public",
                        key.get_ref()
                    )));
                }
            }
        }
        Ok(found)
    }

    /// Add a table's entries (`"*"` and column rules) to its rules.
    fn merge(&self, entry: &mut TableRules, columns: &DeTable<'_>) -> Result<(), RulesError> {
        let p = self;
        let name = entry.name.clone();
        let mut items: Vec<_> = columns.iter().collect();
        items.sort_by_key(|(k, _)| k.span().start);
        for (key, value) in items {
            let column = key.get_ref().to_string();
            let kat = p.pos(key.span().start);
            if column == "*" {
                let whole = match value.get_ref().as_str() {
                    Some("truncate") => Whole::Truncate,
                    Some("keep") => Whole::Keep,
                    Some(other) => {
                        return Err(RulesError::BadWhole {
                            at: p.pos(value.span().start),
                            found: format!("\"{other}\""),
                        })
                    }
                    None => {
                        return Err(RulesError::BadWhole {
                            at: p.pos(value.span().start),
                            found: value.get_ref().type_str().to_string(),
                        })
                    }
                };
                if let Some((_, first)) = entry.whole {
                    return Err(RulesError::WholeTwice {
                        at: kat,
                        table: name.clone(),
                        first_line: first.line,
                    });
                }
                entry.whole = Some((whole, kat));
                continue;
            }
            if let Some(first) = entry.column(&column) {
                return Err(RulesError::ColumnTwice {
                    at: kat,
                    table: name.clone(),
                    column,
                    first_line: first.at.line,
                });
            }
            let transformer = p.transformer(value)?;
            entry.columns.push(ColumnRule {
                column,
                transformer,
                at: kat,
            });
        }
        if let (Some((Whole::Truncate, _)), Some(c)) = (entry.whole, entry.columns.first()) {
            return Err(RulesError::TruncateWithColumns {
                at: c.at,
                table: name.clone(),
                column: c.column.clone(),
            });
        }
        Ok(())
    }
}

struct Parser<'t> {
    text: &'t str,
}

impl Parser<'_> {
    fn pos(&self, offset: usize) -> Position {
        Position::of(self.text, offset)
    }

    /// Whether the value was written inline (`{ ... }`): inline tables'
    /// spans start at their brace, standard tables' at their header.
    fn is_inline(&self, value: &Spanned<DeValue<'_>>) -> bool {
        self.text
            .get(value.span().start..)
            .is_some_and(|s| s.starts_with('{'))
    }

    /// The table, when `value` is a standard (not inline) table.
    fn standard_table<'a, 'i>(&self, value: &'a Spanned<DeValue<'i>>) -> Option<&'a DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(t) if !self.is_inline(value) => Some(t),
            _ => None,
        }
    }

    fn shape(&self, key: &Spanned<std::borrow::Cow<'_, str>>, message: String) -> RulesError {
        RulesError::Shape {
            at: self.pos(key.span().start),
            message,
        }
    }

    /// A column's transformer: a name, or an inline table with `fn` (and
    /// parameters) or `sql`.
    fn transformer(&self, value: &Spanned<DeValue<'_>>) -> Result<Transformer, RulesError> {
        let at = self.pos(value.span().start);
        let spec = |error| RulesError::Transformer { at, error };
        match value.get_ref() {
            DeValue::String(name) => Transformer::parse(name, &[]).map_err(spec),
            DeValue::Table(t) => {
                let mut name = None;
                let mut params = Vec::new();
                let mut spans = Vec::new();
                for (k, v) in t {
                    let key = k.get_ref().to_string();
                    match (key.as_str(), v.get_ref()) {
                        ("fn", DeValue::String(s)) if name.is_none() => {
                            name = Some((s.to_string(), self.pos(v.span().start)))
                        }
                        ("fn", other) => {
                            return Err(RulesError::Shape {
                                at: self.pos(v.span().start),
                                message: format!(
                                    "`fn` must be a transformer name, not {}",
                                    other.type_str()
                                ),
                            })
                        }
                        ("sql", _) => {
                            spans.push(("expr".to_string(), self.pos(v.span().start)));
                            params.push(("expr".to_string(), param(v.get_ref())));
                        }
                        _ => {
                            spans.push((key.clone(), self.pos(k.span().start)));
                            params.push((key, param(v.get_ref())));
                        }
                    }
                }
                let has_sql = params.iter().any(|(k, _)| k == "expr");
                let (name, name_at) = match (name, has_sql) {
                    (Some(_), true) => {
                        return Err(RulesError::Shape {
                            at,
                            message: "give either `fn` or `sql`, not both".into(),
                        })
                    }
                    (Some(n), false) => n,
                    (None, true) => ("sql".to_string(), at),
                    (None, false) => return Err(RulesError::Shape {
                        at,
                        message:
                            "an inline rule needs `fn = \"transformer\"` or `sql = \"expression\"`"
                                .into(),
                    }),
                };
                Transformer::parse(&name, &params).map_err(|error| {
                    let at = match &error {
                        SpecError::Unknown { .. } => name_at,
                        SpecError::BadParameter { parameter, .. } => parameter
                            .as_ref()
                            .and_then(|p| spans.iter().find(|(k, _)| k == p))
                            .map_or(at, |(_, a)| *a),
                    };
                    RulesError::Transformer { at, error }
                })
            }
            other => Err(RulesError::Shape {
                at,
                message: format!(
                    "a column rule is a transformer name or an inline table, not {}",
                    other.type_str()
                ),
            }),
        }
    }
}

fn param(v: &DeValue<'_>) -> Param {
    match v {
        DeValue::String(s) => Param::Str(s.to_string()),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .map(Param::Int)
            .unwrap_or(Param::Other("an integer out of range")),
        other => Param::Other(other.type_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of issue 13, item 1, verbatim.
    const ISSUE: &str = r#"[app.public.users]
id = "keep"                                # declared not personal
email = "email"                            # a well-formed fake address, same domain for all
name = "name"                              # a fake full name; also first_name, last_name
card = { fn = "digits", keep_last = 4 }    # same length and format, digits replaced
phone = "phone"                            # same shape, digits replaced
secret = "hash"                            # hex of a keyed hash, unique in, unique out
notes = "null"                             # also "redact" (a fixed value of the column's type)
born = { fn = "shift_date", max_days = 30 }
salary = { fn = "noise", percent = 10 }
bio = { sql = "left(md5(bio), 12)" }       # escape hatch: an SQL expression of the column

[app.public.audit_log]
"*" = "truncate"
"#;

    fn err(text: &str) -> RulesError {
        match parse(text) {
            Err(e) => {
                assert!(!e.to_string().contains('\n'), "one line: {e}");
                e
            }
            Ok(r) => panic!("accepted: {r:?}"),
        }
    }

    #[test]
    fn parses_the_issue_example() {
        let r = parse(ISSUE).unwrap();
        assert_eq!(r.tables.len(), 2);
        let log = r.table("app", "public", "audit_log").unwrap();
        assert_eq!(
            log.whole.map(|(w, at)| (w, at.line)),
            Some((Whole::Truncate, 14))
        );
        let users = r.table("app", "public", "users").unwrap();
        let got: Vec<(&str, Transformer, usize)> = users
            .columns
            .iter()
            .map(|c| (c.column.as_str(), c.transformer.clone(), c.at.line))
            .collect();
        assert_eq!(
            got,
            vec![
                ("id", Transformer::Keep, 2),
                ("email", Transformer::Email, 3),
                ("name", Transformer::Name, 4),
                ("card", Transformer::Digits { keep_last: 4 }, 5),
                ("phone", Transformer::Phone, 6),
                ("secret", Transformer::Hash, 7),
                ("notes", Transformer::Null, 8),
                ("born", Transformer::ShiftDate { max_days: 30 }, 9),
                ("salary", Transformer::Noise { percent: 10 }, 10),
                (
                    "bio",
                    Transformer::Sql {
                        expr: "left(md5(bio), 12)".into()
                    },
                    11
                ),
            ]
        );
        assert_eq!(users.whole, None);
    }

    #[test]
    fn schema_may_be_omitted_for_public() {
        let r = parse(
            "[app.users]\nemail = \"email\"\ncard = { fn = \"digits\" }\n\n[app.sales.orders]\nid = \"keep\"\n\n[crm.contacts]\n\"*\" = \"keep\"\n",
        )
        .unwrap();
        let users = r.table("app", "public", "users").unwrap();
        assert_eq!(users.columns.len(), 2);
        assert_eq!(
            users.column("card").unwrap().transformer,
            Transformer::Digits { keep_last: 0 }
        );
        assert!(r.table("app", "sales", "orders").is_some());
        assert_eq!(
            r.table("crm", "public", "contacts")
                .unwrap()
                .whole
                .map(|w| w.0),
            Some(Whole::Keep)
        );
        // A schema holding only an empty table header is still a schema.
        let r = parse("[app.sales.orders]\n").unwrap();
        assert!(r.table("app", "sales", "orders").is_some());
    }

    #[test]
    fn quoted_identifiers_keep_dots_capitals_and_spaces() {
        let r = parse(
            "[app.\"My Schema\".\"Users.2024\"]\n\"E-Mail\" = \"email\"\n\"a.b\" = \"keep\"\n",
        )
        .unwrap();
        let t = r.table("app", "My Schema", "Users.2024").unwrap();
        assert!(t.column("E-Mail").is_some());
        assert!(t.column("a.b").is_some());
        assert_eq!(t.name.to_string(), "app.My Schema.Users.2024");
        // A public table whose name has a dot is one key, not a schema.
        let r = parse("[app.\"users.v2\"]\nid = \"keep\"\n").unwrap();
        assert!(r.table("app", "public", "users.v2").is_some());
    }

    #[test]
    fn same_table_with_and_without_schema_merges() {
        let r =
            parse("[app.users]\nid = \"keep\"\n[app.public.users]\nemail = \"email\"\n").unwrap();
        assert_eq!(r.tables.len(), 1);
        assert_eq!(r.tables[0].columns.len(), 2);
    }

    #[test]
    fn syntax_error_has_its_line() {
        let e = err("[app.users]\nid = \"keep\"\nemail = email\n");
        assert!(
            matches!(e, RulesError::Syntax { at, .. } if at.line == 3),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("rules line 3, column 9: TOML syntax"),
            "{e}"
        );
        // A key given twice in one table is TOML's duplicate key.
        let e = err("[app.users]\nid = \"keep\"\nid = \"hash\"\n");
        assert!(
            matches!(e, RulesError::Syntax { at, .. } if at.line == 3),
            "{e}"
        );
    }

    #[test]
    fn unknown_transformer_suggests() {
        let e = err("[app.users]\nid = \"keep\"\nemail = \"emial\"\n");
        assert_eq!(e.at(), Position { line: 3, column: 9 });
        assert_eq!(
            e.to_string(),
            "rules line 3, column 9: unknown transformer `emial` (did you mean `email`?)"
        );
        let e = err("[app.users]\ncard = { fn = \"digit\", keep_last = 4 }\n");
        assert_eq!(
            e.at(),
            Position {
                line: 2,
                column: 15
            }
        );
        assert!(e.to_string().contains("did you mean `digits`?"), "{e}");
        let e = err("[app.users]\nx = \"zzzzzzzz\"\n");
        assert!(e.to_string().contains("(known: keep, email,"), "{e}");
        // `truncate` is table level only.
        let e = err("[app.users]\nx = \"truncate\"\n");
        assert!(
            e.to_string().contains("unknown transformer `truncate`"),
            "{e}"
        );
    }

    #[test]
    fn bad_parameters_name_the_parameter() {
        let cases = [
            (
                "c = { fn = \"digits\", keep_last = \"4\" }",
                22,
                "must be an integer, not a string",
            ),
            (
                "c = { fn = \"digits\", keep_last = 99 }",
                22,
                "out of range 0..=64",
            ),
            (
                "c = { fn = \"digits\", keep = 4 }",
                22,
                "unknown parameter `keep`",
            ),
            ("c = { fn = \"shift_date\" }", 5, "needs `max_days`"),
            (
                "c = { fn = \"noise\", percent = 0 }",
                21,
                "out of range 1..=100",
            ),
            ("c = { fn = \"email\", x = 1 }", 21, "takes no parameters"),
            ("c = { sql = \"\" }", 13, "empty expression"),
            ("c = { sql = 3 }", 13, "must be a string, not an integer"),
        ];
        for (line, column, want) in cases {
            let e = err(&format!("[app.t]\n{line}\n"));
            assert!(matches!(e, RulesError::Transformer { .. }), "{line}: {e}");
            assert_eq!(e.at(), Position { line: 2, column }, "{line}: {e}");
            assert!(e.to_string().contains(want), "{line}: {e}");
        }
        let e = err("[app.t]\nc = { fn = \"hash\", sql = \"1\" }\n");
        assert!(e.to_string().contains("either `fn` or `sql`"), "{e}");
        let e = err("[app.t]\nc = { keep_last = 4 }\n");
        assert!(e.to_string().contains("needs `fn"), "{e}");
        let e = err("[app.t]\nc = 4\n");
        assert!(e.to_string().contains("not integer"), "{e}");
    }

    #[test]
    fn star_is_truncate_or_keep_only() {
        let e = err("[app.t]\n\"*\" = \"hash\"\n");
        assert_eq!(
            e.to_string(),
            "rules line 2, column 7: `\"*\"` must be \"truncate\" or \"keep\", not \"hash\""
        );
        let e = err("[app.t]\n\"*\" = true\n");
        assert!(matches!(e, RulesError::BadWhole { .. }), "{e}");
        let e = err("[app.t]\n\"*\" = \"truncate\"\nemail = \"email\"\n");
        assert!(
            matches!(e, RulesError::TruncateWithColumns { at, .. } if at.line == 3),
            "{e}"
        );
        // keep with columns: the columns have their own rules.
        let r = parse("[app.t]\n\"*\" = \"keep\"\nemail = \"email\"\n").unwrap();
        assert_eq!(r.tables[0].columns.len(), 1);
        let e = err("[app.t]\n\"*\" = \"keep\"\n[app.public.t]\n\"*\" = \"keep\"\n");
        assert!(
            matches!(e, RulesError::WholeTwice { at, first_line: 2, .. } if at.line == 4),
            "{e}"
        );
    }

    #[test]
    fn a_column_given_twice_is_refused() {
        let e = err("[app.users]\nemail = \"email\"\n\n[app.public.users]\nemail = \"hash\"\n");
        assert_eq!(
            e.to_string(),
            "rules line 5, column 1: app.public.users.email is given twice (first at line 2)"
        );
    }

    #[test]
    fn shapes_that_are_not_tables_are_refused() {
        let e = err("app = 1\n");
        assert!(
            matches!(e, RulesError::Shape { at, .. } if at.line == 1),
            "{e}"
        );
        let e = err("[app]\nemail = \"email\"\n");
        assert!(e.to_string().contains("outside a table"), "{e}");
        let e = err("[app.users]\nemail = \"email\"\n[app.users.orders]\nid = \"keep\"\n");
        assert!(e.to_string().contains("write [app.public.users]"), "{e}");
        let e = err("[app.s.t.u]\nid = \"keep\"\n");
        assert!(e.to_string().contains("one level too deep"), "{e}");
    }

    #[test]
    fn empty_file_has_no_rules() {
        assert_eq!(parse("").unwrap(), Rules::default());
        assert_eq!(parse("# nothing\n").unwrap(), Rules::default());
    }

    #[test]
    fn positions_count_characters() {
        assert_eq!(
            Position::of("ab\ncdé f", 8),
            Position { line: 2, column: 5 }
        );
        assert_eq!(Position::of("x", 99), Position { line: 1, column: 2 });
    }
}
