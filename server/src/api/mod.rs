//! gRPC services (tonic): stream admin, append sessions, segment reads,
//! single-request segment operations (conditional appends, truncation),
//! reader groups, transactions, plus the standard health service and server reflection.
//!
//! Each service is a thin layer: it checks the request, calls the node, and
//! maps `crate::error::Error` to a status in one place (`error.rs`). Services
//! never hold container state themselves.

mod admin;
mod append;
mod cluster;
mod connections;
mod groups;
mod raft;
mod read;
mod segments;
mod txns;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aquifer_proto::v1::append_server::AppendServer;
use aquifer_proto::v1::cluster_server::ClusterServer;
use aquifer_proto::v1::raft_transport_server::RaftTransportServer;
use aquifer_proto::v1::read_server::ReadServer;
use aquifer_proto::v1::reader_groups_server::ReaderGroupsServer;
use aquifer_proto::v1::segments_server::SegmentsServer;
use aquifer_proto::v1::stream_admin_server::StreamAdminServer;
use aquifer_proto::v1::transactions_server::TransactionsServer;

use crate::node::Node;

/// Concurrent requests (streams) per client connection.
const REQUESTS_PER_CONNECTION_MAX: usize = 1024;

/// Serves the node's services on `listener` until `shutdown` resolves.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let max = node.config.message_bytes_max();
    let connections_max = node.config.connections_max;
    let open_connections = node.metrics.connections.clone();
    let admin = StreamAdminServer::new(admin::AdminService::new(node.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let append = AppendServer::new(append::AppendService::new(node.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let raft = RaftTransportServer::new(raft::RaftService::new(node.clone()))
        .max_decoding_message_size(aquifer_proto::wire::RAFT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(aquifer_proto::wire::RAFT_MESSAGE_BYTES_MAX);
    let segments = SegmentsServer::new(segments::SegmentsService::new(node.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    // Between nodes too, events travel (a moved transaction part's).
    let cluster = ClusterServer::new(cluster::ClusterService::new(node.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let groups = ReaderGroupsServer::new(groups::GroupService::new(node.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let txns = TransactionsServer::new(txns::TxnService::new(node.clone()));
    let read = ReadServer::new(read::ReadService::new(node))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    // SERVING once the node is open (it is by now), NOT_SERVING from the
    // moment shutdown begins, so load balancers stop sending work first.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<StreamAdminServer<admin::AdminService>>()
        .await;
    health
        .set_serving::<AppendServer<append::AppendService>>()
        .await;
    health.set_serving::<ReadServer<read::ReadService>>().await;
    health
        .set_serving::<SegmentsServer<segments::SegmentsService>>()
        .await;
    health
        .set_serving::<ReaderGroupsServer<groups::GroupService>>()
        .await;
    health
        .set_serving::<TransactionsServer<txns::TxnService>>()
        .await;
    let shutdown = async move {
        shutdown.await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    };
    let reflection = match tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(aquifer_proto::v1::FILE_DESCRIPTOR_SET)
        .build_v1()
    {
        Ok(service) => Some(service),
        Err(e) => {
            tracing::warn!(error = %e, "gRPC reflection is off: the descriptor set does not load");
            None
        }
    };
    // Our own listener: the builder's TCP settings do not reach it, so set
    // them here (without TCP_NODELAY small acks wait on delayed ACKs).
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let incoming = connections::limit(incoming, connections_max, open_connections);
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(REQUESTS_PER_CONNECTION_MAX)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(admin)
        .add_service(append)
        .add_service(read)
        .add_service(segments)
        .add_service(groups)
        .add_service(txns)
        .add_service(raft)
        .add_service(cluster)
        .add_service(health_service)
        .add_optional_service(reflection)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// The address a listener actually bound (for port 0).
pub fn local_addr(listener: &tokio::net::TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
