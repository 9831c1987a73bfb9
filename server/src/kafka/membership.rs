//! The membership of one Kafka consumer group under the classic protocol:
//! its members, generation, leader, chosen protocol and assignments, and
//! the rebalance that JoinGroup, LeaveGroup and expired sessions start and
//! the leader's SyncGroup ends.
//!
//! A static member (`group.instance.id`, KIP-345) keeps its place across
//! restarts: rejoining with its instance id and no member id replaces its
//! old member id (which is fenced from then on, `FENCED_INSTANCE_ID`), and
//! a follower doing so while the group is stable takes its old assignment
//! back without a rebalance. It leaves only by LeaveGroup or its session
//! timeout, as in Kafka.
//!
//! Kafka's coordinator keeps membership in memory and so does this one:
//! after the coordinator moves, members find it again and rejoin (their
//! committed offsets are durable, in the metadata). This module owns no
//! I/O, no clock (callers pass `now`) and no waiting: `groups` answers the
//! requests and waits for the answers this state machine leaves.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError as K;

/// Members (and member ids handed out, not yet joined) per group.
pub(super) const MEMBERS_MAX: usize = 1000;
/// Session timeouts accepted (Kafka's broker bounds are 6 s and 30 min;
/// shorter ones serve tests and fast failure detection).
const SESSION_TIMEOUT_MIN: Duration = Duration::from_secs(1);
const SESSION_TIMEOUT_MAX: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    /// The name Kafka's tools show.
    pub(super) fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

/// What a JoinGroup asks.
pub(super) struct Join {
    /// Empty: a new member.
    pub member_id: String,
    /// A static member's `group.instance.id` (JoinGroup v5 and up).
    pub instance_id: Option<String>,
    /// The client must learn its id first (JoinGroup v4 and up).
    pub require_known_id: bool,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    /// -1 (JoinGroup v0): the session timeout.
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
}

/// The answer a member's JoinGroup gets when its rebalance completes.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Joined {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// For the leader: every member and its metadata for the chosen
    /// protocol; empty for the others.
    pub members: Vec<(String, Bytes)>,
}

#[derive(Debug)]
pub(super) struct Member {
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    /// Joined the rebalance under way.
    joined: bool,
    /// The JoinGroup answer left for it by the last completed rebalance.
    answer: Option<Joined>,
    last_heard: Instant,
}

#[derive(Debug)]
pub(super) struct Group {
    pub state: State,
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Static members: instance id → its current member id.
    statics: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED: the member has a
    /// session timeout to join with it.
    pending: HashMap<String, Instant>,
    rebalance_deadline: Option<Instant>,
    /// Member ids are `<client id>-<group's serial>-<number>`: unique as
    /// long as the coordinator runs, which is as long as they are used.
    next_member: u64,
    serial: u64,
}

/// A Kafka error code.
pub(super) type Code = i16;

fn timeout(ms: i32) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

impl Group {
    pub(super) fn new(serial: u64) -> Self {
        Group {
            state: State::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            statics: HashMap::new(),
            pending: HashMap::new(),
            rebalance_deadline: None,
            next_member: 0,
            serial,
        }
    }

    /// A member joins (or rejoins): Ok(member id) once it is in the
    /// rebalance, whose answer [`Group::take_joined`] gives; or the error
    /// code, with a new member id for MEMBER_ID_REQUIRED.
    pub(super) fn join(&mut self, j: Join, now: Instant) -> Result<String, (Code, String)> {
        let session = timeout(j.session_timeout_ms);
        if !(SESSION_TIMEOUT_MIN..=SESSION_TIMEOUT_MAX).contains(&session) {
            return Err((K::InvalidSessionTimeout.code(), String::new()));
        }
        let rebalance = match j.rebalance_timeout_ms {
            -1 => session,
            ms => timeout(ms).clamp(SESSION_TIMEOUT_MIN, SESSION_TIMEOUT_MAX),
        };
        if j.protocols.is_empty() || j.protocol_type.is_empty() {
            return Err((K::InconsistentGroupProtocol.code(), String::new()));
        }
        let others = self.members.iter().filter(|(id, _)| **id != j.member_id);
        if self.members.len() > usize::from(self.members.contains_key(&j.member_id)) {
            let shared = j.protocols.iter().any(|(name, _)| {
                others
                    .clone()
                    .all(|(_, m)| m.protocols.iter().any(|(n, _)| n == name))
            });
            if j.protocol_type != self.protocol_type || !shared {
                return Err((K::InconsistentGroupProtocol.code(), String::new()));
            }
        }
        if let Some(instance) = j.instance_id.clone() {
            return self.join_static(instance, j, session, rebalance, now);
        }
        let known = self.members.contains_key(&j.member_id);
        if !known {
            if self.members.len() + self.pending.len() >= MEMBERS_MAX {
                return Err((K::GroupMaxSizeReached.code(), String::new()));
            }
            if j.member_id.is_empty() {
                self.next_member += 1;
                let id = format!("{}-{}-{}", j.client_id, self.serial, self.next_member);
                if j.require_known_id {
                    self.pending.insert(id.clone(), now + session);
                    return Err((K::MemberIdRequired.code(), id));
                }
                return Ok(self.add(id, j, session, rebalance, now));
            }
            if self.pending.remove(&j.member_id).is_none() {
                return Err((K::UnknownMemberId.code(), String::new()));
            }
        }
        let id = j.member_id.clone();
        Ok(self.add(id, j, session, rebalance, now))
    }

    /// A static member joins: with no member id it gets a new one,
    /// replacing (fencing) the one its instance had; with one, it must be
    /// its instance's current id.
    fn join_static(
        &mut self,
        instance: String,
        j: Join,
        session: Duration,
        rebalance: Duration,
        now: Instant,
    ) -> Result<String, (Code, String)> {
        let current = self.statics.get(&instance).cloned();
        if !j.member_id.is_empty() {
            return match current {
                Some(id) if id == j.member_id => Ok(self.add(id, j, session, rebalance, now)),
                Some(_) => Err((K::FencedInstanceId.code(), String::new())),
                None => Err((K::UnknownMemberId.code(), String::new())),
            };
        }
        if current.is_none() && self.members.len() + self.pending.len() >= MEMBERS_MAX {
            return Err((K::GroupMaxSizeReached.code(), String::new()));
        }
        self.next_member += 1;
        let id = format!("{}-{}-{}", j.client_id, self.serial, self.next_member);
        self.statics.insert(instance, id.clone());
        let Some(old) = current.and_then(|old| Some((old.clone(), self.members.remove(&old)?)))
        else {
            return Ok(self.add(id, j, session, rebalance, now));
        };
        let (old_id, old) = old;
        // A follower back while the group is stable: it takes its old
        // place and assignment, and nothing rebalances, unless the group
        // would now choose another protocol (Kafka's rule; the metadata
        // itself may differ, as a restarted consumer owns no partitions).
        if self.state == State::Stable && self.leader.as_deref() != Some(old_id.as_str()) {
            let kept = self.protocol.clone();
            self.members.insert(
                id.clone(),
                Member {
                    answer: Some(Joined {
                        generation: self.generation,
                        protocol_type: self.protocol_type.clone(),
                        protocol: kept.clone().unwrap_or_default(),
                        leader: self.leader.clone().unwrap_or_default(),
                        member_id: id.clone(),
                        members: vec![],
                    }),
                    last_heard: now,
                    client_id: j.client_id.clone(),
                    client_host: j.client_host.clone(),
                    session_timeout: session,
                    rebalance_timeout: rebalance,
                    protocols: j.protocols.clone(),
                    ..old
                },
            );
            if kept.as_deref() == Some(self.choose_protocol().as_str()) {
                return Ok(id);
            }
            self.members.remove(&id);
        }
        if self.leader.as_deref() == Some(old_id.as_str()) {
            self.leader = None;
        }
        Ok(self.add(id, j, session, rebalance, now))
    }

    /// Whether a request naming `instance` comes from its current member
    /// id: `FENCED_INSTANCE_ID` if the instance has rejoined since.
    pub(super) fn check_instance(&self, member: &str, instance: Option<&str>) -> Result<(), Code> {
        match instance.and_then(|i| self.statics.get(i)) {
            Some(current) if current != member => Err(K::FencedInstanceId.code()),
            _ => Ok(()),
        }
    }

    fn add(
        &mut self,
        id: String,
        j: Join,
        session: Duration,
        rebalance: Duration,
        now: Instant,
    ) -> String {
        if self.state != State::PreparingRebalance {
            self.start_rebalance(now);
        }
        self.protocol_type = j.protocol_type;
        self.members.insert(
            id.clone(),
            Member {
                instance_id: j.instance_id,
                client_id: j.client_id,
                client_host: j.client_host,
                session_timeout: session,
                rebalance_timeout: rebalance,
                protocols: j.protocols,
                assignment: Bytes::new(),
                joined: true,
                answer: None,
                last_heard: now,
            },
        );
        let deadline = now + rebalance;
        if self.rebalance_deadline.is_none_or(|d| d < deadline) {
            self.rebalance_deadline = Some(deadline);
        }
        self.maybe_complete(now);
        id
    }

    fn start_rebalance(&mut self, now: Instant) {
        self.state = State::PreparingRebalance;
        let longest = self.members.values().map(|m| m.rebalance_timeout).max();
        self.rebalance_deadline = longest.map(|t| now + t);
        for m in self.members.values_mut() {
            m.joined = false;
            m.answer = None;
        }
    }

    /// Completes the rebalance under way once every member rejoined, or
    /// its deadline passed (who did not rejoin is out).
    fn maybe_complete(&mut self, now: Instant) {
        if self.state != State::PreparingRebalance {
            return;
        }
        let all = self.members.values().all(|m| m.joined);
        if !all && self.rebalance_deadline.is_some_and(|d| now < d) {
            return;
        }
        self.members.retain(|_, m| m.joined);
        self.forget_gone_statics();
        self.generation = self.generation.wrapping_add(1).max(1);
        self.rebalance_deadline = None;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        let protocol = self.choose_protocol();
        let leader = match &self.leader {
            Some(l) if self.members.contains_key(l) => l.clone(),
            _ => self.members.keys().next().cloned().unwrap_or_default(),
        };
        let all: Vec<(String, Bytes)> = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), metadata_for(m, &protocol)))
            .collect();
        for (id, m) in self.members.iter_mut() {
            m.joined = false;
            m.last_heard = now;
            m.assignment = Bytes::new();
            m.answer = Some(Joined {
                generation: self.generation,
                protocol_type: self.protocol_type.clone(),
                protocol: protocol.clone(),
                leader: leader.clone(),
                member_id: id.clone(),
                members: if *id == leader { all.clone() } else { vec![] },
            });
        }
        self.protocol = Some(protocol);
        self.leader = Some(leader);
        self.state = State::CompletingRebalance;
    }

    /// The protocol every member speaks that most members list first
    /// (ties: the one listed first by the first member).
    fn choose_protocol(&self) -> String {
        let Some(first) = self.members.values().next() else {
            return String::new();
        };
        let speaks = |m: &Member, name: &str| m.protocols.iter().any(|(n, _)| n == name);
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| self.members.values().all(|m| speaks(m, n)))
            .collect();
        let votes = |name: &String| {
            self.members
                .values()
                .filter(|m| {
                    m.protocols
                        .iter()
                        .find(|(n, _)| candidates.contains(&n))
                        .is_some_and(|(n, _)| n == name)
                })
                .count()
        };
        let mut best: Option<(&String, usize)> = None;
        for c in &candidates {
            let v = votes(c);
            if best.is_none_or(|(_, b)| v > b) {
                best = Some((c, v));
            }
        }
        best.map(|(c, _)| c.clone()).unwrap_or_default()
    }

    /// The JoinGroup answer left for `member` (None: its rebalance is
    /// still under way); an error once it is no member.
    pub(super) fn take_joined(&mut self, member: &str) -> Result<Option<Joined>, Code> {
        let m = self
            .members
            .get_mut(member)
            .ok_or(K::UnknownMemberId.code())?;
        Ok(m.answer.take())
    }

    fn check(&self, member: &str, generation: i32) -> Result<(), Code> {
        if !self.members.contains_key(member) {
            return Err(K::UnknownMemberId.code());
        }
        if generation != self.generation {
            return Err(K::IllegalGeneration.code());
        }
        Ok(())
    }

    /// A SyncGroup: the leader's assignments end the rebalance. The
    /// member's assignment once the group is stable (None: wait for the
    /// leader's).
    pub(super) fn sync(
        &mut self,
        member: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Result<Option<Bytes>, Code> {
        self.check(member, generation)?;
        self.heard(member, now);
        if self.state == State::CompletingRebalance && self.leader.as_deref() == Some(member) {
            for (id, a) in assignments {
                if let Some(m) = self.members.get_mut(&id) {
                    m.assignment = a;
                }
            }
            self.state = State::Stable;
        }
        self.assignment(member, generation)
    }

    /// `member`'s assignment of `generation` if the group is stable in it.
    pub(super) fn assignment(&self, member: &str, generation: i32) -> Result<Option<Bytes>, Code> {
        self.check(member, generation)?;
        match self.state {
            State::Stable => Ok(self.members.get(member).map(|m| m.assignment.clone())),
            State::CompletingRebalance => Ok(None),
            State::PreparingRebalance | State::Empty => Err(K::RebalanceInProgress.code()),
        }
    }

    fn heard(&mut self, member: &str, now: Instant) {
        if let Some(m) = self.members.get_mut(member) {
            m.last_heard = now;
        }
    }

    pub(super) fn heartbeat(
        &mut self,
        member: &str,
        generation: i32,
        now: Instant,
    ) -> Result<(), Code> {
        if !self.members.contains_key(member) {
            return Err(K::UnknownMemberId.code());
        }
        self.heard(member, now);
        if self.state == State::PreparingRebalance {
            return Err(K::RebalanceInProgress.code());
        }
        self.check(member, generation)
    }

    /// A member leaves; a static one may name only its instance (its
    /// member id empty), as LeaveGroup v3 and up allow.
    pub(super) fn leave(
        &mut self,
        member: &str,
        instance: Option<&str>,
        now: Instant,
    ) -> Result<(), Code> {
        let member = match instance.and_then(|i| self.statics.get(i)) {
            Some(current) if member.is_empty() || current == member => current.clone(),
            Some(_) => return Err(K::FencedInstanceId.code()),
            None => member.to_string(),
        };
        if self.members.remove(&member).is_none() {
            return Err(K::UnknownMemberId.code());
        }
        self.removed(now);
        Ok(())
    }

    /// Static instances whose member is gone are free again.
    fn forget_gone_statics(&mut self) {
        let members = &self.members;
        self.statics.retain(|_, id| members.contains_key(id));
    }

    /// A member is gone: the others rebalance.
    fn removed(&mut self, now: Instant) {
        self.forget_gone_statics();
        if self
            .leader
            .as_ref()
            .is_some_and(|l| !self.members.contains_key(l))
        {
            self.leader = None;
        }
        match self.state {
            State::Stable | State::CompletingRebalance => self.start_rebalance(now),
            State::PreparingRebalance | State::Empty => {}
        }
        self.maybe_complete(now);
    }

    /// Whether `member` of `generation` may commit offsets now. Generation
    /// -1 without a member id is a commit from outside the group (Flink's
    /// KafkaSource, `assign()` consumers): allowed while no member is in.
    pub(super) fn may_commit(&self, member: &str, generation: i32) -> Result<(), Code> {
        if generation < 0 && self.members.is_empty() {
            return Ok(());
        }
        if !self.members.contains_key(member) {
            return Err(K::UnknownMemberId.code());
        }
        if self.state == State::CompletingRebalance {
            return Err(K::RebalanceInProgress.code());
        }
        if generation != self.generation {
            return Err(K::IllegalGeneration.code());
        }
        Ok(())
    }

    /// Expires sessions and member ids not used in time, and completes a
    /// rebalance whose deadline passed. Whether anything changed.
    pub(super) fn tick(&mut self, now: Instant) -> bool {
        let before = (self.state, self.generation, self.members.len());
        self.pending.retain(|_, until| now < *until);
        // A member waiting in a JoinGroup is alive; the others must be
        // heard within their session timeout, during a rebalance too.
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| !m.joined && m.last_heard + m.session_timeout <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            tracing::info!(member = %id, "Kafka group member's session expired");
            self.members.remove(id);
        }
        if !expired.is_empty() {
            self.removed(now);
        }
        self.maybe_complete(now);
        before != (self.state, self.generation, self.members.len())
    }

    /// Nothing is in it or waiting to join: it can be forgotten (its
    /// offsets stay in the metadata).
    pub(super) fn is_idle(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty()
    }
}

fn metadata_for(m: &Member, protocol: &str) -> Bytes {
    m.protocols
        .iter()
        .find(|(n, _)| n == protocol)
        .map(|(_, md)| md.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(id: &str, protocols: &[&str]) -> Join {
        Join {
            member_id: id.into(),
            instance_id: None,
            require_known_id: true,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(format!("md-{p}"))))
                .collect(),
        }
    }

    /// A new member: asked to learn its id, then joined.
    fn enter(g: &mut Group, now: Instant) -> String {
        let Err((code, id)) = g.join(join("", &["range", "roundrobin"]), now) else {
            panic!("a new member must learn its id first");
        };
        assert_eq!(code, K::MemberIdRequired.code());
        g.join(join(&id, &["range", "roundrobin"]), now).unwrap()
    }

    #[test]
    fn a_group_forms_rebalances_on_join_and_leave_and_expires_sessions() {
        let t0 = Instant::now();
        let mut g = Group::new(1);
        let a = enter(&mut g, t0);
        let ja = g.take_joined(&a).unwrap().unwrap();
        assert_eq!((ja.generation, ja.leader.as_str()), (1, a.as_str()));
        assert_eq!(ja.members.len(), 1);
        assert_eq!(
            g.sync(&a, 1, vec![(a.clone(), "A".into())], t0),
            Ok(Some("A".into()))
        );
        assert_eq!(g.state, State::Stable);

        // A second member: the first learns of the rebalance by heartbeat
        // and rejoins; both get generation 2, the first stays leader.
        let b = enter(&mut g, t0);
        assert_eq!(g.take_joined(&b), Ok(None));
        assert_eq!(g.heartbeat(&a, 1, t0), Err(K::RebalanceInProgress.code()));
        g.join(join(&a, &["range"]), t0).unwrap();
        let ja = g.take_joined(&a).unwrap().unwrap();
        let jb = g.take_joined(&b).unwrap().unwrap();
        assert_eq!((ja.generation, jb.generation), (2, 2));
        assert_eq!(ja.protocol, "range");
        assert_eq!((ja.members.len(), jb.members.len()), (2, 0));
        // The follower waits for the leader's assignment.
        assert_eq!(g.sync(&b, 2, vec![], t0), Ok(None));
        assert_eq!(g.may_commit(&b, 2), Err(K::RebalanceInProgress.code()));
        g.sync(
            &a,
            2,
            vec![(a.clone(), "A".into()), (b.clone(), "B".into())],
            t0,
        )
        .unwrap();
        assert_eq!(g.assignment(&b, 2), Ok(Some("B".into())));
        assert_eq!(g.may_commit(&b, 2), Ok(()));
        assert_eq!(g.may_commit(&b, 1), Err(K::IllegalGeneration.code()));
        assert_eq!(g.may_commit("", -1), Err(K::UnknownMemberId.code()));

        // b leaves: a alone in generation 3 after it rejoins.
        g.leave(&b, None, t0).unwrap();
        assert_eq!(g.state, State::PreparingRebalance);
        g.join(join(&a, &["range"]), t0).unwrap();
        assert_eq!(g.take_joined(&a).unwrap().unwrap().generation, 3);
        g.sync(&a, 3, vec![(a.clone(), "A".into())], t0).unwrap();

        // a is silent past its session: gone, the group is empty and
        // commits from outside the group are allowed.
        assert!(!g.tick(t0 + Duration::from_secs(9)));
        assert!(g.tick(t0 + Duration::from_secs(11)));
        assert_eq!(g.state, State::Empty);
        assert!(g.is_idle());
        assert_eq!(g.may_commit("", -1), Ok(()));
        assert_eq!(g.heartbeat(&a, 3, t0), Err(K::UnknownMemberId.code()));
    }

    #[test]
    fn a_member_that_does_not_rejoin_is_dropped_at_the_deadline() {
        let t0 = Instant::now();
        let mut g = Group::new(1);
        let a = enter(&mut g, t0);
        g.take_joined(&a).unwrap();
        g.sync(&a, 1, vec![], t0).unwrap();
        let b = enter(&mut g, t0);
        // a keeps heartbeating (alive) but never rejoins.
        let mut now = t0;
        while g.take_joined(&b) == Ok(None) {
            now += Duration::from_secs(5);
            let _ = g.heartbeat(&a, 1, now);
            g.tick(now);
            assert!(
                now < t0 + Duration::from_secs(40),
                "the deadline never came"
            );
        }
        assert!(!g.members.contains_key(&a));
        assert_eq!(g.leader.as_deref(), Some(b.as_str()));
    }

    #[test]
    fn bad_joins_are_refused() {
        let t0 = Instant::now();
        let mut g = Group::new(1);
        enter(&mut g, t0);
        assert_eq!(
            g.join(join("ghost", &["range"]), t0).map_err(|e| e.0),
            Err(K::UnknownMemberId.code())
        );
        assert_eq!(
            g.join(join("", &["sticky"]), t0).map_err(|e| e.0),
            Err(K::InconsistentGroupProtocol.code())
        );
        let mut short = join("", &["range"]);
        short.session_timeout_ms = 10;
        assert_eq!(
            g.join(short, t0).map_err(|e| e.0),
            Err(K::InvalidSessionTimeout.code())
        );
        // Ids handed out expire with their session timeout.
        let Err((_, id)) = g.join(join("", &["range"]), t0) else {
            panic!()
        };
        g.tick(t0 + Duration::from_secs(11));
        assert_eq!(
            g.join(join(&id, &["range"]), t0).map_err(|e| e.0),
            Err(K::UnknownMemberId.code())
        );
    }

    fn join_static(id: &str, instance: &str) -> Join {
        Join {
            instance_id: Some(instance.into()),
            ..join(id, &["range"])
        }
    }

    #[test]
    fn a_static_member_keeps_its_place_across_restarts() {
        let t0 = Instant::now();
        let mut g = Group::new(1);
        // Static members join without learning an id first.
        let a = g.join(join_static("", "ia"), t0).unwrap();
        let b = g.join(join_static("", "ib"), t0).unwrap();
        assert_eq!(g.join(join_static(&a, "ia"), t0), Ok(a.clone()));
        let gen = g.generation;
        assert_eq!(g.state, State::CompletingRebalance);
        assert_eq!(g.leader.as_deref(), Some(a.as_str()));
        let assignments = vec![
            (a.clone(), Bytes::from("pa")),
            (b.clone(), Bytes::from("pb")),
        ];
        g.sync(&a, gen, assignments, t0).unwrap();
        assert_eq!(g.state, State::Stable);

        // The follower restarts: a new member id, its old assignment, the
        // same generation, no rebalance; the old id is fenced.
        let b2 = g.join(join_static("", "ib"), t0).unwrap();
        assert_ne!(b2, b);
        assert_eq!(g.state, State::Stable);
        let joined = g.take_joined(&b2).unwrap().unwrap();
        assert_eq!(
            (joined.generation, joined.leader.as_str()),
            (gen, a.as_str())
        );
        assert_eq!(g.sync(&b2, gen, vec![], t0), Ok(Some(Bytes::from("pb"))));
        assert_eq!(
            g.check_instance(&b, Some("ib")),
            Err(K::FencedInstanceId.code())
        );
        assert_eq!(g.check_instance(&b2, Some("ib")), Ok(()));
        assert_eq!(
            g.join(join_static(&b, "ib"), t0).map_err(|e| e.0),
            Err(K::FencedInstanceId.code())
        );

        // The leader restarting rebalances (the assignment is its to make).
        let a2 = g.join(join_static("", "ia"), t0).unwrap();
        assert_eq!(g.state, State::PreparingRebalance);
        assert_eq!(g.join(join_static(&b2, "ib"), t0), Ok(b2.clone()));
        assert_eq!(g.state, State::CompletingRebalance);
        assert!(g.members.contains_key(&a2) && !g.members.contains_key(&a));

        // Leaving by instance id alone; then the instance is free.
        assert_eq!(g.leave("", Some("ib"), t0), Ok(()));
        assert!(!g.members.contains_key(&b2));
        assert_eq!(g.check_instance("anyone", Some("ib")), Ok(()));
        assert_eq!(
            g.leave(&b2, Some("ia"), t0),
            Err(K::FencedInstanceId.code())
        );
    }
}
