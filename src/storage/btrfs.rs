//! btrfs subvolumes and snapshots, through the kernel's ioctls.
//!
//! Owns: creating a subvolume, taking read-only and writable snapshots,
//! deleting a subvolume together with any subvolumes nested inside it, and
//! telling whether a path is on btrfs. Nothing here knows about images or
//! instances; callers pass paths.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;

// _IOW(0x94, nr, 4096-byte struct)
const BTRFS_IOC_SUBVOL_CREATE: u64 = 0x5000_940E;
const BTRFS_IOC_SNAP_DESTROY: u64 = 0x5000_940F;
const BTRFS_IOC_SNAP_CREATE_V2: u64 = 0x5000_9417;

#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

const _: () = assert!(std::mem::size_of::<VolArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);

/// A failed btrfs operation, naming the path.
#[derive(Debug, thiserror::Error)]
#[error("btrfs {op} {path}: {source}")]
pub struct BtrfsError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl BtrfsError {
    /// True when the file system ran out of space.
    pub fn is_no_space(&self) -> bool {
        self.source.raw_os_error() == Some(libc::ENOSPC)
    }
}

type Result<T> = std::result::Result<T, BtrfsError>;

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BtrfsError + 'a {
    move |source| BtrfsError {
        op,
        path: path.to_owned(),
        source,
    }
}

/// True when `path` is on a btrfs file system.
pub fn is_btrfs(path: &Path) -> io::Result<bool> {
    let st = nix::sys::statfs::statfs(path).map_err(io::Error::from)?;
    Ok(st.filesystem_type().0 as i64 == BTRFS_SUPER_MAGIC)
}

/// True when `path` is the root of a subvolume.
pub fn is_subvolume(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            m.is_dir() && m.ino() == BTRFS_FIRST_FREE_OBJECTID && is_btrfs(path).unwrap_or(false)
        }
        Err(_) => false,
    }
}

fn split(path: &Path) -> io::Result<(File, CString)> {
    let parent = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let dir = File::open(parent)?;
    let name = CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    Ok((dir, name))
}

fn fill(dst: &mut [u8], name: &CString) -> io::Result<()> {
    let bytes = name.as_bytes_with_nul();
    if bytes.len() > dst.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "name too long"));
    }
    dst[..bytes.len()].copy_from_slice(bytes);
    Ok(())
}

fn ioctl<T>(fd: &File, request: u64, args: &mut T) -> io::Result<()> {
    // SAFETY: `args` is a properly sized, initialised #[repr(C)] struct that
    // matches the kernel's layout for `request`, and outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, args as *mut T) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Create an empty subvolume at `path` (its parent must exist).
pub fn create_subvolume(path: &Path) -> Result<()> {
    let run = || -> io::Result<()> {
        let (dir, name) = split(path)?;
        let mut args = VolArgs {
            fd: 0,
            name: [0; 4088],
        };
        fill(&mut args.name, &name)?;
        ioctl(&dir, BTRFS_IOC_SUBVOL_CREATE, &mut args)
    };
    run().map_err(err("subvolume create", path))
}

/// Snapshot the subvolume `src` as `dst`, read-only or writable.
pub fn snapshot(src: &Path, dst: &Path, read_only: bool) -> Result<()> {
    let run = || -> io::Result<()> {
        let source = File::open(src)?;
        let (dir, name) = split(dst)?;
        let mut args = VolArgsV2 {
            fd: source.as_raw_fd() as i64,
            transid: 0,
            flags: if read_only { BTRFS_SUBVOL_RDONLY } else { 0 },
            unused: [0; 4],
            name: [0; 4040],
        };
        fill(&mut args.name, &name)?;
        ioctl(&dir, BTRFS_IOC_SNAP_CREATE_V2, &mut args)
    };
    run().map_err(err("snapshot", dst))
}

/// Delete the subvolume at `path` and every subvolume nested inside it.
/// A path that does not exist is not an error; a plain directory there is
/// removed as a directory tree (a half-made subvolume may be one).
pub fn delete_subvolume(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err("delete", path)(e)),
    };
    if !meta.is_dir() || meta.ino() != BTRFS_FIRST_FREE_OBJECTID {
        return if meta.is_dir() {
            std::fs::remove_dir_all(path).map_err(err("delete", path))
        } else {
            std::fs::remove_file(path).map_err(err("delete", path))
        };
    }
    match destroy_unless_gone(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
            // Nested subvolumes: delete them deepest first, then retry.
            let mut nested = Vec::new();
            find_nested(path, meta.dev(), &mut nested).map_err(err("delete", path))?;
            nested.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for n in nested {
                destroy_unless_gone(&n).map_err(err("delete", &n))?;
            }
            destroy_unless_gone(path).map_err(err("delete", path))
        }
        r => r.map_err(err("delete", path)),
    }
}

/// [`destroy`], where a subvolume deleted meanwhile by someone else (a
/// background delete) counts as done.
fn destroy_unless_gone(path: &Path) -> io::Result<()> {
    match destroy(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

fn destroy(path: &Path) -> io::Result<()> {
    let (dir, name) = split(path)?;
    let mut args = VolArgs {
        fd: 0,
        name: [0; 4088],
    };
    fill(&mut args.name, &name)?;
    ioctl(&dir, BTRFS_IOC_SNAP_DESTROY, &mut args)
}

fn find_nested(dir: &Path, dev: u64, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if !ft.is_dir() {
            continue;
        }
        let path = entry.path();
        let m = std::fs::symlink_metadata(&path)?;
        if m.ino() == BTRFS_FIRST_FREE_OBJECTID {
            out.push(path.clone());
        }
        // Subvolumes have their own st_dev; only descend on btrfs-internal
        // paths, never across a foreign mount.
        if m.ino() == BTRFS_FIRST_FREE_OBJECTID {
            find_nested(&path, m.dev(), out)?;
        } else if m.dev() == dev {
            find_nested(&path, dev, out)?;
        }
    }
    Ok(())
}

/// Disk bytes used exclusively by files under `path` is hard to know
/// without quotas; this sums apparent file sizes (for listings).
pub fn apparent_size(path: &Path) -> u64 {
    fn walk(p: &Path, total: &mut u64) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                if let Ok(m) = e.metadata() {
                    if m.is_dir() {
                        walk(&e.path(), total);
                    } else {
                        *total += m.len();
                    }
                }
            }
        }
    }
    let mut total = 0;
    walk(path, &mut total);
    total
}
