//! One segment's state as its container applied it, shared with readers.
//!
//! The container's thread is the only writer (under the mutex, never across
//! an await); readers take short locks to copy out `Bytes` handles. The tail
//! buffer holds exactly the bytes `[tier2_length, length)`, one block per
//! applied batch, so every block starts and ends at an event boundary. A
//! block is bytes in memory, or — for a merged transaction part that had
//! spilled to tier-2 — a chunk already in tier-2, which becomes one of the
//! segment's chunks (no copy) once everything before it is flushed.

use super::index::{EventIndex, IndexMark};
use super::rates::{Rates, RATE_WINDOWS};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

use crate::error::Error;

/// Bytes `[start, end)` of a segment, stored in tier-2 object `name` from
/// `object_offset` on (an object may hold chunks of several segments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub start: u64,
    pub end: u64,
    pub name: String,
    pub object_offset: u64,
    /// When it was flushed (ms since the epoch): retention by time.
    pub flushed_at_ms: u64,
}

#[derive(Debug, Default)]
pub(crate) struct SegmentState {
    /// First readable offset: retention moves it forward.
    pub head: u64,
    pub length: u64,
    pub sealed: bool,
    pub deleted: bool,
    pub tier2_length: u64,
    /// The length when the container last took a snapshot: bytes above it
    /// are still in the local log.
    pub snapshot_length: u64,
    /// Contiguous, in offset order, ending at `tier2_length`.
    pub chunks: Vec<Chunk>,
    /// `(offset, block)` per applied batch, covering `[tier2_length, length)`.
    pub tail: VecDeque<(u64, Block)>,
    /// Last applied event number per writer id, and when it last wrote.
    pub writers: HashMap<String, WriterMark>,
    /// Traffic counters and moving averages (replicated state).
    pub rates: Rates,
    /// For a transaction part: its parent segment (0: a stream segment).
    pub part_of: u64,
    /// Marks from event index to offset (`index.rs`); the event count is
    /// `rates.events_total`.
    pub index: EventIndex,
}

/// What a segment remembers of one writer id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterMark {
    /// Its last applied event number.
    pub last: i64,
    /// The segment's tick time (`rates.ticked_ms`) at its last append: the
    /// replicated clock, so every replica forgets it at the same entry (0:
    /// before any tick, adopted by the next).
    pub seen_ms: u64,
    /// Its last [`RECENT_BATCHES`] batches, newest first, as (first event
    /// number, first event index; 0, 0 where there is none yet): where a
    /// retried batch was applied, so a duplicate is answered with its
    /// original place (Kafka's producers expect their last 5 batches'
    /// offsets back). The index is of the segment the batch was applied
    /// to: a transaction part's own, before its merge.
    pub recent: [(i64, u64); RECENT_BATCHES],
}

/// How many batches per writer id a segment remembers the place of:
/// Kafka's limit of in-flight requests per idempotent producer.
pub const RECENT_BATCHES: usize = 5;

impl WriterMark {
    /// The mark after a batch of event numbers `first..=last` was applied
    /// at event index `index` (to `before`, the writer's previous mark).
    pub fn after(
        before: Option<&WriterMark>,
        first: i64,
        last: i64,
        index: u64,
        seen_ms: u64,
    ) -> Self {
        let mut recent = before.map_or([(0, 0); RECENT_BATCHES], |m| m.recent);
        recent.rotate_right(1);
        recent[0] = (first, index);
        WriterMark {
            last,
            seen_ms,
            recent,
        }
    }
}

/// One block of a tail buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// Applied bytes, in memory (and the log) until flushed.
    Mem(Bytes),
    /// Bytes already in tier-2 (a merged transaction part's spilled chunk,
    /// in this segment's offsets): recorded as a chunk as it is reached.
    Tier2(Chunk),
}

impl Block {
    pub fn len(&self) -> u64 {
        match self {
            Block::Mem(b) => b.len() as u64,
            Block::Tier2(c) => c.end - c.start,
        }
    }

    /// Bytes it holds in memory.
    pub fn mem_len(&self) -> u64 {
        match self {
            Block::Mem(b) => b.len() as u64,
            Block::Tier2(_) => 0,
        }
    }
}

impl SegmentState {
    /// Last applied event number of `writer` (0: none, or forgotten).
    pub fn last_event_number(&self, writer: &str) -> i64 {
        self.writers.get(writer).map_or(0, |w| w.last)
    }

    /// The event index where `writer`'s batch starting at event number
    /// `first` was applied, if it is one of its recent batches.
    pub fn batch_index(&self, writer: &str, first: i64) -> Option<u64> {
        let mark = self.writers.get(writer)?;
        mark.recent
            .iter()
            .find(|&&(number, _)| number == first && number > 0)
            .map(|&(_, index)| index)
    }

    /// Forgets the writer ids that wrote nothing for longer than
    /// `idle_ms` by the segment's tick time (0: keeps them all); returns
    /// how many it forgot.
    pub fn expire_writers(&mut self, idle_ms: u64) -> usize {
        let now = self.rates.ticked_ms;
        let before = self.writers.len();
        self.writers.retain(|_, w| {
            if w.seen_ms == 0 {
                w.seen_ms = now;
            }
            idle_ms == 0 || now.saturating_sub(w.seen_ms) <= idle_ms
        });
        before - self.writers.len()
    }

    pub fn tail_bytes(&self) -> u64 {
        self.length - self.tier2_length
    }

    /// Bytes of the tail held in memory (what the tail budget counts).
    pub fn tail_mem_bytes(&self) -> u64 {
        self.tail.iter().map(|(_, b)| b.mem_len()).sum()
    }

    /// Records tier-2 blocks at the front of the tail as chunks: each
    /// continues tier-2 exactly where it ends now.
    pub fn promote_tier2_blocks(&mut self) {
        while let Some((offset, Block::Tier2(c))) = self.tail.front() {
            if *offset != self.tier2_length {
                break;
            }
            let c = c.clone();
            self.tail.pop_front();
            self.tier2_length = c.end;
            self.chunks.push(c);
        }
    }
}

/// Counters of a segment at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegmentView {
    pub head: u64,
    pub length: u64,
    pub sealed: bool,
    pub tier2_length: u64,
    pub chunk_count: u32,
    pub tail_bytes: u64,
    pub log_bytes: u64,
    /// Events/s and bytes/s per rate window, shortest first.
    pub events_per_second: [f64; RATE_WINDOWS],
    pub bytes_per_second: [f64; RATE_WINDOWS],
}

/// A segment by event index at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexView {
    /// The first event index a reader can reach (retention moves it).
    pub first: u64,
    /// One past the last event's index: the segment's event count.
    pub end: u64,
    pub deleted: bool,
}

/// Where the bytes at a read offset are.
#[derive(Debug)]
pub enum ReadSource {
    /// Whole events from the tail buffer, starting at the read offset.
    Tail(Bytes),
    /// In tier-2, in this chunk.
    Tier2(Chunk),
    /// At the end: nothing more now. `sealed`: nothing more ever.
    End { sealed: bool },
    /// The segment was deleted.
    Deleted,
    /// Retention removed the offset; the segment now starts at `head`.
    Truncated { head: u64 },
    /// The offset is past the segment's length.
    PastEnd { length: u64 },
}

pub struct Segment {
    pub id: u64,
    pub(crate) state: Mutex<SegmentState>,
    /// Bumped on every change readers may wait for (append, seal, delete).
    changed: watch::Sender<u64>,
}

impl Segment {
    pub(crate) fn new(id: u64) -> Self {
        Segment {
            id,
            state: Mutex::new(SegmentState::default()),
            changed: watch::channel(0).0,
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, SegmentState> {
        // A panic while holding this lock is a bug that already stopped the
        // container thread; readers keep going with the state as it is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Subscribe before checking for data so no change is missed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn view(&self) -> SegmentView {
        let s = self.lock();
        SegmentView {
            head: s.head,
            length: s.length,
            sealed: s.sealed,
            tier2_length: s.tier2_length,
            chunk_count: u32::try_from(s.chunks.len()).unwrap_or(u32::MAX),
            tail_bytes: s.tail_bytes(),
            log_bytes: s.length - s.snapshot_length,
            events_per_second: s.rates.events_per_second,
            bytes_per_second: s.rates.bytes_per_second,
        }
    }

    /// Tier-2 objects it refers to: its chunks' and its tail's tier-2
    /// blocks'.
    pub fn referenced_objects(&self) -> Vec<String> {
        let s = self.lock();
        let tail = s.tail.iter().filter_map(|(_, b)| match b {
            Block::Tier2(c) => Some(c.name.clone()),
            Block::Mem(_) => None,
        });
        s.chunks
            .iter()
            .map(|c| c.name.clone())
            .chain(tail)
            .collect()
    }

    /// Last applied event number of `writer` here (0: none, or forgotten).
    pub fn last_event_number(&self, writer: &str) -> i64 {
        self.lock().last_event_number(writer)
    }

    /// Where `writer`'s recent batch from event number `first` was
    /// applied (its first event's index), if it is still remembered.
    pub fn batch_index(&self, writer: &str, first: i64) -> Option<u64> {
        self.lock().batch_index(writer, first)
    }

    /// The segment by event index: the first index a reader can reach and
    /// the index one past its last event (its event count).
    pub fn index_view(&self) -> IndexView {
        let s = self.lock();
        let end = s.rates.events_total;
        IndexView {
            first: s.index.first_index(end),
            end,
            deleted: s.deleted,
        }
    }

    /// Up to `max` marks from the one at or below event `index` on (where
    /// to start reading to reach it, and the append times after it).
    pub fn marks_from(&self, index: u64, max: usize) -> Vec<IndexMark> {
        self.lock()
            .index
            .starting_at(index)
            .take(max)
            .copied()
            .collect()
    }

    /// The first mark that may cover an event appended at or after
    /// `time_ms` (`EventIndex::by_time`).
    pub fn mark_by_time(&self, time_ms: u64) -> Option<IndexMark> {
        self.lock().index.by_time(time_ms)
    }

    /// The last mark (for the latest append time).
    pub fn last_mark(&self) -> Option<IndexMark> {
        self.lock().index.marks().last().copied()
    }

    /// The chunks that make up the segment in tier-2, oldest first.
    pub fn chunks(&self) -> Vec<Chunk> {
        self.lock().chunks.clone()
    }

    /// Decides where a read at `offset` is served from; tail bytes come back
    /// whole events only, about `max_bytes` (at least one batch).
    pub fn locate(&self, offset: u64, max_bytes: usize) -> ReadSource {
        let s = self.lock();
        if s.deleted {
            return ReadSource::Deleted;
        }
        if offset > s.length {
            return ReadSource::PastEnd { length: s.length };
        }
        if offset < s.head {
            return ReadSource::Truncated { head: s.head };
        }
        if offset == s.length {
            return ReadSource::End { sealed: s.sealed };
        }
        if offset < s.tier2_length {
            let i = s.chunks.partition_point(|c| c.end <= offset);
            return match s.chunks.get(i) {
                Some(c) => ReadSource::Tier2(c.clone()),
                None => ReadSource::PastEnd { length: s.length },
            };
        }
        // The block holding `offset`: the last one starting at or before it.
        let i = s
            .tail
            .partition_point(|(o, _)| *o <= offset)
            .saturating_sub(1);
        let mut parts: Vec<Bytes> = Vec::new();
        let mut total = 0usize;
        for (block_offset, block) in s.tail.iter().skip(i) {
            let bytes = match block {
                Block::Mem(bytes) => bytes,
                // A merged part's spilled chunk: read from tier-2.
                Block::Tier2(c) if parts.is_empty() => return ReadSource::Tier2(c.clone()),
                Block::Tier2(_) => break,
            };
            let part = if parts.is_empty() {
                bytes.slice((offset - block_offset) as usize..)
            } else {
                bytes.clone()
            };
            if !parts.is_empty() && total + part.len() > max_bytes {
                break;
            }
            total += part.len();
            parts.push(part);
        }
        drop(s);
        if parts.len() == 1 {
            return ReadSource::Tail(parts.swap_remove(0));
        }
        let mut out = BytesMut::with_capacity(total);
        for p in parts {
            out.extend_from_slice(&p);
        }
        ReadSource::Tail(out.freeze())
    }

    /// The nearest offset at or below `offset` (which must be at or above
    /// the head) known to be an event boundary without reading any bytes:
    /// the head, the start of the chunk or tail block holding `offset`, or
    /// the length. Chunks and tail blocks start at batch boundaries.
    pub fn known_boundary_below(&self, offset: u64) -> u64 {
        let s = self.lock();
        if offset >= s.length {
            return s.length;
        }
        let start = if offset < s.tier2_length {
            let i = s.chunks.partition_point(|c| c.end <= offset);
            s.chunks.get(i).map_or(s.head, |c| c.start)
        } else {
            let i = s.tail.partition_point(|(o, _)| *o <= offset);
            i.checked_sub(1)
                .and_then(|i| s.tail.get(i))
                .map_or(s.tier2_length, |(o, _)| *o)
        };
        start.max(s.head).min(offset)
    }

    /// Direct scans: the tier-2 pieces of `[start, end)` and where the
    /// rest, still in the tail, begins.
    pub fn locate_range(&self, start: u64, end: u64) -> Result<(Vec<ChunkPiece>, u64), Error> {
        let s = self.lock();
        if s.deleted {
            return Err(Error::SegmentNotFound(self.id));
        }
        if start < s.head {
            return Err(Error::Truncated {
                segment: self.id,
                offset: start,
                head: s.head,
            });
        }
        if end > s.length || start > end {
            return Err(Error::OffsetOutOfRange {
                segment: self.id,
                offset: end.max(start),
                length: s.length,
            });
        }
        let flushed_end = end.min(s.tier2_length).max(start);
        let first = s.chunks.partition_point(|c| c.end <= start);
        let slices = s.chunks[first..]
            .iter()
            .take_while(|c| c.start < flushed_end)
            .map(|c| ChunkPiece {
                chunk: c.clone(),
                from: c.start.max(start),
                to: c.end.min(flushed_end),
            })
            .collect();
        Ok((slices, flushed_end))
    }

    /// The oldest unflushed bytes, whole batches, about `max_bytes` (at least
    /// one batch): what the storage writer puts next. None when all is flushed.
    pub fn unflushed(&self, max_bytes: u64) -> Option<Unflushed> {
        // Handles only, no copy: the container's thread must not wait on a
        // multi-MiB copy to apply the next batch, and the put takes parts.
        let s = self.lock();
        let start = s.tail.front()?.0;
        let mut parts: Vec<Bytes> = Vec::new();
        let mut len = 0u64;
        for (_, block) in s.tail.iter() {
            // Tier-2 blocks are recorded as chunks once reached, not put.
            let Block::Mem(bytes) = block else { break };
            if !parts.is_empty() && len + bytes.len() as u64 > max_bytes {
                break;
            }
            len += bytes.len() as u64;
            parts.push(bytes.clone());
        }
        (!parts.is_empty()).then_some(Unflushed { start, len, parts })
    }
}

/// Bytes `[from, to)` of a segment, inside `chunk`.
#[derive(Debug)]
pub struct ChunkPiece {
    pub chunk: Chunk,
    pub from: u64,
    pub to: u64,
}

/// Bytes `[start, start + len)` of a segment's tail buffer, as its blocks.
#[derive(Debug)]
pub struct Unflushed {
    pub start: u64,
    pub len: u64,
    pub parts: Vec<Bytes>,
}
