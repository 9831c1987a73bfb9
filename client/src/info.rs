//! The client's own views of what the server reports: streams, segments,
//! retention, cluster status.
//!
//! Owns the conversions from the generated (prost) messages. The public API
//! must never hand out a generated type: those follow the wire, these follow
//! semver (each struct is `#[non_exhaustive]`, so fields can be added), and
//! wire sentinels (`0` for "no limit", "no leader") become `Option`s here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{proto, Error, StreamName};

/// How much of a stream to keep; `None` in a field: no limit on it.
///
/// ```
/// use std::time::Duration;
/// use aquifer_client::Retention;
///
/// let keep = Retention::default()
///     .time(Duration::from_secs(7 * 86_400))
///     .size_bytes(100 << 30);
/// assert_eq!(keep.size_bytes, Some(100 << 30));
/// assert_eq!(Retention::default().time, None); // keep everything, forever
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retention {
    /// Keep events for this long after they reach tier-2 (millisecond
    /// precision on the wire).
    pub time: Option<Duration>,
    /// Keep about this many bytes of the stream (split evenly over its
    /// segments).
    pub size_bytes: Option<u64>,
    /// Retention by consumption: data goes once every reader group that
    /// subscribes to the stream has checkpointed past it, but not before
    /// it is past [`min_time`](Self::min_time) and
    /// [`min_size_bytes`](Self::min_size_bytes); `time` and `size_bytes`
    /// are then the most kept.
    pub by_consumption: bool,
    /// By consumption: keep at least this long.
    pub min_time: Option<Duration>,
    /// By consumption: keep at least about this many bytes.
    pub min_size_bytes: Option<u64>,
}

impl Retention {
    /// Sets the time limit.
    pub fn time(mut self, time: Duration) -> Self {
        self.time = Some(time).filter(|t| !t.is_zero());
        self
    }

    /// Sets the size limit.
    pub fn size_bytes(mut self, bytes: u64) -> Self {
        self.size_bytes = Some(bytes).filter(|&b| b > 0);
        self
    }

    /// Keeps data until every subscribed reader group consumed it, and at
    /// least `min_time` / `min_size_bytes` (zero: no minimum).
    pub fn by_consumption(mut self, min_time: Duration, min_size_bytes: u64) -> Self {
        self.by_consumption = true;
        self.min_time = Some(min_time).filter(|t| !t.is_zero());
        self.min_size_bytes = Some(min_size_bytes).filter(|&b| b > 0);
        self
    }

    pub(crate) fn to_proto(self) -> proto::Retention {
        let ms =
            |t: Option<Duration>| t.map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        proto::Retention {
            time_ms: ms(self.time),
            size_bytes: self.size_bytes.unwrap_or(0),
            by_consumption: self.by_consumption,
            min_time_ms: ms(self.min_time),
            min_size_bytes: self.min_size_bytes.unwrap_or(0),
        }
    }

    fn from_proto(r: proto::Retention) -> Retention {
        let time = |ms: u64| Some(Duration::from_millis(ms)).filter(|t| !t.is_zero());
        Retention {
            time: time(r.time_ms),
            size_bytes: Some(r.size_bytes).filter(|&b| b > 0),
            by_consumption: r.by_consumption,
            min_time: time(r.min_time_ms),
            min_size_bytes: Some(r.min_size_bytes).filter(|&b| b > 0),
        }
    }
}

/// A stream's state, as `describe_stream` and `list_streams` report it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct StreamInfo {
    /// Its name.
    pub name: StreamName,
    /// No more appends; reads still work.
    pub sealed: bool,
    /// Its segments, in the order the server lists them.
    pub segments: Vec<SegmentInfo>,
    /// What it keeps.
    pub retention: Retention,
    /// The current epoch: 0 at creation, one more per scale.
    pub epoch: u64,
    /// Every epoch, oldest first (`stream history`).
    pub epochs: Vec<EpochInfo>,
    /// How it follows its traffic.
    pub scaling: ScalingPolicy,
}

/// How a stream follows its traffic: [`ScalingPolicy::fixed`] (the default)
/// keeps its segments; the rate policies split a segment whose rate stays
/// above the target (into at most `scale_factor` pieces) and merge cold
/// key-adjacent neighbours, never below `min_segments`.
///
/// ```
/// use aquifer_client::ScalingPolicy;
/// let policy = ScalingPolicy::events_per_second(1000).scale_factor(4).min_segments(2);
/// assert_eq!(policy.target(), Some(1000));
/// assert_eq!(ScalingPolicy::default(), ScalingPolicy::fixed());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScalingPolicy {
    kind: ScalingKind,
    target: u64,
    scale_factor: u32,
    min_segments: u32,
}

/// What a [`ScalingPolicy`] measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScalingKind {
    /// No automatic scaling.
    Fixed,
    /// Events per second per segment.
    EventsPerSecond,
    /// KiB per second per segment.
    KibPerSecond,
}

impl Default for ScalingPolicy {
    fn default() -> Self {
        ScalingPolicy::fixed()
    }
}

impl ScalingPolicy {
    /// No automatic scaling (scales by hand still work).
    pub fn fixed() -> ScalingPolicy {
        ScalingPolicy {
            kind: ScalingKind::Fixed,
            target: 0,
            scale_factor: 2,
            min_segments: 1,
        }
    }

    /// Keep each segment near `target` events/s.
    pub fn events_per_second(target: u64) -> ScalingPolicy {
        ScalingPolicy {
            kind: ScalingKind::EventsPerSecond,
            target,
            ..ScalingPolicy::fixed()
        }
    }

    /// Keep each segment near `target` KiB/s.
    pub fn kib_per_second(target: u64) -> ScalingPolicy {
        ScalingPolicy {
            kind: ScalingKind::KibPerSecond,
            target,
            ..ScalingPolicy::fixed()
        }
    }

    /// The most pieces one split makes (2..=16; default 2).
    pub fn scale_factor(mut self, pieces: u32) -> Self {
        self.scale_factor = pieces;
        self
    }

    /// The fewest active segments (default 1).
    pub fn min_segments(mut self, n: u32) -> Self {
        self.min_segments = n;
        self
    }

    /// What it measures.
    pub fn kind(&self) -> ScalingKind {
        self.kind
    }

    /// The per-segment target, for the rate kinds.
    pub fn target(&self) -> Option<u64> {
        (self.kind != ScalingKind::Fixed).then_some(self.target)
    }

    /// See [`ScalingPolicy::scale_factor`].
    pub fn get_scale_factor(&self) -> u32 {
        self.scale_factor
    }

    /// See [`ScalingPolicy::min_segments`].
    pub fn get_min_segments(&self) -> u32 {
        self.min_segments
    }

    pub(crate) fn to_proto(self) -> proto::ScalingPolicy {
        use proto::scaling_policy::Kind;
        let kind = match self.kind {
            ScalingKind::Fixed => Kind::Fixed,
            ScalingKind::EventsPerSecond => Kind::EventsPerSecond,
            ScalingKind::KibPerSecond => Kind::KibPerSecond,
        };
        proto::ScalingPolicy {
            kind: kind as i32,
            target: self.target,
            scale_factor: self.scale_factor,
            min_segments: self.min_segments,
        }
    }

    fn from_proto(p: proto::ScalingPolicy) -> ScalingPolicy {
        use proto::scaling_policy::Kind;
        let kind = match Kind::try_from(p.kind) {
            Ok(Kind::EventsPerSecond) => ScalingKind::EventsPerSecond,
            Ok(Kind::KibPerSecond) => ScalingKind::KibPerSecond,
            Ok(Kind::Fixed) | Err(_) => ScalingKind::Fixed,
        };
        ScalingPolicy {
            kind,
            target: p.target,
            scale_factor: p.scale_factor.max(2),
            min_segments: p.min_segments.max(1),
        }
    }
}

impl StreamInfo {
    /// The segments of the current epoch: the unsealed ones; once the
    /// stream is sealed, the ones no scale replaced.
    pub fn active_segments(&self) -> impl Iterator<Item = &SegmentInfo> {
        let open = self.segments.iter().any(|s| !s.sealed);
        self.segments.iter().filter(move |s| {
            if open {
                !s.sealed
            } else {
                s.successors.is_empty()
            }
        })
    }
}

/// One epoch of a stream: the segments active from one scale to the next.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EpochInfo {
    /// Its number: 0 at creation, one more per scale.
    pub epoch: u64,
    /// The segments active in it.
    pub segment_ids: Vec<u64>,
    /// When it began.
    pub created: SystemTime,
}

impl From<proto::EpochInfo> for EpochInfo {
    fn from(e: proto::EpochInfo) -> Self {
        EpochInfo {
            epoch: e.epoch,
            segment_ids: e.segment_ids,
            created: UNIX_EPOCH + Duration::from_millis(e.created_ms),
        }
    }
}

impl TryFrom<proto::StreamInfo> for StreamInfo {
    type Error = Error;

    fn try_from(info: proto::StreamInfo) -> Result<Self, Error> {
        let name = info.name.ok_or_else(|| {
            Error::Server("protocol violation: a stream described without its name".into())
        })?;
        Ok(StreamInfo {
            name: StreamName::new(name.scope, name.stream)?,
            sealed: info.sealed,
            segments: info.segments.into_iter().map(SegmentInfo::from).collect(),
            retention: Retention::from_proto(info.retention.unwrap_or_default()),
            epoch: info.epoch,
            epochs: info.epochs.into_iter().map(EpochInfo::from).collect(),
            scaling: ScalingPolicy::from_proto(info.scaling.unwrap_or_default()),
        })
    }
}

/// One segment of a stream: its key range, offsets and where its bytes are.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct SegmentInfo {
    /// Unique in the cluster, never reused.
    pub segment_id: u64,
    /// Index of the segment inside its stream.
    pub number: u32,
    /// The container that hosts it.
    pub container: u32,
    /// The slice of the key space it owns: `[key_low, key_high)`.
    pub key_low: f64,
    /// See `key_low`.
    pub key_high: f64,
    /// First readable offset (grows with retention).
    pub head_offset: u64,
    /// One past the last committed event.
    pub length: u64,
    /// No more appends.
    pub sealed: bool,
    /// `[head_offset, tier2_length)` is in tier-2 chunks, the rest in the
    /// tail buffer (and the log).
    pub tier2_length: u64,
    /// Tier-2 chunks holding it.
    pub chunk_count: u32,
    /// Bytes of it in the server's tail buffer.
    pub tail_buffer_bytes: u64,
    /// Bytes appended since its container's last snapshot (replayed on
    /// restart).
    pub log_bytes: u64,
    /// The epoch that created it.
    pub epoch: u64,
    /// The segments that replaced it when a scale sealed it (empty while it
    /// is active); their key ranges overlap its own.
    pub successors: Vec<u64>,
    /// The segments it replaced (empty for a segment the stream was created
    /// with). A reader reads it only after every one of them.
    pub predecessors: Vec<u64>,
    /// Measured events/s, one per server rate window, shortest first.
    pub events_per_second: Vec<f64>,
    /// Measured bytes/s, likewise.
    pub bytes_per_second: Vec<f64>,
    /// Over its policy's target but too narrow to split further.
    pub hot_key: bool,
}

impl From<proto::SegmentInfo> for SegmentInfo {
    fn from(s: proto::SegmentInfo) -> Self {
        SegmentInfo {
            segment_id: s.segment_id,
            number: s.number,
            container: s.container,
            key_low: s.key_low,
            key_high: s.key_high,
            head_offset: s.head_offset,
            length: s.length,
            sealed: s.sealed,
            tier2_length: s.tier2_length,
            chunk_count: s.chunk_count,
            tail_buffer_bytes: s.tail_buffer_bytes,
            log_bytes: s.log_bytes,
            epoch: s.epoch,
            successors: s.successors,
            predecessors: s.predecessors,
            events_per_second: s.events_per_second,
            bytes_per_second: s.bytes_per_second,
            hot_key: s.hot_key,
        }
    }
}

/// The cluster as one node sees it: its nodes and every raft group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStatus {
    /// The node that answered.
    pub node_id: u64,
    /// Every node of the cluster.
    pub nodes: Vec<NodeStatus>,
    /// The metadata group (`meta`) and each container's group.
    pub groups: Vec<GroupStatus>,
}

impl From<proto::ClusterStatus> for ClusterStatus {
    fn from(s: proto::ClusterStatus) -> Self {
        ClusterStatus {
            node_id: s.node_id,
            nodes: s.nodes.into_iter().map(NodeStatus::from).collect(),
            groups: s.groups.into_iter().map(GroupStatus::from).collect(),
        }
    }
}

/// One node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStatus {
    /// Its id.
    pub node_id: u64,
    /// `host:port` where clients and nodes reach it.
    pub address: String,
    /// Its health as the answering node sees it.
    pub health: NodeHealth,
}

impl From<proto::NodeInfo> for NodeStatus {
    fn from(n: proto::NodeInfo) -> Self {
        NodeStatus {
            node_id: n.node_id,
            address: n.address,
            health: NodeHealth::from_wire(&n.health),
        }
    }
}

/// A node's health as another node sees it (from the raft transport).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeHealth {
    /// The answering node itself.
    Itself,
    /// Raft messages to it went through in the last few seconds.
    Up,
    /// Raft messages to it fail.
    Unreachable,
    /// Nothing sent to it yet.
    Unknown,
    /// A word this client does not know (a newer server).
    Other(String),
}

impl NodeHealth {
    fn from_wire(word: &str) -> NodeHealth {
        match word {
            "self" => NodeHealth::Itself,
            "up" => NodeHealth::Up,
            "unreachable" => NodeHealth::Unreachable,
            "unknown" | "" => NodeHealth::Unknown,
            other => NodeHealth::Other(other.to_string()),
        }
    }

    /// The word the server uses: `self`, `up`, `unreachable`, `unknown`.
    pub fn as_str(&self) -> &str {
        match self {
            NodeHealth::Itself => "self",
            NodeHealth::Up => "up",
            NodeHealth::Unreachable => "unreachable",
            NodeHealth::Unknown => "unknown",
            NodeHealth::Other(word) => word,
        }
    }
}

impl std::fmt::Display for NodeHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One raft group as a node sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupStatus {
    /// `meta` or `container-N`.
    pub name: String,
    /// The leader's node id, if one is known.
    pub leader_id: Option<u64>,
    /// Voting members.
    pub replicas: Vec<u64>,
    /// Members that receive the log but do not vote.
    pub learners: Vec<u64>,
    /// Where the metadata places its voters (empty on a single node).
    pub placement: Vec<u64>,
    /// Raft term.
    pub term: u64,
    /// Highest raft index known committed.
    pub commit_index: u64,
    /// Highest raft index applied.
    pub applied_index: u64,
    /// Raft index of the entry (or snapshot) that set the membership.
    pub conf_index: u64,
}

impl From<proto::GroupInfo> for GroupStatus {
    fn from(g: proto::GroupInfo) -> Self {
        GroupStatus {
            name: g.name,
            leader_id: Some(g.leader_id).filter(|&id| id != 0),
            replicas: g.replicas,
            learners: g.learners,
            placement: g.placement,
            term: g.term,
            commit_index: g.commit_index,
            applied_index: g.applied_index,
            conf_index: g.conf_index,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_zeros_become_none() {
        let r = Retention::from_proto(proto::Retention::default());
        assert_eq!(r, Retention::default());
        let r = Retention::default()
            .time(Duration::from_secs(60))
            .size_bytes(5);
        assert_eq!(
            r.to_proto(),
            proto::Retention {
                time_ms: 60_000,
                size_bytes: 5,
                ..Default::default()
            }
        );
        assert_eq!(Retention::from_proto(r.to_proto()), r);
        let c = r.by_consumption(Duration::from_secs(1), 0);
        assert_eq!(c.to_proto().min_time_ms, 1000);
        assert_eq!(Retention::from_proto(c.to_proto()), c);
        let g = GroupStatus::from(proto::GroupInfo::default());
        assert_eq!(g.leader_id, None);
        assert_eq!(NodeHealth::from_wire("up"), NodeHealth::Up);
        assert_eq!(NodeHealth::from_wire("self").to_string(), "self");
    }
}
