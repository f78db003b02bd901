//! The SSH front door: an embedded russh server whose commands, SCP sink
//! and SFTP subsystem parse input, ask the core, and format the answer.
//! Nothing here decides about images or instances.

pub mod commands;
mod format;
