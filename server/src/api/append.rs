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

use crate::container::command::{self, Cmd};
use crate::container::state::Applied;
use crate::container::Container;
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
        if setup.writer_id.is_empty() || setup.writer_id.len() > WRITER_ID_BYTES_MAX {
            return Err(Error::InvalidArgument(format!(
                "writer id must be 1 to {WRITER_ID_BYTES_MAX} bytes"
            ))
            .into());
        }
        let container = self.node.serving_container(setup.segment_id)?.clone();
        // Only the leader appends; the client follows the redirect.
        container.check_leader()?;
        let segment = container
            .segment(setup.segment_id)
            .ok_or(Error::SegmentNotFound(setup.segment_id))?;
        // A scale's successor takes writes only once its epoch is in force
        // (its predecessors sealed): until then two segments would own its
        // keys. This node's metadata may lag the leader's by a moment.
        if self.node.controller.is_pending(setup.segment_id) {
            return Err(Error::Unavailable(format!(
                "segment {} is a successor of a scale not yet in force; retry",
                setup.segment_id
            ))
            .into());
        }
        let last = container
            .last_event_number(setup.segment_id, setup.writer_id.clone())
            .await?;
        let (tx, rx) = mpsc::channel(ACK_QUEUE_MAX);
        let first = AppendResponse {
            kind: Some(ResponseKind::Setup(SetupAppendResponse {
                last_event_number: last,
                segment_length: segment.view().length,
            })),
        };
        // Cannot fail: the channel is new and empty.
        let _ = tx.try_send(Ok(first));
        let m = &self.node.metrics;
        let labels = crate::metrics::StreamLabels {
            stream: self
                .node
                .stream_of(setup.segment_id)
                .unwrap_or_else(|| "unknown".into()),
        };
        let session = Session {
            node: self.node.clone(),
            container,
            segment_id: setup.segment_id,
            writer_id: setup.writer_id,
            events: m.append_events.get_or_create(&labels).clone(),
            bytes: m.append_bytes.get_or_create(&labels).clone(),
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
        if batch.first_event_number < 1 {
            return Err(Error::InvalidArgument(format!(
                "event numbers start at 1; got first event number {}",
                batch.first_event_number
            )));
        }
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
        let max_event = self.node.config.event_bytes_max as usize;
        // Framing adds a header and the key length to every event.
        let max_framed =
            max_event + aquifer_proto::frame::HEADER_BYTES + aquifer_proto::frame::KEY_LEN_BYTES;
        let count = match count_events(&batch.events, max_framed) {
            Ok(n) => n,
            Err(FrameError::TooLarge { size, .. }) => {
                return Err(Error::InvalidArgument(format!(
                    "event of {size} bytes is over the limit of {max_event} bytes (event_bytes_max)"
                )))
            }
            Err(e) => return Err(Error::InvalidArgument(format!("malformed batch: {e}"))),
        };
        if count != batch.event_count {
            return Err(Error::InvalidArgument(format!(
                "batch says it holds {} events but holds {count}",
                batch.event_count
            )));
        }
        let bytes = u32::try_from(batch.events.len())
            .map_err(|_| Error::InvalidArgument("append batch over 4 GiB".into()))?;
        let cmd = Cmd::Append(command::Append {
            segment_id: self.segment_id,
            writer_id: self.writer_id.clone(),
            first_event_number: batch.first_event_number,
            event_count: batch.event_count,
            events: batch.events,
        });
        Ok(Checked { cmd, bytes, last })
    }
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
        Applied::Appended { offset, duplicate } => Ok(AppendResponse {
            kind: Some(ResponseKind::Ack(AppendAck {
                last_event_number,
                offset,
                duplicate,
            })),
        }),
        other => Err(Error::Internal(format!("append answered with {other:?}"))),
    }
}
