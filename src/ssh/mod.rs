//! The SSH front door: an embedded russh server whose commands, SCP sink
//! and SFTP subsystem parse input, ask the core, and format the answer.
//! Nothing here decides about images or instances.

pub mod commands;
mod error;
mod format;
pub mod hostkey;
pub mod paths;
pub mod scp;
pub mod server;
mod session;
pub mod sftp;
mod socket;
mod terminal;

pub use server::{serve, SshServer};

/// Why the SSH server could not start.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("ssh host key {path}: {reason}")]
    HostKey {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}
