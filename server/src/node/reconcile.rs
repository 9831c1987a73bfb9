//! The reconciler: every node, every [`RECONCILE_INTERVAL`], brings the
//! containers it leads in line with the metadata (create, seal, delete
//! segments; discard transaction parts of forgotten transactions) and runs
//! the membership pass.
//!
//! The metadata is the truth: the reconciler only ever moves containers
//! toward it, so a crash between a metadata change and its container half
//! heals on the next pass. It never changes the metadata, except to drop a
//! deleted stream once its segments are gone.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::container::command::{Cmd, SegmentRef, TxnSegmentsRef};
use crate::container::state::Applied;
use crate::container::Container;
use crate::controller::{Scaling, StreamRecord};
use crate::error::Error;

use super::Node;

/// How often each node brings the containers it leads in line with the
/// metadata (cluster: the container leaders may be other nodes).
const RECONCILE_INTERVAL: Duration = Duration::from_millis(250);

/// Runs [`Node::reconcile_once`] every [`RECONCILE_INTERVAL`] until `stop`.
pub(super) async fn reconcile_loop(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
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
    /// Brings the containers this node leads in line with the metadata
    /// (create, seal, delete segments) and, on the metadata leader, removes
    /// deleted streams whose segments are gone. Every node runs it, so a
    /// crash between a metadata change and its container half heals, and
    /// admin calls need not reach the container leaders themselves.
    pub(super) async fn reconcile_once(&self) -> Result<(), Error> {
        let _pass = self.reconciling.lock().await;
        if self.transport.is_some() {
            self.reconcile_membership().await?;
        }
        self.sweep_orphan_parts().await;
        self.ensure_audit_streams().await;
        for stream in self.controller.all() {
            for seg in &stream.segments {
                let c = self.container_of(seg.id);
                if c.leader_term().is_none() {
                    continue;
                }
                // Sealed with its stream, or as a predecessor of a scale
                // (under way, or done).
                let to_seal = stream.sealed
                    || !seg.successors.is_empty()
                    || stream
                        .scaling
                        .as_ref()
                        .is_some_and(|x| x.predecessors.contains(&seg.id));
                match c.segment(seg.id).map(|s| s.view()) {
                    Some(_) if stream.deleting || seg.dropped => {
                        self.delete_segment(c, seg.id).await?
                    }
                    None if !stream.deleting && !seg.dropped => {
                        c.propose(Cmd::Create(SegmentRef { segment_id: seg.id }))
                            .await?;
                    }
                    Some(v) if to_seal && !v.sealed => {
                        c.propose(Cmd::Seal(SegmentRef { segment_id: seg.id }))
                            .await?;
                    }
                    _ => {}
                }
            }
            if let (Some(scaling), true) = (&stream.scaling, self.controller.is_leader()) {
                self.complete_scale(&stream, scaling).await?;
            }
            if self.controller.is_leader() && !stream.deleting {
                self.drop_expired_predecessors(&stream).await?;
            }
            if stream.deleting && self.controller.is_leader() {
                // The containers may be led elsewhere; one that cannot
                // answer now is asked again on the next pass.
                let ids: Vec<u64> = stream.segments.iter().map(|g| g.id).collect();
                if self.segment_views(&ids).await.is_ok_and(|v| v.is_empty()) {
                    match self.controller.remove(&stream.key).await {
                        // Removed by an earlier metadata leader whose
                        // answer was lost: done all the same.
                        Ok(_) | Err(Error::StreamNotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    /// On the meta leader: puts a scale's epoch in force once every
    /// successor exists in its container and every predecessor is sealed
    /// (the container leaders, here or elsewhere, do those steps). A leader
    /// that takes over mid-scale carries on from the recorded scale.
    async fn complete_scale(&self, stream: &StreamRecord, scaling: &Scaling) -> Result<(), Error> {
        let successors: Vec<u64> = stream
            .segments
            .iter()
            .filter(|g| g.pending)
            .map(|g| g.id)
            .collect();
        let ids: Vec<u64> = successors
            .iter()
            .chain(&scaling.predecessors)
            .copied()
            .collect();
        let Ok(views) = self.segment_views(&ids).await else {
            return Ok(()); // a container cannot answer now: next pass
        };
        let created = successors.iter().all(|id| views.contains_key(id));
        let sealed = scaling
            .predecessors
            .iter()
            .all(|id| views.get(id).is_some_and(|v| v.sealed));
        if created && sealed {
            self.controller
                .complete_scale(&stream.key, scaling.epoch)
                .await?;
            tracing::info!(stream = %stream.key, epoch = scaling.epoch, "scale complete: new epoch in force");
        }
        Ok(())
    }

    /// On the meta leader: retention removes whole sealed predecessors once
    /// it has expired every byte of them (head at the length), oldest first;
    /// dropped ones no container holds any more are forgotten.
    async fn drop_expired_predecessors(&self, stream: &StreamRecord) -> Result<(), Error> {
        let dropped: Vec<u64> = stream
            .segments
            .iter()
            .filter(|g| g.dropped)
            .map(|g| g.id)
            .collect();
        let candidates: Vec<u64> = if stream.retention.is_unlimited() {
            Vec::new()
        } else {
            stream
                .segments
                .iter()
                .filter(|g| !g.dropped && !g.successors.is_empty())
                .map(|g| g.id)
                .collect()
        };
        if dropped.is_empty() && candidates.is_empty() {
            return Ok(());
        }
        let ids: Vec<u64> = dropped.iter().chain(&candidates).copied().collect();
        let Ok(views) = self.segment_views(&ids).await else {
            return Ok(()); // a container cannot answer now: next pass
        };
        let gone: Vec<u64> = dropped
            .into_iter()
            .filter(|id| !views.contains_key(id))
            .collect();
        if !gone.is_empty() {
            self.controller.purge_segments(&stream.key, gone).await?;
        }
        let expired: Vec<u64> = candidates
            .into_iter()
            .filter(|id| {
                views
                    .get(id)
                    .is_some_and(|v| v.sealed && v.head == v.length)
            })
            .collect();
        if !expired.is_empty() {
            tracing::info!(stream = %stream.key, segments = ?expired, "retention drops whole expired predecessors");
            self.controller.drop_segments(&stream.key, expired).await?;
        }
        Ok(())
    }

    /// Discards transaction parts of the containers this node leads whose
    /// transaction the metadata forgot: an append that raced both its
    /// transaction's end and the forgetting of the part's tombstone (a
    /// copy delayed that long, or a metadata replica that far behind)
    /// would otherwise hold its bytes forever.
    async fn sweep_orphan_parts(&self) {
        let led: Vec<(&Container, Vec<u64>)> = self
            .containers
            .iter()
            .filter(|c| c.leader_term().is_some())
            .map(|c| {
                (
                    c.as_ref(),
                    c.parts().iter().map(|p| p.id).collect::<Vec<u64>>(),
                )
            })
            .filter(|(_, ids)| !ids.is_empty())
            .collect();
        if led.is_empty() {
            return; // the common case: no open parts here
        }
        let all: Vec<u64> = led
            .iter()
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect();
        let orphans = self.controller.orphan_parts(&all);
        for (c, ids) in led {
            let mine: Vec<u64> = ids.into_iter().filter(|id| orphans.contains(id)).collect();
            if mine.is_empty() {
                continue;
            }
            tracing::info!(container = c.id, parts = ?mine, "discarding transaction parts of forgotten transactions");
            let cmd = Cmd::ForgetTxns(TxnSegmentsRef {
                txn_segment_ids: mine,
            });
            match c.propose(cmd).await {
                Ok(Applied::TxnDropped { objects }) => {
                    self.tier2.delete_unreferenced(objects).await
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(container = c.id, error = %e, "orphan parts not discarded yet")
                }
            }
        }
    }

    async fn delete_segment(&self, c: &Container, segment_id: u64) -> Result<(), Error> {
        if let Applied::Deleted { objects } =
            c.propose(Cmd::Delete(SegmentRef { segment_id })).await?
        {
            self.tier2.delete_unreferenced(objects).await;
        }
        Ok(())
    }
}
