//! The `meta` state machine: streams, their segments and epochs (the
//! successor graph of their scales), the nodes and the placement, reader
//! groups (`groups.rs` has their rules) and transactions (`txns.rs`).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use super::command::{
    CompleteScale, EpochSnapshot, GroupCommand, GroupOp, MetaCmd, MetaCommand, MetaSnapshot,
    NodeRecord, PolicyRecord, SegmentSnapshot, StartScale, StreamRef, StreamSnapshot, TxnCommand,
    TxnOp,
};
use super::groups::{
    GroupError, GroupKey, GroupRecord, GroupStream, ReaderView, Report, SegmentGraph, GROUPS_MAX,
};
use super::scaling::{self, ScalingKind, ScalingPolicy, Span, Split};
use super::txns::{self, Change, TxnError, TxnPart, TxnRecord, TxnState, TxnTable};
use crate::container::container_of;
use crate::controller::placement::Placement;
use crate::group::StateMachine;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamKey {
    pub scope: String,
    pub stream: String,
}

impl From<&StreamKey> for StreamRef {
    fn from(k: &StreamKey) -> Self {
        StreamRef {
            scope: k.scope.clone(),
            stream: k.stream.clone(),
        }
    }
}

impl std::fmt::Display for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.scope, self.stream)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SegmentRecord {
    pub id: u64,
    pub number: u32,
    pub container: u32,
    pub key_low: f64,
    pub key_high: f64,
    /// The epoch that created it (also the id's top bits, see
    /// [`segment_id`]).
    pub epoch: u64,
    /// The segments that replaced it when a scale sealed it.
    pub successors: Vec<u64>,
    /// The segments it replaced.
    pub predecessors: Vec<u64>,
    /// A successor of the scale under way: created in its container, not
    /// yet written to (appends are refused until the epoch is in force).
    pub pending: bool,
    /// A sealed predecessor retention expired whole: not read any more,
    /// being deleted from its container.
    pub dropped: bool,
}

impl SegmentRecord {
    /// The segment as the scaling rules see it.
    pub fn span(&self) -> Span {
        Span {
            id: self.id,
            key_low: self.key_low,
            key_high: self.key_high,
        }
    }

    /// Whether it belongs to the stream's current epoch.
    pub fn is_active(&self) -> bool {
        !self.pending && !self.dropped && self.successors.is_empty()
    }
}

/// Marks `ids` dropped where that keeps readers' order: only a sealed
/// predecessor (it has successors) whose own predecessors are all gone, so
/// no reader can reach its successors before what came before it.
fn drop_segments(s: &mut StreamRecord, ids: &[u64]) {
    let gone = |s: &StreamRecord, id: u64| {
        s.segments
            .iter()
            .find(|g| g.id == id)
            .is_none_or(|g| g.dropped)
    };
    for &id in ids {
        let droppable = s.segments.iter().any(|g| {
            g.id == id && !g.successors.is_empty() && g.predecessors.iter().all(|&p| gone(s, p))
        });
        if droppable {
            if let Some(g) = s.segments.iter_mut().find(|g| g.id == id) {
                g.dropped = true;
            }
        }
    }
}

/// Sequence numbers of segment ids are below this (ids are
/// `epoch << SEGMENT_SEQ_BITS | sequence`).
const SEGMENT_SEQ_BITS: u32 = 40;

/// The id of the segment with global sequence number `seq` made by
/// `epoch`: unique (the sequence never repeats) and saying its epoch. Epoch
/// 0's ids are the sequence numbers themselves.
fn segment_id(epoch: u64, seq: u64) -> Result<u64, MetaError> {
    if seq >> SEGMENT_SEQ_BITS != 0 || epoch >> (64 - SEGMENT_SEQ_BITS) != 0 {
        return Err(MetaError::Invalid(format!(
            "segment ids are exhausted (epoch {epoch}, sequence {seq})"
        )));
    }
    Ok(epoch << SEGMENT_SEQ_BITS | seq)
}

/// One epoch of a stream: the segments active in it.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochRecord {
    pub epoch: u64,
    pub segment_ids: Vec<u64>,
    pub created_ms: u64,
}

/// A scale under way: recorded by `StartScale`, ended by `CompleteScale`.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    /// The epoch it makes.
    pub epoch: u64,
    /// The segments it seals (its successors are the pending segments).
    pub predecessors: Vec<u64>,
}

impl ScalingPolicy {
    /// The policy a record stands for, checked: a rate policy needs a
    /// target; the factor and minimum are brought into their ranges.
    pub fn from_record(r: &PolicyRecord) -> Result<ScalingPolicy, MetaError> {
        let kind = match r.kind {
            0 => ScalingKind::Fixed,
            1 => ScalingKind::EventsPerSecond,
            2 => ScalingKind::KibPerSecond,
            k => return Err(MetaError::Invalid(format!("unknown scaling kind {k}"))),
        };
        if kind != ScalingKind::Fixed && r.target == 0 {
            return Err(MetaError::Invalid(
                "a rate scaling policy needs a target above 0".into(),
            ));
        }
        if r.scale_factor > scaling::SPLIT_PIECES_MAX
            || r.min_segments > scaling::STREAM_SEGMENTS_MAX
        {
            return Err(MetaError::Invalid(format!(
                "scale factor is 2..={} and minimum segments 1..={}",
                scaling::SPLIT_PIECES_MAX,
                scaling::STREAM_SEGMENTS_MAX
            )));
        }
        Ok(ScalingPolicy {
            kind,
            target: r.target,
            scale_factor: r.scale_factor.max(2),
            min_segments: r.min_segments.max(1),
        })
    }

    pub fn record(&self) -> PolicyRecord {
        PolicyRecord {
            kind: match self.kind {
                ScalingKind::Fixed => 0,
                ScalingKind::EventsPerSecond => 1,
                ScalingKind::KibPerSecond => 2,
            },
            target: self.target,
            scale_factor: self.scale_factor,
            min_segments: self.min_segments,
        }
    }
}

/// How much of a stream to keep; 0 means no limit. With `by_consumption`
/// data goes once every reader group subscribed to the stream has
/// checkpointed past it, but not before it is past the minimum limits;
/// `time_ms` and `bytes` are then the maximum (data past them goes
/// whatever the groups read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub time_ms: u64,
    pub bytes: u64,
    pub by_consumption: bool,
    pub min_time_ms: u64,
    pub min_bytes: u64,
}

impl Retention {
    pub fn is_unlimited(&self) -> bool {
        self.time_ms == 0 && self.bytes == 0 && !self.by_consumption
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamRecord {
    pub key: StreamKey,
    pub segments: Vec<SegmentRecord>,
    pub retention: Retention,
    pub sealed: bool,
    /// Delete started: invisible to users, segments being removed.
    pub deleting: bool,
    /// The current epoch: 0 at creation, one more per scale.
    pub epoch: u64,
    /// Every epoch, oldest first.
    pub epochs: Vec<EpochRecord>,
    pub scaling: Option<Scaling>,
    pub policy: ScalingPolicy,
}

impl StreamRecord {
    /// Adds this stream's successor links to `graph`.
    pub fn add_to_graph(&self, graph: &mut SegmentGraph) {
        for g in &self.segments {
            if !g.successors.is_empty() {
                graph.successors.insert(g.id, g.successors.clone());
            }
            if !g.predecessors.is_empty() {
                graph.predecessors.insert(g.id, g.predecessors.clone());
            }
        }
    }

    /// The segments of the current epoch.
    pub fn active(&self) -> impl Iterator<Item = &SegmentRecord> {
        self.segments.iter().filter(|s| s.is_active())
    }
}

pub type StreamMap = Arc<RwLock<BTreeMap<StreamKey, StreamRecord>>>;
/// The cluster's nodes: id → address (empty until the first leader records
/// the nodes it was started with).
pub type NodeMap = Arc<RwLock<BTreeMap<u64, String>>>;
/// Where the groups' replicas belong (empty until the first leader places
/// them; always empty on a single node).
pub type PlacementMap = Arc<RwLock<Placement>>;
/// The reader groups.
pub type GroupMap = Arc<RwLock<BTreeMap<GroupKey, GroupRecord>>>;
/// The transactions, by id.
pub type TxnMap = Arc<RwLock<TxnTable>>;
/// The ACL grants (normalized, each once).
pub type AclMap = Arc<RwLock<Vec<aquifer_proto::v1::AclGrant>>>;
/// Grants the metadata holds at most: every request is checked against
/// them, so they stay few.
pub const ACL_GRANTS_MAX: usize = 10_000;
/// Kafka consumer groups' committed offsets.
pub type KafkaOffsetMap = Arc<RwLock<super::kafka_offsets::KafkaOffsets>>;
/// Kafka transactional ids.
pub type KafkaTxnMap = Arc<RwLock<super::kafka_txns::KafkaTxns>>;

/// What applying a metadata command answers.
#[derive(Debug, PartialEq)]
pub enum Applied {
    /// A node or placement change.
    Nothing,
    /// The stream a command changed, as it is after.
    Stream(StreamRecord),
    /// A reader-group change; the view of the reader that made it, if a
    /// reader did.
    Group(Option<ReaderView>),
    /// A transaction as it is after the change (None: forgotten), and
    /// whether the change was new.
    Txn {
        record: Option<TxnRecord>,
        changed: bool,
    },
    /// A Kafka transactional id as it is after the change, and whether its
    /// transaction had timed out (aborted, the epoch bumped).
    KafkaTxn {
        record: super::kafka_txns::KafkaTxnRecord,
        timed_out: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("stream {0} not found")]
    NotFound(String),
    #[error("stream {0} already exists")]
    Exists(String),
    #[error("undecodable metadata command: {0}")]
    Malformed(String),
    /// The request cannot be carried out as asked (a bad scale).
    #[error("{0}")]
    Invalid(String),
    /// The stream is not in a state that allows it now (a scale under way,
    /// a sealed stream).
    #[error("{0}")]
    Busy(String),
    #[error("reader group {0} not found")]
    GroupNotFound(String),
    #[error("reader group {0} already exists")]
    GroupExists(String),
    #[error("no such grant: {0}")]
    AclNotFound(String),
    #[error("{0}")]
    Full(String),
    #[error(transparent)]
    Group(#[from] GroupError),
    #[error(transparent)]
    Txn(#[from] TxnError),
    #[error(transparent)]
    KafkaOffsets(#[from] super::kafka_offsets::KafkaOffsetsError),
    #[error(transparent)]
    KafkaTxns(#[from] super::kafka_txns::KafkaTxnsError),
}

pub struct MetaState {
    streams: StreamMap,
    nodes: NodeMap,
    placement: PlacementMap,
    groups: GroupMap,
    txns: TxnMap,
    acls: AclMap,
    kafka_offsets: KafkaOffsetMap,
    kafka_txns: KafkaTxnMap,
    /// `next_segment_id` as of the last applied entry, for readers outside
    /// the group thread: every id below it was allocated here.
    allocated: Arc<std::sync::atomic::AtomicU64>,
    /// Segment ids are never reused; 0 is never an id.
    next_segment_id: u64,
}

impl MetaState {
    pub fn new(
        streams: StreamMap,
        nodes: NodeMap,
        placement: PlacementMap,
        groups: GroupMap,
        txns: TxnMap,
    ) -> Self {
        MetaState {
            streams,
            nodes,
            placement,
            groups,
            txns,
            acls: AclMap::default(),
            kafka_offsets: KafkaOffsetMap::default(),
            kafka_txns: KafkaTxnMap::default(),
            allocated: Arc::new(std::sync::atomic::AtomicU64::new(1)),
            next_segment_id: 1,
        }
    }

    /// The ACL grants, shared with the controller's readers.
    pub fn acls(&self) -> AclMap {
        self.acls.clone()
    }

    /// The committed Kafka offsets, shared with the controller's readers.
    pub fn kafka_offsets(&self) -> KafkaOffsetMap {
        self.kafka_offsets.clone()
    }

    /// The Kafka transactional ids, shared with the controller's readers.
    pub fn kafka_txns(&self) -> KafkaTxnMap {
        self.kafka_txns.clone()
    }

    /// The shared mirror of the next segment id (see `allocated`).
    pub fn allocated(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.allocated.clone()
    }

    fn key(r: StreamRef) -> StreamKey {
        StreamKey {
            scope: r.scope,
            stream: r.stream,
        }
    }

    fn update(
        &mut self,
        r: StreamRef,
        f: impl FnOnce(&mut StreamRecord),
    ) -> Result<StreamRecord, MetaError> {
        try_update(&self.streams, Self::key(r), |s| {
            f(s);
            Ok(())
        })
    }
}

/// Changes stream `key` under the map's lock with `f`, which may refuse;
/// the stream as it is after.
fn try_update(
    streams: &StreamMap,
    key: StreamKey,
    f: impl FnOnce(&mut StreamRecord) -> Result<(), MetaError>,
) -> Result<StreamRecord, MetaError> {
    let mut map = streams.write().unwrap_or_else(|p| p.into_inner());
    let s = map
        .get_mut(&key)
        .ok_or_else(|| MetaError::NotFound(key.to_string()))?;
    f(s)?;
    Ok(s.clone())
}

impl StateMachine for MetaState {
    type Output = Result<Applied, MetaError>;

    fn apply(&mut self, _index: u64, command: Bytes) -> Self::Output {
        let out = self.apply_command(command);
        self.allocated
            .store(self.next_segment_id, std::sync::atomic::Ordering::Release);
        out
    }

    type Snapshot = MetaSnapshot;

    fn snapshot(&self) -> MetaSnapshot {
        self.snapshot_state()
    }

    fn restore(&mut self, snapshot: Bytes) -> Result<(), String> {
        let restored = self.restore_state(snapshot);
        self.allocated
            .store(self.next_segment_id, std::sync::atomic::Ordering::Release);
        restored
    }
}

impl MetaState {
    fn apply_command(&mut self, command: Bytes) -> Result<Applied, MetaError> {
        let cmd: MetaCommand =
            prost::Message::decode(command).map_err(|e| MetaError::Malformed(e.to_string()))?;
        match cmd.cmd {
            Some(MetaCmd::Group(g)) => return self.apply_group(g),
            Some(MetaCmd::Acl(a)) => return self.apply_acl(a),
            Some(MetaCmd::KafkaOffsets(k)) => {
                let mut t = self
                    .kafka_offsets
                    .write()
                    .unwrap_or_else(|p| p.into_inner());
                t.apply(k)?;
                return Ok(Applied::Nothing);
            }
            Some(MetaCmd::KafkaTxn(k)) => return self.apply_kafka_txn(k),
            Some(MetaCmd::Remove(ref r)) => {
                let mut t = self
                    .kafka_offsets
                    .write()
                    .unwrap_or_else(|p| p.into_inner());
                t.drop_stream(&r.scope, &r.stream);
            }
            Some(MetaCmd::Txn(t)) => {
                let mut changed = true;
                let record = self.apply_txn(t, &mut changed)?;
                return Ok(Applied::Txn { record, changed });
            }
            Some(MetaCmd::Seal(ref r) | MetaCmd::MarkDeleting(ref r)) => {
                let why = match cmd.cmd {
                    Some(MetaCmd::Seal(_)) => "stream sealed",
                    _ => "stream deleted",
                };
                self.end_open_txns(&Self::key(r.clone()), why)?;
            }
            _ => {}
        }
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        match cmd.cmd {
            Some(MetaCmd::SetNode(n)) => {
                nodes.insert(n.id, n.address);
                return Ok(Applied::Nothing);
            }
            Some(MetaCmd::RemoveNode(n)) => {
                nodes.remove(&n.id);
                return Ok(Applied::Nothing);
            }
            Some(MetaCmd::SetPlacement(p)) => {
                *self.placement.write().unwrap_or_else(|p| p.into_inner()) = p.into();
                return Ok(Applied::Nothing);
            }
            Some(MetaCmd::Form(f)) => {
                if nodes.is_empty() {
                    nodes.extend(f.nodes.into_iter().map(|n| (n.id, n.address)));
                    *self.placement.write().unwrap_or_else(|p| p.into_inner()) =
                        f.placement.map(Into::into).unwrap_or_default();
                }
                return Ok(Applied::Nothing);
            }
            _ => {}
        }
        drop(nodes);
        self.apply_stream(cmd.cmd).map(Applied::Stream)
    }

    fn apply_acl(&mut self, a: super::command::AclCommand) -> Result<Applied, MetaError> {
        let Some(grant) = a.grant else {
            return Err(MetaError::Malformed(
                "an ACL command without its grant".into(),
            ));
        };
        let mut acls = self.acls.write().unwrap_or_else(|p| p.into_inner());
        let at = acls.iter().position(|g| *g == grant);
        match (a.revoke, at) {
            (false, Some(_)) => {}
            (false, None) if acls.len() >= ACL_GRANTS_MAX => {
                return Err(MetaError::Full(format!(
                "the cluster holds {ACL_GRANTS_MAX} grants, the most it keeps: revoke some first"
            )))
            }
            (false, None) => acls.push(grant),
            (true, Some(i)) => {
                acls.remove(i);
            }
            (true, None) => {
                return Err(MetaError::AclNotFound(format!(
                    "{} {} {}",
                    grant.principal, grant.permission, grant.resource
                )))
            }
        }
        Ok(Applied::Nothing)
    }

    fn snapshot_state(&self) -> MetaSnapshot {
        let mut snap = self.stream_snapshot();
        snap.nodes = self
            .nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(&id, address)| NodeRecord {
                id,
                address: address.clone(),
            })
            .collect();
        let placement = self.placement.read().unwrap_or_else(|p| p.into_inner());
        snap.placement = (!placement.is_empty()).then(|| (&*placement).into());
        snap.groups = self
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        snap.txns = self
            .txns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        snap.acls = self.acls.read().unwrap_or_else(|p| p.into_inner()).clone();
        snap.kafka_offsets = self
            .kafka_offsets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot();
        snap.kafka_txns = self
            .kafka_txns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot();
        snap
    }

    fn restore_state(&mut self, snapshot: Bytes) -> Result<(), String> {
        let snap: MetaSnapshot = prost::Message::decode(snapshot).map_err(|e| e.to_string())?;
        *self.nodes.write().unwrap_or_else(|p| p.into_inner()) = snap
            .nodes
            .iter()
            .map(|n| (n.id, n.address.clone()))
            .collect();
        *self.placement.write().unwrap_or_else(|p| p.into_inner()) =
            snap.placement.clone().map(Into::into).unwrap_or_default();
        *self.groups.write().unwrap_or_else(|p| p.into_inner()) =
            snap.groups.iter().map(|g| (g.key(), g.clone())).collect();
        *self.acls.write().unwrap_or_else(|p| p.into_inner()) = snap.acls.clone();
        *self
            .kafka_offsets
            .write()
            .unwrap_or_else(|p| p.into_inner()) =
            super::kafka_offsets::KafkaOffsets::restore(snap.kafka_offsets.clone());
        *self.kafka_txns.write().unwrap_or_else(|p| p.into_inner()) =
            super::kafka_txns::KafkaTxns::restore(snap.kafka_txns.clone());
        *self.txns.write().unwrap_or_else(|p| p.into_inner()) = snap
            .txns
            .iter()
            .map(|t| (t.id.clone(), t.clone()))
            .collect();
        self.restore_streams(snap)
    }
}

impl MetaState {
    fn apply_stream(&mut self, cmd: Option<MetaCmd>) -> Result<StreamRecord, MetaError> {
        match cmd {
            Some(MetaCmd::Create(c)) => {
                let key = StreamKey {
                    scope: c.scope,
                    stream: c.stream,
                };
                let mut map = self.streams.write().unwrap_or_else(|p| p.into_inner());
                if map.contains_key(&key) {
                    return Err(MetaError::Exists(key.to_string()));
                }
                let policy = c
                    .policy
                    .as_ref()
                    .map(ScalingPolicy::from_record)
                    .transpose()?
                    .unwrap_or_default();
                let n = c.segment_count.max(1).max(policy.min_segments);
                let containers = c.containers.max(1);
                let segments: Vec<SegmentRecord> = (0..n)
                    .map(|i| {
                        let id = segment_id(0, self.next_segment_id + u64::from(i))?;
                        Ok(SegmentRecord {
                            id,
                            number: i,
                            container: container_of(id, containers),
                            key_low: f64::from(i) / f64::from(n),
                            key_high: if i + 1 == n {
                                1.0
                            } else {
                                f64::from(i + 1) / f64::from(n)
                            },
                            epoch: 0,
                            successors: Vec::new(),
                            predecessors: Vec::new(),
                            pending: false,
                            dropped: false,
                        })
                    })
                    .collect::<Result<_, MetaError>>()?;
                self.next_segment_id += u64::from(n);
                let record = StreamRecord {
                    key: key.clone(),
                    epochs: vec![EpochRecord {
                        epoch: 0,
                        segment_ids: segments.iter().map(|s| s.id).collect(),
                        created_ms: c.created_ms,
                    }],
                    segments,
                    retention: Retention {
                        time_ms: c.retention_time_ms,
                        bytes: c.retention_bytes,
                        by_consumption: c.by_consumption,
                        min_time_ms: c.min_time_ms,
                        min_bytes: c.min_bytes,
                    },
                    sealed: false,
                    deleting: false,
                    epoch: 0,
                    scaling: None,
                    policy,
                };
                map.insert(key, record.clone());
                Ok(record)
            }
            Some(MetaCmd::Seal(r)) => self.update(r, |s| s.sealed = true),
            Some(MetaCmd::MarkDeleting(r)) => self.update(r, |s| {
                s.sealed = true;
                s.deleting = true;
            }),
            Some(MetaCmd::SetRetention(r)) => {
                let retention = Retention {
                    time_ms: r.retention_time_ms,
                    bytes: r.retention_bytes,
                    by_consumption: r.by_consumption,
                    min_time_ms: r.min_time_ms,
                    min_bytes: r.min_bytes,
                };
                let key = StreamRef {
                    scope: r.scope,
                    stream: r.stream,
                };
                self.update(key, |s| s.retention = retention)
            }
            Some(MetaCmd::StartScale(c)) => self.start_scale(c),
            Some(MetaCmd::DropSegments(r)) => {
                let ids = r.segment_ids;
                let key = StreamRef {
                    scope: r.scope,
                    stream: r.stream,
                };
                self.update(key, |s| drop_segments(s, &ids))
            }
            Some(MetaCmd::PurgeSegments(r)) => {
                let ids = r.segment_ids;
                let key = StreamRef {
                    scope: r.scope,
                    stream: r.stream,
                };
                self.update(key, |s| {
                    s.segments.retain(|g| !(g.dropped && ids.contains(&g.id)))
                })
            }
            Some(MetaCmd::SetScaling(c)) => {
                let policy = c
                    .policy
                    .as_ref()
                    .map(ScalingPolicy::from_record)
                    .transpose()?
                    .unwrap_or_default();
                let key = StreamRef {
                    scope: c.scope,
                    stream: c.stream,
                };
                self.update(key, |s| s.policy = policy)
            }
            Some(MetaCmd::CompleteScale(c)) => self.complete_scale(c),
            Some(MetaCmd::Remove(r)) => {
                let key = Self::key(r);
                let mut map = self.streams.write().unwrap_or_else(|p| p.into_inner());
                map.remove(&key)
                    .ok_or_else(|| MetaError::NotFound(key.to_string()))
            }
            Some(
                MetaCmd::SetNode(_)
                | MetaCmd::RemoveNode(_)
                | MetaCmd::SetPlacement(_)
                | MetaCmd::Form(_)
                | MetaCmd::Group(_)
                | MetaCmd::KafkaOffsets(_)
                | MetaCmd::KafkaTxn(_)
                | MetaCmd::Txn(_)
                | MetaCmd::Acl(_),
            )
            | None => Err(MetaError::Malformed("empty command".into())),
        }
    }

    /// Records a scale's plan: its successors (pending) and predecessors.
    fn start_scale(&mut self, c: StartScale) -> Result<StreamRecord, MetaError> {
        let key = StreamKey {
            scope: c.scope,
            stream: c.stream,
        };
        let next_segment_id = &mut self.next_segment_id;
        try_update(&self.streams, key, |s| {
            let key = &s.key;
            if s.deleting {
                return Err(MetaError::NotFound(key.to_string()));
            }
            if s.sealed {
                return Err(MetaError::Busy(format!(
                    "stream {key} is sealed: it cannot scale"
                )));
            }
            if let Some(scaling) = &s.scaling {
                return Err(MetaError::Busy(format!(
                    "stream {key} is already scaling to epoch {}; retry once it is done",
                    scaling.epoch
                )));
            }
            let active: Vec<Span> = s.active().map(SegmentRecord::span).collect();
            let splits: Vec<Split> = c
                .splits
                .iter()
                .map(|x| Split {
                    segment_id: x.segment_id,
                    pieces: if x.pieces == 0 { 2 } else { x.pieces },
                })
                .collect();
            let merges: Vec<Vec<u64>> = c.merges.into_iter().map(|m| m.segment_ids).collect();
            // The stream's minimum is enforced here, where the scale executes,
            // whoever planned it (an operator, the auto-scaler).
            let min = s.policy.min_segments as usize;
            let plan = scaling::plan(&active, &splits, &merges, min).map_err(MetaError::Invalid)?;
            let epoch = s.epoch + 1;
            let containers = c.containers.max(1);
            let first_number = s
                .segments
                .iter()
                .map(|g| g.number)
                .max()
                .map_or(0, |n| n + 1);
            let mut successors = Vec::with_capacity(plan.ranges.len());
            for (i, &(low, high)) in plan.ranges.iter().enumerate() {
                let id = segment_id(epoch, *next_segment_id + i as u64)?;
                let number = first_number + i as u32;
                successors.push(SegmentRecord {
                    id,
                    number,
                    container: container_of(id, containers),
                    key_low: low,
                    key_high: high,
                    epoch,
                    successors: Vec::new(),
                    predecessors: Vec::new(),
                    pending: true,
                    dropped: false,
                });
            }
            *next_segment_id += plan.ranges.len() as u64;
            s.segments.extend(successors);
            s.scaling = Some(Scaling {
                epoch,
                predecessors: plan.predecessors,
            });
            Ok(())
        })
    }

    /// Puts a scale's epoch in force: successors become active, and each
    /// predecessor and successor learns the others whose ranges it overlaps.
    fn complete_scale(&mut self, c: CompleteScale) -> Result<StreamRecord, MetaError> {
        let key = StreamKey {
            scope: c.scope,
            stream: c.stream,
        };
        try_update(&self.streams, key, |s| {
            let Some(scaling) = s.scaling.take_if(|x| x.epoch == c.epoch) else {
                // Completed already (a retried proposal), or another scale's.
                return Ok(());
            };
            let range = |g: &SegmentRecord| (g.key_low, g.key_high);
            let successors: Vec<(u64, (f64, f64))> = s
                .segments
                .iter()
                .filter(|g| g.pending)
                .map(|g| (g.id, range(g)))
                .collect();
            let predecessors: Vec<(u64, (f64, f64))> = s
                .segments
                .iter()
                .filter(|g| scaling.predecessors.contains(&g.id))
                .map(|g| (g.id, range(g)))
                .collect();
            for g in &mut s.segments {
                if g.pending {
                    g.pending = false;
                    g.predecessors = predecessors
                        .iter()
                        .filter(|(_, r)| scaling::overlaps(*r, range(g)))
                        .map(|(id, _)| *id)
                        .collect();
                } else if scaling.predecessors.contains(&g.id) {
                    g.successors = successors
                        .iter()
                        .filter(|(_, r)| scaling::overlaps(*r, range(g)))
                        .map(|(id, _)| *id)
                        .collect();
                }
            }
            s.epoch = scaling.epoch;
            let segment_ids = s.active().map(|g| g.id).collect();
            s.epochs.push(EpochRecord {
                epoch: scaling.epoch,
                segment_ids,
                created_ms: c.created_ms,
            });
            Ok(())
        })
    }

    /// Before a stream is sealed or deleted: its open transactions abort
    /// (`why`); a committing one makes the seal wait (its merges need the
    /// parents unsealed).
    fn end_open_txns(&mut self, stream: &StreamKey, why: &'static str) -> Result<(), MetaError> {
        let mut txns = self.txns.write().unwrap_or_else(|p| p.into_inner());
        let mine = |t: &TxnRecord| t.scope == stream.scope && t.stream == stream.stream;
        if let Some(t) = txns
            .values()
            .find(|t| mine(t) && t.state() == TxnState::Committing)
        {
            return Err(MetaError::Busy(format!(
                "transaction {} of stream {stream} is committing; retry in a moment",
                t.id
            )));
        }
        for t in txns.values_mut().filter(|t| mine(t)) {
            txns::apply_change(t, Change::StreamGone(why), 0)?;
        }
        Ok(())
    }

    /// Applies a transaction change.
    /// Applies a transaction change; `changed` turns false when it was one
    /// already made (a repeated commit, abort or finish).
    fn apply_txn(
        &mut self,
        c: TxnCommand,
        changed: &mut bool,
    ) -> Result<Option<TxnRecord>, MetaError> {
        let op = TxnOp::try_from(c.op).unwrap_or(TxnOp::Unspecified);
        let mut txns = self.txns.write().unwrap_or_else(|p| p.into_inner());
        if op == TxnOp::Begin {
            if let Some(t) = txns.get(&c.id) {
                // A retried proposal of this begin.
                return Ok(Some(t.clone()));
            }
            let key = StreamKey {
                scope: c.scope.clone(),
                stream: c.stream.clone(),
            };
            let streams = self.streams.read().unwrap_or_else(|p| p.into_inner());
            let s = streams
                .get(&key)
                .filter(|s| !s.deleting)
                .ok_or_else(|| MetaError::NotFound(key.to_string()))?;
            if s.sealed {
                return Err(MetaError::Busy(format!(
                    "stream {key} is sealed: it takes no transactions"
                )));
            }
            let live = txns.values().filter(|t| t.state().is_live());
            let (mut total, mut here) = (0, 0);
            for t in live {
                total += 1;
                here += usize::from(t.scope == key.scope && t.stream == key.stream);
            }
            if here >= txns::TXNS_PER_STREAM_MAX || total >= txns::TXNS_MAX {
                return Err(MetaError::Txn(TxnError::Full(format!(
                    "stream {key} has {here} open transactions and the cluster {total} \
                     (limits {} and {}): commit or abort some first",
                    txns::TXNS_PER_STREAM_MAX,
                    txns::TXNS_MAX
                ))));
            }
            let parents: Vec<u64> = s.active().map(|g| g.id).collect();
            drop(streams);
            let mut parts = Vec::with_capacity(parents.len());
            for (i, parent) in parents.into_iter().enumerate() {
                parts.push(TxnPart {
                    segment_id: parent,
                    txn_segment_id: segment_id(0, self.next_segment_id + i as u64)?,
                    moving: false,
                    from: 0,
                });
            }
            self.next_segment_id += parts.len() as u64;
            let record = TxnRecord {
                id: c.id.clone(),
                scope: c.scope,
                stream: c.stream,
                state: TxnState::Open as i32,
                timeout_ms: c.timeout_ms,
                begun_ms: c.now_ms,
                finished_ms: 0,
                reason: String::new(),
                parts,
                owner: c.owner,
            };
            txns.insert(c.id, record.clone());
            return Ok(Some(record));
        }
        if op == TxnOp::Forget {
            txns.remove(&c.id);
            return Ok(None);
        }
        if op == TxnOp::SplitPart || op == TxnOp::PartMoved {
            let t = txns
                .get_mut(&c.id)
                .ok_or_else(|| TxnError::NotFound(c.id.clone()))?;
            if op == TxnOp::SplitPart {
                let successors = self.successors_of(t, c.txn_segment_id)?;
                let first = self.next_segment_id;
                let added = txns::split_part(t, c.txn_segment_id, &successors, |i| {
                    segment_id(0, first + i as u64).map_err(|e| TxnError::Invalid(e.to_string()))
                })?;
                self.next_segment_id += added as u64;
            } else {
                txns::part_moved(t, c.txn_segment_id)?;
            }
            return Ok(Some(t.clone()));
        }
        let t = txns
            .get_mut(&c.id)
            .ok_or_else(|| TxnError::NotFound(c.id.clone()))?;
        let change = match op {
            TxnOp::Commit => Change::Commit,
            TxnOp::Abort => Change::Abort,
            TxnOp::TimeOut => Change::TimeOut,
            TxnOp::Finish => Change::Finish,
            TxnOp::Begin
            | TxnOp::Forget
            | TxnOp::SplitPart
            | TxnOp::PartMoved
            | TxnOp::Unspecified => {
                return Err(MetaError::Malformed(format!("transaction op {}", c.op)))
            }
        };
        *changed = txns::apply_change(t, change, c.now_ms)?;
        Ok(Some(t.clone()))
    }

    /// Applies a Kafka transactional producer's change with what it plans:
    /// an Aquifer transaction begun, or every one of the Kafka
    /// transaction's committed or aborted with its offsets, all in this
    /// one entry. A refusal changes nothing.
    fn apply_kafka_txn(
        &mut self,
        c: super::kafka_txns::KafkaTxnCommand,
    ) -> Result<Applied, MetaError> {
        let table = self.kafka_txns.clone();
        let mut table = table.write().unwrap_or_else(|p| p.into_inner());
        if c.op == super::kafka_txns::KafkaTxnOp::Init as i32 {
            table.make_room(&c);
        }
        let (record, plan) = {
            let txns = self.txns.read().unwrap_or_else(|p| p.into_inner());
            table.plan(&c, |id| txns.get(id).map(TxnRecord::state))?
        };
        if let Some(b) = plan.begin {
            let begin = TxnCommand {
                id: b.txn_id,
                op: TxnOp::Begin as i32,
                scope: b.scope,
                stream: b.stream,
                timeout_ms: b.timeout_ms,
                now_ms: c.now_ms,
                txn_segment_id: 0,
                owner: b.owner,
            };
            self.apply_txn(begin, &mut true)?;
        }
        {
            let mut offsets = self
                .kafka_offsets
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for o in plan.offsets {
                offsets.apply(o)?;
            }
        }
        let mut txns = self.txns.write().unwrap_or_else(|p| p.into_inner());
        for (id, commit) in plan.end {
            // Planned only for open ones, so neither change can fail.
            if let Some(t) = txns.get_mut(&id) {
                let change = if commit {
                    Change::Commit
                } else {
                    Change::Abort
                };
                txns::apply_change(t, change, c.now_ms)?;
            }
        }
        table.put(record.clone());
        Ok(Applied::KafkaTxn {
            record,
            timed_out: plan.timed_out,
        })
    }

    /// The successors (by the metadata now) of the parent of part
    /// `txn_segment_id` of `t`.
    fn successors_of(&self, t: &TxnRecord, txn_segment_id: u64) -> Result<Vec<u64>, MetaError> {
        let part = t.part(txn_segment_id).ok_or_else(|| {
            TxnError::Invalid(format!(
                "segment {txn_segment_id} is not a part of transaction {}",
                t.id
            ))
        })?;
        let streams = self.streams.read().unwrap_or_else(|p| p.into_inner());
        let key = StreamKey {
            scope: t.scope.clone(),
            stream: t.stream.clone(),
        };
        Ok(streams
            .get(&key)
            .and_then(|s| s.segments.iter().find(|g| g.id == part.segment_id))
            .map(|g| g.successors.clone())
            .unwrap_or_default())
    }

    /// Applies a reader-group change.
    fn apply_group(&mut self, c: GroupCommand) -> Result<Applied, MetaError> {
        let key = GroupKey {
            scope: c.scope,
            group: c.group,
        };
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        let op =
            c.op.ok_or_else(|| MetaError::Malformed("empty group command".into()))?;
        if let GroupOp::Create(g) = op {
            if groups.contains_key(&key) {
                return Err(MetaError::GroupExists(key.to_string()));
            }
            if groups.len() >= GROUPS_MAX {
                return Err(MetaError::Group(GroupError::Full(format!(
                    "the cluster has {GROUPS_MAX} reader groups, the most allowed; delete one first"
                ))));
            }
            let streams = self.streams.read().unwrap_or_else(|p| p.into_inner());
            for s in &g.streams {
                let k = StreamKey {
                    scope: s.scope.clone(),
                    stream: s.stream.clone(),
                };
                if streams.get(&k).is_none_or(|r| r.deleting) {
                    return Err(MetaError::NotFound(k.to_string()));
                }
            }
            let record = GroupRecord::new(
                key.scope.clone(),
                key.group.clone(),
                g.streams,
                g.start,
                g.reader_timeout_ms,
                g.subscribed,
            );
            groups.insert(key, record);
            return Ok(Applied::Group(None));
        }
        if let GroupOp::Delete(_) = op {
            return match groups.remove(&key) {
                Some(_) => Ok(Applied::Group(None)),
                None => Err(MetaError::GroupNotFound(key.to_string())),
            };
        }
        let g = groups
            .get_mut(&key)
            .ok_or_else(|| MetaError::GroupNotFound(key.to_string()))?;
        let graph = self.graph(&g.streams);
        let view = match op {
            GroupOp::Join(r) => Some(g.join(&r.reader, &graph)?),
            GroupOp::Heartbeat(h) => {
                let report = Report {
                    generation: h.generation,
                    positions: h.positions,
                    completed: h.completed,
                    released: h.released,
                    checkpoints: h
                        .checkpoints
                        .into_iter()
                        .map(|a| (a.name, a.positions))
                        .collect(),
                };
                Some(g.heartbeat(&h.reader, report, &graph)?)
            }
            GroupOp::Leave(l) => {
                g.remove_reader(&l.reader, Some(&l.positions), "left", &graph)?;
                None
            }
            GroupOp::TimeOut(r) => {
                g.remove_reader(&r.reader, None, "timed out", &graph)?;
                None
            }
            GroupOp::Checkpoint(c) => {
                g.checkpoint(&c.name, c.now_ms)?;
                None
            }
            GroupOp::Reset(p) => {
                g.reset(p.positions, &graph);
                None
            }
            GroupOp::Lags(p) => {
                g.set_lags(p.positions, &graph);
                None
            }
            GroupOp::Create(_) | GroupOp::Delete(_) => None,
        };
        Ok(Applied::Group(view))
    }

    /// The successor graph of `streams` as the metadata records it now.
    fn graph(&self, streams: &[GroupStream]) -> SegmentGraph {
        let map = self.streams.read().unwrap_or_else(|p| p.into_inner());
        let mut graph = SegmentGraph::default();
        for s in streams {
            let key = StreamKey {
                scope: s.scope.clone(),
                stream: s.stream.clone(),
            };
            if let Some(r) = map.get(&key) {
                r.add_to_graph(&mut graph);
            }
        }
        graph
    }

    fn stream_snapshot(&self) -> MetaSnapshot {
        let map = self.streams.read().unwrap_or_else(|p| p.into_inner());
        let streams = map
            .values()
            .map(|s| StreamSnapshot {
                scope: s.key.scope.clone(),
                stream: s.key.stream.clone(),
                sealed: s.sealed,
                deleting: s.deleting,
                retention_time_ms: s.retention.time_ms,
                retention_bytes: s.retention.bytes,
                by_consumption: s.retention.by_consumption,
                min_time_ms: s.retention.min_time_ms,
                min_bytes: s.retention.min_bytes,
                segments: s
                    .segments
                    .iter()
                    .map(|g| SegmentSnapshot {
                        id: g.id,
                        number: g.number,
                        container: g.container,
                        key_low: g.key_low,
                        key_high: g.key_high,
                        epoch: g.epoch,
                        successors: g.successors.clone(),
                        predecessors: g.predecessors.clone(),
                        pending: g.pending,
                        dropped: g.dropped,
                    })
                    .collect(),
                epoch: s.epoch,
                epochs: s
                    .epochs
                    .iter()
                    .map(|e| EpochSnapshot {
                        epoch: e.epoch,
                        segment_ids: e.segment_ids.clone(),
                        created_ms: e.created_ms,
                    })
                    .collect(),
                scaling_epoch: s.scaling.as_ref().map_or(0, |x| x.epoch),
                scaling_predecessors: s
                    .scaling
                    .as_ref()
                    .map(|x| x.predecessors.clone())
                    .unwrap_or_default(),
                policy: Some(s.policy.record()),
            })
            .collect();
        MetaSnapshot {
            next_segment_id: self.next_segment_id,
            streams,
            nodes: Vec::new(),
            placement: None,
            groups: Vec::new(),
            txns: Vec::new(),
            acls: Vec::new(),
            kafka_offsets: Vec::new(),
            kafka_txns: Vec::new(),
        }
    }

    fn restore_streams(&mut self, snap: MetaSnapshot) -> Result<(), String> {
        let mut map = self.streams.write().unwrap_or_else(|p| p.into_inner());
        map.clear();
        for s in snap.streams {
            let key = StreamKey {
                scope: s.scope,
                stream: s.stream,
            };
            let segments = s
                .segments
                .into_iter()
                .map(|g| SegmentRecord {
                    id: g.id,
                    number: g.number,
                    container: g.container,
                    key_low: g.key_low,
                    key_high: g.key_high,
                    epoch: g.epoch,
                    successors: g.successors,
                    predecessors: g.predecessors,
                    pending: g.pending,
                    dropped: g.dropped,
                })
                .collect::<Vec<_>>();
            // Snapshots from before epochs were recorded: one epoch 0 of
            // every segment.
            let epochs = if s.epochs.is_empty() {
                vec![EpochRecord {
                    epoch: 0,
                    segment_ids: segments.iter().map(|g| g.id).collect(),
                    created_ms: 0,
                }]
            } else {
                s.epochs
                    .into_iter()
                    .map(|e| EpochRecord {
                        epoch: e.epoch,
                        segment_ids: e.segment_ids,
                        created_ms: e.created_ms,
                    })
                    .collect()
            };
            let record = StreamRecord {
                key: key.clone(),
                segments,
                retention: Retention {
                    time_ms: s.retention_time_ms,
                    bytes: s.retention_bytes,
                    by_consumption: s.by_consumption,
                    min_time_ms: s.min_time_ms,
                    min_bytes: s.min_bytes,
                },
                sealed: s.sealed,
                deleting: s.deleting,
                epoch: s.epoch,
                epochs,
                scaling: (s.scaling_epoch > 0).then_some(Scaling {
                    epoch: s.scaling_epoch,
                    predecessors: s.scaling_predecessors,
                }),
                policy: match &s.policy {
                    Some(p) => ScalingPolicy::from_record(p).map_err(|e| e.to_string())?,
                    None => ScalingPolicy::default(),
                },
            };
            map.insert(key, record);
        }
        self.next_segment_id = snap.next_segment_id;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::command::CreateStream;
    use super::*;
    use proptest::prelude::*;

    fn apply(s: &mut MetaState, cmd: MetaCmd) -> Result<StreamRecord, MetaError> {
        s.apply(
            0,
            prost::Message::encode_to_vec(&MetaCommand { cmd: Some(cmd) }).into(),
        )
        .map(|r| match r {
            Applied::Stream(s) => s,
            other => panic!("a stream command answers its stream, not {other:?}"),
        })
    }

    /// A fresh state restored from `s`'s snapshot, checked to snapshot the
    /// same.
    fn round_trip(s: &MetaState) -> MetaState {
        let mut restored = MetaState::new(
            StreamMap::default(),
            NodeMap::default(),
            PlacementMap::default(),
            GroupMap::default(),
            TxnMap::default(),
        );
        restored
            .restore(prost::Message::encode_to_vec(&s.snapshot()).into())
            .unwrap();
        assert_eq!(restored.snapshot(), s.snapshot());
        restored
    }

    #[test]
    fn segments_split_the_key_space_and_ids_are_never_reused() {
        let mut s = MetaState::new(
            StreamMap::default(),
            NodeMap::default(),
            PlacementMap::default(),
            GroupMap::default(),
            TxnMap::default(),
        );
        let create = |name: &str, n| {
            MetaCmd::Create(CreateStream {
                scope: "sc".into(),
                stream: name.into(),
                segment_count: n,
                containers: 4,
                ..Default::default()
            })
        };
        let a = apply(&mut s, create("a", 3)).unwrap();
        let highs: Vec<f64> = a.segments.iter().map(|g| g.key_high).collect();
        assert_eq!(a.segments[0].key_low, 0.0);
        assert_eq!(highs[2], 1.0);
        assert!(matches!(
            apply(&mut s, create("a", 1)),
            Err(MetaError::Exists(_))
        ));
        let r = StreamRef {
            scope: "sc".into(),
            stream: "a".into(),
        };
        apply(&mut s, MetaCmd::Remove(r)).unwrap();
        let again = apply(&mut s, create("a", 1)).unwrap();
        assert_eq!(again.segments[0].id, 4);
        let restored = round_trip(&s);
        assert_eq!(restored.next_segment_id, 5);
    }

    #[test]
    fn a_scale_records_pending_successors_then_puts_its_epoch_in_force() {
        use super::super::command::{CompleteScale, MergeRecord, SplitRecord, StartScale};
        let mut s = MetaState::new(
            StreamMap::default(),
            NodeMap::default(),
            PlacementMap::default(),
            GroupMap::default(),
            TxnMap::default(),
        );
        let a = apply(
            &mut s,
            MetaCmd::Create(CreateStream {
                scope: "sc".into(),
                stream: "a".into(),
                segment_count: 2,
                containers: 4,
                ..Default::default()
            }),
        )
        .unwrap();
        let (first, second) = (a.segments[0].id, a.segments[1].id);
        let start = |splits: Vec<SplitRecord>, merges: Vec<MergeRecord>| {
            MetaCmd::StartScale(StartScale {
                scope: "sc".into(),
                stream: "a".into(),
                splits,
                merges,
                containers: 4,
            })
        };
        let split = |segment_id| SplitRecord {
            segment_id,
            pieces: 2,
        };
        let started = apply(&mut s, start(vec![split(first)], vec![])).unwrap();
        let pending: Vec<&SegmentRecord> = started.segments.iter().filter(|g| g.pending).collect();
        assert_eq!(pending.len(), 2);
        assert!(pending.iter().all(|g| g.epoch == 1 && g.id >> 40 == 1));
        assert_eq!(started.active().count(), 2, "the old epoch still writes");
        // One scale at a time.
        assert!(matches!(
            apply(&mut s, start(vec![split(second)], vec![])),
            Err(MetaError::Busy(_))
        ));
        // A leader taking over mid-scale finds it in the snapshot.
        let mut restored = round_trip(&s);
        let complete = |epoch| {
            MetaCmd::CompleteScale(CompleteScale {
                scope: "sc".into(),
                stream: "a".into(),
                epoch,
                created_ms: 7,
            })
        };
        let done = apply(&mut restored, complete(1)).unwrap();
        assert_eq!(done.epoch, 1);
        assert!(done.scaling.is_none());
        let old = done.segments.iter().find(|g| g.id == first).unwrap();
        let new: Vec<&SegmentRecord> = done.segments.iter().filter(|g| g.epoch == 1).collect();
        assert_eq!(old.successors, new.iter().map(|g| g.id).collect::<Vec<_>>());
        assert!(new
            .iter()
            .all(|g| g.predecessors == vec![first] && !g.pending));
        let active: Vec<u64> = done.active().map(|g| g.id).collect();
        assert_eq!(active.len(), 3);
        assert_eq!(
            done.epochs.last().map(|e| (e.epoch, e.created_ms)),
            Some((1, 7))
        );
        assert_eq!(done.epochs.last().unwrap().segment_ids, active);
        // Completing again (a retried proposal) changes nothing.
        assert_eq!(apply(&mut restored, complete(1)).unwrap(), done);
        // The sealed segment is no longer active: it cannot be scaled again;
        // its successors merge with their neighbour back to two segments.
        assert!(matches!(
            apply(&mut restored, start(vec![split(first)], vec![])),
            Err(MetaError::Invalid(_))
        ));
        let ids: Vec<u64> = new.iter().map(|g| g.id).chain([second]).collect();
        apply(
            &mut restored,
            start(
                vec![],
                vec![MergeRecord {
                    segment_ids: ids.clone(),
                }],
            ),
        )
        .unwrap();
        let merged = apply(&mut restored, complete(2)).unwrap();
        let last: Vec<&SegmentRecord> = merged.active().collect();
        assert_eq!(last.len(), 1);
        assert_eq!((last[0].key_low, last[0].key_high), (0.0, 1.0));
        let mut preds = last[0].predecessors.clone();
        preds.sort_unstable();
        let mut want = ids;
        want.sort_unstable();
        assert_eq!(preds, want);
    }

    #[test]
    fn only_predecessors_whose_own_predecessors_are_gone_are_dropped() {
        let seg = |id, successors: Vec<u64>, predecessors: Vec<u64>| SegmentRecord {
            id,
            number: 0,
            container: 0,
            key_low: 0.0,
            key_high: 1.0,
            epoch: 0,
            successors,
            predecessors,
            pending: false,
            dropped: false,
        };
        let mut s = StreamRecord {
            key: StreamKey {
                scope: "s".into(),
                stream: "t".into(),
            },
            // 1 -> 2 -> 3: a chain of two scales.
            segments: vec![
                seg(1, vec![2], vec![]),
                seg(2, vec![3], vec![1]),
                seg(3, vec![], vec![2]),
            ],
            retention: Retention::default(),
            sealed: false,
            deleting: false,
            epoch: 2,
            epochs: Vec::new(),
            scaling: None,
            policy: ScalingPolicy::default(),
        };
        let dropped = |s: &StreamRecord| {
            s.segments
                .iter()
                .filter(|g| g.dropped)
                .map(|g| g.id)
                .collect::<Vec<_>>()
        };
        drop_segments(&mut s, &[2]);
        assert_eq!(
            dropped(&s),
            Vec::<u64>::new(),
            "2's predecessor 1 is still read"
        );
        drop_segments(&mut s, &[3]);
        assert_eq!(
            dropped(&s),
            Vec::<u64>::new(),
            "an active segment never goes"
        );
        drop_segments(&mut s, &[1, 2]);
        assert_eq!(dropped(&s), vec![1, 2], "oldest first, in one go");
    }

    #[test]
    fn membership_is_replicated_state_and_in_the_snapshot() {
        let nodes = NodeMap::default();
        let placement = PlacementMap::default();
        let mut s = MetaState::new(
            StreamMap::default(),
            nodes.clone(),
            placement.clone(),
            GroupMap::default(),
            TxnMap::default(),
        );
        let placed = Placement {
            replication_factor: 2,
            meta_voters: vec![2],
            containers: vec![vec![2], vec![2]],
        };
        let node = |id, address: &str| NodeRecord {
            id,
            address: address.into(),
        };
        for cmd in [
            MetaCmd::SetNode(node(1, "a:1")),
            MetaCmd::SetNode(node(2, "b:2")),
            MetaCmd::RemoveNode(node(1, "")),
            MetaCmd::SetPlacement((&placed).into()),
        ] {
            let out = s.apply(
                0,
                prost::Message::encode_to_vec(&MetaCommand { cmd: Some(cmd) }).into(),
            );
            assert_eq!(out, Ok(Applied::Nothing));
        }
        assert_eq!(
            nodes.read().unwrap().clone(),
            BTreeMap::from([(2, "b:2".to_string())])
        );
        let snap = prost::Message::encode_to_vec(&s.snapshot());
        assert_eq!(*placement.read().unwrap(), placed);
        let restored_nodes = NodeMap::default();
        let restored_placement = PlacementMap::default();
        let mut restored = MetaState::new(
            StreamMap::default(),
            restored_nodes.clone(),
            restored_placement.clone(),
            GroupMap::default(),
            TxnMap::default(),
        );
        restored.restore(snap.into()).unwrap();
        assert_eq!(*restored_nodes.read().unwrap(), *nodes.read().unwrap());
        assert_eq!(*restored_placement.read().unwrap(), placed);
    }

    #[test]
    fn a_cluster_forms_once_with_all_its_nodes_and_placement() {
        let nodes = NodeMap::default();
        let placement = PlacementMap::default();
        let mut s = MetaState::new(
            StreamMap::default(),
            nodes.clone(),
            placement.clone(),
            GroupMap::default(),
            TxnMap::default(),
        );
        let form = |ids: &[u64], rf| {
            let placed = Placement {
                replication_factor: rf,
                meta_voters: ids.to_vec(),
                containers: vec![ids.to_vec()],
            };
            let cmd = MetaCmd::Form(super::super::command::FormCluster {
                nodes: ids
                    .iter()
                    .map(|&id| NodeRecord {
                        id,
                        address: format!("n{id}:1"),
                    })
                    .collect(),
                placement: Some((&placed).into()),
            });
            (
                prost::Message::encode_to_vec(&MetaCommand { cmd: Some(cmd) }),
                placed,
            )
        };
        let (first, placed) = form(&[1, 2, 3], 3);
        assert_eq!(s.apply(1, first.into()), Ok(Applied::Nothing));
        assert_eq!(nodes.read().unwrap().len(), 3);
        assert_eq!(*placement.read().unwrap(), placed);
        // A second forming (another node that led briefly) changes nothing.
        let (again, _) = form(&[1, 2], 2);
        assert_eq!(s.apply(2, again.into()), Ok(Applied::Nothing));
        assert_eq!(nodes.read().unwrap().len(), 3);
        assert_eq!(*placement.read().unwrap(), placed);
    }

    fn fresh() -> MetaState {
        MetaState::new(
            StreamMap::default(),
            NodeMap::default(),
            PlacementMap::default(),
            GroupMap::default(),
            TxnMap::default(),
        )
    }

    fn create(name: &str, segment_count: u32) -> MetaCmd {
        MetaCmd::Create(CreateStream {
            scope: "sc".into(),
            stream: name.into(),
            segment_count,
            containers: 4,
            ..Default::default()
        })
    }

    /// A Kafka transaction over two streams: each add begins an Aquifer
    /// transaction, the end commits both and applies the offsets in the
    /// same entry, and the ids survive a snapshot.
    #[test]
    fn a_kafka_transaction_ends_all_its_streams_and_offsets_in_one_entry() {
        use super::super::kafka_offsets::KafkaOffset;
        use super::super::kafka_txns::{KafkaTxnCommand, KafkaTxnOp};
        let mut s = fresh();
        apply(&mut s, create("a", 2)).unwrap();
        apply(&mut s, create("b", 1)).unwrap();
        let kafka = |s: &mut MetaState, c: KafkaTxnCommand| {
            let cmd = MetaCommand {
                cmd: Some(MetaCmd::KafkaTxn(KafkaTxnCommand {
                    transactional_id: "t".into(),
                    producer_id: 9,
                    ..c
                })),
            };
            s.apply(0, prost::Message::encode_to_vec(&cmd).into())
        };
        let init = KafkaTxnCommand {
            op: KafkaTxnOp::Init as i32,
            timeout_ms: 60_000,
            ..Default::default()
        };
        kafka(&mut s, init).unwrap();
        for (stream, id) in [("a", "aa"), ("b", "bb")] {
            kafka(
                &mut s,
                KafkaTxnCommand {
                    op: KafkaTxnOp::AddStream as i32,
                    scope: "sc".into(),
                    stream: stream.into(),
                    txn_id: id.repeat(16),
                    ..Default::default()
                },
            )
            .unwrap();
        }
        kafka(
            &mut s,
            KafkaTxnCommand {
                op: KafkaTxnOp::Offsets as i32,
                group: "g".into(),
                offsets: vec![KafkaOffset {
                    scope: "sc".into(),
                    stream: "a".into(),
                    partition: 1,
                    offset: 33,
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
        .unwrap();
        // A stream that is not there: refused, and nothing changes.
        assert!(kafka(
            &mut s,
            KafkaTxnCommand {
                op: KafkaTxnOp::AddStream as i32,
                scope: "sc".into(),
                stream: "none".into(),
                txn_id: "cc".repeat(16),
                ..Default::default()
            }
        )
        .is_err());
        let restored = round_trip(&s);
        let end = KafkaTxnCommand {
            op: KafkaTxnOp::End as i32,
            commit: true,
            ..Default::default()
        };
        let out = kafka(&mut s, end).unwrap();
        assert!(
            matches!(
                out,
                Applied::KafkaTxn {
                    timed_out: false,
                    ..
                }
            ),
            "{out:?}"
        );
        let txns = s.txns.read().unwrap();
        assert_eq!(txns.len(), 2, "one Aquifer transaction per stream");
        assert!(txns.values().all(|t| t.state() == TxnState::Committing));
        assert!(txns.values().all(|t| t.owner == "kafka-txn:t"));
        drop(txns);
        let offsets = s.kafka_offsets.read().unwrap().of("g");
        assert_eq!(offsets.len(), 1);
        assert_eq!(offsets[0].offset, 33);
        // The snapshot before the end has the open transaction.
        let r = restored
            .kafka_txns
            .read()
            .unwrap()
            .get("t")
            .cloned()
            .unwrap();
        assert_eq!(r.streams.len(), 2);
        assert_eq!(r.offsets.len(), 1);
    }

    /// Two streams, two nodes and a placement.
    fn rich_snapshot() -> MetaSnapshot {
        let mut s = fresh();
        apply(&mut s, create("a", 3)).unwrap();
        apply(&mut s, create("b", 1)).unwrap();
        let placed = Placement {
            replication_factor: 2,
            meta_voters: vec![1, 2],
            containers: vec![vec![1, 2]; 4],
        };
        for cmd in [
            MetaCmd::SetNode(NodeRecord {
                id: 1,
                address: "a:1".into(),
            }),
            MetaCmd::SetNode(NodeRecord {
                id: 2,
                address: "b:2".into(),
            }),
            MetaCmd::SetPlacement((&placed).into()),
        ] {
            let cmd = prost::Message::encode_to_vec(&MetaCommand { cmd: Some(cmd) });
            s.apply(0, cmd.into()).unwrap();
        }
        s.snapshot()
    }

    /// Restores `bytes` into a fresh state and, if it took them, goes on
    /// applying and snapshotting; returns the largest allocation restoring
    /// made.
    fn restore_and_use(bytes: Vec<u8>) -> usize {
        let mut s = fresh();
        let len = bytes.len();
        let (restored, largest) =
            aquifer_alloc_probe::largest_allocation(|| s.restore(bytes.into()).is_ok());
        if restored {
            let _ = apply(&mut s, create("later", 2));
            round_trip(&s);
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
        fn damaged_snapshots_are_refused_or_used_safely(
            next in proptest::option::of(prop_oneof![0u64..16, u64::MAX - 2.., any::<u64>()]),
            flips in proptest::collection::vec((any::<usize>(), 1u8..), 0..3),
        ) {
            let mut snap = rich_snapshot();
            if let Some(next) = next {
                snap.next_segment_id = next;
            }
            let mut bytes = prost::Message::encode_to_vec(&snap);
            for (at, x) in &flips {
                let at = at % bytes.len();
                bytes[at] ^= x;
            }
            restore_and_use(bytes);
        }
    }
}
