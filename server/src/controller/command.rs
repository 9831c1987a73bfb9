//! Commands of the `meta` raft log (prost; a storage format: never reuse a
//! tag).

#[derive(Clone, PartialEq, prost::Message)]
pub struct MetaCommand {
    #[prost(
        oneof = "MetaCmd",
        tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19"
    )]
    pub cmd: Option<MetaCmd>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetaCmd {
    #[prost(message, tag = "1")]
    Create(CreateStream),
    #[prost(message, tag = "2")]
    Seal(StreamRef),
    #[prost(message, tag = "3")]
    MarkDeleting(StreamRef),
    #[prost(message, tag = "4")]
    Remove(StreamRef),
    #[prost(message, tag = "5")]
    SetRetention(SetRetention),
    /// A node joins the cluster (or changes its address).
    #[prost(message, tag = "6")]
    SetNode(NodeRecord),
    /// A node leaves the cluster.
    #[prost(message, tag = "7")]
    RemoveNode(NodeRecord),
    /// Where every group's replicas belong from now on.
    #[prost(message, tag = "8")]
    SetPlacement(PlacementRecord),
    /// The cluster forms: its first nodes and placement in one entry (so
    /// no placement is ever made over some of them). Ignored once formed.
    #[prost(message, tag = "9")]
    Form(FormCluster),
    /// A scale begins: its successors are recorded (pending: not yet
    /// written to) and its predecessors are to be sealed.
    #[prost(message, tag = "10")]
    StartScale(StartScale),
    /// A scale's successors exist and its predecessors are sealed: the new
    /// epoch is in force.
    #[prost(message, tag = "11")]
    CompleteScale(CompleteScale),
    /// A stream's scaling policy changes.
    #[prost(message, tag = "12")]
    SetScaling(SetScaling),
    /// Retention expired every byte of these sealed predecessors: they are
    /// no longer read, and their containers delete them.
    #[prost(message, tag = "13")]
    DropSegments(SegmentsRef),
    /// Dropped segments their containers no longer hold: forget them.
    #[prost(message, tag = "14")]
    PurgeSegments(SegmentsRef),
    /// A reader-group change (see `groups.rs`).
    #[prost(message, tag = "15")]
    Group(GroupCommand),
    /// A transaction change (see `txns.rs`).
    #[prost(message, tag = "16")]
    Txn(TxnCommand),
    /// An ACL grant is added or revoked.
    #[prost(message, tag = "17")]
    Acl(AclCommand),
    /// Kafka consumer-group offsets are committed or deleted (see
    /// `kafka_offsets.rs`).
    #[prost(message, tag = "18")]
    KafkaOffsets(super::kafka_offsets::KafkaOffsetsCommand),
    /// A Kafka transactional producer's change (see `kafka_txns.rs`).
    #[prost(message, tag = "19")]
    KafkaTxn(super::kafka_txns::KafkaTxnCommand),
}

/// Adds (`revoke` false) or removes a grant (normalized by
/// `auth::acl::normalize` before it is proposed).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AclCommand {
    #[prost(bool, tag = "1")]
    pub revoke: bool,
    #[prost(message, optional, tag = "2")]
    pub grant: Option<aquifer_proto::v1::AclGrant>,
}

/// What a [`TxnCommand`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum TxnOp {
    Unspecified = 0,
    /// A new transaction on `scope/stream` with `timeout_ms` and `owner`:
    /// one part per active segment.
    Begin = 1,
    Commit = 2,
    Abort = 3,
    /// The meta leader saw no ping for the transaction's timeout.
    TimeOut = 4,
    /// Every part is merged (committing) or dropped (aborting).
    Finish = 5,
    /// A finished transaction whose parts the containers forgot.
    Forget = 6,
    /// Part `txn_segment_id` of a committing transaction lies in a segment
    /// a scale sealed: record a child part per successor.
    SplitPart = 7,
    /// Part `txn_segment_id`'s events are in its children: it goes.
    PartMoved = 8,
}

/// One change of transaction `id`. Times are the proposer's clock, in the
/// entry so replay decides as the first apply did.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnCommand {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(enumeration = "TxnOp", tag = "2")]
    pub op: i32,
    #[prost(string, tag = "3")]
    pub scope: String,
    #[prost(string, tag = "4")]
    pub stream: String,
    #[prost(uint64, tag = "5")]
    pub timeout_ms: u64,
    #[prost(uint64, tag = "6")]
    pub now_ms: u64,
    /// SplitPart, PartMoved: the part.
    #[prost(uint64, tag = "7")]
    pub txn_segment_id: u64,
    /// Begin: the client's opaque label (empty: none, as in entries from
    /// before it existed).
    #[prost(string, tag = "8")]
    pub owner: String,
}

/// One change of reader group `scope/group`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GroupCommand {
    #[prost(string, tag = "1")]
    pub scope: String,
    #[prost(string, tag = "2")]
    pub group: String,
    #[prost(oneof = "GroupOp", tags = "3, 4, 5, 6, 7, 8, 9, 10, 11")]
    pub op: Option<GroupOp>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum GroupOp {
    #[prost(message, tag = "3")]
    Create(CreateGroup),
    #[prost(message, tag = "4")]
    Join(ReaderRef),
    #[prost(message, tag = "5")]
    Heartbeat(HeartbeatRecord),
    /// A reader leaves, saying where it stopped.
    #[prost(message, tag = "6")]
    Leave(LeaveRecord),
    /// The meta leader saw no heartbeat of a reader for its timeout.
    #[prost(message, tag = "7")]
    TimeOut(ReaderRef),
    #[prost(message, tag = "8")]
    Checkpoint(CheckpointCmd),
    #[prost(message, tag = "9")]
    Reset(Positions),
    #[prost(message, tag = "10")]
    Delete(ReaderRef),
    /// The meta leader measured each segment's lag (bytes from the group's
    /// position to the length).
    #[prost(message, tag = "11")]
    Lags(Positions),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateGroup {
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<super::groups::GroupStream>,
    /// Where reading starts: segment → offset.
    #[prost(btree_map = "uint64, uint64", tag = "2")]
    pub start: std::collections::BTreeMap<u64, u64>,
    #[prost(uint64, tag = "3")]
    pub reader_timeout_ms: u64,
    #[prost(bool, tag = "4")]
    pub subscribed: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ReaderRef {
    #[prost(string, tag = "1")]
    pub reader: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Positions {
    #[prost(btree_map = "uint64, uint64", tag = "1")]
    pub positions: std::collections::BTreeMap<u64, u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaveRecord {
    #[prost(string, tag = "1")]
    pub reader: String,
    #[prost(btree_map = "uint64, uint64", tag = "2")]
    pub positions: std::collections::BTreeMap<u64, u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckpointCmd {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub now_ms: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HeartbeatRecord {
    #[prost(string, tag = "1")]
    pub reader: String,
    #[prost(uint64, tag = "2")]
    pub generation: u64,
    #[prost(btree_map = "uint64, uint64", tag = "3")]
    pub positions: std::collections::BTreeMap<u64, u64>,
    #[prost(btree_map = "uint64, uint64", tag = "4")]
    pub completed: std::collections::BTreeMap<u64, u64>,
    #[prost(btree_map = "uint64, uint64", tag = "5")]
    pub released: std::collections::BTreeMap<u64, u64>,
    #[prost(message, repeated, tag = "6")]
    pub checkpoints: Vec<CheckpointAck>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckpointAck {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(btree_map = "uint64, uint64", tag = "2")]
    pub positions: std::collections::BTreeMap<u64, u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SegmentsRef {
    #[prost(string, tag = "1")]
    pub scope: String,
    #[prost(string, tag = "2")]
    pub stream: String,
    #[prost(uint64, repeated, tag = "3")]
    pub segment_ids: Vec<u64>,
}

/// How a stream follows its traffic (see `state::ScalingPolicy`).
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct PolicyRecord {
    /// 0 fixed, 1 events/s, 2 KiB/s.
    #[prost(uint32, tag = "1")]
    pub kind: u32,
    #[prost(uint64, tag = "2")]
    pub target: u64,
    #[prost(uint32, tag = "3")]
    pub scale_factor: u32,
    #[prost(uint32, tag = "4")]
    pub min_segments: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SetScaling {
    #[prost(string, tag = "1")]
    pub scope: String,
    #[prost(string, tag = "2")]
    pub stream: String,
    #[prost(message, optional, tag = "3")]
    pub policy: Option<PolicyRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StartScale {
    #[prost(string, tag = "1")]
    pub scope: String,
    #[prost(string, tag = "2")]
    pub stream: String,
    #[prost(message, repeated, tag = "3")]
    pub splits: Vec<SplitRecord>,
    #[prost(message, repeated, tag = "4")]
    pub merges: Vec<MergeRecord>,
    /// Containers in the cluster (as in `CreateStream`).
    #[prost(uint32, tag = "5")]
    pub containers: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SplitRecord {
    #[prost(uint64, tag = "1")]
    pub segment_id: u64,
    #[prost(uint32, tag = "2")]
    pub pieces: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MergeRecord {
    #[prost(uint64, repeated, tag = "1")]
    pub segment_ids: Vec<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CompleteScale {
    #[prost(string, tag = "1")]
    pub scope: String,
    #[prost(string, tag = "2")]
    pub stream: String,
    /// The epoch the scale makes (guards against completing another one).
    #[prost(uint64, tag = "3")]
    pub epoch: u64,
    /// When the epoch begins (ms since the Unix epoch; in the command so
    /// replay records the same time).
    #[prost(uint64, tag = "4")]
    pub created_ms: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FormCluster {
    #[prost(message, repeated, tag = "1")]
    pub nodes: Vec<NodeRecord>,
    #[prost(message, optional, tag = "2")]
    pub placement: Option<PlacementRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PlacementRecord {
    #[prost(uint32, tag = "1")]
    pub replication_factor: u32,
    #[prost(uint64, repeated, tag = "2")]
    pub meta_voters: Vec<u64>,
    /// Container `i`'s replicas at index `i`.
    #[prost(message, repeated, tag = "3")]
    pub containers: Vec<ContainerReplicas>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerReplicas {
    #[prost(uint64, repeated, tag = "1")]
    pub nodes: Vec<u64>,
}

impl From<&crate::controller::placement::Placement> for PlacementRecord {
    fn from(p: &crate::controller::placement::Placement) -> Self {
        PlacementRecord {
            replication_factor: p.replication_factor,
            meta_voters: p.meta_voters.clone(),
            containers: p
                .containers
                .iter()
                .map(|r| ContainerReplicas { nodes: r.clone() })
                .collect(),
        }
    }
}

impl From<PlacementRecord> for crate::controller::placement::Placement {
    fn from(p: PlacementRecord) -> Self {
        crate::controller::placement::Placement {
            replication_factor: p.replication_factor,
            meta_voters: p.meta_voters,
            containers: p.containers.into_iter().map(|r| r.nodes).collect(),
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeRecord {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub address: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SetRetention {
    #[prost(string, tag = "1")]
    pub scope: String,
    #[prost(string, tag = "2")]
    pub stream: String,
    #[prost(uint64, tag = "3")]
    pub retention_time_ms: u64,
    #[prost(uint64, tag = "4")]
    pub retention_bytes: u64,
    /// Retention by consumption (see `state::Retention`).
    #[prost(bool, tag = "5")]
    pub by_consumption: bool,
    #[prost(uint64, tag = "6")]
    pub min_time_ms: u64,
    #[prost(uint64, tag = "7")]
    pub min_bytes: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateStream {
    #[prost(string, tag = "1")]
    pub scope: String,
    #[prost(string, tag = "2")]
    pub stream: String,
    #[prost(uint32, tag = "3")]
    pub segment_count: u32,
    /// Containers in the cluster, so placement is part of the command and
    /// replay places segments exactly as the first apply did.
    #[prost(uint32, tag = "4")]
    pub containers: u32,
    /// Retention (0: no limit).
    #[prost(uint64, tag = "5")]
    pub retention_time_ms: u64,
    #[prost(uint64, tag = "6")]
    pub retention_bytes: u64,
    /// When the stream (its epoch 0) begins, ms since the Unix epoch.
    #[prost(uint64, tag = "7")]
    pub created_ms: u64,
    #[prost(message, optional, tag = "8")]
    pub policy: Option<PolicyRecord>,
    #[prost(bool, tag = "9")]
    pub by_consumption: bool,
    #[prost(uint64, tag = "10")]
    pub min_time_ms: u64,
    #[prost(uint64, tag = "11")]
    pub min_bytes: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamRef {
    #[prost(string, tag = "1")]
    pub scope: String,
    #[prost(string, tag = "2")]
    pub stream: String,
}

/// The `meta` group's applied state in its raft snapshot.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetaSnapshot {
    #[prost(uint64, tag = "1")]
    pub next_segment_id: u64,
    #[prost(message, repeated, tag = "2")]
    pub streams: Vec<StreamSnapshot>,
    #[prost(message, repeated, tag = "3")]
    pub nodes: Vec<NodeRecord>,
    #[prost(message, optional, tag = "4")]
    pub placement: Option<PlacementRecord>,
    #[prost(message, repeated, tag = "5")]
    pub groups: Vec<super::groups::GroupRecord>,
    #[prost(message, repeated, tag = "6")]
    pub txns: Vec<super::txns::TxnRecord>,
    #[prost(message, repeated, tag = "7")]
    pub acls: Vec<aquifer_proto::v1::AclGrant>,
    #[prost(message, repeated, tag = "8")]
    pub kafka_offsets: Vec<super::kafka_offsets::KafkaGroupOffsets>,
    #[prost(message, repeated, tag = "9")]
    pub kafka_txns: Vec<super::kafka_txns::KafkaTxnRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamSnapshot {
    #[prost(string, tag = "1")]
    pub scope: String,
    #[prost(string, tag = "2")]
    pub stream: String,
    #[prost(bool, tag = "3")]
    pub sealed: bool,
    #[prost(bool, tag = "4")]
    pub deleting: bool,
    #[prost(message, repeated, tag = "5")]
    pub segments: Vec<SegmentSnapshot>,
    #[prost(uint64, tag = "6")]
    pub retention_time_ms: u64,
    #[prost(uint64, tag = "7")]
    pub retention_bytes: u64,
    #[prost(uint64, tag = "8")]
    pub epoch: u64,
    #[prost(message, repeated, tag = "9")]
    pub epochs: Vec<EpochSnapshot>,
    /// The scale under way, if any: its epoch and predecessors (its
    /// successors are the pending segments).
    #[prost(uint64, tag = "10")]
    pub scaling_epoch: u64,
    #[prost(uint64, repeated, tag = "11")]
    pub scaling_predecessors: Vec<u64>,
    #[prost(message, optional, tag = "12")]
    pub policy: Option<PolicyRecord>,
    #[prost(bool, tag = "13")]
    pub by_consumption: bool,
    #[prost(uint64, tag = "14")]
    pub min_time_ms: u64,
    #[prost(uint64, tag = "15")]
    pub min_bytes: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EpochSnapshot {
    #[prost(uint64, tag = "1")]
    pub epoch: u64,
    #[prost(uint64, repeated, tag = "2")]
    pub segment_ids: Vec<u64>,
    #[prost(uint64, tag = "3")]
    pub created_ms: u64,
}

/// A stream's segment record as the `meta` snapshot stores it (see
/// `state::SegmentRecord`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SegmentSnapshot {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint32, tag = "2")]
    pub number: u32,
    #[prost(uint32, tag = "3")]
    pub container: u32,
    #[prost(double, tag = "4")]
    pub key_low: f64,
    #[prost(double, tag = "5")]
    pub key_high: f64,
    #[prost(uint64, tag = "6")]
    pub epoch: u64,
    #[prost(uint64, repeated, tag = "7")]
    pub successors: Vec<u64>,
    #[prost(uint64, repeated, tag = "8")]
    pub predecessors: Vec<u64>,
    #[prost(bool, tag = "9")]
    pub pending: bool,
    #[prost(bool, tag = "10")]
    pub dropped: bool,
}
