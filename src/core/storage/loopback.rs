//! The embedded development default: a btrfs file system in a sparse file.
//!
//! Owns: making sure `data_path` is on btrfs at start. When it is not and
//! the config sets `loopback_size`, a sparse file under `state_path` is
//! created, formatted with `mkfs.btrfs` and loop-mounted at `data_path`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::btrfs;

#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    #[error("data_path {0} is not on btrfs; mount a btrfs file system there or set `loopback_size` to let draupnir make one in a file")]
    NotBtrfs(PathBuf),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
}

/// What `ensure_btrfs` found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mounted {
    /// `data_path` was already on btrfs.
    Already,
    /// A loopback file was (created and) mounted at `data_path`.
    Loopback { file: PathBuf, created: bool },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LoopbackError + 'a {
    move |source| LoopbackError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn run(cmd: &mut Command) -> Result<(), LoopbackError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|e| LoopbackError::Command {
        command: shown.clone(),
        message: e.to_string(),
    })?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        return Err(LoopbackError::Command {
            command: shown,
            message: msg.trim().lines().last().unwrap_or("failed").to_string(),
        });
    }
    Ok(())
}

/// The loopback file used for `data_path`.
pub fn loopback_file(state_path: &Path) -> PathBuf {
    state_path.join("data.btrfs")
}

/// Make sure `data_path` exists and is on btrfs, mounting a loopback file
/// of `size` bytes when allowed.
pub fn ensure_btrfs(
    data_path: &Path,
    state_path: &Path,
    size: Option<u64>,
) -> Result<Mounted, LoopbackError> {
    std::fs::create_dir_all(data_path).map_err(io_err("cannot create", data_path))?;
    if btrfs::is_btrfs(data_path).map_err(io_err("cannot stat", data_path))? {
        return Ok(Mounted::Already);
    }
    let Some(size) = size else {
        return Err(LoopbackError::NotBtrfs(data_path.to_owned()));
    };
    std::fs::create_dir_all(state_path).map_err(io_err("cannot create", state_path))?;
    let file = loopback_file(state_path);
    let created = !file.exists();
    if created {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file)
            .map_err(io_err("cannot create", &file))?;
        f.set_len(size).map_err(io_err("cannot size", &file))?;
        drop(f);
        if let Err(e) = run(Command::new("mkfs.btrfs").arg("-q").arg(&file)) {
            let _ = std::fs::remove_file(&file);
            return Err(e);
        }
    }
    run(Command::new("mount")
        .args(["-t", "btrfs", "-o", "loop"])
        .arg(&file)
        .arg(data_path))?;
    if !btrfs::is_btrfs(data_path).map_err(io_err("cannot stat", data_path))? {
        return Err(LoopbackError::NotBtrfs(data_path.to_owned()));
    }
    Ok(Mounted::Loopback { file, created })
}
