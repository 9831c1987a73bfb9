//! The `StreamAdmin` service.

use std::sync::Arc;

use aquifer_proto::v1 as pb;
use aquifer_proto::v1::stream_admin_server::StreamAdmin;
use aquifer_proto::v1::{
    CreateStreamRequest, DeleteStreamRequest, DeleteStreamResponse, DescribeStreamRequest,
    ListStreamsRequest, ListStreamsResponse, SealStreamRequest, SegmentInfo, StreamInfo,
    StreamName, UpdateStreamRequest,
};
use tonic::{Request, Response, Status};

use crate::controller::{Retention, StreamKey, StreamRecord};
use crate::error::Error;
use crate::node::{validate_name, Node};

pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    pub fn new(node: Arc<Node>) -> Self {
        AdminService { node }
    }

    fn info(&self, s: &StreamRecord) -> StreamInfo {
        let segments = s
            .segments
            .iter()
            .map(|g| {
                let view = self
                    .node
                    .container_of(g.id)
                    .segment(g.id)
                    .map(|seg| seg.view());
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
            }),
        }
    }
}

fn retention(r: Option<pb::Retention>) -> Retention {
    r.map_or_else(Retention::default, |r| Retention {
        time_ms: r.time_ms,
        bytes: r.size_bytes,
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
        // Metadata is answered by its leader only: never a stale replica.
        self.node.check_meta_leader()?;
        let req = req.into_inner();
        let key = key(req.name)?;
        let stream = self
            .node
            .create_stream(&key, req.segment_count, retention(req.retention))
            .await?;
        tracing::info!(stream = %key, segments = stream.segments.len(), "stream created");
        Ok(Response::new(self.info(&stream)))
    }

    async fn list_streams(
        &self,
        req: Request<ListStreamsRequest>,
    ) -> Result<Response<ListStreamsResponse>, Status> {
        // Metadata is answered by its leader only: never a stale replica.
        self.node.check_meta_leader()?;
        let scope = req.into_inner().scope;
        if !scope.is_empty() {
            validate_name("scope", &scope)?;
        }
        let streams = self
            .node
            .controller
            .all()
            .iter()
            .filter(|s| !s.deleting && (scope.is_empty() || s.key.scope == scope))
            .map(|s| self.info(s))
            .collect();
        Ok(Response::new(ListStreamsResponse { streams }))
    }

    async fn describe_stream(
        &self,
        req: Request<DescribeStreamRequest>,
    ) -> Result<Response<StreamInfo>, Status> {
        // Metadata is answered by its leader only: never a stale replica.
        self.node.check_meta_leader()?;
        let key = key(req.into_inner().name)?;
        let stream = self.node.stream(&key)?;
        self.node.catch_up(&stream).await?;
        Ok(Response::new(self.info(&stream)))
    }

    async fn seal_stream(
        &self,
        req: Request<SealStreamRequest>,
    ) -> Result<Response<StreamInfo>, Status> {
        // Metadata is answered by its leader only: never a stale replica.
        self.node.check_meta_leader()?;
        let key = key(req.into_inner().name)?;
        let stream = self.node.seal_stream(&key).await?;
        tracing::info!(stream = %key, "stream sealed");
        Ok(Response::new(self.info(&stream)))
    }

    async fn update_stream(
        &self,
        req: Request<UpdateStreamRequest>,
    ) -> Result<Response<StreamInfo>, Status> {
        // Metadata is answered by its leader only: never a stale replica.
        self.node.check_meta_leader()?;
        let req = req.into_inner();
        let key = key(req.name)?;
        let stream = self
            .node
            .set_retention(&key, retention(req.retention))
            .await?;
        tracing::info!(stream = %key, retention = ?stream.retention, "stream retention changed");
        Ok(Response::new(self.info(&stream)))
    }

    async fn delete_stream(
        &self,
        req: Request<DeleteStreamRequest>,
    ) -> Result<Response<DeleteStreamResponse>, Status> {
        // Metadata is answered by its leader only: never a stale replica.
        self.node.check_meta_leader()?;
        let key = key(req.into_inner().name)?;
        self.node.delete_stream(&key).await?;
        tracing::info!(stream = %key, "stream deleted");
        Ok(Response::new(DeleteStreamResponse {}))
    }
}
