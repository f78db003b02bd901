//! The image commands: `images`, `image`, `new-image`, `upload-image`,
//! `finalise-image` (streaming the core's progress), `suggest-rules`,
//! `reset-upload` and `destroy-image`. Each asks the core and formats its answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncRead;

use super::{read_stdin, say, say_json, Failure, Out, Session};
use crate::core::{Finalising, Image, ImageId, ImageState, NewImage, Progress, UploadTarget};
use crate::ssh::error::Refusal;
use crate::ssh::format::{self, age, size, table};

/// `images [--json]`.
pub(super) async fn list(session: &Session, json: bool, out: Out<'_>) -> Result<(), Failure> {
    let images = session.service.list_images(&session.actor)?;
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
                shown_state(i),
                i.pg_major
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "-".into()),
                size(i.size_bytes),
                i.anonymisation_label().into(),
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
                "MASKING",
                "BACKED UP",
                "CREATED",
                "REASON",
            ],
            &rows,
        ),
    )
    .await
}

/// `image ID [--json]`.
pub(super) async fn show(
    session: &Session,
    id: ImageId,
    json: bool,
    out: Out<'_>,
) -> Result<(), Failure> {
    let i = session.service.image(&session.actor, id)?;
    if json {
        return say_json(out, &format::image_json(&i)).await;
    }
    let mut text =
        format!(
        "image     {}\nstate     {}\npostgres  {}\nsize      {}\nbacked up {}\ncreated   {} ({})\n",
        i.id,
        shown_state(&i),
        i.pg_major.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
        size(i.size_bytes),
        i.backed_up_at.map(format::secs).unwrap_or_else(|| "-".into()),
        format::secs(i.created_at),
        age(i.created_at),
    );
    text.push_str(&format::manifest_lines(&i));
    if let Some(r) = &i.failure_reason {
        text.push_str(&format!("reason    {r}\n"));
    }
    if let Some(files) = session.service.uploaded_files(&session.actor, id)? {
        text.push_str(&format!(
            "holds     {} in {files} file(s); ready to finalise\nnext      ssh draupnir finalise-image {id}\n",
            size(i.size_bytes),
        ));
    }
    say(out, text).await
}

/// An image's state in a table: an upload that ended with data in it is
/// `uploaded (ready to finalise)`, one arriving now `receiving`.
fn shown_state(i: &Image) -> String {
    if i.upload_finished() {
        "uploaded (ready to finalise)".into()
    } else if i.state == ImageState::Uploading && i.upload_active {
        "receiving".into()
    } else {
        i.state.as_str().into()
    }
}

/// `new-image`'s arguments as given.
pub(super) struct NewImageArgs {
    pub backed_up_at: Option<String>,
    pub script: Option<String>,
    pub rules: Option<String>,
    pub no_anonymisation: bool,
}

/// `new-image [--backed-up-at TIME] [--rules FILE|-] [--script SQL|-]
/// [--no-anonymisation] [--json]`.
pub(super) async fn create(
    session: &Session,
    args: NewImageArgs,
    json: bool,
    stdin: &mut (dyn AsyncRead + Unpin + Send),
    out: Out<'_>,
) -> Result<(), Failure> {
    let NewImageArgs {
        backed_up_at,
        script,
        rules,
        no_anonymisation,
    } = args;
    if script.as_deref() == Some("-") && rules.as_deref() == Some("-") {
        return Err(Failure::Usage(
            "--script - and --rules - cannot both read stdin; give one of them inline or as a file"
                .into(),
        ));
    }
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
    let rules = match rules.as_deref() {
        Some("-") => Some(read_stdin(stdin, "the rules").await?),
        Some(path) => Some(session.service.read_rules_file(&session.actor, path)?),
        None => None,
    };
    let image = session.service.create_image(
        &session.actor,
        NewImage {
            backed_up_at,
            script,
            rules,
            no_anonymisation,
        },
    )?;
    if json {
        return say_json(out, &format::image_json(&image)).await;
    }
    say(
        out,
        format!(
            "image {id} created; upload a backup into it:\n  scp backup.tar.gz draupnir:images/{id}\nthen seal it:\n  ssh draupnir finalise-image {id}\n",
            id = image.id,
        ),
    )
    .await
}

/// `upload-image ID [--progress]`: the archive comes on stdin; a one-line
/// summary (and with `--progress` a line a second) goes to stderr.
pub(super) async fn upload(
    session: &Session,
    id: ImageId,
    progress: bool,
    stdin: &mut (dyn AsyncRead + Unpin + Send),
    err: Out<'_>,
) -> Result<(), Failure> {
    let started = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let reader = Counted {
        inner: &mut *stdin,
        count: received.clone(),
    };
    let work = session
        .service
        .ingest(&session.actor, id, UploadTarget::Stream, reader);
    tokio::pin!(work);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let report = loop {
        tokio::select! {
            r = &mut work => break r?,
            _ = tick.tick(), if progress => {
                let got = received.load(Ordering::Relaxed);
                say(&mut *err, format!(
                    "received {} ({})\n",
                    size(got),
                    format::rate(got, started.elapsed())
                ))
                .await?;
            }
        }
    };
    let took = started.elapsed();
    tracing::info!(
        image = %id,
        user = %session.actor.name(),
        bytes = report.bytes_written,
        entries = report.entries,
        ms = took.as_millis() as u64,
        "upload-image finished"
    );
    say(
        err,
        format!(
            "uploaded {} ({} entries) into image {id} in {} ({}); ready to finalise: ssh draupnir finalise-image {id}\n",
            size(report.bytes_written),
            report.entries,
            format::elapsed(took),
            format::rate(report.bytes_in, took),
        ),
    )
    .await
}

/// A reader that counts what passes through it.
struct Counted<'a> {
    inner: &'a mut (dyn AsyncRead + Unpin + Send),
    count: Arc<AtomicU64>,
}

impl AsyncRead for Counted<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.count.fetch_add(n, Ordering::Relaxed);
        r
    }
}

/// `finalise-image ID [--detach] [--json]` (alias `done`).
pub(super) async fn finalise(
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
    let image = streamed(&mut *out, json, |progress| {
        svc.finalise_image(&session.actor, id, progress)
    })
    .await?;
    sealed(out, image, json).await
}

/// Run `work` (a finalise, a refresh), streaming its progress to `out`
/// as it goes (not with `--json`).
pub(super) async fn streamed<F>(
    out: Out<'_>,
    json: bool,
    work: impl FnOnce(Option<crate::core::FinaliseProgress>) -> F,
) -> Result<Image, Failure>
where
    F: std::future::Future<Output = crate::core::Result<Image>>,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    let progress: crate::core::FinaliseProgress = Arc::new(move |p| {
        let _ = tx.send(p);
    });
    let work = work(if json { None } else { Some(progress) });
    tokio::pin!(work);
    let mut step = StepClock::default();
    let second = Duration::from_secs(1);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + second, second);
    let result = loop {
        tokio::select! {
            res = &mut work => break res,
            Some(p) = rx.recv() => step.show(&mut *out, p).await?,
            _ = tick.tick() => step.still_running(&mut *out).await?,
        }
    };
    while let Ok(p) = rx.try_recv() {
        step.show(&mut *out, p).await?;
    }
    step.end(&mut *out).await?;
    Ok(result?)
}

/// The end of a finalise or refresh: the image, or why it is not ready.
pub(super) async fn sealed(out: Out<'_>, image: Image, json: bool) -> Result<(), Failure> {
    let id = image.id;
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
        Err(Failure::Core(Refusal::failed(format!(
            "image {id} is {}",
            image.state.as_str()
        ))))
    }
}

/// How often a step that runs long says it still does.
const STILL_RUNNING: Duration = Duration::from_secs(10);

/// Finalise's progress as the SSH door shows it: each step, what the
/// script prints, how long each step took, and "still running" every
/// [`STILL_RUNNING`] while a step goes on.
#[derive(Default)]
struct StepClock {
    started: Option<Instant>,
    /// "Still running" notes the open step has had.
    notes: u32,
}

impl StepClock {
    async fn show(&mut self, out: Out<'_>, p: Progress) -> Result<(), Failure> {
        match p {
            Progress::Step(s) => {
                self.end(&mut *out).await?;
                self.started = Some(Instant::now());
                self.notes = 0;
                say(out, format!("==> {s}\n")).await
            }
            Progress::Output(line) => say(out, format!("    {line}\n")).await,
            Progress::Done => self.end(out).await,
        }
    }

    /// The open step's time, once.
    async fn end(&mut self, out: Out<'_>) -> Result<(), Failure> {
        match self.started.take() {
            Some(t) => say(out, format!("    took {}\n", format::elapsed(t.elapsed()))).await,
            None => Ok(()),
        }
    }

    async fn still_running(&mut self, out: Out<'_>) -> Result<(), Failure> {
        match self.started {
            Some(t) if t.elapsed() >= STILL_RUNNING * (self.notes + 1) => {
                self.notes += 1;
                say(
                    out,
                    format!("    still running ({}s)\n", t.elapsed().as_secs()),
                )
                .await
            }
            _ => Ok(()),
        }
    }
}

/// `suggest-rules ID`: the rules file on stdout (`> rules.toml`).
pub(super) async fn suggest_rules(
    session: &Session,
    id: ImageId,
    out: Out<'_>,
) -> Result<(), Failure> {
    let text = session
        .service
        .suggest_rules(&session.actor, id, None)
        .await?;
    say(out, text).await
}

/// `reset-upload ID`.
pub(super) async fn reset_upload(
    session: &Session,
    id: ImageId,
    out: Out<'_>,
) -> Result<(), Failure> {
    session.service.reset_upload(&session.actor, id)?;
    say(
        out,
        format!("image {id} is empty and accepts uploads again\n"),
    )
    .await
}

/// `destroy-image ID [--force]`.
pub(super) async fn destroy(
    session: &Session,
    id: ImageId,
    force: bool,
    out: Out<'_>,
) -> Result<(), Failure> {
    session
        .service
        .destroy_image(&session.actor, id, force)
        .await?;
    say(out, format!("image {id} destroyed\n")).await
}
