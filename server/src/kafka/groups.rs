//! The Kafka group coordinator: FindCoordinator, JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup, DescribeGroups, ListGroups and DeleteGroups.
//!
//! The coordinator of every group is the node that leads `meta`, because
//! committed offsets are metadata (`controller::kafka_offsets`): a commit
//! is answered by the node that can make it durable. Membership lives in
//! memory there (`membership`), as in Kafka; FindCoordinator on any node
//! names it (`brokers`). When `meta`'s leader changes, members get
//! NOT_COORDINATOR, find the new leader and rejoin.
//!
//! This module owns the groups' membership and the waiting a JoinGroup
//! and a follower's SyncGroup do; it never writes offsets (`offsets`
//! does) and never decides a rebalance's outcome (`membership` does).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as FoundCoordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as K;
use tokio::sync::watch;

use super::brokers::{broker_id, Listener};
use super::membership::{self, Code, Group, State};
use super::Kafka;
use crate::controller::kafka_offsets::KafkaOffsetsCommand;

/// Groups with members the coordinator holds at once.
const GROUPS_MAX: usize = 10_000;
/// Longest group id accepted (it is kept in the metadata).
const GROUP_ID_BYTES_MAX: usize = 255;
/// How often sessions and rebalance deadlines are checked.
const TICK: Duration = Duration::from_millis(200);
/// How often the coordinator looks for groups whose offsets expired (at
/// most), and how many it deletes at most per look (one `meta` entry
/// each).
const EXPIRY_EVERY: Duration = Duration::from_secs(60);
const EXPIRED_PER_PASS: usize = 100;
/// Slack past a member's rebalance timeout before its JoinGroup gives up
/// waiting (the deadline itself completes the rebalance).
const JOIN_WAIT_SLACK: Duration = Duration::from_secs(5);

/// Every group with members, and the `meta` term they belong to.
pub(super) struct Coordinator {
    inner: Mutex<Inner>,
    /// Bumped on every change, so waiters look again.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct Inner {
    /// The `meta` leader term the groups were formed in; a new term
    /// starts with none (members rejoin).
    term: Option<u64>,
    groups: HashMap<String, Group>,
    /// Numbers groups, so member ids are never reused.
    serial: u64,
}

impl Coordinator {
    pub(super) fn new() -> Self {
        Coordinator {
            inner: Mutex::new(Inner::default()),
            changed: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// Why a group request cannot be served here.
fn valid_group(id: &str) -> Result<(), Code> {
    if id.is_empty() || id.len() > GROUP_ID_BYTES_MAX {
        return Err(K::InvalidGroupId.code());
    }
    Ok(())
}

impl Kafka {
    /// The groups as of `meta`'s current leader term, or NOT_COORDINATOR.
    fn coordinating(&self) -> Result<std::sync::MutexGuard<'_, Inner>, Code> {
        let term = self
            .node
            .controller
            .group()
            .leader_term()
            .ok_or(K::NotCoordinator.code())?;
        let mut inner = self.coordinator.lock();
        if inner.term != Some(term) {
            inner.groups.clear();
            inner.term = Some(term);
        }
        Ok(inner)
    }

    /// NOT_COORDINATOR unless this node coordinates the groups now.
    pub(super) fn check_coordinator(&self) -> Result<(), Code> {
        self.coordinating().map(drop)
    }

    /// Runs `f` on group `id` (made if `create`, within the bound), then
    /// wakes the waiters.
    pub(super) fn with_group<R>(
        &self,
        id: &str,
        create: bool,
        f: impl FnOnce(&mut Group) -> Result<R, Code>,
    ) -> Result<R, Code> {
        let out = {
            let mut inner = self.coordinating()?;
            let Inner { groups, serial, .. } = &mut *inner;
            if !groups.contains_key(id) {
                if !create {
                    return Err(K::UnknownMemberId.code());
                }
                if groups.len() >= GROUPS_MAX {
                    tracing::warn!(
                        group = id,
                        "Kafka group refused: {GROUPS_MAX} groups have members"
                    );
                    return Err(K::GroupMaxSizeReached.code());
                }
                *serial += 1;
                groups.insert(id.to_string(), Group::new(*serial));
            }
            let Some(g) = groups.get_mut(id) else {
                return Err(K::UnknownMemberId.code());
            };
            f(g)
        };
        self.coordinator.bump();
        out
    }

    /// Waits until `f` answers for group `id` (Ok(None): not yet), at most
    /// `wait`; REBALANCE_IN_PROGRESS if it never does.
    async fn wait_group<R>(
        &self,
        id: &str,
        wait: Duration,
        mut f: impl FnMut(&mut Group) -> Result<Option<R>, Code>,
    ) -> Result<R, Code> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Subscribed before looking, so no change is missed.
            let mut changed = self.coordinator.changed.subscribe();
            {
                let mut inner = self.coordinating()?;
                let g = inner.groups.get_mut(id).ok_or(K::UnknownMemberId.code())?;
                if let Some(r) = f(g)? {
                    return Ok(r);
                }
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return Err(K::RebalanceInProgress.code());
            }
        }
    }

    /// Expires sessions and completes rebalances whose deadline passed;
    /// forgets groups with nobody in them. Runs until the node closes.
    pub(super) async fn run_coordinator(&self) {
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A short retention (tests) is looked at as often as it lapses.
        let look = Duration::from_millis(self.node.config.kafka_offsets_retention_ms)
            .clamp(TICK, EXPIRY_EVERY);
        let mut expiry = tokio::time::Instant::now() + look;
        loop {
            every.tick().await;
            if tokio::time::Instant::now() >= expiry {
                expiry += look;
                self.expire_offsets().await;
            }
            let changed = match self.coordinating() {
                Err(_) => {
                    // Not the coordinator (any more): waiters must learn.
                    let mut inner = self.coordinator.lock();
                    let had = !inner.groups.is_empty();
                    inner.groups.clear();
                    inner.term = None;
                    had
                }
                Ok(mut inner) => {
                    let now = Instant::now();
                    let mut changed = false;
                    for g in inner.groups.values_mut() {
                        changed |= g.tick(now);
                    }
                    inner.groups.retain(|_, g| !g.is_idle());
                    changed
                }
            };
            if changed {
                self.coordinator.bump();
            }
        }
    }

    /// Deletes the offsets of groups with no members whose newest commit
    /// is older than `kafka_offsets_retention_ms`, as Kafka expires them
    /// (on the coordinator only; a failed delete is tried next pass).
    async fn expire_offsets(&self) {
        let retention = self.node.config.kafka_offsets_retention_ms;
        let now = crate::tier::writer::now_ms();
        if retention == 0 || now <= retention {
            return;
        }
        let candidates = self
            .node
            .controller
            .kafka_offset_groups_before(now - retention, EXPIRED_PER_PASS);
        let expired: Vec<String> = match self.coordinating() {
            Ok(inner) => candidates
                .into_iter()
                .filter(|g| inner.groups.get(g).is_none_or(Group::is_idle))
                .collect(),
            Err(_) => return,
        };
        for group in expired {
            match self.delete_offsets(&group).await {
                Ok(()) => tracing::info!(group, "Kafka group's offsets expired"),
                Err(e) => tracing::warn!(group, error = %e, "expiring Kafka offsets failed"),
            }
        }
    }

    pub(super) async fn find_coordinator(
        &self,
        req: FindCoordinatorRequest,
        version: i16,
    ) -> FindCoordinatorResponse {
        let brokers = self.brokers();
        // Every group's and transactional id's coordinator is the `meta`
        // leader, wherever it is.
        let coordinator = self
            .leader_of(self.node.controller.group(), &brokers)
            .and_then(|l| Some((l.node, brokers.get(&l.node)?)));
        let answer = |key: &str| -> Result<(BrokerId, &Listener), (Code, String)> {
            match (req.key_type, coordinator) {
                (0 | 1, Some((node, listener))) => Ok((broker_id(node), listener)),
                (0 | 1, None) => Err((
                    K::CoordinatorNotAvailable.code(),
                    format!(
                        "the coordinator for {key:?} is the metadata leader, and none is \
                         known with a Kafka listener now (an election?); retry"
                    ),
                )),
                (other, _) => Err((
                    K::InvalidRequest.code(),
                    format!(
                        "coordinator key type {other} is not one of 0 (group), 1 (transaction)"
                    ),
                )),
            }
        };
        let mut r = FindCoordinatorResponse::default();
        if version >= 4 {
            for key in req.coordinator_keys {
                let c = FoundCoordinator::default();
                let c = match answer(&key) {
                    Ok((id, l)) => c
                        .with_node_id(id)
                        .with_host(l.host.clone())
                        .with_port(l.port),
                    Err((code, message)) => c
                        .with_node_id((-1).into())
                        .with_error_code(code)
                        .with_error_message(Some(StrBytes::from_string(message))),
                };
                r.coordinators.push(c.with_key(key));
            }
            return r;
        }
        match answer(&req.key) {
            Ok((id, l)) => r
                .with_node_id(id)
                .with_host(l.host.clone())
                .with_port(l.port),
            Err((code, message)) => {
                r = r.with_node_id((-1).into()).with_error_code(code);
                if version >= 1 {
                    r.error_message = Some(StrBytes::from_string(message));
                }
                r
            }
        }
    }

    pub(super) async fn join_group(
        &self,
        req: JoinGroupRequest,
        version: i16,
        client_id: String,
        client_host: String,
    ) -> JoinGroupResponse {
        let group = req.group_id.0.to_string();
        let refused = |code: Code, member_id: String| {
            let mut r = JoinGroupResponse::default()
                .with_error_code(code)
                .with_member_id(StrBytes::from_string(member_id));
            if version >= 7 {
                r.protocol_name = None;
            }
            r
        };
        if let Err(code) = valid_group(&group) {
            return refused(code, String::new());
        }
        let join = membership::Join {
            member_id: req.member_id.to_string(),
            instance_id: req.group_instance_id.as_ref().map(|i| i.to_string()),
            require_known_id: version >= 4,
            client_id,
            client_host,
            session_timeout_ms: req.session_timeout_ms,
            rebalance_timeout_ms: if version >= 1 {
                req.rebalance_timeout_ms
            } else {
                -1
            },
            protocol_type: req.protocol_type.to_string(),
            protocols: req
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect(),
        };
        let wait = Duration::from_millis(
            u64::try_from(join.rebalance_timeout_ms.max(join.session_timeout_ms)).unwrap_or(0),
        ) + JOIN_WAIT_SLACK;
        let joining = self.with_group(&group, true, |g| Ok(g.join(join, Instant::now())));
        let member = match joining {
            Ok(Ok(m)) => m,
            // MEMBER_ID_REQUIRED carries the member's new id.
            Ok(Err((code, id))) => return refused(code, id),
            Err(code) => return refused(code, String::new()),
        };
        let joined = match self
            .wait_group(&group, wait, |g| g.take_joined(&member))
            .await
        {
            Ok(j) => j,
            Err(code) => return refused(code, member),
        };
        let mut r = JoinGroupResponse::default()
            .with_generation_id(joined.generation)
            .with_protocol_name(Some(StrBytes::from_string(joined.protocol)))
            .with_leader(StrBytes::from_string(joined.leader))
            .with_member_id(StrBytes::from_string(joined.member_id))
            .with_members(
                joined
                    .members
                    .into_iter()
                    .map(|(id, metadata)| {
                        JoinGroupResponseMember::default()
                            .with_member_id(StrBytes::from_string(id))
                            .with_metadata(metadata)
                    })
                    .collect(),
            );
        if version >= 7 {
            r.protocol_type = Some(StrBytes::from_string(joined.protocol_type));
        }
        r
    }

    pub(super) async fn sync_group(
        &self,
        req: SyncGroupRequest,
        version: i16,
    ) -> SyncGroupResponse {
        let group = req.group_id.0.to_string();
        let member = req.member_id.to_string();
        let instance = req.group_instance_id.as_ref().map(|i| i.to_string());
        let generation = req.generation_id;
        let assignments: Vec<(String, Bytes)> = req
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect();
        let synced = match self.with_group(&group, false, |g| {
            g.check_instance(&member, instance.as_deref())?;
            g.sync(&member, generation, assignments, Instant::now())
        }) {
            Ok(Some(a)) => Ok(a),
            // A follower waits for the leader's assignments, at most its
            // session timeout (a leader that never syncs is expired).
            Ok(None) => {
                self.wait_group(&group, Duration::from_secs(30 * 60), |g| {
                    g.assignment(&member, generation)
                })
                .await
            }
            Err(code) => Err(code),
        };
        let mut r = SyncGroupResponse::default();
        match synced {
            Ok(a) => r.assignment = a,
            Err(code) => r.error_code = code,
        }
        if version >= 5 {
            let (kind, protocol) = self
                .with_group(&group, false, |g| {
                    Ok((g.protocol_type.clone(), g.protocol.clone()))
                })
                .unwrap_or_default();
            r.protocol_type = Some(StrBytes::from_string(kind));
            r.protocol_name = protocol.map(StrBytes::from_string);
        }
        r
    }

    pub(super) async fn heartbeat(&self, req: HeartbeatRequest) -> HeartbeatResponse {
        let group = req.group_id.0.to_string();
        let member = req.member_id.to_string();
        let instance = req.group_instance_id.as_ref().map(|i| i.to_string());
        let beat = self.with_group(&group, false, |g| {
            g.check_instance(&member, instance.as_deref())?;
            g.heartbeat(&member, req.generation_id, Instant::now())
        });
        HeartbeatResponse::default().with_error_code(beat.err().unwrap_or(0))
    }

    pub(super) async fn leave_group(
        &self,
        req: LeaveGroupRequest,
        version: i16,
    ) -> LeaveGroupResponse {
        let group = req.group_id.0.to_string();
        let mut r = LeaveGroupResponse::default();
        if version < 3 {
            let left = self.with_group(&group, false, |g| {
                g.leave(&req.member_id, None, Instant::now())
            });
            r.error_code = left.err().unwrap_or(0);
            return r;
        }
        for m in req.members {
            let id = m.member_id.to_string();
            let instance = m.group_instance_id.as_ref().map(|i| i.to_string());
            let left = self.with_group(&group, false, |g| {
                g.leave(&id, instance.as_deref(), Instant::now())
            });
            match left {
                Err(code) if code == K::NotCoordinator.code() => r.error_code = code,
                outcome => r.members.push(
                    MemberResponse::default()
                        .with_member_id(m.member_id)
                        .with_group_instance_id(m.group_instance_id)
                        .with_error_code(outcome.err().unwrap_or(0)),
                ),
            }
        }
        r
    }

    pub(super) async fn describe_groups(
        &self,
        req: DescribeGroupsRequest,
        version: i16,
    ) -> DescribeGroupsResponse {
        let mut r = DescribeGroupsResponse::default();
        let durable = self.node.controller.kafka_offset_groups();
        for id in req.groups {
            let name = id.0.to_string();
            let mut d = DescribedGroup::default().with_group_id(id);
            match self.coordinating() {
                Err(code) => d.error_code = code,
                Ok(inner) => match inner.groups.get(&name) {
                    Some(g) => {
                        d.group_state = StrBytes::from_static_str(g.state.name());
                        d.protocol_type = StrBytes::from_string(g.protocol_type.clone());
                        d.protocol_data =
                            StrBytes::from_string(g.protocol.clone().unwrap_or_default());
                        let stable = g.state == State::Stable;
                        d.members = g
                            .members
                            .iter()
                            .map(|(mid, m)| {
                                let metadata = g
                                    .protocol
                                    .as_ref()
                                    .and_then(|p| m.protocols.iter().find(|(n, _)| n == p))
                                    .map(|(_, md)| md.clone())
                                    .unwrap_or_default();
                                let member = DescribedGroupMember::default();
                                // The instance id exists from v4 on.
                                let member = match &m.instance_id {
                                    Some(i) if version >= 4 => member.with_group_instance_id(Some(
                                        StrBytes::from_string(i.clone()),
                                    )),
                                    _ => member,
                                };
                                member
                                    .with_member_id(StrBytes::from_string(mid.clone()))
                                    .with_client_id(StrBytes::from_string(m.client_id.clone()))
                                    .with_client_host(StrBytes::from_string(m.client_host.clone()))
                                    .with_member_metadata(metadata)
                                    .with_member_assignment(if stable {
                                        m.assignment.clone()
                                    } else {
                                        Bytes::new()
                                    })
                            })
                            .collect();
                    }
                    None if durable.contains(&name) => {
                        d.group_state = StrBytes::from_static_str(State::Empty.name());
                        d.protocol_type = StrBytes::from_static_str("consumer");
                    }
                    // Kafka describes an unknown group as Dead (before v6).
                    None => d.group_state = StrBytes::from_static_str("Dead"),
                },
            }
            if version >= 3 {
                d.authorized_operations = i32::MIN;
            }
            r.groups.push(d);
        }
        r
    }

    pub(super) async fn list_groups(
        &self,
        req: ListGroupsRequest,
        version: i16,
    ) -> ListGroupsResponse {
        let mut r = ListGroupsResponse::default();
        let inner = match self.coordinating() {
            Ok(i) => i,
            Err(code) => return r.with_error_code(code),
        };
        let mut listed: Vec<(String, String, &'static str)> = inner
            .groups
            .iter()
            .map(|(id, g)| (id.clone(), g.protocol_type.clone(), g.state.name()))
            .collect();
        for id in self.node.controller.kafka_offset_groups() {
            if !inner.groups.contains_key(&id) {
                listed.push((id, "consumer".into(), State::Empty.name()));
            }
        }
        drop(inner);
        listed.sort();
        let wanted = |state: &str| {
            version < 4
                || req.states_filter.is_empty()
                || req
                    .states_filter
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(state))
        };
        r.groups = listed
            .into_iter()
            .filter(|(_, _, state)| wanted(state))
            .map(|(id, kind, state)| {
                let g = ListedGroup::default()
                    .with_group_id(GroupId(StrBytes::from_string(id)))
                    .with_protocol_type(StrBytes::from_string(kind));
                if version >= 4 {
                    g.with_group_state(StrBytes::from_static_str(state))
                } else {
                    g
                }
            })
            .collect();
        r
    }

    pub(super) async fn delete_groups(&self, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
        let mut r = DeleteGroupsResponse::default();
        for id in req.groups_names {
            let name = id.0.to_string();
            let code = self.delete_group(&name).await.err().unwrap_or(0);
            r.results.push(
                DeletableGroupResult::default()
                    .with_group_id(id)
                    .with_error_code(code),
            );
        }
        r
    }

    async fn delete_group(&self, name: &str) -> Result<(), Code> {
        {
            let inner = self.coordinating()?;
            let in_use = inner.groups.get(name).is_some_and(|g| !g.is_idle());
            if in_use {
                return Err(K::NonEmptyGroup.code());
            }
            if !self
                .node
                .controller
                .kafka_offset_groups()
                .iter()
                .any(|g| g == name)
            {
                return Err(K::GroupIdNotFound.code());
            }
        }
        self.delete_offsets(name)
            .await
            .map_err(|e| super::codes::meta_code(&e, K::NotCoordinator.code()))
    }

    /// Deletes every committed offset of `group` (one `meta` entry).
    async fn delete_offsets(&self, group: &str) -> Result<(), crate::error::Error> {
        let delete = KafkaOffsetsCommand {
            group: group.to_string(),
            offsets: vec![],
            delete: true,
        };
        self.node.controller.kafka_offsets_change(delete).await
    }
}
