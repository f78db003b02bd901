//! Policies that keep a long-running host tidy: instance lifetimes (TTL,
//! extend), quotas and the free-space floor, the cleaner (expired, idle,
//! and orphaned-by-access instances), image rotation, and freshness status.

use crate::core::model::{ImageId, InstanceId};
use std::time::Duration;

use time::OffsetDateTime;

use super::error::{BadInput, Quota};
use super::{Actor, CoreError, Result, Service};
use crate::core::manifest::AnonymisationStatus;
use crate::core::postgres::cluster::CLIENT_ROLE;
use crate::core::postgres::pgconn;
use crate::core::store::{Image, ImageState, InstanceState};

/// What an identity provider says of a refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStatus {
    Valid,
    /// The provider said `invalid_grant`: access is gone.
    Revoked,
    /// The provider could not be asked (an outage is not a revocation).
    Unknown,
}

/// Asks the identity provider about refresh tokens (the HTTP front door
/// installs one when OAuth is configured).
pub trait TokenChecker: Send + Sync {
    fn check(
        &self,
        refresh_token: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = TokenStatus> + Send + '_>>;
}

/// What [`Service::extend_instance`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// The instance now lives until then.
    Until(OffsetDateTime),
    /// The instance has no lifetime (it lives until destroyed); nothing
    /// changed.
    NoLifetime,
}

/// What the cleaner did in one pass.
#[derive(Debug, Default, Clone)]
pub struct CleanReport {
    pub expired: Vec<InstanceId>,
    pub idle: Vec<InstanceId>,
    pub access_gone: Vec<InstanceId>,
    pub rotated_images: Vec<ImageId>,
}

/// Image freshness, for `status` and `GET /status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// `ok`, `unchecked` (the newest ready image's anonymisation was not
    /// checked: sealed with `require_coverage = false`), `stale` (no image
    /// became ready within the expected interval) or `no_images` (none is
    /// ready yet).
    pub status: &'static str,
    pub newest_ready_image: Option<ImageId>,
    /// `checked`, `unchecked` or `none` (declared not personal).
    pub newest_ready_image_anonymisation: Option<AnonymisationStatus>,
    pub newest_ready_image_age_seconds: Option<i64>,
    pub expected_image_interval_seconds: Option<u64>,
    pub images: usize,
    /// Instances users have (warm ones are counted apart).
    pub instances: usize,
    /// Started instances waiting in the warm pool, over all images.
    pub warm_instances: usize,
    /// Each followed source (absent when none is configured).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<crate::core::refresh::SourceSummary>,
}

pub(crate) fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86400) {
        format!("{}d", s / 86400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Refuse a lifetime or extension beyond [`crate::config::MAX_DURATION`]
/// (front doors parse with that cap; the core does not rely on it).
fn check_span(d: Duration) -> Result<()> {
    if d > crate::config::MAX_DURATION {
        return Err(BadInput::SpanTooLong(d).into());
    }
    Ok(())
}

/// `base + d`, or a one-line refusal when it does not fit a date.
pub(crate) fn checked_after(base: OffsetDateTime, d: Duration) -> Result<OffsetDateTime> {
    check_span(d)?;
    time::Duration::try_from(d)
        .ok()
        .and_then(|d| base.checked_add(d))
        .ok_or_else(|| BadInput::DurationOverflow(d).into())
}

/// When something that lives `ttl` from now ends.
pub(crate) fn expiry_after(ttl: Duration) -> Result<OffsetDateTime> {
    checked_after(OffsetDateTime::now_utc(), ttl)
}

/// The refusal at `max_instances_total`.
pub(crate) fn total_quota_error(n: usize, max: u32) -> CoreError {
    Quota::HostInstances { count: n, max }.into()
}

impl Service {
    /// The lifetime a new instance gets: the asked one or the default,
    /// refused past `max_instance_ttl`; with only a maximum, the maximum.
    pub(crate) fn instance_ttl(&self, asked: Option<Duration>) -> Result<Option<Duration>> {
        let cfg = self.config();
        let ttl = asked.or(cfg.default_instance_ttl).or(cfg.max_instance_ttl);
        if let Some(t) = ttl {
            check_span(t)?;
        }
        if let (Some(t), Some(max)) = (ttl, cfg.max_instance_ttl) {
            if t > max {
                return Err(BadInput::LifetimeOverMax { ttl: t, max }.into());
            }
        }
        if ttl.is_some_and(|t| t.is_zero()) {
            return Err(BadInput::ZeroLifetime.into());
        }
        Ok(ttl)
    }

    /// Refuse when the free space on `data_path` is below the floor.
    pub(crate) fn check_free_space(&self, what: &str) -> Result<()> {
        let cfg = self.config();
        let Ok(st) = nix::sys::statvfs::statvfs(&cfg.data_path) else {
            return Ok(());
        };
        let total = st.blocks() * st.fragment_size();
        let free = st.blocks_available() * st.fragment_size();
        let floor = cfg.min_free_space.bytes(total);
        if free < floor {
            return Err(Quota::FreeSpace {
                what: what.to_string(),
                free,
                total,
                floor: cfg.min_free_space,
            }
            .into());
        }
        Ok(())
    }

    /// Refuse a new instance over `max_instances_total` (warm instances
    /// count: they are rows).
    pub(crate) fn check_total_quota(&self) -> Result<()> {
        if let Some(max) = self.config().max_instances_total {
            let n = self.inner.store.instances(None, None)?.len();
            if n >= max as usize {
                return Err(total_quota_error(n, max));
            }
        }
        Ok(())
    }

    /// Refuse `actor` another instance over `max_instances_per_user` (warm
    /// instances are nobody's: they never count here).
    pub(crate) fn check_user_quota(&self, actor: &Actor) -> Result<()> {
        if let Some(max) = self.config().max_instances_per_user {
            let n = self.inner.store.instances(Some(actor.id()), None)?.len();
            if n >= max as usize {
                return Err(Quota::UserInstances { count: n, max }.into());
            }
        }
        Ok(())
    }

    /// Push an instance's expiry `by` further (from now when it is past),
    /// up to `max_instance_ttl` from now. A life is never shortened: an
    /// instance with no lifetime keeps none ([`Extension::NoLifetime`],
    /// nothing changed), and one the cap would cut is refused.
    pub fn extend_instance(
        &self,
        actor: &Actor,
        id: InstanceId,
        by: Duration,
    ) -> Result<Extension> {
        let inst = self.owned_instance_for(actor, id)?;
        if by.is_zero() {
            return Err(BadInput::ZeroExtend.into());
        }
        let Some(expires_at) = inst.expires_at else {
            // It lives until destroyed; a lifetime would shorten that.
            return Ok(Extension::NoLifetime);
        };
        let now = OffsetDateTime::now_utc();
        let base = expires_at.max(now);
        let mut until = checked_after(base, by)?;
        if let Some(max) = self.config().max_instance_ttl {
            let cap = checked_after(now, max)?;
            if until > cap {
                return Err(BadInput::ExtendPastMax { id, max }.into());
            }
            until = until.min(cap);
        }
        self.inner.store.set_instance_expiry(id, Some(until))?;
        tracing::info!(instance = %id, user = %actor.name(), until = %crate::core::store::format_ts(until), "instance extended");
        Ok(Extension::Until(until))
    }

    /// Image freshness.
    pub fn status(&self) -> Result<Status> {
        let images = self.inner.store.images()?;
        let newest = images
            .iter()
            .filter(|i| i.state == ImageState::Ready)
            .max_by_key(|i| (i.updated_at, i.id));
        let age = newest.map(|i| OffsetDateTime::now_utc() - i.updated_at);
        let expected = self.config().expected_image_interval;
        let anonymisation = newest.and_then(Image::anonymisation_status);
        let status = match (age, expected) {
            (None, _) => "no_images",
            _ if anonymisation == Some(AnonymisationStatus::Unchecked) => "unchecked",
            (Some(a), Some(e)) if a.whole_milliseconds() > e.as_millis() as i128 => "stale",
            _ => "ok",
        };
        let age = age.map(|a| a.whole_seconds());
        Ok(Status {
            status,
            newest_ready_image: newest.map(|i| i.id),
            newest_ready_image_anonymisation: anonymisation,
            newest_ready_image_age_seconds: age,
            expected_image_interval_seconds: expected.map(|e| e.as_secs()),
            images: images.len(),
            instances: self
                .inner
                .store
                .instances(None, None)?
                .iter()
                .filter(|i| !i.pooled)
                .count(),
            warm_instances: self.inner.store.warm_count(None)?,
            sources: self
                .sources(&self.system_actor())?
                .iter()
                .map(|v| v.summary())
                .collect(),
        })
    }

    /// Destroy ready images beyond the newest `image_retention` that have
    /// no instances (warm ones do not count: they go with their image).
    pub(crate) async fn rotate_images(&self) -> Result<Vec<ImageId>> {
        let Some(keep) = self.config().image_retention else {
            return Ok(Vec::new());
        };
        let mut ready: Vec<_> = self
            .inner
            .store
            .images()?
            .into_iter()
            .filter(|i| i.state == ImageState::Ready)
            .collect();
        ready.sort_by_key(|i| std::cmp::Reverse((i.updated_at, i.id)));
        let mut gone = Vec::new();
        for old in ready.into_iter().skip(keep as usize) {
            if self
                .inner
                .store
                .instances(None, Some(old.id))?
                .iter()
                .any(|i| !i.pooled)
            {
                continue;
            }
            match self.destroy_image_unchecked(old.id, false).await {
                Ok(()) => {}
                // Someone made an instance of it meanwhile, or beat us to it.
                Err(
                    CoreError::ImageHasInstances { .. }
                    | CoreError::NotFound(_)
                    | CoreError::InvalidState(_),
                ) => continue,
                Err(e) => return Err(e),
            }
            tracing::info!(image = %old.id, retention = keep, "image rotated out");
            gone.push(old.id);
        }
        Ok(gone)
    }

    /// Does anyone use instance `id` right now? Asked of Postgres itself
    /// over the instance's private socket.
    async fn has_clients(&self, id: InstanceId, port: u16) -> Option<bool> {
        let dir = self.inner.layout.instance(id);
        let client = pgconn::connect_unix(
            &dir,
            port,
            CLIENT_ROLE,
            &self.config().postgres.database,
            Duration::from_secs(5),
        )
        .await
        .ok()?;
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .ok()?;
        Some(row.get::<_, i64>(0) > 0)
    }

    /// Let the cleaner ask the identity provider about refresh tokens.
    pub fn set_token_checker(&self, checker: std::sync::Arc<dyn TokenChecker>) {
        *self
            .inner
            .token_checker
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(checker);
    }

    /// Instances whose OAuth refresh token the provider revoked.
    async fn revoked_instances(&self) -> Result<Vec<InstanceId>> {
        let checker = self
            .inner
            .token_checker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(checker) = checker else {
            return Ok(Vec::new());
        };
        let mut verdicts: std::collections::HashMap<String, TokenStatus> = Default::default();
        let mut revoked = Vec::new();
        for (id, token) in self.inner.store.instance_oauth_tokens()? {
            let status = match verdicts.get(&token) {
                Some(s) => *s,
                None => {
                    let s = checker.check(token.clone()).await;
                    verdicts.insert(token, s);
                    s
                }
            };
            if status == TokenStatus::Revoked {
                revoked.push(id);
            }
        }
        Ok(revoked)
    }

    /// One pass of the cleaner.
    pub async fn clean_once(&self) -> Result<CleanReport> {
        let mut report = CleanReport::default();
        let revoked = self.revoked_instances().await?;
        let now = OffsetDateTime::now_utc();
        let with_access = self.inner.store.users_with_access()?;
        // The upload user has a way in while a shared secret is set.
        let upload_user = match self.config().shared_secret.is_some() {
            true => self
                .inner
                .store
                .user_by_name(super::UPLOAD_USER)?
                .map(|u| u.id),
            false => None,
        };
        for inst in self.inner.store.instances(None, None)? {
            // Warm instances have no owner, lifetime or clients yet: the
            // pool looks after them.
            if inst.pooled
                || matches!(
                    inst.state,
                    InstanceState::Creating | InstanceState::Destroying
                )
            {
                continue;
            }
            let reason = if revoked.contains(&inst.id) {
                report.access_gone.push(inst.id);
                "its owner's OAuth grant was revoked"
            } else if inst.expires_at.is_some_and(|e| e <= now) {
                report.expired.push(inst.id);
                "its lifetime ended"
            } else if !(with_access.contains(&inst.owner_id) || upload_user == Some(inst.owner_id))
            {
                report.access_gone.push(inst.id);
                "its owner has no way in any more"
            } else if let (Some(limit), InstanceState::Running) =
                (self.config().instance_idle_limit, inst.state)
            {
                match self.has_clients(inst.id, inst.port).await {
                    Some(true) => {
                        self.inner.store.touch_instance(inst.id, now)?;
                        continue;
                    }
                    Some(false) => {
                        let since = inst.last_active_at.unwrap_or(inst.created_at);
                        if (now - since).whole_seconds() < limit.as_secs() as i64 {
                            continue;
                        }
                        report.idle.push(inst.id);
                        "it had no client connection for instance_idle_limit"
                    }
                    None => continue,
                }
            } else {
                continue;
            };
            tracing::info!(instance = %inst.id, owner = %inst.owner_name, reason, "cleaner destroys instance");
            self.destroy_instance_unchecked(inst.id).await?;
        }
        report.rotated_images = self.rotate_images().await?;
        Ok(report)
    }

    /// Run the cleaner every `clean_interval` while the service lives.
    pub(crate) fn spawn_cleaner(&self) {
        let weak = std::sync::Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            // Read every round: a reload may change the interval.
            while let Some(every) = weak
                .upgrade()
                .map(|inner| Service { inner }.config().clean_interval)
            {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { break };
                let svc = Service { inner };
                if let Err(e) = svc.clean_once().await {
                    tracing::error!(error = %e, "cleaner pass failed");
                }
            }
        });
    }
}
