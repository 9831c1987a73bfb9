//! Retention: on each container's leader, moves segment heads forward past
//! chunks that a stream's retention (time, size) no longer keeps, then
//! deletes those chunks from tier-2. With retention by consumption a chunk
//! goes once every subscribed reader group consumed it (its last complete
//! checkpoint, `Controller::consumed`) and it is past the minimum limits;
//! the time and size limits are then the maximum.
//!
//! Only whole tier-2 chunks go, never bytes still in a tail buffer, so a
//! stream may keep up to a chunk more than its limit. It never deletes a
//! chunk before the committed "truncate" entry says it left the segment.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::container::command::{Cmd, Truncate};
use crate::container::state::Applied;
use crate::container::{Container, Containers};
use crate::controller::Controller;
use crate::error::Error;
use crate::tier::writer::now_ms;
use crate::tier::Tier2;

/// How often retention looks at every stream.
const PASS_INTERVAL: Duration = Duration::from_secs(1);

/// Runs until `stop` turns true.
pub async fn run(
    controller: Arc<Controller>,
    containers: Containers,
    tier2: Arc<Tier2>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PASS_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        for stream in controller.all() {
            if stream.deleting || stream.retention.is_unlimited() {
                continue;
            }
            let per_segment = |bytes: u64| bytes.div_ceil(stream.segments.len().max(1) as u64);
            let consumed = stream
                .retention
                .by_consumption
                .then(|| controller.consumed(&stream.key))
                .flatten();
            for seg in &stream.segments {
                let container = containers.of(seg.id);
                let limits = Limits {
                    max_time_ms: stream.retention.time_ms,
                    max_bytes: per_segment(stream.retention.bytes),
                    consumed: consumed.as_ref().and_then(|c| c.get(&seg.id)).copied(),
                    min_time_ms: stream.retention.min_time_ms,
                    min_bytes: per_segment(stream.retention.min_bytes),
                };
                if let Err(e) = enforce(container, &tier2, seg.id, &limits).await {
                    tracing::warn!(stream = %stream.key, segment = seg.id, error = %e, "retention pass failed; will retry");
                }
            }
        }
    }
}

/// What one segment keeps; 0 means no limit.
struct Limits {
    /// Data older or beyond these goes, whatever was consumed.
    max_time_ms: u64,
    max_bytes: u64,
    /// By consumption: bytes below this offset were consumed by every
    /// subscribed group (None: not by consumption, or no group subscribes).
    consumed: Option<u64>,
    /// Consumed data goes only once past these.
    min_time_ms: u64,
    min_bytes: u64,
}

impl Limits {
    /// Whether a chunk ending at `end`, flushed at `flushed_at_ms`, of a
    /// segment `length` long, goes at `now`.
    fn expired(&self, end: u64, flushed_at_ms: u64, length: u64, now: u64) -> bool {
        let older = |ms: u64| ms > 0 && flushed_at_ms.saturating_add(ms) < now;
        let beyond = |bytes: u64| bytes > 0 && length - end >= bytes;
        if older(self.max_time_ms) || beyond(self.max_bytes) {
            return true;
        }
        let Some(consumed) = self.consumed else {
            return false;
        };
        let young = self.min_time_ms > 0 && !older(self.min_time_ms);
        let within = self.min_bytes > 0 && !beyond(self.min_bytes);
        end <= consumed && !young && !within
    }
}

/// Truncates one segment past its expired chunks.
async fn enforce(
    container: &Container,
    tier2: &Tier2,
    segment_id: u64,
    limits: &Limits,
) -> Result<(), Error> {
    if container.leader_term().is_none() {
        return Ok(());
    }
    let Some(segment) = container.segment(segment_id) else {
        return Ok(());
    };
    let view = segment.view();
    let now = now_ms();
    let mut head = view.head;
    for chunk in segment.chunks() {
        if !limits.expired(chunk.end, chunk.flushed_at_ms, view.length, now) {
            break;
        }
        head = chunk.end;
    }
    if head <= view.head {
        return Ok(());
    }
    let applied = container
        .propose(Cmd::Truncate(Truncate {
            segment_id,
            head,
            at_event_boundary: false,
        }))
        .await?;
    if let Applied::Truncated { objects } = applied {
        tracing::info!(
            segment = segment_id,
            head,
            objects = objects.len(),
            "retention truncated segment"
        );
        tier2.delete_unreferenced(objects).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Limits;

    fn limits(consumed: Option<u64>) -> Limits {
        Limits {
            max_time_ms: 0,
            max_bytes: 0,
            consumed,
            min_time_ms: 0,
            min_bytes: 0,
        }
    }

    #[test]
    fn consumed_chunks_go_within_the_minimum_and_maximum() {
        let now = 1_000_000;
        // Not by consumption, no limits: kept.
        assert!(!limits(None).expired(100, 0, 1000, now));
        // Consumed past its end: goes; not yet: kept.
        assert!(limits(Some(100)).expired(100, 0, 1000, now));
        assert!(!limits(Some(99)).expired(100, 0, 1000, now));
        // The minimum keeps consumed data that is young or near the tail.
        let young = Limits {
            min_time_ms: 10_000,
            ..limits(Some(u64::MAX))
        };
        assert!(!young.expired(100, now - 5_000, 1000, now));
        assert!(young.expired(100, now - 20_000, 1000, now));
        let near = Limits {
            min_bytes: 950,
            ..limits(Some(u64::MAX))
        };
        assert!(!near.expired(100, 0, 1000, now));
        assert!(near.expired(40, 0, 1000, now));
        // The maximum removes data no group consumed.
        let max = Limits {
            max_time_ms: 10_000,
            ..limits(Some(0))
        };
        assert!(max.expired(100, now - 20_000, 1000, now));
    }
}
