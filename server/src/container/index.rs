//! A segment's event index: where its events are by their dense number.
//!
//! Every event of a segment has an **event index**, the number of events
//! appended to the segment before it (0, 1, 2, … with no gaps: Kafka's
//! offsets). The index at the segment's length is its event count
//! (`Rates::events_total`). This module owns the sparse marks that turn an
//! event index into a byte offset: one per applied batch while its bytes
//! are in the tail buffer, thinned to one per chunk once they are in
//! tier-2, so memory and snapshots grow by one mark per chunk, not per
//! event. Each mark also keeps the append times of the batches it covers
//! (by-time lookups, timestamps of events written without one).
//!
//! Replicated state, changed only by the container's thread, from the
//! command being applied: it never reads a clock.

use std::collections::VecDeque;

/// Where one applied batch (or, once flushed, one chunk) begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexMark {
    /// Byte offset of its first event (an event boundary).
    pub offset: u64,
    /// Event index of that event.
    pub index: u64,
    /// Append time (ms since the epoch) of the first batch it covers.
    pub first_ms: u64,
    /// Append time of the last batch it covers (≥ `first_ms`).
    pub last_ms: u64,
}

/// The marks of one segment, in offset (and index) order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EventIndex {
    marks: VecDeque<IndexMark>,
}

impl EventIndex {
    pub fn from_marks(marks: Vec<IndexMark>) -> Self {
        EventIndex {
            marks: marks.into(),
        }
    }

    pub fn marks(&self) -> impl Iterator<Item = &IndexMark> {
        self.marks.iter()
    }

    /// A batch was applied at `offset`, its first event numbered `index`.
    pub fn push(&mut self, offset: u64, index: u64, append_ms: u64) {
        self.marks.push_back(IndexMark {
            offset,
            index,
            first_ms: append_ms,
            last_ms: append_ms,
        });
    }

    /// Bytes `[start, end)` became one chunk: the marks inside it fold
    /// into the one at `start`, which keeps their latest append time.
    pub fn flushed(&mut self, start: u64, end: u64) {
        let from = self.marks.partition_point(|m| m.offset <= start);
        let to = self.marks.partition_point(|m| m.offset < end);
        if from >= to {
            return;
        }
        let last_ms = self
            .marks
            .range(from..to)
            .map(|m| m.last_ms)
            .max()
            .unwrap_or(0);
        if let Some(keep) = from.checked_sub(1).and_then(|i| self.marks.get_mut(i)) {
            keep.last_ms = keep.last_ms.max(last_ms);
        }
        self.marks.drain(from..to);
    }

    /// The segment now starts at `head`: marks below it go.
    pub fn truncated(&mut self, head: u64) {
        let below = self.marks.partition_point(|m| m.offset < head);
        self.marks.drain(..below);
    }

    /// A transaction part's marks, landing at `base` with its first event
    /// numbered `base_index` (a merge).
    pub fn append_shifted(&mut self, part: &EventIndex, base: u64, base_index: u64) {
        self.marks.extend(part.marks.iter().map(|m| IndexMark {
            offset: base + m.offset,
            index: base_index + m.index,
            ..*m
        }));
    }

    /// The event index of the first event a reader can reach: the first
    /// mark's (`events` when there is none: nothing readable by index).
    pub fn first_index(&self, events: u64) -> u64 {
        self.marks.front().map_or(events, |m| m.index)
    }

    /// The marks from the one at or below event `index` on (none when no
    /// mark is at or below it).
    pub fn starting_at(&self, index: u64) -> impl Iterator<Item = &IndexMark> {
        let i = self.marks.partition_point(|m| m.index <= index);
        let start = if i == 0 { self.marks.len() } else { i - 1 };
        self.marks.range(start..)
    }

    /// The first mark that may cover an event appended at or after
    /// `time_ms`: exact per batch in the tail, per chunk in tier-2, never
    /// past such an event.
    pub fn by_time(&self, time_ms: u64) -> Option<IndexMark> {
        self.marks.iter().find(|m| m.last_ms >= time_ms).copied()
    }

    /// Checks marks restored from a snapshot: in order, inside
    /// `[head, length]` and `[0, events]`.
    pub fn check(&self, head: u64, length: u64, events: u64) -> Result<(), String> {
        let mut prev: Option<&IndexMark> = None;
        for m in &self.marks {
            let in_order = prev.is_none_or(|p| p.offset < m.offset && p.index < m.index);
            if !in_order || m.offset < head || m.offset > length || m.index > events {
                return Err(format!(
                    "event index mark at offset {} (event {}) out of line",
                    m.offset, m.index
                ));
            }
            if m.first_ms > m.last_ms {
                return Err(format!(
                    "event index mark at offset {} has its times reversed",
                    m.offset
                ));
            }
            prev = Some(m);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(batches: &[(u64, u64, u64)]) -> EventIndex {
        let mut x = EventIndex::default();
        for &(offset, index, ms) in batches {
            x.push(offset, index, ms);
        }
        x
    }

    #[test]
    fn a_flush_folds_its_batches_into_the_chunk_start() {
        let mut x = index(&[(0, 0, 10), (100, 3, 20), (250, 7, 30), (400, 9, 40)]);
        x.flushed(0, 250);
        let marks: Vec<_> = x.marks().copied().collect();
        assert_eq!(marks.len(), 3);
        assert_eq!(
            marks[0],
            IndexMark {
                offset: 0,
                index: 0,
                first_ms: 10,
                last_ms: 20
            }
        );
        assert_eq!(x.starting_at(5).next().map(|m| m.offset), Some(0));
        assert_eq!(x.starting_at(7).next().map(|m| m.offset), Some(250));
        assert_eq!(x.starting_at(100).next().map(|m| m.offset), Some(400));
        // By time: the chunk may hold an event of time 15, the batch of 30
        // is exact.
        assert_eq!(x.by_time(15).map(|m| m.index), Some(0));
        assert_eq!(x.by_time(21).map(|m| m.index), Some(7));
        assert_eq!(x.by_time(41), None);
    }

    #[test]
    fn truncation_and_merges_keep_order() {
        let mut x = index(&[(0, 0, 1), (100, 3, 2)]);
        x.truncated(50);
        assert_eq!(x.first_index(9), 3);
        let part = index(&[(0, 0, 5), (10, 1, 6)]);
        x.append_shifted(&part, 200, 9);
        assert_eq!(
            x.starting_at(10).next().map(|m| (m.offset, m.index)),
            Some((210, 10))
        );
        assert!(x.check(50, 220, 11).is_ok());
        assert!(x.check(150, 220, 11).is_err());
        assert!(x.check(50, 220, 9).is_err());
        let empty = EventIndex::default();
        assert_eq!(empty.first_index(4), 4);
        assert_eq!(empty.starting_at(4).next(), None);
    }
}
