//! A plain `postgres` the benchmarks run by hand as their baseline: start
//! it on a data directory with a Unix socket only, wait until it accepts
//! connections, run statements with `psql`, stop it cleanly; and a data
//! directory uploaded into a new image through the core as a `tar` stream.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{as_instance_user, check};

/// Wait until `postmaster.pid` says the server accepts connections (what
/// `pg_ctl -w` waits for, polled every millisecond), or the process ends.
pub fn wait_ready(dir: &Path, pg: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(dir.join("postmaster.pid")) {
            if text.lines().nth(7).is_some_and(|l| l.trim() == "ready") {
                return;
            }
        }
        if let Ok(Some(status)) = pg.try_wait() {
            panic!("postgres in {} exited: {status}", dir.display());
        }
        assert!(Instant::now() < deadline, "postgres never became ready");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `psql` as the instance user over the private socket in `dir`, one
/// `-c` (one transaction) per statement.
pub fn psql(dir: &Path, port: u16, statements: &[&str]) {
    let mut cmd = as_instance_user("psql");
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(dir)
        .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"]);
    for sql in statements {
        cmd.args(["-c", sql]);
    }
    check(&mut cmd);
}

/// Start postgres on `dir` with `settings`, run `statements`, stop it:
/// how a benchmark fills the data directory it uploads.
pub fn fill(dir: &Path, port: u16, settings: &[&str], statements: &[&str]) {
    let mut pg = start(dir, port, settings);
    wait_ready(dir, &mut pg);
    psql(dir, port, statements);
    stop(&mut pg);
}

/// A clean (fast) stop.
pub fn stop(pg: &mut std::process::Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pg.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = pg.wait();
}

/// Start postgres on `dir` with a Unix socket only (plus `settings`).
pub fn start(dir: &Path, port: u16, settings: &[&str]) -> std::process::Child {
    let mut c = as_instance_user("postgres");
    c.arg("-D")
        .arg(dir)
        .args(["-p", &port.to_string(), "-c", "listen_addresses="])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()));
    for s in settings {
        c.args(["-c", s]);
    }
    c.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("postgres")
}

/// Upload `dir` into a new image (`new`) through the core, as a `tar`
/// stream.
pub async fn upload_dir(
    svc: &draupnir::core::Service,
    admin: &draupnir::core::Actor,
    dir: &Path,
    new: draupnir::core::NewImage,
) -> draupnir::core::ImageId {
    let image = svc.create_image(admin, new).expect("create image");
    let mut tar = tokio::process::Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args(["-cf", "-", "."])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("tar");
    let out = tar.stdout.take().expect("tar stdout");
    svc.ingest(admin, image.id, draupnir::core::UploadTarget::Stream, out)
        .await
        .expect("upload");
    assert!(tar.wait().await.expect("tar").success());
    image.id
}
