//! The `Segments` service: single-request operations on one segment —
//! conditional appends and a client's truncation.
//!
//! Both run on the segment container's ready leader (others redirect) and
//! each is one raft entry, so the state machine decides it atomically
//! against every other entry: the length condition and the writer's event
//! number are checked at apply time, never here, where they could be stale.
//! This layer checks the request (framing, sizes, that a truncation lands
//! on an event boundary) and never holds segment state.

use std::sync::Arc;
use std::time::Instant;

use aquifer_proto::v1::segments_server::Segments;
use aquifer_proto::v1::{
    AppendConditionalRequest, AppendConditionalResponse, TruncateSegmentRequest,
    TruncateSegmentResponse,
};
use tonic::{Request, Response, Status};

use super::append::{
    append_counters, appendable, check_event_number, check_events, check_writer_id,
};
use crate::auth::acl::Permission;
use crate::auth::Principal;
use crate::container::command::{self, Cmd};
use crate::container::state::Applied;
use crate::error::Error;
use crate::node::Node;

pub struct SegmentsService {
    node: Arc<Node>,
}

impl SegmentsService {
    pub fn new(node: Arc<Node>) -> Self {
        SegmentsService { node }
    }

    async fn append_conditional(
        &self,
        req: AppendConditionalRequest,
    ) -> Result<AppendConditionalResponse, Error> {
        let received = Instant::now();
        check_writer_id(&req.writer_id)?;
        check_event_number(req.event_number)?;
        let bytes = check_events(&self.node, &req.event, 1)?;
        let (container, _) = appendable(&self.node, req.segment_id)?;
        let expected = req.expected_length;
        let length = expected.checked_add(u64::from(bytes)).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "expected length {expected} plus the event is past the largest segment length"
            ))
        })?;
        let cmd = Cmd::Append(command::Append {
            segment_id: req.segment_id,
            writer_id: req.writer_id,
            first_event_number: req.event_number,
            event_count: 1,
            events: req.event,
            expected_length: Some(expected),
            txn_parent: None,
            append_ms: crate::tier::writer::now_ms(),
        });
        self.node.budget.wait_for_room(u64::from(bytes)).await;
        let applied = container.submit(cmd, bytes).await?.await?;
        let m = &self.node.metrics;
        m.append_ack_seconds
            .observe(received.elapsed().as_secs_f64());
        let duplicate = match applied {
            Applied::Appended { duplicate, .. } => duplicate,
            other => {
                return Err(Error::Internal(format!(
                    "conditional append answered with {other:?}"
                )))
            }
        };
        if !duplicate {
            let (events, appended) = append_counters(&self.node, req.segment_id);
            events.inc();
            appended.inc_by(u64::from(bytes));
        }
        // Applied only at exactly `expected`, a duplicate too (it is a retry
        // of this request, which applied there).
        Ok(AppendConditionalResponse {
            offset: expected,
            length,
            duplicate,
        })
    }

    async fn truncate_segment(
        &self,
        req: TruncateSegmentRequest,
    ) -> Result<TruncateSegmentResponse, Error> {
        let id = req.segment_id;
        let container = self.node.serving_container(id)?.clone();
        container.check_leader()?;
        let segment = container.segment(id).ok_or(Error::SegmentNotFound(id))?;
        let view = segment.view();
        if req.head_offset <= view.head {
            return Ok(TruncateSegmentResponse {
                head_offset: view.head,
            });
        }
        if req.head_offset > view.length {
            return Err(Error::OffsetOutOfRange {
                segment: id,
                offset: req.head_offset,
                length: view.length,
            });
        }
        if !crate::read::is_event_boundary(&segment, &self.node.tier2, req.head_offset).await? {
            return Err(Error::InvalidArgument(format!(
                "offset {} of segment {id} is not an event boundary: truncate at an offset a read or an append returned",
                req.head_offset
            )));
        }
        let applied = container
            .propose(Cmd::Truncate(command::Truncate {
                segment_id: id,
                head: req.head_offset,
                at_event_boundary: true,
            }))
            .await?;
        if let Applied::Truncated { objects } = applied {
            tracing::info!(
                segment = id,
                head = req.head_offset,
                objects = objects.len(),
                "client truncated segment"
            );
            self.node.tier2.delete_unreferenced(objects).await;
        }
        Ok(TruncateSegmentResponse {
            head_offset: segment.view().head,
        })
    }
}

#[tonic::async_trait]
impl Segments for SegmentsService {
    async fn append_conditional(
        &self,
        req: Request<AppendConditionalRequest>,
    ) -> Result<Response<AppendConditionalResponse>, Status> {
        let id = req.get_ref().segment_id;
        self.node.authorize_segment(
            &Principal::of(&req),
            Permission::Write,
            id,
            "append.conditional",
        )?;
        Ok(Response::new(
            SegmentsService::append_conditional(self, req.into_inner()).await?,
        ))
    }

    async fn truncate_segment(
        &self,
        req: Request<TruncateSegmentRequest>,
    ) -> Result<Response<TruncateSegmentResponse>, Status> {
        let id = req.get_ref().segment_id;
        self.node.authorize_segment(
            &Principal::of(&req),
            Permission::Delete,
            id,
            "segment.truncate",
        )?;
        Ok(Response::new(
            SegmentsService::truncate_segment(self, req.into_inner()).await?,
        ))
    }
}
