//! The warm pool (`warm_instances_per_image`): handovers are atomic and
//! never repeat, quotas and the free-space floor hold, the cleaner leaves
//! warm instances alone, they go with their image, shrink on reload, are
//! replaced when they fail, survive a restart, stop with drain, and a
//! create over SSH gets one.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::ssh::*;
use common::*;
use draupnir::config::{Config, FreeSpace};
use draupnir::core::{test_support::Store, ImageId, InstanceId, InstanceState};
use draupnir::core::{CoreError, InstanceRef, NewInstance, Service, POOL_USER};

/// Wait (up to a minute) until image `image` has `n` warm instances.
async fn wait_pool(svc: &Service, image: ImageId, n: usize) {
    for _ in 0..600 {
        if svc.warm_pool_size(image) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "image {image} has {} warm instances, not {n}",
        svc.warm_pool_size(image)
    );
}

/// Ids of the warm instances (what an admin's `instances --all` marks).
fn warm_ids(env: &TestEnv) -> Vec<InstanceId> {
    env.svc()
        .list_instances(&env.admin(), true)
        .unwrap()
        .into_iter()
        .filter(|i| i.pooled)
        .map(|i| i.id)
        .collect()
}

/// Put a changed config in force, as SIGHUP does.
fn reload(env: &TestEnv, change: impl FnOnce(&mut Config)) {
    let mut cfg = (*env.svc().config()).clone();
    change(&mut cfg);
    env.svc().reload(cfg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handovers_are_atomic_and_never_repeat() {
    let env = TestEnv::with("warm_instances_per_image = 2\ndefault_instance_ttl = \"1h\"").await;
    let svc = env.svc();
    let admin = env.admin();
    let image = env.ready_image(None).await;
    wait_pool(svc, image, 2).await;
    let first_pool = warm_ids(&env);
    assert_eq!(first_pool.len(), 2);
    let all = svc.list_instances(&admin, true).unwrap();
    assert!(all
        .iter()
        .all(|i| i.owner_name == POOL_USER && i.state == InstanceState::Running));
    assert_eq!(svc.status().unwrap().warm_instances, 2);
    assert_eq!(svc.status().unwrap().instances, 0);

    // Four users at once: two warm handovers, the rest warm or cold, and
    // never the same instance twice.
    let users: Vec<_> = ["bob", "carol", "dave", "erin"]
        .iter()
        .map(|n| env.user(n))
        .collect();
    let tasks: Vec<_> = users
        .iter()
        .map(|u| {
            let svc = svc.clone();
            let u = u.clone();
            tokio::spawn(async move { svc.create_instance(&u, InstanceRef::Id(image)).await })
        })
        .collect();
    let mut infos = Vec::new();
    for t in tasks {
        infos.push(t.await.unwrap().expect("create"));
    }
    let handed: Vec<InstanceId> = infos.iter().map(|i| i.instance.id).collect();
    let distinct: HashSet<InstanceId> = handed.iter().copied().collect();
    assert_eq!(distinct.len(), 4, "distinct instances: {handed:?}");
    for id in &first_pool {
        assert!(handed.contains(id), "warm {id} was handed over: {handed:?}");
    }
    for (info, user) in infos.iter().zip(&users) {
        let inst = &info.instance;
        assert!(!inst.pooled);
        assert_eq!(inst.owner_name, user.name());
        if first_pool.contains(&inst.id) {
            // Handed over now: as if created now.
            assert!(inst.last_active_at.is_some());
            assert_eq!(inst.created_at, inst.updated_at);
        }
        let left = inst.expires_at.expect("default_instance_ttl applies")
            - time::OffsetDateTime::now_utc();
        assert!((3500..=3600).contains(&left.whole_seconds()), "{left}");
        // The credentials returned are the instance's own.
        let info = info.clone();
        let count =
            tokio::task::spawn_blocking(move || psql_cert(&info, "SELECT count(*) FROM users"))
                .await
                .unwrap();
        assert_eq!(count.as_deref(), Ok(FIXTURE_USERS.to_string().as_str()));
        // A user sees their own instance and nothing of the pool.
        let mine: Vec<InstanceId> = svc
            .list_instances(user, false)
            .unwrap()
            .iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(mine, vec![inst.id]);
    }

    // The pool is refilled with new instances; handed-out ones never return.
    wait_pool(svc, image, 2).await;
    let refilled = warm_ids(&env);
    assert!(
        refilled.iter().all(|id| !handed.contains(id)),
        "{refilled:?} {handed:?}"
    );
    svc.destroy_instance(&users[0], handed[0]).await.unwrap();
    svc.refill_pool().await.unwrap();
    let later = warm_ids(&env);
    assert_eq!(later.len(), 2);
    assert!(
        later.iter().all(|id| !handed.contains(id)),
        "{later:?} {handed:?}"
    );
    assert_eq!(svc.status().unwrap().instances, 3);

    // Nobody gets at a warm instance's credentials or its allow-list
    // before its owner does, not even an admin; and nobody logs in as the
    // pool's user.
    let err = svc.instance_credentials(&admin, later[0]).unwrap_err();
    assert!(matches!(err, CoreError::NotOwner { .. }), "{err}");
    assert!(svc
        .allow_address(&admin, later[0], "192.0.2.7".parse().unwrap())
        .is_err());
    assert!(svc.add_user(&admin, POOL_USER, None, false).is_err());
    let key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE9Yh1l0F1m3mWbVQe1lY6n8r1G0Zf2Vb5tq9c3p6Kxd pool@x";
    assert!(svc.add_key(&admin, POOL_USER, key).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_the_floor_hold() {
    let env = TestEnv::with(
        "warm_instances_per_image = 2\nmax_instances_total = 3\nmax_instances_per_user = 1",
    )
    .await;
    let svc = env.svc();
    let admin = env.admin();
    let total = || svc.list_instances(&admin, true).unwrap().len();
    let a = env.ready_image(None).await;
    wait_pool(svc, a, 2).await;

    // A handover does not grow the total; the refill stops at the maximum.
    let bob = env.user("bob");
    let got = svc.create_instance(&bob, InstanceRef::Id(a)).await.unwrap();
    assert!(!got.instance.pooled);
    let report = svc.refill_pool().await.unwrap();
    assert_eq!(total(), 3);
    assert_eq!(svc.warm_pool_size(a), 2, "{report:?}");
    // The user quota still applies to a handover.
    let err = svc
        .create_instance(&bob, InstanceRef::Id(a))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("max_instances_per_user = 1"),
        "{err}"
    );
    let carol = env.user("carol");
    svc.create_instance(&carol, InstanceRef::Id(a))
        .await
        .unwrap();
    let report = svc.refill_pool().await.unwrap();
    assert!(report.started.is_empty(), "{report:?}");
    assert!(
        report
            .held_back
            .as_deref()
            .is_some_and(|r| r.contains("max_instances_total = 3")),
        "{report:?}"
    );
    assert_eq!(total(), 3);
    assert_eq!(svc.warm_pool_size(a), 1);
    // Warm instances are nobody's: they do not use up a user's quota.
    assert_eq!(svc.list_instances(&carol, false).unwrap().len(), 1);

    // A second image: no room for its pool; a create of it makes a warm
    // instance of the first image give way instead of being refused.
    let b = env.ready_image(None).await;
    svc.refill_pool().await.unwrap();
    assert_eq!(svc.warm_pool_size(b), 0);
    assert_eq!(total(), 3);
    let dave = env.user("dave");
    let cold = svc
        .create_instance(&dave, InstanceRef::Id(b))
        .await
        .unwrap();
    assert_eq!(cold.instance.image_id, b);
    assert_eq!(total(), 3);
    assert_eq!(svc.warm_pool_size(a), 0);
    assert_eq!(env.entries("instances").len(), 3);

    // Below the free-space floor nothing is started for the pool, but a
    // warm instance is still handed over (it needs no space).
    reload(&env, |c| c.min_free_space = FreeSpace::Percent(99.0));
    svc.destroy_instance(&admin, cold.instance.id)
        .await
        .unwrap();
    svc.destroy_instance(&admin, got.instance.id).await.unwrap();
    let report = svc.refill_pool().await.unwrap();
    assert!(report.started.is_empty(), "{report:?}");
    assert!(
        report
            .held_back
            .as_deref()
            .is_some_and(|r| r.contains("min_free_space")),
        "{report:?}"
    );
    reload(&env, |c| c.min_free_space = FreeSpace::Percent(0.0));
    svc.refill_pool().await.unwrap();
    assert_eq!(svc.warm_pool_size(b), 2, "the newest image first");
    assert_eq!(svc.warm_pool_size(a), 0);
    reload(&env, |c| c.min_free_space = FreeSpace::Percent(99.0));
    let mut taken = Vec::new();
    for user in [&dave, &bob] {
        let warm = svc.create_instance(user, InstanceRef::Id(b)).await.unwrap();
        assert_eq!(warm.instance.image_id, b);
        taken.push(warm.instance.id);
    }
    assert_eq!(svc.warm_pool_size(b), 0);
    // Room under the total, but not on disk: a cold create is refused.
    svc.destroy_instance(&dave, taken[0]).await.unwrap();
    let err = svc
        .create_instance(&admin, InstanceRef::Id(b))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("min_free_space"), "{err}");
    assert_eq!(total(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cleaner_leaves_the_pool_and_the_pool_goes_with_its_image() {
    let env = TestEnv::with(
        "warm_instances_per_image = 1\ninstance_idle_limit = \"1s\"\nimage_retention = 1",
    )
    .await;
    let svc = env.svc();
    let admin = env.admin();
    let a = env.ready_image(None).await;
    wait_pool(svc, a, 1).await;
    let warm_a = warm_ids(&env);
    // Idle, ownerless (the pool user has no way in), no lifetime: the
    // cleaner still leaves it alone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let report = svc.clean_once().await.unwrap();
    assert!(
        report.idle.is_empty() && report.access_gone.is_empty() && report.expired.is_empty(),
        "{report:?}"
    );
    assert_eq!(warm_ids(&env), warm_a);

    // Rotation: the next image takes the old one away, pool and all.
    let b = env.ready_image(None).await;
    assert_eq!(env.entries("image_snapshots"), vec![b.to_string()]);
    wait_pool(svc, b, 1).await;
    svc.refill_pool().await.unwrap();
    let warm_b = warm_ids(&env);
    assert_eq!(warm_b.len(), 1);
    assert!(!warm_b.contains(&warm_a[0]));
    assert_eq!(env.entries("instances"), vec![warm_b[0].to_string()]);
    assert_eq!(env.postmasters().len(), 1);

    // Only owned instances stop `destroy-image`.
    let mine = svc
        .create_instance(&admin, InstanceRef::Id(b))
        .await
        .unwrap();
    wait_pool(svc, b, 1).await;
    let err = svc.destroy_image(&admin, b, false).await.unwrap_err();
    assert!(
        matches!(err, CoreError::ImageHasInstances { count: 1, .. }),
        "{err}"
    );
    svc.destroy_instance(&admin, mine.instance.id)
        .await
        .unwrap();
    svc.destroy_image(&admin, b, false).await.unwrap();
    assert!(env.entries("instances").is_empty());
    assert!(env.postmasters().is_empty());
    assert!(svc.list_instances(&admin, true).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_shrinks_and_failed_instances_are_replaced() {
    let env = TestEnv::with("warm_instances_per_image = 2").await;
    let svc = env.svc();
    let image = env.ready_image(None).await;
    wait_pool(svc, image, 2).await;
    let before = warm_ids(&env);

    reload(&env, |c| c.warm_instances_per_image = 1);
    wait_pool(svc, image, 1).await;
    svc.refill_pool().await.unwrap();
    let kept = warm_ids(&env);
    assert_eq!(kept, vec![before[0]], "the oldest stays");
    assert_eq!(env.entries("instances"), vec![before[0].to_string()]);

    // A warm instance fails (what the supervisor records after repeated
    // crashes): it is destroyed and another takes its place.
    let store = Store::open(&env.config.database_path()).unwrap();
    store
        .set_instance_state(kept[0], InstanceState::Failed, Some("crashed"))
        .unwrap();
    svc.refill_pool().await.unwrap();
    assert_eq!(svc.warm_pool_size(image), 1);
    let replaced = warm_ids(&env);
    assert_eq!(replaced.len(), 1);
    assert!(replaced[0] > kept[0], "{replaced:?}");
    assert_eq!(env.entries("instances"), vec![replaced[0].to_string()]);
    assert_eq!(env.postmasters().len(), 1);

    reload(&env, |c| c.warm_instances_per_image = 0);
    wait_pool(svc, image, 0).await;
    svc.refill_pool().await.unwrap();
    assert!(env.entries("instances").is_empty());
    assert!(env.postmasters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_adopts_the_pool_and_drain_stops_the_refill() {
    let mut env = TestEnv::with("warm_instances_per_image = 2").await;
    let image = env.ready_image(None).await;
    wait_pool(env.svc(), image, 2).await;
    // Let any pass in flight end before the restart.
    env.svc().refill_pool().await.unwrap();
    let before = warm_ids(&env);

    let report = env.reopen().await;
    let mut adopted = report.adopted.clone();
    adopted.sort();
    assert_eq!(adopted, before, "{report:?}");
    assert_eq!(env.svc().warm_pool_size(image), 2);
    assert_eq!(warm_ids(&env), before);
    // Adopted warm instances are handed over like any.
    let bob = env.user("bob");
    let info = env
        .svc()
        .create_instance(&bob, InstanceRef::Id(image))
        .await
        .unwrap();
    assert_eq!(info.instance.id, before[0]);
    let count = tokio::task::spawn_blocking(move || psql_cert(&info, "SELECT 1"))
        .await
        .unwrap();
    assert_eq!(count.as_deref(), Ok("1"));
    // …and the pool is refilled to size after the start.
    wait_pool(env.svc(), image, 2).await;

    // Once draining, no warm instance is started any more.
    let left = env.svc().drain(Duration::from_secs(30)).await;
    assert!(left.is_empty());
    let warm_now = warm_ids(&env);
    let carol = env.user("carol");
    let taken = env
        .svc()
        .create_instance_with(&carol, InstanceRef::Latest, NewInstance::default())
        .await
        .unwrap();
    assert_eq!(taken.instance.id, warm_now[0]);
    let report = env.svc().refill_pool().await.unwrap();
    assert!(report.started.is_empty(), "{report:?}");
    assert_eq!(env.svc().warm_pool_size(image), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_new_instance_gets_a_warm_one() {
    let s = SshEnv::with("warm_instances_per_image = 1", "").await;
    let image = s.env.ready_image(None).await;
    wait_pool(s.svc(), image, 1).await;
    let warm = warm_ids(&s.env);
    let bob = s.new_user_key("bob", false);
    let o = s
        .ssh(&bob, &["new-instance", &image.to_string(), "--json"])
        .await;
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let id: InstanceId = v["id"].as_str().expect("id").parse().unwrap();
    assert_eq!(vec![id], warm, "the warm instance was handed over");
    assert_eq!(v["owner"], "bob");
    assert_eq!(v["pooled"], false);
    // Connect with what `env` gives bob.
    let o = s.ssh(&bob, &["env", &id.to_string(), "--json"]).await;
    assert!(o.status.success(), "{}", text(&o));
    let row = s.svc().instance(&s.admin(), id).unwrap();
    let owner = s.svc().actor_for(&row.owner_name).unwrap().expect("owner");
    let info = s.svc().instance_credentials(&owner, id).unwrap();
    let creds: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        creds["client_key"],
        info.credentials.client_key.expose().as_str()
    );
    let count = tokio::task::spawn_blocking(move || psql_cert(&info, "SELECT count(*) FROM users"))
        .await
        .unwrap();
    assert_eq!(count.as_deref(), Ok(FIXTURE_USERS.to_string().as_str()));
    // bob's list has his instance only; the refilled pool shows to admins
    // with its owner, and in `status`.
    wait_pool(s.svc(), image, 1).await;
    let o = s.ssh(&bob, &["instances", "--json"]).await;
    let mine: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(mine.as_array().map(|a| a.len()), Some(1), "{mine}");
    let o = s.ssh(&s.admin_key, &["instances", "--all"]).await;
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(POOL_USER),
        "{}",
        text(&o)
    );
    let o = s.ssh(&s.admin_key, &["status"]).await;
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("warm       1"),
        "{}",
        text(&o)
    );
}
