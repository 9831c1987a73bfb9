//! The auto-scaler: every `[scaling] tick_ms`, each node's container
//! leaders fold their segments' traffic into the replicated rates (a
//! `RateTick` entry), and the metadata leader looks at the rates of every
//! stream with a rate policy and starts the scale they call for
//! ([`crate::controller::scaling::decide`]).
//!
//! It only ever starts a scale through the same `StartScale` entry a manual
//! scale uses, so the checks where the scale executes (minimum segments,
//! key ranges) hold for it too, and the reconciler carries it out. It never
//! scales a stream that is sealed, being deleted, or already scaling.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::container::command::{Cmd, RateTick};
use crate::container::state::Applied;
use crate::controller::scaling::{decide, Load};
use crate::controller::{ScalingKind, StreamRecord};
use crate::error::Error;
use crate::tier::writer::now_ms;

use super::Node;

/// Runs a rate tick and (on the metadata leader) a decision every tick.
pub(super) async fn autoscale_loop(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let tick = Duration::from_millis(node.config.scaling.tick_ms);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        node.tick_rates().await;
        if node.controller.is_leader() {
            for stream in node.controller.all() {
                if let Err(e) = node.autoscale(&stream).await {
                    tracing::debug!(stream = %stream.key, error = %e, "auto-scale pass failed; will retry");
                }
            }
        }
    }
}

impl Node {
    /// One rate tick in every container this node leads.
    async fn tick_rates(&self) {
        let tick = RateTick {
            now_ms: now_ms(),
            windows_ms: self.config.scaling.windows_ms.to_vec(),
            writer_idle_ms: self.config.writer_id_expiry_ms,
        };
        for c in self.containers.iter().filter(|c| c.leader_term().is_some()) {
            match c.propose(Cmd::RateTick(tick.clone())).await {
                Ok(Applied::RatesTicked { writers }) => {
                    let m = &self.metrics;
                    m.writer_ids
                        .get_or_create(&m.group(&aquifer_proto::wire::container_group(c.id)))
                        .set(i64::try_from(writers).unwrap_or(i64::MAX));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(container = c.id, error = %e, "rate tick not applied; the next one folds its traffic in");
                }
            }
        }
    }

    /// Starts the scale `stream`'s policy calls for, if any.
    async fn autoscale(&self, stream: &StreamRecord) -> Result<(), Error> {
        let policy = stream.policy;
        if policy.kind == ScalingKind::Fixed
            || stream.sealed
            || stream.deleting
            || stream.scaling.is_some()
        {
            return Ok(());
        }
        let active: Vec<_> = stream.active().collect();
        let ids: Vec<u64> = active.iter().map(|g| g.id).collect();
        let views = self.segment_views(&ids).await?;
        let now = now_ms();
        let began = |epoch: u64| {
            stream
                .epochs
                .iter()
                .find(|e| e.epoch == epoch)
                .map_or(0, |e| e.created_ms)
        };
        let loads: Vec<Load> = active
            .iter()
            .filter_map(|g| {
                let view = views.get(&g.id)?;
                Some(Load::of(
                    &g.span(),
                    &policy,
                    view,
                    now.saturating_sub(began(g.epoch)),
                ))
            })
            .collect();
        if loads.len() != active.len() {
            return Ok(()); // a container did not answer: decide on the next tick
        }
        let Some((splits, merges)) = decide(&policy, &loads, self.config.scaling.cooldown_ms)
        else {
            return Ok(());
        };
        let kind = if splits.is_empty() { "merge" } else { "split" };
        self.controller
            .start_scale(&stream.key, &splits, &merges, self.config.containers)
            .await?;
        self.metrics.scale_started(kind, "auto");
        tracing::info!(stream = %stream.key, ?splits, ?merges, "auto-scale started");
        Ok(())
    }
}
