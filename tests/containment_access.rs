//! Containment of credentials, uploads and durations, attacked from
//! outside against a running daemon (in-process SSH and HTTPS servers,
//! real OpenSSH clients and a real HTTPS client):
//!
//! * an instance's key material reaches its owner only — not the upload
//!   user (`shared_secret`), not an admin over SSH or HTTP, not another
//!   user — by any route (`env`, `instance`, listings, `--json`, reset,
//!   `GET /instances[/:id]`, the warm pool's handover);
//! * a second upload stream into an image (`upload-image`, `scp`,
//!   `scp -O`, `sftp`) is refused at once and the first one finalises;
//! * absurd durations and sizes get one line and the right exit status,
//!   promptly, and the user's session slots all come back.

mod common;

use draupnir::core::ImageId;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::http::{client_for, send, SECRET, VERSION};
use common::ssh::{text, SshEnv};
use common::*;
use reqwest::Method;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const BASE: &str = "shared_secret = \"the-upload-shared-secret\"\nenvironment = \"test\"\ntrusted_user_email_domain = \"@example.com\"";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A refusal: `code`, one line on stderr naming `needle`, nothing on stdout.
fn assert_refused(o: &Output, code: i32, needle: &str) {
    assert_eq!(o.status.code(), Some(code), "{}", text(o));
    let err = stderr(o);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {}", text(o));
    assert!(err.contains(needle), "`{needle}` in: {}", text(o));
    assert!(o.stdout.is_empty(), "{}", text(o));
}

/// The base64 body of a PEM block: what must not appear anywhere.
fn pem_body(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("")
}

struct Secrets {
    key: String,
    cert: String,
}

impl Secrets {
    /// Nothing in `bytes` reveals the owner's key or client certificate.
    fn assert_absent(&self, what: &str, bytes: &[u8]) {
        let s = String::from_utf8_lossy(bytes);
        let flat: String = s
            .replace("\\n", "")
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '\'' && *c != '"')
            .collect();
        for (name, secret) in [
            ("client key", &self.key),
            ("client certificate", &self.cert),
        ] {
            // A 40-character piece is enough to tell.
            let piece = &secret[secret.len() / 2..secret.len() / 2 + 40];
            assert!(!flat.contains(piece), "{what} reveals the {name}: {s}");
        }
    }

    /// [`Secrets::assert_absent`], and no private key of any kind either.
    fn assert_keyless(&self, what: &str, bytes: &[u8]) {
        self.assert_absent(what, bytes);
        let s = String::from_utf8_lossy(bytes);
        assert!(
            !s.contains("PRIVATE KEY"),
            "{what} holds a private key: {s}"
        );
    }
}

struct Http {
    client: reqwest::Client,
    port: u16,
    _server: draupnir::http::HttpServer,
}

impl Http {
    async fn start(s: &SshEnv) -> Http {
        let server = draupnir::http::serve(s.svc().clone(), &s.env.config)
            .await
            .expect("http server starts");
        let addr = server.https_addr().expect("https listener");
        Http {
            client: client_for(&s.env, addr),
            port: addr.port(),
            _server: server,
        }
    }

    async fn call(&self, method: Method, path: &str, token: &str) -> common::http::Reply {
        let req = self
            .client
            .request(method, format!("https://localhost:{}{path}", self.port))
            .header("Draupnir-Version", VERSION)
            .bearer_auth(token);
        send(req).await
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..6000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("gave up waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_reach_only_the_owner() {
    let s = SshEnv::with(&format!("{BASE}\nwarm_instances_per_image = 1"), "").await;
    let http = Http::start(&s).await;
    let image = s.env.ready_image(None).await;
    let svc = s.svc().clone();
    wait_until("a warm instance", || svc.warm_pool_size(image) == 1).await;
    let admin = &s.admin_key;
    let dora = s.new_user_key("dora", false);
    let carol = s.new_user_key("carol", false);
    let token_of = |o: Output| {
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap()
            .to_string()
    };
    let admin_token = token_of(s.ssh(admin, &["token"]).await);
    let dora_token = token_of(s.ssh(&dora, &["token"]).await);
    let carol_token = token_of(s.ssh(&carol, &["token"]).await);

    // Nobody gets the waiting warm instance's key, admins included.
    let warm = svc.list_instances(&s.admin(), true).unwrap()[0]
        .id
        .to_string();
    let o = s.ssh(admin, &["env", &warm]).await;
    assert_refused(
        &o,
        1,
        "is the warm pool's; only its owner gets its credentials",
    );
    let r = http
        .call(Method::GET, &format!("/instances/{warm}"), SECRET)
        .await;
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));

    // dora's instance is that warm one, handed over to her.
    let o = s
        .ssh(&dora, &["new-instance", &image.to_string(), "--json"])
        .await;
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(id, warm, "handed over from the pool");
    let o = s.ssh(&dora, &["env", &id, "--json"]).await;
    assert!(o.status.success(), "{}", text(&o));
    let creds: Value = serde_json::from_slice(&o.stdout).unwrap();
    let secrets = Secrets {
        key: pem_body(creds["client_key"].as_str().unwrap()),
        cert: pem_body(creds["client_certificate"].as_str().unwrap()),
    };
    assert!(secrets.key.len() > 100 && secrets.cert.len() > 100);

    // An admin over SSH: sees and lists it, never gets its key.
    let o = s.ssh(admin, &["env", &id]).await;
    assert_refused(&o, 1, "is dora's; only its owner gets its credentials");
    assert!(stderr(&o).contains("dora"), "{}", text(&o));
    let o = s.ssh(admin, &["env", &id, "--json"]).await;
    assert_refused(&o, 1, "only its owner gets its credentials");
    for args in [
        vec!["instance", id.as_str()],
        vec!["instance", id.as_str(), "--json"],
        vec!["instances", "--all"],
        vec!["instances", "--all", "--json"],
        vec!["reset-instance", id.as_str()],
    ] {
        let o = s.ssh(admin, &args).await;
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        secrets.assert_keyless(&format!("admin ssh {args:?}"), &o.stdout);
        secrets.assert_keyless(&format!("admin ssh {args:?}"), &o.stderr);
    }
    // The admin's own new instance carries the admin's key, not dora's.
    let o = s
        .ssh(admin, &["new-instance", &image.to_string(), "--json"])
        .await;
    assert!(o.status.success(), "{}", text(&o));
    let admin_instance = serde_json::from_slice::<Value>(&o.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let o = s.ssh(admin, &["env", &admin_instance]).await;
    assert!(o.status.success(), "{}", text(&o));
    secrets.assert_absent("the admin's own env", &o.stdout);

    // Another user: the instance does not exist for her.
    for args in [vec!["env", id.as_str()], vec!["instance", id.as_str()]] {
        let o = s.ssh(&carol, &args).await;
        assert_refused(&o, 1, "not found");
    }

    // HTTP: the upload user, an admin's token and another user's token.
    for (who, token) in [
        ("shared_secret", SECRET),
        ("admin token", admin_token.as_str()),
        ("carol's token", carol_token.as_str()),
    ] {
        let r = http
            .call(Method::GET, &format!("/instances/{id}"), token)
            .await;
        assert_eq!(r.status, 404, "{who}: {}", String::from_utf8_lossy(&r.body));
        secrets.assert_keyless(who, &r.body);
        let r = http.call(Method::GET, "/instances", token).await;
        assert_eq!(r.status, 200, "{who}");
        secrets.assert_keyless(who, &r.body);
        let r = http.call(Method::GET, "/images", token).await;
        secrets.assert_keyless(who, &r.body);
    }
    // The upload user's own new instance has its own key.
    let r = send(
        http.client
            .post(format!("https://localhost:{}/instances", http.port))
            .header("Draupnir-Version", VERSION)
            .bearer_auth(SECRET)
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"data":{{"type":"instances","attributes":{{"image_id":"{image}"}}}}}}"#
            )),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    secrets.assert_absent("POST /instances by the upload user", &r.body);

    // The owner still gets them, by both doors, and they connect.
    let r = http
        .call(Method::GET, &format!("/instances/{id}"), &dora_token)
        .await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(
        pem_body(
            doc["included"][0]["attributes"]["client_key"]
                .as_str()
                .unwrap()
        ),
        secrets.key
    );
    let owner = svc.actor_for("dora").unwrap().unwrap();
    let info = svc
        .instance_credentials(&owner, id.parse().unwrap())
        .unwrap();
    assert_eq!(pem_body(info.credentials.client_key.expose()), secrets.key);
    let count = tokio::task::spawn_blocking(move || psql_cert(&info, "SELECT count(*) FROM users"))
        .await
        .unwrap();
    assert_eq!(count.as_deref(), Ok(FIXTURE_USERS.to_string().as_str()));

    // The upload user may still destroy someone else's instance.
    let r = http
        .call(Method::DELETE, &format!("/instances/{id}"), SECRET)
        .await;
    assert_eq!(r.status, 204);
}

/// `ssh upload-image ID` with stdin held open: the first part of the
/// archive is sent, and the rest when `finish` is called.
struct HeldUpload {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    rest: Vec<u8>,
}

impl HeldUpload {
    async fn start(s: &SshEnv, image: ImageId, data: &[u8]) -> HeldUpload {
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.args(common::ssh::client_opts(
            &s.admin_key,
            Some("aes128-gcm@openssh.com"),
        ))
        .args(["-p", &s.port.to_string(), "draupnir@127.0.0.1"])
        .args(["upload-image", &image.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let mut child = cmd.spawn().expect("ssh");
        let mut stdin = child.stdin.take().unwrap();
        let half = data.len() / 2;
        stdin.write_all(&data[..half]).await.unwrap();
        stdin.flush().await.unwrap();
        HeldUpload {
            child,
            stdin,
            rest: data[half..].to_vec(),
        }
    }

    async fn finish(mut self) -> Output {
        self.stdin.write_all(&self.rest).await.unwrap();
        drop(self.stdin);
        tokio::time::timeout(Duration::from_secs(120), self.child.wait_with_output())
            .await
            .expect("upload ends")
            .expect("ssh output")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_upload_into_one_image_is_refused_and_the_first_finalises() {
    let s = SshEnv::new().await;
    let svc = s.svc().clone();
    let admin = s.admin();
    let image = s.new_image();
    let tarball = s.base_tar_gz();

    // upload-image twice at once.
    let first = HeldUpload::start(&s, image, &FIXTURE.tar_gz).await;
    wait_until("the first upload to begin", || {
        svc.image(&admin, image).unwrap().upload_active
    })
    .await;
    let o = s
        .ssh_stdin(
            &s.admin_key,
            &["upload-image", &image.to_string()],
            &FIXTURE.tar_gz,
        )
        .await;
    assert_refused(
        &o,
        1,
        &format!("image {image} is already receiving an upload (started "),
    );
    // scp (SFTP mode), scp -O and sftp into the same image, meanwhile.
    // OpenSSH's SFTP client shows only the status code (`Failure`) of a
    // refused open; the reason comes on the channel's stderr. `scp -O`
    // shows the line itself.
    let dest = s.remote(&format!("images/{image}/"));
    let o = s
        .scp(&s.admin_key, &[tarball.to_str().unwrap(), &dest])
        .await;
    assert!(!o.status.success(), "{}", text(&o));
    assert!(stderr(&o).contains("Failure"), "{}", text(&o));
    assert!(
        stderr(&o).contains(&format!(
            "draupnir: image {image} is already receiving an upload"
        )),
        "{}",
        text(&o)
    );
    let o = s
        .scp(&s.admin_key, &["-O", tarball.to_str().unwrap(), &dest])
        .await;
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        stderr(&o).contains(&format!("image {image} is already receiving an upload")),
        "{}",
        text(&o)
    );
    let o = s
        .sftp_batch(&s.admin_key, &format!("put base.tar.gz images/{image}/\n"))
        .await;
    assert!(!o.status.success(), "{}", text(&o));
    // Nothing of that touched the image.
    let img = svc.image(&admin, image).unwrap();
    assert_eq!(img.state.as_str(), "uploading", "{:?}", img.failure_reason);

    let o = first.finish().await;
    assert!(o.status.success(), "the first upload goes on: {}", text(&o));
    let img = svc.image(&admin, image).unwrap();
    assert!(!img.upload_active && img.state.as_str() == "uploading");
    s.assert_usable(image).await;

    // Mixed the other way: an upload-image held open, then scp -O and
    // sftp into a second image, then that image finalises too.
    let other = s.new_image();
    let first = HeldUpload::start(&s, other, &FIXTURE.tar).await;
    wait_until("the upload to begin", || {
        svc.image(&admin, other).unwrap().upload_active
    })
    .await;
    let o = s
        .sftp_batch(&s.admin_key, &format!("put base.tar.gz images/{other}/\n"))
        .await;
    assert!(!o.status.success(), "{}", text(&o));
    let o = s
        .scp(
            &s.admin_key,
            &[
                "-O",
                tarball.to_str().unwrap(),
                &s.remote(&format!("images/{other}/")),
            ],
        )
        .await;
    assert!(
        stderr(&o).contains("already receiving an upload"),
        "{}",
        text(&o)
    );
    let o = first.finish().await;
    assert!(o.status.success(), "{}", text(&o));
    s.assert_usable(other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_durations_get_one_line_and_free_the_session_slot() {
    let s = SshEnv::with("", "max_sessions_per_user = 1").await;
    let image = s.env.ready_image(None).await;
    let bob = s.new_user_key("bob", false);
    let img = image.to_string();
    for ttl in ["9999999999h", "87600000h", "99999999999999d", "36501d"] {
        let o = s.ssh(&bob, &["new-instance", &img, "--ttl", ttl]).await;
        assert_refused(&o, 2, "too long");
        // The one session slot came back: the next command runs.
        let o = s.ssh(&bob, &["whoami"]).await;
        assert!(o.status.success(), "{}", text(&o));
    }
    assert!(s.svc().list_instances(&s.admin(), true).unwrap().is_empty());

    // The longest lifetime there is works, and so does extending it once.
    let o = s
        .ssh(&bob, &["new-instance", &img, "--ttl", "36500d", "--json"])
        .await;
    assert!(o.status.success(), "{}", text(&o));
    let id = serde_json::from_slice::<Value>(&o.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for by in ["99999999999999d", "9999999999h", "18446744073709551616s"] {
        let o = s.ssh(&bob, &["extend-instance", &id, by]).await;
        assert_refused(&o, 2, "too long");
    }
    let o = s.ssh(&bob, &["extend-instance", &id, "36500d"]).await;
    assert!(o.status.success(), "{}", text(&o));
    // The core refuses what no door would pass, in one line, and no task
    // panics on it.
    let bob_actor = s.svc().actor_for("bob").unwrap().unwrap();
    let err = s
        .svc()
        .extend_instance(&bob_actor, id.parse().unwrap(), Duration::MAX)
        .unwrap_err();
    assert!(err.to_string().contains("too long"), "{err}");
    let err = s
        .svc()
        .create_instance_with(
            &bob_actor,
            draupnir::core::InstanceRef::Id(image),
            draupnir::core::NewInstance {
                ttl: Some(Duration::from_secs(u64::MAX)),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("too long"), "{err}");

    // The same user goes on working: a normal new instance, and it connects.
    let o = s.ssh(&bob, &["new-instance", &img, "--ttl", "8h"]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        s.svc().list_instances(&bob_actor, false).unwrap().len(),
        2,
        "no instance was left behind by a refusal"
    );
}

#[test]
fn absurd_config_durations_and_sizes_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    for (line, key) in [
        ("clean_interval = \"9999999999h\"", "clean_interval"),
        ("max_instance_ttl = \"87600000h\"", "max_instance_ttl"),
        (
            "default_instance_ttl = \"99999999999999d\"",
            "default_instance_ttl",
        ),
        ("max_image_bytes = \"99999999999999T\"", "max_image_bytes"),
        ("loopback_size = 18446744073709551615", "loopback_size"),
    ] {
        let file = dir.path().join("config.toml");
        std::fs::write(&file, format!("{line}\n")).unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_draupnir"))
            .args(["check-config", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{line}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{line}: {err}");
        assert!(err.contains(key) && err.contains("too "), "{line}: {err}");
    }
}
