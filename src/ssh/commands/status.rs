//! The commands about the service itself: `status` (image freshness and
//! counts, from the core) and `version`. (`help` is the overview in
//! [`super::cli`].)

use super::{say, say_json, Failure, Out, Session};
use crate::ssh::format::age;

/// `status [--json]`.
pub(super) async fn status(session: &Session, json: bool, out: Out<'_>) -> Result<(), Failure> {
    let st = session.service.status()?;
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
    .await?;
    for s in &st.sources {
        let lag = s
            .lag_seconds
            .map(|l| format!(", {l:.0}s behind"))
            .unwrap_or_default();
        say(
            &mut *out,
            format!("source     {} {}{lag}\n", s.name, s.state),
        )
        .await?;
    }
    Ok(())
}

/// `version`.
pub(super) async fn version(out: Out<'_>) -> Result<(), Failure> {
    say(out, format!("draupnir {}\n", env!("CARGO_PKG_VERSION"))).await
}
