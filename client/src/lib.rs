//! aquifer-client: the async Rust client of Aquifer.
//!
//! - [`Client`]: one connection to a node, cheap to clone;
//! - [`Admin`]: create, list, describe, seal and delete streams;
//! - [`EventWriter`]: batching, exactly-once writer (per writer id), with
//!   back-pressure and retries;
//! - [`EventReader`] / [`SegmentReader`]: ordered, optionally tailing reads.
//!
//! Module map: `conn` (channel, limits, backoff), `name` (stream names),
//! `error`, `admin`, `routing` (key hash), `batch` (pure batching and
//! numbering), `session` (one append session per segment), `writer`,
//! `reader`.
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![warn(missing_docs)]

mod admin;
mod batch;
mod conn;
mod direct;
mod error;
mod name;
mod reader;
mod routing;
mod scan;
mod session;
mod writer;

use std::sync::Arc;

pub use aquifer_proto::v1 as proto;
pub use proto::{Retention, SegmentInfo, StreamInfo};

pub use admin::Admin;
pub use batch::UNKNOWN_OFFSET;
pub use conn::MAX_MESSAGE_BYTES;
pub use error::Error;
pub use name::{StreamName, MAX_NAME_LEN};
pub use reader::{Event, EventReader, ReaderConfig, SegmentReader, StartFrom};
pub use routing::{fmix64, fnv1a_64, key_position};
pub use scan::{BatchClient, SegmentRange, StreamCut};
pub use writer::{
    EventWriter, PendingWrite, Position, WriterConfig, MAX_CLIENT_EVENT_BYTES, MAX_WRITER_ID_BYTES,
};

/// A connection to one Aquifer node; clone it freely (clones share the
/// connection).
///
/// ```no_run
/// use aquifer_client::{Client, ReaderConfig, StreamName, WriterConfig};
///
/// # async fn example() -> Result<(), aquifer_client::Error> {
/// let client = Client::connect("127.0.0.1:7450").await?;
/// let name: StreamName = "analytics/clicks".parse()?;
/// client.admin().create_stream(&name, 4).await?;
///
/// let writer = client.writer(&name, WriterConfig::default()).await?;
/// let pending = writer.write_event(Some("user-42"), "clicked").await?;
/// let position = pending.await?; // durable now
/// println!("written at {position:?}");
/// writer.close().await?;
///
/// let mut reader = client.reader(&name, ReaderConfig::default()).await?;
/// while let Some(event) = reader.next().await? {
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
    /// Connects to a node at `"host:port"` or `"http://host:port"`, eagerly
    /// (waits up to 5 s): [`Error::Unavailable`] ("cannot reach aquifer at
    /// ADDR: ...") when nothing answers. Later calls reconnect by
    /// themselves if the connection breaks.
    ///
    /// In a cluster, any node will do: the client learns the others from it
    /// and follows each group's leader by itself (redirects, failover).
    pub async fn connect(addr: &str) -> Result<Client, Error> {
        let conn = conn::Nodes::with_seed(conn::Conn::connect(addr).await?);
        // Older servers and test doubles have no Cluster service: then this
        // node is all the client knows.
        let mut cluster = proto::cluster_client::ClusterClient::new(conn.channel().1);
        let mut req = tonic::Request::new(proto::ClusterStatusRequest {});
        req.set_timeout(conn::ADMIN_TIMEOUT);
        if let (Ok(status), Some(nodes)) = (cluster.status(req).await, conn.nodes()) {
            for node in status.into_inner().nodes {
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
    pub async fn cluster_status(&self) -> Result<proto::ClusterStatus, Error> {
        let mut cluster = proto::cluster_client::ClusterClient::new(self.conn.channel().1);
        let mut req = tonic::Request::new(proto::ClusterStatusRequest {});
        req.set_timeout(conn::ADMIN_TIMEOUT);
        Ok(cluster.status(req).await?.into_inner())
    }

    /// Like [`Client::cluster_status`], but each group as its leader sees
    /// it: asks every node the connected one lists (a node holds only the
    /// groups placed on it, so no single node knows every group's state).
    /// A group whose leader does not answer keeps the connected node's row.
    pub async fn cluster_view(&self) -> Result<proto::ClusterStatus, Error> {
        let mut view = self.cluster_status().await?;
        let asks = view
            .nodes
            .iter()
            .filter(|n| n.node_id != view.node_id)
            .map(|n| node_status(n.address.clone()));
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
        Ok(view)
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

    /// A reader of every segment of `stream`, starting where `config.from`
    /// says (offsets taken from a `describe_stream` now).
    pub async fn reader(
        &self,
        stream: &StreamName,
        config: ReaderConfig,
    ) -> Result<EventReader, Error> {
        let info = self.admin().describe_stream(stream).await?;
        let mut segments = info.segments;
        segments.sort_by_key(|s| s.number);
        EventReader::new(&self.conn, &segments, &config)
    }

    /// Batch scans: stream cuts, segment ranges, bounded range reads.
    pub fn batch(&self) -> BatchClient {
        BatchClient::new(self.conn.clone(), self.admin())
    }

    /// A reader of one segment from `offset` (an event boundary), tailing
    /// it with `follow`.
    pub async fn segment_reader(
        &self,
        segment_id: u64,
        offset: u64,
        follow: bool,
    ) -> Result<SegmentReader, Error> {
        Ok(SegmentReader::new(&self.conn, segment_id, offset, follow))
    }
}

/// Node `addr`'s own view of the cluster; None if it does not answer soon.
async fn node_status(addr: String) -> Option<proto::ClusterStatus> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(std::time::Duration::from_secs(1));
    let mut cluster = proto::cluster_client::ClusterClient::new(endpoint.connect_lazy());
    let mut req = tonic::Request::new(proto::ClusterStatusRequest {});
    req.set_timeout(std::time::Duration::from_secs(2));
    cluster
        .status(req)
        .await
        .ok()
        .map(tonic::Response::into_inner)
}
