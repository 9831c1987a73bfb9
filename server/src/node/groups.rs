//! Reader groups on the node: where a new group starts (head, tail or a
//! cut, checked against its streams), the group as users see it (with each
//! segment's lag), reader liveness — the metadata leader notes each
//! reader's calls and times out those silent for the group's reader timeout
//! (a `TimeOut` entry; the rules are in `controller/groups.rs`) — and the
//! lag the balance weighs, measured by the metadata leader every
//! [`LAG_INTERVAL`] (a `Lags` entry when it changed).
//!
//! Liveness is the leader's own clock and memory on purpose: a new leader
//! starts every reader's clock afresh, so a failover gives readers a full
//! timeout, never less. Must never: time a reader out on a node that does
//! not lead `meta`, or from a clock other nodes wrote.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::controller::groups::{GroupKey, GroupRecord, GroupStream};
use crate::controller::{GroupOp, StreamKey};
use crate::error::Error;

use super::Node;

/// How often the metadata leader looks for silent readers.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(200);
/// How often the metadata leader measures the groups' lag.
const LAG_INTERVAL: Duration = Duration::from_secs(2);
/// A group's reader timeout when none is given.
pub const READER_TIMEOUT_DEFAULT_MS: u64 = 30_000;
/// The shortest and longest reader timeouts a group may have.
pub const READER_TIMEOUT_MIN_MS: u64 = 200;
pub const READER_TIMEOUT_MAX_MS: u64 = 3_600_000;

/// Where a new group starts reading.
#[derive(Debug, Clone)]
pub enum Start {
    Head,
    Tail,
    Cut(BTreeMap<u64, u64>),
}

/// When the metadata leader last heard from each reader.
#[derive(Default)]
pub(crate) struct Liveness {
    /// The `meta` term these times were noted in: a new term starts over.
    term: Option<u64>,
    seen: HashMap<(GroupKey, String), Instant>,
}

impl Liveness {
    /// Notes a call of `reader` of group `key` now.
    pub(crate) fn touch(&mut self, term: Option<u64>, key: &GroupKey, reader: &str) {
        self.restart_if(term);
        self.seen
            .insert((key.clone(), reader.to_string()), Instant::now());
    }

    fn restart_if(&mut self, term: Option<u64>) {
        if self.term != term {
            self.term = term;
            self.seen.clear();
        }
    }

    /// The readers of `groups` silent for longer than their group's
    /// timeout; a reader first seen now is noted, not timed out.
    fn silent(
        &mut self,
        term: Option<u64>,
        groups: &[(GroupKey, u64, Vec<String>)],
    ) -> Vec<(GroupKey, String)> {
        self.restart_if(term);
        let now = Instant::now();
        let mut out = Vec::new();
        let mut live = std::collections::HashSet::new();
        for (key, timeout_ms, readers) in groups {
            let timeout = Duration::from_millis(*timeout_ms);
            for reader in readers {
                let id = (key.clone(), reader.clone());
                let seen = *self.seen.entry(id.clone()).or_insert(now);
                if now.duration_since(seen) > timeout {
                    out.push(id.clone());
                }
                live.insert(id);
            }
        }
        self.seen.retain(|id, _| live.contains(id));
        out
    }
}

/// On the metadata leader, every [`LIVENESS_INTERVAL`]: times out silent
/// readers.
pub(super) async fn liveness_loop(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut measured = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LIVENESS_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let term = node.controller.group().leader_term();
        if term.is_none() {
            continue;
        }
        if measured.elapsed() >= LAG_INTERVAL {
            measured = Instant::now();
            for g in &node.controller.group_records("") {
                node.measure_lag(g).await;
            }
        }
        let readers = node.controller.group_readers();
        let silent = node.liveness().silent(term, &readers);
        for (key, reader) in silent {
            let op = GroupOp::TimeOut(crate::controller::ReaderRef {
                reader: reader.clone(),
            });
            match node.controller.group_change(&key, op).await {
                Ok(_) => {
                    tracing::info!(group = %key, reader, "reader timed out: its segments are handed to the others")
                }
                Err(e) => {
                    tracing::debug!(group = %key, reader, error = %e, "reader time-out not recorded; will retry")
                }
            }
        }
    }
}

impl Node {
    fn liveness(&self) -> std::sync::MutexGuard<'_, Liveness> {
        self.liveness.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that `reader` of `key` called (on the metadata leader).
    pub fn reader_seen(&self, key: &GroupKey, reader: &str) {
        let term = self.controller.group().leader_term();
        self.liveness().touch(term, key, reader);
    }

    /// The cut a new group over `streams` starts from: every position in
    /// it names a segment of those streams.
    pub async fn group_start(
        &self,
        streams: &[GroupStream],
        start: Start,
    ) -> Result<BTreeMap<u64, u64>, Error> {
        let mut records = Vec::new();
        for s in streams {
            let key = StreamKey {
                scope: s.scope.clone(),
                stream: s.stream.clone(),
            };
            records.push(self.controller.get(&key)?);
        }
        let listed = |id: u64| {
            records
                .iter()
                .flat_map(|r| &r.segments)
                .any(|g| g.id == id && !g.pending && !g.dropped)
        };
        let ids: Vec<u64> = match &start {
            Start::Cut(cut) => {
                if let Some(id) = cut.keys().find(|&&id| !listed(id)) {
                    return Err(Error::InvalidArgument(format!(
                        "the cut names segment {id}, which is not a readable segment of the group's streams"
                    )));
                }
                return Ok(cut.clone());
            }
            // The first segments: those whose predecessors are all gone.
            Start::Head => records
                .iter()
                .flat_map(|r| &r.segments)
                .filter(|g| !g.pending && !g.dropped)
                .filter(|g| g.predecessors.iter().all(|&p| !listed(p)))
                .map(|g| g.id)
                .collect(),
            Start::Tail => records
                .iter()
                .flat_map(|r| r.active())
                .map(|g| g.id)
                .collect(),
        };
        let views = self.segment_views(&ids).await?;
        ids.iter()
            .map(|id| {
                let v = views.get(id).ok_or_else(|| {
                    Error::Unavailable(format!("segment {id} cannot be described now; retry"))
                })?;
                Ok((
                    *id,
                    if matches!(start, Start::Tail) {
                        v.length
                    } else {
                        v.head
                    },
                ))
            })
            .collect()
    }

    /// Records group `g`'s lag per segment, if it changed.
    async fn measure_lag(&self, g: &GroupRecord) {
        let lengths = self.group_lengths(g).await;
        let lag: BTreeMap<u64, u64> = g
            .positions()
            .into_iter()
            .filter_map(|(s, at)| Some((s, lengths.get(&s)?.saturating_sub(at))))
            .collect();
        if lag == g.lag {
            return;
        }
        let op = GroupOp::Lags(crate::controller::Positions { positions: lag });
        if let Err(e) = self.controller.group_change(&g.key(), op).await {
            tracing::debug!(group = %g.key(), error = %e, "lag not recorded; will retry");
        }
    }

    /// The lengths of the segments group `g` reads or may read next.
    pub async fn group_lengths(&self, g: &GroupRecord) -> HashMap<u64, u64> {
        let ids: Vec<u64> = g
            .unassigned
            .keys()
            .chain(g.readers.values().flat_map(|r| r.segments.keys()))
            .copied()
            .collect();
        match self.segment_views(&ids).await {
            Ok(views) => views.into_iter().map(|(id, v)| (id, v.length)).collect(),
            // Lag is a hint: without the views it is left out.
            Err(_) => HashMap::new(),
        }
    }
}
