//! API tokens: only a SHA-256 hash of each secret is kept, with who holds
//! it, when it was made and when it last authenticated a request.

use rusqlite::{params, OptionalExtension, Row};
use time::OffsetDateTime;

use super::users::user_row;
use super::{format_ts, now, opt_ts_col, ts_col, Result, Store};
use crate::core::model::*;

const TOKEN_COLUMNS: &str =
    "t.id AS token_id, t.user_id, u.name AS user_name, t.created_at AS token_created_at, t.last_used_at";

fn token_row(row: &Row) -> rusqlite::Result<ApiToken> {
    Ok(ApiToken {
        id: row.get("token_id")?,
        user_id: row.get("user_id")?,
        user_name: row.get("user_name")?,
        created_at: ts_col(row, "token_created_at")?,
        last_used_at: opt_ts_col(row, "last_used_at")?,
    })
}

impl Store {
    pub fn insert_token(&self, user_id: UserId, token_hash: &str) -> Result<TokenId> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO api_tokens (user_id, token_hash, created_at) VALUES (?1, ?2, ?3)",
            params![user_id, token_hash, format_ts(now())],
        )?;
        Ok(TokenId::new(conn.last_insert_rowid()))
    }

    /// The token with this hash and the user holding it.
    pub fn token_by_hash(&self, token_hash: &str) -> Result<Option<(ApiToken, User)>> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {TOKEN_COLUMNS}, u.id, u.name, u.email, u.is_admin, u.created_at \
                     FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = ?1"
                ),
                [token_hash],
                |row| Ok((token_row(row)?, user_row(row)?)),
            )
            .optional()?)
    }

    /// Record that a token was used at `at`.
    pub fn touch_token(&self, id: TokenId, at: OffsetDateTime) -> Result<()> {
        self.conn().execute(
            "UPDATE api_tokens SET last_used_at = ?1 WHERE id = ?2",
            params![format_ts(at), id],
        )?;
        Ok(())
    }

    pub fn token(&self, id: TokenId) -> Result<Option<ApiToken>> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {TOKEN_COLUMNS} FROM api_tokens t JOIN users u ON u.id = t.user_id \
                     WHERE t.id = ?1"
                ),
                [id],
                token_row,
            )
            .optional()?)
    }

    /// One user's tokens, or everyone's (`None`), oldest first.
    pub fn tokens(&self, user_id: Option<UserId>) -> Result<Vec<ApiToken>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens t JOIN users u ON u.id = t.user_id \
             WHERE (?1 IS NULL OR t.user_id = ?1) ORDER BY t.id"
        ))?;
        let rows = stmt.query_map([user_id], token_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Delete a token; false when it was not there (revoked meanwhile).
    pub fn delete_token(&self, id: TokenId) -> Result<bool> {
        let n = self
            .conn()
            .execute("DELETE FROM api_tokens WHERE id = ?1", [id])?;
        Ok(n == 1)
    }
}
