//! The `Read` service: one server stream per segment read.

use std::sync::Arc;

use aquifer_proto::v1::read_server::Read;
use aquifer_proto::v1::{ReadSegmentRequest, ReadSegmentResponse};
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
        let segment = self
            .node
            .container_of(req.segment_id)
            .segment(req.segment_id)
            .ok_or(Error::SegmentNotFound(req.segment_id))?;
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
        };
        let (tx, rx) = mpsc::channel(READ_QUEUE_MAX);
        tokio::spawn(stream_segment(
            segment,
            self.node.tier2.clone(),
            range,
            tx,
            self.node.closed(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
