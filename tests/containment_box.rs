//! One instance, one box: code running inside one postmaster cannot reach
//! another instance, a raw upload, the daemon's state or the host's files.
//!
//! Proved from inside the process: `gdb` attaches to a running postmaster
//! and calls `open()` and `system()` in it (what `COPY … PROGRAM`, an
//! untrusted language or an extension bug would do), then reads back what
//! the kernel answered. Its own data directory opens; nothing else does.

mod common;

use std::path::Path;

use common::inside::*;
use common::*;
use draupnir::core::test_support::process;
use draupnir::core::InstanceRef;

/// Does `pid` have child processes (a postmaster that is up has its
/// checkpointer and others; single-user mode has none)?
fn has_children(pid: i32) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .any(|p| process::parent_pid(p) == Some(pid))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_postmaster_reaches_only_its_own_files() {
    let env = TestEnv::new().await;
    let svc = env.svc();
    let image = env.ready_image(None).await;
    let a = svc
        .create_instance(&env.user("alice"), InstanceRef::Id(image))
        .await
        .unwrap();
    let b = svc
        .create_instance(&env.user("bob"), InstanceRef::Id(image))
        .await
        .unwrap();
    // A raw upload: production data before anonymisation.
    let raw = env.uploaded_image(None).await;

    let data = env.data();
    let dir_a = data.join("instances").join(a.instance.id.to_string());
    let dir_b = data.join("instances").join(b.instance.id.to_string());
    let upload = data.join("image_uploads").join(raw.to_string());
    let pid_a = process::running_postmaster(&dir_a).expect("a's postmaster");
    let pid_b = process::running_postmaster(&dir_b).expect("b's postmaster");
    let canary = Canary::new();

    // Control: the probe works, and the box holds the postmaster's own
    // files.
    assert_eq!(open_inside(pid_a, &dir_a.join("PG_VERSION")), Ok(()));
    assert_eq!(open_inside(pid_a, &dir_a.join("server.key")), Ok(()));
    assert_eq!(open_inside(pid_a, Path::new("/usr/lib/os-release")), Ok(()));

    for target in [
        dir_b.join("server.key"),
        dir_b.join("PG_VERSION"),
        dir_b.join("global").join("pg_control"),
        upload.join("PG_VERSION"),
        data.join("image_snapshots")
            .join(image.to_string())
            .join("PG_VERSION"),
        env.config.state_path.join("draupnir.sqlite3"),
        canary.0.clone(),
    ] {
        assert_eq!(
            open_inside(pid_a, &target),
            Err(EACCES),
            "{} opened from inside instance {}",
            target.display(),
            a.instance.id
        );
    }

    // What a backend's child would do (COPY … PROGRAM, plperlu): a shell
    // in the box runs, reads its own files, and nothing else.
    let own = dir_a.join("PG_VERSION");
    assert_eq!(
        shell_inside(pid_a, &format!("cat {} >/dev/null", own.display())),
        0
    );
    for cmd in [
        format!("cat {} >/dev/null", dir_b.join("server.key").display()),
        format!("ls {} >/dev/null", upload.display()),
        format!("cat {} >/dev/null", canary.0.display()),
        // Another box's process: no signals, no /proc/PID/environ.
        format!("kill -0 {pid_b}"),
        format!("cat /proc/{pid_b}/environ >/dev/null"),
        // Nothing to write outside its own directory.
        format!("touch {}.written", canary.0.display()),
    ] {
        assert_ne!(
            shell_inside(pid_a, &cmd),
            0,
            "`{cmd}` succeeded inside the box"
        );
    }
    assert!(!Path::new(&format!("{}.written", canary.0.display())).exists());

    // Both instances still serve their owners.
    for info in [&a, &b] {
        assert_eq!(psql_cert(info, "SELECT 1").unwrap().trim(), "1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_finalise_postmaster_is_boxed_to_its_upload() {
    let env = TestEnv::new().await;
    let svc = env.svc().clone();
    let admin = env.admin();
    let image = env.ready_image(None).await;
    let a = svc
        .create_instance(&env.user("alice"), InstanceRef::Id(image))
        .await
        .unwrap();
    let dir_a = env.data().join("instances").join(a.instance.id.to_string());

    // A finalise whose script keeps its postmaster up until the test has
    // looked inside it (the file `go` in the upload, at most two minutes).
    let img = env
        .uploaded_image(Some(
            "DO $$ BEGIN FOR i IN 1..1200 LOOP
               EXIT WHEN 'go' IN (SELECT pg_ls_dir('.'));
               PERFORM pg_sleep(0.1);
             END LOOP; END $$;",
        ))
        .await;
    let upload = env.data().join("image_uploads").join(img.to_string());
    let finalising = {
        let svc = svc.clone();
        let admin = admin.clone();
        tokio::spawn(async move { svc.finalise_image(&admin, img, None).await })
    };
    // The postmaster running the script (single-user mode, which creates
    // the admin role first, names itself in the same PID file for a
    // moment, with no children).
    let mut pid = None;
    while pid.is_none() && !finalising.is_finished() {
        pid = process::running_postmaster(&upload).filter(|p| has_children(*p));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let pid = pid.expect("the finalise postmaster");
    assert_eq!(open_inside(pid, &upload.join("PG_VERSION")), Ok(()));
    // It serves its socket only: no TCP port to listen on, not even the
    // number that names its socket (raw production data must not be
    // served to the network from here).
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for port in [5432, free] {
        assert_eq!(listen_tcp_inside(pid, port), EACCES, "listened on {port}");
    }
    for target in [dir_a.join("server.key"), dir_a.join("PG_VERSION")] {
        assert_eq!(
            open_inside(pid, &target),
            Err(EACCES),
            "{}",
            target.display()
        );
    }
    finalising.await.unwrap().expect("finalise");
}
