//! Single-request operations on one segment (the `Segments` service):
//! conditional appends through [`SegmentWriter`], and the retrying call to a
//! segment's leader that they and [`crate::Admin::truncate_segment`] share.
//!
//! Owns [`SegmentWriter`] and [`Appended`]. A retry always resends the very
//! request that failed (same writer id, event number, expected length and
//! bytes), which is what makes it safe: the server answers a retry of an
//! applied append as a duplicate. It must never choose event numbers itself.

use std::sync::Arc;
use std::time::Duration;

use aquifer_proto::frame;
use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::conn::Conn;
use crate::proto::segments_client::SegmentsClient;
use crate::proto::AppendConditionalRequest;
use crate::writer::{check_writer_id, sendable_framed_len};
use crate::Error;

/// What a successful [`SegmentWriter::append_conditional`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Appended {
    /// Where the event is: the expected length.
    pub offset: u64,
    /// The segment's length right after the event.
    pub length: u64,
    /// The server had applied this very append before (a retry after a
    /// lost answer): it is stored once, where `offset` says.
    pub duplicate: bool,
}

/// Conditional appends to one segment as one writer; get one from
/// [`crate::Client::segment_writer`]. Cheap to clone.
///
/// The caller numbers the writer's events: 1 for a new writer id, then each
/// applied append's number + 1. A refused append ([`Error::ConditionFailed`],
/// or any other error that is not retryable) leaves its number unused;
/// after an error that gave up retrying ([`Error::is_retryable`]) the outcome
/// is unknown: resend the same request (same number, expected length and
/// event) to learn it — a duplicate answer means it was applied.
///
/// ```no_run
/// use aquifer_client::{Client, Error};
///
/// # async fn example() -> Result<(), Error> {
/// let client = Client::connect("127.0.0.1:7450").await?;
/// let info = client.admin().describe_stream(&"app/ledger".parse()?).await?;
/// let segment = &info.segments[0];
/// let writer = client.segment_writer(segment.segment_id, "ledger-writer-1")?;
/// match writer.append_conditional(1, segment.length, None, "first!").await {
///     Ok(appended) => println!("at {}, length now {}", appended.offset, appended.length),
///     Err(Error::ConditionFailed { actual_length, .. }) => {
///         println!("someone else appended first: length {actual_length}")
///     }
///     Err(e) => return Err(e),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct SegmentWriter {
    conn: Arc<Conn>,
    segment_id: u64,
    writer_id: String,
}

impl SegmentWriter {
    pub(crate) fn new(
        conn: Arc<Conn>,
        segment_id: u64,
        writer_id: String,
    ) -> Result<SegmentWriter, Error> {
        check_writer_id(&writer_id)?;
        Ok(SegmentWriter {
            conn,
            segment_id,
            writer_id,
        })
    }

    /// The segment it appends to.
    pub fn segment_id(&self) -> u64 {
        self.segment_id
    }

    /// The writer id its events are numbered under.
    pub fn writer_id(&self) -> &str {
        &self.writer_id
    }

    /// Appends one event as event `event_number` of this writer, only if
    /// the segment is exactly `expected_length` bytes long when the server
    /// applies it (atomically with every other append to the segment).
    ///
    /// [`Error::ConditionFailed`] carries the actual length when it is not.
    /// Retryable failures (redirects, a leader that died, no leader yet)
    /// are retried with the same request until the client's request
    /// timeout; [`Error::Sealed`] on a sealed segment,
    /// [`Error::InvalidArgument`] for an event number that is not the
    /// writer's next one, a routing key or event over the limits.
    pub async fn append_conditional(
        &self,
        event_number: i64,
        expected_length: u64,
        routing_key: Option<&str>,
        payload: impl Into<Bytes>,
    ) -> Result<Appended, Error> {
        if event_number < 1 {
            return Err(Error::InvalidArgument(format!(
                "event numbers start at 1, not {event_number}"
            )));
        }
        let payload: Bytes = payload.into();
        let len = sendable_framed_len(routing_key, payload.len())?;
        let mut event = BytesMut::with_capacity(len);
        frame::encode_event(&mut event, routing_key, &payload);
        let req = AppendConditionalRequest {
            segment_id: self.segment_id,
            writer_id: self.writer_id.clone(),
            event_number,
            expected_length,
            event: event.freeze(),
        };
        let answer = on_segment_leader(&self.conn, self.segment_id, |mut c, timeout| {
            let mut req = tonic::Request::new(req.clone());
            req.set_timeout(timeout);
            async move { c.append_conditional(req).await }
        })
        .await?;
        Ok(Appended {
            offset: answer.offset,
            length: answer.length,
            duplicate: answer.duplicate,
        })
    }
}

/// Runs a unary `Segments` call on the leader of `segment_id`'s container:
/// starts where the segment's appends went last, follows redirects, and
/// retries retryable failures with backoff (moving to the next node after
/// repeated ones) until the request timeout, which also bounds each
/// attempt. Unlike admin calls it retries on a single node too: a
/// conditional append's caller needs its outcome, and a node restarting
/// gives it soon.
pub(crate) async fn on_segment_leader<T, F, Fut>(
    conn: &Arc<Conn>,
    segment_id: u64,
    call: F,
) -> Result<T, Error>
where
    F: Fn(SegmentsClient<crate::conn::Transport>, Duration) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let nodes = conn.nodes();
    let mut at = nodes
        .as_ref()
        .and_then(|n| n.segment_leader(segment_id))
        .unwrap_or_else(|| conn.clone());
    let timeout = conn.settings().request_timeout;
    let deadline = Instant::now() + timeout;
    let mut attempt = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (generation, channel) = at.channel();
        let err = match tokio::time::timeout(left, call(Conn::segments(channel), left)).await {
            Ok(Ok(answer)) => {
                if let Some(n) = &nodes {
                    n.set_segment_leader(segment_id, &at);
                }
                return Ok(answer.into_inner());
            }
            Ok(Err(status)) => Error::from(status),
            Err(_) => Error::unavailable(format!("no answer from {} in time", at.addr())),
        };
        if !err.is_retryable() {
            return Err(err);
        }
        attempt += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::unavailable_from(
                format!(
                    "gave up on segment {segment_id} after {} s",
                    timeout.as_secs_f64()
                ),
                err,
            ));
        }
        tracing::debug!(segment_id, attempt, error = %err, "segment call failed; retrying");
        at.failed(generation, attempt);
        let redirect = at.redirect(&err);
        // The first redirect goes at once (a leader moved); after that, nodes
        // with stale views could send the call back and forth: back off.
        if redirect.is_none() || attempt > 1 {
            tokio::time::sleep(at.backoff(attempt).min(left)).await;
        }
        at = match redirect {
            Some(leader) => leader,
            None if attempt >= 2 => at.next(),
            None => at,
        };
    }
}
