//! Retention: on each container's leader, moves segment heads forward past
//! chunks that a stream's retention (time, size) no longer keeps, then
//! deletes those chunks from tier-2.
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
use crate::controller::{Controller, Retention};
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
            let keep_bytes = stream
                .retention
                .bytes
                .div_ceil(stream.segments.len().max(1) as u64);
            for seg in &stream.segments {
                let container = containers.of(seg.id);
                if let Err(e) =
                    enforce(container, &tier2, seg.id, stream.retention, keep_bytes).await
                {
                    tracing::warn!(stream = %stream.key, segment = seg.id, error = %e, "retention pass failed; will retry");
                }
            }
        }
    }
}

/// Truncates one segment past its expired chunks.
async fn enforce(
    container: &Container,
    tier2: &Tier2,
    segment_id: u64,
    retention: Retention,
    keep_bytes: u64,
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
        let too_old =
            retention.time_ms > 0 && chunk.flushed_at_ms.saturating_add(retention.time_ms) < now;
        let too_much = retention.bytes > 0 && view.length - chunk.end >= keep_bytes;
        if !(too_old || too_much) {
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
