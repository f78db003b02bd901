//! The `instances` table: ports, state, credentials, lifetimes and the
//! warm pool's claim.

use rusqlite::{params, OptionalExtension, Row};
use time::OffsetDateTime;

use super::{format_ts, now, parse_ts, Result, Store, StoreError};
use crate::core::model::*;

const INSTANCE_COLS: &str = "i.id, i.image_id, i.owner_id, u.name AS owner_name, i.state, i.failure_reason, i.port, i.pid, i.expires_at, i.last_active_at, i.pooled, i.created_at, i.updated_at";

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

impl Store {
    /// Record the intent to create an instance: pick the lowest port in
    /// `[min, max)` that no row holds and `port_free` accepts, and insert a
    /// `creating` row holding it, atomically; refused when `max_total` rows
    /// exist already. `pooled`: a warm instance for the pool (the only way
    /// a row gets the flag).
    #[allow(clippy::too_many_arguments)]
    pub fn insert_instance(
        &self,
        image_id: ImageId,
        owner_id: UserId,
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
        self.instance(InstanceId::new(id))?
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
        image_id: ImageId,
        owner_id: UserId,
        expires_at: Option<OffsetDateTime>,
        oauth_refresh_token: Option<&str>,
    ) -> Result<Option<InstanceId>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let ts = format_ts(now());
        let id: Option<InstanceId> = tx
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
    pub fn retire_pooled_instance(&self, id: InstanceId) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE instances SET state = 'destroying', updated_at = ?1 WHERE id = ?2 AND pooled = 1 AND state IN ('running', 'failed')",
            params![format_ts(now()), id],
        )?;
        Ok(n == 1)
    }

    /// Running warm instances of one image (or of all images).
    pub fn warm_count(&self, image_id: Option<ImageId>) -> Result<usize> {
        let n: i64 = self.conn().query_row(
            "SELECT count(*) FROM instances WHERE pooled = 1 AND state = 'running' AND (?1 IS NULL OR image_id = ?1)",
            [image_id],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as usize)
    }

    pub fn instance(&self, id: InstanceId) -> Result<Option<Instance>> {
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
    pub fn instances(
        &self,
        owner: Option<UserId>,
        image: Option<ImageId>,
    ) -> Result<Vec<Instance>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {INSTANCE_COLS} FROM instances i JOIN users u ON u.id = i.owner_id \
             WHERE (?1 IS NULL OR i.owner_id = ?1) AND (?2 IS NULL OR i.image_id = ?2) ORDER BY i.id"
        ))?;
        let rows = stmt.query_map(params![owner, image], instance_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn set_instance_credentials(&self, id: InstanceId, creds: &Credentials) -> Result<()> {
        self.conn().execute(
            "UPDATE instances SET ca_certificate = ?1, client_certificate = ?2, client_key = ?3, updated_at = ?4 WHERE id = ?5",
            params![creds.ca_certificate, creds.client_certificate, creds.client_key.expose(), format_ts(now()), id],
        )?;
        Ok(())
    }

    pub fn instance_credentials(&self, id: InstanceId) -> Result<Option<Credentials>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT ca_certificate, client_certificate, client_key FROM instances WHERE id = ?1 AND ca_certificate IS NOT NULL",
                [id],
                |r| {
                    Ok(Credentials {
                        ca_certificate: r.get(0)?,
                        client_certificate: r.get(1)?,
                        client_key: crate::secret::Secret::new(r.get(2)?),
                    })
                },
            )
            .optional()?)
    }

    pub fn set_instance_state(
        &self,
        id: InstanceId,
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
        id: InstanceId,
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

    pub fn set_instance_pid(&self, id: InstanceId, pid: Option<i32>) -> Result<()> {
        self.conn().execute(
            "UPDATE instances SET pid = ?1 WHERE id = ?2",
            params![pid, id],
        )?;
        Ok(())
    }

    pub fn set_instance_expiry(
        &self,
        id: InstanceId,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE instances SET expires_at = ?1, updated_at = ?2 WHERE id = ?3",
            params![expires_at.map(format_ts), format_ts(now()), id],
        )?;
        Ok(())
    }

    pub fn touch_instance(&self, id: InstanceId, at: OffsetDateTime) -> Result<()> {
        self.conn().execute(
            "UPDATE instances SET last_active_at = ?1 WHERE id = ?2",
            params![format_ts(at), id],
        )?;
        Ok(())
    }

    /// Users with some way in: a key, an API token or an e-mail (OAuth).
    pub fn users_with_access(&self) -> Result<std::collections::HashSet<UserId>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id FROM users u WHERE u.email IS NOT NULL              OR EXISTS (SELECT 1 FROM ssh_keys k WHERE k.user_id = u.id)              OR EXISTS (SELECT 1 FROM api_tokens t WHERE t.user_id = u.id)",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, UserId>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn delete_instance(&self, id: InstanceId) -> Result<()> {
        self.conn()
            .execute("DELETE FROM instances WHERE id = ?1", [id])?;
        Ok(())
    }
}
