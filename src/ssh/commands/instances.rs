//! The instance commands: `instances`, `new-instance`, `instance`, `env`
//! (the shell script that connects psql), `allow-ip`, `disallow-ip`,
//! `extend-instance`, `reset-instance` and `destroy-instance`. Each asks
//! the core and formats its answer.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::json;

use super::cli::parse_id;
use super::{say, say_json, Failure, Out, Session};
use crate::core::{format_ts, ConnectionInfo, Extension, InstanceId, InstanceRef, NewInstance};
use crate::ssh::format::{self, age, table};

/// `instances [--all] [--json]`.
pub(super) async fn list(
    session: &Session,
    all: bool,
    json: bool,
    out: Out<'_>,
    err: Out<'_>,
) -> Result<(), Failure> {
    let svc = &session.service;
    let hostname = svc.config().public_hostname.clone();
    let list = svc.list_instances(&session.actor, all)?;
    let ids: Vec<InstanceId> = list.iter().map(|i| i.id).collect();
    let disk = svc.instance_disk_use(&ids);
    if json {
        return say_json(
            out,
            &json!(list
                .iter()
                .map(|i| {
                    let mut v = format::instance_json(i, &hostname);
                    format::add_disk_use(&mut v, disk.get(&i.id));
                    v
                })
                .collect::<Vec<_>>()),
        )
        .await;
    }
    if list.is_empty() {
        // The hint goes to stderr: stdout stays a (here empty) listing.
        return say(
            err,
            "no instances; create one with ssh draupnir new-instance latest\n",
        )
        .await;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            vec![
                i.id.to_string(),
                i.image_id.to_string(),
                i.state.as_str().into(),
                i.port.to_string(),
                i.owner_name.clone(),
                age(i.created_at),
                i.expires_at
                    .map(format::remaining)
                    .unwrap_or_else(|| "never".into()),
                format::disk_use(disk.get(&i.id)),
            ]
        })
        .collect();
    say(
        out,
        table(
            &[
                "ID", "IMAGE", "STATE", "PORT", "OWNER", "CREATED", "EXPIRES", "DISK",
            ],
            &rows,
        ),
    )
    .await
}

/// `new-instance IMAGE_ID|latest [--ttl DURATION] [--json]`.
pub(super) async fn create(
    session: &Session,
    image: String,
    ttl: Option<Duration>,
    json: bool,
    out: Out<'_>,
) -> Result<(), Failure> {
    let which = if image == "latest" {
        InstanceRef::Latest
    } else {
        InstanceRef::Id(
            parse_id(&image)
                .map_err(|e| Failure::Usage(format!("{e}; usage: new-instance IMAGE_ID|latest")))?,
        )
    };
    let info = session
        .service
        .create_instance_with(
            session.caller(),
            which,
            NewInstance {
                ttl,
                ..Default::default()
            },
        )
        .await?;
    if json {
        return say_json(out, &format::instance_json(&info.instance, &info.host)).await;
    }
    let ssh = "ssh draupnir";
    say(
        out,
        format!(
            "instance {id} of image {image} is running{expiry}\nhost  {h}\nport  {p}\nconnect with:\n  eval \"$({ssh} env {id})\" && psql\n",
            id = info.instance.id,
            image = info.instance.image_id,
            h = info.host,
            p = info.port,
            expiry = info
                .instance
                .expires_at
                .map(|e| format!(" until {} ({})", format_ts(e), format::remaining(e)))
                .unwrap_or_default(),
        ),
    )
    .await
}

/// `instance ID [--json]`.
pub(super) async fn show(
    session: &Session,
    id: InstanceId,
    json: bool,
    out: Out<'_>,
) -> Result<(), Failure> {
    let svc = &session.service;
    let hostname = svc.config().public_hostname.clone();
    let i = svc.instance(&session.actor, id)?;
    let addrs = svc.allowed_addresses(&session.actor, id)?;
    if json {
        let mut v = format::instance_json(&i, &hostname);
        v["allowed_addresses"] = json!(addrs);
        return say_json(out, &v).await;
    }
    let mut text = format!(
        "instance  {}\nimage     {}\nstate     {}\nhost      {hostname}\nport      {}\nowner     {}\ncreated   {} ({})\nexpires   {}\nallowed   {}\n",
        i.id,
        i.image_id,
        i.state.as_str(),
        i.port,
        i.owner_name,
        format::secs(i.created_at),
        age(i.created_at),
        i.expires_at
            .map(|e| format!("{} ({})", format::secs(e), format::remaining(e)))
            .unwrap_or_else(|| "never".into()),
        if addrs.is_empty() { "-".to_string() } else { addrs.join(", ") },
    );
    if let Some(r) = &i.failure_reason {
        text.push_str(&format!("reason    {r}\n"));
    }
    say(out, text).await
}

/// `env ID [--dir DIR] [--json]`: what connects psql to the instance.
pub(super) async fn env(
    session: &Session,
    id: InstanceId,
    dir: Option<String>,
    json: bool,
    out: Out<'_>,
) -> Result<(), Failure> {
    if let Some(d) = &dir {
        if d.is_empty() || d.chars().any(char::is_control) {
            return Err(Failure::Usage(
                "--dir needs a directory name (no control characters)".into(),
            ));
        }
        if json {
            return Err(Failure::Usage(
                "--dir writes files from the shell script; --json prints the PEMs instead".into(),
            ));
        }
    }
    let info = session.service.instance_credentials(session.caller(), id)?;
    if json {
        return say_json(
            out,
            &json!({
                "id": id.to_string(),
                "hostname": info.host,
                "port": info.port,
                "user": info.user,
                "database": info.database,
                "sslmode": "verify-ca",
                "ca_certificate": info.credentials.ca_certificate,
                "client_certificate": info.credentials.client_certificate,
                "client_key": info.credentials.client_key.expose(),
            }),
        )
        .await;
    }
    say(out, env_script(&info, dir.as_deref())).await
}

/// `allow-ip ID ADDRESS`.
pub(super) async fn allow_ip(
    session: &Session,
    id: InstanceId,
    address: IpAddr,
    out: Out<'_>,
) -> Result<(), Failure> {
    let a = session.service.allow_address(&session.actor, id, address)?;
    say(out, format!("{a} may now reach instance {id}\n")).await
}

/// `disallow-ip ID ADDRESS`.
pub(super) async fn disallow_ip(
    session: &Session,
    id: InstanceId,
    address: IpAddr,
    out: Out<'_>,
) -> Result<(), Failure> {
    session
        .service
        .disallow_address(&session.actor, id, address)?;
    say(
        out,
        format!("{address} may no longer reach instance {id}\n"),
    )
    .await
}

/// `extend-instance ID DURATION`.
pub(super) async fn extend(
    session: &Session,
    id: InstanceId,
    by: Duration,
    out: Out<'_>,
) -> Result<(), Failure> {
    let text = match session.service.extend_instance(&session.actor, id, by)? {
        Extension::Until(until) => format!(
            "instance {id} now lives until {} ({})\n",
            format_ts(until),
            format::remaining(until)
        ),
        Extension::NoLifetime => {
            format!("instance {id} has no lifetime (it lives until destroyed); nothing changed\n")
        }
    };
    say(out, text).await
}

/// `reset-instance ID`.
pub(super) async fn reset(session: &Session, id: InstanceId, out: Out<'_>) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    session.service.reset_instance(&session.actor, id).await?;
    say(
        out,
        format!(
            "instance {id} is back to its image ({} ms); same port and credentials\n",
            started.elapsed().as_millis()
        ),
    )
    .await
}

/// `destroy-instance ID`.
pub(super) async fn destroy(
    session: &Session,
    id: InstanceId,
    out: Out<'_>,
) -> Result<(), Failure> {
    session.service.destroy_instance(&session.actor, id).await?;
    say(out, format!("instance {id} destroyed\n")).await
}

/// POSIX shell that writes the three PEM files into a private directory
/// (`dir`, made 0700 and reused, or a fresh `mktemp -d` one) and exports
/// what libpq needs.
fn env_script(info: &ConnectionInfo, dir: Option<&str>) -> String {
    let q = format::sh_quote;
    let id = info.instance.id;
    let make_dir = match dir {
        Some(d) => format!(
            "DRAUPNIR_DIR={}\nmkdir -p -m 700 -- \"$DRAUPNIR_DIR\" && chmod 700 -- \"$DRAUPNIR_DIR\"\n\
             rm -f -- \"$DRAUPNIR_DIR/root.crt\" \"$DRAUPNIR_DIR/client.crt\" \"$DRAUPNIR_DIR/client.key\"\n",
            q(d)
        ),
        None => format!(
            "DRAUPNIR_DIR=\"$(mktemp -d \"${{TMPDIR:-/tmp}}/draupnir-{id}.XXXXXX\")\"\n"
        ),
    };
    let mut s = format!(
        "# Draupnir instance {id} (image {}). Use: eval \"$(ssh draupnir env {id})\"\n\
         # The key stays in $DRAUPNIR_DIR; remove it when done: rm -r \"$DRAUPNIR_DIR\"\n\
         umask 077\n{make_dir}",
        info.instance.image_id
    );
    for (file, pem) in [
        ("root.crt", &info.credentials.ca_certificate),
        ("client.crt", &info.credentials.client_certificate),
        ("client.key", info.credentials.client_key.expose()),
    ] {
        s.push_str(&format!(
            "printf '%s\\n' {} > \"$DRAUPNIR_DIR/{file}\"\n",
            q(pem.trim_end())
        ));
    }
    s.push_str(&format!(
        "export PGHOST={}\nexport PGPORT={}\nexport PGUSER={}\nexport PGDATABASE={}\nexport PGSSLMODE=verify-ca\n\
         export PGSSLROOTCERT=\"$DRAUPNIR_DIR/root.crt\"\nexport PGSSLCERT=\"$DRAUPNIR_DIR/client.crt\"\nexport PGSSLKEY=\"$DRAUPNIR_DIR/client.key\"\n",
        q(&info.host),
        info.port,
        q(&info.user),
        q(&info.database)
    ));
    s
}
