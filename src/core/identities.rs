//! Identities of the HTTP front door that are not SSH keys: the legacy
//! upload user behind `shared_secret`, the `environment = "test"`
//! integration user, users who arrive by OAuth with a trusted e-mail, the
//! daemon itself (for read-only views such as metrics), and the warm pool's
//! system user (owns warm instances; no key, token or e-mail: nobody logs
//! in as it).
//!
//! The front door checks the credential (secret, token, provider answer);
//! the core decides which user that is and what the user may do.

use super::error::{BadInput, InvalidState};
use super::{Actor, CoreError, Principal, Result, Service};
use crate::config::Environment;
use crate::core::model::UserId;

/// The identity string of the `shared_secret` user.
pub const UPLOAD_USER: &str = "upload";

/// The system user that owns warm instances until they are handed over.
pub const POOL_USER: &str = "warm-pool";

/// Local part of the `environment = "test"` integration user.
pub const INTEGRATION_USER: &str = "integration-test";

impl Service {
    /// The upload user (an admin), created on first use.
    pub fn upload_actor(&self) -> Result<Actor> {
        let store = &self.inner.store;
        let user = match store.user_by_name(UPLOAD_USER)? {
            Some(u) => {
                if !u.is_admin {
                    store.set_user_admin(u.id, true)?;
                }
                u
            }
            None => {
                let u = store.insert_user(UPLOAD_USER, None, true)?;
                tracing::info!(user = UPLOAD_USER, "upload user created");
                u
            }
        };
        Ok(Actor::new(user.id, user.name, true, Principal::Upload))
    }

    /// The warm pool's user, created on first use: not an admin, no key,
    /// token or e-mail. One that has a way in (made before the name was
    /// reserved) is refused rather than trusted with warm instances.
    pub(crate) fn pool_user_id(&self) -> Result<UserId> {
        let store = &self.inner.store;
        match store.user_by_name(POOL_USER)? {
            Some(u) => {
                if u.is_admin || u.email.is_some() || store.users_with_access()?.contains(&u.id) {
                    return Err(InvalidState::PoolUserCanLogIn { user: POOL_USER }.into());
                }
                Ok(u.id)
            }
            None => {
                let u = store.insert_user(POOL_USER, None, false)?;
                tracing::info!(user = POOL_USER, "warm pool user created");
                Ok(u.id)
            }
        }
    }

    /// Whether destroying an image as `actor` also destroys its instances
    /// (the legacy upload user's privilege; everyone else is refused while
    /// instances exist).
    pub fn destroys_image_instances(&self, actor: &Actor) -> bool {
        actor.principal() == Principal::Upload
    }

    /// The integration-test user, only with `environment = "test"`.
    pub fn integration_actor(&self) -> Result<Option<Actor>> {
        let cfg = self.config();
        if cfg.environment != Environment::Test {
            return Ok(None);
        }
        let domain = cfg.trusted_user_email_domain.as_deref().unwrap_or("");
        let email = format!("{INTEGRATION_USER}{domain}");
        self.actor_for_email(&email, false).map(Some)
    }

    /// Whether `user` is the integration-test user (only ever with
    /// `environment = "test"`).
    pub(crate) fn is_integration_user(&self, user: &crate::core::User) -> bool {
        let cfg = self.config();
        let domain = cfg.trusted_user_email_domain.as_deref().unwrap_or("");
        cfg.environment == Environment::Test
            && user.email.as_deref() == Some(format!("{INTEGRATION_USER}{domain}").as_str())
    }

    /// The user behind an e-mail a trusted OAuth provider vouched for: the
    /// address must end with `trusted_user_email_domain` (no domain
    /// configured: nobody). A user added over SSH with the same e-mail is
    /// the same user.
    pub fn actor_for_trusted_email(&self, email: &str) -> Result<Option<Actor>> {
        let config = self.config();
        let Some(domain) = config.trusted_user_email_domain.as_deref() else {
            return Ok(None);
        };
        let email = email.trim();
        let lower = email.to_ascii_lowercase();
        let domain = domain.to_ascii_lowercase();
        let local = lower.strip_suffix(&domain).unwrap_or("");
        // "@example.com" must not admit "x@evil-example.com"; a domain given
        // without '@' is matched at a label boundary.
        let boundary = domain.starts_with('@') || local.ends_with('@') || local.ends_with('.');
        if domain.is_empty() || local.is_empty() || !boundary || !email.contains('@') {
            return Ok(None);
        }
        match self.actor_for_email(email, false) {
            Ok(a) => Ok(Some(a)),
            // The address makes no valid user name.
            Err(CoreError::BadInput(BadInput::UserName(_) | BadInput::ReservedName(_))) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The daemon itself: an admin that is no stored user, for read-only
    /// views (metrics). Never handed to a client.
    pub(crate) fn system_actor(&self) -> Actor {
        Actor::new(UserId::new(0), "draupnir".into(), true, Principal::System)
    }

    /// Counts for metrics: images and instances by state, and the bytes of
    /// all images.
    pub fn census(&self) -> Result<Census> {
        let system = self.system_actor();
        let mut census = Census::default();
        for image in self.list_images(&system)? {
            *census.images.entry(image.state.as_str()).or_default() += 1;
            census.image_bytes += image.size_bytes;
        }
        for inst in self.list_instances(&system, true)? {
            *census.instances.entry(inst.state.as_str()).or_default() += 1;
        }
        let status = self.status()?;
        census.newest_ready_image_age_seconds = status.newest_ready_image_age_seconds;
        census.warm_instances = status.warm_instances as u64;
        census.sources = status.sources;
        census.counted = self.inner.counters.snapshot();
        Ok(census)
    }
}

/// What [`Service::census`] counts.
#[derive(Debug, Default, Clone)]
pub struct Census {
    pub images: std::collections::BTreeMap<&'static str, u64>,
    pub instances: std::collections::BTreeMap<&'static str, u64>,
    pub image_bytes: u64,
    /// Running instances waiting in the warm pool (also in `instances`).
    pub warm_instances: u64,
    /// Seconds since the newest ready image became ready.
    pub newest_ready_image_age_seconds: Option<i64>,
    /// What the core counted: creates, destroys, finalises, SSH sessions.
    pub counted: super::Counted,
    /// Each followed source's state and lag.
    pub sources: Vec<crate::core::refresh::SourceSummary>,
}
