//! Routing: which of this node's replicas serves a segment's reads and
//! appends, and where to send the client when none does (a node without a
//! replica, a blank replica, a follower still replaying).
//!
//! It only answers where to go; it never waits for a replica to catch up.

use std::sync::Arc;

use crate::container::{Container, Segment};
use crate::error::Error;

use super::Node;

impl Node {
    /// Segment `id`, if its container on this node has it; where to go
    /// instead if this node holds no replica of that container.
    pub fn segment(&self, id: u64) -> Result<Arc<Segment>, Error> {
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
        self.containers.of(segment_id)
    }

    /// The container serving `segment_id` here, or where to go instead when
    /// this node holds no (caught-up) replica of it.
    pub fn serving_container(&self, segment_id: u64) -> Result<&Arc<Container>, Error> {
        let c = self.container_of(segment_id);
        let blank = self.transport.is_some() && c.group().status().is_blank();
        let me = self.config.node_id;
        let Some(replicas) = self.placed(c.id) else {
            if blank {
                // Placement not known yet (the metadata is still replaying
                // after a restart): a blank replica has nothing to serve.
                return Err(Error::Unavailable(format!(
                    "node {me} holds no replica of {} (or has not replayed its metadata yet); try another node",
                    c.group().name()
                )));
            }
            return Ok(c);
        };
        if replicas.contains(&me) && !blank {
            return Ok(c);
        }
        let name = c.group().name();
        let to = self
            .membership
            .leader(name)
            .filter(|n| replicas.contains(n) && *n != me)
            .or_else(|| replicas.iter().copied().find(|&n| n != me && self.is_up(n)))
            .or_else(|| replicas.iter().copied().find(|&n| n != me));
        let on: Vec<String> = replicas.iter().map(u64::to_string).collect();
        Err(Error::NotLeader {
            message: format!(
                "node {me} holds no replica of {name} (it is placed on nodes {}); ask one of those",
                on.join(", ")
            ),
            leader: to.and_then(|n| self.addresses.get(n)),
        })
    }

    /// Calls `remote` at the other nodes that may serve `segment`'s
    /// container, `hint` (a redirect's leader) first, then its other
    /// replicas, until one answers; `why` is the error if none is tried.
    /// For a call this node's own replica refused.
    pub(super) async fn at_replicas_of<T, F, Fut>(
        &self,
        segment: u64,
        hint: Option<String>,
        why: String,
        remote: F,
    ) -> Result<T, Error>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let c = self.container_of(segment).id;
        let mut addrs: Vec<String> = hint.into_iter().collect();
        for n in self.placed(c).unwrap_or_default() {
            if n == self.config.node_id {
                continue;
            }
            if let Some(a) = self.addresses.get(n).filter(|a| !addrs.contains(a)) {
                addrs.push(a);
            }
        }
        let mut last = Error::Unavailable(why);
        for addr in addrs {
            match remote(addr).await {
                Ok(answer) => return Ok(answer),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The nodes container `id` is placed on; None on a single node or
    /// before the cluster placed it (every node then holds every group).
    pub(crate) fn placed(&self, id: u32) -> Option<Vec<u64>> {
        self.transport.as_ref()?;
        let placement = self.controller.placement();
        (!placement.is_empty()).then(|| placement.replicas(id).to_vec())
    }
}
