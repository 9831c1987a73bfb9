//! The `StreamAdmin` service.
//!
//! Metadata is answered by the `meta` leader only, never by a stale replica:
//! another node forwards the call to the leader once and relays its answer
//! (a forwarded call is never forwarded again, so a stale view of who leads
//! cannot make a loop). Every call is recorded in the audit log of the node
//! the client called, with its outcome.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aquifer_proto::v1 as pb;
use aquifer_proto::v1::stream_admin_client::StreamAdminClient;
use aquifer_proto::v1::stream_admin_server::StreamAdmin;
use aquifer_proto::v1::{
    CreateStreamRequest, DeleteStreamRequest, DeleteStreamResponse, DescribeStreamRequest,
    ListStreamsRequest, ListStreamsResponse, ScaleStreamRequest, SealStreamRequest, SegmentInfo,
    StreamInfo, StreamName, UpdateStreamRequest,
};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::api::authn::PRINCIPAL_METADATA_KEY;
use crate::audit::{AuditRecord, Outcome};
use crate::auth::acl::{Permission, Resource};
use crate::auth::Principal;
use crate::container::SegmentView;
use crate::controller::scaling::{self, Split};
use crate::controller::{PolicyRecord, Retention, ScalingPolicy, StreamKey, StreamRecord};
use crate::error::Error;
use crate::node::{validate_name, Node};

/// Marks a call one node forwarded to the leader.
const FORWARDED: &str = "aquifer-forwarded";
/// Deadline of a forwarded call.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

pub struct AdminService {
    node: Arc<Node>,
    /// Channels to the leaders calls were forwarded to, by address.
    leaders: Mutex<HashMap<String, Channel>>,
}

impl AdminService {
    pub fn new(node: Arc<Node>) -> Self {
        AdminService {
            node,
            leaders: Mutex::default(),
        }
    }

    /// On the metadata leader: [`Routed::Here`], to answer it here.
    /// Elsewhere: the leader's answer to `call`, made on the caller's behalf.
    async fn forward<T, R, F, Fut>(&self, req: Request<T>, call: F) -> Result<Routed<T, R>, Status>
    where
        F: FnOnce(StreamAdminClient<Channel>, Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<R>, Status>>,
    {
        if self.node.controller.is_leader() {
            return Ok(Routed::Here(req));
        }
        let leader = match self.node.check_meta_leader() {
            Ok(()) => return Ok(Routed::Here(req)),
            Err(Error::NotLeader {
                leader: Some(addr), ..
            }) if !req.metadata().contains_key(FORWARDED) => addr,
            Err(e) => return Err(e.into()),
        };
        // To the leader's peer port: the client port may want credentials
        // this node does not have; the principal travels along instead.
        let leader = self.node.addresses.peer_of(&leader);
        let channel = {
            let mut leaders = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
            match leaders.get(&leader) {
                Some(c) => c.clone(),
                None => {
                    let c =
                        crate::cluster::peer_endpoint(&leader, self.node.tls.peer_client.as_ref())
                            .map_err(Status::internal)?
                            .connect_lazy();
                    leaders.insert(leader.clone(), c.clone());
                    c
                }
            }
        };
        let max = self.node.config.message_bytes_max();
        let client = StreamAdminClient::new(channel)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let principal = Principal::of(&req);
        let mut forwarded = Request::new(req.into_inner());
        forwarded
            .metadata_mut()
            .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        if let Ok(name) = principal.name().parse() {
            forwarded
                .metadata_mut()
                .insert(PRINCIPAL_METADATA_KEY, name);
        }
        forwarded.set_timeout(FORWARD_TIMEOUT);
        call(client, forwarded).await.map(Routed::Answered)
    }

    /// Refuses `req` unless its principal may `permission` on stream
    /// `name`; a refusal is audited here (an allowed call is audited with
    /// its outcome by `answer`), at the node the client called.
    fn allow<T>(
        &self,
        req: &Request<T>,
        name: Option<&StreamName>,
        permission: Permission,
        operation: &str,
    ) -> Result<(), Status> {
        let name = name.ok_or_else(|| Status::invalid_argument("the request names no stream"))?;
        let principal = Principal::of(req);
        let r = Resource::stream(&name.scope, &name.stream);
        match self.node.check(&principal, permission, r) {
            Ok(_) => Ok(()),
            Err(e) => {
                if !req.metadata().contains_key(FORWARDED) {
                    self.node.audit_denied(&principal, operation, &r, &e);
                }
                Err(e.into())
            }
        }
    }

    /// Answers `req` here on the metadata leader (with `here`), else relays
    /// the leader's answer to `forward`; records the call as `op` in the
    /// audit log of the node the client called (a forwarded call is not
    /// recorded again by the leader).
    async fn answer<T, R, F, Fut, H, HFut>(
        &self,
        op: &str,
        req: Request<T>,
        forward: F,
        here: H,
    ) -> Result<Response<R>, Status>
    where
        T: Target,
        F: FnOnce(StreamAdminClient<Channel>, Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<R>, Status>>,
        H: FnOnce(T) -> HFut,
        HFut: std::future::Future<Output = Result<R, Status>>,
    {
        let audited = (!req.metadata().contains_key(FORWARDED))
            .then(|| (Principal::of(&req), req.get_ref().target()));
        let answer = match self.forward(req, forward).await {
            Ok(Routed::Answered(answer)) => Ok(answer),
            Ok(Routed::Here(req)) => here(req.into_inner()).await.map(Response::new),
            Err(status) => Err(status),
        };
        if let Some((principal, target)) = audited {
            self.node.audit.record(AuditRecord {
                principal: &principal,
                operation: op,
                target,
                outcome: Outcome::of(&answer),
                bytes: 0,
            });
        }
        answer
    }

    /// The stream as users see it, with its segments' lengths as their
    /// containers hold them now (every acknowledged event included).
    async fn info(&self, s: &StreamRecord) -> Result<StreamInfo, Error> {
        let ids: Vec<u64> = s.segments.iter().map(|g| g.id).collect();
        let views = self.node.segment_views(&ids).await?;
        Ok(stream_info(s, &views))
    }
}

/// What an admin request names, for its audit record.
trait Target {
    fn target(&self) -> String;
}

/// Requests that name one stream.
macro_rules! stream_target {
    ($($request:ty),*) => {$(
        impl Target for $request {
            fn target(&self) -> String {
                self.name
                    .as_ref()
                    .map(|n| format!("{}/{}", n.scope, n.stream))
                    .unwrap_or_default()
            }
        }
    )*};
}

stream_target!(
    CreateStreamRequest,
    DescribeStreamRequest,
    SealStreamRequest,
    UpdateStreamRequest,
    DeleteStreamRequest,
    ScaleStreamRequest
);

impl Target for ListStreamsRequest {
    fn target(&self) -> String {
        self.scope.clone()
    }
}

/// Where an admin call is answered.
enum Routed<T, R> {
    /// This node leads the metadata group: answer `T` here.
    Here(Request<T>),
    /// The metadata leader's answer, relayed.
    Answered(Response<R>),
}

fn stream_info(s: &StreamRecord, views: &HashMap<u64, SegmentView>) -> StreamInfo {
    // A scale's successors are not shown before its epoch is in force:
    // until then no client may write to them.
    let listed = |id: &u64| {
        s.segments
            .iter()
            .any(|g| g.id == *id && !g.pending && !g.dropped)
    };
    let segments = s
        .segments
        .iter()
        .filter(|g| !g.pending && !g.dropped)
        .map(|g| {
            let view = views.get(&g.id);
            SegmentInfo {
                segment_id: g.id,
                number: g.number,
                container: g.container,
                key_low: g.key_low,
                key_high: g.key_high,
                head_offset: view.map_or(0, |v| v.head),
                length: view.map_or(0, |v| v.length),
                sealed: view.map_or(s.sealed, |v| v.sealed),
                tier2_length: view.map_or(0, |v| v.tier2_length),
                chunk_count: view.map_or(0, |v| v.chunk_count),
                tail_buffer_bytes: view.map_or(0, |v| v.tail_bytes),
                log_bytes: view.map_or(0, |v| v.log_bytes),
                epoch: g.epoch,
                successors: g.successors.clone(),
                // Dropped predecessors are read no more: a segment whose
                // predecessors are all gone is read from the start.
                predecessors: g.predecessors.iter().copied().filter(listed).collect(),
                events_per_second: view
                    .map(|v| v.events_per_second.to_vec())
                    .unwrap_or_default(),
                bytes_per_second: view
                    .map(|v| v.bytes_per_second.to_vec())
                    .unwrap_or_default(),
                hot_key: view.is_some_and(|v| scaling::is_hot_key(&g.span(), &s.policy, v)),
            }
        })
        .collect();
    StreamInfo {
        name: Some(StreamName {
            scope: s.key.scope.clone(),
            stream: s.key.stream.clone(),
        }),
        sealed: s.sealed,
        segments,
        retention: (!s.retention.is_unlimited()).then_some(pb::Retention {
            time_ms: s.retention.time_ms,
            size_bytes: s.retention.bytes,
            by_consumption: s.retention.by_consumption,
            min_time_ms: s.retention.min_time_ms,
            min_size_bytes: s.retention.min_bytes,
        }),
        scaling: Some(policy_info(&s.policy)),
        epoch: s.epoch,
        epochs: s
            .epochs
            .iter()
            .map(|e| pb::EpochInfo {
                epoch: e.epoch,
                segment_ids: e.segment_ids.clone(),
                created_ms: e.created_ms,
            })
            .collect(),
    }
}

fn policy(p: Option<pb::ScalingPolicy>) -> Result<ScalingPolicy, Error> {
    let Some(p) = p else {
        return Ok(ScalingPolicy::default());
    };
    let record = PolicyRecord {
        kind: p.kind as u32,
        target: p.target,
        scale_factor: p.scale_factor,
        min_segments: p.min_segments,
    };
    Ok(ScalingPolicy::from_record(&record)?)
}

fn policy_info(p: &ScalingPolicy) -> pb::ScalingPolicy {
    let r = p.record();
    pb::ScalingPolicy {
        kind: r.kind as i32,
        target: r.target,
        scale_factor: r.scale_factor,
        min_segments: r.min_segments,
    }
}

fn retention(r: Option<pb::Retention>) -> Retention {
    r.map_or_else(Retention::default, |r| Retention {
        time_ms: r.time_ms,
        bytes: r.size_bytes,
        by_consumption: r.by_consumption,
        min_time_ms: r.min_time_ms,
        min_bytes: r.min_size_bytes,
    })
}

fn key(name: Option<StreamName>) -> Result<StreamKey, Error> {
    let n = name.ok_or_else(|| Error::InvalidArgument("the request names no stream".into()))?;
    Ok(StreamKey {
        scope: n.scope,
        stream: n.stream,
    })
}

#[tonic::async_trait]
impl StreamAdmin for AdminService {
    async fn create_stream(
        &self,
        req: Request<CreateStreamRequest>,
    ) -> Result<Response<StreamInfo>, Status> {
        self.allow(
            &req,
            req.get_ref().name.as_ref(),
            Permission::Create,
            "stream.create",
        )?;
        self.answer(
            "stream.create",
            req,
            |mut c, r| async move { c.create_stream(r).await },
            |req| async move {
                let key = key(req.name)?;
                let stream = self
                    .node
                    .create_stream(
                        &key,
                        req.segment_count,
                        retention(req.retention),
                        policy(req.scaling)?,
                    )
                    .await?;
                tracing::info!(stream = %key, segments = stream.segments.len(), "stream created");
                Ok(self.info(&stream).await?)
            },
        )
        .await
    }

    async fn list_streams(
        &self,
        req: Request<ListStreamsRequest>,
    ) -> Result<Response<ListStreamsResponse>, Status> {
        let principal = Principal::of(&req);
        self.answer(
            "stream.list",
            req,
            |mut c, r| async move { c.list_streams(r).await },
            |req| async move {
                let scope = req.scope;
                if !scope.is_empty() {
                    validate_name("scope", &scope)?;
                }
                // A principal sees only the streams it may read.
                let streams: Vec<StreamRecord> = self
                    .node
                    .controller
                    .all()
                    .into_iter()
                    .filter(|s| !s.deleting && (scope.is_empty() || s.key.scope == scope))
                    .filter(|s| {
                        let r = Resource::stream(&s.key.scope, &s.key.stream);
                        self.node.may(&principal, Permission::Read, r)
                    })
                    .collect();
                let target = if scope.is_empty() {
                    Resource::CLUSTER
                } else {
                    Resource::scope(&scope)
                };
                if streams.is_empty() && !self.node.may(&principal, Permission::Read, target) {
                    // Nothing to see, and no grant to see it: say so, not
                    // "empty" (`answer` audits the refusal).
                    self.node.check(&principal, Permission::Read, target)?;
                }
                // One round of questions for every segment listed.
                let ids: Vec<u64> = streams
                    .iter()
                    .flat_map(|s| s.segments.iter().map(|g| g.id))
                    .collect();
                let views = self.node.segment_views(&ids).await?;
                let streams = streams.iter().map(|s| stream_info(s, &views)).collect();
                Ok(ListStreamsResponse { streams })
            },
        )
        .await
    }

    async fn describe_stream(
        &self,
        req: Request<DescribeStreamRequest>,
    ) -> Result<Response<StreamInfo>, Status> {
        self.allow(
            &req,
            req.get_ref().name.as_ref(),
            Permission::Read,
            "stream.describe",
        )?;
        self.answer(
            "stream.describe",
            req,
            |mut c, r| async move { c.describe_stream(r).await },
            |req| async move {
                let key = key(req.name)?;
                let stream = self.node.stream(&key)?;
                Ok(self.info(&stream).await?)
            },
        )
        .await
    }

    async fn seal_stream(
        &self,
        req: Request<SealStreamRequest>,
    ) -> Result<Response<StreamInfo>, Status> {
        self.allow(
            &req,
            req.get_ref().name.as_ref(),
            Permission::Delete,
            "stream.seal",
        )?;
        self.answer(
            "stream.seal",
            req,
            |mut c, r| async move { c.seal_stream(r).await },
            |req| async move {
                let key = key(req.name)?;
                let stream = self.node.seal_stream(&key).await?;
                tracing::info!(stream = %key, "stream sealed");
                Ok(self.info(&stream).await?)
            },
        )
        .await
    }

    async fn update_stream(
        &self,
        req: Request<UpdateStreamRequest>,
    ) -> Result<Response<StreamInfo>, Status> {
        self.allow(
            &req,
            req.get_ref().name.as_ref(),
            Permission::Create,
            "stream.update",
        )?;
        self.answer(
            "stream.update",
            req,
            |mut c, r| async move { c.update_stream(r).await },
            |req| async move {
            let key = key(req.name)?;
            let mut stream = None;
            if req.retention.is_some() || req.scaling.is_none() {
                let s = self.node.set_retention(&key, retention(req.retention)).await?;
                tracing::info!(stream = %key, retention = ?s.retention, "stream retention changed");
                stream = Some(s);
            }
            if req.scaling.is_some() {
                let s = self.node.set_scaling(&key, policy(req.scaling)?).await?;
                tracing::info!(stream = %key, policy = ?s.policy, "stream scaling policy changed");
                stream = Some(s);
            }
            let stream = stream.ok_or_else(|| Error::Internal("update changed nothing".into()))?;
            Ok(self.info(&stream).await?)
            },
        )
        .await
    }

    async fn delete_stream(
        &self,
        req: Request<DeleteStreamRequest>,
    ) -> Result<Response<DeleteStreamResponse>, Status> {
        self.allow(
            &req,
            req.get_ref().name.as_ref(),
            Permission::Delete,
            "stream.delete",
        )?;
        self.answer(
            "stream.delete",
            req,
            |mut c, r| async move { c.delete_stream(r).await },
            |req| async move {
                let key = key(req.name)?;
                self.node.delete_stream(&key).await?;
                tracing::info!(stream = %key, "stream deleted");
                Ok(DeleteStreamResponse {})
            },
        )
        .await
    }

    async fn scale_stream(
        &self,
        req: Request<ScaleStreamRequest>,
    ) -> Result<Response<StreamInfo>, Status> {
        self.allow(
            &req,
            req.get_ref().name.as_ref(),
            Permission::Create,
            "stream.scale",
        )?;
        self.answer(
            "stream.scale",
            req,
            |mut c, r| async move { c.scale_stream(r).await },
            |req| async move {
                let key = key(req.name)?;
                let splits: Vec<Split> = req
                    .splits
                    .iter()
                    .map(|s| Split {
                        segment_id: s.segment_id,
                        pieces: if s.pieces == 0 { 2 } else { s.pieces },
                    })
                    .collect();
                let merges: Vec<Vec<u64>> =
                    req.merges.into_iter().map(|m| m.segment_ids).collect();
                let stream = self.node.scale_stream(&key, &splits, &merges).await?;
                tracing::info!(stream = %key, epoch = stream.epoch, ?splits, ?merges, "stream scaled");
                Ok(self.info(&stream).await?)
            },
        )
        .await
    }
}
