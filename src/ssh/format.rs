//! Human output for SSH commands: aligned tables, ages like `3m ago`,
//! sizes like `1.2 GiB`, and the JSON shapes `--json` prints (field names
//! and types match the HTTP API's: ids are strings, except `image_id`,
//! a number as in the API; times are RFC 3339 UTC in whole seconds).

use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::core::DiskUse;
use crate::core::{format_ts, Image, Instance, SshKey, User};

/// `3m ago`, `2h ago`, `5d ago`; `in 4h` for the future.
pub fn age(t: OffsetDateTime) -> String {
    let secs = (OffsetDateTime::now_utc() - t).whole_seconds();
    let (future, s) = (secs < 0, secs.unsigned_abs());
    let span = match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    };
    if future {
        format!("in {span}")
    } else if s < 5 {
        "just now".into()
    } else {
        format!("{span} ago")
    }
}

/// How long until `t`, rounded to the nearest minute (seconds under a
/// minute), in at most two units: `in 3h 59m`, `in 8h`, `in 2d 4h`;
/// `expired` once it is past. `never` is the caller's for no time.
pub fn remaining(t: OffsetDateTime) -> String {
    let ms = (t - OffsetDateTime::now_utc()).whole_milliseconds();
    if ms <= 0 {
        return "expired".into();
    }
    let secs = (ms as u128).div_ceil(1000) as u64;
    if secs < 60 {
        return format!("in {secs}s");
    }
    let mins = (secs + 30) / 60;
    let (d, h, m) = (mins / 1440, mins / 60 % 24, mins % 60);
    let span = match (d, h, m) {
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d {h}h"),
    };
    format!("in {span}")
}

/// `512 B`, `3.4 MiB`, `1.2 GiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A time taken: `850ms`, `7.0s`, `2m 5s`.
pub fn elapsed(d: std::time::Duration) -> String {
    match d.as_millis() {
        ms @ 0..=999 => format!("{ms}ms"),
        ms @ 1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        ms => format!("{}m {}s", ms / 60_000, ms / 1000 % 60),
    }
}

/// A transfer rate: `127.1 MiB/s`.
pub fn rate(bytes: u64, d: std::time::Duration) -> String {
    let secs = d.as_secs_f64().max(0.001);
    format!("{}/s", size((bytes as f64 / secs) as u64))
}

/// Left-aligned columns separated by two spaces; no trailing blanks.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(cell);
                let pad = widths[i] - cell.chars().count() + 2;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// One line, at most `max` characters.
pub fn one_line(s: &str, max: usize) -> String {
    let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        format!(
            "{}…",
            flat.chars().take(max.saturating_sub(1)).collect::<String>()
        )
    }
}

/// A time as the HTTP API writes it: RFC 3339 UTC, whole seconds.
pub fn secs(t: OffsetDateTime) -> String {
    format_ts(t.replace_nanosecond(0).unwrap_or(t))
}

fn ts(t: Option<OffsetDateTime>) -> Value {
    t.map(|t| Value::String(secs(t))).unwrap_or(Value::Null)
}

pub fn image_json(i: &Image) -> Value {
    json!({
        "id": i.id.to_string(),
        "state": i.state.as_str(),
        "ready": i.state == crate::core::ImageState::Ready,
        "upload_finished": i.upload_finished(),
        "failure_reason": i.failure_reason,
        "backed_up_at": ts(i.backed_up_at),
        "postgres_major": i.pg_major,
        "size_bytes": i.size_bytes,
        "created_at": secs(i.created_at),
        "updated_at": secs(i.updated_at),
        "anonymisation": i.manifest(),
    })
}

/// `image ID`'s lines about how it was anonymised.
pub fn manifest_lines(i: &Image) -> String {
    let Some(m) = i.manifest() else {
        return format!("masking   {}\n", i.anonymisation_label());
    };
    let mut text = format!("masking   {} ({})\n", m.status, m.summary);
    if let Some(src) = &m.source {
        text.push_str(&format!(
            "source    {} at {}{}\n",
            src.name,
            src.lsn,
            src.commit_time
                .as_deref()
                .map(|t| format!(" (last commit {t})"))
                .unwrap_or_default()
        ));
    }
    if let Some(h) = &m.rules_sha256 {
        text.push_str(&format!(
            "rules     {} (sha256 {})\n",
            m.rules_from.join(" + "),
            &h[..h.len().min(16)]
        ));
    }
    if m.script {
        text.push_str("script    ran after the rules\n");
    }
    text.push_str(&format!(
        "scan      {}{}{}\n",
        m.scan.result,
        if m.scan.findings.is_empty() {
            String::new()
        } else {
            format!(": {}", m.scan.findings.join("; "))
        },
        match m.scan.sampled_tables.len() {
            0 => String::new(),
            n => format!(
                " (originals searched in a sample of {n} large table(s): {})",
                m.scan.sampled_tables.join(", ")
            ),
        }
    ));
    for t in &m.tables {
        let what = if t.truncated {
            "truncated".to_string()
        } else {
            format!(
                "{} masked, {} kept{}",
                t.masked_columns,
                t.kept_columns,
                t.rows.map(|r| format!(", {r} rows")).unwrap_or_default()
            )
        };
        text.push_str(&format!("  {}: {what}\n", t.table));
    }
    text
}

pub fn instance_json(i: &Instance, hostname: &str) -> Value {
    json!({
        "id": i.id.to_string(),
        "image_id": i.image_id,
        "state": i.state.as_str(),
        "failure_reason": i.failure_reason,
        "hostname": hostname,
        "port": i.port,
        "owner": i.owner_name,
        "pooled": i.pooled,
        "expires_at": ts(i.expires_at),
        "created_at": secs(i.created_at),
        "updated_at": secs(i.updated_at),
    })
}

/// An instance's disk use for `instances`: what it wrote, and of how
/// much when `max_instance_disk` is set; `-` when quotas are off.
pub fn disk_use(d: Option<&DiskUse>) -> String {
    match d {
        None => "-".into(),
        Some(DiskUse {
            used,
            limit: Some(l),
        }) => format!("{} of {}", size(*used), size(*l)),
        Some(DiskUse { used, limit: None }) => size(*used),
    }
}

/// `disk_bytes` and `disk_limit_bytes` (null when unknown or unlimited)
/// on an instance's JSON object.
pub fn add_disk_use(v: &mut Value, d: Option<&DiskUse>) {
    if let Some(obj) = v.as_object_mut() {
        obj.insert("disk_bytes".into(), json!(d.map(|d| d.used)));
        obj.insert("disk_limit_bytes".into(), json!(d.and_then(|d| d.limit)));
    }
}

pub fn user_json(u: &User) -> Value {
    json!({
        "name": u.name,
        "email": u.email,
        "admin": u.is_admin,
        "created_at": secs(u.created_at),
    })
}

pub fn key_json(k: &SshKey) -> Value {
    json!({
        "user": k.user_name,
        "fingerprint": k.fingerprint,
        "type": k.public_key.split_whitespace().next().unwrap_or(""),
        "public_key": k.public_key,
        "created_at": secs(k.created_at),
    })
}

/// Quote a string for POSIX sh: single quotes, with `'` as `'\''`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_tables_quotes() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(1288490189), "1.2 GiB");
        let t = table(
            &["ID", "STATE"],
            &[
                vec!["1".into(), "ready".into()],
                vec!["10".into(), "uploading".into()],
            ],
        );
        assert_eq!(t, "ID  STATE\n1   ready\n10  uploading\n");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(one_line("a\n  b", 10), "a b");
        let past = OffsetDateTime::now_utc() - time::Duration::minutes(3);
        assert_eq!(age(past), "3m ago");
        let now = OffsetDateTime::now_utc();
        // A lifetime of 8h read a few milliseconds later is still 8h.
        let hours = |h| now + time::Duration::hours(h) - time::Duration::milliseconds(40);
        assert_eq!(remaining(hours(8)), "in 8h");
        assert_eq!(remaining(now + time::Duration::minutes(239)), "in 3h 59m");
        assert_eq!(remaining(hours(52)), "in 2d 4h");
        assert_eq!(remaining(now + time::Duration::seconds(20)), "in 20s");
        assert_eq!(remaining(now - time::Duration::seconds(1)), "expired");
    }
}
