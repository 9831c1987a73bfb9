//! A node: opens the data directory, starts the `meta` group and the
//! containers, the storage writers and tier-2, and carries out stream admin,
//! which spans the controller and the containers.
//!
//! Admin changes are written to `meta` first and then to the containers;
//! `reconcile` redoes the container half at start-up, so a crash between the
//! two heals. The node never serves before every group replayed its log.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::cache::TailBudget;
use crate::config::ServerConfig;
use crate::container::command::{Cmd, SegmentRef};
use crate::container::state::Applied;
use crate::container::{container_of, Container};
use crate::controller::{Controller, Retention, StreamKey, StreamRecord};
use crate::error::Error;
use crate::group::GroupConfig;
use crate::tier::writer::StorageWriter;
use crate::tier::Tier2;

/// The raft node id of a single-node deployment.
const SINGLE_NODE_ID: u64 = 1;

pub struct Node {
    pub config: ServerConfig,
    pub controller: Controller,
    pub containers: Vec<Arc<Container>>,
    pub tier2: Arc<Tier2>,
    pub budget: Arc<TailBudget>,
    stop_writers: watch::Sender<bool>,
    /// Turns true when the node begins to shut down: long-lived sessions
    /// (follow reads, append sessions) end then instead of holding it up.
    closing: watch::Sender<bool>,
    writers: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Held for the node's life: one process per data directory.
    _lock: File,
}

/// Checks a scope or stream name: `[A-Za-z0-9_-]{1,255}`.
pub fn validate_name(what: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid {what} name {name:?}: use 1 to 255 characters from A-Z a-z 0-9 _ -"
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
            durable_write(&marker, format!("{}\n", config.containers).as_bytes())
                .map_err(|e| io_error("cannot write", &marker, e))?;
        }
        Err(e) => return Err(io_error("cannot read", &marker, e)),
    }
    Ok(lock)
}

/// Deletes chunk objects that no applied "chunk flushed" entry refers to:
/// puts that a crash cut off from their entry, and chunks of deleted
/// segments. Runs before the storage writers start, so no put is in flight.
/// Best effort: tier-2 being unreachable only leaves the orphans for later.
async fn collect_orphans(tier2: &Tier2, containers: &[Arc<Container>]) {
    let names = match tier2.list_chunks().await {
        Ok(names) => names,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list tier-2 to collect orphan chunks");
            return;
        }
    };
    let mut live: std::collections::HashMap<u32, std::collections::HashSet<String>> =
        Default::default();
    for name in names {
        // Objects of containers this node does not have stay alone.
        let Some(container) =
            crate::tier::chunk_container(&name).and_then(|c| containers.get(c as usize))
        else {
            continue;
        };
        let chunks = live
            .entry(container.id)
            .or_insert_with(|| container.chunk_objects());
        if chunks.contains(&name) {
            continue;
        }
        match tier2.delete_chunk(&name).await {
            Ok(()) => tracing::info!(chunk = %name, "deleted orphan chunk"),
            Err(e) => tracing::warn!(chunk = %name, error = %e, "cannot delete orphan chunk"),
        }
    }
}

/// Write to a temporary file, fsync, rename into place, fsync the directory.
fn durable_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Node {
    /// Opens the node: replays every log (errors here stop start-up) and
    /// finishes admin changes a crash interrupted.
    pub async fn open(config: ServerConfig) -> Result<Arc<Node>, Error> {
        config
            .validate()
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let lock = prepare_data_dir(&config)?;
        let group = |name: String| GroupConfig {
            log_dir: config.data_dir.join("log").join(&name),
            name,
            node_id: SINGLE_NODE_ID,
            tick: Duration::from_millis(config.raft.tick_ms),
            election_ticks: config.raft.election_ticks,
            heartbeat_ticks: config.raft.heartbeat_ticks,
            // A backstop behind the in-flight budget; raft wants it above max_size_per_msg.
            uncommitted_bytes_max: (config.in_flight_bytes_max * 2).max(4 << 20),
            snapshot_log_bytes: config.snapshot_log_bytes,
        };
        let budget = TailBudget::new(config.tail_buffer_bytes_max);
        let tier2 = Arc::new(Tier2::open(&config)?);
        let controller = Controller::start(group("meta".into()))?;
        let mut containers = Vec::new();
        for id in 0..config.containers {
            let c = Container::start(
                id,
                group(format!("container-{id}")),
                budget.clone(),
                config.in_flight_bytes_max,
            )?;
            containers.push(Arc::new(c));
        }
        controller.wait_ready().await?;
        for c in &containers {
            c.wait_ready().await?;
        }
        collect_orphans(&tier2, &containers).await;
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
            controller,
            containers,
            tier2,
            budget,
            stop_writers,
            closing: watch::channel(false).0,
            writers: std::sync::Mutex::new(writers),
            _lock: lock,
        });
        node.reconcile().await?;
        let retention = tokio::spawn(crate::retention::run(
            node.clone(),
            node.stop_writers.subscribe(),
        ));
        node.writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(retention);
        Ok(node)
    }

    /// Tells long-lived sessions to end.
    pub fn begin_close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once the node begins to shut down.
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
        let m = crate::metrics::metrics();
        m.tail_buffer_bytes.set(self.budget.used() as i64);
        m.cache_bytes.set(self.tier2.cache_bytes() as i64);
    }

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

    /// The container hosting `segment_id`.
    pub fn container_of(&self, segment_id: u64) -> &Arc<Container> {
        let i = container_of(segment_id, self.config.containers) as usize;
        &self.containers[i]
    }

    async fn reconcile(&self) -> Result<(), Error> {
        for stream in self.controller.all() {
            if stream.deleting {
                self.finish_delete(&stream).await?;
                continue;
            }
            self.ensure_segments(&stream).await?;
            if stream.sealed {
                self.seal_segments(&stream).await?;
            }
        }
        Ok(())
    }

    async fn ensure_segments(&self, stream: &StreamRecord) -> Result<(), Error> {
        for seg in &stream.segments {
            let c = self.container_of(seg.id);
            if c.segment(seg.id).is_none() {
                c.propose(Cmd::Create(SegmentRef { segment_id: seg.id }))
                    .await?;
            }
        }
        Ok(())
    }

    async fn seal_segments(&self, stream: &StreamRecord) -> Result<(), Error> {
        for seg in &stream.segments {
            let c = self.container_of(seg.id);
            if c.segment(seg.id).is_some_and(|s| !s.view().sealed) {
                c.propose(Cmd::Seal(SegmentRef { segment_id: seg.id }))
                    .await?;
            }
        }
        Ok(())
    }

    async fn finish_delete(&self, stream: &StreamRecord) -> Result<(), Error> {
        for seg in &stream.segments {
            let c = self.container_of(seg.id);
            if let Applied::Deleted { objects } = c
                .propose(Cmd::Delete(SegmentRef { segment_id: seg.id }))
                .await?
            {
                for name in objects {
                    if let Err(e) = self.tier2.delete_chunk(&name).await {
                        // Left behind as an orphan; nothing refers to it.
                        tracing::warn!(chunk = %name, error = %e, "cannot delete chunk object of deleted segment");
                    }
                }
            }
        }
        self.controller.remove(&stream.key).await?;
        Ok(())
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
        self.ensure_segments(&stream).await?;
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
        self.seal_segments(&stream).await?;
        Ok(stream)
    }

    pub async fn delete_stream(&self, key: &StreamKey) -> Result<(), Error> {
        self.stream(key)?;
        let stream = self.controller.mark_deleting(key).await?;
        self.finish_delete(&stream).await
    }
}
