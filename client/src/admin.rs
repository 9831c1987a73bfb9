//! Stream administration: create, list, describe, seal and delete streams.
//!
//! Owns the unary `StreamAdmin` calls and their deadline.

use std::sync::Arc;

use tonic::Request;

use crate::conn::{Conn, ADMIN_TIMEOUT};
use crate::name::validate_part;
use crate::proto::{
    CreateStreamRequest, DeleteStreamRequest, DescribeStreamRequest, ListStreamsRequest, Retention,
    SealStreamRequest, UpdateStreamRequest,
};
use crate::{Error, StreamInfo, StreamName};

/// Stream administration; get one from [`crate::Client::admin`]. Cheap to
/// clone.
#[derive(Clone, Debug)]
pub struct Admin {
    conn: Arc<Conn>,
}

/// A request with the admin deadline.
fn request<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.set_timeout(ADMIN_TIMEOUT);
    req
}

impl Admin {
    pub(crate) fn new(conn: Arc<Conn>) -> Admin {
        Admin { conn }
    }

    /// Creates a stream with `segment_count` segments (0 means 1), each
    /// owning an equal slice of the key space. [`Error::AlreadyExists`] if it
    /// exists.
    pub async fn create_stream(
        &self,
        name: &StreamName,
        segment_count: u32,
    ) -> Result<StreamInfo, Error> {
        self.create_stream_with_retention(name, segment_count, Retention::default())
            .await
    }

    /// Like [`Admin::create_stream`], keeping only what `retention` says
    /// (0 in a field: no limit on it).
    pub async fn create_stream_with_retention(
        &self,
        name: &StreamName,
        segment_count: u32,
        retention: Retention,
    ) -> Result<StreamInfo, Error> {
        let req = CreateStreamRequest {
            name: Some(name.to_proto()),
            segment_count,
            retention: Some(retention),
        };
        Ok(self
            .conn
            .admin()
            .create_stream(request(req))
            .await?
            .into_inner())
    }

    /// Changes a stream's retention; data past the new limits leaves the
    /// head within seconds.
    pub async fn update_retention(
        &self,
        name: &StreamName,
        retention: Retention,
    ) -> Result<StreamInfo, Error> {
        let req = UpdateStreamRequest {
            name: Some(name.to_proto()),
            retention: Some(retention),
        };
        Ok(self
            .conn
            .admin()
            .update_stream(request(req))
            .await?
            .into_inner())
    }

    /// Lists the streams of `scope`, or of every scope with `None`.
    pub async fn list_streams(&self, scope: Option<&str>) -> Result<Vec<StreamInfo>, Error> {
        if let Some(scope) = scope {
            validate_part("scope", scope)?;
        }
        let req = ListStreamsRequest {
            scope: scope.unwrap_or_default().to_string(),
        };
        Ok(self
            .conn
            .admin()
            .list_streams(request(req))
            .await?
            .into_inner()
            .streams)
    }

    /// A stream's state: its segments with their key ranges, offsets and
    /// tiering. [`Error::NotFound`] if it does not exist.
    pub async fn describe_stream(&self, name: &StreamName) -> Result<StreamInfo, Error> {
        let req = DescribeStreamRequest {
            name: Some(name.to_proto()),
        };
        Ok(self
            .conn
            .admin()
            .describe_stream(request(req))
            .await?
            .into_inner())
    }

    /// Seals a stream: no more appends, reads still work. Idempotent.
    pub async fn seal_stream(&self, name: &StreamName) -> Result<StreamInfo, Error> {
        let req = SealStreamRequest {
            name: Some(name.to_proto()),
        };
        Ok(self
            .conn
            .admin()
            .seal_stream(request(req))
            .await?
            .into_inner())
    }

    /// Seals, then removes a stream and its data. [`Error::NotFound`] if it
    /// does not exist.
    pub async fn delete_stream(&self, name: &StreamName) -> Result<(), Error> {
        let req = DeleteStreamRequest {
            name: Some(name.to_proto()),
        };
        self.conn.admin().delete_stream(request(req)).await?;
        Ok(())
    }
}
