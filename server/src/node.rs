//! A node: opens the data directory, starts the `meta` group and the
//! containers, the storage writers and tier-2, and carries out stream admin,
//! which spans the controller and the containers.
//!
//! Admin changes are written to `meta` first and then to the containers;
//! `reconcile` redoes the container half at start-up, so a crash between the
//! two heals. The node never serves before every group replayed its log.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aquifer_proto::wire;
use tokio::sync::watch;

use crate::addresses::NodeAddresses;
use crate::cache::TailBudget;
use crate::config::ServerConfig;
use crate::container::command::{Cmd, SegmentRef};
use crate::container::state::Applied;
use crate::container::{container_of, Container, SegmentView};
use crate::controller::{Controller, Retention, StreamKey, StreamRecord};
use crate::error::Error;
use crate::group::GroupConfig;
use crate::log::LogContext;
use crate::metrics::Metrics;
use crate::tier::writer::StorageWriter;
use crate::tier::Tier2;

/// How often each node brings the containers it leads in line with the
/// metadata (cluster: the container leaders may be other nodes).
const RECONCILE_INTERVAL: Duration = Duration::from_millis(250);
/// How long an admin call waits for its container half to be applied.
const ADMIN_WAIT: Duration = Duration::from_secs(10);

pub struct Node {
    pub config: ServerConfig,
    /// Raft messages to the other nodes (None on a single node).
    pub transport: Option<Arc<crate::cluster::Transport>>,
    pub controller: Controller,
    pub containers: Vec<Arc<Container>>,
    pub tier2: Arc<Tier2>,
    pub budget: Arc<TailBudget>,
    /// Every node and the address clients reach it at.
    pub addresses: NodeAddresses,
    /// This node's metrics registry.
    pub metrics: Arc<Metrics>,
    /// Calls to other nodes (cluster only).
    pub(crate) peers: crate::cluster::peers::Peers,
    /// Leaders heard from the other nodes, and the membership pass.
    pub(crate) membership: crate::cluster::members::Membership,
    stop_writers: watch::Sender<bool>,
    /// Turns true when the node begins to shut down: long-lived sessions
    /// (follow reads, append sessions) end then instead of holding it up.
    closing: watch::Sender<bool>,
    writers: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Held for the node's life: one process per data directory.
    _lock: File,
}

/// Checks a scope or stream name against the protocol's naming rule.
pub fn validate_name(what: &str, name: &str) -> Result<(), Error> {
    if aquifer_proto::name::is_valid_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid {what} name {name:?}: {}",
            aquifer_proto::name::NAME_RULE
        )))
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Internal(format!("{what} {}: {e}", path.display()))
}

/// Takes the data directory's lock and checks (or, on first start, records)
/// the number of containers, which can never change for a data directory.
fn prepare_data_dir(config: &ServerConfig) -> Result<File, Error> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| io_error("cannot create data directory", dir, e))?;
    let lock_path = dir.join("LOCK");
    let lock = File::create(&lock_path).map_err(|e| io_error("cannot open", &lock_path, e))?;
    if lock.try_lock().is_err() {
        return Err(Error::Unavailable(format!(
            "data directory {} is in use by another aquifer process",
            dir.display()
        )));
    }
    let marker = dir.join("CONTAINERS");
    match std::fs::read_to_string(&marker) {
        Ok(text) => {
            let found: u32 = text.trim().parse().map_err(|_| {
                Error::Corrupt(format!("{} does not hold a number", marker.display()))
            })?;
            if found != config.containers {
                return Err(Error::InvalidArgument(format!(
                    "data directory {} was created with {found} containers, but the configuration says {}; \
                     the number of containers cannot change",
                    dir.display(),
                    config.containers
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::durable::write(&marker, format!("{}\n", config.containers).as_bytes())
                .map_err(|e| io_error("cannot write", &marker, e))?;
        }
        Err(e) => return Err(io_error("cannot read", &marker, e)),
    }
    Ok(lock)
}

/// Runs [`Node::reconcile_once`] every [`RECONCILE_INTERVAL`] until `stop`.
async fn reconcile_loop(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = node.reconcile_once().await {
            tracing::debug!(error = %e, "reconcile pass failed; will retry");
        }
    }
}

impl Node {
    /// Opens the node: replays every log (errors here stop start-up) and
    /// finishes admin changes a crash interrupted.
    pub async fn open(config: ServerConfig) -> Result<Arc<Node>, Error> {
        config
            .validate()
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let lock = prepare_data_dir(&config)?;
        let nodes = config
            .cluster()
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let addresses = NodeAddresses::new(nodes.clone());
        let metrics = Arc::new(Metrics::new());
        let log_context = LogContext::start();
        let clustered = nodes.len() > 1;
        let transport =
            clustered.then(|| crate::cluster::Transport::start(config.node_id, addresses.clone()));
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
            // A backstop behind the in-flight budget; raft wants it above max_size_per_msg.
            uncommitted_bytes_max: (config.in_flight_bytes_max * 2).max(4 << 20),
            snapshot_log_bytes: config.snapshot_log_bytes,
        };
        let budget = TailBudget::new(config.tail_buffer_bytes_max);
        let tier2 = Arc::new(Tier2::open(&config, metrics.clone())?);
        let controller = Controller::start(group(wire::META_GROUP.into()))?;
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
        if !formed.exists() {
            crate::durable::write(&formed, b"every group of this node formed\n")
                .map_err(|e| io_error("cannot write", &formed, e))?;
        }
        if !clustered {
            // The only voter leads at once; in a cluster, elections need the
            // gRPC server (raft messages), which starts after this returns.
            controller.wait_ready().await?;
            for c in &containers {
                c.wait_ready().await?;
            }
        }
        let (stop_writers, stop) = watch::channel(false);
        let writers = containers
            .iter()
            .map(|c| {
                let w = StorageWriter {
                    container: c.clone(),
                    tier2: tier2.clone(),
                    budget: budget.clone(),
                    chunk_bytes: config.tier2.chunk_bytes,
                    flush_interval: Duration::from_millis(config.tier2.flush_interval_ms),
                };
                tokio::spawn(w.run(stop.clone()))
            })
            .collect();
        let node = Arc::new(Node {
            config,
            transport,
            controller,
            containers,
            tier2,
            budget,
            addresses,
            metrics,
            peers: Default::default(),
            membership: Default::default(),
            stop_writers,
            closing: watch::channel(false).0,
            writers: std::sync::Mutex::new(writers),
            _lock: lock,
        });
        if !clustered {
            node.reconcile_once().await?;
        }
        let retention = tokio::spawn(crate::retention::run(
            node.clone(),
            node.stop_writers.subscribe(),
        ));
        let reconciler = tokio::spawn(reconcile_loop(node.clone(), node.stop_writers.subscribe()));
        let mut tasks = vec![retention, reconciler];
        if clustered {
            tasks.push(tokio::spawn(crate::cluster::members::balance_loop(
                node.clone(),
                node.stop_writers.subscribe(),
            )));
        }
        node.writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(tasks);
        Ok(node)
    }

    /// Tells long-lived sessions to end.
    pub fn begin_close(&self) {
        self.closing.send_replace(true);
    }

    /// The stream a segment belongs to, as `scope/stream` (metrics labels).
    pub fn stream_of(&self, segment_id: u64) -> Option<String> {
        self.controller
            .all()
            .into_iter()
            .find(|s| s.segments.iter().any(|g| g.id == segment_id))
            .map(|s| s.key.to_string())
    }

    /// Sets the gauges of state that is read rather than counted.
    pub fn refresh_metrics(&self) {
        let m = &self.metrics;
        m.tail_buffer_bytes.set(self.budget.used() as i64);
        m.cache_bytes.set(self.tier2.cache_bytes() as i64);
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

    /// Stops the storage writers and retention (the groups stop when the
    /// node is dropped).
    pub async fn shutdown(&self) {
        self.stop_writers.send_replace(true);
        let writers = std::mem::take(&mut *self.writers.lock().unwrap_or_else(|p| p.into_inner()));
        for w in writers {
            let _ = w.await;
        }
    }

    /// Segment `id`, if its container on this node has it; where to go
    /// instead if this node holds no replica of that container.
    pub fn segment(&self, id: u64) -> Result<Arc<crate::container::Segment>, Error> {
        let c = self.serving_container(id)?;
        if let Some(segment) = c.segment(id) {
            return Ok(segment);
        }
        // A follower still replaying (after a restart, or a snapshot) may
        // not have the segment yet: retry rather than not found.
        let s = c.group().status();
        if self.transport.is_some() && c.leader_term().is_none() && s.applied < s.commit {
            return Err(Error::Unavailable(format!(
                "this node's replica of {} is catching up (applied {} of {}); retry",
                c.group().name(),
                s.applied,
                s.commit
            )));
        }
        Err(Error::SegmentNotFound(id))
    }

    /// The container hosting `segment_id`.
    pub fn container_of(&self, segment_id: u64) -> &Arc<Container> {
        let i = container_of(segment_id, self.config.containers) as usize;
        &self.containers[i]
    }

    /// Brings the containers this node leads in line with the metadata
    /// (create, seal, delete segments) and, on the metadata leader, removes
    /// deleted streams whose segments are gone. Every node runs it, so a
    /// crash between a metadata change and its container half heals, and
    /// admin calls need not reach the container leaders themselves.
    async fn reconcile_once(&self) -> Result<(), Error> {
        if self.transport.is_some() {
            self.reconcile_membership().await?;
        }
        for stream in self.controller.all() {
            for seg in &stream.segments {
                let c = self.container_of(seg.id);
                if c.leader_term().is_none() {
                    continue;
                }
                match c.segment(seg.id).map(|s| s.view()) {
                    Some(_) if stream.deleting => self.delete_segment(c, seg.id).await?,
                    None if !stream.deleting => {
                        c.propose(Cmd::Create(SegmentRef { segment_id: seg.id }))
                            .await?;
                    }
                    Some(v) if stream.sealed && !v.sealed => {
                        c.propose(Cmd::Seal(SegmentRef { segment_id: seg.id }))
                            .await?;
                    }
                    _ => {}
                }
            }
            if stream.deleting && self.controller.is_leader() {
                // The containers may be led elsewhere; one that cannot
                // answer now is asked again on the next pass.
                let ids: Vec<u64> = stream.segments.iter().map(|g| g.id).collect();
                if self.segment_views(&ids).await.is_ok_and(|v| v.is_empty()) {
                    self.controller.remove(&stream.key).await?;
                }
            }
        }
        Ok(())
    }

    async fn delete_segment(&self, c: &Container, segment_id: u64) -> Result<(), Error> {
        if let Applied::Deleted { objects } =
            c.propose(Cmd::Delete(SegmentRef { segment_id })).await?
        {
            for name in objects {
                if let Err(e) = self.tier2.delete_chunk(&name).await {
                    // Left behind as an orphan; nothing refers to it.
                    tracing::warn!(chunk = %name, error = %e, "cannot delete chunk object of deleted segment");
                }
            }
        }
        Ok(())
    }

    /// Reconciles until `done` holds for the views of segments `ids` (the
    /// container leaders elsewhere do their part), or fails after
    /// [`ADMIN_WAIT`].
    async fn settle(
        &self,
        what: &str,
        ids: &[u64],
        done: impl Fn(&Node, &HashMap<u64, SegmentView>) -> bool,
    ) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + ADMIN_WAIT;
        loop {
            self.reconcile_once().await?;
            let views = if ids.is_empty() {
                Ok(HashMap::new())
            } else {
                self.segment_views(ids).await
            };
            let why = match views {
                Ok(views) if done(self, &views) => return Ok(()),
                Ok(_) => "a container has no leader?".to_string(),
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "{what} is recorded but not yet applied by every container ({why}); it completes by itself once they have one"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn create_stream(
        &self,
        key: &StreamKey,
        segment_count: u32,
        retention: Retention,
    ) -> Result<StreamRecord, Error> {
        validate_name("scope", &key.scope)?;
        validate_name("stream", &key.stream)?;
        if segment_count > 1024 {
            return Err(Error::InvalidArgument(format!(
                "a stream can have at most 1024 segments, not {segment_count}"
            )));
        }
        let stream = self
            .controller
            .create(key, segment_count.max(1), self.config.containers, retention)
            .await?;
        let ids: Vec<u64> = stream.segments.iter().map(|g| g.id).collect();
        self.settle("the new stream", &ids, |_, views| {
            ids.iter().all(|id| views.contains_key(id))
        })
        .await?;
        Ok(stream)
    }

    pub fn stream(&self, key: &StreamKey) -> Result<StreamRecord, Error> {
        validate_name("scope", &key.scope)?;
        validate_name("stream", &key.stream)?;
        self.controller.get(key)
    }

    pub async fn set_retention(
        &self,
        key: &StreamKey,
        retention: Retention,
    ) -> Result<StreamRecord, Error> {
        self.stream(key)?;
        self.controller.set_retention(key, retention).await
    }

    pub async fn seal_stream(&self, key: &StreamKey) -> Result<StreamRecord, Error> {
        self.stream(key)?;
        let stream = self.controller.seal(key).await?;
        let ids: Vec<u64> = stream.segments.iter().map(|g| g.id).collect();
        self.settle("the seal", &ids, |_, views| {
            views.values().all(|v| v.sealed)
        })
        .await?;
        Ok(stream)
    }

    pub async fn delete_stream(&self, key: &StreamKey) -> Result<(), Error> {
        self.stream(key)?;
        self.controller.mark_deleting(key).await?;
        let key = key.clone();
        self.settle("the delete", &[], |node, _| {
            !node.controller.all().iter().any(|s| s.key == key)
        })
        .await
    }
}
