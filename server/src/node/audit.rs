//! The node's side of the audit log: its audit streams and the internal
//! path the audit writer stores records through.
//!
//! - The metadata leader's reconciler creates `_system/audit-<id>` (one
//!   segment) for every member node that lacks one, so a node never needs
//!   the metadata leader itself, and a node added later gets one too.
//! - [`NodeAuditLog`] is the writer's [`AuditLog`]: appends and tail reads
//!   at the audit segment's container leader, here (a raft proposal, as an
//!   append session makes) or at another node (`Cluster.AppendInternal`,
//!   `Cluster.SegmentTail`), following the redirect like a transaction
//!   part's copy does.
//!
//! Nothing here records audit records: these appends are the audit log's
//! own, and auditing them would recurse.

use std::sync::Arc;

use aquifer_proto::v1::{InternalAppendRequest, SegmentTailRequest};
use bytes::Bytes;

use crate::audit::writer::{AuditLog, Tail};
use crate::audit::{self, SCOPE};
use crate::container::command::{Append, Cmd};
use crate::container::state::Applied;
use crate::controller::{Retention, ScalingPolicy, StreamKey};
use crate::error::Error;

use super::Node;

/// The key of node `node`'s audit stream.
fn audit_stream(node: u64) -> StreamKey {
    StreamKey {
        scope: SCOPE.to_string(),
        stream: audit::stream_name(node),
    }
}

/// The audit writer's way to this node's audit segment.
pub(crate) struct NodeAuditLog(pub Arc<Node>);

impl AuditLog for NodeAuditLog {
    async fn tail(&self) -> Result<Tail, Error> {
        let node = &self.0;
        let key = audit_stream(node.config.node_id);
        let stream = node.controller.get(&key)?;
        let segment_id = stream.active().next().map(|g| g.id).ok_or_else(|| {
            Error::Unavailable(format!(
                "audit stream {key} has no active segment (sealed?)"
            ))
        })?;
        let writer_id = audit::writer_id(node.config.node_id);
        node.segment_tail(segment_id, &writer_id).await
    }

    async fn append(
        &self,
        segment_id: u64,
        first_event_number: i64,
        event_count: u32,
        events: Bytes,
    ) -> Result<bool, Error> {
        let req = InternalAppendRequest {
            segment_id,
            writer_id: audit::writer_id(self.0.config.node_id),
            first_event_number,
            event_count,
            events,
        };
        self.0.append_internal(req).await
    }
}

impl Node {
    /// On the metadata leader: creates the audit stream of every member
    /// node that has none (the container half follows in the reconcile
    /// pass).
    pub(super) async fn ensure_audit_streams(&self) {
        if !self.config.audit.enabled || !self.controller.is_leader() {
            return;
        }
        let mut ids: Vec<u64> = self.controller.nodes().into_keys().collect();
        if !ids.contains(&self.config.node_id) {
            ids.push(self.config.node_id);
        }
        for id in ids {
            let key = audit_stream(id);
            if self.controller.get(&key).is_ok() {
                continue;
            }
            let created = self
                .controller
                .create(
                    &key,
                    1,
                    self.config.containers,
                    Retention::default(),
                    ScalingPolicy::default(),
                )
                .await;
            match created {
                Ok(_) => tracing::info!(stream = %key, "audit stream created"),
                // Being deleted (its successor is made once it is gone), or
                // made by a pass racing this one.
                Err(e) => {
                    tracing::debug!(stream = %key, error = %e, "audit stream not created yet")
                }
            }
        }
    }

    /// [`Node::local_segment_tail`] at the leader of `segment_id`'s
    /// container, here or elsewhere.
    async fn segment_tail(&self, segment_id: u64, writer_id: &str) -> Result<Tail, Error> {
        match self.local_segment_tail(segment_id, writer_id).await {
            Err(Error::NotLeader { leader, message }) => {
                let req = SegmentTailRequest {
                    segment_id,
                    writer_id: writer_id.to_string(),
                };
                let req = &req;
                let answer = self
                    .at_replicas_of(segment_id, leader, message, |addr| async move {
                        self.peers.segment_tail(&addr, req.clone()).await
                    })
                    .await?;
                Ok(Tail {
                    segment_id,
                    last_event_number: answer.last_event_number,
                    last_event: answer.last_event,
                })
            }
            other => other,
        }
    }

    /// Segment `segment_id`'s last event and `writer_id`'s last event number
    /// there, where this node leads its container (a ready leader has
    /// applied every entry of earlier terms that will ever commit).
    pub(crate) async fn local_segment_tail(
        &self,
        segment_id: u64,
        writer_id: &str,
    ) -> Result<Tail, Error> {
        let c = self.serving_container(segment_id)?;
        c.check_leader()?;
        let segment = c
            .segment(segment_id)
            .ok_or(Error::SegmentNotFound(segment_id))?;
        let last_event_number = c
            .last_event_number(segment_id, writer_id.to_string())
            .await?;
        let last_event = crate::read::last_event(&segment, &self.tier2).await?;
        Ok(Tail {
            segment_id,
            last_event_number,
            last_event,
        })
    }

    /// Appends `req` at the leader of its segment's container, here or
    /// elsewhere; answers whether it was a duplicate.
    async fn append_internal(&self, req: InternalAppendRequest) -> Result<bool, Error> {
        match self.local_append_internal(req.clone()).await {
            Err(Error::NotLeader { leader, message }) => {
                let req = &req;
                self.at_replicas_of(req.segment_id, leader, message, |addr| async move {
                    self.peers.append_internal(&addr, req.clone()).await
                })
                .await
            }
            other => other,
        }
    }

    /// [`Node::append_internal`] where this node leads the container: the
    /// same proposal an append session makes, so the writer table makes it
    /// exactly once.
    pub(crate) async fn local_append_internal(
        &self,
        req: InternalAppendRequest,
    ) -> Result<bool, Error> {
        let c = self.serving_container(req.segment_id)?;
        c.check_leader()?;
        let bytes = u32::try_from(req.events.len())
            .map_err(|_| Error::InvalidArgument("append over 4 GiB".into()))?;
        self.budget.wait_for_room(u64::from(bytes)).await;
        let cmd = Cmd::Append(Append {
            segment_id: req.segment_id,
            writer_id: req.writer_id,
            first_event_number: req.first_event_number,
            event_count: req.event_count,
            events: req.events,
            expected_length: None,
            txn_parent: None,
            append_ms: crate::tier::writer::now_ms(),
        });
        match c.submit(cmd, bytes).await?.await? {
            Applied::Appended { duplicate, .. } => Ok(duplicate),
            other => Err(Error::Internal(format!("append answered with {other:?}"))),
        }
    }
}
