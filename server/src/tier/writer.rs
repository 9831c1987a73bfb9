//! The storage writer: on a container's leader, turns segments' tail
//! buffers into tier-2 chunks and records them through raft.
//!
//! A segment is flushed when its unflushed bytes reach a chunk, when the
//! oldest of them is older than the flush interval, when it is sealed, or
//! when the node's tail budget is over half full. A put that fails is retried
//! on the next pass; meanwhile the tail buffer keeps the bytes and appends
//! meet back-pressure once the budget is full. It must never drop bytes from
//! a tail buffer itself: only an applied "chunk flushed" entry does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{chunk_name, Tier2};
use crate::cache::TailBudget;
use crate::container::command::{ChunkFlushed, Cmd};
use crate::container::state::Applied;
use crate::container::Container;
use crate::error::Error;

/// How often the writer looks at its container's segments.
const PASS_INTERVAL: Duration = Duration::from_millis(50);
/// Pause after a failed put before the next pass tries again.
const RETRY_BACKOFF: Duration = Duration::from_millis(500);

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
}

impl StorageWriter {
    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        // When each segment's oldest unflushed byte was first seen.
        let mut since: HashMap<u64, Instant> = HashMap::new();
        loop {
            let pause = match self.pass(&mut since).await {
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

    async fn pass(&self, since: &mut HashMap<u64, Instant>) -> Result<(), Error> {
        let Some(term) = self.container.leader_term() else {
            return Ok(()); // only the leader flushes
        };
        let now = Instant::now();
        let ids = self.container.segment_ids();
        since.retain(|id, _| ids.contains(id));
        for id in ids {
            let Some(seg) = self.container.segment(id) else {
                continue;
            };
            let view = seg.view();
            if view.tail_bytes == 0 {
                since.remove(&id);
                continue;
            }
            let first_seen = *since.entry(id).or_insert(now);
            let due = view.tail_bytes >= self.chunk_bytes
                || view.sealed
                || now.duration_since(first_seen) >= self.flush_interval
                || self.budget.under_pressure();
            if !due {
                continue;
            }
            let Some((start, bytes)) = seg.unflushed(self.chunk_bytes) else {
                continue;
            };
            let end = start + bytes.len() as u64;
            let name = chunk_name(self.container.id, term, id, start);
            self.tier2.put_chunk(&name, bytes).await?;
            let cmd = Cmd::ChunkFlushed(ChunkFlushed {
                segment_id: id,
                start,
                end,
                name: name.clone(),
                flushed_at_ms: now_ms(),
            });
            match self.container.propose(cmd).await {
                Ok(Applied::ChunkRecorded) => {
                    tracing::debug!(
                        container = self.container.id,
                        segment = id,
                        start,
                        end,
                        "chunk flushed"
                    );
                    since.insert(id, Instant::now());
                }
                Ok(other) => {
                    tracing::error!(segment = id, ?other, "unexpected answer to chunk flushed")
                }
                Err(e @ (Error::OrphanChunk(_) | Error::SegmentNotFound(_))) => {
                    // Refused by the applied state: nothing refers to it.
                    tracing::info!(segment = id, chunk = %name, error = %e, "chunk not recorded; deleting orphan");
                    if let Err(e) = self.tier2.delete_chunk(&name).await {
                        tracing::warn!(chunk = %name, error = %e, "cannot delete orphan chunk");
                    }
                }
                // Unknown outcome (leadership lost mid-flight): the entry may
                // still commit, so the object stays; a retry uses a new name.
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
