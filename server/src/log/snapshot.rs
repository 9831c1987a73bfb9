//! Snapshot files of a group's state machine, and the limit on snapshots
//! held in memory while they stream to followers.
//!
//! Files sit next to the group's log files, named by raft index:
//! `snapshot-<index:020>`, each one record (see [`super::record`]). The
//! highest is the current one; a write that finishes after a newer one (from
//! the leader) arrived can never replace it. Snapshot files are written
//! durably (temporary file, fsync, rename, fsync the directory) and never in
//! place.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::BufMut as _;
use bytes::Bytes;
use protobuf::Message as _;
use raft::prelude::{ConfState, Snapshot, SnapshotMetadata};

use super::record::{self, Decoded, RecordKind, RecordStream};
use super::{decode_raft, io_err, LogError, Reclaimer};

const SNAPSHOT_PREFIX: &str = "snapshot-";

/// Snapshots read for followers and not yet sent (or given up), at most, per
/// node: each holds a group's snapshot (metadata and its unflushed tail, up
/// to the tail budget) in memory while it streams.
pub const SNAPSHOTS_SENDING_MAX: usize = 2;

/// The places for snapshots streaming to followers, shared by the logs of
/// one node's groups.
#[derive(Clone, Debug, Default)]
pub struct SnapshotSends {
    taken: Arc<AtomicUsize>,
}

impl SnapshotSends {
    /// A place, unless all [`SNAPSHOTS_SENDING_MAX`] are taken.
    pub(super) fn start(&self) -> Option<Sending> {
        let taken = self.taken.fetch_add(1, Ordering::AcqRel);
        if taken >= SNAPSHOTS_SENDING_MAX {
            self.taken.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Sending {
            data: Bytes::new(),
            taken: self.taken.clone(),
        })
    }
}

/// One place of [`SnapshotSends`]; given back when the snapshot's bytes are
/// dropped (every piece sent, or the send failed).
pub(super) struct Sending {
    data: Bytes,
    taken: Arc<AtomicUsize>,
}

impl Sending {
    /// `data` that keeps this place until its last copy is dropped.
    pub(super) fn hold(mut self, data: Bytes) -> Bytes {
        self.data = data;
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for Sending {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(super) fn snapshot_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{SNAPSHOT_PREFIX}{index:020}"))
}

/// Snapshot files in `dir` by index, lowest first.
fn snapshot_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut found = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let item = item.map_err(io_err(dir))?;
        let name = item.file_name();
        if let Some(index) = name
            .to_string_lossy()
            .strip_prefix(SNAPSHOT_PREFIX)
            .and_then(|s| s.parse::<u64>().ok())
        {
            found.push((index, item.path()));
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Reclaims snapshot files older than `index`.
pub(super) fn remove_snapshots_below(
    dir: &Path,
    index: u64,
    reclaimer: &Reclaimer,
) -> Result<(), LogError> {
    for (i, path) in snapshot_files(dir)? {
        if i < index {
            reclaimer.release(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// Writes `snap` as the snapshot file of its index, durably.
pub(super) fn write_snapshot(dir: &Path, snap: &Snapshot) -> Result<(), LogError> {
    write_snapshot_file(dir, snap.get_metadata(), snap.data.len(), |out| {
        out.put_slice(&snap.data);
        Ok(())
    })
}

/// Writes the snapshot file of `meta` durably, its `data_len` bytes of data
/// put by `data` straight into the file's record as they are produced: a
/// snapshot never holds a second copy of the state (or of its unflushed
/// tail, up to the tail budget) in memory.
fn write_snapshot_file(
    dir: &Path,
    meta: &SnapshotMetadata,
    data_len: usize,
    data: impl FnOnce(&mut RecordStream<'_>) -> std::io::Result<()>,
) -> Result<(), LogError> {
    let path = snapshot_path(dir, meta.index);
    // The record's payload is a raft `Snapshot`: its metadata, then its
    // data field's key and length, then the data (protobuf reads fields in
    // any order).
    let mut head = Vec::new();
    let mut snap = Snapshot::default();
    snap.set_metadata(meta.clone());
    snap.write_to_vec(&mut head)
        .map_err(|e| io_err(&path)(std::io::Error::other(e)))?;
    prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut head);
    prost::encoding::encode_varint(data_len as u64, &mut head);
    crate::durable::write_with(&path, |file| {
        let mut out = RecordStream::start(file, RecordKind::Snapshot, head.len() + data_len)?;
        out.put_slice(&head);
        data(&mut out)?;
        out.finish()
    })
    .map_err(io_err(&path))
}

/// The newest snapshot file in `dir`, if any.
pub(super) fn read_snapshot(dir: &Path) -> Result<Option<Snapshot>, LogError> {
    let Some((_, path)) = snapshot_files(dir)?.pop() else {
        return Ok(None);
    };
    let buf = match std::fs::read(&path) {
        Ok(b) => Bytes::from(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let corrupt = |why: String| LogError::Corrupt {
        path: path.clone(),
        offset: 0,
        why,
    };
    match record::decode(&buf) {
        Decoded::Record {
            kind: RecordKind::Snapshot,
            payload,
            framed_len,
        } if framed_len == buf.len() => decode_raft::<Snapshot>(&buf.slice_ref(payload))
            .map(Some)
            .map_err(|e| corrupt(format!("bad snapshot: {e}"))),
        Decoded::Record { .. } => Err(corrupt("not a single snapshot record".into())),
        Decoded::Invalid { why } => Err(corrupt(why.into())),
    }
}

/// Writes one snapshot file (durably), off the group thread.
pub struct SnapshotWriter {
    pub(super) dir: PathBuf,
    pub(super) index: u64,
    pub(super) term: u64,
    pub(super) conf_state: ConfState,
}

impl SnapshotWriter {
    /// Writes the state machine's `state` (encoded into the file as it
    /// goes); returns the snapshot's index and term for
    /// [`super::LogStorage::compact`].
    pub fn write(self, state: &impl prost::Message) -> Result<(u64, u64), LogError> {
        let mut meta = SnapshotMetadata {
            index: self.index,
            term: self.term,
            ..Default::default()
        };
        meta.set_conf_state(self.conf_state);
        write_snapshot_file(&self.dir, &meta, state.encoded_len(), |out| {
            state.encode(out).map_err(std::io::Error::other)
        })?;
        Ok((self.index, self.term))
    }
}
