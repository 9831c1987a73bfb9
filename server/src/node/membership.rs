//! The membership pass, run by the reconciler on every node of a cluster:
//! the metadata leader records the nodes and the placement; every group
//! this node leads takes one step toward it (see
//! [`crate::cluster::members::next_move`]); replicas placed elsewhere are
//! let go once raft says they no longer vote.
//!
//! It never changes a group's members on a node that does not lead it.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::members::{next_move, Move};
use crate::controller::placement::{place, Placement};
use crate::error::Error;
use crate::group::{GroupControl, LeaderConf};

use super::Node;

impl Node {
    /// Cluster membership, every reconcile pass: the metadata leader
    /// records the nodes (seeded from `peers`) and the placement; every
    /// group this node leads takes one step toward it; replicas placed
    /// elsewhere are let go; the transport follows the node list.
    pub(crate) async fn reconcile_membership(&self) -> Result<(), Error> {
        // One pass at a time: it runs inside the reconcile pass, which
        // holds the node's reconcile lock.
        let mut members = self.controller.nodes();
        if members.is_empty() {
            // Forming: the first metadata leader records the nodes it was
            // started with and their placement, in one entry.
            if self.controller.is_leader() && !self.config.join {
                let peers = self
                    .config
                    .cluster()
                    .map_err(|e| Error::InvalidArgument(e.to_string()))?;
                let ids: BTreeSet<u64> = peers.keys().copied().collect();
                let first = place(
                    &Placement::default(),
                    &ids,
                    self.config.replication_factor,
                    self.config.containers,
                );
                tracing::info!(replication_factor = first.replication_factor, meta_voters = ?first.meta_voters, containers = ?first.containers, "forming the cluster");
                self.controller.form(&peers, &first).await?;
            }
            return Ok(());
        }
        let wanted = members.clone();
        if self.controller.is_leader() {
            self.record_placement(&wanted).await?;
        }
        // Keep addresses of nodes being dropped until no group here lists
        // them, so their replicas can still be told.
        for (id, addr) in self.addresses.all() {
            members.entry(id).or_insert(addr);
        }
        if let Some(t) = &self.transport {
            t.sync(&members);
        }
        self.addresses.set(members);
        let placement = self.controller.placement();
        if placement.is_empty() {
            return Ok(());
        }
        self.move_members(&placement, &wanted);
        self.let_go(&placement).await;
        let all_done = self.groups().map(|g| g.status()).all(|s| {
            s.voters
                .iter()
                .chain(&s.learners)
                .all(|id| wanted.contains_key(id))
        });
        if all_done {
            self.addresses.set(wanted.clone());
            if let Some(t) = &self.transport {
                t.sync(&wanted);
            }
        }
        Ok(())
    }

    /// Every group this node runs: `meta`, then the containers.
    fn groups(&self) -> impl Iterator<Item = &dyn GroupControl> {
        std::iter::once(self.controller.group() as &dyn GroupControl).chain(
            self.containers
                .iter()
                .map(|c| c.group() as &dyn GroupControl),
        )
    }

    /// On the metadata leader: places the groups on the recorded nodes
    /// (keeping what it can of the previous placement) when that changes it.
    /// A cluster formed before placements existed is placed here first.
    async fn record_placement(&self, nodes: &BTreeMap<u64, String>) -> Result<(), Error> {
        let prev = self.controller.placement();
        let factor = if prev.is_empty() {
            self.config.replication_factor
        } else {
            prev.replication_factor
        };
        if factor != self.config.replication_factor
            && !self
                .membership
                .warned_factor
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                recorded = factor,
                configured = self.config.replication_factor,
                "replication_factor is fixed when the cluster forms; the configured value is ignored"
            );
        }
        let ids: BTreeSet<u64> = nodes.keys().copied().collect();
        let next = place(&prev, &ids, factor, self.config.containers);
        if next != prev {
            tracing::info!(replication_factor = factor, meta_voters = ?next.meta_voters, containers = ?next.containers, "placing replicas");
            self.controller.set_placement(&next).await?;
        }
        Ok(())
    }

    /// One membership step in every group this node leads.
    fn move_members(&self, placement: &Placement, nodes: &BTreeMap<u64, String>) {
        let me = self.config.node_id;
        if self.controller.is_leader() {
            let voters = &placement.meta_voters;
            let learners: Vec<u64> = nodes
                .keys()
                .copied()
                .filter(|n| !voters.contains(n))
                .collect();
            self.move_group(self.controller.group(), voters, &learners, me);
        }
        for c in &self.containers {
            if c.leader_term().is_some() {
                self.move_group(c.group(), placement.replicas(c.id), &[], me);
            }
        }
    }

    fn move_group(&self, group: &dyn GroupControl, voters: &[u64], learners: &[u64], me: u64) {
        let status = group.status();
        match next_move(&status, voters, learners, me) {
            Some(Move::Member(node, change)) => group.change_member(node, change),
            Some(Move::HandOver) => {
                let to = voters
                    .iter()
                    .copied()
                    .find(|&n| n != me && status.voters.contains(&n) && self.is_up(n));
                if let Some(to) = to {
                    group.transfer_leader(to);
                }
            }
            None => {}
        }
    }

    /// Destroys this node's replicas of containers placed elsewhere, once
    /// raft says they no longer vote. A replica whose removal never reached
    /// it (its node was down or cut off) still thinks it votes: a newer
    /// membership from a node that holds the container settles it.
    async fn let_go(&self, placement: &Placement) {
        let me = self.config.node_id;
        for c in &self.containers {
            let replicas = placement.replicas(c.id);
            if replicas.contains(&me) || c.group().status().is_blank() {
                continue;
            }
            if c.group().destroy(None).await || !self.membership.check_due(c.id) {
                continue;
            }
            let name = c.group().name().to_string();
            let mine = c.group().status().conf_index;
            for &n in replicas {
                let Some(addr) = self.addresses.get(n) else {
                    continue;
                };
                let Ok(status) = self.peers.status(&addr).await else {
                    continue;
                };
                let newer = status
                    .groups
                    .iter()
                    .find(|g| g.name == name && g.conf_index > mine);
                if let Some(g) = newer {
                    let view = LeaderConf {
                        conf_index: g.conf_index,
                        members: g.replicas.iter().chain(&g.learners).copied().collect(),
                    };
                    c.group().destroy(Some(view)).await;
                    break;
                }
            }
        }
    }
}
