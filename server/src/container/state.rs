//! The container state machine: applies committed commands to its segments.
//!
//! Deterministic: it reads only the command and its own state (never clocks
//! or tier-2), so replaying the log rebuilds exactly the state that was
//! acknowledged. It must never apply a writer's event number twice.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use super::command::{
    Append, ChunkFlushed, Cmd, ContainerCommand, ContainerSnapshot, SegmentSnapshot, TailBlock,
    Truncate, WriterPosition,
};
use super::segment::{Chunk, Segment};
use crate::cache::TailBudget;
use crate::group::StateMachine;

/// Segments of one container by id, shared with the read path.
pub type SegmentMap = Arc<RwLock<HashMap<u64, Arc<Segment>>>>;

/// What an applied command answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Created,
    /// `offset` of the batch's first event; a duplicate was applied before.
    Appended {
        offset: u64,
        duplicate: bool,
    },
    Sealed {
        length: u64,
    },
    /// The segment is gone; its chunks are left for tier-2 to delete.
    Deleted {
        chunks: Vec<Chunk>,
    },
    ChunkRecorded,
    /// Retention moved the head; these chunks left the segment.
    Truncated {
        chunks: Vec<Chunk>,
    },
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
    #[error("chunk [{start}, {end}) does not continue tier-2 at {tier2_length}: orphan")]
    StaleChunk {
        start: u64,
        end: u64,
        tier2_length: u64,
    },
    #[error("segment {segment} cannot start at {head}: not the end of one of its chunks")]
    BadTruncate { segment: u64, head: u64 },
    #[error("undecodable command: {0}")]
    Malformed(String),
}

pub struct ContainerState {
    segments: SegmentMap,
    budget: Arc<TailBudget>,
}

impl ContainerState {
    pub fn new(segments: SegmentMap, budget: Arc<TailBudget>) -> Self {
        ContainerState { segments, budget }
    }

    fn segment(&self, id: u64) -> Result<Arc<Segment>, ApplyError> {
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
        Ok(s.writers.get(writer).copied().unwrap_or(0))
    }

    fn create(&mut self, id: u64) -> Applied {
        let mut map = self.segments.write().unwrap_or_else(|p| p.into_inner());
        map.entry(id).or_insert_with(|| Arc::new(Segment::new(id)));
        Applied::Created
    }

    fn append(&mut self, a: Append) -> Result<Applied, ApplyError> {
        let seg = self.segment(a.segment_id)?;
        let mut s = seg.lock();
        if s.deleted {
            return Err(ApplyError::SegmentNotFound(a.segment_id));
        }
        let applied = s.writers.get(&a.writer_id).copied().unwrap_or(0);
        let last = a.first_event_number + i64::from(a.event_count) - 1;
        if last <= applied {
            return Ok(Applied::Appended {
                offset: 0,
                duplicate: true,
            });
        }
        if a.first_event_number <= applied {
            return Err(ApplyError::EventNumberOverlap {
                writer: a.writer_id,
                first: a.first_event_number,
                last,
                applied,
            });
        }
        if a.first_event_number != applied + 1 {
            // Event numbers are contiguous per (segment, writer): a gap means
            // an earlier pipelined batch failed, and applying this one would
            // make that batch look like a duplicate on retry.
            return Err(ApplyError::EventNumberGap {
                writer: a.writer_id,
                first: a.first_event_number,
                expected: applied + 1,
            });
        }
        if s.sealed {
            return Err(ApplyError::SegmentSealed(a.segment_id));
        }
        let offset = s.length;
        let len = a.events.len() as u64;
        s.length += len;
        s.tail.push_back((offset, a.events));
        s.writers.insert(a.writer_id, last);
        drop(s);
        self.budget.add(len);
        seg.notify();
        Ok(Applied::Appended {
            offset,
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
            return Applied::Deleted { chunks: Vec::new() };
        };
        let mut s = seg.lock();
        s.deleted = true;
        let freed = s.tail_bytes();
        s.tail.clear();
        let chunks = std::mem::take(&mut s.chunks);
        drop(s);
        self.budget.release(freed);
        seg.notify();
        Applied::Deleted { chunks }
    }

    fn chunk_flushed(&mut self, c: ChunkFlushed) -> Result<Applied, ApplyError> {
        let seg = self.segment(c.segment_id)?;
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
        while let Some((offset, bytes)) = s.tail.front() {
            let block_end = offset + bytes.len() as u64;
            if block_end > c.end {
                break;
            }
            freed += bytes.len() as u64;
            s.tail.pop_front();
        }
        if s.tail.front().is_some_and(|(o, _)| *o != c.end) {
            // Cannot happen for chunks this node's writer made; refuse rather
            // than leave a tail buffer that does not line up.
            return Err(stale);
        }
        s.tier2_length = c.end;
        s.chunks.push(Chunk {
            start: c.start,
            end: c.end,
            name: c.name,
            flushed_at_ms: c.flushed_at_ms,
        });
        drop(s);
        self.budget.release(freed);
        Ok(Applied::ChunkRecorded)
    }
}

impl ContainerState {
    fn truncate(&mut self, t: Truncate) -> Result<Applied, ApplyError> {
        let seg = self.segment(t.segment_id)?;
        let mut s = seg.lock();
        if s.deleted {
            return Err(ApplyError::SegmentNotFound(t.segment_id));
        }
        if t.head <= s.head {
            return Ok(Applied::Truncated { chunks: Vec::new() });
        }
        // Only whole chunks go: the new head is the end of a chunk.
        let Some(last) = s.chunks.iter().position(|c| c.end == t.head) else {
            return Err(ApplyError::BadTruncate {
                segment: t.segment_id,
                head: t.head,
            });
        };
        let chunks: Vec<Chunk> = s.chunks.drain(..=last).collect();
        s.head = t.head;
        drop(s);
        seg.notify();
        Ok(Applied::Truncated { chunks })
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
            Some(Cmd::ChunkFlushed(c)) => self.chunk_flushed(c),
            Some(Cmd::Truncate(t)) => self.truncate(t),
            None => Err(ApplyError::Malformed("empty command".into())),
        }
    }

    type Snapshot = ContainerSnapshot;

    fn snapshot(&self) -> ContainerSnapshot {
        let map = self.segments.read().unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<u64> = map.keys().copied().collect();
        ids.sort_unstable();
        let segments = ids
            .iter()
            .filter_map(|id| map.get(id))
            .map(|seg| {
                let s = seg.lock();
                let mut writers: Vec<WriterPosition> = s
                    .writers
                    .iter()
                    .map(|(w, n)| WriterPosition {
                        writer_id: w.clone(),
                        last_event_number: *n,
                    })
                    .collect();
                writers.sort_by(|a, b| a.writer_id.cmp(&b.writer_id));
                SegmentSnapshot {
                    segment_id: seg.id,
                    head: s.head,
                    length: s.length,
                    sealed: s.sealed,
                    tier2_length: s.tier2_length,
                    chunks: s
                        .chunks
                        .iter()
                        .map(|c| ChunkFlushed {
                            segment_id: seg.id,
                            start: c.start,
                            end: c.end,
                            name: c.name.clone(),
                            flushed_at_ms: c.flushed_at_ms,
                        })
                        .collect(),
                    writers,
                    tail: s
                        .tail
                        .iter()
                        .map(|(offset, events)| TailBlock {
                            offset: *offset,
                            events: events.clone(),
                        })
                        .collect(),
                }
            })
            .collect();
        ContainerSnapshot { segments }
    }

    fn restore(&mut self, snapshot: Bytes) -> Result<(), String> {
        let snap: ContainerSnapshot =
            prost::Message::decode(snapshot).map_err(|e| e.to_string())?;
        let mut map = self.segments.write().unwrap_or_else(|p| p.into_inner());
        map.clear();
        for g in snap.segments {
            let seg = Segment::new(g.segment_id);
            let mut s = seg.lock();
            s.head = g.head;
            s.length = g.length;
            s.sealed = g.sealed;
            s.tier2_length = g.tier2_length;
            s.chunks = g
                .chunks
                .into_iter()
                .map(|c| Chunk {
                    start: c.start,
                    end: c.end,
                    name: c.name,
                    flushed_at_ms: c.flushed_at_ms,
                })
                .collect();
            s.writers = g
                .writers
                .into_iter()
                .map(|w| (w.writer_id, w.last_event_number))
                .collect();
            s.tail = g.tail.into_iter().map(|b| (b.offset, b.events)).collect();
            let tail_len: u64 = s.tail.iter().map(|(_, b)| b.len() as u64).sum();
            if tail_len != s.tail_bytes() {
                return Err(format!(
                    "segment {} tail holds {tail_len} bytes, expected {}",
                    g.segment_id,
                    s.tail_bytes()
                ));
            }
            self.budget.add(tail_len);
            drop(s);
            map.insert(g.segment_id, Arc::new(seg));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::command::SegmentRef;
    use super::*;
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
        })
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
                duplicate: false
            }
        );
        let again = apply(&mut s, append("w", 1, 3)).unwrap();
        assert_eq!(
            again,
            Applied::Appended {
                offset: 0,
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

    #[test]
    fn snapshot_restores_segments_writers_and_tail() {
        let (mut s, _) = state();
        apply(&mut s, Cmd::Create(SegmentRef { segment_id: 7 })).unwrap();
        apply(&mut s, append("w", 1, 2)).unwrap();
        let seg = s.segment(7).unwrap();
        let (_, bytes) = seg.unflushed(1).unwrap();
        apply(
            &mut s,
            Cmd::ChunkFlushed(ChunkFlushed {
                segment_id: 7,
                start: 0,
                end: bytes.len() as u64,
                name: "c".into(),
                flushed_at_ms: 0,
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
        let (start, bytes) = seg.unflushed(1).unwrap();
        assert_eq!(start, 0);
        let end = bytes.len() as u64;
        let flushed = |start, end, name: &str| {
            Cmd::ChunkFlushed(ChunkFlushed {
                segment_id: 7,
                start,
                end,
                name: name.into(),
                flushed_at_ms: 0,
            })
        };
        apply(&mut s, flushed(0, end, "a")).unwrap();
        // A second writer's chunk for the same range is an orphan.
        assert!(matches!(
            apply(&mut s, flushed(0, end, "b")),
            Err(ApplyError::StaleChunk { .. })
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
            Applied::Deleted { chunks } => assert_eq!(chunks.len(), 1),
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
            Cmd::ChunkFlushed(ChunkFlushed {
                segment_id: 7,
                start: 0,
                end,
                name: "a".into(),
                flushed_at_ms: 5,
            }),
        )
        .unwrap();
        let truncate = |head| {
            Cmd::Truncate(Truncate {
                segment_id: 7,
                head,
            })
        };
        assert!(matches!(
            apply(&mut s, truncate(end - 1)),
            Err(ApplyError::BadTruncate { .. })
        ));
        match apply(&mut s, truncate(end)).unwrap() {
            Applied::Truncated { chunks } => assert_eq!(chunks[0].name, "a"),
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
            Applied::Truncated { chunks: Vec::new() }
        );
    }
}
