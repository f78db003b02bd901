//! PostgreSQL: data directories, postmaster processes, the supervisor,
//! finalise, and in-process client connections. Knows clusters, ports and
//! files; not users or images.

pub mod cluster;
pub mod finalise;
pub mod pgconn;
pub mod process;
pub mod reach;
pub mod roles;
pub mod sandbox;
pub mod serving;
pub mod supervisor;
