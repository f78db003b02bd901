//! Doctor's listener checks: each configured port is free, or held by a
//! running `draupnir serve` with this same config file.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{fail, pass, Check};

pub(super) fn port(name: &str, addr: Option<SocketAddr>, key: &str, config_path: &Path) -> Check {
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
pub(super) const DEFAULT_CONFIG: &str = "/etc/draupnir/config.toml";

/// The config file a `draupnir serve` process was started with, from its
/// command line (`--config P`, `--config=P`, `-c P`, `-cP`; the default
/// otherwise), relative to its working directory. `None` when `pid` is not
/// a `serve`.
pub(super) fn daemon_config(pid: i32) -> Option<PathBuf> {
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
pub(super) fn same_file(a: &Path, b: &Path) -> bool {
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
pub(super) fn listener_of(port: u16) -> Option<(i32, String)> {
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
