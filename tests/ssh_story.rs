//! The brief's four lines, end to end through the real OpenSSH client:
//! new-image, scp, finalise-image, new-instance, `eval "$(ssh … env ID)"`
//! and a bare `psql`; plus exit statuses, --json and another user's view.

mod common;

use draupnir::core::{ImageId, InstanceId};
use std::process::Command;

use common::ssh::*;
use common::*;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_four_lines() {
    let s = SshEnv::new().await;
    let admin = s.admin_key.clone();

    // An operator makes an image with an anonymisation script from stdin…
    let o = s
        .ssh_stdin(
            &admin,
            &["new-image", "--script", "-"],
            b"UPDATE users SET email = 'user' || id || '@example.invalid';",
        )
        .await;
    assert!(o.status.success(), "{}", text(&o));
    let id: ImageId = stdout(&o)
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no image id in {}", stdout(&o)));
    // …pushes last night's backup…
    let backup = s.base_tar_gz();
    let o = s
        .scp(
            &admin,
            &[backup.to_str().unwrap(), &s.remote(&format!("images/{id}"))],
        )
        .await;
    assert!(o.status.success(), "{}", text(&o));
    // …anonymises and locks it, watching progress…
    let o = s.ssh(&admin, &["finalise-image", &id.to_string()]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stdout(&o).contains("==> running anonymisation script"),
        "{}",
        text(&o)
    );
    assert!(stdout(&o).contains("is ready"), "{}", text(&o));

    // A developer gets a private copy…
    let bob = s.new_user_key("bob", false);
    let o = s.ssh(&bob, &["new-instance", &id.to_string()]).await;
    assert!(o.status.success(), "{}", text(&o));
    let inst: InstanceId = stdout(&o)
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no instance id in {}", stdout(&o)));
    assert!(
        stdout(&o).contains(&format!("env {inst})\" && psql")),
        "{}",
        stdout(&o)
    );
    // …and connects with a client certificate and nothing else set.
    let env_out = s.ssh(&bob, &["env", &inst.to_string()]).await;
    assert!(env_out.status.success(), "{}", text(&env_out));
    let script = s.work.path().join("env.sh");
    std::fs::write(&script, stdout(&env_out)).unwrap();
    let psql = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "eval \"$(cat {})\" && psql -X -At -c \"SELECT count(*), min(email) FROM users\"",
            script.display()
        ))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("TMPDIR", s.work.path())
        .output()
        .unwrap();
    assert!(psql.status.success(), "{}", stderr(&psql));
    assert_eq!(
        stdout(&psql).trim(),
        format!("{FIXTURE_USERS}|user100@example.invalid")
    );

    // Listings, --json, and what another user sees.
    let o = s.ssh(&bob, &["instances", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v[0]["id"], inst.to_string());
    assert_eq!(v[0]["image_id"], id.get());
    let carol = s.new_user_key("carol", false);
    let o = s.ssh(&carol, &["instances"]).await;
    assert!(
        o.status.success() && stdout(&o).is_empty() && stderr(&o).starts_with("no instances; "),
        "carol sees no instances: {}",
        text(&o)
    );
    for cmd in [["env", ""], ["destroy-instance", ""], ["instance", ""]] {
        let o = s.ssh(&carol, &[cmd[0], &inst.to_string()]).await;
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(stderr(&o).contains("not found"), "{}", text(&o));
    }
    let o = s.ssh(&carol, &["new-image"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("admin only"), "{}", text(&o));
    let o = s.ssh(&carol, &["frobnicate"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", text(&o));

    let o = s.ssh(&bob, &["destroy-instance", &inst.to_string()]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(s.env.postmasters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_basebackup_piped_into_upload_image() {
    let s = SshEnv::new().await;
    let admin = s.admin_key.clone();
    let o = s
        .ssh(&admin, &["new-image", "--no-anonymisation", "--json"])
        .await;
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let id: ImageId = v["id"].as_str().unwrap().parse().unwrap();
    // What `pg_basebackup -D - -Ft -X fetch | ssh draupnir upload-image N` sends.
    let o = s
        .ssh_stdin(
            &admin,
            &["upload-image", &id.to_string()],
            &FIXTURE.basebackup,
        )
        .await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stdout(&o).is_empty() && stderr(&o).contains(&format!("into image {id} in ")),
        "{}",
        text(&o)
    );
    let o = s.ssh(&admin, &["done", &id.to_string(), "--json"]).await;
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["ready"], true);
    s.assert_usable(id).await;
    // Garbage on stdin fails the upload with a one-line reason.
    let o = s
        .ssh(&admin, &["new-image", "--no-anonymisation", "--json"])
        .await;
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let bad: i64 = v["id"].as_str().unwrap().parse().unwrap();
    let o = s
        .ssh_stdin(
            &admin,
            &["upload-image", &bad.to_string()],
            b"this is not a tarball",
        )
        .await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", text(&o));
    let o = s.ssh(&admin, &["image", &bad.to_string()]).await;
    assert!(stdout(&o).contains("failed"), "{}", text(&o));
}

/// Masking rules through the real OpenSSH client: `new-image --rules -`,
/// the upload, `finalise-image` streaming the rules' steps, the image
/// listed `checked`; bad rules refused when given, each with one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masking_rules_over_ssh() {
    let s = SshEnv::new().await;
    let admin = s.admin_key.clone();
    let o = s
        .ssh_stdin(
            &admin,
            &["new-image", "--rules", "-", "--json"],
            FIXTURE_RULES.as_bytes(),
        )
        .await;
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        v["anonymisation"],
        serde_json::Value::Null,
        "not sealed yet"
    );
    let o = s
        .ssh_stdin(&admin, &["upload-image", &id], &FIXTURE.tar_gz)
        .await;
    assert!(o.status.success(), "{}", text(&o));
    // A complete rules file for the upload, to review; the image stays an
    // upload.
    let o = s.ssh(&admin, &["suggest-rules", &id]).await;
    assert!(o.status.success(), "{}", text(&o));
    let suggested = stdout(&o);
    assert!(
        suggested.contains("[postgres.public.users]")
            && suggested.contains("email = \"email\"")
            && suggested.contains("id = \"keep\""),
        "{suggested}"
    );
    let o = s.ssh(&admin, &["image", &id, "--json"]).await;
    assert!(
        stdout(&o).contains("\"state\": \"uploading\""),
        "{}",
        text(&o)
    );
    let o = s.ssh(&admin, &["finalise-image", &id]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stdout(&o).contains("==> checking masking rules (image)")
            && stdout(&o).contains("==> masking 1 table(s) of postgres"),
        "{}",
        text(&o)
    );
    let o = s.ssh(&admin, &["images"]).await;
    assert!(
        stdout(&o).contains("MASKING") && stdout(&o).contains("checked"),
        "{}",
        text(&o)
    );
    let o = s.ssh(&admin, &["image", &id]).await;
    assert!(
        stdout(&o).contains("masking   checked")
            && stdout(&o).contains("postgres.public.users: 2 masked, 1 kept"),
        "{}",
        text(&o)
    );

    // Refused when given: one line each, nothing created.
    for (args, stdin, code, needle) in [
        (
            vec!["new-image", "--rules", "-"],
            &b"[app.users]\nemail = \"emial\"\n"[..],
            1,
            "line 2",
        ),
        (
            vec!["new-image", "--rules", "rules.toml"],
            &b""[..],
            1,
            "not an absolute path",
        ),
        (
            vec!["new-image", "--rules", "/etc/shadow"],
            &b""[..],
            1,
            "not world-readable",
        ),
        (
            vec!["new-image", "--rules", "-", "--no-anonymisation"],
            &b""[..],
            2,
            "cannot be used with",
        ),
        (
            vec!["new-image", "--rules", "-", "--script", "-"],
            &b""[..],
            2,
            "cannot both read stdin",
        ),
    ] {
        let o = s.ssh_stdin(&admin, &args, stdin).await;
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", text(&o));
        assert_eq!(
            stderr(&o).trim().lines().count(),
            1,
            "{args:?}: {}",
            text(&o)
        );
        assert!(stderr(&o).contains(needle), "{args:?}: {}", text(&o));
    }
    let o = s.ssh(&admin, &["images", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(1), "nothing else created");
    // suggest-rules reads uploads only.
    for (target, needle) in [
        (id.as_str(), "suggest-rules reads an upload"),
        ("99", "not found"),
    ] {
        let o = s.ssh(&admin, &["suggest-rules", target]).await;
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", text(&o));
        assert!(stderr(&o).contains(needle), "{}", text(&o));
    }
    // The suggestion, as it is, seals the next image checked.
    let o = s
        .ssh_stdin(
            &admin,
            &["new-image", "--rules", "-", "--json"],
            suggested.as_bytes(),
        )
        .await;
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let next = v["id"].as_str().unwrap().to_string();
    let o = s
        .ssh_stdin(&admin, &["upload-image", &next], &FIXTURE.tar_gz)
        .await;
    assert!(o.status.success(), "{}", text(&o));
    let o = s.ssh(&admin, &["done", &next, "--json"]).await;
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["anonymisation"]["status"], "checked", "{v}");
}
