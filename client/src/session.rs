//! The append session task of one (writer, segment): owns the `AppendSession`
//! bidi stream, its setup handshake, reconnects with backoff, and feeding a
//! [`BatchQueue`] with events and acks.
//!
//! Failure rules: retryable errors (transport, `UNAVAILABLE`,
//! `RESOURCE_EXHAUSTED`, a stream that ends without a status) reconnect with
//! backoff until `retry_timeout` has passed since the failure without an ack;
//! then, or on any other error, the session fails for good: every pending
//! and later event of this segment resolves with that error.
//!
//! Except `Sealed`: a scale sealed the segment. The session then learns what
//! the server applied (a fresh setup), resolves that as written, learns the
//! successors, and hands the rest to them (`reroute.rs`); it fails only if
//! the whole stream is sealed or either step gives up.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;

use crate::batch::{BatchQueue, Events};
use crate::conn::Conn;
use crate::proto::{append_request, append_response, AppendRequest, AppendResponse, SetupAppend};
use crate::reroute::Shared;
use crate::{Error, WriteAck};

/// How long a session waits for the server's setup answer.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Commands drained per wake-up before the session sends what it batched.
const DRAIN_MAX: usize = 4096;

/// What the writer hands a session.
pub(crate) enum Cmd {
    /// A run of framed events (one routing key) and how to report it.
    Event { events: Events, token: EventToken },
    /// Answer once every event sent before this command is resolved.
    Flush(oneshot::Sender<Result<(), Error>>),
}

/// Completion of one run of events: resolving it answers the
/// `PendingWrite` (or a part of the `PendingBatch`); dropping it returns
/// the run's bytes to the writer's in-flight budget.
pub(crate) struct EventToken {
    pub(crate) tx: oneshot::Sender<Result<WriteAck, Error>>,
    pub(crate) _permit: OwnedSemaphorePermit,
    /// The routing key's position (`routing::key_position`), to route the
    /// event again if its segment is sealed by a scale.
    pub(crate) position: Option<f64>,
}

/// Settings a session needs from the `WriterConfig`.
#[derive(Clone, Debug)]
pub(crate) struct SessionConfig {
    pub(crate) writer_id: String,
    pub(crate) batch_bytes_max: usize,
    pub(crate) linger: Duration,
    pub(crate) retry_timeout: Duration,
    /// Set: the sessions write into this transaction (their segments are
    /// its parts' transaction segments).
    pub(crate) transaction_id: Option<String>,
}

/// A live `AppendSession` call.
struct Live {
    requests: mpsc::UnboundedSender<AppendRequest>,
    responses: Streaming<AppendResponse>,
    generation: u64,
}

/// One segment's append session; run with [`Session::run`].
pub(crate) struct Session {
    segment_id: u64,
    conn: Arc<Conn>,
    config: SessionConfig,
    queue: BatchQueue<EventToken>,
    /// Flush waiters: (events pushed when the flush came, reply).
    flushes: VecDeque<(u64, oneshot::Sender<Result<(), Error>>)>,
    /// Set once when the session fails for good; shared with the writer so
    /// new writes fail fast.
    failed: Arc<OnceLock<Error>>,
    live: Option<Live>,
    /// Start of the current run of failures (reset by an ack).
    failing_since: Option<Instant>,
    /// Failed attempts in the current run of failures.
    attempt: u32,
    last_error: Option<Error>,
    /// The writer's routing table, for the hand-over after a scale.
    shared: Arc<Shared>,
}

impl Session {
    pub(crate) fn new(
        segment_id: u64,
        conn: Arc<Conn>,
        config: SessionConfig,
        failed: Arc<OnceLock<Error>>,
        shared: Arc<Shared>,
    ) -> Self {
        // Start where this segment's appends went last (its leader).
        let conn = conn
            .nodes()
            .and_then(|n| n.segment_leader(segment_id))
            .unwrap_or(conn);
        Session {
            segment_id,
            conn,
            queue: BatchQueue::new(config.batch_bytes_max),
            config,
            flushes: VecDeque::new(),
            failed,
            live: None,
            failing_since: None,
            attempt: 0,
            last_error: None,
            shared,
        }
    }

    /// Runs until the writer is gone (command channel closed) and every
    /// event it handed over is resolved.
    pub(crate) async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        let mut closing = false;
        let linger = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(linger);
        let mut linger_for: Option<std::time::Instant> = None;
        loop {
            if closing && self.queue.is_empty() {
                break;
            }
            if self.live.is_none() && self.failed.get().is_none() && !self.queue.is_empty() {
                if closing {
                    // Nothing else can come: send what is open now.
                    self.queue.seal();
                }
                if let Err(e) = self.establish().await {
                    self.fail(e);
                    continue;
                }
            }
            // Natural batching: with nothing unacknowledged, send the open
            // batch now (latency = one round trip at low load); otherwise it
            // fills until an ack comes back, it is full, or linger expires.
            if self.live.is_some() && self.queue.unacked_batches() < EAGER_UNACKED_BATCHES {
                self.queue.seal();
            }
            self.send_ready();

            // Arm the linger timer for the open batch, if not yet armed.
            let open_since = self.queue.open_since();
            if open_since != linger_for {
                linger_for = open_since;
                if let Some(since) = open_since {
                    let deadline = Instant::from_std(since)
                        .checked_add(self.config.linger)
                        .unwrap_or_else(far_future);
                    linger.as_mut().reset(deadline);
                }
            }

            tokio::select! {
                cmd = cmds.recv(), if !closing => {
                    match cmd {
                        Some(cmd) => {
                            self.handle(cmd);
                            for _ in 0..DRAIN_MAX {
                                match cmds.try_recv() {
                                    Ok(cmd) => self.handle(cmd),
                                    Err(_) => break,
                                }
                            }
                            if self.config.linger.is_zero() {
                                self.queue.seal();
                            }
                        }
                        None => {
                            closing = true;
                            self.queue.seal();
                        }
                    }
                }
                resp = next_response(&mut self.live) => {
                    match self.on_response(resp) {
                        Some(sealed @ Error::Sealed(_)) => match self.hand_over(sealed, &mut cmds).await {
                            // The successors have every event: this
                            // session is over.
                            Ok(()) => return,
                            Err(e) => {
                                let _ = self.failed.set(e.clone());
                                self.fail(e);
                            }
                        },
                        Some(fatal) => {
                        // Failed from now on (new writes fail fast), even
                        // while the reconcile runs.
                            let _ = self.failed.set(fatal.clone());
                            self.reconcile().await;
                            self.fail(fatal);
                        }
                        None => {}
                    }
                }
                () = &mut linger, if linger_for.is_some() => {
                    self.queue.seal();
                }
            }
            self.answer_flushes();
        }
        // Dropping `live` half-closes the request stream: the server ends
        // the session.
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Event { events, token } => {
                if let Some(e) = self.failed.get() {
                    let _ = token.tx.send(Err(e.clone()));
                    return;
                }
                self.queue.push(events, token, std::time::Instant::now());
            }
            Cmd::Flush(reply) => {
                self.queue.seal();
                self.flushes.push_back((self.queue.pushed(), reply));
            }
        }
    }

    /// Sends every ready batch on the live session.
    fn send_ready(&mut self) {
        let Some(live) = &self.live else { return };
        while let Some(batch) = self.queue.next_to_send() {
            tracing::trace!(
                segment_id = self.segment_id,
                first = batch.first_event_number,
                count = batch.event_count,
                "batch sent"
            );
            let req = AppendRequest {
                kind: Some(append_request::Kind::Batch(batch)),
            };
            // A closed request stream means the call is over; the response
            // side reports why, and the batch stays in flight for resending.
            if live.requests.send(req).is_err() {
                break;
            }
        }
    }

    /// Handles one response; returns the error when the session must fail
    /// for good (after a reconcile).
    fn on_response(
        &mut self,
        resp: Result<Option<AppendResponse>, tonic::Status>,
    ) -> Option<Error> {
        if let Ok(Some(AppendResponse {
            kind: Some(append_response::Kind::Ack(ack)),
        })) = &resp
        {
            tracing::trace!(
                segment_id = self.segment_id,
                last = ack.last_event_number,
                "ack"
            );
        }
        let err = match resp {
            Ok(Some(AppendResponse {
                kind: Some(append_response::Kind::Ack(ack)),
            })) => match self
                .queue
                .on_ack(ack.last_event_number, ack.offset, ack.duplicate)
            {
                Ok(done) => {
                    self.failing_since = None;
                    self.attempt = 0;
                    self.resolve_ok(done);
                    return None;
                }
                Err(v) => Error::Server(format!(
                    "protocol violation on segment {}: {}",
                    self.segment_id, v.0
                )),
            },
            Ok(Some(other)) => Error::Server(format!(
                "protocol violation on segment {}: unexpected message {other:?}",
                self.segment_id
            )),
            Ok(None) => Error::unavailable(format!(
                "append session for segment {} ended without a status",
                self.segment_id
            )),
            Err(status) => Error::from(status),
        };
        let generation = self.live.take().map(|l| l.generation);
        if err.is_retryable() {
            tracing::debug!(segment_id = self.segment_id, error = %err, "append session broke; reconnecting");
            self.queue.on_disconnect();
            self.attempt += 1;
            if let Some(g) = generation {
                self.conn.failed(g, self.attempt);
            }
            self.route(&err);
            if self.queue.is_empty() {
                // Nothing waits: the next event starts a fresh connection.
                self.failing_since = None;
                self.attempt = 0;
            } else {
                self.failing_since.get_or_insert_with(Instant::now);
            }
            self.last_error = Some(err);
            None
        } else {
            Some(err)
        }
    }

    /// The segment is sealed (a scale, or the stream): resolves what the
    /// server applied here, then hands every other event, and whatever the
    /// writer sent meanwhile, to the successors. `Err` (the stream is sealed:
    /// `sealed` itself; or a step gave up) leaves the rest to `fail`.
    async fn hand_over(
        &mut self,
        sealed: Error,
        cmds: &mut mpsc::UnboundedReceiver<Cmd>,
    ) -> Result<(), Error> {
        // A setup on a sealed segment still answers the last event number
        // applied for this writer, and no batch can land there any more: so
        // what it says is final, and everything after it must move.
        tracing::debug!(
            segment_id = self.segment_id,
            unresolved = self.queue.pushed() - self.queue.resolved(),
            "segment sealed: learning what it applied"
        );
        self.queue.on_disconnect();
        self.establish().await?;
        self.live = None;
        tracing::debug!(
            segment_id = self.segment_id,
            unresolved = self.queue.pushed() - self.queue.resolved(),
            "segment sealed: awaiting its successors"
        );
        let successors = self.shared.successors(self.segment_id, sealed).await?;
        let events = self.queue.drain_all_framed();
        let flushes = self.flushes.drain(..).map(|(_, reply)| reply).collect();
        self.shared
            .hand_over(self.segment_id, &successors, events, cmds, flushes);
        Ok(())
    }

    /// Before failing for good with batches in flight: one setup to learn
    /// which of them the server applied anyway (a session can end with an
    /// error before the acks of earlier batches went out), so those resolve
    /// as written instead of as failed.
    async fn reconcile(&mut self) {
        if self.queue.in_flight_batches() == 0 {
            return;
        }
        let (_, channel) = self.conn.channel();
        if let Ok(Ok((_requests, _responses, server_last))) =
            tokio::time::timeout(SETUP_TIMEOUT, self.setup(channel)).await
        {
            let done = self.queue.on_setup(server_last);
            self.resolve_ok(done);
        }
    }

    /// Opens a session and sets it up, retrying retryable failures with
    /// backoff until `retry_timeout` since the first failure.
    async fn establish(&mut self) -> Result<(), Error> {
        loop {
            if let Some(since) = self.failing_since {
                if since.elapsed() >= self.config.retry_timeout {
                    let gave_up = format!(
                        "gave up appending to segment {} after {} s",
                        self.segment_id,
                        self.config.retry_timeout.as_secs_f64()
                    );
                    return Err(match self.last_error.take() {
                        Some(why @ Error::Unavailable { .. }) => {
                            Error::unavailable_from(gave_up, why)
                        }
                        Some(other) => other,
                        None => Error::unavailable(gave_up),
                    });
                }
                let wait = self.conn.backoff(self.attempt);
                let left = self.config.retry_timeout.saturating_sub(since.elapsed());
                tokio::time::sleep(wait.min(left)).await;
            }
            let (generation, channel) = self.conn.channel();
            match tokio::time::timeout(SETUP_TIMEOUT, self.setup(channel)).await {
                Ok(Ok((requests, responses, server_last))) => {
                    self.live = Some(Live {
                        requests,
                        responses,
                        generation,
                    });
                    if let Some(nodes) = self.conn.nodes() {
                        nodes.set_segment_leader(self.segment_id, &self.conn);
                    }
                    let done = self.queue.on_setup(server_last);
                    tracing::debug!(
                        segment_id = self.segment_id,
                        server_last,
                        resolved = done.len(),
                        "append session set up"
                    );
                    self.resolve_ok(done);
                    if !self.queue.has_ready() {
                        // No ack to wait for: the failure run is over.
                        self.failing_since = None;
                        self.attempt = 0;
                    }
                    return Ok(());
                }
                Ok(Err(e)) if e.is_retryable() => {
                    self.failing_since.get_or_insert_with(Instant::now);
                    self.attempt += 1;
                    self.conn.failed(generation, self.attempt);
                    tracing::debug!(segment_id = self.segment_id, attempt = self.attempt, error = %e, "append setup failed");
                    self.route(&e);
                    self.last_error = Some(e);
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    self.failing_since.get_or_insert_with(Instant::now);
                    self.attempt += 1;
                    self.conn.failed(generation, self.attempt);
                    let e = Error::unavailable(format!(
                        "no setup answer for segment {} within {} s",
                        self.segment_id,
                        SETUP_TIMEOUT.as_secs()
                    ));
                    self.route(&e);
                    self.last_error = Some(e);
                }
            }
        }
    }

    /// Where to go after a retryable failure: the leader a redirect names,
    /// or, after repeated failures, the next node (this one may be down;
    /// any other redirects to the leader).
    fn route(&mut self, err: &Error) {
        if let Some(leader) = self.conn.redirect(err) {
            self.conn = leader;
        } else if self.attempt >= 2 {
            self.conn = self.conn.next();
        }
    }

    /// Starts the call and does the setup handshake.
    async fn setup(
        &self,
        channel: crate::conn::Transport,
    ) -> Result<
        (
            mpsc::UnboundedSender<AppendRequest>,
            Streaming<AppendResponse>,
            i64,
        ),
        Error,
    > {
        let (tx, rx) = mpsc::unbounded_channel();
        let setup = AppendRequest {
            kind: Some(append_request::Kind::Setup(SetupAppend {
                segment_id: self.segment_id,
                writer_id: self.config.writer_id.clone(),
                transaction_id: self.config.transaction_id.clone().unwrap_or_default(),
            })),
        };
        // The receiver is alive: this cannot fail.
        let _ = tx.send(setup);
        let mut client = Conn::append(channel);
        let mut responses = client
            .append_session(UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        match responses.message().await? {
            Some(AppendResponse {
                kind: Some(append_response::Kind::Setup(s)),
            }) => Ok((tx, responses, s.last_event_number)),
            Some(other) => Err(Error::Server(format!(
                "protocol violation on segment {}: expected a setup answer, got {other:?}",
                self.segment_id
            ))),
            None => Err(Error::unavailable(format!(
                "append session for segment {} ended before its setup answer",
                self.segment_id
            ))),
        }
    }

    /// Resolves `done` as written, then answers the flushes they complete:
    /// at once, since nothing else may come to wake the session (a setup
    /// after a reconnect can resolve the last events a writer waits for
    /// in `flush`, with no ack or command to follow).
    fn resolve_ok(&mut self, done: Vec<(EventToken, Option<u64>)>) {
        for (token, offset) in done {
            let _ = token.tx.send(Ok(WriteAck {
                segment_id: self.segment_id,
                offset,
            }));
        }
        self.answer_flushes();
    }

    /// Fails the session for good: every pending event and flush gets `err`.
    fn fail(&mut self, err: Error) {
        tracing::debug!(segment_id = self.segment_id, error = %err, "append session failed");
        self.live = None;
        let err = self.failed.get_or_init(|| err).clone();
        for token in self.queue.drain_all() {
            let _ = token.tx.send(Err(err.clone()));
        }
        self.answer_flushes();
    }

    /// Answers the flushes whose events are all resolved.
    fn answer_flushes(&mut self) {
        while let Some((target, _)) = self.flushes.front() {
            if *target > self.queue.resolved() {
                break;
            }
            if let Some((_, reply)) = self.flushes.pop_front() {
                let result = match self.failed.get() {
                    Some(e) => Err(e.clone()),
                    None => Ok(()),
                };
                let _ = reply.send(result);
            }
        }
    }
}

/// Below this many unacknowledged batches the open batch is sent at once.
const EAGER_UNACKED_BATCHES: usize = 1;

/// A deadline that never comes in practice (for a huge linger).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// The next response of the live session, or never if there is none.
async fn next_response(live: &mut Option<Live>) -> Result<Option<AppendResponse>, tonic::Status> {
    match live {
        Some(l) => l.responses.message().await,
        None => std::future::pending().await,
    }
}
