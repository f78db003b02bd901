//! Every bad input through the core: malicious and broken archives, a
//! failing anonymisation script, a Postgres major that is not installed, a
//! data directory that tries to run things, a full disk. Each must fail with
//! a one-line reason, leave nothing half-done, and keep the core serving.

mod common;

use std::io::Write;
use std::path::Path;

use common::*;
use draupnir::core::ImageState;
use draupnir::core::{CoreError, ImageId, InstanceId, InstanceRef, UploadTarget};

/// A tar entry with a raw name (the tar crate's builder refuses `..`).
fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    name: &[u8],
    kind: tar::EntryType,
    body: &[u8],
    link: Option<&[u8]>,
) {
    let mut h = tar::Header::new_gnu();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        if let Some(l) = link {
            old.linkname[..l.len()].copy_from_slice(l);
        }
    }
    h.set_entry_type(kind);
    h.set_mode(0o4755);
    h.set_size(body.len() as u64);
    h.set_cksum();
    b.append(&h, body).unwrap();
}

fn archive(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    raw_entry(
        &mut b,
        b"PG_VERSION",
        tar::EntryType::Regular,
        b"15\n",
        None,
    );
    f(&mut b);
    b.into_inner().unwrap()
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Upload `bytes` as `name` into a new image and expect a refusal whose
/// message contains `expect`; then check nothing is left.
async fn refused(env: &TestEnv, name: &str, bytes: Vec<u8>, expect: &str) {
    let admin = env.admin();
    let svc = env.svc();
    let img = svc.create_image(&admin, NewImage::not_personal()).unwrap();
    let err = svc
        .ingest(&admin, img.id, UploadTarget::File(name.into()), &bytes[..])
        .await
        .expect_err(expect);
    let msg = err.to_string();
    assert!(msg.contains(expect), "`{msg}` should mention `{expect}`");
    assert!(!msg.contains('\n'), "one line: {msg}");
    let image = svc.image(&admin, img.id).unwrap();
    assert_eq!(image.state, ImageState::Failed, "{name}: {msg}");
    assert!(image.failure_reason.unwrap().contains(expect));
    assert!(
        !env.entries("image_uploads").contains(&img.id.to_string()),
        "half-extracted upload left behind"
    );
    // A failed image cannot be finalised, nor take more bytes.
    assert!(svc.finalise_image(&admin, img.id, None).await.is_err());
    assert!(svc
        .ingest(&admin, img.id, UploadTarget::Stream, &FIXTURE.tar[..])
        .await
        .is_err());
    assert!(!env.data().join("evil").exists() && !Path::new("/tmp/draupnir-evil").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_archives_are_refused() {
    let env = TestEnv::new().await;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a.tar",
            archive(|b| raw_entry(b, b"../../evil", tar::EntryType::Regular, b"x", None)),
            "'..'",
        ),
        (
            "a.tar",
            archive(|b| {
                raw_entry(
                    b,
                    b"/tmp/draupnir-evil",
                    tar::EntryType::Regular,
                    b"x",
                    None,
                )
            }),
            "absolute",
        ),
        (
            "a.tar",
            archive(|b| {
                raw_entry(
                    b,
                    b"base/evil",
                    tar::EntryType::Symlink,
                    b"",
                    Some(b"/etc/passwd"),
                )
            }),
            "link",
        ),
        (
            "a.tar",
            archive(|b| raw_entry(b, b"hard", tar::EntryType::Link, b"", Some(b"../../x"))),
            "link",
        ),
        (
            "a.tar",
            archive(|b| raw_entry(b, b"dev", tar::EntryType::Char, b"", None)),
            "device",
        ),
        (
            "a.tar",
            archive(|b| raw_entry(b, b"fifo", tar::EntryType::Fifo, b"", None)),
            "fifo",
        ),
        (
            "a.tar",
            archive(|b| {
                raw_entry(b, b"dup", tar::EntryType::Regular, b"x", None);
                raw_entry(b, b"dup", tar::EntryType::Regular, b"y", None);
            }),
            "appears twice",
        ),
        (
            "a.tar.gz",
            {
                let mut t = gz(&FIXTURE.tar);
                let n = t.len();
                t.truncate(n / 2);
                t
            },
            "truncated",
        ),
        (
            "a.tar",
            FIXTURE.tar[..FIXTURE.tar.len() - 4096].to_vec(),
            "truncated",
        ),
        (
            "a.tar.gz",
            {
                let mut t = gz(&FIXTURE.tar);
                let n = t.len();
                t[n - 6] ^= 0xff; // the CRC
                t
            },
            "gzip",
        ),
        (
            "a.tar.gz",
            {
                let mut t = gz(&FIXTURE.tar);
                t.extend_from_slice(&gz(b"second member"));
                t
            },
            "gzip",
        ),
    ];
    for (name, bytes, expect) in cases {
        refused(&env, name, bytes, expect).await;
    }
    // The core still serves: a good upload works afterwards.
    let id = env.ready_image(None).await;
    assert_eq!(
        env.svc().image(&env.admin(), id).unwrap().state,
        ImageState::Ready
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_cap_stops_a_gzip_bomb() {
    let env = TestEnv::with("max_image_bytes = \"64M\"").await;
    // 256 MiB of zeros, compressed to a few hundred KiB.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_path("bomb").unwrap();
    h.set_size(256 << 20);
    h.set_mode(0o600);
    h.set_cksum();
    b.append(&h, std::io::repeat(0).take_exact(256 << 20))
        .unwrap();
    // Level 9: zlib-rs's fastest level (like zlib-ng's) compresses runs of
    // zeros far less than miniz_oxide's did.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&b.into_inner().unwrap()).unwrap();
    let bomb = e.finish().unwrap();
    assert!(bomb.len() < 2 << 20, "{} bytes", bomb.len());
    refused(&env, "bomb.tar.gz", bomb, "max_image_bytes").await;
}

trait TakeExact: std::io::Read + Sized {
    fn take_exact(self, n: u64) -> std::io::Take<Self> {
        self.take(n)
    }
}
impl<R: std::io::Read> TakeExact for R {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_fails_cleanly_and_keeps_serving() {
    let env = TestEnv::with("loopback_size = \"300M\"").await;
    let admin = env.admin();
    let svc = env.svc();
    let img = svc.create_image(&admin, NewImage::not_personal()).unwrap();
    // A plain 600 MiB file cannot fit on a 300 MiB file system.
    let reader = tokio::io::repeat(7).take_exact_async(600 << 20);
    let err = svc
        .ingest(&admin, img.id, UploadTarget::File("big.bin".into()), reader)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    assert_eq!(svc.image(&admin, img.id).unwrap().state, ImageState::Failed);
    assert!(!env.entries("image_uploads").contains(&img.id.to_string()));
    // btrfs frees a deleted subvolume's space in the background.
    let full = fs_used(&env.data());
    for _ in 0..600 {
        if fs_used(&env.data()) < 64 << 20 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(fs_used(&env.data()) < full, "space was not given back");
    // The core kept serving: a real image still goes all the way.
    let id = env.ready_image(None).await;
    let info = svc
        .create_instance(&admin, InstanceRef::Id(id))
        .await
        .unwrap();
    assert_eq!(
        psql_cert(&info, "SELECT count(*) FROM users").unwrap(),
        FIXTURE_USERS.to_string()
    );
}

trait TakeAsync: tokio::io::AsyncRead + Sized {
    fn take_exact_async(self, n: u64) -> tokio::io::Take<Self> {
        tokio::io::AsyncReadExt::take(self, n)
    }
}
impl<R: tokio::io::AsyncRead> TakeAsync for R {}

async fn finalise_fails(env: &TestEnv, bytes: &[u8], script: Option<&str>, expect: &str) {
    let admin = env.admin();
    let svc = env.svc();
    let img = svc
        .create_image(&admin, NewImage::with_script(script))
        .unwrap();
    svc.ingest(&admin, img.id, UploadTarget::File("base.tar".into()), bytes)
        .await
        .unwrap();
    let err = svc.finalise_image(&admin, img.id, None).await.unwrap_err();
    assert!(matches!(err, CoreError::Finalise(_)), "{err}");
    assert!(
        err.to_string().contains(expect),
        "`{err}` should mention `{expect}`"
    );
    let image = svc.image(&admin, img.id).unwrap();
    assert_eq!(image.state, ImageState::Failed);
    assert!(image.failure_reason.unwrap().contains(expect));
    assert!(!env.entries("image_uploads").contains(&img.id.to_string()));
    assert!(!env.entries("image_snapshots").contains(&img.id.to_string()));
    assert!(
        env.postmasters().is_empty(),
        "finalise left a postmaster: {:?}",
        env.postmasters()
    );
    let err = svc
        .create_instance(&admin, InstanceRef::Id(img.id))
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::ImageNotReady { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_script_keeps_psql_error() {
    let env = TestEnv::new().await;
    finalise_fails(
        &env,
        &FIXTURE.tar,
        Some("UPDATE users SET email = 'x';\nSELECT * FROM no_such_table;\nDELETE FROM users;"),
        "relation \"no_such_table\" does not exist",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstalled_major_and_non_data_directories() {
    let env = TestEnv::new().await;
    finalise_fails(&env, &fixture_with_version("11"), None, "PostgreSQL 11").await;
    finalise_fails(&env, &fixture_with_version("11"), None, "not installed").await;
    let junk = archive(|_| {});
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_path("README").unwrap();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &b"hello"[..]).unwrap();
    drop(junk);
    finalise_fails(&env, &b.into_inner().unwrap(), None, "PG_VERSION").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_config_runs_nothing() {
    let env = TestEnv::new().await;
    let marker = env.dir.path().join("pwned");
    let evil = format!(
        "archive_mode = on\narchive_command = 'touch {m}'\nshared_preload_libraries = 'no_such_lib'\nssl_passphrase_command = 'touch {m}'\nlisten_addresses = '*'\nport = 1\n",
        m = marker.display()
    );
    let bytes = fixture_with_files(&[
        ("postgresql.conf", &evil),
        ("postgresql.auto.conf", &evil),
        (
            "pg_hba.conf",
            "host all all 0.0.0.0/0 trust\nlocal all all trust\n",
        ),
        ("standby.signal", ""),
        ("postmaster.pid", "1\n/\n"),
    ]);
    let admin = env.admin();
    let svc = env.svc();
    let img = svc
        .create_image(
            &admin,
            NewImage::with_script(Some("SELECT pg_switch_wal();")),
        )
        .unwrap();
    svc.ingest(&admin, img.id, UploadTarget::Stream, &bytes[..])
        .await
        .unwrap();
    svc.finalise_image(&admin, img.id, None)
        .await
        .expect("finalise ignores uploaded config");
    let info = svc
        .create_instance(&admin, InstanceRef::Id(img.id))
        .await
        .unwrap();
    assert_eq!(psql_cert(&info, "SHOW archive_mode").unwrap(), "off");
    // (shared_preload_libraries = 'no_such_lib' would have stopped the start.)
    assert_eq!(psql_cert(&info, "SELECT pg_is_in_recovery()").unwrap(), "f");
    assert!(!marker.exists(), "an uploaded command ran");
    let snap = env.data().join("image_snapshots").join(img.id.to_string());
    assert!(!snap.join("standby.signal").exists());
    let hba = std::fs::read_to_string(snap.join("pg_hba.conf")).unwrap();
    assert!(!hba.contains("trust"), "{hba}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tablespaces_are_refused() {
    let env = TestEnv::new().await;
    let bytes = fixture_with_files(&[("pg_tblspc/16999/PG_15_x/placeholder", "x")]);
    finalise_fails(&env, &bytes, None, "tablespaces are not supported").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ids_and_roles() {
    let env = TestEnv::new().await;
    let admin = env.admin();
    let svc = env.svc();
    let bob = env.user("bob");
    assert!(matches!(
        svc.image(&admin, ImageId::new(424242)),
        Err(CoreError::NotFound { .. })
    ));
    assert!(matches!(
        svc.finalise_image(&admin, ImageId::new(424242), None).await,
        Err(CoreError::NotFound { .. })
    ));
    assert!(matches!(
        svc.destroy_image(&admin, ImageId::new(424242), true).await,
        Err(CoreError::NotFound { .. })
    ));
    assert!(matches!(
        svc.destroy_instance(&admin, InstanceId::new(424242)).await,
        Err(CoreError::NotFound { .. })
    ));
    assert!(matches!(
        svc.ingest(&admin, ImageId::new(424242), UploadTarget::Stream, &b""[..])
            .await,
        Err(CoreError::NotFound { .. })
    ));
    let img = svc.create_image(&admin, NewImage::not_personal()).unwrap();
    assert!(matches!(
        svc.ingest(&bob, img.id, UploadTarget::Stream, &FIXTURE.tar[..])
            .await,
        Err(CoreError::AdminOnly(_))
    ));
    assert!(matches!(
        svc.finalise_image(&bob, img.id, None).await,
        Err(CoreError::AdminOnly(_))
    ));
    assert!(matches!(
        svc.ingest(&admin, img.id, UploadTarget::File("../x".into()), &b"x"[..])
            .await,
        Err(CoreError::BadInput(_))
    ));
    // An upload that stops half-way (the client went away) fails the image.
    let mut up = svc
        .begin_upload(&admin, img.id, UploadTarget::File("base.tar".into()))
        .unwrap();
    up.write(FIXTURE.tar[..100_000].to_vec()).await.unwrap();
    drop(up);
    let mut state = ImageState::Uploading;
    for _ in 0..100 {
        state = svc.image(&admin, img.id).unwrap().state;
        if state == ImageState::Failed {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(state, ImageState::Failed);
    // Users, keys and tokens.
    assert!(matches!(
        svc.add_user(&bob, "eve", None, true),
        Err(CoreError::AdminOnly(_))
    ));
    assert!(matches!(
        svc.add_user(&admin, "bob", None, false),
        Err(CoreError::Conflict(_))
    ));
    assert!(matches!(
        svc.add_user(&admin, "bad name!", None, false),
        Err(CoreError::BadInput(_))
    ));
    assert!(matches!(
        svc.add_key(&admin, "bob", "ssh-ed25519 garbage"),
        Err(CoreError::BadInput(_))
    ));
    assert!(matches!(
        svc.add_key(&admin, "bob", ADMIN_KEY),
        Err(CoreError::Conflict(_))
    ));
    let token = svc.mint_token(&bob).unwrap();
    assert_eq!(
        svc.authenticate_token(&token).unwrap().unwrap().name(),
        "bob"
    );
    assert!(svc.authenticate_token("drp_wrong").unwrap().is_none());
}
