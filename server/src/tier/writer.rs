//! The storage writer: on a container's leader, turns segments' tail
//! buffers into tier-2 objects and records their chunks through raft.
//!
//! One object holds pieces of many segments (up to `chunk_bytes`), so a
//! container with many small segments makes few large objects, not many
//! tiny ones. The container flushes when its unflushed bytes fill an object,
//! when a segment's oldest unflushed byte is older than the flush interval,
//! when a segment is sealed, or when the node's tail budget is over half
//! full; segments that are due go first. A put that fails is retried on the
//! next pass; meanwhile the tail buffer keeps the bytes and appends meet
//! back-pressure once the budget is full. It must never drop bytes from a
//! tail buffer itself: only an applied "chunks flushed" entry does.
//!
//! Open transactions' parts are spilled the same way once large: a part
//! whose memory fills an object, or any part over [`PART_SPILL_MIN`] while
//! the node's transactions hold more than half their memory limit. Their
//! chunks stay theirs until the transaction commits (the merge hands them
//! to the parent segment without a copy) or aborts (they are deleted).
//!
//! It also collects the container's orphan objects, once per term it leads:
//! puts that a crash or a lost leadership cut off from their entry, and
//! what a delete left behind. Only objects of earlier terms go: a leader of
//! term T has applied every entry of earlier terms that will ever commit,
//! so one of those that no chunk names now never will be; objects of term T
//! may still be on their way into the log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{chunk_name, chunk_term, Tier2};
use crate::cache::TailBudget;
use crate::container::command::{ChunkFlushed, ChunksFlushed, Cmd};
use crate::container::state::Applied;
use crate::container::{Container, Segment};
use crate::error::Error;

/// How often the writer looks at its container's segments.
const PASS_INTERVAL: Duration = Duration::from_millis(50);
/// Pause after a failed put before the next pass tries again.
const RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// Objects put in one pass at most, so a busy writer still sees `stop`.
const OBJECTS_PER_PASS_MAX: usize = 16;
/// Under transaction memory pressure, parts at least this large spill.
pub const PART_SPILL_MIN: u64 = 1024 * 1024;

/// Wall-clock milliseconds since the epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct StorageWriter {
    pub container: Arc<Container>,
    pub tier2: Arc<Tier2>,
    pub budget: Arc<TailBudget>,
    pub chunk_bytes: u64,
    pub flush_interval: Duration,
    /// Transaction memory on the node above which parts spill early.
    pub txn_spill_pressure: u64,
}

/// A segment with unflushed bytes.
struct Pending {
    segment: Arc<Segment>,
    bytes: u64,
    /// Sealed, or its oldest unflushed byte is older than the interval.
    due: bool,
    first_seen: Instant,
}

impl StorageWriter {
    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        // When each segment's oldest unflushed byte was first seen.
        let mut since: HashMap<u64, Instant> = HashMap::new();
        // The last term whose orphans were collected.
        let mut collected = None;
        loop {
            let pause = match self.pass(&mut since, &mut collected).await {
                Ok(()) => PASS_INTERVAL,
                Err(e) => {
                    tracing::warn!(container = self.container.id, error = %e, "tier-2 flush failed; will retry");
                    RETRY_BACKOFF
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn pass(
        &self,
        since: &mut HashMap<u64, Instant>,
        collected: &mut Option<u64>,
    ) -> Result<(), Error> {
        let Some(term) = self.container.leader_term() else {
            return Ok(()); // only the leader flushes
        };
        if *collected != Some(term) {
            self.collect_orphans(term).await?;
            *collected = Some(term);
        }
        for _ in 0..OBJECTS_PER_PASS_MAX {
            let pending = self.pending(since);
            let total: u64 = pending.iter().map(|p| p.bytes).sum();
            let urgent = pending.iter().any(|p| p.due) || self.budget.under_pressure();
            if total == 0 || (total < self.chunk_bytes && !urgent) {
                break;
            }
            self.flush_object(term, pending, since).await?;
        }
        Ok(())
    }

    /// Deletes this container's objects from terms before `term` that no
    /// chunk names (see the module comment for why that is safe).
    async fn collect_orphans(&self, term: u64) -> Result<(), Error> {
        let names = self.tier2.list_chunks(self.container.id).await?;
        let live = self.container.chunk_objects();
        for name in names {
            // A name we did not write is nobody's chunk either.
            if live.contains(&name) || chunk_term(&name).is_some_and(|t| t >= term) {
                continue;
            }
            self.tier2.delete_chunk(&name).await?;
            tracing::info!(container = self.container.id, chunk = %name, "deleted orphan chunk");
        }
        Ok(())
    }

    /// Segments with unflushed bytes: due ones first, then oldest first.
    fn pending(&self, since: &mut HashMap<u64, Instant>) -> Vec<Pending> {
        let now = Instant::now();
        let ids = self.container.segment_ids();
        since.retain(|id, _| ids.contains(id));
        let mut pending = Vec::new();
        for id in ids {
            let Some(segment) = self.container.segment(id) else {
                continue;
            };
            let view = segment.view();
            if view.tail_bytes == 0 {
                since.remove(&id);
                continue;
            }
            let first_seen = *since.entry(id).or_insert(now);
            pending.push(Pending {
                segment,
                bytes: view.tail_bytes,
                due: view.sealed || now.duration_since(first_seen) >= self.flush_interval,
                first_seen,
            });
        }
        // Transaction parts spill only when large: most commit first.
        let pressure = self.budget.txn_used() > self.txn_spill_pressure;
        for part in self.container.parts() {
            let bytes = part.view().tail_bytes;
            if bytes >= self.chunk_bytes || (pressure && bytes >= PART_SPILL_MIN) {
                pending.push(Pending {
                    segment: part,
                    bytes,
                    due: pressure,
                    first_seen: now,
                });
            }
        }
        pending.sort_by_key(|p| (!p.due, p.first_seen));
        let lag = pending
            .iter()
            .map(|p| now.duration_since(p.first_seen).as_secs_f64())
            .fold(0.0, f64::max);
        let m = self.tier2.metrics();
        m.tier2_flush_lag_seconds
            .get_or_create(&m.group(&aquifer_proto::wire::container_group(self.container.id)))
            .set(lag);
        pending
    }

    /// Puts one object of up to `chunk_bytes` (at least one batch) made of
    /// the pending segments' oldest bytes, and records its chunks.
    async fn flush_object(
        &self,
        term: u64,
        pending: Vec<Pending>,
        since: &mut HashMap<u64, Instant>,
    ) -> Result<(), Error> {
        let name = chunk_name(self.container.id, term);
        let flushed_at_ms = now_ms();
        let mut parts = Vec::new();
        let mut chunks = Vec::new();
        let mut size = 0u64;
        for p in pending {
            let room = self.chunk_bytes.saturating_sub(size);
            if room == 0 {
                break;
            }
            let Some(piece) = p.segment.unflushed(room) else {
                continue;
            };
            if !chunks.is_empty() && piece.len > room {
                continue; // a batch larger than the room left: next object
            }
            chunks.push(ChunkFlushed {
                segment_id: p.segment.id,
                start: piece.start,
                end: piece.start + piece.len,
                name: name.clone(),
                flushed_at_ms,
                object_offset: size,
            });
            size += piece.len;
            parts.extend(piece.parts);
        }
        if chunks.is_empty() {
            return Ok(());
        }
        self.tier2.put_chunk(&name, parts).await?;
        let pieces = chunks.len();
        let segments: Vec<u64> = chunks.iter().map(|c| c.segment_id).collect();
        let cmd = Cmd::ChunksFlushed(ChunksFlushed { chunks });
        match self.container.propose(cmd).await? {
            Applied::ChunksRecorded { recorded, refused } => {
                for e in &refused {
                    // Deleted or sealed-and-flushed meanwhile: nothing refers
                    // to that piece, and the object goes with its last chunk.
                    tracing::info!(container = self.container.id, object = %name, error = %e, "chunk not recorded");
                }
                if recorded == 0 {
                    tracing::info!(object = %name, "no chunk recorded; deleting orphan object");
                    if let Err(e) = self.tier2.delete_chunk(&name).await {
                        tracing::warn!(object = %name, error = %e, "cannot delete orphan object");
                    }
                }
                tracing::debug!(container = self.container.id, object = %name, bytes = size, pieces, recorded, "chunk object flushed");
                let now = Instant::now();
                for id in segments {
                    since.insert(id, now);
                }
            }
            other => tracing::error!(object = %name, ?other, "unexpected answer to chunks flushed"),
        }
        // Unknown outcome (an error above, e.g. leadership lost mid-flight):
        // the entry may still commit, so the object stays; a retry uses a
        // new name and the loser is refused as stale.
        Ok(())
    }
}
