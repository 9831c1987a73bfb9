//! The cluster: which nodes there are, where the groups' replicas belong
//! (the placement, kept in the metadata: [`crate::controller::placement`]),
//! and the raft transport between them.
//!
//! Every node starts every group (a node that holds no replica of one keeps
//! it blank); raft messages of all groups to one node go out in batches,
//! one unary gRPC call (`RaftTransport.Send`) per batch ([`Transport`]), and
//! snapshots in pieces on a call of their own. A lost or refused batch
//! is dropped: raft retransmits, so the transport never blocks a group's
//! thread and never buffers without bound.

pub mod balance;
pub mod members;
pub mod peers;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use aquifer_proto::v1::raft_transport_client::RaftTransportClient;
use aquifer_proto::v1::{Faults, RaftBatch, RaftEnvelope, SnapshotPiece};
use protobuf::Message as _;
use raft::prelude::Message;
use tokio::sync::mpsc;
use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::addresses::{peer_address, NodeAddresses};
use crate::group::{Outbox, SnapshotSent};
use crate::log::decode_raft;

/// Messages queued per destination node; past it they are dropped.
const PEER_QUEUE_MAX: usize = 4096;
/// One batch to a node holds at most this many messages or bytes.
const BATCH_MESSAGES_MAX: usize = 512;
const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest snapshot accepted from a peer (metadata and a container's
/// unflushed tail, bounded by the tail budget).
pub const SNAPSHOT_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;
/// Snapshot data per piece.
const SNAPSHOT_PIECE_BYTES: usize = 1024 * 1024;
// A batch holds at least one whole raft message, and fits a gRPC message
// between nodes; so does a snapshot piece.
const _: () = assert!(crate::group::RAFT_MSG_BYTES_MAX as usize <= BATCH_BYTES_MAX);
const _: () = assert!(BATCH_BYTES_MAX <= aquifer_proto::wire::RAFT_MESSAGE_BYTES_MAX);
const _: () = assert!(SNAPSHOT_PIECE_BYTES < aquifer_proto::wire::RAFT_MESSAGE_BYTES_MAX);
/// A batch that takes longer is given up (raft resends).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// A node is "up" when a batch to it went through this recently (leaders
/// heartbeat every 200 ms).
const UP_WITHIN: Duration = Duration::from_secs(3);
/// Pause after a failed send before the next batch to that node.
const SEND_BACKOFF: Duration = Duration::from_millis(100);

/// How a node looks from this one, by its raft traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeHealth {
    /// This node.
    Myself,
    /// A batch to it went through within [`UP_WITHIN`].
    Up,
    /// Batches to it went through once, but not lately.
    Unreachable,
    /// Nothing sent to it went through yet.
    Unknown,
}

impl NodeHealth {
    /// The word `cluster status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeHealth::Myself => "self",
            NodeHealth::Up => "up",
            NodeHealth::Unreachable => "unreachable",
            NodeHealth::Unknown => "unknown",
        }
    }
}

/// Sends raft messages to the other nodes, one task and queue per node.
pub struct Transport {
    me: u64,
    /// The node's runtime: groups call `send` from threads of their own.
    runtime: tokio::runtime::Handle,
    /// When a batch to each node last went through.
    delivered: Arc<RwLock<HashMap<u64, Instant>>>,
    /// Each other node's queue (and its address, to notice a move).
    peers: RwLock<HashMap<u64, (String, mpsc::Sender<RaftEnvelope>)>>,
    /// Testing: nodes whose messages (or only snapshots) are dropped.
    faults: RwLock<Faults>,
    /// Where each node is (snapshots are sent to the address known then).
    addresses: NodeAddresses,
    /// Mutual TLS to the peer ports (None: plaintext).
    tls: Option<ClientTlsConfig>,
}

impl Transport {
    /// Starts a sender task per other node (needs a tokio runtime).
    pub fn start(
        node_id: u64,
        addresses: NodeAddresses,
        tls: Option<ClientTlsConfig>,
    ) -> Arc<Transport> {
        let transport = Arc::new(Transport {
            me: node_id,
            runtime: tokio::runtime::Handle::current(),
            delivered: Arc::default(),
            peers: RwLock::default(),
            faults: RwLock::default(),
            addresses,
            tls,
        });
        transport.sync(&transport.addresses.all());
        transport
    }

    /// Matches the sender tasks to `nodes` (address specs): starts one per
    /// new node (or new peer address); a dropped queue ends its task.
    pub fn sync(&self, nodes: &BTreeMap<u64, String>) {
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        let nodes: BTreeMap<u64, String> = nodes
            .iter()
            .map(|(&id, spec)| (id, peer_address(spec)))
            .collect();
        peers.retain(|id, (addr, _)| nodes.get(id) == Some(addr));
        for (&id, addr) in &nodes {
            if id == self.me || peers.contains_key(&id) {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
            self.runtime.spawn(send_loop(
                self.me,
                id,
                peer_endpoint(addr, self.tls.as_ref()),
                rx,
                self.delivered.clone(),
            ));
            peers.insert(id, (addr.clone(), tx));
        }
    }

    /// Testing: from now on drop what `faults` names (empty lists: heal).
    pub fn set_faults(&self, faults: Faults) {
        *self.faults.write().unwrap_or_else(|p| p.into_inner()) = faults;
    }

    pub fn faults(&self) -> Faults {
        self.faults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether fault injection drops a message to `to` (`snapshot`: a
    /// snapshot).
    fn dropped(&self, to: u64, snapshot: bool) -> bool {
        let faults = self.faults.read().unwrap_or_else(|p| p.into_inner());
        faults.drop_to.contains(&to) || (snapshot && faults.drop_snapshots_to.contains(&to))
    }

    /// This node's view of node `id`: "self", "up" (messages went through
    /// in the last [`UP_WITHIN`]), "unreachable", or "unknown".
    pub fn health(&self, id: u64) -> NodeHealth {
        if id == self.me {
            return NodeHealth::Myself;
        }
        match self
            .delivered
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            Some(at) if at.elapsed() <= UP_WITHIN => NodeHealth::Up,
            Some(_) => NodeHealth::Unreachable,
            None => NodeHealth::Unknown,
        }
    }

    /// Whether raft messages to node `id` go through.
    pub fn is_up(&self, id: u64) -> bool {
        self.health(id) == NodeHealth::Up
    }
}

impl Outbox for Transport {
    fn send(&self, group: &str, msg: Message) -> bool {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        let Some((_, peer)) = peers.get(&msg.to) else {
            return false;
        };
        if self.dropped(msg.to, false) {
            return false;
        }
        let Ok(message) = msg.write_to_bytes() else {
            return false;
        };
        peer.try_send(RaftEnvelope {
            group: group.to_string(),
            message: message.into(),
        })
        .is_ok()
    }

    /// Rare and large: a stream of its own, so it neither waits behind nor
    /// holds up the batches of heartbeats and appends.
    fn send_snapshot(&self, group: &str, msg: Message, sent: SnapshotSent) {
        if self.dropped(msg.to, true) {
            tracing::warn!(group, node = msg.to, "fault injection: dropping a snapshot");
            sent(false);
            return;
        }
        match self.addresses.peer(msg.to) {
            Some(addr) => {
                let endpoint = peer_endpoint(&addr, self.tls.as_ref());
                let send = send_snapshot(self.me, group.to_string(), endpoint, msg);
                self.runtime.spawn(async move { sent(send.await) });
            }
            None => sent(false),
        }
    }
}

/// How this node reaches the peer port at `addr`: TLS with the cluster CA
/// and this node's certificate when configured. An address that is no URI
/// fails every call (with its reason).
pub fn peer_endpoint(addr: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("peer address {addr}: {e}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true);
    match tls {
        Some(tls) => endpoint
            .tls_config(tls.clone())
            .map_err(|e| format!("peer TLS for {addr}: {e}")),
        None => Ok(endpoint),
    }
}

async fn send_loop(
    from: u64,
    to: u64,
    endpoint: Result<Endpoint, String>,
    mut rx: mpsc::Receiver<RaftEnvelope>,
    delivered: Arc<RwLock<HashMap<u64, Instant>>>,
) {
    let endpoint = match endpoint {
        Ok(e) => e.timeout(SEND_TIMEOUT),
        Err(e) => {
            tracing::error!(node = to, error = %e, "no raft messages go to this node");
            return;
        }
    };
    let addr = endpoint.uri().to_string();
    let mut client = RaftTransportClient::new(endpoint.connect_lazy())
        .max_encoding_message_size(aquifer_proto::wire::RAFT_MESSAGE_BYTES_MAX)
        .max_decoding_message_size(aquifer_proto::wire::RAFT_MESSAGE_BYTES_MAX);
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut bytes = first.message.len();
        let mut messages = vec![first];
        while messages.len() < BATCH_MESSAGES_MAX && bytes < BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(m) => {
                    bytes += m.message.len();
                    messages.push(m);
                }
                Err(_) => break,
            }
        }
        match client.send(RaftBatch { from, messages }).await {
            Ok(_) => {
                delivered
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(to, Instant::now());
                if failing {
                    tracing::info!(node = to, addr, "raft messages reach the node again");
                    failing = false;
                }
            }
            Err(status) => {
                if !failing {
                    tracing::warn!(node = to, addr, error = %status.message(), "cannot send raft messages; retrying");
                    failing = true;
                }
                tokio::time::sleep(SEND_BACKOFF).await;
            }
        }
    }
}

/// Streams one snapshot message to `endpoint` in pieces; whether it arrived.
async fn send_snapshot(
    from: u64,
    group: String,
    endpoint: Result<Endpoint, String>,
    mut msg: Message,
) -> bool {
    let data = std::mem::take(&mut msg.mut_snapshot().data);
    let (to, index) = (msg.to, msg.get_snapshot().get_metadata().index);
    let Ok(message) = msg.write_to_bytes() else {
        return false;
    };
    let first = SnapshotPiece {
        from,
        group: group.clone(),
        message: message.into(),
        data_bytes: data.len() as u64,
        data: bytes::Bytes::new(),
    };
    let pieces = (0..data.len())
        .step_by(SNAPSHOT_PIECE_BYTES)
        .map(move |at| SnapshotPiece {
            data: data.slice(at..(at + SNAPSHOT_PIECE_BYTES).min(data.len())),
            ..SnapshotPiece::default()
        });
    let Ok(endpoint) = endpoint else {
        return false;
    };
    let mut client = RaftTransportClient::new(endpoint.connect_lazy());
    let stream = tokio_stream::iter(std::iter::once(first).chain(pieces));
    match client.send_snapshot(stream).await {
        Ok(_) => {
            tracing::info!(group, node = to, index, "snapshot sent");
            true
        }
        Err(e) => {
            tracing::warn!(group, node = to, index, error = %e.message(), "cannot send a snapshot; raft will retry");
            false
        }
    }
}

/// Decodes a raft message from a peer, allocating nothing a length in it
/// merely claims (see [`decode_raft`]). Its entries then share one copy of
/// `bytes`: not the whole batch it came in, which the entry cache would
/// otherwise keep alive through any one of them. RUSTSEC-2024-0437 (deep
/// recursion in protobuf) is about unknown groups, which protobuf 2 skips
/// without recursing, and messages nest only to raft's own depth.
pub fn decode_message(bytes: &[u8]) -> Option<Message> {
    decode_raft(&bytes::Bytes::copy_from_slice(bytes)).ok()
}
