//! Talking to a source's primary: the replication protocol's own
//! commands (`IDENTIFY_SYSTEM`, `SHOW`, `CREATE_REPLICATION_SLOT`,
//! `DROP_REPLICATION_SLOT`) sent by `psql` over a replication connection
//! as the configured role, which needs nothing more than `REPLICATION`
//! and a `replication` line in the primary's `pg_hba.conf`. Errors are
//! told apart by their SQLSTATE (`VERBOSITY=sqlstate`), never by text.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Conninfo, SlotName};

use super::lsn::Lsn;

/// Why the primary could not be asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PrimaryError {
    #[error("cannot run psql: {0}")]
    Exec(String),
    /// libpq or the server refused; `reason` is psql's first line.
    #[error("{target}: {reason}")]
    Refused { target: String, reason: String },
    #[error("{target}: unexpected answer to {command}")]
    Answer {
        target: String,
        command: &'static str,
    },
}

/// What the primary says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its PostgreSQL major version.
    pub major: u32,
    /// Its current WAL flush position.
    pub lsn: Lsn,
    /// The system identifier (a standby must share it).
    pub system_id: String,
}

/// How to reach one primary.
pub struct Primary<'a> {
    pub conninfo: &'a Conninfo,
    /// The standby's private copy of the password file (None: none given).
    pub passfile: Option<&'a Path>,
    /// `psql` of the newest installed major (it speaks to older servers).
    pub psql: PathBuf,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Primary<'_> {
    /// Run replication commands; stdout on success.
    async fn run(&self, commands: &[&str]) -> Result<Result<String, Option<String>>, PrimaryError> {
        let mut extra = vec![("replication", "true")];
        let timeout = CONNECT_TIMEOUT.as_secs().to_string();
        extra.push(("connect_timeout", &timeout));
        extra.push(("application_name", "draupnir"));
        let mut cmd = tokio::process::Command::new(&self.psql);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LC_ALL", "C")
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-v",
                "VERBOSITY=sqlstate",
            ])
            .arg("-d")
            .arg(self.conninfo.render(&extra))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(p) = self.passfile {
            cmd.env("PGPASSFILE", p);
        } else {
            cmd.env("PGPASSFILE", "/dev/null");
        }
        for c in commands {
            cmd.arg("-c").arg(c);
        }
        let out = tokio::time::timeout(CONNECT_TIMEOUT * 3, cmd.output())
            .await
            .map_err(|_| PrimaryError::Refused {
                target: self.conninfo.target(),
                reason: "no answer in 30s".into(),
            })?
            .map_err(|e| PrimaryError::Exec(e.to_string()))?;
        if out.status.success() {
            return Ok(Ok(String::from_utf8_lossy(&out.stdout).into_owned()));
        }
        let err = String::from_utf8_lossy(&out.stderr);
        // `ERROR:  42710` with VERBOSITY=sqlstate; a connection failure
        // has no code.
        let code = err
            .lines()
            .filter_map(|l| l.rsplit_once("ERROR:").map(|(_, c)| c.trim()))
            .find(|c| c.len() == 5 && c.chars().all(|ch| ch.is_ascii_alphanumeric()))
            .map(str::to_owned);
        if code.is_some() {
            return Ok(Err(code));
        }
        Err(PrimaryError::Refused {
            target: self.conninfo.target(),
            reason: first_line(&err),
        })
    }

    fn refused(&self, code: Option<String>) -> PrimaryError {
        PrimaryError::Refused {
            target: self.conninfo.target(),
            reason: format!("refused (SQLSTATE {})", code.unwrap_or_default()),
        }
    }

    /// `IDENTIFY_SYSTEM` and the server's version.
    pub async fn identify(&self) -> Result<Identity, PrimaryError> {
        let out = self
            .run(&["IDENTIFY_SYSTEM", "SHOW server_version_num"])
            .await?
            .map_err(|c| self.refused(c))?;
        let answer = || PrimaryError::Answer {
            target: self.conninfo.target(),
            command: "IDENTIFY_SYSTEM",
        };
        let mut lines = out.lines().filter(|l| !l.trim().is_empty());
        let ident: Vec<&str> = lines.next().ok_or_else(answer)?.split('|').collect();
        let version: u32 = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(answer)?;
        let (Some(system_id), Some(lsn)) = (ident.first(), ident.get(2)) else {
            return Err(answer());
        };
        Ok(Identity {
            major: version / 10_000,
            lsn: lsn.parse().map_err(|_| answer())?,
            system_id: (*system_id).to_owned(),
        })
    }

    /// Create the physical slot unless it is there (`42710`).
    pub async fn ensure_slot(&self, slot: &SlotName) -> Result<bool, PrimaryError> {
        let cmd = format!(
            "CREATE_REPLICATION_SLOT \"{}\" PHYSICAL RESERVE_WAL",
            slot.as_str()
        );
        match self.run(&[&cmd]).await? {
            Ok(_) => Ok(true),
            Err(Some(code)) if code == "42710" => Ok(false),
            Err(code) => Err(self.refused(code)),
        }
    }

    /// Drop the slot; one that is gone (`42704`) is fine.
    pub async fn drop_slot(&self, slot: &SlotName) -> Result<(), PrimaryError> {
        let cmd = format!("DROP_REPLICATION_SLOT \"{}\"", slot.as_str());
        match self.run(&[&cmd]).await? {
            Ok(_) => Ok(()),
            Err(Some(code)) if code == "42704" => Ok(()),
            Err(code) => Err(self.refused(code)),
        }
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(|l| l.trim().trim_start_matches("psql:").trim())
        .find(|l| !l.is_empty())
        .unwrap_or("no message")
        .to_owned()
}
