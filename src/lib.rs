//! Draupnir: fresh, anonymised, private copies of a production PostgreSQL
//! database in under a second, used through SSH.
//!
//! One core ([`core::Service`]) decides and acts; front doors (SSH, HTTPS)
//! parse, ask the core, and format. Below the core: [`store`] (SQLite
//! metadata), [`storage`] (btrfs, loopback, safe tar ingest), [`postgres`]
//! (data directories, postmasters, the supervisor, finalise) and
//! [`certs`] (per-instance certificate authorities).

pub mod certs;
pub mod config;
pub mod core;
pub mod guard;
pub mod http;
pub mod secret;
pub mod secret_file;
pub mod ssh;
