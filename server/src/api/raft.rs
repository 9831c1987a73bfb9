//! The `RaftTransport` service: raft messages from the other nodes, handed
//! to their groups. Node to node only; a full group queue drops messages
//! (raft resends), so a slow group never blocks the others.
//!
//! A sender that is not a peer is refused before its bytes are decoded, and
//! nothing a peer claims is allocated ahead of the bytes that back it: a
//! snapshot's buffer grows with the pieces that arrived, never to the size
//! the first piece announces.

use std::sync::Arc;

use aquifer_proto::v1::raft_transport_server::RaftTransport;
use aquifer_proto::v1::{RaftBatch, RaftBatchAck, SnapshotPiece};
use bytes::Bytes;
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

    /// Refuses a sender that is not a peer (before decoding anything it sent).
    fn check_sender(&self, from: u64) -> Result<(), Status> {
        if self.node.addresses.get(from).is_none() || from == self.node.config.node_id {
            return Err(Status::permission_denied(format!(
                "node {from} is not a peer of this cluster"
            )));
        }
        Ok(())
    }

    /// Refuses a message not from the sender to us.
    fn check_message(&self, from: u64, msg: &raft::prelude::Message) -> Result<(), Status> {
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
        self.check_sender(batch.from)?;
        for envelope in batch.messages {
            let Some(msg) = decode_message(&envelope.message) else {
                return Err(Status::invalid_argument("undecodable raft message"));
            };
            self.check_message(batch.from, &msg)?;
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
        self.check_sender(first.from)?;
        let mut data = SnapshotData::new(first.data_bytes)?;
        let Some(mut msg) = decode_message(&first.message) else {
            return Err(Status::invalid_argument("undecodable snapshot message"));
        };
        self.check_message(first.from, &msg)?;
        data.push(&first.data)?;
        while let Some(piece) = pieces.message().await? {
            data.push(&piece.data)?;
        }
        msg.mut_snapshot().data = data.finish()?;
        self.node.deliver(&first.group, msg);
        Ok(Response::new(RaftBatchAck {}))
    }
}

/// A snapshot's data as its pieces arrive.
struct SnapshotData {
    /// The size the first piece announced, at most [`SNAPSHOT_BYTES_MAX`].
    want: usize,
    data: Vec<u8>,
}

impl SnapshotData {
    fn new(announced: u64) -> Result<Self, Status> {
        match usize::try_from(announced) {
            Ok(want) if announced <= SNAPSHOT_BYTES_MAX => Ok(SnapshotData {
                want,
                data: Vec::new(),
            }),
            _ => Err(Status::resource_exhausted(format!(
                "a snapshot of {announced} bytes is over the limit of {SNAPSHOT_BYTES_MAX}"
            ))),
        }
    }

    fn push(&mut self, piece: &[u8]) -> Result<(), Status> {
        let left = self.want - self.data.len();
        if piece.len() > left {
            return Err(Status::invalid_argument("snapshot pieces exceed its size"));
        }
        if self.data.capacity() - self.data.len() < piece.len() {
            // Doubling keeps the copies few; capped at the announced size,
            // so the buffer never outgrows the snapshot, and grown only as
            // bytes arrive, so an announcement alone costs nothing.
            let grow = self.data.capacity().max(piece.len()).min(left);
            self.data.reserve_exact(grow);
        }
        self.data.extend_from_slice(piece);
        Ok(())
    }

    fn finish(self) -> Result<Bytes, Status> {
        if self.data.len() != self.want {
            return Err(Status::invalid_argument(format!(
                "snapshot stream ended at {} of {} bytes",
                self.data.len(),
                self.want
            )));
        }
        Ok(self.data.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest::proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_snapshot_grows_with_its_pieces_not_its_announcement(
            announced in prop_oneof![0u64..2048, SNAPSHOT_BYTES_MAX - 1..=SNAPSHOT_BYTES_MAX + 1, any::<u64>()],
            pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..512), 0..6),
        ) {
            let received: usize = pieces.iter().map(Vec::len).sum();
            let (out, largest) = aquifer_alloc_probe::largest_allocation(|| {
                let mut data = SnapshotData::new(announced)?;
                for p in &pieces {
                    data.push(p)?;
                }
                data.finish()
            });
            prop_assert!(largest <= 2 * received + 1024, "{largest} bytes for {received} received");
            match out {
                Ok(data) => {
                    prop_assert_eq!(data.len() as u64, announced);
                    prop_assert_eq!(&data[..], &pieces.concat()[..]);
                }
                Err(_) => prop_assert!(received as u64 != announced || announced > SNAPSHOT_BYTES_MAX),
            }
        }

        #[test]
        fn arbitrary_raft_messages_never_panic_or_allocate_what_they_claim(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let (msg, largest) =
                aquifer_alloc_probe::largest_allocation(|| decode_message(&bytes));
            // One copy of the input, which the entries share, plus the
            // vector of entries (each at least two bytes of input).
            let entries = bytes.len() / 2 * std::mem::size_of::<raft::prelude::Entry>();
            prop_assert!(largest <= bytes.len() + entries + 1024, "{largest} bytes for {}", bytes.len());
            if let Some(msg) = msg {
                let again = protobuf::Message::write_to_bytes(&msg).unwrap();
                prop_assert!(decode_message(&again).is_some());
            }
        }
    }

    #[test]
    fn a_raft_message_claiming_more_than_it_holds_allocates_nothing_for_it() {
        // The context field (12, bytes) and an unknown field (100), each
        // claiming 80 KiB that are not there: protobuf 2 on a slice
        // allocated them before finding the input short.
        for bytes in [
            &[0x62, 0x80, 0x80, 0x05][..],
            &[0xa2, 0x06, 0x80, 0x80, 0x05],
        ] {
            let (msg, largest) = aquifer_alloc_probe::largest_allocation(|| decode_message(bytes));
            assert!(msg.is_none());
            assert!(largest < 1024, "{largest}");
        }
    }
}
