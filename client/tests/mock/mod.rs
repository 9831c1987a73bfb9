//! An in-memory Aquifer node for the client's tests: admin, append sessions
//! with the writer dedup table, and reads with follow, plus fault injection
//! (failing a session after a batch is applied but before its ack, pausing
//! acks, cutting reads short) and hard restarts on the same port.
//!
//! It is deliberately simple: one mutex, no durability, no tiering.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
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

#[derive(Default)]
struct Segment {
    data: Vec<u8>,
    sealed: bool,
    last: HashMap<String, i64>,
    /// Batches applied (not duplicates), for assertions.
    applied_batches: u64,
}

/// Shared state of the mock node; survives restarts.
pub struct State {
    streams: Mutex<HashMap<Key, Vec<u64>>>,
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
    /// Setups answered so far.
    pub setups: AtomicU64,
    /// Duplicate batches acked so far.
    pub duplicates: AtomicU64,
}

impl State {
    pub fn new() -> Arc<State> {
        Arc::new(State {
            streams: Mutex::default(),
            segments: Mutex::default(),
            next_segment: AtomicU64::new(100),
            notify: Notify::new(),
            fail_after_apply: AtomicU32::new(0),
            invalid_after_apply: AtomicU32::new(0),
            fail_setups: AtomicU32::new(0),
            cut_reads: AtomicU32::new(0),
            read_chunk: AtomicU64::new(64 * 1024),
            pause_acks: watch::channel(false).0,
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
        let n = ids.len() as f64;
        let infos: Vec<proto::SegmentInfo> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let s = &segments[id];
                proto::SegmentInfo {
                    segment_id: *id,
                    number: i as u32,
                    container: (*id % 4) as u32,
                    key_low: i as f64 / n,
                    key_high: (i + 1) as f64 / n,
                    head_offset: 0,
                    length: s.data.len() as u64,
                    sealed: s.sealed,
                    tier2_length: 0,
                    chunk_count: 0,
                    tail_buffer_bytes: s.data.len() as u64,
                    log_bytes: s.data.len() as u64,
                }
            })
            .collect();
        Some(proto::StreamInfo {
            name: Some(proto::StreamName {
                scope: key.0.clone(),
                stream: key.1.clone(),
            }),
            sealed: infos.iter().all(|s| s.sealed),
            segments: infos,
            retention: None,
        })
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
            for id in &ids {
                segments.insert(*id, Segment::default());
            }
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
