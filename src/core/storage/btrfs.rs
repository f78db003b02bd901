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

// Quota groups (issue 17): enabling simple quotas, limiting a subvolume's
// level-0 qgroup and reading every qgroup's usage from the quota tree.

// _IOWR(0x94, 40, 16 bytes)
const BTRFS_IOC_QUOTA_CTL: u64 = 0xC010_9428;
// _IOR(0x94, 43, 48 bytes)
const BTRFS_IOC_QGROUP_LIMIT: u64 = 0x8030_942B;
// _IOWR(0x94, 18, 4096 bytes)
const BTRFS_IOC_INO_LOOKUP: u64 = 0xD000_9412;
// _IOWR(0x94, 17, 4096 bytes)
const BTRFS_IOC_TREE_SEARCH: u64 = 0xD000_9411;

const BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA: u64 = 4;
const BTRFS_QGROUP_LIMIT_MAX_EXCL: u64 = 1 << 1;
const BTRFS_QUOTA_TREE_OBJECTID: u64 = 8;
const BTRFS_QGROUP_STATUS_KEY: u32 = 240;
const BTRFS_QGROUP_INFO_KEY: u32 = 242;
const BTRFS_QGROUP_LIMIT_KEY: u32 = 244;
const BTRFS_QGROUP_STATUS_FLAG_ON: u64 = 1 << 0;
const BTRFS_QGROUP_STATUS_FLAG_INCONSISTENT: u64 = 1 << 2;
const BTRFS_QGROUP_STATUS_FLAG_SIMPLE_MODE: u64 = 1 << 3;

#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

#[repr(C)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: u64,
    unused2: u64,
    unused3: u64,
    unused4: u64,
}

#[repr(C)]
struct SearchArgs {
    key: SearchKey,
    buf: [u8; 3992],
}

const _: () = assert!(std::mem::size_of::<QuotaCtlArgs>() == 16);
const _: () = assert!(std::mem::size_of::<QgroupLimitArgs>() == 48);
const _: () = assert!(std::mem::size_of::<InoLookupArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<SearchArgs>() == 4096);

/// How quotas stand on a file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaMode {
    Off,
    /// Full qgroups: shared extents are accounted to every sharer.
    Full {
        inconsistent: bool,
    },
    /// Simple quotas: each extent is accounted to the subvolume that
    /// wrote it (kernel 6.7+).
    Simple,
}

/// One level-0 quota group: a subvolume's usage and its limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QgroupUsage {
    pub referenced: u64,
    pub exclusive: u64,
    /// The limit on exclusive bytes, if one is set.
    pub max_exclusive: Option<u64>,
}

/// The id of the subvolume whose root is `path`.
pub fn subvolume_id(path: &Path) -> Result<u64> {
    let run = || -> io::Result<u64> {
        let dir = File::open(path)?;
        let mut args = InoLookupArgs {
            treeid: 0,
            objectid: BTRFS_FIRST_FREE_OBJECTID,
            name: [0; 4080],
        };
        ioctl(&dir, BTRFS_IOC_INO_LOOKUP, &mut args)?;
        Ok(args.treeid)
    };
    run().map_err(err("subvolume id", path))
}

/// Every item of the quota tree of the file system holding `path` whose
/// type is in `types`: (type, offset, item bytes). ENOENT: quotas are off.
fn quota_items(path: &Path, types: (u32, u32)) -> io::Result<Vec<(u32, u64, Vec<u8>)>> {
    let dir = File::open(path)?;
    let mut out = Vec::new();
    let mut min_offset = 0u64;
    let mut min_type = types.0;
    loop {
        let mut args = SearchArgs {
            key: SearchKey {
                tree_id: BTRFS_QUOTA_TREE_OBJECTID,
                min_objectid: 0,
                max_objectid: 0,
                min_offset,
                max_offset: u64::MAX,
                min_transid: 0,
                max_transid: u64::MAX,
                min_type,
                max_type: types.1,
                nr_items: 4096,
                unused: 0,
                unused1: 0,
                unused2: 0,
                unused3: 0,
                unused4: 0,
            },
            buf: [0; 3992],
        };
        ioctl(&dir, BTRFS_IOC_TREE_SEARCH, &mut args)?;
        let n = args.key.nr_items as usize;
        if n == 0 {
            return Ok(out);
        }
        let mut pos = 0usize;
        let mut last = (0u32, 0u64);
        for _ in 0..n {
            let header = args.buf.get(pos..pos + 32).ok_or_else(short)?;
            let offset = le64(&header[16..24]);
            let typ = u32::from_le_bytes([header[24], header[25], header[26], header[27]]);
            let len = u32::from_le_bytes([header[28], header[29], header[30], header[31]]) as usize;
            let item = args.buf.get(pos + 32..pos + 32 + len).ok_or_else(short)?;
            if typ >= types.0 && typ <= types.1 {
                out.push((typ, offset, item.to_vec()));
            }
            last = (typ, offset);
            pos += 32 + len;
        }
        // The search key is (objectid, type, offset): continue after the
        // last item returned.
        if last.1 == u64::MAX {
            if last.0 >= types.1 {
                return Ok(out);
            }
            min_type = last.0 + 1;
            min_offset = 0;
        } else {
            min_type = last.0;
            min_offset = last.1 + 1;
        }
    }
}

fn short() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "short tree search result")
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Whether quotas are on for the file system holding `path`, and how.
pub fn quota_mode(path: &Path) -> Result<QuotaMode> {
    let items = match quota_items(path, (BTRFS_QGROUP_STATUS_KEY, BTRFS_QGROUP_STATUS_KEY)) {
        Ok(items) => items,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(QuotaMode::Off),
        Err(e) => return Err(err("quota status", path)(e)),
    };
    let Some((_, _, item)) = items.first() else {
        return Ok(QuotaMode::Off);
    };
    // version, generation, flags, rescan[, enable_gen]
    let flags = item.get(16..24).map(le64).unwrap_or(0);
    Ok(if flags & BTRFS_QGROUP_STATUS_FLAG_ON == 0 {
        QuotaMode::Off
    } else if flags & BTRFS_QGROUP_STATUS_FLAG_SIMPLE_MODE != 0 {
        QuotaMode::Simple
    } else {
        QuotaMode::Full {
            inconsistent: flags & BTRFS_QGROUP_STATUS_FLAG_INCONSISTENT != 0,
        }
    })
}

/// Turn on simple quotas on the file system holding `path` unless quotas
/// (of either kind) are on already. Returns the mode in force afterwards.
pub fn enable_simple_quotas(path: &Path) -> Result<QuotaMode> {
    match quota_mode(path)? {
        QuotaMode::Off => {}
        on => return Ok(on),
    }
    let run = || -> io::Result<()> {
        let dir = File::open(path)?;
        let mut args = QuotaCtlArgs {
            cmd: BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA,
            status: 0,
        };
        ioctl(&dir, BTRFS_IOC_QUOTA_CTL, &mut args)
    };
    run().map_err(err("quota enable --simple", path))?;
    quota_mode(path)
}

/// Limit the exclusive bytes of subvolume `subvol` (its level-0 qgroup);
/// `None` lifts the limit. `fs` is any path on the same file system
/// outside that subvolume: the change is a transaction charged to the
/// subvolume the ioctl is issued on, and one at its limit would refuse it
/// (EDQUOT) — the very moment it needs raising.
pub fn set_exclusive_limit(fs: &Path, subvol: u64, max: Option<u64>) -> Result<()> {
    let run = || -> io::Result<()> {
        let dir = File::open(fs)?;
        let mut args = QgroupLimitArgs {
            qgroupid: subvol,
            flags: BTRFS_QGROUP_LIMIT_MAX_EXCL,
            max_rfer: 0,
            max_excl: max.unwrap_or(u64::MAX),
            rsv_rfer: 0,
            rsv_excl: 0,
        };
        ioctl(&dir, BTRFS_IOC_QGROUP_LIMIT, &mut args)
    };
    run().map_err(err("qgroup limit", fs))
}

/// Usage of every level-0 qgroup (by subvolume id) on the file system
/// holding `path`, as of the last committed transaction. Empty when quotas
/// are off.
pub fn qgroup_usage(path: &Path) -> Result<std::collections::HashMap<u64, QgroupUsage>> {
    let items = match quota_items(path, (BTRFS_QGROUP_INFO_KEY, BTRFS_QGROUP_LIMIT_KEY)) {
        Ok(items) => items,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Default::default()),
        Err(e) => return Err(err("qgroup usage", path)(e)),
    };
    let mut out = std::collections::HashMap::<u64, QgroupUsage>::new();
    for (typ, qgroupid, item) in items {
        // Level-0 qgroups only: the level sits in the top 16 bits.
        if qgroupid >> 48 != 0 {
            continue;
        }
        let u = out.entry(qgroupid).or_default();
        match typ {
            // generation, rfer, rfer_cmpr, excl, excl_cmpr
            BTRFS_QGROUP_INFO_KEY if item.len() >= 40 => {
                u.referenced = le64(&item[8..16]);
                u.exclusive = le64(&item[24..32]);
            }
            // flags, max_rfer, max_excl, rsv_rfer, rsv_excl
            BTRFS_QGROUP_LIMIT_KEY if item.len() >= 24 => {
                let flags = le64(&item[0..8]);
                let max = le64(&item[16..24]);
                if flags & BTRFS_QGROUP_LIMIT_MAX_EXCL != 0 && max != u64::MAX {
                    u.max_exclusive = Some(max);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}
