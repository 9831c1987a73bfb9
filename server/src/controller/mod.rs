//! The controller: the cluster's metadata in its own raft group, `meta`:
//! streams (their segments, key ranges and retention), the nodes, and the
//! placement of every group's replicas ([`placement`]).
//!
//! It owns names and segment ids; it never touches segment data. Changes to
//! containers that a stream change implies (create, seal, delete segments)
//! are made by the reconciler (`node/reconcile.rs`), which every node runs
//! every 250 ms, so a crash between the metadata change and the container
//! changes heals.

mod command;
pub mod groups;
pub mod kafka_offsets;
pub mod kafka_txns;
pub mod placement;
pub(crate) mod scaling;
mod state;
pub mod txns;

pub use command::{
    CheckpointAck, CheckpointCmd, CreateGroup, GroupOp, HeartbeatRecord, LeaveRecord, PolicyRecord,
    Positions, ReaderRef,
};
pub use scaling::{ScalingKind, ScalingPolicy};
pub use state::{Retention, Scaling, StreamKey, StreamRecord};

use crate::controller::placement::Placement;
use crate::error::Error;
use crate::group::{Group, GroupConfig};
use crate::log::LogError;
pub use command::TxnOp;
use command::{MetaCmd, MetaCommand};
use state::{Applied, GroupMap, MetaError, MetaState, NodeMap, PlacementMap, StreamMap, TxnMap};

impl From<MetaError> for Error {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::NotFound(name) => Error::StreamNotFound(name),
            MetaError::Exists(name) => Error::StreamExists(name),
            MetaError::Malformed(why) => Error::Internal(why),
            MetaError::Invalid(why) => Error::InvalidArgument(why),
            MetaError::Busy(why) => Error::FailedPrecondition(why),
            MetaError::GroupNotFound(name) => Error::GroupNotFound(name),
            MetaError::GroupExists(name) => Error::GroupExists(name),
            e @ MetaError::AclNotFound(_) => Error::AclNotFound(e.to_string()),
            MetaError::Full(why) => Error::ResourceExhausted(why),
            MetaError::Group(e @ groups::GroupError::ReaderUnknown { .. }) => {
                Error::ReaderUnknown(e.to_string())
            }
            MetaError::Group(groups::GroupError::Invalid(why)) => Error::InvalidArgument(why),
            MetaError::Group(groups::GroupError::Full(why)) => Error::ResourceExhausted(why),
            MetaError::KafkaOffsets(kafka_offsets::KafkaOffsetsError::Invalid(why)) => {
                Error::InvalidArgument(why)
            }
            MetaError::KafkaOffsets(kafka_offsets::KafkaOffsetsError::Full(why)) => {
                Error::ResourceExhausted(why)
            }
            MetaError::KafkaTxns(e) => match e {
                kafka_txns::KafkaTxnsError::Full(why) => Error::ResourceExhausted(why),
                kafka_txns::KafkaTxnsError::Invalid(why) => Error::InvalidArgument(why),
                e => Error::FailedPrecondition(e.to_string()),
            },
            MetaError::Txn(e) => match e {
                txns::TxnError::NotFound(_) => Error::TransactionNotFound(e.to_string()),
                txns::TxnError::Committed { .. } => Error::TransactionState {
                    reason: aquifer_proto::wire::REASON_TRANSACTION_COMMITTED,
                    message: e.to_string(),
                },
                txns::TxnError::Aborted { .. } => Error::TransactionState {
                    reason: aquifer_proto::wire::REASON_TRANSACTION_ABORTED,
                    message: e.to_string(),
                },
                txns::TxnError::NotOpen { .. } => Error::TransactionState {
                    reason: aquifer_proto::wire::REASON_TRANSACTION_NOT_OPEN,
                    message: e.to_string(),
                },
                txns::TxnError::Full(why) => Error::ResourceExhausted(why),
                txns::TxnError::Invalid(why) => Error::InvalidArgument(why),
            },
        }
    }
}

impl From<txns::TxnError> for Error {
    fn from(e: txns::TxnError) -> Self {
        MetaError::Txn(e).into()
    }
}

pub struct Controller {
    group: Group<MetaState>,
    streams: StreamMap,
    nodes: NodeMap,
    placement: PlacementMap,
    groups: GroupMap,
    txns: TxnMap,
    acls: state::AclMap,
    kafka_offsets: state::KafkaOffsetMap,
    kafka_txns: state::KafkaTxnMap,
    /// Every segment id below this was allocated by an applied entry.
    allocated: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Controller {
    pub fn start(group: GroupConfig) -> Result<Self, LogError> {
        let streams = StreamMap::default();
        let nodes = NodeMap::default();
        let placement = PlacementMap::default();
        let groups = GroupMap::default();
        let txns = TxnMap::default();
        let state = MetaState::new(
            streams.clone(),
            nodes.clone(),
            placement.clone(),
            groups.clone(),
            txns.clone(),
        );
        let allocated = state.allocated();
        let acls = state.acls();
        let kafka_offsets = state.kafka_offsets();
        let kafka_txns = state.kafka_txns();
        let group = Group::start(group, state)?;
        Ok(Controller {
            group,
            streams,
            nodes,
            placement,
            groups,
            txns,
            acls,
            kafka_offsets,
            kafka_txns,
            allocated,
        })
    }

    pub async fn wait_ready(&self) -> Result<(), Error> {
        Ok(self.group.wait_ready().await?)
    }

    /// The metadata group itself (raft messages, status).
    pub fn group(&self) -> &Group<MetaState> {
        &self.group
    }

    /// Whether this node leads `meta` (and has caught up).
    pub fn is_leader(&self) -> bool {
        self.group.leader_term().is_some()
    }

    /// The stream, unless it does not exist or is being deleted.
    pub fn get(&self, key: &StreamKey) -> Result<StreamRecord, Error> {
        let map = self.streams.read().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some(s) if !s.deleting => Ok(s.clone()),
            _ => Err(Error::StreamNotFound(key.to_string())),
        }
    }

    /// Every stream record, those being deleted included (for reconciling).
    pub fn all(&self) -> Vec<StreamRecord> {
        let map = self.streams.read().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
    }

    async fn propose(&self, cmd: MetaCmd) -> Result<StreamRecord, Error> {
        match self.propose_any(cmd).await? {
            Applied::Stream(s) => Ok(s),
            other => Err(Error::Internal(format!(
                "a stream command answered {other:?}"
            ))),
        }
    }

    async fn propose_any(&self, cmd: MetaCmd) -> Result<Applied, Error> {
        let data = prost::Message::encode_to_vec(&MetaCommand { cmd: Some(cmd) });
        Ok(self.group.propose(data).await??)
    }

    /// The stream segment `id` belongs to (None: no stream known here has
    /// it). Reads the map in place: asked on every session's open.
    pub fn stream_of_segment(&self, id: u64) -> Option<StreamKey> {
        self.streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(_, s)| s.segments.iter().any(|g| g.id == id))
            .map(|(k, _)| k.clone())
    }

    /// The ACL grants as of the last applied entry.
    pub fn acls(&self) -> Vec<aquifer_proto::v1::AclGrant> {
        self.acls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the grants without copying them (checked on every request).
    pub fn with_acls<R>(&self, f: impl FnOnce(&[aquifer_proto::v1::AclGrant]) -> R) -> R {
        f(&self.acls.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Adds (or with `revoke`, removes) a normalized grant.
    pub async fn change_acl(
        &self,
        grant: aquifer_proto::v1::AclGrant,
        revoke: bool,
    ) -> Result<(), Error> {
        self.propose_any(MetaCmd::Acl(command::AclCommand {
            revoke,
            grant: Some(grant),
        }))
        .await?;
        Ok(())
    }

    /// Records Kafka consumer-group commits (or with `delete`, drops the
    /// group's offsets): answered once replicated and applied.
    pub async fn kafka_offsets_change(
        &self,
        change: kafka_offsets::KafkaOffsetsCommand,
    ) -> Result<(), Error> {
        self.propose_any(MetaCmd::KafkaOffsets(change)).await?;
        Ok(())
    }

    /// Group `group`'s committed Kafka offsets as of the last applied
    /// entry.
    pub fn kafka_offsets(&self, group: &str) -> Vec<kafka_offsets::KafkaOffset> {
        self.kafka_offsets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .of(group)
    }

    /// The Kafka consumer groups whose newest commit is older than
    /// `before_ms`, at most `max`.
    pub fn kafka_offset_groups_before(&self, before_ms: u64, max: usize) -> Vec<String> {
        self.kafka_offsets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .committed_before(before_ms, max)
    }

    /// Applies a Kafka transactional producer's change once replicated:
    /// the id's record after it and whether its transaction had timed out
    /// (`Ok(Err)`: the rules refused it, nothing changed).
    pub async fn kafka_txn_change(
        &self,
        mut change: kafka_txns::KafkaTxnCommand,
    ) -> Result<Result<(kafka_txns::KafkaTxnRecord, bool), kafka_txns::KafkaTxnsError>, Error> {
        change.now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let data = prost::Message::encode_to_vec(&MetaCommand {
            cmd: Some(MetaCmd::KafkaTxn(change)),
        });
        match self.group.propose(data).await? {
            Ok(Applied::KafkaTxn { record, timed_out }) => Ok(Ok((record, timed_out))),
            Ok(other) => Err(Error::Internal(format!(
                "a Kafka transaction command answered {other:?}"
            ))),
            Err(MetaError::KafkaTxns(e)) => Ok(Err(e)),
            Err(e) => Err(e.into()),
        }
    }

    /// Kafka transactional id `id` as of the last applied entry.
    pub fn kafka_txn(&self, id: &str) -> Option<kafka_txns::KafkaTxnRecord> {
        self.kafka_txns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The transactional id producer `producer_id` is, as of the last
    /// applied entry.
    pub fn kafka_txn_of_producer(&self, producer_id: i64) -> Option<kafka_txns::KafkaTxnRecord> {
        self.kafka_txns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .of_producer(producer_id)
            .cloned()
    }

    /// The Kafka consumer groups that have committed offsets.
    pub fn kafka_offset_groups(&self) -> Vec<String> {
        self.kafka_offsets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .groups()
    }

    /// The cluster's nodes as the metadata records them (empty until the
    /// first leader recorded the nodes it started with).
    pub fn nodes(&self) -> std::collections::BTreeMap<u64, String> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records node `id` at `address` (joins, or moves).
    pub async fn set_node(&self, id: u64, address: &str) -> Result<(), Error> {
        self.propose_any(MetaCmd::SetNode(command::NodeRecord {
            id,
            address: address.to_string(),
        }))
        .await?;
        Ok(())
    }

    /// Where the groups' replicas belong (empty until placed).
    pub fn placement(&self) -> Placement {
        self.placement
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records where the groups' replicas belong from now on.
    pub async fn set_placement(&self, placement: &Placement) -> Result<(), Error> {
        self.propose_any(MetaCmd::SetPlacement(placement.into()))
            .await?;
        Ok(())
    }

    /// Forms the cluster: records its first nodes and their placement in
    /// one entry. Does nothing once formed.
    pub async fn form(
        &self,
        nodes: &std::collections::BTreeMap<u64, String>,
        placement: &Placement,
    ) -> Result<(), Error> {
        let nodes = nodes
            .iter()
            .map(|(&id, address)| command::NodeRecord {
                id,
                address: address.clone(),
            })
            .collect();
        self.propose_any(MetaCmd::Form(command::FormCluster {
            nodes,
            placement: Some(placement.into()),
        }))
        .await?;
        Ok(())
    }

    /// Drops node `id` from the cluster.
    pub async fn remove_node(&self, id: u64) -> Result<(), Error> {
        self.propose_any(MetaCmd::RemoveNode(command::NodeRecord {
            id,
            address: String::new(),
        }))
        .await?;
        Ok(())
    }

    pub async fn create(
        &self,
        key: &StreamKey,
        segment_count: u32,
        containers: u32,
        retention: Retention,
        policy: ScalingPolicy,
    ) -> Result<StreamRecord, Error> {
        self.propose(MetaCmd::Create(command::CreateStream {
            scope: key.scope.clone(),
            stream: key.stream.clone(),
            segment_count,
            containers,
            retention_time_ms: retention.time_ms,
            retention_bytes: retention.bytes,
            by_consumption: retention.by_consumption,
            min_time_ms: retention.min_time_ms,
            min_bytes: retention.min_bytes,
            created_ms: crate::tier::writer::now_ms(),
            policy: Some(policy.record()),
        }))
        .await
    }

    pub async fn set_scaling(
        &self,
        key: &StreamKey,
        policy: ScalingPolicy,
    ) -> Result<StreamRecord, Error> {
        self.propose(MetaCmd::SetScaling(command::SetScaling {
            scope: key.scope.clone(),
            stream: key.stream.clone(),
            policy: Some(policy.record()),
        }))
        .await
    }

    /// Records a scale of `key` (see [`scaling::plan`] for what is refused):
    /// its successors are created and its predecessors sealed by the
    /// reconciler, then [`Controller::complete_scale`] puts the new epoch in
    /// force.
    pub async fn start_scale(
        &self,
        key: &StreamKey,
        splits: &[scaling::Split],
        merges: &[Vec<u64>],
        containers: u32,
    ) -> Result<StreamRecord, Error> {
        self.propose(MetaCmd::StartScale(command::StartScale {
            scope: key.scope.clone(),
            stream: key.stream.clone(),
            splits: splits
                .iter()
                .map(|s| command::SplitRecord {
                    segment_id: s.segment_id,
                    pieces: s.pieces,
                })
                .collect(),
            merges: merges
                .iter()
                .map(|m| command::MergeRecord {
                    segment_ids: m.clone(),
                })
                .collect(),
            containers,
        }))
        .await
    }

    /// Puts the scale to `epoch` of `key` in force (a no-op once it is).
    pub async fn complete_scale(&self, key: &StreamKey, epoch: u64) -> Result<StreamRecord, Error> {
        self.propose(MetaCmd::CompleteScale(command::CompleteScale {
            scope: key.scope.clone(),
            stream: key.stream.clone(),
            epoch,
            created_ms: crate::tier::writer::now_ms(),
        }))
        .await
    }

    /// Marks sealed predecessors of `key` that retention expired whole as
    /// dropped (see `state::drop_segments` for which may go).
    pub async fn drop_segments(
        &self,
        key: &StreamKey,
        ids: Vec<u64>,
    ) -> Result<StreamRecord, Error> {
        self.propose(MetaCmd::DropSegments(command::SegmentsRef {
            scope: key.scope.clone(),
            stream: key.stream.clone(),
            segment_ids: ids,
        }))
        .await
    }

    /// Forgets dropped segments of `key` that no container holds any more.
    pub async fn purge_segments(
        &self,
        key: &StreamKey,
        ids: Vec<u64>,
    ) -> Result<StreamRecord, Error> {
        self.propose(MetaCmd::PurgeSegments(command::SegmentsRef {
            scope: key.scope.clone(),
            stream: key.stream.clone(),
            segment_ids: ids,
        }))
        .await
    }

    /// Applies one change to reader group `key`; the view of the reader
    /// that made it, if a reader did.
    pub async fn group_change(
        &self,
        key: &groups::GroupKey,
        op: GroupOp,
    ) -> Result<Option<groups::ReaderView>, Error> {
        let cmd = MetaCmd::Group(command::GroupCommand {
            scope: key.scope.clone(),
            group: key.group.clone(),
            op: Some(op),
        });
        match self.propose_any(cmd).await? {
            Applied::Group(view) => Ok(view),
            other => Err(Error::Internal(format!(
                "a group command answered {other:?}"
            ))),
        }
    }

    /// Begins transaction `id` on `stream` with `timeout_ms` and the
    /// client's `owner` label (checked by the caller); the new record.
    pub async fn txn_begin(
        &self,
        id: &str,
        stream: &StreamKey,
        timeout_ms: u64,
        owner: &str,
    ) -> Result<Option<txns::TxnRecord>, Error> {
        let cmd = command::TxnCommand {
            id: id.to_string(),
            op: TxnOp::Begin as i32,
            scope: stream.scope.clone(),
            stream: stream.stream.clone(),
            timeout_ms,
            owner: owner.to_string(),
            ..Default::default()
        };
        Ok(self.propose_txn(cmd).await?.0)
    }

    /// Applies one change (not a begin) to transaction `id`; the record
    /// after (None once forgotten).
    pub async fn txn_change(
        &self,
        op: TxnOp,
        id: &str,
        stream: &StreamKey,
    ) -> Result<Option<txns::TxnRecord>, Error> {
        Ok(self.txn_change_new(op, id, stream).await?.0)
    }

    /// [`Controller::txn_change`], also saying whether the change was new
    /// (not a repeat of one already made): what counts in the metrics.
    pub async fn txn_change_new(
        &self,
        op: TxnOp,
        id: &str,
        stream: &StreamKey,
    ) -> Result<(Option<txns::TxnRecord>, bool), Error> {
        self.propose_txn(command::TxnCommand {
            id: id.to_string(),
            op: op as i32,
            scope: stream.scope.clone(),
            stream: stream.stream.clone(),
            ..Default::default()
        })
        .await
    }

    /// Moves part `txn_segment_id` of transaction `id` along (`SplitPart`,
    /// `PartMoved`); the record after.
    pub async fn txn_part_change(
        &self,
        op: TxnOp,
        id: &str,
        txn_segment_id: u64,
    ) -> Result<Option<txns::TxnRecord>, Error> {
        let cmd = command::TxnCommand {
            id: id.to_string(),
            op: op as i32,
            txn_segment_id,
            ..Default::default()
        };
        Ok(self.propose_txn(cmd).await?.0)
    }

    async fn propose_txn(
        &self,
        mut cmd: command::TxnCommand,
    ) -> Result<(Option<txns::TxnRecord>, bool), Error> {
        cmd.now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        match self.propose_any(MetaCmd::Txn(cmd)).await? {
            Applied::Txn { record, changed } => Ok((record, changed)),
            other => Err(Error::Internal(format!(
                "a transaction command answered {other:?}"
            ))),
        }
    }

    /// Transaction `id` as this replica knows it.
    pub fn txn(&self, id: &str) -> Option<txns::TxnRecord> {
        let map = self.txns.read().unwrap_or_else(|p| p.into_inner());
        map.get(id).cloned()
    }

    /// Of `part_ids` (transaction segments a container holds), those this
    /// replica knows were allocated yet belong to no transaction it keeps:
    /// their transaction was forgotten, so nothing can ever commit them.
    pub fn orphan_parts(&self, part_ids: &[u64]) -> Vec<u64> {
        let allocated = self.allocated.load(std::sync::atomic::Ordering::Acquire);
        let map = self.txns.read().unwrap_or_else(|p| p.into_inner());
        let known: std::collections::HashSet<u64> = map
            .values()
            .flat_map(|t| t.parts.iter().map(|p| p.txn_segment_id))
            .collect();
        part_ids
            .iter()
            .copied()
            .filter(|id| *id < allocated && !known.contains(id))
            .collect()
    }

    /// Every transaction this replica knows, oldest id first.
    pub fn txns(&self) -> Vec<txns::TxnRecord> {
        let map = self.txns.read().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
    }

    /// Reader group `key` as this replica knows it.
    pub fn group_record(&self, key: &groups::GroupKey) -> Result<groups::GroupRecord, Error> {
        let map = self.groups.read().unwrap_or_else(|p| p.into_inner());
        map.get(key)
            .cloned()
            .ok_or_else(|| Error::GroupNotFound(key.to_string()))
    }

    /// For retention by consumption: how far every reader group subscribed
    /// to `stream` consumed each of its segments (the least of them), or
    /// None when no group subscribes.
    pub fn consumed(&self, stream: &StreamKey) -> Option<std::collections::HashMap<u64, u64>> {
        let subscribed: Vec<groups::GroupRecord> = {
            let map = self.groups.read().unwrap_or_else(|p| p.into_inner());
            map.values()
                .filter(|g| {
                    g.subscribed
                        && g.streams
                            .iter()
                            .any(|s| s.scope == stream.scope && s.stream == stream.stream)
                })
                .cloned()
                .collect()
        };
        if subscribed.is_empty() {
            return None;
        }
        let record = self.get(stream).ok()?;
        let mut graph = groups::SegmentGraph::default();
        record.add_to_graph(&mut graph);
        let consumed: Vec<groups::Consumed> = subscribed
            .iter()
            .map(|g| groups::Consumed::new(g.consumed_cut(), &graph))
            .collect();
        Some(
            record
                .segments
                .iter()
                .map(|s| {
                    let least = consumed.iter().map(|c| c.offset(s.id)).min().unwrap_or(0);
                    (s.id, least)
                })
                .collect(),
        )
    }

    /// Every group's readers and reader timeout (what liveness needs,
    /// without copying whole records).
    pub fn group_readers(&self) -> Vec<(groups::GroupKey, u64, Vec<String>)> {
        let map = self.groups.read().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(k, g)| {
                (
                    k.clone(),
                    g.reader_timeout_ms,
                    g.readers.keys().cloned().collect(),
                )
            })
            .collect()
    }

    /// Every reader group (of `scope`, unless empty).
    pub fn group_records(&self, scope: &str) -> Vec<groups::GroupRecord> {
        let map = self.groups.read().unwrap_or_else(|p| p.into_inner());
        map.values()
            .filter(|g| scope.is_empty() || g.scope == scope)
            .cloned()
            .collect()
    }

    /// Whether segment `id` is a successor of a scale not yet in force.
    pub fn is_pending(&self, id: u64) -> bool {
        let map = self.streams.read().unwrap_or_else(|p| p.into_inner());
        map.values()
            .filter(|s| s.scaling.is_some())
            .flat_map(|s| &s.segments)
            .any(|g| g.id == id && g.pending)
    }

    pub async fn set_retention(
        &self,
        key: &StreamKey,
        retention: Retention,
    ) -> Result<StreamRecord, Error> {
        self.propose(MetaCmd::SetRetention(command::SetRetention {
            scope: key.scope.clone(),
            stream: key.stream.clone(),
            retention_time_ms: retention.time_ms,
            retention_bytes: retention.bytes,
            by_consumption: retention.by_consumption,
            min_time_ms: retention.min_time_ms,
            min_bytes: retention.min_bytes,
        }))
        .await
    }

    pub async fn seal(&self, key: &StreamKey) -> Result<StreamRecord, Error> {
        self.propose(MetaCmd::Seal(command::StreamRef::from(key)))
            .await
    }

    pub async fn mark_deleting(&self, key: &StreamKey) -> Result<StreamRecord, Error> {
        self.propose(MetaCmd::MarkDeleting(command::StreamRef::from(key)))
            .await
    }

    pub async fn remove(&self, key: &StreamKey) -> Result<StreamRecord, Error> {
        self.propose(MetaCmd::Remove(command::StreamRef::from(key)))
            .await
    }
}
