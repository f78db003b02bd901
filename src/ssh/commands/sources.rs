//! The commands about production sources: `sources` (each one's state,
//! lag and last refresh, from the core) and `refresh-image NAME`
//! (streaming the refresh's progress like `finalise-image`).

use super::images::{sealed, streamed};
use super::{say, say_json, Failure, Out, Session};
use crate::ssh::format::{self, age, size};

/// `sources [--json]`.
pub(super) async fn list(
    session: &Session,
    json: bool,
    out: Out<'_>,
    err: Out<'_>,
) -> Result<(), Failure> {
    let views = session.service.sources(&session.actor)?;
    if json {
        let all: Vec<_> = views.iter().map(|v| v.summary()).collect();
        return say_json(out, &serde_json::to_value(all).unwrap_or_default()).await;
    }
    if views.is_empty() {
        return say(
            err,
            "no sources are configured; add a [sources.NAME] section (README: Following production)\n",
        )
        .await;
    }
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            let s = v.summary();
            let lag = match (s.lag_seconds, s.lag_bytes) {
                (Some(secs), Some(b)) => format!("{secs:.0}s ({})", size(b)),
                (Some(secs), None) => format!("{secs:.0}s"),
                (None, Some(b)) => size(b),
                (None, None) => "-".into(),
            };
            let last = match &v.last_refresh {
                Some(i) => format!("image {} {}", i.id, age(i.created_at)),
                None => "never".into(),
            };
            let state = match &s.reason {
                Some(r) => format!("{}: {}", s.state, format::one_line(r, 120)),
                None => s.state.to_string(),
            };
            vec![
                s.name,
                s.primary,
                state,
                lag,
                last,
                s.refresh_schedule.unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    say(
        out,
        format::table(
            &[
                "NAME",
                "PRIMARY",
                "STATE",
                "LAG",
                "LAST REFRESH",
                "SCHEDULE",
            ],
            &rows,
        ),
    )
    .await
}

/// `refresh-image NAME [--force] [--json]`.
pub(super) async fn refresh(
    session: &Session,
    name: &str,
    force: bool,
    json: bool,
    out: Out<'_>,
) -> Result<(), Failure> {
    let svc = &session.service;
    let image = streamed(&mut *out, json, |progress| {
        svc.refresh_image(&session.actor, name, force, progress)
    })
    .await?;
    sealed(out, image, json).await
}
