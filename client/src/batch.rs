//! The pure bookkeeping of one append session: batching framed events,
//! numbering them, matching acks, and deciding what to resend after a
//! reconnect. No I/O, no clocks beyond remembering when a batch opened, so
//! the exactly-once rules are unit-tested here without a server.
//!
//! Rules it enforces:
//! - what is pushed is a run: one or more framed events of one routing key,
//!   with one token (a writer's `write_batch` call, or a single event);
//! - a batch holds whole runs, at most `max_batch_bytes` of them unless a
//!   single run is larger (then it travels alone); a run of over half a
//!   batch that finds no batch open travels alone too, in the buffer it
//!   was framed into (no copy);
//! - event numbers are given out once, when a batch is first sent, in send
//!   order and contiguously; a batch keeps its numbers and its bytes forever
//!   (never renumbered, never re-batched);
//! - after a reconnect, batches whose last number is at or below the
//!   server's last applied number are done (duplicates); the rest are sent
//!   again in their original order;
//! - tokens (one per run) come out in the order the runs went in.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::proto::AppendBatch;

/// Framed events of one routing key, back to back: what one push adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Events {
    pub framed: Bytes,
    /// How many events `framed` holds (at least 1).
    pub count: u32,
}

/// One pushed run's place in its batch.
#[derive(Debug)]
struct Run<T> {
    len: u32,
    count: u32,
    token: T,
}

/// A batch under construction.
#[derive(Debug)]
struct Open<T> {
    data: BytesMut,
    count: u32,
    runs: Vec<Run<T>>,
    opened_at: Instant,
}

/// A sealed batch: its bytes never change again.
#[derive(Debug)]
struct Batch<T> {
    /// Given out when the batch is first sent.
    first_event_number: Option<i64>,
    data: Bytes,
    /// Events in `data`.
    count: u32,
    /// Its runs, in order.
    runs: Vec<Run<T>>,
}

// A batch's event count and each run's framed length fit a u32 (and its
// count an i64): a run is at most CLIENT_EVENT_BYTES_MAX (the writer cuts
// runs at the batch size and refuses larger events before they reach a
// batch), and a batch of framed events, each at least a frame header long,
// holds fewer events than bytes.
const _: () = assert!(crate::writer::CLIENT_EVENT_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(aquifer_proto::wire::CLIENT_MESSAGE_BYTES_MAX <= u32::MAX as usize);

impl<T> Batch<T> {
    fn count(&self) -> i64 {
        i64::from(self.count)
    }

    /// Last event number, if numbered.
    fn last_event_number(&self) -> Option<i64> {
        self.first_event_number.map(|f| f + self.count() - 1)
    }

    fn to_proto(&self, first: i64) -> AppendBatch {
        AppendBatch {
            first_event_number: first,
            event_count: self.count,
            events: self.data.clone(),
        }
    }

    /// Tokens with the offset of each run's first event: consecutive from
    /// `base`, or all unknown.
    fn resolve(self, base: Option<u64>, out: &mut Vec<(T, Option<u64>)>) {
        let mut offset = base;
        for run in self.runs {
            out.push((run.token, offset));
            offset = offset.map(|o| o.saturating_add(u64::from(run.len)));
        }
    }
}

/// An ack that does not fit the batches in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolViolation(pub String);

/// Batches of one (writer, segment) session, from first event to ack.
#[derive(Debug)]
pub struct BatchQueue<T> {
    max_batch_bytes: usize,
    open: Option<Open<T>>,
    /// Sealed, not sent on the current connection (numbered ones first).
    ready: VecDeque<Batch<T>>,
    /// Sent on the current connection, waiting for their acks, in order.
    in_flight: VecDeque<Batch<T>>,
    /// The number the next unnumbered batch starts at; None until the first
    /// setup answered.
    next_event_number: Option<i64>,
    pushed: u64,
    resolved: u64,
}

impl<T> BatchQueue<T> {
    /// An empty queue cutting batches at `max_batch_bytes` (at least 1).
    pub fn new(max_batch_bytes: usize) -> Self {
        BatchQueue {
            max_batch_bytes: max_batch_bytes.max(1),
            open: None,
            ready: VecDeque::new(),
            in_flight: VecDeque::new(),
            next_event_number: None,
            pushed: 0,
            resolved: 0,
        }
    }

    /// Adds one run of framed events. It joins the open batch if it fits,
    /// else the open batch is sealed and a new one started; a run of at
    /// least `max_batch_bytes` is sealed alone at once, and so is one of over
    /// half of it that finds no batch open (in its own buffer).
    pub fn push(&mut self, events: Events, token: T, now: Instant) {
        let len = events.framed.len();
        // Fits: the writer cuts runs at the batch size and refuses events
        // over CLIENT_EVENT_BYTES_MAX.
        let run = Run {
            len: len as u32,
            count: events.count,
            token,
        };
        self.pushed += 1;
        if let Some(open) = &self.open {
            if open.data.len() + len > self.max_batch_bytes {
                self.seal();
            }
        }
        if self.open.is_none() && len.saturating_mul(2) > self.max_batch_bytes {
            self.ready.push_back(Batch {
                first_event_number: None,
                data: events.framed,
                count: run.count,
                runs: vec![run],
            });
            return;
        }
        let max = self.max_batch_bytes;
        let open = self.open.get_or_insert_with(|| Open {
            data: BytesMut::with_capacity(len.max(max.min(64 * 1024))),
            count: 0,
            runs: Vec::new(),
            opened_at: now,
        });
        open.data.extend_from_slice(&events.framed);
        open.count = open.count.saturating_add(run.count);
        open.runs.push(run);
        if open.data.len() >= self.max_batch_bytes {
            self.seal();
        }
    }

    /// Seals the open batch (linger expired, flush, close).
    pub fn seal(&mut self) {
        if let Some(open) = self.open.take() {
            if !open.runs.is_empty() {
                self.ready.push_back(Batch {
                    first_event_number: None,
                    data: open.data.freeze(),
                    count: open.count,
                    runs: open.runs,
                });
            }
        }
    }

    /// Sealed batches not yet acknowledged (waiting to be sent or in flight).
    pub fn unacked_batches(&self) -> usize {
        self.ready.len() + self.in_flight.len()
    }

    /// When the open batch got its first event, if there is one.
    pub fn open_since(&self) -> Option<Instant> {
        self.open.as_ref().map(|o| o.opened_at)
    }

    /// The next batch to send on the current connection, numbered; None when
    /// nothing is ready or numbering is not known yet (no setup answer).
    pub fn next_to_send(&mut self) -> Option<AppendBatch> {
        let next = self.next_event_number?;
        let mut batch = self.ready.pop_front()?;
        let first = match batch.first_event_number {
            Some(first) => first,
            None => {
                batch.first_event_number = Some(next);
                self.next_event_number = Some(next + batch.count());
                next
            }
        };
        let msg = batch.to_proto(first);
        self.in_flight.push_back(batch);
        Some(msg)
    }

    /// Handles an ack: resolves the acked batch (and, leniently, earlier
    /// batches the ack also covers). Each token comes with its event's
    /// first event's offset (`None` for duplicates).
    pub fn on_ack(
        &mut self,
        last_event_number: i64,
        offset: u64,
        duplicate: bool,
    ) -> Result<Vec<(T, Option<u64>)>, ProtocolViolation> {
        let front_last = match self.in_flight.front().and_then(Batch::last_event_number) {
            Some(last) => last,
            None => {
                return Err(ProtocolViolation(format!(
                    "server acknowledged event {last_event_number} but no batch was in flight"
                )))
            }
        };
        if last_event_number < front_last {
            return Err(ProtocolViolation(format!(
                "server acknowledged event {last_event_number} but the oldest batch in flight ends at event {front_last}"
            )));
        }
        let mut out = Vec::new();
        while let Some(last) = self.in_flight.front().and_then(Batch::last_event_number) {
            if last > last_event_number {
                break;
            }
            if let Some(batch) = self.in_flight.pop_front() {
                let exact = last == last_event_number && !duplicate;
                batch.resolve(exact.then_some(offset), &mut out);
            }
        }
        self.resolved += out.len() as u64;
        Ok(out)
    }

    /// The connection is gone: what was in flight must go again, ahead of
    /// what was never sent.
    pub fn on_disconnect(&mut self) {
        while let Some(batch) = self.in_flight.pop_back() {
            self.ready.push_front(batch);
        }
    }

    /// A (re)connected session's setup answered `server_last` (the last
    /// event number the server applied for this writer). Returns the tokens
    /// of batches the server already has (done, offsets unknown); keeps the
    /// rest, with their numbers, for resending. Calls `on_disconnect` first.
    pub fn on_setup(&mut self, server_last: i64) -> Vec<(T, Option<u64>)> {
        self.on_disconnect();
        let mut out = Vec::new();
        while let Some(last) = self.ready.front().and_then(Batch::last_event_number) {
            if last > server_last {
                break;
            }
            if let Some(batch) = self.ready.pop_front() {
                batch.resolve(None, &mut out);
            }
        }
        self.resolved += out.len() as u64;
        let server_next = server_last.saturating_add(1).max(1);
        let next = match self.next_event_number {
            None => server_next,
            Some(next) => {
                if server_next > next {
                    // The server has numbers this writer never gave out:
                    // another writer uses the same writer id.
                    tracing::warn!(
                        server_last,
                        next,
                        "the server knows event numbers this writer never sent; is the writer id shared?"
                    );
                }
                next.max(server_next)
            }
        };
        self.next_event_number = Some(next);
        out
    }

    /// Removes every event (open, ready, in flight), e.g. to fail them.
    pub fn drain_all(&mut self) -> Vec<T> {
        self.on_disconnect();
        self.seal();
        let mut out = Vec::new();
        for batch in self.ready.drain(..) {
            out.extend(batch.runs.into_iter().map(|r| r.token));
        }
        self.resolved += out.len() as u64;
        out
    }

    /// Like [`drain_all`](Self::drain_all), but each token comes with its
    /// run's framed events (a slice of its batch's bytes, no copy), in the
    /// order they were pushed: what a writer moves to a sealed segment's
    /// successors. Call it only after `on_setup` told what the server has
    /// (else applied events would be moved, hence duplicated).
    pub fn drain_all_framed(&mut self) -> Vec<(Events, T)> {
        self.on_disconnect();
        self.seal();
        let mut out = Vec::new();
        for batch in self.ready.drain(..) {
            let mut at = 0usize;
            for run in batch.runs {
                let end = at + run.len as usize;
                let events = Events {
                    framed: batch.data.slice(at..end),
                    count: run.count,
                };
                out.push((events, run.token));
                at = end;
            }
        }
        self.resolved += out.len() as u64;
        out
    }

    /// Runs pushed so far.
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Runs resolved (acked, duplicate or drained) so far; tokens resolve
    /// in push order, so every run up to this count is done.
    pub fn resolved(&self) -> u64 {
        self.resolved
    }

    /// No run is waiting for anything.
    pub fn is_empty(&self) -> bool {
        self.pushed == self.resolved
    }

    /// Batches sealed but not sent on the current connection.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Batches sent and not yet acked.
    pub fn in_flight_batches(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;
    use aquifer_proto::frame;

    fn framed(payload: &[u8]) -> Events {
        let mut b = BytesMut::new();
        frame::encode_event(&mut b, None, payload);
        Events {
            framed: b.freeze(),
            count: 1,
        }
    }

    fn tokens(v: Vec<(u32, Option<u64>)>) -> Vec<u32> {
        v.into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn cuts_batches_by_size_and_keeps_big_events_alone() {
        let ev = framed(&[7u8; 90]); // 100 bytes framed
        assert_eq!(ev.framed.len(), 100);
        let now = Instant::now();
        let mut q = BatchQueue::new(250);
        q.push(ev.clone(), 1, now);
        q.push(ev.clone(), 2, now);
        assert!(!q.has_ready());
        q.push(ev.clone(), 3, now); // would make 300 > 250: seals [1, 2]
        assert!(q.has_ready());
        let big = framed(&[1u8; 500]);
        q.push(big.clone(), 4, now); // seals [3], then [4] alone at once
        assert!(q.open_since().is_none());
        q.push(ev.clone(), 5, now);
        q.seal();
        assert!(q.open_since().is_none());

        q.on_setup(0);
        let sent: Vec<proto::AppendBatch> = std::iter::from_fn(|| q.next_to_send()).collect();
        let shape: Vec<(i64, u32, usize)> = sent
            .iter()
            .map(|b| (b.first_event_number, b.event_count, b.events.len()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (1, 2, 200),
                (3, 1, 100),
                (4, 1, big.framed.len()),
                (5, 1, 100)
            ]
        );
        // The bytes are the framed events, decodable.
        let evs: Vec<_> = frame::FrameIter::new(sent[0].events.clone(), 0, 1 << 20)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(evs.len(), 2);
    }

    #[test]
    fn numbering_starts_after_server_last_and_acks_carry_offsets() {
        let ev = framed(b"0123456789"); // 20 bytes framed
        let now = Instant::now();
        let mut q = BatchQueue::new(40);
        for t in 0..5 {
            q.push(ev.clone(), t, now);
        }
        q.seal();
        // Nothing goes out before setup tells the numbering.
        assert!(q.next_to_send().is_none());
        assert!(q.on_setup(41).is_empty());
        let b1 = q.next_to_send().unwrap();
        let b2 = q.next_to_send().unwrap();
        let b3 = q.next_to_send().unwrap();
        assert!(q.next_to_send().is_none());
        assert_eq!((b1.first_event_number, b1.event_count), (42, 2));
        assert_eq!((b2.first_event_number, b2.event_count), (44, 2));
        assert_eq!((b3.first_event_number, b3.event_count), (46, 1));
        assert_eq!(q.in_flight_batches(), 3);

        let done = q.on_ack(43, 1000, false).unwrap();
        assert_eq!(done, vec![(0, Some(1000)), (1, Some(1020))]);
        // A duplicate ack: offsets unknown.
        let done = q.on_ack(45, 0, true).unwrap();
        assert_eq!(done, vec![(2, None), (3, None)]);
        assert_eq!(q.resolved(), 4);
        assert!(!q.is_empty());
        // An ack that goes backwards is a protocol violation.
        assert!(q.on_ack(45, 0, false).is_err());
        assert_eq!(tokens(q.on_ack(46, 1080, false).unwrap()), vec![4]);
        assert!(q.is_empty());
        assert!(q.on_ack(47, 0, false).is_err());
    }

    #[test]
    fn resend_after_reconnect_drops_what_the_server_has_and_never_renumbers() {
        let ev = framed(b"0123456789"); // 20 bytes
        let now = Instant::now();
        let mut q = BatchQueue::new(40);
        for t in 0..6 {
            q.push(ev.clone(), t, now);
        }
        q.seal();
        q.on_setup(0);
        let first: Vec<_> = std::iter::from_fn(|| q.next_to_send()).collect();
        assert_eq!(
            first
                .iter()
                .map(|b| b.first_event_number)
                .collect::<Vec<_>>(),
            vec![1, 3, 5]
        );
        // Batch 1-2 acked; then the connection dies with 3-4 and 5-6 in
        // flight, and two more events arrive meanwhile.
        assert_eq!(tokens(q.on_ack(2, 0, false).unwrap()), vec![0, 1]);
        q.on_disconnect();
        q.push(ev.clone(), 6, now);
        q.push(ev.clone(), 7, now);
        q.seal();
        // The server had applied 3-4 before dying: they are done.
        let dups = q.on_setup(4);
        assert_eq!(dups, vec![(2, None), (3, None)]);
        let resent: Vec<_> = std::iter::from_fn(|| q.next_to_send()).collect();
        assert_eq!(resent.len(), 2);
        // 5-6 goes again with the same numbers and the same bytes ...
        assert_eq!(resent[0].first_event_number, 5);
        assert_eq!(resent[0].event_count, 2);
        assert_eq!(resent[0].events, first[2].events);
        // ... and the new events continue the numbering.
        assert_eq!(
            (resent[1].first_event_number, resent[1].event_count),
            (7, 2)
        );
        assert_eq!(tokens(q.on_ack(6, 0, false).unwrap()), vec![4, 5]);
        assert_eq!(tokens(q.on_ack(8, 0, false).unwrap()), vec![6, 7]);
        assert!(q.is_empty());
    }

    #[test]
    fn reconnect_where_the_server_lost_nothing_and_had_nothing() {
        let ev = framed(b"x");
        let now = Instant::now();
        let mut q = BatchQueue::new(1);
        q.push(ev.clone(), 0, now);
        q.push(ev.clone(), 1, now);
        q.on_setup(10);
        let a = q.next_to_send().unwrap();
        let b = q.next_to_send().unwrap();
        assert_eq!((a.first_event_number, b.first_event_number), (11, 12));
        // Reconnect twice; the server never got either batch.
        assert!(q.on_setup(10).is_empty());
        assert!(q.on_setup(10).is_empty());
        let again: Vec<_> = std::iter::from_fn(|| q.next_to_send()).collect();
        assert_eq!(
            again
                .iter()
                .map(|b| b.first_event_number)
                .collect::<Vec<_>>(),
            vec![11, 12]
        );
        // The server got both before the next failure.
        let dups = q.on_setup(12);
        assert_eq!(tokens(dups), vec![0, 1]);
        assert!(q.is_empty());
        // New events continue after 12.
        q.push(ev.clone(), 2, now);
        assert_eq!(q.next_to_send().unwrap().first_event_number, 13);
    }

    #[test]
    fn writer_id_clash_moves_unsent_numbers_past_the_server() {
        let ev = framed(b"x");
        let now = Instant::now();
        let mut q = BatchQueue::<u32>::new(1);
        q.on_setup(0);
        q.push(ev.clone(), 0, now);
        assert_eq!(q.next_to_send().unwrap().first_event_number, 1);
        assert_eq!(tokens(q.on_ack(1, 0, false).unwrap()), vec![0]);
        q.push(ev.clone(), 1, now);
        assert!(q.on_setup(100).is_empty());
        assert_eq!(q.next_to_send().unwrap().first_event_number, 101);
    }

    #[test]
    fn drain_all_returns_every_pending_token_in_order() {
        let ev = framed(b"abc");
        let now = Instant::now();
        let mut q = BatchQueue::new(ev.framed.len() * 2);
        for t in 0..5 {
            q.push(ev.clone(), t, now);
        }
        q.on_setup(0);
        let _ = q.next_to_send();
        assert_eq!(q.drain_all(), vec![0, 1, 2, 3, 4]);
        assert!(q.is_empty());
        assert_eq!(q.pushed(), 5);
        assert_eq!(q.resolved(), 5);
    }

    #[test]
    fn drain_all_framed_keeps_what_the_server_lacks_in_order_with_its_bytes() {
        let now = Instant::now();
        let evs: Vec<Events> = (0..5u8).map(|i| framed(&[i; 10])).collect();
        let mut q = BatchQueue::new(evs[0].framed.len() * 2);
        for (t, e) in evs.iter().enumerate() {
            q.push(e.clone(), t as u32, now);
        }
        q.on_setup(0);
        let _ = q.next_to_send(); // 1-2
        let _ = q.next_to_send(); // 3-4; event 5 stays open
                                  // The segment is sealed; the server applied 1-2 only.
        assert_eq!(tokens(q.on_setup(2)), vec![0, 1]);
        let left = q.drain_all_framed();
        assert_eq!(
            left.iter().map(|(_, t)| *t).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        for (events, t) in &left {
            assert_eq!(events, &evs[*t as usize]);
        }
        assert!(q.is_empty());
    }

    /// `count` events of `payload` framed back to back, as one run.
    fn run(payload: &[u8], count: u32) -> Events {
        let mut b = BytesMut::new();
        for _ in 0..count {
            frame::encode_event(&mut b, Some("k"), payload);
        }
        Events {
            framed: b.freeze(),
            count,
        }
    }

    #[test]
    fn runs_count_their_events_and_resolve_with_their_first_offset() {
        let now = Instant::now();
        let three = run(b"abc", 3);
        let one = framed(b"z");
        let mut q = BatchQueue::new(1000);
        q.push(three.clone(), 0, now);
        q.push(one.clone(), 1, now);
        q.push(run(b"de", 2), 2, now);
        q.seal();
        assert_eq!(q.pushed(), 3);
        q.on_setup(9);
        let b = q.next_to_send().unwrap();
        assert_eq!((b.first_event_number, b.event_count), (10, 6));
        let evs: Vec<_> = frame::FrameIter::new(b.events.clone(), 0, 1 << 20)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(evs.len(), 6);
        let at1 = 500 + three.framed.len() as u64;
        let at2 = at1 + one.framed.len() as u64;
        assert_eq!(
            q.on_ack(15, 500, false).unwrap(),
            vec![(0, Some(500)), (1, Some(at1)), (2, Some(at2))]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn a_run_over_half_a_batch_travels_in_its_own_buffer() {
        let now = Instant::now();
        let big = run(&[5u8; 100], 4);
        let mut q = BatchQueue::new(big.framed.len() * 2 - 1);
        q.push(big.clone(), 0, now);
        assert!(q.open_since().is_none());
        // With a batch open it is copied in after it, if it fits.
        q.push(framed(b"a"), 1, now);
        q.push(big.clone(), 2, now);
        q.seal();
        q.on_setup(0);
        let first = q.next_to_send().unwrap();
        assert_eq!(first.events.as_ptr(), big.framed.as_ptr());
        assert_eq!(first.event_count, 4);
        let second = q.next_to_send().unwrap();
        assert_eq!((second.first_event_number, second.event_count), (5, 5));
        // A sealed segment's hand-over gets the runs back whole.
        assert_eq!(tokens(q.on_setup(4)), vec![0]);
        let left = q.drain_all_framed();
        assert_eq!(
            left.iter().map(|(e, t)| (e.count, *t)).collect::<Vec<_>>(),
            vec![(1, 1), (4, 2)]
        );
        assert_eq!(left[1].0, big);
    }
}
