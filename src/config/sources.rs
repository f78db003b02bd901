//! The `[sources.NAME]` sections: production primaries Draupnir follows
//! with a streaming standby of its own (see the README's "Following
//! production"). Owns what a source's settings may be — its name, its
//! libpq connection string (parsed here, never holding a password), the
//! password file, the slot name, the refresh schedule and `max_lag` — and
//! refuses anything else at load with the key and the reason.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::units::parse_duration;
use super::ConfigError;

/// A source's name, as in `[sources.NAME]` and `refresh-image NAME`:
/// lower-case letters, digits, `-` and `_`, starting with a letter, at
/// most 32 characters (it names a directory and appears in metrics).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceName(String);

impl SourceName {
    pub fn parse(s: &str) -> Result<SourceName, String> {
        let ok = s.len() <= 32
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if ok {
            Ok(SourceName(s.to_owned()))
        } else {
            Err(format!("`{s}` is not a source name (lower-case letters, digits, - and _, starting with a letter, at most 32)"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SourceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SourceName::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One `[sources.NAME]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// libpq key/value connection string to the primary, for a role with
    /// `REPLICATION` (`host=db1 port=5432 user=draupnir_replica`).
    pub primary_conninfo: Conninfo,
    /// Absolute path of a libpq password file for that role (copied,
    /// readable by the standby only; never logged).
    #[serde(default)]
    pub passfile: Option<PathBuf>,
    /// Physical replication slot on the primary (created when missing,
    /// dropped when the source is removed).
    #[serde(default)]
    pub slot: Option<SlotName>,
    /// When to refresh by itself: `daily HH:MM` (UTC) or an interval.
    #[serde(default)]
    pub refresh_schedule: Option<Schedule>,
    /// Refuse a refresh while the standby is further behind than this
    /// (unless forced).
    #[serde(
        default = "default_max_lag",
        deserialize_with = "super::units::de_duration"
    )]
    pub max_lag: Duration,
}

fn default_max_lag() -> Duration {
    Duration::from_secs(300)
}

/// The configured sources, by name.
pub type Sources = BTreeMap<SourceName, SourceConfig>;

/// Check every source beyond what parsing checked: the password file is an
/// absolute path to a readable file.
pub(super) fn validate(sources: &Sources) -> Result<(), ConfigError> {
    for (name, s) in sources {
        if let Some(p) = &s.passfile {
            if !p.is_absolute() {
                return Err(super::invalid(
                    "sources",
                    format!("[sources.{name}] passfile must be an absolute path"),
                ));
            }
        }
        if s.max_lag.is_zero() {
            return Err(super::invalid(
                "sources",
                format!("[sources.{name}] max_lag must be more than 0s"),
            ));
        }
    }
    Ok(())
}

/// A physical replication slot's name (PostgreSQL's rule: lower-case
/// letters, digits and `_`, at most 63).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotName(String);

impl SlotName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for SlotName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok {
            Ok(SlotName(s))
        } else {
            Err(serde::de::Error::custom(format!(
                "`{s}` is not a replication slot name (lower-case letters, digits and _, at most 63)"
            )))
        }
    }
}

/// When a source refreshes by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Every day at this UTC time (minutes after midnight).
    Daily { minute_of_day: u32 },
    /// Every so long, counted from the daemon's start or the last refresh.
    Every(Duration),
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Schedule, String> {
        let s = s.trim();
        if let Some(at) = s.strip_prefix("daily") {
            let bad =
                || format!("`{s}` is not a schedule: `daily HH:MM` (UTC) or an interval like 6h");
            let (h, m) = at.trim().split_once(':').ok_or_else(bad)?;
            let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
            if h > 23 || m > 59 || at.trim().len() != 5 {
                return Err(bad());
            }
            return Ok(Schedule::Daily {
                minute_of_day: h * 60 + m,
            });
        }
        let every = parse_duration(s)?;
        if every < Duration::from_secs(60) {
            return Err(format!("`{s}` is too often (at least 1m)"));
        }
        Ok(Schedule::Every(every))
    }

    /// How long from `now_unix` (seconds since the epoch) to the next
    /// refresh, given the last one (if any, in the same seconds).
    pub fn wait(&self, now_unix: u64, last_unix: Option<u64>) -> Duration {
        match *self {
            Schedule::Daily { minute_of_day } => {
                let at = u64::from(minute_of_day) * 60;
                let today = now_unix - now_unix % 86_400;
                let mut next = today + at;
                if next <= now_unix {
                    next += 86_400;
                }
                Duration::from_secs(next - now_unix)
            }
            Schedule::Every(every) => {
                let since = last_unix.map_or(0, |l| now_unix.saturating_sub(l));
                every.saturating_sub(Duration::from_secs(since))
            }
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Daily { minute_of_day } => {
                write!(
                    f,
                    "daily {:02}:{:02} UTC",
                    minute_of_day / 60,
                    minute_of_day % 60
                )
            }
            Schedule::Every(d) => write!(f, "every {}s", d.as_secs()),
        }
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Schedule::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A libpq key/value connection string, parsed (libpq's quoting: values
/// in single quotes, `\'` and `\\` escaped). A password has no place in
/// it (give `passfile`), nor does a `passfile` of its own or a
/// `replication` key (Draupnir sets those).
#[derive(Clone, PartialEq, Eq)]
pub struct Conninfo {
    pairs: Vec<(String, String)>,
}

/// Keys Draupnir sets itself or that would carry a secret.
const REFUSED_KEYS: &[(&str, &str)] = &[
    (
        "password",
        "a password never goes in the connection string: put it in a passfile",
    ),
    (
        "passfile",
        "give the password file as the source's passfile",
    ),
    ("replication", "Draupnir sets it"),
    ("dbname", "a physical standby connects to no database"),
    ("service", "name the host, port and user instead"),
];

impl Conninfo {
    pub fn parse(s: &str) -> Result<Conninfo, String> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Err(
                "give the connection as key=value pairs (host=… port=… user=…), not a URI".into(),
            );
        }
        let mut pairs = Vec::new();
        let mut chars = s.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let mut key = String::new();
            while let Some(&c) = chars.peek() {
                if c == '=' || c.is_whitespace() {
                    break;
                }
                key.push(c);
                chars.next();
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.next() != Some('=') {
                return Err(format!("`{key}` has no `=value`"));
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            let mut value = String::new();
            if chars.peek() == Some(&'\'') {
                chars.next();
                loop {
                    match chars.next() {
                        None => return Err(format!("the value of `{key}` has no closing quote")),
                        Some('\'') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => value.push(c),
                            None => {
                                return Err(format!("the value of `{key}` ends in a backslash"))
                            }
                        },
                        Some(c) => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() {
                        break;
                    }
                    chars.next();
                    if c == '\\' {
                        match chars.next() {
                            Some(e) => value.push(e),
                            None => {
                                return Err(format!("the value of `{key}` ends in a backslash"))
                            }
                        }
                    } else {
                        value.push(c);
                    }
                }
            }
            if let Some((_, why)) = REFUSED_KEYS.iter().find(|(k, _)| *k == key) {
                return Err(format!("`{key}`: {why}"));
            }
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                return Err(format!("`{key}` is not a connection key"));
            }
            if value.contains('\0') || value.contains('\n') {
                return Err(format!("the value of `{key}` has a control character"));
            }
            pairs.push((key, value));
        }
        let c = Conninfo { pairs };
        if c.get("user").is_none_or(str::is_empty) {
            return Err("name the replication role with user=…".into());
        }
        if c.get("host").is_none() && c.get("hostaddr").is_none() {
            return Err("name the primary with host=…".into());
        }
        c.ports()?;
        Ok(c)
    }

    /// The last value of `key`, as libpq takes it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The replication role.
    pub fn user(&self) -> &str {
        self.get("user").unwrap_or_default()
    }

    /// Every TCP port the connection may use (libpq's default 5432).
    pub fn ports(&self) -> Result<Vec<u16>, String> {
        match self.get("port") {
            None | Some("") => Ok(vec![5432]),
            Some(list) => list
                .split(',')
                .map(|p| {
                    p.trim()
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| format!("`{p}` is not a port"))
                })
                .collect(),
        }
    }

    /// The string again, with `extra` pairs appended, every value quoted.
    pub fn render(&self, extra: &[(&str, &str)]) -> String {
        let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        self.pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(extra.iter().copied())
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Where the primary is, for messages: `host:port`.
    pub fn target(&self) -> String {
        let host = self
            .get("host")
            .or_else(|| self.get("hostaddr"))
            .unwrap_or_default();
        format!("{host}:{}", self.get("port").unwrap_or("5432"))
    }
}

impl fmt::Debug for Conninfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Conninfo({})", self.render(&[]))
    }
}

impl<'de> Deserialize<'de> for Conninfo {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Conninfo::parse(&s).map_err(|e| serde::de::Error::custom(format!("primary_conninfo: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_parses_quotes_and_refuses_secrets() {
        let c = Conninfo::parse(
            "host=db1 port = 5433 user='repl ica' sslmode=require application_name='a\\'b'",
        )
        .unwrap();
        assert_eq!(c.user(), "repl ica");
        assert_eq!(c.ports().unwrap(), vec![5433]);
        assert_eq!(c.get("application_name"), Some("a'b"));
        let again = Conninfo::parse(&c.render(&[])).unwrap();
        assert_eq!(again, c);
        for (bad, says) in [
            ("host=x user=u password=hunter2", "passfile"),
            ("host=x", "user="),
            ("user=u", "host="),
            ("host=x user=u port=99999", "not a port"),
            ("host=x user='u", "closing quote"),
            ("postgresql://u@x/", "key=value"),
            ("host=x user=u dbname=app", "no database"),
            ("host=x user=u replication=true", "sets it"),
            ("host=x user=u junk", "no `=value`"),
        ] {
            let err = Conninfo::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn schedules() {
        assert_eq!(
            Schedule::parse("daily 03:00").unwrap(),
            Schedule::Daily { minute_of_day: 180 }
        );
        assert_eq!(
            Schedule::parse("6h").unwrap(),
            Schedule::Every(Duration::from_secs(6 * 3600))
        );
        for bad in [
            "daily 3",
            "daily 24:00",
            "daily 03:60",
            "weekly",
            "10s",
            "daily 3:00",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
        let daily = Schedule::Daily { minute_of_day: 180 };
        // 02:00 → one hour; 04:00 → 23 hours.
        assert_eq!(daily.wait(2 * 3600, None), Duration::from_secs(3600));
        assert_eq!(daily.wait(4 * 3600, None), Duration::from_secs(23 * 3600));
        let every = Schedule::Every(Duration::from_secs(600));
        assert_eq!(every.wait(1000, Some(900)), Duration::from_secs(500));
        assert_eq!(every.wait(1000, Some(0)), Duration::ZERO);
    }

    #[test]
    fn names_and_slots() {
        assert!(SourceName::parse("prod-eu_1").is_ok());
        for bad in ["", "Prod", "1prod", "prod/x", &"a".repeat(33)] {
            assert!(SourceName::parse(bad).is_err(), "{bad}");
        }
        let text = "[sources.prod]\nprimary_conninfo = \"host=x user=u\"\nslot = \"Bad-Slot\"";
        let err = crate::config::Config::parse(text).unwrap_err().to_string();
        assert!(err.contains("replication slot name"), "{err}");
        let text = "[sources.prod]\nprimary_conninfo = \"host=x user=u\"\npassfile = \"rel\"";
        let err = crate::config::Config::parse(text).unwrap_err().to_string();
        assert!(err.contains("absolute"), "{err}");
        let text = "[sources.prod]\nprimary_conninfo = \"host=x user=u\"\nrefresh_schedule = \"daily 03:00\"";
        let c = crate::config::Config::parse(text).unwrap();
        let name = SourceName::parse("prod").unwrap();
        assert_eq!(c.sources[&name].max_lag, Duration::from_secs(300));
    }
}
