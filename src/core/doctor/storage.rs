//! Doctor's storage checks: `data_path` (btrfs or a loopback), the
//! free-space floor, and whether btrfs quotas can enforce
//! `max_instance_disk`.

use std::path::{Path, PathBuf};

use super::{fail, pass, Check};
use crate::config::Config;

pub(super) fn data_path(config: &Config) -> Check {
    const NAME: &str = "data_path";
    let path = &config.data_path;
    let btrfs = crate::core::storage::btrfs::is_btrfs(path).unwrap_or(false);
    if !btrfs {
        return match config.loopback_size {
            Some(size) => pass(
                NAME,
                format!(
                    "{} is not on btrfs; a {} byte loopback file {} is mounted there at start",
                    path.display(),
                    size.0,
                    crate::core::storage::loopback::loopback_file(&config.state_path).display()
                ),
            ),
            None => fail(
                NAME,
                format!("{} is not on btrfs (or does not exist)", path.display()),
                format!(
                    "mount a btrfs file system at {} (mkfs.btrfs DEVICE; mount DEVICE {}), or set loopback_size = \"20G\" to let draupnir make one in a file",
                    path.display(),
                    path.display()
                ),
            ),
        };
    }
    let probe = path.join(format!(".draupnir-doctor-{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe);
    let _ = std::fs::remove_file(&probe);
    match written {
        Ok(_) => pass(NAME, format!("{} is btrfs and writable", path.display())),
        Err(e) => fail(
            NAME,
            format!("{} is btrfs but not writable: {e}", path.display()),
            format!(
                "check it is not mounted read-only (findmnt {}) and that root may write there",
                path.display()
            ),
        ),
    }
}

/// `path` or its nearest existing ancestor.
pub(super) fn existing(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_owned()
}

/// (available, total) bytes of the file system holding `at`.
pub(super) fn space(at: &Path) -> nix::Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(at)?;
    let frag = st.fragment_size() as u64;
    Ok((
        st.blocks_available() as u64 * frag,
        st.blocks() as u64 * frag,
    ))
}

pub(super) fn free_space(config: &Config) -> Check {
    const NAME: &str = "free space";
    // `min_free_space` guards the btrfs file system at data_path. Until
    // there is one, the host's own free space says nothing about it: with
    // a loopback file, what matters is room for that file to grow.
    if !crate::core::storage::btrfs::is_btrfs(&config.data_path).unwrap_or(false) {
        let Some(size) = config.loopback_size else {
            return pass(
                NAME,
                "not checked: data_path is not on btrfs (see data_path)",
            );
        };
        let file = crate::core::storage::loopback::loopback_file(&config.state_path);
        let at = existing(&file);
        let used = std::fs::metadata(&file)
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .unwrap_or(0);
        let Ok((avail, _)) = space(&at) else {
            return pass(NAME, format!("not checked: cannot stat {}", at.display()));
        };
        let room = size.0.saturating_sub(used);
        let detail = format!(
            "{} MiB free on {} for the loopback file to grow by up to {} MiB",
            avail >> 20,
            at.display(),
            room >> 20
        );
        return if avail >= room {
            pass(NAME, detail)
        } else {
            fail(
                NAME,
                detail,
                "free space on that file system, move state_path, or lower loopback_size",
            )
        };
    }
    let at = existing(&config.data_path);
    let (avail, total) = match space(&at) {
        Ok(space) => space,
        Err(e) => {
            return fail(
                NAME,
                format!("cannot stat the file system of {}: {e}", at.display()),
                "check data_path",
            )
        }
    };
    let floor = config.min_free_space.bytes(total);
    let detail = format!(
        "{} MiB free of {} MiB on {} (min_free_space {} = {} MiB)",
        avail >> 20,
        total >> 20,
        at.display(),
        config.min_free_space,
        floor >> 20
    );
    if avail >= floor {
        pass(NAME, detail)
    } else {
        fail(
            NAME,
            detail,
            "destroy instances or images (ssh draupnir instances / images), grow the file system, or lower min_free_space",
        )
    }
}

/// With `max_instance_disk` set: can btrfs quotas enforce it?
pub(super) fn disk_limits(config: &Config) -> Option<Check> {
    use crate::core::storage::btrfs::{self, QuotaMode};
    const NAME: &str = "disk limits";
    let limit = config.max_instance_disk.filter(|s| s.0 > 0)?;
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let version = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    let mode = if btrfs::is_btrfs(&config.data_path).unwrap_or(false) {
        btrfs::quota_mode(&config.data_path).ok()
    } else {
        None
    };
    Some(match mode {
        Some(QuotaMode::Simple) => pass(
            NAME,
            format!("max_instance_disk = {} bytes; simple quotas are on", limit.0),
        ),
        Some(QuotaMode::Full { inconsistent }) => pass(
            NAME,
            format!(
                "max_instance_disk = {} bytes; full qgroups are on{} (they slow every snapshot; simple quotas would not)",
                limit.0,
                if inconsistent { ", inconsistent until `btrfs quota rescan`" } else { "" }
            ),
        ),
        _ if version < (6, 7) => fail(
            NAME,
            format!("max_instance_disk is set but kernel {release} has no btrfs simple quotas"),
            "boot Linux 6.7+ or remove max_instance_disk",
        ),
        _ => pass(
            NAME,
            format!(
                "max_instance_disk = {} bytes; simple quotas are switched on at start (kernel {release})",
                limit.0
            ),
        ),
    })
}
