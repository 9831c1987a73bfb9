//! `aquifer serve`: the node's flags, how they override the TOML config,
//! and running the server until a signal.
//!
//! The override is written once: the flags are serialized as a TOML table
//! whose keys are the config keys (a flag is named after its key), laid
//! over the config file's table, and the result is read as one
//! `ServerConfig`, so a flag behaves exactly as the same key in the file.
//! It must never know a config key the server does not (the server's
//! `deny_unknown_fields` refuses it, and a unit test sets every flag).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use aquifer_server::ServerConfig;
use clap::Args;
use serde::Serialize;

#[derive(Args, Debug, Serialize)]
pub struct ServeArgs {
    /// Directory for log files, snapshots and (by default) tier-2
    /// [default: aquifer-data, or the config file's data_dir].
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Address to listen on for gRPC [default: 127.0.0.1:7450, or the config
    /// file's listen].
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// This node's id in a cluster [default: 1, or the config file's node_id].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<u64>,
    /// Every node of the cluster, this one included, as
    /// ID=HOST:PORT/HOST:PEER_PORT,... (where clients reach each, then where
    /// the other nodes do; /HOST:PEER_PORT omitted: PORT + 1). Omit for a
    /// single node.
    #[arg(long, value_name = "PEERS", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    peers: Vec<String>,
    /// Replicas of each container in a cluster (capped at the number of
    /// nodes; the metadata group votes on up to 3 nodes and every other node
    /// follows it). Set when the cluster first forms, by the node that first
    /// leads it; later changes are ignored [default: 3, or the config file's
    /// replication_factor].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    replication_factor: Option<u32>,
    /// Join a running cluster as a new node: form no groups, and wait for
    /// `aquifer cluster add-node` (run against any member) to add it.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    join: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics [default: off, or the
    /// config file's metrics_listen].
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<SocketAddr>,
    /// Serve the Kafka wire protocol at ADDR: Kafka clients (kcat,
    /// librdkafka, the Java clients) read and write the streams of the
    /// scope `kafka` as topics [default: off, or the config file's
    /// kafka_listen].
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    kafka_listen: Option<SocketAddr>,
    /// Where node-to-node services (raft, snapshots, forwarding) listen, apart
    /// from clients [default in a cluster: the --listen IP at the port of this
    /// node's peer address in --peers; a single node has none].
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_listen: Option<SocketAddr>,
    /// Serve a non-loopback address without TLS and authentication (refused
    /// otherwise, so a node is never exposed open by accident).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    insecure: bool,
    /// TOML configuration file (every key optional; unknown keys are errors).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Number of segment containers on this node, fixed when the data
    /// directory is created [default: 4, or the config file's containers].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    containers: Option<u32>,
}

/// The configuration `args` ask for: the defaults, the config file's keys
/// over them, the flags over both; validated.
pub fn config(args: &ServeArgs) -> anyhow::Result<ServerConfig> {
    let mut table = match &args.config {
        Some(path) => {
            // The server's own reader first, so a bad file is reported as
            // it always was (with the line of the mistake); then the same
            // text as a table to lay the flags over.
            ServerConfig::from_file(path)?;
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            text.parse::<toml::Table>()
                .with_context(|| format!("config file {}", path.display()))?
        }
        None => toml::Table::new(),
    };
    let flags = toml::Table::try_from(args).context("internal error: flags as TOML")?;
    table.extend(flags);
    let config: ServerConfig = toml::Value::Table(table)
        .try_into()
        .context("invalid flags")?;
    config.validate()?;
    Ok(config)
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = config(&args)?;
    let shutdown = shutdown_signal().context("cannot install signal handlers")?;
    tracing::info!(listen = %config.listen, data_dir = %config.data_dir.display(), "starting aquifer");
    aquifer_server::serve(config, shutdown)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(())
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM; the handlers are installed now,
/// so a signal arriving before the server polls the future is not lost.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = int.recv() => tracing::info!("interrupted; shutting down"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(config: Option<PathBuf>) -> ServeArgs {
        ServeArgs {
            data_dir: None,
            listen: Some("127.0.0.1:9".parse().unwrap()),
            node_id: None,
            peers: Vec::new(),
            replication_factor: None,
            join: false,
            metrics_listen: None,
            kafka_listen: None,
            peer_listen: None,
            insecure: false,
            config,
            containers: None,
        }
    }

    #[test]
    fn every_flag_is_a_config_key() {
        let all = ServeArgs {
            data_dir: Some("d".into()),
            listen: Some("127.0.0.1:9".parse().unwrap()),
            node_id: Some(1),
            peers: vec!["1=127.0.0.1:9/127.0.0.1:19".into()],
            replication_factor: Some(1),
            join: true,
            metrics_listen: Some("127.0.0.1:10".parse().unwrap()),
            kafka_listen: Some("127.0.0.1:11".parse().unwrap()),
            peer_listen: Some("127.0.0.1:19".parse().unwrap()),
            insecure: true,
            config: None,
            containers: Some(2),
        };
        let config = config(&all).unwrap();
        assert_eq!(
            config.peer_listen_addr().unwrap(),
            Some("127.0.0.1:19".parse().unwrap())
        );
        assert!(config.insecure && config.join);
        assert_eq!(config.kafka_listen, Some("127.0.0.1:11".parse().unwrap()));
    }

    #[test]
    fn a_public_address_needs_tls_and_auth_or_insecure() {
        let mut open = args(None);
        open.listen = Some("0.0.0.0:7450".parse().unwrap());
        let err = format!("{:#}", config(&open).unwrap_err());
        assert!(err.contains("--insecure"), "{err}");
        open.insecure = true;
        config(&open).unwrap();
    }

    #[test]
    fn flags_override_the_file_and_the_file_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aquifer.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:8\"\ncontainers = 6\n").unwrap();
        let config = config(&args(Some(path))).unwrap();
        assert_eq!(config.listen, "127.0.0.1:9".parse().unwrap());
        assert_eq!(config.containers, 6);
        assert_eq!(config.node_id, ServerConfig::default().node_id);
    }

    #[test]
    fn a_bad_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "no_such_key = 1\n").unwrap();
        let err = format!("{:#}", config(&args(Some(path))).unwrap_err());
        assert!(err.contains("bad.toml"), "{err}");
    }
}
