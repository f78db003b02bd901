//! `ssh draupnir <command> [args]`: the command set of DESIGN.md.
//!
//! Each command parses its arguments, calls the core as the authenticated
//! [`Actor`], and writes a table (or `--json`) to stdout; errors are one
//! line on stderr and a non-zero exit status.

use std::net::IpAddr;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::core::{Actor, Service};

/// Who runs the command, and from where.
#[derive(Clone)]
pub struct Session {
    pub service: Service,
    pub actor: Actor,
    /// The client's address (recorded for the instance allow-list).
    pub peer: Option<IpAddr>,
}

/// The channel's three streams.
pub struct Io<'a> {
    pub stdin: &'a mut (dyn AsyncRead + Unpin + Send),
    pub stdout: &'a mut (dyn AsyncWrite + Unpin + Send),
    pub stderr: &'a mut (dyn AsyncWrite + Unpin + Send),
}

/// Run one command line (already split into words) and return its exit
/// status. Output is written as it is produced (finalise streams progress).
pub async fn run(session: &Session, argv: Vec<String>, io: Io<'_>) -> u32 {
    let _ = session;
    if argv.is_empty() || argv[0] == "help" {
        let _ = io.stdout.write_all(b"draupnir commands: help\n").await;
        return 0;
    }
    let _ = io
        .stderr
        .write_all(format!("draupnir: unknown command `{}`; try `help`\n", argv[0]).as_bytes())
        .await;
    2
}
