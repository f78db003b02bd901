//! Running code inside a live process, the way an attacker with a foothold
//! in it would: `gdb` attaches to a running postmaster and calls `open()`
//! and `system()` in it (what `COPY … PROGRAM`, an untrusted language or
//! an extension bug would do), then reads back what the kernel answered.
//! The process keeps its user, its box and its descriptors: whatever it
//! may not reach, these calls may not either.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const EACCES: i64 = 13;

/// What `gdb` printed for each `print` expression run inside `pid`
/// (`$1 = …`, `$2 = …`), as integers. A call that a signal interrupts
/// (the postmaster gets SIGUSR1 from its children) is unwound by gdb and
/// tried again.
pub fn in_process(pid: i32, exprs: &[String]) -> Vec<i64> {
    let mut last = String::new();
    for _ in 0..10 {
        let mut cmd = Command::new("gdb");
        cmd.args(["-p", &pid.to_string(), "-batch", "-nx", "-q"]);
        // Only libc's symbols (open, system): loading every library the
        // postmaster links is most of gdb's time.
        cmd.args([
            "-iex",
            "set auto-solib-add off",
            "-iex",
            "set debuginfod enabled off",
        ]);
        cmd.args(["-ex", "sharedlibrary libc\\.so", "-ex", "set confirm off"]);
        cmd.args(["-ex", "set unwindonsignal on"]);
        for e in exprs {
            cmd.args(["-ex", &format!("print {e}")]);
        }
        let out = cmd.output().expect("gdb runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let values: Vec<i64> = text
            .lines()
            .filter_map(|l| l.strip_prefix('$'))
            .filter_map(|l| l.split_once(" = "))
            .filter_map(|(_, v)| v.trim().parse().ok())
            .collect();
        if values.len() == exprs.len() {
            return values;
        }
        last = format!("{text}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    panic!("gdb could not run {exprs:?} in {pid}:\n{last}");
}

/// `open(path, O_RDONLY)` inside `pid` (a directory too: what listing it
/// starts with): `Ok(())` when it opened (the descriptor is closed
/// again), `Err(errno)` otherwise.
pub fn open_inside(pid: i32, path: &Path) -> Result<(), i64> {
    let path = path.display();
    // close(-1) after a refused open is harmless.
    let v = in_process(
        pid,
        &[
            format!("(int) open(\"{path}\", 0)"),
            "*(int *) __errno_location()".into(),
            "(int) close($1)".into(),
        ],
    );
    if v[0] >= 0 {
        Ok(())
    } else {
        Err(v[1])
    }
}

/// Exit status of `sh -c cmd` run by `system()` inside `pid`.
pub fn shell_inside(pid: i32, cmd: &str) -> i64 {
    assert!(!cmd.contains('"') && !cmd.contains('\\'));
    let status = in_process(pid, &[format!("(int) system(\"{cmd}\")")])[0];
    // A wait status: the exit code is in the second byte.
    (status >> 8) & 0xff
}

/// A Perl one-liner that connects a stream socket to `addr`: it exits 0
/// when connected, else with the errno (`die $!`).
fn connect_probe(family: &str, addr: &str) -> String {
    format!(
        "/usr/bin/perl -MSocket -e 'socket(S,{family},SOCK_STREAM,0) or die $!; connect(S,{addr}) or die $!'"
    )
}

/// The command that connects to the Unix socket at `path`.
pub fn unix_connect_command(path: &Path) -> String {
    format!(
        "{} {}",
        connect_probe("PF_UNIX", "pack_sockaddr_un(shift)"),
        path.display()
    )
}

/// The command that connects to 127.0.0.1:`port`.
pub fn tcp_connect_command(port: u16) -> String {
    format!(
        "{} {port}",
        connect_probe("PF_INET", "pack_sockaddr_in(shift,inet_aton(q{127.0.0.1}))")
    )
}

/// The command that binds TCP 127.0.0.1:`port` and listens there: exit
/// 0, or the errno.
pub fn tcp_listen_command(port: u16) -> String {
    format!(
        "/usr/bin/perl -MSocket -e 'socket(S,PF_INET,SOCK_STREAM,0) or die $!; bind(S,pack_sockaddr_in(shift,inet_aton(q{{127.0.0.1}}))) or die $!; listen(S,1) or die $!' {port}"
    )
}

/// Listen on TCP 127.0.0.1:`port` from a program `pid` runs: 0, or the
/// errno of the refusal.
pub fn listen_tcp_inside(pid: i32, port: u16) -> i64 {
    shell_inside(pid, &tcp_listen_command(port))
}

/// Connect to the Unix socket at `path` from a program `pid` runs: 0, or
/// the errno of the refusal.
pub fn connect_unix_inside(pid: i32, path: &Path) -> i64 {
    shell_inside(pid, &unix_connect_command(path))
}

/// Connect to TCP 127.0.0.1:`port` from a program `pid` runs: 0, or the
/// errno of the refusal.
pub fn connect_tcp_inside(pid: i32, port: u16) -> i64 {
    shell_inside(pid, &tcp_connect_command(port))
}

/// A world-readable file in /tmp: file modes let any user read it, so
/// only a box can refuse it.
pub struct Canary(pub PathBuf);

impl Canary {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Canary {
        let p = std::env::temp_dir().join(format!("draupnir-canary-{}", rand::random::<u64>()));
        std::fs::write(&p, "canary").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        Canary(p)
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_file(format!("{}.written", self.0.display()));
    }
}
