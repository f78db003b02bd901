//! Doctor's check of each followed source: its password file can be read,
//! its primary answers a replication connection as the configured role,
//! and the primary's PostgreSQL major is installed here. Read-only: it
//! sends `IDENTIFY_SYSTEM` and `SHOW`, nothing else.

use super::{fail, pass, Check};
use crate::config::{Config, SourceConfig, SourceName};
use crate::core::postgres::cluster;
use crate::core::sources::primary::Primary;

pub(super) fn sources(config: &Config) -> Vec<Check> {
    config
        .sources
        .iter()
        .map(|(name, source)| check(config, name, source))
        .collect()
}

fn check(config: &Config, name: &SourceName, source: &SourceConfig) -> Check {
    let what = format!("source {name}");
    if let Some(p) = &source.passfile {
        if let Err(e) = std::fs::File::open(p) {
            return fail(
                &what,
                format!("cannot read its passfile {}: {e}", p.display()),
                "create it (host:port:*:user:password, mode 0600) or fix [sources] passfile",
            );
        }
    }
    let root = &config.postgres.bin_root;
    let majors = cluster::installed_majors(root);
    let Some(newest) = majors.last().copied() else {
        return fail(
            &what,
            "no PostgreSQL installed to reach it with",
            "apt-get install postgresql",
        );
    };
    let psql = match cluster::find_bin(root, newest) {
        Ok(bin) => bin.psql(),
        Err(e) => return fail(&what, e.to_string(), "apt-get install postgresql-client"),
    };
    let primary = Primary {
        conninfo: &source.primary_conninfo,
        passfile: source.passfile.as_deref(),
        psql,
    };
    // On a thread of its own: doctor may be called where a runtime runs.
    let asked = std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(primary.identify()).map_err(|e| e.to_string()))
        })
        .join()
        .unwrap_or_else(|_| Err("the check panicked".into()))
    });
    match asked {
        Err(e) => fail(
            &what,
            format!("its primary does not answer a replication connection: {e}"),
            "check primary_conninfo, the passfile, the role's REPLICATION and the primary's pg_hba.conf replication line (README: Following production)",
        ),
        Ok(who) if !majors.contains(&who.major) => fail(
            &what,
            format!("its primary runs PostgreSQL {}, which is not installed here", who.major),
            format!("apt-get install postgresql-{}", who.major),
        ),
        Ok(who) => pass(
            &what,
            format!(
                "primary {} (PostgreSQL {}) answers as {}; its WAL is at {}",
                source.primary_conninfo.target(),
                who.major,
                source.primary_conninfo.user(),
                who.lsn
            ),
        ),
    }
}
