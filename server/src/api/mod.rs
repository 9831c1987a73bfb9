//! gRPC services (tonic) on the node's two ports. The client port: stream
//! admin, append sessions, segment reads, single-request segment operations
//! (conditional appends, truncation), reader groups, transactions, access
//! control, cluster status and membership, the standard health service and
//! server reflection. The peer port: raft, snapshots and the calls nodes
//! make of each other; clients never reach it (raft on the client port
//! answers UNIMPLEMENTED).
//!
//! Each service is a thin layer: it checks the request, calls the node, and
//! maps `crate::error::Error` to a status in one place (`error.rs`). Services
//! never hold container state themselves.

mod access;
mod admin;
pub(crate) mod append;
mod authn;
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

use aquifer_proto::v1::access_server::AccessServer;
use aquifer_proto::v1::append_server::AppendServer;
use aquifer_proto::v1::cluster_server::ClusterServer;
use aquifer_proto::v1::raft_transport_server::RaftTransportServer;
use aquifer_proto::v1::read_server::ReadServer;
use aquifer_proto::v1::reader_groups_server::ReaderGroupsServer;
use aquifer_proto::v1::segments_server::SegmentsServer;
use aquifer_proto::v1::stream_admin_server::StreamAdminServer;
use aquifer_proto::v1::transactions_server::TransactionsServer;

use tonic::service::interceptor::InterceptedService;

use crate::node::Node;

/// Concurrent requests (streams) per client connection.
const REQUESTS_PER_CONNECTION_MAX: usize = 1024;
/// Open connections on the peer port: the other nodes need a few each
/// (raft, snapshots, calls); the rest is headroom for restarts.
const PEER_CONNECTIONS_MAX: usize = 256;

/// Serves the client services on `listener` and, in a cluster, the peer
/// services on `peer_listener`, until `shutdown` resolves.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    peer_listener: Option<tokio::net::TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let shutdown = futures::FutureExt::shared(shutdown);
    let peers = peer_listener.map(|l| serve_peers(node.clone(), l, shutdown.clone()));
    let clients = serve_clients(node, listener, shutdown);
    match peers {
        Some(peers) => futures::try_join!(clients, peers).map(|_| ()),
        None => clients.await,
    }
}

/// The builder both ports share: keepalives, and our own TCP settings
/// (the builder's do not reach a listener we bound; without TCP_NODELAY
/// small acks wait on delayed ACKs).
fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}

fn builder(
    tls: Option<&tonic::transport::ServerTlsConfig>,
    port: &str,
    config: &crate::config::ServerConfig,
) -> Result<tonic::transport::Server, tonic::transport::Error> {
    let mut b = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(REQUESTS_PER_CONNECTION_MAX)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = tls {
        // A TLS handshake has the connection handshake's time too: a
        // ClientHello and silence must not hold a slot until idle.
        let handshake = Duration::from_millis(config.handshake_timeout_ms);
        b = b
            .tls_config(tls.clone().timeout(handshake))
            .inspect_err(|e| {
                tracing::error!(port, error = %e, "the TLS certificate or key does not load");
            })?;
    }
    Ok(b)
}

/// The client port: every client service, each call authenticated first.
async fn serve_clients(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let max = node.config.message_bytes_max();
    let connection_rules = connections::Rules::of(&node.config, &node.metrics);
    let auth = authn::Authenticate { node: node.clone() };
    fn guarded<S>(
        svc: S,
        auth: &authn::Authenticate,
    ) -> InterceptedService<S, authn::Authenticate> {
        InterceptedService::new(svc, auth.clone())
    }
    let admin = StreamAdminServer::new(admin::AdminService::new(node.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let append = AppendServer::new(append::AppendService::new(node.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let segments = SegmentsServer::new(segments::SegmentsService::new(node.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let cluster = ClusterServer::new(cluster::ClusterService::new(node.clone(), Port::Client));
    let groups = ReaderGroupsServer::new(groups::GroupService::new(node.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let txns = TransactionsServer::new(txns::TxnService::new(node.clone()));
    let access = AccessServer::new(access::AccessService::new(node.clone()));
    let read = ReadServer::new(read::ReadService::new(node.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    // SERVING once the node is open (it is by now), NOT_SERVING from the
    // moment shutdown begins, so load balancers stop sending work first.
    // Health is the one service that needs no credentials.
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
        Ok(service) => Some(guarded(service, &auth)),
        Err(e) => {
            tracing::warn!(error = %e, "gRPC reflection is off: the descriptor set does not load");
            None
        }
    };
    let (incoming, count_requests) = connections::guard(incoming(listener), connection_rules);
    builder(node.tls.client.as_ref(), "client", &node.config)?
        .layer(count_requests)
        .add_service(guarded(admin, &auth))
        .add_service(guarded(append, &auth))
        .add_service(guarded(read, &auth))
        .add_service(guarded(segments, &auth))
        .add_service(guarded(groups, &auth))
        .add_service(guarded(txns, &auth))
        .add_service(guarded(access, &auth))
        .add_service(guarded(cluster, &auth))
        .add_service(health_service)
        .add_optional_service(reflection)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// The peer port: raft, snapshots and the calls nodes make of each other
/// (admin calls forwarded to the metadata leader among them). Mutual TLS
/// when `peer_tls` is set: a caller without the cluster's certificate
/// never gets a request through.
async fn serve_peers(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let max = node.config.message_bytes_max();
    let raft = RaftTransportServer::new(raft::RaftService::new(node.clone()))
        .max_decoding_message_size(aquifer_proto::wire::RAFT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(aquifer_proto::wire::RAFT_MESSAGE_BYTES_MAX);
    // Between nodes too, events travel (a moved transaction part's).
    let cluster = ClusterServer::new(cluster::ClusterService::new(node.clone(), Port::Peer))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let admin = StreamAdminServer::new(admin::AdminService::new(node.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let rules = connections::Rules::for_peers(&node.config, PEER_CONNECTIONS_MAX);
    let (incoming, count_requests) = connections::guard(incoming(listener), rules);
    builder(node.tls.peer_server.as_ref(), "peer", &node.config)?
        .layer(count_requests)
        .add_service(raft)
        .add_service(cluster)
        .add_service(InterceptedService::new(admin, authn::Forwarded))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Which port a service instance answers on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    Client,
    Peer,
}

/// The address a listener actually bound (for port 0).
pub fn local_addr(listener: &tokio::net::TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
