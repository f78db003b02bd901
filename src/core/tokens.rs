//! API bearer tokens: minting (the secret is shown once; only its hash is
//! kept), authenticating (recording the last use at most once a minute
//! per token, so the hot path stays one read), listing and revoking, and
//! who may see or revoke which: a user their own tokens, admins anyone's.
//! Someone else's token does not exist, as far as a user can tell.

use sha2::{Digest, Sha256};
use time::Duration;

use super::error::Missing;
use super::model::{ApiToken, TokenId};
use super::{Actor, CoreError, Result, Service};

/// How stale a token's `last_used_at` may get before a use rewrites it.
const LAST_USED_GRAIN: Duration = Duration::minutes(1);

/// Hash of an API token as stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Service {
    /// Mint an API bearer token for the caller; only its hash is kept.
    pub fn mint_token(&self, actor: &Actor) -> Result<String> {
        Ok(self.mint_token_with_id(actor)?.1)
    }

    /// Like [`Service::mint_token`], with the new token's id (for
    /// `revoke-token`).
    pub fn mint_token_with_id(&self, actor: &Actor) -> Result<(TokenId, String)> {
        let bytes: [u8; 32] = rand::random();
        let token = format!("drp_{}", hex::encode(bytes));
        let id = self
            .inner
            .store
            .insert_token(actor.id(), &token_hash(&token))?;
        tracing::info!(user = %actor.name(), token = %id, "api token minted");
        Ok((id, token))
    }

    /// Who minted this API token? `None` for a token never minted or
    /// revoked since.
    pub fn authenticate_token(&self, token: &str) -> Result<Option<Actor>> {
        let store = &self.inner.store;
        let Some((t, user)) = store.token_by_hash(&token_hash(token))? else {
            return Ok(None);
        };
        let now = time::OffsetDateTime::now_utc();
        if t.last_used_at
            .is_none_or(|last| now - last >= LAST_USED_GRAIN)
        {
            // Bookkeeping only: a failure here does not refuse the request.
            if let Err(e) = store.touch_token(t.id, now) {
                tracing::warn!(token = %t.id, error = %e, "cannot record an api token's use");
            }
        }
        Ok(Some(self.actor_of(&user)))
    }

    /// The caller's tokens, or everyone's (`all`, admins).
    pub fn list_tokens(&self, actor: &Actor, all: bool) -> Result<Vec<ApiToken>> {
        if all {
            actor.require_admin("listing every user's tokens")?;
            return Ok(self.inner.store.tokens(None)?);
        }
        Ok(self.inner.store.tokens(Some(actor.id()))?)
    }

    /// Revoke a token: the caller's own, or anyone's (admins). From now on
    /// it authenticates nothing. Returns what it was.
    pub fn revoke_token(&self, actor: &Actor, id: TokenId) -> Result<ApiToken> {
        let not_found = || CoreError::NotFound(Missing::Token(id));
        let token = self.inner.store.token(id)?.ok_or_else(not_found)?;
        if token.user_id != actor.id() && !actor.is_admin() {
            return Err(not_found());
        }
        // Gone meanwhile (revoked twice at once): not found, as after.
        if !self.inner.store.delete_token(id)? {
            return Err(not_found());
        }
        tracing::info!(token = %id, user = %token.user_name, by = %actor.name(), "api token revoked");
        Ok(token)
    }
}
