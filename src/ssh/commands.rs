//! `ssh draupnir <command> [args]`: the command set of DESIGN.md.
//!
//! Each command parses its arguments, calls the core as the authenticated
//! [`Actor`], and writes a table (or `--json`) to stdout; errors are one
//! line on stderr and a non-zero exit status (1: the core refused or
//! failed; 2: bad usage).

use std::net::IpAddr;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::format::{self, age, size, table};
use crate::core::{format_ts, ImageId, ImageState, InstanceId, Progress};
use crate::core::{Actor, CoreError, Finalising, InstanceRef, Service, UploadTarget};

/// Who runs the command, and from where.
#[derive(Clone)]
pub struct Session {
    pub service: Service,
    pub actor: Actor,
    /// The client's address (recorded for the instance allow-list).
    pub peer: Option<IpAddr>,
    /// The port the SSH server listens on (for the hints commands print).
    pub ssh_port: u16,
}

/// The channel's three streams.
pub struct Io<'a> {
    pub stdin: &'a mut (dyn AsyncRead + Unpin + Send),
    pub stdout: &'a mut (dyn AsyncWrite + Unpin + Send),
    pub stderr: &'a mut (dyn AsyncWrite + Unpin + Send),
}

/// Most bytes read from stdin for a script or a key.
const MAX_STDIN: usize = 1 << 20;

const OVERVIEW: &str = "\
Draupnir: fresh, anonymised, private PostgreSQL instances.
Usage: ssh draupnir COMMAND [ARGS]     (every command takes --help; listings take --json)

Instances
  instances [--all]              list your instances (--all: everyone's, admins)
  new-instance IMAGE_ID|latest   create an instance of a ready image [--ttl 8h]
  instance ID                    show one instance
  env ID                         print shell exports to connect: eval \"$(ssh draupnir env ID)\"
  reset-instance ID              return an instance to its image (same port and credentials)
  extend-instance ID DURATION    keep an instance longer (e.g. 4h)
  allow-ip ID ADDRESS            let another address reach an instance
  disallow-ip ID ADDRESS         take an address off an instance's allow-list
  destroy-instance ID            stop and delete an instance

Images
  images                         list images
  image ID                       show one image (with its failure reason)
  new-image [--script SQL|-]     create an image to upload into (admins)
  upload-image ID                upload a tar/tar.gz/tar.zst data directory from stdin (admins)
  finalise-image ID [--detach]   anonymise and seal an image (alias: done) (admins)
  reset-upload ID                let a failed upload start again (admins)
  destroy-image ID [--force]     delete an image (--force: and its instances) (admins)

Users and keys
  whoami                         who you are
  users                          list users (admins)
  add-user NAME [--admin]        add a user (admins)
  remove-user NAME               remove a user and their instances (admins)
  add-key USER                   add the public key on stdin to a user
  remove-key FINGERPRINT         remove a key
  keys [USER]                    list keys
  token                          mint a bearer token for the HTTP API

  status                         image freshness (stale when the nightly image is late)
  help                           this list
  version                        the server's version
";

#[derive(Parser, Debug)]
#[command(
    name = "draupnir",
    bin_name = "ssh draupnir",
    no_binary_name = true,
    disable_version_flag = true,
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::config::parse_duration(s)
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse::<IpAddr>()
        .map_err(|_| format!("`{s}` is not an IP address"))
        .and_then(|a| crate::core::allowable(a).map_err(|e| e.to_string()))
}

fn parse_id<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    let not_an_id = || format!("`{s}` is not an id (a positive number)");
    match s.parse::<i64>() {
        Ok(n) if n > 0 => s.parse::<T>().map_err(|_| not_an_id()),
        _ => Err(not_an_id()),
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List images.
    Images {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one image, with its failure reason.
    Image {
        #[arg(value_parser = parse_id::<ImageId>)]
        id: ImageId,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create an image to upload a backup into (admins).
    NewImage {
        /// When the backup was taken (RFC 3339, e.g. 2026-11-21T02:00:00Z).
        #[arg(long)]
        backed_up_at: Option<String>,
        /// The anonymisation SQL script, inline, or `-` to read it from stdin.
        #[arg(long)]
        script: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Upload a tar, tar.gz or tar.zst data directory from stdin (admins).
    UploadImage {
        #[arg(value_parser = parse_id::<ImageId>)]
        id: ImageId,
    },
    /// Anonymise and seal an uploaded image, streaming progress (admins).
    #[command(visible_alias = "done")]
    FinaliseImage {
        #[arg(value_parser = parse_id::<ImageId>)]
        id: ImageId,
        /// Return at once; follow with `image ID`.
        #[arg(long)]
        detach: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Let a failed upload start again with an empty image (admins).
    ResetUpload {
        #[arg(value_parser = parse_id::<ImageId>)]
        id: ImageId,
    },
    /// Delete an image (admins).
    DestroyImage {
        #[arg(value_parser = parse_id::<ImageId>)]
        id: ImageId,
        /// Also destroy the image's instances.
        #[arg(long)]
        force: bool,
    },
    /// List your instances.
    Instances {
        /// Everyone's instances (admins).
        #[arg(long)]
        all: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create an instance of a ready image (`latest`: the newest).
    NewInstance {
        /// An image id, or `latest`.
        #[arg(value_name = "IMAGE_ID")]
        image: String,
        /// How long it lives (e.g. 8h, 3d); destroyed after that.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<std::time::Duration>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one instance.
    Instance {
        #[arg(value_parser = parse_id::<InstanceId>)]
        id: InstanceId,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print shell exports that connect psql: eval "$(ssh draupnir env ID)".
    Env {
        #[arg(value_parser = parse_id::<InstanceId>)]
        id: InstanceId,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Let another address reach an instance (a colleague, a CI runner).
    AllowIp {
        #[arg(value_parser = parse_id::<InstanceId>)]
        id: InstanceId,
        #[arg(value_parser = parse_ip)]
        address: IpAddr,
    },
    /// Take an address off an instance's allow-list.
    DisallowIp {
        #[arg(value_parser = parse_id::<InstanceId>)]
        id: InstanceId,
        #[arg(value_parser = parse_ip)]
        address: IpAddr,
    },
    /// Keep an instance longer (e.g. `extend-instance 4 4h`).
    ExtendInstance {
        #[arg(value_parser = parse_id::<InstanceId>)]
        id: InstanceId,
        #[arg(value_parser = parse_duration)]
        by: std::time::Duration,
    },
    /// Image freshness: `stale` when no image became ready in time.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Return an instance to its image (same id, port and credentials).
    ResetInstance {
        #[arg(value_parser = parse_id::<InstanceId>)]
        id: InstanceId,
    },
    /// Stop and delete an instance.
    DestroyInstance {
        #[arg(value_parser = parse_id::<InstanceId>)]
        id: InstanceId,
    },
    /// Who you are.
    Whoami {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List users (admins).
    Users {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a user (admins).
    AddUser {
        name: String,
        /// Make the user an admin.
        #[arg(long)]
        admin: bool,
        /// The user's e-mail (links an OAuth login to this user).
        #[arg(long)]
        email: Option<String>,
    },
    /// Remove a user and destroy their instances (admins).
    RemoveUser { name: String },
    /// Add the OpenSSH public key(s) on stdin to a user.
    AddKey { user: String },
    /// Remove a key by its SHA256 fingerprint.
    RemoveKey { fingerprint: String },
    /// List keys (yours, or a user's; admins: everyone's).
    Keys {
        user: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Mint a bearer token for the HTTP API (shown once).
    Token {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the commands.
    Help,
    /// Print the server's version.
    Version,
}

/// What a command ends with.
enum Failure {
    /// The core refused or failed.
    Core(CoreError),
    /// Bad input to the command itself.
    Usage(String),
    /// The client went away.
    Io,
}

impl From<CoreError> for Failure {
    fn from(e: CoreError) -> Self {
        Failure::Core(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(_: std::io::Error) -> Self {
        Failure::Io
    }
}

type Out<'a> = &'a mut (dyn AsyncWrite + Unpin + Send);

async fn say(out: Out<'_>, text: impl AsRef<str>) -> Result<(), Failure> {
    out.write_all(text.as_ref().as_bytes()).await?;
    Ok(())
}

async fn say_json(out: Out<'_>, v: &serde_json::Value) -> Result<(), Failure> {
    let mut text = serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into());
    text.push('\n');
    say(out, text).await
}

/// Run one command line (already split into words) and return its exit
/// status. Output is written as it is produced (finalise streams progress).
pub async fn run(session: &Session, argv: Vec<String>, io: Io<'_>) -> u32 {
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => return usage_error(&argv, e, io).await,
    };
    let Io {
        stdin,
        stdout,
        stderr,
    } = io;
    let result = match cli.command {
        None | Some(Cmd::Help) => say(&mut *stdout, OVERVIEW).await,
        Some(cmd) => dispatch(session, cmd, stdin, &mut *stdout).await,
    };
    let _ = stdout.flush().await;
    match result {
        Ok(()) => 0,
        Err(Failure::Io) => 1,
        Err(Failure::Usage(msg)) => {
            let _ = stderr
                .write_all(format!("draupnir: {msg}\n").as_bytes())
                .await;
            2
        }
        Err(Failure::Core(e)) => {
            let msg = format::one_line(&e.to_string(), 2000);
            let _ = stderr
                .write_all(format!("draupnir: {msg}\n").as_bytes())
                .await;
            1
        }
    }
}

async fn usage_error(argv: &[String], e: clap::Error, io: Io<'_>) -> u32 {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = io.stdout.write_all(e.render().to_string().as_bytes()).await;
            return 0;
        }
        ErrorKind::InvalidSubcommand => {
            let name = argv.first().map(String::as_str).unwrap_or("");
            let _ = io
                .stderr
                .write_all(
                    format!(
                        "draupnir: unknown command `{}`; `ssh draupnir help` lists the commands\n",
                        format::one_line(name, 60)
                    )
                    .as_bytes(),
                )
                .await;
            return 2;
        }
        _ => {}
    }
    let rendered = e.render().to_string();
    // clap's message up to its usage block, as one line.
    let problem = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .replace(
            "the following required arguments were not provided: ",
            "missing ",
        )
        .replace(
            "the following required argument was not provided: ",
            "missing ",
        )
        .to_string();
    let usage = argv
        .first()
        .and_then(|name| {
            let mut cmd = Cli::command();
            cmd.build();
            let sub = cmd.find_subcommand_mut(name)?;
            Some(
                sub.render_usage()
                    .to_string()
                    .trim_start_matches("Usage: ")
                    .to_string(),
            )
        })
        .unwrap_or_else(|| "ssh draupnir COMMAND [ARGS]".into());
    let _ = io
        .stderr
        .write_all(format!("draupnir: {problem}; usage: {usage}\n").as_bytes())
        .await;
    2
}

async fn read_stdin(
    stdin: &mut (dyn AsyncRead + Unpin + Send),
    what: &str,
) -> Result<String, Failure> {
    let mut buf = Vec::new();
    let mut limited = stdin.take(MAX_STDIN as u64 + 1);
    limited.read_to_end(&mut buf).await?;
    if buf.len() > MAX_STDIN {
        return Err(Failure::Usage(format!(
            "{what} on stdin is larger than {}",
            size(MAX_STDIN as u64)
        )));
    }
    String::from_utf8(buf).map_err(|_| Failure::Usage(format!("{what} on stdin is not UTF-8")))
}

fn ssh_target(session: &Session) -> (String, String) {
    let port = session.ssh_port;
    let host = session.service.config().public_hostname.clone();
    if port == 22 {
        (String::new(), host)
    } else {
        (format!(" -P {port}"), host)
    }
}

async fn dispatch(
    session: &Session,
    cmd: Cmd,
    stdin: &mut (dyn AsyncRead + Unpin + Send),
    out: Out<'_>,
) -> Result<(), Failure> {
    let svc = &session.service;
    let me = &session.actor;
    let hostname = svc.config().public_hostname.clone();
    match cmd {
        Cmd::Help => say(out, OVERVIEW).await,
        Cmd::Version => say(out, format!("draupnir {}\n", env!("CARGO_PKG_VERSION"))).await,
        Cmd::Images { json } => {
            let images = svc.list_images(me)?;
            if json {
                return say_json(
                    out,
                    &json!(images.iter().map(format::image_json).collect::<Vec<_>>()),
                )
                .await;
            }
            let rows: Vec<Vec<String>> = images
                .iter()
                .map(|i| {
                    vec![
                        i.id.to_string(),
                        i.state.as_str().into(),
                        i.pg_major
                            .map(|m| m.to_string())
                            .unwrap_or_else(|| "-".into()),
                        size(i.size_bytes),
                        i.backed_up_at.map(age).unwrap_or_else(|| "-".into()),
                        age(i.created_at),
                        i.failure_reason
                            .as_deref()
                            .map(|r| format::one_line(r, 70))
                            .unwrap_or_default(),
                    ]
                })
                .collect();
            say(
                out,
                table(
                    &[
                        "ID",
                        "STATE",
                        "PG",
                        "SIZE",
                        "BACKED UP",
                        "CREATED",
                        "REASON",
                    ],
                    &rows,
                ),
            )
            .await
        }
        Cmd::Image { id, json } => {
            let i = svc.image(me, id)?;
            if json {
                return say_json(out, &format::image_json(&i)).await;
            }
            let mut text = format!(
                "image     {}\nstate     {}\npostgres  {}\nsize      {}\nbacked up {}\ncreated   {} ({})\n",
                i.id,
                i.state.as_str(),
                i.pg_major.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
                size(i.size_bytes),
                i.backed_up_at.map(format_ts).unwrap_or_else(|| "-".into()),
                format_ts(i.created_at),
                age(i.created_at),
            );
            if let Some(r) = &i.failure_reason {
                text.push_str(&format!("reason    {r}\n"));
            }
            say(out, text).await
        }
        Cmd::NewImage {
            backed_up_at,
            script,
            json,
        } => {
            let backed_up_at = match backed_up_at {
                None => None,
                Some(s) => Some(
                    time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                        .map_err(|_| {
                            Failure::Usage(format!(
                                "--backed-up-at `{}` is not an RFC 3339 time like 2026-11-21T02:00:00Z",
                                format::one_line(&s, 40)
                            ))
                        })?,
                ),
            };
            let script = match script.as_deref() {
                Some("-") => Some(read_stdin(stdin, "the script").await?),
                Some(s) => Some(s.to_string()),
                None => None,
            };
            let image = svc.create_image(me, backed_up_at, script.as_deref())?;
            if json {
                return say_json(out, &format::image_json(&image)).await;
            }
            let (port, host) = ssh_target(session);
            say(
                out,
                format!(
                    "image {id} created; upload a backup into it:\n  scp{port} backup.tar.gz {host}:images/{id}\nthen seal it:\n  ssh{p2} {host} finalise-image {id}\n",
                    id = image.id,
                    p2 = port.replace("-P", "-p"),
                ),
            )
            .await
        }
        Cmd::UploadImage { id } => {
            let report = svc
                .ingest(me, id, UploadTarget::Stream, &mut *stdin)
                .await?;
            say(
                out,
                format!(
                    "uploaded {} in {} entries into image {id}\n",
                    size(report.bytes_written),
                    report.entries
                ),
            )
            .await
        }
        Cmd::FinaliseImage { id, detach, json } => finalise(session, id, detach, json, out).await,
        Cmd::ResetUpload { id } => {
            svc.reset_upload(me, id)?;
            say(
                out,
                format!("image {id} is empty and accepts uploads again\n"),
            )
            .await
        }
        Cmd::DestroyImage { id, force } => {
            svc.destroy_image(me, id, force).await?;
            say(out, format!("image {id} destroyed\n")).await
        }
        Cmd::Instances { all, json } => {
            let list = svc.list_instances(me, all)?;
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
                        format::disk_use(disk.get(&i.id)),
                    ]
                })
                .collect();
            say(
                out,
                table(
                    &["ID", "IMAGE", "STATE", "PORT", "OWNER", "CREATED", "DISK"],
                    &rows,
                ),
            )
            .await
        }
        Cmd::NewInstance { image, ttl, json } => {
            let which = if image == "latest" {
                InstanceRef::Latest
            } else {
                InstanceRef::Id(parse_id(&image).map_err(|e| {
                    Failure::Usage(format!("{e}; usage: new-instance IMAGE_ID|latest"))
                })?)
            };
            let info = svc
                .create_instance_with(
                    me,
                    which,
                    crate::core::NewInstance {
                        ttl,
                        ..Default::default()
                    },
                )
                .await?;
            record(session, info.instance.id);
            if json {
                return say_json(out, &format::instance_json(&info.instance, &info.host)).await;
            }
            let (port, host) = ssh_target(session);
            let ssh = format!("ssh{} {host}", port.replace("-P", "-p"));
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
                        .map(|e| format!(" until {} ({})", format_ts(e), age(e)))
                        .unwrap_or_default(),
                ),
            )
            .await
        }
        Cmd::Instance { id, json } => {
            let i = svc.instance(me, id)?;
            let addrs = svc.allowed_addresses(me, id)?;
            if json {
                let mut v = format::instance_json(&i, &hostname);
                v["allowed_addresses"] = json!(addrs);
                return say_json(out, &v).await;
            }
            let mut text = format!(
                "instance  {}\nimage     {}\nstate     {}\nhost      {hostname}\nport      {}\nowner     {}\ncreated   {} ({})\nallowed   {}\n",
                i.id,
                i.image_id,
                i.state.as_str(),
                i.port,
                i.owner_name,
                format_ts(i.created_at),
                age(i.created_at),
                if addrs.is_empty() { "-".to_string() } else { addrs.join(", ") },
            );
            if let Some(r) = &i.failure_reason {
                text.push_str(&format!("reason    {r}\n"));
            }
            say(out, text).await
        }
        Cmd::Env { id, json } => {
            let info = svc.instance_credentials(me, id)?;
            record(session, id);
            if json {
                return say_json(
                    out,
                    &json!({
                        "id": id,
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
            say(out, env_script(&info)).await
        }
        Cmd::AllowIp { id, address } => {
            let a = svc.allow_address(me, id, address)?;
            say(out, format!("{a} may now reach instance {id}\n")).await
        }
        Cmd::DisallowIp { id, address } => {
            svc.disallow_address(me, id, address)?;
            say(
                out,
                format!("{address} may no longer reach instance {id}\n"),
            )
            .await
        }
        Cmd::ExtendInstance { id, by } => {
            let until = svc.extend_instance(me, id, by)?;
            say(
                out,
                format!(
                    "instance {id} now lives until {} ({})\n",
                    format_ts(until),
                    age(until)
                ),
            )
            .await
        }
        Cmd::Status { json } => {
            let st = svc.status()?;
            if json {
                return say_json(out, &serde_json::to_value(&st).unwrap_or_default()).await;
            }
            let newest = match (st.newest_ready_image, st.newest_ready_image_age_seconds) {
                (Some(id), Some(secs)) => format!(
                    "image {id}, ready {}",
                    age(time::OffsetDateTime::now_utc() - time::Duration::seconds(secs))
                ),
                _ => "none ready".into(),
            };
            say(
                out,
                format!(
                    "status     {}\nnewest     {newest}\nexpected   {}\nimages     {}\ninstances  {}\nwarm       {}\n",
                    st.status,
                    st.expected_image_interval_seconds
                        .map(|s| format!("a new image every {}h", s / 3600))
                        .unwrap_or_else(|| "not set (expected_image_interval)".into()),
                    st.images,
                    st.instances,
                    st.warm_instances
                ),
            )
            .await
        }
        Cmd::ResetInstance { id } => {
            let started = std::time::Instant::now();
            svc.reset_instance(me, id).await?;
            say(
                out,
                format!(
                    "instance {id} is back to its image ({} ms); same port and credentials\n",
                    started.elapsed().as_millis()
                ),
            )
            .await
        }
        Cmd::DestroyInstance { id } => {
            svc.destroy_instance(me, id).await?;
            say(out, format!("instance {id} destroyed\n")).await
        }
        Cmd::Whoami { json } => {
            let u = svc.whoami(me)?;
            let keys = svc.list_keys(me, Some(&u.name))?.len();
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
        Cmd::Users { json } => {
            let users = svc.list_users(me)?;
            if json {
                return say_json(
                    out,
                    &json!(users.iter().map(format::user_json).collect::<Vec<_>>()),
                )
                .await;
            }
            let keys = svc.list_keys(me, None)?;
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
        Cmd::AddUser { name, admin, email } => {
            let u = svc.add_user(me, &name, email.as_deref(), admin)?;
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
        Cmd::RemoveUser { name } => {
            svc.remove_user(me, &name).await?;
            say(out, format!("user {name} removed\n")).await
        }
        Cmd::AddKey { user } => {
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
                let fp = svc.add_key(me, &user, line)?;
                added.push_str(&format!("key {fp} added to {user}\n"));
            }
            say(out, added).await
        }
        Cmd::RemoveKey { fingerprint } => {
            svc.remove_key(me, &fingerprint)?;
            say(out, format!("key {fingerprint} removed\n")).await
        }
        Cmd::Keys { user, json } => {
            let keys = svc.list_keys(me, user.as_deref())?;
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
        Cmd::Token { json } => {
            let token = svc.mint_token(me)?;
            if json {
                return say_json(out, &json!({ "token": token })).await;
            }
            say(
                out,
                format!(
                    "{token}\n# Shown once. Use it as: Authorization: Bearer <token> (with Draupnir-Version: {})\n",
                    svc.config().http.api_version
                ),
            )
            .await
        }
    }
}

/// Remember the client's address for the allow-list; never fails the
/// command.
fn record(session: &Session, id: InstanceId) {
    if let Some(peer) = session.peer {
        if let Err(e) = session.service.record_address(&session.actor, id, peer) {
            tracing::debug!(instance = %id, error = %e, "address not recorded");
        }
    }
}

async fn finalise(
    session: &Session,
    id: ImageId,
    detach: bool,
    json: bool,
    out: Out<'_>,
) -> Result<(), Failure> {
    let svc = &session.service;
    if detach {
        return match svc.start_finalise(&session.actor, id, None)? {
            Finalising::AlreadyReady(i) if json => say_json(out, &format::image_json(&i)).await,
            Finalising::AlreadyReady(_) => say(out, format!("image {id} is already ready\n")).await,
            Finalising::Started(_) => {
                say(
                    out,
                    format!("finalising image {id} in the background; follow with: ssh draupnir image {id}\n"),
                )
                .await
            }
        };
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    let progress: crate::core::FinaliseProgress = Arc::new(move |p| {
        let _ = tx.send(p);
    });
    let work = svc.finalise_image(&session.actor, id, if json { None } else { Some(progress) });
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            res = &mut work => break res,
            Some(p) = rx.recv() => show_progress(&mut *out, p).await?,
        }
    };
    while let Ok(p) = rx.try_recv() {
        show_progress(&mut *out, p).await?;
    }
    let image = result?;
    if json {
        return say_json(out, &format::image_json(&image)).await;
    }
    if image.state == ImageState::Ready {
        say(
            out,
            format!(
                "image {id} is ready (PostgreSQL {}, {}); create an instance with: ssh draupnir new-instance {id}\n",
                image.pg_major.map(|m| m.to_string()).unwrap_or_else(|| "?".into()),
                size(image.size_bytes)
            ),
        )
        .await
    } else {
        Err(Failure::Core(CoreError::InvalidState(format!(
            "image {id} is {}",
            image.state.as_str()
        ))))
    }
}

async fn show_progress(out: Out<'_>, p: Progress) -> Result<(), Failure> {
    match p {
        Progress::Step(s) => say(out, format!("==> {s}\n")).await,
        Progress::Output(line) => say(out, format!("    {line}\n")).await,
        Progress::Done => Ok(()),
    }
}

/// POSIX shell that writes the three PEM files into a fresh private
/// directory and exports what libpq needs.
fn env_script(info: &crate::core::ConnectionInfo) -> String {
    let q = format::sh_quote;
    let id = info.instance.id;
    let mut s = format!(
        "# Draupnir instance {id} (image {}). Use: eval \"$(ssh draupnir env {id})\"\n\
         umask 077\n\
         DRAUPNIR_DIR=\"$(mktemp -d \"${{TMPDIR:-/tmp}}/draupnir-{id}.XXXXXX\")\"\n",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overview_lists_every_command() {
        let cmd = Cli::command();
        for sub in cmd.get_subcommands() {
            let name = sub.get_name();
            assert!(
                OVERVIEW.lines().any(|l| l.trim_start().starts_with(name)),
                "`{name}` missing from the overview"
            );
        }
        Cli::command().debug_assert();
    }
}
