//! Masking: the declarative rules engine of issue 13. A rules file
//! ([`rules`]) maps every column of every table to a transformer
//! ([`transform`]); [`coverage`] checks the rules against the catalog of
//! the upload's databases (fail closed: every column covered); [`plan`]
//! turns a database's rules into the statements that rewrite it, keyed by
//! the per-deployment [`key`]; [`run`] reads a live database's catalog
//! and applies a plan to it. [`detect`] tells what a value looks like
//! (e-mail, phone, card, IBAN, IP address, name); [`suggest`] writes a
//! complete rules file from the catalog and sampled values; [`scan`]
//! samples a database and, after masking, looks for values that still
//! look personal or equal an original (the leak scan).
//! Finalise (`core::postgres::finalise::mask`) wires them together.

pub mod coverage;
pub mod detect;
pub mod key;
pub mod plan;
pub mod rules;
pub mod run;
pub mod scan;
pub mod suggest;
pub mod transform;
