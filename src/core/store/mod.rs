//! Metadata in SQLite: images, instances, users, SSH keys, API tokens and
//! allow-listed addresses, one file per entity (`images`, `instances`,
//! `addresses`, `users`); this file opens the database, migrates it and
//! backs it up.
//!
//! The store only records facts; it decides nothing. WAL mode, foreign keys
//! on, and versioned migrations applied at open. Every timestamp is UTC and
//! written as RFC 3339 with a `Z`.

mod addresses;
mod images;
mod instances;
mod schema;
mod tokens;
mod users;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, Row};
use time::OffsetDateTime;

pub use crate::core::model::{
    format_ts, Credentials, Image, ImageState, Instance, InstanceState, SshKey, User,
};
pub use schema::MIGRATIONS;

/// A failed metadata operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("metadata database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("metadata database at {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("metadata database holds schema version {found}, newer than this draupnir ({known}); upgrade draupnir")]
    TooNew { found: i64, known: i64 },
    #[error("recording the anonymisation manifest: {0}")]
    Manifest(#[source] serde_json::Error),
    #[error("no free port left in the instance port range")]
    NoFreePort,
    #[error("{count} instances exist, the most allowed is {max}")]
    TooManyInstances { count: usize, max: u32 },
    #[error("the backup copy failed its integrity check: {0}")]
    BadCopy(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The metadata database. Cheap to share: one connection behind a mutex;
/// every statement is short.
pub struct Store {
    conn: Mutex<Connection>,
}

pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn parse_ts(s: &str) -> OffsetDateTime {
    parse_stored_ts(s)
        .or_else(|| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The exact shape [`format_ts`] writes, `YYYY-MM-DDTHH:MM:SS[.f…]Z`,
/// read without the general RFC 3339 parser (listings read thousands).
fn parse_stored_ts(s: &str) -> Option<OffsetDateTime> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b.get(r)?.iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let (rest, nanos) = match b[19] {
        b'Z' => (&b[19..], 0),
        b'.' => {
            let digits = b[20..].iter().take_while(|c| c.is_ascii_digit()).count();
            if !(1..=9).contains(&digits) {
                return None;
            }
            let frac = num(20..20 + digits)?;
            (&b[20 + digits..], frac * 10u32.pow(9 - digits as u32))
        }
        _ => return None,
    };
    if rest != b"Z" {
        return None;
    }
    let month = time::Month::try_from(u8::try_from(num(5..7)?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(num(0..4)? as i32, month, num(8..10)? as u8).ok()?;
    let t = time::Time::from_hms_nano(
        num(11..13)? as u8,
        num(14..16)? as u8,
        num(17..19)? as u8,
        nanos,
    )
    .ok()?;
    Some(time::PrimitiveDateTime::new(date, t).assume_utc())
}

fn ts_col(row: &Row, idx: &str) -> rusqlite::Result<OffsetDateTime> {
    Ok(parse_ts(&row.get::<_, String>(idx)?))
}

fn opt_ts_col(row: &Row, idx: &str) -> rusqlite::Result<Option<OffsetDateTime>> {
    Ok(row.get::<_, Option<String>>(idx)?.map(|s| parse_ts(&s)))
}

impl Store {
    /// Open (creating if needed) the database and apply pending migrations.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Store::init(conn)
    }

    /// Open an existing database read-only, without migrating it (for
    /// `doctor`, which must not change anything).
    pub fn open_read_only(path: &Path) -> Result<Store> {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
            | rusqlite::OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(path, flags).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    /// Write a consistent copy of the database at `path` into `dest` with
    /// SQLite's online backup API, while other connections (the running
    /// daemon) keep reading and writing. The copy is made in one step (one
    /// read transaction, so it is a single point in time), written to a
    /// temporary file beside `dest`, checked with `PRAGMA integrity_check`
    /// and renamed into place.
    pub fn backup(path: &Path, dest: &Path) -> Result<()> {
        let src = Store::open_read_only(path)?;
        let tmp = dest.with_file_name(format!(
            ".{}.partial",
            dest.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "backup".into())
        ));
        let _ = std::fs::remove_file(&tmp);
        let result = (|| -> Result<()> {
            let mut out = Connection::open(&tmp).map_err(|source| StoreError::Open {
                path: tmp.display().to_string(),
                source,
            })?;
            {
                let conn = src.conn();
                let backup = rusqlite::backup::Backup::new(&conn, &mut out)?;
                // -1: every page in one step, under one read transaction.
                loop {
                    match backup.step(-1)? {
                        rusqlite::backup::StepResult::Done => break,
                        _ => std::thread::sleep(std::time::Duration::from_millis(20)),
                    }
                }
            }
            // One self-contained file: no -wal beside it.
            out.pragma_update(None, "journal_mode", "DELETE")?;
            let check: String = out.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
            if check != "ok" {
                return Err(StoreError::BadCopy(check));
            }
            Ok(())
        })();
        match result {
            Ok(()) => std::fs::rename(&tmp, dest).map_err(|e| StoreError::Write {
                path: dest.display().to_string(),
                source: e,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// An in-memory database, for unit tests.
    pub fn open_in_memory() -> Result<Store> {
        Store::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Store> {
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let store = Store {
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Changes whenever any row is inserted, updated or deleted (SQLite's
    /// `total_changes` of the one connection every write goes through):
    /// anything read at one version is still exact at the same version.
    pub fn version(&self) -> u64 {
        self.conn().total_changes()
    }

    pub(super) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (statements are atomic), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.conn();
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
        )?;
        let current: i64 = conn.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )?;
        let known = MIGRATIONS.len() as i64;
        if current > known {
            return Err(StoreError::TooNew {
                found: current,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                params![i as i64 + 1, format_ts(now())],
            )?;
            tx.commit()?;
        }
        Ok(())
    }

    /// The schema version now in force.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self.conn().query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )?)
    }

    /// `PRAGMA integrity_check`, for `doctor`.
    pub fn integrity_check(&self) -> Result<String> {
        Ok(self
            .conn()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_timestamps_read_back_exactly() {
        let rfc = |s: &str| {
            OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
        };
        for s in [
            "2026-11-22T23:30:01Z",
            "2026-11-22T23:30:01.5Z",
            "2026-11-22T23:30:01.123456789Z",
            "2024-02-29T00:00:00.000001Z",
            "1970-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_stored_ts(s), Some(rfc(s)), "{s}");
            assert_eq!(parse_ts(&format_ts(rfc(s))), rfc(s), "{s}");
        }
        let t = now();
        assert_eq!(parse_ts(&format_ts(t)), t);
        // Anything else goes through the general parser (or is the epoch).
        for s in [
            "2026-11-22T23:30:01+01:00",
            "2026-11-22t23:30:01z",
            "2026-13-22T23:30:01Z",
            "2026-11-22T23:30:01.Z",
            "2026-11-22T23:30:01.1234567890Z",
            "2026-11-22T23:30:01Zx",
            "2026-02-30T00:00:00Z",
            "",
            "garbage",
        ] {
            assert_eq!(parse_stored_ts(s), None, "{s}");
        }
        assert_eq!(
            parse_ts("2026-11-22T23:30:01+01:00"),
            rfc("2026-11-22T22:30:01Z")
        );
        assert_eq!(parse_ts("garbage"), OffsetDateTime::UNIX_EPOCH);
    }

    #[test]
    fn migrations_apply_once_and_ports_are_unique() {
        let s = Store::open_in_memory().unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        s.migrate().unwrap();
        let u = s.insert_user("alice", None, true).unwrap();
        let img = s
            .insert_image(
                &crate::core::NewImage::with_script(Some("select 1")),
                Some(u.id),
            )
            .unwrap();
        assert_eq!(img.state, ImageState::Uploading);
        let a = s
            .insert_instance(img.id, u.id, false, 7000, 7003, None, |_| true)
            .unwrap();
        let b = s
            .insert_instance(img.id, u.id, false, 7000, 7003, Some(3), |p| p != 7001)
            .unwrap();
        assert_eq!(a.port, 7000);
        assert_eq!(b.port, 7002);
        assert!(matches!(
            s.insert_instance(img.id, u.id, false, 7000, 7003, Some(3), |p| p != 7001),
            Err(StoreError::NoFreePort)
        ));
        assert!(matches!(
            s.insert_instance(img.id, u.id, false, 7000, 7010, Some(2), |_| true),
            Err(StoreError::TooManyInstances { count: 2, max: 2 })
        ));
        s.record_address(a.id, "192.0.2.1").unwrap();
        s.record_address(a.id, "192.0.2.1").unwrap();
        assert_eq!(s.addresses(a.id).unwrap(), vec!["192.0.2.1".to_string()]);
        s.delete_instance(a.id).unwrap();
        assert!(s.addresses(a.id).unwrap().is_empty());
    }

    #[test]
    fn warm_instances_are_claimed_once_and_never_return() {
        let s = Store::open_in_memory().unwrap();
        let pool = s.insert_user("warm-pool", None, false).unwrap();
        let bob = s.insert_user("bob", None, false).unwrap();
        let img = s
            .insert_image(&crate::core::NewImage::default(), None)
            .unwrap();
        let a = s
            .insert_instance(img.id, pool.id, true, 7000, 7010, None, |_| true)
            .unwrap();
        let b = s
            .insert_instance(img.id, pool.id, true, 7000, 7010, None, |_| true)
            .unwrap();
        assert!(a.pooled && b.pooled);
        // Still `creating`: nothing to hand over, nothing counted.
        assert_eq!(
            s.claim_pooled_instance(img.id, bob.id, None, None).unwrap(),
            None
        );
        assert_eq!(s.warm_count(Some(img.id)).unwrap(), 0);
        s.set_instance_state(a.id, InstanceState::Running, None)
            .unwrap();
        s.set_instance_state(b.id, InstanceState::Running, None)
            .unwrap();
        s.record_address(a.id, "192.0.2.1").unwrap();
        assert_eq!(s.warm_count(None).unwrap(), 2);
        let until = now() + time::Duration::hours(1);
        let got = s
            .claim_pooled_instance(img.id, bob.id, Some(until), Some("rt"))
            .unwrap();
        assert_eq!(got, Some(a.id), "the oldest first");
        let a2 = s.instance(a.id).unwrap().unwrap();
        assert!(!a2.pooled);
        assert_eq!(a2.owner_id, bob.id);
        assert!(a2.expires_at.is_some() && a2.last_active_at.is_some());
        assert!(s.addresses(a.id).unwrap().is_empty());
        assert_eq!(
            s.instance_oauth_tokens().unwrap(),
            vec![(a.id, "rt".into())]
        );
        // A handed-over instance cannot be retired (or claimed) as warm.
        assert!(!s.retire_pooled_instance(a.id).unwrap());
        assert!(s.retire_pooled_instance(b.id).unwrap());
        assert_eq!(
            s.claim_pooled_instance(img.id, bob.id, None, None).unwrap(),
            None
        );
        assert_eq!(s.warm_count(Some(img.id)).unwrap(), 0);
    }

    #[test]
    fn image_transitions_are_guarded() {
        let s = Store::open_in_memory().unwrap();
        let img = s
            .insert_image(&crate::core::NewImage::default(), None)
            .unwrap();
        assert!(s.begin_upload(img.id).unwrap());
        assert!(s
            .transition_image(img.id, ImageState::Uploading, ImageState::Finalising)
            .unwrap());
        assert!(!s
            .transition_image(img.id, ImageState::Uploading, ImageState::Finalising)
            .unwrap());
        assert!(!s.begin_upload(img.id).unwrap());
        // Being finalised: not destroyed under its feet.
        assert!(!s.mark_image_destroying(img.id).unwrap());
        let other = s
            .insert_image(&crate::core::NewImage::default(), None)
            .unwrap();
        assert!(s.mark_image_destroying(other.id).unwrap());
        assert_eq!(
            s.image(other.id).unwrap().unwrap().state,
            ImageState::Destroying
        );
        // A destroying image takes no upload and no finalise.
        assert!(!s.begin_upload(other.id).unwrap());
        assert!(!s
            .transition_image(other.id, ImageState::Uploading, ImageState::Finalising)
            .unwrap());
    }

    #[test]
    fn serving_reports_touch_only_running_or_failed_instances() {
        let s = Store::open_in_memory().unwrap();
        let u = s.insert_user("alice", None, true).unwrap();
        let img = s
            .insert_image(&crate::core::NewImage::default(), None)
            .unwrap();
        let a = s
            .insert_instance(img.id, u.id, false, 7000, 7010, None, |_| true)
            .unwrap();
        // Still being created: untouched.
        s.set_instance_serving(a.id, None, Some("port taken"))
            .unwrap();
        assert_eq!(
            s.instance(a.id).unwrap().unwrap().state,
            InstanceState::Creating
        );
        s.set_instance_state(a.id, InstanceState::Running, None)
            .unwrap();
        s.set_instance_serving(a.id, None, Some("port taken"))
            .unwrap();
        let got = s.instance(a.id).unwrap().unwrap();
        assert_eq!(got.state, InstanceState::Failed);
        assert_eq!(got.failure_reason.as_deref(), Some("port taken"));
        s.set_instance_serving(a.id, Some(42), None).unwrap();
        let got = s.instance(a.id).unwrap().unwrap();
        assert_eq!(
            (got.state, got.pid, got.failure_reason),
            (InstanceState::Running, Some(42), None)
        );
        s.set_instance_state(a.id, InstanceState::Destroying, None)
            .unwrap();
        s.set_instance_serving(a.id, Some(43), None).unwrap();
        assert_eq!(
            s.instance(a.id).unwrap().unwrap().state,
            InstanceState::Destroying
        );
    }
}
