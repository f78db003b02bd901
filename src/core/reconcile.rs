//! Reconcile at start: make disk and processes agree with the database.
//!
//! Adopts running instance postmasters (through a verified
//! `postmaster.pid`) and restarts dead ones (the supervisor then checks
//! that each serves its clients), finishes interrupted destroys of
//! instances and images,
//! removes what an interrupted create left, marks interrupted uploads and
//! finalises `failed` with a reason, and deletes subvolumes and stops
//! postmasters that no row accounts for.

use crate::core::model::{ImageId, InstanceId};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::Service;
use crate::core::postgres::process::{self, Postmaster};
use crate::core::postgres::supervisor::Start;
use crate::core::storage::btrfs;
use crate::core::store::{ImageState, InstanceState};

/// What reconcile did, for the log and for tests.
#[derive(Debug, Default, Clone)]
pub struct ReconcileReport {
    pub adopted: Vec<InstanceId>,
    pub restarted: Vec<InstanceId>,
    pub removed_instances: Vec<InstanceId>,
    pub failed_images: Vec<ImageId>,
    /// Images whose destroy was cut off, finished now.
    pub destroyed_images: Vec<ImageId>,
    pub orphan_subvolumes: Vec<String>,
    pub orphan_processes: Vec<i32>,
}

/// In words for the log: `nothing to do`, or what was found and done
/// (`adopted 2 instances (1, 4); 1 image failed (7)`).
impl std::fmt::Display for ReconcileReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn part<T: std::fmt::Display>(what: &str, noun: &str, items: &[T]) -> Option<String> {
            if items.is_empty() {
                return None;
            }
            let list = items.iter().map(|i| i.to_string()).collect::<Vec<_>>();
            let plural = if items.len() == 1 { "" } else { "s" };
            Some(format!(
                "{what} {} {noun}{plural} ({})",
                items.len(),
                list.join(", ")
            ))
        }
        let parts: Vec<String> = [
            part("adopted", "instance", &self.adopted),
            part("restarted", "instance", &self.restarted),
            part("removed", "instance", &self.removed_instances),
            part("marked failed", "image", &self.failed_images),
            part("finished destroying", "image", &self.destroyed_images),
            part("removed", "orphan subvolume", &self.orphan_subvolumes),
            part("stopped", "orphan process", &self.orphan_processes),
        ]
        .into_iter()
        .flatten()
        .collect();
        if parts.is_empty() {
            f.write_str("nothing to do")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

fn ids_in(dir: &Path) -> Vec<(String, Option<i64>)> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    let id = name.parse::<i64>().ok();
                    (name, id)
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Service {
    pub(crate) async fn reconcile(&self) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        if let Err(e) = self.reconcile_inner(&mut report).await {
            tracing::error!(error = %e, "reconcile did not finish");
        }
        tracing::info!("reconciled: {report}");
        report
    }

    async fn reconcile_inner(&self, report: &mut ReconcileReport) -> super::Result<()> {
        let store = &self.inner.store;
        let layout = &self.inner.layout;

        // Images.
        for image in store.images()? {
            let upload = layout.upload(image.id);
            match image.state {
                ImageState::Destroying => {
                    // Its instances first, its snapshot last (as before
                    // the restart); a failure leaves it for the next start.
                    match self.finish_image_destroy(image.id).await {
                        Ok(()) => report.destroyed_images.push(image.id),
                        Err(e) => {
                            tracing::error!(image = %image.id, error = %e, "finishing the destroy failed")
                        }
                    }
                }
                ImageState::Uploading if image.upload_active => {
                    store.fail_image(image.id, &format!("the upload was interrupted by a daemon restart; `reset-upload {}` lets it take a new upload", image.id))?;
                    btrfs::delete_subvolume(&upload)?;
                    report.failed_images.push(image.id);
                }
                ImageState::Uploading => {
                    if !btrfs::is_subvolume(&upload) {
                        store.fail_image(image.id, "the upload directory is missing")?;
                        report.failed_images.push(image.id);
                    }
                }
                ImageState::Finalising => {
                    if let Some(pid) = process::running_postmaster(&upload) {
                        Postmaster::Adopted(pid).stop(Duration::from_secs(30)).await;
                    }
                    store.fail_image(image.id, &format!("finalise was interrupted by a daemon restart; `reset-upload {}` lets it take a new upload", image.id))?;
                    btrfs::delete_subvolume(&layout.snapshot(image.id))?;
                    btrfs::delete_subvolume(&upload)?;
                    report.failed_images.push(image.id);
                }
                ImageState::Ready => {
                    if !btrfs::is_subvolume(&layout.snapshot(image.id)) {
                        store.fail_image(image.id, "the image snapshot is missing")?;
                        report.failed_images.push(image.id);
                    }
                    btrfs::delete_subvolume(&upload)?;
                }
                ImageState::Failed => {
                    btrfs::delete_subvolume(&upload)?;
                }
            }
        }

        // Instances.
        for inst in store.instances(None, None)? {
            let dir = layout.instance(inst.id);
            match inst.state {
                InstanceState::Creating | InstanceState::Destroying => {
                    // The client never got a created instance, or asked for it
                    // to go: finish removing it.
                    if let Some(pid) = process::running_postmaster(&dir) {
                        Postmaster::Adopted(pid).stop(Duration::from_secs(10)).await;
                    }
                    btrfs::delete_subvolume(&dir)?;
                    store.delete_instance(inst.id)?;
                    report.removed_instances.push(inst.id);
                }
                // A failed instance gets another chance too: it may have
                // failed because another process held its port.
                InstanceState::Running | InstanceState::Failed => {
                    let image = store.image(inst.image_id)?;
                    let major = image.and_then(|i| i.pg_major).unwrap_or(0);
                    let spec = match self.instance_spec(inst.id, inst.port, major) {
                        Ok(s) => s,
                        Err(e) => {
                            store.set_instance_state(
                                inst.id,
                                InstanceState::Failed,
                                Some(&e.to_string()),
                            )?;
                            continue;
                        }
                    };
                    if !btrfs::is_subvolume(&dir) {
                        store.set_instance_state(
                            inst.id,
                            InstanceState::Failed,
                            Some("the instance's data directory is missing"),
                        )?;
                        continue;
                    }
                    // Whether it serves is checked the way clients connect
                    // (the supervisor marks it failed, with the reason,
                    // while it cannot).
                    let check = store
                        .instance_credentials(inst.id)?
                        .and_then(|c| self.serving_check(inst.port, &c).ok())
                        .map(Arc::new);
                    if let Some(pid) = process::running_postmaster(&dir) {
                        store.set_instance_pid(inst.id, Some(pid))?;
                        self.inner.supervisor.watch(
                            inst.id,
                            spec,
                            Postmaster::Adopted(pid),
                            check,
                            Start::Unchecked,
                        );
                        report.adopted.push(inst.id);
                    } else {
                        match process::spawn(&spec) {
                            Ok(pm) => {
                                store.set_instance_pid(inst.id, pm.pid())?;
                                self.inner.supervisor.watch(
                                    inst.id,
                                    spec,
                                    pm,
                                    check,
                                    Start::Unchecked,
                                );
                                report.restarted.push(inst.id);
                            }
                            Err(e) => {
                                store.set_instance_state(
                                    inst.id,
                                    InstanceState::Failed,
                                    Some(&format!("cannot start postgres: {e}")),
                                )?;
                            }
                        }
                    }
                }
            }
        }

        // Subvolumes no row accounts for.
        let images = store.images()?;
        let uploading: HashSet<i64> = images
            .iter()
            .filter(|i| i.state == ImageState::Uploading)
            .map(|i| i.id.get())
            .collect();
        let ready: HashSet<i64> = images
            .iter()
            .filter(|i| i.state == ImageState::Ready)
            .map(|i| i.id.get())
            .collect();
        let instances: HashSet<i64> = store
            .instances(None, None)?
            .iter()
            .map(|i| i.id.get())
            .collect();
        for (dir, keep) in [
            (layout.uploads(), &uploading),
            (layout.snapshots(), &ready),
            (layout.instances(), &instances),
        ] {
            for (name, id) in ids_in(&dir) {
                if id.is_some_and(|id| keep.contains(&id)) {
                    continue;
                }
                let path = dir.join(&name);
                if let Some(pid) = process::running_postmaster(&path) {
                    Postmaster::Adopted(pid).stop(Duration::from_secs(10)).await;
                }
                btrfs::delete_subvolume(&path)?;
                report.orphan_subvolumes.push(path.display().to_string());
            }
        }

        // Postmasters anywhere under data_path that no running instance owns
        // (a source's standby excepted).
        let owned: HashSet<std::path::PathBuf> = instances
            .iter()
            .map(|id| {
                std::fs::canonicalize(layout.instance(InstanceId::new(*id)))
                    .unwrap_or_else(|_| layout.instance(InstanceId::new(*id)))
            })
            .collect();
        // Standbys are the sources' (adopted, or removed with their source).
        let standbys =
            std::fs::canonicalize(layout.standbys()).unwrap_or_else(|_| layout.standbys());
        for (pid, cwd) in process::postmasters_beneath(layout.root()) {
            if !owned.contains(&cwd) && !cwd.starts_with(&standbys) {
                Postmaster::Adopted(pid).stop(Duration::from_secs(10)).await;
                report.orphan_processes.push(pid);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_reads_as_words() {
        assert_eq!(ReconcileReport::default().to_string(), "nothing to do");
        let r = ReconcileReport {
            adopted: vec![InstanceId::new(1), InstanceId::new(4)],
            failed_images: vec![ImageId::new(7)],
            ..Default::default()
        };
        assert_eq!(
            r.to_string(),
            "adopted 2 instances (1, 4); marked failed 1 image (7)"
        );
    }
}
