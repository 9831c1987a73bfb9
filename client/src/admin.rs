//! Stream administration: create, list, describe, scale, seal and delete
//! streams, and truncate a segment.
//!
//! Owns the unary `StreamAdmin` calls and their deadline, and [`Scale`], the
//! client's form of a manual scale (never a generated type in the API).

use std::sync::Arc;

use crate::conn::Conn;
use crate::name::validate_part;
use crate::proto::cluster_client::ClusterClient;
use crate::proto::{
    CreateStreamRequest, DeleteStreamRequest, DescribeStreamRequest, ListStreamsRequest,
    MergeSegments, NodeInfo, ScaleStreamRequest, SealStreamRequest, SplitSegment,
    TruncateSegmentRequest, UpdateStreamRequest,
};
use crate::segment::on_segment_leader;
use crate::{ClusterStatus, Error, Retention, ScalingPolicy, StreamInfo, StreamName};

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
        self.create_stream_with(name, segment_count, retention, ScalingPolicy::fixed())
            .await
    }

    /// Like [`Admin::create_stream`], with its retention and its scaling
    /// policy (a stream starts with at least the policy's minimum segments).
    pub async fn create_stream_with(
        &self,
        name: &StreamName,
        segment_count: u32,
        retention: Retention,
        scaling: ScalingPolicy,
    ) -> Result<StreamInfo, Error> {
        let req = CreateStreamRequest {
            name: Some(name.to_proto()),
            segment_count,
            retention: Some(retention.to_proto()),
            scaling: Some(scaling.to_proto()),
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
        self.update(UpdateStreamRequest {
            name: Some(name.to_proto()),
            retention: Some(retention.to_proto()),
            scaling: None,
        })
        .await
    }

    /// Changes a stream's scaling policy (its retention stays).
    pub async fn update_scaling(
        &self,
        name: &StreamName,
        scaling: ScalingPolicy,
    ) -> Result<StreamInfo, Error> {
        self.update(UpdateStreamRequest {
            name: Some(name.to_proto()),
            retention: None,
            scaling: Some(scaling.to_proto()),
        })
        .await
    }

    async fn update(&self, req: UpdateStreamRequest) -> Result<StreamInfo, Error> {
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

    /// Scales a stream by hand: seals the segments `scale` names and
    /// creates their successors in a new epoch; returns the stream once the
    /// new epoch is in force. [`Error::InvalidArgument`] for a segment that
    /// is not active, a merge of segments that are not key-adjacent, or a
    /// split into fewer than 2 or more than 16 pieces;
    /// [`Error::FailedPrecondition`] while another scale of the stream runs.
    /// An empty `scale` is refused before anything is sent.
    ///
    /// Retried like every admin call (redirects, other nodes): a retry
    /// whose first attempt did happen finds its segments sealed and gets
    /// `InvalidArgument`; describe the stream to tell.
    pub async fn scale_stream(
        &self,
        name: &StreamName,
        scale: &Scale,
    ) -> Result<StreamInfo, Error> {
        if scale.splits.is_empty() && scale.merges.is_empty() {
            return Err(Error::InvalidArgument(
                "a scale needs at least one split or merge".into(),
            ));
        }
        if let Some(m) = scale.merges.iter().find(|m| m.len() < 2) {
            return Err(Error::InvalidArgument(format!(
                "a merge needs at least two segments, not {m:?}"
            )));
        }
        let req = ScaleStreamRequest {
            name: Some(name.to_proto()),
            splits: scale
                .splits
                .iter()
                .map(|&(segment_id, pieces)| SplitSegment { segment_id, pieces })
                .collect(),
            merges: scale
                .merges
                .iter()
                .map(|ids| MergeSegments {
                    segment_ids: ids.clone(),
                })
                .collect(),
        };
        self.call(|c| {
            let req = c.request(req.clone());
            async move { c.admin().scale_stream(req).await }
        })
        .await?
        .try_into()
    }

    /// After `segment_id` was found sealed: describes the stream, with
    /// backoff, until the segment lists its successors (then the stream as
    /// described, whose `segments` hold them) or the stream itself is sealed
    /// (`None`). A scale seals its segments up to about a second before it
    /// records the new epoch that names their successors; `timeout` bounds
    /// the wait. Shared by the writer (where to move events) and the reader
    /// (what to read next).
    pub(crate) async fn await_successors(
        &self,
        name: &StreamName,
        segment_id: u64,
        timeout: std::time::Duration,
    ) -> Result<Option<StreamInfo>, Error> {
        let started = tokio::time::Instant::now();
        let mut attempt = 0;
        loop {
            let why = match self.describe_stream(name).await {
                Ok(info) => {
                    let listed = info.segments.iter().find(|s| s.segment_id == segment_id);
                    let complete = listed.is_some_and(|me| {
                        !me.successors.is_empty()
                            && me
                                .successors
                                .iter()
                                .all(|id| info.segments.iter().any(|s| s.segment_id == *id))
                    });
                    if complete {
                        return Ok(Some(info));
                    }
                    if info.sealed {
                        return Ok(None);
                    }
                    Error::unavailable(format!(
                        "segment {segment_id} of {name} is sealed but lists no successors yet"
                    ))
                }
                Err(e) if e.is_retryable() => e,
                Err(e) => return Err(e),
            };
            attempt += 1;
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(Error::unavailable_from(
                    format!(
                        "gave up waiting for the successors of sealed segment {segment_id} after {} s",
                        timeout.as_secs_f64()
                    ),
                    why,
                ));
            }
            tokio::time::sleep(self.conn.backoff(attempt).min(left)).await;
        }
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

    /// Moves segment `segment_id`'s head forward to `head_offset`, an event
    /// boundary at or below its length (an offset a read or an append
    /// returned): reads below it fail with [`Error::OutOfRange`] from then
    /// on, and its tier-2 bytes below it are deleted. Returns the head after
    /// the call; a head at or below the current one changes nothing (the
    /// head never moves back), so a retry is safe.
    /// [`Error::InvalidArgument`] for an offset inside an event,
    /// [`Error::OutOfRange`] for one past the length.
    ///
    /// Answered by the leader of the segment's container (redirects and
    /// retries as for [`crate::SegmentWriter::append_conditional`]).
    pub async fn truncate_segment(&self, segment_id: u64, head_offset: u64) -> Result<u64, Error> {
        let req = TruncateSegmentRequest {
            segment_id,
            head_offset,
        };
        let answer = on_segment_leader(&self.conn, segment_id, |mut c, timeout| {
            let mut req = tonic::Request::new(req);
            req.set_timeout(timeout);
            async move { c.truncate_segment(req).await }
        })
        .await?;
        Ok(answer.head_offset)
    }

    /// Adds node `id` to the cluster: every group adds it as a replica and
    /// sends it a snapshot. `address` is `HOST:PORT` (clients), optionally
    /// followed by `/HOST:PEER_PORT` (the other nodes; default PORT + 1).
    /// Start it first with `aquifer serve --join`.
    pub async fn add_node(&self, id: u64, address: &str) -> Result<ClusterStatus, Error> {
        let (client, peer) = address.split_once('/').unwrap_or((address, ""));
        let req = NodeInfo {
            node_id: id,
            address: client.to_string(),
            peer_address: peer.to_string(),
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
    pub(crate) async fn call<T, F, Fut>(&self, f: F) -> Result<T, Error>
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
            // Bounded here, not only by the grpc-timeout header the request
            // carries: a node that took the call and never answers (it died
            // mid-call, or stalls) must not hold the caller, e.g. a writer
            // waiting for a sealed segment's successors.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let err = match tokio::time::timeout(left, f(conn.clone())).await {
                Ok(Ok(answer)) => {
                    if let Some(n) = &nodes {
                        n.set_meta_leader(&conn);
                    }
                    return Ok(answer.into_inner());
                }
                Ok(Err(status)) => Error::from(status),
                Err(_) => Error::unavailable(format!(
                    "no answer from {} within {} s",
                    conn.addr(),
                    self.conn.settings().request_timeout.as_secs_f64()
                )),
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

/// A manual scale for [`Admin::scale_stream`]: splits and merges of active
/// segments, all done in one new epoch.
///
/// ```
/// use aquifer_client::Scale;
///
/// // Split segment 7 in three, merge 8 and 9 (key-adjacent) into one.
/// let scale = Scale::default().split(7, 3).merge([8, 9]);
/// assert_eq!(scale.splits(), &[(7, 3)]);
/// assert_eq!(scale.merges(), &[vec![8, 9]]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Scale {
    splits: Vec<(u64, u32)>,
    merges: Vec<Vec<u64>>,
}

impl Scale {
    /// Splits active segment `segment_id` into `pieces` equal key ranges
    /// (2 to 16; the server checks).
    pub fn split(mut self, segment_id: u64, pieces: u32) -> Self {
        self.splits.push((segment_id, pieces));
        self
    }

    /// Merges key-adjacent active segments (at least two, any order) into
    /// one.
    pub fn merge(mut self, segment_ids: impl IntoIterator<Item = u64>) -> Self {
        self.merges.push(segment_ids.into_iter().collect());
        self
    }

    /// The splits: (segment id, pieces).
    pub fn splits(&self) -> &[(u64, u32)] {
        &self.splits
    }

    /// The merges: the segment ids of each.
    pub fn merges(&self) -> &[Vec<u64>] {
        &self.merges
    }
}
