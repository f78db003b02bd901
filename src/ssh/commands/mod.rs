//! `ssh draupnir <command> [args]`: the command set of DESIGN.md.
//!
//! Each command parses its arguments, calls the core as the authenticated
//! [`Actor`](crate::core::Actor), and writes a table (or `--json`) to
//! stdout; errors are one line on stderr and a non-zero exit status (1:
//! the core refused or failed; 2: bad usage).
//!
//! This module owns the plumbing: [`run`] parses the line ([`cli`]), hands
//! the command to [`dispatch`] (one line per command), and turns a
//! [`Failure`] into stderr and an exit status. The commands themselves
//! live by noun: [`images`], [`instances`], [`users`] (users, keys,
//! tokens), [`sources`] (sources, refresh-image) and [`status`] (status,
//! version).

mod cli;
mod images;
mod instances;
mod sources;
mod status;
mod users;

use clap::{CommandFactory, Parser};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::Refusal;
use super::format::{self, size};
use cli::{Cli, Cmd, OVERVIEW};

pub use super::session::Session;

/// The channel's three streams.
pub struct Io<'a> {
    pub stdin: &'a mut (dyn AsyncRead + Unpin + Send),
    pub stdout: &'a mut (dyn AsyncWrite + Unpin + Send),
    pub stderr: &'a mut (dyn AsyncWrite + Unpin + Send),
}

/// Most bytes read from stdin for a script or a key.
const MAX_STDIN: usize = 1 << 20;

/// What a command ends with.
enum Failure {
    /// The core refused or failed (or the command's outcome is a failure).
    Core(Refusal),
    /// Bad input to the command itself.
    Usage(String),
    /// The client went away.
    Io,
}

impl From<crate::core::CoreError> for Failure {
    fn from(e: crate::core::CoreError) -> Self {
        Failure::Core(Refusal::from(e))
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
        None | Some(Cmd::Help { command: None }) => say(&mut *stdout, OVERVIEW).await,
        // `help COMMAND` is `COMMAND --help` (or the unknown command's
        // one-line error, with clap's suggestion).
        Some(Cmd::Help {
            command: Some(name),
        }) => {
            let io = Io {
                stdin,
                stdout,
                stderr,
            };
            return match Cli::try_parse_from([name.as_str(), "--help"]) {
                Err(e) => usage_error(std::slice::from_ref(&name), e, io).await,
                Ok(_) => 0,
            };
        }
        // The token alone on stdout, its hint on stderr.
        Some(Cmd::Token { json }) => users::token(session, json, &mut *stdout, &mut *stderr).await,
        Some(cmd) => dispatch(session, cmd, stdin, &mut *stdout, &mut *stderr).await,
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
        Err(Failure::Core(refusal)) => {
            let _ = stderr.write_all(refusal.command_line().as_bytes()).await;
            refusal.exit_status()
        }
    }
}

/// One command, to the function that runs it.
async fn dispatch(
    s: &Session,
    cmd: Cmd,
    stdin: &mut (dyn AsyncRead + Unpin + Send),
    out: Out<'_>,
    err: Out<'_>,
) -> Result<(), Failure> {
    match cmd {
        Cmd::Help { .. } => say(out, OVERVIEW).await,
        Cmd::Version => status::version(out).await,
        Cmd::Status { json } => status::status(s, json, out).await,
        Cmd::Sources { json } => sources::list(s, json, out, err).await,
        Cmd::RefreshImage { name, force, json } => {
            sources::refresh(s, &name, force, json, out).await
        }
        Cmd::Images { json } => images::list(s, json, out).await,
        Cmd::Image { id, json } => images::show(s, id, json, out).await,
        Cmd::NewImage {
            backed_up_at,
            script,
            rules,
            no_anonymisation,
            json,
        } => {
            let new = images::NewImageArgs {
                backed_up_at,
                script,
                rules,
                no_anonymisation,
            };
            images::create(s, new, json, stdin, out).await
        }
        Cmd::SuggestRules { id } => images::suggest_rules(s, id, out).await,
        Cmd::UploadImage { id, progress } => images::upload(s, id, progress, stdin, err).await,
        Cmd::FinaliseImage { id, detach, json } => images::finalise(s, id, detach, json, out).await,
        Cmd::ResetUpload { id } => images::reset_upload(s, id, out).await,
        Cmd::DestroyImage { id, force } => images::destroy(s, id, force, out).await,
        Cmd::Instances { all, json } => instances::list(s, all, json, out, err).await,
        Cmd::NewInstance { image, ttl, json } => instances::create(s, image, ttl, json, out).await,
        Cmd::Instance { id, json } => instances::show(s, id, json, out).await,
        Cmd::Env { id, dir, json } => instances::env(s, id, dir, json, out).await,
        Cmd::AllowIp { id, address } => instances::allow_ip(s, id, address, out).await,
        Cmd::DisallowIp { id, address } => instances::disallow_ip(s, id, address, out).await,
        Cmd::ExtendInstance { id, by } => instances::extend(s, id, by, out).await,
        Cmd::ResetInstance { id } => instances::reset(s, id, out).await,
        Cmd::DestroyInstance { id } => instances::destroy(s, id, out).await,
        Cmd::Whoami { json } => users::whoami(s, json, out).await,
        Cmd::Users { json } => users::list(s, json, out).await,
        Cmd::AddUser { name, admin, email } => {
            users::add(s, &name, admin, email.as_deref(), out).await
        }
        Cmd::RemoveUser { name } => users::remove(s, &name, out).await,
        Cmd::AddKey { user } => users::add_key(s, &user, stdin, out).await,
        Cmd::RemoveKey { fingerprint } => users::remove_key(s, &fingerprint, out).await,
        Cmd::Keys { user, json } => users::keys(s, user.as_deref(), json, out).await,
        // `run` answers `token` itself, with its hint on stderr.
        Cmd::Token { json } => users::token(s, json, out, &mut tokio::io::sink()).await,
        Cmd::Tokens { all, json } => users::tokens(s, all, json, out).await,
        Cmd::RevokeToken { id } => users::revoke_token(s, id, out).await,
    }
}

async fn usage_error(argv: &[String], e: clap::Error, io: Io<'_>) -> u32 {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = io.stdout.write_all(e.render().to_string().as_bytes()).await;
            return 0;
        }
        ErrorKind::InvalidSubcommand => {
            let name = argv.first().map(String::as_str).unwrap_or("");
            let hint = match suggestion(&e, ContextKind::SuggestedSubcommand) {
                Some(s) => format!("did you mean `{s}`?"),
                None => "`ssh draupnir help` lists the commands".into(),
            };
            let _ = io
                .stderr
                .write_all(
                    format!(
                        "draupnir: unknown command `{}`; {hint}\n",
                        format::one_line(name, 60)
                    )
                    .as_bytes(),
                )
                .await;
            return 2;
        }
        _ => {}
    }
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
    if let (ErrorKind::UnknownArgument, Some(ContextValue::String(arg))) =
        (e.kind(), e.get(ContextKind::InvalidArg))
    {
        let what = if arg.starts_with('-') {
            "unknown option"
        } else {
            "unexpected argument"
        };
        let hint = suggestion(&e, ContextKind::SuggestedArg)
            .map(|s| format!("did you mean `{s}`? "))
            .unwrap_or_default();
        let _ = io
            .stderr
            .write_all(
                format!(
                    "draupnir: {what} `{}`; {hint}usage: {usage}\n",
                    format::one_line(arg, 60)
                )
                .as_bytes(),
            )
            .await;
        return 2;
    }
    let rendered = e.render().to_string();
    // clap's message up to its usage block, as one line.
    let problem = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("tip:") && !l.starts_with("For more information")
        })
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
    let _ = io
        .stderr
        .write_all(format!("draupnir: {problem}; usage: {usage}\n").as_bytes())
        .await;
    2
}

/// What clap suggests instead (a command, an option), if anything: the
/// closest (clap lists the candidates closest last).
fn suggestion(e: &clap::Error, kind: clap::error::ContextKind) -> Option<String> {
    use clap::error::ContextValue;
    match e.get(kind)? {
        ContextValue::String(s) => Some(s.clone()),
        ContextValue::Strings(v) => v.last().cloned(),
        _ => None,
    }
    .map(|s| format::one_line(&s, 60))
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
