//! The log: a raft group's write-ahead log on local disk (tier-1), and the
//! `raft::Storage` that raft-rs reads it through.
//!
//! Layout: one directory per group, `<data-dir>/log/<group>/`, holding log
//! files `<seq:020>.log` written in sequence order (and files being
//! reclaimed, `*.free`, see [`reclaim`]). Each file is a run of
//! records (see [`record`]): raft entries, hard states and conf states. On
//! replay a later entry with an index at or below the last one replaces the
//! tail from that index on (raft overwrote a conflicting suffix).
//!
//! Invariants: nothing is acknowledged before the fdatasync that covers it
//! (the caller persists, then advances raft); a damaged record is either a
//! torn tail of the last file (truncated away) or a refusal to start. The log
//! never interprets entry payloads: that is the container's job.

mod reclaim;
pub mod record;
mod storage;

pub use storage::{LogError, LogStorage, SnapshotWriter};
