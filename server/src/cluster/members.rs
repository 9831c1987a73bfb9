//! Membership rules and bookkeeping: the next raft conf change that moves a
//! group's members to where the placement says they belong
//! ([`next_move`]), and what a node remembers between passes
//! ([`Membership`]). The pass itself is the node's
//! (`node/membership.rs`); this module holds no node state.
//!
//! The rules:
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

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::group::{GroupStatus, MemberChange};

/// How often a node asks the others whether a replica that still thinks it
/// votes was removed while it was away.
const REMOVED_CHECK_INTERVAL: Duration = Duration::from_secs(5);

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
/// configured replication factor's warning.
#[derive(Default)]
pub struct Membership {
    /// Leader of each group, as the leaders themselves report it.
    leaders: std::sync::RwLock<HashMap<String, u64>>,
    /// Each other node's Kafka listener, as it last reported it.
    kafka_listeners: std::sync::RwLock<HashMap<u64, std::net::SocketAddr>>,
    /// When each container's removed-replica check last ran.
    checked: std::sync::Mutex<HashMap<u32, Instant>>,
    /// The configured replication factor differs from the recorded one
    /// (said once).
    pub(crate) warned_factor: std::sync::atomic::AtomicBool,
}

impl Membership {
    pub fn leader(&self, group: &str) -> Option<u64> {
        let leaders = self.leaders.read().unwrap_or_else(|p| p.into_inner());
        leaders.get(group).copied()
    }

    pub(crate) fn set_leaders(&self, leaders: HashMap<String, u64>) {
        *self.leaders.write().unwrap_or_else(|p| p.into_inner()) = leaders;
    }

    pub fn kafka_listeners(&self) -> HashMap<u64, std::net::SocketAddr> {
        let listeners = self
            .kafka_listeners
            .read()
            .unwrap_or_else(|p| p.into_inner());
        listeners.clone()
    }

    pub(crate) fn set_kafka_listeners(&self, listeners: HashMap<u64, std::net::SocketAddr>) {
        *self
            .kafka_listeners
            .write()
            .unwrap_or_else(|p| p.into_inner()) = listeners;
    }

    /// True at most once per [`REMOVED_CHECK_INTERVAL`] per container.
    pub(crate) fn check_due(&self, container: u32) -> bool {
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
