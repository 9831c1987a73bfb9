//! Transaction parts: the hidden segments of open transactions, in the
//! container of their parent segment, and the tombstones of parts already
//! merged or dropped.
//!
//! A part is a [`Segment`] of its own (its own writer table, so
//! transactional appends are exactly-once like any other) kept in a map of
//! its own: no read, scan or describe ever finds it. Its bytes are in
//! memory (counted in the node's tail budget and transaction bytes) and the
//! log; the storage writer spills a large part to tier-2 like any segment.
//! A merge moves the part onto the end of the parent's tail buffer in one
//! entry — its chunks as tier-2 blocks (no copy), its memory blocks as they
//! are — so a transaction's events land contiguously and in the order they
//! were appended.
//!
//! Must never: apply an append to a part once it was merged, dropped or
//! sealed for a move (the tombstone refuses it, until the metadata forgot
//! the transaction); merge into a sealed parent; read a clock.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::command::{Append, ClosedTxn, TxnPartRef, TxnPartsRef};
use super::segment::{Block, Chunk, Segment};
use super::state::{
    check_numbers, push_batch, Applied, ApplyError, Closed, ContainerState, Numbered,
};

/// A sealed part's bytes to copy: its tier-2 chunks, then its memory
/// blocks, in order.
pub type PartBytes = (Vec<Chunk>, Vec<Bytes>);

impl ContainerState {
    fn part(&self, id: u64) -> Option<Arc<Segment>> {
        let map = self.parts.read().unwrap_or_else(|p| p.into_inner());
        map.get(&id).cloned()
    }

    fn take_part(&self, id: u64) -> Option<Arc<Segment>> {
        let mut map = self.parts.write().unwrap_or_else(|p| p.into_inner());
        map.remove(&id)
    }

    /// The tombstone's refusal of part `id`, if it has one.
    fn closed_error(&self, id: u64) -> Option<ApplyError> {
        self.closed_txns
            .get(&id)
            .map(|&how| ApplyError::TxnPartClosed {
                txn_segment: id,
                merged: how == Closed::Merged,
            })
    }

    /// A transactional append to part `a.segment_id` of `parent`.
    pub(super) fn txn_append(&mut self, parent: u64, a: Append) -> Result<Applied, ApplyError> {
        let id = a.segment_id;
        if let Some(e) = self.closed_error(id) {
            return Err(e);
        }
        if self.segment(parent)?.lock().deleted {
            return Err(ApplyError::SegmentNotFound(parent));
        }
        let part = {
            let mut map = self.parts.write().unwrap_or_else(|p| p.into_inner());
            map.entry(id)
                .or_insert_with(|| {
                    let seg = Segment::new(id);
                    seg.lock().part_of = parent;
                    Arc::new(seg)
                })
                .clone()
        };
        let mut s = part.lock();
        if s.part_of != parent {
            return Err(ApplyError::Malformed(format!(
                "transaction segment {id} belongs to segment {}, not {parent}",
                s.part_of
            )));
        }
        let applied = s.last_event_number(&a.writer_id);
        let last = match check_numbers(applied, &a)? {
            Numbered::Duplicate => {
                return Ok(Applied::Appended {
                    offset: 0,
                    index: 0,
                    duplicate: true,
                })
            }
            Numbered::Next(last) => last,
        };
        if s.sealed {
            // Being moved to the successors of its sealed parent.
            return Err(ApplyError::TxnPartClosed {
                txn_segment: id,
                merged: true,
            });
        }
        let (offset, index, len) = push_batch(&mut s, a, last);
        drop(s);
        self.budget.add_txn(len);
        Ok(Applied::Appended {
            offset,
            index,
            duplicate: false,
        })
    }

    /// Last applied event number of `writer` on transaction segment `id`
    /// (0: none yet, the part not even created).
    pub fn txn_last_event_number(&self, id: u64, writer: &str) -> Result<i64, ApplyError> {
        if let Some(e) = self.closed_error(id) {
            return Err(e);
        }
        Ok(self
            .part(id)
            .map(|p| p.lock().last_event_number(writer))
            .unwrap_or(0))
    }

    /// The writer of part `id` whose id starts with `prefix` (one at most
    /// by its writer's naming), with its last applied event number.
    pub fn txn_writer_like(
        &self,
        id: u64,
        prefix: &str,
    ) -> Result<Option<(String, i64)>, ApplyError> {
        if let Some(e) = self.closed_error(id) {
            return Err(e);
        }
        Ok(self.part(id).and_then(|p| {
            let s = p.lock();
            s.writers
                .iter()
                .find(|(w, _)| w.starts_with(prefix))
                .map(|(w, m)| (w.clone(), m.last))
        }))
    }

    /// Bytes (logical: memory and tier-2) the open parts of this container
    /// hold (tests).
    #[cfg(test)]
    pub fn txn_bytes(&self) -> u64 {
        let map = self.parts.read().unwrap_or_else(|p| p.into_inner());
        map.values().map(|p| p.lock().length).sum()
    }

    /// Commit of a parent's parts: their events go to the end of the
    /// parent, in one piece, part after part. Idempotent; a part never
    /// written to merges as nothing.
    pub(super) fn merge_txn(&mut self, p: TxnPartsRef) -> Result<Applied, ApplyError> {
        for id in &p.txn_segment_ids {
            if self.closed_txns.get(id) == Some(&Closed::Dropped) {
                return Err(ApplyError::TxnPartClosed {
                    txn_segment: *id,
                    merged: false,
                });
            }
        }
        let seg = self.segment(p.segment_id)?;
        let mut s = seg.lock();
        if s.deleted {
            return Err(ApplyError::SegmentNotFound(p.segment_id));
        }
        let open: Vec<u64> = p
            .txn_segment_ids
            .iter()
            .copied()
            .filter(|id| !self.closed_txns.contains_key(id))
            .collect();
        if open.is_empty() {
            return Ok(Applied::TxnMerged { offset: None });
        }
        if s.sealed {
            return Err(ApplyError::SegmentSealed(p.segment_id));
        }
        let offset = s.length;
        for id in open {
            if let Some(part) = self.take_part(id) {
                let mut t = part.lock();
                let base = s.length;
                // Its events take the next indexes; a part whose marks do
                // not start at its first byte (restored from an older
                // snapshot) gets one there.
                let base_index = s.rates.events_total;
                if t.index.marks().next().is_none_or(|m| m.offset != 0) && t.length > 0 {
                    let ms = s.rates.ticked_ms;
                    s.index.push(base, base_index, ms);
                }
                s.index.append_shifted(&t.index, base, base_index);
                // Its chunks, then its memory blocks: offsets shift by where
                // the part lands; the tier-2 objects stay referenced.
                for c in t.chunks.drain(..) {
                    let at = base + c.start;
                    let shifted = Chunk {
                        start: at,
                        end: base + c.end,
                        ..c
                    };
                    s.tail.push_back((at, Block::Tier2(shifted)));
                }
                let mem = t.tail_mem_bytes();
                for (o, block) in t.tail.drain(..) {
                    s.tail.push_back((base + o, block));
                }
                s.length += t.length;
                s.rates.record(
                    u32::try_from(t.rates.events_total).unwrap_or(u32::MAX),
                    t.length,
                );
                t.deleted = true;
                // The memory bytes stay, now as the parent's tail.
                self.budget.merge_txn(mem);
            }
            self.closed_txns.insert(id, Closed::Merged);
        }
        s.promote_tier2_blocks();
        drop(s);
        seg.notify();
        Ok(Applied::TxnMerged {
            offset: Some(offset),
        })
    }

    /// Before a part is copied to its parent's successors: no more appends
    /// (an acknowledged one would miss the copy). Idempotent.
    pub(super) fn seal_txn(&mut self, p: TxnPartRef) -> Applied {
        if !self.closed_txns.contains_key(&p.txn_segment_id) {
            let mut map = self.parts.write().unwrap_or_else(|p| p.into_inner());
            let part = map.entry(p.txn_segment_id).or_insert_with(|| {
                let seg = Segment::new(p.txn_segment_id);
                seg.lock().part_of = p.segment_id;
                Arc::new(seg)
            });
            part.lock().sealed = true;
        }
        Applied::TxnSealed
    }

    /// A sealed part's bytes to copy — its tier-2 chunks, then its memory
    /// blocks, in order; None once it is closed: dropped (the copy was done
    /// before), or merged (into its parent before a scale sealed it: its
    /// events are there, ahead of the successors', and nothing moves).
    pub fn txn_blocks(&self, id: u64) -> Result<Option<PartBytes>, ApplyError> {
        if self.closed_txns.contains_key(&id) {
            return Ok(None);
        }
        let part = self.part(id).filter(|p| p.lock().sealed).ok_or_else(|| {
            ApplyError::Malformed(format!(
                "transaction segment {id} is not sealed for copying"
            ))
        })?;
        let s = part.lock();
        let mem = s
            .tail
            .iter()
            .filter_map(|(_, b)| match b {
                Block::Mem(bytes) => Some(bytes.clone()),
                Block::Tier2(_) => None,
            })
            .collect();
        Ok(Some((s.chunks.clone(), mem)))
    }

    /// Discards part `id` (if open); the tier-2 objects left unreferenced.
    fn discard_part(&mut self, id: u64) -> Vec<String> {
        let Some(part) = self.take_part(id) else {
            return Vec::new();
        };
        let mut s = part.lock();
        s.deleted = true;
        self.budget.release_txn(s.tail_mem_bytes());
        s.tail.clear();
        let chunks = std::mem::take(&mut s.chunks);
        drop(s);
        self.release_objects(&chunks)
    }

    /// Abort of one part (or the end of a moved one): its events are
    /// discarded. Idempotent.
    pub(super) fn drop_txn(&mut self, p: TxnPartRef) -> Result<Applied, ApplyError> {
        if self.closed_txns.get(&p.txn_segment_id) == Some(&Closed::Merged) {
            return Err(ApplyError::TxnPartClosed {
                txn_segment: p.txn_segment_id,
                merged: true,
            });
        }
        let objects = self.discard_part(p.txn_segment_id);
        self.closed_txns.insert(p.txn_segment_id, Closed::Dropped);
        Ok(Applied::TxnDropped { objects })
    }

    pub(super) fn forget_txns(&mut self, ids: &[u64]) -> Applied {
        let mut objects = Vec::new();
        for id in ids {
            self.closed_txns.remove(id);
            // A part the metadata no longer knows holds nothing anyone can
            // commit: an append that raced its transaction's end.
            objects.extend(self.discard_part(*id));
        }
        Applied::TxnDropped { objects }
    }

    /// The tombstones, for the snapshot (ordered by id); the parts go with
    /// the segments.
    pub(super) fn closed_snapshot(&self) -> Vec<ClosedTxn> {
        let mut closed: Vec<ClosedTxn> = self
            .closed_txns
            .iter()
            .map(|(&id, &how)| ClosedTxn {
                txn_segment_id: id,
                merged: how == Closed::Merged,
            })
            .collect();
        closed.sort_by_key(|c| c.txn_segment_id);
        closed
    }

    pub(super) fn restore_closed(&mut self, closed: Vec<ClosedTxn>) {
        self.closed_txns = closed
            .into_iter()
            .map(|c| {
                let how = if c.merged {
                    Closed::Merged
                } else {
                    Closed::Dropped
                };
                (c.txn_segment_id, how)
            })
            .collect::<HashMap<_, _>>();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::BytesMut;

    use super::super::command::{Cmd, ContainerCommand, SegmentRef, TxnSegmentsRef};
    use super::super::state::SegmentMap;
    use super::*;
    use crate::cache::TailBudget;
    use crate::group::StateMachine;

    const PARENT: u64 = 7;

    fn state() -> (ContainerState, Arc<TailBudget>) {
        let budget = TailBudget::new(1 << 30);
        let mut s = ContainerState::new(SegmentMap::default(), budget.clone());
        apply(&mut s, Cmd::Create(SegmentRef { segment_id: PARENT })).unwrap();
        (s, budget)
    }

    fn apply(s: &mut ContainerState, cmd: Cmd) -> Result<Applied, ApplyError> {
        s.apply(0, ContainerCommand::encode(cmd).into())
    }

    /// `count` events numbered from `first` by `writer`, into part `part`
    /// (None: the parent itself).
    fn append(part: Option<u64>, writer: &str, first: i64, count: u32) -> Cmd {
        let mut events = BytesMut::new();
        for i in 0..count {
            let text = format!("{writer}-{}", first + i64::from(i));
            aquifer_proto::frame::encode_event(&mut events, Some("k"), text.as_bytes());
        }
        Cmd::Append(Append {
            segment_id: part.unwrap_or(PARENT),
            writer_id: writer.into(),
            first_event_number: first,
            event_count: count,
            events: events.freeze(),
            expected_length: None,
            txn_parent: part.map(|_| PARENT),
            append_ms: 0,
        })
    }

    fn merge(parts: &[u64]) -> Cmd {
        Cmd::MergeTxn(TxnPartsRef {
            segment_id: PARENT,
            txn_segment_ids: parts.to_vec(),
        })
    }

    fn part(id: u64) -> TxnPartRef {
        TxnPartRef {
            segment_id: PARENT,
            txn_segment_id: id,
        }
    }

    fn parent_length(s: &ContainerState) -> u64 {
        s.segment(PARENT).unwrap().view().length
    }

    #[test]
    fn a_merge_lands_every_part_in_one_piece_and_once() {
        let (mut s, budget) = state();
        apply(&mut s, append(None, "plain", 1, 2)).unwrap();
        let before = parent_length(&s);
        apply(&mut s, append(Some(100), "w", 1, 3)).unwrap();
        apply(&mut s, append(Some(101), "w", 1, 2)).unwrap();
        // A retried batch is a duplicate, in a part as anywhere.
        let dup = apply(&mut s, append(Some(100), "w", 1, 3)).unwrap();
        assert!(matches!(
            dup,
            Applied::Appended {
                duplicate: true,
                ..
            }
        ));
        let held = s.txn_bytes();
        assert_eq!(budget.txn_used(), held);
        // Invisible until merged.
        assert_eq!(parent_length(&s), before);
        let merged = apply(&mut s, merge(&[100, 101, 102])).unwrap();
        assert_eq!(
            merged,
            Applied::TxnMerged {
                offset: Some(before)
            }
        );
        assert_eq!(parent_length(&s), before + held);
        assert_eq!((budget.txn_used(), budget.used()), (0, before + held));
        // The parts' events take the next event indexes, their marks
        // shifted to where they landed: 2 plain, then 3 and 2.
        let parent = s.segment(PARENT).unwrap();
        assert_eq!(parent.index_view().end, 7);
        let marks: Vec<(u64, u64)> = parent
            .marks_from(0, 10)
            .iter()
            .map(|m| (m.offset, m.index))
            .collect();
        assert_eq!(marks.len(), 3);
        assert_eq!(marks[..2], [(0, 0), (before, 2)]);
        assert_eq!(marks[2].1, 5);
        // Again: nothing more; appends to a merged part are refused.
        assert_eq!(
            apply(&mut s, merge(&[100, 101, 102])).unwrap(),
            Applied::TxnMerged { offset: None }
        );
        assert_eq!(parent_length(&s), before + held);
        let late = apply(&mut s, append(Some(102), "w", 1, 1));
        assert!(matches!(
            late,
            Err(ApplyError::TxnPartClosed { merged: true, .. })
        ));
        // Abort of a merged part is refused.
        assert!(apply(&mut s, Cmd::DropTxn(part(100))).is_err());
    }

    #[test]
    fn a_drop_discards_and_refuses_a_later_merge_and_appends() {
        let (mut s, budget) = state();
        apply(&mut s, append(Some(100), "w", 1, 3)).unwrap();
        assert_eq!(
            apply(&mut s, Cmd::DropTxn(part(100))).unwrap(),
            Applied::TxnDropped { objects: vec![] }
        );
        assert_eq!(
            apply(&mut s, Cmd::DropTxn(part(100))).unwrap(),
            Applied::TxnDropped { objects: vec![] }
        );
        assert_eq!(
            (budget.txn_used(), budget.used(), parent_length(&s)),
            (0, 0, 0)
        );
        assert!(apply(&mut s, merge(&[100])).is_err());
        assert!(apply(&mut s, append(Some(100), "w", 4, 1)).is_err());
        // Once forgotten, the tombstone is gone.
        apply(
            &mut s,
            Cmd::ForgetTxns(TxnSegmentsRef {
                txn_segment_ids: vec![100],
            }),
        )
        .unwrap();
        assert!(s.closed_txns.is_empty());
    }

    #[test]
    fn a_sealed_part_takes_no_appends_and_hands_out_its_blocks_until_dropped() {
        let (mut s, _) = state();
        apply(&mut s, append(Some(100), "w", 1, 3)).unwrap();
        apply(&mut s, Cmd::SealTxn(part(100))).unwrap();
        assert!(apply(&mut s, append(Some(100), "w", 4, 1)).is_err());
        assert_eq!(
            s.txn_blocks(100).unwrap().map(|(c, m)| (c.len(), m.len())),
            Some((0, 1))
        );
        apply(&mut s, Cmd::DropTxn(part(100))).unwrap();
        assert_eq!(s.txn_blocks(100).unwrap(), None, "moved before");
        // Sealing a part never written to keeps stragglers out too.
        apply(&mut s, Cmd::SealTxn(part(101))).unwrap();
        assert!(apply(&mut s, append(Some(101), "w", 1, 1)).is_err());
    }

    #[test]
    fn a_part_merged_before_its_parent_was_sealed_has_nothing_to_move() {
        let (mut s, _) = state();
        apply(&mut s, append(Some(100), "w", 1, 3)).unwrap();
        apply(&mut s, merge(&[100])).unwrap();
        apply(&mut s, Cmd::Seal(SegmentRef { segment_id: PARENT })).unwrap();
        // The commit then finds the parent sealed and moves the part: done.
        apply(&mut s, Cmd::SealTxn(part(100))).unwrap();
        assert_eq!(s.txn_blocks(100).unwrap(), None);
    }

    #[test]
    fn a_merge_into_a_sealed_parent_is_refused_and_keeps_the_part() {
        let (mut s, _) = state();
        apply(&mut s, append(Some(100), "w", 1, 3)).unwrap();
        apply(&mut s, Cmd::Seal(SegmentRef { segment_id: PARENT })).unwrap();
        let refused = apply(&mut s, merge(&[100]));
        assert_eq!(refused, Err(ApplyError::SegmentSealed(PARENT)));
        assert!(s.part(100).is_some());
    }

    /// The storage writer's record of `[start, end)` of `segment` in `name`.
    fn flushed(segment: u64, start: u64, end: u64, name: &str) -> Cmd {
        Cmd::ChunksFlushed(super::super::command::ChunksFlushed {
            chunks: vec![super::super::command::ChunkFlushed {
                segment_id: segment,
                start,
                end,
                name: name.into(),
                flushed_at_ms: 1,
                object_offset: 0,
            }],
        })
    }

    #[test]
    fn a_spilled_part_merges_its_chunks_without_a_copy() {
        let (mut s, budget) = state();
        apply(&mut s, append(None, "plain", 1, 2)).unwrap();
        let base = parent_length(&s);
        apply(&mut s, append(Some(100), "w", 1, 3)).unwrap();
        let spilled = s.part(100).unwrap().view().length;
        apply(&mut s, flushed(100, 0, spilled, "obj-part")).unwrap();
        assert_eq!(budget.txn_used(), 0, "spilled: out of memory");
        apply(&mut s, append(Some(100), "w", 4, 2)).unwrap();
        let part_len = s.part(100).unwrap().view().length;
        assert!(s.chunk_objects_for_test().contains("obj-part"));
        apply(&mut s, merge(&[100])).unwrap();
        let parent = s.segment(PARENT).unwrap();
        {
            let p = parent.lock();
            assert_eq!(p.length, base + part_len);
            // Plain bytes in memory, then the part's chunk, then its rest.
            let kinds: Vec<bool> = p
                .tail
                .iter()
                .map(|(_, b)| matches!(b, Block::Tier2(_)))
                .collect();
            assert_eq!(kinds, vec![false, true, false]);
        }
        // Reads of the chunk's offsets go to tier-2.
        assert!(matches!(
            parent.locate(base, 1 << 20),
            crate::container::ReadSource::Tier2(c) if c.start == base && c.name == "obj-part"
        ));
        // Flushing what comes before it makes the chunk the parent's own.
        apply(&mut s, flushed(PARENT, 0, base, "obj-plain")).unwrap();
        {
            let p = parent.lock();
            assert_eq!(p.tier2_length, base + spilled);
            assert_eq!(p.chunks.len(), 2);
            assert_eq!(p.chunks[1].name, "obj-part");
        }
        // Snapshot and restore keep it whole, object references included.
        let snap = prost::Message::encode_to_vec(&s.snapshot());
        let mut r = ContainerState::new(SegmentMap::default(), TailBudget::new(1 << 30));
        r.restore(snap.into()).unwrap();
        assert_eq!(r.segment(PARENT).unwrap().view().length, base + part_len);
        let deleted = apply(&mut r, Cmd::Delete(SegmentRef { segment_id: PARENT })).unwrap();
        let Applied::Deleted { mut objects } = deleted else {
            panic!("{deleted:?}")
        };
        objects.sort();
        assert_eq!(
            objects,
            vec!["obj-part".to_string(), "obj-plain".to_string()]
        );
    }

    #[test]
    fn an_aborted_spilled_part_gives_its_objects_back() {
        let (mut s, budget) = state();
        apply(&mut s, append(Some(100), "w", 1, 3)).unwrap();
        let len = s.part(100).unwrap().view().length;
        apply(&mut s, flushed(100, 0, len, "obj-part")).unwrap();
        apply(&mut s, append(Some(100), "w", 4, 1)).unwrap();
        let dropped = apply(&mut s, Cmd::DropTxn(part(100))).unwrap();
        assert_eq!(
            dropped,
            Applied::TxnDropped {
                objects: vec!["obj-part".into()]
            }
        );
        assert_eq!((budget.txn_used(), budget.used()), (0, 0));
    }

    #[test]
    fn parts_and_tombstones_survive_a_snapshot() {
        let (mut s, _) = state();
        apply(&mut s, append(Some(100), "w", 1, 3)).unwrap();
        apply(&mut s, append(Some(101), "w", 1, 1)).unwrap();
        apply(&mut s, Cmd::SealTxn(part(101))).unwrap();
        apply(&mut s, append(Some(102), "w", 1, 1)).unwrap();
        apply(&mut s, merge(&[102])).unwrap();
        let snap = prost::Message::encode_to_vec(&s.snapshot());
        let budget = TailBudget::new(1 << 30);
        let mut r = ContainerState::new(SegmentMap::default(), budget.clone());
        r.restore(snap.into()).unwrap();
        assert_eq!(r.txn_bytes(), s.txn_bytes());
        assert_eq!(budget.txn_used(), s.txn_bytes());
        assert_eq!(r.txn_last_event_number(100, "w").unwrap(), 3);
        assert!(
            apply(&mut r, append(Some(101), "w", 2, 1)).is_err(),
            "still sealed"
        );
        assert!(
            apply(&mut r, append(Some(102), "w", 2, 1)).is_err(),
            "still merged"
        );
        apply(&mut r, merge(&[100])).unwrap();
        let part_len = s.part(100).map(|p| p.lock().length).unwrap();
        assert_eq!(parent_length(&r), parent_length(&s) + part_len);
    }
}
