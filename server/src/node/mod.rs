//! A node: owns everything one server process runs — the data directory,
//! the `meta` group and the containers, tier-2 and the storage writers, and
//! the node's shared state (node addresses, metrics, the logs' reclaim
//! thread). Nothing here is process-wide, so several nodes can run in one
//! process (the in-process cluster tests do).
//!
//! The node's jobs, one module each: [`routing`] (which replica serves a
//! segment, and redirects), [`describe`] (segment views across nodes),
//! [`admin`] (stream admin spanning `meta` and the containers),
//! [`reconcile`] (every node, every 250 ms, moves the containers it leads
//! toward the metadata), [`autoscale`] (rates and scaling decisions),
//! [`membership`] (the cluster's membership pass), [`audit`] (the audit
//! streams and the audit writer's internal appends), [`groups`] (reader
//! groups' start cuts and reader liveness), [`txns`] (transaction leases,
//! and driving decided transactions to their end),
//! [`data_dir`] (the directory's lock and fixed container count).
//!
//! The node never serves before every group replayed its log.

mod access;
mod admin;
mod audit;
mod autoscale;
mod data_dir;
mod describe;
mod groups;
mod membership;
mod reconcile;
mod routing;
mod txns;

pub use admin::validate_name;
pub use groups::{Start, READER_TIMEOUT_DEFAULT_MS, READER_TIMEOUT_MAX_MS, READER_TIMEOUT_MIN_MS};

use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use aquifer_proto::wire;
use tokio::sync::watch;

use crate::addresses::NodeAddresses;
use crate::audit::Audit;
use crate::cache::TailBudget;
use crate::cluster::balance::Balancer;
use crate::cluster::members::Membership;
use crate::cluster::peers::Peers;
use crate::cluster::Transport;
use crate::config::ServerConfig;
use crate::container::{Container, Containers};
use crate::controller::Controller;
use crate::error::Error;
use crate::group::GroupConfig;
use crate::log::LogContext;
use crate::metrics::Metrics;
use crate::tier::writer::StorageWriter;
use crate::tier::Tier2;

/// The least raft's `max_uncommitted_size` may be: raft wants it above
/// `max_size_per_msg`, or a large proposal could never be accepted.
/// How often the free-space floor looks at the disks: a burst between two
/// looks is counted as it is admitted.
const DISK_LOOK_EVERY: Duration = Duration::from_secs(1);
const UNCOMMITTED_BYTES_MIN: u64 = 4 * 1024 * 1024;
const _: () = assert!(crate::group::RAFT_MSG_BYTES_MAX < UNCOMMITTED_BYTES_MIN);

pub struct Node {
    pub config: ServerConfig,
    /// Raft messages to the other nodes (None on a single node).
    pub transport: Option<Arc<Transport>>,
    pub controller: Arc<Controller>,
    pub containers: Containers,
    pub tier2: Arc<Tier2>,
    pub budget: Arc<TailBudget>,
    /// The free-space floor appends are admitted against.
    pub(crate) space: crate::space::DiskSpace,
    /// Every node and the address clients reach it at.
    pub addresses: NodeAddresses,
    /// This node's metrics registry.
    pub metrics: Arc<Metrics>,
    /// The audit log: `node.audit.record(...)` from any call path.
    pub audit: Audit,
    /// Calls to other nodes (cluster only).
    pub(crate) peers: Arc<Peers>,
    /// Leaders heard from the other nodes, and the membership pass.
    pub(crate) membership: Arc<Membership>,
    /// Held by the reconcile pass in progress: the reconcile loop and admin
    /// calls both run passes, and two at once act on the same stale view
    /// (both would remove a deleted stream; the second then fails).
    reconciling: tokio::sync::Mutex<()>,
    /// When the metadata leader last heard from each group reader.
    liveness: std::sync::Mutex<groups::Liveness>,
    /// When the metadata leader's transaction leases end.
    leases: std::sync::Mutex<txns::Leases>,
    /// Turns true to stop the node's tasks.
    stop: watch::Sender<bool>,
    /// Turns true when the node begins to shut down: long-lived sessions
    /// (follow reads, append sessions) end then instead of holding it up.
    closing: watch::Sender<bool>,
    /// The node's tasks: storage writers, retention, reconciler, balancer.
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// TLS of the client and peer ports (loaded at start-up).
    pub(crate) tls: crate::auth::tls::TlsSettings,
    /// How client-port calls prove who they are.
    pub(crate) authn: crate::auth::authn::Authenticator,
    /// Held for the node's life: one process per data directory.
    _lock: File,
}

impl Node {
    /// Opens the node: replays every log (errors here stop start-up) and
    /// finishes admin changes a crash interrupted.
    pub async fn open(config: ServerConfig) -> Result<Arc<Node>, Error> {
        config
            .validate()
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let lock = data_dir::prepare_data_dir(&config)?;
        let nodes = config
            .cluster()
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let tls = crate::auth::tls::load(&config.tls, &config.peer_tls)?;
        let authn = crate::auth::authn::Authenticator::load(&config.auth)?;
        let addresses = NodeAddresses::new(nodes.clone());
        let metrics = Arc::new(Metrics::new());
        let (audit, audit_queue) = Audit::new(&config.audit, config.node_id, &metrics);
        let log_context = LogContext::start();
        let clustered = nodes.len() > 1;
        let transport = clustered.then(|| {
            crate::cluster::Transport::start(
                config.node_id,
                addresses.clone(),
                tls.peer_client.clone(),
            )
        });
        let outbox = transport
            .clone()
            .map(|t| t as Arc<dyn crate::group::Outbox>);
        // Groups form once, when the data directory is new. A joining node
        // forms none (leaders add it and send it state); nor does a restart,
        // where a group without a log is one this node destroyed: forming
        // it again would make a voter with an empty log.
        let formed = config.data_dir.join("FORMED");
        let voters: Vec<u64> = if config.join || formed.exists() {
            Vec::new()
        } else {
            nodes.keys().copied().collect()
        };
        let group = |name: String| GroupConfig {
            log_dir: config.data_dir.join("log").join(&name),
            name,
            node_id: config.node_id,
            voters: voters.clone(),
            outbox: outbox.clone(),
            addresses: addresses.clone(),
            log_context: log_context.clone(),
            metrics: metrics.clone(),
            tick: Duration::from_millis(config.raft.tick_ms),
            election_ticks: config.raft.election_ticks,
            heartbeat_ticks: config.raft.heartbeat_ticks,
            // A backstop behind the in-flight budget.
            uncommitted_bytes_max: (config.in_flight_bytes_max * 2).max(UNCOMMITTED_BYTES_MIN),
            snapshot_log_bytes: config.snapshot_log_bytes,
        };
        let budget = TailBudget::new(config.tail_buffer_bytes_max);
        let tier2 = Arc::new(Tier2::open(&config, metrics.clone())?);
        let mut disks = vec![("the data dir", config.data_dir.clone())];
        if let Some(root) = tier2.local_root() {
            disks.push(("local tier-2", root.to_path_buf()));
        }
        let space = crate::space::DiskSpace::new(disks, config.disk_free_bytes_min);
        let controller = Arc::new(Controller::start(group(wire::META_GROUP.into()))?);
        let mut containers = Vec::new();
        for id in 0..config.containers {
            let c = Container::start(
                id,
                group(wire::container_group(id)),
                budget.clone(),
                config.in_flight_bytes_max,
            )?;
            containers.push(Arc::new(c));
        }
        let containers = Containers::new(containers);
        if !formed.exists() {
            crate::durable::write(&formed, b"every group of this node formed\n")
                .map_err(|e| data_dir::io_error("cannot write", &formed, e))?;
        }
        if !clustered {
            // The only voter leads at once; in a cluster, elections need the
            // gRPC server (raft messages), which starts after this returns.
            controller.wait_ready().await?;
            for c in &containers {
                c.wait_ready().await?;
            }
        }
        let (stop, stopped) = watch::channel(false);
        let mut tasks: Vec<_> = containers
            .iter()
            .map(|c| {
                let w = StorageWriter {
                    container: c.clone(),
                    tier2: tier2.clone(),
                    budget: budget.clone(),
                    chunk_bytes: config.tier2.chunk_bytes,
                    flush_interval: Duration::from_millis(config.tier2.flush_interval_ms),
                    txn_spill_pressure: config.txn_bytes_limit() / 2,
                };
                tokio::spawn(w.run(stopped.clone()))
            })
            .collect();
        tasks.push(tokio::spawn(
            space.clone().watch(DISK_LOOK_EVERY, stopped.clone()),
        ));
        tasks.push(tokio::spawn(crate::retention::run(
            controller.clone(),
            containers.clone(),
            tier2.clone(),
            stopped.clone(),
        )));
        let peers = Arc::new(Peers::new(addresses.clone(), tls.peer_client.clone()));
        let membership = Arc::new(Membership::default());
        if let Some(transport) = &transport {
            let balancer = Balancer {
                me: config.node_id,
                controller: controller.clone(),
                containers: containers.clone(),
                peers: peers.clone(),
                addresses: addresses.clone(),
                transport: transport.clone(),
                membership: membership.clone(),
            };
            tasks.push(tokio::spawn(crate::cluster::balance::balance_loop(
                balancer,
                stopped.clone(),
            )));
        }
        let node = Arc::new(Node {
            config,
            transport,
            controller,
            containers,
            tier2,
            budget,
            space,
            addresses,
            metrics,
            audit,
            peers,
            membership,
            reconciling: tokio::sync::Mutex::new(()),
            liveness: std::sync::Mutex::default(),
            leases: std::sync::Mutex::default(),
            stop,
            closing: watch::channel(false).0,
            tasks: std::sync::Mutex::new(tasks),
            tls,
            authn,
            _lock: lock,
        });
        if !clustered {
            node.reconcile_once().await?;
        }
        // The reconciler is the node's own job (it spans meta, the
        // containers and the other nodes), so it holds the node; it stops
        // with the other tasks.
        let autoscaler = tokio::spawn(autoscale::autoscale_loop(node.clone(), stopped.clone()));
        let liveness = tokio::spawn(groups::liveness_loop(node.clone(), stopped.clone()));
        let txn_driver = tokio::spawn(txns::drive_loop(node.clone(), stopped.clone()));
        let reconciler = tokio::spawn(reconcile::reconcile_loop(node.clone(), stopped.clone()));
        let mut tasks = node.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.extend([autoscaler, liveness, txn_driver, reconciler]);
        if let Some(queue) = audit_queue {
            let log = audit::NodeAuditLog(node.clone());
            tasks.push(tokio::spawn(crate::audit::writer::run(queue, log, stopped)));
        }
        drop(tasks);
        Ok(node)
    }

    /// Tells long-lived sessions to end.
    pub fn begin_close(&self) {
        self.closing.send_replace(true);
    }

    /// The stream a segment belongs to, as `scope/stream` (metrics labels).
    pub fn stream_of(&self, segment_id: u64) -> Option<String> {
        self.controller
            .stream_of_segment(segment_id)
            .map(|k| k.to_string())
    }

    /// Sets the gauges of state that is read rather than counted.
    pub fn refresh_metrics(&self) {
        let m = &self.metrics;
        m.tail_buffer_bytes.set(self.budget.used() as i64);
        m.txn_bytes.set(self.budget.txn_used() as i64);
        m.cache_bytes.set(self.tier2.cache_bytes() as i64);
        for s in self.controller.all().iter().filter(|s| !s.deleting) {
            let labels = crate::metrics::StreamLabels {
                stream: s.key.to_string(),
            };
            m.stream_active_segments
                .get_or_create(&labels)
                .set(s.active().count() as i64);
        }
        for c in self.containers.iter().filter(|c| c.leader_term().is_some()) {
            for seg in c.segments() {
                let v = seg.view();
                let labels = crate::metrics::SegmentLabels {
                    segment: seg.id.to_string(),
                };
                m.segment_events_per_second
                    .get_or_create(&labels)
                    .set(v.events_per_second[0]);
                m.segment_bytes_per_second
                    .get_or_create(&labels)
                    .set(v.bytes_per_second[0]);
            }
        }
    }

    /// Refuses with where the metadata leader is unless this node leads it.
    pub fn check_meta_leader(&self) -> Result<(), Error> {
        if self.controller.is_leader() {
            return Ok(());
        }
        Err(self.controller.group().not_leader().into())
    }

    /// Hands a raft message from another node to its group.
    pub fn deliver(&self, group: &str, msg: raft::prelude::Message) -> bool {
        if group == wire::META_GROUP {
            return self.controller.group().step(msg);
        }
        wire::parse_container_group(group)
            .and_then(|id| self.containers.get(id as usize))
            .is_some_and(|c| c.group().step(msg))
    }

    /// Resolves once the node begins to shut down.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// Stops the node's tasks and waits for them (the groups stop when the
    /// node is dropped).
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Whether raft messages to node `id` go through (never, on one node).
    fn is_up(&self, id: u64) -> bool {
        self.transport.as_ref().is_some_and(|t| t.is_up(id))
    }
}

#[cfg(test)]
mod tests;
