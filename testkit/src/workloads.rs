//! Bounded write and tail workloads through the client crate.
//!
//! Ack latency is the time from the `write_event` call (before its await, so
//! client back-pressure counts) to the `PendingWrite` resolving. Only events
//! sent inside the measurement window (after the warm-up) are counted, and
//! throughput is their count over the window.

use futures::TryStreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aquifer_client::{Client, ReaderConfig, ScanConfig, StartFrom, StreamName, WriterConfig};
use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;

/// Longest latency the histograms hold, in µs.
const HIST_MAX_US: u64 = 120_000_000;
/// Time allowed to drain outstanding acks (or tail events) after a run.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Acks one bench writer's collector keeps in flight before the writer waits.
const COLLECTOR_QUEUE: usize = 65_536;

#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub warmup: Duration,
    pub measure: Duration,
}

/// What one write workload does.
#[derive(Debug, Clone)]
pub struct WriteLoad {
    pub stream: String,
    pub segments: u32,
    pub writers: usize,
    pub keys_per_writer: usize,
    pub payload_bytes: usize,
    /// Total events/s over all writers; None: as fast as acks allow.
    pub rate: Option<f64>,
    /// Payloads start with 8 bytes of send time (ns since `base`).
    pub timestamped: bool,
}

#[derive(Debug)]
pub struct WriteResult {
    pub events: u64,
    pub bytes: u64,
    pub secs: f64,
    /// Ack latency of events sent in the window, µs.
    pub ack_us: Histogram<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Acks of the whole run, warm-up and drain included.
    pub total_acked: u64,
    pub measure_from: Instant,
    pub measure_to: Instant,
}

impl WriteResult {
    pub fn events_s(&self) -> f64 {
        self.events as f64 / self.secs
    }
    pub fn mb_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("histogram bounds")
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(HIST_MAX_US)) as u64
}

struct Shared {
    start: Instant,
    measure_from: Instant,
    measure_to: Instant,
    ack_us: std::sync::Mutex<Histogram<u64>>,
    events: AtomicU64,
    bytes: AtomicU64,
    total_acked: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Shared {
    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().expect("lock");
        if first.is_none() {
            *first = Some(e);
        }
    }
}

/// Runs a write workload on a fresh stream; `base` is the clock timestamped
/// payloads count from.
pub async fn run_write(
    client: &Client,
    load: &WriteLoad,
    window: Window,
    base: Instant,
) -> WriteResult {
    let name: StreamName = load.stream.parse().expect("bench stream name");
    match client.admin().create_stream(&name, load.segments).await {
        Ok(_) | Err(aquifer_client::Error::AlreadyExists { .. }) => {}
        Err(e) => panic!("create bench stream {name:?}: {e}"),
    }
    let start = Instant::now();
    let shared = Arc::new(Shared {
        start,
        measure_from: start + window.warmup,
        measure_to: start + window.warmup + window.measure,
        ack_us: std::sync::Mutex::new(histogram()),
        events: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        total_acked: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: std::sync::Mutex::new(None),
    });
    let mut tasks = Vec::new();
    for w in 0..load.writers {
        let config = WriterConfig::default()
            .writer_id(format!("bench-{}-{w}", load.stream.replace('/', "-")));
        let writer = client
            .writer(&name, config)
            .await
            .expect("open bench writer");
        let load = load.clone();
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            write_loop(w, writer, load, shared, base).await;
        }));
    }
    for t in tasks {
        t.await.expect("bench writer task");
    }
    let secs = window.measure.as_secs_f64();
    let ack_us = shared.ack_us.lock().expect("lock").clone();
    let first_error = shared.first_error.lock().expect("lock").clone();
    WriteResult {
        events: shared.events.load(Ordering::Relaxed),
        bytes: shared.bytes.load(Ordering::Relaxed),
        secs,
        ack_us,
        errors: shared.errors.load(Ordering::Relaxed),
        first_error,
        total_acked: shared.total_acked.load(Ordering::Relaxed),
        measure_from: shared.measure_from,
        measure_to: shared.measure_to,
    }
}

async fn write_loop(
    w: usize,
    writer: aquifer_client::EventWriter,
    load: WriteLoad,
    shared: Arc<Shared>,
    base: Instant,
) {
    let keys: Vec<String> = (0..load.keys_per_writer)
        .map(|k| format!("w{w}-k{k}"))
        .collect();
    let fixed = Bytes::from(vec![b'x'; load.payload_bytes]);
    let per_writer_rate = load.rate.map(|r| r / load.writers as f64);
    let (tx, mut rx) = tokio::sync::mpsc::channel(COLLECTOR_QUEUE);

    // Collector: resolves acks as they come and records their latency.
    let collector_shared = shared.clone();
    let payload_bytes = load.payload_bytes as u64;
    let collector = tokio::spawn(async move {
        let shared = collector_shared;
        let mut pending = FuturesUnordered::new();
        let mut open = true;
        while open || !pending.is_empty() {
            tokio::select! {
                Some((sent, res)) = pending.next(), if !pending.is_empty() => {
                    record_ack(&shared, sent, res, payload_bytes);
                }
                msg = rx.recv(), if open => match msg {
                    Some((sent, ack)) => pending.push(async move {
                        let res: Result<aquifer_client::WriteAck, aquifer_client::Error> = ack.await;
                        (sent, res.map(|_| Instant::now()))
                    }),
                    None => open = false,
                },
            }
        }
    });

    let mut n = 0u64;
    while Instant::now() < shared.measure_to {
        if let Some(rate) = per_writer_rate {
            let due = shared.start + Duration::from_secs_f64(n as f64 / rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let key = &keys[n as usize % keys.len()];
        let payload = if load.timestamped {
            timestamped(base, load.payload_bytes)
        } else {
            fixed.clone()
        };
        let sent = Instant::now();
        match writer.write_event(Some(key.as_str()), payload).await {
            Ok(ack) => {
                if tx.send((sent, ack)).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                shared.error(format!("write: {e}"));
                break;
            }
        }
        n += 1;
    }
    match tokio::time::timeout(DRAIN_TIMEOUT, writer.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => shared.error(format!("flush: {e}")),
        Err(_) => shared.error(format!("flush took over {DRAIN_TIMEOUT:?}")),
    }
    drop(tx);
    if tokio::time::timeout(DRAIN_TIMEOUT, collector)
        .await
        .is_err()
    {
        shared.error(format!(
            "acks still pending {DRAIN_TIMEOUT:?} after the run"
        ));
    }
    let _ = writer.close().await;
}

fn record_ack(
    shared: &Shared,
    sent: Instant,
    res: Result<Instant, aquifer_client::Error>,
    payload_bytes: u64,
) {
    match res {
        Ok(done) => {
            shared.total_acked.fetch_add(1, Ordering::Relaxed);
            if sent >= shared.measure_from && sent < shared.measure_to {
                shared
                    .ack_us
                    .lock()
                    .expect("lock")
                    .saturating_record(micros(done - sent).max(1));
                shared.events.fetch_add(1, Ordering::Relaxed);
                shared.bytes.fetch_add(payload_bytes, Ordering::Relaxed);
            }
        }
        Err(e) => shared.error(format!("ack: {e}")),
    }
}

/// A payload of `len` bytes (at least 8) starting with the send time in ns
/// since `base`, little-endian.
fn timestamped(base: Instant, len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(len.max(8));
    b.put_u64_le(base.elapsed().as_nanos() as u64);
    b.resize(len.max(8), b't');
    b.freeze()
}

#[derive(Debug)]
pub struct TailResult {
    pub write: WriteResult,
    /// Write → receive latency of events sent in the window, µs.
    pub e2e_us: Histogram<u64>,
    /// Events sent in the window that the reader received.
    pub received: u64,
}

/// A tailing reader (follow, from the head of a fresh stream, so it cannot
/// miss an event) and one writer at a fixed rate of timestamped events.
pub async fn run_tail(client: &Client, load: &WriteLoad, window: Window) -> TailResult {
    assert!(load.timestamped && load.writers == 1);
    let base = Instant::now();
    let name: StreamName = load.stream.parse().expect("bench stream name");
    client
        .admin()
        .create_stream(&name, load.segments)
        .await
        .expect("create bench stream");
    let config = ReaderConfig::default().start(StartFrom::Head).follow(true);
    let mut reader = client.reader(&name, config).await.expect("tail reader");
    let received_total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let reader_task = {
        let received_total = received_total.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            // (send time since base, latency), for every event received.
            let mut samples: Vec<(Duration, Duration)> = Vec::new();
            loop {
                tokio::select! {
                    next = reader.try_next() => match next {
                        Ok(Some(event)) => {
                            let now = base.elapsed();
                            let mut ts = [0u8; 8];
                            ts.copy_from_slice(&event.payload[..8]);
                            let sent = Duration::from_nanos(u64::from_le_bytes(ts));
                            samples.push((sent, now.saturating_sub(sent)));
                            received_total.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(None) => break,
                        Err(e) => panic!("tail reader: {e}"),
                    },
                    _ = stop.notified() => break,
                }
            }
            samples
        })
    };
    let write = run_write(client, load, window, base).await;
    // Let the reader catch up with every acked event, bounded.
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while received_total.load(Ordering::Relaxed) < write.total_acked && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.notify_one();
    let samples = tokio::time::timeout(DRAIN_TIMEOUT, reader_task)
        .await
        .expect("tail reader stopped in time")
        .expect("tail reader task");
    let from = write.measure_from - base;
    let to = write.measure_to - base;
    let mut e2e_us = histogram();
    let mut received = 0;
    for (sent, latency) in samples {
        if sent >= from && sent < to {
            e2e_us.saturating_record(micros(latency).max(1));
            received += 1;
        }
    }
    TailResult {
        write,
        e2e_us,
        received,
    }
}

/// One catch-up read: bytes of payload read and how long it took.
pub struct CatchUp {
    pub bytes: u64,
    pub events: u64,
    pub took: Duration,
}

impl CatchUp {
    pub fn mb_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.took.as_secs_f64().max(1e-9)
    }
}

/// Reads `stream` from its head (no follow) until `bytes_max` payload bytes
/// or its end: a consumer catching up on a backlog.
pub async fn run_catch_up(client: &Client, stream: &str, bytes_max: u64) -> CatchUp {
    let name: StreamName = stream.parse().expect("bench stream name");
    let config = ReaderConfig::default().start(StartFrom::Head).follow(false);
    let started = Instant::now();
    let mut reader = client.reader(&name, config).await.expect("catch-up reader");
    let (mut bytes, mut events) = (0u64, 0u64);
    while bytes < bytes_max {
        match tokio::time::timeout(DRAIN_TIMEOUT, reader.try_next()).await {
            Ok(Ok(Some(e))) => {
                bytes += e.payload.len() as u64;
                events += 1;
            }
            Ok(Ok(None)) => break,
            Ok(Err(e)) => panic!("catch-up reader: {e}"),
            Err(_) => panic!("catch-up reader stalled for {DRAIN_TIMEOUT:?}"),
        }
    }
    CatchUp {
        bytes,
        events,
        took: started.elapsed(),
    }
}

/// Tier-2 objects made for a stream's bytes.
pub struct PutCount {
    pub bytes: u64,
    pub objects: u64,
}

/// Writes 64 MiB of 1 KiB events to a new stream of `segments` segments
/// (keys spread over all of them), waits until every byte is in tier-2, and
/// counts the chunk objects under `tier2_dir` that hold them.
pub async fn run_put_count(
    client: &Client,
    tier2_dir: &std::path::Path,
    stream: &str,
    segments: u32,
) -> PutCount {
    const BYTES: u64 = 64 << 20;
    let name: StreamName = stream.parse().expect("bench stream name");
    let before = count_objects(tier2_dir);
    client
        .admin()
        .create_stream(&name, segments)
        .await
        .expect("create bench stream");
    let writer = client
        .writer(&name, WriterConfig::default())
        .await
        .expect("writer");
    let payload = Bytes::from(vec![b'p'; 1024]);
    for i in 0..BYTES / 1024 {
        let key = format!("k{}", i % (u64::from(segments) * 8));
        // Durability is checked once, by the flush below.
        drop(
            writer
                .write_event(Some(&key), payload.clone())
                .await
                .expect("queue"),
        );
    }
    writer.flush().await.expect("acknowledged");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d = client
            .admin()
            .describe_stream(&name)
            .await
            .expect("describe");
        if d.segments.iter().all(|s| s.tier2_length == s.length) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Objects are shared by the segments of a container (of any stream):
    // the new ones are this stream's puts, give or take a flush of another
    // stream's leftovers.
    PutCount {
        bytes: BYTES,
        objects: count_objects(tier2_dir).saturating_sub(before),
    }
}

/// Chunk objects in a local tier-2 (`chunks/c<container>/<object>`).
fn count_objects(tier2_dir: &std::path::Path) -> u64 {
    let Ok(containers) = std::fs::read_dir(tier2_dir.join("chunks")) else {
        return 0;
    };
    containers
        .flatten()
        .map(|c| std::fs::read_dir(c.path()).map_or(0, |d| d.count() as u64))
        .sum()
}

/// A batch scan of a whole stream with `readers` ranges read at a time,
/// through the brokers or `direct` from tier-2; the result counts payload
/// bytes like a catch-up read.
pub async fn run_scan(client: &Client, stream: &str, readers: usize, direct: bool) -> CatchUp {
    let name: StreamName = stream.parse().expect("bench stream name");
    let batch = client.batch();
    let started = Instant::now();
    let from = batch.head_cut(&name).await.expect("head cut");
    let to = batch.tail_cut(&name).await.expect("tail cut");
    let ranges = batch
        .segment_ranges(&name, &from, &to)
        .await
        .expect("segment ranges");
    let slots = Arc::new(tokio::sync::Semaphore::new(readers));
    let mut reads = FuturesUnordered::new();
    for range in ranges {
        let (batch, slots) = (batch.clone(), slots.clone());
        reads.push(async move {
            let _slot = slots.acquire_owned().await.expect("scan slots");
            let mut reader = batch.read_range(&range, &ScanConfig::default().direct(direct));
            let (mut bytes, mut events) = (0u64, 0u64);
            while let Some(e) = tokio::time::timeout(DRAIN_TIMEOUT, reader.try_next())
                .await
                .expect("scan stalled")
                .expect("scan read")
            {
                bytes += e.payload.len() as u64;
                events += 1;
            }
            (bytes, events)
        });
    }
    let (mut bytes, mut events) = (0u64, 0u64);
    while let Some((b, e)) = reads.next().await {
        bytes += b;
        events += e;
    }
    CatchUp {
        bytes,
        events,
        took: started.elapsed(),
    }
}
