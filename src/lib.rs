//! Draupnir: fresh, anonymised, private copies of a production PostgreSQL
//! database in under a second, used through SSH.
//!
//! One core ([`core::Service`]) decides and acts; front doors (SSH, HTTPS)
//! parse, ask the core, and format. Below the core, and private to it so
//! the front doors cannot name them: `core::store` (SQLite metadata),
//! `core::storage` (btrfs, loopback, safe tar ingest) and `core::postgres`
//! (data directories, postmasters, the supervisor, finalise). Beside them:
//! [`certs`] (per-instance certificate authorities), [`config`], [`guard`]
//! (iptables) and [`secret`].

pub mod certs;
pub mod config;
pub mod core;
pub mod guard;
pub mod http;
pub mod secret;
pub mod secret_file;
pub mod ssh;
