//! The audit writer: one task per node that takes queued records in
//! batches, chains them onto the last record stored in the node's audit
//! segment, and appends each batch as one append under the node's audit
//! writer id, its event numbers the records' sequence numbers.
//!
//! Exactly once and never forked: a batch's bytes depend only on its
//! records and the chain head it was built on, so a retry after a failure
//! re-reads the stored tail and either finds its own last record there
//! (done) or rebuilds the batch on what is stored; the container's writer
//! table turns a resent batch into a duplicate. Owns no storage: the
//! [`AuditLog`] the node provides appends and reads.

use std::future::Future;
use std::time::Duration;

use aquifer_proto::frame::encode_event;
use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::record::{self, Record};
use super::AuditQueue;
use crate::error::Error;

/// Records in one append at most.
const BATCH_RECORDS_MAX: usize = 1024;
/// Bytes of records in one append, about (one more record may pass it).
const BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Waits between attempts after a failure: doubling from the first to the
/// last.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long the writer keeps trying to store what is queued once the node
/// stops.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// The end of the node's audit segment, as its container's leader holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tail {
    pub segment_id: u64,
    /// The last event number applied for the node's audit writer id (0:
    /// none).
    pub last_event_number: i64,
    /// The segment's last event's payload (None: the segment is empty).
    pub last_event: Option<Bytes>,
}

/// Where the writer stores records: the node's audit segment.
pub(crate) trait AuditLog: Send + Sync + 'static {
    /// The audit segment's end, read at its container's leader (so it holds
    /// every append that will ever be applied before the ones that follow).
    fn tail(&self) -> impl Future<Output = Result<Tail, Error>> + Send;

    /// Appends framed `events` (numbered from `first_event_number`) to
    /// `segment_id` under the audit writer id; answers whether it was a
    /// duplicate (numbers already applied, nothing stored).
    fn append(
        &self,
        segment_id: u64,
        first_event_number: i64,
        event_count: u32,
        events: Bytes,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
}

/// Where the next record goes and what it chains to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    segment_id: u64,
    next_seq: u64,
    prev: String,
}

impl Head {
    fn after(tail: &Tail) -> Head {
        let prev = match &tail.last_event {
            None => record::genesis(tail.segment_id),
            Some(bytes) => match Record::decode(bytes) {
                Ok(r) => r.hash,
                Err(_) => record::raw_hash(bytes),
            },
        };
        Head {
            segment_id: tail.segment_id,
            next_seq: u64::try_from(tail.last_event_number).unwrap_or(0) + 1,
            prev,
        }
    }
}

/// A batch built on a head.
struct Batch {
    head: Head,
    events: Bytes,
    count: u32,
    /// The head after it.
    next: Head,
    /// Its last record's bytes: how a stored tail shows the batch is there.
    last: Vec<u8>,
}

fn build(head: &Head, records: &mut [Record]) -> Batch {
    let mut events = BytesMut::new();
    let mut prev = head.prev.clone();
    let mut last = Vec::new();
    for (i, r) in records.iter_mut().enumerate() {
        r.seal(head.next_seq + i as u64, &prev);
        prev = r.hash.clone();
        last = r.encode();
        encode_event(&mut events, None, &last);
    }
    Batch {
        head: head.clone(),
        events: events.freeze(),
        count: records.len() as u32,
        next: Head {
            segment_id: head.segment_id,
            next_seq: head.next_seq + records.len() as u64,
            prev,
        },
        last,
    }
}

/// Runs the writer until `stop`, then stores what is queued for at most
/// [`FINAL_FLUSH`].
pub(crate) async fn run(
    mut queue: AuditQueue,
    log: impl AuditLog,
    mut stop: watch::Receiver<bool>,
) {
    let mut head: Option<Head> = None;
    let mut pending: Vec<Record> = Vec::new();
    // The batch last sent and not known to be stored: a tail that ends
    // with its last record means it was.
    let mut sent: Option<Batch> = None;
    let mut backoff = BACKOFF_MIN;
    // Set once the node stops: what is queued by then is stored until then.
    let mut deadline: Option<Instant> = None;
    loop {
        if pending.is_empty() {
            if deadline.is_none() {
                tokio::select! {
                    r = queue.records.recv() => match r {
                        Some(r) => pending.push(r),
                        None => return,
                    },
                    _ = stop.wait_for(|s| *s) => deadline = Some(Instant::now() + FINAL_FLUSH),
                }
            }
            take_ready(&mut queue, &mut pending);
            if let Some(drops) = queue.drops_record() {
                pending.push(drops);
            }
            if pending.is_empty() {
                return; // stopping, and nothing left
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!(
                records = pending.len(),
                "audit records not stored before the node stopped"
            );
            return;
        }
        match step(&log, &mut head, &mut pending, &mut sent).await {
            Ok(stored) => {
                queue.written.inc_by(stored);
                backoff = BACKOFF_MIN;
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, records = pending.len(), "audit append failed; retrying");
                head = None;
            }
        }
        let pause = backoff;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        match deadline {
            Some(d) => tokio::time::sleep_until(d.min(Instant::now() + pause)).await,
            None => tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|s| *s) => deadline = Some(Instant::now() + FINAL_FLUSH),
            },
        }
    }
}

/// Moves queued records into `pending` without waiting, up to a batch.
fn take_ready(queue: &mut AuditQueue, pending: &mut Vec<Record>) {
    let mut bytes: usize = pending.iter().map(approx_bytes).sum();
    while pending.len() < BATCH_RECORDS_MAX && bytes < BATCH_BYTES_MAX {
        match queue.records.try_recv() {
            Ok(r) => {
                bytes += approx_bytes(&r);
                pending.push(r);
            }
            Err(mpsc::error::TryRecvError::Empty | mpsc::error::TryRecvError::Disconnected) => {
                break
            }
        }
    }
}

/// A record's encoded size, near enough to bound a batch.
fn approx_bytes(r: &Record) -> usize {
    // Field names, numbers and the two hashes.
    256 + r.principal.len() + r.op.len() + r.target.len() + r.detail.len()
}

/// One attempt to store `pending`: learns the head if unknown (finding out
/// whether the batch `sent` before is stored), then appends. Answers the
/// records stored (0 when the tail showed an earlier attempt had stored
/// them).
async fn step(
    log: &impl AuditLog,
    head: &mut Option<Head>,
    pending: &mut Vec<Record>,
    sent: &mut Option<Batch>,
) -> Result<u64, Error> {
    let h = match head {
        Some(h) => h.clone(),
        None => {
            let tail = log.tail().await?;
            if let Some(batch) = sent.take() {
                if stored(&batch, &tail) {
                    pending.clear();
                    *head = Some(batch.next);
                    return Ok(0);
                }
            }
            let h = Head::after(&tail);
            *head = Some(h.clone());
            h
        }
    };
    let batch = build(&h, pending);
    let first = i64::try_from(batch.head.next_seq)
        .map_err(|_| Error::Internal("audit sequence numbers overflow".into()))?;
    let appended = log
        .append(h.segment_id, first, batch.count, batch.events.clone())
        .await;
    match appended {
        Ok(false) => {
            let n = u64::from(batch.count);
            *head = Some(batch.next);
            pending.clear();
            Ok(n)
        }
        Ok(true) => {
            // Numbers already taken: by an earlier attempt of this batch,
            // or by records a previous run of this node left in flight.
            // The tail tells which.
            *sent = Some(batch);
            Err(Error::Unavailable(
                "audit batch answered as a duplicate; re-reading the stored tail".into(),
            ))
        }
        Err(e) => {
            *sent = Some(batch);
            Err(e)
        }
    }
}

/// Whether `tail` ends with `batch` (its last record at its last number).
fn stored(batch: &Batch, tail: &Tail) -> bool {
    tail.segment_id == batch.head.segment_id
        && u64::try_from(tail.last_event_number).ok() == Some(batch.next.next_seq - 1)
        && tail.last_event.as_deref() == Some(batch.last.as_slice())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use aquifer_proto::frame::FrameIter;

    use super::*;
    use crate::audit::record::Chain;
    use crate::audit::{Audit, AuditConfig, AuditRecord, Outcome};
    use crate::auth::Principal;
    use crate::metrics::Metrics;

    /// An in-memory audit segment with a writer table, that can fail the
    /// next appends before or after storing them.
    #[derive(Clone, Default)]
    struct MemLog(Arc<Mutex<Mem>>);

    #[derive(Default)]
    struct Mem {
        events: Vec<Bytes>,
        last_number: i64,
        /// Fail this many appends without storing them.
        fail_before: u32,
        /// Store this many appends but answer an error (the answer lost).
        fail_after: u32,
        appends: u32,
    }

    impl AuditLog for MemLog {
        async fn tail(&self) -> Result<Tail, Error> {
            let m = self.0.lock().unwrap();
            Ok(Tail {
                segment_id: 7,
                last_event_number: m.last_number,
                last_event: m.events.last().cloned(),
            })
        }

        async fn append(
            &self,
            segment_id: u64,
            first: i64,
            count: u32,
            events: Bytes,
        ) -> Result<bool, Error> {
            assert_eq!(segment_id, 7);
            let mut m = self.0.lock().unwrap();
            m.appends += 1;
            if m.fail_before > 0 {
                m.fail_before -= 1;
                return Err(Error::Unavailable("down".into()));
            }
            let last = first + i64::from(count) - 1;
            if last <= m.last_number {
                return Ok(true);
            }
            assert_eq!(first, m.last_number + 1, "no gap, no overlap");
            for e in FrameIter::new(events, 0, usize::MAX) {
                m.events.push(e.unwrap().payload);
            }
            m.last_number = last;
            if m.fail_after > 0 {
                m.fail_after -= 1;
                return Err(Error::Unavailable("answer lost".into()));
            }
            Ok(false)
        }
    }

    impl MemLog {
        fn ops(&self) -> Vec<String> {
            let m = self.0.lock().unwrap();
            let mut chain = Chain::new(7, true);
            m.events
                .iter()
                .map(|e| chain.push(e).expect("the chain verifies").op)
                .collect()
        }
    }

    fn audit(queue_records: usize) -> (Audit, AuditQueue, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let config = AuditConfig {
            enabled: true,
            queue_records,
        };
        let (audit, queue) = Audit::new(&config, 1, &metrics);
        (audit, queue.unwrap(), metrics)
    }

    fn record(audit: &Audit, op: &str) {
        audit.record(AuditRecord {
            principal: &Principal::anonymous(),
            operation: op,
            target: "a/b".into(),
            outcome: Outcome::Ok,
            bytes: 0,
        });
    }

    async fn wait_for_ops(log: &MemLog, n: usize) -> Vec<String> {
        for _ in 0..500 {
            let ops = log.ops();
            if ops.len() >= n {
                return ops;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("only {:?} stored", log.ops());
    }

    fn names(range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|i| format!("op{i}")).collect()
    }

    #[tokio::test]
    async fn records_are_chained_in_order_and_a_restart_continues_the_chain() {
        let log = MemLog::default();
        let (audit, queue, metrics) = audit(100);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(queue, log.clone(), stopped));
        for i in 0..10 {
            record(&audit, &format!("op{i}"));
        }
        assert_eq!(wait_for_ops(&log, 10).await, names(0..10));
        stop.send_replace(true);
        task.await.unwrap();
        assert_eq!(metrics.audit_records_written.get(), 10);
        // A new run (a restarted node) chains onto what is stored.
        let (audit, queue, _) = self::audit(100);
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(run(queue, log.clone(), stopped));
        for i in 10..15 {
            record(&audit, &format!("op{i}"));
        }
        assert_eq!(wait_for_ops(&log, 15).await, names(0..15));
    }

    #[tokio::test]
    async fn failed_appends_are_retried_without_duplicates() {
        let log = MemLog::default();
        log.0.lock().unwrap().fail_before = 2;
        let (audit, queue, _) = audit(100);
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(run(queue, log.clone(), stopped));
        record(&audit, "op0");
        assert_eq!(wait_for_ops(&log, 1).await, names(0..1));
        // Stored, but the answer lost: the retry finds it in the tail.
        log.0.lock().unwrap().fail_after = 1;
        record(&audit, "op1");
        assert_eq!(wait_for_ops(&log, 2).await, names(0..2));
        record(&audit, "op2");
        assert_eq!(wait_for_ops(&log, 3).await, names(0..3));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(log.ops(), names(0..3), "nothing stored twice");
    }

    #[tokio::test]
    async fn records_a_previous_run_left_in_flight_are_chained_onto_not_forked() {
        let log = MemLog::default();
        // A previous run stored op0 (seq 1) and had op1 in flight, applied
        // only after this run read the tail.
        let mut prev_run = vec![Record::decode(&{
            let mut r = test_record("op0");
            r.seal(1, &record::genesis(7));
            r.encode()
        })
        .unwrap()];
        let mut op1 = test_record("op1");
        op1.seal(2, &prev_run[0].hash);
        prev_run.push(op1);
        {
            let mut m = log.0.lock().unwrap();
            m.events.push(Bytes::from(prev_run[0].encode()));
            m.last_number = 1;
        }
        let (audit, queue, _) = audit(100);
        let (_stop, stopped) = watch::channel(false);
        // Learn the tail (seq 1), then let op1 land before our first append.
        let late = log.clone();
        let late_op1 = Bytes::from(prev_run[1].encode());
        let wrapper = LateLog {
            inner: log.clone(),
            late: Mutex::new(Some(Box::new(move || {
                let mut m = late.0.lock().unwrap();
                m.events.push(late_op1.clone());
                m.last_number = 2;
            }))),
        };
        tokio::spawn(run(queue, wrapper, stopped));
        record(&audit, "new");
        assert_eq!(wait_for_ops(&log, 3).await, ["op0", "op1", "new"]);
    }

    /// A log whose first append finds another append landed just before.
    struct LateLog {
        inner: MemLog,
        late: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    impl AuditLog for LateLog {
        async fn tail(&self) -> Result<Tail, Error> {
            self.inner.tail().await
        }

        async fn append(&self, s: u64, f: i64, c: u32, e: Bytes) -> Result<bool, Error> {
            let late = self.late.lock().unwrap().take();
            if let Some(late) = late {
                late();
            }
            self.inner.append(s, f, c, e).await
        }
    }

    fn test_record(op: &str) -> Record {
        Record {
            v: record::VERSION,
            seq: 0,
            time_ms: 1,
            node: 1,
            principal: "p".into(),
            op: op.into(),
            target: String::new(),
            outcome: record::OutcomeKind::Ok,
            detail: String::new(),
            bytes: 0,
            prev: String::new(),
            hash: String::new(),
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_newest_counts_and_records_the_loss() {
        let log = MemLog::default();
        let (audit, queue, metrics) = audit(3);
        for i in 0..5 {
            record(&audit, &format!("op{i}"));
        }
        assert_eq!(metrics.audit_records_dropped.get(), 2);
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(run(queue, log.clone(), stopped));
        let ops = wait_for_ops(&log, 4).await;
        assert_eq!(ops, ["op0", "op1", "op2", "audit.dropped"]);
        let m = log.0.lock().unwrap();
        let lost = Record::decode(&m.events[3]).unwrap();
        assert!(
            lost.detail.starts_with("2 audit records dropped"),
            "{lost:?}"
        );
    }

    #[test]
    fn a_head_after_an_undecodable_record_chains_to_its_raw_hash() {
        let tail = Tail {
            segment_id: 3,
            last_event_number: 4,
            last_event: Some(Bytes::from_static(b"garbage")),
        };
        let h = Head::after(&tail);
        assert_eq!(h.next_seq, 5);
        assert_eq!(h.prev, record::raw_hash(b"garbage"));
        let empty = Head::after(&Tail {
            segment_id: 3,
            last_event_number: 0,
            last_event: None,
        });
        assert_eq!((empty.next_seq, empty.prev), (1, record::genesis(3)));
    }
}
