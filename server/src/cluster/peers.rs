//! Calls to other nodes' `Cluster` service: their view of the groups
//! (leaders, memberships), the segments of containers this node holds
//! no replica of, and finishing transaction parts at their container's
//! leader.
//!
//! One lazily connected channel per address, every call under a short
//! deadline: a slow or dead peer costs its caller that deadline, never a
//! hang, and never a raft group's thread (only node tasks call here).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use aquifer_proto::v1::cluster_client::ClusterClient;
use aquifer_proto::v1::finish_parts_request::Action;
use aquifer_proto::v1::{
    AppendPartRequest, ClusterStatus, ClusterStatusRequest, FinishPart, FinishPartsRequest,
    InternalAppendRequest, MovePartRequest, MoveTarget, SegmentInfo, SegmentTailRequest,
    SegmentTailResponse, SegmentViewsRequest,
};
use tonic::transport::{Channel, ClientTlsConfig};

use crate::addresses::NodeAddresses;
use crate::error::Error;

/// Deadline of one call to a peer.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer accepted (segment views of a whole stream).
const ANSWER_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Segments one `SegmentViews` call may ask about.
pub(crate) const SEGMENT_VIEWS_PER_CALL_MAX: usize = 64 * 1024;
/// A generous bound on one encoded `SegmentInfo` (seven varints and a tag
/// each).
const SEGMENT_INFO_BYTES_MAX: usize = 128;
const _: () = assert!(SEGMENT_VIEWS_PER_CALL_MAX * SEGMENT_INFO_BYTES_MAX <= ANSWER_BYTES_MAX);

pub struct Peers {
    /// Where the nodes' peer ports are: callers name a node by its client
    /// address (what a redirect names), calls go to its peer port.
    addresses: NodeAddresses,
    tls: Option<ClientTlsConfig>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Peers {
    pub fn new(addresses: NodeAddresses, tls: Option<ClientTlsConfig>) -> Peers {
        Peers {
            addresses,
            tls,
            channels: Mutex::default(),
        }
    }

    fn client(&self, addr: &str) -> Result<ClusterClient<Channel>, Error> {
        let addr = self.addresses.peer_of(addr);
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(&addr) {
            Some(c) => c.clone(),
            None => {
                let c = crate::cluster::peer_endpoint(&addr, self.tls.as_ref())
                    .map_err(Error::Internal)?
                    .timeout(CALL_TIMEOUT)
                    .connect_lazy();
                channels.insert(addr.clone(), c.clone());
                c
            }
        };
        Ok(ClusterClient::new(channel).max_decoding_message_size(ANSWER_BYTES_MAX))
    }

    /// Every other node's view of the cluster (those that answer).
    pub async fn statuses(&self, addresses: &NodeAddresses, me: u64) -> Vec<ClusterStatus> {
        let asks =
            addresses
                .all()
                .into_iter()
                .filter(|(id, _)| *id != me)
                .map(|(_, spec)| async move {
                    self.status(crate::addresses::client_address(&spec))
                        .await
                        .ok()
                });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Node `addr`'s view of the cluster.
    pub async fn status(&self, addr: &str) -> Result<ClusterStatus, Error> {
        let answer = self.client(addr)?.status(ClusterStatusRequest {}).await;
        answer
            .map(tonic::Response::into_inner)
            .map_err(|s| Error::Unavailable(format!("node at {addr}: {}", s.message())))
    }

    /// The segments among `ids` that node `addr`'s replicas hold.
    pub async fn segment_views(
        &self,
        addr: &str,
        ids: Vec<u64>,
    ) -> Result<Vec<SegmentInfo>, Error> {
        let answer = self
            .client(addr)?
            .segment_views(SegmentViewsRequest { segment_ids: ids })
            .await;
        answer
            .map(|r| r.into_inner().segments)
            .map_err(|s| Error::Unavailable(format!("node at {addr}: {}", s.message())))
    }

    /// Asks node `addr` (the leader of their container) to merge, drop or
    /// forget transaction `parts`.
    pub async fn finish_parts(
        &self,
        addr: &str,
        action: Action,
        parts: &[crate::controller::txns::TxnPart],
    ) -> Result<(), Error> {
        let request = FinishPartsRequest {
            action: action as i32,
            parts: parts
                .iter()
                .map(|p| FinishPart {
                    segment_id: p.segment_id,
                    transaction_segment_id: p.txn_segment_id,
                })
                .collect(),
        };
        let answer = self.client(addr)?.finish_transaction_parts(request).await;
        answer
            .map(|_| ())
            .map_err(|s| Error::Unavailable(format!("node at {addr}: {}", s.message())))
    }

    /// Asks node `addr` to move transaction `part` to `targets`.
    pub async fn move_part(
        &self,
        addr: &str,
        part: &crate::controller::txns::TxnPart,
        targets: &[MoveTarget],
    ) -> Result<(), Error> {
        let request = MovePartRequest {
            part: Some(FinishPart {
                segment_id: part.segment_id,
                transaction_segment_id: part.txn_segment_id,
            }),
            targets: targets.to_vec(),
        };
        let answer = self.client(addr)?.move_transaction_part(request).await;
        answer
            .map(|_| ())
            .map_err(|s| Error::Unavailable(format!("node at {addr}: {}", s.message())))
    }

    /// Asks node `addr` to append copied events to a transaction part.
    pub async fn append_part(&self, addr: &str, request: AppendPartRequest) -> Result<(), Error> {
        let answer = self.client(addr)?.append_transaction_part(request).await;
        answer
            .map(|_| ())
            .map_err(|s| Error::Unavailable(format!("node at {addr}: {}", s.message())))
    }

    /// Asks node `addr` (the leader of its container) to append a node's
    /// own writer's batch; answers whether it was a duplicate.
    pub async fn append_internal(
        &self,
        addr: &str,
        request: InternalAppendRequest,
    ) -> Result<bool, Error> {
        let answer = self.client(addr)?.append_internal(request).await;
        answer
            .map(|r| r.into_inner().duplicate)
            .map_err(|s| Error::Unavailable(format!("node at {addr}: {}", s.message())))
    }

    /// Asks node `addr` (the metadata leader) to auto-create Kafka topic
    /// `topic`.
    pub async fn create_kafka_topic(&self, addr: &str, topic: &str) -> Result<(), Error> {
        let request = aquifer_proto::v1::KafkaTopicRequest {
            topic: topic.to_string(),
        };
        let answer = self.client(addr)?.create_kafka_topic(request).await;
        answer
            .map(|_| ())
            .map_err(|s| Error::Unavailable(format!("node at {addr}: {}", s.message())))
    }

    /// Asks node `addr` (the leader of its container) for a segment's last
    /// event and a writer's last event number there.
    pub async fn segment_tail(
        &self,
        addr: &str,
        request: SegmentTailRequest,
    ) -> Result<SegmentTailResponse, Error> {
        let answer = self.client(addr)?.segment_tail(request).await;
        answer
            .map(tonic::Response::into_inner)
            .map_err(|s| Error::Unavailable(format!("node at {addr}: {}", s.message())))
    }
}
