//! `LogStorage`: a group's log files on disk (written, replayed, compacted)
//! and the in-memory index of entry locations that `raft::Storage` reads.
//!
//! Owned by the group's thread; never interprets entry payloads.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::entry_cache::EntryCache;
use super::record::{self, Decoded, RecordKind};
use super::snapshot::{read_snapshot, remove_snapshots_below, snapshot_path, write_snapshot};
use super::{decode_raft, destroy, encode_message, io_err, sync_dir, LogContext, SnapshotWriter};

/// A log file is closed and a new one started past this size (unless set
/// smaller with [`LogStorage::with_file_bytes_max`]).
const LOG_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// The smallest a log file may be set to: below it, files (each starting
/// with the hard and conf state) would be mostly headers.
const LOG_FILE_BYTES_MIN: u64 = 64 * 1024;
const _: () = assert!(LOG_FILE_BYTES_MIN < LOG_FILE_BYTES_MAX);

/// Why the log cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt log file {path} at offset {offset}: {why}; refusing to start (restore the file or remove the data directory)")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        why: String,
    },
}

// Entry positions and offsets are u64 on disk and usize in memory.
const _: () = assert!(usize::BITS >= u64::BITS);

/// Where an entry's record payload lives.
#[derive(Debug, Clone, Copy)]
struct EntryLoc {
    term: u64,
    file_seq: u64,
    offset: u64,
    len: u32,
}

struct LogFile {
    seq: u64,
    path: PathBuf,
    file: File,
    /// Highest entry index written to the file (0: none): the file can go
    /// once a snapshot covers it.
    max_index: u64,
}

/// A fully compacted active file at least this large is closed (and goes).
const ROLL_EMPTY_FILE_BYTES: u64 = 1024 * 1024;
/// Entry and snapshot indexes on disk are below this, or the file is
/// corrupt: no log gets near it (a million entries a second for 146,000
/// years), and below it every `index + 1` here and in raft-rs fits a u64.
const INDEX_MAX: u64 = 1 << 62;

/// A raft group's log on disk. Owned by the group's thread (raft-rs's
/// `RawNode` is single threaded), so no locks.
pub struct LogStorage {
    dir: PathBuf,
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry compacted away (0, 0: none yet).
    compacted: (u64, u64),
    /// Locations of entries `compacted.0 + 1 ..= last_index`.
    locs: VecDeque<EntryLoc>,
    files: Vec<LogFile>,
    active_len: u64,
    file_bytes_max: u64,
    /// The newest entries, ending at `last_index`.
    cache: EntryCache,
    /// The node's reclaim thread and snapshot-send limit.
    ctx: LogContext,
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}.log")
}

impl LogStorage {
    /// Opens (or creates) the log in `dir`, replaying every file: torn tail
    /// truncated, corruption elsewhere an error naming file and offset.
    pub fn open(dir: &Path, ctx: &LogContext) -> Result<Self, LogError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        ctx.reclaimer.resume(dir).map_err(io_err(dir))?;
        destroy::reclaim_destroyed(dir, &ctx.reclaimer)?;
        let mut seqs = Vec::new();
        for item in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let item = item.map_err(io_err(dir))?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name
                .strip_suffix(".log")
                .and_then(|s| s.parse::<u64>().ok())
            {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut log = LogStorage {
            dir: dir.to_owned(),
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            compacted: (0, 0),
            locs: VecDeque::new(),
            files: Vec::new(),
            active_len: 0,
            file_bytes_max: LOG_FILE_BYTES_MAX,
            cache: EntryCache::default(),
            ctx: ctx.clone(),
        };
        if let Some(snap) = read_snapshot(dir)? {
            let meta = snap.get_metadata();
            if meta.index >= INDEX_MAX {
                return Err(LogError::Corrupt {
                    path: snapshot_path(dir, meta.index),
                    offset: 0,
                    why: format!("snapshot index {} is out of range", meta.index),
                });
            }
            log.compacted = (meta.index, meta.term);
            log.conf_state = meta.get_conf_state().clone();
        }
        for (i, &seq) in seqs.iter().enumerate() {
            let is_last = i + 1 == seqs.len();
            log.replay_file(seq, is_last)?;
        }
        // The snapshot holds only committed entries, so the commit index is
        // at least its index even if the hard state saying so was not saved.
        if log.hard_state.commit < log.compacted.0 {
            log.hard_state.commit = log.compacted.0;
        }
        if log.hard_state.term < log.compacted.1 {
            log.hard_state.term = log.compacted.1;
        }
        // raft only commits what its log holds; raft-rs would panic on
        // start-up over a hard state that says otherwise.
        if log.hard_state.commit > log.last() {
            return Err(LogError::Corrupt {
                path: dir.to_owned(),
                offset: 0,
                why: format!(
                    "the hard state commits entry {} but the log ends at {}",
                    log.hard_state.commit,
                    log.last()
                ),
            });
        }
        if log.files.is_empty() {
            log.start_file(1)?;
        }
        Ok(log)
    }

    /// Log files are closed past `bytes` (at most the default of 64 MiB):
    /// smaller files let compaction free disk in smaller steps.
    pub fn with_file_bytes_max(mut self, bytes: u64) -> Self {
        self.file_bytes_max = bytes.clamp(LOG_FILE_BYTES_MIN, LOG_FILE_BYTES_MAX);
        self
    }

    fn replay_file(&mut self, seq: u64, is_last: bool) -> Result<(), LogError> {
        let path = self.dir.join(file_name(seq));
        let buf = Bytes::from(std::fs::read(&path).map_err(io_err(&path))?);
        let corrupt = |offset: usize, why: String| LogError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            why,
        };
        let mut pos = 0usize;
        let mut replay_max_index = 0u64;
        while pos < buf.len() {
            match record::decode(&buf[pos..]) {
                Decoded::Record {
                    kind,
                    payload,
                    framed_len,
                } => {
                    let payload_at = (pos + record::HEADER_BYTES) as u64;
                    let index = self
                        .replay_record(seq, kind, &buf.slice_ref(payload), payload_at)
                        .map_err(|why| corrupt(pos, why))?;
                    replay_max_index = replay_max_index.max(index);
                    pos += framed_len;
                }
                Decoded::Invalid { why } => {
                    if !is_last {
                        return Err(corrupt(pos, why.into()));
                    }
                    if let Some(next) = record::valid_record_after(&buf, pos + 1) {
                        return Err(corrupt(
                            pos,
                            format!("{why}, with a valid record after it at offset {next}"),
                        ));
                    }
                    tracing::warn!(
                        file = %path.display(),
                        offset = pos,
                        dropped_bytes = buf.len() - pos,
                        "truncating torn tail of log file"
                    );
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_err(&path))?;
                    f.set_len(pos as u64).map_err(io_err(&path))?;
                    f.sync_all().map_err(io_err(&path))?;
                    break;
                }
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        self.active_len = pos as u64;
        self.files.push(LogFile {
            seq,
            path,
            file,
            max_index: replay_max_index,
        });
        Ok(())
    }

    fn replay_record(
        &mut self,
        seq: u64,
        kind: RecordKind,
        payload: &Bytes,
        payload_at: u64,
    ) -> Result<u64, String> {
        match kind {
            RecordKind::Entry => {
                let entry: Entry = decode_raft(payload).map_err(|e| format!("bad entry: {e}"))?;
                if entry.index >= INDEX_MAX {
                    return Err(format!("entry index {} is out of range", entry.index));
                }
                let loc = EntryLoc {
                    term: entry.term,
                    file_seq: seq,
                    offset: payload_at,
                    len: payload.len() as u32,
                };
                self.index_entry(entry.index, loc)?;
                Ok(entry.index)
            }
            RecordKind::HardState => {
                self.hard_state =
                    decode_raft(payload).map_err(|e| format!("bad hard state: {e}"))?;
                Ok(0)
            }
            RecordKind::ConfState => {
                self.conf_state =
                    decode_raft(payload).map_err(|e| format!("bad conf state: {e}"))?;
                Ok(0)
            }
            RecordKind::Snapshot => Err("snapshot record inside a log file".into()),
        }
    }

    /// Records where entry `index` lives, replacing any suffix from `index` on.
    fn index_entry(&mut self, index: u64, loc: EntryLoc) -> Result<(), String> {
        let first = self.compacted.0 + 1;
        if index < first {
            return Ok(()); // below the compaction point: already in a snapshot
        }
        let next = first + self.locs.len() as u64;
        if index > next {
            return Err(format!("entry {index} leaves a gap after {}", next - 1));
        }
        self.truncate_from(index);
        self.locs.push_back(loc);
        Ok(())
    }

    fn truncate_from(&mut self, index: u64) {
        let first = self.compacted.0 + 1;
        self.locs.truncate(Self::loc_pos(index, first));
        self.cache.truncate_from(index);
    }

    fn start_file(&mut self, seq: u64) -> Result<(), LogError> {
        let path = self.dir.join(file_name(seq));
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        self.files.push(LogFile {
            seq,
            path,
            file,
            max_index: 0,
        });
        self.active_len = 0;
        // Each file starts with the current hard and conf state, so deleting
        // older files never loses them.
        let hs = self.hard_state.clone();
        let cs = self.conf_state.clone();
        let mut buf = Vec::new();
        encode_message(&mut buf, RecordKind::HardState, &hs).map_err(io_err(&self.dir))?;
        encode_message(&mut buf, RecordKind::ConfState, &cs).map_err(io_err(&self.dir))?;
        self.write_active(&buf)
    }

    /// Appends `buf` to the active file and fdatasyncs it.
    fn write_active(&mut self, buf: &[u8]) -> Result<(), LogError> {
        let active = self.active();
        let path = active.path.clone();
        let mut f = &active.file;
        f.write_all(buf).map_err(io_err(&path))?;
        f.sync_data().map_err(io_err(&path))?;
        self.active_len += buf.len() as u64;
        Ok(())
    }

    fn active(&self) -> &LogFile {
        // `open` always leaves at least one file.
        &self.files[self.files.len() - 1]
    }

    /// Writes `entries` and `hard_state` and fdatasyncs them: on return they
    /// are durable. An error here is fatal to the process.
    pub fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), LogError> {
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        if self.active_len >= self.file_bytes_max {
            self.start_file(self.active().seq + 1)?;
        }
        let mut buf =
            Vec::with_capacity(entries.iter().map(|e| e.data.len() + 64).sum::<usize>() + 64);
        let mut placed = Vec::with_capacity(entries.len());
        for e in entries {
            let start = buf.len();
            encode_message(&mut buf, RecordKind::Entry, e).map_err(io_err(&self.dir))?;
            let len = (buf.len() - start - record::HEADER_BYTES) as u32;
            placed.push((self.active_len + (start + record::HEADER_BYTES) as u64, len));
        }
        if let Some(hs) = hard_state {
            encode_message(&mut buf, RecordKind::HardState, hs).map_err(io_err(&self.dir))?;
        }
        self.write_active(&buf)?;
        let seq = self.active().seq;
        for ((offset, len), e) in placed.into_iter().zip(entries) {
            let loc = EntryLoc {
                term: e.term,
                file_seq: seq,
                offset,
                len,
            };
            if let Err(why) = self.index_entry(e.index, loc) {
                // raft hands entries in order; a gap is a bug, not bad input.
                panic!("raft appended out of order: {why}");
            }
            self.cache.push(e.clone());
        }
        if let Some(last) = entries.last() {
            let n = self.files.len() - 1;
            self.files[n].max_index = self.files[n].max_index.max(last.index);
        }
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Persists a new conf state (bootstrap and membership changes).
    pub fn set_conf_state(&mut self, cs: ConfState) -> Result<(), LogError> {
        let mut buf = Vec::new();
        encode_message(&mut buf, RecordKind::ConfState, &cs).map_err(io_err(&self.dir))?;
        self.write_active(&buf)?;
        self.conf_state = cs;
        Ok(())
    }

    /// Starts a snapshot at `index` (applied, so committed and persisted):
    /// the returned writer may run on another thread; once it has written,
    /// [`LogStorage::compact`] drops the log up to the index.
    pub fn snapshot_writer(&self, index: u64) -> Result<SnapshotWriter, LogError> {
        let term = raft::Storage::term(self, index)
            .map_err(|e| io_err(&self.dir)(std::io::Error::other(e.to_string())))?;
        Ok(SnapshotWriter {
            dir: self.dir.clone(),
            index,
            term,
            conf_state: self.conf_state.clone(),
        })
    }

    /// Drops entries up to `index` (covered by a durable snapshot at
    /// `index`/`term`) and the log files wholly below it.
    pub fn compact(&mut self, index: u64, term: u64) -> Result<(), LogError> {
        if index <= self.compacted.0 {
            return Ok(());
        }
        let drop_locs = ((index - self.compacted.0) as usize).min(self.locs.len());
        self.locs.drain(..drop_locs);
        self.compacted = (index, term);
        self.cache.drop_through(index);
        if self.active().max_index <= index
            && self.active_len >= (self.file_bytes_max / 4).min(ROLL_EMPTY_FILE_BYTES)
        {
            // Close an active file that holds nothing needed any more, so
            // the disk follows the snapshot (and tier-2) rather than the
            // file size; tiny files stay, so frequent snapshots do not churn.
            self.start_file(self.active().seq + 1)?;
        }
        let active_seq = self.active().seq;
        let mut kept = Vec::with_capacity(self.files.len());
        for f in std::mem::take(&mut self.files) {
            if f.seq != active_seq && f.max_index <= index {
                self.ctx
                    .reclaimer
                    .release(&f.path)
                    .map_err(io_err(&f.path))?;
                tracing::debug!(file = %f.path.display(), "removed log file below snapshot");
            } else {
                kept.push(f);
            }
        }
        self.files = kept;
        remove_snapshots_below(&self.dir, index, &self.ctx.reclaimer)?;
        sync_dir(&self.dir)
    }

    /// Whether nothing was ever written: no entries, snapshot or membership.
    pub fn is_fresh(&self) -> bool {
        self.compacted.0 == 0 && self.locs.is_empty() && self.conf_state.voters.is_empty()
    }

    /// Creates a new group's log with `voters` as its first membership, as
    /// a snapshot at index 1 (term 1, empty state): every replica bootstraps
    /// the same one, and a node added later is sent a snapshot first, which
    /// tells it the membership.
    pub fn bootstrap(&mut self, voters: &[u64]) -> Result<(), LogError> {
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = 1;
        meta.term = 1;
        meta.mut_conf_state().voters = voters.to_vec();
        self.apply_snapshot(&snap)
    }

    /// Installs a snapshot from the leader: it replaces the whole log (this
    /// replica was behind its start). Durable on return.
    pub fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<(), LogError> {
        let meta = snap.get_metadata();
        let (index, term) = (meta.index, meta.term);
        write_snapshot(&self.dir, snap)?;
        self.locs.clear();
        self.cache.clear();
        self.compacted = (index, term);
        self.conf_state = meta.get_conf_state().clone();
        self.hard_state.commit = self.hard_state.commit.max(index);
        self.hard_state.term = self.hard_state.term.max(term);
        // A fresh file starts with the new hard and conf state; every older
        // file is superseded.
        let next = self.active().seq + 1;
        self.start_file(next)?;
        let old: Vec<LogFile> = self.files.drain(..self.files.len() - 1).collect();
        for f in old {
            self.ctx
                .reclaimer
                .release(&f.path)
                .map_err(io_err(&f.path))?;
        }
        remove_snapshots_below(&self.dir, index, &self.ctx.reclaimer)?;
        sync_dir(&self.dir)
    }

    /// The saved snapshot's index and state machine data, if one exists.
    pub fn load_snapshot(&self) -> Result<Option<(u64, Bytes)>, LogError> {
        if self.compacted.0 == 0 {
            return Ok(None);
        }
        let snap = read_snapshot(&self.dir)?.ok_or_else(|| LogError::Corrupt {
            path: snapshot_path(&self.dir, self.compacted.0),
            offset: 0,
            why: "snapshot file vanished".into(),
        })?;
        Ok(Some((snap.get_metadata().index, snap.data)))
    }

    /// Bytes of log files on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.files
            .iter()
            .map(|f| f.file.metadata().map_or(0, |m| m.len()))
            .sum()
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    fn last(&self) -> u64 {
        self.compacted.0 + self.locs.len() as u64
    }

    /// Position in `locs` of entry `index`, `first` being the index `locs`
    /// starts at. Callers check `first <= index <= last`, and positions fit
    /// a 64-bit usize (checked below at compile time).
    fn loc_pos(index: u64, first: u64) -> usize {
        (index - first) as usize
    }

    fn read_entry(&self, index: u64) -> raft::Result<Entry> {
        if let Some(e) = self.cache.get(index) {
            return Ok(e.clone());
        }
        let loc = self.locs[Self::loc_pos(index, self.compacted.0 + 1)];
        let file = self
            .files
            .iter()
            .find(|f| f.seq == loc.file_seq)
            .ok_or(raft::Error::Store(StorageError::Unavailable))?;
        let mut buf = vec![0u8; loc.len as usize];
        file.file
            .read_exact_at(&mut buf, loc.offset)
            .map_err(|e| raft::Error::Store(StorageError::Other(Box::new(e))))?;
        decode_raft(&Bytes::from(buf)).map_err(raft::Error::CodecError)
    }
}

impl raft::Storage for LogStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.compacted.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for index in low..high {
            let e = self.read_entry(index)?;
            size += e.data.len() as u64 + 16;
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.compacted.0 {
            return Ok(self.compacted.1);
        }
        if idx < self.compacted.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.locs[Self::loc_pos(idx, self.compacted.0 + 1)].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.compacted.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // Each snapshot on its way to a follower is held in memory whole;
        // past the limit raft is told to ask again later.
        let Some(sending) = self.ctx.snapshot_sends.start() else {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        };
        // The latest saved snapshot; raft asks again later when it is too
        // old for the follower (a newer one is written as the log grows).
        match read_snapshot(&self.dir) {
            Ok(Some(mut s)) if s.get_metadata().index >= request_index => {
                // The membership now, not as of the snapshot: a node being
                // added must find itself in it, and the entries after the
                // snapshot repeat every change since.
                s.mut_metadata().set_conf_state(self.conf_state.clone());
                s.data = sending.hold(std::mem::take(&mut s.data));
                Ok(s)
            }
            Ok(_) => Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            )),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), to, error = %e, "cannot read the snapshot for a follower");
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::entry_cache::ENTRY_CACHE_BYTES_MAX;
    use crate::log::snapshot::SNAPSHOTS_SENDING_MAX;
    use proptest::prelude::*;
    use protobuf::Message as _;
    use raft::Storage;

    fn open(dir: &Path) -> Result<LogStorage, LogError> {
        LogStorage::open(dir, &LogContext::start())
    }

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn hs(term: u64, commit: u64) -> HardState {
        HardState {
            term,
            commit,
            ..Default::default()
        }
    }

    #[test]
    fn persists_replays_and_overwrites_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = open(dir.path()).unwrap();
            log.persist(
                &[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")],
                Some(&hs(1, 2)),
            )
            .unwrap();
            // A new leader overwrote index 3 onwards.
            log.persist(&[entry(3, 2, b"C"), entry(4, 2, b"D")], Some(&hs(2, 4)))
                .unwrap();
        }
        let log = open(dir.path()).unwrap();
        assert_eq!(log.last_index().unwrap(), 4);
        assert_eq!(log.term(3).unwrap(), 2);
        assert_eq!(log.hard_state().commit, 4);
        let es = log
            .entries(1, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        let data: Vec<&[u8]> = es.iter().map(|e| &e.data[..]).collect();
        assert_eq!(data, vec![&b"a"[..], b"b", b"C", b"D"]);
    }

    #[test]
    fn torn_tail_is_truncated_and_middle_corruption_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = open(dir.path()).unwrap();
            for i in 1..=10 {
                log.persist(&[entry(i, 1, &[i as u8; 100])], None).unwrap();
            }
        }
        let path = dir.path().join(file_name(1));
        let len = std::fs::metadata(&path).unwrap().len();
        // Torn tail: cut the last record in half.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 50).unwrap();
        drop(f);
        let log = open(dir.path()).unwrap();
        assert_eq!(log.last_index().unwrap(), 9);
        drop(log);
        // Flip a byte in the second record: valid records follow it.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[200] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("corrupt log file"), "{err}");
        assert!(err.contains("offset"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn snapshots_in_flight_to_followers_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path()).unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 1;
        snap.mut_metadata().term = 1;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2];
        snap.data = Bytes::from_static(b"state");
        log.apply_snapshot(&snap).unwrap();
        let mut held: Vec<Snapshot> = (0..SNAPSHOTS_SENDING_MAX)
            .map(|_| raft::Storage::snapshot(&log, 1, 2).expect("a place"))
            .collect();
        assert!(
            raft::Storage::snapshot(&log, 1, 2).is_err(),
            "past the limit: ask again later"
        );
        // A slice of the data keeps its place; dropping the last copy
        // gives it back.
        let piece = held[0].data.slice(..);
        held.remove(0);
        assert!(raft::Storage::snapshot(&log, 1, 2).is_err());
        drop(piece);
        let again = raft::Storage::snapshot(&log, 1, 2).expect("a place again");
        assert_eq!(again.get_metadata().index, 1);
    }

    #[test]
    fn snapshot_compacts_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![1u8; 1024 * 1024];
        {
            let mut log = open(dir.path()).unwrap();
            for i in 1..=80 {
                log.persist(&[entry(i, 1, &big)], Some(&hs(1, i))).unwrap();
            }
            let before = log.disk_bytes();
            let (index, term) = log
                .snapshot_writer(75)
                .unwrap()
                .write(&b"state".to_vec())
                .unwrap();
            log.compact(index, term).unwrap();
            assert!(log.disk_bytes() < before / 2, "old log files are removed");
            assert_eq!(log.first_index().unwrap(), 76);
            assert_eq!(log.term(75).unwrap(), 1);
            assert!(log
                .entries(70, 77, None, GetEntriesContext::empty(false))
                .is_err());
            log.persist(&[entry(81, 1, b"x")], Some(&hs(1, 81)))
                .unwrap();
        }
        let log = open(dir.path()).unwrap();
        let (index, data) = log.load_snapshot().unwrap().unwrap();
        // The state as prost encodes it (a `Vec<u8>` is a `BytesValue`).
        let state = prost::Message::encode_to_vec(&b"state".to_vec());
        assert_eq!((index, &data[..]), (75, &state[..]));
        assert_eq!(log.first_index().unwrap(), 76);
        assert_eq!(log.last_index().unwrap(), 81);
        assert_eq!(log.hard_state().commit, 81);
        let es = log
            .entries(76, 82, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(es.len(), 6);
    }

    /// A state machine's snapshot shaped like a container's tail: pieces.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Pieces {
        #[prost(bytes = "bytes", repeated, tag = "1")]
        pieces: Vec<Bytes>,
    }

    #[test]
    fn a_large_snapshot_is_streamed_to_its_file_never_copied_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path()).unwrap();
        log.persist(&[entry(1, 1, b"x")], Some(&hs(1, 1))).unwrap();
        let state = Pieces {
            pieces: (0..4u8).map(|i| Bytes::from(vec![i; 8 << 20])).collect(),
        };
        let writer = log.snapshot_writer(1).unwrap();
        let (written, largest) = aquifer_alloc_probe::largest_allocation(|| writer.write(&state));
        assert_eq!(written.unwrap(), (1, 1));
        assert!(
            largest <= 4 << 20,
            "{largest} bytes allocated for a 32 MiB snapshot"
        );
        drop(log);
        let log = open(dir.path()).unwrap();
        let (index, data) = log.load_snapshot().unwrap().unwrap();
        assert_eq!(index, 1);
        assert_eq!(<Pieces as prost::Message>::decode(data).unwrap(), state);
    }

    #[test]
    fn entries_past_the_cache_come_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path()).unwrap();
        let big = vec![7u8; 1024 * 1024];
        for i in 1..=24 {
            log.persist(&[entry(i, 1, &big)], None).unwrap();
        }
        assert!(log.cache.bytes() <= ENTRY_CACHE_BYTES_MAX);
        let es = log
            .entries(1, 3, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(es.len(), 2);
        assert_eq!(es[1].data.len(), big.len());
        // max_size still returns at least one entry.
        let es = log
            .entries(1, 3, 10, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(es.len(), 1);
    }

    /// Mostly small indexes and terms, so replay gets past its checks; now
    /// and then one at the top of the range, or any u64.
    fn index() -> impl Strategy<Value = u64> {
        prop_oneof![6 => 0u64..6, 1 => u64::MAX - 4.., 1 => any::<u64>()]
    }

    /// One record with a valid checksum: a raft message with arbitrary
    /// fields, or an arbitrary payload of any kind.
    fn log_record() -> impl Strategy<Value = Vec<u8>> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..32);
        let entry = (index(), index(), bytes()).prop_map(|(index, term, data)| {
            (
                RecordKind::Entry,
                entry(index, term, &data).write_to_bytes(),
            )
        });
        let hard = (index(), index(), index()).prop_map(|(term, vote, commit)| {
            let h = HardState {
                term,
                vote,
                commit,
                ..Default::default()
            };
            (RecordKind::HardState, h.write_to_bytes())
        });
        let conf = proptest::collection::vec(index(), 0..4).prop_map(|voters| {
            let c = ConfState {
                voters,
                ..Default::default()
            };
            (RecordKind::ConfState, c.write_to_bytes())
        });
        let kinds = [
            RecordKind::Entry,
            RecordKind::HardState,
            RecordKind::ConfState,
            RecordKind::Snapshot,
        ];
        let raw = (proptest::sample::select(kinds.to_vec()), bytes()).prop_map(|(k, b)| (k, Ok(b)));
        prop_oneof![4 => entry, 2 => hard, 2 => conf, 1 => raw].prop_map(|(kind, payload)| {
            let mut out = Vec::new();
            // Writing a message to a Vec cannot fail.
            encode(&mut out, kind, &payload.unwrap());
            out
        })
    }

    /// A snapshot file's bytes: a snapshot with arbitrary metadata, or
    /// anything in a snapshot record.
    fn snapshot_file() -> impl Strategy<Value = Vec<u8>> {
        let snap = (index(), index(), proptest::collection::vec(index(), 0..4)).prop_map(
            |(index, term, voters)| {
                let mut s = Snapshot::default();
                s.mut_metadata().index = index;
                s.mut_metadata().term = term;
                s.mut_metadata().mut_conf_state().voters = voters;
                s.data = Bytes::from_static(b"state");
                s.write_to_bytes().unwrap()
            },
        );
        prop_oneof![4 => snap, 1 => proptest::collection::vec(any::<u8>(), 0..32)].prop_map(
            |payload| {
                let mut out = Vec::new();
                encode(&mut out, RecordKind::Snapshot, &payload);
                out
            },
        )
    }

    use super::record::encode;

    /// Reads everything a replayed log offers raft.
    fn read_back(log: &LogStorage) {
        let first = log.first_index().unwrap();
        let last = log.last_index().unwrap();
        assert!(first <= last + 1, "first {first}, last {last}");
        assert!(log.hard_state().commit <= last);
        for i in first - 1..=last {
            log.term(i).unwrap();
        }
        let es = log
            .entries(first, last + 1, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(es.len() as u64, last + 1 - first);
        log.load_snapshot().unwrap();
    }

    #[test]
    fn indexes_past_the_limit_and_commits_past_the_log_are_corruption() {
        let snap = |index| {
            let mut s = Snapshot::default();
            s.mut_metadata().index = index;
            let mut out = Vec::new();
            encode(&mut out, RecordKind::Snapshot, &s.write_to_bytes().unwrap());
            out
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(snapshot_path(dir.path(), 1), snap(u64::MAX)).unwrap();
        let err = open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("snapshot index"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let mut file = Vec::new();
        encode(
            &mut file,
            RecordKind::Entry,
            &entry(u64::MAX, 1, b"x").write_to_bytes().unwrap(),
        );
        std::fs::write(dir.path().join(file_name(1)), &file).unwrap();
        std::fs::write(snapshot_path(dir.path(), 1), snap(u64::MAX - 1)).unwrap();
        assert!(open(dir.path()).is_err());

        let dir = tempfile::tempdir().unwrap();
        let mut file = Vec::new();
        encode(
            &mut file,
            RecordKind::Entry,
            &entry(1, 1, b"x").write_to_bytes().unwrap(),
        );
        encode(
            &mut file,
            RecordKind::HardState,
            &hs(1, 5).write_to_bytes().unwrap(),
        );
        std::fs::write(dir.path().join(file_name(1)), &file).unwrap();
        let err = open(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("commits entry 5 but the log ends at 1"),
            "{err}"
        );
    }

    proptest::proptest! {
        // Each case writes (and fsyncs) a log directory: few cases.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn damaged_log_files_open_or_are_refused_never_panic(
            files in proptest::collection::vec(proptest::collection::vec(log_record(), 0..8), 1..3),
            snapshot in proptest::option::of(snapshot_file()),
            flips in proptest::collection::vec((any::<usize>(), 1u8..), 0..3),
            cut in proptest::option::weighted(0.3, any::<usize>()),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut total = 0;
            let last_file = files.len() - 1;
            for (i, records) in files.into_iter().enumerate() {
                let mut buf = records.concat();
                // Damage lands in the last file, where a torn tail may be.
                if i == last_file && !buf.is_empty() {
                    for (at, x) in &flips {
                        let at = at % buf.len();
                        buf[at] ^= x;
                    }
                    if let Some(cut) = cut {
                        buf.truncate(cut % buf.len());
                    }
                }
                total += buf.len();
                std::fs::write(dir.path().join(file_name(i as u64 + 1)), buf).unwrap();
            }
            if let Some(snap) = snapshot {
                total += snap.len();
                std::fs::write(snapshot_path(dir.path(), 1), snap).unwrap();
            }
            // Outside the measurement: the reclaim thread's queue.
            let ctx = LogContext::start();
            let (_, largest) = aquifer_alloc_probe::largest_allocation(|| {
                if let Ok(log) = LogStorage::open(dir.path(), &ctx) {
                    read_back(&log);
                }
            });
            // A file is read whole; the entries raft asks for come back in
            // one Vec, at most one per record header.
            let bound = total + total / record::HEADER_BYTES * std::mem::size_of::<Entry>() + 64 * 1024;
            prop_assert!(largest <= bound, "{largest} bytes allocated for {total} bytes of files");
        }
    }
}
