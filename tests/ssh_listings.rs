//! What a newcomer sees through the real OpenSSH clients: lifetimes
//! (EXPIRES, `extend-instance`, durations with units), listings (`--json`
//! shaped like the HTTP API, the empty `instances`, a finished upload, `sftp
//! ls -l` dates), refusals that name their fix, upload summaries and
//! progress, finalise's step times and `env --dir`.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::ssh::*;
use common::*;
use draupnir::core::InstanceId;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Exit `code` and one `draupnir: …` line on stderr mentioning `needle`.
fn assert_one_line(o: &std::process::Output, code: i32, needle: &str) {
    assert_eq!(o.status.code(), Some(code), "{}", text(o));
    let e = err(o);
    assert_eq!(e.lines().count(), 1, "one line: {e:?}");
    assert!(e.starts_with("draupnir: ") && e.contains(needle), "{e}");
}

fn json(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)))
}

/// `2026-12-02T06:45:14Z`: RFC 3339 UTC in whole seconds.
fn whole_seconds(v: &Value) -> bool {
    let s = v.as_str().unwrap_or("");
    s.len() == 20 && s.ends_with('Z') && s.as_bytes()[10] == b'T'
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetimes_and_listings_through_ssh() {
    let s = SshEnv::new().await;
    let bob = s.new_user_key("bob", false);

    // Nothing yet: stdout stays an (empty) listing, the hint goes to stderr.
    let o = s.ssh(&bob, &["instances"]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(out(&o), "");
    assert_eq!(
        err(&o),
        "no instances; create one with ssh draupnir new-instance latest\n"
    );
    let o = s.ssh(&bob, &["instances", "--json"]).await;
    assert_eq!((out(&o).trim(), err(&o).as_str()), ("[]", ""));

    let image = s.env.ready_image(None).await;
    let o = s
        .ssh(&bob, &["new-instance", "latest", "--ttl", "8h"])
        .await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(out(&o).contains(" (in 8h)\n"), "{}", out(&o));
    let o = s.ssh(&bob, &["new-instance", "latest", "--json"]).await;
    let forever: InstanceId = json(&o)["id"].as_str().unwrap().parse().unwrap();

    let o = s.ssh(&bob, &["instances"]).await;
    let table = out(&o);
    let header = table.lines().next().unwrap();
    assert!(header.contains("  EXPIRES  "), "{table}");
    let expires_col = header.find("EXPIRES").unwrap();
    let cells: Vec<String> = table
        .lines()
        .skip(1)
        .map(|l| l[expires_col..].split("  ").next().unwrap().to_string())
        .collect();
    assert_eq!(cells, ["in 8h", "never"], "{table}");

    // Extending never gives a life to one that has none …
    let o = s
        .ssh(&bob, &["extend-instance", &forever.to_string(), "4h"])
        .await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        out(&o),
        format!("instance {forever} has no lifetime (it lives until destroyed); nothing changed\n")
    );
    let o = s
        .ssh(&bob, &["instance", &forever.to_string(), "--json"])
        .await;
    assert_eq!(json(&o)["expires_at"], Value::Null);
    // … and lengthens one that has.
    let listed = json(&s.ssh(&bob, &["instances", "--json"]).await);
    let first = listed[0]["id"].as_str().unwrap().to_string();
    let o = s.ssh(&bob, &["extend-instance", &first, "1h"]).await;
    assert!(out(&o).ends_with("(in 9h)\n"), "{}", text(&o));

    // Durations need a unit.
    let o = s.ssh(&bob, &["extend-instance", &first, "4"]).await;
    assert_one_line(&o, 2, "`4` has no unit; add one, like 4h");
    let o = s.ssh(&bob, &["new-instance", "latest", "--ttl", "4"]).await;
    assert_one_line(&o, 2, "add one, like 4h");
    let o = s.ssh(&bob, &["extend-instance", &first, "4x"]).await;
    assert_one_line(&o, 2, "unknown duration unit");

    // --json is shaped like the HTTP API: string ids, a numeric image_id,
    // whole seconds; the same instance reads the same in both.
    let http = draupnir::http::serve(s.svc().clone(), &s.env.config)
        .await
        .unwrap();
    let client = common::http::client_for(&s.env, http.https_addr().unwrap());
    let bob_actor = s.svc().actor_for("bob").unwrap().unwrap();
    let token = s.svc().mint_token(&bob_actor).unwrap();
    let api: Value = serde_json::from_slice(
        &client
            .get(format!(
                "https://localhost:{}/instances",
                http.https_addr().unwrap().port()
            ))
            .header("Draupnir-Version", "5.3.6")
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let listed = json(&s.ssh(&bob, &["instances", "--json"]).await);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    for (ssh, doc) in listed
        .as_array()
        .unwrap()
        .iter()
        .zip(api["data"].as_array().unwrap())
    {
        assert_eq!(ssh["id"], doc["id"], "{ssh} vs {doc}");
        assert!(ssh["id"].is_string());
        for field in ["image_id", "port", "hostname", "created_at", "updated_at"] {
            assert_eq!(ssh[field], doc["attributes"][field], "{field}");
        }
        assert_eq!(ssh["image_id"], image.get());
        assert!(whole_seconds(&ssh["created_at"]), "{ssh}");
    }
    assert!(whole_seconds(&listed[0]["expires_at"]), "{listed}");
    let images = json(&s.ssh(&s.admin_key, &["images", "--json"]).await);
    assert_eq!(images[0]["id"], image.to_string());
    assert!(whole_seconds(&images[0]["created_at"]), "{images}");
    http.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_command_that_gets_past_them() {
    let s = SshEnv::new().await;
    let image = s.env.ready_image(None).await;
    let carol = s.new_user_key("carol", false);
    let o = s.ssh(&carol, &["new-instance", &image.to_string()]).await;
    assert!(o.status.success(), "{}", text(&o));
    let o = s
        .ssh(&s.admin_key, &["destroy-image", &image.to_string()])
        .await;
    assert_one_line(
        &o,
        1,
        &format!(
            "image {image} has 1 instance(s); destroy them first, or all at once: ssh draupnir destroy-image {image} --force"
        ),
    );

    // A failed upload: new-instance names `image ID` for the reason.
    let bad = s.new_image();
    let o = s
        .ssh_stdin(
            &s.admin_key,
            &["upload-image", &bad.to_string()],
            b"not a tar archive at all, not even close.....",
        )
        .await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = s.ssh(&carol, &["new-instance", &bad.to_string()]).await;
    assert_one_line(
        &o,
        1,
        &format!("image {bad} is not ready (state: failed); the reason: ssh draupnir image {bad}"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_end_with_a_summary_and_finalise_times_its_steps() {
    let s = SshEnv::new().await;
    let admin = s.admin_key.clone();

    // upload-image --progress, fed slowly: a line a second, then the summary.
    let id = s.new_image();
    let mut cmd = tokio::process::Command::new("ssh");
    cmd.args(client_opts(&admin, None))
        .args(["-p", &s.port.to_string(), "draupnir@127.0.0.1"])
        .args(["upload-image", &id.to_string(), "--progress"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = FIXTURE.tar_gz.clone();
    let (a, b) = data.split_at(data.len() / 2);
    stdin.write_all(a).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2300)).await;
    stdin.write_all(b).await.unwrap();
    drop(stdin);
    let o = child.wait_with_output().await.unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(out(&o), "");
    let e = err(&o);
    let lines: Vec<&str> = e.lines().collect();
    assert!(lines.len() >= 3, "{e}");
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .all(|l| l.starts_with("received ") && l.ends_with("/s)")),
        "{e}"
    );
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("uploaded ")
            && last.contains(&format!("into image {id} in "))
            && last.ends_with(&format!(
                "ready to finalise: ssh draupnir finalise-image {id}"
            )),
        "{e}"
    );

    // The listing says it holds data and can be finalised.
    let o = s.ssh(&admin, &["images"]).await;
    assert!(
        out(&o).contains("uploaded (ready to finalise)"),
        "{}",
        out(&o)
    );
    let o = s.ssh(&admin, &["image", &id.to_string()]).await;
    assert!(
        out(&o).contains(&format!("next      ssh draupnir finalise-image {id}"))
            && out(&o).contains(" file(s); ready to finalise\n"),
        "{}",
        out(&o)
    );
    let holds = out(&o);
    let files: u64 = holds
        .lines()
        .find_map(|l| l.strip_prefix("holds     "))
        .and_then(|l| l.split(" in ").nth(1))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{holds}"));
    assert!(files > 100, "the fixture's data directory: {holds}");
    let v = json(&s.ssh(&admin, &["image", &id.to_string(), "--json"]).await);
    assert_eq!(
        (v["state"].as_str(), v["upload_finished"].as_bool()),
        (Some("uploading"), Some(true))
    );

    // scp -O ends with a summary on stderr too.
    let other = s.new_image();
    s.base_tar_gz();
    let o = s
        .scp(
            &admin,
            &["-O", "base.tar.gz", &s.remote(&format!("images/{other}"))],
        )
        .await;
    assert!(o.status.success(), "{}", text(&o));
    let e = err(&o);
    assert!(
        e.lines().any(|l| l.starts_with("uploaded ")
            && l.contains(&format!("in 1 file(s) to images/{other} in "))
            && l.ends_with("/s)")),
        "{e}"
    );

    // So does scp in its default (SFTP) mode, and sftp.
    for (n, sftp) in [(1, true), (0, false)] {
        let img = s.new_image();
        let o = if sftp {
            s.sftp_batch(&admin, &format!("put base.tar.gz images/{img}/\n"))
                .await
        } else {
            s.scp(
                &admin,
                &["base.tar.gz", &s.remote(&format!("images/{img}"))],
            )
            .await
        };
        assert!(o.status.success(), "{n}: {}", text(&o));
        let e = err(&o);
        assert!(
            e.lines().any(|l| l.starts_with("uploaded ")
                && l.contains(&format!("in 1 file(s) to images/{img} in "))
                && l.ends_with("/s)")),
            "{n}: {e}"
        );
    }

    // A script step that runs long says it still runs; every step is timed.
    let slow = s
        .svc()
        .create_image(&s.admin(), image_with(Some("SELECT pg_sleep(12);")))
        .unwrap()
        .id;
    s.scp(
        &admin,
        &["base.tar.gz", &s.remote(&format!("images/{slow}"))],
    )
    .await;
    let o = s.ssh(&admin, &["finalise-image", &slow.to_string()]).await;
    assert!(o.status.success(), "{}", text(&o));
    let t = out(&o);
    assert!(t.contains("    still running (1"), "{t}");
    let steps = t.lines().filter(|l| l.starts_with("==> ")).count();
    let took = t.lines().filter(|l| l.starts_with("    took ")).count();
    assert!(steps > 1 && steps == took, "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_dir_keeps_the_key_in_one_place() {
    let s = SshEnv::new().await;
    s.env.ready_image(None).await;
    let dana = s.new_user_key("dana", false);
    let o = s.ssh(&dana, &["new-instance", "latest", "--json"]).await;
    let id = json(&o)["id"].as_str().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs dir/12");
    for _ in 0..2 {
        let o = s
            .ssh(
                &dana,
                &["env", &id, "--dir", &format!("'{}'", dir.display())],
            )
            .await;
        assert!(o.status.success(), "{}", text(&o));
        let script = tmp.path().join("env.sh");
        std::fs::write(&script, &o.stdout).unwrap();
        let run = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "eval \"$(cat '{}')\" && test \"$DRAUPNIR_DIR\" = '{}' && PGHOST=127.0.0.1 psql -X -At -c 'SELECT 1'",
                script.display(),
                dir.display()
            ))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("TMPDIR", tmp.path())
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", text(&run));
        assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "1");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    files.sort();
    assert_eq!(files, ["client.crt", "client.key", "root.crt"]);
    // No mktemp directory was made beside it.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("draupnir-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let o = s.ssh(&dana, &["env", &id, "--dir", "x", "--json"]).await;
    assert_one_line(&o, 2, "--dir");
    let o = s.ssh(&dana, &["env", &id, "--help"]).await;
    assert!(
        out(&o).contains("--dir <DIR>") && out(&o).contains("rm -r"),
        "{}",
        out(&o)
    );
}
