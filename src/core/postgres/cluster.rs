//! A PostgreSQL data directory and the binaries that run it.
//!
//! Owns: reading the major version from `PG_VERSION` and finding that
//! major's binaries; neutralising what an upload brought with it (config
//! files, lock files, recovery signals, tablespaces); writing the config
//! files Draupnir owns (`postgresql.conf`, `pg_hba.conf`, `pg_ident.conf`);
//! the instance user that every postmaster runs as.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};

/// The role every client connects as.
pub const CLIENT_ROLE: &str = "draupnir";
/// The temporary superuser that runs the anonymisation script.
pub const ADMIN_ROLE: &str = "draupnir_finalise";
/// Certificate files inside an instance's data directory.
pub const SERVER_CERT: &str = "server.crt";
pub const SERVER_KEY: &str = "server.key";
pub const CA_CERT: &str = "root.crt";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("not a PostgreSQL data directory: PG_VERSION is missing (upload the data directory itself, e.g. the output of pg_basebackup -Ft)")]
    NoVersionFile,
    #[error("PG_VERSION holds `{0}`, which is not a PostgreSQL version")]
    BadVersion(String),
    #[error("the data directory is PostgreSQL {major}, which is not installed here (no {path}); installed: {installed}")]
    NotInstalled {
        major: u32,
        path: PathBuf,
        installed: String,
    },
    #[error("tablespaces are not supported: {0}")]
    Tablespace(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("instance user `{name}`: {message}")]
    User { name: String, message: String },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ClusterError + 'a {
    move |source| ClusterError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// One installed PostgreSQL major's binaries.
#[derive(Debug, Clone)]
pub struct PgBin {
    pub dir: PathBuf,
}

impl PgBin {
    pub fn postgres(&self) -> PathBuf {
        self.dir.join("postgres")
    }
    pub fn psql(&self) -> PathBuf {
        self.dir.join("psql")
    }
    pub fn pg_resetwal(&self) -> PathBuf {
        self.dir.join("pg_resetwal")
    }
}

/// Read the major version from `PG_VERSION` (`15`, or `9.6` → 9).
pub fn read_major(datadir: &Path) -> Result<u32, ClusterError> {
    let path = datadir.join("PG_VERSION");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ClusterError::NoVersionFile),
        Err(e) => return Err(io_err("cannot read", &path)(e)),
    };
    let v = text.trim();
    let major = v.split('.').next().unwrap_or("");
    match major.parse::<u32>() {
        Ok(m) if (9..100).contains(&m) && v.len() < 16 => Ok(m),
        _ => Err(ClusterError::BadVersion(v.chars().take(32).collect())),
    }
}

/// When `datadir` has no `PG_VERSION` but holds exactly one directory that
/// does (`tar czf b.tgz datadir/`, `scp -r datadir host:images/1/`), move
/// that directory's contents up. Returns whether it did.
pub fn hoist_single_subdir(datadir: &Path) -> Result<bool, ClusterError> {
    if datadir.join("PG_VERSION").exists() {
        return Ok(false);
    }
    let entries: Vec<_> = std::fs::read_dir(datadir)
        .map_err(io_err("cannot read", datadir))?
        .flatten()
        .collect();
    let [only] = entries.as_slice() else {
        return Ok(false);
    };
    let inner = only.path();
    let is_dir = std::fs::symlink_metadata(&inner)
        .map(|m| m.is_dir())
        .unwrap_or(false);
    if !is_dir || !inner.join("PG_VERSION").is_file() {
        return Ok(false);
    }
    // Rename first: the wrapper may share a name with one of its children.
    let tmp = datadir.join(".draupnir-hoist");
    std::fs::rename(&inner, &tmp).map_err(io_err("cannot move", &inner))?;
    for e in std::fs::read_dir(&tmp).map_err(io_err("cannot read", &tmp))? {
        let e = e.map_err(io_err("cannot read", &tmp))?;
        let to = datadir.join(e.file_name());
        std::fs::rename(e.path(), &to).map_err(io_err("cannot move", &to))?;
    }
    std::fs::remove_dir(&tmp).map_err(io_err("cannot remove", &tmp))?;
    Ok(true)
}

/// Majors with a `postgres` binary under `bin_root/<major>/bin`.
pub fn installed_majors(bin_root: &Path) -> Vec<u32> {
    let mut majors: Vec<u32> = std::fs::read_dir(bin_root)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|m| bin_root.join(m.to_string()).join("bin/postgres").exists())
                .collect()
        })
        .unwrap_or_default();
    majors.sort();
    majors
}

/// The binaries for `major`, or a clear error naming what is installed.
pub fn find_bin(bin_root: &Path, major: u32) -> Result<PgBin, ClusterError> {
    let dir = bin_root.join(major.to_string()).join("bin");
    if dir.join("postgres").exists() {
        return Ok(PgBin { dir });
    }
    let installed = installed_majors(bin_root)
        .iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Err(ClusterError::NotInstalled {
        major,
        path: dir.join("postgres"),
        installed: if installed.is_empty() {
            "none".into()
        } else {
            installed
        },
    })
}

/// The unprivileged system user postmasters run as.
#[derive(Debug, Clone)]
pub struct InstanceUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl InstanceUser {
    /// Look the user up, creating a system user when it is missing.
    pub fn ensure(name: &str) -> Result<InstanceUser, ClusterError> {
        let lookup = |name: &str| {
            nix::unistd::User::from_name(name).map_err(|e| ClusterError::User {
                name: name.into(),
                message: e.to_string(),
            })
        };
        let user = match lookup(name)? {
            Some(u) => u,
            None => {
                let useradd = || {
                    std::process::Command::new("useradd")
                        .args(["--system", "--user-group", "--no-create-home"])
                        .args(["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"])
                        .arg(name)
                        .output()
                        .map_err(|e| ClusterError::User {
                            name: name.into(),
                            message: format!("cannot run useradd: {e}"),
                        })
                };
                let mut out = useradd()?;
                // Another process adding users at the same moment holds
                // /etc/passwd's lock: try again briefly.
                for _ in 0..20 {
                    if out.status.success() || lookup(name)?.is_some() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    out = useradd()?;
                }
                if !out.status.success() && lookup(name)?.is_none() {
                    return Err(ClusterError::User {
                        name: name.into(),
                        message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    });
                }
                lookup(name)?.ok_or_else(|| ClusterError::User {
                    name: name.into(),
                    message: "still missing after useradd".into(),
                })?
            }
        };
        if user.uid.is_root() {
            return Err(ClusterError::User {
                name: name.into(),
                message: "must not be root".into(),
            });
        }
        Ok(InstanceUser {
            name: name.into(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })
    }
}

/// Write `contents` to `datadir/name`, owned by the instance user, 0600.
pub fn write_owned(
    datadir: &Path,
    name: &str,
    contents: &[u8],
    user: &InstanceUser,
) -> Result<(), ClusterError> {
    let path = datadir.join(name);
    // Never write through a symlink an upload could have planted.
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => {
            std::fs::remove_dir_all(&path).map_err(io_err("cannot remove", &path))?
        }
        Ok(_) => std::fs::remove_file(&path).map_err(io_err("cannot remove", &path))?,
        Err(_) => {}
    }
    std::fs::write(&path, contents).map_err(io_err("cannot write", &path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("cannot chmod", &path))?;
    chown(&path, Some(user.uid), Some(user.gid)).map_err(io_err("cannot chown", &path))?;
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<(), ClusterError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).map_err(io_err("cannot remove", path)),
        Ok(_) => std::fs::remove_file(path).map_err(io_err("cannot remove", path)),
        Err(_) => Ok(()),
    }
}

/// Files an upload may carry that would make Postgres do something at
/// start that Draupnir did not decide.
const NEUTRALISED: &[&str] = &[
    "postgresql.conf",
    "postgresql.auto.conf",
    "pg_hba.conf",
    "pg_ident.conf",
    "postmaster.pid",
    "postmaster.opts",
    "standby.signal",
    "recovery.signal",
    "recovery.conf",
    SERVER_CERT,
    SERVER_KEY,
    CA_CERT,
];

/// Remove what an upload brought that could act at start, refuse
/// tablespaces, and make the directory the instance user's, 0700.
pub fn neutralise(datadir: &Path, user: &InstanceUser) -> Result<(), ClusterError> {
    for name in NEUTRALISED {
        remove_if_present(&datadir.join(name))?;
    }
    let map = datadir.join("tablespace_map");
    if let Ok(m) = std::fs::symlink_metadata(&map) {
        if m.len() > 0 || !m.is_file() {
            return Err(ClusterError::Tablespace(
                "the backup has a non-empty tablespace_map".into(),
            ));
        }
    }
    let tblspc = datadir.join("pg_tblspc");
    if let Ok(rd) = std::fs::read_dir(&tblspc) {
        if let Some(entry) = rd.flatten().next() {
            return Err(ClusterError::Tablespace(format!(
                "pg_tblspc holds `{}`",
                entry.file_name().to_string_lossy()
            )));
        }
    }
    std::fs::set_permissions(datadir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err("cannot chmod", datadir))?;
    chown(datadir, Some(user.uid), Some(user.gid)).map_err(io_err("cannot chown", datadir))?;
    Ok(())
}

/// The durable `postgresql.conf` every image and instance runs with. The
/// per-run settings (port, listen addresses, socket directory) are given on
/// the command line.
pub fn durable_conf(settings: &BTreeMap<String, String>) -> String {
    let mut conf = String::from(
        "# Written by Draupnir when the image was finalised; do not edit.\n\
         # Port, listen_addresses and unix_socket_directories are set per run.\n\
         ssl = on\n\
         ssl_cert_file = 'server.crt'\n\
         ssl_key_file = 'server.key'\n\
         ssl_ca_file = 'root.crt'\n\
         ssl_passphrase_command = ''\n\
         archive_mode = off\n\
         archive_command = ''\n\
         restore_command = ''\n\
         shared_preload_libraries = ''\n\
         session_preload_libraries = ''\n\
         local_preload_libraries = ''\n\
         logging_collector = off\n\
         log_destination = 'stderr'\n\
         fsync = on\n\
         max_connections = 50\n\
         shared_buffers = '32MB'\n\
         huge_pages = off\n",
    );
    for (name, value) in settings {
        conf.push_str(&format!("{name} = '{value}'\n"));
    }
    conf
}

/// `pg_hba.conf` for the first start, whose Unix socket sits in the
/// upload's own directory. Every process running as the instance user
/// (every other instance's postmaster too) can `connect()` to it, so
/// nothing is trusted: the temporary admin role, which the anonymisation
/// script's `psql` uses, needs the random password of this finalise
/// (`md5` also accepts a SCRAM verifier and is understood by every major);
/// any other role only by peer authentication mapped from root (the
/// daemon), see [`first_start_ident`].
pub const FIRST_START_HBA: &str = "# Draupnir finalise: Unix socket in a private directory only.\n\
local all draupnir_finalise       md5\n\
local all all                     peer map=draupnir_root\n";

/// `pg_ident.conf` for the first start: root may connect as the configured
/// superuser (to create the admin role), nobody else as anyone.
pub fn first_start_ident(superuser: &str) -> String {
    format!("# Written by Draupnir for the finalise.\ndraupnir_root  root  \"{superuser}\"\n")
}

/// The final `pg_hba.conf`: TCP is TLS with a client certificate, role
/// `draupnir` only; the Unix socket is peer-authenticated and only root
/// (the daemon) is mapped to `draupnir` ([`FINAL_IDENT`]).
pub const FINAL_HBA: &str = "# Written by Draupnir; every other connection is rejected.\n\
local   all  draupnir                 peer map=draupnir_local\n\
hostssl all  draupnir  0.0.0.0/0      cert map=draupnir_cert\n\
hostssl all  draupnir  ::/0           cert map=draupnir_cert\n";

/// The final `pg_ident.conf`. The instance user is not mapped: every
/// instance's postmaster runs as that user, and none may use another
/// instance's socket.
pub const FINAL_IDENT: &str = "# Written by Draupnir.\n\
draupnir_cert   draupnir  draupnir\n\
draupnir_local  root  draupnir\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_rules_trust_nobody_but_root_and_the_password() {
        assert!(!FIRST_START_HBA.contains("trust"));
        assert!(FIRST_START_HBA.contains(&format!("local all {ADMIN_ROLE}")));
        assert_eq!(
            first_start_ident("postgres").lines().last(),
            Some("draupnir_root  root  \"postgres\"")
        );
        // Only root is mapped to draupnir on an instance's socket.
        let mapped: Vec<&str> = FINAL_IDENT
            .lines()
            .filter(|l| l.starts_with("draupnir_local"))
            .collect();
        assert_eq!(mapped, ["draupnir_local  root  draupnir"]);
    }

    #[test]
    fn majors() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_major(d.path()),
            Err(ClusterError::NoVersionFile)
        ));
        std::fs::write(d.path().join("PG_VERSION"), "15\n").unwrap();
        assert_eq!(read_major(d.path()).unwrap(), 15);
        std::fs::write(d.path().join("PG_VERSION"), "9.6\n").unwrap();
        assert_eq!(read_major(d.path()).unwrap(), 9);
        std::fs::write(d.path().join("PG_VERSION"), "banana").unwrap();
        assert!(read_major(d.path()).is_err());
        let e = find_bin(Path::new("/nonexistent"), 11)
            .unwrap_err()
            .to_string();
        assert!(e.contains("PostgreSQL 11"), "{e}");
    }
}
