//! The `Read` service: one server stream per segment read (filtered to
//! the routing keys a key-restricted reader may see), and where a range
//! lies in tier-2 for direct scans (refused to key-restricted readers).

use std::sync::Arc;

use aquifer_proto::v1::read_server::Read;
use aquifer_proto::v1::{
    ChunkSlice, LocateRangeRequest, RangeLocation, ReadSegmentRequest, ReadSegmentResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::acl::Permission;
use crate::auth::Principal;
use crate::error::Error;
use crate::node::Node;
use crate::read::filter::forward_visible;
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
        let principal = Principal::of(&req);
        let req = req.into_inner();
        let access = self.node.authorize_segment(
            &principal,
            Permission::Read,
            req.segment_id,
            "read.open",
        )?;
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
        // A key-restricted reader: what the segment sends passes a filter
        // that forwards only the events it may see.
        let tx = if access.is_all() {
            tx
        } else {
            let (inner, filtered) = mpsc::channel(READ_QUEUE_MAX);
            let max = self.node.config.event_bytes_max as usize;
            tokio::spawn(forward_visible(filtered, tx, access, max));
            inner
        };
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
        let principal = Principal::of(&req);
        let req = req.into_inner();
        self.node
            .authorize_segment_whole(&principal, req.segment_id, "scan.locate")?;
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
