//! Stream administration: create, list, describe, seal and delete streams.
//!
//! Owns the unary `StreamAdmin` calls and their deadline.

use std::sync::Arc;

use crate::conn::Conn;
use crate::name::validate_part;
use crate::proto::cluster_client::ClusterClient;
use crate::proto::{
    CreateStreamRequest, DeleteStreamRequest, DescribeStreamRequest, ListStreamsRequest, NodeInfo,
    SealStreamRequest, UpdateStreamRequest,
};
use crate::{ClusterStatus, Error, Retention, StreamInfo, StreamName};

/// Stream administration; get one from [`crate::Client::admin`]. Cheap to
/// clone.
///
/// ```no_run
/// use std::time::Duration;
/// use aquifer_client::{Client, Error, Retention, StreamName};
///
/// # async fn example() -> Result<(), Error> {
/// let admin = Client::connect("127.0.0.1:7450").await?.admin();
/// let name: StreamName = "analytics/clicks".parse()?;
/// let keep = Retention::default().time(Duration::from_secs(7 * 86_400));
/// match admin.create_stream_with_retention(&name, 4, keep).await {
///     Ok(_) | Err(Error::AlreadyExists(_)) => {}
///     Err(e) => return Err(e),
/// }
/// let info = admin.describe_stream(&name).await?;
/// assert_eq!(info.segments.len(), 4);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Admin {
    conn: Arc<Conn>,
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

    /// Like [`Admin::create_stream`], keeping only what `retention` says.
    pub async fn create_stream_with_retention(
        &self,
        name: &StreamName,
        segment_count: u32,
        retention: Retention,
    ) -> Result<StreamInfo, Error> {
        let req = CreateStreamRequest {
            name: Some(name.to_proto()),
            segment_count,
            retention: Some(retention.to_proto()),
        };
        self.call(|c| {
            let req = c.request(req.clone());
            async move { c.admin().create_stream(req).await }
        })
        .await?
        .try_into()
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
            retention: Some(retention.to_proto()),
        };
        self.call(|c| {
            let req = c.request(req.clone());
            async move { c.admin().update_stream(req).await }
        })
        .await?
        .try_into()
    }

    /// Lists the streams of `scope`, or of every scope with `None`.
    pub async fn list_streams(&self, scope: Option<&str>) -> Result<Vec<StreamInfo>, Error> {
        if let Some(scope) = scope {
            validate_part("scope", scope)?;
        }
        let req = ListStreamsRequest {
            scope: scope.unwrap_or_default().to_string(),
        };
        self.call(|c| {
            let req = c.request(req.clone());
            async move { c.admin().list_streams(req).await }
        })
        .await?
        .streams
        .into_iter()
        .map(StreamInfo::try_from)
        .collect()
    }

    /// A stream's state: its segments with their key ranges, offsets and
    /// tiering. [`Error::NotFound`] if it does not exist.
    pub async fn describe_stream(&self, name: &StreamName) -> Result<StreamInfo, Error> {
        let req = DescribeStreamRequest {
            name: Some(name.to_proto()),
        };
        self.call(|c| {
            let req = c.request(req.clone());
            async move { c.admin().describe_stream(req).await }
        })
        .await?
        .try_into()
    }

    /// Seals a stream: no more appends, reads still work. Idempotent.
    pub async fn seal_stream(&self, name: &StreamName) -> Result<StreamInfo, Error> {
        let req = SealStreamRequest {
            name: Some(name.to_proto()),
        };
        self.call(|c| {
            let req = c.request(req.clone());
            async move { c.admin().seal_stream(req).await }
        })
        .await?
        .try_into()
    }

    /// Seals, then removes a stream and its data. [`Error::NotFound`] if it
    /// does not exist.
    pub async fn delete_stream(&self, name: &StreamName) -> Result<(), Error> {
        let req = DeleteStreamRequest {
            name: Some(name.to_proto()),
        };
        self.call(|c| {
            let req = c.request(req.clone());
            async move { c.admin().delete_stream(req).await }
        })
        .await?;
        Ok(())
    }

    /// Adds node `id`, listening at `address`, to the cluster: every group
    /// adds it as a replica and sends it a snapshot. Start it first with
    /// `aquifer serve --join`.
    pub async fn add_node(&self, id: u64, address: &str) -> Result<ClusterStatus, Error> {
        let req = NodeInfo {
            node_id: id,
            address: address.to_string(),
            ..Default::default()
        };
        self.call(|c| {
            let req = c.request(req.clone());
            async move { ClusterClient::new(c.channel().1).add_node(req).await }
        })
        .await
        .map(ClusterStatus::from)
    }

    /// Removes node `id`: groups move their leadership away and drop it as
    /// a replica. Stop the node once `cluster status` no longer lists it as
    /// a replica.
    pub async fn remove_node(&self, id: u64) -> Result<ClusterStatus, Error> {
        let req = NodeInfo {
            node_id: id,
            ..Default::default()
        };
        self.call(|c| {
            let req = c.request(req.clone());
            async move { ClusterClient::new(c.channel().1).remove_node(req).await }
        })
        .await
        .map(ClusterStatus::from)
    }

    /// Runs an admin call on the metadata leader: starts at the node that
    /// answered last, follows `NOT_LEADER` redirects, and in a cluster moves
    /// on to the next node when one cannot be reached, until the admin
    /// request timeout. (A retried create may find its own stream:
    /// AlreadyExists.)
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: Fn(Arc<Conn>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let nodes = self.conn.nodes();
        let mut conn = nodes
            .as_ref()
            .and_then(|n| n.meta_leader())
            .unwrap_or_else(|| self.conn.clone());
        let deadline = tokio::time::Instant::now() + self.conn.settings().request_timeout;
        let mut attempt = 0;
        loop {
            let err = match f(conn.clone()).await {
                Ok(answer) => {
                    if let Some(n) = &nodes {
                        n.set_meta_leader(&conn);
                    }
                    return Ok(answer.into_inner());
                }
                Err(status) => Error::from(status),
            };
            attempt += 1;
            let clustered = nodes.as_ref().is_some_and(|n| n.len() > 1);
            let redirect = conn.redirect(&err);
            let retry = redirect.is_some() || (clustered && err.is_retryable());
            if !retry || tokio::time::Instant::now() >= deadline {
                return Err(err);
            }
            conn = match redirect {
                Some(leader) => leader,
                None => {
                    tokio::time::sleep(conn.backoff(attempt)).await;
                    conn.next()
                }
            };
        }
    }
}
