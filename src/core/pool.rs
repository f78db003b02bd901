//! The warm pool: for every ready image, `warm_instances_per_image`
//! instances started ahead of time (each with its own fresh certificates,
//! owned by the `warm-pool` system user), so that a new instance is a
//! handover — a couple of SQLite statements — instead of a snapshot and a
//! postmaster start.
//!
//! Owns the handover (one atomic statement: an instance leaves the pool
//! once and never comes back), the refill task (sequential, one instance at
//! a time, within `max_instances_total` and `min_free_space`), shrinking
//! the pool and replacing failed warm instances, and letting a warm
//! instance give way when a cold create hits `max_instances_total`.

use crate::core::model::{ImageId, InstanceId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{Actor, ConnectionInfo, CoreError, Result, Service};
use crate::core::store::{ImageState, InstanceState};

/// How often the pool is checked when nothing wakes it.
const REFILL_INTERVAL: Duration = Duration::from_secs(30);

/// The pool's shared state (one per service).
#[derive(Default)]
pub(crate) struct PoolState {
    /// Wakes the refill task.
    wake: tokio::sync::Notify,
    /// Set by drain/shutdown: no new warm instance is started.
    stopped: AtomicBool,
    /// Held by a refill pass (and by a cold create making room), so that
    /// passes never overlap.
    refill: tokio::sync::Mutex<()>,
}

impl PoolState {
    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

/// What one refill pass did.
#[derive(Debug, Default, Clone)]
pub struct RefillReport {
    /// Warm instances started.
    pub started: Vec<InstanceId>,
    /// Warm instances destroyed: failed, surplus, or of an image no longer
    /// ready.
    pub destroyed: Vec<InstanceId>,
    /// Why the pass stopped before every pool was full (a quota, the
    /// free-space floor, a failed start), if it did.
    pub held_back: Option<String>,
}

impl Service {
    /// Running warm instances of an image, waiting to be handed over (for
    /// benchmarks and tests that wait for the pool).
    pub fn warm_pool_size(&self, image_id: ImageId) -> usize {
        self.inner.store.warm_count(Some(image_id)).unwrap_or(0)
    }

    /// Ask the refill task for a pass soon.
    pub(crate) fn poke_pool(&self) {
        self.inner.pool.wake.notify_one();
    }

    /// Hold off refill passes while the guard lives.
    pub(crate) async fn pause_pool(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.pool.refill.lock().await
    }

    /// Start no warm instance from now on, and wait (until `deadline`) for
    /// a pass that is starting one to end.
    pub(crate) async fn stop_pool(&self, deadline: tokio::time::Instant) {
        self.inner.pool.stop();
        let _ = tokio::time::timeout_at(deadline, self.inner.pool.refill.lock()).await;
    }

    /// Refill at once, then after every poke and every `REFILL_INTERVAL`,
    /// until the pool is stopped or the service is gone.
    pub(crate) fn spawn_pool(&self) {
        let weak = Arc::downgrade(&self.inner);
        let pool = self.inner.pool.clone();
        tokio::spawn(async move {
            while !pool.stopped() {
                let Some(inner) = weak.upgrade() else { break };
                if let Err(e) = (Service { inner }).refill_pool().await {
                    tracing::warn!(error = %e, "warm pool refill failed");
                }
                let _ = tokio::time::timeout(REFILL_INTERVAL, pool.wake.notified()).await;
            }
        });
    }

    /// Hand a warm instance of `image_id` to `actor`, or `None` when its
    /// pool is empty. The caller has checked the image and the user's
    /// quota; the total does not grow, so neither it nor the free space is
    /// checked. No process or file system work: keep it that way.
    pub(crate) fn hand_over(
        &self,
        actor: &Actor,
        image_id: ImageId,
        ttl: Option<Duration>,
        oauth_refresh_token: Option<&str>,
    ) -> Result<Option<ConnectionInfo>> {
        let expires_at = ttl.map(super::policy::expiry_after).transpose()?;
        let Some(id) = self.inner.store.claim_pooled_instance(
            image_id,
            actor.id(),
            expires_at,
            oauth_refresh_token,
        )?
        else {
            return Ok(None);
        };
        self.poke_pool();
        self.owner_connection(actor, id).map(Some)
    }

    /// Make room under `max_instances_total` for a cold create of
    /// `image_id`: when the host is full, a warm instance (of another image
    /// first) gives way. Refused as before when none can. When room was
    /// made, the returned guard holds refills off until the caller's row is
    /// in.
    pub(crate) async fn make_room(
        &self,
        image_id: ImageId,
    ) -> Result<Option<tokio::sync::MutexGuard<'_, ()>>> {
        let Err(full) = self.check_total_quota() else {
            return Ok(None);
        };
        let paused = self.pause_pool().await;
        let mut warm: Vec<_> = self
            .inner
            .store
            .instances(None, None)?
            .into_iter()
            .filter(|i| {
                i.pooled && matches!(i.state, InstanceState::Running | InstanceState::Failed)
            })
            .collect();
        warm.sort_by_key(|i| {
            (
                i.state != InstanceState::Failed,
                i.image_id == image_id,
                i.image_id,
                std::cmp::Reverse(i.id),
            )
        });
        for inst in warm {
            if self.inner.store.retire_pooled_instance(inst.id)? {
                tracing::info!(
                    instance = %inst.id,
                    image = %inst.image_id,
                    for_image = %image_id,
                    "warm instance gives way under max_instances_total"
                );
                self.destroy_instance_unchecked(inst.id).await?;
                self.check_total_quota()?;
                return Ok(Some(paused));
            }
        }
        Err(full)
    }

    /// One refill pass: destroy failed warm instances, those beyond
    /// `warm_instances_per_image` and those of images no longer ready; then
    /// start warm instances one at a time, newest image first, until every
    /// ready image has its count, a limit is reached, or the pool is
    /// stopped. The background task runs this; calling it directly is safe
    /// (passes never overlap).
    pub async fn refill_pool(&self) -> Result<RefillReport> {
        let _pass = self.inner.pool.refill.lock().await;
        let mut report = RefillReport::default();
        let want = self.config().warm_instances_per_image as usize;
        let mut ready: Vec<_> = self
            .inner
            .store
            .images()?
            .into_iter()
            .filter(|i| i.state == ImageState::Ready && i.pg_major.is_some())
            .collect();
        ready.sort_by_key(|i| std::cmp::Reverse((i.updated_at, i.id)));

        // Shrink. Rows come ordered by id: the oldest `want` are kept (they
        // are also handed over first).
        let mut kept: HashMap<ImageId, usize> = HashMap::new();
        for inst in self.inner.store.instances(None, None)? {
            if !inst.pooled {
                continue;
            }
            let reason = match inst.state {
                // Being started by a pass or destroyed: someone is at it.
                InstanceState::Creating | InstanceState::Destroying => continue,
                InstanceState::Failed => "it failed",
                InstanceState::Running if !ready.iter().any(|i| i.id == inst.image_id) => {
                    "its image is not ready"
                }
                InstanceState::Running => {
                    let n = kept.entry(inst.image_id).or_default();
                    *n += 1;
                    if *n <= want {
                        continue;
                    }
                    "beyond warm_instances_per_image"
                }
            };
            if self.inner.store.retire_pooled_instance(inst.id)? {
                tracing::info!(
                    instance = %inst.id,
                    image = %inst.image_id,
                    reason,
                    "warm instance destroyed"
                );
                self.destroy_instance_unchecked(inst.id).await?;
                report.destroyed.push(inst.id);
            }
        }
        if want == 0 || ready.is_empty() {
            return Ok(report);
        }

        // Grow, one instance at a time.
        let owner = self.pool_user_id()?;
        for image in ready {
            // At most `want` starts per image and pass, even when warm
            // instances fail as soon as they run.
            for _ in 0..want {
                if self.inner.pool.stopped() || self.warm_pool_size(image.id) >= want {
                    break;
                }
                // Never waits: an image being destroyed (or about to be)
                // is skipped (see `image_guard`).
                let Some((_hold, image)) = self.try_hold_ready_image(image.id) else {
                    break;
                };
                let Some(major) = image.pg_major else {
                    break;
                };
                if let Err(e) = self
                    .check_total_quota()
                    .and_then(|_| self.check_free_space("warm instance"))
                {
                    tracing::debug!(reason = %e, "warm pool not refilled");
                    report.held_back = Some(e.to_string());
                    return Ok(report);
                }
                let started = std::time::Instant::now();
                match self
                    .start_instance(image.id, major, owner, true, None, None)
                    .await
                {
                    Ok((id, port)) => {
                        tracing::info!(
                            instance = %id,
                            image = %image.id,
                            port,
                            ms = started.elapsed().as_millis() as u64,
                            "warm instance ready"
                        );
                        report.started.push(id);
                    }
                    Err(e) => {
                        tracing::warn!(image = %image.id, error = %e, "warm instance not started");
                        report.held_back = Some(e.to_string());
                        if matches!(e, CoreError::NoFreePort { .. } | CoreError::NoSpace(_)) {
                            return Ok(report);
                        }
                        break;
                    }
                }
            }
        }
        Ok(report)
    }
}
