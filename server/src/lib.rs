//! aquifer-server: the segment store of one node.
//!
//! The design lives in `docs/DESIGN.md` at the repository's root (its module
//! map names each module's job); each module's `//!` says what it owns.
//!
//! Data path: `api` takes appends and submits them to a
//! `container`'s raft group (`group`), whose entries the `log` makes durable;
//! applied bytes go to the segments' tail buffers (budgeted by `cache`), the
//! `tier` storage writer moves them to tier-2, and `read` serves them back
//! from tail buffer, cache or tier-2. `controller` keeps stream metadata in
//! its own group; `node` wires it all together.
#![deny(clippy::unwrap_used)]

pub(crate) mod addresses;
pub(crate) mod api;
pub mod audit;
pub(crate) mod auth;
pub mod cache;
pub(crate) mod cluster;
pub mod config;
pub(crate) mod container;
pub(crate) mod controller;
mod durable;
pub mod error;
pub(crate) mod group;
pub(crate) mod kafka;
pub mod log;
pub(crate) mod metrics;
pub(crate) mod node;
pub(crate) mod read;
pub(crate) mod retention;
pub(crate) mod space;
pub(crate) mod tier;

// The decoders' property tests measure what decoding allocates.
#[cfg(test)]
#[global_allocator]
static ALLOC_PROBE: aquifer_alloc_probe::Probe = aquifer_alloc_probe::Probe;

pub use auth::authn::hash_token;
pub use config::ServerConfig;
pub use error::Error;

/// Runs a node until `shutdown` resolves: replays the logs, then serves
/// gRPC on `config.listen` (clients) and the peer port (other nodes).
pub async fn serve(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen on {}: {e}", config.listen)))?;
    let peer_listener = peer_listener(&config).await?;
    let metrics_listener = metrics_listener(&config).await?;
    let kafka_listener = match config.kafka_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            Error::Unavailable(format!("cannot listen for Kafka clients on {addr}: {e}"))
        })?),
        None => None,
    };
    let node = node::Node::open(config).await?;
    if let Some(listener) = kafka_listener {
        tokio::spawn(kafka::serve(node.clone(), listener));
    }
    let addr = api::local_addr(&listener);
    let peer_addr = peer_listener.as_ref().and_then(api::local_addr);
    if let Some(listener) = metrics_listener {
        tracing::info!(addr = ?api::local_addr(&listener), "serving metrics at /metrics");
        let refreshed = node.clone();
        tokio::spawn(metrics::serve(
            listener,
            std::sync::Arc::new(move || {
                refreshed.refresh_metrics();
                refreshed.metrics.encode()
            }),
            node.closed(),
        ));
    }
    tracing::info!(
        addr = ?addr,
        peer_addr = ?peer_addr,
        tls = node.tls.client.is_some(),
        peer_tls = node.tls.peer_server.is_some(),
        auth = node.auth_on(),
        data_dir = %node.config.data_dir.display(),
        containers = node.config.containers,
        "aquifer serving"
    );
    let closing = node.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down");
        closing.begin_close();
    };
    let served = api::serve(node.clone(), listener, peer_listener, signal).await;
    node.stop().await;
    tracing::info!("aquifer stopped");
    served.map_err(|e| Error::Unavailable(format!("gRPC server failed: {e}")))
}

/// The peer port's listener (a cluster's; a single node has none unless
/// `peer_listen` is set).
async fn peer_listener(config: &ServerConfig) -> Result<Option<tokio::net::TcpListener>, Error> {
    let addr = config
        .peer_listen_addr()
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let Some(addr) = addr else {
        return Ok(None);
    };
    tokio::net::TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|e| Error::Unavailable(format!("cannot listen for peers on {addr}: {e}")))
}

async fn metrics_listener(config: &ServerConfig) -> Result<Option<tokio::net::TcpListener>, Error> {
    let Some(addr) = config.metrics_listen else {
        return Ok(None);
    };
    tokio::net::TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|e| Error::Unavailable(format!("cannot listen for metrics on {addr}: {e}")))
}
