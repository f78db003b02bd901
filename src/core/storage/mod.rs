//! Storage: btrfs subvolumes and snapshots, the loopback development file
//! system, and the safe streaming tar ingest. Knows paths and bytes, not
//! users or images.

pub mod btrfs;
pub mod ingest;
pub mod layout;
pub mod loopback;
