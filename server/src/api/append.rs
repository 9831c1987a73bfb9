//! The `Append` service: one bidirectional session per (writer, segment).
//!
//! Batches are checked (framing, checksums, sizes, event numbers), wait for
//! room in the tail budget, and are submitted to the container in arrival
//! order; acks go back in the same order once each batch is applied. The
//! first failed batch ends the session with its status: the client then
//! sets up again and resends from the last applied event number, and the
//! container's contiguity check keeps later batches of the failed session
//! from being applied out of order.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use aquifer_proto::frame::{count_events, FrameError};
use aquifer_proto::v1::append_request::Kind as RequestKind;
use aquifer_proto::v1::append_response::Kind as ResponseKind;
use aquifer_proto::v1::append_server::Append;
use aquifer_proto::v1::{
    AppendAck, AppendBatch, AppendRequest, AppendResponse, SetupAppendResponse,
};
use aquifer_proto::wire::WRITER_ID_BYTES_MAX;
use futures::stream::FuturesOrdered;
use futures::{Stream, StreamExt};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::auth::acl::Permission;
use crate::auth::Principal;
use crate::container::command::{self, Cmd};
use crate::container::state::Applied;
use crate::container::{Container, Segment};
use crate::error::Error;
use crate::node::Node;

/// Batches a session may have submitted but not yet acknowledged.
const SESSION_BATCHES_IN_FLIGHT_MAX: usize = 256;
/// Acks buffered towards a client that does not read them.
const ACK_QUEUE_MAX: usize = 64;

pub struct AppendService {
    node: Arc<Node>,
}

impl AppendService {
    pub fn new(node: Arc<Node>) -> Self {
        AppendService { node }
    }
}

type Acks = mpsc::Sender<Result<AppendResponse, Status>>;

#[tonic::async_trait]
impl Append for AppendService {
    type AppendSessionStream = Pin<Box<dyn Stream<Item = Result<AppendResponse, Status>> + Send>>;

    async fn append_session(
        &self,
        req: Request<Streaming<AppendRequest>>,
    ) -> Result<Response<Self::AppendSessionStream>, Status> {
        let principal = Principal::of(&req);
        let mut inbound = req.into_inner();
        let setup = match inbound.message().await? {
            Some(AppendRequest {
                kind: Some(RequestKind::Setup(s)),
            }) => s,
            _ => {
                return Err(Error::InvalidArgument(
                    "an append session must start with setup".into(),
                )
                .into())
            }
        };
        check_writer_id(&setup.writer_id)?;
        // A transactional session writes to a hidden part of its
        // transaction, in the parent segment's container.
        let txn_parent = if setup.transaction_id.is_empty() {
            None
        } else {
            Some(
                super::txns::txn_part(&self.node, &setup.transaction_id, setup.segment_id)?
                    .segment_id,
            )
        };
        // A transaction's part is written as its parent segment's stream.
        self.node.authorize_segment(
            &principal,
            Permission::Write,
            txn_parent.unwrap_or(setup.segment_id),
            "append.open",
        )?;
        let (container, length, last) = match txn_parent {
            None => {
                let (container, segment) = appendable(&self.node, setup.segment_id)?;
                let last = container
                    .last_event_number(setup.segment_id, setup.writer_id.clone())
                    .await?;
                (container, segment.view().length, last)
            }
            Some(parent) => {
                let (container, _) = appendable(&self.node, parent)?;
                let last = container
                    .txn_last_event_number(setup.segment_id, setup.writer_id.clone())
                    .await?;
                (container, 0, last)
            }
        };
        let (tx, rx) = mpsc::channel(ACK_QUEUE_MAX);
        let first = AppendResponse {
            kind: Some(ResponseKind::Setup(SetupAppendResponse {
                last_event_number: last,
                segment_length: length,
            })),
        };
        // Cannot fail: the channel is new and empty.
        let _ = tx.try_send(Ok(first));
        let (events, bytes) = append_counters(&self.node, txn_parent.unwrap_or(setup.segment_id));
        let session = Session {
            node: self.node.clone(),
            container,
            segment_id: setup.segment_id,
            txn_parent,
            writer_id: setup.writer_id,
            events,
            bytes,
        };
        let closed = self.node.closed();
        let session_segment = setup.segment_id;
        tracing::debug!(segment_id = setup.segment_id, writer_id = %session.writer_id, last, "append session set up");
        tokio::spawn(async move {
            let result = tokio::select! {
                r = session.run(inbound, &tx) => r,
                _ = closed => Err(Status::unavailable("the server is shutting down; retry")),
            };
            tracing::debug!(segment_id = session_segment, result = ?result.as_ref().err(), "append session ended");
            if let Err(status) = result {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Session {
    node: Arc<Node>,
    container: Arc<Container>,
    segment_id: u64,
    /// Set for a transactional session: `segment_id` is a part of this
    /// parent's transaction.
    txn_parent: Option<u64>,
    writer_id: String,
    /// This stream's append counters.
    events: Counter,
    bytes: Counter,
}

impl Session {
    async fn run(self, mut inbound: Streaming<AppendRequest>, acks: &Acks) -> Result<(), Status> {
        let mut pending = FuturesOrdered::new();
        let mut open = true;
        loop {
            tokio::select! {
                biased;
                Some(done) = pending.next(), if !pending.is_empty() => {
                    let done: Result<AppendResponse, Error> = done;
                    let ack = done.map_err(Status::from)?;
                    if acks.send(Ok(ack)).await.is_err() {
                        return Ok(()); // the client left
                    }
                }
                msg = inbound.message(), if open && pending.len() < SESSION_BATCHES_IN_FLIGHT_MAX => {
                    match msg {
                        Ok(Some(AppendRequest { kind: Some(RequestKind::Batch(batch)) })) => {
                            let received = Instant::now();
                            let count = batch.event_count;
                            let Checked { cmd, bytes, last } = self.check(batch)?;
                            if self.txn_parent.is_some() {
                                check_txn_room(&self.node, bytes)?;
                            }
                            self.node.space.admit(u64::from(bytes))?;
                            self.node.budget.wait_for_room(u64::from(bytes)).await;
                            let outcome = self.container.submit(cmd, bytes).await?;
                            let m = &self.node.metrics;
                            m.backpressure_seconds.inc_by(received.elapsed().as_secs_f64());
                            let ack_seconds = m.append_ack_seconds.clone();
                            let (events, appended) = (self.events.clone(), self.bytes.clone());
                            pending.push_back(async move {
                                let applied = outcome.await?;
                                if matches!(applied, Applied::Appended { duplicate: false, .. }) {
                                    events.inc_by(u64::from(count));
                                    appended.inc_by(u64::from(bytes));
                                }
                                ack_seconds.observe(received.elapsed().as_secs_f64());
                                ack(applied, last)
                            });
                        }
                        Ok(Some(_)) => {
                            return Err(Error::InvalidArgument("setup may only be sent once per session".into()).into())
                        }
                        Ok(None) => open = false, // finish the acks, then end
                        Err(status) if matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted) => {
                            // The message did not decode because of its size.
                            return Err(Error::InvalidArgument(format!(
                                "append batch is over the limit of {} bytes: events may be at most {} bytes (event_bytes_max)",
                                self.node.config.message_bytes_max(),
                                self.node.config.event_bytes_max
                            ))
                            .into());
                        }
                        Err(_) => return Ok(()), // the client is gone
                    }
                }
                else => return Ok(()),
            }
        }
    }

    /// Checks a batch and turns it into an append command.
    fn check(&self, batch: AppendBatch) -> Result<Checked, Error> {
        if batch.event_count == 0 || batch.events.is_empty() {
            return Err(Error::InvalidArgument(
                "an append batch must hold at least one event".into(),
            ));
        }
        check_event_number(batch.first_event_number)?;
        // Checked before anything adds to it: a client's first number may
        // be anything up to i64::MAX.
        let last = batch
            .first_event_number
            .checked_add(i64::from(batch.event_count) - 1)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "event numbers overflow: first event number {} plus {} events is past {}",
                    batch.first_event_number,
                    batch.event_count,
                    i64::MAX
                ))
            })?;
        let bytes = check_events(&self.node, &batch.events, batch.event_count)?;
        let cmd = Cmd::Append(command::Append {
            segment_id: self.segment_id,
            writer_id: self.writer_id.clone(),
            first_event_number: batch.first_event_number,
            event_count: batch.event_count,
            events: batch.events,
            expected_length: None,
            txn_parent: self.txn_parent,
            append_ms: crate::tier::writer::now_ms(),
        });
        Ok(Checked { cmd, bytes, last })
    }
}

/// Refuses a transactional batch that would take this node's open
/// transactions past their byte limit (they leave memory only by a
/// commit or an abort, so waiting could wait forever).
pub(crate) fn check_txn_room(node: &Node, bytes: u32) -> Result<(), Error> {
    let (used, limit) = (node.budget.txn_used(), node.config.txn_bytes_limit());
    if used + u64::from(bytes) > limit {
        return Err(Error::ResourceExhausted(format!(
            "open transactions hold {used} bytes on this node, the most allowed is {limit} \
             (transaction_bytes_max): commit or abort transactions, or write less per transaction"
        )));
    }
    Ok(())
}

/// Refuses a writer id outside 1..=[`WRITER_ID_BYTES_MAX`] bytes.
pub(super) fn check_writer_id(writer_id: &str) -> Result<(), Error> {
    if writer_id.is_empty() || writer_id.len() > WRITER_ID_BYTES_MAX {
        return Err(Error::InvalidArgument(format!(
            "writer id must be 1 to {WRITER_ID_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

/// Refuses an event number below 1.
pub(super) fn check_event_number(first: i64) -> Result<(), Error> {
    if first < 1 {
        return Err(Error::InvalidArgument(format!(
            "event numbers start at 1; got first event number {first}"
        )));
    }
    Ok(())
}

/// The container hosting `segment_id` and the segment, if this node's
/// replica leads it and the segment takes appends now; otherwise where to
/// go (a redirect) or why not.
pub(crate) fn appendable(
    node: &Node,
    segment_id: u64,
) -> Result<(Arc<Container>, Arc<Segment>), Error> {
    let container = node.serving_container(segment_id)?.clone();
    // Only the leader appends; the client follows the redirect.
    container.check_leader()?;
    let segment = container
        .segment(segment_id)
        .ok_or(Error::SegmentNotFound(segment_id))?;
    // A scale's successor takes writes only once its epoch is in force
    // (its predecessors sealed): until then two segments would own its
    // keys. This node's metadata may lag the leader's by a moment.
    if node.controller.is_pending(segment_id) {
        return Err(Error::Unavailable(format!(
            "segment {segment_id} is a successor of a scale not yet in force; retry"
        )));
    }
    Ok((container, segment))
}

/// Checks framed events (framing, every checksum, each event's size
/// against `event_bytes_max`) and that there are `event_count` of them;
/// returns their framed size.
pub(super) fn check_events(node: &Node, events: &[u8], event_count: u32) -> Result<u32, Error> {
    let max_event = node.config.event_bytes_max as usize;
    // Framing adds a header and the key length to every event.
    let max_framed =
        max_event + aquifer_proto::frame::HEADER_BYTES + aquifer_proto::frame::KEY_LEN_BYTES;
    let count = match count_events(events, max_framed) {
        Ok(n) => n,
        Err(FrameError::TooLarge { size, .. }) => {
            return Err(Error::InvalidArgument(format!(
                "event of {size} bytes is over the limit of {max_event} bytes (event_bytes_max)"
            )))
        }
        Err(e) => return Err(Error::InvalidArgument(format!("malformed events: {e}"))),
    };
    if count != event_count {
        return Err(Error::InvalidArgument(format!(
            "the request says it holds {event_count} events but holds {count}"
        )));
    }
    u32::try_from(events.len()).map_err(|_| Error::InvalidArgument("append over 4 GiB".into()))
}

/// The append counters (events, bytes) of the stream holding `segment_id`.
pub(crate) fn append_counters(node: &Node, segment_id: u64) -> (Counter, Counter) {
    let m = &node.metrics;
    let labels = crate::metrics::StreamLabels {
        stream: node
            .stream_of(segment_id)
            .unwrap_or_else(|| "unknown".into()),
    };
    (
        m.append_events.get_or_create(&labels).clone(),
        m.append_bytes.get_or_create(&labels).clone(),
    )
}

/// A batch that passed [`Session::check`].
struct Checked {
    cmd: Cmd,
    /// The events' framed size.
    bytes: u32,
    /// The batch's last event number.
    last: i64,
}

fn ack(applied: Applied, last_event_number: i64) -> Result<AppendResponse, Error> {
    match applied {
        Applied::Appended {
            offset, duplicate, ..
        } => Ok(AppendResponse {
            kind: Some(ResponseKind::Ack(AppendAck {
                last_event_number,
                offset,
                duplicate,
            })),
        }),
        other => Err(Error::Internal(format!("append answered with {other:?}"))),
    }
}
