//! The SSH front door end to end with the real OpenSSH clients: uploads by
//! `scp` (SFTP and `-O`), `sftp -b` and `scp -r`, `pg_wal.tar.gz`
//! placement, refusals, a client killed mid-upload, the host key across
//! restarts, and exec exit statuses.

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::ssh::{text, SshEnv};
use common::FIXTURE;
use draupnir::core::ImageState;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scp_sftp_mode_into_image_dir_and_explicit_name() {
    let s = SshEnv::new().await;
    s.base_tar_gz();
    let a = s.new_image();
    let out = s
        .scp(
            &s.admin_key,
            &["base.tar.gz", &s.remote(&format!("images/{a}"))],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let b = s.new_image();
    let out = s
        .scp(
            &s.admin_key,
            &[
                "base.tar.gz",
                &s.remote(&format!("/images/{b}/base.tar.gz")),
            ],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    s.assert_usable(a).await;
    s.assert_usable(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scp_legacy_protocol() {
    let s = SshEnv::new().await;
    s.base_tar_gz();
    let a = s.new_image();
    let out = s
        .scp(
            &s.admin_key,
            &["-O", "base.tar.gz", &s.remote(&format!("images/{a}"))],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let b = s.new_image();
    let out = s
        .scp(
            &s.admin_key,
            &[
                "-O",
                "base.tar.gz",
                &s.remote(&format!("~/images/{b}/base.tar.gz")),
            ],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    s.assert_usable(a).await;
    s.assert_usable(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sftp_batch_put_and_ls() {
    let s = SshEnv::new().await;
    s.base_tar_gz();
    let id = s.new_image();
    let out = s
        .sftp_batch(
            &s.admin_key,
            &format!("ls images\nput base.tar.gz images/{id}/\nls -l /images\n"),
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.split_whitespace().any(|w| w == id.to_string()
                || w == format!("images/{id}")
                || w == format!("/images/{id}"))),
        "{listing}"
    );
    s.assert_usable(id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scp_recursive_data_directory() {
    let s = SshEnv::new().await;
    s.datadir("datadir");
    let a = s.new_image();
    let out = s
        .scp(
            &s.admin_key,
            &["-r", "datadir", &s.remote(&format!("images/{a}/"))],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let b = s.new_image();
    let out = s
        .scp(
            &s.admin_key,
            &["-O", "-r", "datadir", &s.remote(&format!("images/{b}/"))],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    s.assert_usable(a).await;
    s.assert_usable(b).await;
}

/// Split the fixture like `pg_basebackup -Ft -z`: `base.tar.gz` with an
/// empty `pg_wal/`, and `pg_wal.tar.gz` holding the WAL files.
fn split_wal() -> (Vec<u8>, Vec<u8>, usize) {
    let mut base = tar::Builder::new(Vec::new());
    let mut wal = tar::Builder::new(Vec::new());
    let mut wal_files = 0;
    let mut ar = tar::Archive::new(&FIXTURE.tar[..]);
    for entry in ar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_path_buf();
        let mut header = entry.header().clone();
        let mut body = Vec::new();
        entry.read_to_end(&mut body).unwrap();
        let rel = path.strip_prefix(".").unwrap_or(&path).to_path_buf();
        if rel.as_os_str().is_empty() {
            continue;
        }
        match rel.strip_prefix("pg_wal") {
            Ok(inner) if !inner.as_os_str().is_empty() => {
                if header.entry_type().is_file() {
                    wal_files += 1;
                }
                wal.append_data(&mut header, inner, &body[..]).unwrap();
            }
            _ => base.append_data(&mut header, &rel, &body[..]).unwrap(),
        }
    }
    let gz = |b: Vec<u8>| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, &b).unwrap();
        e.finish().unwrap()
    };
    (
        gz(base.into_inner().unwrap()),
        gz(wal.into_inner().unwrap()),
        wal_files,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_wal_tarball_lands_in_pg_wal() {
    let s = SshEnv::new().await;
    let (base, wal, wal_files) = split_wal();
    assert!(wal_files > 0, "the fixture has WAL files");
    s.file("split/base.tar.gz", &base);
    s.file("split/pg_wal.tar.gz", &wal);
    let id = s.new_image();
    let out = s
        .scp(
            &s.admin_key,
            &[
                "split/base.tar.gz",
                "split/pg_wal.tar.gz",
                &s.remote(&format!("images/{id}/")),
            ],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let (upload, _) = s.svc().image_path(id);
    let in_wal = std::fs::read_dir(upload.join("pg_wal"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .count();
    assert_eq!(in_wal, wal_files, "WAL files extracted into pg_wal/");
    assert!(!upload.join("pg_wal.tar.gz").exists());
    s.assert_usable(id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_are_clear() {
    let s = SshEnv::new().await;
    s.base_tar_gz();
    let id = s.new_image();

    // Unknown key.
    let stranger = s.stranger_key();
    let out = s.ssh(&stranger, &["help"]).await;
    assert_eq!(out.status.code(), Some(255), "{}", text(&out));
    assert!(stderr(&out).contains("Permission denied"), "{}", text(&out));

    // A non-admin may not upload (both protocols).
    let bob = s.new_user_key("bob", false);
    for opts in [&[][..], &["-O"][..]] {
        let mut args = opts.to_vec();
        let target = s.remote(&format!("images/{id}"));
        args.extend(["base.tar.gz", target.as_str()]);
        let out = s.scp(&bob, &args).await;
        assert!(!out.status.success(), "{}", text(&out));
        let err = stderr(&out);
        assert!(
            err.contains("admin only") || err.contains("Permission denied"),
            "{err}"
        );
    }

    // Unknown image, and an image that is not uploading.
    let out = s
        .scp(
            &s.admin_key,
            &["-O", "base.tar.gz", &s.remote("images/999/")],
        )
        .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("image 999 not found"),
        "{}",
        text(&out)
    );
    let out = s
        .scp(
            &s.admin_key,
            &["base.tar.gz", &s.remote("images/999/x.tar.gz")],
        )
        .await;
    assert!(!out.status.success(), "{}", text(&out));
    let ready = s.env.ready_image(None).await;
    for opts in [&[][..], &["-O"][..]] {
        let mut args = opts.to_vec();
        let target = s.remote(&format!("images/{ready}/base.tar.gz"));
        args.extend(["base.tar.gz", target.as_str()]);
        let out = s.scp(&s.admin_key, &args).await;
        assert!(!out.status.success(), "{}", text(&out));
        if opts.is_empty() {
            assert!(!stderr(&out).is_empty());
        } else {
            assert!(
                stderr(&out).contains("does not accept uploads"),
                "{}",
                text(&out)
            );
        }
    }
    assert_eq!(
        s.svc().image(&s.admin(), ready).unwrap().state,
        ImageState::Ready
    );

    // SFTP paths that leave the tree, links, renames, reading back.
    for batch in [
        "put base.tar.gz ../x".to_string(),
        "put base.tar.gz /etc/passwd".into(),
        "put base.tar.gz images/../../x".into(),
        "ls /etc".into(),
        "get /etc/passwd".into(),
        "cd ..".into(),
        format!("ln -s /etc/passwd images/{id}/link"),
        format!("symlink /etc images/{id}/etc"),
        format!("rename images/{id}/a images/{id}/b"),
        format!("rm images/{id}/base.tar.gz"),
        format!("chmod 777 images/{id}/x"),
        format!("get images/{id}/PG_VERSION"),
        "mkdir images/77777".into(),
    ] {
        let out = s.sftp_batch(&s.admin_key, &format!("{batch}\n")).await;
        assert!(!out.status.success(), "{batch}: {}", text(&out));
        assert!(!stderr(&out).is_empty(), "{batch}: {}", text(&out));
    }
    // Attribute changes are refused as such (SECURITY: setstat), not
    // answered OK while changing nothing.
    for batch in [
        format!("chmod 777 images/{id}"),
        format!("chown 0 images/{id}"),
        format!("chgrp 0 images/{id}"),
        "chmod 700 images".to_string(),
    ] {
        let out = s.sftp_batch(&s.admin_key, &format!("{batch}\n")).await;
        assert!(!out.status.success(), "{batch}: {}", text(&out));
        assert!(
            stderr(&out).contains("Permission denied"),
            "{batch}: {}",
            text(&out)
        );
    }
    // Nothing of that reached the disk outside the tree.
    assert!(!std::path::Path::new("/x").exists());
    // And reading an uploaded file back is refused at open.
    let out = s
        .sftp_batch(
            &s.admin_key,
            &format!("put base.tar.gz images/{id}/\nget images/{id}/base.tar.gz back.tar.gz\n"),
        )
        .await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!s.work.path().join("back.tar.gz").exists());
    // The image still finalises after all that.
    s.assert_usable(id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_killed_mid_upload_fails_the_image() {
    let s = SshEnv::new().await;
    s.base_tar_gz();
    // 128 MiB of incompressible-enough bytes, sent at ~4 MB/s.
    let mut big = vec![0u8; 128 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in big.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    s.file("big.bin", &big);
    drop(big);
    for opts in [&[][..], &["-O"][..]] {
        let id = s.new_image();
        let mut args = opts.to_vec();
        let target = s.remote(&format!("images/{id}/big.bin"));
        args.extend(["-l", "32000", "big.bin", target.as_str()]);
        let mut child = s
            .scp_command(&s.admin_key, &args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let (upload, _) = s.svc().image_path(id);
        let file = upload.join("big.bin");
        let mut started = false;
        for _ in 0..300 {
            if std::fs::metadata(&file)
                .map(|m| m.len() > 0)
                .unwrap_or(false)
            {
                started = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(started, "upload never started ({opts:?})");
        child.start_kill().unwrap();
        let _ = child.wait().await;
        let mut image = s.svc().image(&s.admin(), id).unwrap();
        for _ in 0..200 {
            if image.state == ImageState::Failed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            image = s.svc().image(&s.admin(), id).unwrap();
        }
        assert_eq!(image.state, ImageState::Failed, "{opts:?}");
        assert!(
            image
                .failure_reason
                .as_deref()
                .unwrap_or("")
                .contains("interrupted"),
            "{:?}",
            image.failure_reason
        );
        let image = s.svc().reset_upload(&s.admin(), id).unwrap();
        assert_eq!(image.state, ImageState::Uploading);
        let mut args = opts.to_vec();
        let target = s.remote(&format!("images/{id}"));
        args.extend(["base.tar.gz", target.as_str()]);
        let out = s.scp(&s.admin_key, &args).await;
        assert!(out.status.success(), "{}", text(&out));
        s.assert_usable(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_key_is_stable_across_restarts() {
    let mut s = SshEnv::new().await;
    let first = s
        .server
        .as_ref()
        .unwrap()
        .host_key_fingerprint()
        .to_string();
    let path = s.env.config.ssh.host_key_path.clone();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let out = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&first),
        "ssh-keygen reads the key: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    s.stop_server();
    s.start_server().await;
    let second = s
        .server
        .as_ref()
        .unwrap()
        .host_key_fingerprint()
        .to_string();
    assert_eq!(first, second);
    // A client pinning the key sees the same host after the restart.
    let known = s.work.path().join("known_hosts");
    let pubkey = std::process::Command::new("ssh-keygen")
        .arg("-yf")
        .arg(&path)
        .output()
        .unwrap();
    std::fs::write(
        &known,
        format!(
            "[127.0.0.1]:{} {}",
            s.port,
            String::from_utf8_lossy(&pubkey.stdout)
        ),
    )
    .unwrap();
    let out = s
        .ssh_opts(
            &s.admin_key,
            &[
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                &format!("UserKnownHostsFile={}", known.display()),
            ],
            &["help"],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_statuses_and_the_shell() {
    let s = SshEnv::new().await;
    let out = s.ssh(&s.admin_key, &["help"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!out.stdout.is_empty());
    let out = s.ssh(&s.admin_key, &["nosuchcommand"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("nosuchcommand"), "{}", text(&out));
    // The status reaches a shell on the client side, too.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ssh -F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
             -o BatchMode=yes -o LogLevel=ERROR -o IdentitiesOnly=yes -p {} -i {} \
             draupnir@127.0.0.1 nosuchcommand </dev/null 2>/dev/null; echo $?",
            s.port,
            s.admin_key.display()
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    // Control characters and bad quoting are refused before any command runs.
    let out = s.ssh(&s.admin_key, &["help\x07"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr(&out).contains("control characters"),
        "{}",
        text(&out)
    );
    let out = s.ssh(&s.admin_key, &["help 'unterminated"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // A shell prints the command list and exits 0 (tests/ssh_newcomer.rs
    // has the rest), with a forced PTY too (nothing hangs).
    let out = s.ssh(&s.admin_key, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("Usage: ssh draupnir"),
        "{}",
        text(&out)
    );
    let out = s.ssh_opts(&s.admin_key, &["-tt"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("Usage: ssh draupnir"),
        "{}",
        text(&out)
    );
    // A command with a PTY requested (`ssh -t`, as many aliases say) runs.
    let out = s.ssh_opts(&s.admin_key, &["-tt"], &["whoami"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("alice"), "{}", text(&out));
    assert!(
        !stderr(&out).contains("PTY allocation request failed"),
        "{}",
        text(&out)
    );
    // Port forwarding is refused.
    let out = s
        .ssh_opts(
            &s.admin_key,
            &[
                "-o",
                "ExitOnForwardFailure=yes",
                "-L",
                "0:127.0.0.1:22",
                "-N",
            ],
            &[],
        )
        .await;
    assert!(!out.status.success(), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_cap_per_user() {
    let s = SshEnv::with("", "max_sessions_per_user = 1").await;
    // One long-running session (SFTP waiting on stdin) holds the only slot.
    let mut first = tokio::process::Command::new("sftp");
    first
        .args([
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-P",
            &s.port.to_string(),
            "-i",
        ])
        .arg(&s.admin_key)
        .arg("draupnir@127.0.0.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut first = first.spawn().unwrap();
    // Give it time to connect and open its session; it must still be there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(first.try_wait().unwrap().is_none(), "sftp is connected");
    let out = s.ssh(&s.admin_key, &["help"]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "a second session is refused: {}",
        text(&out)
    );
    // With the reason, in one line the user sees.
    let err = stderr(&out);
    assert!(err.contains("max_sessions_per_user"), "{}", text(&out));
    assert_eq!(err.trim().lines().count(), 1, "{}", text(&out));
    first.start_kill().unwrap();
    let _ = first.wait().await;
    let mut ok = false;
    for _ in 0..50 {
        if s.ssh(&s.admin_key, &["help"]).await.status.success() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the slot is released when the session ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unauthenticated_connections_are_capped_and_timed_out() {
    use tokio::io::AsyncReadExt;
    let s = SshEnv::with(
        "",
        "auth_timeout = \"1s\"\nmax_unauthenticated = 2\nmax_unauthenticated_per_address = 2",
    )
    .await;
    let addr = s.server.as_ref().unwrap().local_addr();
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut banner = [0u8; 8];
        c.read_exact(&mut banner).await.unwrap();
        assert_eq!(&banner, b"SSH-2.0-");
        idle.push(c);
    }
    // A third one is dropped without a banner.
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("dropped at once")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // The silent ones are closed at the deadline...
    for mut c in idle {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest))
            .await
            .expect("closed at the auth deadline")
            .ok();
    }
    // ...which frees the slots for real clients.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = s.ssh(&s.admin_key, &["help"]).await;
    assert!(out.status.success(), "{}", text(&out));
}

/// One SFTP packet: length, type, payload.
fn sftp_packet(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    p.push(kind);
    p.extend_from_slice(payload);
    p
}

fn sftp_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// Read one SFTP packet: (type, payload).
async fn sftp_read(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.expect("sftp packet length");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut body).await.expect("sftp packet");
    (body[0], body[1..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sftp_write_with_a_gap_names_the_gap() {
    use tokio::io::AsyncWriteExt;
    let s = SshEnv::new().await;
    let id = s.new_image();
    // A raw SFTP client over `ssh -s`: OpenSSH's own never leaves a gap.
    let mut child = tokio::process::Command::new("ssh")
        .args(common::ssh::client_opts(&s.admin_key, None))
        .args([
            "-p",
            &s.port.to_string(),
            "-s",
            "draupnir@127.0.0.1",
            "sftp",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut to = child.stdin.take().unwrap();
    let mut from = child.stdout.take().unwrap();
    let step = async {
        to.write_all(&sftp_packet(1, &3u32.to_be_bytes()))
            .await
            .unwrap();
        assert_eq!(sftp_read(&mut from).await.0, 2, "VERSION");
        let mut open = 1u32.to_be_bytes().to_vec();
        sftp_string(&mut open, format!("images/{id}/base.tar.gz").as_bytes());
        open.extend_from_slice(&(0x02u32 | 0x08 | 0x10).to_be_bytes());
        open.extend_from_slice(&0u32.to_be_bytes());
        to.write_all(&sftp_packet(3, &open)).await.unwrap();
        let (kind, reply) = sftp_read(&mut from).await;
        assert_eq!(kind, 102, "HANDLE: {}", String::from_utf8_lossy(&reply));
        let handle = reply[8..].to_vec();
        let write = |id: u32, offset: u64, data: &[u8]| {
            let mut w = id.to_be_bytes().to_vec();
            sftp_string(&mut w, &handle);
            w.extend_from_slice(&offset.to_be_bytes());
            sftp_string(&mut w, data);
            sftp_packet(6, &w)
        };
        let fixture = &FIXTURE.tar_gz[..1000];
        to.write_all(&write(2, 0, fixture)).await.unwrap();
        let (kind, reply) = sftp_read(&mut from).await;
        assert_eq!(kind, 101);
        assert_eq!(&reply[4..8], &0u32.to_be_bytes(), "first write OK");
        to.write_all(&write(3, 5000, fixture)).await.unwrap();
        let (kind, reply) = sftp_read(&mut from).await;
        assert_eq!(kind, 101);
        assert_ne!(&reply[4..8], &0u32.to_be_bytes(), "the gap is refused");
        String::from_utf8_lossy(&reply[12..]).to_string()
    };
    let message = tokio::time::timeout(Duration::from_secs(60), step)
        .await
        .expect("sftp answers");
    assert!(
        message.contains("write at offset 5000 but 1000 bytes were written so far"),
        "{message}"
    );
    drop(to);
    let _ = child.wait().await;
    // The image names the gap, not an interruption.
    let image = s.svc().image(&s.admin(), id).unwrap();
    assert_eq!(image.state, ImageState::Failed);
    let reason = image.failure_reason.unwrap_or_default();
    assert!(reason.contains("writes must be sequential"), "{reason}");
    assert!(!reason.contains("interrupted"), "{reason}");
    // `reset-upload` is what the reason of a failed image points to.
    let out = s
        .ssh(&s.admin_key, &["finalise-image", &id.to_string()])
        .await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("reset-upload {id}")),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_command_lines_are_refused_in_one_line() {
    let s = SshEnv::new().await;
    // 200 KB in 100 arguments (one argument may not exceed 128 KiB).
    let arg = "a".repeat(2000);
    let mut args = vec!["help"];
    args.extend(std::iter::repeat_n(arg.as_str(), 100));
    let out = s.ssh(&s.admin_key, &args).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("longer than 16384 bytes"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // The connection was fine: the next command on a new one works too.
    let out = s.ssh(&s.admin_key, &["whoami"]).await;
    assert!(out.status.success(), "{}", text(&out));
}
