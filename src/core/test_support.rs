//! What tests and benchmarks may reach below the core, and nothing else.
//!
//! Compiled only with the `test-support` feature (which `cargo test` and
//! `cargo bench` turn on through the dev-dependency on this crate), so the
//! daemon, and the front doors in it, cannot name any of it: `store`,
//! `storage` and `postgres` stay private to the core.

pub use super::doctor::run_with;
pub use super::masking::{coverage, detect, key, plan, rules, run, scan, suggest, transform};
pub use super::postgres::finalise::sync_fs;
pub use super::postgres::sandbox::Confinement;
pub use super::postgres::{cluster, pgconn, process, roles};
pub use super::storage::{btrfs, ingest};
pub use super::store::Store;
