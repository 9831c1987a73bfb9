//! Reader groups: which reader owns which segment, from where it reads,
//! which segments wait for their predecessors, and the group's checkpoints.
//! The records are kept in the `meta` state machine (so they are
//! replicated, durable, linearizable) and are also their own storage format
//! (prost; never reuse a tag).
//!
//! Owns the rules, as pure functions of a [`GroupRecord`] and the streams'
//! successor graph ([`SegmentGraph`]): joining, heart-beating (positions,
//! completed and released segments, checkpoint acknowledgements), leaving,
//! timing out, balancing, checkpoints and resets. Every change ends with
//! [`GroupRecord::settle`], which makes ready successors assignable and
//! balances ownership.
//!
//! Must never: give one segment two owners; hand out a successor before
//! every predecessor the group reads is read to its end; move ownership
//! while a checkpoint is outstanding (its cut would miss or double a
//! segment); read a clock (times come in the commands, so replay is
//! deterministic).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Reader groups a cluster may have.
pub const GROUPS_MAX: usize = 10_000;
/// Readers one group may have.
pub const READERS_PER_GROUP_MAX: usize = 1024;
/// Checkpoints one group may have outstanding (not yet complete); more are
/// refused rather than piled up.
pub const CHECKPOINTS_OUTSTANDING_MAX: usize = 4;
/// Finished checkpoints (complete or failed) a group keeps, newest last.
pub const CHECKPOINTS_KEPT_MAX: usize = 16;
/// Names (reader ids, checkpoint names) are at most this long.
pub const GROUP_NAME_BYTES_MAX: usize = 255;
/// Ancestors visited when deciding whether a predecessor is still to be
/// read (bounds the walk on a long scaling history).
const ANCESTOR_WALK_MAX: usize = 100_000;

/// A reader group's state.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GroupRecord {
    #[prost(string, tag = "1")]
    pub scope: String,
    #[prost(string, tag = "2")]
    pub group: String,
    /// The streams it reads.
    #[prost(message, repeated, tag = "3")]
    pub streams: Vec<GroupStream>,
    /// A reader that does not heart-beat this long loses its segments.
    #[prost(uint64, tag = "4")]
    pub reader_timeout_ms: u64,
    /// One more per reset: a report made under an older generation is
    /// ignored (its reader must take its new assignment first).
    #[prost(uint64, tag = "5")]
    pub generation: u64,
    #[prost(btree_map = "string, message", tag = "6")]
    pub readers: BTreeMap<String, ReaderRecord>,
    /// Segments to read that no reader owns: where reading resumes.
    #[prost(btree_map = "uint64, uint64", tag = "7")]
    pub unassigned: BTreeMap<u64, u64>,
    /// Segments read to their end (their end offsets) whose successors are
    /// not all handed out yet.
    #[prost(btree_map = "uint64, uint64", tag = "8")]
    pub completed: BTreeMap<u64, u64>,
    /// Outstanding checkpoints (oldest first), then finished ones.
    #[prost(message, repeated, tag = "9")]
    pub checkpoints: Vec<CheckpointRecord>,
    /// Retention by consumption: the streams keep data this group has not
    /// checkpointed past.
    #[prost(bool, tag = "10")]
    pub subscribed: bool,
    /// Bytes between the group's position and each segment's length, as
    /// the meta leader last measured them (a `Lags` entry): the balance
    /// weighs readers by it after their segment counts.
    #[prost(btree_map = "uint64, uint64", tag = "11")]
    pub lag: BTreeMap<u64, u64>,
}

/// A stream a group reads.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, prost::Message)]
pub struct GroupStream {
    #[prost(string, tag = "1")]
    pub scope: String,
    #[prost(string, tag = "2")]
    pub stream: String,
}

/// A group's name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub scope: String,
    pub group: String,
}

impl std::fmt::Display for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.scope, self.group)
    }
}

/// One reader of a group.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReaderRecord {
    /// The segments it owns, each with the offset it last reported
    /// (everything before was handed to the application).
    #[prost(btree_map = "uint64, uint64", tag = "1")]
    pub segments: BTreeMap<u64, u64>,
    /// Segments it is asked to give up (it stops reading them and reports
    /// where it stopped).
    #[prost(uint64, repeated, tag = "2")]
    pub releasing: Vec<u64>,
}

/// Where a checkpoint stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum CheckpointState {
    Pending = 0,
    Complete = 1,
    Failed = 2,
}

/// A checkpoint: a stream cut every reader reached with a marker.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckpointRecord {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub created_ms: u64,
    /// Readers whose marker position is still to come.
    #[prost(string, repeated, tag = "3")]
    pub pending: Vec<String>,
    /// The cut so far: segment → offset.
    #[prost(btree_map = "uint64, uint64", tag = "4")]
    pub positions: BTreeMap<u64, u64>,
    #[prost(enumeration = "CheckpointState", tag = "5")]
    pub state: i32,
    /// Why it failed.
    #[prost(string, tag = "6")]
    pub failure: String,
}

/// What a reader reports in one heartbeat.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// The generation its assignment came from.
    pub generation: u64,
    /// Offsets reached in owned segments.
    pub positions: BTreeMap<u64, u64>,
    /// Owned segments read to their end, with their end offsets.
    pub completed: BTreeMap<u64, u64>,
    /// Segments given up (as asked), with where reading stopped.
    pub released: BTreeMap<u64, u64>,
    /// Checkpoint markers reached: name → owned positions at the marker.
    pub checkpoints: Vec<(String, BTreeMap<u64, u64>)>,
}

/// What a reader is told after any of its calls.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReaderView {
    pub generation: u64,
    /// The group's reader timeout (the reader heart-beats well within it).
    pub reader_timeout_ms: u64,
    /// Its segments, with the offsets the group holds for them (a newly
    /// given segment is read from there).
    pub segments: BTreeMap<u64, u64>,
    /// Segments to give up.
    pub release: Vec<u64>,
    /// The oldest checkpoint still waiting for this reader's marker.
    pub checkpoint: Option<String>,
}

/// Why a group change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("reader {reader} is not in group {group} (it left or timed out): join again")]
    ReaderUnknown { group: String, reader: String },
    #[error("{0}")]
    Invalid(String),
    /// Too many readers or outstanding checkpoints.
    #[error("{0}")]
    Full(String),
}

/// The successor graph of a group's streams: for each segment, the
/// segments that replaced it and those it replaced.
#[derive(Debug, Default)]
pub struct SegmentGraph {
    pub successors: BTreeMap<u64, Vec<u64>>,
    pub predecessors: BTreeMap<u64, Vec<u64>>,
}

impl SegmentGraph {
    fn successors(&self, id: u64) -> &[u64] {
        self.successors.get(&id).map_or(&[], Vec::as_slice)
    }

    fn predecessors(&self, id: u64) -> &[u64] {
        self.predecessors.get(&id).map_or(&[], Vec::as_slice)
    }
}

impl GroupRecord {
    /// A new group reading from `start` (segment → offset).
    pub fn new(
        scope: String,
        group: String,
        streams: Vec<GroupStream>,
        start: BTreeMap<u64, u64>,
        reader_timeout_ms: u64,
        subscribed: bool,
    ) -> GroupRecord {
        GroupRecord {
            scope,
            group,
            streams,
            reader_timeout_ms,
            generation: 0,
            readers: BTreeMap::new(),
            unassigned: start,
            completed: BTreeMap::new(),
            checkpoints: Vec::new(),
            subscribed,
            lag: BTreeMap::new(),
        }
    }

    pub fn key(&self) -> GroupKey {
        GroupKey {
            scope: self.scope.clone(),
            group: self.group.clone(),
        }
    }

    fn name(&self) -> String {
        self.key().to_string()
    }

    fn unknown(&self, reader: &str) -> GroupError {
        GroupError::ReaderUnknown {
            group: self.name(),
            reader: reader.to_string(),
        }
    }

    fn outstanding(&self) -> impl Iterator<Item = &CheckpointRecord> {
        self.checkpoints
            .iter()
            .filter(|c| c.state() == CheckpointState::Pending)
    }

    /// The view reader `reader` is given.
    pub fn view(&self, reader: &str) -> Result<ReaderView, GroupError> {
        let r = self
            .readers
            .get(reader)
            .ok_or_else(|| self.unknown(reader))?;
        Ok(ReaderView {
            generation: self.generation,
            reader_timeout_ms: self.reader_timeout_ms,
            segments: r.segments.clone(),
            release: r.releasing.clone(),
            checkpoint: self
                .outstanding()
                .find(|c| c.pending.iter().any(|p| p == reader))
                .map(|c| c.name.clone()),
        })
    }

    /// Reader `reader` joins (a reader already in the group keeps its
    /// segments: a restarted reader resumes where it last reported).
    pub fn join(&mut self, reader: &str, graph: &SegmentGraph) -> Result<ReaderView, GroupError> {
        check_name("reader id", reader)?;
        if !self.readers.contains_key(reader) {
            if self.readers.len() >= READERS_PER_GROUP_MAX {
                return Err(GroupError::Full(format!(
                    "group {} has {READERS_PER_GROUP_MAX} readers, the most allowed",
                    self.name()
                )));
            }
            self.readers
                .insert(reader.to_string(), ReaderRecord::default());
        }
        self.settle(graph);
        self.view(reader)
    }

    /// Applies one heartbeat of `reader`.
    pub fn heartbeat(
        &mut self,
        reader: &str,
        report: Report,
        graph: &SegmentGraph,
    ) -> Result<ReaderView, GroupError> {
        if !self.readers.contains_key(reader) {
            return Err(self.unknown(reader));
        }
        if report.generation == self.generation {
            self.apply_report(reader, report);
        }
        self.settle(graph);
        self.view(reader)
    }

    fn apply_report(&mut self, reader: &str, report: Report) {
        let Some(r) = self.readers.get_mut(reader) else {
            return;
        };
        for (seg, offset) in &report.positions {
            if let Some(at) = r.segments.get_mut(seg) {
                *at = (*at).max(*offset);
            }
        }
        // A segment leaving the reader before its marker belongs to every
        // checkpoint still waiting for that marker, at where it left.
        let mut left: BTreeMap<u64, u64> = BTreeMap::new();
        for (&seg, &end) in &report.completed {
            if r.segments.remove(&seg).is_some() {
                r.releasing.retain(|s| *s != seg);
                self.completed.insert(seg, end);
                left.insert(seg, end);
            }
        }
        for (&seg, &offset) in &report.released {
            if r.releasing.contains(&seg) {
                if let Some(at) = r.segments.remove(&seg) {
                    let offset = offset.max(at);
                    r.releasing.retain(|s| *s != seg);
                    self.unassigned.insert(seg, offset);
                    left.insert(seg, offset);
                }
            }
        }
        for c in self
            .checkpoints
            .iter_mut()
            .filter(|c| c.state() == CheckpointState::Pending)
        {
            if c.pending.iter().any(|p| p == reader) {
                c.positions.extend(left.iter().map(|(&s, &o)| (s, o)));
            }
        }
        for (name, positions) in report.checkpoints {
            if let Some(c) = self.checkpoints.iter_mut().find(|c| {
                c.name == name
                    && c.state() == CheckpointState::Pending
                    && c.pending.iter().any(|p| p == reader)
            }) {
                c.positions.extend(positions);
                c.pending.retain(|p| p != reader);
            }
        }
        self.finish_checkpoints();
    }

    /// Reader `reader` leaves (`positions`: where it stopped in its
    /// segments) or timed out (`None`: its last reported offsets). Its
    /// segments are assignable again; checkpoints waiting for it fail.
    pub fn remove_reader(
        &mut self,
        reader: &str,
        positions: Option<&BTreeMap<u64, u64>>,
        why: &str,
        graph: &SegmentGraph,
    ) -> Result<(), GroupError> {
        let r = self
            .readers
            .remove(reader)
            .ok_or_else(|| self.unknown(reader))?;
        for (seg, at) in r.segments {
            let offset = positions
                .and_then(|p| p.get(&seg))
                .map_or(at, |&o| o.max(at));
            self.unassigned.insert(seg, offset);
        }
        for c in self
            .checkpoints
            .iter_mut()
            .filter(|c| c.state() == CheckpointState::Pending)
        {
            if c.pending.iter().any(|p| p == reader) {
                c.state = CheckpointState::Failed as i32;
                c.failure = format!("reader {reader} {why} before it reached the checkpoint");
                c.pending.clear();
            }
        }
        self.finish_checkpoints();
        self.settle(graph);
        Ok(())
    }

    /// Starts checkpoint `name` at `now_ms`: every reader gets a marker.
    pub fn checkpoint(&mut self, name: &str, now_ms: u64) -> Result<(), GroupError> {
        check_name("checkpoint name", name)?;
        if self.checkpoints.iter().any(|c| c.name == name) {
            return Err(GroupError::Invalid(format!(
                "group {} already has a checkpoint named {name}",
                self.name()
            )));
        }
        if self.outstanding().count() >= CHECKPOINTS_OUTSTANDING_MAX {
            return Err(GroupError::Full(format!(
                "group {} has {CHECKPOINTS_OUTSTANDING_MAX} checkpoints outstanding, the most \
                 allowed; wait for them to complete",
                self.name()
            )));
        }
        // What no reader holds is in the cut as it is: the segments waiting
        // for a reader, and those read to their end (a reset to the cut
        // finds their successors from there).
        let mut positions = self.unassigned.clone();
        positions.extend(self.completed.iter().map(|(&s, &o)| (s, o)));
        self.checkpoints.push(CheckpointRecord {
            name: name.to_string(),
            created_ms: now_ms,
            pending: self.readers.keys().cloned().collect(),
            positions,
            state: CheckpointState::Pending as i32,
            failure: String::new(),
        });
        self.finish_checkpoints();
        Ok(())
    }

    /// The checkpoint named `name`.
    pub fn find_checkpoint(&self, name: &str) -> Option<&CheckpointRecord> {
        self.checkpoints.iter().find(|c| c.name == name)
    }

    /// Resets the group to read from `cut`: every reader gives up what it
    /// owns (it learns from the new generation), outstanding checkpoints
    /// fail.
    pub fn reset(&mut self, cut: BTreeMap<u64, u64>, graph: &SegmentGraph) {
        self.generation += 1;
        for r in self.readers.values_mut() {
            r.segments.clear();
            r.releasing.clear();
        }
        self.unassigned = cut;
        self.completed.clear();
        for c in self
            .checkpoints
            .iter_mut()
            .filter(|c| c.state() == CheckpointState::Pending)
        {
            c.state = CheckpointState::Failed as i32;
            c.failure = "the group was reset".into();
            c.pending.clear();
        }
        self.finish_checkpoints();
        self.settle(graph);
    }

    /// Completes checkpoints no reader is pending for and keeps at most
    /// [`CHECKPOINTS_KEPT_MAX`] finished ones.
    fn finish_checkpoints(&mut self) {
        for c in &mut self.checkpoints {
            if c.state() == CheckpointState::Pending && c.pending.is_empty() {
                c.state = CheckpointState::Complete as i32;
            }
        }
        let finished = self
            .checkpoints
            .iter()
            .filter(|c| c.state() != CheckpointState::Pending)
            .count();
        let mut drop = finished.saturating_sub(CHECKPOINTS_KEPT_MAX);
        self.checkpoints.retain(|c| {
            if drop > 0 && c.state() != CheckpointState::Pending {
                drop -= 1;
                false
            } else {
                true
            }
        });
    }

    /// Where the group has consumed to, for retention by consumption: its
    /// last complete checkpoint, or before its first, where its readers
    /// are now.
    pub fn consumed_cut(&self) -> BTreeMap<u64, u64> {
        if let Some(c) = self
            .checkpoints
            .iter()
            .rev()
            .find(|c| c.state() == CheckpointState::Complete)
        {
            return c.positions.clone();
        }
        let mut cut = self.positions();
        cut.extend(self.completed.iter().map(|(&s, &o)| (s, o)));
        cut
    }

    /// Records each segment's lag (measured by the meta leader), then
    /// balances with it.
    pub fn set_lags(&mut self, lag: BTreeMap<u64, u64>, graph: &SegmentGraph) {
        self.lag = lag;
        self.settle(graph);
    }

    /// Where the group reads each segment it knows and has not finished:
    /// what lag is measured against.
    pub fn positions(&self) -> BTreeMap<u64, u64> {
        let mut at = self.unassigned.clone();
        for r in self.readers.values() {
            at.extend(r.segments.iter().map(|(&s, &o)| (s, o)));
        }
        at
    }

    fn lag_of(&self, seg: u64) -> u64 {
        self.lag.get(&seg).copied().unwrap_or(0)
    }

    /// A reader's load: its segment count, then their lag.
    fn load(&self, r: &ReaderRecord) -> (usize, u64) {
        let lag = r.segments.keys().map(|&s| self.lag_of(s)).sum();
        (r.segments.len(), lag)
    }

    /// Whether the group knows `seg`: to read, being read, or read.
    fn known(&self, seg: u64) -> bool {
        self.unassigned.contains_key(&seg)
            || self.completed.contains_key(&seg)
            || self.readers.values().any(|r| r.segments.contains_key(&seg))
    }

    /// Whether `seg` is known and not yet read to its end.
    fn unfinished(&self, seg: u64) -> bool {
        self.known(seg) && !self.completed.contains_key(&seg)
    }

    /// Whether predecessor `p` of a successor is still to be read by this
    /// group: it is (or descends from) a segment the group has not finished.
    /// A predecessor the group never reaches (before its start) is not.
    fn still_to_read(&self, p: u64, graph: &SegmentGraph) -> bool {
        if self.completed.contains_key(&p) {
            return false;
        }
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::from([p]);
        while let Some(s) = queue.pop_front() {
            if seen.len() >= ANCESTOR_WALK_MAX {
                // Cannot tell: wait (safe; never hands out early).
                return true;
            }
            if !seen.insert(s) {
                continue;
            }
            if self.unfinished(s) {
                return true;
            }
            if !self.completed.contains_key(&s) {
                queue.extend(graph.predecessors(s));
            }
        }
        false
    }

    /// Makes successors whose predecessors are all read assignable, forgets
    /// completed segments whose successors are all handed out, and (with no
    /// checkpoint outstanding) balances ownership.
    pub fn settle(&mut self, graph: &SegmentGraph) {
        let completed: Vec<u64> = self.completed.keys().copied().collect();
        for c in &completed {
            for &t in graph.successors(*c) {
                if self.known(t) {
                    continue;
                }
                let ready = graph
                    .predecessors(t)
                    .iter()
                    .all(|&p| !self.still_to_read(p, graph));
                if ready {
                    self.unassigned.insert(t, 0);
                }
            }
        }
        for c in completed {
            let succ = graph.successors(c);
            if !succ.is_empty() && succ.iter().all(|&t| self.known(t)) {
                self.completed.remove(&c);
            }
        }
        if self.outstanding().next().is_none() {
            self.balance();
        }
    }

    /// Balances by count, then lag: unassigned segments, most lagging
    /// first, go to the least loaded readers (fewest segments, then least
    /// lag) up to an even share; a reader two or more segments above
    /// another is asked to give up its most lagging one (the one an idle
    /// reader helps most with).
    fn balance(&mut self) {
        let n = self.readers.len();
        if n == 0 {
            return;
        }
        let owned: usize = self.readers.values().map(|r| r.segments.len()).sum();
        let total = owned + self.unassigned.len();
        let high = total.div_ceil(n);
        let mut segs: Vec<(u64, u64)> = self.unassigned.iter().map(|(&s, &o)| (s, o)).collect();
        segs.sort_by_key(|&(s, _)| (std::cmp::Reverse(self.lag_of(s)), s));
        for (seg, offset) in segs {
            let Some(id) = self
                .readers
                .iter()
                .min_by_key(|(id, r)| (self.load(r), (*id).clone()))
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            let Some(r) = self.readers.get_mut(&id) else {
                break;
            };
            if r.segments.len() >= high {
                break;
            }
            r.segments.insert(seg, offset);
            self.unassigned.remove(&seg);
        }
        if !self.unassigned.is_empty() {
            return;
        }
        let counts: Vec<usize> = self.readers.values().map(|r| r.segments.len()).collect();
        let (Some(&max), Some(&min)) = (counts.iter().max(), counts.iter().min()) else {
            return;
        };
        if max < min + 2 {
            return;
        }
        let busiest = self
            .readers
            .iter()
            .filter(|(_, r)| r.segments.len() == max && r.releasing.is_empty())
            .max_by_key(|(id, r)| (self.load(r), std::cmp::Reverse((*id).clone())))
            .map(|(id, r)| {
                let seg = r
                    .segments
                    .keys()
                    .copied()
                    .max_by_key(|&s| (self.lag_of(s), s));
                (id.clone(), seg)
            });
        if let Some((id, Some(seg))) = busiest {
            if let Some(r) = self.readers.get_mut(&id) {
                r.releasing.push(seg);
            }
        }
    }
}

/// How far a group consumed each segment, from its consumed cut: a
/// segment in the cut up to its position, an ancestor of one entirely
/// (`u64::MAX`), any other not at all.
pub struct Consumed {
    cut: BTreeMap<u64, u64>,
    ancestors: BTreeSet<u64>,
}

impl Consumed {
    pub fn new(cut: BTreeMap<u64, u64>, graph: &SegmentGraph) -> Consumed {
        let mut ancestors = BTreeSet::new();
        let mut queue: VecDeque<u64> = cut.keys().copied().collect();
        while let Some(s) = queue.pop_front() {
            for &p in graph.predecessors(s) {
                if ancestors.len() < ANCESTOR_WALK_MAX && ancestors.insert(p) {
                    queue.push_back(p);
                }
            }
        }
        Consumed { cut, ancestors }
    }

    /// Bytes of segment `seg` below this offset were consumed.
    pub fn offset(&self, seg: u64) -> u64 {
        match self.cut.get(&seg) {
            Some(&o) => o,
            None if self.ancestors.contains(&seg) => u64::MAX,
            None => 0,
        }
    }
}

fn check_name(what: &str, name: &str) -> Result<(), GroupError> {
    if name.is_empty() || name.len() > GROUP_NAME_BYTES_MAX {
        return Err(GroupError::Invalid(format!(
            "a {what} must be 1 to {GROUP_NAME_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(start: &[(u64, u64)]) -> GroupRecord {
        GroupRecord::new(
            "s".into(),
            "g".into(),
            Vec::new(),
            start.iter().copied().collect(),
            10_000,
            false,
        )
    }

    /// 1 split into 2 and 3; 2 and 3 merged into 4.
    fn graph() -> SegmentGraph {
        let mut g = SegmentGraph::default();
        g.successors.insert(1, vec![2, 3]);
        g.predecessors.insert(2, vec![1]);
        g.predecessors.insert(3, vec![1]);
        g.successors.insert(2, vec![4]);
        g.successors.insert(3, vec![4]);
        g.predecessors.insert(4, vec![2, 3]);
        g
    }

    fn owners(g: &GroupRecord) -> BTreeMap<u64, String> {
        let mut out = BTreeMap::new();
        for (id, r) in &g.readers {
            for s in r.segments.keys() {
                assert!(out.insert(*s, id.clone()).is_none(), "two owners of {s}");
            }
        }
        out
    }

    fn report(g: &GroupRecord) -> Report {
        Report {
            generation: g.generation,
            ..Report::default()
        }
    }

    #[test]
    fn segments_are_shared_evenly_and_each_has_one_owner() {
        let graph = SegmentGraph::default();
        let mut g = group(&[(10, 0), (11, 0), (12, 0), (13, 0), (14, 0), (15, 0)]);
        let a = g.join("a", &graph).unwrap();
        assert_eq!(a.segments.len(), 6);
        g.join("b", &graph).unwrap();
        g.join("c", &graph).unwrap();
        // a gives up one segment per heartbeat until the shares are even.
        for _ in 0..10 {
            let view = g.view("a").unwrap();
            let mut r = report(&g);
            for s in view.release {
                r.released.insert(s, 5);
            }
            g.heartbeat("a", r, &graph).unwrap();
            owners(&g);
        }
        let counts: Vec<usize> = g.readers.values().map(|r| r.segments.len()).collect();
        assert_eq!(counts, vec![2, 2, 2]);
        // A released segment resumes where its reader stopped.
        let moved = g.readers["b"]
            .segments
            .values()
            .copied()
            .collect::<Vec<_>>();
        assert_eq!(moved, vec![5, 5]);
    }

    #[test]
    fn a_reader_that_times_out_loses_its_segments_at_its_last_report() {
        let graph = SegmentGraph::default();
        let mut g = group(&[(10, 0), (11, 0)]);
        g.join("a", &graph).unwrap();
        g.join("b", &graph).unwrap();
        let mine: Vec<u64> = g.readers["a"].segments.keys().copied().collect();
        let mut r = report(&g);
        r.positions.insert(mine[0], 40);
        g.heartbeat("a", r, &graph).unwrap();
        g.remove_reader("a", None, "timed out", &graph).unwrap();
        assert_eq!(g.readers["b"].segments[&mine[0]], 40);
        assert!(matches!(
            g.heartbeat("a", report(&g), &graph),
            Err(GroupError::ReaderUnknown { .. })
        ));
    }

    #[test]
    fn successors_wait_for_every_predecessor() {
        let graph = graph();
        let mut g = group(&[(1, 0)]);
        g.join("a", &graph).unwrap();
        let mut r = report(&g);
        r.completed.insert(1, 100);
        let v = g.heartbeat("a", r, &graph).unwrap();
        assert_eq!(v.segments.keys().copied().collect::<Vec<_>>(), vec![2, 3]);
        // 2 done, 3 not: the merge 4 waits.
        let mut r = report(&g);
        r.completed.insert(2, 10);
        let v = g.heartbeat("a", r, &graph).unwrap();
        assert_eq!(v.segments.keys().copied().collect::<Vec<_>>(), vec![3]);
        let mut r = report(&g);
        r.completed.insert(3, 10);
        let v = g.heartbeat("a", r, &graph).unwrap();
        assert_eq!(v.segments.keys().copied().collect::<Vec<_>>(), vec![4]);
        assert!(g.completed.is_empty(), "handed-out lineage is forgotten");
    }

    #[test]
    fn a_predecessor_before_the_start_is_not_waited_for() {
        let graph = graph();
        // Starting at 2 only (3 before the cut is not read by this group).
        let mut g = group(&[(2, 0)]);
        g.join("a", &graph).unwrap();
        let mut r = report(&g);
        r.completed.insert(2, 10);
        let v = g.heartbeat("a", r, &graph).unwrap();
        assert_eq!(v.segments.keys().copied().collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn a_completed_segment_whose_scale_is_not_recorded_yet_waits() {
        let mut graph = SegmentGraph::default();
        let mut g = group(&[(1, 0)]);
        g.join("a", &graph).unwrap();
        let mut r = report(&g);
        r.completed.insert(1, 100);
        assert!(g.heartbeat("a", r, &graph).unwrap().segments.is_empty());
        // The scale is recorded later: the next heartbeat finds the successors.
        graph = self::graph();
        let v = g.heartbeat("a", report(&g), &graph).unwrap();
        assert_eq!(v.segments.len(), 2);
    }

    #[test]
    fn a_checkpoint_completes_with_every_readers_marker_and_freezes_ownership() {
        let graph = SegmentGraph::default();
        let mut g = group(&[(10, 0), (11, 0), (12, 7)]);
        g.join("a", &graph).unwrap();
        g.join("b", &graph).unwrap();
        g.checkpoint("c1", 1).unwrap();
        assert_eq!(g.view("a").unwrap().checkpoint.as_deref(), Some("c1"));
        // A reader joining now waits for the checkpoint.
        assert!(g.join("c", &graph).unwrap().segments.is_empty());
        let a: Vec<u64> = g.readers["a"].segments.keys().copied().collect();
        let b: Vec<u64> = g.readers["b"].segments.keys().copied().collect();
        let mut r = report(&g);
        r.checkpoints
            .push(("c1".into(), a.iter().map(|&s| (s, 50)).collect()));
        g.heartbeat("a", r, &graph).unwrap();
        assert_eq!(
            g.find_checkpoint("c1").unwrap().state(),
            CheckpointState::Pending
        );
        let mut r = report(&g);
        r.checkpoints
            .push(("c1".into(), b.iter().map(|&s| (s, 60)).collect()));
        g.heartbeat("b", r, &graph).unwrap();
        let c = g.find_checkpoint("c1").unwrap();
        assert_eq!(c.state(), CheckpointState::Complete);
        assert_eq!(c.positions.len(), 3);
        // Ownership moves again once it is complete.
        g.heartbeat("c", report(&g), &graph).unwrap();
        assert!(g.readers.values().any(|r| !r.releasing.is_empty()));
    }

    #[test]
    fn a_segment_completed_before_the_marker_is_in_the_cut_at_its_end() {
        let graph = graph();
        let mut g = group(&[(1, 0)]);
        g.join("a", &graph).unwrap();
        g.checkpoint("c1", 1).unwrap();
        let mut r = report(&g);
        r.completed.insert(1, 100);
        // Ownership is frozen: the successors wait for the checkpoint.
        assert!(g.heartbeat("a", r, &graph).unwrap().segments.is_empty());
        let mut r = report(&g);
        r.checkpoints.push(("c1".into(), BTreeMap::new()));
        let v = g.heartbeat("a", r, &graph).unwrap();
        let c = g.find_checkpoint("c1").unwrap();
        assert_eq!(c.positions, BTreeMap::from([(1, 100)]));
        assert_eq!(v.segments.len(), 2);
    }

    #[test]
    fn outstanding_checkpoints_are_bounded_and_fail_when_a_reader_leaves() {
        let graph = SegmentGraph::default();
        let mut g = group(&[(10, 0)]);
        g.join("a", &graph).unwrap();
        for i in 0..CHECKPOINTS_OUTSTANDING_MAX {
            g.checkpoint(&format!("c{i}"), 1).unwrap();
        }
        assert!(matches!(g.checkpoint("more", 1), Err(GroupError::Full(_))));
        assert!(matches!(g.checkpoint("c0", 1), Err(GroupError::Invalid(_))));
        g.remove_reader("a", None, "left", &graph).unwrap();
        assert!(g
            .checkpoints
            .iter()
            .all(|c| c.state() == CheckpointState::Failed && c.failure.contains("left")));
        // With no readers a checkpoint completes at once.
        g.checkpoint("empty", 2).unwrap();
        assert_eq!(
            g.find_checkpoint("empty").unwrap().positions,
            BTreeMap::from([(10, 0)])
        );
    }

    #[test]
    fn a_reset_moves_every_reader_to_the_cut_and_ignores_older_reports() {
        let graph = SegmentGraph::default();
        let mut g = group(&[(10, 0), (11, 0)]);
        g.join("a", &graph).unwrap();
        let old = report(&g);
        g.reset(BTreeMap::from([(10, 3), (11, 4)]), &graph);
        let mut stale = old;
        stale.positions.insert(10, 99);
        let v = g.heartbeat("a", stale, &graph).unwrap();
        assert_eq!(v.generation, 1);
        assert_eq!(v.segments, BTreeMap::from([(10, 3), (11, 4)]));
    }

    #[test]
    fn consumption_follows_the_last_complete_checkpoint_and_its_ancestors() {
        let graph = graph();
        let mut g = group(&[(1, 0)]);
        g.join("a", &graph).unwrap();
        let mut r = report(&g);
        r.positions.insert(1, 30);
        g.heartbeat("a", r, &graph).unwrap();
        // Before any checkpoint: where the readers are.
        let c = Consumed::new(g.consumed_cut(), &graph);
        assert_eq!((c.offset(1), c.offset(2)), (30, 0));
        let mut r = report(&g);
        r.completed.insert(1, 100);
        g.heartbeat("a", r, &graph).unwrap();
        g.checkpoint("c", 1).unwrap();
        let mut r = report(&g);
        r.checkpoints
            .push(("c".into(), BTreeMap::from([(2, 5), (3, 0)])));
        g.heartbeat("a", r, &graph).unwrap();
        let c = Consumed::new(g.consumed_cut(), &graph);
        assert_eq!(
            (c.offset(1), c.offset(2), c.offset(3), c.offset(4)),
            (u64::MAX, 5, 0, 0)
        );
    }

    #[test]
    fn the_balance_weighs_lag_after_count() {
        let graph = SegmentGraph::default();
        let mut g = group(&[]);
        g.join("a", &graph).unwrap();
        g.join("b", &graph).unwrap();
        // Equal counts: the more lagging unassigned segment goes first, and
        // the next to the reader with less lag.
        g.lag = BTreeMap::from([(10, 5), (11, 500), (12, 50), (13, 1)]);
        g.unassigned = BTreeMap::from([(10, 0), (11, 0), (12, 0), (13, 0)]);
        g.settle(&graph);
        let a: Vec<u64> = g.readers["a"].segments.keys().copied().collect();
        let b: Vec<u64> = g.readers["b"].segments.keys().copied().collect();
        assert_eq!((a, b), (vec![11, 13], vec![10, 12]));
        // A third reader: the busiest reader gives up its most lagging
        // segment.
        g.join("c", &graph).unwrap();
        let releasing: Vec<u64> = g
            .readers
            .values()
            .flat_map(|r| r.releasing.clone())
            .collect();
        assert_eq!(releasing, vec![11]);
    }

    #[test]
    fn finished_checkpoints_are_bounded() {
        let graph = SegmentGraph::default();
        let mut g = group(&[(10, 0)]);
        for i in 0..(CHECKPOINTS_KEPT_MAX + 5) {
            g.checkpoint(&format!("c{i}"), 1).unwrap();
        }
        assert_eq!(g.checkpoints.len(), CHECKPOINTS_KEPT_MAX);
        assert_eq!(g.checkpoints[0].name, "c5");
        let _ = graph;
    }
}
