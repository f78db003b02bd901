//! `doctor`, `serve` and finalise against a host set up wrong: a data_path
//! under a directory the instance user cannot search (checked as that
//! user, not by reasoning about modes), and a port held by another
//! Draupnir daemon with a different config.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_draupnir");

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `draupnir doctor --config path`: (exit code, stdout).
fn doctor(config: &Path) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(["doctor", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

fn line<'a>(out: &'a str, check: &str) -> &'a str {
    out.lines()
        .find(|l| l.get(5..).is_some_and(|r| r.starts_with(check)))
        .unwrap_or_else(|| panic!("no {check} line: {out}"))
}

/// Unmounts `data_path` when the test ends, however it ends.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        kill_postmasters_beneath(&self.0);
        for _ in 0..50 {
            if !is_mounted(&self.0) {
                break;
            }
            let _ = Command::new("umount").arg(&self.0).status();
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn a_data_path_under_a_0700_directory_is_named_with_its_fix() {
    draupnir::core::test_support::cluster::InstanceUser::ensure(INSTANCE_USER).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("drp-")
        .tempdir_in("/tmp")
        .unwrap();
    let d = dir.path();
    let locked = d.join("locked");
    std::fs::create_dir(&locked).unwrap();
    chmod(&locked, 0o700);
    let data = locked.join("data");
    let _unmount = Unmount(data.clone());
    let text = TestConfig::new().text(d).replace(
        &format!("\"{}/data\"", d.display()),
        &format!("\"{}\"", data.display()),
    );
    let config = d.join("config.toml");
    std::fs::write(&config, &text).unwrap();
    let reason = format!(
        "instance user {INSTANCE_USER} cannot reach {}: {} is 0700 root",
        data.display(),
        locked.display()
    );
    let fix = format!("chmod o+x {}", locked.display());

    // doctor: that one check fails, naming the directory and the chmod.
    let (code, out) = doctor(&config);
    assert_eq!(code, Some(1), "{out}");
    let fails: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fails.len(), 1, "{out}");
    assert_eq!(
        fails[0],
        format!("FAIL {}", line(&out, "instance access").get(5..).unwrap())
    );
    assert!(
        fails[0].ends_with(&format!("{reason} — fix: {fix}")),
        "{out}"
    );

    // serve refuses with the same line, before mounting anything.
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim().lines().last().unwrap_or("");
    assert_eq!(
        last,
        format!("draupnir: cannot start: {reason}; fix: {fix}"),
        "{err}"
    );
    assert!(!is_mounted(&data), "nothing mounted");

    // The fix works.
    chmod(&locked, 0o701);
    let (_, out) = doctor(&config);
    assert!(line(&out, "instance access").starts_with("ok"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalise_names_the_directory_postgres_cannot_reach() {
    let env = TestEnv::new().await;
    let admin = env.admin();
    let svc = env.svc();
    let img = svc.create_image(&admin, NewImage::not_personal()).unwrap();
    svc.ingest(
        &admin,
        img.id,
        draupnir::core::UploadTarget::File("base.tar".into()),
        &FIXTURE.tar[..],
    )
    .await
    .unwrap();
    let d = env.dir.path();
    chmod(d, 0o700);
    let err = svc.finalise_image(&admin, img.id, None).await;
    chmod(d, 0o755);
    let err = err.expect_err("finalise cannot start postgres").to_string();
    let upload = env.data().join("image_uploads").join(img.id.to_string());
    for needle in [
        format!("in {} as {INSTANCE_USER}", upload.display()),
        "Permission denied".to_string(),
        format!(
            "{} is 0700 root; fix: chmod o+x {}",
            d.display(),
            d.display()
        ),
    ] {
        assert!(err.contains(&needle), "{needle} in: {err}");
    }
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// A `draupnir serve` child, killed and its data_path unmounted on drop.
struct Daemon {
    child: std::process::Child,
    _unmount: Unmount,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// Start `draupnir serve` in `cwd` with `config_arg`s; returns once it
/// runs.
fn start_daemon(cwd: &Path, config_args: &[&str], data: PathBuf) -> Daemon {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(config_args)
        .current_dir(cwd)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let daemon = Daemon {
        child,
        _unmount: Unmount(data),
    };
    // Its log is read to the end, so it never blocks on a full pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut seen = String::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(60)) {
        if l.contains("draupnir is running") {
            return daemon;
        }
        seen.push_str(&l);
        seen.push('\n');
    }
    panic!("the daemon never ran: {seen}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_port_held_by_another_draupnir_is_not_the_running_daemon() {
    let _ = &*FIXTURE;
    let world = |ssh: u16| {
        let dir = tempfile::Builder::new()
            .prefix("drp-")
            .tempdir_in("/tmp")
            .unwrap();
        let text = TestConfig::new().text(dir.path()).replacen(
            "listen_address = \"127.0.0.1:0\"",
            &format!("listen_address = \"127.0.0.1:{ssh}\""),
            1,
        );
        std::fs::write(dir.path().join("config.toml"), &text).unwrap();
        (dir, text)
    };
    let (pa, pb) = (free_port(), free_port());
    let (a, text_a) = world(pa);
    let (b, _) = world(pb);
    // One started with a relative path from its directory, one with an
    // absolute `--config=` path.
    let daemon_a = start_daemon(a.path(), &["-c", "config.toml"], a.path().join("data"));
    let b_config = b.path().join("config.toml");
    let daemon_b = start_daemon(
        Path::new("/"),
        &[&format!("--config={}", b_config.display())],
        b.path().join("data"),
    );

    // Its own daemon's port is fine.
    let (_, out) = doctor(&a.path().join("config.toml"));
    let l = line(&out, "ssh port");
    assert!(
        l.starts_with("ok")
            && l.contains(&format!(
                "in use by the running daemon (pid {})",
                daemon_a.child.id()
            )),
        "{out}"
    );

    // A config whose port the other daemon holds is told so.
    let c = a.path().join("other.toml");
    std::fs::write(
        &c,
        text_a.replace(&format!("127.0.0.1:{pa}"), &format!("127.0.0.1:{pb}")),
    )
    .unwrap();
    let (code, out) = doctor(&c);
    assert_eq!(code, Some(1), "{out}");
    let l = line(&out, "ssh port");
    assert!(
        l.starts_with("FAIL")
            && l.contains(&format!(
                "127.0.0.1:{pb} is in use by another draupnir (pid {}, config {})",
                daemon_b.child.id(),
                b_config.display()
            ))
            && l.contains(" — fix: "),
        "{out}"
    );
    drop(daemon_a);
    drop(daemon_b);
}
