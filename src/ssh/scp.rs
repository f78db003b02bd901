//! The `scp -O` (legacy protocol) sink: `scp -t [-d] [-r] [-p] [-v] TARGET`.
//! Records from the client become core calls: `C` files stream through
//! [`crate::core::Upload`] as they arrive (never buffered whole), `D`/`E`
//! records create directories, `T` records are acknowledged and ignored.
//! Targets resolve in the virtual tree of [`super::paths`]; names with `/`
//! or `..` are refused. An error is `\x01scp: message\n` and exit status 1.

use std::path::PathBuf;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::error::Refusal;
use super::format::{self, size};
use super::paths::{self, VPath};
use super::session::Session;
use crate::core::{CoreError, ImageId, UploadTarget};

/// Longest record line accepted.
const MAX_LINE: usize = 4096;
/// Largest chunk handed to the core at once.
const CHUNK: usize = 256 * 1024;

struct Flags {
    sink: bool,
    dir: bool,
    recursive: bool,
}

/// Why the transfer stopped.
enum Stop {
    /// Tell the client (`\x01scp: …`).
    Refuse(String),
    /// The client reported an error or went away; nothing more to say.
    Quiet,
}

impl From<CoreError> for Stop {
    fn from(e: CoreError) -> Self {
        Stop::Refuse(Refusal::from(e).into_message())
    }
}

impl From<paths::PathError> for Stop {
    fn from(e: paths::PathError) -> Self {
        Stop::Refuse(e.to_string())
    }
}

/// What one `scp` run received.
#[derive(Default)]
struct Totals {
    files: u64,
    bytes: u64,
}

/// Run the sink for `scp` with `args` (everything after `scp`); returns the
/// exit status. A run that received files ends with one summary line on
/// stderr and one in the log.
pub async fn sink(
    session: &Session,
    args: &[String],
    stdin: &mut (dyn AsyncRead + Unpin + Send),
    stdout: &mut (dyn AsyncWrite + Unpin + Send),
    stderr: &mut (dyn AsyncWrite + Unpin + Send),
) -> u32 {
    let mut input = BufReader::with_capacity(CHUNK, stdin);
    let started = std::time::Instant::now();
    let mut totals = Totals::default();
    let outcome = match parse_args(args) {
        Ok((flags, target)) => {
            let r = run(session, &flags, &target, &mut input, stdout, &mut totals).await;
            let took = started.elapsed();
            tracing::info!(
                user = %session.actor.name(),
                target = %target,
                files = totals.files,
                bytes = totals.bytes,
                ms = took.as_millis() as u64,
                ok = r.is_ok(),
                "scp upload finished"
            );
            if r.is_ok() && totals.files > 0 {
                let line = format!(
                    "uploaded {} in {} file(s) to {} in {} ({})\n",
                    size(totals.bytes),
                    totals.files,
                    one_line(&target),
                    format::elapsed(took),
                    format::rate(totals.bytes, took)
                );
                let _ = stderr.write_all(line.as_bytes()).await;
            }
            r
        }
        Err(reason) => Err(Stop::Refuse(reason)),
    };
    match outcome {
        Ok(()) => 0,
        Err(Stop::Refuse(msg)) => {
            let line = format!("\x01scp: {}\n", one_line(&msg));
            let _ = stdout.write_all(line.as_bytes()).await;
            let _ = stdout.flush().await;
            1
        }
        Err(Stop::Quiet) => 1,
    }
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1000)
        .collect()
}

fn parse_args(args: &[String]) -> Result<(Flags, String), String> {
    let mut flags = Flags {
        sink: false,
        dir: false,
        recursive: false,
    };
    let mut target = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            target = it.next().cloned();
            if it.next().is_some() {
                return Err("only one target is supported".into());
            }
            break;
        }
        if let Some(opts) = a.strip_prefix('-').filter(|o| !o.is_empty()) {
            for c in opts.chars() {
                match c {
                    't' => flags.sink = true,
                    'd' => flags.dir = true,
                    'r' => flags.recursive = true,
                    'p' | 'v' | 'q' => {}
                    'f' => return Err("downloads are not supported".into()),
                    other => return Err(format!("unsupported option -{other}")),
                }
            }
        } else if target.is_none() {
            target = Some(a.clone());
        } else {
            return Err("only one target is supported".into());
        }
    }
    if !flags.sink {
        return Err("only uploads (scp -t) are supported".into());
    }
    Ok((flags, target.unwrap_or_else(|| ".".into())))
}

/// Read one record line (without its `\n`).
async fn read_line<R: AsyncBufReadExt + Unpin>(input: &mut R) -> Result<Option<String>, Stop> {
    let mut line = Vec::new();
    loop {
        let buf = input.fill_buf().await.map_err(|_| Stop::Quiet)?;
        if buf.is_empty() {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(Stop::Refuse("truncated record".into()))
            };
        }
        if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            line.extend_from_slice(&buf[..pos]);
            input.consume(pos + 1);
            break;
        }
        let n = buf.len();
        line.extend_from_slice(buf);
        input.consume(n);
        if line.len() > MAX_LINE {
            return Err(Stop::Refuse("record line too long".into()));
        }
    }
    if line.len() > MAX_LINE {
        return Err(Stop::Refuse("record line too long".into()));
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| Stop::Refuse("file names must be UTF-8".into()))
}

async fn ack(out: &mut (dyn AsyncWrite + Unpin + Send)) -> Result<(), Stop> {
    out.write_all(b"\0").await.map_err(|_| Stop::Quiet)?;
    out.flush().await.map_err(|_| Stop::Quiet)
}

/// `C0644 1234 name` / `D0755 0 name` → (size, name).
fn parse_record(rest: &str) -> Result<(u64, &str), Stop> {
    let bad = || Stop::Refuse("malformed record".into());
    let mut parts = rest.splitn(3, ' ');
    let mode = parts.next().ok_or_else(bad)?;
    if mode.len() != 4 || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(bad());
    }
    let size = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let name = parts.next().ok_or_else(bad)?;
    if !paths::valid_name(name) {
        return Err(Stop::Refuse(format!(
            "invalid file name `{}`",
            one_line(name)
        )));
    }
    Ok((size, name))
}

async fn run<R: AsyncBufReadExt + Unpin>(
    session: &Session,
    flags: &Flags,
    target: &str,
    input: &mut R,
    out: &mut (dyn AsyncWrite + Unpin + Send),
    totals: &mut Totals,
) -> Result<(), Stop> {
    let target = paths::resolve(target)?;
    let target_is_dir = match &target {
        VPath::Root | VPath::Images => true,
        VPath::Image(id) => {
            session.service.image(&session.actor, *id)?;
            true
        }
        VPath::InImage(..) => flags.dir,
    };
    if flags.dir && !target_is_dir {
        return Err(Stop::Refuse("target is not a directory".into()));
    }
    ack(out).await?;
    // Directories entered with D records; empty = at the target.
    let mut stack: Vec<VPath> = Vec::new();
    loop {
        let Some(line) = read_line(input).await? else {
            return Ok(());
        };
        let Some(kind) = line.chars().next() else {
            return Err(Stop::Refuse("empty record".into()));
        };
        let rest = &line[kind.len_utf8()..];
        match kind {
            'T' => ack(out).await?,
            '\x01' | '\x02' => {
                tracing::info!(message = %one_line(rest), "scp client reported an error");
                return Err(Stop::Quiet);
            }
            'E' => {
                if stack.pop().is_none() {
                    return Err(Stop::Refuse("unbalanced E record".into()));
                }
                ack(out).await?;
            }
            'D' => {
                if !flags.recursive {
                    return Err(Stop::Refuse("received a directory without -r".into()));
                }
                let (_, name) = parse_record(rest)?;
                let dir = place(&target, target_is_dir, &stack, name)?;
                let VPath::InImage(id, rel) = &dir else {
                    return Err(Stop::Refuse(
                        "directories can only be uploaded into images/<id>/".into(),
                    ));
                };
                session.service.upload_mkdir(&session.actor, *id, rel)?;
                stack.push(dir);
                ack(out).await?;
            }
            'C' => {
                let (size, name) = parse_record(rest)?;
                let file = place(&target, target_is_dir, &stack, name)?;
                let (id, rel) = match file {
                    VPath::InImage(id, rel) => (id, rel),
                    VPath::Image(_) => {
                        return Err(Stop::Refuse(format!("{} is a directory", file.display())))
                    }
                    _ => {
                        return Err(Stop::Refuse(
                            "files can only be uploaded into images/<id>/".into(),
                        ))
                    }
                };
                receive_file(session, id, rel, size, input, out).await?;
                totals.files += 1;
                totals.bytes += size;
            }
            _ => return Err(Stop::Refuse("unknown record type".into())),
        }
    }
}

/// Where a record named `name` lands.
fn place(target: &VPath, target_is_dir: bool, stack: &[VPath], name: &str) -> Result<VPath, Stop> {
    match stack.last() {
        Some(dir) => Ok(dir.join_name(name)?),
        None if target_is_dir => Ok(target.join_name(name)?),
        // A file (or top directory) renamed to the target.
        None => Ok(target.clone()),
    }
}

async fn receive_file<R: AsyncBufReadExt + Unpin>(
    session: &Session,
    id: ImageId,
    rel: PathBuf,
    size: u64,
    input: &mut R,
    out: &mut (dyn AsyncWrite + Unpin + Send),
) -> Result<(), Stop> {
    let mut upload = session
        .service
        .begin_upload(&session.actor, id, UploadTarget::File(rel))?;
    ack(out).await?;
    let mut left = size;
    while left > 0 {
        // Hand the core full chunks, not one per SSH packet (OpenSSH's are
        // mostly 32 KiB): fewer wake-ups of the extractor, and no zeroing.
        let want = left.min(CHUNK as u64) as usize;
        let mut buf = Vec::with_capacity(want);
        while buf.len() < want {
            let mut limited = (&mut *input).take((want - buf.len()) as u64);
            let n = limited.read_buf(&mut buf).await.map_err(|_| Stop::Quiet)?;
            if n == 0 {
                // Client went away mid-file: dropping the upload fails the image.
                return Err(Stop::Quiet);
            }
        }
        left -= buf.len() as u64;
        upload.write(buf).await?;
    }
    // The client's end-of-file status byte.
    let status = input.read_u8().await.map_err(|_| Stop::Quiet)?;
    if status != 0 {
        return Err(Stop::Quiet);
    }
    upload.finish().await?;
    ack(out).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        let a = |v: &[&str]| parse_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let (f, t) = a(&["-t", "images/1"]).ok().unwrap();
        assert!(f.sink && !f.dir && !f.recursive);
        assert_eq!(t, "images/1");
        let (f, t) = a(&["-r", "-d", "-t", "--", "images/1/"]).ok().unwrap();
        assert!(f.dir && f.recursive);
        assert_eq!(t, "images/1/");
        assert!(a(&["-f", "images/1"]).is_err());
        assert!(a(&["images/1"]).is_err());
        let (_, t) = a(&["-t"]).ok().unwrap();
        assert_eq!(t, ".");
    }

    #[test]
    fn records() {
        assert!(matches!(
            parse_record("0644 12 base.tar.gz"),
            Ok((12, "base.tar.gz"))
        ));
        assert!(matches!(
            parse_record("0644 12 with space"),
            Ok((12, "with space"))
        ));
        for bad in [
            "0644 12 ../x",
            "0644 12 a/b",
            "0644 x a",
            "644 1 a",
            "0644 1 ..",
            "0644 1",
        ] {
            assert!(parse_record(bad).is_err(), "{bad}");
        }
    }
}
