//! Destroying an image while instances are being made from it (cold
//! creates, `latest`, warm handovers and refills, `reset-instance`): one
//! side wins cleanly every time. A create either fails with "image N is
//! being destroyed" (or "not found" once it is gone) or its instance goes
//! with the image; there is never an internal error, a ready image without
//! its snapshot, or a subvolume, row or postmaster that nothing accounts
//! for. A destroy cut off half-way is finished by the next start.

mod common;

use std::time::Duration;

use common::ssh::*;
use common::*;
use draupnir::core::{test_support::Store, ImageId, ImageState, InstanceId, InstanceState};
use draupnir::core::{Actor, CoreError, InstanceRef, Missing, Service, UploadTarget};

const STAGGER: Duration = Duration::from_millis(8);

/// What one racing operation may end with. Anything else (an internal
/// error above all) fails the test.
fn clean_loss(e: &CoreError, image: ImageId) -> bool {
    match e {
        CoreError::ImageDestroying { id } => *id == image,
        CoreError::NotFound(Missing::Image(_) | Missing::LatestImage | Missing::Instance(_)) => {
            true
        }
        _ => false,
    }
}

/// Disk, rows and processes agree: every ready image has its snapshot and
/// every snapshot a ready image; every instance row is running with its
/// subvolume and one postmaster, and nothing else exists.
fn assert_consistent(env: &TestEnv, ctx: &str) {
    let admin = env.admin();
    let images = env.svc().list_images(&admin).unwrap();
    let ready: Vec<String> = images
        .iter()
        .filter(|i| i.state == ImageState::Ready)
        .map(|i| i.id.to_string())
        .collect();
    assert!(
        images.iter().all(|i| i.state != ImageState::Destroying),
        "{ctx}: an image is left destroying: {images:?}"
    );
    let mut snaps = env.entries("image_snapshots");
    snaps.sort();
    let mut want = ready.clone();
    want.sort();
    assert_eq!(snaps, want, "{ctx}: snapshots match ready images");
    let rows = env.svc().list_instances(&admin, true).unwrap();
    for r in &rows {
        assert_eq!(r.state, InstanceState::Running, "{ctx}: {r:?}");
        assert!(
            ready.contains(&r.image_id.to_string()),
            "{ctx}: instance {} of image {} that is not ready",
            r.id,
            r.image_id
        );
    }
    let mut ids: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
    ids.sort();
    assert_eq!(
        env.entries("instances"),
        ids,
        "{ctx}: subvolumes match rows"
    );
    let mut pms: Vec<String> = env
        .postmasters()
        .iter()
        .map(|(_, cwd)| cwd.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    pms.sort();
    assert_eq!(pms, ids, "{ctx}: postmasters match rows");
}

/// Start `n` creates of `image` (every fourth asks for `latest`) as
/// `users`, one every `STAGGER`, and `destroy-image --force` after
/// `delay`, so that some creates are under way when the destroy comes and
/// some arrive while it runs or after; also a reset of `victim` when
/// given. Returns how many creates won.
async fn race(
    env: &TestEnv,
    users: &[Actor],
    image: ImageId,
    n: usize,
    delay: Duration,
    victim: Option<InstanceId>,
) -> usize {
    let svc = env.svc().clone();
    let mut creates = Vec::new();
    for i in 0..n {
        let (svc, user) = (svc.clone(), users[i % users.len()].clone());
        let which = if i % 4 == 3 {
            InstanceRef::Latest
        } else {
            InstanceRef::Id(image)
        };
        creates.push(tokio::spawn(async move {
            tokio::time::sleep(STAGGER * i as u32).await;
            (which, svc.create_instance(&user, which).await)
        }));
    }
    let reset = victim.map(|id| {
        let (svc, admin) = (svc.clone(), env.admin());
        tokio::spawn(async move { svc.reset_instance(&admin, id).await })
    });
    tokio::time::sleep(delay).await;
    let destroyed = svc.destroy_image(&env.admin(), image, true).await;
    assert!(destroyed.is_ok(), "destroy-image --force: {destroyed:?}");
    let mut won = 0;
    for c in creates {
        let (which, outcome) = c.await.unwrap();
        match outcome {
            Ok(info) => {
                won += 1;
                if info.instance.image_id == image {
                    // It went with the image.
                    assert!(
                        svc.instance(&env.admin(), info.instance.id).is_err(),
                        "instance {} of destroyed image {image} is left",
                        info.instance.id
                    );
                } else {
                    // `latest` fell back to an older image: fine, and ours
                    // to clean up.
                    assert_eq!(which, InstanceRef::Latest);
                    svc.destroy_instance(&env.admin(), info.instance.id)
                        .await
                        .unwrap();
                }
            }
            Err(e) => assert!(clean_loss(&e, image), "new-instance {which:?}: {e}"),
        }
    }
    if let Some(reset) = reset {
        match reset.await.unwrap() {
            Ok(_) => {}
            Err(e) => assert!(clean_loss(&e, image), "reset-instance: {e}"),
        }
    }
    won
}

/// A ready image of the fixture (what `TestEnv::ready_image` makes).
async fn next_image(svc: Service, admin: Actor) -> ImageId {
    let img = svc.create_image(&admin, NewImage::not_personal()).unwrap();
    svc.ingest(&admin, img.id, UploadTarget::Stream, &FIXTURE.tar[..])
        .await
        .expect("upload");
    svc.finalise_image(&admin, img.id, None)
        .await
        .expect("finalise");
    img.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_image_races_new_instance_and_one_side_wins() {
    let env = TestEnv::new().await;
    let admin = env.admin();
    let users: Vec<Actor> = ["bob", "carol", "dave"]
        .iter()
        .map(|n| env.user(n))
        .collect();
    // An older image stays ready throughout: `latest` falls back to it
    // while the newest is being destroyed.
    let anchor = env.ready_image(None).await;
    let mut won = 0;
    let mut lost = 0;
    // The next round's image is uploaded and finalised while this round
    // races (it is ready before the round is checked).
    let mut next = Some(tokio::spawn(next_image(env.svc().clone(), admin.clone())));
    for round in 0..19u64 {
        let image = next.take().unwrap().await.unwrap();
        let victim = if round % 5 == 0 {
            Some(
                env.svc()
                    .create_instance(&admin, InstanceRef::Id(image))
                    .await
                    .unwrap()
                    .instance
                    .id,
            )
        } else {
            None
        };
        if round < 18 {
            next = Some(tokio::spawn(next_image(env.svc().clone(), admin.clone())));
        }
        // From "destroy first" to "every create under way".
        let delay = Duration::from_millis((round * 37) % 110);
        let w = race(&env, &users, image, 12, delay, victim).await;
        won += w;
        lost += 12 - w;
        if let Some(n) = next.take() {
            // Ready before the round is checked.
            let id = n.await.unwrap();
            next = Some(tokio::spawn(async move { id }));
        }
        assert_consistent(&env, &format!("round {round}"));
        // Every create after the destroy fails cleanly.
        let late = env
            .svc()
            .create_instance(&users[0], InstanceRef::Id(image))
            .await;
        assert!(
            matches!(late, Err(CoreError::NotFound(Missing::Image(id))) if id == image),
            "{late:?}"
        );
    }
    // Both outcomes happened.
    assert!(won > 0 && lost > 0, "won {won}, lost {lost}");
    assert_eq!(
        env.svc().latest_ready_image().unwrap().map(|i| i.id),
        Some(anchor)
    );
    // And the survivor still works end to end.
    let info = env
        .svc()
        .create_instance(&users[0], InstanceRef::Latest)
        .await
        .unwrap();
    assert_eq!(info.instance.image_id, anchor);
    assert_eq!(
        psql_cert(&info, "SELECT count(*) FROM users").unwrap(),
        FIXTURE_USERS.to_string()
    );
}

/// Wait (up to a minute) until image `image` has `n` warm instances.
async fn wait_pool(svc: &Service, image: ImageId, n: usize) {
    for _ in 0..600 {
        if svc.warm_pool_size(image) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("image {image} never had {n} warm instances");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_image_races_warm_handovers_and_refills() {
    let env = TestEnv::with("warm_instances_per_image = 3").await;
    let users: Vec<Actor> = ["bob", "carol"].iter().map(|n| env.user(n)).collect();
    let mut won = 0;
    for round in 0..3u64 {
        let image = env.ready_image(None).await;
        wait_pool(env.svc(), image, 3).await;
        // Handovers take the pool, the refill starts more, cold creates
        // start the rest, and the destroy lands among them.
        won += race(
            &env,
            &users,
            image,
            6,
            Duration::from_millis(round * 40),
            None,
        )
        .await;
        // A refill pass after the destroy starts nothing of it.
        env.svc().refill_pool().await.unwrap();
        assert_consistent(&env, &format!("warm round {round}"));
        assert!(env.entries("instances").is_empty());
    }
    assert!(won > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_image_over_ssh_races_new_instance_over_ssh() {
    let s = SshEnv::with("", "max_sessions_per_user = 30").await;
    let image = s.env.ready_image(None).await;
    let id = image.to_string();
    let mut clients = Vec::new();
    for _ in 0..12 {
        let (port, key) = (s.port, s.admin_key.clone());
        let args = ["new-instance".to_string(), id.clone(), "--json".into()];
        clients.push(tokio::spawn(async move {
            let mut cmd = tokio::process::Command::new("ssh");
            cmd.args(client_opts(&key, None))
                .args(["-p", &port.to_string(), "draupnir@127.0.0.1"])
                .args(&args)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            cmd.output().await.unwrap()
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = s
        .ssh(&s.admin_key, &["destroy-image", &id, "--force"])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let (mut won, mut lost) = (0, 0);
    for c in clients {
        let out = c.await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            won += 1;
        } else {
            lost += 1;
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            assert!(
                err.contains(&format!("image {id} is being destroyed"))
                    || err.contains(&format!("image {id} not found")),
                "{}",
                text(&out)
            );
            assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        }
        assert!(!err.contains("internal error"), "{}", text(&out));
    }
    assert_eq!(won + lost, 12);
    assert_consistent(&s.env, "over ssh");
    assert!(s.env.entries("instances").is_empty());
    // What a later client sees.
    let out = s.ssh(&s.admin_key, &["new-instance", &id]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        text(&out)
    );
}

/// The daemon dies after marking an image `destroying` and destroying
/// some of its instances: the next start finishes the job, and the image
/// never looks ready in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroy_cut_off_half_way_is_finished_at_start() {
    let mut env = TestEnv::new().await;
    let admin = env.admin();
    let image = env.ready_image(None).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            env.svc()
                .create_instance(&admin, InstanceRef::Id(image))
                .await
                .unwrap()
                .instance
                .id,
        );
    }
    env.service.take().unwrap().shutdown();
    // Where a destroy killed mid-way stops: the mark is in, one instance
    // gone (row, subvolume and process), the rest still there.
    let store = Store::open(&env.config.database_path()).unwrap();
    assert!(store.mark_image_destroying(image).unwrap());
    let gone = ids[0];
    let dir = env.data().join("instances").join(gone.to_string());
    if let Some(pid) = draupnir::core::test_support::process::running_postmaster(&dir) {
        draupnir::core::test_support::process::Postmaster::Adopted(pid)
            .stop(Duration::from_secs(10))
            .await;
    }
    draupnir::core::test_support::btrfs::delete_subvolume(&dir).unwrap();
    store.delete_instance(gone).unwrap();
    assert_eq!(
        store.image(image).unwrap().unwrap().state,
        ImageState::Destroying
    );
    drop(store);

    let report = env.reopen().await;
    assert_eq!(report.destroyed_images, vec![image]);
    assert!(matches!(
        env.svc().image(&admin, image),
        Err(CoreError::NotFound { .. })
    ));
    assert!(env.entries("instances").is_empty());
    assert!(env.entries("image_snapshots").is_empty());
    assert!(env.postmasters().is_empty(), "{:?}", env.postmasters());
    assert_consistent(&env, "after restart");
}

/// While an image is marked destroying (here by hand, as a destroy that
/// failed half-way leaves it), nothing is made from it, `latest` passes
/// it over, and `destroy-image` again finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroying_image_is_never_used() {
    let env = TestEnv::new().await;
    let admin = env.admin();
    let svc = env.svc();
    let older = env.ready_image(None).await;
    let newer = env.ready_image(None).await;
    let info = svc
        .create_instance(&admin, InstanceRef::Id(newer))
        .await
        .unwrap();
    let store = Store::open(&env.config.database_path()).unwrap();
    assert!(store.mark_image_destroying(newer).unwrap());
    assert_eq!(
        svc.image(&admin, newer).unwrap().state,
        ImageState::Destroying
    );
    let e = svc
        .create_instance(&admin, InstanceRef::Id(newer))
        .await
        .unwrap_err();
    assert!(
        matches!(e, CoreError::ImageDestroying { id } if id == newer),
        "{e}"
    );
    assert_eq!(e.to_string(), format!("image {newer} is being destroyed"));
    let e = svc
        .reset_instance(&admin, info.instance.id)
        .await
        .unwrap_err();
    assert!(matches!(e, CoreError::ImageDestroying { .. }), "{e}");
    let got = svc
        .create_instance(&admin, InstanceRef::Latest)
        .await
        .unwrap();
    assert_eq!(got.instance.image_id, older);
    svc.destroy_image(&admin, newer, false).await.unwrap_err();
    svc.destroy_image(&admin, newer, true).await.unwrap();
    svc.destroy_instance(&admin, got.instance.id).await.unwrap();
    assert_consistent(&env, "after the second destroy");
    assert!(env.entries("instances").is_empty());
}
