//! The log: a raft group's write-ahead log on local disk (tier-1), and the
//! `raft::Storage` that raft-rs reads it through.
//!
//! Layout: one directory per group, `<data-dir>/log/<group>/`, holding log
//! files `<seq:020>.log` written in sequence order, snapshot files
//! `snapshot-<index:020>` (see [`snapshot`]) and files being reclaimed,
//! `*.free` (see [`reclaim`]). Each log file is a run of records (see
//! [`record`]): raft entries, hard states and conf states. On replay a later
//! entry with an index at or below the last one replaces the tail from that
//! index on (raft overwrote a conflicting suffix).
//!
//! One file per job: [`storage`] (log files, replay, `raft::Storage`),
//! [`entry_cache`] (recent entries in memory), [`snapshot`] (snapshot files
//! and the limit on snapshots streaming to followers), [`destroy`] (a
//! replica's log removed for good), [`reclaim`] (freeing disk a little at a
//! time).
//!
//! Invariants: nothing is acknowledged before the fdatasync that covers it
//! (the caller persists, then advances raft); a damaged record is either a
//! torn tail of the last file (truncated away) or a refusal to start. The log
//! never interprets entry payloads: that is the container's job.

mod destroy;
mod entry_cache;
mod reclaim;
pub mod record;
mod snapshot;
mod storage;

use std::path::Path;

use bytes::Bytes;

pub use reclaim::Reclaimer;
pub use snapshot::{SnapshotSends, SnapshotWriter};
pub use storage::{LogError, LogStorage};

/// What the logs of one node's groups share: the reclaim thread and the
/// limit on snapshots held in memory while they stream to followers. Owned
/// by the node and handed to each group; never process-wide, so several
/// nodes can live in one process (tests).
#[derive(Clone, Debug)]
pub struct LogContext {
    pub reclaimer: Reclaimer,
    pub snapshot_sends: SnapshotSends,
}

impl LogContext {
    /// Starts the node's reclaim thread.
    pub fn start() -> LogContext {
        LogContext {
            reclaimer: Reclaimer::start(),
            snapshot_sends: SnapshotSends::default(),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_owned(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    crate::durable::sync_dir(dir).map_err(io_err(dir))
}

/// Appends `m` to `out` as one record of `kind`.
fn encode_message(
    out: &mut Vec<u8>,
    kind: record::RecordKind,
    m: &impl protobuf::Message,
) -> std::io::Result<()> {
    record::encode_with(out, kind, |out| m.write_to_vec(out)).map_err(std::io::Error::other)?;
    Ok(())
}

/// Decodes a raft protobuf (rust-protobuf 2) from `bytes`, sharing them for
/// its bytes fields. Every length the input claims is checked against what
/// it holds before anything is allocated: `parse_from_bytes` on a slice
/// believes a claim of up to 10 MB and allocates it before it finds the
/// input short.
pub(crate) fn decode_raft<M: protobuf::Message>(bytes: &Bytes) -> protobuf::ProtobufResult<M> {
    let mut input = protobuf::CodedInputStream::from_carllerche_bytes(bytes);
    input.push_limit(bytes.len() as u64)?;
    let m = M::parse_from(&mut input)?;
    input.check_eof()?;
    Ok(m)
}
