//! The `Cluster` service: the nodes and every group's raft state as the
//! answering node sees it (`aquifer cluster status`).

use std::sync::Arc;

use aquifer_proto::v1::cluster_server::Cluster;
use aquifer_proto::v1::{ClusterStatus, ClusterStatusRequest, Faults, GroupInfo, NodeInfo};
use tonic::{Request, Response, Status};

use crate::group::GroupStatus;
use crate::node::Node;

pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    pub fn new(node: Arc<Node>) -> Self {
        ClusterService { node }
    }
}

fn info(name: &str, s: GroupStatus) -> GroupInfo {
    GroupInfo {
        name: name.to_string(),
        leader_id: s.leader,
        replicas: s.voters,
        term: s.term,
        commit_index: s.commit,
        applied_index: s.applied,
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(
        &self,
        _req: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        let meta = self.node.controller.group();
        let mut groups = vec![info(meta.name(), meta.status())];
        for c in &self.node.containers {
            groups.push(info(c.group().name(), c.group().status()));
        }
        Ok(Response::new(ClusterStatus {
            node_id: self.node.config.node_id,
            nodes: crate::cluster::nodes()
                .into_iter()
                .map(|(node_id, address)| NodeInfo { node_id, address })
                .collect(),
            groups,
        }))
    }

    async fn set_faults(&self, req: Request<Faults>) -> Result<Response<Faults>, Status> {
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
        let drop_to = req.into_inner().drop_to;
        tracing::warn!(?drop_to, "fault injection: dropping raft messages");
        transport.set_drop_to(drop_to);
        Ok(Response::new(Faults {
            drop_to: transport.drop_to(),
        }))
    }
}
