//! Metadata in SQLite: images, instances, users, SSH keys, API tokens and
//! allow-listed addresses.
//!
//! The store only records facts; it decides nothing. WAL mode, foreign keys
//! on, and versioned migrations applied at open. Every timestamp is UTC and
//! written as RFC 3339 with a `Z`.

mod schema;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, Row};
use time::OffsetDateTime;

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

/// Image lifecycle states, as DESIGN.md names them. `destroying` is
/// stored as a flag beside the state it interrupted (so a restart can
/// finish the destroy); it wins over every other state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageState {
    Uploading,
    Finalising,
    Ready,
    Failed,
    Destroying,
}

impl ImageState {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageState::Uploading => "uploading",
            ImageState::Finalising => "finalising",
            ImageState::Ready => "ready",
            ImageState::Failed => "failed",
            ImageState::Destroying => "destroying",
        }
    }
    fn parse(s: &str) -> ImageState {
        match s {
            "uploading" => ImageState::Uploading,
            "finalising" => ImageState::Finalising,
            "ready" => ImageState::Ready,
            _ => ImageState::Failed,
        }
    }
}

/// Instance lifecycle states. `destroying` records the intent to destroy,
/// so a restart can finish the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    Creating,
    Running,
    Failed,
    Destroying,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Creating => "creating",
            InstanceState::Running => "running",
            InstanceState::Failed => "failed",
            InstanceState::Destroying => "destroying",
        }
    }
    fn parse(s: &str) -> InstanceState {
        match s {
            "creating" => InstanceState::Creating,
            "running" => InstanceState::Running,
            "destroying" => InstanceState::Destroying,
            _ => InstanceState::Failed,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Image {
    pub id: i64,
    pub state: ImageState,
    pub failure_reason: Option<String>,
    pub backed_up_at: Option<OffsetDateTime>,
    pub anonymisation_script: Option<String>,
    pub pg_major: Option<u32>,
    pub size_bytes: u64,
    /// An upload is streaming into the image right now.
    pub upload_active: bool,
    pub created_by: Option<i64>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub id: i64,
    pub image_id: i64,
    pub owner_id: i64,
    pub owner_name: String,
    pub state: InstanceState,
    pub failure_reason: Option<String>,
    pub port: u16,
    pub pid: Option<i32>,
    /// When the cleaner destroys it (None: never).
    pub expires_at: Option<OffsetDateTime>,
    /// Last time the cleaner saw a client connected.
    pub last_active_at: Option<OffsetDateTime>,
    /// Waiting in the warm pool (owned by the pool's system user).
    pub pooled: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// PEM material a client needs to reach an instance.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub ca_certificate: String,
    pub client_certificate: String,
    pub client_key: String,
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub email: Option<String>,
    pub is_admin: bool,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub struct SshKey {
    pub id: i64,
    pub user_id: i64,
    pub user_name: String,
    pub fingerprint: String,
    pub public_key: String,
    pub created_at: OffsetDateTime,
}

/// The metadata database. Cheap to share: one connection behind a mutex;
/// every statement is short.
pub struct Store {
    conn: Mutex<Connection>,
}

pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub fn format_ts(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
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

const IMAGE_COLS: &str = "id, state, failure_reason, backed_up_at, anonymisation_script, pg_major, size_bytes, upload_active, created_by, created_at, updated_at, destroying";
const INSTANCE_COLS: &str = "i.id, i.image_id, i.owner_id, u.name AS owner_name, i.state, i.failure_reason, i.port, i.pid, i.expires_at, i.last_active_at, i.pooled, i.created_at, i.updated_at";

fn image_row(row: &Row) -> rusqlite::Result<Image> {
    Ok(Image {
        id: row.get("id")?,
        state: if row.get::<_, bool>("destroying")? {
            ImageState::Destroying
        } else {
            ImageState::parse(&row.get::<_, String>("state")?)
        },
        failure_reason: row.get("failure_reason")?,
        backed_up_at: opt_ts_col(row, "backed_up_at")?,
        anonymisation_script: row.get("anonymisation_script")?,
        pg_major: row.get("pg_major")?,
        size_bytes: row.get::<_, i64>("size_bytes")?.max(0) as u64,
        upload_active: row.get("upload_active")?,
        created_by: row.get("created_by")?,
        created_at: ts_col(row, "created_at")?,
        updated_at: ts_col(row, "updated_at")?,
    })
}

/// A row of `SELECT {INSTANCE_COLS}`, by position (listings read
/// hundreds of rows; looking columns up by name costs more than reading
/// them).
fn instance_row(row: &Row) -> rusqlite::Result<Instance> {
    let ts =
        |i: usize| -> rusqlite::Result<OffsetDateTime> { Ok(parse_ts(row.get_ref(i)?.as_str()?)) };
    let opt_ts = |i: usize| -> rusqlite::Result<Option<OffsetDateTime>> {
        Ok(row.get_ref(i)?.as_str_or_null()?.map(parse_ts))
    };
    Ok(Instance {
        id: row.get(0)?,
        image_id: row.get(1)?,
        owner_id: row.get(2)?,
        owner_name: row.get(3)?,
        state: InstanceState::parse(row.get_ref(4)?.as_str()?),
        failure_reason: row.get(5)?,
        port: row.get(6)?,
        pid: row.get(7)?,
        expires_at: opt_ts(8)?,
        last_active_at: opt_ts(9)?,
        pooled: row.get(10)?,
        created_at: ts(11)?,
        updated_at: ts(12)?,
    })
}

fn user_row(row: &Row) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get("id")?,
        name: row.get("name")?,
        email: row.get("email")?,
        is_admin: row.get("is_admin")?,
        created_at: ts_col(row, "created_at")?,
    })
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

    fn conn(&self) -> MutexGuard<'_, Connection> {
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

    // ----- images -----

    pub fn insert_image(
        &self,
        backed_up_at: Option<OffsetDateTime>,
        script: Option<&str>,
        created_by: Option<i64>,
    ) -> Result<Image> {
        let conn = self.conn();
        let ts = format_ts(now());
        conn.execute(
            "INSERT INTO images (state, backed_up_at, anonymisation_script, created_by, created_at, updated_at) VALUES ('uploading', ?1, ?2, ?3, ?4, ?4)",
            params![backed_up_at.map(format_ts), script, created_by, ts],
        )?;
        let id = conn.last_insert_rowid();
        drop(conn);
        self.image(id)?
            .ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
    }

    pub fn image(&self, id: i64) -> Result<Option<Image>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {IMAGE_COLS} FROM images WHERE id = ?1"),
                [id],
                image_row,
            )
            .optional()?)
    }

    pub fn images(&self) -> Result<Vec<Image>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {IMAGE_COLS} FROM images ORDER BY id"))?;
        let rows = stmt.query_map([], image_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Move an image from one state to another; false when it was not in
    /// `from` (someone else got there first).
    pub fn transition_image(&self, id: i64, from: ImageState, to: ImageState) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE images SET state = ?1, failure_reason = NULL, updated_at = ?2 WHERE id = ?3 AND state = ?4 AND destroying = 0",
            params![to.as_str(), format_ts(now()), id, from.as_str()],
        )?;
        Ok(n == 1)
    }

    pub fn fail_image(&self, id: i64, reason: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE images SET state = 'failed', failure_reason = ?1, upload_active = 0, updated_at = ?2 WHERE id = ?3",
            params![reason, format_ts(now()), id],
        )?;
        Ok(())
    }

    pub fn set_image_ready(&self, id: i64, pg_major: u32, size_bytes: u64) -> Result<()> {
        self.conn().execute(
            "UPDATE images SET state = 'ready', failure_reason = NULL, pg_major = ?1, size_bytes = ?2, updated_at = ?3 WHERE id = ?4",
            params![pg_major, size_bytes as i64, format_ts(now()), id],
        )?;
        Ok(())
    }

    /// Claim an uploading image for a new upload stream; false when it is
    /// not `uploading`.
    pub fn begin_upload(&self, id: i64) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE images SET upload_active = upload_active + 1, updated_at = ?1 WHERE id = ?2 AND state = 'uploading' AND destroying = 0",
            params![format_ts(now()), id],
        )?;
        Ok(n == 1)
    }

    pub fn end_upload(&self, id: i64, bytes: u64) -> Result<()> {
        self.conn().execute(
            "UPDATE images SET upload_active = MAX(upload_active - 1, 0), size_bytes = size_bytes + ?1, updated_at = ?2 WHERE id = ?3",
            params![bytes as i64, format_ts(now()), id],
        )?;
        Ok(())
    }

    /// Back to `uploading` with nothing uploaded.
    pub fn reset_upload(&self, id: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE images SET state = 'uploading', failure_reason = NULL, size_bytes = 0, upload_active = 0, pg_major = NULL, updated_at = ?1 WHERE id = ?2",
            params![format_ts(now()), id],
        )?;
        Ok(())
    }

    /// Mark an image `destroying` for good; false when it is being
    /// finalised (or gone).
    pub fn mark_image_destroying(&self, id: i64) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE images SET destroying = 1, updated_at = ?1 WHERE id = ?2 AND state <> 'finalising'",
            params![format_ts(now()), id],
        )?;
        Ok(n == 1)
    }

    pub fn delete_image(&self, id: i64) -> Result<()> {
        self.conn()
            .execute("DELETE FROM images WHERE id = ?1", [id])?;
        Ok(())
    }

    // ----- instances -----

    /// Record the intent to create an instance: pick the lowest port in
    /// `[min, max)` that no row holds and `port_free` accepts, and insert a
    /// `creating` row holding it, atomically; refused when `max_total` rows
    /// exist already. `pooled`: a warm instance for the pool (the only way
    /// a row gets the flag).
    #[allow(clippy::too_many_arguments)]
    pub fn insert_instance(
        &self,
        image_id: i64,
        owner_id: i64,
        pooled: bool,
        min_port: u16,
        max_port: u16,
        max_total: Option<u32>,
        port_free: impl Fn(u16) -> bool,
    ) -> Result<Instance> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let used: std::collections::HashSet<u16> = {
            let mut stmt = tx.prepare("SELECT port FROM instances")?;
            let rows = stmt.query_map([], |r| r.get::<_, u16>(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        if let Some(max) = max_total {
            if used.len() >= max as usize {
                return Err(StoreError::TooManyInstances {
                    count: used.len(),
                    max,
                });
            }
        }
        let port = (min_port..max_port)
            .find(|p| !used.contains(p) && port_free(*p))
            .ok_or(StoreError::NoFreePort)?;
        let ts = format_ts(now());
        tx.execute(
            "INSERT INTO instances (image_id, owner_id, pooled, state, port, created_at, updated_at) VALUES (?1, ?2, ?3, 'creating', ?4, ?5, ?5)",
            params![image_id, owner_id, pooled, port, ts],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        drop(conn);
        self.instance(id)?
            .ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
    }

    /// Hand a running warm instance of `image_id` to `owner_id`, in one
    /// statement so two callers never get the same one: it leaves the pool
    /// (for good), gets its owner, lifetime, `last_active_at` and OAuth
    /// token, and its `created_at` becomes now (when its owner got it).
    /// Any allow-listed address is dropped in the same transaction. `None`
    /// when the pool of that image is empty.
    pub fn claim_pooled_instance(
        &self,
        image_id: i64,
        owner_id: i64,
        expires_at: Option<OffsetDateTime>,
        oauth_refresh_token: Option<&str>,
    ) -> Result<Option<i64>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let ts = format_ts(now());
        let id: Option<i64> = tx
            .query_row(
                "UPDATE instances SET owner_id = ?1, pooled = 0, expires_at = ?2, last_active_at = ?3, \
                 oauth_refresh_token = ?4, created_at = ?3, updated_at = ?3 \
                 WHERE id = (SELECT id FROM instances WHERE image_id = ?5 AND pooled = 1 AND state = 'running' ORDER BY id LIMIT 1) \
                 RETURNING id",
                params![owner_id, expires_at.map(format_ts), ts, oauth_refresh_token, image_id],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = id {
            tx.execute(
                "DELETE FROM whitelisted_addresses WHERE instance_id = ?1",
                [id],
            )?;
        }
        tx.commit()?;
        Ok(id)
    }

    /// Take a warm instance out of the pool to destroy it: it becomes
    /// `destroying` only if it is still pooled and not being created or
    /// destroyed already, atomically with respect to a handover. False when
    /// it was handed over (or is gone) meanwhile.
    pub fn retire_pooled_instance(&self, id: i64) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE instances SET state = 'destroying', updated_at = ?1 WHERE id = ?2 AND pooled = 1 AND state IN ('running', 'failed')",
            params![format_ts(now()), id],
        )?;
        Ok(n == 1)
    }

    /// Running warm instances of one image (or of all images).
    pub fn warm_count(&self, image_id: Option<i64>) -> Result<usize> {
        let n: i64 = self.conn().query_row(
            "SELECT count(*) FROM instances WHERE pooled = 1 AND state = 'running' AND (?1 IS NULL OR image_id = ?1)",
            [image_id],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as usize)
    }

    pub fn instance(&self, id: i64) -> Result<Option<Instance>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {INSTANCE_COLS} FROM instances i JOIN users u ON u.id = i.owner_id WHERE i.id = ?1"),
                [id],
                instance_row,
            )
            .optional()?)
    }

    /// Instances, optionally only one owner's or one image's.
    pub fn instances(&self, owner: Option<i64>, image: Option<i64>) -> Result<Vec<Instance>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {INSTANCE_COLS} FROM instances i JOIN users u ON u.id = i.owner_id \
             WHERE (?1 IS NULL OR i.owner_id = ?1) AND (?2 IS NULL OR i.image_id = ?2) ORDER BY i.id"
        ))?;
        let rows = stmt.query_map(params![owner, image], instance_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn set_instance_credentials(&self, id: i64, creds: &Credentials) -> Result<()> {
        self.conn().execute(
            "UPDATE instances SET ca_certificate = ?1, client_certificate = ?2, client_key = ?3, updated_at = ?4 WHERE id = ?5",
            params![creds.ca_certificate, creds.client_certificate, creds.client_key, format_ts(now()), id],
        )?;
        Ok(())
    }

    pub fn instance_credentials(&self, id: i64) -> Result<Option<Credentials>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT ca_certificate, client_certificate, client_key FROM instances WHERE id = ?1 AND ca_certificate IS NOT NULL",
                [id],
                |r| {
                    Ok(Credentials {
                        ca_certificate: r.get(0)?,
                        client_certificate: r.get(1)?,
                        client_key: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn set_instance_state(
        &self,
        id: i64,
        state: InstanceState,
        reason: Option<&str>,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE instances SET state = ?1, failure_reason = ?2, updated_at = ?3 WHERE id = ?4",
            params![state.as_str(), reason, format_ts(now()), id],
        )?;
        Ok(())
    }

    /// What the supervisor found after (re)starting or adopting a
    /// postmaster: `None` — it serves its clients (`running`, with `pid`);
    /// `Some(reason)` — it cannot (`failed` with the reason). Only an
    /// instance that is `running` or `failed` changes: one being created
    /// or destroyed is someone else's.
    pub fn set_instance_serving(
        &self,
        id: i64,
        pid: Option<i32>,
        not_serving: Option<&str>,
    ) -> Result<()> {
        let state = match not_serving {
            None => InstanceState::Running,
            Some(_) => InstanceState::Failed,
        };
        self.conn().execute(
            "UPDATE instances SET state = ?1, failure_reason = ?2, pid = ?3, updated_at = ?4 WHERE id = ?5 AND state IN ('running', 'failed')",
            params![state.as_str(), not_serving, pid, format_ts(now()), id],
        )?;
        Ok(())
    }

    pub fn set_instance_pid(&self, id: i64, pid: Option<i32>) -> Result<()> {
        self.conn().execute(
            "UPDATE instances SET pid = ?1 WHERE id = ?2",
            params![pid, id],
        )?;
        Ok(())
    }

    pub fn set_instance_expiry(&self, id: i64, expires_at: Option<OffsetDateTime>) -> Result<()> {
        self.conn().execute(
            "UPDATE instances SET expires_at = ?1, updated_at = ?2 WHERE id = ?3",
            params![expires_at.map(format_ts), format_ts(now()), id],
        )?;
        Ok(())
    }

    pub fn touch_instance(&self, id: i64, at: OffsetDateTime) -> Result<()> {
        self.conn().execute(
            "UPDATE instances SET last_active_at = ?1 WHERE id = ?2",
            params![format_ts(at), id],
        )?;
        Ok(())
    }

    /// Users with some way in: a key, an API token or an e-mail (OAuth).
    pub fn users_with_access(&self) -> Result<std::collections::HashSet<i64>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id FROM users u WHERE u.email IS NOT NULL              OR EXISTS (SELECT 1 FROM ssh_keys k WHERE k.user_id = u.id)              OR EXISTS (SELECT 1 FROM api_tokens t WHERE t.user_id = u.id)",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn delete_instance(&self, id: i64) -> Result<()> {
        self.conn()
            .execute("DELETE FROM instances WHERE id = ?1", [id])?;
        Ok(())
    }

    pub fn record_address(&self, instance_id: i64, address: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO whitelisted_addresses (instance_id, address, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            params![instance_id, address, format_ts(now())],
        )?;
        Ok(())
    }

    pub fn addresses(&self, instance_id: i64) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT address FROM whitelisted_addresses WHERE instance_id = ?1 ORDER BY address",
        )?;
        let rows = stmt.query_map([instance_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn delete_address(&self, instance_id: i64, address: &str) -> Result<bool> {
        let n = self.conn().execute(
            "DELETE FROM whitelisted_addresses WHERE instance_id = ?1 AND address = ?2",
            params![instance_id, address],
        )?;
        Ok(n == 1)
    }

    pub fn set_instance_oauth_token(&self, id: i64, token: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE instances SET oauth_refresh_token = ?1 WHERE id = ?2",
            params![token, id],
        )?;
        Ok(())
    }

    /// (instance id, refresh token) of instances created through OAuth.
    pub fn instance_oauth_tokens(&self) -> Result<Vec<(i64, String)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, oauth_refresh_token FROM instances WHERE oauth_refresh_token IS NOT NULL ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every (instance port, allowed address) pair.
    pub fn allowed_ports(&self) -> Result<Vec<(u16, String)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT i.port, w.address FROM whitelisted_addresses w JOIN instances i ON i.id = w.instance_id ORDER BY i.port, w.address",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, u16>(0)?, r.get::<_, String>(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // ----- users, keys, tokens -----

    pub fn insert_user(&self, name: &str, email: Option<&str>, is_admin: bool) -> Result<User> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO users (name, email, is_admin, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![name, email, is_admin, format_ts(now())],
        )?;
        let id = conn.last_insert_rowid();
        drop(conn);
        self.user_by_id(id)?
            .ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
    }

    pub fn user_by_id(&self, id: i64) -> Result<Option<User>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, name, email, is_admin, created_at FROM users WHERE id = ?1",
                [id],
                user_row,
            )
            .optional()?)
    }

    pub fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, name, email, is_admin, created_at FROM users WHERE name = ?1",
                [name],
                user_row,
            )
            .optional()?)
    }

    pub fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, name, email, is_admin, created_at FROM users WHERE email = ?1 COLLATE NOCASE",
                [email],
                user_row,
            )
            .optional()?)
    }

    pub fn users(&self) -> Result<Vec<User>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT id, name, email, is_admin, created_at FROM users ORDER BY name")?;
        let rows = stmt.query_map([], user_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn set_user_admin(&self, id: i64, is_admin: bool) -> Result<()> {
        self.conn().execute(
            "UPDATE users SET is_admin = ?1 WHERE id = ?2",
            params![is_admin, id],
        )?;
        Ok(())
    }

    pub fn delete_user(&self, id: i64) -> Result<()> {
        self.conn()
            .execute("DELETE FROM users WHERE id = ?1", [id])?;
        Ok(())
    }

    pub fn insert_key(&self, user_id: i64, fingerprint: &str, public_key: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO ssh_keys (user_id, fingerprint, public_key, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![user_id, fingerprint, public_key, format_ts(now())],
        )?;
        Ok(())
    }

    pub fn key_by_fingerprint(&self, fingerprint: &str) -> Result<Option<SshKey>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT k.id, k.user_id, u.name, k.fingerprint, k.public_key, k.created_at FROM ssh_keys k JOIN users u ON u.id = k.user_id WHERE k.fingerprint = ?1",
                [fingerprint],
                key_row,
            )
            .optional()?)
    }

    pub fn keys(&self, user_id: Option<i64>) -> Result<Vec<SshKey>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT k.id, k.user_id, u.name, k.fingerprint, k.public_key, k.created_at FROM ssh_keys k JOIN users u ON u.id = k.user_id WHERE (?1 IS NULL OR k.user_id = ?1) ORDER BY u.name, k.id",
        )?;
        let rows = stmt.query_map([user_id], key_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn delete_key(&self, fingerprint: &str) -> Result<bool> {
        let n = self
            .conn()
            .execute("DELETE FROM ssh_keys WHERE fingerprint = ?1", [fingerprint])?;
        Ok(n == 1)
    }

    pub fn insert_token(&self, user_id: i64, token_hash: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO api_tokens (user_id, token_hash, created_at) VALUES (?1, ?2, ?3)",
            params![user_id, token_hash, format_ts(now())],
        )?;
        Ok(())
    }

    pub fn user_by_token_hash(&self, token_hash: &str) -> Result<Option<User>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT u.id, u.name, u.email, u.is_admin, u.created_at FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = ?1",
                [token_hash],
                user_row,
            )
            .optional()?)
    }

    /// `PRAGMA integrity_check`, for `doctor`.
    pub fn integrity_check(&self) -> Result<String> {
        Ok(self
            .conn()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

fn key_row(row: &Row) -> rusqlite::Result<SshKey> {
    Ok(SshKey {
        id: row.get(0)?,
        user_id: row.get(1)?,
        user_name: row.get(2)?,
        fingerprint: row.get(3)?,
        public_key: row.get(4)?,
        created_at: parse_ts(&row.get::<_, String>(5)?),
    })
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
        let img = s.insert_image(None, Some("select 1"), Some(u.id)).unwrap();
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
        let img = s.insert_image(None, None, None).unwrap();
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
        let img = s.insert_image(None, None, None).unwrap();
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
        let other = s.insert_image(None, None, None).unwrap();
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
        let img = s.insert_image(None, None, None).unwrap();
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
