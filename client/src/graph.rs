//! The successor graph a stream reader walks: which segments it has read to
//! their end, which it is reading, and which may start next.
//!
//! Owns the reading-order rule across scales (and the ancestor and
//! descendant sets stream cuts are compared by): a segment starts only once
//! every one of its predecessors that the graph knows is done (one the
//! stream no longer lists was removed by retention: nothing to wait for).
//! Pure bookkeeping, no I/O, so the rule is unit-tested here. Must never
//! start a segment twice, nor start one while a predecessor is unread.

use std::collections::{BTreeMap, BTreeSet};

use crate::SegmentInfo;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Waiting,
    Started,
    Done,
}

#[derive(Debug)]
struct Node {
    info: SegmentInfo,
    state: State,
}

/// The segments of one stream as far as a reader knows them.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    nodes: BTreeMap<u64, Node>,
}

impl Graph {
    /// The graph of `segments` (one describe), nothing started.
    pub(crate) fn new(segments: &[SegmentInfo]) -> Graph {
        let mut graph = Graph::default();
        graph.learn(segments);
        graph
    }

    /// Merges a later describe: adds the segments it did not know (waiting)
    /// and takes the newer successor and predecessor lists of the rest.
    pub(crate) fn learn(&mut self, segments: &[SegmentInfo]) {
        for s in segments {
            match self.nodes.get_mut(&s.segment_id) {
                Some(node) => {
                    node.info.successors.clone_from(&s.successors);
                    node.info.predecessors.clone_from(&s.predecessors);
                    node.info.sealed = s.sealed;
                }
                None => {
                    self.nodes.insert(
                        s.segment_id,
                        Node {
                            info: s.clone(),
                            state: State::Waiting,
                        },
                    );
                }
            }
        }
    }

    /// Every known segment that `id` descends from (not `id` itself).
    pub(crate) fn ancestors(&self, id: u64) -> BTreeSet<u64> {
        self.reach(id, |info| &info.predecessors)
    }

    /// Every known segment that descends from `id` (not `id` itself).
    pub(crate) fn descendants(&self, id: u64) -> BTreeSet<u64> {
        self.reach(id, |info| &info.successors)
    }

    /// The known segments reached from `id` by following `next`.
    fn reach(&self, id: u64, next: impl Fn(&SegmentInfo) -> &[u64]) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        let mut todo = vec![id];
        while let Some(at) = todo.pop() {
            let Some(node) = self.nodes.get(&at) else {
                continue;
            };
            for &p in next(&node.info) {
                if self.nodes.contains_key(&p) && out.insert(p) {
                    todo.push(p);
                }
            }
        }
        out
    }

    /// `id` is read to its end (or needs no reading).
    pub(crate) fn finish(&mut self, id: u64) {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.state = State::Done;
        }
    }

    /// The waiting segments whose known predecessors are all done, now
    /// marked started, by segment id.
    pub(crate) fn take_ready(&mut self) -> Vec<SegmentInfo> {
        let ready: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.state == State::Waiting)
            .filter(|(_, n)| {
                n.info.predecessors.iter().all(|p| {
                    self.nodes
                        .get(p)
                        .is_none_or(|pred| pred.state == State::Done)
                })
            })
            .map(|(&id, _)| id)
            .collect();
        ready
            .into_iter()
            .filter_map(|id| {
                let node = self.nodes.get_mut(&id)?;
                node.state = State::Started;
                Some(node.info.clone())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(id: u64, preds: &[u64], succs: &[u64]) -> SegmentInfo {
        SegmentInfo {
            segment_id: id,
            predecessors: preds.to_vec(),
            successors: succs.to_vec(),
            ..Default::default()
        }
    }

    fn ids(v: Vec<SegmentInfo>) -> Vec<u64> {
        v.into_iter().map(|s| s.segment_id).collect()
    }

    #[test]
    fn successors_wait_for_every_predecessor() {
        // 1 and 2 at creation; 1 split into 3, 4; then 4 and 2 merged into 5.
        let mut g = Graph::new(&[
            seg(1, &[], &[3, 4]),
            seg(2, &[], &[5]),
            seg(3, &[1], &[]),
            seg(4, &[1], &[5]),
            seg(5, &[4, 2], &[]),
        ]);
        assert_eq!(ids(g.take_ready()), vec![1, 2]);
        assert!(g.take_ready().is_empty(), "never twice");
        g.finish(2);
        assert!(g.take_ready().is_empty(), "5 still waits for 4");
        g.finish(1);
        assert_eq!(ids(g.take_ready()), vec![3, 4]);
        g.finish(4);
        assert_eq!(ids(g.take_ready()), vec![5]);
        assert_eq!(g.ancestors(5), BTreeSet::from([1, 2, 4]));
        assert_eq!(g.descendants(1), BTreeSet::from([3, 4, 5]));
        assert!(g.descendants(3).is_empty());
    }

    #[test]
    fn removed_predecessors_and_later_describes() {
        // 9 was removed by retention: 10 need not wait for it.
        let mut g = Graph::new(&[seg(10, &[9], &[])]);
        assert_eq!(ids(g.take_ready()), vec![10]);
        // Following: 10 is sealed and split later; a new describe says so.
        g.finish(10);
        assert!(g.take_ready().is_empty());
        g.learn(&[
            seg(10, &[9], &[11, 12]),
            seg(11, &[10], &[]),
            seg(12, &[10], &[]),
        ]);
        assert_eq!(ids(g.take_ready()), vec![11, 12]);
        // A describe repeating what is known starts nothing again.
        g.learn(&[seg(11, &[10], &[])]);
        assert!(g.take_ready().is_empty());
    }
}
