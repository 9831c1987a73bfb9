//! The comparison's workloads, written once against the `Broker` trait so
//! every broker runs exactly the same load: P producers over N partitions
//! (producer i writes partitions i, i + P, ..., a batch to each in turn),
//! each keeping at most `depth` batches of at most `batch_max` events
//! unacknowledged, either as fast as acks allow or paced at a fixed rate;
//! a tailing consumer for end-to-end latency; a catch-up read of a backlog.
//!
//! Latency is measured from the moment an event was due: the batch's send
//! for max-rate loads, the event's scheduled time for paced ones (so time
//! spent waiting for a free slot counts, not only the broker's service
//! time). Only events acknowledged (or, for the tailing consumer, received)
//! inside the measurement window count, and throughput is their number over
//! the window: a broker that falls behind a paced load still shows the rate
//! it sustained and the latency its events saw.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;

use crate::broker::{Broker, Consumer, Producer};
use crate::workloads::{histogram, Window};

/// Time allowed for outstanding acks, or for a consumer's next event,
/// before the workload gives up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound on the events one producer sends in one workload, whatever
/// the broker's speed (every load loop is bounded in count and time).
const EVENTS_PER_PRODUCER_MAX: u64 = 50_000_000;

/// One produce workload.
#[derive(Debug, Clone)]
pub struct Load {
    pub topic: String,
    /// Producers, each its own connection as far as the file-descriptor
    /// limit allows (beyond it they share connections; see `fd_budget`).
    pub producers: u32,
    /// Partitions of the topic: producer i writes partitions i, i +
    /// producers, ..., one batch to each in turn (with more producers than
    /// partitions, producer i writes partition i mod partitions).
    pub partitions: u32,
    pub payload_bytes: usize,
    /// Events per send.
    pub batch_max: usize,
    /// Sends in flight per producer.
    pub depth: usize,
    /// Total events/s over all producers; None: as fast as acks allow.
    /// Paced producers are spread evenly over one event's interval, not
    /// due at the same instants.
    pub rate: Option<f64>,
    /// Payloads start with 8 bytes: the due time in ns since `base`.
    pub timestamped: bool,
}

impl Load {
    /// The partitions producer `i` writes.
    fn partitions_of(&self, i: u32) -> Vec<u32> {
        if self.producers > self.partitions {
            return vec![i % self.partitions];
        }
        (i..self.partitions)
            .step_by(self.producers as usize)
            .collect()
    }
}

/// Producers opened at once while a workload starts.
const OPENING_AT_ONCE: usize = 64;
/// How long one producer may take to open before it counts as an error.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// File descriptors left to everything but producers' sockets, in the load
/// generator and in the server (its files, peers, listeners).
const FDS_SPARE: usize = 2048;

/// Sockets the load generator may still open for producers: its open-file
/// limit (raised to the hard limit by `raise_fd_limit`) less what it holds
/// open now (a client library may keep a closed broker's sockets a while)
/// and `FDS_SPARE`. The server under test has the same limit and one
/// socket per client socket.
pub fn fd_budget() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let limit = if rc == 0 { lim.rlim_cur as usize } else { 1024 };
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
    limit.saturating_sub(open + FDS_SPARE).max(64)
}

/// Raises this process's open-file limit to its hard limit (inherited by
/// the servers it starts); returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

#[derive(Debug)]
pub struct ProduceResult {
    /// Events (and payload bytes) acknowledged inside the window.
    pub events: u64,
    pub bytes: u64,
    pub secs: f64,
    /// Ack latency of those events, µs.
    pub ack_us: Histogram<u64>,
    /// Acked events of the whole run, warm-up and drain included.
    pub total_acked: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub measure_from: Instant,
    pub measure_to: Instant,
    /// Producer connections opened (fewer than producers when the
    /// file-descriptor limit made them share).
    pub connections: u32,
}

impl ProduceResult {
    pub fn events_s(&self) -> f64 {
        self.events as f64 / self.secs
    }
    pub fn mb_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().clamp(1, u128::from(u64::MAX)) as u64
}

/// What the producers of one workload share.
struct Tally {
    measure_from: Instant,
    measure_to: Instant,
    ack_us: std::sync::Mutex<Histogram<u64>>,
    events: AtomicU64,
    total_acked: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Tally {
    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().expect("tally lock");
        if first.is_none() {
            *first = Some(e);
        }
    }

    /// Records the ack at `acked` of events due at `due`.
    fn acked(&self, due: &[Instant], acked: Instant) {
        self.total_acked
            .fetch_add(due.len() as u64, Ordering::Relaxed);
        if acked < self.measure_from || acked >= self.measure_to {
            return;
        }
        let mut h = self.ack_us.lock().expect("tally lock");
        for &d in due {
            h.saturating_record(micros(acked - d));
        }
        self.events.fetch_add(due.len() as u64, Ordering::Relaxed);
    }
}

/// Runs `load` on `broker` (the topic must exist); `base` is the clock the
/// timestamps in payloads count from.
pub async fn produce<B: Broker>(
    broker: &B,
    load: &Load,
    window: Window,
    base: Instant,
) -> ProduceResult {
    assert!(
        load.producers >= 1 && load.partitions >= 1,
        "a load needs producers and partitions"
    );
    // Every connection opens before the clock starts (thousands take a
    // while); past the descriptor budget producers share them.
    let connections =
        (fd_budget() / B::SOCKETS_PER_PRODUCER.max(1)).clamp(1, load.producers as usize) as u32;
    let shared = Load {
        producers: connections,
        ..load.clone()
    };
    let opened: Vec<(u32, Result<B::Producer>)> = futures::stream::iter(0..connections)
        .map(|c| {
            let partitions = shared.partitions_of(c);
            async move {
                let open =
                    tokio::time::timeout(OPEN_TIMEOUT, broker.producer(&load.topic, &partitions));
                let opened = open
                    .await
                    .unwrap_or_else(|_| Err(anyhow!("not open after {OPEN_TIMEOUT:?}")));
                (c, opened)
            }
        })
        .buffer_unordered(OPENING_AT_ONCE)
        .collect()
        .await;
    broker.producers_opened();
    let start = Instant::now();
    let tally = Arc::new(Tally {
        measure_from: start + window.warmup,
        measure_to: start + window.warmup + window.measure,
        ack_us: std::sync::Mutex::new(histogram()),
        events: AtomicU64::new(0),
        total_acked: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: std::sync::Mutex::new(None),
    });
    let mut conns: Vec<Option<(Arc<B::Producer>, usize)>> =
        (0..connections).map(|_| None).collect();
    for (c, opened) in opened {
        match opened {
            Ok(p) => conns[c as usize] = Some((Arc::new(p), shared.partitions_of(c).len())),
            Err(e) => tally.error(format!("open producer {c}: {e:#}")),
        }
    }
    let mut tasks = Vec::new();
    for i in 0..load.producers {
        let Some((producer, partitions)) = &conns[(i % connections) as usize] else {
            continue;
        };
        let (producer, partitions) = (producer.clone(), *partitions);
        let (load, tally) = (load.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            produce_loop(producer, partitions, i, load, tally, start, base).await
        }));
    }
    for t in tasks {
        if let Err(e) = t.await {
            tally.error(format!("producer task: {e}"));
        }
    }
    let ack_us = tally.ack_us.lock().expect("tally lock").clone();
    let first_error = tally.first_error.lock().expect("tally lock").clone();
    let events = tally.events.load(Ordering::Relaxed);
    ProduceResult {
        events,
        bytes: events * load.payload_bytes as u64,
        secs: window.measure.as_secs_f64(),
        ack_us,
        total_acked: tally.total_acked.load(Ordering::Relaxed),
        errors: tally.errors.load(Ordering::Relaxed),
        first_error,
        measure_from: tally.measure_from,
        measure_to: tally.measure_to,
        connections,
    }
}

/// Producer `index`'s sends, a batch to each of its `partitions` in turn.
async fn produce_loop<P: Producer>(
    producer: Arc<P>,
    partitions: usize,
    index: u32,
    load: Load,
    tally: Arc<Tally>,
    start: Instant,
    base: Instant,
) {
    let fixed = Bytes::from(vec![b'x'; load.payload_bytes]);
    let rate = load.rate.map(|r| r / f64::from(load.producers));
    // Producer i's events are due `i / producers` of an interval late.
    let phase = f64::from(index) / f64::from(load.producers);
    let due_at = |n: u64| match rate {
        Some(r) => start + Duration::from_secs_f64((n as f64 + phase) / r),
        None => start,
    };
    let mut in_flight = FuturesUnordered::new();
    let mut n = 0u64;
    let mut sends = 0usize;
    let mut failed = false;
    while !failed && Instant::now() < tally.measure_to && n < EVENTS_PER_PRODUCER_MAX {
        let now = Instant::now();
        // Fill free slots with what is due now (paced: every event whose
        // time has come, so a slow broker gets bigger batches).
        while in_flight.len() < load.depth {
            let due_now = match rate {
                None => load.batch_max as u64,
                Some(r) => (((now - start).as_secs_f64() * r - phase).max(0.0) as u64 + 1)
                    .saturating_sub(n),
            };
            let count = due_now.min(load.batch_max as u64);
            if count == 0 || due_at(n) > now {
                break;
            }
            let mut due = Vec::with_capacity(count as usize);
            let mut events = Vec::with_capacity(count as usize);
            for i in n..n + count {
                let d = if rate.is_some() { due_at(i) } else { now };
                events.push(if load.timestamped {
                    timestamped(d - base, load.payload_bytes)
                } else {
                    fixed.clone()
                });
                due.push(d);
            }
            n += count;
            let send = producer.send(sends % partitions, events);
            sends += 1;
            in_flight.push(async move { (due, send.await, Instant::now()) });
        }
        let next_due = due_at(n).max(now);
        tokio::select! {
            Some((due, res, acked)) = in_flight.next(), if !in_flight.is_empty() => match res {
                Ok(()) => tally.acked(&due, acked),
                Err(e) => {
                    tally.error(format!("send: {e:#}"));
                    failed = true;
                }
            },
            _ = tokio::time::sleep_until(next_due.into()),
                if rate.is_some() && in_flight.len() < load.depth => {}
            _ = tokio::time::sleep_until(tally.measure_to.into()) => {}
        }
    }
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some((due, res, acked)) = in_flight.next().await {
            match res {
                Ok(()) => tally.acked(&due, acked),
                Err(e) => tally.error(format!("send: {e:#}")),
            }
        }
    })
    .await;
    if drained.is_err() {
        tally.error(format!(
            "acks still pending {DRAIN_TIMEOUT:?} after the run"
        ));
    }
}

/// A payload of `len` bytes (at least 8) starting with `since_base` in ns,
/// little-endian.
fn timestamped(since_base: Duration, len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(len.max(8));
    b.put_u64_le(since_base.as_nanos() as u64);
    b.resize(len.max(8), b't');
    b.freeze()
}

#[derive(Debug)]
pub struct TailResult {
    pub produce: ProduceResult,
    /// Due → received latency of events received in the window, µs.
    pub e2e_us: Histogram<u64>,
    /// Events the consumer received in the window.
    pub received: u64,
    pub consumer_error: Option<String>,
}

/// A tailing consumer of a fresh topic and a paced, timestamped `load` on
/// it: end-to-end latency.
pub async fn tail<B: Broker>(broker: &B, load: &Load, window: Window) -> Result<TailResult> {
    assert!(load.timestamped && load.rate.is_some());
    let base = Instant::now();
    broker.create(&load.topic, load.partitions).await?;
    let mut consumer = broker.consumer(&load.topic, load.partitions).await?;
    let received_total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let reader = {
        let (received_total, stop) = (received_total.clone(), stop.clone());
        tokio::spawn(async move {
            // (receive time since base, latency) of every event received.
            let mut samples: Vec<(Duration, Duration)> = Vec::new();
            let mut batch = Vec::new();
            loop {
                tokio::select! {
                    res = consumer.next(&mut batch) => {
                        if let Err(e) = res {
                            return (samples, Some(format!("{e:#}")));
                        }
                        let now = base.elapsed();
                        for event in batch.drain(..) {
                            let Some(ts) = event.get(..8) else { continue };
                            let mut b = [0u8; 8];
                            b.copy_from_slice(ts);
                            let due = Duration::from_nanos(u64::from_le_bytes(b));
                            samples.push((now, now.saturating_sub(due)));
                        }
                        received_total.store(samples.len() as u64, Ordering::Relaxed);
                    }
                    _ = stop.notified() => return (samples, None),
                }
            }
        })
    };
    let produce = produce(broker, load, window, base).await;
    // Let the consumer see every acked event, bounded in time.
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while received_total.load(Ordering::Relaxed) < produce.total_acked && Instant::now() < deadline
    {
        if reader.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.notify_one();
    let (samples, consumer_error) = tokio::time::timeout(DRAIN_TIMEOUT, reader)
        .await
        .map_err(|_| anyhow!("tail consumer did not stop"))??;
    let (from, to) = (produce.measure_from - base, produce.measure_to - base);
    let mut e2e_us = histogram();
    let mut received = 0;
    for (received_at, latency) in samples {
        if received_at >= from && received_at < to {
            e2e_us.saturating_record(micros(latency));
            received += 1;
        }
    }
    Ok(TailResult {
        produce,
        e2e_us,
        received,
        consumer_error,
    })
}

/// One catch-up read.
#[derive(Debug)]
pub struct CatchUp {
    pub events: u64,
    pub bytes: u64,
    pub took: Duration,
}

impl CatchUp {
    pub fn mb_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.took.as_secs_f64().max(1e-9)
    }
}

/// Reads `topic` from its first event until `events` events: a consumer
/// draining a backlog.
pub async fn catch_up<B: Broker>(
    broker: &B,
    topic: &str,
    partitions: u32,
    events: u64,
) -> Result<CatchUp> {
    let started = Instant::now();
    let mut consumer = broker.consumer(topic, partitions).await?;
    let (mut got, mut bytes) = (0u64, 0u64);
    let mut batch = Vec::new();
    while got < events {
        tokio::time::timeout(DRAIN_TIMEOUT, consumer.next(&mut batch))
            .await
            .map_err(|_| anyhow!("catch-up stalled for {DRAIN_TIMEOUT:?} after {got} events"))??;
        got += batch.len() as u64;
        bytes += batch.iter().map(|e| e.len() as u64).sum::<u64>();
        batch.clear();
    }
    Ok(CatchUp {
        events: got,
        bytes,
        took: started.elapsed(),
    })
}
