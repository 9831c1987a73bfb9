//! The `Cluster` service: the nodes and every group's raft state as the
//! answering node sees it (`aquifer cluster status`), membership changes
//! (admins, client port), and the calls nodes make of each other (peer
//! port only: segment views, transaction parts, the audit writer's appends
//! and tail reads; on the client port they answer UNIMPLEMENTED).

use std::sync::Arc;

use aquifer_proto::v1::cluster_server::Cluster;
use aquifer_proto::v1::finish_parts_request::Action;
use aquifer_proto::v1::{
    AppendPartRequest, ClusterStatus, ClusterStatusRequest, Faults, FinishPartsRequest,
    FinishPartsResponse, GroupInfo, InternalAppendRequest, InternalAppendResponse,
    KafkaTopicRequest, KafkaTopicResponse, MovePartRequest, NodeInfo, SegmentTailRequest,
    SegmentTailResponse, SegmentViewsRequest, SegmentViewsResponse,
};
use tonic::{Request, Response, Status};

use crate::addresses;
use crate::api::Port;
use crate::auth::acl::{Permission, Resource};
use crate::auth::Principal;
use crate::cluster::peers::SEGMENT_VIEWS_PER_CALL_MAX;
use crate::controller::txns::TxnPart;
use crate::group::GroupStatus;
use crate::node::Node;

pub struct ClusterService {
    node: Arc<Node>,
    port: Port,
}

impl ClusterService {
    pub fn new(node: Arc<Node>, port: Port) -> Self {
        ClusterService { node, port }
    }

    /// Node-to-node calls are served on the peer port only.
    fn peers_only(&self, call: &str) -> Result<(), Status> {
        match self.port {
            Port::Peer => Ok(()),
            Port::Client => Err(Status::unimplemented(format!(
                "Cluster.{call} is served on the peer port only (node to node)"
            ))),
        }
    }

    /// Membership changes come from an operator, on the client port.
    fn admin<T>(&self, req: &Request<T>, operation: &str) -> Result<(), Status> {
        if self.port == Port::Peer {
            return Err(Status::unimplemented(format!(
                "{operation} is served on the client port only"
            )));
        }
        let principal = Principal::of(req);
        self.node
            .authorize(&principal, Permission::Admin, Resource::CLUSTER, operation)?;
        Ok(())
    }
}

fn info(name: &str, s: GroupStatus, placement: &[u64]) -> GroupInfo {
    GroupInfo {
        name: name.to_string(),
        leader_id: s.leader,
        replicas: s.voters,
        term: s.term,
        commit_index: s.commit,
        applied_index: s.applied,
        learners: s.learners,
        conf_index: s.conf_index,
        placement: placement.to_vec(),
    }
}

impl ClusterService {
    fn snapshot(&self) -> ClusterStatus {
        let meta = self.node.controller.group();
        let placement = self.node.controller.placement();
        let mut groups = vec![info(meta.name(), meta.status(), &placement.meta_voters)];
        for c in &self.node.containers {
            groups.push(info(
                c.group().name(),
                c.group().status(),
                placement.replicas(c.id),
            ));
        }
        ClusterStatus {
            node_id: self.node.config.node_id,
            nodes: self
                .node
                .addresses
                .all()
                .into_iter()
                .map(|(node_id, spec)| NodeInfo {
                    health: match &self.node.transport {
                        Some(t) => t.health(node_id).as_str().to_string(),
                        None => "self".to_string(),
                    },
                    node_id,
                    address: addresses::client_address(&spec).to_string(),
                    peer_address: addresses::peer_address(&spec),
                })
                .collect(),
            groups,
            kafka_address: self
                .node
                .config
                .kafka_listen
                .map(|a| a.to_string())
                .unwrap_or_default(),
        }
    }

    /// Membership changes need a cluster and the metadata leader.
    fn check_membership(&self) -> Result<(), Status> {
        if self.node.transport.is_none() {
            return Err(Status::failed_precondition(
                "this node runs alone (no --peers): it has no cluster to change",
            ));
        }
        self.node.check_meta_leader()?;
        Ok(())
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(
        &self,
        _req: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        Ok(Response::new(self.snapshot()))
    }

    async fn add_node(&self, req: Request<NodeInfo>) -> Result<Response<ClusterStatus>, Status> {
        self.admin(&req, "cluster.add-node")?;
        self.check_membership()?;
        let n = req.into_inner();
        if n.node_id == 0 || n.address.trim().is_empty() {
            return Err(Status::invalid_argument(
                "add-node needs a node id above 0 and the HOST:PORT it listens on",
            ));
        }
        let spec = addresses::spec(n.address.trim(), Some(n.peer_address.trim()));
        if self.node.controller.nodes().get(&n.node_id) == Some(&spec) {
            return Ok(Response::new(self.snapshot()));
        }
        self.node.controller.set_node(n.node_id, &spec).await?;
        tracing::info!(node = n.node_id, address = %n.address, peer_address = %addresses::peer_address(&spec), "node added to the cluster");
        Ok(Response::new(self.snapshot()))
    }

    async fn remove_node(&self, req: Request<NodeInfo>) -> Result<Response<ClusterStatus>, Status> {
        self.admin(&req, "cluster.remove-node")?;
        self.check_membership()?;
        let id = req.into_inner().node_id;
        let members = self.node.controller.nodes();
        if !members.contains_key(&id) {
            return Err(Status::not_found(format!("node {id} is not a member")));
        }
        if members.len() <= 1 {
            return Err(Status::failed_precondition("cannot remove the last node"));
        }
        self.node.controller.remove_node(id).await?;
        tracing::info!(node = id, "node removed from the cluster");
        Ok(Response::new(self.snapshot()))
    }

    async fn segment_views(
        &self,
        req: Request<SegmentViewsRequest>,
    ) -> Result<Response<SegmentViewsResponse>, Status> {
        self.peers_only("SegmentViews")?;
        let ids = req.into_inner().segment_ids;
        if ids.len() > SEGMENT_VIEWS_PER_CALL_MAX {
            return Err(Status::invalid_argument(format!(
                "at most {SEGMENT_VIEWS_PER_CALL_MAX} segments per call"
            )));
        }
        let segments = self.node.segment_infos(&ids).await?;
        Ok(Response::new(SegmentViewsResponse { segments }))
    }

    async fn finish_transaction_parts(
        &self,
        req: Request<FinishPartsRequest>,
    ) -> Result<Response<FinishPartsResponse>, Status> {
        self.peers_only("FinishTransactionParts")?;
        let req = req.into_inner();
        let action = match Action::try_from(req.action) {
            Ok(a @ (Action::Merge | Action::Drop | Action::Forget)) => a,
            _ => return Err(Status::invalid_argument("unknown transaction part action")),
        };
        let parts: Vec<TxnPart> = req
            .parts
            .into_iter()
            .map(|p| TxnPart {
                segment_id: p.segment_id,
                txn_segment_id: p.transaction_segment_id,
                ..TxnPart::default()
            })
            .collect();
        self.node.local_finish_parts(action, &parts).await?;
        Ok(Response::new(FinishPartsResponse {}))
    }

    async fn move_transaction_part(
        &self,
        req: Request<MovePartRequest>,
    ) -> Result<Response<FinishPartsResponse>, Status> {
        self.peers_only("MoveTransactionPart")?;
        let req = req.into_inner();
        let p = req
            .part
            .ok_or_else(|| Status::invalid_argument("a move names its part"))?;
        let part = TxnPart {
            segment_id: p.segment_id,
            txn_segment_id: p.transaction_segment_id,
            ..TxnPart::default()
        };
        self.node.local_move_part(&part, &req.targets).await?;
        Ok(Response::new(FinishPartsResponse {}))
    }

    async fn append_transaction_part(
        &self,
        req: Request<AppendPartRequest>,
    ) -> Result<Response<FinishPartsResponse>, Status> {
        self.peers_only("AppendTransactionPart")?;
        self.node.local_append_part(req.into_inner()).await?;
        Ok(Response::new(FinishPartsResponse {}))
    }

    async fn append_internal(
        &self,
        req: Request<InternalAppendRequest>,
    ) -> Result<Response<InternalAppendResponse>, Status> {
        self.peers_only("AppendInternal")?;
        let req = req.into_inner();
        super::append::check_writer_id(&req.writer_id)?;
        super::append::check_event_number(req.first_event_number)?;
        super::append::check_events(&self.node, &req.events, req.event_count)?;
        let duplicate = self.node.local_append_internal(req).await?;
        Ok(Response::new(InternalAppendResponse { duplicate }))
    }

    async fn create_kafka_topic(
        &self,
        req: Request<KafkaTopicRequest>,
    ) -> Result<Response<KafkaTopicResponse>, Status> {
        self.peers_only("CreateKafkaTopic")?;
        self.node
            .create_kafka_topic(&req.into_inner().topic)
            .await?;
        Ok(Response::new(KafkaTopicResponse {}))
    }

    async fn segment_tail(
        &self,
        req: Request<SegmentTailRequest>,
    ) -> Result<Response<SegmentTailResponse>, Status> {
        self.peers_only("SegmentTail")?;
        let req = req.into_inner();
        super::append::check_writer_id(&req.writer_id)?;
        let tail = self
            .node
            .local_segment_tail(req.segment_id, &req.writer_id)
            .await?;
        Ok(Response::new(SegmentTailResponse {
            last_event_number: tail.last_event_number,
            last_event: tail.last_event,
        }))
    }

    async fn set_faults(&self, req: Request<Faults>) -> Result<Response<Faults>, Status> {
        self.peers_only("SetFaults")?;
        if !self.node.config.raft.fault_injection {
            return Err(Status::permission_denied(
                "fault injection is off (raft.fault_injection = true turns it on, for tests only)",
            ));
        }
        let Some(transport) = &self.node.transport else {
            return Err(Status::failed_precondition(
                "a single node has no raft messages to drop",
            ));
        };
        let faults = req.into_inner();
        tracing::warn!(drop_to = ?faults.drop_to, drop_snapshots_to = ?faults.drop_snapshots_to, "fault injection: dropping raft messages");
        transport.set_faults(faults);
        Ok(Response::new(transport.faults()))
    }
}
