//! Starting, finding and stopping one `postgres` postmaster.
//!
//! Owns: the exact command line a postmaster runs with (as the instance
//! user, in its own session so it outlives the daemon, with a cleared
//! environment and its output in a log file), recognising a running
//! postmaster from its `postmaster.pid` without trusting a stale or
//! foreign PID, and stopping it (fast shutdown, then escalating).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::cluster::{InstanceUser, PgBin};
use super::sandbox::{self, Confinement, Reach, SandboxError};

/// Everything needed to (re)start one postmaster.
#[derive(Debug, Clone)]
pub struct PostmasterSpec {
    pub bin: PgBin,
    pub datadir: PathBuf,
    /// Its `-p`: the TCP port it listens on, and the name of its socket.
    pub port: u16,
    /// Does it listen on TCP at all? Only then may its box bind `port`;
    /// one that serves its Unix socket only (a finalise's first start, a
    /// source's standby) binds no port.
    pub tcp: bool,
    /// `-c name=value` pairs.
    pub settings: Vec<(String, String)>,
    pub log_file: PathBuf,
    pub user: InstanceUser,
    /// The box it runs in: its data directory, its port
    /// ([`sandbox`]).
    pub confinement: Confinement,
    /// What its box reaches besides (a standby's primary; empty for the
    /// rest).
    pub reach: Reach,
}

/// Why a postmaster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("cannot open the log file {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start {} in {} as {user}: {source}{}", program.display(), datadir.display(), blocked.as_ref().map(|b| format!("; {b}")).unwrap_or_default())]
    Exec {
        program: PathBuf,
        datadir: PathBuf,
        user: String,
        #[source]
        source: io::Error,
        /// For `EACCES`: the directory the instance user cannot pass.
        blocked: Option<Box<super::reach::Blocked>>,
    },
}

/// A running postmaster: our own child, or one adopted by PID.
#[derive(Debug)]
pub enum Postmaster {
    Child(tokio::process::Child),
    Adopted(i32),
}

/// How to stop a postmaster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// SIGINT: roll back sessions, write a shutdown checkpoint. For data
    /// that is kept (a restart, a finalise).
    Fast,
    /// SIGQUIT: end at once without a checkpoint. For data that is about to
    /// be deleted (destroy, reset): a checkpoint would only write and fsync
    /// pages nobody will read.
    Immediate,
}

impl Postmaster {
    pub fn pid(&self) -> Option<i32> {
        match self {
            Postmaster::Child(c) => c.id().map(|p| p as i32),
            Postmaster::Adopted(p) => Some(*p),
        }
    }

    /// Wait until the process has exited (an adopted one, which cannot be
    /// waited for, is looked at every 100 ms: the supervisor waits like
    /// this for as long as an instance runs).
    pub async fn wait(&mut self) {
        self.wait_polling(Duration::from_millis(100)).await
    }

    /// [`Postmaster::wait`], looking at an adopted process every `every`.
    async fn wait_polling(&mut self, every: Duration) {
        match self {
            Postmaster::Child(c) => {
                let _ = c.wait().await;
            }
            Postmaster::Adopted(pid) => {
                while alive(*pid) {
                    tokio::time::sleep(every).await;
                }
            }
        }
    }

    /// Fast shutdown (SIGINT); after `grace`, immediate shutdown (SIGQUIT);
    /// after that, SIGKILL. Returns once the process is gone.
    pub async fn stop(&mut self, grace: Duration) {
        self.shutdown(Shutdown::Fast, grace).await
    }

    /// Stop the postmaster the way `mode` says, escalating as
    /// [`Postmaster::stop`] does. Returns once the process is gone.
    pub async fn shutdown(&mut self, mode: Shutdown, grace: Duration) {
        let steps: &[(Signal, Duration)] = &[
            (Signal::SIGINT, grace),
            (Signal::SIGQUIT, Duration::from_secs(5)),
            (Signal::SIGKILL, Duration::from_secs(30)),
        ];
        let steps = match mode {
            Shutdown::Fast => steps,
            Shutdown::Immediate => &steps[1..],
        };
        // A stop is waited for closely: destroy and reset wait on it.
        let every = Duration::from_millis(5);
        for &(signal, wait) in steps {
            let Some(pid) = self.pid() else { return };
            if kill(Pid::from_raw(pid), signal).is_err() {
                // Already gone; reap it if it is our child.
                self.wait_polling(every).await;
                return;
            }
            if tokio::time::timeout(wait, self.wait_polling(every))
                .await
                .is_ok()
            {
                return;
            }
        }
    }
}

/// Is the process alive (and not a zombie)?
pub fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // The state is the first field after the command name.
    match stat_field(pid, 0) {
        Some(state) => !matches!(state.as_str(), "Z" | "X"),
        None => false,
    }
}

/// Field `n` of `/proc/PID/stat` counted from just after the command name
/// (which may itself hold spaces and parentheses): 0 is the state, 1 the
/// parent's PID.
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        stat.rsplit(')')
            .next()?
            .split_whitespace()
            .nth(n)?
            .to_owned(),
    )
}

/// The PID recorded in `datadir/postmaster.pid`, if it names a live
/// `postgres` process whose working directory is `datadir`. A stale file or
/// a recycled PID naming another process is never trusted.
pub fn running_postmaster(datadir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(datadir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    if is_postmaster_of(pid, datadir) {
        Some(pid)
    } else {
        None
    }
}

/// `pid`'s parent.
pub fn parent_pid(pid: i32) -> Option<i32> {
    stat_field(pid, 1)?.parse().ok()
}

/// Does `pid` name a live `postgres` running in `datadir`?
pub fn is_postmaster_of(pid: i32, datadir: &Path) -> bool {
    if !alive(pid) {
        return false;
    }
    let exe = match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(p) => p,
        Err(_) => return false,
    };
    let is_postgres = exe
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("postgres"));
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let dir = std::fs::canonicalize(datadir).unwrap_or_else(|_| datadir.to_owned());
    is_postgres && cwd.as_deref() == Some(dir.as_path())
}

/// Live processes whose working directory is `dir` or beneath it: a
/// stopped postmaster's backends that have not noticed yet, or what one
/// of them started.
pub fn processes_in(dir: &Path) -> Vec<i32> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&dir))
                && alive(*pid)
        })
        .collect()
}

/// After a postmaster of `dir` has stopped, wait for every process still
/// working in `dir` to go (SIGKILL after `grace`). Until they have, they
/// keep the postmaster's System V segment attached, and a new subvolume
/// that gets the same device number would find it "still in use".
pub async fn reap_leftovers(dir: &Path, grace: Duration) {
    let start = Instant::now();
    loop {
        let left = processes_in(dir);
        if left.is_empty() || start.elapsed() > grace * 3 {
            return;
        }
        if start.elapsed() > grace {
            for pid in left {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every live postgres postmaster whose working directory is beneath
/// `root` (found through /proc), with that directory.
pub fn postmasters_beneath(root: &Path) -> Vec<(i32, PathBuf)> {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in rd.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else {
            continue;
        };
        if !cwd.starts_with(&root) {
            continue;
        }
        // Only the postmaster itself: its parent is not a postgres in the
        // same directory.
        let ppid = parent_pid(pid).unwrap_or(0);
        if is_postmaster_of(pid, &cwd) && !is_postmaster_of(ppid, &cwd) {
            found.push((pid, cwd));
        }
    }
    found
}

/// Start a postmaster for `spec`. It runs as the instance user in a new
/// session with a clean environment, in its own box ([`sandbox`]); stdout
/// and stderr append to the log. A failure names the program, the data
/// directory and the user, and for `EACCES` the directory the instance
/// user cannot get through.
pub fn spawn(spec: &PostmasterSpec) -> Result<Postmaster, SpawnError> {
    let log_err = |source| SpawnError::Log {
        path: spec.log_file.clone(),
        source,
    };
    let log = File::options()
        .create(true)
        .append(true)
        .open(&spec.log_file)
        .map_err(log_err)?;
    let mut cmd = tokio::process::Command::new(spec.bin.postgres());
    cmd.arg("-D")
        .arg(&spec.datadir)
        .arg("-p")
        .arg(spec.port.to_string());
    if let Some(dsm) = sandbox::dsm_setting(spec.confinement) {
        cmd.args(["-c", dsm]);
    }
    for (name, value) in &spec.settings {
        cmd.arg("-c").arg(format!("{name}={value}"));
    }
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LC_ALL", "C.UTF-8")
        .current_dir(&spec.datadir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(log_err)?)
        .stderr(log)
        .uid(spec.user.uid)
        .gid(spec.user.gid);
    confine(
        &mut cmd,
        spec.confinement,
        &spec.bin,
        &spec.datadir,
        spec.tcp.then_some(spec.port),
        &spec.reach,
    )?;
    let child = cmd.spawn().map_err(|source| {
        let program = spec.bin.postgres();
        let blocked = if source.kind() == io::ErrorKind::PermissionDenied {
            let mut dirs = vec![spec.datadir.clone()];
            dirs.extend(program.parent().map(Path::to_path_buf));
            match super::reach::check(&spec.user, &dirs) {
                Err(super::reach::ReachError::Blocked(b)) => Some(b),
                _ => None,
            }
        } else {
            None
        };
        SpawnError::Exec {
            program,
            datadir: spec.datadir.clone(),
            user: spec.user.name.clone(),
            source,
            blocked,
        }
    })?;
    Ok(Postmaster::Child(child))
}

/// Make `cmd` start in a new session, boxed to `datadir` and to binding
/// TCP port `listen` (`None`: none) ([`sandbox`]). For every `postgres`
/// run on data Draupnir did not make (postmasters and single-user mode
/// alike).
pub fn confine(
    cmd: &mut tokio::process::Command,
    confinement: Confinement,
    bin: &PgBin,
    datadir: &Path,
    listen: Option<u16>,
    reach: &Reach,
) -> Result<(), SandboxError> {
    let mut boxed = sandbox::prepare(confinement, datadir, &bin.dir, listen, reach)?;
    // SAFETY: runs in the forked child before exec. setsid is
    // async-signal-safe; `Prepared::enter` makes two system calls (prctl,
    // landlock_restrict_self) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(b) = boxed.as_mut() {
                b.enter()?;
            }
            Ok(())
        });
    }
    Ok(())
}

/// How often [`until_ready`] tries: a refused TCP connect costs
/// microseconds, and every millisecond here is a millisecond of
/// `new-instance`.
const READY_POLL: Duration = Duration::from_millis(1);

/// The last `lines` lines of a log file (for failure reasons).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(text) = std::fs::read(path) else {
        return String::new();
    };
    let start = text.len().saturating_sub(64 * 1024);
    let text = String::from_utf8_lossy(&text[start..]);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Is `port` free to listen on (IPv4 and, when available, IPv6 wildcard)?
pub fn port_free(port: u16) -> bool {
    let v4 = std::net::TcpListener::bind(("0.0.0.0", port)).is_ok();
    if !v4 {
        return false;
    }
    match std::net::TcpListener::bind(("::", port)) {
        Ok(_) => true,
        Err(e) => {
            e.kind() == io::ErrorKind::AddrNotAvailable
                || e.raw_os_error() == Some(libc::EAFNOSUPPORT)
        }
    }
}

/// Wait until `f` says the postmaster is ready, failing early if it exits.
pub async fn until_ready<F, Fut, T, E>(
    pm: &mut Postmaster,
    deadline: Duration,
    mut f: F,
) -> Result<T, Option<E>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    loop {
        let last = match f().await {
            Ok(v) => return Ok(v),
            Err(e) => Some(e),
        };
        if start.elapsed() > deadline {
            return Err(last);
        }
        if let Some(pid) = pm.pid() {
            if !alive(pid) {
                return Err(last);
            }
        } else {
            return Err(last);
        }
        if let Postmaster::Child(c) = pm {
            if let Ok(Some(_)) = c.try_wait() {
                return Err(last);
            }
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_state_and_parent() {
        let me = std::process::id() as i32;
        assert!(alive(me));
        assert_eq!(parent_pid(me), Some(nix::unistd::getppid().as_raw()));
        assert!(!alive(0) && !alive(i32::MAX));
        assert_eq!(parent_pid(i32::MAX), None);
    }
}
