//! Graceful shutdown (what `serve` does after SIGTERM once it stopped
//! accepting): `Service::drain` waits for a running upload and a running
//! finalise to end, and names what is still busy when the grace runs out.

mod common;

use std::time::{Duration, Instant};

use common::*;
use draupnir::core::ImageState;
use draupnir::core::{Finalising, UploadTarget};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_uploads_and_finalises() {
    let env = TestEnv::new().await;
    let admin = env.admin();
    let svc = env.svc();
    assert!(svc.drain(Duration::from_secs(5)).await.is_empty());

    // An upload in progress: busy until it finishes.
    let img = svc.create_image(&admin, NewImage::not_personal()).unwrap();
    let mut upload = svc
        .begin_upload(&admin, img.id, UploadTarget::File("base.tar.gz".into()))
        .unwrap();
    let half = FIXTURE.tar_gz.len() / 2;
    upload.write(FIXTURE.tar_gz[..half].to_vec()).await.unwrap();
    let started = Instant::now();
    assert_eq!(svc.drain(Duration::from_millis(300)).await, vec![img.id]);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let rest = FIXTURE.tar_gz[half..].to_vec();
    let finisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        upload.write(rest).await.unwrap();
        upload.finish().await.unwrap();
    });
    assert!(svc.drain(Duration::from_secs(60)).await.is_empty());
    finisher.await.unwrap();

    // A finalise in progress: drain lets it end, and the image is ready.
    let task = match svc.start_finalise(&admin, img.id, None).unwrap() {
        Finalising::Started(task) => task,
        Finalising::AlreadyReady(_) => panic!("not finalised yet"),
    };
    assert_eq!(svc.drain(Duration::ZERO).await, vec![img.id]);
    assert!(svc.drain(Duration::from_secs(120)).await.is_empty());
    assert_eq!(svc.image(&admin, img.id).unwrap().state, ImageState::Ready);
    task.await.unwrap().unwrap();
}
