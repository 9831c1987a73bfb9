//! The `Read` service: one server stream per segment read.

use std::sync::Arc;

use aquifer_proto::v1::read_server::Read;
use aquifer_proto::v1::{
    ChunkSlice, LocateRangeRequest, RangeLocation, ReadSegmentRequest, ReadSegmentResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::node::Node;
use crate::read::{stream_segment, ReadRange};

/// Responses buffered per reader: with ~1 MiB each, bounds a slow reader.
const READ_QUEUE_MAX: usize = 4;

pub struct ReadService {
    node: Arc<Node>,
}

impl ReadService {
    pub fn new(node: Arc<Node>) -> Self {
        ReadService { node }
    }
}

#[tonic::async_trait]
impl Read for ReadService {
    type ReadSegmentStream = ReceiverStream<Result<ReadSegmentResponse, Status>>;

    async fn read_segment(
        &self,
        req: Request<ReadSegmentRequest>,
    ) -> Result<Response<Self::ReadSegmentStream>, Status> {
        let req = req.into_inner();
        let segment = self.node.segment(req.segment_id)?;
        if req.end_offset > 0 && req.end_offset < req.offset {
            return Err(Error::InvalidArgument(format!(
                "end offset {} is before the start offset {}",
                req.end_offset, req.offset
            ))
            .into());
        }
        let range = ReadRange {
            offset: req.offset,
            end: (req.end_offset > 0).then_some(req.end_offset),
            follow: req.follow,
            replicated: self.node.addresses.is_cluster(),
        };
        let (tx, rx) = mpsc::channel(READ_QUEUE_MAX);
        let (node, id) = (self.node.clone(), req.segment_id);
        let gone = move || match node.segment(id) {
            Err(e) => e,
            Ok(_) => Error::Unavailable(format!(
                "this node's replica of segment {id} was replaced while reading; resume"
            )),
        };
        tokio::spawn(stream_segment(
            segment,
            self.node.tier2.clone(),
            range,
            tx,
            self.node.closed(),
            gone,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn locate_range(
        &self,
        req: Request<LocateRangeRequest>,
    ) -> Result<Response<RangeLocation>, Status> {
        let req = req.into_inner();
        let segment = self.node.segment(req.segment_id)?;
        let (slices, broker_offset) = segment.locate_range(req.start_offset, req.end_offset)?;
        let slices = slices
            .into_iter()
            .map(|p| ChunkSlice {
                object_offset: p.chunk.object_offset + (p.from - p.chunk.start),
                object: p.chunk.name,
                segment_offset: p.from,
                length: p.to - p.from,
            })
            .collect();
        Ok(Response::new(RangeLocation {
            tier2: Some(self.node.tier2.location().clone()),
            slices,
            broker_offset,
        }))
    }
}
