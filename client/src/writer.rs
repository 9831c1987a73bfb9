//! The event writer: framing, the in-flight byte budget, and the public
//! face of its routing table and per-segment append sessions (see
//! `reroute.rs` and `session.rs`).
//!
//! Owns the public writing API: [`EventWriter`], [`WriterConfig`],
//! [`PendingWrite`], [`WriteAck`] and [`Position`], and the checks every
//! writer of events shares (writer ids, routing keys, event sizes; the
//! conditional `SegmentWriter` uses them too).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use aquifer_proto::frame;
use bytes::{Bytes, BytesMut};
use tokio::sync::{oneshot, Semaphore};

use crate::batch::Events;
use crate::conn::{Conn, MESSAGE_BYTES_MAX};
use crate::reroute::Shared;
use crate::routing::{key_position, writable_segments};
use crate::session::{EventToken, SessionConfig};
use crate::{Error, SegmentInfo, StreamName, WRITER_ID_BYTES_MAX};

/// Largest framed event the client will send: a gRPC message must hold it
/// plus the batch fields. (The server's own limit, 8 MiB by default, is
/// usually lower and answered with `InvalidArgument`.)
pub const CLIENT_EVENT_BYTES_MAX: usize = MESSAGE_BYTES_MAX - 64 * 1024;

/// Where an event is: its segment and the byte offset of its first byte.
/// Events read back, stream cuts and reader start points always know both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// The segment holding the event.
    pub segment_id: u64,
    /// Byte offset of the event in the segment.
    pub offset: u64,
}

impl Position {
    /// The position `offset` in segment `segment_id`.
    pub fn new(segment_id: u64, offset: u64) -> Position {
        Position { segment_id, offset }
    }
}

/// What a [`PendingWrite`] resolves to: the event is durable in segment
/// `segment_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct WriteAck {
    /// The segment holding the event.
    pub segment_id: u64,
    /// Byte offset of the event in the segment; `None` when the server
    /// acknowledged its batch as a duplicate (a retry of a batch it already
    /// had) or the writer found it applied when setting up again (after a
    /// reconnect, or on a segment a scale sealed), which tells that it is
    /// stored but not where.
    pub offset: Option<u64>,
}

impl WriteAck {
    /// Where the event is, when known.
    pub fn position(&self) -> Option<Position> {
        self.offset
            .map(|offset| Position::new(self.segment_id, offset))
    }
}

/// How an [`EventWriter`] batches, bounds memory and retries.
///
/// ```
/// use std::time::Duration;
/// use aquifer_client::WriterConfig;
///
/// let config = WriterConfig::default()
///     .writer_id("orders-importer-1") // stable across restarts: exactly once
///     .linger(Duration::from_millis(5))
///     .in_flight_bytes_max(64 << 20);
/// assert_eq!(config.writer_id, "orders-importer-1");
/// assert_eq!(config.batch_bytes_max, 256 << 10); // the default
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WriterConfig {
    /// Identity for exactly-once appends: the server remembers the last
    /// event number per (segment, writer id) and drops retried batches.
    /// Keep it stable across restarts of one logical writer and never share
    /// it between concurrent writers. Default: 16 random hex characters.
    pub writer_id: String,
    /// A batch is sent once it holds this many bytes of framed events
    /// (an event larger than this travels alone). Default: 256 KiB, so the
    /// in-flight budget holds several batches in flight at once.
    pub batch_bytes_max: usize,
    /// ... or once its first event has waited this long. Default: 1 ms.
    pub linger: Duration,
    /// Framed bytes queued or waiting for an ack, over all segments; at the
    /// limit `write_event` waits. Default: 2 MiB. An ack waits behind what
    /// is in flight before it, so this bounds ack latency at saturation
    /// (about the bytes in flight over the node's throughput) and passes
    /// back-pressure to the caller; raise it for a writer far from the
    /// node (throughput ≤ this / round trip).
    pub in_flight_bytes_max: usize,
    /// How long to keep retrying a segment after a retryable failure (with
    /// no ack since) before failing its pending writes. Default: 60 s.
    pub retry_timeout: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            writer_id: random_writer_id(),
            batch_bytes_max: 256 * 1024,
            linger: Duration::from_millis(1),
            in_flight_bytes_max: 2 * 1024 * 1024,
            retry_timeout: Duration::from_secs(60),
        }
    }
}

impl WriterConfig {
    /// Sets [`writer_id`](Self::writer_id).
    pub fn writer_id(mut self, id: impl Into<String>) -> Self {
        self.writer_id = id.into();
        self
    }

    /// Sets [`batch_bytes_max`](Self::batch_bytes_max).
    pub fn batch_bytes_max(mut self, bytes: usize) -> Self {
        self.batch_bytes_max = bytes;
        self
    }

    /// Sets [`linger`](Self::linger).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Sets [`in_flight_bytes_max`](Self::in_flight_bytes_max).
    pub fn in_flight_bytes_max(mut self, bytes: usize) -> Self {
        self.in_flight_bytes_max = bytes;
        self
    }

    /// Sets [`retry_timeout`](Self::retry_timeout).
    pub fn retry_timeout(mut self, timeout: Duration) -> Self {
        self.retry_timeout = timeout;
        self
    }
}

/// Refuses a writer id outside 1..=[`WRITER_ID_BYTES_MAX`] bytes.
pub(crate) fn check_writer_id(writer_id: &str) -> Result<(), Error> {
    if writer_id.is_empty() || writer_id.len() > WRITER_ID_BYTES_MAX {
        return Err(Error::InvalidArgument(format!(
            "writer id must be 1 to {WRITER_ID_BYTES_MAX} bytes, not {}",
            writer_id.len()
        )));
    }
    Ok(())
}

/// The framed size of an event the client can send; `InvalidArgument` for
/// a routing key over `frame::ROUTING_KEY_BYTES_MAX` bytes or an event over
/// [`CLIENT_EVENT_BYTES_MAX`] framed.
pub(crate) fn sendable_framed_len(
    routing_key: Option<&str>,
    payload_len: usize,
) -> Result<usize, Error> {
    if let Some(key) = routing_key {
        if key.len() > frame::ROUTING_KEY_BYTES_MAX {
            return Err(Error::InvalidArgument(format!(
                "routing key is {} bytes, over the limit of {}",
                key.len(),
                frame::ROUTING_KEY_BYTES_MAX
            )));
        }
    }
    let len = frame::framed_len(routing_key, payload_len);
    if len > CLIENT_EVENT_BYTES_MAX {
        return Err(Error::InvalidArgument(format!(
            "event is {len} bytes framed, over the client's limit of {CLIENT_EVENT_BYTES_MAX}"
        )));
    }
    Ok(len)
}

/// 16 random lowercase hex characters.
pub(crate) fn random_writer_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Appends events to one stream, batching them per segment, exactly once
/// per writer id.
///
/// ```no_run
/// use aquifer_client::{Client, WriterConfig};
///
/// # async fn example() -> Result<(), aquifer_client::Error> {
/// let client = Client::connect("127.0.0.1:7450").await?;
/// let name = "shop/orders".parse()?;
/// let writer = client.writer(&name, WriterConfig::default().writer_id("importer-1")).await?;
/// let mut pending = Vec::new();
/// for i in 0..100 {
///     // Queued at once; batched with the others per segment.
///     pending.push(writer.write_event(Some("customer-7"), format!("order {i}")).await?);
/// }
/// for p in pending {
///     let ack = p.await?; // durable
///     assert!(ack.segment_id > 0);
/// }
/// writer.close().await?;
/// # Ok(())
/// # }
/// ```
///
/// `Send + Sync`: every method takes `&self`, so share it through an `Arc`.
/// Events with the same routing key keep their order, across scales too:
/// when a scale seals a segment, the writer resolves what the server had
/// applied there and moves the rest, in order, to the successor owning each
/// key, before any later event of those keys. Dropping the writer without
/// [`close`](EventWriter::close) still delivers what was queued, in the
/// background.
pub struct EventWriter {
    stream: StreamName,
    writer_id: String,
    /// Routing table and sessions, shared with the sessions (hand-overs).
    shared: Arc<Shared>,
    /// Byte permits of the in-flight budget.
    budget: Arc<Semaphore>,
    /// Permits in the budget (what one event may take at most).
    budget_total: u32,
    /// `write_batch` cuts its events into runs of at most this many framed
    /// bytes: a batch's size, so a run always fits one batch.
    run_bytes_max: usize,
}

impl EventWriter {
    pub(crate) fn new(
        conn: Arc<Conn>,
        stream: StreamName,
        segments: Vec<SegmentInfo>,
        config: WriterConfig,
    ) -> Result<EventWriter, Error> {
        Self::build(conn, stream, segments, config, None)
    }

    /// A writer into transaction `transaction_id`: `parts` are its parts,
    /// each a transaction segment with its parent's key range.
    pub(crate) fn for_transaction(
        conn: Arc<Conn>,
        stream: StreamName,
        parts: Vec<SegmentInfo>,
        config: WriterConfig,
        transaction_id: String,
    ) -> Result<EventWriter, Error> {
        Self::build(conn, stream, parts, config, Some(transaction_id))
    }

    fn build(
        conn: Arc<Conn>,
        stream: StreamName,
        segments: Vec<SegmentInfo>,
        config: WriterConfig,
        transaction_id: Option<String>,
    ) -> Result<EventWriter, Error> {
        check_writer_id(&config.writer_id)?;
        if config.batch_bytes_max == 0 || config.in_flight_bytes_max == 0 {
            return Err(Error::InvalidArgument(
                "batch_bytes_max and in_flight_bytes_max must be greater than 0".into(),
            ));
        }
        let segments = writable_segments(segments);
        if segments.is_empty() {
            return Err(Error::Server(format!("stream {stream} has no segments")));
        }
        let budget_total = config
            .in_flight_bytes_max
            .min(Semaphore::MAX_PERMITS)
            .min(u32::MAX as usize) as u32;
        let run_bytes_max = config.batch_bytes_max.min(CLIENT_EVENT_BYTES_MAX);
        let session_config = SessionConfig {
            writer_id: config.writer_id.clone(),
            batch_bytes_max: run_bytes_max,
            linger: config.linger,
            retry_timeout: config.retry_timeout,
            transaction_id,
        };
        // Sessions start on demand, when the first event for a segment comes.
        let shared = Shared::new(conn, stream.clone(), session_config, &segments);
        Ok(EventWriter {
            stream,
            writer_id: config.writer_id,
            shared,
            budget: Arc::new(Semaphore::new(budget_total as usize)),
            budget_total,
            run_bytes_max,
        })
    }

    /// Queues one event; waits first while the in-flight budget
    /// (`in_flight_bytes_max`) is used up (back-pressure).
    ///
    /// Returns once the event is queued; await the returned [`PendingWrite`]
    /// for its [`WriteAck`] once it is durable (acknowledged). Events with
    /// the same routing key are appended in the order of the calls; events
    /// without a key are spread round-robin over the segments.
    ///
    /// Fails at once with [`Error::InvalidArgument`] for a routing key over
    /// `frame::ROUTING_KEY_BYTES_MAX` bytes or an event the client cannot
    /// send (over [`CLIENT_EVENT_BYTES_MAX`]), and with the segment's error
    /// when its session already failed for good.
    pub async fn write_event(
        &self,
        routing_key: Option<&str>,
        payload: impl Into<Bytes>,
    ) -> Result<PendingWrite, Error> {
        let payload: Bytes = payload.into();
        let len = sendable_framed_len(routing_key, payload.len())?;
        let mut framed = BytesMut::with_capacity(len);
        frame::encode_event(&mut framed, routing_key, &payload);
        let rx = self.send_run(routing_key, framed, 1).await?;
        Ok(PendingWrite { rx })
    }

    /// Queues `payloads` as events of one routing key, in order, framed
    /// straight into batch-sized buffers: one future, one budget wait and
    /// one hand-off to the segment's session per batch instead of per
    /// event (the way to write many small events). Waits while the
    /// in-flight budget is used up, as [`write_event`](Self::write_event)
    /// does.
    ///
    /// Every event is checked before any is queued: one the client cannot
    /// send fails the call with [`Error::InvalidArgument`] and queues
    /// nothing. Keyless batches go to one segment (round-robin per call,
    /// not per event). Await the returned [`PendingBatch`] for the
    /// [`BatchAck`] once every event is durable.
    pub async fn write_batch<P: AsRef<[u8]>>(
        &self,
        routing_key: Option<&str>,
        payloads: &[P],
    ) -> Result<PendingBatch, Error> {
        let mut total = 0usize;
        for p in payloads {
            total += sendable_framed_len(routing_key, p.as_ref().len())?;
        }
        let mut parts = Vec::with_capacity(total / self.run_bytes_max + 1);
        let mut run = BytesMut::new();
        let mut count = 0u32;
        for p in payloads {
            let p = p.as_ref();
            let len = frame::framed_len(routing_key, p.len());
            if count > 0 && run.len() + len > self.run_bytes_max {
                parts.push(self.send_run(routing_key, run.split(), count).await?);
                count = 0;
            }
            if run.capacity() - run.len() < len {
                run.reserve(len.max(self.run_bytes_max.min(total)));
            }
            frame::encode_event(&mut run, routing_key, p);
            total -= len;
            count += 1;
        }
        if count > 0 {
            parts.push(self.send_run(routing_key, run, count).await?);
        }
        Ok(PendingBatch {
            parts,
            events: payloads.len(),
            first: None,
        })
    }

    /// Takes `framed`'s bytes from the in-flight budget (waiting while it
    /// is used up) and hands the run of `count` events to its segment's
    /// session; the receiver answers once they are durable.
    async fn send_run(
        &self,
        routing_key: Option<&str>,
        framed: BytesMut,
        count: u32,
    ) -> Result<oneshot::Receiver<Result<WriteAck, Error>>, Error> {
        let cost = (framed.len().min(self.budget_total as usize) as u32).max(1);
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| Error::Closed)?;
        let (tx, rx) = oneshot::channel();
        let token = EventToken {
            tx,
            _permit: permit,
            position: routing_key.map(key_position),
        };
        let events = Events {
            framed: framed.freeze(),
            count,
        };
        self.shared.send_events(events, token)?;
        Ok(rx)
    }

    /// Waits until every event queued so far (by any caller) is durable;
    /// returns the first error of a segment that failed instead.
    pub async fn flush(&self) -> Result<(), Error> {
        let replies = self.shared.flush_all();
        let mut first_error = None;
        for rx in replies {
            let result = rx.await.unwrap_or(Err(Error::Closed));
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Flushes, then ends every append session. Returns the flush's error,
    /// if any.
    pub async fn close(self) -> Result<(), Error> {
        let flushed = self.flush().await;
        for task in self.shared.close() {
            let _ = task.await;
        }
        flushed
    }

    /// This writer's id (see [`WriterConfig::writer_id`]).
    pub fn writer_id(&self) -> &str {
        &self.writer_id
    }

    /// The stream this writer appends to.
    pub fn stream(&self) -> &StreamName {
        &self.stream
    }
}

impl Drop for EventWriter {
    /// Lets the sessions end once what was queued is resolved (they hold
    /// the table too, so it would otherwise keep them alive).
    fn drop(&mut self) {
        drop(self.shared.close());
    }
}

/// An event on its way: resolves to its [`WriteAck`] once the server
/// acknowledged it as durable, or to the error that stopped it.
///
/// Dropping it does not cancel the write.
pub struct PendingWrite {
    rx: oneshot::Receiver<Result<WriteAck, Error>>,
}

impl Future for PendingWrite {
    type Output = Result<WriteAck, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(_)) => Poll::Ready(Err(Error::Closed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// What a [`PendingBatch`] resolves to: every event of the batch is
/// durable, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct BatchAck {
    /// Events in the batch.
    pub events: usize,
    /// The first event's ack (None for an empty batch). The others follow
    /// it in order; a scale that seals its segment while the batch is on
    /// its way moves the rest, still in order, to the successor.
    pub first: Option<WriteAck>,
}

/// A batch on its way (see [`EventWriter::write_batch`]): resolves to its
/// [`BatchAck`] once every event is durable, or to the first error that
/// stopped one of them.
///
/// Dropping it does not cancel the writes.
pub struct PendingBatch {
    /// One answer per run, in order; those already answered are gone.
    parts: Vec<oneshot::Receiver<Result<WriteAck, Error>>>,
    events: usize,
    first: Option<WriteAck>,
}

impl Future for PendingBatch {
    type Output = Result<BatchAck, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        while let Some(rx) = this.parts.first_mut() {
            let ack = match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(Ok(ack))) => ack,
                Poll::Ready(Ok(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(Err(_)) => return Poll::Ready(Err(Error::Closed)),
                Poll::Pending => return Poll::Pending,
            };
            this.first.get_or_insert(ack);
            this.parts.remove(0);
        }
        Poll::Ready(Ok(BatchAck {
            events: this.events,
            first: this.first,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config() {
        let c = WriterConfig::default();
        assert_eq!(c.writer_id.len(), 16);
        assert!(c.writer_id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(c.writer_id, WriterConfig::default().writer_id);
        assert_eq!(c.batch_bytes_max, 256 << 10);
        assert_eq!(c.linger, Duration::from_millis(1));
        assert_eq!(c.in_flight_bytes_max, 2 << 20);
        assert_eq!(c.retry_timeout, Duration::from_secs(60));
    }

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn writer_is_send_and_sync() {
        assert_send_sync::<EventWriter>();
        assert_send_sync::<PendingWrite>();
        assert_send_sync::<PendingBatch>();
    }
}
