//! The `RaftTransport` service: raft messages from the other nodes, handed
//! to their groups. Node to node only; a full group queue drops messages
//! (raft resends), so a slow group never blocks the others.

use std::sync::Arc;

use aquifer_proto::v1::raft_transport_server::RaftTransport;
use aquifer_proto::v1::{RaftBatch, RaftBatchAck, SnapshotPiece};
use bytes::BytesMut;
use tonic::{Request, Response, Status, Streaming};

use crate::cluster::{decode_message, SNAPSHOT_BYTES_MAX};
use crate::node::Node;

pub struct RaftService {
    node: Arc<Node>,
}

impl RaftService {
    pub fn new(node: Arc<Node>) -> Self {
        RaftService { node }
    }

    /// Refuses a sender that is not a peer, and a message not from it to us.
    fn check(&self, from: u64, msg: &raft::prelude::Message) -> Result<(), Status> {
        if self.node.addresses.get(from).is_none() || from == self.node.config.node_id {
            return Err(Status::permission_denied(format!(
                "node {from} is not a peer of this cluster"
            )));
        }
        if msg.from != from || msg.to != self.node.config.node_id {
            return Err(Status::invalid_argument(format!(
                "raft message from {} to {} arrived at node {} from node {from}",
                msg.from, msg.to, self.node.config.node_id
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn send(&self, req: Request<RaftBatch>) -> Result<Response<RaftBatchAck>, Status> {
        let batch = req.into_inner();
        for envelope in batch.messages {
            let Some(msg) = decode_message(&envelope.message) else {
                return Err(Status::invalid_argument("undecodable raft message"));
            };
            self.check(batch.from, &msg)?;
            self.node.deliver(&envelope.group, msg);
        }
        Ok(Response::new(RaftBatchAck {}))
    }

    async fn send_snapshot(
        &self,
        req: Request<Streaming<SnapshotPiece>>,
    ) -> Result<Response<RaftBatchAck>, Status> {
        let mut pieces = req.into_inner();
        let first = pieces
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let Some(mut msg) = decode_message(&first.message) else {
            return Err(Status::invalid_argument("undecodable snapshot message"));
        };
        self.check(first.from, &msg)?;
        if first.data_bytes > SNAPSHOT_BYTES_MAX {
            return Err(Status::resource_exhausted(format!(
                "a snapshot of {} bytes is over the limit of {SNAPSHOT_BYTES_MAX}",
                first.data_bytes
            )));
        }
        let want = first.data_bytes as usize;
        let mut data = BytesMut::with_capacity(want);
        data.extend_from_slice(&first.data);
        while let Some(piece) = pieces.message().await? {
            if data.len() + piece.data.len() > want {
                return Err(Status::invalid_argument("snapshot pieces exceed its size"));
            }
            data.extend_from_slice(&piece.data);
        }
        if data.len() != want {
            return Err(Status::invalid_argument(format!(
                "snapshot stream ended at {} of {want} bytes",
                data.len()
            )));
        }
        msg.mut_snapshot().data = data.freeze();
        self.node.deliver(&first.group, msg);
        Ok(Response::new(RaftBatchAck {}))
    }
}
