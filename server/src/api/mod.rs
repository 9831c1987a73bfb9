//! gRPC services (tonic): stream admin, append sessions, segment reads.
//!
//! Each service is a thin layer: it checks the request, calls the node, and
//! maps `crate::error::Error` to a status in one place (`error.rs`). Services
//! never hold container state themselves.

mod admin;
mod append;
mod connections;
mod read;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aquifer_proto::v1::append_server::AppendServer;
use aquifer_proto::v1::read_server::ReadServer;
use aquifer_proto::v1::stream_admin_server::StreamAdminServer;

use crate::node::Node;

/// Concurrent requests (streams) per client connection.
const REQUESTS_PER_CONNECTION_MAX: usize = 1024;

/// Serves the node's services on `listener` until `shutdown` resolves.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let max = node.config.max_message_bytes();
    let max_connections = node.config.max_connections;
    let admin = StreamAdminServer::new(admin::AdminService::new(node.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let append = AppendServer::new(append::AppendService::new(node.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let read = ReadServer::new(read::ReadService::new(node))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    // Our own listener: the builder's TCP settings do not reach it, so set
    // them here (without TCP_NODELAY small acks wait on delayed ACKs).
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let incoming = connections::limit(incoming, max_connections);
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(REQUESTS_PER_CONNECTION_MAX)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(admin)
        .add_service(append)
        .add_service(read)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// The address a listener actually bound (for port 0).
pub fn local_addr(listener: &tokio::net::TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
