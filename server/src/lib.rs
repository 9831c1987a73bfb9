//! aquifer-server: the segment store of one node.
//!
//! Data path (see DESIGN.md): `api` takes appends and proposes them to a
//! `container`'s raft group, whose entries the `log` makes durable; applied
//! bytes go to the `cache` tail buffers, the `tier` storage writer moves them
//! to tier-2, and `read` serves them back from tail buffer, cache or tier-2.
#![deny(clippy::unwrap_used)]

pub mod config;

pub use config::ServerConfig;

/// Runs a node until `shutdown` resolves.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let _ = (config, shutdown);
    Err("not yet".into())
}
