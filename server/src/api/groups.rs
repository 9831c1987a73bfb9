//! The `ReaderGroups` service: checks each request, turns it into a group
//! change on the metadata leader (`controller/groups.rs` holds the rules)
//! and answers with the reader's assignment or the group as users see it.
//!
//! Only the metadata leader answers; another node refuses with the
//! leader's address and the client follows it (no forwarding: a reader's
//! heartbeats go straight to where they are decided).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use aquifer_proto::v1 as pb;
use aquifer_proto::v1::reader_groups_server::ReaderGroups;
use tonic::{Request, Response, Status};

use crate::auth::acl::{Permission, Resource};
use crate::auth::Principal;
use crate::controller::groups::{
    CheckpointState, GroupKey, GroupRecord, GroupStream, ReaderView, GROUP_NAME_BYTES_MAX,
};
use crate::controller::{
    CheckpointAck, CheckpointCmd, CreateGroup, GroupOp, HeartbeatRecord, LeaveRecord, Positions,
    ReaderRef,
};
use crate::error::Error;
use crate::node::{
    validate_name, Node, Start, READER_TIMEOUT_DEFAULT_MS, READER_TIMEOUT_MAX_MS,
    READER_TIMEOUT_MIN_MS,
};

/// Positions one request may carry (a cut, a heartbeat's reports).
const POSITIONS_MAX: usize = 100_000;
/// Streams one group may read.
const GROUP_STREAMS_MAX: usize = 64;
/// A reader heart-beats at least this often (and at least 4 times per
/// reader timeout): it learns of checkpoints and new segments with its
/// heartbeat answers, so this bounds how long they wait for it.
const HEARTBEAT_MAX_MS: u64 = 250;

pub struct GroupService {
    node: Arc<Node>,
}

impl GroupService {
    pub fn new(node: Arc<Node>) -> Self {
        GroupService { node }
    }

    /// The group's key, checked; and this node must lead `meta`.
    fn key(&self, r: Option<pb::ReaderGroupRef>) -> Result<GroupKey, Error> {
        let r =
            r.ok_or_else(|| Error::InvalidArgument("a reader group name is required".into()))?;
        validate_name("scope", &r.scope)?;
        validate_name("reader group", &r.group)?;
        self.node.check_meta_leader()?;
        Ok(GroupKey {
            scope: r.scope,
            group: r.group,
        })
    }

    /// Refuses `principal` unless it may read every stream of `streams`
    /// (`audited`: a call that opens something, else a repeated one).
    fn allow_streams(
        &self,
        principal: &Principal,
        streams: &[GroupStream],
        operation: &str,
        audited: bool,
    ) -> Result<(), Error> {
        for s in streams {
            let r = Resource::stream(&s.scope, &s.stream);
            if audited {
                self.node
                    .authorize(principal, Permission::Read, r, operation)?;
            } else {
                self.node.check(principal, Permission::Read, r)?;
            }
        }
        Ok(())
    }

    /// [`GroupService::allow_streams`] for the streams group `key` reads.
    fn allow(
        &self,
        principal: &Principal,
        key: &GroupKey,
        operation: &str,
        audited: bool,
    ) -> Result<(), Error> {
        if !self.node.auth_on() {
            return Ok(());
        }
        let g = self.node.controller.group_record(key)?;
        self.allow_streams(principal, &g.streams, operation, audited)
    }

    /// The group as users see it, with each segment's lag.
    async fn info(&self, key: &GroupKey) -> Result<pb::ReaderGroupInfo, Error> {
        let g = self.node.controller.group_record(key)?;
        let lengths = self.node.group_lengths(&g).await;
        Ok(group_info(&g, &lengths))
    }
}

#[tonic::async_trait]
impl ReaderGroups for GroupService {
    async fn create_group(
        &self,
        req: Request<pb::CreateGroupRequest>,
    ) -> Result<Response<pb::ReaderGroupInfo>, Status> {
        let principal = Principal::of(&req);
        let req = req.into_inner();
        let key = self.key(req.group)?;
        if req.streams.is_empty() || req.streams.len() > GROUP_STREAMS_MAX {
            return Err(Error::InvalidArgument(format!(
                "a reader group reads 1 to {GROUP_STREAMS_MAX} streams"
            ))
            .into());
        }
        let mut streams = Vec::new();
        for s in req.streams {
            validate_name("scope", &s.scope)?;
            validate_name("stream", &s.stream)?;
            streams.push(GroupStream {
                scope: s.scope,
                stream: s.stream,
            });
        }
        streams.sort();
        streams.dedup();
        self.allow_streams(&principal, &streams, "group.create", true)?;
        let timeout = match req.reader_timeout_ms {
            0 => READER_TIMEOUT_DEFAULT_MS,
            t if (READER_TIMEOUT_MIN_MS..=READER_TIMEOUT_MAX_MS).contains(&t) => t,
            t => {
                return Err(Error::InvalidArgument(format!(
                    "reader timeout {t} ms is outside {READER_TIMEOUT_MIN_MS}..={READER_TIMEOUT_MAX_MS} ms"
                ))
                .into())
            }
        };
        let start = match req.start {
            None | Some(pb::create_group_request::Start::FromHead(_)) => Start::Head,
            Some(pb::create_group_request::Start::FromTail(_)) => Start::Tail,
            Some(pb::create_group_request::Start::FromCut(c)) => {
                Start::Cut(positions_in(&c.positions)?)
            }
        };
        let start = self.node.group_start(&streams, start).await?;
        let op = GroupOp::Create(CreateGroup {
            streams,
            start,
            reader_timeout_ms: timeout,
            subscribed: req.subscribe,
        });
        self.node.controller.group_change(&key, op).await?;
        tracing::info!(group = %key, "reader group created");
        Ok(Response::new(self.info(&key).await?))
    }

    async fn describe_group(
        &self,
        req: Request<pb::ReaderGroupRef>,
    ) -> Result<Response<pb::ReaderGroupInfo>, Status> {
        let principal = Principal::of(&req);
        let key = self.key(Some(req.into_inner()))?;
        self.allow(&principal, &key, "group.describe", true)?;
        Ok(Response::new(self.info(&key).await?))
    }

    async fn list_groups(
        &self,
        req: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let principal = Principal::of(&req);
        let scope = req.into_inner().scope;
        if !scope.is_empty() {
            validate_name("scope", &scope)?;
        }
        self.node.check_meta_leader()?;
        // A principal sees only the groups whose streams it may read.
        let groups = self
            .node
            .controller
            .group_records(&scope)
            .iter()
            .filter(|g| {
                self.allow_streams(&principal, &g.streams, "", false)
                    .is_ok()
            })
            .map(|g| group_info(g, &HashMap::new()))
            .collect();
        Ok(Response::new(pb::ListGroupsResponse { groups }))
    }

    async fn delete_group(
        &self,
        req: Request<pb::ReaderGroupRef>,
    ) -> Result<Response<pb::ReaderGroupInfo>, Status> {
        let principal = Principal::of(&req);
        let key = self.key(Some(req.into_inner()))?;
        self.allow(&principal, &key, "group.delete", true)?;
        let info = self.info(&key).await?;
        let op = GroupOp::Delete(ReaderRef::default());
        self.node.controller.group_change(&key, op).await?;
        tracing::info!(group = %key, "reader group deleted");
        Ok(Response::new(info))
    }

    async fn join_group(
        &self,
        req: Request<pb::JoinGroupRequest>,
    ) -> Result<Response<pb::ReaderAssignment>, Status> {
        let principal = Principal::of(&req);
        let req = req.into_inner();
        let key = self.key(req.group)?;
        self.allow(&principal, &key, "group.join", true)?;
        check_id("reader id", &req.reader_id)?;
        self.node.reader_seen(&key, &req.reader_id);
        let op = GroupOp::Join(ReaderRef {
            reader: req.reader_id.clone(),
        });
        let view = self.node.controller.group_change(&key, op).await?;
        tracing::info!(group = %key, reader = req.reader_id, "reader joined");
        Ok(Response::new(assignment(view)?))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::ReaderAssignment>, Status> {
        let principal = Principal::of(&req);
        let req = req.into_inner();
        let key = self.key(req.group)?;
        self.allow(&principal, &key, "group.heartbeat", false)?;
        check_id("reader id", &req.reader_id)?;
        let reported = req.positions.len()
            + req.completed.len()
            + req.released.len()
            + req
                .checkpoints
                .iter()
                .map(|c| c.positions.len() + 1)
                .sum::<usize>();
        if reported > POSITIONS_MAX {
            return Err(Error::InvalidArgument(format!(
                "a heartbeat reports at most {POSITIONS_MAX} positions"
            ))
            .into());
        }
        self.node.reader_seen(&key, &req.reader_id);
        let op = GroupOp::Heartbeat(HeartbeatRecord {
            reader: req.reader_id,
            generation: req.generation,
            positions: positions_in(&req.positions)?,
            completed: positions_in(&req.completed)?,
            released: positions_in(&req.released)?,
            checkpoints: req
                .checkpoints
                .into_iter()
                .map(|c| {
                    Ok(CheckpointAck {
                        positions: positions_in(&c.positions)?,
                        name: c.name,
                    })
                })
                .collect::<Result<_, Error>>()?,
        });
        let view = self.node.controller.group_change(&key, op).await?;
        Ok(Response::new(assignment(view)?))
    }

    async fn leave_group(
        &self,
        req: Request<pb::LeaveGroupRequest>,
    ) -> Result<Response<pb::ReaderGroupInfo>, Status> {
        let principal = Principal::of(&req);
        let req = req.into_inner();
        let key = self.key(req.group)?;
        self.allow(&principal, &key, "group.leave", false)?;
        check_id("reader id", &req.reader_id)?;
        let op = GroupOp::Leave(LeaveRecord {
            reader: req.reader_id.clone(),
            positions: positions_in(&req.positions)?,
        });
        self.node.controller.group_change(&key, op).await?;
        tracing::info!(group = %key, reader = req.reader_id, "reader left");
        Ok(Response::new(self.info(&key).await?))
    }

    async fn checkpoint(
        &self,
        req: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::ReaderGroupInfo>, Status> {
        let principal = Principal::of(&req);
        let req = req.into_inner();
        let key = self.key(req.group)?;
        self.allow(&principal, &key, "group.checkpoint", true)?;
        check_id("checkpoint name", &req.name)?;
        let op = GroupOp::Checkpoint(CheckpointCmd {
            name: req.name,
            now_ms: crate::tier::writer::now_ms(),
        });
        self.node.controller.group_change(&key, op).await?;
        Ok(Response::new(self.info(&key).await?))
    }

    async fn reset_group(
        &self,
        req: Request<pb::ResetGroupRequest>,
    ) -> Result<Response<pb::ReaderGroupInfo>, Status> {
        let principal = Principal::of(&req);
        let req = req.into_inner();
        let key = self.key(req.group)?;
        self.allow(&principal, &key, "group.reset", true)?;
        let g = self.node.controller.group_record(&key)?;
        let cut = match req.to {
            Some(pb::reset_group_request::To::Checkpoint(name)) => {
                let c = g.find_checkpoint(&name).ok_or_else(|| {
                    Error::InvalidArgument(format!("group {key} has no checkpoint named {name}"))
                })?;
                if c.state() != CheckpointState::Complete {
                    return Err(Error::FailedPrecondition(format!(
                        "checkpoint {name} of group {key} is not complete{}",
                        if c.failure.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", c.failure)
                        }
                    ))
                    .into());
                }
                c.positions.clone()
            }
            Some(pb::reset_group_request::To::Cut(c)) => {
                let cut = positions_in(&c.positions)?;
                self.node.group_start(&g.streams, Start::Cut(cut)).await?
            }
            None => {
                return Err(Error::InvalidArgument(
                    "a reset needs a checkpoint name or a cut".into(),
                )
                .into())
            }
        };
        let op = GroupOp::Reset(Positions { positions: cut });
        self.node.controller.group_change(&key, op).await?;
        tracing::info!(group = %key, "reader group reset");
        Ok(Response::new(self.info(&key).await?))
    }
}

/// A reader's assignment as the wire says it, with how often to heart-beat.
fn assignment(view: Option<ReaderView>) -> Result<pb::ReaderAssignment, Error> {
    let view = view.ok_or_else(|| Error::Internal("a reader change answered no view".into()))?;
    Ok(pb::ReaderAssignment {
        generation: view.generation,
        segments: positions_out(&view.segments),
        release: view.release,
        checkpoint: view.checkpoint.unwrap_or_default(),
        heartbeat_ms: (view.reader_timeout_ms / 4).clamp(50, HEARTBEAT_MAX_MS),
    })
}

fn check_id(what: &str, id: &str) -> Result<(), Error> {
    if id.is_empty() || id.len() > GROUP_NAME_BYTES_MAX {
        return Err(Error::InvalidArgument(format!(
            "a {what} must be 1 to {GROUP_NAME_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

/// Positions from the wire: at most [`POSITIONS_MAX`], one per segment.
fn positions_in(p: &[pb::SegmentPosition]) -> Result<BTreeMap<u64, u64>, Error> {
    if p.len() > POSITIONS_MAX {
        return Err(Error::InvalidArgument(format!(
            "at most {POSITIONS_MAX} positions per request"
        )));
    }
    let mut out = BTreeMap::new();
    for x in p {
        if out.insert(x.segment_id, x.offset).is_some() {
            return Err(Error::InvalidArgument(format!(
                "segment {} is given two positions",
                x.segment_id
            )));
        }
    }
    Ok(out)
}

fn positions_out(p: &BTreeMap<u64, u64>) -> Vec<pb::SegmentPosition> {
    p.iter()
        .map(|(&segment_id, &offset)| pb::SegmentPosition { segment_id, offset })
        .collect()
}

fn lags(p: &BTreeMap<u64, u64>, lengths: &HashMap<u64, u64>) -> Vec<pb::SegmentLag> {
    p.iter()
        .map(|(&segment_id, &offset)| pb::SegmentLag {
            segment_id,
            offset,
            lag_bytes: lengths
                .get(&segment_id)
                .map_or(0, |l| l.saturating_sub(offset)),
        })
        .collect()
}

fn group_info(g: &GroupRecord, lengths: &HashMap<u64, u64>) -> pb::ReaderGroupInfo {
    pb::ReaderGroupInfo {
        group: Some(pb::ReaderGroupRef {
            scope: g.scope.clone(),
            group: g.group.clone(),
        }),
        streams: g
            .streams
            .iter()
            .map(|s| pb::StreamName {
                scope: s.scope.clone(),
                stream: s.stream.clone(),
            })
            .collect(),
        generation: g.generation,
        reader_timeout_ms: g.reader_timeout_ms,
        subscribed: g.subscribed,
        readers: g
            .readers
            .iter()
            .map(|(id, r)| pb::ReaderInfo {
                reader_id: id.clone(),
                segments: lags(&r.segments, lengths),
                releasing: r.releasing.clone(),
            })
            .collect(),
        unassigned: lags(&g.unassigned, lengths),
        checkpoints: g
            .checkpoints
            .iter()
            .map(|c| pb::CheckpointInfo {
                name: c.name.clone(),
                state: match c.state() {
                    CheckpointState::Pending => pb::checkpoint_info::State::Pending,
                    CheckpointState::Complete => pb::checkpoint_info::State::Complete,
                    CheckpointState::Failed => pb::checkpoint_info::State::Failed,
                } as i32,
                created_ms: c.created_ms,
                pending: c.pending.clone(),
                positions: positions_out(&c.positions),
                failure: c.failure.clone(),
            })
            .collect(),
    }
}
