//! The commands about people and their credentials: `whoami`, `users`,
//! `add-user`, `remove-user`, the keys (`add-key`, `remove-key`, `keys`)
//! and the bearer tokens for the HTTP API (`token`, `tokens`,
//! `revoke-token`). Each asks the core and formats its answer.

use serde_json::json;
use tokio::io::AsyncRead;

use super::{read_stdin, say, say_json, Failure, Out, Session};
use crate::core::{format_ts, TokenId};
use crate::ssh::format::{self, age, table};

/// `whoami [--json]`.
pub(super) async fn whoami(session: &Session, json: bool, out: Out<'_>) -> Result<(), Failure> {
    let svc = &session.service;
    let u = svc.whoami(&session.actor)?;
    let keys = svc.list_keys(&session.actor, Some(&u.name))?.len();
    if json {
        let mut v = format::user_json(&u);
        v["keys"] = json!(keys);
        return say_json(out, &v).await;
    }
    say(
        out,
        format!(
            "{} ({}){}, {keys} key(s)\n",
            u.name,
            if u.is_admin { "admin" } else { "user" },
            u.email
                .as_deref()
                .map(|e| format!(" <{e}>"))
                .unwrap_or_default()
        ),
    )
    .await
}

/// `users [--json]`.
pub(super) async fn list(session: &Session, json: bool, out: Out<'_>) -> Result<(), Failure> {
    let svc = &session.service;
    let users = svc.list_users(&session.actor)?;
    if json {
        return say_json(
            out,
            &json!(users.iter().map(format::user_json).collect::<Vec<_>>()),
        )
        .await;
    }
    let keys = svc.list_keys(&session.actor, None)?;
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                if u.is_admin { "admin" } else { "user" }.into(),
                u.email.clone().unwrap_or_else(|| "-".into()),
                keys.iter()
                    .filter(|k| k.user_id == u.id)
                    .count()
                    .to_string(),
                age(u.created_at),
            ]
        })
        .collect();
    say(
        out,
        table(&["NAME", "ROLE", "EMAIL", "KEYS", "CREATED"], &rows),
    )
    .await
}

/// `add-user NAME [--admin] [--email EMAIL]`.
pub(super) async fn add(
    session: &Session,
    name: &str,
    admin: bool,
    email: Option<&str>,
    out: Out<'_>,
) -> Result<(), Failure> {
    let u = session
        .service
        .add_user(&session.actor, name, email, admin)?;
    say(
        out,
        format!(
            "user {} added ({}); add a key with: ssh draupnir add-key {} < key.pub\n",
            u.name,
            if u.is_admin { "admin" } else { "user" },
            u.name
        ),
    )
    .await
}

/// `remove-user NAME`.
pub(super) async fn remove(session: &Session, name: &str, out: Out<'_>) -> Result<(), Failure> {
    session.service.remove_user(&session.actor, name).await?;
    say(out, format!("user {name} removed\n")).await
}

/// `add-key USER`: one or more OpenSSH public keys on stdin.
pub(super) async fn add_key(
    session: &Session,
    user: &str,
    stdin: &mut (dyn AsyncRead + Unpin + Send),
    out: Out<'_>,
) -> Result<(), Failure> {
    let text = read_stdin(stdin, "the key").await?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if lines.is_empty() {
        return Err(Failure::Usage(
            "no public key on stdin; usage: ssh draupnir add-key USER < key.pub".into(),
        ));
    }
    let mut added = String::new();
    for line in lines {
        let fp = session.service.add_key(&session.actor, user, line)?;
        added.push_str(&format!("key {fp} added to {user}\n"));
    }
    say(out, added).await
}

/// `remove-key FINGERPRINT`.
pub(super) async fn remove_key(
    session: &Session,
    fingerprint: &str,
    out: Out<'_>,
) -> Result<(), Failure> {
    session.service.remove_key(&session.actor, fingerprint)?;
    say(out, format!("key {fingerprint} removed\n")).await
}

/// `keys [USER] [--json]`.
pub(super) async fn keys(
    session: &Session,
    user: Option<&str>,
    json: bool,
    out: Out<'_>,
) -> Result<(), Failure> {
    let keys = session.service.list_keys(&session.actor, user)?;
    if json {
        return say_json(
            out,
            &json!(keys.iter().map(format::key_json).collect::<Vec<_>>()),
        )
        .await;
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.user_name.clone(),
                k.public_key.split_whitespace().next().unwrap_or("").into(),
                k.fingerprint.to_string(),
                age(k.created_at),
            ]
        })
        .collect();
    say(out, table(&["USER", "TYPE", "FINGERPRINT", "ADDED"], &rows)).await
}

/// `token [--json]`: shown once. The token alone goes to `out` (so
/// `token=$(ssh draupnir token)` captures just it), how to use it to
/// `hint` (stderr).
pub(super) async fn token(
    session: &Session,
    json: bool,
    out: Out<'_>,
    hint: Out<'_>,
) -> Result<(), Failure> {
    let svc = &session.service;
    let (id, token) = svc.mint_token_with_id(&session.actor)?;
    if json {
        return say_json(out, &json!({ "id": id, "token": token })).await;
    }
    say(out, format!("{token}\n")).await?;
    say(
        hint,
        format!(
            "token {id} minted; it is shown once. Send it as `Authorization: Bearer $token` \
             with `Draupnir-Version: {}`; revoke it with: ssh draupnir revoke-token {id}\n",
            svc.config().http.api_version
        ),
    )
    .await
}

/// `tokens [--all] [--json]`: never the secrets (only hashes are kept).
pub(super) async fn tokens(
    session: &Session,
    all: bool,
    json: bool,
    out: Out<'_>,
) -> Result<(), Failure> {
    let tokens = session.service.list_tokens(&session.actor, all)?;
    if json {
        let v: Vec<_> = tokens
            .iter()
            .map(|t| {
                json!({
                    "id": t.id,
                    "user": t.user_name,
                    "created_at": format_ts(t.created_at),
                    "last_used_at": t.last_used_at.map(format_ts),
                })
            })
            .collect();
        return say_json(out, &json!(v)).await;
    }
    if tokens.is_empty() {
        return say(
            out,
            "no tokens; mint one with: token=$(ssh draupnir token)\n",
        )
        .await;
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.user_name.clone(),
                age(t.created_at),
                t.last_used_at.map(age).unwrap_or_else(|| "never".into()),
            ]
        })
        .collect();
    say(out, table(&["ID", "USER", "CREATED", "LAST USED"], &rows)).await
}

/// `revoke-token ID`.
pub(super) async fn revoke_token(
    session: &Session,
    id: TokenId,
    out: Out<'_>,
) -> Result<(), Failure> {
    let t = session.service.revoke_token(&session.actor, id)?;
    say(
        out,
        format!(
            "token {id} of {} revoked; it is refused from now on\n",
            t.user_name
        ),
    )
    .await
}
