//! End to end through the core: image → upload → finalise → instances →
//! psql with client certificates → destroy; authorisation; supervision.

mod common;

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::shared::Shared;
use common::*;
use draupnir::core::Progress;
use draupnir::core::{ConnectionInfo, CoreError, Image, ImageId, InstanceRef, UploadTarget};
use draupnir::core::{ImageState, InstanceState};

/// The lifecycle's shared world: one image created through the core with a
/// script that keeps ten users, the fixture uploaded and the image
/// finalised with its progress recorded. What each step answered is kept
/// for the tests to check; each test makes its own instances.
struct Finalised {
    env: TestEnv,
    image: ImageId,
    /// The image as created.
    created: Image,
    /// The upload subvolumes right after the create.
    uploads_after_create: Vec<String>,
    bytes_written: u64,
    /// The image as finalised.
    ready: Image,
    events: Vec<Progress>,
}

static FINALISED: OnceLock<Shared<Finalised>> = OnceLock::new();

const KEEP_TEN: &str = "DELETE FROM orders WHERE user_id > 10;\nDELETE FROM users WHERE id > 10;\nSELECT count(*) AS kept FROM users;";

async fn build_finalised() -> Finalised {
    let env = TestEnv::new().await;
    let svc = env.svc();
    let admin = env.admin();
    let created = svc
        .create_image(&admin, NewImage::with_script(Some(KEEP_TEN)))
        .unwrap();
    let uploads_after_create = env.entries("image_uploads");
    let image = created.id;
    let report = svc
        .ingest(
            &admin,
            image,
            UploadTarget::File("base.tar.gz".into()),
            &FIXTURE.tar_gz[..],
        )
        .await
        .unwrap();
    let events: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let sink = events.clone();
    let ready = svc
        .finalise_image(
            &admin,
            image,
            Some(Arc::new(move |p| sink.lock().unwrap().push(p))),
        )
        .await
        .unwrap();
    let events = events.lock().unwrap().clone();
    Finalised {
        image,
        created,
        uploads_after_create,
        bytes_written: report.bytes_written,
        ready,
        events,
        env,
    }
}

/// Run a test on the lifecycle's world.
async fn on_finalised<Fut>(test: impl FnOnce(&'static Finalised) -> Fut)
where
    Fut: Future<Output = ()> + Send + 'static,
{
    Shared::get(&FINALISED, build_finalised, |f| f.env.teardown())
        .await
        .run(test)
        .await
}

/// A new instance of `image` for the admin, through the core.
async fn instance_of(env: &TestEnv, image: InstanceRef) -> ConnectionInfo {
    env.svc()
        .create_instance(&env.admin(), image)
        .await
        .unwrap()
}

/// Destroy these instances through the core.
async fn destroy_all(env: &TestEnv, infos: &[&ConnectionInfo]) {
    for info in infos {
        env.svc()
            .destroy_instance(&env.admin(), info.instance.id)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_image_is_uploading_into_its_own_subvolume() {
    on_finalised(|f| async move {
        assert_eq!(f.created.state, ImageState::Uploading);
        assert_eq!(f.uploads_after_create, vec![f.image.to_string()]);
        assert!(f.bytes_written > 1_000_000);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalise_makes_a_ready_image_and_streams_its_steps_and_script_output() {
    on_finalised(|f| async move {
        assert_eq!(f.ready.state, ImageState::Ready);
        assert_eq!(f.ready.pg_major, Some(15));
        let events = &f.events;
        let steps: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                Progress::Step(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        assert!(
            steps.iter().any(|s| s.contains("anonymisation script")),
            "{steps:?}"
        );
        assert!(steps.iter().any(|s| s.contains("proving")), "{steps:?}");
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Progress::Output(l) if l.trim() == "10")),
            "script output is streamed: {events:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_becomes_a_read_only_snapshot_without_key_or_counters() {
    on_finalised(|f| async move {
        let env = &f.env;
        // The upload subvolume is deleted in the background.
        for _ in 0..200 {
            if env.entries("image_uploads").is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        assert!(env.entries("image_uploads").is_empty());
        assert_eq!(env.entries("image_snapshots"), vec![f.image.to_string()]);
        let snap = env.data().join("image_snapshots").join(f.image.to_string());
        assert!(
            std::fs::write(snap.join("x"), b"x").is_err(),
            "snapshot is read-only"
        );
        assert!(
            !snap.join("server.key").exists(),
            "no finalise key left in the image"
        );
        assert!(
            !snap.join("pg_stat/pgstat.stat").exists(),
            "instances start with no activity counters for autovacuum to act on"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalising_a_ready_image_again_changes_nothing() {
    on_finalised(|f| async move {
        assert_eq!(
            f.env
                .svc()
                .finalise_image(&f.env.admin(), f.image, None)
                .await
                .unwrap()
                .state,
            ImageState::Ready
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_image_takes_no_more_bytes() {
    on_finalised(|f| async move {
        let err = f
            .env
            .svc()
            .ingest(
                &f.env.admin(),
                f.image,
                UploadTarget::Stream,
                &FIXTURE.tar[..],
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not accept uploads"), "{err}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_run_on_their_own_ports_as_draupnir_on_localhost() {
    on_finalised(|f| async move {
        let a = instance_of(&f.env, InstanceRef::Id(f.image)).await;
        let b = instance_of(&f.env, InstanceRef::Latest).await;
        assert_ne!(a.port, b.port);
        assert_eq!(a.instance.state, InstanceState::Running);
        assert_eq!(a.host, "localhost");
        assert_eq!(a.user, "draupnir");
        destroy_all(&f.env, &[&a, &b]).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_ran_and_each_instance_keeps_its_writes() {
    on_finalised(|f| async move {
        let a = instance_of(&f.env, InstanceRef::Id(f.image)).await;
        let b = instance_of(&f.env, InstanceRef::Latest).await;
        // The script ran; draupnir owns the data; writes stay private.
        assert_eq!(psql_cert(&a, "SELECT count(*) FROM users").unwrap(), "10");
        psql_cert(&a, "INSERT INTO users VALUES (1000, 'new@example.com', 'x'); DROP TABLE orders CASCADE; ALTER TABLE app_owned ADD COLUMN y int").unwrap();
        assert_eq!(psql_cert(&a, "SELECT count(*) FROM users").unwrap(), "11");
        assert_eq!(psql_cert(&b, "SELECT count(*) FROM users").unwrap(), "10");
        assert_eq!(psql_cert(&b, "SELECT count(*) FROM orders").unwrap(), "50");
        let c = instance_of(&f.env, InstanceRef::Id(f.image)).await;
        assert_eq!(
            psql_cert(&c, "SELECT count(*) FROM users").unwrap(),
            "10",
            "image unchanged"
        );
        destroy_all(&f.env, &[&a, &b, &c]).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_is_vacuumed_unprivileged_and_cut_off_from_publishers() {
    on_finalised(|f| async move {
        let b = instance_of(&f.env, InstanceRef::Id(f.image)).await;
        // No subscription in the upload may reach its publisher from an instance.
        assert_eq!(
            psql_cert(&b, "SHOW max_logical_replication_workers").unwrap(),
            "0"
        );
        // The tables the script changed were vacuumed and analysed once, in
        // the image, rather than by autovacuum in every instance.
        assert_eq!(
            psql_cert(
                &b,
                "SELECT relname, reltuples::int, relallvisible > 0 FROM pg_class \
                 WHERE relname IN ('users', 'orders') ORDER BY 1"
            )
            .unwrap(),
            "orders|50|t\nusers|10|t"
        );
        assert_eq!(psql_cert(&b, "SELECT current_user").unwrap(), "draupnir");
        assert_eq!(
            psql_cert(
                &b,
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            )
            .unwrap(),
            "f"
        );
        assert_eq!(
            psql_cert(
                &b,
                "SELECT count(*) FROM pg_roles WHERE rolname = 'draupnir_finalise'"
            )
            .unwrap(),
            "0"
        );
        destroy_all(&f.env, &[&b]).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_instance_certificate_as_draupnir_over_tls_gets_in() {
    on_finalised(|f| async move {
        let a = instance_of(&f.env, InstanceRef::Id(f.image)).await;
        let b = instance_of(&f.env, InstanceRef::Id(f.image)).await;
        // Without the client certificate, or in plain text, or as another role: refused.
        let files = ClientFiles::new(&a);
        let base = format!("host=127.0.0.1 port={} dbname=postgres", a.port);
        let no_cert = psql(
            &format!(
                "{base} user=draupnir sslmode=verify-ca sslrootcert={}",
                files.path("root.crt")
            ),
            "SELECT 1",
        );
        assert!(no_cert.is_err(), "no client cert must be refused");
        assert!(psql(&format!("{base} user=draupnir sslmode=disable"), "SELECT 1").is_err());
        let as_postgres = psql(
            &format!(
                "{base} user=postgres sslmode=verify-ca sslrootcert={} sslcert={} sslkey={}",
                files.path("root.crt"),
                files.path("client.crt"),
                files.path("client.key")
            ),
            "SELECT 1",
        );
        assert!(
            as_postgres.is_err(),
            "role postgres must be refused over TCP"
        );
        // Another instance's certificate does not open this one.
        let other = ClientFiles::new(&b);
        let cross = psql(
            &format!(
                "{base} user=draupnir sslmode=require sslcert={} sslkey={}",
                other.path("client.crt"),
                other.path("client.key")
            ),
            "SELECT 1",
        );
        assert!(
            cross.is_err(),
            "another instance's certificate must be refused"
        );
        destroy_all(&f.env, &[&a, &b]).await;
    })
    .await
}

/// A world of its own: nothing else may be running to see everything go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroying_takes_rows_subvolumes_and_processes_with_it() {
    let env = TestEnv::new().await;
    let svc = env.svc();
    let admin = env.admin();
    let image = env.ready_image(None).await;
    let a = instance_of(&env, InstanceRef::Id(image)).await;
    let b = instance_of(&env, InstanceRef::Latest).await;
    let c = instance_of(&env, InstanceRef::Id(image)).await;
    destroy_all(&env, &[&a, &b, &c]).await;
    assert!(env.entries("instances").is_empty());
    assert!(svc.list_instances(&admin, true).unwrap().is_empty());
    assert!(env.postmasters().is_empty(), "{:?}", env.postmasters());
    svc.destroy_image(&admin, image, false).await.unwrap();
    assert!(env.entries("image_snapshots").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_cheap_and_ports_unique_and_authorised() {
    let env = TestEnv::new().await;
    let svc = env.svc();
    let admin = env.admin();
    let image = env.ready_image(None).await;
    let image_size = svc.image(&admin, image).unwrap().size_bytes;
    assert!(image_size > 10_000_000, "{image_size}");

    // A foreign process holds the first port of the range.
    let squatter = std::net::TcpListener::bind(("0.0.0.0", env.config.min_instance_port));
    let before = fs_used(&env.data());
    let bob = env.user("bob");
    let carol = env.user("carol");
    let x = svc
        .create_instance(&bob, InstanceRef::Id(image))
        .await
        .unwrap();
    let after = fs_used(&env.data());
    let y = svc
        .create_instance(&carol, InstanceRef::Id(image))
        .await
        .unwrap();
    if squatter.is_ok() {
        assert_ne!(x.port, env.config.min_instance_port);
    }
    assert_ne!(x.port, y.port);
    let used = after.saturating_sub(before);
    assert!(
        used < image_size / 4,
        "a new instance used {used} bytes of disk for a {image_size}-byte image"
    );

    // Users see and touch only their own instances.
    assert_eq!(svc.list_instances(&bob, false).unwrap().len(), 1);
    assert!(matches!(
        svc.instance(&bob, y.instance.id),
        Err(CoreError::NotFound { .. })
    ));
    assert!(matches!(
        svc.instance_credentials(&bob, y.instance.id),
        Err(CoreError::NotFound { .. })
    ));
    assert!(matches!(
        svc.destroy_instance(&bob, y.instance.id).await,
        Err(CoreError::NotFound { .. })
    ));
    assert!(matches!(
        svc.list_instances(&bob, true),
        Err(CoreError::AdminOnly(_))
    ));
    assert!(matches!(
        svc.create_image(&bob, NewImage::not_personal()),
        Err(CoreError::AdminOnly(_))
    ));
    assert!(matches!(
        svc.destroy_image(&bob, image, true).await,
        Err(CoreError::AdminOnly(_))
    ));
    assert!(matches!(
        svc.create_instance(&bob, InstanceRef::Id(ImageId::new(9999)))
            .await,
        Err(CoreError::NotFound { .. })
    ));
    // The image has instances: refused unless cascading.
    assert!(matches!(
        svc.destroy_image(&admin, image, false).await,
        Err(CoreError::ImageHasInstances { count: 2, .. })
    ));
    svc.destroy_image(&admin, image, true).await.unwrap();
    assert!(env.entries("instances").is_empty());
    assert!(env.postmasters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_not_ready_is_refused() {
    let env = TestEnv::new().await;
    let admin = env.admin();
    let img = env
        .svc()
        .create_image(&admin, NewImage::not_personal())
        .unwrap();
    let err = env
        .svc()
        .create_instance(&admin, InstanceRef::Id(img.id))
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::ImageNotReady { .. }), "{err}");
    assert!(env.entries("instances").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_restarts_a_killed_postmaster() {
    let env = TestEnv::new().await;
    let svc = env.svc();
    let admin = env.admin();
    let image = env.ready_image(None).await;
    let info = svc
        .create_instance(&admin, InstanceRef::Id(image))
        .await
        .unwrap();
    let pid = svc.instance_pid(info.instance.id).expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut ok = false;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = svc.instance_pid(info.instance.id);
        if now.is_some_and(|p| p != pid) && psql_cert(&info, "SELECT 1").is_ok() {
            ok = true;
            break;
        }
    }
    assert!(
        ok,
        "instance did not come back after its postmaster was killed"
    );
    assert_eq!(
        svc.instance(&admin, info.instance.id).unwrap().state,
        InstanceState::Running
    );
}

/// The fixture with every path under one wrapping directory, as
/// `tar czf b.tgz datadir/` makes it.
fn wrapped_fixture(dir: &str) -> Vec<u8> {
    remap_fixture(|rel, header, _| {
        header
            .set_path(std::path::Path::new(dir).join(rel))
            .unwrap();
        true
    })
    .into_inner()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_upload_then_wrapped_data_dir_finalises() {
    let env = TestEnv::new().await;
    let svc = env.svc();
    let admin = env.admin();
    let img = svc.create_image(&admin, NewImage::not_personal()).unwrap();
    // A broken upload fails the image…
    let err = svc
        .ingest(
            &admin,
            img.id,
            UploadTarget::File("base.tar".into()),
            &FIXTURE.tar[..5000],
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    assert_eq!(svc.image(&admin, img.id).unwrap().state, ImageState::Failed);
    // …until the upload is reset; then a wrapped data dir (whose wrapper is
    // even named like one of its children) and an empty dir go in.
    assert_eq!(
        svc.reset_upload(&admin, img.id).unwrap().state,
        ImageState::Uploading
    );
    svc.ingest(
        &admin,
        img.id,
        UploadTarget::File("b.tar".into()),
        &wrapped_fixture("base")[..],
    )
    .await
    .unwrap();
    svc.upload_mkdir(&admin, img.id, std::path::Path::new("base/pg_extra_empty"))
        .unwrap();
    assert!(matches!(
        svc.upload_mkdir(&admin, img.id, std::path::Path::new("../x")),
        Err(CoreError::Upload(_))
    ));
    let ready = svc.finalise_image(&admin, img.id, None).await.unwrap();
    assert_eq!(ready.state, ImageState::Ready);
    assert!(matches!(
        svc.reset_upload(&admin, img.id),
        Err(CoreError::InvalidState(_))
    ));
    let info = svc
        .create_instance(&admin, InstanceRef::Id(img.id))
        .await
        .unwrap();
    assert_eq!(
        psql_cert(&info, "SELECT count(*) FROM users").unwrap(),
        FIXTURE_USERS.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_basebackup_stream_and_zstd_uploads_finalise() {
    let env = TestEnv::new().await;
    let svc = env.svc();
    let admin = env.admin();
    // `pg_basebackup -D - -Ft -X fetch | ssh draupnir upload-image N`: a live
    // backup with backup_label, recovered at the first start.
    let zst = zstd::encode_all(&FIXTURE.tar[..], 3).unwrap();
    for (name, bytes) in [("basebackup", FIXTURE.basebackup.clone()), ("zstd", zst)] {
        let img = svc
            .create_image(
                &admin,
                NewImage::with_script(Some("DELETE FROM orders; DELETE FROM users WHERE id > 3;")),
            )
            .unwrap();
        svc.ingest(&admin, img.id, UploadTarget::Stream, &bytes[..])
            .await
            .unwrap();
        let ready = svc
            .finalise_image(&admin, img.id, None)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ready.state, ImageState::Ready);
        let info = svc
            .create_instance(&admin, InstanceRef::Id(img.id))
            .await
            .unwrap();
        assert_eq!(
            psql_cert(&info, "SELECT count(*) FROM users").unwrap(),
            "3",
            "{name}"
        );
        assert_eq!(
            psql_cert(&info, "SELECT pg_is_in_recovery()").unwrap(),
            "f",
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_instance_keeps_id_port_and_credentials() {
    let env = TestEnv::new().await;
    let svc = env.svc();
    let admin = env.admin();
    let image = env.ready_image(None).await;
    let bob = env.user("bob");
    let info = svc
        .create_instance(&bob, InstanceRef::Id(image))
        .await
        .unwrap();
    psql_cert(&info, "DELETE FROM orders; DELETE FROM users").unwrap();
    assert_eq!(psql_cert(&info, "SELECT count(*) FROM users").unwrap(), "0");
    let carol = env.user("carol");
    assert!(matches!(
        svc.reset_instance(&carol, info.instance.id).await,
        Err(CoreError::NotFound { .. })
    ));
    let again = svc.reset_instance(&bob, info.instance.id).await.unwrap();
    assert_eq!(again.port, info.port);
    let again = svc.instance_credentials(&bob, info.instance.id).unwrap();
    assert_eq!(again.credentials.client_key, info.credentials.client_key);
    // The old certificate files still work: nothing changed for the client.
    assert_eq!(
        psql_cert(&info, "SELECT count(*) FROM users").unwrap(),
        FIXTURE_USERS.to_string()
    );
    assert_eq!(env.entries("instances"), vec![info.instance.id.to_string()]);
    assert_eq!(env.postmasters().len(), 1);
    // An admin may reset anyone's instance.
    svc.reset_instance(&admin, info.instance.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_crashes_mark_the_instance_failed_with_the_log_tail() {
    let env = TestEnv::new().await;
    let svc = env.svc();
    let admin = env.admin();
    let image = env.ready_image(None).await;
    let info = svc
        .create_instance(&admin, InstanceRef::Id(image))
        .await
        .unwrap();
    let id = info.instance.id;
    // Break the instance so that every restart fails, then kill it.
    let conf = env
        .data()
        .join("instances")
        .join(id.to_string())
        .join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("shared_buffers = 'lots'\n");
    std::fs::write(&conf, text).unwrap();
    let pid = svc.instance_pid(id).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut inst = svc.instance(&admin, id).unwrap();
    for _ in 0..600 {
        if inst.state == InstanceState::Failed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        inst = svc.instance(&admin, id).unwrap();
    }
    assert_eq!(inst.state, InstanceState::Failed);
    let reason = inst.failure_reason.unwrap();
    assert!(
        reason.contains("shared_buffers"),
        "the log tail is kept: {reason}"
    );
    // A failed instance can still be destroyed cleanly.
    svc.destroy_instance(&admin, id).await.unwrap();
    assert!(env.postmasters().is_empty());
    assert!(env.entries("instances").is_empty());
}
