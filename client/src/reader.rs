//! Readers: one task per segment streams `ReadSegment` into a bounded
//! channel, decoding framed events; the reader, a [`futures::Stream`],
//! hands them out one by one.
//!
//! Owns [`EventReader`], [`SegmentReader`], [`ReaderConfig`], [`StartFrom`]
//! and [`Event`], and the read retry rule: on a retryable failure a segment
//! task reconnects from the offset after the last event it delivered, so
//! events are never duplicated nor skipped. An [`EventReader`] walks the
//! stream's successor graph (`graph.rs`): it starts a segment only once
//! every predecessor is read to its end, so per-key order holds across
//! scales.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use aquifer_proto::frame::FrameIter;
use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::admin::Admin;
use crate::conn::{Conn, MESSAGE_BYTES_MAX};
use crate::direct::Tier2Stores;
use crate::graph::Graph;
use crate::proto::{LocateRangeRequest, ReadSegmentRequest};
use crate::{Error, Position, SegmentInfo, StreamName};

/// Messages buffered between the segment tasks and the reader: bounds the
/// reader's memory.
const CHANNEL_MESSAGES: usize = 64;

/// How long a segment task keeps retrying without receiving anything.
const READ_RETRY_TIMEOUT: Duration = Duration::from_secs(60);

/// One event read back.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event {
    /// The routing key it was written with, if any.
    pub routing_key: Option<String>,
    /// The event's bytes.
    pub payload: Bytes,
    /// Where the event starts.
    pub position: Position,
    /// Offset of the next event in the same segment: where to resume
    /// reading after this one.
    pub next_offset: u64,
}

/// Where an [`EventReader`] starts in each segment.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum StartFrom {
    /// The first readable event of each segment (its head offset).
    #[default]
    Head,
    /// The end of each segment as of reader creation: only events written
    /// later are read (useful with `follow`).
    Tail,
    /// The given positions (e.g. `next_offset`s saved from a previous
    /// read); segments not listed start at their head.
    Positions(Vec<Position>),
}

/// How an [`EventReader`] reads.
///
/// ```
/// use aquifer_client::{ReaderConfig, StartFrom};
///
/// // Only events written from now on, waiting for more.
/// let config = ReaderConfig::default().start(StartFrom::Tail).follow(true);
/// assert!(config.follow);
/// assert!(matches!(ReaderConfig::default().start, StartFrom::Head));
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ReaderConfig {
    /// Where to start. Default: [`StartFrom::Head`].
    pub start: StartFrom,
    /// Keep waiting for new events instead of stopping at the segment
    /// lengths as of reader creation. Default: false.
    pub follow: bool,
}

impl ReaderConfig {
    /// Sets [`start`](Self::start).
    pub fn start(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// Sets [`follow`](Self::follow).
    pub fn follow(mut self, follow: bool) -> Self {
        self.follow = follow;
        self
    }
}

/// What a segment task sends the reader; each task ends with one `Done`
/// or one `Failed` (unless the reader is gone).
enum Item {
    Events(Vec<Event>),
    Failed(Error),
    /// The segment is read as far as asked; when following, with the
    /// describe that listed its successors (empty: the stream is sealed).
    Done {
        segment_id: u64,
        learned: Vec<SegmentInfo>,
    },
}

/// An [`EventReader`]'s walk over the successor graph.
struct Walk {
    graph: Graph,
    conn: Arc<Conn>,
    /// Following: the stream, to learn each sealed segment's successors.
    follow: Option<(Admin, StreamName)>,
    /// Start offsets of the segments listed at creation; segments reached
    /// later start at their head.
    starts: std::collections::HashMap<u64, u64>,
    /// The walk's own sender, for the tasks it starts.
    tx: mpsc::Sender<Item>,
    /// Tasks started and not yet ended.
    running: usize,
}

impl Walk {
    /// Starts every segment whose predecessors are all done; a segment with
    /// nothing to read is done at once (which may free its successors).
    fn start_ready(&mut self, tasks: &mut Vec<JoinHandle<()>>) {
        loop {
            let ready = self.graph.take_ready();
            if ready.is_empty() {
                return;
            }
            for s in ready {
                let start = self
                    .starts
                    .get(&s.segment_id)
                    .copied()
                    .unwrap_or(s.head_offset);
                let following = self.follow.is_some();
                if !following && start >= s.length {
                    self.graph.finish(s.segment_id);
                    continue;
                }
                let end = if following { 0 } else { s.length };
                let mut read =
                    SegmentRead::new(self.conn.clone(), s.segment_id, start, following, end);
                read.successors_of.clone_from(&self.follow);
                tasks.push(tokio::spawn(read.run(self.tx.clone())));
                self.running += 1;
            }
        }
    }
}

/// The receiving side shared by both readers.
struct EventSource {
    rx: mpsc::Receiver<Item>,
    buffered: VecDeque<Event>,
    tasks: Vec<JoinHandle<()>>,
    /// `None`: a fixed set of reads, over once every task has ended.
    walk: Option<Walk>,
}

impl EventSource {
    fn new(reads: Vec<SegmentRead>) -> EventSource {
        let (tx, rx) = mpsc::channel(CHANNEL_MESSAGES);
        let tasks = reads
            .into_iter()
            .map(|read| tokio::spawn(read.run(tx.clone())))
            .collect();
        EventSource {
            rx,
            buffered: VecDeque::new(),
            tasks,
            walk: None,
        }
    }

    /// A source that walks `graph` from the segments it can start now.
    fn walking(
        conn: &Arc<Conn>,
        graph: Graph,
        starts: std::collections::HashMap<u64, u64>,
        follow: Option<(Admin, StreamName)>,
    ) -> EventSource {
        let (tx, rx) = mpsc::channel(CHANNEL_MESSAGES);
        let mut walk = Walk {
            graph,
            conn: conn.clone(),
            follow,
            starts,
            tx,
            running: 0,
        };
        let mut tasks = Vec::new();
        walk.start_ready(&mut tasks);
        EventSource {
            rx,
            buffered: VecDeque::new(),
            tasks,
            walk: Some(walk),
        }
    }

    fn poll_next_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Event, Error>>> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            if self.walk.as_ref().is_some_and(|w| w.running == 0) {
                // The walk holds a sender, so the channel never ends by
                // itself: it is over once no task runs and none can start.
                return Poll::Ready(None);
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Item::Events(events))) => self.buffered = events.into(),
                Poll::Ready(Some(Item::Failed(e))) => {
                    // The segment stopped: its successors never start (they
                    // would come before the rest of it).
                    if let Some(walk) = &mut self.walk {
                        walk.running -= 1;
                    }
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Item::Done {
                    segment_id,
                    learned,
                })) => {
                    if let Some(walk) = &mut self.walk {
                        walk.running -= 1;
                        walk.graph.learn(&learned);
                        walk.graph.finish(segment_id);
                        walk.start_ready(&mut self.tasks);
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for EventSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Reads a whole stream: segments in parallel, events of one segment
/// (hence of one routing key) in order, and a scale's successors only once
/// every one of their predecessors is read to its end, so a key's order
/// holds across scales. A [`Stream`] of events: use
/// [`futures::StreamExt`] / [`futures::TryStreamExt`] on it.
///
/// Without `follow` the stream ends once every segment listed at creation
/// has been read up to its length then; with `follow` it waits for new
/// events, moves on to the successors of segments a scale seals, and ends
/// only once the stream is sealed and fully read. [`StartFrom`] applies to
/// the segments listed at creation (with [`StartFrom::Positions`], the
/// predecessors of a named segment count as read); segments reached
/// through successors are read from their head.
///
/// Connection failures are retried inside (resuming after the last event
/// handed out). An error that stops a segment (unknown segment, corrupt
/// data, retries given up) is yielded once as `Err`; the stream goes on
/// with the other segments (but not that segment's successors, which would
/// come before the rest of it). Dropping a pending `next()` loses no event.
/// Memory is bounded: segment tasks wait while the reader lags.
///
/// ```no_run
/// use aquifer_client::{Client, ReaderConfig, StartFrom};
/// use futures::TryStreamExt;
///
/// # async fn example() -> Result<(), aquifer_client::Error> {
/// let client = Client::connect("127.0.0.1:7450").await?;
/// let config = ReaderConfig::default().start(StartFrom::Tail).follow(true);
/// let mut reader = client.reader(&"shop/orders".parse()?, config).await?;
/// while let Some(event) = reader.try_next().await? {
///     println!("{} bytes at {:?}", event.payload.len(), event.position);
/// }
/// # Ok(())
/// # }
/// ```
pub struct EventReader {
    source: EventSource,
}

impl EventReader {
    pub(crate) fn new(
        conn: &Arc<Conn>,
        stream: &StreamName,
        segments: &[SegmentInfo],
        config: &ReaderConfig,
    ) -> Result<EventReader, Error> {
        let mut starts: std::collections::HashMap<u64, u64> = segments
            .iter()
            .map(|s| {
                let start = match &config.start {
                    StartFrom::Head | StartFrom::Positions(_) => s.head_offset,
                    StartFrom::Tail => s.length,
                };
                (s.segment_id, start)
            })
            .collect();
        let mut graph = Graph::new(segments);
        if let StartFrom::Positions(positions) = &config.start {
            for p in positions {
                let Some(start) = starts.get_mut(&p.segment_id) else {
                    return Err(Error::InvalidArgument(format!(
                        "position in segment {} which is not part of the stream",
                        p.segment_id
                    )));
                };
                *start = p.offset;
            }
            // A position in a successor was saved after its predecessors
            // were read: reading them again would duplicate them.
            for p in positions {
                for done in graph.ancestors(p.segment_id) {
                    graph.finish(done);
                }
            }
        }
        let follow = config
            .follow
            .then(|| (Admin::new(conn.clone()), stream.clone()));
        Ok(EventReader {
            source: EventSource::walking(conn, graph, starts, follow),
        })
    }
}

impl Stream for EventReader {
    type Item = Result<Event, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().source.poll_next_event(cx)
    }
}

/// Reads one segment from an offset: a [`Stream`] of its events, like
/// [`EventReader`]. Without `follow` it ends at the segment's length as of
/// the (last) request (or the range's end, for a scan); with `follow` it
/// waits for new events and ends once the segment is sealed and fully read.
pub struct SegmentReader {
    source: EventSource,
}

impl SegmentReader {
    pub(crate) fn new(
        conn: &Arc<Conn>,
        segment_id: u64,
        offset: u64,
        follow: bool,
    ) -> SegmentReader {
        let read = SegmentRead::new(conn.clone(), segment_id, offset, follow, 0);
        SegmentReader {
            source: EventSource::new(vec![read]),
        }
    }

    /// Reads `[start, end)` of a segment (event boundaries), then ends.
    /// With `direct`, the part in tier-2 is read from there, the rest from
    /// the broker.
    pub(crate) fn bounded(
        conn: &Arc<Conn>,
        segment_id: u64,
        start: u64,
        end: u64,
        direct: Option<Arc<Tier2Stores>>,
    ) -> SegmentReader {
        let mut read = SegmentRead::new(conn.clone(), segment_id, start, false, end);
        read.direct = direct;
        SegmentReader {
            source: EventSource::new(vec![read]),
        }
    }
}

impl Stream for SegmentReader {
    type Item = Result<Event, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().source.poll_next_event(cx)
    }
}

/// Why one `ReadSegment` call ended.
enum Outcome {
    /// The segment is read as far as asked.
    Done,
    /// The reader is gone.
    ReaderGone,
    Failed(Error),
}

/// The state of one segment's read task.
struct SegmentRead {
    conn: Arc<Conn>,
    segment_id: u64,
    /// The next offset to deliver.
    offset: u64,
    follow: bool,
    /// 0: none (follow, or the server's length at each request).
    end_offset: u64,
    failing_since: Option<Instant>,
    attempt: u32,
    /// Read the range's tier-2 part from tier-2 first (direct scans).
    direct: Option<Arc<Tier2Stores>>,
    /// Following a stream: once the segment ends (sealed), learn its
    /// successors from this stream's describe.
    successors_of: Option<(Admin, StreamName)>,
}

impl SegmentRead {
    fn new(conn: Arc<Conn>, segment_id: u64, offset: u64, follow: bool, end_offset: u64) -> Self {
        SegmentRead {
            conn,
            segment_id,
            offset,
            follow,
            end_offset,
            failing_since: None,
            attempt: 0,
            direct: None,
            successors_of: None,
        }
    }

    /// Reads, then reports how it ended: `Done` (with the successors, when
    /// following a stream) or `Failed`.
    async fn run(mut self, tx: mpsc::Sender<Item>) {
        let end = match self.read_all(&tx).await {
            Ok(true) => match &self.successors_of {
                Some((admin, stream)) => admin
                    .await_successors(stream, self.segment_id, READ_RETRY_TIMEOUT)
                    .await
                    .map(|info| Item::Done {
                        segment_id: self.segment_id,
                        learned: info.map(|i| i.segments).unwrap_or_default(),
                    })
                    .unwrap_or_else(Item::Failed),
                None => Item::Done {
                    segment_id: self.segment_id,
                    learned: Vec::new(),
                },
            },
            Ok(false) => return, // the reader is gone
            Err(e) => Item::Failed(e),
        };
        let _ = tx.send(end).await;
    }

    /// Reads as far as asked: `Ok(true)` at the end, `Ok(false)` when the
    /// reader is gone.
    async fn read_all(&mut self, tx: &mpsc::Sender<Item>) -> Result<bool, Error> {
        if let Some(stores) = self.direct.take() {
            self.read_tier2(&stores, tx).await?;
        }
        let mut last_error: Option<Error> = None;
        loop {
            if self.end_offset != 0 && self.offset >= self.end_offset {
                return Ok(true);
            }
            if let Some(since) = self.failing_since {
                if since.elapsed() >= READ_RETRY_TIMEOUT {
                    let message = format!(
                        "gave up reading segment {} at offset {} after {} s",
                        self.segment_id,
                        self.offset,
                        READ_RETRY_TIMEOUT.as_secs()
                    );
                    return Err(match last_error.take() {
                        Some(why) => Error::unavailable_from(message, why),
                        None => Error::unavailable(message),
                    });
                }
                let left = READ_RETRY_TIMEOUT.saturating_sub(since.elapsed());
                tokio::time::sleep(self.conn.backoff(self.attempt).min(left)).await;
            }
            let (generation, channel) = self.conn.channel();
            match self.read_once(channel, tx).await {
                Outcome::Done => return Ok(true),
                Outcome::ReaderGone => return Ok(false),
                Outcome::Failed(e) if e.is_retryable() => {
                    tracing::debug!(segment_id = self.segment_id, offset = self.offset, error = %e, "read broke; reconnecting");
                    self.failing_since.get_or_insert_with(Instant::now);
                    self.attempt += 1;
                    self.conn.failed(generation, self.attempt);
                    if let Some(replica) = self.conn.redirect(&e) {
                        // This node holds no replica of the segment's
                        // container; it named one that does.
                        self.conn = replica;
                    } else if self.attempt >= 2 {
                        // Every replica serves reads: try the next node.
                        self.conn = self.conn.next();
                    }
                    last_error = Some(e);
                }
                Outcome::Failed(e) => return Err(e),
            }
        }
    }

    /// Direct scans: asks the broker where `[offset, end_offset)` is and
    /// delivers its tier-2 part from tier-2; `offset` ends where the broker
    /// must serve the rest.
    async fn read_tier2(
        &mut self,
        stores: &Tier2Stores,
        tx: &mpsc::Sender<Item>,
    ) -> Result<(), Error> {
        let request = LocateRangeRequest {
            segment_id: self.segment_id,
            start_offset: self.offset,
            end_offset: self.end_offset,
        };
        let (_, channel) = self.conn.channel();
        let location = Conn::read(channel)
            .locate_range(request)
            .await?
            .into_inner();
        let tier2 = location.tier2.unwrap_or_default();
        for slice in &location.slices {
            if slice.segment_offset != self.offset {
                return Err(Error::Server(format!(
                    "the broker located segment {} bytes at {} but the scan is at {}",
                    self.segment_id, slice.segment_offset, self.offset
                )));
            }
            let mut windows = stores.windows(&tier2, slice)?;
            while let Some((base, window)) = windows.next().await? {
                let (events, corrupt) = self.decode(window, base);
                if !events.is_empty() && tx.send(Item::Events(events)).await.is_err() {
                    return Ok(()); // the reader is gone
                }
                if let Some(e) = corrupt {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// One `ReadSegment` call from `self.offset`, delivering events until it
    /// ends.
    async fn read_once(
        &mut self,
        channel: crate::conn::Transport,
        tx: &mpsc::Sender<Item>,
    ) -> Outcome {
        let request = ReadSegmentRequest {
            segment_id: self.segment_id,
            offset: self.offset,
            follow: self.follow,
            end_offset: self.end_offset,
        };
        let mut stream = match Conn::read(channel).read_segment(request).await {
            Ok(resp) => resp.into_inner(),
            Err(status) => return Outcome::Failed(status.into()),
        };
        // A node serves the read: the run of failures is over, even if no
        // event comes (a following read of a quiet segment may wait for
        // long; a later break must not count the wait as failing). The
        // backoff keeps growing until a message does come.
        self.failing_since = None;
        loop {
            let msg = match stream.message().await {
                Ok(Some(msg)) => msg,
                Ok(None) if !self.follow => return Outcome::Done,
                Ok(None) => {
                    return Outcome::Failed(Error::unavailable(format!(
                        "read of segment {} ended before the segment was sealed",
                        self.segment_id
                    )))
                }
                Err(status) => return Outcome::Failed(status.into()),
            };
            self.failing_since = None;
            self.attempt = 0;
            let (events, corrupt) = self.decode(msg.events, msg.offset);
            if !events.is_empty() && tx.send(Item::Events(events)).await.is_err() {
                return Outcome::ReaderGone;
            }
            if let Some(e) = corrupt {
                return Outcome::Failed(e);
            }
            if msg.end_of_segment || (self.end_offset != 0 && self.offset >= self.end_offset) {
                return Outcome::Done;
            }
        }
    }

    /// Decodes one message's events, skipping any before `self.offset`
    /// (already delivered) and, with an end offset, any at or after it.
    /// Returns the good events before a decode error, and the error.
    fn decode(&mut self, data: Bytes, base: u64) -> (Vec<Event>, Option<Error>) {
        let mut events = Vec::new();
        for framed in FrameIter::new(data, base, MESSAGE_BYTES_MAX) {
            let framed = match framed {
                Ok(framed) => framed,
                Err(e) => {
                    let err =
                        Error::Corrupt(format!("corrupt data in segment {}: {e}", self.segment_id));
                    return (events, Some(err));
                }
            };
            let next_offset = framed.offset + framed.framed_len as u64;
            if framed.offset < self.offset {
                continue;
            }
            if self.end_offset != 0 && framed.offset >= self.end_offset {
                break;
            }
            self.offset = next_offset;
            events.push(Event {
                routing_key: framed.routing_key,
                payload: framed.payload,
                position: Position {
                    segment_id: self.segment_id,
                    offset: framed.offset,
                },
                next_offset,
            });
        }
        (events, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aquifer_proto::frame;
    use bytes::BytesMut;

    fn read_state(offset: u64, end: u64) -> SegmentRead {
        // `decode` does not touch the connection; any Conn-less state works,
        // so build one around a lazily connecting channel.
        let endpoint = tonic::transport::Endpoint::from_static("http://127.0.0.1:1");
        let conn = Arc::new(Conn::from_lazy_for_tests(endpoint));
        SegmentRead::new(conn, 7, offset, false, end)
    }

    fn three_events() -> (Bytes, Vec<usize>) {
        let mut b = BytesMut::new();
        let mut lens = Vec::new();
        for (k, p) in [(Some("a"), "one"), (None, "two"), (Some("c"), "three")] {
            let before = b.len();
            frame::encode_event(&mut b, k, p.as_bytes());
            lens.push(b.len() - before);
        }
        (b.freeze(), lens)
    }

    #[tokio::test]
    async fn decodes_and_tracks_next_offset() {
        let (data, lens) = three_events();
        let mut r = read_state(100, 0);
        let (events, err) = r.decode(data, 100);
        assert!(err.is_none());
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].routing_key.as_deref(), Some("a"));
        assert_eq!(&events[1].payload[..], b"two");
        assert_eq!(
            events[1].position,
            Position {
                segment_id: 7,
                offset: 100 + lens[0] as u64
            }
        );
        assert_eq!(
            events[2].next_offset,
            100 + lens.iter().sum::<usize>() as u64
        );
        assert_eq!(r.offset, events[2].next_offset);
    }

    #[tokio::test]
    async fn skips_already_delivered_and_stops_at_end() {
        let (data, lens) = three_events();
        // Resumed after the first event, but the server resent from 0.
        let mut r = read_state(lens[0] as u64, 0);
        let (events, _) = r.decode(data.clone(), 0);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].position.offset, lens[0] as u64);
        // An end offset after the second event.
        let mut r = read_state(0, (lens[0] + lens[1]) as u64);
        let (events, _) = r.decode(data.clone(), 0);
        assert_eq!(events.len(), 2);
        // Corruption is reported, not skipped; good events before it come out.
        let mut bad = data.to_vec();
        bad[lens[0] + 10] ^= 0xff;
        let mut r = read_state(0, 0);
        let (events, err) = r.decode(bad.into(), 0);
        assert_eq!(events.len(), 1);
        assert!(matches!(err, Some(Error::Corrupt(_))));
        assert_eq!(r.offset, lens[0] as u64);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_segment_bytes_never_panic_or_allocate_what_they_claim(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            base in proptest::prelude::any::<u64>(),
            resume in proptest::prelude::any::<u64>(),
            end in proptest::prelude::any::<u64>(),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let _entered = runtime.enter();
            let mut r = read_state(resume, end);
            let len = data.len();
            let ((events, _), largest) =
                aquifer_alloc_probe::largest_allocation(|| r.decode(data.into(), base));
            for e in &events {
                proptest::prop_assert!(e.position.offset >= resume && e.next_offset > e.position.offset);
            }
            // The events' vector (each at least a header of input) and
            // their keys, never what a length field claims.
            let bound = len + len / frame::HEADER_BYTES * 2 * std::mem::size_of::<Event>() + 1024;
            proptest::prop_assert!(largest <= bound, "{largest} bytes for {len}");
        }
    }
}
