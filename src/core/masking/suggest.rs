//! `suggest-rules`: a complete rules file for an upload, written from its
//! catalog and a sample of its values. Each column gets the transformer
//! its sampled values call for ([`super::detect::classify`]: a column of
//! e-mail addresses gets `email` whatever its name), else the one its
//! name and type call for ([`super::coverage::suggest`]), always one that
//! fits the column's type (a fallback, or `keep` marked REVIEW, when the
//! guess does not), and a comment saying why. Views, foreign tables,
//! materialized views and partitions get no rules (as coverage wants);
//! generated columns are left out (recomputed); a table without columns
//! is `"*" = "keep"`. The output is sorted, so the same upload gives the
//! same file, and parses with [`super::rules::parse`] into rules that
//! [`super::coverage::check`] finds complete.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::coverage::{suggest, Catalog, CatalogColumn, RelKind};
pub use super::detect::Samples;
use super::detect::{classify, Detector};
use super::rules::TableName;
use super::transform::{ColumnType, Transformer};

/// A complete rules file for the upload `catalog` describes.
#[cfg(any(test, feature = "test-support"))]
pub fn suggest_rules(catalog: &Catalog, samples: &Samples) -> String {
    suggest_rules_for(None, catalog, samples)
}

/// [`suggest_rules`], naming the image in the header.
pub fn suggest_rules_for(image: Option<&str>, catalog: &Catalog, samples: &Samples) -> String {
    let mut tables: BTreeMap<TableName, Vec<&CatalogColumn>> = BTreeMap::new();
    let mut skipped: BTreeMap<TableName, &'static str> = BTreeMap::new();
    for c in &catalog.columns {
        let name = TableName {
            database: c.database.clone(),
            schema: c.schema.clone(),
            table: c.table.clone(),
        };
        match skip_reason(&c.kind) {
            Some(why) => {
                skipped.insert(name, why);
            }
            None => tables.entry(name).or_default().push(c),
        }
    }
    for t in &catalog.columnless {
        match skip_reason(&t.kind) {
            Some(why) => {
                skipped.insert(t.name.clone(), why);
            }
            None => {
                tables.entry(t.name.clone()).or_default();
            }
        }
    }

    let mut out = String::new();
    let mut dbs = catalog.databases.clone();
    dbs.sort();
    dbs.dedup();
    let from = match image {
        Some(id) => format!("image {}, ", comment(id)),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "# Masking rules suggested by Draupnir for {from}databases: {}.",
        comment(&dbs.join(", "))
    );
    out.push_str(
        "# Generated from the schema and a sample of values: REVIEW EVERY LINE before\n\
         # using it. Each rule says why it was guessed; \"keep\" declares a column\n\
         # not personal; lines marked REVIEW need a decision.\n",
    );
    for db in &dbs {
        if !tables.keys().any(|t| &t.database == db) {
            let _ = writeln!(out, "# Database {}: no user tables.", comment(db));
        }
    }

    for (name, columns) in &tables {
        let _ = writeln!(
            out,
            "\n[{}.{}.{}]",
            key(&name.database),
            key(&name.schema),
            key(&name.table)
        );
        let mut lines: Vec<(String, String)> = Vec::new();
        let mut generated = Vec::new();
        let mut star = false;
        for c in columns {
            if c.generated {
                generated.push(c.column.as_str());
                continue;
            }
            if c.column == "*" {
                // `"*"` is the whole-table key: this column cannot have
                // a rule of its own.
                star = true;
                continue;
            }
            let (t, why) = guess(&c.column, &c.ty, samples.get(name, &c.column));
            lines.push((format!("{} = {t}", key(&c.column)), why));
        }
        if star {
            lines.push((
                "\"*\" = \"keep\"".into(),
                "REVIEW: a column named \"*\" cannot have a rule of its own; this keeps it".into(),
            ));
        } else if lines.is_empty() {
            let why = if generated.is_empty() {
                "a table without columns"
            } else {
                "only generated columns"
            };
            lines.push(("\"*\" = \"keep\"".into(), why.into()));
        }
        let width = lines
            .iter()
            .map(|(l, _)| l.len())
            .max()
            .unwrap_or(0)
            .min(44);
        for (line, why) in lines {
            let _ = writeln!(out, "{line:width$}  # {}", comment(&why));
        }
        for g in generated {
            let _ = writeln!(
                out,
                "# {}: generated, recomputed from the masked columns (no rule)",
                comment(g)
            );
        }
    }
    if !skipped.is_empty() {
        out.push_str("\n# No rules (they hold no data of their own here):\n");
        for (name, why) in &skipped {
            let _ = writeln!(out, "#   {}: {why}", comment(&name.to_string()));
        }
    }
    out
}

fn skip_reason(kind: &RelKind) -> Option<&'static str> {
    match kind {
        RelKind::Table | RelKind::Partitioned => None,
        RelKind::Partition { .. } => Some("a partition, covered by its root's rules"),
        RelKind::View => Some("a view; mask the tables it reads"),
        RelKind::MaterializedView => Some("a materialized view, refreshed from its masked tables"),
        RelKind::Foreign => Some("a foreign table, not in the image"),
    }
}

/// The transformer guessed for one column, and why.
pub fn guess(column: &str, ty: &ColumnType, values: &[String]) -> (Transformer, String) {
    let (wanted, because) = match classify(values) {
        Some((d, n)) => {
            let of = values.iter().filter(|v| !v.trim().is_empty()).count();
            (
                for_detector(d, ty),
                format!("{n} of {of} sampled values are {}", d.plural()),
            )
        }
        None => by_name(column, ty),
    };
    let Err(misfit) = wanted.fit(ty) else {
        return (wanted, because);
    };
    let fallbacks: &[Transformer] = if ty.category == 'S' {
        &[Transformer::Hash, Transformer::Redact, Transformer::Null]
    } else {
        &[Transformer::Null, Transformer::Redact]
    };
    match fallbacks.iter().find(|t| t.fit(ty).is_ok()) {
        Some(t) => (
            t.clone(),
            format!("{because}, but {misfit}: {} instead; REVIEW", t.name()),
        ),
        None => (
            Transformer::Keep,
            format!("{because}, but {misfit}, and no fallback fits; REVIEW: kept as it is"),
        ),
    }
}

/// What a column of values like `d` becomes.
fn for_detector(d: Detector, ty: &ColumnType) -> Transformer {
    match d {
        Detector::Email => Transformer::Email,
        Detector::Card | Detector::Iban => Transformer::Digits { keep_last: 4 },
        Detector::Phone => Transformer::Phone,
        Detector::PersonName => Transformer::Name,
        Detector::IpAddress if ty.unique && ty.category == 'S' => Transformer::Hash,
        Detector::IpAddress => Transformer::Redact,
    }
}

/// The guess from the name and type; a name that says personal text on a
/// column that is not text is blanked rather than kept.
fn by_name(column: &str, ty: &ColumnType) -> (Transformer, String) {
    let (t, because) = suggest(column, ty);
    if ty.category != 'S' && t == Transformer::Keep {
        let as_text = ColumnType {
            category: 'S',
            base: "text".into(),
            sql_type: "text".into(),
            max_len: None,
            ..ty.clone()
        };
        let (textual, why) = suggest(column, &as_text);
        if matches!(
            textual,
            Transformer::Email
                | Transformer::Phone
                | Transformer::Digits { .. }
                | Transformer::Name
                | Transformer::FirstName
                | Transformer::LastName
        ) {
            return (Transformer::Null, format!("{why}; not a text column"));
        }
    }
    (t, because.to_string())
}

/// `s` as a TOML key: bare when it can be, else a quoted basic string.
pub fn key(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return s.to_string();
    }
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(q, "\\u{:04X}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// `s` safe inside a comment: one line, no control characters.
fn comment(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::masking::coverage::{check, CatalogTable};
    use crate::core::masking::rules::parse;

    fn ty(sql: &str, base: &str, category: char) -> ColumnType {
        ColumnType {
            sql_type: sql.into(),
            base: base.into(),
            category,
            max_len: None,
            not_null: false,
            unique: false,
        }
    }

    fn col(schema: &str, table: &str, column: &str, ty: ColumnType) -> CatalogColumn {
        CatalogColumn {
            database: "app".into(),
            schema: schema.into(),
            table: table.into(),
            column: column.into(),
            ty,
            generated: false,
            kind: RelKind::Table,
        }
    }

    fn name(schema: &str, table: &str) -> TableName {
        TableName {
            database: "app".into(),
            schema: schema.into(),
            table: table.into(),
        }
    }

    fn vals(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn catalog() -> (Catalog, Samples) {
        let text = ty("text", "text", 'S');
        let mut unique = text.clone();
        unique.unique = true;
        let mut short = ty("character varying(20)", "varchar", 'S');
        short.max_len = Some(20);
        let mut required = text.clone();
        required.not_null = true;
        let mut columns = vec![
            col("public", "users", "id", ty("integer", "int4", 'N')),
            col("public", "users", "contact", text.clone()),
            col("public", "users", "card", text.clone()),
            col("public", "users", "iban", text.clone()),
            col("public", "users", "who", unique.clone()),
            col("public", "users", "short_mail", short),
            col("public", "users", "remark", required),
            col("public", "users", "phone", ty("bigint", "int8", 'N')),
            col("public", "users", "seen", ty("inet", "inet", 'I')),
            col(
                "public",
                "users",
                "created_at",
                ty("timestamptz", "timestamptz", 'D'),
            ),
            col("public", "users", "active", ty("boolean", "bool", 'B')),
            col("My Schema", "Users.2024", "E-Mail", text.clone()),
            col("My Schema", "Users.2024", "say \"hi\"", text.clone()),
        ];
        let mut g = col("My Schema", "Users.2024", "n", ty("integer", "int4", 'N'));
        g.generated = true;
        columns.push(g);
        let mut view = col("public", "v", "contact", text.clone());
        view.kind = RelKind::View;
        columns.push(view);
        let mut part = col("public", "events_1", "ip", text.clone());
        part.kind = RelKind::Partition {
            root_schema: "public".into(),
            root_table: "events".into(),
        };
        columns.push(part);
        let mut root = col("public", "events", "ip", text);
        root.kind = RelKind::Partitioned;
        columns.push(root);
        let catalog = Catalog {
            databases: vec!["app".into(), "empty".into()],
            columns,
            columnless: vec![CatalogTable {
                name: name("public", "nothing"),
                kind: RelKind::Table,
            }],
        };
        let mut s = Samples::default();
        let users = name("public", "users");
        s.insert(
            users.clone(),
            "contact".into(),
            vals(&["a@x.com", "b@y.org", "c@z.net", "d@w.io", "n/a"]),
        );
        s.insert(
            users.clone(),
            "card".into(),
            vals(&["4111 1111 1111 1111", "5555555555554444", "378282246310005"]),
        );
        s.insert(
            users.clone(),
            "iban".into(),
            vals(&["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000"]),
        );
        s.insert(
            users.clone(),
            "who".into(),
            vals(&["John Smith", "Maria Rossi", "Li Wang"]),
        );
        s.insert(
            users.clone(),
            "short_mail".into(),
            vals(&["a@x.com", "b@y.org"]),
        );
        s.insert(
            users.clone(),
            "seen".into(),
            vals(&["192.0.2.1/32", "192.0.2.9/32"]),
        );
        s.insert(
            name("public", "events"),
            "ip".into(),
            vals(&["10.1.2.3", "10.1.2.4", "10.1.2.5"]),
        );
        s.insert(
            name("My Schema", "Users.2024"),
            "E-Mail".into(),
            vals(&["x@y.com", "z@y.com"]),
        );
        (catalog, s)
    }

    #[test]
    fn a_complete_file_that_parses_and_guesses_right() {
        let (cat, s) = catalog();
        let text = suggest_rules_for(Some("42"), &cat, &s);
        let rules = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let cov = check(&rules, &cat);
        assert!(cov.complete(), "{cov:?}\n{text}");
        let users = rules.table("app", "public", "users").unwrap();
        let t = |c: &str| users.column(c).unwrap().transformer.clone();
        assert_eq!(t("id"), Transformer::Keep);
        assert_eq!(t("contact"), Transformer::Email, "{text}");
        assert_eq!(t("card"), Transformer::Digits { keep_last: 4 });
        assert_eq!(t("iban"), Transformer::Digits { keep_last: 4 });
        assert_eq!(t("who"), Transformer::Hash, "name on a unique column");
        assert_eq!(t("short_mail"), Transformer::Redact, "email does not fit");
        assert_eq!(t("remark"), Transformer::Redact, "NOT NULL free text");
        assert_eq!(t("phone"), Transformer::Null, "a number named phone");
        assert_eq!(t("seen"), Transformer::Redact);
        assert_eq!(t("created_at"), Transformer::Keep);
        assert_eq!(t("active"), Transformer::Keep);
        let q = rules.table("app", "My Schema", "Users.2024").unwrap();
        assert_eq!(q.column("E-Mail").unwrap().transformer, Transformer::Email);
        assert!(q.column("say \"hi\"").is_some());
        assert!(q.column("n").is_none(), "generated: no rule");
        assert_eq!(
            rules
                .table("app", "public", "events")
                .unwrap()
                .column("ip")
                .unwrap()
                .transformer,
            Transformer::Redact
        );
        assert!(rules.table("app", "public", "events_1").is_none());
        assert!(rules.table("app", "public", "v").is_none());
        assert!(rules
            .table("app", "public", "nothing")
            .unwrap()
            .whole
            .is_some());
        for want in [
            "# Masking rules suggested by Draupnir for image 42, databases: app, empty.",
            "REVIEW EVERY LINE",
            "# Database empty: no user tables.",
            "contact = \"email\"",
            "# 4 of 5 sampled values are e-mail addresses",
            "# 3 of 3 sampled values are payment card numbers",
            "# 2 of 2 sampled values are IBANs",
            "# an identifier",
            "3 of 3 sampled values are person names, but `name` can give two rows the same value",
            "hash instead; REVIEW",
            "[app.\"My Schema\".\"Users.2024\"]",
            "\"say \\\"hi\\\"\" = ",
            "# n: generated, recomputed from the masked columns (no rule)",
            "\"*\" = \"keep\"  # a table without columns",
            "#   app.public.events_1: a partition, covered by its root's rules",
            "#   app.public.v: a view; mask the tables it reads",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
        assert_eq!(
            text,
            suggest_rules_for(Some("42"), &cat, &s),
            "deterministic"
        );
    }

    #[test]
    fn no_samples_falls_back_to_names() {
        let (cat, _) = catalog();
        let text = suggest_rules(&cat, &Samples::default());
        let rules = parse(&text).unwrap();
        assert!(check(&rules, &cat).complete(), "{text}");
        let users = rules.table("app", "public", "users").unwrap();
        assert_eq!(
            users.column("contact").unwrap().transformer,
            Transformer::Null,
            "{text}"
        );
        assert_eq!(
            users.column("card").unwrap().transformer,
            Transformer::Digits { keep_last: 4 }
        );
        assert!(
            text.contains("# the name says card or account number"),
            "{text}"
        );
    }

    #[test]
    fn generated_only_and_a_column_named_star() {
        let text_ty = ty("text", "text", 'S');
        let mut g = col("public", "gen", "g", text_ty.clone());
        g.generated = true;
        let cat = Catalog {
            databases: vec!["app".into()],
            columns: vec![
                g,
                col("public", "odd", "*", text_ty.clone()),
                col("public", "odd", "mail", text_ty),
            ],
            columnless: vec![],
        };
        let text = suggest_rules(&cat, &Samples::default());
        let rules = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(check(&rules, &cat).complete(), "{text}");
        assert!(
            text.contains("\"*\" = \"keep\"  # only generated columns"),
            "{text}"
        );
        let odd = rules.table("app", "public", "odd").unwrap();
        assert!(odd.whole.is_some());
        assert_eq!(odd.column("mail").unwrap().transformer, Transformer::Email);
        assert!(text.contains("REVIEW: a column named \"*\""), "{text}");
    }

    #[test]
    fn nothing_fits_is_kept_for_review() {
        let mut point = ty("point", "point", 'G');
        point.not_null = true;
        let (t, why) = guess("home", &point, &[]);
        assert_eq!(t, Transformer::Keep);
        assert!(why.contains("REVIEW: kept"), "{why}");
    }

    #[test]
    fn keys_are_quoted_when_they_must_be() {
        assert_eq!(key("users"), "users");
        assert_eq!(key("a-b_1"), "a-b_1");
        assert_eq!(key("My Schema"), "\"My Schema\"");
        assert_eq!(key("a.b"), "\"a.b\"");
        assert_eq!(key("x\"y\\z"), "\"x\\\"y\\\\z\"");
        assert_eq!(key("new\nline"), "\"new\\u000Aline\"");
        assert_eq!(key(""), "\"\"");
        assert_eq!(key("café"), "\"café\"");
        for k in ["a.b", "x\"y\\z", "new\nline", "", "café", "*"] {
            let text = format!("[app.public.{}]\n{} = \"keep\"\n", key(k), key(k));
            let r = parse(&text).unwrap_or_else(|e| panic!("{k:?}: {e}"));
            assert!(r.table("app", "public", k).unwrap().column(k).is_some() || k == "*");
        }
        assert_eq!(comment("a\nb"), "a?b");
    }
}
