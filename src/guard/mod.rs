//! The guard: makes the firewall match the database. Knows ports and
//! addresses, not users; the core decides which rules should exist.

pub mod iptables;
