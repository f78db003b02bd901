//! The transformers: what each one is called in a rules file, which
//! PostgreSQL column types it fits, and the SQL expression that computes
//! the masked value from the column and the per-deployment key.
//!
//! Keyed transformers (`email`, `name`, `first_name`, `last_name`,
//! `phone`, `digits`, `hash`, and the offsets of `shift_date` and `noise`)
//! use HMAC-SHA256 written with PostgreSQL's built-in `sha256(bytea)`:
//! `sha256(opad || sha256(ipad || message))`, where `ipad`/`opad` are the
//! key padded to SHA-256's 64-byte block and XORed with 0x36/0x5c (RFC
//! 2104). The two pads are bound as statement parameters (`$1`, `$2`) and
//! reached through the alias [`KEY_ALIAS`], so the key is never written
//! into a catalog, a function body or a statement's text. The message is
//! `tag ':' value` (UTF-8), a tag per transformer, so the same original
//! gives the same masked value in every table, database and image while
//! `hash(x)` says nothing about `email(x)`. NULL stays NULL everywhere.

use std::fmt;

/// The alias of the one-row `FROM` item holding the key pads in a masking
/// statement (see [`super::plan`]).
pub const KEY_ALIAS: &str = "\"draupnir mask key\"";

/// Domain of fake addresses (`.invalid` never resolves: RFC 2606).
pub const EMAIL_DOMAIN: &str = "example.invalid";

/// Length of a masked e-mail address: `user-` + 16 hex + `@example.invalid`.
pub const EMAIL_LEN: u32 = 5 + 16 + 1 + 15;

/// Length of a `hash` value: the full HMAC in hex.
pub const HASH_LEN: u32 = 64;

/// Names a rules file may give a column (`truncate` is table level: `"*"`).
pub const NAMES: &[&str] = &[
    "keep",
    "email",
    "name",
    "first_name",
    "last_name",
    "digits",
    "phone",
    "hash",
    "null",
    "redact",
    "shift_date",
    "noise",
    "sql",
];

/// What a column's values become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transformer {
    /// Declared not personal: left as it is.
    Keep,
    /// `user-<hex16>@example.invalid`, unique in, unique out.
    Email,
    /// A fake full name, first and last name from fixed lists.
    Name,
    FirstName,
    LastName,
    /// Every ASCII digit replaced but the last `keep_last`; other
    /// characters and the length unchanged.
    Digits {
        keep_last: u32,
    },
    /// Every ASCII digit replaced; the shape unchanged.
    Phone,
    /// Hex of the full HMAC (64 characters): unique in, unique out.
    Hash,
    /// NULL (refused on a NOT NULL column).
    Null,
    /// A fixed value of the column's type.
    Redact,
    /// Shifted by a keyed whole number of days in `[-max_days, max_days]`.
    ShiftDate {
        max_days: u32,
    },
    /// Multiplied by a keyed factor in `[1 - percent/100, 1 + percent/100]`.
    Noise {
        percent: u32,
    },
    /// The escape hatch: an SQL expression of the column (`UPDATE ... SET
    /// col = (expr)`), checked only by PostgreSQL when it runs.
    Sql {
        expr: String,
    },
}

/// A parameter as a rules file gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Int(i64),
    Str(String),
    /// Any other TOML value; the name of its type.
    Other(&'static str),
}

/// Why a transformer specification is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("unknown transformer `{name}`{}", hint(.suggestion))]
    Unknown {
        name: String,
        suggestion: Option<&'static str>,
    },
    /// `parameter` names the offending parameter, when there is one.
    #[error("`{transformer}`: {message}")]
    BadParameter {
        transformer: &'static str,
        parameter: Option<String>,
        message: String,
    },
}

fn hint(suggestion: &Option<&'static str>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => format!(" (known: {})", NAMES.join(", ")),
    }
}

/// The column facts type fit and the SQL need (from the catalog query in
/// [`super::coverage::CATALOG_SQL`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnType {
    /// `format_type(atttypid, atttypmod)`: the type as SQL spells it.
    pub sql_type: String,
    /// `typname` of the base type (a domain's base type).
    pub base: String,
    /// `pg_type.typcategory` (S string, N numeric, D date/time, ...).
    pub category: char,
    /// Maximum length of a `varchar(n)`/`char(n)`.
    pub max_len: Option<u32>,
    pub not_null: bool,
    /// The column alone is the key of a unique index (a primary key, a
    /// unique constraint, or a unique index, partial or not).
    pub unique: bool,
}

/// Why a transformer does not fit a column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Misfit {
    #[error("`{transformer}` needs {wants}, not {sql_type}")]
    WrongType {
        transformer: &'static str,
        wants: &'static str,
        sql_type: String,
    },
    #[error("`{transformer}` writes {needs} characters, more than {sql_type} holds")]
    TooShort {
        transformer: &'static str,
        needs: u32,
        sql_type: String,
    },
    #[error("`null` on a NOT NULL column; use `redact` for a fixed value")]
    NotNull,
    #[error("`{transformer}` can give two rows the same value and the column has a unique index; use `hash` or `email`")]
    NotUnique { transformer: &'static str },
    #[error("`redact` has no fixed value for {sql_type} and the column is NOT NULL; use `sql`")]
    NoRedactValue { sql_type: String },
}

impl Transformer {
    /// The name a rules file uses.
    pub fn name(&self) -> &'static str {
        match self {
            Transformer::Keep => "keep",
            Transformer::Email => "email",
            Transformer::Name => "name",
            Transformer::FirstName => "first_name",
            Transformer::LastName => "last_name",
            Transformer::Digits { .. } => "digits",
            Transformer::Phone => "phone",
            Transformer::Hash => "hash",
            Transformer::Null => "null",
            Transformer::Redact => "redact",
            Transformer::ShiftDate { .. } => "shift_date",
            Transformer::Noise { .. } => "noise",
            Transformer::Sql { .. } => "sql",
        }
    }

    /// A transformer from its name and parameters (`fn = name` and the
    /// other keys of an inline table; none for a bare string).
    pub fn parse(name: &str, params: &[(String, Param)]) -> Result<Transformer, SpecError> {
        let Some(known) = NAMES.iter().copied().find(|n| *n == name) else {
            return Err(SpecError::Unknown {
                name: name.to_string(),
                suggestion: did_you_mean(name),
            });
        };
        let allowed: &[&str] = match known {
            "digits" => &["keep_last"],
            "shift_date" => &["max_days"],
            "noise" => &["percent"],
            "sql" => &["expr"],
            _ => &[],
        };
        let bad = |parameter: Option<&str>, message: String| SpecError::BadParameter {
            transformer: known,
            parameter: parameter.map(str::to_string),
            message,
        };
        if let Some((p, _)) = params.iter().find(|(p, _)| !allowed.contains(&p.as_str())) {
            let takes = if allowed.is_empty() {
                "takes no parameters".to_string()
            } else {
                format!("takes only {}", allowed.join(", "))
            };
            return Err(bad(Some(p), format!("unknown parameter `{p}`; it {takes}")));
        }
        let int = |p: &str, min: i64, max: i64, default: Option<i64>| -> Result<u32, SpecError> {
            match params.iter().find(|(k, _)| k == p).map(|(_, v)| v) {
                None => default
                    .map(|d| d as u32)
                    .ok_or_else(|| bad(None, format!("needs `{p}` (an integer {min}..={max})"))),
                Some(Param::Int(v)) if (min..=max).contains(v) => Ok(*v as u32),
                Some(Param::Int(v)) => Err(bad(
                    Some(p),
                    format!("`{p}` = {v} is out of range {min}..={max}"),
                )),
                Some(other) => Err(bad(
                    Some(p),
                    format!("`{p}` must be an integer, not {}", param_type(other)),
                )),
            }
        };
        Ok(match known {
            "keep" => Transformer::Keep,
            "email" => Transformer::Email,
            "name" => Transformer::Name,
            "first_name" => Transformer::FirstName,
            "last_name" => Transformer::LastName,
            "digits" => Transformer::Digits {
                keep_last: int("keep_last", 0, 64, Some(0))?,
            },
            "phone" => Transformer::Phone,
            "hash" => Transformer::Hash,
            "null" => Transformer::Null,
            "redact" => Transformer::Redact,
            "shift_date" => Transformer::ShiftDate {
                max_days: int("max_days", 1, 36_500, None)?,
            },
            "noise" => Transformer::Noise {
                percent: int("percent", 1, 100, None)?,
            },
            _ => match params.iter().find(|(k, _)| k == "expr").map(|(_, v)| v) {
                Some(Param::Str(e)) if !e.trim().is_empty() => Transformer::Sql { expr: e.clone() },
                Some(Param::Str(_)) => return Err(bad(Some("expr"), "empty expression".into())),
                Some(other) => {
                    return Err(bad(
                        Some("expr"),
                        format!("must be a string, not {}", param_type(other)),
                    ))
                }
                None => return Err(bad(None, "write it as `{ sql = \"expression\" }`".into())),
            },
        })
    }

    /// Whether this transformer fits a column of type `ty`.
    pub fn fit(&self, ty: &ColumnType) -> Result<(), Misfit> {
        let text_like = ty.category == 'S';
        let wrong = |wants: &'static str| Misfit::WrongType {
            transformer: self.name(),
            wants,
            sql_type: ty.sql_type.clone(),
        };
        let long_enough = |needs: u32| match ty.max_len {
            Some(max) if max < needs => Err(Misfit::TooShort {
                transformer: self.name(),
                needs,
                sql_type: ty.sql_type.clone(),
            }),
            _ => Ok(()),
        };
        if ty.unique
            && matches!(
                self,
                Transformer::Name
                    | Transformer::FirstName
                    | Transformer::LastName
                    | Transformer::Redact
                    | Transformer::ShiftDate { .. }
                    | Transformer::Noise { .. }
            )
        {
            return Err(Misfit::NotUnique {
                transformer: self.name(),
            });
        }
        match self {
            Transformer::Keep | Transformer::Sql { .. } => Ok(()),
            Transformer::Email | Transformer::Hash if !text_like => Err(wrong("a text column")),
            Transformer::Email => long_enough(EMAIL_LEN),
            Transformer::Hash => long_enough(HASH_LEN),
            Transformer::Name
            | Transformer::FirstName
            | Transformer::LastName
            | Transformer::Digits { .. }
            | Transformer::Phone => {
                if text_like {
                    Ok(())
                } else {
                    Err(wrong("a text column"))
                }
            }
            Transformer::Null if ty.not_null => Err(Misfit::NotNull),
            Transformer::Null => Ok(()),
            Transformer::Redact => {
                if redact_literal(ty).is_some() || !ty.not_null {
                    Ok(())
                } else {
                    Err(Misfit::NoRedactValue {
                        sql_type: ty.sql_type.clone(),
                    })
                }
            }
            Transformer::ShiftDate { .. } => {
                if matches!(ty.base.as_str(), "date" | "timestamp" | "timestamptz") {
                    Ok(())
                } else {
                    Err(wrong("a date or timestamp column"))
                }
            }
            Transformer::Noise { .. } => {
                if matches!(
                    ty.base.as_str(),
                    "int2" | "int4" | "int8" | "numeric" | "float4" | "float8"
                ) {
                    Ok(())
                } else {
                    Err(wrong("a numeric column (integer, numeric, real, double)"))
                }
            }
        }
    }

    /// Whether the value is a function of the original and the key only
    /// (the same in every table, database and image).
    pub fn is_keyed(&self) -> bool {
        matches!(
            self,
            Transformer::Email
                | Transformer::Name
                | Transformer::FirstName
                | Transformer::LastName
                | Transformer::Digits { .. }
                | Transformer::Phone
                | Transformer::Hash
                | Transformer::ShiftDate { .. }
                | Transformer::Noise { .. }
        )
    }

    /// The SQL expression of the masked value of `column` (an identifier,
    /// quoted by the caller), or `None` for `keep`. Assumes [`Self::fit`].
    pub fn expr(&self, column: &str, ty: &ColumnType) -> Option<String> {
        let cast = |e: String| format!("CAST({e} AS {})", ty.sql_type);
        let text = format!("{column}::text");
        Some(match self {
            Transformer::Keep => return None,
            Transformer::Email => cast(format!(
                "'user-' || encode(substr({}, 1, 8), 'hex') || '@{EMAIL_DOMAIN}'",
                hmac("email", &text)
            )),
            Transformer::Hash => cast(format!("encode({}, 'hex')", hmac("hash", &text))),
            Transformer::FirstName => cast(pick(FIRST_NAMES, &hmac("first_name", &text), 0)),
            Transformer::LastName => cast(pick(LAST_NAMES, &hmac("last_name", &text), 0)),
            Transformer::Name => {
                // One HMAC for both names (an `OFFSET 0` subquery keeps
                // PostgreSQL from computing it once per use).
                let h = hmac("name", &text);
                cast(format!(
                    "(SELECT {} || ' ' || {} FROM (SELECT {h} AS h OFFSET 0) AS x)",
                    pick(FIRST_NAMES, "x.h", 0),
                    pick(LAST_NAMES, "x.h", 1)
                ))
            }
            Transformer::Digits { keep_last } => cast(digits(column, "digits", *keep_last)),
            Transformer::Phone => cast(digits(column, "phone", 0)),
            Transformer::Null => "NULL".to_string(),
            Transformer::Redact => match redact_literal(ty) {
                Some(lit) => format!("CAST({} AS {})", quote_literal(lit), ty.sql_type),
                None => "NULL".to_string(),
            },
            Transformer::ShiftDate { max_days } => {
                let h = hmac("shift_date", &format!("extract(epoch FROM {column})::text"));
                let days = format!("({} % {} - {max_days})", uint32(&h), 2 * max_days + 1);
                let shifted = if ty.base == "date" {
                    format!("{column} + {days}::int")
                } else {
                    format!("{column} + make_interval(days => {days}::int)")
                };
                format!(
                    "CASE WHEN {column} IS NULL OR NOT isfinite({column}) THEN {column} ELSE {} END",
                    cast(shifted)
                )
            }
            Transformer::Noise { percent } => {
                let h = hmac("noise", &text);
                // u in [0, 1]: the first four bytes of the HMAC.
                let u = format!("({}::numeric / 4294967295)", uint32(&h));
                let factor = format!("(1 + {percent}::numeric / 100 * (2 * {u} - 1))");
                let scaled = if matches!(ty.base.as_str(), "float4" | "float8") {
                    format!("{column} * {factor}::float8")
                } else {
                    format!("{column} * {factor}")
                };
                cast(scaled)
            }
            Transformer::Sql { expr } => format!("({expr})"),
        })
    }
}

/// `HMAC-SHA256(key, tag ':' message)` as SQL; NULL when `message` is.
pub fn hmac(tag: &str, message: &str) -> String {
    format!(
        "sha256({KEY_ALIAS}.opad || sha256({KEY_ALIAS}.ipad || convert_to('{tag}:' || {message}, 'UTF8')))"
    )
}

/// The first four bytes of `bytes` (SQL bytea) as a bigint in `[0, 2^32)`.
fn uint32(bytes: &str) -> String {
    format!("('x' || encode(substr({bytes}, 1, 4), 'hex'))::bit(32)::bigint")
}

/// An element of `list` chosen by byte `byte` of `bytes` (the lists have
/// 64 entries, so a byte modulo 64 is uniform).
fn pick(list: &[&str], bytes: &str, byte: usize) -> String {
    let items: Vec<String> = list.iter().map(|s| quote_literal(s)).collect();
    format!(
        "(ARRAY[{}]::text[])[1 + get_byte({bytes}, {byte}) % {}]",
        items.join(","),
        list.len()
    )
}

/// Every ASCII digit of `column` replaced by a keyed digit, but the last
/// `keep_last` digits; other characters kept, so length and format stay.
///
/// One expression, no per-row subquery (a subquery over the characters
/// was 6.7 times slower): every digit becomes a `%s` of a `format()`
/// template (through `translate` to U+0001, or `regexp_replace` when the
/// value holds U+0001 itself), filled with the HMAC's hex digits (a..f
/// read as 0..5: a bias towards 0..5 that does not matter for masking;
/// repeated past 64 digits) followed by the value's own last `keep_last`
/// digits.
fn digits(column: &str, tag: &str, keep_last: u32) -> String {
    let s = format!("{column}::text");
    let template = format!(
        "CASE WHEN strpos({s}, chr(1)) = 0 \
THEN replace(translate(replace({s}, '%', '%%'), '0123456789', repeat(chr(1), 10)), chr(1), '%s') \
ELSE regexp_replace(replace({s}, '%', '%%'), '[0-9]', '%s', 'g') END"
    );
    let count = format!("(length({s}) - length(translate({s}, '0123456789', '')))");
    let mut keystream = format!(
        "left(repeat(translate(encode({}, 'hex'), 'abcdef', '012345'), 1 + length({s}) / 64), \
greatest({count} - {keep_last}, 0))",
        hmac(tag, &s)
    );
    if keep_last > 0 {
        keystream.push_str(&format!(
            " || right(regexp_replace({s}, '[^0-9]', '', 'g'), {keep_last})"
        ));
    }
    format!(
        "CASE WHEN {column} IS NULL THEN NULL \
ELSE format({template}, VARIADIC string_to_array({keystream}, NULL)) END"
    )
}

/// The fixed value `redact` writes for a type, if it has one.
fn redact_literal(ty: &ColumnType) -> Option<&'static str> {
    Some(match (ty.category, ty.base.as_str()) {
        (_, "uuid") => "00000000-0000-0000-0000-000000000000",
        (_, "json" | "jsonb") => "{}",
        (_, "bytea") => "",
        (_, "inet" | "cidr") => "0.0.0.0",
        (_, "date" | "timestamp" | "timestamptz") => "1970-01-01",
        (_, "time" | "timetz") => "00:00",
        ('S', _) => "redacted",
        ('N', _) => "0",
        ('B', _) => "false",
        ('A', _) => "{}",
        ('T', _) => "0",
        _ => return None,
    })
}

/// `s` as an SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `s` as an SQL identifier (always quoted, so case and dots survive).
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn param_type(p: &Param) -> &'static str {
    match p {
        Param::Int(_) => "an integer",
        Param::Str(_) => "a string",
        Param::Other(t) => t,
    }
}

/// The known name closest to `name`, if it is close (edit distance <= 2,
/// or a prefix either way).
pub fn did_you_mean(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    NAMES
        .iter()
        .copied()
        .chain(["truncate"])
        .map(|n| (edit_distance(&lower, n), n))
        .filter(|(d, n)| {
            *d <= 2 || (lower.len() >= 3 && (n.starts_with(&lower) || lower.starts_with(n)))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

impl fmt::Display for Transformer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transformer::Digits { keep_last } => {
                write!(f, "{{ fn = \"digits\", keep_last = {keep_last} }}")
            }
            Transformer::ShiftDate { max_days } => {
                write!(f, "{{ fn = \"shift_date\", max_days = {max_days} }}")
            }
            Transformer::Noise { percent } => {
                write!(f, "{{ fn = \"noise\", percent = {percent} }}")
            }
            Transformer::Sql { expr } => write!(f, "{{ sql = {expr:?} }}"),
            other => write!(f, "\"{}\"", other.name()),
        }
    }
}

/// 64 first names (a byte modulo 64 picks one uniformly).
pub const FIRST_NAMES: &[&str] = &[
    "Ada", "Alan", "Alice", "Amara", "Ana", "Arjun", "Astrid", "Ben", "Bjorn", "Carla", "Chen",
    "Chloe", "Dara", "David", "Elena", "Emil", "Erin", "Farah", "Felix", "Grace", "Hana", "Hugo",
    "Ines", "Ivan", "Jade", "Jonas", "Kai", "Kenji", "Lars", "Lea", "Leila", "Liam", "Lucia",
    "Mara", "Marco", "Maya", "Mei", "Nadia", "Nils", "Noah", "Olga", "Omar", "Paula", "Pedro",
    "Priya", "Quinn", "Rafael", "Rosa", "Ruth", "Sam", "Sara", "Sean", "Sofia", "Tariq", "Tess",
    "Theo", "Uma", "Vera", "Victor", "Wen", "Yara", "Yusuf", "Zara", "Zoe",
];

/// 64 last names.
pub const LAST_NAMES: &[&str] = &[
    "Abbott",
    "Alvarez",
    "Andersen",
    "Baker",
    "Bianchi",
    "Brandt",
    "Castro",
    "Chowdhury",
    "Costa",
    "Dahl",
    "Diaz",
    "Dubois",
    "Eriksen",
    "Evans",
    "Fischer",
    "Fontaine",
    "Garcia",
    "Gupta",
    "Haas",
    "Hansen",
    "Ito",
    "Jensen",
    "Kaur",
    "Keller",
    "Kim",
    "Kowalski",
    "Larsen",
    "Lopez",
    "Meyer",
    "Moreau",
    "Nagy",
    "Nakamura",
    "Novak",
    "Okafor",
    "Olsen",
    "Ortiz",
    "Park",
    "Patel",
    "Petrov",
    "Quinn",
    "Rossi",
    "Ruiz",
    "Sato",
    "Schmidt",
    "Silva",
    "Singh",
    "Smith",
    "Sousa",
    "Svensson",
    "Tanaka",
    "Torres",
    "Ueda",
    "Varga",
    "Vogel",
    "Wagner",
    "Walsh",
    "Weber",
    "Wong",
    "Xu",
    "Yamamoto",
    "Young",
    "Zhang",
    "Ziegler",
    "Zimmer",
];

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn ty(sql_type: &str, base: &str, category: char) -> ColumnType {
        ColumnType {
            sql_type: sql_type.into(),
            base: base.into(),
            category,
            max_len: None,
            not_null: false,
            unique: false,
        }
    }

    #[test]
    fn every_name_parses_and_prints_back() {
        for name in NAMES {
            let params: Vec<(String, Param)> = match *name {
                "shift_date" => vec![("max_days".into(), Param::Int(3))],
                "noise" => vec![("percent".into(), Param::Int(5))],
                "sql" => vec![("expr".into(), Param::Str("1".into()))],
                _ => vec![],
            };
            let t = Transformer::parse(name, &params).unwrap();
            assert_eq!(t.name(), *name);
            assert!(t.to_string().contains(name), "{t}");
        }
    }

    #[test]
    fn did_you_mean_finds_close_names() {
        assert_eq!(did_you_mean("emial"), Some("email"));
        assert_eq!(did_you_mean("Email"), Some("email"));
        assert_eq!(did_you_mean("firstname"), Some("first_name"));
        assert_eq!(did_you_mean("shift"), Some("shift_date"));
        assert_eq!(did_you_mean("hashed"), Some("hash"));
        assert_eq!(did_you_mean("xyzzyplugh"), None);
    }

    #[test]
    fn types_each_transformer_fits() {
        let text = ty("text", "text", 'S');
        let varchar = |n| ColumnType {
            max_len: Some(n),
            ..ty(&format!("character varying({n})"), "varchar", 'S')
        };
        let int = ty("integer", "int4", 'N');
        let date = ty("date", "date", 'D');
        let ts = ty("timestamp with time zone", "timestamptz", 'D');
        let time = ty("time without time zone", "time", 'D');
        let boolean = ty("boolean", "bool", 'B');
        let arr = ty("text[]", "_text", 'A');
        let keyed_text = [
            Transformer::Email,
            Transformer::Name,
            Transformer::FirstName,
            Transformer::LastName,
            Transformer::Digits { keep_last: 4 },
            Transformer::Phone,
            Transformer::Hash,
        ];
        for t in &keyed_text {
            assert_eq!(t.fit(&text), Ok(()), "{t}");
            for other in [&int, &date, &boolean, &arr] {
                assert!(
                    matches!(t.fit(other), Err(Misfit::WrongType { .. })),
                    "{t} on {other:?}"
                );
            }
        }
        assert_eq!(Transformer::Email.fit(&varchar(37)), Ok(()));
        assert!(matches!(
            Transformer::Email.fit(&varchar(36)),
            Err(Misfit::TooShort { needs: 37, .. })
        ));
        assert!(matches!(
            Transformer::Hash.fit(&varchar(63)),
            Err(Misfit::TooShort { needs: 64, .. })
        ));
        assert_eq!(
            Transformer::Name.fit(&varchar(5)),
            Ok(()),
            "names are cut to fit"
        );
        let shift = Transformer::ShiftDate { max_days: 3 };
        assert_eq!(shift.fit(&date), Ok(()));
        assert_eq!(shift.fit(&ts), Ok(()));
        assert!(shift.fit(&time).is_err());
        assert!(shift.fit(&text).is_err());
        let noise = Transformer::Noise { percent: 10 };
        for n in ["int2", "int4", "int8", "numeric", "float4", "float8"] {
            assert_eq!(noise.fit(&ty(n, n, 'N')), Ok(()), "{n}");
        }
        assert!(noise.fit(&ty("oid", "oid", 'N')).is_err());
        assert!(noise.fit(&text).is_err());
        for any in [&text, &int, &date, &boolean, &arr] {
            assert_eq!(Transformer::Keep.fit(any), Ok(()));
            assert_eq!(Transformer::Null.fit(any), Ok(()));
            assert_eq!(Transformer::Redact.fit(any), Ok(()));
            assert_eq!(Transformer::Sql { expr: "1".into() }.fit(any), Ok(()));
        }
        let required = ColumnType {
            not_null: true,
            ..text.clone()
        };
        assert_eq!(Transformer::Null.fit(&required), Err(Misfit::NotNull));
        assert_eq!(Transformer::Redact.fit(&required), Ok(()));
        let point = ColumnType {
            not_null: true,
            ..ty("point", "point", 'G')
        };
        assert!(matches!(
            Transformer::Redact.fit(&point),
            Err(Misfit::NoRedactValue { .. })
        ));
        assert!(Misfit::NotNull.to_string().contains("use `redact`"));
        // Under a unique index: only what stays unique (or may: digits, phone).
        let unique = ColumnType {
            unique: true,
            ..text.clone()
        };
        for t in [
            Transformer::Name,
            Transformer::FirstName,
            Transformer::Redact,
        ] {
            assert!(
                matches!(t.fit(&unique), Err(Misfit::NotUnique { .. })),
                "{t}"
            );
        }
        for t in [
            Transformer::Email,
            Transformer::Hash,
            Transformer::Keep,
            Transformer::Null,
            Transformer::Digits { keep_last: 4 },
            Transformer::Phone,
        ] {
            assert_eq!(t.fit(&unique), Ok(()), "{t}");
        }
        let unique_date = ColumnType {
            unique: true,
            ..date.clone()
        };
        assert!(Transformer::ShiftDate { max_days: 1 }
            .fit(&unique_date)
            .is_err());
    }

    #[test]
    fn expressions_use_the_key_alias_never_the_key() {
        let text = ty("character varying(80)", "varchar", 'S');
        assert_eq!(Transformer::Keep.expr("t.c", &text), None);
        for t in [
            Transformer::Email,
            Transformer::Name,
            Transformer::Digits { keep_last: 4 },
            Transformer::Hash,
        ] {
            let e = t.expr("t.c", &text).unwrap();
            assert!(e.contains(&format!("{KEY_ALIAS}.ipad")), "{e}");
            assert!(e.contains(&format!("'{}:'", t.name())), "tagged: {e}");
            assert!(e.starts_with("CAST(") || e.starts_with("CAST(CASE"), "{e}");
            assert!(e.ends_with("AS character varying(80))"), "{e}");
        }
        assert_eq!(Transformer::Null.expr("t.c", &text).unwrap(), "NULL");
        assert_eq!(
            Transformer::Redact.expr("t.c", &text).unwrap(),
            "CAST('redacted' AS character varying(80))"
        );
        assert_eq!(
            Transformer::Sql {
                expr: "left(c, 2)".into()
            }
            .expr("t.c", &text)
            .unwrap(),
            "(left(c, 2))"
        );
        let d = Transformer::ShiftDate { max_days: 30 }
            .expr("t.d", &ty("date", "date", 'D'))
            .unwrap();
        assert!(d.contains("% 61 - 30"), "{d}");
        assert!(d.contains("NOT isfinite(t.d)"), "{d}");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("My \"x\".y"), "\"My \"\"x\"\".y\"");
        assert_eq!(quote_literal("O'Brien"), "'O''Brien'");
    }

    #[test]
    fn name_lists_have_64_entries() {
        assert_eq!(FIRST_NAMES.len(), 64);
        assert_eq!(LAST_NAMES.len(), 64);
        assert!(FIRST_NAMES
            .iter()
            .chain(LAST_NAMES)
            .all(|n| !n.contains('\'')));
    }
}
