//! The synchronizer's logic, apart from the network: the state and its
//! revision, reading records in, and the optimistic write loop, over any
//! [`Log`] (the real segment, or an in-memory one in the tests below).
//!
//! Rules it keeps: the state is always exactly the records from the
//! segment's head (a whole state) to the revision, each applied once and
//! whole, and changes only by a read or an append the server confirmed; a
//! record is appended only at the revision, so it was decided on every
//! record before it. It never reuses an event number the server may still
//! apply: after an append whose answer never came, it writes under a fresh
//! writer id.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use tokio::time::Instant;

use super::record::{self, Record};
use super::SyncState;
use crate::writer::random_writer_id;
use crate::{Appended, Error, Event};

/// Conflicting attempts one write makes at most (besides its time limit).
pub(crate) const UPDATE_ATTEMPTS_MAX: u32 = 10_000;

/// Times one read starts over at a head that compaction moved meanwhile.
const HEAD_MOVES_MAX: u32 = 16;

/// The segment as the synchronizer uses it.
pub(crate) trait Log {
    /// Appends `record` as one event, event `event_number` of
    /// `writer_id`, only at segment length `expected_length`.
    fn append_at(
        &self,
        writer_id: &str,
        event_number: i64,
        expected_length: u64,
        record: Bytes,
    ) -> impl Future<Output = Result<Appended, Error>> + Send;

    /// The records from offset `from` to `to` (None: the length as of now).
    fn read(
        &self,
        from: u64,
        to: Option<u64>,
    ) -> impl Stream<Item = Result<Event, Error>> + Send + Unpin;

    /// The segment's head: where its latest compacted whole state is.
    fn head(&self) -> impl Future<Output = Result<u64, Error>> + Send;

    /// Moves the head forward to `head` (an event boundary).
    fn truncate(&self, head: u64) -> impl Future<Output = Result<u64, Error>> + Send;
}

pub(crate) struct Core<S> {
    /// The stream's name, for messages.
    name: String,
    state: Option<S>,
    /// The segment offset up to which `state` holds every record.
    revision: u64,
    /// The writer id this synchronizer appends under (its alone) and the
    /// id's next event number.
    writer_id: String,
    next_event_number: i64,
    /// An append was sent and no answer came (retries gave up, or the call
    /// was dropped): the server may have applied it, or may still.
    in_doubt: bool,
    update_timeout: Duration,
}

impl<S: SyncState> Core<S> {
    /// Nothing read yet; reading starts at `head`.
    pub(crate) fn new(name: String, head: u64, update_timeout: Duration) -> Core<S> {
        Core {
            name,
            state: None,
            revision: head,
            writer_id: random_writer_id(),
            next_event_number: 1,
            in_doubt: false,
            update_timeout,
        }
    }

    pub(crate) fn state(&self) -> Option<&S> {
        self.state.as_ref()
    }

    pub(crate) fn revision(&self) -> u64 {
        self.revision
    }

    /// Reads and applies every record from the revision to `to` (None: the
    /// segment's length as of now). A revision below the head (compacted
    /// away) starts over from the whole state at the head.
    pub(crate) async fn fetch<L: Log>(&mut self, log: &L, to: Option<u64>) -> Result<(), Error> {
        let mut to = to;
        let mut moves = 0;
        loop {
            if to.is_some_and(|t| t <= self.revision) {
                return Ok(());
            }
            let err = match self.read_in(log, to).await {
                Ok(()) => return Ok(()),
                Err(e @ Error::OutOfRange(_)) if moves < HEAD_MOVES_MAX => e,
                Err(e) => return Err(e),
            };
            let head = log.head().await?;
            if head <= self.revision {
                return Err(err); // past the end: not a compaction
            }
            tracing::debug!(stream = %self.name, revision = self.revision, head, "compacted past the revision; starting over at the head");
            self.state = None;
            self.revision = head;
            // The head may be past `to` by now: read on to the tail, so the
            // whole state at the head (and what follows it) comes in.
            to = None;
            moves += 1;
        }
    }

    async fn read_in<L: Log>(&mut self, log: &L, to: Option<u64>) -> Result<(), Error> {
        let mut records = log.read(self.revision, to);
        while let Some(event) = records.try_next().await? {
            if event.position.offset != self.revision {
                return Err(Error::Server(format!(
                    "state synchronizer {}: read a record at offset {} but expected one at {}",
                    self.name, event.position.offset, self.revision
                )));
            }
            self.apply_record(&event.payload, event.position.offset)?;
            self.revision = event.next_offset;
        }
        Ok(())
    }

    /// Applies one record read at `offset`, whole or not at all.
    fn apply_record(&mut self, payload: &[u8], offset: u64) -> Result<(), Error> {
        let name = &self.name;
        let corrupt = |why: String| {
            Error::Corrupt(format!(
                "state synchronizer {name}: the record at offset {offset} {why}"
            ))
        };
        match record::decode(payload).map_err(|e| corrupt(format!("does not decode: {e}")))? {
            Record::State(bytes) => {
                let state = S::decode_state(bytes)
                    .map_err(|e| corrupt(format!("holds a state that does not decode: {e}")))?;
                self.state = Some(state);
            }
            Record::Updates(encoded) => {
                // Every update decodes before any applies.
                let updates = encoded
                    .into_iter()
                    .map(S::decode_update)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| corrupt(format!("holds an update that does not decode: {e}")))?;
                let state = self.state.as_mut().ok_or_else(|| {
                    corrupt("holds updates but no whole state comes before it".into())
                })?;
                for u in &updates {
                    state.apply(u);
                }
            }
        }
        Ok(())
    }

    /// Appends the updates `f` decides on the state, at the revision; after
    /// a conflict, catches up and asks `f` again. `Ok(false)`: `f` asked
    /// for none.
    pub(crate) async fn update<L: Log>(
        &mut self,
        log: &L,
        mut f: impl FnMut(&S) -> Vec<S::Update>,
    ) -> Result<bool, Error> {
        let name = self.name.clone();
        let written = self
            .commit(log, |state| {
                let updates = f(state.ok_or_else(|| not_initialized(&name))?);
                if updates.is_empty() {
                    return Ok(None);
                }
                let record = encode_updates::<S>(&updates)?;
                Ok(Some((record, updates)))
            })
            .await?;
        let Some((updates, _)) = written else {
            return Ok(false);
        };
        self.apply_local(&updates);
        Ok(true)
    }

    /// Appends `updates` whatever the state they meet (after a conflict,
    /// at the new revision, the same updates).
    pub(crate) async fn update_unconditionally<L: Log>(
        &mut self,
        log: &L,
        updates: Vec<S::Update>,
    ) -> Result<(), Error> {
        if updates.is_empty() {
            return Ok(());
        }
        let record = encode_updates::<S>(&updates)?;
        let name = self.name.clone();
        let written = self
            .commit(log, |state| {
                state.ok_or_else(|| not_initialized(&name))?;
                Ok(Some((record.clone(), ())))
            })
            .await?;
        if written.is_some() {
            self.apply_local(&updates);
        }
        Ok(())
    }

    /// Writes `initial` as the whole state if there is no state yet.
    /// `Ok(false)`: there was one (then it is the state now).
    pub(crate) async fn initialize<L: Log>(&mut self, log: &L, initial: S) -> Result<bool, Error> {
        let record = record::encode_state(&initial.encode_state())?;
        let written = self
            .commit(log, |state| {
                Ok(state.is_none().then(|| (record.clone(), ())))
            })
            .await?;
        if written.is_none() {
            return Ok(false);
        }
        self.state = Some(initial);
        Ok(true)
    }

    /// Writes the whole state at the revision, then truncates the segment
    /// below it, so readers starting later begin there.
    pub(crate) async fn compact<L: Log>(&mut self, log: &L) -> Result<(), Error> {
        let name = self.name.clone();
        let written = self
            .commit(log, |state| {
                let state = state.ok_or_else(|| not_initialized(&name))?;
                Ok(Some((record::encode_state(&state.encode_state())?, ())))
            })
            .await?;
        if let Some((_, appended)) = written {
            // The record went exactly there (a conditional append); a failed
            // truncation leaves it to the next compaction.
            log.truncate(appended.offset).await?;
        }
        Ok(())
    }

    fn apply_local(&mut self, updates: &[S::Update]) {
        if let Some(state) = self.state.as_mut() {
            for u in updates {
                state.apply(u);
            }
        }
    }

    /// The optimistic loop: `make` turns the state at the revision into a
    /// record (None: nothing to write); it is appended only at the
    /// revision; on a conflict the synchronizer reads up to the length the
    /// server named and asks `make` again, until it writes, `make` declines,
    /// or attempts or time run out. Returns what `make` gave with the
    /// record and where it went; the revision is already past it, so the
    /// caller applies it to the state at once.
    async fn commit<L: Log, T>(
        &mut self,
        log: &L,
        mut make: impl FnMut(Option<&S>) -> Result<Option<(Bytes, T)>, Error>,
    ) -> Result<Option<(T, Appended)>, Error> {
        if self.in_doubt {
            self.fresh_writer_id();
        }
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            let Some((record, made)) = make(self.state.as_ref())? else {
                return Ok(None);
            };
            // In doubt until an answer comes, also if this future is dropped
            // while waiting for it.
            self.in_doubt = true;
            let appended = log
                .append_at(
                    &self.writer_id,
                    self.next_event_number,
                    self.revision,
                    record,
                )
                .await;
            let refused = match appended {
                Ok(appended) => {
                    self.in_doubt = false;
                    self.next_event_number += 1;
                    self.revision = appended.length;
                    return Ok(Some((made, appended)));
                }
                Err(e) if is_refusal(&e) => e,
                Err(e) => return Err(e),
            };
            self.in_doubt = false;
            let Error::ConditionFailed { actual_length, .. } = refused else {
                return Err(refused);
            };
            attempts += 1;
            if attempts >= UPDATE_ATTEMPTS_MAX || started.elapsed() >= self.update_timeout {
                return Err(Error::unavailable_from(
                    format!(
                        "state synchronizer {}: gave up after {attempts} attempts in {:.1} s; other writers kept changing the state first",
                        self.name,
                        started.elapsed().as_secs_f64()
                    ),
                    refused,
                ));
            }
            self.fetch(log, Some(actual_length)).await?;
        }
    }

    /// After an append in doubt: its number may still be applied (its
    /// request may sit in the server until its deadline), so reusing it
    /// could take that append for this one. A fresh writer id starts its
    /// numbers anew; the doubtful append, if it ever applies, is a record
    /// like any other (decided on the state before it, as its condition
    /// makes sure), and the next read takes it in.
    fn fresh_writer_id(&mut self) {
        let old = std::mem::replace(&mut self.writer_id, random_writer_id());
        tracing::debug!(stream = %self.name, old = %old, new = %self.writer_id, "an append is in doubt; writing under a fresh writer id");
        self.next_event_number = 1;
        self.in_doubt = false;
    }
}

/// Errors after which the append certainly was not applied (and its
/// number is free); after any other the outcome is unknown.
fn is_refusal(e: &Error) -> bool {
    matches!(
        e,
        Error::ConditionFailed { .. }
            | Error::InvalidArgument(_)
            | Error::InvalidName(_)
            | Error::NotFound(_)
            | Error::Sealed(_)
            | Error::FailedPrecondition(_)
            | Error::OutOfRange(_)
    )
}

fn encode_updates<S: SyncState>(updates: &[S::Update]) -> Result<Bytes, Error> {
    let encoded: Vec<Vec<u8>> = updates.iter().map(S::encode_update).collect();
    record::encode_updates(&encoded)
}

fn not_initialized(name: &str) -> Error {
    Error::FailedPrecondition(format!(
        "state synchronizer {name} holds no state yet: initialize it first"
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};
    use std::sync::{Arc, Mutex};

    use aquifer_proto::frame;

    use super::*;
    use crate::sync::tests::Counter;
    use crate::Position;

    /// What goes wrong with the next append.
    #[derive(Clone, Copy)]
    enum Fault {
        /// Applied, but the answer never comes.
        AnswerLost,
        /// Never reaches the server.
        NotSent,
        /// No answer; the server applies it just before the next append
        /// (it sat in the server until then).
        Late,
    }

    /// An append as a writer sent it.
    struct Request {
        writer_id: String,
        event_number: i64,
        expected_length: u64,
        record: Bytes,
    }

    /// One segment with the server's rules for conditional appends.
    #[derive(Default)]
    struct Segment {
        /// (offset, payload, next offset)
        records: Vec<(u64, Bytes, u64)>,
        length: u64,
        head: u64,
        writers: HashMap<String, i64>,
        faults: VecDeque<Fault>,
        late: Option<Request>,
    }

    impl Segment {
        /// What the server's state machine answers.
        fn apply(&mut self, r: Request) -> Result<Appended, Error> {
            let size = frame::framed_len(None, r.record.len()) as u64;
            let last = self.writers.get(&r.writer_id).copied().unwrap_or(0);
            if r.event_number <= last {
                return Ok(Appended {
                    offset: r.expected_length,
                    length: r.expected_length + size,
                    duplicate: true,
                });
            }
            if r.event_number != last + 1 {
                return Err(Error::InvalidArgument(format!(
                    "event number {}, expected {}",
                    r.event_number,
                    last + 1
                )));
            }
            if r.expected_length != self.length {
                return Err(Error::ConditionFailed {
                    actual_length: self.length,
                    message: "length differs".into(),
                });
            }
            let offset = self.length;
            self.length += size;
            self.records.push((offset, r.record, self.length));
            self.writers.insert(r.writer_id, r.event_number);
            Ok(Appended {
                offset,
                length: self.length,
                duplicate: false,
            })
        }

        /// Another writer appends a record at the end.
        fn append_other(&mut self, record: Bytes) {
            let offset = self.length;
            self.length += frame::framed_len(None, record.len()) as u64;
            self.records.push((offset, record, self.length));
        }
    }

    /// The segment every synchronizer of a test shares.
    #[derive(Clone, Default)]
    struct MemLog {
        segment: Arc<Mutex<Segment>>,
    }

    impl MemLog {
        fn lock(&self) -> std::sync::MutexGuard<'_, Segment> {
            self.segment.lock().unwrap()
        }
    }

    impl Log for MemLog {
        async fn append_at(
            &self,
            writer_id: &str,
            event_number: i64,
            expected_length: u64,
            record: Bytes,
        ) -> Result<Appended, Error> {
            let mut s = self.lock();
            if let Some(late) = s.late.take() {
                let _ = s.apply(late);
            }
            let request = Request {
                writer_id: writer_id.into(),
                event_number,
                expected_length,
                record,
            };
            match s.faults.pop_front() {
                Some(Fault::NotSent) => Err(Error::unavailable("connection refused")),
                Some(Fault::AnswerLost) => {
                    let _ = s.apply(request);
                    Err(Error::unavailable("answer lost"))
                }
                Some(Fault::Late) => {
                    s.late = Some(request);
                    Err(Error::unavailable("no answer in time"))
                }
                None => s.apply(request),
            }
        }

        fn read(
            &self,
            from: u64,
            to: Option<u64>,
        ) -> impl Stream<Item = Result<Event, Error>> + Send + Unpin {
            let s = self.lock();
            let items: Vec<Result<Event, Error>> = if from < s.head {
                vec![Err(Error::OutOfRange(format!("head is {}", s.head)))]
            } else {
                s.records
                    .iter()
                    .filter(|(o, _, _)| *o >= from && to.is_none_or(|t| *o < t))
                    .map(|(o, payload, next)| {
                        Ok(Event {
                            routing_key: None,
                            payload: payload.clone(),
                            position: Position::new(7, *o),
                            next_offset: *next,
                        })
                    })
                    .collect()
            };
            futures::stream::iter(items)
        }

        async fn head(&self) -> Result<u64, Error> {
            Ok(self.lock().head)
        }

        async fn truncate(&self, head: u64) -> Result<u64, Error> {
            let mut s = self.lock();
            s.head = s.head.max(head);
            Ok(s.head)
        }
    }

    fn core() -> Core<Counter> {
        Core::new("test/sync".into(), 0, Duration::from_secs(10))
    }

    async fn opened(log: &MemLog) -> Core<Counter> {
        let mut c = core();
        c.fetch(log, None).await.unwrap();
        c
    }

    async fn initialized(log: &MemLog) -> Core<Counter> {
        let mut c = opened(log).await;
        assert!(c.initialize(log, Counter(0)).await.unwrap());
        c
    }

    fn value(c: &Core<Counter>) -> u64 {
        c.state().unwrap().0
    }

    #[tokio::test]
    async fn racing_updaters_each_apply_once() {
        let log = MemLog::default();
        let mut a = initialized(&log).await;
        let mut b = opened(&log).await;
        // The second initializer finds the first one's state.
        assert!(!b.initialize(&log, Counter(99)).await.unwrap());
        assert_eq!(value(&b), 0);
        for i in 1..=50 {
            // Each decides on a stale state every time (the other wrote
            // last), is refused, catches up and decides again.
            a.update(&log, |_| vec![1]).await.unwrap();
            b.update(&log, |_| vec![10]).await.unwrap();
            assert_eq!(value(&b), 11 * i);
        }
        a.fetch(&log, None).await.unwrap();
        assert_eq!((value(&a), a.revision()), (550, b.revision()));
        // Nothing was appended that was not decided on the latest state:
        // 1 initial state + 100 update records.
        assert_eq!(log.lock().records.len(), 101);
        // An empty decision writes nothing.
        assert!(!a.update(&log, |_| Vec::new()).await.unwrap());
        assert_eq!(log.lock().records.len(), 101);
    }

    #[tokio::test]
    async fn an_update_applied_without_an_answer_is_read_in_once() {
        let log = MemLog::default();
        let mut c = initialized(&log).await;
        log.lock().faults.push_back(Fault::AnswerLost);
        assert!(c
            .update(&log, |_| vec![5])
            .await
            .unwrap_err()
            .is_retryable());
        assert_eq!(value(&c), 0, "not applied locally: the outcome is unknown");
        // The next update meets the applied one (its revision is stale),
        // reads it in, and decides again, under a fresh writer id.
        c.update(&log, |_| vec![1]).await.unwrap();
        assert_eq!(value(&c), 6);
        let s = log.lock();
        assert_eq!(s.records.len(), 3);
        let mut numbers: Vec<i64> = s.writers.values().copied().collect();
        numbers.sort_unstable();
        assert_eq!(numbers, [1, 2], "the old id wrote 2, the fresh one 1");
    }

    #[tokio::test]
    async fn an_update_that_never_arrived_is_not_applied() {
        let log = MemLog::default();
        let mut c = initialized(&log).await;
        log.lock().faults.push_back(Fault::NotSent);
        assert!(c.update(&log, |_| vec![5]).await.is_err());
        c.update(&log, |_| vec![1]).await.unwrap();
        assert_eq!(value(&c), 1);
        assert_eq!(log.lock().records.len(), 2);
        // Unconditional updates keep the numbering and the local state.
        c.update_unconditionally(&log, vec![2, 3]).await.unwrap();
        let fresh = opened(&log).await;
        assert_eq!((value(&c), value(&fresh)), (6, 6));
    }

    #[tokio::test]
    async fn a_late_update_is_a_record_like_any_other() {
        let log = MemLog::default();
        let mut c = initialized(&log).await;
        log.lock().faults.push_back(Fault::Late);
        assert!(c.update(&log, |_| vec![5]).await.is_err());
        // It applies just before the next append, which then meets it; had
        // that one reused the old number, the server would have called it a
        // duplicate and the +1 would be lost.
        c.update(&log, |_| vec![1]).await.unwrap();
        assert_eq!(value(&c), 6);
        assert_eq!(opened(&log).await.state(), Some(&Counter(6)));
    }

    #[tokio::test]
    async fn compaction_moves_the_head_to_a_whole_state() {
        let log = MemLog::default();
        let mut a = initialized(&log).await;
        let mut behind = opened(&log).await;
        for _ in 0..10 {
            a.update(&log, |_| vec![1]).await.unwrap();
        }
        let before = a.revision();
        a.compact(&log).await.unwrap();
        assert_eq!(log.lock().head, before);
        // A late reader starts at the whole state, even when asked to read
        // only up to an offset the head has passed.
        assert_eq!(value(&opened(&log).await), 10);
        let mut asked_short = core();
        asked_short.fetch(&log, Some(1)).await.unwrap();
        assert_eq!(value(&asked_short), 10);
        // One that read before the compaction finds its revision gone and
        // starts over from the head.
        behind.fetch(&log, None).await.unwrap();
        assert_eq!(value(&behind), 10);
        behind.update(&log, |_| vec![1]).await.unwrap();
        a.fetch(&log, None).await.unwrap();
        assert_eq!(value(&a), 11);
    }

    #[tokio::test]
    async fn bad_records_are_clear_errors() {
        let log = MemLog::default();
        let mut c = core();
        assert!(matches!(
            c.update(&log, |_| vec![1]).await,
            Err(Error::FailedPrecondition(m)) if m.contains("initialize")
        ));
        // Updates with no whole state before them.
        log.lock()
            .append_other(encode_updates::<Counter>(&[1]).unwrap());
        let err = c.fetch(&log, None).await.unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt(m) if m.contains("offset 0") && m.contains("no whole state")),
            "{err}"
        );
        // A state the user's type cannot decode.
        let log = MemLog::default();
        log.lock()
            .append_other(record::encode_state(b"short").unwrap());
        let err = core().fetch(&log, None).await.unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt(m) if m.contains("does not decode")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn endless_conflicts_give_up_clearly() {
        let log = MemLog::default();
        let mut a = initialized(&log).await;
        let mut b = opened(&log).await;
        b.update_timeout = Duration::ZERO;
        let mut tries = 0;
        // Every time b decides, another writer appends first.
        let err = b
            .update(&log, |_| {
                tries += 1;
                log.lock()
                    .append_other(encode_updates::<Counter>(&[1]).unwrap());
                vec![10]
            })
            .await
            .unwrap_err();
        assert!(
            err.is_retryable() && err.to_string().contains("gave up"),
            "{err}"
        );
        // The last refusal is kept as the cause.
        let cause = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some("length differs"));
        assert_eq!(tries, 1);
        // Nothing of b's was written.
        a.fetch(&log, None).await.unwrap();
        assert_eq!(value(&a), 1);
    }
}
