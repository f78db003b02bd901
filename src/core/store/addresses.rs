//! Allow-listed client addresses per instance, the OAuth refresh tokens
//! that keep them, and the ports the packet filter opens.

use rusqlite::params;

use super::{format_ts, now, Result, Store};
use crate::core::model::*;

impl Store {
    pub fn record_address(&self, instance_id: InstanceId, address: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO whitelisted_addresses (instance_id, address, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            params![instance_id, address, format_ts(now())],
        )?;
        Ok(())
    }

    pub fn addresses(&self, instance_id: InstanceId) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT address FROM whitelisted_addresses WHERE instance_id = ?1 ORDER BY address",
        )?;
        let rows = stmt.query_map([instance_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn delete_address(&self, instance_id: InstanceId, address: &str) -> Result<bool> {
        let n = self.conn().execute(
            "DELETE FROM whitelisted_addresses WHERE instance_id = ?1 AND address = ?2",
            params![instance_id, address],
        )?;
        Ok(n == 1)
    }

    pub fn set_instance_oauth_token(&self, id: InstanceId, token: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE instances SET oauth_refresh_token = ?1 WHERE id = ?2",
            params![token, id],
        )?;
        Ok(())
    }

    /// (instance id, refresh token) of instances created through OAuth.
    pub fn instance_oauth_tokens(&self) -> Result<Vec<(InstanceId, String)>> {
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
}
