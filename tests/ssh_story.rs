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
    let o = s.ssh(&admin, &["new-image", "--json"]).await;
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
    let o = s.ssh(&admin, &["new-image", "--json"]).await;
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
