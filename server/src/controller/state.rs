//! The `meta` state machine: streams and their segments.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use super::command::{
    MetaCmd, MetaCommand, MetaSnapshot, NodeRecord, SegmentSnapshot, StreamRef, StreamSnapshot,
};
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
}

/// How much of a stream to keep; 0 means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub time_ms: u64,
    pub bytes: u64,
}

impl Retention {
    pub fn is_unlimited(&self) -> bool {
        self.time_ms == 0 && self.bytes == 0
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
}

pub type StreamMap = Arc<RwLock<BTreeMap<StreamKey, StreamRecord>>>;
/// The cluster's nodes: id → address (empty until the first leader records
/// the nodes it was started with).
pub type NodeMap = Arc<RwLock<BTreeMap<u64, String>>>;
/// Where the groups' replicas belong (empty until the first leader places
/// them; always empty on a single node).
pub type PlacementMap = Arc<RwLock<Placement>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("stream {0} not found")]
    NotFound(String),
    #[error("stream {0} already exists")]
    Exists(String),
    #[error("undecodable metadata command: {0}")]
    Malformed(String),
}

pub struct MetaState {
    streams: StreamMap,
    nodes: NodeMap,
    placement: PlacementMap,
    /// Segment ids are never reused; 0 is never an id.
    next_segment_id: u64,
}

impl MetaState {
    pub fn new(streams: StreamMap, nodes: NodeMap, placement: PlacementMap) -> Self {
        MetaState {
            streams,
            nodes,
            placement,
            next_segment_id: 1,
        }
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
        let key = Self::key(r);
        let mut map = self.streams.write().unwrap_or_else(|p| p.into_inner());
        let s = map
            .get_mut(&key)
            .ok_or_else(|| MetaError::NotFound(key.to_string()))?;
        f(s);
        Ok(s.clone())
    }
}

impl StateMachine for MetaState {
    /// The stream a command changed; None for node commands.
    type Output = Result<Option<StreamRecord>, MetaError>;

    fn apply(&mut self, _index: u64, command: Bytes) -> Self::Output {
        let cmd: MetaCommand =
            prost::Message::decode(command).map_err(|e| MetaError::Malformed(e.to_string()))?;
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        match cmd.cmd {
            Some(MetaCmd::SetNode(n)) => {
                nodes.insert(n.id, n.address);
                return Ok(None);
            }
            Some(MetaCmd::RemoveNode(n)) => {
                nodes.remove(&n.id);
                return Ok(None);
            }
            Some(MetaCmd::SetPlacement(p)) => {
                *self.placement.write().unwrap_or_else(|p| p.into_inner()) = p.into();
                return Ok(None);
            }
            Some(MetaCmd::Form(f)) => {
                if nodes.is_empty() {
                    nodes.extend(f.nodes.into_iter().map(|n| (n.id, n.address)));
                    *self.placement.write().unwrap_or_else(|p| p.into_inner()) =
                        f.placement.map(Into::into).unwrap_or_default();
                }
                return Ok(None);
            }
            _ => {}
        }
        drop(nodes);
        self.apply_stream(cmd.cmd).map(Some)
    }

    type Snapshot = MetaSnapshot;

    fn snapshot(&self) -> MetaSnapshot {
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
        snap
    }

    fn restore(&mut self, snapshot: Bytes) -> Result<(), String> {
        let snap: MetaSnapshot = prost::Message::decode(snapshot).map_err(|e| e.to_string())?;
        *self.nodes.write().unwrap_or_else(|p| p.into_inner()) = snap
            .nodes
            .iter()
            .map(|n| (n.id, n.address.clone()))
            .collect();
        *self.placement.write().unwrap_or_else(|p| p.into_inner()) =
            snap.placement.clone().map(Into::into).unwrap_or_default();
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
                let n = c.segment_count.max(1);
                let containers = c.containers.max(1);
                let segments = (0..n)
                    .map(|i| {
                        let id = self.next_segment_id + u64::from(i);
                        SegmentRecord {
                            id,
                            number: i,
                            container: container_of(id, containers),
                            key_low: f64::from(i) / f64::from(n),
                            key_high: if i + 1 == n {
                                1.0
                            } else {
                                f64::from(i + 1) / f64::from(n)
                            },
                        }
                    })
                    .collect();
                self.next_segment_id += u64::from(n);
                let record = StreamRecord {
                    key: key.clone(),
                    segments,
                    retention: Retention {
                        time_ms: c.retention_time_ms,
                        bytes: c.retention_bytes,
                    },
                    sealed: false,
                    deleting: false,
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
                };
                let key = StreamRef {
                    scope: r.scope,
                    stream: r.stream,
                };
                self.update(key, |s| s.retention = retention)
            }
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
                | MetaCmd::Form(_),
            )
            | None => Err(MetaError::Malformed("empty command".into())),
        }
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
                segments: s
                    .segments
                    .iter()
                    .map(|g| SegmentSnapshot {
                        id: g.id,
                        number: g.number,
                        container: g.container,
                        key_low: g.key_low,
                        key_high: g.key_high,
                    })
                    .collect(),
            })
            .collect();
        MetaSnapshot {
            next_segment_id: self.next_segment_id,
            streams,
            nodes: Vec::new(),
            placement: None,
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
                })
                .collect();
            let record = StreamRecord {
                key: key.clone(),
                segments,
                retention: Retention {
                    time_ms: s.retention_time_ms,
                    bytes: s.retention_bytes,
                },
                sealed: s.sealed,
                deleting: s.deleting,
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

    fn apply(s: &mut MetaState, cmd: MetaCmd) -> Result<StreamRecord, MetaError> {
        s.apply(
            0,
            prost::Message::encode_to_vec(&MetaCommand { cmd: Some(cmd) }).into(),
        )
        .map(|r| r.expect("a stream command answers its stream"))
    }

    #[test]
    fn segments_split_the_key_space_and_ids_are_never_reused() {
        let mut s = MetaState::new(
            StreamMap::default(),
            NodeMap::default(),
            PlacementMap::default(),
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
        let mut restored = MetaState::new(
            StreamMap::default(),
            NodeMap::default(),
            PlacementMap::default(),
        );
        restored
            .restore(prost::Message::encode_to_vec(&s.snapshot()).into())
            .unwrap();
        assert_eq!(restored.snapshot(), s.snapshot());
        assert_eq!(restored.next_segment_id, 5);
    }

    #[test]
    fn membership_is_replicated_state_and_in_the_snapshot() {
        let nodes = NodeMap::default();
        let placement = PlacementMap::default();
        let mut s = MetaState::new(StreamMap::default(), nodes.clone(), placement.clone());
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
            assert_eq!(out, Ok(None));
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
        );
        restored.restore(snap.into()).unwrap();
        assert_eq!(*restored_nodes.read().unwrap(), *nodes.read().unwrap());
        assert_eq!(*restored_placement.read().unwrap(), placed);
    }

    #[test]
    fn a_cluster_forms_once_with_all_its_nodes_and_placement() {
        let nodes = NodeMap::default();
        let placement = PlacementMap::default();
        let mut s = MetaState::new(StreamMap::default(), nodes.clone(), placement.clone());
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
        assert_eq!(s.apply(1, first.into()), Ok(None));
        assert_eq!(nodes.read().unwrap().len(), 3);
        assert_eq!(*placement.read().unwrap(), placed);
        // A second forming (another node that led briefly) changes nothing.
        let (again, _) = form(&[1, 2], 2);
        assert_eq!(s.apply(2, again.into()), Ok(None));
        assert_eq!(nodes.read().unwrap().len(), 3);
        assert_eq!(*placement.read().unwrap(), placed);
    }
}
