//! `draupnir doctor`: read-only health checks of a host and its config.
//!
//! Owns the list of checks, each one's verdict, and the fix printed for a
//! failure. It never mounts, creates users, writes the metadata database or
//! changes the firewall: the SQLite file is opened read-only and the
//! allow-list is compared with a dry-run reconcile. The CLI only formats
//! the [`Report`].

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Config;
use crate::core::store::Store;

/// One check's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// What to do about a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Every check, in the order they ran.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    /// One line per check: `ok   name  detail` or
    /// `FAIL name  detail — fix: …`.
    pub fn human(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            let tag = if c.ok { "ok  " } else { "FAIL" };
            out.push_str(&format!("{tag} {:width$}  {}", c.name, c.detail));
            if let Some(fix) = &c.fix {
                out.push_str(&format!(" — fix: {fix}"));
            }
            out.push('\n');
        }
        out
    }
}

fn pass(name: &str, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok: true,
        detail: detail.into(),
        fix: None,
    }
}

fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok: false,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// Run every check against the config file at `config_path`.
pub fn run(config_path: &Path) -> Report {
    let mut checks = Vec::new();
    match Config::load(config_path) {
        Ok(config) => {
            checks.push(pass("config", format!("{} is valid", config_path.display())));
            checks.extend(run_with(&config, config_path));
        }
        Err(e) => checks.push(fail(
            "config",
            e.to_string(),
            format!(
                "edit {} (every key is documented in config.toml.example); the other checks need a valid config",
                config_path.display()
            ),
        )),
    }
    Report {
        ok: checks.iter().all(|c| c.ok),
        checks,
    }
}

/// The checks that need a valid config (read from `config_path`).
pub fn run_with(config: &Config, config_path: &Path) -> Vec<Check> {
    let mut checks = vec![
        data_path(config),
        free_space(config),
        postgres(config),
        instance_user(config),
        confinement(config),
        instance_access(config),
    ];
    if let Some(check) = disk_limits(config) {
        checks.push(check);
    }
    let store = sqlite(config, &mut checks);
    if let Some(store) = &store {
        checks.push(image_majors(config, store));
    }
    allow_list(config, store.as_ref(), &mut checks);
    checks.push(port(
        "ssh port",
        Some(config.ssh.listen_address),
        "[ssh] listen_address",
        config_path,
    ));
    checks.push(port(
        "http port",
        config.http.listen_address,
        "[http] listen_address",
        config_path,
    ));
    if config.http.insecure_listen_address.is_some() {
        checks.push(port(
            "http insecure port",
            config.http.insecure_listen_address,
            "[http] insecure_listen_address",
            config_path,
        ));
    }
    checks.push(host_key(config));
    checks.push(clock());
    checks
}

fn data_path(config: &Config) -> Check {
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
fn existing(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_owned()
}

/// (available, total) bytes of the file system holding `at`.
fn space(at: &Path) -> nix::Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(at)?;
    let frag = st.fragment_size() as u64;
    Ok((
        st.blocks_available() as u64 * frag,
        st.blocks() as u64 * frag,
    ))
}

fn free_space(config: &Config) -> Check {
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

fn postgres(config: &Config) -> Check {
    const NAME: &str = "postgres";
    let root = &config.postgres.bin_root;
    if !root.is_dir() {
        return fail(
            NAME,
            format!("[postgres] bin_root {} does not exist", root.display()),
            "apt-get install postgresql (any supported major), or set [postgres] bin_root to the directory holding <major>/bin/postgres",
        );
    }
    let majors = crate::core::postgres::cluster::installed_majors(root);
    if majors.is_empty() {
        return fail(
            NAME,
            format!("no <major>/bin/postgres under {}", root.display()),
            "apt-get install postgresql (any supported major)",
        );
    }
    let mut broken = Vec::new();
    for m in &majors {
        let bin = root.join(m.to_string()).join("bin/postgres");
        let runs = std::process::Command::new(&bin)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !runs {
            broken.push(bin.display().to_string());
        }
    }
    let list = majors
        .iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if broken.is_empty() {
        pass(NAME, format!("majors {list} under {}", root.display()))
    } else {
        fail(
            NAME,
            format!("{} does not run (--version failed)", broken.join(", ")),
            "reinstall that postgresql package",
        )
    }
}

/// Every ready image's PostgreSQL major must still be installed, or its
/// instances cannot start.
fn image_majors(config: &Config, store: &Store) -> Check {
    const NAME: &str = "image majors";
    let images = match store.images() {
        Ok(i) => i,
        Err(e) => return fail(NAME, e.to_string(), "see the sqlite check"),
    };
    let installed = crate::core::postgres::cluster::installed_majors(&config.postgres.bin_root);
    let mut missing: Vec<String> = images
        .iter()
        .filter(|i| i.state == crate::core::store::ImageState::Ready)
        .filter_map(|i| i.pg_major.map(|m| (i.id, m)))
        .filter(|(_, m)| !installed.contains(m))
        .map(|(id, m)| format!("image {id} needs PostgreSQL {m}"))
        .collect();
    missing.sort();
    if missing.is_empty() {
        pass(
            NAME,
            format!(
                "every ready image's major is installed ({} images)",
                images.len()
            ),
        )
    } else {
        fail(
            NAME,
            format!(
                "{}, not installed under {}",
                missing.join(", "),
                config.postgres.bin_root.display()
            ),
            "apt-get install postgresql-<major> for each, or destroy those images",
        )
    }
}

fn instance_user(config: &Config) -> Check {
    const NAME: &str = "instance_user";
    let name = &config.postgres.instance_user;
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => pass(NAME, format!("{name} (uid {})", u.uid)),
        Ok(None) => fail(
            NAME,
            format!("system user {name} does not exist"),
            format!("useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {name} (the package's postinst does this)"),
        ),
        Err(e) => fail(NAME, format!("cannot look up {name}: {e}"), "check /etc/nsswitch.conf"),
    }
}

/// Can this kernel box postmasters the way `[postgres] confinement` says?
fn confinement(config: &Config) -> Check {
    use crate::core::postgres::sandbox::{self, Confinement};
    const NAME: &str = "confinement";
    let support = sandbox::probe();
    match config.postgres.confinement {
        Confinement::Landlock if support.usable() => pass(NAME, support.describe()),
        Confinement::Landlock => fail(
            NAME,
            format!("{}: postmasters cannot be boxed, so none will start", support.describe()),
            "boot Linux 5.13+ with `landlock` in the lsm= parameter, or set [postgres] confinement = \"none\" to run them unconfined",
        ),
        Confinement::None => pass(
            NAME,
            format!(
                "none: postmasters run unconfined (this kernel: {})",
                support.describe()
            ),
        ),
    }
}

/// Can the instance user get to every directory a postmaster needs?
/// Asked as that user (see [`crate::core::postgres::reach`]).
fn instance_access(config: &Config) -> Check {
    use crate::core::postgres::reach::{check, postmaster_dirs, ReachError};
    const NAME: &str = "instance access";
    let name = &config.postgres.instance_user;
    let user = match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => crate::core::postgres::cluster::InstanceUser {
            name: name.clone(),
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        },
        _ => return pass(NAME, "not checked: no instance user (see instance_user)"),
    };
    let dirs = postmaster_dirs(&config.data_path, &config.postgres.bin_root);
    match check(&user, &dirs) {
        Ok(()) => pass(
            NAME,
            format!(
                "{name} reaches {} and {}",
                config.data_path.display(),
                config.postgres.bin_root.display()
            ),
        ),
        Err(ReachError::Blocked(b)) => fail(NAME, b.reason(), b.fix()),
        Err(e @ ReachError::Identity { .. }) => {
            pass(NAME, format!("not checked: {e} (run doctor as root)"))
        }
        Err(e) => fail(NAME, e.to_string(), "run doctor as root"),
    }
}

/// With `max_instance_disk` set: can btrfs quotas enforce it?
fn disk_limits(config: &Config) -> Option<Check> {
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

/// The SQLite check; returns the read-only store when it is usable.
fn sqlite(config: &Config, checks: &mut Vec<Check>) -> Option<Store> {
    const NAME: &str = "sqlite";
    let path = config.database_path();
    let restore = format!(
        "stop the daemon and copy the last `draupnir backup-state` copy to {}",
        path.display()
    );
    if !path.exists() {
        let layout = crate::core::storage::layout::Layout::new(&config.data_path);
        let volumes: usize = [layout.snapshots(), layout.instances(), layout.uploads()]
            .iter()
            .map(|d| std::fs::read_dir(d).map(|rd| rd.count()).unwrap_or(0))
            .sum();
        checks.push(if volumes == 0 {
            pass(
                NAME,
                format!("{} absent: created on first start", path.display()),
            )
        } else {
            fail(
                NAME,
                format!(
                    "{} is missing but data_path holds {volumes} image/instance volumes",
                    path.display()
                ),
                restore,
            )
        });
        return None;
    }
    let store = match Store::open_read_only(&path) {
        Ok(s) => s,
        Err(e) => {
            checks.push(fail(NAME, e.to_string(), restore));
            return None;
        }
    };
    let verdict = store.integrity_check().and_then(|r| {
        let version = store.schema_version()?;
        Ok((r, version))
    });
    match verdict {
        Ok((r, version)) if r == "ok" => {
            let known = crate::core::store::MIGRATIONS.len() as i64;
            if version > known {
                checks.push(fail(
                    NAME,
                    format!("schema version {version} is newer than this draupnir ({known})"),
                    "install the draupnir version that wrote it (or newer)",
                ));
                return None;
            }
            checks.push(pass(
                NAME,
                format!("{}: integrity ok, schema {version}", path.display()),
            ));
            Some(store)
        }
        Ok((r, _)) => {
            checks.push(fail(
                NAME,
                format!(
                    "{}: integrity_check: {}",
                    path.display(),
                    r.replace('\n', "; ")
                ),
                restore,
            ));
            None
        }
        Err(e) => {
            checks.push(fail(NAME, format!("{}: {e}", path.display()), restore));
            None
        }
    }
}

fn allow_list(config: &Config, store: Option<&Store>, checks: &mut Vec<Check>) {
    if !config.enable_ip_whitelisting {
        checks.push(pass(
            "iptables",
            "not needed (enable_ip_whitelisting = false)",
        ));
        return;
    }
    let desired = match store.map(crate::core::rules_from_store) {
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            checks.push(fail("allow-list", e.to_string(), "see the sqlite check"));
            return;
        }
        None => Default::default(),
    };
    match crate::guard::iptables::reconcile(&desired, true) {
        Err(e) => checks.push(fail(
            "iptables",
            format!("not usable: {e}"),
            "apt-get install iptables; the daemon needs root (CAP_NET_ADMIN) and the xt_tcp module",
        )),
        Ok(changes) => {
            checks.push(pass("iptables", "usable"));
            if changes.is_empty() {
                checks.push(pass(
                    "allow-list",
                    format!(
                        "chain {} matches the database ({} rules)",
                        crate::guard::iptables::CHAIN,
                        desired.len()
                    ),
                ));
            } else {
                let mut what: Vec<String> = changes.added.iter().map(|a| format!("+{a}")).collect();
                what.extend(changes.removed.iter().map(|r| format!("-{r}")));
                checks.push(fail(
                    "allow-list",
                    format!("reconcile would change: {}", what.join(", ")),
                    "start the daemon: it reconciles at start and every whitelist_reconcile_interval",
                ));
            }
        }
    }
}

fn port(name: &str, addr: Option<SocketAddr>, key: &str, config_path: &Path) -> Check {
    let Some(addr) = addr else {
        return pass(name, format!("{key} not set: not listening"));
    };
    if addr.port() == 0 {
        return pass(name, format!("{addr}: a free port is chosen at start"));
    }
    match TcpListener::bind(addr) {
        Ok(_) => pass(name, format!("{addr} is free")),
        Err(e) if e.kind() == ErrorKind::AddrInUse => {
            let fix = format!(
                "stop what listens there (ss -ltnp 'sport = :{}') or change {key}",
                addr.port()
            );
            match listener_of(addr.port()) {
                Some((pid, comm)) if comm == "draupnir" => match daemon_config(pid) {
                    Some(theirs) if same_file(&theirs, config_path) => pass(
                        name,
                        format!("{addr} is in use by the running daemon (pid {pid})"),
                    ),
                    theirs => fail(
                        name,
                        format!(
                            "{addr} is in use by another draupnir (pid {pid}, config {})",
                            theirs
                                .map(|p| p.display().to_string())
                                .unwrap_or_else(|| "unknown".into())
                        ),
                        format!("stop that daemon, or give this config or that one another {key}"),
                    ),
                },
                owner => fail(
                    name,
                    match owner {
                        Some((pid, comm)) => format!("{addr} is in use by {comm} (pid {pid})"),
                        None => format!("{addr} is in use"),
                    },
                    fix,
                ),
            }
        }
        Err(e) => fail(
            name,
            format!("cannot listen on {addr}: {e}"),
            format!("use an address this host has in {key}"),
        ),
    }
}

/// Where `draupnir serve` looks for its config when not told.
const DEFAULT_CONFIG: &str = "/etc/draupnir/config.toml";

/// The config file a `draupnir serve` process was started with, from its
/// command line (`--config P`, `--config=P`, `-c P`, `-cP`; the default
/// otherwise), relative to its working directory. `None` when `pid` is not
/// a `serve`.
fn daemon_config(pid: i32) -> Option<PathBuf> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    let serve = args.iter().skip(1).position(|a| *a == b"serve")? + 1;
    let mut found: Option<&[u8]> = None;
    let mut rest = args[serve + 1..].iter();
    while let Some(a) = rest.next() {
        if *a == b"--" {
            break;
        } else if *a == b"--config" || *a == b"-c" {
            found = rest.next().copied();
        } else if let Some(v) = a.strip_prefix(b"--config=") {
            found = Some(v);
        } else if let Some(v) = a.strip_prefix(b"-c").filter(|v| !v.is_empty()) {
            found = Some(v.strip_prefix(b"=").unwrap_or(v));
        }
    }
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(
        found.unwrap_or(DEFAULT_CONFIG.as_bytes()),
    ));
    Some(if path.is_absolute() {
        path
    } else {
        std::fs::read_link(format!("/proc/{pid}/cwd"))
            .ok()?
            .join(path)
    })
}

/// Do two paths name the same file (after symlinks; by path when one is
/// gone)?
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => {
            let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
            abs(a) == abs(b)
        }
    }
}

/// The process listening on TCP `port` (from /proc/net/tcp{,6} and the
/// socket inodes in /proc/*/fd), when it can be found.
fn listener_of(port: u16) -> Option<(i32, String)> {
    let want = format!("{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is f[1] (ADDR:PORT), st is f[3] (0A = LISTEN), inode f[9].
            if f.len() > 9 && f[3] == "0A" && f[1].rsplit(':').next() == Some(want.as_str()) {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if inodes.iter().any(|i| Path::new(i) == target) {
                let comm = std::fs::read_to_string(entry.path().join("comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                return Some((pid, comm));
            }
        }
    }
    None
}

fn host_key(config: &Config) -> Check {
    const NAME: &str = "host key";
    let path = &config.ssh.host_key_path;
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return pass(
                NAME,
                format!("{} absent: generated on first start", path.display()),
            )
        }
        Err(e) => {
            return fail(
                NAME,
                format!("cannot read {}: {e}", path.display()),
                "make it readable by root",
            )
        }
    };
    let key = match russh::keys::PrivateKey::from_openssh(&bytes) {
        Ok(k) if !k.is_encrypted() => k,
        Ok(_) => {
            return fail(
                NAME,
                format!("{} is encrypted", path.display()),
                format!(
                    "remove it (a new one is generated at start) or ssh-keygen -p -N '' -f {}",
                    path.display()
                ),
            )
        }
        Err(e) => {
            return fail(
                NAME,
                format!("{} is not an OpenSSH private key: {e}", path.display()),
                format!(
                    "ssh-keygen -t ed25519 -N '' -f {} (clients will see a new host key)",
                    path.display()
                ),
            )
        }
    };
    let fingerprint = key.fingerprint(russh::keys::HashAlg::Sha256);
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    if mode & 0o077 != 0 {
        return fail(
            NAME,
            format!("{} has mode {mode:o} ({fingerprint})", path.display()),
            format!("chmod 600 {}", path.display()),
        );
    }
    pass(
        NAME,
        format!("{} {} {fingerprint}", path.display(), key.algorithm()),
    )
}

fn clock() -> Check {
    const NAME: &str = "clock";
    let build_year: i32 = env!("DRAUPNIR_BUILD_YEAR").parse().unwrap_or(1970);
    let now = crate::core::store::now();
    if now.year() >= build_year {
        pass(
            NAME,
            format!("{} (UTC)", crate::core::store::format_ts(now)),
        )
    } else {
        fail(
            NAME,
            format!(
                "{} is before this build's year ({build_year})",
                crate::core::store::format_ts(now)
            ),
            "set the clock (timedatectl set-ntp true); certificates and TTLs depend on it",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_image_of_a_missing_major_fails() {
        let store = Store::open_in_memory().expect("store");
        let config = Config::default();
        let ok = image_majors(&config, &store);
        assert!(ok.ok, "{ok:?}");
        let image = store.insert_image(None, None, None).expect("image");
        store.set_image_ready(image.id, 999, 0).expect("ready");
        let bad = image_majors(&config, &store);
        assert!(!bad.ok);
        assert!(bad.detail.contains("PostgreSQL 999"), "{bad:?}");
        assert!(bad.fix.is_some());
    }

    #[test]
    fn human_lines() {
        let report = Report {
            ok: false,
            checks: vec![pass("a", "fine"), fail("bbb", "broken", "mend it")],
        };
        assert_eq!(
            report.human(),
            "ok   a    fine\nFAIL bbb  broken — fix: mend it\n"
        );
    }
}
