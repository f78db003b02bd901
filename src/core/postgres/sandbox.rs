//! The box every postmaster runs in (Landlock).
//!
//! Owns: what one `postgres` process tree may touch. Every postmaster runs
//! as the one instance user, so file modes cannot keep one instance from
//! another, or from a raw upload. Landlock, applied between `fork` and
//! `exec` and inherited by every backend and every program a backend
//! starts (`COPY … PROGRAM`, untrusted languages), narrows that user's
//! reach to:
//!
//! * its own data directory (which also holds its socket and certificates):
//!   everything but executing files from it;
//! * the system's read-only trees (binaries, libraries, locales, time
//!   zones, `/etc`): read and execute;
//! * a few device nodes (`/dev/null`, `/dev/zero`, `/dev/urandom`,
//!   `/dev/random`) and read-only `/proc` and `/sys/devices/system/cpu`;
//! * TCP: binding its own port only (none for a postmaster that serves its
//!   Unix socket only), connecting nowhere;
//! * signals and abstract Unix sockets: only within its own box.
//!
//! Not `/tmp`, not `/dev/shm` (postmasters use `dynamic_shared_memory_type
//! = mmap`, whose segments live in the data directory), not another
//! instance, not `image_uploads/`, not the daemon's state. A process in
//! one box cannot `ptrace` (or read `/proc/PID/{mem,environ,fd,root}` of)
//! a process in another.
//!
//! Why Landlock and not one uid per instance: a separate uid needs every
//! file of the copy-on-write snapshot chowned at `new-instance` (a
//! metadata write per file, in every instance, for a large image seconds
//! of work and megabytes of unshared metadata), while a Landlock ruleset
//! costs a few system calls per start and needs no privilege.

use std::io;
use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, Ruleset,
    RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetError, RulesetStatus, Scope, ABI,
};

/// The newest Landlock ABI Draupnir knows how to use: older kernels get
/// what they support (file access since ABI 1; TCP since 4; signal and
/// abstract-socket scoping since 6), and [`probe`] says what that is.
const TARGET: ABI = ABI::V10;

/// Landlock's file-system rights Draupnir relies on: without them a box
/// does not hold, so [`Confinement::Landlock`] refuses to start.
const REQUIRED: ABI = ABI::V1;

pub use crate::config::Confinement;

/// Why a box could not be prepared or entered.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("this kernel does not support Landlock, which confines each postmaster to its own files (Linux 5.13+ with `landlock` in the `lsm=` boot parameter); set [postgres] confinement = \"none\" to run unconfined")]
    Unsupported,
    #[error("preparing the Landlock box for {datadir}: {source}")]
    Ruleset {
        datadir: PathBuf,
        #[source]
        source: RulesetError,
    },
}

/// What the running kernel can confine, for `draupnir doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Support {
    /// The kernel's Landlock ABI version (0: none).
    pub abi: i32,
}

impl Support {
    /// Can postmasters be boxed at all?
    pub fn usable(&self) -> bool {
        self.abi >= REQUIRED as i32
    }

    /// In words: what a box holds on this kernel.
    pub fn describe(&self) -> String {
        if !self.usable() {
            return "no Landlock in this kernel".into();
        }
        let mut held = vec!["files"];
        if self.abi >= 4 {
            held.push("TCP ports");
        }
        if self.abi >= 6 {
            held.push("signals and abstract sockets");
        }
        let mut text = format!("Landlock ABI {}: {} confined", self.abi, held.join(", "));
        if self.abi < 6 {
            text.push_str(" (Linux 6.12+ also confines signals and abstract sockets)");
        }
        text
    }
}

/// Ask the kernel which Landlock ABI it has.
pub fn probe() -> Support {
    // SAFETY: landlock_create_ruleset with a null attribute, size 0 and
    // the VERSION flag only returns the ABI version (or -1); it reads and
    // writes no memory.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    Support {
        abi: i32::try_from(abi).unwrap_or(0).max(0),
    }
}

/// A box prepared in the daemon, entered by the child between `fork` and
/// `exec` ([`Prepared::enter`]). Preparing opens the paths and builds the
/// ruleset here, where allocation and errors are safe; entering is two
/// system calls.
pub struct Prepared {
    ruleset: Option<RulesetCreated>,
}

/// System trees a postmaster reads and executes from.
const SYSTEM_READ_EXEC: &[&str] = &["/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc"];
/// Read-only kernel views.
const SYSTEM_READ: &[&str] = &["/proc", "/sys/devices/system/cpu"];
/// Device nodes a backend opens.
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/urandom",
    "/dev/random",
    "/dev/full",
];

/// What one box may reach beyond its own data directory. Empty for every
/// instance and finalise; a source's standby reads its password file and
/// connects to its primary's ports, nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// Files it may read (not write or execute).
    pub read_files: Vec<PathBuf>,
    /// TCP ports it may connect to.
    pub connect_ports: Vec<u16>,
}

/// Prepare the box for a postmaster of `datadir` whose binaries are in
/// `bin_dir`, allowed to bind TCP port `listen` only (`None`: no port at
/// all), and to reach what `reach` names. `None` when confinement is off.
pub fn prepare(
    confinement: Confinement,
    datadir: &Path,
    bin_dir: &Path,
    listen: Option<u16>,
    reach: &Reach,
) -> Result<Option<Prepared>, SandboxError> {
    if confinement == Confinement::None {
        return Ok(None);
    }
    if !probe().usable() {
        return Err(SandboxError::Unsupported);
    }
    let err = |source| SandboxError::Ruleset {
        datadir: datadir.to_owned(),
        source,
    };
    let all_fs = AccessFs::from_all(TARGET);
    let read = AccessFs::from_read(TARGET);
    let read_exec = read | AccessFs::Execute;
    // The binaries' installation, wherever `bin_root` puts it (its share
    // and lib directories are its siblings).
    let install = bin_dir.parent().unwrap_or(bin_dir).to_owned();
    let ruleset = Ruleset::default()
        // File access is the box: without it, refuse. What newer kernels
        // add is taken where the kernel has it.
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(REQUIRED))
        .and_then(|r| {
            r.set_compatibility(CompatLevel::BestEffort)
                .handle_access(all_fs)
        })
        // Only TCP: PostgreSQL 14 and older talk to their statistics
        // collector over loopback UDP.
        .and_then(|r| r.handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp))
        .and_then(|r| r.scope(Scope::from_all(TARGET)))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(SYSTEM_READ_EXEC, read_exec)))
        .and_then(|r| r.add_rules(path_beneath_rules([install.as_path()], read_exec)))
        .and_then(|r| r.add_rules(path_beneath_rules(SYSTEM_READ, read)))
        .and_then(|r| {
            r.add_rules(path_beneath_rules(
                DEVICES,
                AccessFs::ReadFile | AccessFs::WriteFile,
            ))
        })
        .and_then(|r| r.add_rules(path_beneath_rules([datadir], all_fs & !AccessFs::Execute)))
        .and_then(|r| {
            r.add_rules(listen.map(|p| Ok::<_, RulesetError>(NetPort::new(p, AccessNet::BindTcp))))
        })
        .and_then(|r| r.add_rules(path_beneath_rules(&reach.read_files, AccessFs::ReadFile)))
        .and_then(|r| {
            r.add_rules(
                reach
                    .connect_ports
                    .iter()
                    .map(|p| Ok::<_, RulesetError>(NetPort::new(*p, AccessNet::ConnectTcp))),
            )
        })
        .map_err(err)?;
    Ok(Some(Prepared {
        ruleset: Some(ruleset),
    }))
}

impl Prepared {
    /// Enter the box: `no_new_privs`, then `landlock_restrict_self`. Runs
    /// in the forked child before `exec`: it allocates nothing and fails
    /// (so the spawn fails) unless the file rules are enforced.
    pub fn enter(&mut self) -> io::Result<()> {
        let Some(ruleset) = self.ruleset.take() else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        match ruleset.restrict_self() {
            Ok(status) if status.ruleset != RulesetStatus::NotEnforced => Ok(()),
            Ok(_) => Err(io::Error::from_raw_os_error(libc::ENOSYS)),
            Err(_) => Err(io::Error::last_os_error()),
        }
    }
}

/// The `-c` setting a boxed `postgres` needs: dynamic shared memory in
/// the data directory (in the box) instead of `/dev/shm` (shared by every
/// instance, and outside every box). `None` when unconfined.
pub fn dsm_setting(confinement: Confinement) -> Option<&'static str> {
    (confinement != Confinement::None).then_some("dynamic_shared_memory_type=mmap")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_what_the_kernel_holds() {
        assert!(!Support { abi: 0 }.usable());
        assert!(Support { abi: 1 }.describe().contains("files confined"));
        assert!(Support { abi: 7 }
            .describe()
            .contains("signals and abstract sockets"));
        assert!(Support { abi: 3 }.describe().contains("Linux 6.12+"));
    }
}
