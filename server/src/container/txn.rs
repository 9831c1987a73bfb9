//! Transaction segments: the hidden parts of open transactions, in the
//! container of their parent segment, and the tombstones of parts already
//! merged or dropped.
//!
//! A transaction segment holds its events in memory (counted in the node's
//! tail budget and its transaction bytes) and in the log, with its own
//! writer table, so transactional appends are exactly-once like any other.
//! It is kept apart from the stream segments: no read, scan, describe or
//! storage writer ever finds it. A merge moves its blocks onto the end of
//! the parent's tail buffer in one entry, so a transaction's events land
//! contiguously and in the order they were appended.
//!
//! Must never: apply an append to a part once it was merged or dropped (the
//! tombstone refuses it, until the metadata forgot the transaction); merge
//! into a sealed parent; read a clock.

use std::collections::HashMap;

use bytes::Bytes;

use super::command::{
    Append, ClosedTxn, TxnPartRef, TxnPartsRef, TxnSegmentSnapshot, WriterPosition,
};
use super::state::{check_numbers, Applied, ApplyError, ContainerState, Numbered};

/// One open transaction's events for one parent segment.
#[derive(Debug, Default)]
pub(crate) struct TxnSegment {
    pub parent: u64,
    pub length: u64,
    pub events: u64,
    /// One block per applied batch, in order.
    pub blocks: Vec<Bytes>,
    pub writers: HashMap<String, i64>,
    /// Being copied to its parent's successors: no more appends.
    pub sealed: bool,
}

/// How a part ended (its tombstone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    Merged,
    Dropped,
}

impl ContainerState {
    /// A transactional append to part `a.segment_id` of `parent`.
    pub(super) fn txn_append(&mut self, parent: u64, a: Append) -> Result<Applied, ApplyError> {
        let id = a.segment_id;
        if let Some(&how) = self.closed_txns.get(&id) {
            return Err(ApplyError::TxnPartClosed {
                txn_segment: id,
                merged: how == Closed::Merged,
            });
        }
        let parent_gone = self
            .segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&parent)
            .is_none_or(|s| s.lock().deleted);
        if parent_gone {
            return Err(ApplyError::SegmentNotFound(parent));
        }
        let t = self.txns.entry(id).or_insert_with(|| TxnSegment {
            parent,
            ..Default::default()
        });
        if t.parent != parent {
            return Err(ApplyError::Malformed(format!(
                "transaction segment {id} belongs to segment {}, not {parent}",
                t.parent
            )));
        }
        if t.sealed {
            return Err(ApplyError::TxnPartClosed {
                txn_segment: id,
                merged: true,
            });
        }
        let applied = t.writers.get(&a.writer_id).copied().unwrap_or(0);
        let last = match check_numbers(applied, &a)? {
            Numbered::Duplicate => {
                return Ok(Applied::Appended {
                    offset: 0,
                    duplicate: true,
                })
            }
            Numbered::Next(last) => last,
        };
        let offset = t.length;
        let len = a.events.len() as u64;
        t.length += len;
        t.events += u64::from(a.event_count);
        t.blocks.push(a.events);
        t.writers.insert(a.writer_id, last);
        self.budget.add_txn(len);
        Ok(Applied::Appended {
            offset,
            duplicate: false,
        })
    }

    /// Last applied event number of `writer` on transaction segment `id`
    /// (0: none yet, the part not even created).
    pub fn txn_last_event_number(&self, id: u64, writer: &str) -> Result<i64, ApplyError> {
        if let Some(&how) = self.closed_txns.get(&id) {
            return Err(ApplyError::TxnPartClosed {
                txn_segment: id,
                merged: how == Closed::Merged,
            });
        }
        Ok(self
            .txns
            .get(&id)
            .and_then(|t| t.writers.get(writer).copied())
            .unwrap_or(0))
    }

    /// Bytes the open parts of this container hold.
    pub fn txn_bytes(&self) -> u64 {
        self.txns.values().map(|t| t.length).sum()
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
            if let Some(t) = self.txns.remove(&id) {
                for block in t.blocks {
                    let len = block.len() as u64;
                    let at = s.length;
                    s.tail.push_back((at, block));
                    s.length += len;
                }
                s.rates
                    .record(u32::try_from(t.events).unwrap_or(u32::MAX), t.length);
                // The bytes stay in memory, now as the parent's tail.
                self.budget.merge_txn(t.length);
            }
            self.closed_txns.insert(id, Closed::Merged);
        }
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
            self.txns
                .entry(p.txn_segment_id)
                .or_insert_with(|| TxnSegment {
                    parent: p.segment_id,
                    ..Default::default()
                })
                .sealed = true;
        }
        Applied::TxnSealed
    }

    /// A sealed part's blocks, in order, to copy; None once it is dropped
    /// (the copy was done before).
    pub fn txn_blocks(&self, id: u64) -> Result<Option<Vec<Bytes>>, ApplyError> {
        match (self.closed_txns.get(&id), self.txns.get(&id)) {
            (Some(Closed::Dropped), _) => Ok(None),
            (Some(Closed::Merged), _) => Err(ApplyError::TxnPartClosed {
                txn_segment: id,
                merged: true,
            }),
            (None, Some(t)) if t.sealed => Ok(Some(t.blocks.clone())),
            (None, _) => Err(ApplyError::Malformed(format!(
                "transaction segment {id} is not sealed for copying"
            ))),
        }
    }

    /// Abort of one part: its events are discarded. Idempotent.
    pub(super) fn drop_txn(&mut self, p: TxnPartRef) -> Result<Applied, ApplyError> {
        if self.closed_txns.get(&p.txn_segment_id) == Some(&Closed::Merged) {
            return Err(ApplyError::TxnPartClosed {
                txn_segment: p.txn_segment_id,
                merged: true,
            });
        }
        if let Some(t) = self.txns.remove(&p.txn_segment_id) {
            self.budget.release_txn(t.length);
        }
        self.closed_txns.insert(p.txn_segment_id, Closed::Dropped);
        Ok(Applied::TxnDropped)
    }

    pub(super) fn forget_txns(&mut self, ids: &[u64]) -> Applied {
        for id in ids {
            self.closed_txns.remove(id);
            // A part the metadata no longer knows holds nothing anyone can
            // commit: an append that raced its transaction's end.
            if let Some(t) = self.txns.remove(id) {
                self.budget.release_txn(t.length);
            }
        }
        Applied::TxnsForgotten
    }

    /// The open parts and tombstones, for the snapshot (ordered by id).
    pub(super) fn txn_snapshot(&self) -> (Vec<TxnSegmentSnapshot>, Vec<ClosedTxn>) {
        let mut parts: Vec<TxnSegmentSnapshot> = self
            .txns
            .iter()
            .map(|(&id, t)| {
                let mut writers: Vec<WriterPosition> = t
                    .writers
                    .iter()
                    .map(|(w, n)| WriterPosition {
                        writer_id: w.clone(),
                        last_event_number: *n,
                    })
                    .collect();
                writers.sort_by(|a, b| a.writer_id.cmp(&b.writer_id));
                TxnSegmentSnapshot {
                    txn_segment_id: id,
                    segment_id: t.parent,
                    events: t.events,
                    blocks: t.blocks.clone(),
                    writers,
                    sealed: t.sealed,
                }
            })
            .collect();
        parts.sort_by_key(|p| p.txn_segment_id);
        let mut closed: Vec<ClosedTxn> = self
            .closed_txns
            .iter()
            .map(|(&id, &how)| ClosedTxn {
                txn_segment_id: id,
                merged: how == Closed::Merged,
            })
            .collect();
        closed.sort_by_key(|c| c.txn_segment_id);
        (parts, closed)
    }

    /// Replaces the open parts and tombstones with a snapshot's.
    pub(super) fn restore_txns(&mut self, parts: Vec<TxnSegmentSnapshot>, closed: Vec<ClosedTxn>) {
        for t in self.txns.drain() {
            self.budget.release_txn(t.1.length);
        }
        for p in parts {
            let length: u64 = p.blocks.iter().map(|b| b.len() as u64).sum();
            self.budget.add_txn(length);
            self.txns.insert(
                p.txn_segment_id,
                TxnSegment {
                    parent: p.segment_id,
                    length,
                    events: p.events,
                    blocks: p.blocks,
                    writers: p
                        .writers
                        .into_iter()
                        .map(|w| (w.writer_id, w.last_event_number))
                        .collect(),
                    sealed: p.sealed,
                },
            );
        }
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
            .collect();
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
            Applied::TxnDropped
        );
        assert_eq!(
            apply(&mut s, Cmd::DropTxn(part(100))).unwrap(),
            Applied::TxnDropped
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
        assert_eq!(s.txn_blocks(100).unwrap().map(|b| b.len()), Some(1));
        apply(&mut s, Cmd::DropTxn(part(100))).unwrap();
        assert_eq!(s.txn_blocks(100).unwrap(), None, "moved before");
        // Sealing a part never written to keeps stragglers out too.
        apply(&mut s, Cmd::SealTxn(part(101))).unwrap();
        assert!(apply(&mut s, append(Some(101), "w", 1, 1)).is_err());
    }

    #[test]
    fn a_merge_into_a_sealed_parent_is_refused_and_keeps_the_part() {
        let (mut s, _) = state();
        apply(&mut s, append(Some(100), "w", 1, 3)).unwrap();
        apply(&mut s, Cmd::Seal(SegmentRef { segment_id: PARENT })).unwrap();
        let refused = apply(&mut s, merge(&[100]));
        assert_eq!(refused, Err(ApplyError::SegmentSealed(PARENT)));
        assert!(s.txns.contains_key(&100));
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
        assert_eq!(parent_length(&r), parent_length(&s) + s.txns[&100].length);
    }
}
