//! The `images` table: an image's state, upload and seal.

use rusqlite::{params, OptionalExtension, Row};

use super::{format_ts, now, opt_ts_col, ts_col, Result, Store, StoreError};
use crate::core::manifest::{Manifest, NewImage};
use crate::core::model::*;

const IMAGE_COLS: &str = "id, state, failure_reason, backed_up_at, anonymisation_script, pg_major, size_bytes, upload_active, created_by, created_at, updated_at, destroying, database, masking_rules, no_anonymisation, anonymisation";

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
        database: row.get("database")?,
        masking_rules: row.get("masking_rules")?,
        no_anonymisation: row.get("no_anonymisation")?,
        // A manifest that does not read (written by a later version):
        // shown as unchecked, never as checked.
        anonymisation: row
            .get::<_, Option<String>>("anonymisation")?
            .map(|j| Box::new(serde_json::from_str(&j).unwrap_or_else(|_| Manifest::legacy()))),
    })
}

impl Store {
    pub fn insert_image(&self, new: &NewImage, created_by: Option<UserId>) -> Result<Image> {
        let conn = self.conn();
        let ts = format_ts(now());
        conn.execute(
            "INSERT INTO images (state, backed_up_at, anonymisation_script, created_by, created_at, updated_at, masking_rules, no_anonymisation) VALUES ('uploading', ?1, ?2, ?3, ?4, ?4, ?5, ?6)",
            params![
                new.backed_up_at.map(format_ts),
                new.script,
                created_by,
                ts,
                new.rules,
                new.no_anonymisation
            ],
        )?;
        let id = conn.last_insert_rowid();
        drop(conn);
        self.image(ImageId::new(id))?
            .ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
    }

    pub fn image(&self, id: ImageId) -> Result<Option<Image>> {
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
    pub fn transition_image(&self, id: ImageId, from: ImageState, to: ImageState) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE images SET state = ?1, failure_reason = NULL, updated_at = ?2 WHERE id = ?3 AND state = ?4 AND destroying = 0",
            params![to.as_str(), format_ts(now()), id, from.as_str()],
        )?;
        Ok(n == 1)
    }

    pub fn fail_image(&self, id: ImageId, reason: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE images SET state = 'failed', failure_reason = ?1, upload_active = 0, updated_at = ?2 WHERE id = ?3",
            params![reason, format_ts(now()), id],
        )?;
        Ok(())
    }

    pub fn set_image_ready(
        &self,
        id: ImageId,
        pg_major: u32,
        size_bytes: u64,
        database: &str,
        manifest: &Manifest,
    ) -> Result<()> {
        let manifest = serde_json::to_string(manifest).map_err(StoreError::Manifest)?;
        self.conn().execute(
            "UPDATE images SET state = 'ready', failure_reason = NULL, pg_major = ?1, size_bytes = ?2, updated_at = ?3, database = ?5, anonymisation = ?6 WHERE id = ?4",
            params![pg_major, size_bytes as i64, format_ts(now()), id, database, manifest],
        )?;
        Ok(())
    }

    /// Claim an uploading image for a new upload stream; false when it is
    /// not `uploading`.
    pub fn begin_upload(&self, id: ImageId) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE images SET upload_active = upload_active + 1, updated_at = ?1 WHERE id = ?2 AND state = 'uploading' AND destroying = 0",
            params![format_ts(now()), id],
        )?;
        Ok(n == 1)
    }

    pub fn end_upload(&self, id: ImageId, bytes: u64) -> Result<()> {
        self.conn().execute(
            "UPDATE images SET upload_active = MAX(upload_active - 1, 0), size_bytes = size_bytes + ?1, updated_at = ?2 WHERE id = ?3",
            params![bytes as i64, format_ts(now()), id],
        )?;
        Ok(())
    }

    /// Back to `uploading` with nothing uploaded.
    pub fn reset_upload(&self, id: ImageId) -> Result<()> {
        self.conn().execute(
            "UPDATE images SET state = 'uploading', failure_reason = NULL, size_bytes = 0, upload_active = 0, pg_major = NULL, updated_at = ?1 WHERE id = ?2",
            params![format_ts(now()), id],
        )?;
        Ok(())
    }

    /// Mark an image `destroying` for good; false when it is being
    /// finalised (or gone).
    pub fn mark_image_destroying(&self, id: ImageId) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE images SET destroying = 1, updated_at = ?1 WHERE id = ?2 AND state <> 'finalising'",
            params![format_ts(now()), id],
        )?;
        Ok(n == 1)
    }

    pub fn delete_image(&self, id: ImageId) -> Result<()> {
        self.conn()
            .execute("DELETE FROM images WHERE id = ?1", [id])?;
        Ok(())
    }
}
