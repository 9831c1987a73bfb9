//! aquifer-client: the async Rust client of Aquifer.
//!
//! - [`Client`]: one connection to a node (and, in a cluster, to the others
//!   it learns of), cheap to clone; [`ClientBuilder`] for its settings;
//! - [`Admin`]: create, list, describe, scale, seal and delete streams;
//! - [`EventWriter`]: batching, exactly-once writer (per writer id), with
//!   back-pressure and retries; each write resolves to a [`WriteAck`];
//! - [`EventReader`] / [`SegmentReader`]: ordered, optionally tailing reads,
//!   each a [`futures::Stream`] of events;
//! - [`BatchClient`]: stream cuts and parallel bounded range scans;
//! - [`SegmentWriter`]: conditional appends to one segment;
//! - [`StateSynchronizer`]: a typed state shared through a stream, changed
//!   optimistically ([`SyncState`] says how);
//! - [`ReaderGroup`] / [`GroupReader`]: readers sharing a stream's segments,
//!   with checkpoints.
//!
//! Module map: `builder` (connection settings), `conn` (channel, limits,
//! backoff), `name` (stream names), `info` (the client's views of server
//! state), `error`, `admin`, `routing` (key hash), `batch` (pure batching
//! and numbering), `graph` (the successor graph a reader walks), `session` (one append session per segment), `reroute`
//! (the writer's routing table and hand-overs across scales), `writer`,
//! `reader`, `scan`, `direct` (tier-2 reads of a scan), `segment`
//! (conditional appends, calls to a segment's leader), `sync` (the state
//! synchronizer), `group` (reader groups). No generated (prost) type is
//! part of the public API.
//!
//! Runnable examples are in `client/examples/`.
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![warn(missing_docs)]

// The decoders' property tests measure what decoding allocates.
#[cfg(test)]
#[global_allocator]
static ALLOC_PROBE: aquifer_alloc_probe::Probe = aquifer_alloc_probe::Probe;

mod access;
mod admin;
mod batch;
mod builder;
mod conn;
mod direct;
mod error;
mod graph;
mod group;
mod info;
mod name;
mod reader;
mod reroute;
mod routing;
mod scan;
mod segment;
mod session;
mod sync;
mod txn;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use aquifer_proto::v1 as proto;

pub use access::{Grant, Identity};
pub use admin::{Admin, Scale};
pub use aquifer_proto::wire::{CLIENT_MESSAGE_BYTES_MAX, WRITER_ID_BYTES_MAX};
pub use builder::ClientBuilder;
pub use error::{Error, Source};
pub use group::{
    CheckpointInfo, CheckpointState, GroupEvent, GroupReader, GroupReaderInfo, GroupStart,
    ReaderGroup, ReaderGroupConfig, ReaderGroupInfo, SegmentLag,
};
pub use info::{
    ClusterStatus, EpochInfo, GroupStatus, NodeHealth, NodeStatus, Retention, ScalingKind,
    ScalingPolicy, SegmentInfo, StreamInfo,
};
pub use name::{StreamName, NAME_BYTES_MAX};
pub use reader::{Event, EventReader, ReaderConfig, SegmentReader, StartFrom};
pub use routing::{fmix64, fnv1a_64, key_position};
pub use scan::{BatchClient, ScanConfig, SegmentRange, StreamCut};
pub use segment::{Appended, SegmentWriter};
pub use sync::{DecodeError, StateSynchronizer, SyncConfig, SyncState};
pub use txn::{
    KeepAlive, Transaction, TransactionInfo, TransactionPart, TransactionState,
    TransactionalWriter, TRANSACTION_TIMEOUT_DEFAULT,
};
pub use writer::{
    BatchAck, EventWriter, PendingBatch, PendingWrite, Position, WriteAck, WriterConfig,
    CLIENT_EVENT_BYTES_MAX,
};

/// A connection to one Aquifer node; clone it freely (clones share the
/// connection).
///
/// ```no_run
/// use aquifer_client::{Client, ReaderConfig, StreamName, WriterConfig};
/// use futures::TryStreamExt;
///
/// # async fn example() -> Result<(), aquifer_client::Error> {
/// let client = Client::connect("127.0.0.1:7450").await?;
/// let name: StreamName = "analytics/clicks".parse()?;
/// client.admin().create_stream(&name, 4).await?;
///
/// let writer = client.writer(&name, WriterConfig::default()).await?;
/// let pending = writer.write_event(Some("user-42"), "clicked").await?;
/// let ack = pending.await?; // durable now
/// println!("written to segment {} at {:?}", ack.segment_id, ack.offset);
/// writer.close().await?;
///
/// let mut reader = client.reader(&name, ReaderConfig::default()).await?;
/// while let Some(event) = reader.try_next().await? {
///     println!("{:?}: {:?}", event.routing_key, event.payload);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    conn: Arc<conn::Conn>,
}

impl Client {
    /// Settings for connecting to `addr` (`"host:port"` or
    /// `"http://host:port"`): timeouts, retry backoff.
    pub fn builder(addr: &str) -> ClientBuilder {
        ClientBuilder::new(addr)
    }

    /// Connects to a node with the default settings; the short form of
    /// `Client::builder(addr).connect().await` (see
    /// [`ClientBuilder::connect`]).
    pub async fn connect(addr: &str) -> Result<Client, Error> {
        Client::builder(addr).connect().await
    }

    pub(crate) async fn from_settings(
        addr: &str,
        settings: Arc<conn::Settings>,
    ) -> Result<Client, Error> {
        let timeout = settings.connect_timeout;
        let conn = conn::Nodes::with_seed(conn::Conn::connect(addr, settings).await?);
        // The first answer is part of connecting: a node whose port takes
        // the connection but never answers (its accept backlog, a flood) is
        // unreachable, not slow. Older servers and test doubles have no
        // Cluster service: then this node is all the client knows.
        let status = tokio::time::timeout(timeout, raw_status(&conn))
            .await
            .map_err(|_| conn::no_answer(conn.addr(), timeout))?;
        if let (Ok(status), Some(nodes)) = (status, conn.nodes()) {
            for node in status.nodes {
                nodes.learn(&node.address);
            }
        }
        Ok(Client { conn })
    }

    /// The address this client connected to.
    pub fn addr(&self) -> &str {
        self.conn.addr()
    }

    /// The cluster's nodes and every group's raft state (leader, replicas,
    /// term, commit and applied index) as the connected node sees them.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, Error> {
        Ok(raw_status(&self.conn).await?.into())
    }

    /// Like [`Client::cluster_status`], but each group as its leader sees
    /// it: asks every node the connected one lists (a node holds only the
    /// groups placed on it, so no single node knows every group's state).
    /// A group whose leader does not answer keeps the connected node's row.
    pub async fn cluster_view(&self) -> Result<ClusterStatus, Error> {
        let mut view = raw_status(&self.conn).await?;
        let asks = view
            .nodes
            .iter()
            .filter(|n| n.node_id != view.node_id)
            .map(|n| node_status(n.address.clone(), self.conn.settings()));
        let others: Vec<proto::ClusterStatus> = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        for group in &mut view.groups {
            let leader = others
                .iter()
                .find(|s| s.node_id == group.leader_id)
                .and_then(|s| s.groups.iter().find(|g| g.name == group.name))
                .filter(|g| g.leader_id == group.leader_id);
            // A node that does not hold the group may know no leader: take
            // the row of any node that leads it by its own account.
            let self_led = || {
                others.iter().find_map(|s| {
                    s.groups
                        .iter()
                        .find(|g| g.name == group.name && g.leader_id == s.node_id)
                })
            };
            if let Some(g) = leader.or_else(self_led) {
                *group = g.clone();
            }
        }
        Ok(view.into())
    }

    /// Stream administration.
    pub fn admin(&self) -> Admin {
        Admin::new(self.conn.clone())
    }

    /// A writer for `stream`: looks up its segments, then opens an append
    /// session per segment when the first event for it comes.
    pub async fn writer(
        &self,
        stream: &StreamName,
        config: WriterConfig,
    ) -> Result<EventWriter, Error> {
        let info = self.admin().describe_stream(stream).await?;
        EventWriter::new(self.conn.clone(), stream.clone(), info.segments, config)
    }

    /// A reader of every segment of `stream`, starting where `config.start`
    /// says (offsets taken from a `describe_stream` now), predecessors
    /// before successors.
    pub async fn reader(
        &self,
        stream: &StreamName,
        config: ReaderConfig,
    ) -> Result<EventReader, Error> {
        let info = self.admin().describe_stream(stream).await?;
        EventReader::new(&self.conn, stream, &info.segments, &config)
    }

    /// Reader group `scope/group` (create it with [`ReaderGroup::create`]).
    pub fn reader_group(&self, scope: &str, group: &str) -> ReaderGroup {
        ReaderGroup::new(self.conn.clone(), scope, group)
    }

    /// Batch scans: stream cuts, segment ranges, bounded range reads.
    pub fn batch(&self) -> BatchClient {
        BatchClient::new(self.conn.clone(), self.admin())
    }

    /// Conditional appends to segment `segment_id` as writer `writer_id`
    /// (1 to 255 bytes; see [`SegmentWriter`] for how its events are
    /// numbered). Nothing is dialled until the first append.
    pub fn segment_writer(
        &self,
        segment_id: u64,
        writer_id: impl Into<String>,
    ) -> Result<SegmentWriter, Error> {
        SegmentWriter::new(self.conn.clone(), segment_id, writer_id.into())
    }

    /// A [`StateSynchronizer`] of `S` kept in `stream`, which is created
    /// (with one segment) if it does not exist; the state it holds is read
    /// before this returns.
    pub async fn state_synchronizer<S: SyncState>(
        &self,
        stream: &StreamName,
        config: SyncConfig,
    ) -> Result<StateSynchronizer<S>, Error> {
        StateSynchronizer::open(self.conn.clone(), stream, config).await
    }

    /// A writer of transactions on `stream` as `writer_id` (1 to 255 bytes,
    /// stable across restarts for exactly-once retries of its writes).
    pub fn transactional_writer(
        &self,
        stream: &StreamName,
        writer_id: impl Into<String>,
    ) -> Result<TransactionalWriter, Error> {
        TransactionalWriter::new(
            self.conn.clone(),
            stream.clone(),
            WriterConfig::default().writer_id(writer_id),
        )
    }

    /// Transaction `id` of `stream`, resumed to write more to it (as a new
    /// writer id), commit or abort it: what a committer does after a
    /// restore, when the process that began it is gone.
    pub async fn transaction(&self, stream: &StreamName, id: &str) -> Result<Transaction, Error> {
        TransactionalWriter::new(self.conn.clone(), stream.clone(), WriterConfig::default())?
            .resume(id)
            .await
    }

    /// A reader of one segment from `offset` (an event boundary), tailing
    /// it with `follow`. Nothing is dialled until it is first polled.
    pub fn segment_reader(&self, segment_id: u64, offset: u64, follow: bool) -> SegmentReader {
        SegmentReader::new(&self.conn, segment_id, offset, follow)
    }
}

/// The connected node's own `ClusterStatus` answer.
async fn raw_status(conn: &conn::Conn) -> Result<proto::ClusterStatus, Error> {
    let mut cluster = proto::cluster_client::ClusterClient::new(conn.channel().1);
    let req = conn.request(proto::ClusterStatusRequest {});
    Ok(cluster.status(req).await?.into_inner())
}

/// Node `addr`'s own view of the cluster; None if it does not answer soon.
/// (A view must not wait long for a node that is down: at most 1 s to
/// dial and 2 s to answer, shorter if the client's settings say so.)
async fn node_status(addr: String, settings: &conn::Settings) -> Option<proto::ClusterStatus> {
    let endpoint = conn::endpoint(&addr, settings)
        .ok()?
        .connect_timeout(settings.connect_timeout.min(Duration::from_secs(1)));
    let channel = tonic::service::interceptor::InterceptedService::new(
        endpoint.connect_lazy(),
        settings.credentials.clone(),
    );
    let mut cluster = proto::cluster_client::ClusterClient::new(channel);
    let mut req = tonic::Request::new(proto::ClusterStatusRequest {});
    req.set_timeout(settings.request_timeout.min(Duration::from_secs(2)));
    cluster
        .status(req)
        .await
        .ok()
        .map(tonic::Response::into_inner)
}
