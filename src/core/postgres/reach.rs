//! Can the instance user reach the directories its postmasters need?
//!
//! Owns the one honest answer: a forked child takes the instance user's
//! uid and gid (and no supplementary groups, as a postmaster runs) and asks
//! the kernel (`access(X_OK)`) about every directory and each of its
//! ancestors, so modes, owners, ACLs and mounts are judged exactly as they
//! will be when postgres starts. A blocked directory is named with the
//! `chmod` that opens it. Used by `doctor`, at daemon start, and to explain
//! a postmaster that could not start.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::io::FromRawFd;
use std::path::{Path, PathBuf};

use super::cluster::InstanceUser;

/// A directory the instance user cannot get through.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}; fix: {}", self.reason(), self.fix())]
pub struct Blocked {
    pub user: String,
    /// The directory a postmaster needs.
    pub target: PathBuf,
    /// The first directory on the way (from `/`) the user cannot search.
    pub dir: PathBuf,
    /// Its permission bits and owner, when it could be looked at.
    pub mode: Option<u32>,
    pub owner: Option<String>,
    /// What `access` said there.
    pub errno: i32,
}

impl Blocked {
    /// `instance user U cannot reach T: D is 0700 root`.
    pub fn reason(&self) -> String {
        let what = match (self.errno, self.mode, &self.owner) {
            (libc::EACCES, Some(mode), Some(owner)) => format!("is {mode:04o} {owner}"),
            _ => io::Error::from_raw_os_error(self.errno).to_string(),
        };
        format!(
            "instance user {} cannot reach {}: {} {what}",
            self.user,
            self.target.display(),
            self.dir.display()
        )
    }

    /// The command that lets the instance user through.
    pub fn fix(&self) -> String {
        if self.errno == libc::EACCES {
            format!("chmod o+x {}", self.dir.display())
        } else {
            format!(
                "make {} a directory {} can search",
                self.dir.display(),
                self.user
            )
        }
    }
}

/// Why the check could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    #[error("{0}")]
    Blocked(Box<Blocked>),
    #[error("cannot become instance user {user} to check its access: {source}")]
    Identity { user: String, source: io::Error },
    #[error("cannot check the instance user's access: {0}")]
    Probe(#[source] io::Error),
}

/// The directories every postmaster needs to get through: `data_path`,
/// its three volume directories, `bin_root` and each installed major's
/// `bin`.
pub fn postmaster_dirs(data_path: &Path, bin_root: &Path) -> Vec<PathBuf> {
    let layout = crate::core::storage::layout::Layout::new(data_path);
    let mut dirs = vec![
        data_path.to_owned(),
        layout.uploads(),
        layout.snapshots(),
        layout.instances(),
        bin_root.to_owned(),
    ];
    for major in super::cluster::installed_majors(bin_root) {
        dirs.push(bin_root.join(major.to_string()).join("bin"));
    }
    dirs
}

/// Check, as `user`, that every directory in `targets` can be reached
/// (searched). Directories that do not exist yet are judged by the
/// ancestors that do.
pub fn check(user: &InstanceUser, targets: &[PathBuf]) -> Result<(), ReachError> {
    check_chains(user, targets, true)
}

/// [`check`] of the way to each target only (its ancestors), for a
/// directory whose own mode does not count yet (a mount point before the
/// mount).
pub fn check_way(user: &InstanceUser, targets: &[PathBuf]) -> Result<(), ReachError> {
    check_chains(user, targets, false)
}

fn check_chains(
    user: &InstanceUser,
    targets: &[PathBuf],
    with_target: bool,
) -> Result<(), ReachError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    // Every target with its ancestors, top-down.
    let chains: Vec<Vec<PathBuf>> = targets
        .iter()
        .map(|t| {
            let abs = if t.is_absolute() {
                t.clone()
            } else {
                cwd.join(t)
            };
            let skip = usize::from(!with_target);
            let mut chain: Vec<PathBuf> =
                abs.ancestors().skip(skip).map(Path::to_path_buf).collect();
            chain.reverse();
            chain
        })
        .collect();
    let mut probes: Vec<PathBuf> = chains.iter().flatten().cloned().collect();
    probes.sort();
    probes.dedup();
    let results = probe(user, &probes)?;
    for (target, chain) in targets.iter().zip(&chains) {
        for dir in chain {
            let Ok(i) = probes.binary_search(dir) else {
                continue;
            };
            match results[i] {
                0 => continue,
                // Not there (yet): nothing further down exists either.
                libc::ENOENT | libc::ENOTDIR => break,
                errno => {
                    let meta = std::fs::metadata(dir).ok();
                    return Err(ReachError::Blocked(Box::new(Blocked {
                        user: user.name.clone(),
                        target: target.clone(),
                        dir: dir.clone(),
                        mode: meta.as_ref().map(|m| m.permissions().mode() & 0o7777),
                        owner: meta.as_ref().map(|m| owner_name(m.uid())),
                        errno,
                    })));
                }
            }
        }
    }
    Ok(())
}

fn owner_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

/// `access(path, X_OK)` for each path as `user`, in a forked child: 0 or
/// the errno.
fn probe(user: &InstanceUser, paths: &[PathBuf]) -> Result<Vec<i32>, ReachError> {
    let cpaths: Vec<CString> = paths
        .iter()
        .map(|p| CString::new(p.as_os_str().as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|e| ReachError::Probe(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let ptrs: Vec<*const libc::c_char> = cpaths.iter().map(|c| c.as_ptr()).collect();
    // Slot 0: 0, or the errno of taking the user's identity.
    let mut out: Vec<i32> = vec![0; ptrs.len() + 1];
    let (uid, gid) = (user.uid, user.gid);
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: a plain syscall filling the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(ReachError::Probe(io::Error::last_os_error()));
    }
    let (rd, wr) = (fds[0], fds[1]);
    // SAFETY: the child only makes async-signal-safe calls (setgroups,
    // setgid, setuid, access, write, _exit) on memory prepared before the
    // fork, and never returns.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            let buf = out.as_mut_ptr();
            let errno = || *libc::__errno_location();
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                *buf = errno();
            } else {
                for (i, p) in ptrs.iter().enumerate() {
                    *buf.add(i + 1) = if libc::access(*p, libc::X_OK) == 0 {
                        0
                    } else {
                        errno()
                    };
                }
            }
            let bytes = buf as *const u8;
            let len = out.len() * std::mem::size_of::<i32>();
            let mut done = 0;
            while done < len {
                let n = libc::write(wr, bytes.add(done) as *const libc::c_void, len - done);
                if n <= 0 {
                    break;
                }
                done += n as usize;
            }
            libc::_exit(0);
        }
    }
    // SAFETY: closing the write end we own.
    unsafe { libc::close(wr) };
    // SAFETY: `rd` is ours and closed by the File.
    let mut reader = unsafe { std::fs::File::from_raw_fd(rd) };
    if pid < 0 {
        return Err(ReachError::Probe(io::Error::last_os_error()));
    }
    let mut bytes = Vec::new();
    let read = reader.read_to_end(&mut bytes);
    loop {
        let mut status = 0;
        // SAFETY: reaping the child forked above.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    read.map_err(ReachError::Probe)?;
    let got: Vec<i32> = bytes
        .chunks_exact(4)
        .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if got.len() != out.len() {
        return Err(ReachError::Probe(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the checking process ended early",
        )));
    }
    if got[0] != 0 {
        return Err(ReachError::Identity {
            user: user.name.clone(),
            source: io::Error::from_raw_os_error(got[0]),
        });
    }
    Ok(got[1..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_directory_and_the_chmod() {
        let b = Blocked {
            user: "draupnir-instance".into(),
            target: "/srv/x/data".into(),
            dir: "/srv/x".into(),
            mode: Some(0o700),
            owner: Some("root".into()),
            errno: libc::EACCES,
        };
        assert_eq!(
            b.to_string(),
            "instance user draupnir-instance cannot reach /srv/x/data: /srv/x is 0700 root; fix: chmod o+x /srv/x"
        );
    }
}
