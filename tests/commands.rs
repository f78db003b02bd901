//! The SSH command set, run in-process on real streams: output shapes,
//! `--help`, `--json`, exit statuses and one-line errors. (tests/ssh_*.rs
//! drive the same commands through the real OpenSSH client.)

mod common;

use std::future::Future;
use std::process::Command;
use std::sync::OnceLock;

use common::shared::Shared;
use common::*;
use draupnir::core::{Actor, ImageId, InstanceId};
use draupnir::ssh::commands::{self, Io, Session};

struct Ran {
    code: u32,
    out: String,
    err: String,
}

async fn run(env: &TestEnv, who: &Actor, line: &str, stdin: &[u8]) -> Ran {
    let session = Session {
        service: env.svc().clone(),
        actor: who.clone(),
        peer: Some("192.0.2.7".parse().unwrap()),
        ssh_port: 2222,
    };
    let argv = shell_words::split(line).unwrap();
    let mut input = stdin;
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = commands::run(
        &session,
        argv,
        Io {
            stdin: &mut input,
            stdout: &mut out,
            stderr: &mut err,
        },
    )
    .await;
    Ran {
        code,
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
    }
}

fn carol_probe(env: &TestEnv) -> Actor {
    env.user("carol")
}

fn assert_one_line_error(r: &Ran, code: u32, needle: &str) {
    assert_eq!(r.code, code, "exit status; stderr: {}", r.err);
    assert_eq!(r.err.lines().count(), 1, "one line: {:?}", r.err);
    assert!(r.err.starts_with("draupnir: "), "{}", r.err);
    assert!(
        r.err.contains(needle),
        "`{}` should mention `{needle}`",
        r.err.trim()
    );
}

/// The story's shared world: one image made through the commands
/// (`new-image --script -` with `[masking] rules_file`, `upload-image`,
/// `finalise-image`), its id read
/// from `images --json`; the replies are kept for the tests to check. Each
/// test that needs an instance makes its own, for a user of its own.
struct Story {
    env: TestEnv,
    image: ImageId,
    new_image: Ran,
    upload: Ran,
    finalise: Ran,
}

static STORY: OnceLock<Shared<Story>> = OnceLock::new();

async fn build_story() -> Story {
    // The nightly job of a 5.x deployment: its script, and the rules file
    // its operator added.
    let env = TestConfig::new().rules_file(FIXTURE_RULES).open().await;
    let admin = env.admin();
    let new_image = run(
        &env,
        &admin,
        "new-image --script -",
        b"DELETE FROM orders WHERE user_id > 5; DELETE FROM users WHERE id > 5;",
    )
    .await;
    let images = json_of(&run(&env, &admin, "images --json", b"").await);
    let image = images[0]["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("an image id in --json");
    let upload = run(
        &env,
        &admin,
        &format!("upload-image {image}"),
        &FIXTURE.tar_gz,
    )
    .await;
    let finalise = run(&env, &admin, &format!("finalise-image {image}"), b"").await;
    Story {
        env,
        image,
        new_image,
        upload,
        finalise,
    }
}

/// Run a test on the story's world.
async fn on_story<Fut>(test: impl FnOnce(&'static Story) -> Fut)
where
    Fut: Future<Output = ()> + Send + 'static,
{
    Shared::get(&STORY, build_story, |s| s.env.teardown())
        .await
        .run(test)
        .await
}

/// A command's `--json` output, parsed.
fn json_of(r: &Ran) -> serde_json::Value {
    serde_json::from_str(&r.out).unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", r.out, r.err))
}

/// `new-instance IMAGE --json` as `who`; the new instance's id.
async fn new_instance(env: &TestEnv, who: &Actor, image: ImageId) -> InstanceId {
    let r = run(env, who, &format!("new-instance {image} --json"), b"").await;
    assert_eq!(r.code, 0, "{}", r.err);
    json_of(&r)["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("an instance id in --json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_image_reads_its_script_from_stdin_and_says_where_to_upload() {
    on_story(|s| async move {
        let (r, id) = (&s.new_image, s.image);
        assert_eq!(r.code, 0, "{}", r.err);
        assert!(r.out.contains(&format!("image {id} created")), "{}", r.out);
        assert!(
            r.out
                .contains(&format!("scp backup.tar.gz draupnir:images/{id}\n")),
            "{}",
            r.out
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_image_takes_the_archive_on_stdin() {
    on_story(|s| async move {
        let r = &s.upload;
        assert_eq!(r.code, 0, "{}", r.err);
        // One summary line on stderr; stdout stays empty.
        assert_eq!(r.out, "");
        assert_eq!(r.err.lines().count(), 1, "{}", r.err);
        assert!(
            r.err.contains(&format!("into image {} in ", s.image))
                && r.err.contains("entries")
                && r.err.contains("/s)")
                && r.err.contains("ready to finalise"),
            "{}",
            r.err
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalise_image_streams_the_script_and_its_psql_output() {
    on_story(|s| async move {
        let r = &s.finalise;
        assert_eq!(r.code, 0, "{}", r.err);
        assert!(
            r.out.contains("==> running anonymisation script"),
            "{}",
            r.out
        );
        assert!(
            r.out.contains("DELETE 95"),
            "psql output is streamed: {}",
            r.out
        );
        // Every step says how long it took.
        let steps = r.out.lines().filter(|l| l.starts_with("==> ")).count();
        let took = r.out.lines().filter(|l| l.starts_with("    took ")).count();
        assert!(steps > 1 && took == steps, "{}", r.out);
        assert!(
            r.out
                .contains(&format!("image {} is ready (PostgreSQL 15", s.image)),
            "{}",
            r.out
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn done_json_says_the_image_is_ready() {
    on_story(|s| async move {
        let r = run(
            &s.env,
            &s.env.admin(),
            &format!("done {} --json", s.image),
            b"",
        )
        .await;
        assert_eq!(json_of(&r)["ready"], true);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_instance_latest_says_how_to_connect() {
    on_story(|s| async move {
        let nina = s.env.user("nina");
        let r = run(&s.env, &nina, "new-instance latest", b"").await;
        assert_eq!(r.code, 0, "{}", r.err);
        let listed = json_of(&run(&s.env, &nina, "instances --json", b"").await);
        let id = listed[0]["id"].as_str().expect("an instance id in --json");
        assert!(
            r.out
                .contains(&format!("instance {id} of image {} is running", s.image)),
            "{}",
            r.out
        );
        assert!(
            r.out
                .contains(&format!("eval \"$(ssh draupnir env {id})\" && psql")),
            "{}",
            r.out
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_instance_takes_a_duration() {
    on_story(|s| async move {
        let olga = s.env.user("olga");
        // No lifetime (no default_instance_ttl here): extend gives none.
        let id = new_instance(&s.env, &olga, s.image).await;
        let r = run(&s.env, &olga, &format!("extend-instance {id} 4h"), b"").await;
        assert_eq!(r.code, 0, "{}", r.err);
        assert_eq!(
            r.out,
            format!("instance {id} has no lifetime (it lives until destroyed); nothing changed\n")
        );
        let v = json_of(&run(&s.env, &olga, &format!("instance {id} --json"), b"").await);
        assert_eq!(v["expires_at"], serde_json::Value::Null);
        // With one, it grows from its end, and says so honestly rounded.
        let r = run(
            &s.env,
            &olga,
            &format!("new-instance {} --ttl 1h --json", s.image),
            b"",
        )
        .await;
        let short: InstanceId = json_of(&r)["id"].as_str().unwrap().parse().unwrap();
        let r = run(&s.env, &olga, &format!("extend-instance {short} 4h"), b"").await;
        assert_eq!(r.code, 0, "{}", r.err);
        assert!(
            r.out.contains("now lives until") && r.out.ends_with("(in 5h)\n"),
            "{}",
            r.out
        );
        for bad in ["soon", "4", "0h"] {
            let r = run(&s.env, &olga, &format!("extend-instance {id} {bad}"), b"").await;
            assert!(r.code != 0, "{bad}");
            assert_eq!(r.err.lines().count(), 1, "{bad}: {}", r.err);
        }
        assert_one_line_error(
            &run(&s.env, &olga, &format!("extend-instance {id} 4"), b"").await,
            2,
            "`4` has no unit; add one, like 4h",
        );
        assert_one_line_error(
            &run(
                &s.env,
                &olga,
                &format!("new-instance {} --ttl 4", s.image),
                b"",
            )
            .await,
            2,
            "add one, like 4h",
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_names_the_newest_ready_image() {
    on_story(|s| async move {
        let r = run(&s.env, &s.env.user("pete"), "status --json", b"").await;
        let v = json_of(&r);
        assert_eq!(v["status"], "ok");
        assert_eq!(v["newest_ready_image"], s.image.get());
        assert_eq!(v["newest_ready_image_anonymisation"], "checked");
        // How it was anonymised: the config's rules, then the script.
        let r = run(
            &s.env,
            &s.env.user("pete"),
            &format!("image {} --json", s.image),
            b"",
        )
        .await;
        let a = &json_of(&r)["anonymisation"];
        assert_eq!(a["status"], "checked", "{a}");
        assert_eq!(a["rules_from"], serde_json::json!(["config"]));
        assert_eq!(a["script"], true);
        let r = run(
            &s.env,
            &s.env.user("pete"),
            &format!("image {}", s.image),
            b"",
        )
        .await;
        assert!(r.out.contains("masking   checked"), "{}", r.out);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_exports_what_psql_needs_in_a_posix_shell() {
    on_story(|s| async move {
        let quinn = s.env.user("quinn");
        let id = new_instance(&s.env, &quinn, s.image).await;
        let r = run(&s.env, &quinn, &format!("env {id}"), b"").await;
        assert_eq!(r.code, 0, "{}", r.err);
        // eval it in a real POSIX shell and run psql with nothing else set.
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("env.sh");
        std::fs::write(&script, &r.out).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "eval \"$(cat {})\" && test \"$(stat -c %a \"$PGSSLKEY\")\" = 600 && PGHOST=127.0.0.1 psql -X -At -c 'SELECT count(*) FROM users'",
                script.display()
            ))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("TMPDIR", dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5");
        for var in [
            "PGHOST='localhost'",
            "PGUSER='draupnir'",
            "PGSSLMODE=verify-ca",
            "PGSSLROOTCERT=",
            "PGSSLCERT=",
            "PGSSLKEY=",
            "PGDATABASE=",
            "PGPORT=",
        ] {
            assert!(
                r.out.contains(&format!("export {var}")),
                "{var} missing: {}",
                r.out
            );
        }
        let v = json_of(&run(&s.env, &quinn, &format!("env {id} --json"), b"").await);
        assert!(v["client_key"].as_str().unwrap().contains("PRIVATE KEY"));
        assert_eq!(v["sslmode"], "verify-ca");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_lists_ones_own_as_a_table_and_as_json() {
    on_story(|s| async move {
        let bob = s.env.user("bob");
        new_instance(&s.env, &bob, s.image).await;
        let r = run(&s.env, &bob, "instances", b"").await;
        assert!(r.out.starts_with("ID  IMAGE  STATE    PORT"), "{}", r.out);
        assert!(
            r.out.lines().next().unwrap().contains("  EXPIRES  "),
            "{}",
            r.out
        );
        assert!(r.out.contains("  never  "), "{}", r.out);
        assert!(
            r.out.contains("running") && r.out.contains("bob"),
            "{}",
            r.out
        );
        let v = json_of(&run(&s.env, &bob, "instances --json", b"").await);
        assert_eq!(v[0]["image_id"], s.image.get());
        assert!(v[0]["id"].is_string(), "{v}");
        assert_eq!(v[0]["created_at"].as_str().unwrap().len(), 20, "{v}");
        assert_eq!(v[0]["hostname"], "localhost");
        assert!(v[0]["port"].as_u64().is_some());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_shows_the_address_the_client_came_from() {
    on_story(|s| async move {
        let rita = s.env.user("rita");
        let id = new_instance(&s.env, &rita, s.image).await;
        let r = run(&s.env, &rita, &format!("instance {id}"), b"").await;
        assert!(
            r.out.contains("192.0.2.7"),
            "the client's address is recorded: {}",
            r.out
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_ip_and_disallow_ip_edit_the_allow_list() {
    on_story(|s| async move {
        let env = &s.env;
        let sam = env.user("sam");
        let id = new_instance(env, &sam, s.image).await;
        let r = run(
            env,
            &sam,
            &format!("allow-ip {id} ::ffff:198.51.100.4"),
            b"",
        )
        .await;
        assert_eq!(
            r.out,
            format!("198.51.100.4 may now reach instance {id}\n"),
            "{}",
            r.err
        );
        assert_one_line_error(
            &run(env, &sam, &format!("allow-ip {id} 0.0.0.0"), b"").await,
            2,
            "cannot be allow-listed",
        );
        assert_one_line_error(
            &run(env, &sam, &format!("allow-ip {id} banana"), b"").await,
            2,
            "not an IP address",
        );
        assert_one_line_error(
            &run(
                env,
                &carol_probe(env),
                &format!("allow-ip {id} 198.51.100.9"),
                b"",
            )
            .await,
            1,
            "not found",
        );
        let r = run(env, &sam, &format!("disallow-ip {id} 198.51.100.4"), b"").await;
        assert_eq!(r.code, 0, "{}", r.err);
        assert_one_line_error(
            &run(env, &sam, &format!("disallow-ip {id} 198.51.100.4"), b"").await,
            1,
            "not found",
        );
    })
    .await
}

/// carol owns nothing in the story's world.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_sees_nothing_of_ones_instances() {
    on_story(|s| async move {
        let env = &s.env;
        let tess = env.user("tess");
        let id = new_instance(env, &tess, s.image).await;
        let carol = env.user("carol");
        let r = run(env, &carol, "instances", b"").await;
        assert_eq!((r.code, r.out.as_str()), (0, ""));
        assert!(r.err.starts_with("no instances; "), "{}", r.err);
        assert_one_line_error(
            &run(env, &carol, &format!("env {id}"), b"").await,
            1,
            &format!("instance {id} not found"),
        );
        assert_one_line_error(
            &run(env, &carol, &format!("destroy-instance {id}"), b"").await,
            1,
            "not found",
        );
        assert_one_line_error(
            &run(env, &carol, &format!("instance {id}"), b"").await,
            1,
            "not found",
        );
        assert_one_line_error(
            &run(env, &carol, "instances --all", b"").await,
            1,
            "admin only",
        );
        assert_one_line_error(&run(env, &carol, "new-image", b"").await, 1, "admin only");
        assert_one_line_error(
            &run(
                env,
                &carol,
                &format!("upload-image {}", s.image),
                &FIXTURE.tar,
            )
            .await,
            1,
            "admin only",
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_instance_says_so() {
    on_story(|s| async move {
        let uma = s.env.user("uma");
        let id = new_instance(&s.env, &uma, s.image).await;
        let r = run(&s.env, &uma, &format!("destroy-instance {id}"), b"").await;
        assert_eq!(r.code, 0, "{}", r.err);
        assert_eq!(r.out, format!("instance {id} destroyed\n"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_lists_a_ready_image_as_a_table() {
    on_story(|s| async move {
        let r = run(&s.env, &s.env.admin(), "images", b"").await;
        assert!(r.out.starts_with("ID  STATE"), "{}", r.out);
        assert!(r.out.contains("ready"), "{}", r.out);
    })
    .await
}

/// A world of its own: the story's image must stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_image_removes_a_ready_image() {
    let env = TestEnv::new().await;
    let id = env.ready_image(None).await;
    let r = run(&env, &env.admin(), &format!("destroy-image {id}"), b"").await;
    assert_eq!(r.code, 0, "{}", r.err);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_usage_errors_and_users() {
    let env = TestEnv::new().await;
    let admin = env.admin();
    for line in ["", "help"] {
        let r = run(&env, &admin, line, b"").await;
        assert_eq!(r.code, 0);
        assert!(r.out.contains("new-instance IMAGE_ID|latest"), "{}", r.out);
    }
    for name in [
        "images",
        "image",
        "new-image",
        "upload-image",
        "finalise-image",
        "done",
        "reset-upload",
        "destroy-image",
        "instances",
        "new-instance",
        "instance",
        "env",
        "destroy-instance",
        "whoami",
        "users",
        "add-user",
        "remove-user",
        "add-key",
        "remove-key",
        "keys",
        "token",
        "tokens",
        "revoke-token",
        "help",
        "version",
    ] {
        let r = run(&env, &admin, &format!("{name} --help"), b"").await;
        assert_eq!(r.code, 0, "{name} --help: {}", r.err);
        assert!(r.out.contains("Usage: ssh draupnir"), "{name}: {}", r.out);
    }
    assert_one_line_error(
        &run(&env, &admin, "frobnicate", b"").await,
        2,
        "unknown command `frobnicate`",
    );
    assert_one_line_error(
        &run(&env, &admin, "new-instance", b"").await,
        2,
        "usage: ssh draupnir new-instance",
    );
    assert_one_line_error(
        &run(&env, &admin, "new-instance abc", b"").await,
        2,
        "not an id",
    );
    assert_one_line_error(
        &run(&env, &admin, "destroy-instance -3", b"").await,
        2,
        "usage",
    );
    assert_one_line_error(
        &run(&env, &admin, "instance 12 --bogus", b"").await,
        2,
        "--bogus",
    );
    assert_one_line_error(
        &run(&env, &admin, "new-instance 77", b"").await,
        1,
        "image 77 not found",
    );
    assert_one_line_error(
        &run(&env, &admin, "finalise-image 77", b"").await,
        1,
        "image 77 not found",
    );
    assert_one_line_error(
        &run(&env, &admin, "new-image --backed-up-at yesterday", b"").await,
        2,
        "RFC 3339",
    );
    let r = run(
        &env,
        &admin,
        "new-image --backed-up-at 2026-11-21T02:00:00Z --json",
        b"",
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&r.out).unwrap();
    assert_eq!(v["backed_up_at"], "2026-11-21T02:00:00Z");
    assert_eq!(v["state"], "uploading");
    assert_one_line_error(
        &run(&env, &admin, "new-instance 1", b"").await,
        1,
        "not ready",
    );
    assert_one_line_error(
        &run(&env, &admin, "upload-image 1", b"not a tarball at all").await,
        1,
        "upload failed",
    );
    let r = run(&env, &admin, "image 1", b"").await;
    assert!(
        r.out.contains("state     failed") && r.out.contains("reason"),
        "{}",
        r.out
    );
    let r = run(&env, &admin, "reset-upload 1", b"").await;
    assert_eq!(r.code, 0, "{}", r.err);

    // Users and keys.
    let r = run(&env, &admin, "add-user dave --email dave@example.com", b"").await;
    assert_eq!(r.code, 0, "{}", r.err);
    let key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE9Yh1l0F1m3mWbVQe1lY6n8r1G0Zf2Vb5tq9c3p6Kxd dave@x";
    let r = run(&env, &admin, "add-key dave", key.as_bytes()).await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.out.contains("SHA256:"), "{}", r.out);
    assert_one_line_error(
        &run(&env, &admin, "add-key dave", b"").await,
        2,
        "no public key",
    );
    assert_one_line_error(
        &run(&env, &admin, "add-key dave", b"ssh-ed25519 AAAA!!").await,
        1,
        "base64",
    );
    assert_one_line_error(
        &run(&env, &admin, "add-user dave", b"").await,
        1,
        "already exists",
    );
    let r = run(&env, &admin, "users --json", b"").await;
    let v: serde_json::Value = serde_json::from_str(&r.out).unwrap();
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["name"] == "dave" && u["email"] == "dave@example.com"));
    let r = run(&env, &admin, "users", b"").await;
    assert!(r.out.starts_with("NAME"), "{}", r.out);
    let r = run(&env, &admin, "keys dave --json", b"").await;
    let v: serde_json::Value = serde_json::from_str(&r.out).unwrap();
    let fp = v[0]["fingerprint"].as_str().unwrap().to_string();
    let dave = env.svc().actor_for("dave").unwrap().unwrap();
    let r = run(&env, &dave, "whoami", b"").await;
    assert_eq!(r.out, "dave (user) <dave@example.com>, 1 key(s)\n");
    assert_one_line_error(&run(&env, &dave, "users", b"").await, 1, "admin only");
    assert_one_line_error(&run(&env, &dave, "keys alice", b"").await, 1, "admin only");
    // The token alone on stdout (`token=$(ssh draupnir token)`), the hint
    // on stderr.
    let r = run(&env, &dave, "token", b"").await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(r.out.lines().count(), 1, "{:?}", r.out);
    let token = r.out.trim_end();
    assert!(token.starts_with("drp_"), "{token}");
    assert!(r.err.contains("revoke-token"), "{}", r.err);
    assert_eq!(
        env.svc().authenticate_token(token).unwrap().unwrap().name(),
        "dave"
    );
    let r = run(&env, &admin, &format!("remove-key {fp}"), b"").await;
    assert_eq!(r.code, 0, "{}", r.err);
    assert_one_line_error(
        &run(&env, &admin, &format!("remove-key {fp}"), b"").await,
        1,
        "not found",
    );
    let r = run(&env, &admin, "remove-user dave", b"").await;
    assert_eq!(r.code, 0, "{}", r.err);
    let r = run(&env, &admin, "version", b"").await;
    assert!(r.out.starts_with("draupnir "));
}

/// What a person sees for a few commands in a fresh world, checked against
/// `tests/golden/commands.txt` with times replaced by `<TIME>`.
/// `UPDATE_GOLDEN=1 cargo test --test commands outputs_match` rewrites it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_match_the_golden_file() {
    let env = TestEnv::new().await;
    let admin = env.admin();
    let mut transcript = String::new();
    for line in [
        "help",
        "new-instance",
        "new-instance abc",
        "instance 1 --bogus",
        "frobnicate",
        "extend-instance 1 4",
        "instances",
        "new-instanse 1",
        "instances --jsn",
        "help extend-instance",
        "tokens",
        "revoke-token 1",
        "new-instance --help",
        "images",
        "new-image --script 'select 1'",
        "images",
        "whoami",
        "keys",
    ] {
        let r = run(&env, &admin, line, b"").await;
        transcript.push_str(&format!(
            "$ ssh draupnir {line}   [exit {}]\n{}{}",
            r.code,
            without_ages(&r.out),
            r.err
        ));
    }
    check_golden("commands.txt", &normalise(&transcript));
}

/// A table whose cells hold ages (`just now`, `5s ago`, `in 4h`) with
/// those cells as `<AGE>` and its columns two spaces apart (the widths
/// follow the ages); any other text as it is.
fn without_ages(text: &str) -> String {
    let is_age = |c: &str| {
        let span = |t: &str| {
            t.len() > 1
                && t[..t.len() - 1].bytes().all(|b| b.is_ascii_digit())
                && t.ends_with(['s', 'm', 'h', 'd'])
        };
        c == "just now"
            || c.strip_suffix(" ago").is_some_and(span)
            || c.strip_prefix("in ").is_some_and(span)
    };
    let cells = |l: &str| -> Vec<String> {
        l.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    if !text.lines().any(|l| cells(l).iter().any(|c| is_age(c))) {
        return text.to_string();
    }
    let mut out = String::new();
    for l in text.lines() {
        let row: Vec<String> = cells(l)
            .into_iter()
            .map(|c| if is_age(&c) { "<AGE>".into() } else { c })
            .collect();
        out.push_str(&row.join("  "));
        out.push('\n');
    }
    out
}

/// `text` with every `YYYY-MM-DD hh:mm[:ss]` (with `T` or a space, and an
/// optional `Z`) replaced by `<TIME>`: what changes from run to run.
fn normalise(text: &str) -> String {
    let b = text.as_bytes();
    let shape = |i: usize| -> Option<usize> {
        // The length of a time at `i`, if one starts there.
        let digits = |from: usize, n: usize| {
            b.len() >= from + n && b[from..from + n].iter().all(u8::is_ascii_digit)
        };
        let at = |j: usize, c: u8| b.get(j) == Some(&c);
        let date = digits(i, 4) && at(i + 4, b'-') && digits(i + 5, 2) && at(i + 7, b'-');
        let date = date && digits(i + 8, 2) && (at(i + 10, b'T') || at(i + 10, b' '));
        let time = digits(i + 11, 2) && at(i + 13, b':') && digits(i + 14, 2);
        if !(date && time) {
            return None;
        }
        let mut end = i + 16;
        if at(end, b':') && digits(end + 1, 2) {
            end += 3;
        }
        if at(end, b'Z') {
            end += 1;
        }
        Some(end - i)
    };
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if let Some(n) = shape(i) {
            out.push_str("<TIME>");
            i += n;
        } else {
            let ch = text[i..].chars().next().unwrap_or('\u{fffd}');
            out.push(ch);
            i += ch.len_utf8().max(1);
        }
    }
    out
}

/// Compare `actual` with `tests/golden/NAME`, or write it there when
/// `UPDATE_GOLDEN=1`.
fn check_golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(e, a)| e != a)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the output, first at line {} (UPDATE_GOLDEN=1 rewrites it)\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display(),
            first + 1
        );
    }
}

#[test]
fn golden_normalising_hides_times_and_ages_only() {
    assert_eq!(
        normalise("at 2026-12-02T04:01:12Z and 2026-12-02 04:01, not 2026-12"),
        "at <TIME> and <TIME>, not 2026-12"
    );
    assert_eq!(
        without_ages("ID  CREATED   REASON\n1   just now  -\n2   5s ago    -\n3   in 4h     x\n"),
        "ID  CREATED  REASON\n1  <AGE>  -\n2  <AGE>  -\n3  <AGE>  x\n"
    );
    assert_eq!(without_ages("no  ages  here\n"), "no  ages  here\n");
}
