//! An in-memory Aquifer node for the client's tests: admin, append sessions
//! with the writer dedup table, and reads with follow, plus fault injection
//! (failing a session after a batch is applied but before its ack, pausing
//! acks, cutting reads short) and hard restarts on the same port.
//!
//! Scaling: [`State::scale`] seals segments at once and makes their
//! successors (and the new epoch) visible only after a delay, like the real
//! server's window between the seal and the epoch record.
//!
//! It is deliberately simple: one mutex, no durability, no tiering.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aquifer_proto::frame;
use aquifer_proto::v1::{
    self as proto, append_request, append_response, append_server, read_server, stream_admin_server,
};
use bytes::Bytes;
use futures::Stream;
use tokio::sync::{mpsc, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

type Key = (String, String);

/// One epoch: its number and its active segment ids.
type Epoch = (u64, Vec<u64>);

#[derive(Default)]
struct Segment {
    data: Vec<u8>,
    sealed: bool,
    last: HashMap<String, i64>,
    /// Batches applied (not duplicates), for assertions.
    applied_batches: u64,
    key_low: f64,
    key_high: f64,
    epoch: u64,
    /// Set when the scale that sealed it is in force.
    successors: Vec<u64>,
    predecessors: Vec<u64>,
    /// A successor whose epoch is not recorded yet: not described, setups
    /// refused UNAVAILABLE.
    hidden: bool,
    /// Sealed by a scale (not by sealing the stream).
    scaled: bool,
}

/// Shared state of the mock node; survives restarts.
pub struct State {
    streams: Mutex<HashMap<Key, Vec<u64>>>,
    /// Per stream: (epoch, active segment ids), oldest first.
    epochs: Mutex<HashMap<Key, Vec<Epoch>>>,
    segments: Mutex<HashMap<u64, Segment>>,
    next_segment: AtomicU64,
    notify: Notify,
    /// Fail this many upcoming batches after applying them (no ack).
    pub fail_after_apply: AtomicU32,
    /// End this many upcoming sessions with INVALID_ARGUMENT right after
    /// applying a batch (its ack is lost).
    pub invalid_after_apply: AtomicU32,
    /// Fail this many upcoming setups with UNAVAILABLE.
    pub fail_setups: AtomicU32,
    /// Cut this many upcoming reads after their first message.
    pub cut_reads: AtomicU32,
    /// Largest events payload per read message.
    pub read_chunk: AtomicU64,
    /// While true, acks wait.
    pub pause_acks: watch::Sender<bool>,
    /// While true, batches are applied but their acks never sent (as if
    /// lost in flight).
    pub swallow_acks: AtomicBool,
    /// Setups answered so far.
    pub setups: AtomicU64,
    /// Duplicate batches acked so far.
    pub duplicates: AtomicU64,
}

impl State {
    pub fn new() -> Arc<State> {
        Arc::new(State {
            streams: Mutex::default(),
            epochs: Mutex::default(),
            segments: Mutex::default(),
            next_segment: AtomicU64::new(100),
            notify: Notify::new(),
            fail_after_apply: AtomicU32::new(0),
            invalid_after_apply: AtomicU32::new(0),
            fail_setups: AtomicU32::new(0),
            cut_reads: AtomicU32::new(0),
            read_chunk: AtomicU64::new(64 * 1024),
            pause_acks: watch::channel(false).0,
            swallow_acks: AtomicBool::new(false),
            setups: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        })
    }

    /// The bytes of a segment.
    pub fn segment_data(&self, id: u64) -> Vec<u8> {
        self.segments.lock().unwrap()[&id].data.clone()
    }

    pub fn applied_batches(&self, id: u64) -> u64 {
        self.segments.lock().unwrap()[&id].applied_batches
    }

    fn info(&self, key: &Key) -> Option<proto::StreamInfo> {
        let streams = self.streams.lock().unwrap();
        let ids = streams.get(key)?;
        let segments = self.segments.lock().unwrap();
        let epochs = self
            .epochs
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default();
        let visible: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| !segments[id].hidden)
            .collect();
        let infos: Vec<proto::SegmentInfo> = visible
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let s = &segments[id];
                proto::SegmentInfo {
                    segment_id: *id,
                    number: i as u32,
                    container: (*id % 4) as u32,
                    key_low: s.key_low,
                    key_high: s.key_high,
                    head_offset: 0,
                    length: s.data.len() as u64,
                    sealed: s.sealed,
                    tier2_length: 0,
                    chunk_count: 0,
                    tail_buffer_bytes: s.data.len() as u64,
                    log_bytes: s.data.len() as u64,
                    epoch: s.epoch,
                    successors: s.successors.clone(),
                    predecessors: s.predecessors.clone(),
                    ..Default::default()
                }
            })
            .collect();
        // Sealed: every segment not replaced by a scale is sealed (a
        // segment sealed by a scale still pending does not count).
        let mut standing = visible
            .iter()
            .map(|id| &segments[id])
            .filter(|s| !s.scaled)
            .peekable();
        let sealed = standing.peek().is_some() && standing.all(|s| s.sealed);
        Some(proto::StreamInfo {
            name: Some(proto::StreamName {
                scope: key.0.clone(),
                stream: key.1.clone(),
            }),
            sealed,
            segments: infos,
            retention: None,
            scaling: None,
            epoch: epochs.last().map_or(0, |e| e.0),
            epochs: epochs
                .into_iter()
                .map(|(epoch, segment_ids)| proto::EpochInfo {
                    epoch,
                    segment_ids,
                    created_ms: 1_700_000_000_000 + epoch,
                })
                .collect(),
        })
    }

    /// Scales a stream like the real server: creates the successors
    /// (hidden), seals the predecessors at once, and after `publish_after`
    /// records the new epoch: the successors become active and described,
    /// the predecessors list them. Splits cut a range into equal pieces;
    /// merges join the given segments' ranges. Returns the successor ids,
    /// splits first (in order), then merges.
    pub fn scale(
        self: &Arc<State>,
        scope: &str,
        stream: &str,
        splits: &[(u64, u32)],
        merges: &[Vec<u64>],
        publish_after: std::time::Duration,
    ) -> Vec<u64> {
        let key = (scope.to_string(), stream.to_string());
        let epoch = self.epochs.lock().unwrap()[&key].last().unwrap().0 + 1;
        let mut plan: Vec<(Vec<u64>, f64, f64)> = Vec::new();
        {
            let segments = self.segments.lock().unwrap();
            for &(id, pieces) in splits {
                let s = &segments[&id];
                let n = pieces.max(2);
                let w = (s.key_high - s.key_low) / f64::from(n);
                for i in 0..n {
                    let high = if i + 1 == n {
                        s.key_high
                    } else {
                        s.key_low + w * f64::from(i + 1)
                    };
                    plan.push((vec![id], s.key_low + w * f64::from(i), high));
                }
            }
            for ids in merges {
                let low = ids
                    .iter()
                    .map(|id| segments[id].key_low)
                    .fold(f64::MAX, f64::min);
                let high = ids
                    .iter()
                    .map(|id| segments[id].key_high)
                    .fold(f64::MIN, f64::max);
                plan.push((ids.clone(), low, high));
            }
        }
        let mut new_ids = Vec::new();
        {
            let mut streams = self.streams.lock().unwrap();
            let mut segments = self.segments.lock().unwrap();
            for (preds, low, high) in &plan {
                let id = self.next_segment.fetch_add(1, Ordering::SeqCst);
                segments.insert(
                    id,
                    Segment {
                        key_low: *low,
                        key_high: *high,
                        epoch,
                        predecessors: preds.clone(),
                        hidden: true,
                        ..Segment::default()
                    },
                );
                streams.get_mut(&key).unwrap().push(id);
                new_ids.push(id);
            }
            for (preds, _, _) in &plan {
                for p in preds {
                    let s = segments.get_mut(p).unwrap();
                    s.sealed = true;
                    s.scaled = true;
                }
            }
        }
        self.notify.notify_waiters();
        let state = self.clone();
        let publish = {
            let new_ids = new_ids.clone();
            move || {
                let streams = state.streams.lock().unwrap();
                let mut segments = state.segments.lock().unwrap();
                for id in &new_ids {
                    let preds = segments[id].predecessors.clone();
                    segments.get_mut(id).unwrap().hidden = false;
                    for p in preds {
                        segments.get_mut(&p).unwrap().successors.push(*id);
                    }
                }
                let active: Vec<u64> = streams[&key]
                    .iter()
                    .copied()
                    .filter(|id| !segments[id].scaled)
                    .collect();
                state
                    .epochs
                    .lock()
                    .unwrap()
                    .get_mut(&key)
                    .unwrap()
                    .push((epoch, active));
                drop(segments);
                drop(streams);
                state.notify.notify_waiters();
            }
        };
        if publish_after.is_zero() {
            publish();
        } else {
            std::thread::spawn(move || {
                std::thread::sleep(publish_after);
                publish();
            });
        }
        new_ids
    }

    /// The ids of a stream's active segments (not hidden, not replaced).
    pub fn active(&self, scope: &str, stream: &str) -> Vec<u64> {
        let key = (scope.to_string(), stream.to_string());
        let streams = self.streams.lock().unwrap();
        let segments = self.segments.lock().unwrap();
        streams[&key]
            .iter()
            .copied()
            .filter(|id| !segments[id].hidden && !segments[id].scaled)
            .collect()
    }

    /// Every segment id a stream ever had (hidden successors too).
    pub fn all_segments(&self, scope: &str, stream: &str) -> Vec<u64> {
        let key = (scope.to_string(), stream.to_string());
        self.streams.lock().unwrap()[&key].clone()
    }

    /// (key_low, key_high) of a segment.
    pub fn range(&self, id: u64) -> (f64, f64) {
        let s = &self.segments.lock().unwrap()[&id];
        (s.key_low, s.key_high)
    }

    /// Seals every segment of a stream.
    pub fn seal(&self, scope: &str, stream: &str) {
        let key = (scope.to_string(), stream.to_string());
        let ids = self
            .streams
            .lock()
            .unwrap()
            .get(&key)
            .cloned()
            .unwrap_or_default();
        let mut segments = self.segments.lock().unwrap();
        for id in ids {
            if let Some(s) = segments.get_mut(&id) {
                s.sealed = true;
            }
        }
        drop(segments);
        self.notify.notify_waiters();
    }
}

fn key_of(name: Option<proto::StreamName>) -> Result<Key, Status> {
    let n = name.ok_or_else(|| Status::invalid_argument("name missing"))?;
    Ok((n.scope, n.stream))
}

pub struct Svc(pub Arc<State>);

#[tonic::async_trait]
impl stream_admin_server::StreamAdmin for Svc {
    async fn create_stream(
        &self,
        req: Request<proto::CreateStreamRequest>,
    ) -> Result<Response<proto::StreamInfo>, Status> {
        let req = req.into_inner();
        let key = key_of(req.name)?;
        {
            let mut streams = self.0.streams.lock().unwrap();
            if streams.contains_key(&key) {
                return Err(Status::already_exists(format!(
                    "stream {}/{} already exists",
                    key.0, key.1
                )));
            }
            let n = req.segment_count.max(1);
            let ids: Vec<u64> = (0..n)
                .map(|_| self.0.next_segment.fetch_add(1, Ordering::SeqCst))
                .collect();
            let mut segments = self.0.segments.lock().unwrap();
            for (i, id) in ids.iter().enumerate() {
                segments.insert(
                    *id,
                    Segment {
                        key_low: i as f64 / f64::from(n),
                        key_high: (i + 1) as f64 / f64::from(n),
                        ..Segment::default()
                    },
                );
            }
            self.0
                .epochs
                .lock()
                .unwrap()
                .insert(key.clone(), vec![(0, ids.clone())]);
            streams.insert(key.clone(), ids);
        }
        Ok(Response::new(self.0.info(&key).unwrap()))
    }

    async fn list_streams(
        &self,
        req: Request<proto::ListStreamsRequest>,
    ) -> Result<Response<proto::ListStreamsResponse>, Status> {
        let scope = req.into_inner().scope;
        let keys: Vec<Key> = self.0.streams.lock().unwrap().keys().cloned().collect();
        let streams = keys
            .iter()
            .filter(|k| scope.is_empty() || k.0 == scope)
            .filter_map(|k| self.0.info(k))
            .collect();
        Ok(Response::new(proto::ListStreamsResponse { streams }))
    }

    async fn describe_stream(
        &self,
        req: Request<proto::DescribeStreamRequest>,
    ) -> Result<Response<proto::StreamInfo>, Status> {
        let key = key_of(req.into_inner().name)?;
        self.0
            .info(&key)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("stream {}/{} not found", key.0, key.1)))
    }

    async fn seal_stream(
        &self,
        req: Request<proto::SealStreamRequest>,
    ) -> Result<Response<proto::StreamInfo>, Status> {
        let key = key_of(req.into_inner().name)?;
        self.0.seal(&key.0, &key.1);
        self.0
            .info(&key)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("stream {}/{} not found", key.0, key.1)))
    }

    async fn scale_stream(
        &self,
        req: Request<proto::ScaleStreamRequest>,
    ) -> Result<Response<proto::StreamInfo>, Status> {
        let req = req.into_inner();
        let key = key_of(req.name)?;
        if self.0.info(&key).is_none() {
            return Err(Status::not_found(format!(
                "stream {}/{} not found",
                key.0, key.1
            )));
        }
        let active = self.0.active(&key.0, &key.1);
        let named = req.splits.iter().map(|s| s.segment_id).chain(
            req.merges
                .iter()
                .flat_map(|m| m.segment_ids.iter().copied()),
        );
        for id in named {
            if !active.contains(&id) {
                return Err(Status::invalid_argument(format!(
                    "segment {id} is not active"
                )));
            }
        }
        let splits: Vec<(u64, u32)> = req
            .splits
            .iter()
            .map(|s| (s.segment_id, s.pieces))
            .collect();
        let merges: Vec<Vec<u64>> = req.merges.into_iter().map(|m| m.segment_ids).collect();
        self.0
            .scale(&key.0, &key.1, &splits, &merges, std::time::Duration::ZERO);
        Ok(Response::new(self.0.info(&key).unwrap()))
    }

    async fn update_stream(
        &self,
        _req: Request<proto::UpdateStreamRequest>,
    ) -> Result<Response<proto::StreamInfo>, Status> {
        Err(Status::unimplemented("the mock node keeps no retention"))
    }

    async fn delete_stream(
        &self,
        req: Request<proto::DeleteStreamRequest>,
    ) -> Result<Response<proto::DeleteStreamResponse>, Status> {
        let key = key_of(req.into_inner().name)?;
        let ids =
            self.0.streams.lock().unwrap().remove(&key).ok_or_else(|| {
                Status::not_found(format!("stream {}/{} not found", key.0, key.1))
            })?;
        let mut segments = self.0.segments.lock().unwrap();
        for id in ids {
            segments.remove(&id);
        }
        Ok(Response::new(proto::DeleteStreamResponse {}))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl append_server::Append for Svc {
    type AppendSessionStream = BoxStream<proto::AppendResponse>;

    async fn append_session(
        &self,
        req: Request<Streaming<proto::AppendRequest>>,
    ) -> Result<Response<Self::AppendSessionStream>, Status> {
        let mut inbound = req.into_inner();
        let setup = match inbound.message().await? {
            Some(proto::AppendRequest {
                kind: Some(append_request::Kind::Setup(s)),
            }) => s,
            _ => return Err(Status::invalid_argument("setup first")),
        };
        if self
            .0
            .fail_setups
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Status::unavailable("injected setup failure"));
        }
        let (last, length) = {
            let segments = self.0.segments.lock().unwrap();
            let seg = segments.get(&setup.segment_id).ok_or_else(|| {
                Status::not_found(format!("segment {} not found", setup.segment_id))
            })?;
            if seg.hidden {
                return Err(Status::unavailable(format!(
                    "segment {} is not active yet",
                    setup.segment_id
                )));
            }
            (
                seg.last.get(&setup.writer_id).copied().unwrap_or(0),
                seg.data.len() as u64,
            )
        };
        self.0.setups.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(64);
        let _ = tx
            .send(Ok(proto::AppendResponse {
                kind: Some(append_response::Kind::Setup(proto::SetupAppendResponse {
                    last_event_number: last,
                    segment_length: length,
                })),
            }))
            .await;
        let state = self.0.clone();
        tokio::spawn(async move {
            let segment_id = setup.segment_id;
            let writer = setup.writer_id;
            let mut pause = state.pause_acks.subscribe();
            loop {
                let batch = match inbound.message().await {
                    Ok(Some(proto::AppendRequest {
                        kind: Some(append_request::Kind::Batch(b)),
                    })) => b,
                    Ok(Some(_)) => {
                        let _ = tx.send(Err(Status::invalid_argument("setup twice"))).await;
                        return;
                    }
                    Ok(None) | Err(_) => return,
                };
                let _ = pause.wait_for(|p| !*p).await;
                let result = apply(&state, segment_id, &writer, batch);
                match result {
                    Ok(ack) => {
                        if state
                            .fail_after_apply
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                        {
                            let _ = tx
                                .send(Err(Status::unavailable("injected failure after apply")))
                                .await;
                            return;
                        }
                        if state
                            .invalid_after_apply
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                        {
                            let _ = tx
                                .send(Err(Status::invalid_argument("injected bad batch")))
                                .await;
                            return;
                        }
                        if state.swallow_acks.load(Ordering::SeqCst) {
                            continue;
                        }
                        if tx
                            .send(Ok(proto::AppendResponse {
                                kind: Some(append_response::Kind::Ack(ack)),
                            }))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn apply(
    state: &State,
    segment_id: u64,
    writer: &str,
    batch: proto::AppendBatch,
) -> Result<proto::AppendAck, Status> {
    let last_in_batch = batch.first_event_number + i64::from(batch.event_count) - 1;
    let mut segments = state.segments.lock().unwrap();
    let seg = segments
        .get_mut(&segment_id)
        .ok_or_else(|| Status::not_found(format!("segment {segment_id} not found")))?;
    let last = seg.last.get(writer).copied().unwrap_or(0);
    if last_in_batch <= last {
        state.duplicates.fetch_add(1, Ordering::SeqCst);
        return Ok(proto::AppendAck {
            last_event_number: last_in_batch,
            offset: 0,
            duplicate: true,
        });
    }
    if seg.sealed {
        let mut sealed = Status::failed_precondition(format!("segment {segment_id} is sealed"));
        sealed.metadata_mut().insert(
            aquifer_proto::wire::REASON_METADATA_KEY,
            aquifer_proto::wire::REASON_SEALED.parse().unwrap(),
        );
        return Err(sealed);
    }
    if batch.first_event_number != last + 1 {
        return Err(Status::invalid_argument(format!(
            "event numbers not contiguous: first {} after {last}",
            batch.first_event_number
        )));
    }
    let mut count = 0;
    for ev in frame::FrameIter::new(batch.events.clone(), 0, 8 * 1024 * 1024 + 10) {
        match ev {
            Ok(_) => count += 1,
            Err(e) => return Err(Status::invalid_argument(format!("bad batch: {e}"))),
        }
    }
    if count != batch.event_count {
        return Err(Status::invalid_argument("event count mismatch"));
    }
    let offset = seg.data.len() as u64;
    seg.data.extend_from_slice(&batch.events);
    seg.last.insert(writer.to_string(), last_in_batch);
    seg.applied_batches += 1;
    drop(segments);
    state.notify.notify_waiters();
    Ok(proto::AppendAck {
        last_event_number: last_in_batch,
        offset,
        duplicate: false,
    })
}

#[tonic::async_trait]
impl read_server::Read for Svc {
    type ReadSegmentStream = BoxStream<proto::ReadSegmentResponse>;

    /// The mock has no tier-2: everything is read through it.
    async fn locate_range(
        &self,
        req: Request<proto::LocateRangeRequest>,
    ) -> Result<Response<proto::RangeLocation>, Status> {
        Ok(Response::new(proto::RangeLocation {
            tier2: None,
            slices: Vec::new(),
            broker_offset: req.into_inner().start_offset,
        }))
    }

    async fn read_segment(
        &self,
        req: Request<proto::ReadSegmentRequest>,
    ) -> Result<Response<Self::ReadSegmentStream>, Status> {
        let req = req.into_inner();
        if !self
            .0
            .segments
            .lock()
            .unwrap()
            .contains_key(&req.segment_id)
        {
            return Err(Status::not_found(format!(
                "segment {} not found",
                req.segment_id
            )));
        }
        let cut = self
            .0
            .cut_reads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let (tx, rx) = mpsc::channel(4);
        let state = self.0.clone();
        tokio::spawn(async move {
            let mut offset = req.offset as usize;
            let end_at_request = state.segments.lock().unwrap()[&req.segment_id].data.len();
            let end = if req.end_offset > 0 {
                req.end_offset as usize
            } else if req.follow {
                usize::MAX
            } else {
                end_at_request
            };
            let mut sent = 0;
            loop {
                let notified = state.notify.notified();
                let snapshot = {
                    let segments = state.segments.lock().unwrap();
                    segments.get(&req.segment_id).map(|seg| {
                        let stop = seg.data.len().min(end);
                        let avail = if offset < stop {
                            &seg.data[offset..stop]
                        } else {
                            &[][..]
                        };
                        let limit = state.read_chunk.load(Ordering::SeqCst) as usize;
                        let n = frame::whole_events_prefix(avail, limit);
                        (
                            Bytes::copy_from_slice(&avail[..n]),
                            seg.sealed,
                            seg.data.len(),
                        )
                    })
                };
                let Some((chunk, sealed, len)) = snapshot else {
                    let _ = tx.send(Err(Status::not_found("segment deleted"))).await;
                    return;
                };
                if !chunk.is_empty() {
                    let n = chunk.len();
                    let msg = proto::ReadSegmentResponse {
                        offset: offset as u64,
                        events: chunk,
                        end_of_segment: false,
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                    offset += n;
                    sent += 1;
                    if cut && sent == 1 {
                        let _ = tx.send(Err(Status::unavailable("injected read cut"))).await;
                        return;
                    }
                    continue;
                }
                if offset >= end {
                    return;
                }
                if req.follow {
                    if sealed && offset >= len {
                        let _ = tx
                            .send(Ok(proto::ReadSegmentResponse {
                                offset: offset as u64,
                                events: Bytes::new(),
                                end_of_segment: true,
                            }))
                            .await;
                        return;
                    }
                    notified.await;
                } else {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A mock node serving on a fixed port in its own runtime (so stopping it
/// drops every connection, like a killed process).
pub struct MockServer {
    pub addr: SocketAddr,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockServer {
    /// Serves `state` on `addr` (port 0: any free port).
    pub fn start(state: Arc<State>, addr: SocketAddr) -> MockServer {
        let listener = std::net::TcpListener::bind(addr).expect("bind");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let max = 72 * 1024 * 1024;
                tonic::transport::Server::builder()
                    .add_service(stream_admin_server::StreamAdminServer::new(Svc(
                        state.clone()
                    )))
                    .add_service(
                        append_server::AppendServer::new(Svc(state.clone()))
                            .max_decoding_message_size(max)
                            .max_encoding_message_size(max),
                    )
                    .add_service(
                        read_server::ReadServer::new(Svc(state))
                            .max_decoding_message_size(max)
                            .max_encoding_message_size(max),
                    )
                    .serve_with_incoming(incoming)
                    .await
                    .unwrap();
            });
            let _ = stop_rx.recv();
            rt.shutdown_background();
        });
        MockServer {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Kills the node: every connection drops at once.
    pub fn kill(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}
