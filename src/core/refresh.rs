//! `refresh-image NAME` and `sources`: a new image from a source's
//! standby, and what the doors show about sources.
//!
//! A refresh asks the primary where its WAL ends, waits (up to the
//! source's `max_lag`) for the standby to have replayed that far, takes a
//! writable btrfs snapshot of the standby (which keeps streaming), hands
//! it to the instance user, and runs the normal finalise on it: the
//! standby's configuration is neutralised like any upload's, its first
//! start recovers to the end of the copied WAL and promotes, and the
//! config's masking rules, the leak scan, the proof and the read-only
//! snapshot follow. The source and the replay position go into the
//! image's manifest. A refusal or failure leaves no subvolume behind.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::config::SourceName;
use crate::core::error::{Internal, Missing};
use crate::core::images::FinaliseProgress;
use crate::core::manifest::{NewImage, SourceManifest};
use crate::core::model::{Image, ImageState, Progress, UserId};
use crate::core::sources::lsn::Lsn;
use crate::core::sources::standby::chown_tree;
use crate::core::sources::{Followed, Live, RefreshHook, SourceState};
use crate::core::storage::btrfs;
use crate::core::{Actor, CoreError, Inner, Result, Service};

/// Why a refresh was refused before anything was made.
#[derive(Debug, thiserror::Error)]
pub enum RefreshRefused {
    #[error("source {name} is {state}{}; nothing was made", .reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    NotReady {
        name: SourceName,
        state: SourceState,
        reason: Option<String>,
    },
    #[error("cannot reach the primary of source {name}: {reason}; nothing was made (refresh-image {name} --force takes the standby as it is)")]
    Unreachable { name: SourceName, reason: String },
    #[error("the standby of source {name} is {} behind its primary (max_lag {}s); nothing was made (refresh-image {name} --force takes it as it is)", lag(*.lag_bytes, *.lag_secs), .max.as_secs())]
    Behind {
        name: SourceName,
        lag_bytes: Option<u64>,
        lag_secs: Option<f64>,
        max: Duration,
    },
    #[error("source {name} is already being refreshed; wait for it")]
    Busy { name: SourceName },
    #[error("cannot read the standby of source {name}: {reason}; nothing was made")]
    Unreadable { name: SourceName, reason: String },
}

fn lag(bytes: Option<u64>, secs: Option<f64>) -> String {
    match (bytes, secs) {
        (Some(b), Some(s)) => format!("{b} bytes ({s:.0}s)"),
        (Some(b), None) => format!("{b} bytes"),
        (None, Some(s)) => format!("{s:.0}s"),
        (None, None) => "an unknown distance".into(),
    }
}

/// One source as the doors show it.
#[derive(Debug, Clone)]
pub struct SourceView {
    pub name: SourceName,
    /// `host:port` of the primary.
    pub primary: String,
    pub slot: Option<String>,
    pub schedule: Option<String>,
    pub live: Live,
    /// The newest image made from it, and when.
    pub last_refresh: Option<Image>,
}

/// One source as `sources --json`, `status` and `/metrics` give it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceSummary {
    pub name: String,
    /// `initialising`, `streaming`, `catching up`, `disconnected`, `failed`.
    pub state: &'static str,
    pub reason: Option<String>,
    pub primary: String,
    pub slot: Option<String>,
    pub refresh_schedule: Option<String>,
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    pub replay_lsn: Option<String>,
    /// The newest image refreshed from it (id as a string, as the HTTP
    /// API gives ids).
    pub last_refresh_image: Option<String>,
    pub last_refresh_at: Option<String>,
    /// The last scheduled refresh's failure, if the last one failed.
    pub last_refresh_failure: Option<String>,
}

impl SourceView {
    pub fn summary(&self) -> SourceSummary {
        SourceSummary {
            name: self.name.to_string(),
            state: self.live.state.as_str(),
            reason: self.live.reason.clone(),
            primary: self.primary.clone(),
            slot: self.slot.clone(),
            refresh_schedule: self.schedule.clone(),
            lag_bytes: self.lag_bytes(),
            lag_seconds: self.lag_seconds().map(|s| (s * 10.0).round() / 10.0),
            replay_lsn: self.replay_lsn(),
            last_refresh_image: self.last_refresh.as_ref().map(|i| i.id.to_string()),
            last_refresh_at: self
                .last_refresh
                .as_ref()
                .map(|i| crate::core::model::format_ts(i.created_at)),
            last_refresh_failure: self.live.last_failure.clone(),
        }
    }

    pub fn lag_bytes(&self) -> Option<u64> {
        self.live.position.as_ref()?.lag_bytes()
    }

    pub fn lag_seconds(&self) -> Option<f64> {
        self.live.position.as_ref()?.lag_seconds()
    }

    pub fn replay_lsn(&self) -> Option<String> {
        Some(self.live.position.as_ref()?.replay?.to_string())
    }
}

impl Service {
    /// Every configured source (any authenticated user may look).
    pub fn sources(&self, _actor: &Actor) -> Result<Vec<SourceView>> {
        let images = self.inner.store.images()?;
        Ok(self
            .inner
            .sources
            .all()
            .into_iter()
            .map(|f| {
                let c = &f.standby.config;
                let name = f.standby.name.clone();
                let last_refresh = images
                    .iter()
                    .filter(|i| from_source(i) == Some(name.as_str()))
                    .max_by_key(|i| i.id)
                    .cloned();
                SourceView {
                    primary: c.primary_conninfo.target(),
                    slot: c.slot.as_ref().map(|s| s.as_str().to_owned()),
                    schedule: c.refresh_schedule.map(|s| s.to_string()),
                    live: f.live(),
                    last_refresh,
                    name,
                }
            })
            .collect())
    }

    /// `refresh-image NAME`: a new image of the source's standby as it is
    /// now. Runs to the end even if the caller goes away.
    pub async fn refresh_image(
        &self,
        actor: &Actor,
        name: &str,
        force: bool,
        progress: Option<FinaliseProgress>,
    ) -> Result<Image> {
        actor.require_admin("refreshing images")?;
        let name = SourceName::parse(name)
            .map_err(|_| CoreError::NotFound(Missing::Source(name.to_owned())))?;
        let (svc, by) = (self.clone(), actor.id());
        // Boxed: a finalise is a large future, kept off the caller's stack.
        super::detached(Box::pin(async move {
            svc.refresh(name, force, Some(by), progress).await
        }))
        .await
    }

    async fn refresh(
        &self,
        name: SourceName,
        force: bool,
        by: Option<UserId>,
        progress: Option<FinaliseProgress>,
    ) -> Result<Image> {
        let followed = self
            .inner
            .sources
            .get(&name)
            .ok_or_else(|| CoreError::NotFound(Missing::Source(name.to_string())))?;
        let Ok(_one) = followed.refreshing.try_lock() else {
            return Err(RefreshRefused::Busy { name }.into());
        };
        let step = |s: String| {
            if let Some(p) = &progress {
                p(Progress::Step(s));
            }
        };
        if !followed.standby.is_made() {
            let live = followed.live();
            return Err(RefreshRefused::NotReady {
                name,
                state: live.state,
                reason: live.reason,
            }
            .into());
        }
        step(format!("asking the primary of {name} where its WAL ends"));
        let target = match primary_end(&followed).await {
            Ok(lsn) => Some(lsn),
            Err(reason) if !force => {
                return Err(RefreshRefused::Unreachable { name, reason }.into())
            }
            Err(reason) => {
                step(format!(
                    "cannot reach the primary ({reason}); --force: taking the standby as it is"
                ));
                None
            }
        };
        let max = followed.standby.config.max_lag;
        let pos = self
            .wait_for_replay(&followed, &name, target, max, force, &step)
            .await?;
        self.check_free_space("refresh")?;
        step("restartpoint on the standby (less WAL for the copy to replay)".into());
        if let Err(e) = followed.checkpoint().await {
            tracing::warn!(source = %name, error = %e, "restartpoint on the standby failed; the copy replays more WAL");
        }
        let image = self.inner.store.insert_image(&NewImage::default(), by)?;
        let id = image.id;
        let upload = self.inner.layout.upload(id);
        step(format!(
            "snapshotting the standby at {}",
            pos.replay.unwrap_or_default()
        ));
        let made = (|| -> Result<()> {
            btrfs::snapshot(&followed.standby.datadir, &upload, false)?;
            chown_tree(&upload, &self.inner.user).map_err(|source| {
                CoreError::Internal(Internal::Chown {
                    path: upload.clone(),
                    source,
                })
            })?;
            // The standby's socket and lock files are not the copy's.
            for e in std::fs::read_dir(&upload).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with(".s.PGSQL.") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            Ok(())
        })();
        if let Err(e) = made {
            let _ = btrfs::delete_subvolume(&upload);
            let _ = self.inner.store.delete_image(id);
            return Err(e);
        }
        if !self
            .inner
            .store
            .transition_image(id, ImageState::Uploading, ImageState::Finalising)?
        {
            let _ = btrfs::delete_subvolume(&upload);
            let _ = self.inner.store.delete_image(id);
            return Err(crate::core::InvalidState::ImageChanged { id }.into());
        }
        tracing::info!(image = %id, source = %name, lsn = %pos.replay.unwrap_or_default(), "refresh: finalising the standby's snapshot");
        let origin = SourceManifest {
            name: name.to_string(),
            lsn: pos.replay.unwrap_or_default().to_string(),
            commit_time: pos.replay_time.and_then(|t| {
                time::OffsetDateTime::from_unix_timestamp(t as i64)
                    .ok()
                    .map(crate::core::model::format_ts)
            }),
        };
        let image = self.image_or_404(id)?;
        self.run_finalise(id, image, progress, Some(origin)).await
    }

    /// Wait until the standby has replayed up to `target` (the primary's
    /// end when the refresh began), at most `max`; refuse one that is
    /// further behind unless forced. Returns the position it reached.
    async fn wait_for_replay(
        &self,
        followed: &Followed,
        name: &SourceName,
        target: Option<Lsn>,
        max: Duration,
        force: bool,
        step: &(dyn Fn(String) + Send + Sync),
    ) -> Result<crate::core::sources::Position> {
        let start = tokio::time::Instant::now();
        let mut said = false;
        loop {
            let pos = followed
                .position()
                .await
                .map_err(|reason| RefreshRefused::Unreadable {
                    name: name.clone(),
                    reason,
                })?;
            let replay = pos.replay.unwrap_or_default();
            let behind = match target {
                Some(t) => replay < t,
                None => false,
            };
            if !behind {
                return Ok(pos);
            }
            let waited = start.elapsed();
            if waited >= max.min(Duration::from_secs(300))
                || pos.lag_seconds().is_some_and(|s| s > max.as_secs_f64())
            {
                if force {
                    step(format!(
                        "--force: taking the standby {} behind",
                        lag(pos.lag_bytes(), pos.lag_seconds())
                    ));
                    return Ok(pos);
                }
                return Err(RefreshRefused::Behind {
                    name: name.clone(),
                    lag_bytes: target.map(|t| t.since(replay)),
                    lag_secs: pos.lag_seconds(),
                    max,
                }
                .into());
            }
            if !said && waited > Duration::from_secs(1) {
                step(format!(
                    "waiting for the standby to replay up to {} ({} to go)",
                    target.unwrap_or_default(),
                    target.map_or(0, |t| t.since(replay))
                ));
                said = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The hook the sources' keepers call back (the schedule).
    pub(crate) fn refresher(weak: Weak<Inner>) -> crate::core::sources::Refresher {
        Arc::new(Hook(weak))
    }
}

/// The primary's WAL end now (a replication connection's `IDENTIFY_SYSTEM`).
async fn primary_end(followed: &Followed) -> std::result::Result<Lsn, String> {
    let primary = followed.standby.primary().map_err(|e| e.to_string())?;
    primary
        .identify()
        .await
        .map(|i| i.lsn)
        .map_err(|e| e.to_string())
}

/// The source an image was refreshed from, if any.
fn from_source(image: &Image) -> Option<&str> {
    Some(image.anonymisation.as_ref()?.source.as_ref()?.name.as_str())
}

struct Hook(Weak<Inner>);

impl RefreshHook for Hook {
    fn last_refresh(&self, name: &SourceName) -> Option<u64> {
        let inner = self.0.upgrade()?;
        let images = inner.store.images().ok()?;
        images
            .iter()
            .filter(|i| from_source(i) == Some(name.as_str()))
            .map(|i| i.created_at.unix_timestamp().max(0) as u64)
            .max()
    }

    fn refresh(&self, name: SourceName) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let weak = self.0.clone();
        Box::pin(async move {
            let Some(inner) = weak.upgrade() else { return };
            let svc = Service { inner };
            let outcome = svc.refresh(name.clone(), false, None, None).await;
            let followed = svc.inner.sources.get(&name);
            match outcome {
                Ok(image) => {
                    tracing::info!(source = %name, image = %image.id, "scheduled refresh: image ready");
                    if let Some(f) = followed {
                        f.note_refresh_failure(None);
                    }
                }
                Err(e) => {
                    tracing::warn!(source = %name, error = %e, "scheduled refresh failed");
                    if let Some(f) = followed {
                        f.note_refresh_failure(Some(e.to_string()));
                    }
                }
            }
        })
    }
}
