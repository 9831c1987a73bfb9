//! The Kafka listener: the Kafka wire protocol on its own port
//! (`kafka_listen`), so Kafka clients read and write Aquifer streams.
//!
//! A topic is a stream of the scope `kafka_scope` with a fixed segment
//! count; its partitions are the stream's segments in key order; a Kafka
//! offset is an event index (`container::index`). Produce appends through
//! the same budget, floor and container path as the gRPC appends; fetch
//! reads through the same tail buffer, cache and tier-2 as segment reads.
//!
//! This module owns the connections (framing, the request-byte budget,
//! one request at a time per connection, answered in order) and the
//! dispatch by API key; `versions`, `topics`, `configs`, `produce`,
//! `fetch`, `groups` (the group coordinator), `offsets` and `txns` (the
//! transaction coordinator) answer the requests, `records` and
//! `attributes` turn records into events and back, `brokers` says which
//! node is which broker. It never holds segment state, and never writes an
//! event another path could not.

mod attributes;
mod brokers;
mod codes;
mod configs;
mod fetch;
mod groups;
mod membership;
mod offsets;
mod produce;
mod producers;
mod records;
mod topics;
mod txns;
mod versions;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::node::Node;

/// Largest request accepted (Kafka's `socket.request.max.bytes` is 100
/// MiB; a produce request here carries at most a few batches of
/// `event_bytes_max`).
const REQUEST_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Bytes of requests all connections may hold at once: a connection
/// waits for room before it reads a request's body.
const REQUEST_BYTES_IN_FLIGHT_MAX: usize = 256 * 1024 * 1024;

/// What every connection shares.
pub(crate) struct Kafka {
    node: Arc<Node>,
    /// Where this listener is reached (its metadata advertises it).
    advertised: std::net::SocketAddr,
    request_bytes: Semaphore,
    connections: Arc<Semaphore>,
    cursors: fetch::Cursors,
    producer_ids: producers::ProducerIds,
    coordinator: groups::Coordinator,
}

/// Serves the Kafka protocol on `listener` until the node closes.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    let Ok(advertised) = listener.local_addr() else {
        tracing::error!("the Kafka listener has no local address; not serving Kafka");
        return;
    };
    tracing::info!(addr = %advertised, scope = %node.config.kafka_scope, "serving the Kafka protocol");
    let kafka = Arc::new(Kafka {
        node: node.clone(),
        advertised,
        request_bytes: Semaphore::new(REQUEST_BYTES_IN_FLIGHT_MAX),
        connections: Arc::new(Semaphore::new(node.config.kafka_connections_max)),
        cursors: fetch::Cursors::new(),
        producer_ids: producers::ProducerIds::new(node.config.node_id),
        coordinator: groups::Coordinator::new(),
    });
    {
        let kafka = kafka.clone();
        let closed = node.closed();
        tokio::spawn(async move {
            tokio::select! {
                () = kafka.run_coordinator() => {}
                _ = closed => {}
            }
        });
    }
    let closed = node.closed();
    tokio::pin!(closed);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut closed => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving
                    // the connections there are.
                    tracing::warn!(error = %e, "Kafka listener cannot accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = kafka.connections.clone().try_acquire_owned() else {
            tracing::warn!(
                %peer,
                open = node.config.kafka_connections_max,
                "Kafka connection refused: kafka_connections_max are open"
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let kafka = kafka.clone();
        let closed = node.closed();
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                r = kafka.connection(stream, peer) => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "Kafka connection closed");
                },
                _ = closed => {}
            }
        });
    }
}

/// Why a connection ends.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("request of {0} bytes: the most accepted is {REQUEST_BYTES_MAX}")]
    Oversize(i64),
    #[error("undecodable request: {0}")]
    Malformed(String),
    #[error("response does not encode (a bug): {0}")]
    Encode(String),
    #[error("{0:?} version {1} is not supported")]
    Unsupported(ApiKey, i16),
}

impl Kafka {
    async fn connection(
        &self,
        stream: TcpStream,
        peer: std::net::SocketAddr,
    ) -> Result<(), ConnectionError> {
        let (rd, wr) = stream.into_split();
        let (mut rd, mut wr) = (BufReader::new(rd), BufWriter::new(wr));
        loop {
            let len = match rd.read_i32().await {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let len = usize::try_from(len)
                .ok()
                .filter(|n| *n <= REQUEST_BYTES_MAX)
                .ok_or(ConnectionError::Oversize(i64::from(len)))?;
            // Fits: at most REQUEST_BYTES_MAX, far below u32::MAX.
            let _room = self
                .request_bytes
                .acquire_many(len as u32)
                .await
                .map_err(|_| ConnectionError::Malformed("shutting down".into()))?;
            let mut body = BytesMut::zeroed(len);
            rd.read_exact(&mut body).await?;
            if let Some(reply) = self.answer(body.freeze(), peer).await? {
                // Fits: responses are bounded by the request's limits.
                wr.write_u32(reply.len() as u32).await?;
                wr.write_all(&reply).await?;
                wr.flush().await?;
            }
        }
    }

    /// The response to one request, header included (None: the client
    /// expects none, a produce with `acks=0`).
    async fn answer(
        &self,
        mut body: Bytes,
        peer: std::net::SocketAddr,
    ) -> Result<Option<BytesMut>, ConnectionError> {
        if body.len() < 4 {
            return Err(ConnectionError::Malformed("shorter than its header".into()));
        }
        let key = i16::from_be_bytes([body[0], body[1]]);
        let version = i16::from_be_bytes([body[2], body[3]]);
        let api = ApiKey::try_from(key)
            .map_err(|_| ConnectionError::Malformed(format!("unknown API key {key}")))?;
        let supported = versions::supported(api, version);
        if !supported && api != ApiKey::ApiVersions {
            return Err(ConnectionError::Unsupported(api, version));
        }
        // An ApiVersions request of a version newer than ours is answered
        // at version 0 with UNSUPPORTED_VERSION and our ranges, which is
        // how clients learn what to use; its header is not decoded.
        if !supported {
            let correlation = correlation_of(&body)?;
            return reply(correlation, 0, &versions::unsupported()).map(Some);
        }
        let header = RequestHeader::decode(&mut body, api.request_header_version(version))
            .map_err(|e| ConnectionError::Malformed(e.to_string()))?;
        let id = header.correlation_id;
        macro_rules! handle {
            ($req:ty, $f:expr) => {{
                let req = <$req>::decode(&mut body, version)
                    .map_err(|e| ConnectionError::Malformed(e.to_string()))?;
                reply(id, version, &$f(req).await).map(Some)
            }};
        }
        use kafka_protocol::messages as m;
        match api {
            ApiKey::ApiVersions => {
                m::ApiVersionsRequest::decode(&mut body, version)
                    .map_err(|e| ConnectionError::Malformed(e.to_string()))?;
                reply(id, version, &versions::answer()).map(Some)
            }
            ApiKey::Metadata => handle!(m::MetadataRequest, |r| self.metadata(r, version)),
            ApiKey::CreateTopics => {
                handle!(m::CreateTopicsRequest, |r| self.create_topics(r, version))
            }
            ApiKey::DeleteTopics => {
                handle!(m::DeleteTopicsRequest, |r| self.delete_topics(r, version))
            }
            ApiKey::ListOffsets => {
                handle!(m::ListOffsetsRequest, |r| self.list_offsets(r, version))
            }
            ApiKey::Fetch => handle!(m::FetchRequest, |r| self.fetch(r, version)),
            ApiKey::InitProducerId => {
                handle!(m::InitProducerIdRequest, |r| self
                    .init_producer_id(r, version))
            }
            ApiKey::FindCoordinator => handle!(m::FindCoordinatorRequest, |r| self
                .find_coordinator(r, version)),
            ApiKey::JoinGroup => {
                let client = header.client_id.map(|c| c.to_string()).unwrap_or_default();
                let host = format!("/{}", peer.ip());
                handle!(m::JoinGroupRequest, |r| self
                    .join_group(r, version, client, host))
            }
            ApiKey::SyncGroup => handle!(m::SyncGroupRequest, |r| self.sync_group(r, version)),
            ApiKey::Heartbeat => handle!(m::HeartbeatRequest, |r| self.heartbeat(r)),
            ApiKey::LeaveGroup => handle!(m::LeaveGroupRequest, |r| self.leave_group(r, version)),
            ApiKey::OffsetCommit => {
                handle!(m::OffsetCommitRequest, |r| self.offset_commit(r, version))
            }
            ApiKey::OffsetFetch => {
                handle!(m::OffsetFetchRequest, |r| self.offset_fetch(r, version))
            }
            ApiKey::DescribeGroups => {
                handle!(m::DescribeGroupsRequest, |r| self
                    .describe_groups(r, version))
            }
            ApiKey::ListGroups => handle!(m::ListGroupsRequest, |r| self.list_groups(r, version)),
            ApiKey::DeleteGroups => handle!(m::DeleteGroupsRequest, |r| self.delete_groups(r)),
            ApiKey::AddPartitionsToTxn => handle!(m::AddPartitionsToTxnRequest, |r| self
                .add_partitions_to_txn(r, version)),
            ApiKey::AddOffsetsToTxn => handle!(m::AddOffsetsToTxnRequest, |r| self
                .add_offsets_to_txn(r, version)),
            ApiKey::TxnOffsetCommit => handle!(m::TxnOffsetCommitRequest, |r| self
                .txn_offset_commit(r, version)),
            ApiKey::EndTxn => handle!(m::EndTxnRequest, |r| self.end_txn(r, version)),
            ApiKey::DescribeConfigs => handle!(m::DescribeConfigsRequest, |r| self
                .describe_configs(r, version)),
            ApiKey::Produce => {
                let req = m::ProduceRequest::decode(&mut body, version)
                    .map_err(|e| ConnectionError::Malformed(e.to_string()))?;
                let acks = req.acks;
                let response = self.produce(req, version).await;
                if acks == 0 {
                    return Ok(None);
                }
                reply(id, version, &response).map(Some)
            }
            other => Err(ConnectionError::Unsupported(other, version)),
        }
    }
}

/// The correlation id: the 4 bytes after key and version in every
/// request header version.
fn correlation_of(body: &[u8]) -> Result<i32, ConnectionError> {
    body.get(4..8)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(i32::from_be_bytes)
        .ok_or_else(|| ConnectionError::Malformed("no correlation id".into()))
}

/// A response with its header, encoded at `version`.
fn reply<R: Encodable + HeaderVersion>(
    correlation: i32,
    version: i16,
    response: &R,
) -> Result<BytesMut, ConnectionError> {
    let mut out = BytesMut::new();
    let encoded = ResponseHeader::default()
        .with_correlation_id(correlation)
        .encode(&mut out, R::header_version(version))
        .and_then(|()| response.encode(&mut out, version));
    encoded.map_err(|e| ConnectionError::Encode(e.to_string()))?;
    Ok(out)
}
