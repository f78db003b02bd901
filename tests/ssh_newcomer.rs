//! What a newcomer meets first, through the real OpenSSH clients: a bare
//! `ssh draupnir` (with and without a terminal) prints the command list;
//! `help COMMAND`, typos and every argument's words; the API tokens
//! (`token=$(ssh draupnir token)` with curl, `tokens`, `revoke-token` and a
//! revoked token's `401`); and what `scp` and `sftp` print when an upload
//! is refused.

mod common;

use std::process::Output;

use common::ssh::*;
use serde_json::Value;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Stderr, with the CRLF OpenSSH's clients end their own lines with as LF.
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).replace("\r\n", "\n")
}

/// Exit status `code` and exactly `line` (one line) on stderr.
fn assert_error_line(o: &Output, code: i32, line: &str) {
    assert_eq!(o.status.code(), Some(code), "{}", text(o));
    assert_eq!(stderr(o), format!("{line}\n"), "{}", text(o));
}

/// Exit status 1 and these lines on stderr, each once, in any order (a
/// line given as a prefix matches a line that starts with it).
fn assert_lines(o: &Output, lines: &[&str]) {
    assert_eq!(o.status.code(), Some(1), "{}", text(o));
    let err = stderr(o);
    let got: Vec<&str> = err.lines().collect();
    assert_eq!(got.len(), lines.len(), "{}", text(o));
    for want in lines {
        let n = got
            .iter()
            .filter(|l| **l == *want || (want.ends_with(' ') && l.starts_with(want)))
            .count();
        assert_eq!(n, 1, "`{want}` once: {}", text(o));
    }
}

/// The `ssh` command line for `key`, as a shell would be given it.
fn ssh_line(s: &SshEnv, key: &std::path::Path, args: &[&str]) -> String {
    let mut words = vec!["ssh".to_string()];
    words.extend(client_opts(key, None));
    words.extend(["-p".into(), s.port.to_string(), "draupnir@127.0.0.1".into()]);
    words.extend(args.iter().map(|a| a.to_string()));
    shell_words::join(words)
}

/// Run `line` with `sh -c`.
async fn sh(line: &str) -> Output {
    tokio::process::Command::new("sh")
        .arg("-c")
        .arg(line)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("sh")
}

const OVERVIEW_START: &str = "Draupnir: fresh, anonymised, private PostgreSQL instances.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_ssh_prints_the_command_list() {
    let s = SshEnv::new().await;
    let key = s.admin_key.clone();
    let help = s.ssh(&key, &["help"]).await;
    assert_eq!(help.status.code(), Some(0), "{}", text(&help));
    assert!(stdout(&help).starts_with(OVERVIEW_START), "{}", text(&help));

    // No terminal: the list on stdout, nothing on stderr, exit 0.
    let o = s.ssh(&key, &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(stdout(&o), stdout(&help));
    assert_eq!(stderr(&o), "");
    // `ssh -t` without a terminal on stdin (the client asks for none).
    let o = s.ssh_opts(&key, &["-t"], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stdout(&o).starts_with(OVERVIEW_START), "{}", text(&o));
    // A forced terminal: accepted, and the list's lines end in CRLF as a
    // terminal's would.
    let o = s.ssh_opts(&key, &["-tt"], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!stderr(&o).contains("PTY allocation"), "{}", text(&o));
    assert_eq!(stdout(&o), stdout(&help).replace('\n', "\r\n"));

    // From a real terminal (`script` gives ssh one): no "PTY allocation
    // request failed", the list, exit 0, and no staircase (every line
    // ends in CRLF).
    let line = ssh_line(&s, &key, &[]);
    let o = sh(&format!(
        "script -qec {} /dev/null",
        shell_words::quote(&line)
    ))
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let shown = stdout(&o);
    assert!(!shown.contains("PTY allocation"), "{shown}");
    assert!(shown.contains(OVERVIEW_START), "{shown}");
    assert!(shown.contains("  help [COMMAND]"), "{shown}");
    let list = &shown[shown.find(OVERVIEW_START).unwrap()..];
    assert!(
        !list.replace("\r\n", "").contains('\n'),
        "a bare LF in a terminal: {list:?}"
    );
    // A command from a terminal prints its bytes as they are (no CR: its
    // output is often captured, `eval "$(ssh -t draupnir env ID)"`).
    let line = ssh_line(&s, &key, &["whoami"]).replacen("ssh ", "ssh -t ", 1);
    let o = sh(&format!(
        "script -qec {} /dev/null",
        shell_words::quote(&line)
    ))
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stdout(&o).starts_with("alice (admin), "),
        "{:?}",
        stdout(&o)
    );
    assert!(stdout(&o).ends_with(" key(s)\n"), "{:?}", stdout(&o));
    assert!(!stdout(&o).contains('\r'), "{:?}", stdout(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_typos_and_one_form_of_hints() {
    let s = SshEnv::new().await;
    let key = s.admin_key.clone();
    let overview = stdout(&s.ssh(&key, &["help"]).await);
    // Every command in the list: `help NAME` is `NAME --help`, exit 0,
    // and every argument it shows comes with words.
    let names: Vec<String> = overview
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(names.len() > 25, "{names:?}");
    for name in &names {
        let h = s.ssh(&key, &["help", name]).await;
        assert_eq!(h.status.code(), Some(0), "help {name}: {}", text(&h));
        let direct = s.ssh(&key, &[name, "--help"]).await;
        assert_eq!(stdout(&h), stdout(&direct), "help {name}");
        assert!(
            stdout(&h).contains(&format!("Usage: ssh draupnir {name}")),
            "help {name}: {}",
            text(&h)
        );
        let shown = stdout(&h);
        if let Some(args) = shown.split("Arguments:\n").nth(1) {
            // Words beside the argument, or (clap's long help, for a
            // command with a long description) on the lines under it.
            let lines: Vec<&str> = args.lines().take_while(|l| !l.is_empty()).collect();
            for (i, line) in lines.iter().enumerate() {
                let arg = line.trim_start();
                if !arg.starts_with('<') && !arg.starts_with('[') {
                    continue;
                }
                let beside = arg.split_once("  ").map(|(_, w)| w.trim());
                let under = lines
                    .get(i + 1)
                    .filter(|l| l.starts_with("          "))
                    .map(|l| l.trim());
                assert!(
                    beside.or(under).is_some_and(|w| w.len() > 10),
                    "help {name}: `{line}` says nothing about the argument"
                );
            }
        }
    }
    let h = stdout(&s.ssh(&key, &["help", "new-instance"]).await);
    assert!(
        h.contains("<IMAGE_ID>  The image's id (see `ssh draupnir images`)"),
        "{h}"
    );
    let h = stdout(&s.ssh(&key, &["help", "extend-instance"]).await);
    assert!(
        h.contains("<ID>        The instance's id (see `ssh draupnir instances`)"),
        "{h}"
    );
    assert!(h.contains("<DURATION>  How much longer it lives"), "{h}");

    // Typos: one line, exit 2, with clap's suggestion where it has one.
    assert_error_line(
        &s.ssh(&key, &["new-instanse", "1"]).await,
        2,
        "draupnir: unknown command `new-instanse`; did you mean `new-instance`?",
    );
    assert_error_line(
        &s.ssh(&key, &["help", "new-instanse"]).await,
        2,
        "draupnir: unknown command `new-instanse`; did you mean `new-instance`?",
    );
    assert_error_line(
        &s.ssh(&key, &["revoke-tokne", "1"]).await,
        2,
        "draupnir: unknown command `revoke-tokne`; did you mean `revoke-token`?",
    );
    assert_error_line(
        &s.ssh(&key, &["frobnicate"]).await,
        2,
        "draupnir: unknown command `frobnicate`; `ssh draupnir help` lists the commands",
    );
    assert_error_line(
        &s.ssh(&key, &["instances", "--jsn"]).await,
        2,
        "draupnir: unknown option `--jsn`; did you mean `--json`? usage: ssh draupnir instances [OPTIONS]",
    );
    assert_error_line(
        &s.ssh(&key, &["images", "--frob"]).await,
        2,
        "draupnir: unknown option `--frob`; usage: ssh draupnir images [OPTIONS]",
    );
    assert_error_line(
        &s.ssh(&key, &["help", "images", "extra"]).await,
        2,
        "draupnir: unexpected argument `extra`; usage: ssh draupnir help [COMMAND]",
    );

    // Hints name one form: `ssh draupnir …` (the README's Host alias).
    let o = s.ssh(&key, &["new-image"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let id = stdout(&o)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        stdout(&o),
        format!(
            "image {id} created; upload a backup into it:\n  scp backup.tar.gz draupnir:images/{id}\nthen seal it:\n  ssh draupnir finalise-image {id}\n"
        )
    );
    for out in [&overview, &stdout(&o)] {
        assert!(
            !out.contains("ssh -p") && !out.contains("localhost"),
            "{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_list_revoke_and_stop_at_once() {
    let s = SshEnv::new().await;
    let http = draupnir::http::serve(s.svc().clone(), &s.env.config)
        .await
        .expect("http server starts");
    let url = format!(
        "https://127.0.0.1:{}/instances",
        http.https_addr().expect("https").port()
    );
    let bob = s.new_user_key("bob", false);
    let carol = s.new_user_key("carol", false);
    let curl = |token_var: &str| {
        format!(
            "curl -sk -o /dev/null -w '%{{http_code}}' -H \"Authorization: Bearer ${token_var}\" \
             -H 'Draupnir-Version: 5.3.6' {url}"
        )
    };

    // The README's line: the token alone is captured, curl gets 200.
    let o = sh(&format!(
        "token=$({}) && echo \"$token\" && {}",
        ssh_line(&s, &bob, &["token"]),
        curl("token")
    ))
    .await;
    let shown = stdout(&o);
    let (first, code) = shown.split_once('\n').expect("the token, then the status");
    assert_eq!(code, "200", "{}", text(&o));
    assert!(
        first.starts_with("drp_") && first.len() == 68,
        "{}",
        text(&o)
    );
    let first = first.to_string();
    let o = s.ssh(&bob, &["token"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let second = stdout(&o).trim_end().to_string();
    assert_eq!(stdout(&o), format!("{second}\n"), "one line on stdout");
    assert!(second.starts_with("drp_"), "{second}");
    assert_eq!(
        stderr(&o),
        "token 2 minted; it is shown once. Send it as `Authorization: Bearer $token` with \
         `Draupnir-Version: 5.3.6`; revoke it with: ssh draupnir revoke-token 2\n"
    );
    let o = s.ssh(&carol, &["token", "--json"]).await;
    let v: Value = serde_json::from_slice(&o.stdout).expect("token --json");
    assert_eq!(v["id"], 3);
    assert!(v["token"].as_str().unwrap().starts_with("drp_"));

    // bob's own tokens: id, user, ages; never a secret. The one curl used
    // shows its use.
    let o = s.ssh(&bob, &["tokens"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let table = stdout(&o);
    assert!(!table.contains("drp_"), "{table}");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["ID", "USER", "CREATED", "LAST", "USED"],
        "{table}"
    );
    assert_eq!(rows.len(), 3, "bob's two tokens only: {table}");
    assert_eq!(rows[1][..2], ["1", "bob"], "{table}");
    assert!(rows[1].ends_with(&["just", "now"]), "{table}");
    assert_eq!(rows[2][..2], ["2", "bob"], "{table}");
    assert_eq!(rows[2].last(), Some(&"never"), "{table}");
    let o = s.ssh(&bob, &["tokens", "--json"]).await;
    let v: Value = serde_json::from_slice(&o.stdout).expect("tokens --json");
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v[0]["id"], 1);
    assert_eq!(v[0]["user"], "bob");
    assert!(v[0]["last_used_at"].is_string(), "{v}");
    assert!(v[1]["last_used_at"].is_null(), "{v}");
    assert!(v[0]["created_at"].is_string(), "{v}");
    assert!(!v.to_string().contains("drp_"), "{v}");
    // Another use within the minute leaves the last use as it was (the
    // hot path writes at most once a minute per token).
    let o = sh(&format!(
        "t={} && {}",
        shell_words::quote(&first),
        curl("t")
    ))
    .await;
    assert_eq!(stdout(&o), "200", "{}", text(&o));
    let o = s.ssh(&bob, &["tokens", "--json"]).await;
    let again: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(again[0]["last_used_at"], v[0]["last_used_at"]);
    // Everyone's: admins only.
    assert_error_line(
        &s.ssh(&bob, &["tokens", "--all"]).await,
        1,
        "draupnir: admin only: listing every user's tokens",
    );
    let o = s.ssh(&s.admin_key, &["tokens", "--all", "--json"]).await;
    let v: Value = serde_json::from_slice(&o.stdout).expect("tokens --all --json");
    let users: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["bob", "bob", "carol"]);
    let o = s.ssh(&s.admin_key, &["tokens"]).await;
    assert_eq!(
        stdout(&o),
        "no tokens; mint one with: token=$(ssh draupnir token)\n"
    );

    // Someone else's token does not exist for a user; bad ids are usage.
    assert_error_line(
        &s.ssh(&carol, &["revoke-token", "1"]).await,
        1,
        "draupnir: token 1 not found",
    );
    assert_error_line(
        &s.ssh(&bob, &["revoke-token", "99"]).await,
        1,
        "draupnir: token 99 not found",
    );
    let o = s.ssh(&bob, &["revoke-token", "abc"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", text(&o));
    assert!(stderr(&o).contains("`abc` is not an id"), "{}", text(&o));
    assert_error_line(
        &s.ssh(&bob, &["revoke-token"]).await,
        2,
        "draupnir: missing <ID>; usage: ssh draupnir revoke-token <ID>",
    );

    // bob revokes his second token: curl gets 401 at once; the first
    // still works; revoking twice is not found.
    let o = s.ssh(&bob, &["revoke-token", "2"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        stdout(&o),
        "token 2 of bob revoked; it is refused from now on\n"
    );
    let o = sh(&format!(
        "t={} && {}",
        shell_words::quote(&second),
        curl("t")
    ))
    .await;
    assert_eq!(stdout(&o), "401", "{}", text(&o));
    assert_error_line(
        &s.ssh(&bob, &["revoke-token", "2"]).await,
        1,
        "draupnir: token 2 not found",
    );
    // An admin revokes anyone's.
    let o = s.ssh(&s.admin_key, &["revoke-token", "3"]).await;
    assert_eq!(
        stdout(&o),
        "token 3 of carol revoked; it is refused from now on\n"
    );
    let o = s.ssh(&carol, &["tokens", "--json"]).await;
    assert_eq!(stdout(&o).trim(), "[]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scp_and_sftp_say_why_an_upload_is_refused() {
    let s = SshEnv::new().await;
    let admin = s.admin_key.clone();
    let bob = s.new_user_key("bob", false);
    let tarball = s.base_tar_gz();
    let tarball = tarball.to_str().unwrap();
    let bad = s.file("bad.tar", &[b'x'; 300]);
    let bad = bad.to_str().unwrap();
    let ready = s.env.ready_image(None).await;
    let open = s.new_image();

    // What OpenSSH's scp (SFTP mode) prints: our line (from the channel's
    // stderr, through its ssh) and its own with the status code's words
    // (the two processes' lines may come in either order).
    let o = s.scp(&admin, &[tarball, &s.remote("images/99/")]).await;
    assert_lines(
        &o,
        &[
            "draupnir: image 99 not found",
            "scp: dest open \"images/99/\": No such file or directory",
            "scp: failed to upload file ",
        ],
    );
    let o = s
        .scp(&admin, &[tarball, &s.remote(&format!("images/{ready}/"))])
        .await;
    assert_lines(
        &o,
        &[
            &format!("draupnir: image {ready} does not accept uploads (state: ready)"),
            &format!("scp: dest open \"images/{ready}/base.tar.gz\": Permission denied"),
            "scp: failed to upload file ",
        ],
    );
    let o = s
        .scp(&bob, &[tarball, &s.remote(&format!("images/{open}/"))])
        .await;
    assert_lines(
        &o,
        &[
            "draupnir: admin only: uploading images",
            &format!("scp: dest open \"images/{open}/base.tar.gz\": Permission denied"),
            "scp: failed to upload file ",
        ],
    );
    // A refused archive: the reason once, though every write after it
    // and the close answer with it.
    let o = s
        .scp(&admin, &[bad, &s.remote(&format!("images/{open}/"))])
        .await;
    assert_lines(
        &o,
        &[
            "draupnir: upload failed: archive is truncated: stream ends inside a header block",
            "scp: close remote: Failure",
            "scp: failed to upload file ",
        ],
    );

    // sftp prints the same words.
    let other = s.new_image();
    for (key, batch, line, status) in [
        (
            &admin,
            "put base.tar.gz images/99/\n".to_string(),
            "draupnir: image 99 not found".to_string(),
            "dest open \"/images/99/\": No such file or directory".to_string(),
        ),
        (
            &admin,
            format!("put base.tar.gz images/{ready}/\n"),
            format!("draupnir: image {ready} does not accept uploads (state: ready)"),
            format!("dest open \"/images/{ready}/base.tar.gz\": Permission denied"),
        ),
        (
            &bob,
            format!("put base.tar.gz images/{other}/\n"),
            "draupnir: admin only: uploading images".to_string(),
            format!("dest open \"/images/{other}/base.tar.gz\": Permission denied"),
        ),
        (
            &admin,
            format!("put bad.tar images/{other}/\n"),
            "draupnir: upload failed: archive is truncated: stream ends inside a header block"
                .to_string(),
            "close remote: Failure".to_string(),
        ),
    ] {
        let o = s.sftp_batch(key, &batch).await;
        assert_lines(&o, &[&line, &status]);
    }
    // Two refusals in one session, another request between them: each
    // is told.
    let o = s
        .sftp_batch(
            &admin,
            &format!(
                "-put base.tar.gz images/{ready}/\nls images\nput base.tar.gz images/{ready}/\n"
            ),
        )
        .await;
    let told = format!("draupnir: image {ready} does not accept uploads (state: ready)");
    assert_eq!(stderr(&o).matches(&told).count(), 2, "{}", text(&o));
}
