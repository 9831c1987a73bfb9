//! One `ServerConfig` for a node: read from TOML (unknown keys rejected),
//! overridden by command-line flags, validated once at start-up.
//!
//! Owns defaults and limits; it must never be mutated after `validate()`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The port `aquifer serve` listens on by default (and the CLI dials).
pub const DEFAULT_PORT: u16 = 7450;
const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where log files, snapshots and (by default) tier-2 live.
    pub data_dir: PathBuf,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Segment containers on this node. Fixed when the data dir is created.
    pub containers: u32,
    /// Largest framed event accepted, in bytes.
    #[serde(alias = "max_event_bytes")]
    pub event_bytes_max: u64,
    /// Budget for bytes applied but not yet in tier-2, over all segments.
    /// At the budget, appends wait (back-pressure).
    pub tail_buffer_bytes_max: u64,
    /// Bytes open transactions may hold in this node's memory (at most half
    /// the tail budget, whatever is set): their events stay in memory until
    /// commit or abort. At the limit transactional appends are refused with
    /// RESOURCE_EXHAUSTED.
    pub transaction_bytes_max: u64,
    /// Budget for the block cache of bytes read back from tier-2.
    pub cache_bytes_max: u64,
    /// Bytes proposed to raft but not yet applied, per container; at the
    /// limit new batches wait.
    pub in_flight_bytes_max: u64,
    /// A raft group snapshots its state (metadata plus the unflushed tail)
    /// and drops its log once this many bytes were applied since the last
    /// snapshot: bounds local log disk and replay time.
    pub snapshot_log_bytes: u64,
    /// Appends are refused (RESOURCE_EXHAUSTED, naming the disk) while the
    /// data dir's filesystem, or a local tier-2's, has less free than this;
    /// they resume once space is freed. Reads, tier-2 flushes, truncation
    /// and retention go on below it. 0 turns the check off.
    pub disk_free_bytes_min: u64,
    /// A writer id that appended nothing to a segment for this long is
    /// forgotten there (Kafka's `producer.id.expiration.ms`), so many
    /// short-lived writers do not grow the dedup table and its snapshots
    /// without bound. Checked at each rate tick (`scaling.tick_ms`). A
    /// writer that comes back later starts again at event number 1; a
    /// batch it retries from before is refused as a gap. 0: never.
    pub writer_id_expiry_ms: u64,
    /// Open client connections. At the limit a new one takes the place of
    /// one that has not completed its handshake, else of the one idle
    /// longest, else it is refused at once; it never waits to be accepted.
    /// Loopback clients (an operator on the node) have a few slots more.
    #[serde(alias = "max_connections")]
    pub connections_max: usize,
    /// Where to serve Prometheus metrics over HTTP (`GET /metrics`);
    /// absent: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// This node's id in the cluster (1 on a single node).
    pub node_id: u64,
    /// Every node of the cluster as `ID=HOST:PORT/HOST:PEER_PORT` (this one
    /// included): the address clients reach it at, and the one the other
    /// nodes do (`/...` omitted: the same host at PORT + 1). Empty: a
    /// single node.
    pub peers: Vec<String>,
    /// Replicas of each container (capped at the number of nodes). Taken
    /// from the node that first leads the metadata group when the cluster
    /// forms, and fixed from then on.
    pub replication_factor: u32,
    /// Start as a new node of a running cluster: form no groups, wait to be
    /// added (`aquifer cluster add-node`) and sent the state.
    pub join: bool,
    pub tier2: Tier2Config,
    pub raft: RaftConfig,
    pub scaling: ScalingConfig,
    /// Where node-to-node services (raft, snapshots, forwarding) listen;
    /// the client port never serves them. In a cluster it defaults to the
    /// `listen` IP at the port of this node's peer address in `peers`; a
    /// single node has no peer port unless this is set.
    pub peer_listen: Option<SocketAddr>,
    /// Serve a non-loopback address without TLS and authentication (or a
    /// non-loopback peer port without peer TLS). Refused otherwise.
    pub insecure: bool,
    pub tls: crate::auth::config::TlsConfig,
    pub peer_tls: crate::auth::config::PeerTlsConfig,
    pub auth: crate::auth::config::AuthConfig,
    /// The audit log (`[audit]`): on by default.
    pub audit: crate::audit::AuditConfig,
    /// A client connection that has not sent the HTTP/2 preface and the
    /// header of its first frame within this time is closed: a socket that
    /// connects and sends nothing holds a slot no longer.
    pub handshake_timeout_ms: u64,
    /// A client connection with no request open for this long is closed
    /// (a client reconnects by itself on its next call).
    pub connection_idle_timeout_ms: u64,
    /// Where to serve the Kafka wire protocol (Kafka clients read and
    /// write streams of `kafka_scope` as topics); absent: not served. It
    /// has no TLS or authentication yet, so it is refused while `[auth]`
    /// is on, and on a non-loopback address without `insecure`.
    pub kafka_listen: Option<SocketAddr>,
    /// The scope whose streams are the Kafka listener's topics.
    pub kafka_scope: String,
    /// A Kafka consumer group with no members whose newest committed
    /// offset is older than this loses its offsets (Kafka's
    /// `offsets.retention.minutes`, 7 days by default); 0: kept forever.
    pub kafka_offsets_retention_ms: u64,
    /// A Kafka transactional id not used for this long (nor for its
    /// transaction timeout) is forgotten (Kafka's
    /// `transactional.id.expiration.ms`, 7 days by default); 0: only when
    /// the cluster's bound of ids is reached, the longest unused first.
    pub kafka_transactional_id_expiry_ms: u64,
    /// Whether a Kafka Metadata request naming a topic that does not exist
    /// creates it (Kafka's `auto.create.topics.enable`; off here: a typo
    /// then makes no stream).
    pub kafka_auto_create_topics: bool,
    /// Partitions of an auto-created topic (Kafka's `num.partitions`).
    pub kafka_auto_create_partitions: u32,
    /// Open Kafka connections (a pool of their own, beside
    /// `connections_max`); past it new ones are closed at once.
    pub kafka_connections_max: usize,
    /// Open client connections from one IP address; past it that address's
    /// new connections are refused at once, so one host cannot take every
    /// slot.
    pub connections_per_address_max: usize,
}

/// How auto-scaling measures and waits. Production defaults are minutes
/// (as Pravega's); tests set seconds.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScalingConfig {
    /// How often container leaders fold traffic into the rates (a raft entry
    /// per container), and the auto-scaler looks at them.
    pub tick_ms: u64,
    /// The rate windows, shortest first: the moving averages forget at
    /// these speeds.
    pub windows_ms: [u64; 4],
    /// A segment is left alone this long after the scale that made it.
    pub cooldown_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Tier2Config {
    /// `file:///abs/path`, `s3://bucket/prefix`, or absent for
    /// `<data_dir>/tier2`.
    pub url: Option<String>,
    /// S3 only: endpoint of an S3-compatible server (default: AWS, or
    /// `AWS_ENDPOINT`).
    pub endpoint: Option<String>,
    /// S3 only: region (default: `AWS_REGION`, else us-east-1).
    pub region: Option<String>,
    /// S3 only: credentials (default: the standard AWS environment variables).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// S3 only: allow plain http endpoints (local test servers).
    pub allow_http: bool,
    /// A segment's unflushed bytes are put to tier-2 as a chunk when they
    /// reach this size ...
    pub chunk_bytes: u64,
    /// ... or when the oldest of them is this old.
    pub flush_interval_ms: u64,
    /// Concurrent tier-2 reads for catch-up readers, per node.
    pub read_concurrency: usize,
    /// A tier-2 request (read, put, list, delete) not answered by then,
    /// retries included, fails: a read with UNAVAILABLE naming tier-2, a
    /// put is retried by the storage writer later.
    pub request_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    pub tick_ms: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Testing only: lets `Cluster.SetFaults` drop raft messages to chosen
    /// nodes (network partitions in tests). Never in production.
    pub fault_injection: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("aquifer-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            containers: 4,
            event_bytes_max: 8 * MIB,
            tail_buffer_bytes_max: 256 * MIB,
            transaction_bytes_max: 128 * MIB,
            cache_bytes_max: 256 * MIB,
            in_flight_bytes_max: 16 * MIB,
            snapshot_log_bytes: 256 * MIB,
            disk_free_bytes_min: 1024 * MIB,
            writer_id_expiry_ms: 24 * 60 * 60 * 1000,
            connections_max: 1024,
            metrics_listen: None,
            node_id: 1,
            peers: Vec::new(),
            replication_factor: 3,
            join: false,
            tier2: Tier2Config::default(),
            raft: RaftConfig::default(),
            scaling: ScalingConfig::default(),
            peer_listen: None,
            insecure: false,
            tls: Default::default(),
            peer_tls: Default::default(),
            auth: Default::default(),
            audit: Default::default(),
            handshake_timeout_ms: 5_000,
            connection_idle_timeout_ms: 600_000,
            connections_per_address_max: 256,
            kafka_listen: None,
            kafka_scope: "kafka".into(),
            kafka_offsets_retention_ms: 7 * 24 * 3600 * 1000,
            kafka_transactional_id_expiry_ms: 7 * 24 * 3600 * 1000,
            kafka_auto_create_topics: false,
            kafka_auto_create_partitions: 1,
            kafka_connections_max: 4096,
        }
    }
}

impl Default for ScalingConfig {
    fn default() -> Self {
        ScalingConfig {
            tick_ms: 5_000,
            windows_ms: [120_000, 300_000, 600_000, 1_200_000],
            cooldown_ms: 600_000,
        }
    }
}

impl Default for Tier2Config {
    fn default() -> Self {
        Tier2Config {
            url: None,
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            chunk_bytes: 8 * MIB,
            flush_interval_ms: 10_000,
            read_concurrency: 8,
            request_timeout_ms: 30_000,
        }
    }
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            fault_injection: false,
        }
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ServerConfig {
    /// Reads a TOML config file; every key is optional.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The cluster's nodes by id (just this one without `peers`).
    pub fn cluster(&self) -> Result<std::collections::BTreeMap<u64, String>, ConfigError> {
        let bad = |why: String| ConfigError::Invalid(why);
        let mut nodes = std::collections::BTreeMap::new();
        if self.peers.is_empty() {
            nodes.insert(self.node_id, self.listen.to_string());
            return Ok(nodes);
        }
        for p in &self.peers {
            let (id, addr) = p
                .split_once('=')
                .ok_or_else(|| bad(format!("peer {p:?} is not ID=HOST:PORT")))?;
            let id: u64 = id
                .trim()
                .parse()
                .ok()
                .filter(|&id| id > 0)
                .ok_or_else(|| bad(format!("peer {p:?}: the id must be a number above 0")))?;
            let addr = addr.trim();
            if addr.is_empty() {
                return Err(bad(format!("peer {p:?} has no address")));
            }
            if nodes.insert(id, addr.to_string()).is_some() {
                return Err(bad(format!("node id {id} appears twice in peers")));
            }
        }
        if !nodes.contains_key(&self.node_id) {
            return Err(bad(format!(
                "node_id {} is not one of the peers ({})",
                self.node_id,
                self.peers.join(",")
            )));
        }
        Ok(nodes)
    }

    /// Checks the relations between limits; called once before serving.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |why: String| Err(ConfigError::Invalid(why));
        if self.node_id == 0 {
            return bad("node_id must be above 0".into());
        }
        self.cluster()?;
        if !(1..=7).contains(&self.replication_factor) {
            return bad(format!(
                "replication_factor must be 1..=7, not {}",
                self.replication_factor
            ));
        }
        if self.containers == 0 || self.containers > 4096 {
            return bad(format!(
                "containers must be 1..=4096, not {}",
                self.containers
            ));
        }
        if self.event_bytes_max < 64
            || self.event_bytes_max > aquifer_proto::wire::EVENT_BYTES_MAX as u64
        {
            return bad(format!(
                "event_bytes_max must be 64..=67108864, not {}",
                self.event_bytes_max
            ));
        }
        // One event must always fit, or a writer of a large event would wait forever.
        if self.tail_buffer_bytes_max < 2 * self.event_bytes_max {
            return bad(format!(
                "tail_buffer_bytes_max ({}) must be at least twice event_bytes_max ({})",
                self.tail_buffer_bytes_max, self.event_bytes_max
            ));
        }
        if self.in_flight_bytes_max < 2 * self.event_bytes_max {
            return bad(format!(
                "in_flight_bytes_max ({}) must be at least twice event_bytes_max ({})",
                self.in_flight_bytes_max, self.event_bytes_max
            ));
        }
        if self.in_flight_bytes_max > 1024 * MIB {
            return bad(format!(
                "in_flight_bytes_max must be at most 1073741824, not {}",
                self.in_flight_bytes_max
            ));
        }
        if self.connections_max == 0 || self.connections_per_address_max == 0 {
            return bad(
                "connections_max and connections_per_address_max must be at least 1".into(),
            );
        }
        if self.handshake_timeout_ms == 0 || self.connection_idle_timeout_ms == 0 {
            return bad("handshake_timeout_ms and connection_idle_timeout_ms must be > 0".into());
        }
        if self.snapshot_log_bytes < MIB {
            return bad(format!(
                "snapshot_log_bytes must be at least 1048576, not {}",
                self.snapshot_log_bytes
            ));
        }
        if self.tier2.chunk_bytes == 0 || self.tier2.chunk_bytes > self.tail_buffer_bytes_max / 2 {
            return bad(format!(
                "tier2.chunk_bytes ({}) must be 1..=tail_buffer_bytes_max/2",
                self.tier2.chunk_bytes
            ));
        }
        if self.tier2.flush_interval_ms == 0
            || self.tier2.read_concurrency == 0
            || self.tier2.request_timeout_ms == 0
        {
            return bad(
                "tier2.flush_interval_ms, tier2.read_concurrency and tier2.request_timeout_ms must be > 0"
                    .into(),
            );
        }
        let w = &self.scaling.windows_ms;
        if self.scaling.tick_ms == 0 || w[0] == 0 || w.windows(2).any(|p| p[0] > p[1]) {
            return bad(format!(
                "scaling.tick_ms must be > 0 and scaling.windows_ms above 0 and shortest first, not {} and {w:?}",
                self.scaling.tick_ms
            ));
        }
        if self.raft.tick_ms == 0 || self.raft.heartbeat_ticks == 0 {
            return bad("raft.tick_ms and raft.heartbeat_ticks must be > 0".into());
        }
        if self.raft.election_ticks <= self.raft.heartbeat_ticks {
            return bad("raft.election_ticks must be greater than raft.heartbeat_ticks".into());
        }
        self.audit.validate().map_err(ConfigError::Invalid)?;
        validate_security(self)
    }

    /// Where the peer port listens: `peer_listen`, else (in a cluster) the
    /// `listen` IP at the port of this node's peer address; None on a
    /// single node without `peer_listen`.
    pub fn peer_listen_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.peer_listen.is_some() || self.peers.is_empty() {
            return Ok(self.peer_listen);
        }
        let nodes = self.cluster()?;
        let me = nodes.get(&self.node_id).map(String::as_str).unwrap_or("");
        let peer = crate::addresses::peer_address(me);
        let port = peer
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "node {}'s peer address {peer:?} has no port; write its peers entry as ID=HOST:PORT/HOST:PEER_PORT",
                    self.node_id
                ))
            })?;
        Ok(Some(SocketAddr::new(self.listen.ip(), port)))
    }

    /// What the node's byte budgets allow in memory: tail buffers, block
    /// cache and every container's in-flight bytes. Peak RSS stays below
    /// this plus a constant (code, raft entry caches, connection buffers).
    pub fn memory_budget_bytes(&self) -> u64 {
        self.tail_buffer_bytes_max
            + self.cache_bytes_max
            + u64::from(self.containers) * self.in_flight_bytes_max
    }

    /// Bytes open transactions may hold here: `transaction_bytes_max`, at
    /// most half the tail budget (the rest stays for flushable appends).
    pub fn txn_bytes_limit(&self) -> u64 {
        self.transaction_bytes_max
            .min(self.tail_buffer_bytes_max / 2)
    }

    /// The largest gRPC message either side may send: one maximal event plus
    /// framing slack.
    pub fn message_bytes_max(&self) -> usize {
        self.event_bytes_max as usize + aquifer_proto::wire::MESSAGE_OVERHEAD_BYTES_MAX
    }
}

/// Checks the security keys of `c` (TLS, peer TLS, auth) and protected
/// mode: a node reachable from other machines must not serve everyone
/// everything by accident.
fn validate_security(c: &ServerConfig) -> Result<(), ConfigError> {
    let bad = |why: String| Err(ConfigError::Invalid(why));
    if c.tls.cert_file.is_some() != c.tls.key_file.is_some() {
        return bad("tls.cert_file and tls.key_file go together".into());
    }
    if c.tls.client_ca_file.is_some() && !c.tls.is_on() {
        return bad("tls.client_ca_file needs tls.cert_file and tls.key_file".into());
    }
    let p = &c.peer_tls;
    let set = [&p.cert_file, &p.key_file, &p.ca_file]
        .iter()
        .filter(|f| f.is_some())
        .count();
    if set != 0 && set != 3 {
        return bad("peer_tls needs all of cert_file, key_file and ca_file".into());
    }
    if c.auth.certificates && c.tls.client_ca_file.is_none() {
        return bad(
            "auth.certificates needs tls.client_ca_file (the CA of client certificates)".into(),
        );
    }
    if let Some(j) = &c.auth.jwt {
        if !["HS256", "RS256", "ES256"].contains(&j.algorithm.as_str()) {
            return bad(format!(
                "auth.jwt.algorithm must be HS256, RS256 or ES256, not {:?}",
                j.algorithm
            ));
        }
        if j.issuer.is_empty() || j.audience.is_empty() {
            return bad("auth.jwt needs an issuer and an audience".into());
        }
    }
    if let Some(kafka) = c.kafka_listen {
        if c.auth.is_on() {
            return bad(format!(
                "kafka_listen {kafka}: the Kafka listener has no authentication yet, so it cannot \
                 be served while [auth] is on (it would bypass it); remove kafka_listen or [auth]"
            ));
        }
        if !aquifer_proto::name::is_valid_name(&c.kafka_scope) {
            return bad(format!(
                "kafka_scope {:?} is not a valid scope name: {}",
                c.kafka_scope,
                aquifer_proto::name::NAME_RULE
            ));
        }
        if !(1..=1024).contains(&c.kafka_auto_create_partitions) {
            return bad(format!(
                "kafka_auto_create_partitions {} is outside 1..=1024 (a topic's partitions)",
                c.kafka_auto_create_partitions
            ));
        }
        if c.kafka_connections_max == 0 {
            return bad("kafka_connections_max must be at least 1".into());
        }
        if !c.insecure && !is_loopback(kafka) {
            return bad(format!(
                "kafka_listen {kafka} is not a loopback address and the Kafka listener has no TLS \
                 or authentication yet; pass --insecure to serve it open anyway"
            ));
        }
    }
    if c.insecure {
        return Ok(());
    }
    // Protected mode: a node reachable from other machines must not serve
    // everyone everything by accident.
    let protected = c.tls.is_on() && c.auth.is_on();
    if !is_loopback(c.listen) && !protected {
        return bad(format!(
            "listen {} is not a loopback address, but TLS and authentication are not both on; \
             set [tls] and [auth], or pass --insecure to serve it open anyway",
            c.listen
        ));
    }
    if let Some(peer) = c.peer_listen_addr()? {
        if !is_loopback(peer) && !p.is_on() {
            return bad(format!(
                "peer_listen {peer} is not a loopback address, but peer_tls is off; \
                 set [peer_tls], or pass --insecure"
            ));
        }
    }
    Ok(())
}

fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_file_overrides_parse() {
        ServerConfig::default().validate().unwrap();
        let c: ServerConfig =
            toml::from_str("containers = 2\n[tier2]\nchunk_bytes = 1024\n").unwrap();
        assert_eq!(c.containers, 2);
        assert_eq!(c.tier2.chunk_bytes, 1024);
        assert_eq!(c.tier2.flush_interval_ms, 10_000);
        assert!(toml::from_str::<ServerConfig>("contaners = 2").is_err());
    }

    #[test]
    fn old_limit_names_still_work() {
        let c: ServerConfig =
            toml::from_str("max_event_bytes = 65536\nmax_connections = 7\n").unwrap();
        assert_eq!((c.event_bytes_max, c.connections_max), (65536, 7));
        let c: ServerConfig =
            toml::from_str("event_bytes_max = 65536\nconnections_max = 7\n").unwrap();
        assert_eq!((c.event_bytes_max, c.connections_max), (65536, 7));
    }

    #[test]
    fn rejects_inconsistent_limits() {
        let c = ServerConfig {
            tail_buffer_bytes_max: MIB,
            ..ServerConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
