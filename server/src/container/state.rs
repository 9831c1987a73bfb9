//! The container state machine: applies committed commands to its segments.
//!
//! Deterministic: it reads only the command and its own state (never clocks
//! or tier-2), so replaying the log rebuilds exactly the state that was
//! acknowledged. It must never apply a writer's event number twice.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use super::command::{
    Append, ChunkFlushed, Cmd, ContainerCommand, ContainerSnapshot, IndexMarkSnapshot, RateTick,
    RecentBatch, SegmentSnapshot, TailBlock, Truncate, WriterPosition,
};
use super::index::{EventIndex, IndexMark};
use super::rates::{rates_from, Rates, RATE_WINDOWS};
use super::segment::{Block, Chunk, Segment, SegmentState, WriterMark, RECENT_BATCHES};
use crate::cache::TailBudget;
use crate::group::StateMachine;

/// Segments of one container by id, shared with the read path.
pub type SegmentMap = Arc<RwLock<HashMap<u64, Arc<Segment>>>>;

/// What an applied command answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Created,
    /// `offset` and event `index` of the batch's first event; a duplicate
    /// was applied before (its offset and index are 0: not known).
    Appended {
        offset: u64,
        index: u64,
        duplicate: bool,
    },
    Sealed {
        length: u64,
    },
    /// The segment is gone; `objects` are tier-2 objects no segment refers
    /// to any more, left for the caller to delete.
    Deleted {
        objects: Vec<String>,
    },
    /// `recorded` chunks of an object became part of their segments; the
    /// rest were refused (an object with none recorded is an orphan).
    ChunksRecorded {
        recorded: usize,
        refused: Vec<ApplyError>,
    },
    /// Retention moved the head past whole chunks; `objects` are tier-2
    /// objects no segment refers to any more.
    Truncated {
        objects: Vec<String>,
    },
    /// Every segment's rates took the tick; `writers` ids remain in the
    /// segments' writer tables after it forgot the idle ones.
    RatesTicked {
        writers: usize,
    },
    /// A transaction's part joined its parent at `offset` (None: it had
    /// been merged before).
    TxnMerged {
        offset: Option<u64>,
    },
    /// Parts were discarded; `objects` are tier-2 objects (spilled parts')
    /// no segment refers to any more, left for the caller to delete.
    TxnDropped {
        objects: Vec<String>,
    },
    TxnSealed,
}

/// Why a command was refused (deterministically, on every replica).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("segment {0} not found")]
    SegmentNotFound(u64),
    #[error("segment {0} is sealed")]
    SegmentSealed(u64),
    #[error("batch event numbers {first}..={last} overlap the last applied number {applied} of writer {writer}: resend whole batches with the numbers they had")]
    EventNumberOverlap {
        writer: String,
        first: i64,
        last: i64,
        applied: i64,
    },
    #[error("batch of writer {writer} starts at event number {first} but {expected} is next: an earlier batch was not applied; reconnect and resend from the last acknowledged event number")]
    EventNumberGap {
        writer: String,
        first: i64,
        expected: i64,
    },
    #[error("batch of writer {writer} starts at event number {first} but nothing of this writer id is applied on this segment: an earlier batch was not applied (reconnect and resend from event number 1), or the writer id wrote nothing here for longer than writer_id_expiry_ms and was forgotten (reopen the writer: it starts again at event number 1)")]
    UnknownWriterGap { writer: String, first: i64 },
    #[error("conditional append of writer {writer} has event number {first} but {expected} is next: number a writer's conditional appends 1, 2, 3, … and resend a failed one with the number it had")]
    ConditionalEventNumberGap {
        writer: String,
        first: i64,
        expected: i64,
    },
    #[error("segment {segment} is {actual} bytes long, not the expected {expected}: the conditional append was not applied; read what was appended since and decide again")]
    ConditionFailed {
        segment: u64,
        expected: u64,
        actual: u64,
    },
    #[error("chunk [{start}, {end}) does not continue tier-2 at {tier2_length}: orphan")]
    StaleChunk {
        start: u64,
        end: u64,
        tier2_length: u64,
    },
    #[error("segment {segment} cannot start at {head}: not the end of one of its chunks")]
    BadTruncate { segment: u64, head: u64 },
    #[error("transaction segment {txn_segment} was already {}: its transaction is over and takes no more events", if *merged { "committed" } else { "aborted" })]
    TxnPartClosed { txn_segment: u64, merged: bool },
    #[error("undecodable command: {0}")]
    Malformed(String),
}

/// Applies a checked batch (`last`: its last event number) to the end of
/// `s`; its offset, its first event's index and its length.
pub(super) fn push_batch(s: &mut SegmentState, a: Append, last: i64) -> (u64, u64, u64) {
    let offset = s.length;
    let index = s.rates.events_total;
    let len = a.events.len() as u64;
    let append_ms = if a.append_ms == 0 {
        s.rates.ticked_ms
    } else {
        a.append_ms
    };
    s.index.push(offset, index, append_ms);
    s.length += len;
    s.tail.push_back((offset, Block::Mem(a.events)));
    if !a.writer_id.is_empty() {
        let mark = WriterMark::after(
            s.writers.get(&a.writer_id),
            a.first_event_number,
            last,
            index,
            s.rates.ticked_ms,
        );
        s.writers.insert(a.writer_id, mark);
    }
    s.rates.record(a.event_count, len);
    (offset, index, len)
}

/// How a transaction part ended (its tombstone; `txn.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    Merged,
    Dropped,
}

/// What a batch's event numbers are against the last applied one.
pub(super) enum Numbered {
    /// Applied before: acknowledge again.
    Duplicate,
    /// Next in line; its last number.
    Next(i64),
}

/// The exactly-once rules of section 8: a duplicate, the next batch, or
/// refused (overlap, gap).
pub(super) fn check_numbers(applied: i64, a: &Append) -> Result<Numbered, ApplyError> {
    let last = a.first_event_number + i64::from(a.event_count) - 1;
    if last <= applied {
        return Ok(Numbered::Duplicate);
    }
    if a.first_event_number <= applied {
        return Err(ApplyError::EventNumberOverlap {
            writer: a.writer_id.clone(),
            first: a.first_event_number,
            last,
            applied,
        });
    }
    if a.first_event_number != applied + 1 {
        // Event numbers are contiguous per (segment, writer): a gap means
        // an earlier pipelined batch failed, and applying this one would
        // make that batch look like a duplicate on retry.
        let (writer, first, expected) = (a.writer_id.clone(), a.first_event_number, applied + 1);
        return Err(match a.expected_length {
            // A conditional append is one request, never pipelined: a
            // gap is the caller's numbering, which a retry cannot mend.
            Some(_) => ApplyError::ConditionalEventNumberGap {
                writer,
                first,
                expected,
            },
            None if applied == 0 => ApplyError::UnknownWriterGap { writer, first },
            None => ApplyError::EventNumberGap {
                writer,
                first,
                expected,
            },
        });
    }
    Ok(Numbered::Next(last))
}

pub struct ContainerState {
    pub(super) segments: SegmentMap,
    pub(super) budget: Arc<TailBudget>,
    /// Live chunks per tier-2 object. An object holds chunks of several
    /// segments and may be deleted only when none of them is left.
    objects: HashMap<String, usize>,
    /// Open transactions' parts by transaction segment id (`txn.rs`),
    /// shared with the storage writer (which spills large ones).
    pub(super) parts: SegmentMap,
    /// Parts merged or dropped, until their transaction is forgotten.
    pub(super) closed_txns: HashMap<u64, Closed>,
}

impl ContainerState {
    pub fn new(segments: SegmentMap, budget: Arc<TailBudget>) -> Self {
        ContainerState {
            segments,
            budget,
            objects: HashMap::new(),
            parts: SegmentMap::default(),
            closed_txns: HashMap::new(),
        }
    }

    /// Names of the objects this state counts as referenced (tests).
    #[cfg(test)]
    pub fn chunk_objects_for_test(&self) -> std::collections::HashSet<String> {
        self.objects.keys().cloned().collect()
    }

    /// The open transaction parts, shared (the storage writer spills them).
    pub fn parts(&self) -> SegmentMap {
        self.parts.clone()
    }

    /// Drops the references of `chunks`; returns the objects left with none.
    pub(super) fn release_objects(&mut self, chunks: &[Chunk]) -> Vec<String> {
        let mut unreferenced = Vec::new();
        for c in chunks {
            if let Some(n) = self.objects.get_mut(&c.name) {
                *n -= 1;
                if *n == 0 {
                    self.objects.remove(&c.name);
                    unreferenced.push(c.name.clone());
                }
            }
        }
        unreferenced
    }

    pub(super) fn segment(&self, id: u64) -> Result<Arc<Segment>, ApplyError> {
        let map = self.segments.read().unwrap_or_else(|p| p.into_inner());
        map.get(&id).cloned().ok_or(ApplyError::SegmentNotFound(id))
    }

    /// Last applied event number of `writer` on `segment` (0: none).
    pub fn last_event_number(&self, segment: u64, writer: &str) -> Result<i64, ApplyError> {
        let seg = self.segment(segment)?;
        let s = seg.lock();
        if s.deleted {
            return Err(ApplyError::SegmentNotFound(segment));
        }
        Ok(s.last_event_number(writer))
    }

    fn create(&mut self, id: u64) -> Applied {
        let mut map = self.segments.write().unwrap_or_else(|p| p.into_inner());
        map.entry(id).or_insert_with(|| Arc::new(Segment::new(id)));
        Applied::Created
    }

    fn append(&mut self, a: Append) -> Result<Applied, ApplyError> {
        if let Some(parent) = a.txn_parent {
            return self.txn_append(parent, a);
        }
        let seg = self.segment(a.segment_id)?;
        let mut s = seg.lock();
        if s.deleted {
            return Err(ApplyError::SegmentNotFound(a.segment_id));
        }
        // No writer id (the Kafka listener's producers without
        // idempotence): applied as it comes, at least once, never numbered.
        let last = if a.writer_id.is_empty() {
            0
        } else {
            let applied = s.last_event_number(&a.writer_id);
            match check_numbers(applied, &a)? {
                Numbered::Duplicate => {
                    return Ok(Applied::Appended {
                        offset: 0,
                        index: 0,
                        duplicate: true,
                    })
                }
                Numbered::Next(last) => last,
            }
        };
        if s.sealed {
            return Err(ApplyError::SegmentSealed(a.segment_id));
        }
        // After the duplicate check, so a retry of an applied conditional
        // append is answered as a duplicate, never refused (nor applied
        // twice); a refusal leaves the writer's number unused.
        if let Some(expected) = a.expected_length.filter(|&e| e != s.length) {
            return Err(ApplyError::ConditionFailed {
                segment: a.segment_id,
                expected,
                actual: s.length,
            });
        }
        let (offset, index, len) = push_batch(&mut s, a, last);
        drop(s);
        self.budget.add(len);
        seg.notify();
        Ok(Applied::Appended {
            offset,
            index,
            duplicate: false,
        })
    }

    fn seal(&mut self, id: u64) -> Result<Applied, ApplyError> {
        let seg = self.segment(id)?;
        let mut s = seg.lock();
        if s.deleted {
            return Err(ApplyError::SegmentNotFound(id));
        }
        s.sealed = true;
        let length = s.length;
        drop(s);
        seg.notify();
        Ok(Applied::Sealed { length })
    }

    fn delete(&mut self, id: u64) -> Applied {
        let seg = self
            .segments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let Some(seg) = seg else {
            return Applied::Deleted {
                objects: Vec::new(),
            };
        };
        let mut s = seg.lock();
        s.deleted = true;
        let freed = s.tail_mem_bytes();
        let mut chunks = std::mem::take(&mut s.chunks);
        chunks.extend(s.tail.drain(..).filter_map(|(_, b)| match b {
            Block::Tier2(c) => Some(c),
            Block::Mem(_) => None,
        }));
        drop(s);
        self.budget.release(freed);
        seg.notify();
        Applied::Deleted {
            objects: self.release_objects(&chunks),
        }
    }

    fn chunks_flushed(&mut self, chunks: Vec<ChunkFlushed>) -> Applied {
        let mut recorded = 0;
        let mut refused = Vec::new();
        for c in chunks {
            match self.chunk_flushed(c) {
                Ok(()) => recorded += 1,
                Err(e) => refused.push(e),
            }
        }
        Applied::ChunksRecorded { recorded, refused }
    }

    fn chunk_flushed(&mut self, c: ChunkFlushed) -> Result<(), ApplyError> {
        // A stream segment's chunk, or a spilled transaction part's.
        let part = self
            .parts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&c.segment_id)
            .cloned();
        let is_part = part.is_some();
        let seg = match part {
            Some(p) => p,
            None => self.segment(c.segment_id)?,
        };
        let mut s = seg.lock();
        let stale = ApplyError::StaleChunk {
            start: c.start,
            end: c.end,
            tier2_length: s.tier2_length,
        };
        if s.deleted || c.start != s.tier2_length || c.end > s.length || c.end <= c.start {
            return Err(stale);
        }
        // The storage writer cuts chunks at batch boundaries.
        let mut freed = 0u64;
        while let Some((offset, block)) = s.tail.front() {
            let block_end = offset + block.len();
            if block_end > c.end {
                break;
            }
            freed += block.mem_len();
            s.tail.pop_front();
        }
        if s.tail.front().is_some_and(|(o, _)| *o != c.end) {
            // Cannot happen for chunks this node's writer made; refuse rather
            // than leave a tail buffer that does not line up.
            return Err(stale);
        }
        s.tier2_length = c.end;
        s.index.flushed(c.start, c.end);
        *self.objects.entry(c.name.clone()).or_default() += 1;
        s.chunks.push(chunk_of(c));
        // A merged part's spilled chunks right after it join tier-2 too.
        s.promote_tier2_blocks();
        drop(s);
        if is_part {
            self.budget.release_txn(freed);
        } else {
            self.budget.release(freed);
        }
        Ok(())
    }
}

impl ContainerState {
    fn rate_tick(&mut self, t: &RateTick) -> Applied {
        let windows = windows_of_ms(&t.windows_ms);
        let map = self.segments.read().unwrap_or_else(|p| p.into_inner());
        let (mut expired, mut writers) = (0, 0);
        for seg in map.values() {
            let mut s = seg.lock();
            s.rates.tick(t.now_ms, &windows);
            expired += s.expire_writers(t.writer_idle_ms);
            writers += s.writers.len();
        }
        if expired > 0 {
            tracing::debug!(
                expired,
                "writer ids idle past writer_id_expiry_ms forgotten"
            );
        }
        Applied::RatesTicked { writers }
    }

    fn truncate(&mut self, t: Truncate) -> Result<Applied, ApplyError> {
        let seg = self.segment(t.segment_id)?;
        let mut s = seg.lock();
        if s.deleted {
            return Err(ApplyError::SegmentNotFound(t.segment_id));
        }
        if t.head <= s.head {
            return Ok(Applied::Truncated {
                objects: Vec::new(),
            });
        }
        let bad = ApplyError::BadTruncate {
            segment: t.segment_id,
            head: t.head,
        };
        let below = if t.at_event_boundary {
            // A client's head: any event boundary (the API checked it). The
            // chunk holding it stays; tail bytes below it stay too (the tail
            // covers exactly [tier2_length, length)), are flushed as usual,
            // and their chunks leave with the next truncation.
            if t.head > s.length {
                return Err(bad);
            }
            s.chunks.partition_point(|c| c.end <= t.head)
        } else {
            // Retention's head: only whole chunks go, the new head is the
            // end of a chunk.
            match s.chunks.iter().position(|c| c.end == t.head) {
                Some(last) => last + 1,
                None => return Err(bad),
            }
        };
        let chunks: Vec<Chunk> = s.chunks.drain(..below).collect();
        s.head = t.head;
        s.index.truncated(t.head);
        drop(s);
        seg.notify();
        Ok(Applied::Truncated {
            objects: self.release_objects(&chunks),
        })
    }
}

impl StateMachine for ContainerState {
    type Output = Result<Applied, ApplyError>;

    fn apply(&mut self, _index: u64, command: Bytes) -> Self::Output {
        let cmd: ContainerCommand =
            prost::Message::decode(command).map_err(|e| ApplyError::Malformed(e.to_string()))?;
        match cmd.cmd {
            Some(Cmd::Create(r)) => Ok(self.create(r.segment_id)),
            Some(Cmd::Append(a)) => self.append(a),
            Some(Cmd::Seal(r)) => self.seal(r.segment_id),
            Some(Cmd::Delete(r)) => Ok(self.delete(r.segment_id)),
            Some(Cmd::ChunksFlushed(c)) => Ok(self.chunks_flushed(c.chunks)),
            Some(Cmd::Truncate(t)) => self.truncate(t),
            Some(Cmd::RateTick(t)) => Ok(self.rate_tick(&t)),
            Some(Cmd::MergeTxn(p)) => self.merge_txn(p),
            Some(Cmd::DropTxn(p)) => self.drop_txn(p),
            Some(Cmd::ForgetTxns(r)) => Ok(self.forget_txns(&r.txn_segment_ids)),
            Some(Cmd::SealTxn(p)) => Ok(self.seal_txn(p)),
            None => Err(ApplyError::Malformed("empty command".into())),
        }
    }

    type Snapshot = ContainerSnapshot;

    fn snapshot(&self) -> ContainerSnapshot {
        let all = |map: &SegmentMap| {
            let map = map.read().unwrap_or_else(|p| p.into_inner());
            let mut segs: Vec<Arc<Segment>> = map.values().cloned().collect();
            segs.sort_unstable_by_key(|s| s.id);
            segs.iter().map(|seg| segment_snapshot(seg)).collect()
        };
        ContainerSnapshot {
            segments: all(&self.segments),
            txn_segments: all(&self.parts),
            closed_txns: self.closed_snapshot(),
        }
    }

    /// The tails of the segments and transaction parts not yet in tier-2.
    fn snapshot_data_bytes(&self) -> Option<u64> {
        let tails = |map: &SegmentMap| -> u64 {
            let map = map.read().unwrap_or_else(|p| p.into_inner());
            map.values().map(|seg| seg.lock().tail_bytes()).sum()
        };
        Some(tails(&self.segments) + tails(&self.parts))
    }

    /// Replaces the state with a snapshot's: at start-up, or on a lagging
    /// replica when the leader sends one. Segments keep their identity, so
    /// readers waiting on one see the new state; segments the snapshot does
    /// not hold are deleted.
    fn restore(&mut self, snapshot: Bytes) -> Result<(), String> {
        let snap: ContainerSnapshot =
            prost::Message::decode(snapshot).map_err(|e| e.to_string())?;
        // Checked whole before anything changes, so a refused snapshot
        // leaves the state as it was.
        let mut ids = std::collections::HashSet::new();
        for g in snap.segments.iter().chain(&snap.txn_segments) {
            if !ids.insert(g.segment_id) {
                return Err(format!("segment {} is in the snapshot twice", g.segment_id));
            }
            check_segment_snapshot(g)?;
        }
        self.objects.clear();
        let segments = self.segments.clone();
        self.restore_map(&segments, snap.segments, false);
        let parts = self.parts.clone();
        self.restore_map(&parts, snap.txn_segments, true);
        self.restore_closed(snap.closed_txns);
        Ok(())
    }
}

impl ContainerState {
    /// Makes `map` hold exactly the snapshot's segments (`parts`: the
    /// transaction parts, whose memory also counts as transaction bytes).
    fn restore_map(&mut self, map: &SegmentMap, snap: Vec<SegmentSnapshot>, parts: bool) {
        let mut map = map.write().unwrap_or_else(|p| p.into_inner());
        let (add, release) = if parts {
            (
                TailBudget::add_txn as fn(&TailBudget, u64),
                TailBudget::release_txn as fn(&TailBudget, u64),
            )
        } else {
            (
                TailBudget::add as fn(&TailBudget, u64),
                TailBudget::release as fn(&TailBudget, u64),
            )
        };
        let mut kept = HashMap::with_capacity(snap.len());
        for g in snap {
            let seg = map
                .remove(&g.segment_id)
                .unwrap_or_else(|| Arc::new(Segment::new(g.segment_id)));
            let mut s = seg.lock();
            release(&self.budget, s.tail_mem_bytes());
            s.head = g.head;
            s.length = g.length;
            s.snapshot_length = g.length;
            s.sealed = g.sealed;
            s.deleted = false;
            s.part_of = g.part_of;
            s.tier2_length = g.tier2_length;
            for c in &g.chunks {
                *self.objects.entry(c.name.clone()).or_default() += 1;
            }
            s.chunks = g.chunks.into_iter().map(chunk_of).collect();
            s.writers = g
                .writers
                .into_iter()
                .map(|w| {
                    let mut recent = [(0, 0); RECENT_BATCHES];
                    for (slot, b) in recent.iter_mut().zip(&w.recent) {
                        *slot = (b.first_event_number, b.first_index);
                    }
                    let mark = WriterMark {
                        last: w.last_event_number,
                        seen_ms: w.seen_ms,
                        recent,
                    };
                    (w.writer_id, mark)
                })
                .collect();
            s.tail = g
                .tail
                .into_iter()
                .map(|b| match b.chunk {
                    Some(c) => {
                        *self.objects.entry(c.name.clone()).or_default() += 1;
                        (b.offset, Block::Tier2(chunk_of(c)))
                    }
                    None => (b.offset, Block::Mem(b.events)),
                })
                .collect();
            s.rates = Rates {
                events_total: g.events_total,
                bytes_total: g.bytes_total,
                ticked_events: g.ticked_events,
                ticked_bytes: g.ticked_bytes,
                ticked_ms: g.ticked_ms,
                events_per_second: rates_from(&g.events_per_second),
                bytes_per_second: rates_from(&g.bytes_per_second),
            };
            s.index = EventIndex::from_marks(g.index_marks.into_iter().map(mark_of).collect());
            add(&self.budget, s.tail_mem_bytes());
            drop(s);
            seg.notify();
            kept.insert(g.segment_id, seg);
        }
        for (_, gone) in map.drain() {
            let mut s = gone.lock();
            s.deleted = true;
            release(&self.budget, s.tail_mem_bytes());
            s.tail.clear();
            drop(s);
            gone.notify();
        }
        *map = kept;
    }
}

/// Refuses a segment's snapshot whose offsets do not line up as applying
/// keeps them (see [`super::segment`]): head and tier-2 length within the
/// length, chunks back to back up to the tier-2 length, tail blocks back to
/// back from there to the length, rate counters at or above their last
/// tick. Reads, flushes and ticks do arithmetic on these, and a snapshot
/// comes from disk or from a peer: a bad one must stop here, not panic a
/// reader later.
fn check_segment_snapshot(g: &SegmentSnapshot) -> Result<(), String> {
    let bad = |why: String| Err(format!("segment {} in the snapshot: {why}", g.segment_id));
    if g.head > g.length || g.tier2_length > g.length {
        return bad(format!(
            "head {} or tier-2 length {} past its length {}",
            g.head, g.tier2_length, g.length
        ));
    }
    if g.ticked_events > g.events_total || g.ticked_bytes > g.bytes_total {
        return bad("rate counters below their last tick".into());
    }
    let index = EventIndex::from_marks(g.index_marks.iter().cloned().map(mark_of).collect());
    if let Err(why) = index.check(g.head, g.length, g.events_total) {
        return bad(why);
    }
    let chunk_len = |c: &ChunkFlushed| {
        (c.start <= c.end && c.object_offset.checked_add(c.end - c.start).is_some())
            .then(|| c.end - c.start)
    };
    let mut end = None;
    for c in &g.chunks {
        if chunk_len(c).is_none() || end.is_some_and(|e| e != c.start) {
            return bad(format!("chunk [{}, {}) out of line", c.start, c.end));
        }
        end = Some(c.end);
    }
    if end.is_some_and(|e| e != g.tier2_length) {
        return bad(format!(
            "chunks end short of tier-2 length {}",
            g.tier2_length
        ));
    }
    let mut at = g.tier2_length;
    for b in &g.tail {
        let len = match &b.chunk {
            Some(c) if c.start == b.offset => chunk_len(c),
            Some(_) => None,
            None => Some(b.events.len() as u64),
        };
        match len.and_then(|len| at.checked_add(len)) {
            Some(next) if b.offset == at => at = next,
            _ => {
                return bad(format!(
                    "tail block at {} out of line (expected {at})",
                    b.offset
                ))
            }
        }
    }
    if at != g.length {
        return bad(format!("tail ends at {at}, not at its length {}", g.length));
    }
    Ok(())
}

/// A segment's (or a part's) state in the snapshot.
fn segment_snapshot(seg: &Segment) -> SegmentSnapshot {
    let mut s = seg.lock();
    // Log entries up to here are about to be compacted away.
    s.snapshot_length = s.length;
    let mut writers: Vec<WriterPosition> = s
        .writers
        .iter()
        .map(|(w, mark)| WriterPosition {
            writer_id: w.clone(),
            last_event_number: mark.last,
            seen_ms: mark.seen_ms,
            recent: mark
                .recent
                .iter()
                .take_while(|&&(first, _)| first > 0)
                .map(|&(first_event_number, first_index)| RecentBatch {
                    first_event_number,
                    first_index,
                })
                .collect(),
        })
        .collect();
    writers.sort_by(|a, b| a.writer_id.cmp(&b.writer_id));
    let flushed = |c: &Chunk| ChunkFlushed {
        segment_id: seg.id,
        start: c.start,
        end: c.end,
        name: c.name.clone(),
        flushed_at_ms: c.flushed_at_ms,
        object_offset: c.object_offset,
    };
    SegmentSnapshot {
        segment_id: seg.id,
        head: s.head,
        length: s.length,
        sealed: s.sealed,
        tier2_length: s.tier2_length,
        chunks: s.chunks.iter().map(flushed).collect(),
        writers,
        tail: s
            .tail
            .iter()
            .map(|(offset, block)| match block {
                Block::Mem(events) => TailBlock {
                    offset: *offset,
                    events: events.clone(),
                    chunk: None,
                },
                Block::Tier2(c) => TailBlock {
                    offset: *offset,
                    events: Bytes::new(),
                    chunk: Some(flushed(c)),
                },
            })
            .collect(),
        events_total: s.rates.events_total,
        bytes_total: s.rates.bytes_total,
        ticked_events: s.rates.ticked_events,
        ticked_bytes: s.rates.ticked_bytes,
        ticked_ms: s.rates.ticked_ms,
        events_per_second: s.rates.events_per_second.to_vec(),
        bytes_per_second: s.rates.bytes_per_second.to_vec(),
        part_of: s.part_of,
        index_marks: s
            .index
            .marks()
            .map(|m| IndexMarkSnapshot {
                offset: m.offset,
                index: m.index,
                first_ms: m.first_ms,
                last_ms: m.last_ms,
            })
            .collect(),
    }
}

fn mark_of(m: IndexMarkSnapshot) -> IndexMark {
    IndexMark {
        offset: m.offset,
        index: m.index,
        first_ms: m.first_ms,
        last_ms: m.last_ms,
    }
}

/// A tick's windows (a missing one is as long as the longest given; none:
/// one second, so a tick can never divide by zero).
fn windows_of_ms(v: &[u64]) -> [u64; RATE_WINDOWS] {
    let mut out = [v.iter().copied().max().unwrap_or(1000); RATE_WINDOWS];
    for (o, x) in out.iter_mut().zip(v) {
        *o = *x;
    }
    out
}

fn chunk_of(c: ChunkFlushed) -> Chunk {
    Chunk {
        start: c.start,
        end: c.end,
        name: c.name,
        object_offset: c.object_offset,
        flushed_at_ms: c.flushed_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::super::command::{ChunksFlushed, SegmentRef};
    use super::*;
    use proptest::prelude::*;

    /// The flush of one chunk, as the storage writer proposes it.
    fn one_chunk(c: ChunkFlushed) -> Cmd {
        Cmd::ChunksFlushed(crate::container::command::ChunksFlushed { chunks: vec![c] })
    }
    use bytes::BytesMut;

    fn state() -> (ContainerState, Arc<TailBudget>) {
        let budget = TailBudget::new(1 << 30);
        (
            ContainerState::new(SegmentMap::default(), budget.clone()),
            budget,
        )
    }

    fn apply(s: &mut ContainerState, cmd: Cmd) -> Result<Applied, ApplyError> {
        s.apply(0, ContainerCommand::encode(cmd).into())
    }

    fn append(writer: &str, first: i64, count: u32) -> Cmd {
        let mut events = BytesMut::new();
        for i in 0..count {
            aquifer_proto::frame::encode_event(
                &mut events,
                None,
                format!("e{}", first + i as i64).as_bytes(),
            );
        }
        Cmd::Append(Append {
            segment_id: 7,
            writer_id: writer.into(),
            first_event_number: first,
            event_count: count,
            events: events.freeze(),
            expected_length: None,
            txn_parent: None,
            append_ms: 0,
        })
    }

    /// Event `number` of `writer`, applied only at segment length `at`.
    fn append_at(writer: &str, number: i64, at: u64) -> Cmd {
        let Cmd::Append(a) = append(writer, number, 1) else {
            unreachable!()
        };
        Cmd::Append(Append {
            expected_length: Some(at),
            txn_parent: None,
            append_ms: 0,
            ..a
        })
    }

    fn length(s: &ContainerState) -> u64 {
        s.segment(7).unwrap().view().length
    }

    #[test]
    fn conditional_appends_apply_at_their_length_only_and_retries_are_duplicates() {
        let (mut s, _) = state();
        apply(&mut s, Cmd::Create(SegmentRef { segment_id: 7 })).unwrap();
        assert_eq!(
            apply(&mut s, append_at("a", 1, 0)).unwrap(),
            Applied::Appended {
                offset: 0,
                index: 0,
                duplicate: false
            }
        );
        let one = length(&s);
        // A racing writer that read length 0 is refused with the length,
        // and its number stays free.
        assert_eq!(
            apply(&mut s, append_at("b", 1, 0)),
            Err(ApplyError::ConditionFailed {
                segment: 7,
                expected: 0,
                actual: one
            })
        );
        assert_eq!(s.last_event_number(7, "b").unwrap(), 0);
        // The winner's retry (same number) is a duplicate even though the
        // length has moved on: never applied twice, never refused.
        assert!(matches!(
            apply(&mut s, append_at("a", 1, 0)).unwrap(),
            Applied::Appended {
                duplicate: true,
                ..
            }
        ));
        assert_eq!(length(&s), one);
        // The loser decides again at the new length, with the same number.
        assert_eq!(
            apply(&mut s, append_at("b", 1, one)).unwrap(),
            Applied::Appended {
                offset: one,
                index: 1,
                duplicate: false
            }
        );
        // A number that is not next is the caller's mistake, not a retry.
        let at = length(&s);
        assert!(matches!(
            apply(&mut s, append_at("a", 3, at)),
            Err(ApplyError::ConditionalEventNumberGap { expected: 2, .. })
        ));
        // Unconditional and conditional appends share the writer's numbers.
        apply(&mut s, append("a", 2, 1)).unwrap();
        assert_eq!(s.last_event_number(7, "a").unwrap(), 2);
        // Sealed refuses as for every append, before the condition.
        apply(&mut s, Cmd::Seal(SegmentRef { segment_id: 7 })).unwrap();
        assert_eq!(
            apply(&mut s, append_at("a", 3, 0)),
            Err(ApplyError::SegmentSealed(7))
        );
    }

    #[test]
    fn a_client_truncates_at_any_event_boundary_keeping_the_tail() {
        let (mut s, budget) = state();
        apply(&mut s, Cmd::Create(SegmentRef { segment_id: 7 })).unwrap();
        apply(&mut s, append("w", 1, 3)).unwrap();
        let seg = s.segment(7).unwrap();
        let end = length(&s);
        let first_event = aquifer_proto::frame::framed_len(None, 2) as u64;
        let truncate = |head| {
            Cmd::Truncate(Truncate {
                segment_id: 7,
                head,
                at_event_boundary: true,
            })
        };
        // Inside the tail, not at a chunk's end: fine for a client.
        assert_eq!(
            apply(&mut s, truncate(first_event)).unwrap(),
            Applied::Truncated {
                objects: Vec::new()
            }
        );
        let v = seg.view();
        assert_eq!((v.head, v.length, v.tail_bytes), (first_event, end, end));
        assert_eq!(budget.used(), end);
        assert!(matches!(
            seg.locate(0, 1 << 20),
            super::super::segment::ReadSource::Truncated { head } if head == first_event
        ));
        assert!(matches!(
            seg.locate(first_event, 1 << 20),
            super::super::segment::ReadSource::Tail(b) if b.len() as u64 == end - first_event
        ));
        // The tail is flushed as usual; the next truncation releases the
        // chunk once its end is at or below the head.
        apply(
            &mut s,
            one_chunk(ChunkFlushed {
                segment_id: 7,
                start: 0,
                end,
                name: "a".into(),
                flushed_at_ms: 0,
                object_offset: 0,
            }),
        )
        .unwrap();
        assert_eq!(
            apply(&mut s, truncate(2 * first_event)).unwrap(),
            Applied::Truncated {
                objects: Vec::new()
            }
        );
        assert_eq!(
            apply(&mut s, truncate(end)).unwrap(),
            Applied::Truncated {
                objects: vec!["a".to_string()]
            }
        );
        // Never backward, never past the length.
        assert_eq!(
            apply(&mut s, truncate(first_event)).unwrap(),
            Applied::Truncated {
                objects: Vec::new()
            }
        );
        assert_eq!(seg.view().head, end);
        assert!(matches!(
            apply(&mut s, truncate(end + 1)),
            Err(ApplyError::BadTruncate { .. })
        ));
        // The head survives a snapshot.
        let (mut restored, _) = state();
        restored
            .restore(prost::Message::encode_to_vec(&s.snapshot()).into())
            .unwrap();
        assert_eq!(restored.segment(7).unwrap().view().head, end);
    }

    #[test]
    fn event_indexes_are_dense_through_flushes_truncation_and_snapshots() {
        let (mut s, _) = state();
        apply(&mut s, Cmd::Create(SegmentRef { segment_id: 7 })).unwrap();
        let mut starts = Vec::new();
        for (i, count) in [3u32, 2, 4].into_iter().enumerate() {
            let Cmd::Append(mut a) = append("w", [1, 4, 6][i], count) else {
                unreachable!()
            };
            a.append_ms = 100 * (i as u64 + 1);
            match apply(&mut s, Cmd::Append(a)).unwrap() {
                Applied::Appended { offset, index, .. } => starts.push((offset, index)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            starts.iter().map(|s| s.1).collect::<Vec<_>>(),
            vec![0, 3, 5]
        );
        // Unnumbered (no writer id): applied every time, never a duplicate.
        for _ in 0..2 {
            let Cmd::Append(mut a) = append("", 0, 1) else {
                unreachable!()
            };
            a.append_ms = 400;
            assert!(matches!(
                apply(&mut s, Cmd::Append(a)).unwrap(),
                Applied::Appended {
                    duplicate: false,
                    ..
                }
            ));
        }
        let seg = s.segment(7).unwrap();
        assert_eq!(seg.index_view().end, 11);
        assert!(!seg.lock().writers.contains_key(""));
        // The first two batches become one chunk: one mark for it, with
        // the later append time.
        apply(
            &mut s,
            one_chunk(ChunkFlushed {
                segment_id: 7,
                start: 0,
                end: starts[2].0,
                name: "a".into(),
                flushed_at_ms: 1,
                object_offset: 0,
            }),
        )
        .unwrap();
        let marks = seg.marks_from(4, 10);
        assert_eq!(
            marks
                .iter()
                .map(|m| (m.index, m.first_ms, m.last_ms))
                .collect::<Vec<_>>(),
            vec![(0, 100, 200), (5, 300, 300), (9, 400, 400), (10, 400, 400)]
        );
        assert_eq!(seg.mark_by_time(150).map(|m| m.index), Some(0));
        assert_eq!(seg.mark_by_time(250).map(|m| m.index), Some(5));
        // A snapshot keeps the marks; retention past the chunk drops its.
        let (mut restored, _) = state();
        restored
            .restore(prost::Message::encode_to_vec(&s.snapshot()).into())
            .unwrap();
        let again = restored.segment(7).unwrap();
        assert_eq!(again.marks_from(0, 10), seg.marks_from(0, 10));
        assert_eq!(again.index_view().end, 11);
        apply(
            &mut restored,
            Cmd::Truncate(Truncate {
                segment_id: 7,
                head: starts[2].0,
                at_event_boundary: false,
            }),
        )
        .unwrap();
        assert_eq!(again.index_view().first, 5);
        // A snapshot whose marks are out of line is refused.
        let mut bad = s.snapshot();
        bad.segments[0].index_marks.swap(0, 1);
        let refused = state()
            .0
            .restore(prost::Message::encode_to_vec(&bad).into())
            .unwrap_err();
        assert!(refused.contains("event index mark"), "{refused}");
    }

    #[test]
    fn retried_batches_apply_once() {
        let (mut s, budget) = state();
        apply(&mut s, Cmd::Create(SegmentRef { segment_id: 7 })).unwrap();
        let first = apply(&mut s, append("w", 1, 3)).unwrap();
        assert_eq!(
            first,
            Applied::Appended {
                offset: 0,
                index: 0,
                duplicate: false
            }
        );
        let again = apply(&mut s, append("w", 1, 3)).unwrap();
        assert_eq!(
            again,
            Applied::Appended {
                offset: 0,
                index: 0,
                duplicate: true
            }
        );
        assert!(matches!(
            apply(&mut s, append("w", 3, 2)),
            Err(ApplyError::EventNumberOverlap { .. })
        ));
        assert!(matches!(
            apply(&mut s, append("w", 5, 1)),
            Err(ApplyError::EventNumberGap { expected: 4, .. })
        ));
        let next = apply(&mut s, append("w", 4, 1)).unwrap();
        assert!(matches!(
            next,
            Applied::Appended {
                index: 3,
                duplicate: false,
                ..
            }
        ));
        // Another writer has its own numbers.
        assert!(matches!(
            apply(&mut s, append("other", 1, 1)).unwrap(),
            Applied::Appended {
                duplicate: false,
                ..
            }
        ));
        assert_eq!(s.last_event_number(7, "w").unwrap(), 4);
        let seg = s.segment(7).unwrap();
        assert_eq!(budget.used(), seg.view().length);
    }

    fn tick(now_ms: u64, writer_idle_ms: u64) -> Cmd {
        Cmd::RateTick(RateTick {
            now_ms,
            windows_ms: vec![1000],
            writer_idle_ms,
        })
    }

    /// Idle writer ids are forgotten by the replicated tick time, the same
    /// on every replica and across a snapshot; one that comes back with a
    /// later number is refused as a gap naming the expiry, one that starts
    /// again at 1 is a new writer.
    #[test]
    fn idle_writer_ids_are_forgotten_at_a_rate_tick() {
        let (mut s, _) = state();
        apply(&mut s, Cmd::Create(SegmentRef { segment_id: 7 })).unwrap();
        apply(&mut s, append("old", 1, 2)).unwrap(); // before any tick: adopted
        apply(&mut s, tick(1_000, 10_000)).unwrap();
        apply(&mut s, tick(6_000, 10_000)).unwrap();
        apply(&mut s, append("new", 1, 1)).unwrap(); // seen at 6 000
        let snap = s.snapshot();
        let (mut r, _) = state();
        r.restore(prost::Message::encode_to_vec(&snap).into())
            .unwrap();
        for s in [&mut s, &mut r] {
            apply(s, tick(11_000, 10_000)).unwrap();
            assert_eq!(s.last_event_number(7, "old").unwrap(), 2, "idle 10 s: kept");
            apply(s, tick(11_001, 10_000)).unwrap();
            assert_eq!(s.last_event_number(7, "old").unwrap(), 0, "idle past 10 s");
            assert_eq!(s.last_event_number(7, "new").unwrap(), 1);
            let e = apply(s, append("old", 3, 1)).unwrap_err();
            assert!(
                matches!(e, ApplyError::UnknownWriterGap { first: 3, .. }),
                "{e:?}"
            );
            assert!(e.to_string().contains("writer_id_expiry_ms"), "{e}");
            apply(s, append("old", 1, 1)).unwrap();
            // 0 keeps every writer id, however idle.
            apply(s, tick(1_000_000, 0)).unwrap();
            assert_eq!(s.last_event_number(7, "new").unwrap(), 1);
        }
        assert_eq!(s.snapshot(), r.snapshot(), "replicas agree");
    }

    #[test]
    fn snapshot_restores_segments_writers_and_tail() {
        let (mut s, _) = state();
        apply(&mut s, Cmd::Create(SegmentRef { segment_id: 7 })).unwrap();
        apply(&mut s, append("w", 1, 2)).unwrap();
        let seg = s.segment(7).unwrap();
        let first = seg.unflushed(1).unwrap();
        apply(
            &mut s,
            one_chunk(ChunkFlushed {
                segment_id: 7,
                start: 0,
                end: first.len,
                name: "c".into(),
                flushed_at_ms: 0,
                object_offset: 0,
            }),
        )
        .unwrap();
        apply(&mut s, append("w", 3, 1)).unwrap();
        apply(&mut s, Cmd::Seal(SegmentRef { segment_id: 7 })).unwrap();
        let snap = s.snapshot();
        let (mut restored, budget) = state();
        restored
            .restore(prost::Message::encode_to_vec(&snap).into())
            .unwrap();
        assert_eq!(restored.snapshot(), snap);
        let v = restored.segment(7).unwrap().view();
        assert_eq!(v, seg.view());
        assert_eq!(budget.used(), v.tail_bytes);
        assert_eq!(restored.last_event_number(7, "w").unwrap(), 3);
        let restored = restored.segment(7).unwrap();
        assert_eq!(restored.batch_index("w", 1), Some(0));
        assert_eq!(restored.batch_index("w", 3), Some(2));
    }

    #[test]
    fn a_writer_s_last_five_batches_keep_their_place() {
        let (mut s, _) = state();
        apply(&mut s, Cmd::Create(SegmentRef { segment_id: 7 })).unwrap();
        apply(&mut s, append("other", 1, 1)).unwrap();
        for first in (1..=13).step_by(2) {
            apply(&mut s, append("w", first, 2)).unwrap();
        }
        let seg = s.segment(7).unwrap();
        // Seven batches of two after one other event: batch k (from 0)
        // starts at index 1 + 2k; the two oldest are forgotten.
        assert_eq!(seg.batch_index("w", 1), None);
        assert_eq!(seg.batch_index("w", 3), None);
        for (k, first) in (1..=13).step_by(2).enumerate().skip(2) {
            assert_eq!(seg.batch_index("w", first), Some(1 + 2 * k as u64));
        }
        assert_eq!(seg.batch_index("w", 2), None, "not a batch start");
        assert_eq!(seg.batch_index("other", 1), Some(0));
    }

    #[test]
    fn sealed_refuses_new_events_but_acks_retries() {
        let (mut s, _) = state();
        apply(&mut s, Cmd::Create(SegmentRef { segment_id: 7 })).unwrap();
        apply(&mut s, append("w", 1, 1)).unwrap();
        apply(&mut s, Cmd::Seal(SegmentRef { segment_id: 7 })).unwrap();
        assert_eq!(
            apply(&mut s, append("w", 2, 1)),
            Err(ApplyError::SegmentSealed(7))
        );
        assert!(matches!(
            apply(&mut s, append("w", 1, 1)).unwrap(),
            Applied::Appended {
                duplicate: true,
                ..
            }
        ));
    }

    #[test]
    fn chunk_flushed_moves_bytes_out_of_the_tail_and_rejects_orphans() {
        let (mut s, budget) = state();
        apply(&mut s, Cmd::Create(SegmentRef { segment_id: 7 })).unwrap();
        apply(&mut s, append("w", 1, 2)).unwrap();
        apply(&mut s, append("w", 3, 2)).unwrap();
        let seg = s.segment(7).unwrap();
        let first = seg.unflushed(1).unwrap();
        assert_eq!((first.start, first.parts.len()), (0, 1));
        let end = first.len;
        let flushed = |start, end, name: &str| {
            one_chunk(ChunkFlushed {
                segment_id: 7,
                start,
                end,
                name: name.into(),
                flushed_at_ms: 0,
                object_offset: 0,
            })
        };
        apply(&mut s, flushed(0, end, "a")).unwrap();
        // A second writer's chunk for the same range is an orphan.
        assert!(matches!(
            apply(&mut s, flushed(0, end, "b")).unwrap(),
            Applied::ChunksRecorded { recorded: 0, refused } if matches!(refused[..], [ApplyError::StaleChunk { .. }])
        ));
        let v = seg.view();
        assert_eq!((v.tier2_length, v.chunk_count), (end, 1));
        assert_eq!(budget.used(), v.length - end);
        assert!(
            matches!(seg.locate(0, 1 << 20), super::super::segment::ReadSource::Tier2(c) if c.name == "a")
        );
        assert!(
            matches!(seg.locate(end, 1 << 20), super::super::segment::ReadSource::Tail(b) if b.len() as u64 == v.length - end)
        );
        match apply(&mut s, Cmd::Delete(SegmentRef { segment_id: 7 })).unwrap() {
            Applied::Deleted { objects } => assert_eq!(objects, ["a"]),
            other => panic!("{other:?}"),
        }
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn truncate_drops_whole_chunks_and_reads_below_the_head_fail() {
        let (mut s, _) = state();
        apply(&mut s, Cmd::Create(SegmentRef { segment_id: 7 })).unwrap();
        apply(&mut s, append("w", 1, 2)).unwrap();
        let seg = s.segment(7).unwrap();
        let end = seg.view().length;
        apply(
            &mut s,
            one_chunk(ChunkFlushed {
                segment_id: 7,
                start: 0,
                end,
                name: "a".into(),
                flushed_at_ms: 5,
                object_offset: 0,
            }),
        )
        .unwrap();
        let truncate = |head| {
            Cmd::Truncate(Truncate {
                segment_id: 7,
                head,
                at_event_boundary: false,
            })
        };
        assert!(matches!(
            apply(&mut s, truncate(end - 1)),
            Err(ApplyError::BadTruncate { .. })
        ));
        match apply(&mut s, truncate(end)).unwrap() {
            Applied::Truncated { objects } => assert_eq!(objects, ["a"]),
            other => panic!("{other:?}"),
        }
        assert_eq!(seg.view().head, end);
        assert!(matches!(
            seg.locate(0, 1 << 20),
            super::super::segment::ReadSource::Truncated { head } if head == end
        ));
        // Idempotent: an older head changes nothing.
        assert_eq!(
            apply(&mut s, truncate(end)).unwrap(),
            Applied::Truncated {
                objects: Vec::new()
            }
        );
    }

    #[test]
    fn an_object_shared_by_segments_is_released_by_the_last_one() {
        let (mut s, _) = state();
        let mut chunks = Vec::new();
        let mut object_offset = 0;
        for id in [7, 8] {
            apply(&mut s, Cmd::Create(SegmentRef { segment_id: id })).unwrap();
            let Cmd::Append(mut a) = append("w", 1, 2) else {
                unreachable!()
            };
            a.segment_id = id;
            let end = a.events.len() as u64;
            apply(&mut s, Cmd::Append(a)).unwrap();
            chunks.push(ChunkFlushed {
                segment_id: id,
                start: 0,
                end,
                name: "shared".into(),
                flushed_at_ms: 0,
                object_offset,
            });
            object_offset += end;
        }
        // One piece refers to a segment that does not exist: refused alone.
        chunks.push(ChunkFlushed {
            segment_id: 99,
            end: 1,
            name: "shared".into(),
            ..Default::default()
        });
        let flushed = apply(&mut s, Cmd::ChunksFlushed(ChunksFlushed { chunks })).unwrap();
        assert!(matches!(
            flushed,
            Applied::ChunksRecorded { recorded: 2, ref refused } if refused.len() == 1
        ));
        let second = s.segment(8).unwrap();
        assert!(
            matches!(second.locate(0, 1 << 20), super::super::segment::ReadSource::Tier2(c) if c.object_offset > 0)
        );
        let length = second.view().length;
        assert_eq!(
            apply(&mut s, Cmd::Delete(SegmentRef { segment_id: 7 })).unwrap(),
            Applied::Deleted {
                objects: Vec::new()
            }
        );
        // The snapshot keeps the count: the last reference still frees it.
        let snap = prost::Message::encode_to_vec(&s.snapshot());
        let (mut restored, _) = state();
        restored.restore(snap.into()).unwrap();
        assert_eq!(
            apply(
                &mut restored,
                Cmd::Truncate(Truncate {
                    segment_id: 8,
                    head: length,
                    at_event_boundary: false,
                })
            )
            .unwrap(),
            Applied::Truncated {
                objects: vec!["shared".to_string()]
            }
        );
    }

    /// A snapshot with most of what a segment can hold: segment 7 with a
    /// chunk, tail bytes and a tier-2 block (as a merged spilled part
    /// leaves), and segment 8 with tail bytes only.
    fn rich_snapshot() -> ContainerSnapshot {
        let (mut s, _) = state();
        apply(&mut s, Cmd::Create(SegmentRef { segment_id: 7 })).unwrap();
        apply(&mut s, append("w", 1, 2)).unwrap();
        let first = s.segment(7).unwrap().unflushed(1).unwrap();
        apply(
            &mut s,
            one_chunk(ChunkFlushed {
                segment_id: 7,
                start: 0,
                end: first.len,
                name: "c".into(),
                flushed_at_ms: 0,
                object_offset: 0,
            }),
        )
        .unwrap();
        apply(&mut s, append("w", 3, 2)).unwrap();
        apply(&mut s, Cmd::Create(SegmentRef { segment_id: 8 })).unwrap();
        let Cmd::Append(a) = append("v", 1, 3) else {
            unreachable!()
        };
        apply(&mut s, Cmd::Append(Append { segment_id: 8, ..a })).unwrap();
        let mut snap = s.snapshot();
        let g = &mut snap.segments[0];
        g.tail.push(TailBlock {
            offset: g.length,
            events: Bytes::new(),
            chunk: Some(ChunkFlushed {
                segment_id: 7,
                start: g.length,
                end: g.length + 100,
                name: "spilled".into(),
                flushed_at_ms: 0,
                object_offset: 0,
            }),
        });
        g.length += 100;
        snap
    }

    /// Every number of `snap` a bad snapshot could get wrong.
    fn numbers(snap: &mut ContainerSnapshot) -> Vec<&mut u64> {
        let mut out = Vec::new();
        for g in snap.segments.iter_mut().chain(snap.txn_segments.iter_mut()) {
            out.extend([
                &mut g.segment_id,
                &mut g.length,
                &mut g.tier2_length,
                &mut g.head,
                &mut g.events_total,
                &mut g.bytes_total,
                &mut g.ticked_events,
                &mut g.ticked_bytes,
            ]);
            let tail_chunks = g.tail.iter_mut().flat_map(|b| {
                std::iter::once(&mut b.offset).chain(
                    b.chunk
                        .iter_mut()
                        .flat_map(|c| [&mut c.start, &mut c.end, &mut c.object_offset]),
                )
            });
            out.extend(tail_chunks);
            for c in &mut g.chunks {
                out.extend([&mut c.start, &mut c.end, &mut c.object_offset]);
            }
        }
        out
    }

    /// Reads a restored state every way the read path and the storage
    /// writer do, and restores its snapshot again.
    fn use_restored(s: &ContainerState, snap: &ContainerSnapshot) {
        for g in &snap.segments {
            let seg = s.segment(g.segment_id).unwrap();
            let v = seg.view();
            let mut offsets = vec![0, v.head, v.tier2_length, v.length, v.length + 1];
            offsets.extend(g.tail.iter().flat_map(|b| [b.offset, b.offset + 1]));
            offsets.extend(g.chunks.iter().flat_map(|c| [c.start, c.end]));
            for o in offsets {
                let _ = seg.locate(o, 1024);
                let _ = seg.locate_range(v.head, o.max(v.head));
                if o >= v.head {
                    seg.known_boundary_below(o);
                }
            }
            let _ = seg.unflushed(1 << 20);
            seg.referenced_objects();
        }
        let (mut again, _) = state();
        again
            .restore(prost::Message::encode_to_vec(&s.snapshot()).into())
            .unwrap();
    }

    fn offset() -> impl Strategy<Value = u64> {
        prop_oneof![4 => 0u64..600, 1 => u64::MAX - 2.., 1 => any::<u64>()]
    }

    /// Restores `bytes` into a fresh state; uses what it accepted. Returns
    /// the largest allocation restoring made.
    fn restore_and_use(bytes: Vec<u8>) -> usize {
        let (mut s, _) = state();
        let len = bytes.len();
        let (restored, largest) =
            aquifer_alloc_probe::largest_allocation(|| s.restore(bytes.into()).is_ok());
        if restored {
            let snap = s.snapshot();
            use_restored(&s, &snap);
        }
        // Decoded messages grow vectors of their fields; each element
        // costs at least two input bytes.
        assert!(
            largest <= 256 * len + 64 * 1024,
            "{largest} bytes for {len}"
        );
        largest
    }

    proptest::proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn arbitrary_snapshot_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            restore_and_use(bytes);
        }

        #[test]
        fn damaged_snapshots_are_refused_or_read_safely(
            edits in proptest::collection::vec((any::<usize>(), offset()), 0..3),
            flips in proptest::collection::vec((any::<usize>(), 1u8..), 0..3),
        ) {
            let mut snap = rich_snapshot();
            {
                let mut fields = numbers(&mut snap);
                for (which, value) in &edits {
                    let n = fields.len();
                    *fields[which % n] = *value;
                }
            }
            let mut bytes = prost::Message::encode_to_vec(&snap);
            for (at, x) in &flips {
                let at = at % bytes.len();
                bytes[at] ^= x;
            }
            restore_and_use(bytes);
        }
    }

    #[test]
    fn snapshots_out_of_line_are_refused_and_change_nothing() {
        let snap = rich_snapshot();
        let (mut s, _) = state();
        s.restore(prost::Message::encode_to_vec(&snap).into())
            .unwrap();
        use_restored(&s, &snap);
        let before = s.snapshot();
        let refused = |edit: &dyn Fn(&mut ContainerSnapshot)| {
            let mut bad = snap.clone();
            edit(&mut bad);
            let (mut t, _) = state();
            t.restore(prost::Message::encode_to_vec(&before).into())
                .unwrap();
            let err = t
                .restore(prost::Message::encode_to_vec(&bad).into())
                .unwrap_err();
            assert_eq!(t.snapshot(), before, "{err}");
            err
        };
        let e = refused(&|s| s.segments[0].tier2_length = s.segments[0].length + 1);
        assert!(e.contains("past its length"), "{e}");
        let e = refused(&|s| s.segments[0].chunks[0].end += 1);
        assert!(e.contains("out of line") || e.contains("short"), "{e}");
        let e = refused(&|s| s.segments[1].tail[0].offset += 1);
        assert!(e.contains("tail block"), "{e}");
        let e = refused(&|s| s.segments[0].ticked_events = s.segments[0].events_total + 1);
        assert!(e.contains("rate counters"), "{e}");
        let e = refused(&|s| s.segments[1].segment_id = 7);
        assert!(e.contains("twice"), "{e}");
    }
}
