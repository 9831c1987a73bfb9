//! The `RaftTransport` service: raft messages from the other nodes, handed
//! to their groups. Node to node only; a full group queue drops messages
//! (raft resends), so a slow group never blocks the others.

use std::sync::Arc;

use aquifer_proto::v1::raft_transport_server::RaftTransport;
use aquifer_proto::v1::{RaftBatch, RaftBatchAck};
use tonic::{Request, Response, Status};

use crate::cluster::{decode_message, nodes};
use crate::node::Node;

pub struct RaftService {
    node: Arc<Node>,
}

impl RaftService {
    pub fn new(node: Arc<Node>) -> Self {
        RaftService { node }
    }
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn send(&self, req: Request<RaftBatch>) -> Result<Response<RaftBatchAck>, Status> {
        let batch = req.into_inner();
        if !nodes().contains_key(&batch.from) || batch.from == self.node.config.node_id {
            return Err(Status::permission_denied(format!(
                "node {} is not a peer of this cluster",
                batch.from
            )));
        }
        for envelope in batch.messages {
            let Some(msg) = decode_message(&envelope.message) else {
                return Err(Status::invalid_argument("undecodable raft message"));
            };
            if msg.from != batch.from || msg.to != self.node.config.node_id {
                return Err(Status::invalid_argument(format!(
                    "raft message from {} to {} arrived at node {} from node {}",
                    msg.from, msg.to, self.node.config.node_id, batch.from
                )));
            }
            self.node.deliver(&envelope.group, msg);
        }
        Ok(Response::new(RaftBatchAck {}))
    }
}
