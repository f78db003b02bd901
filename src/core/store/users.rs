//! Users and their SSH keys (API tokens: `tokens.rs`).

use rusqlite::{params, OptionalExtension, Row};

use super::{format_ts, now, parse_ts, ts_col, Result, Store, StoreError};
use crate::core::model::*;

pub(super) fn user_row(row: &Row) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get("id")?,
        name: row.get("name")?,
        email: row.get("email")?,
        is_admin: row.get("is_admin")?,
        created_at: ts_col(row, "created_at")?,
    })
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
impl Store {
    pub fn insert_user(&self, name: &str, email: Option<&str>, is_admin: bool) -> Result<User> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO users (name, email, is_admin, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![name, email, is_admin, format_ts(now())],
        )?;
        let id = conn.last_insert_rowid();
        drop(conn);
        self.user_by_id(UserId::new(id))?
            .ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
    }

    pub fn user_by_id(&self, id: UserId) -> Result<Option<User>> {
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

    pub fn set_user_admin(&self, id: UserId, is_admin: bool) -> Result<()> {
        self.conn().execute(
            "UPDATE users SET is_admin = ?1 WHERE id = ?2",
            params![is_admin, id],
        )?;
        Ok(())
    }

    pub fn delete_user(&self, id: UserId) -> Result<()> {
        self.conn()
            .execute("DELETE FROM users WHERE id = ?1", [id])?;
        Ok(())
    }

    pub fn insert_key(
        &self,
        user_id: UserId,
        fingerprint: &Fingerprint,
        public_key: &str,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO ssh_keys (user_id, fingerprint, public_key, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![user_id, fingerprint, public_key, format_ts(now())],
        )?;
        Ok(())
    }

    pub fn key_by_fingerprint(&self, fingerprint: &Fingerprint) -> Result<Option<SshKey>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT k.id, k.user_id, u.name, k.fingerprint, k.public_key, k.created_at FROM ssh_keys k JOIN users u ON u.id = k.user_id WHERE k.fingerprint = ?1",
                [fingerprint],
                key_row,
            )
            .optional()?)
    }

    pub fn keys(&self, user_id: Option<UserId>) -> Result<Vec<SshKey>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT k.id, k.user_id, u.name, k.fingerprint, k.public_key, k.created_at FROM ssh_keys k JOIN users u ON u.id = k.user_id WHERE (?1 IS NULL OR k.user_id = ?1) ORDER BY u.name, k.id",
        )?;
        let rows = stmt.query_map([user_id], key_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn delete_key(&self, fingerprint: &Fingerprint) -> Result<bool> {
        let n = self
            .conn()
            .execute("DELETE FROM ssh_keys WHERE fingerprint = ?1", [fingerprint])?;
        Ok(n == 1)
    }
}
