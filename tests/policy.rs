//! Lifetimes, idleness, access, rotation, freshness and quotas.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use draupnir::core::{CoreError, ImageId, InstanceRef, NewInstance, UploadTarget};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_extension_and_limits() {
    let env = TestEnv::with("max_instance_ttl = \"2h\"\ndefault_instance_ttl = \"1h\"").await;
    let svc = env.svc();
    let admin = env.admin();
    let image = env.ready_image(None).await;
    let short = svc
        .create_instance_with(
            &admin,
            InstanceRef::Id(image),
            NewInstance {
                ttl: Some(Duration::from_secs(1)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let default = svc
        .create_instance(&admin, InstanceRef::Id(image))
        .await
        .unwrap();
    let left = default.instance.expires_at.unwrap() - time::OffsetDateTime::now_utc();
    assert!((3500..=3600).contains(&left.whole_seconds()), "{left}");
    let err = svc
        .create_instance_with(
            &admin,
            InstanceRef::Id(image),
            NewInstance {
                ttl: Some(Duration::from_secs(3 * 3600)),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("longer than max_instance_ttl (2h)"),
        "{err}"
    );
    assert!(svc
        .extend_instance(&admin, default.instance.id, Duration::from_secs(1800))
        .is_ok());
    let err = svc
        .extend_instance(&admin, default.instance.id, Duration::from_secs(3600))
        .unwrap_err();
    assert!(err.to_string().contains("max_instance_ttl"), "{err}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let report = svc.clean_once().await.unwrap();
    assert_eq!(report.expired, vec![short.instance.id]);
    assert_eq!(
        env.entries("instances"),
        vec![default.instance.id.to_string()]
    );
    assert_eq!(env.postmasters().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_go_busy_ones_stay() {
    let env = TestEnv::with("instance_idle_limit = \"2s\"").await;
    let svc = env.svc();
    let admin = env.admin();
    let image = env.ready_image(None).await;
    let idle = svc
        .create_instance(&admin, InstanceRef::Id(image))
        .await
        .unwrap();
    let busy = svc
        .create_instance(&admin, InstanceRef::Id(image))
        .await
        .unwrap();
    // A developer sits in psql on `busy` for a while.
    let files = ClientFiles::new(&busy);
    let mut session = Command::new("psql")
        .args(["-X", "-At", "-c", "SELECT pg_sleep(8)", "-d"])
        .arg(format!(
            "host=127.0.0.1 port={} user=draupnir dbname=postgres sslmode=verify-ca sslrootcert={} sslcert={} sslkey={}",
            busy.port,
            files.path("root.crt"),
            files.path("client.crt"),
            files.path("client.key")
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        svc.clean_once().await.unwrap().idle.is_empty(),
        "nothing is idle for 2s yet"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let report = svc.clean_once().await.unwrap();
    let _ = session.kill();
    let _ = session.wait();
    assert_eq!(report.idle, vec![idle.instance.id]);
    assert_eq!(env.entries("instances"), vec![busy.instance.id.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_of_users_without_access_are_destroyed() {
    let env = TestEnv::new().await;
    let svc = env.svc();
    let admin = env.admin();
    let image = env.ready_image(None).await;
    let bob = env.user("bob");
    let key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE9Yh1l0F1m3mWbVQe1lY6n8r1G0Zf2Vb5tq9c3p6Kxd bob@x";
    let fp = svc.add_key(&admin, "bob", key).unwrap();
    let inst = svc
        .create_instance(&bob, InstanceRef::Id(image))
        .await
        .unwrap();
    let mine = svc
        .create_instance(&admin, InstanceRef::Id(image))
        .await
        .unwrap();
    assert!(svc.clean_once().await.unwrap().access_gone.is_empty());
    svc.remove_key(&admin, fp.as_str()).unwrap();
    let report = svc.clean_once().await.unwrap();
    assert_eq!(report.access_gone, vec![inst.instance.id]);
    assert_eq!(env.entries("instances"), vec![mine.instance.id.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_the_newest_n_and_images_in_use() {
    let env = TestEnv::with("image_retention = 2\nexpected_image_interval = \"2s\"").await;
    let svc = env.svc();
    let admin = env.admin();
    assert_eq!(svc.status().unwrap().status, "no_images");
    let first = env.ready_image(None).await;
    assert_eq!(svc.status().unwrap().status, "ok");
    let inst = svc
        .create_instance(&admin, InstanceRef::Id(first))
        .await
        .unwrap();
    let second = env.ready_image(None).await;
    let third = env.ready_image(None).await;
    // `first` is beyond the newest two but has an instance: kept.
    let ids: Vec<ImageId> = svc
        .list_images(&admin)
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, vec![first, second, third]);
    let latest = svc
        .create_instance(&admin, InstanceRef::Latest)
        .await
        .unwrap();
    assert_eq!(latest.instance.image_id, third);
    svc.destroy_instance(&admin, inst.instance.id)
        .await
        .unwrap();
    let report = svc.clean_once().await.unwrap();
    assert_eq!(report.rotated_images, vec![first]);
    let fourth = env.ready_image(None).await;
    let ids: Vec<ImageId> = svc
        .list_images(&admin)
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, vec![third, fourth], "exactly the newest two remain");
    assert_eq!(
        env.entries("image_snapshots"),
        vec![third.to_string(), fourth.to_string()]
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let st = svc.status().unwrap();
    assert_eq!(st.status, "stale");
    assert_eq!(st.newest_ready_image, Some(fourth));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_the_free_space_floor_refuse_cleanly() {
    let env = TestEnv::with("max_instances_per_user = 1\nmax_instances_total = 2").await;
    let svc = env.svc();
    let admin = env.admin();
    let image = env.ready_image(None).await;
    svc.create_instance(&admin, InstanceRef::Id(image))
        .await
        .unwrap();
    let err = svc
        .create_instance(&admin, InstanceRef::Id(image))
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::Quota(_)), "{err}");
    assert!(
        err.to_string().contains("max_instances_per_user = 1"),
        "{err}"
    );
    let bob = env.user("bob");
    svc.create_instance(&bob, InstanceRef::Id(image))
        .await
        .unwrap();
    let carol = env.user("carol");
    let err = svc
        .create_instance(&carol, InstanceRef::Id(image))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_instances_total = 2"), "{err}");
    assert_eq!(env.entries("instances").len(), 2, "nothing half-created");
    assert_eq!(svc.list_instances(&admin, true).unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_space_floor() {
    let env = TestEnv::with("min_free_space = \"99%\"").await;
    let svc = env.svc();
    let admin = env.admin();
    let img = svc.create_image(&admin, NewImage::not_personal()).unwrap();
    let err = svc
        .ingest(&admin, img.id, UploadTarget::Stream, &FIXTURE.tar[..])
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::Quota(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("min_free_space (99%)") && msg.contains("free on data_path"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
    // The refused upload did not fail the image.
    assert_eq!(
        svc.image(&admin, img.id).unwrap().state,
        draupnir::core::ImageState::Uploading
    );
}
