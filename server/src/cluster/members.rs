//! Membership: moving each group's members to where the placement says
//! they belong, letting go of replicas a node no longer holds, spreading
//! leadership, and answering for containers a node holds no replica of.
//!
//! Every node runs this from its reconcile and balance loops:
//! - the metadata leader records the nodes and the placement;
//! - the leader of each group moves its members one raft conf change at a
//!   time: a new replica joins as a learner, becomes a voter once it has
//!   caught up, and only then is an old one dropped, so a group never has
//!   fewer voters than it should while it moves;
//! - a node destroys a replica that is not placed on it once raft says it
//!   is no longer a voter ([`crate::group::Group::destroy`] says when that
//!   is safe).
//!
//! It never changes a group's members on a node that does not lead it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aquifer_proto::v1::{ClusterStatus, SegmentInfo};
use tokio::sync::watch;

use super::placement::{place, Placement};
use crate::container::{container_of, Container, SegmentView};
use crate::error::Error;
use crate::group::{GroupControl, GroupStatus, LeaderConf, MemberChange};
use crate::node::Node;

/// How often a node checks whether it leads more containers than its share.
const BALANCE_INTERVAL: Duration = Duration::from_secs(3);
/// How often a node asks the others whether a replica that still thinks it
/// votes was removed while it was away.
const REMOVED_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How long a describe waits for a container replica to catch up.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(3);

/// The next step that brings a group's members toward `want_voters` (and
/// `want_learners`), as its leader `me` sees it; None once they match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    Member(u64, MemberChange),
    /// The leader itself is to go: hand leadership to a wanted voter first.
    HandOver,
}

pub fn next_move(
    status: &GroupStatus,
    want_voters: &[u64],
    want_learners: &[u64],
    me: u64,
) -> Option<Move> {
    let (voters, learners) = (&status.voters, &status.learners);
    let member = |n: &u64| voters.contains(n) || learners.contains(n);
    if let Some(&n) = want_voters.iter().chain(want_learners).find(|n| !member(n)) {
        return Some(Move::Member(n, MemberChange::AddLearner));
    }
    if let Some(&n) = want_voters.iter().find(|n| learners.contains(n)) {
        return Some(Move::Member(n, MemberChange::Promote));
    }
    if let Some(&n) = voters.iter().find(|n| !want_voters.contains(n)) {
        if n == me {
            return Some(Move::HandOver);
        }
        let change = if want_learners.contains(&n) {
            MemberChange::AddLearner
        } else {
            MemberChange::Remove
        };
        return Some(Move::Member(n, change));
    }
    let unwanted = |n: &&u64| !want_voters.contains(n) && !want_learners.contains(n);
    learners
        .iter()
        .find(unwanted)
        .map(|&n| Move::Member(n, MemberChange::Remove))
}

/// A node's membership bookkeeping: the groups' leaders as the balance
/// loop last heard them, when each removed-replica check ran, and the
/// membership pass in progress.
#[derive(Default)]
pub struct Membership {
    /// Leader of each group, as the leaders themselves report it.
    leaders: std::sync::RwLock<HashMap<String, u64>>,
    /// When each container's removed-replica check last ran.
    checked: std::sync::Mutex<HashMap<u32, Instant>>,
    /// The configured replication factor differs from the recorded one
    /// (said once).
    warned_factor: std::sync::atomic::AtomicBool,
    /// Held by the membership pass in progress.
    pass: tokio::sync::Mutex<()>,
}

impl Membership {
    pub fn leader(&self, group: &str) -> Option<u64> {
        let leaders = self.leaders.read().unwrap_or_else(|p| p.into_inner());
        leaders.get(group).copied()
    }

    fn set_leaders(&self, leaders: HashMap<String, u64>) {
        *self.leaders.write().unwrap_or_else(|p| p.into_inner()) = leaders;
    }

    /// True at most once per [`REMOVED_CHECK_INTERVAL`] per container.
    fn check_due(&self, container: u32) -> bool {
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        let due = checked
            .get(&container)
            .is_none_or(|at| at.elapsed() >= REMOVED_CHECK_INTERVAL);
        if due {
            checked.insert(container, Instant::now());
        }
        due
    }
}

fn view_info(id: u64, v: &SegmentView) -> SegmentInfo {
    SegmentInfo {
        segment_id: id,
        head_offset: v.head,
        length: v.length,
        sealed: v.sealed,
        tier2_length: v.tier2_length,
        chunk_count: v.chunk_count,
        tail_buffer_bytes: v.tail_bytes,
        log_bytes: v.log_bytes,
        ..SegmentInfo::default()
    }
}

fn info_view(i: &SegmentInfo) -> SegmentView {
    SegmentView {
        head: i.head_offset,
        length: i.length,
        sealed: i.sealed,
        tier2_length: i.tier2_length,
        chunk_count: i.chunk_count,
        tail_bytes: i.tail_buffer_bytes,
        log_bytes: i.log_bytes,
    }
}

impl Node {
    /// Cluster membership, every reconcile pass: the metadata leader
    /// records the nodes (seeded from `peers`) and the placement; every
    /// group this node leads takes one step toward it; replicas placed
    /// elsewhere are let go; the transport follows the node list.
    pub(crate) async fn reconcile_membership(&self) -> Result<(), Error> {
        // One pass at a time: the reconcile loop and admin calls both run
        // it, and two passes would propose the same changes twice.
        let _pass = self.membership.pass.lock().await;
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

    fn is_up(&self, node: u64) -> bool {
        self.transport
            .as_ref()
            .is_some_and(|t| t.health(node) == "up")
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

    /// The nodes container `id` is placed on; None on a single node or
    /// before the cluster placed it (every node then holds every group).
    fn placed(&self, id: u32) -> Option<Vec<u64>> {
        self.transport.as_ref()?;
        let placement = self.controller.placement();
        (!placement.is_empty()).then(|| placement.replicas(id).to_vec())
    }

    /// The segments among `ids` as their containers hold them, every
    /// acknowledged event included: from this node's replicas where it
    /// holds them (after a raft ReadIndex), else from a node that does.
    /// Segments no container has are left out.
    pub async fn segment_views(&self, ids: &[u64]) -> Result<HashMap<u64, SegmentView>, Error> {
        let mut by_container: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for &id in ids {
            by_container
                .entry(container_of(id, self.config.containers))
                .or_default()
                .push(id);
        }
        let asks = by_container
            .into_values()
            .map(|ids| self.container_views(ids));
        let mut views = HashMap::new();
        for answer in futures::future::join_all(asks).await {
            views.extend(answer?);
        }
        Ok(views)
    }

    async fn container_views(&self, ids: Vec<u64>) -> Result<Vec<(u64, SegmentView)>, Error> {
        let Some(&first) = ids.first() else {
            return Ok(Vec::new());
        };
        let redirect = match self.local_segment_views(&ids).await {
            Ok(views) => return Ok(views),
            Err(Error::NotLeader { leader, message }) => (leader, message),
            // This replica got no read point in time: another may.
            Err(Error::Unavailable(message)) => (None, message),
            Err(e) => return Err(e),
        };
        let c = self.container_of(first).id;
        let mut addrs: Vec<String> = redirect.0.into_iter().collect();
        for n in self.placed(c).unwrap_or_default() {
            if let Some(a) = self.addresses.get(n).filter(|a| !addrs.contains(a)) {
                addrs.push(a);
            }
        }
        let mut last = Error::Unavailable(redirect.1);
        for addr in addrs {
            match self.peers.segment_views(&addr, ids.clone()).await {
                Ok(infos) => {
                    return Ok(infos.iter().map(|i| (i.segment_id, info_view(i))).collect())
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// [`Node::segment_views`] from this node's replicas only (all of `ids`
    /// in one container); refuses, naming where to go, if it holds none.
    pub async fn local_segment_views(&self, ids: &[u64]) -> Result<Vec<(u64, SegmentView)>, Error> {
        let Some(&first) = ids.first() else {
            return Ok(Vec::new());
        };
        let c = self.serving_container(first)?;
        if c.leader_term().is_none() {
            c.group().read_index(READ_INDEX_TIMEOUT).await?;
        }
        Ok(ids
            .iter()
            .filter_map(|&id| c.segment(id).map(|s| (id, s.view())))
            .collect())
    }

    /// [`Node::local_segment_views`] as the `SegmentViews` call answers it.
    pub async fn segment_infos(&self, ids: &[u64]) -> Result<Vec<SegmentInfo>, Error> {
        let mut by_container: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for &id in ids {
            by_container
                .entry(container_of(id, self.config.containers))
                .or_default()
                .push(id);
        }
        let mut infos = Vec::new();
        for ids in by_container.values() {
            let views = self.local_segment_views(ids).await?;
            infos.extend(views.iter().map(|(id, v)| view_info(*id, v)));
        }
        Ok(infos)
    }

    /// Every other node's view of the cluster (those that answer).
    async fn peer_statuses(&self) -> Vec<ClusterStatus> {
        let me = self.config.node_id;
        let asks = self
            .addresses
            .all()
            .into_iter()
            .filter(|(id, _)| *id != me)
            .map(|(_, addr)| async move { self.peers.status(&addr).await.ok() });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

/// Spreads container leadership evenly: every [`BALANCE_INTERVAL`], a node
/// that leads more than its share hands one container to the voter of that
/// group that leads the fewest (one move per pass, so the counts settle in
/// between). Counts come from every node's own report of what it leads,
/// which also tells each node where to send requests for containers it
/// holds no replica of.
pub(crate) async fn balance_loop(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let me = node.config.node_id;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(BALANCE_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let nodes: Vec<u64> = node.controller.nodes().keys().copied().collect();
        let mut led: HashMap<u64, usize> = nodes.iter().map(|&n| (n, 0)).collect();
        let mut leaders = HashMap::new();
        for c in node.containers.iter().filter(|c| c.leader_term().is_some()) {
            leaders.insert(c.group().name().to_string(), me);
            *led.entry(me).or_default() += 1;
        }
        for status in node.peer_statuses().await {
            let leading = status.groups.iter().filter(|g| {
                g.leader_id == status.node_id
                    && aquifer_proto::wire::parse_container_group(&g.name).is_some()
            });
            for g in leading {
                leaders.insert(g.name.clone(), status.node_id);
                *led.entry(status.node_id).or_default() += 1;
            }
        }
        node.membership.set_leaders(leaders);
        let share = node.containers.len().div_ceil(nodes.len().max(1));
        let mine = led.get(&me).copied().unwrap_or(0);
        if mine <= share {
            continue;
        }
        // Only to nodes our raft messages reach: a transfer to a dead node
        // stalls the group's proposals until the transfer times out.
        let moves = node
            .containers
            .iter()
            .filter(|c| c.leader_term().is_some())
            .filter_map(|c| {
                let to = c
                    .group()
                    .status()
                    .voters
                    .into_iter()
                    .filter(|&n| n != me && node.is_up(n))
                    .min_by_key(|n| led.get(n).copied().unwrap_or(0))?;
                Some((c, to, led.get(&to).copied().unwrap_or(0)))
            })
            .min_by_key(|(_, _, count)| *count);
        if let Some((c, to, count)) = moves {
            if count + 1 < mine {
                c.group().transfer_leader(to);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(voters: &[u64], learners: &[u64]) -> GroupStatus {
        GroupStatus {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            ..GroupStatus::default()
        }
    }

    /// Applies moves (as raft would, promoting at once) until none is left.
    fn walk(mut s: GroupStatus, want: &[u64], learners: &[u64], me: u64) -> Vec<Move> {
        let mut moves = Vec::new();
        while let Some(m) = next_move(&s, want, learners, me) {
            moves.push(m);
            assert!(moves.len() < 20, "no end: {moves:?}");
            match m {
                Move::Member(n, MemberChange::AddLearner) => {
                    s.voters.retain(|&v| v != n);
                    s.learners.push(n);
                }
                Move::Member(n, MemberChange::Promote) => {
                    s.learners.retain(|&v| v != n);
                    s.voters.push(n);
                }
                Move::Member(n, MemberChange::Remove) => {
                    s.learners.retain(|&v| v != n);
                    s.voters.retain(|&v| v != n);
                }
                Move::HandOver => break,
            }
            // Never fewer voters than wanted while moving.
            assert!(s.voters.len() >= want.len(), "{s:?}");
        }
        moves
    }

    #[test]
    fn a_replica_moves_by_learner_then_voter_then_removal() {
        use MemberChange::*;
        let moves = walk(status(&[1, 2, 3], &[]), &[1, 3, 4], &[], 1);
        assert_eq!(
            moves,
            vec![
                Move::Member(4, AddLearner),
                Move::Member(4, Promote),
                Move::Member(2, Remove)
            ]
        );
    }

    #[test]
    fn the_leader_hands_over_before_it_goes() {
        assert_eq!(
            next_move(&status(&[1, 2, 3], &[]), &[2, 3], &[], 1),
            Some(Move::HandOver)
        );
        assert_eq!(
            next_move(&status(&[1, 2, 3], &[]), &[2, 3], &[], 2),
            Some(Move::Member(1, MemberChange::Remove))
        );
    }

    #[test]
    fn meta_followers_are_learners() {
        use MemberChange::*;
        // Node 4 joins: a learner of meta, not a voter.
        let moves = walk(status(&[1, 2, 3], &[]), &[1, 2, 3], &[4], 1);
        assert_eq!(moves, vec![Move::Member(4, AddLearner)]);
        // Voter 3 leaves the voters but stays a learner; node 4 votes.
        let moves = walk(status(&[1, 2, 3], &[4]), &[1, 2, 4], &[3], 1);
        assert_eq!(
            moves,
            vec![Move::Member(4, Promote), Move::Member(3, AddLearner)]
        );
        assert_eq!(
            next_move(&status(&[1, 2], &[5]), &[1, 2], &[], 1),
            Some(Move::Member(5, Remove))
        );
    }
}
