//! Transaction benchmarks, one release node on loopback, all in one run:
//! - transactions of 1, 100 and 10,000 events of 1 KiB (keys spread over 64
//!   routing keys, a 4-segment stream): `commit()` latency (which includes
//!   its flush) and begin → commit-returned latency, p50/p99, and events/s
//!   and MB/s over the whole begin + write + commit loop; one writer with
//!   sequential transactions, and 4 transactional writers at once;
//! - against plain appends in the same run: an `EventWriter` writing the
//!   same N events then `flush()`: the flush alone and the whole batch,
//!   p50/p99, and its throughput, so each row shows transaction / plain;
//! - where the time of a 1-event transaction goes: ping, begin, the write
//!   and its flush, commit, an empty commit, against a plain 1-event append
//!   and the disk's fdatasync;
//! - Kafka's transactional producer (Java kafka-clients, durable broker:
//!   fsync per append), the same three sizes, after the Aquifer server has
//!   stopped, with Aquifer / Kafka ratios.
//!
//! ```text
//! cargo bench --bench txn -- [--quick] [--write-results] [--no-kafka]
//! ```
//! `--quick` measures 3 s per figure instead of 10 s. `--write-results`
//! writes `benches/RESULTS-txn.md`. `--no-kafka` leaves Kafka out; it is also
//! left out, with a line saying why, when java is missing or the broker or
//! its driver cannot be installed or started (see `benches/peers/`).

#[path = "harness/broker.rs"]
#[allow(dead_code)] // the comparison's counters and traits, partly used here
mod broker;
#[path = "harness/brokers/kafka.rs"]
#[allow(dead_code)]
mod kafka;
#[path = "harness/probe.rs"]
mod probe;
use aquifer_testkit as common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aquifer_client::{Client, StreamName, TransactionalWriter, WriterConfig};
use bytes::Bytes;
use hdrhistogram::Histogram;

use aquifer_testkit::bench;
use common::{ServerOpts, ServerProcess};
use kafka::{Kafka, KafkaTxnFigures, KafkaTxnRun};

/// Events per transaction (and per plain batch).
const SIZES: [usize; 3] = [1, 100, 10_000];
/// Payload bytes of each event.
const EVENT_BYTES: usize = 1024;
/// Routing keys the events are spread over.
const KEYS: usize = 64;
/// Segments of every stream (and partitions of Kafka's topic).
const SEGMENTS: u32 = 4;
/// Concurrent writers of the "4 writers" rows.
const WRITERS: usize = 4;
/// Untimed transactions (or batches) each writer runs before measuring.
const WARMUP: u32 = 2;
/// Leaves Kafka out.
const NO_KAFKA: &str = "--no-kafka";
/// How much longer than its budget a measurement may take before the bench
/// gives up on it.
const SLACK: Duration = Duration::from_secs(60);

/// How long and how often each figure is measured.
#[derive(Clone, Copy)]
struct Plan {
    /// Per figure (one size, one mode).
    budget: Duration,
    /// Rounds of the 1-event breakdown (also bounded by `budget`).
    rounds: u64,
    /// Each part of the disk probe.
    probe: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                budget: Duration::from_secs(3),
                rounds: 100,
                probe: Duration::from_millis(300),
            }
        } else {
            Plan {
                budget: Duration::from_secs(10),
                rounds: 300,
                probe: Duration::from_secs(1),
            }
        }
    }
}

/// At most this many transactions (or batches) per writer and figure.
fn max_batches(n: usize) -> u64 {
    match n {
        1 => 5_000,
        100 => 2_000,
        _ => 200,
    }
}

fn main() {
    let args = bench::parse_args_with("txn", &[NO_KAFKA]);
    let started = Instant::now();
    let load_start = bench::load_average();
    let report = bench::runtime().block_on(run(&args));
    bench::finish("txn", &args, started, &report, "RESULTS-txn.md", || {
        format!("{}{report}", header(&args, &load_start, started.elapsed()))
    });
}

/// The results file's opening: command, date, revision, machine.
fn header(args: &bench::Args, load_start: &str, took: Duration) -> String {
    let mut command = String::from("cargo bench --bench txn -- --write-results");
    if args.quick {
        command.push_str(" --quick");
    }
    if args.has(NO_KAFKA) {
        command.push_str(" --no-kafka");
    }
    let cpu = bench::cpu_model();
    let dirty = !bench::command_line("git", &["status", "--porcelain"]).is_empty();
    format!(
        "# Transaction benchmark results\n\n\
         Command: `{command}` (benches/txn.rs, {:.0} s)  \n\
         Date: {}  \n\
         Revision: {}{}  \n\
         Machine: {} vCPU VM ({cpu}), everything on loopback: one release `aquifer serve` \
         (`ServerOpts::default()`, fresh temporary data dir), the load generator in the bench \
         process beside it, and Kafka afterwards, alone; load average at the start {load_start}, \
         at the end {}.\n\n",
        took.as_secs_f64(),
        bench::command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        bench::command_line("git", &["rev-parse", "--short", "HEAD"]),
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        bench::load_average(),
    )
}

/// What one writer (or several, merged) measured.
struct Samples {
    /// Transactions: `begin()` alone.
    begin: Histogram<u64>,
    /// `commit()` alone (with its flush), or a plain batch's `flush()`.
    end: Histogram<u64>,
    /// `begin()` to `commit()` returned, or a plain batch's first write to
    /// its `flush()` returned.
    whole: Histogram<u64>,
    /// Transactions or batches measured.
    batches: u64,
    events: u64,
    elapsed: Duration,
}

impl Samples {
    fn new() -> Samples {
        let h = || Histogram::<u64>::new(3).expect("histogram");
        Samples {
            begin: h(),
            end: h(),
            whole: h(),
            batches: 0,
            events: 0,
            elapsed: Duration::ZERO,
        }
    }

    fn merge(&mut self, other: &Samples) {
        self.begin.add(&other.begin).expect("merge");
        self.end.add(&other.end).expect("merge");
        self.whole.add(&other.whole).expect("merge");
        self.batches += other.batches;
        self.events += other.events;
        self.elapsed = self.elapsed.max(other.elapsed);
    }

    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    fn mb_per_s(&self) -> f64 {
        self.events_per_s() * EVENT_BYTES as f64 / 1e6
    }
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

fn p(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// "p50 / p99" of a histogram of µs, in ms.
fn pair(h: &Histogram<u64>) -> String {
    format!("{} / {}", fmt_ms(p(h, 0.5)), fmt_ms(p(h, 0.99)))
}

fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "–".into()
    }
}

/// The payload and the routing keys of every writer.
struct Load {
    payload: Bytes,
    keys: Vec<String>,
}

impl Load {
    fn new() -> Arc<Load> {
        Arc::new(Load {
            payload: Bytes::from(vec![b'x'; EVENT_BYTES]),
            keys: (0..KEYS).map(|k| format!("k{k}")).collect(),
        })
    }

    /// The key after `*next`'s, round-robin over the keys.
    fn next_key(&self, next: &mut usize) -> &str {
        let key = &self.keys[*next % KEYS];
        *next += 1;
        key
    }
}

/// One transaction of `n` events, keys from `*next` on: (begin, commit,
/// begin → commit returned).
async fn one_txn(
    w: &TransactionalWriter,
    load: &Load,
    n: usize,
    next: &mut usize,
) -> (Duration, Duration, Duration) {
    let t0 = Instant::now();
    let txn = w.begin().await.expect("begin");
    let t1 = Instant::now();
    for _ in 0..n {
        let key = load.next_key(next);
        let _ack = txn
            .write(Some(key), load.payload.clone())
            .await
            .expect("transactional write");
    }
    let t2 = Instant::now();
    txn.commit().await.expect("commit");
    let t3 = Instant::now();
    (t1 - t0, t3 - t2, t3 - t0)
}

/// Sequential transactions of `n` events from one transactional writer,
/// after `start` (every writer of a figure starts measuring together).
async fn txn_writer(
    client: Client,
    stream: StreamName,
    id: String,
    n: usize,
    plan: Plan,
    load: Arc<Load>,
    start: Arc<tokio::sync::Barrier>,
) -> Samples {
    let w = client
        .transactional_writer(&stream, id)
        .expect("transactional writer");
    let mut next = 0;
    for _ in 0..WARMUP {
        one_txn(&w, &load, n, &mut next).await;
    }
    start.wait().await;
    let mut s = Samples::new();
    let started = Instant::now();
    while started.elapsed() < plan.budget && s.batches < max_batches(n) {
        let (begin, commit, whole) = one_txn(&w, &load, n, &mut next).await;
        s.begin.record(us(begin)).expect("record");
        s.end.record(us(commit)).expect("record");
        s.whole.record(us(whole)).expect("record");
        s.batches += 1;
        s.events += n as u64;
    }
    s.elapsed = started.elapsed();
    s
}

/// One plain batch of `n` events then `flush()`: (flush, first write →
/// flush returned).
async fn one_batch(
    w: &aquifer_client::EventWriter,
    load: &Load,
    n: usize,
    next: &mut usize,
) -> (Duration, Duration) {
    let t0 = Instant::now();
    for _ in 0..n {
        let key = load.next_key(next);
        let _ack = w
            .write_event(Some(key), load.payload.clone())
            .await
            .expect("write");
    }
    let t1 = Instant::now();
    w.flush().await.expect("flush");
    let t2 = Instant::now();
    (t2 - t1, t2 - t0)
}

/// Flush-terminated batches of `n` events from one plain `EventWriter`.
async fn plain_writer(
    client: Client,
    stream: StreamName,
    n: usize,
    plan: Plan,
    load: Arc<Load>,
    start: Arc<tokio::sync::Barrier>,
) -> Samples {
    let w = client
        .writer(&stream, WriterConfig::default())
        .await
        .expect("writer");
    let mut next = 0;
    for _ in 0..WARMUP {
        one_batch(&w, &load, n, &mut next).await;
    }
    start.wait().await;
    let mut s = Samples::new();
    let started = Instant::now();
    while started.elapsed() < plan.budget && s.batches < max_batches(n) {
        let (flush, whole) = one_batch(&w, &load, n, &mut next).await;
        s.end.record(us(flush)).expect("record");
        s.whole.record(us(whole)).expect("record");
        s.batches += 1;
        s.events += n as u64;
    }
    s.elapsed = started.elapsed();
    w.close().await.expect("close");
    s
}

/// `writers` transactional (or plain) writers at once on a fresh stream,
/// their samples merged.
async fn figure(client: &Client, n: usize, writers: usize, txn: bool, plan: Plan) -> Samples {
    let kind = if txn { "txn" } else { "plain" };
    let stream: StreamName = format!("bench/{kind}-{n}-x{writers}")
        .parse()
        .expect("name");
    client
        .admin()
        .create_stream(&stream, SEGMENTS)
        .await
        .expect("create stream");
    let load = Load::new();
    let start = Arc::new(tokio::sync::Barrier::new(writers));
    let tasks: Vec<_> = (0..writers)
        .map(|i| {
            let (client, stream, load, start) =
                (client.clone(), stream.clone(), load.clone(), start.clone());
            let id = format!("bench-{kind}-{n}-{writers}-{i}");
            tokio::spawn(async move {
                if txn {
                    txn_writer(client, stream, id, n, plan, load, start).await
                } else {
                    plain_writer(client, stream, n, plan, load, start).await
                }
            })
        })
        .collect();
    let limit = plan.budget + SLACK;
    let all = tokio::time::timeout(limit, futures::future::join_all(tasks))
        .await
        .unwrap_or_else(|_| panic!("{kind} x{writers}, {n} events: still running after {limit:?}"));
    let mut merged = Samples::new();
    for s in all {
        merged.merge(&s.expect("writer task"));
    }
    eprintln!(
        "txn bench: {kind} x{writers}, {n} events: {} batches, {:.0} events/s",
        merged.batches,
        merged.events_per_s()
    );
    merged
}

/// One row of the transaction / plain tables.
struct Row {
    n: usize,
    txn: Samples,
    plain: Samples,
}

fn aquifer_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| events per txn | txns | `commit()` p50 / p99 ms | begin → commit p50 / p99 ms | txn events/s | txn MB/s \
         | plain batches | plain `flush()` p50 / p99 ms | plain write N → flush p50 / p99 ms | plain events/s | plain MB/s \
         | txn / plain latency (begin → commit ÷ batch, p50) | txn / plain throughput |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out += &format!(
            "| {} | {} | {} | {} | {:.0} | {:.1} | {} | {} | {} | {:.0} | {:.1} | {} | {} |\n",
            r.n,
            r.txn.batches,
            pair(&r.txn.end),
            pair(&r.txn.whole),
            r.txn.events_per_s(),
            r.txn.mb_per_s(),
            r.plain.batches,
            pair(&r.plain.end),
            pair(&r.plain.whole),
            r.plain.events_per_s(),
            r.plain.mb_per_s(),
            ratio(p(&r.txn.whole, 0.5), p(&r.plain.whole, 0.5)),
            ratio(r.txn.events_per_s(), r.plain.events_per_s()),
        );
    }
    out
}

/// A 1-event transaction step by step, and plain appends beside it.
struct Breakdown {
    rounds: u64,
    ping: Histogram<u64>,
    begin: Histogram<u64>,
    write_flush: Histogram<u64>,
    commit_flushed: Histogram<u64>,
    commit_empty: Histogram<u64>,
    plain_warm: Histogram<u64>,
    plain_fresh: Histogram<u64>,
}

async fn breakdown(client: &Client, plan: Plan) -> Breakdown {
    let stream: StreamName = "bench/txn-breakdown".parse().expect("name");
    client
        .admin()
        .create_stream(&stream, SEGMENTS)
        .await
        .expect("create stream");
    let load = Load::new();
    let w = client
        .transactional_writer(&stream, "bench-breakdown")
        .expect("transactional writer");
    let plain = client
        .writer(&stream, WriterConfig::default())
        .await
        .expect("writer");
    let h = || Histogram::<u64>::new(3).expect("histogram");
    let mut b = Breakdown {
        rounds: 0,
        ping: h(),
        begin: h(),
        write_flush: h(),
        commit_flushed: h(),
        commit_empty: h(),
        plain_warm: h(),
        plain_fresh: h(),
    };
    let timed = |h: &mut Histogram<u64>, t: Instant| h.record(us(t.elapsed())).expect("record");
    let started = Instant::now();
    for round in 0..plan.rounds + u64::from(WARMUP) {
        if started.elapsed() > plan.budget * 2 {
            break;
        }
        let measure = round >= u64::from(WARMUP);
        let key = &load.keys[round as usize % KEYS];
        let mut scratch = h();
        let mut pick = |h: &mut Histogram<u64>, t: Instant| {
            if measure {
                timed(h, t)
            } else {
                timed(&mut scratch, t)
            }
        };

        // A 1-event transaction, one call at a time.
        let t = Instant::now();
        let txn = w.begin().await.expect("begin");
        pick(&mut b.begin, t);
        let t = Instant::now();
        txn.ping().await.expect("ping");
        pick(&mut b.ping, t);
        let t = Instant::now();
        let _ack = txn
            .write(Some(key), load.payload.clone())
            .await
            .expect("write");
        txn.flush().await.expect("flush");
        pick(&mut b.write_flush, t);
        let t = Instant::now();
        txn.commit().await.expect("commit");
        pick(&mut b.commit_flushed, t);

        // An empty transaction: the same commit entries, no session.
        let txn = w.begin().await.expect("begin");
        let t = Instant::now();
        txn.commit().await.expect("commit");
        pick(&mut b.commit_empty, t);

        // Plain: a warm writer, and a fresh one's first append.
        let t = Instant::now();
        let _ack = plain
            .write_event(Some(key), load.payload.clone())
            .await
            .expect("write");
        plain.flush().await.expect("flush");
        pick(&mut b.plain_warm, t);
        let fresh = client
            .writer(&stream, WriterConfig::default())
            .await
            .expect("writer");
        let t = Instant::now();
        let _ack = fresh
            .write_event(Some(key), load.payload.clone())
            .await
            .expect("write");
        fresh.flush().await.expect("flush");
        pick(&mut b.plain_fresh, t);
        fresh.close().await.expect("close");
        if measure {
            b.rounds += 1;
        }
    }
    plain.close().await.expect("close");
    b
}

fn breakdown_table(b: &Breakdown, disk: &probe::DiskProbe) -> String {
    let row = |what: &str, server: &str, h: &Histogram<u64>| {
        format!("| {what} | {server} | {} |\n", pair(h))
    };
    let mut out = format!(
        "| step ({} rounds, one call at a time) | what the server does | p50 / p99 ms |\n|---|---|---:|\n",
        b.rounds
    );
    out += &row(
        "`ping()` of an open transaction",
        "metadata-leader round trip, no log entry",
        &b.ping,
    );
    out += &row("`begin()`", "one metadata (`meta` group) entry", &b.begin);
    out += &row(
        "`write()` 1 event + `flush()` into the new transaction",
        "opens the append session of the part, one container entry",
        &b.write_flush,
    );
    out += &row(
        "`commit()` after that flush",
        "meta Commit entry, one Merge entry per container of the 4 parts (containers in parallel), \
         meta Finish entry; then the writer's session is closed",
        &b.commit_flushed,
    );
    out += &row(
        "`commit()` of an empty transaction",
        "the same three rounds of entries, no session to close",
        &b.commit_empty,
    );
    out += &row(
        "plain: `write_event()` 1 event + `flush()`, warm `EventWriter`",
        "one container entry",
        &b.plain_warm,
    );
    out += &row(
        "plain: the first `write_event()` + `flush()` of a fresh `EventWriter`",
        "opens the append session, one container entry",
        &b.plain_fresh,
    );
    out += &format!(
        "| disk: 4 KiB write + fdatasync, one thread (mean) | – | {} |\n",
        fmt_ms(1000.0 / disk.small_syncs_s_1)
    );
    out
}

/// Kafka's figures per size, or why there are none.
/// The Kafka producer set-ups: kafka-clients' batching defaults (16 KiB,
/// 5 ms linger), and batching like Aquifer's writer (1 MiB, 1 ms).
const KAFKA_SETUPS: [(&str, Option<(usize, u64)>); 2] = [
    ("defaults", None),
    ("batch.size 1 MiB, linger.ms 1", Some((1 << 20, 1))),
];

/// Kafka's figures per set-up.
type KafkaRuns = Vec<(&'static str, Vec<KafkaTxnFigures>)>;

async fn kafka(args: &bench::Args, plan: Plan) -> Result<(String, KafkaRuns), String> {
    if args.has(NO_KAFKA) {
        return Err("left out (`--no-kafka`)".into());
    }
    for tool in ["java", "mvn"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found && tool == "java" {
            return Err("skipped: `java` is not installed".into());
        }
        if !found {
            eprintln!("txn bench: mvn is not installed; Kafka runs only if its jars are cached");
        }
    }
    eprintln!("txn bench: starting kafka (durable)");
    let (broker, version) = Kafka::start(true)
        .await
        .map_err(|e| format!("skipped: the durable Kafka broker did not start: {e:#}"))?;
    let java = broker::command_text("java", &["-version"]);
    let version = format!(
        "Kafka {version} (KRaft, one node, `log.flush.interval.messages=1`), {}",
        java.lines().next().unwrap_or("java")
    );
    let mut out = Vec::new();
    for (i, (setup, batching)) in KAFKA_SETUPS.into_iter().enumerate() {
        let mut figures = Vec::new();
        for n in SIZES {
            let topic = format!("txn-{i}-{n}");
            let run = KafkaTxnRun {
                topic: &topic,
                partitions: SEGMENTS,
                events_per_txn: n,
                event_bytes: EVENT_BYTES,
                seconds: plan.budget.as_secs(),
                max_txns: max_batches(n),
                batching,
            };
            let f = broker.transactional_producer(&run).await.map_err(|e| {
                format!(
                    "skipped: Kafka's transactional producer ({setup}) failed at {n} events: {e:#}"
                )
            })?;
            eprintln!(
                "txn bench: kafka ({setup}), {n} events: {} txns, {:.0} events/s",
                f.txns, f.events_per_s
            );
            figures.push(f);
        }
        out.push((setup, figures));
    }
    Ok((version, out))
}

fn kafka_table(rows: &[Row], kafka: &[KafkaTxnFigures]) -> String {
    let mut out = String::from(
        "| events per txn | Kafka txns | Kafka `commitTransaction` p50 / p99 ms | Kafka begin → commit p50 / p99 ms \
         | Kafka events/s | Kafka MB/s | Aquifer / Kafka commit p50 | Aquifer / Kafka begin → commit p50 \
         | Aquifer / Kafka throughput |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for k in kafka {
        let Some(r) = rows.iter().find(|r| r.n == k.events_per_txn) else {
            continue;
        };
        out += &format!(
            "| {} | {} | {} / {} | {} / {} | {:.0} | {:.1} | {} | {} | {} |\n",
            k.events_per_txn,
            k.txns,
            fmt_ms(k.commit_p50_ms),
            fmt_ms(k.commit_p99_ms),
            fmt_ms(k.txn_p50_ms),
            fmt_ms(k.txn_p99_ms),
            k.events_per_s,
            k.mb_per_s,
            ratio(p(&r.txn.end, 0.5), k.commit_p50_ms),
            ratio(p(&r.txn.whole, 0.5), k.txn_p50_ms),
            ratio(r.txn.events_per_s(), k.events_per_s),
        );
    }
    out
}

async fn run(args: &bench::Args) -> String {
    let plan = Plan::new(args.quick);
    let tmp = std::env::temp_dir();
    eprintln!("txn bench: fdatasync probe in {}", tmp.display());
    let disk = tokio::task::spawn_blocking(move || probe::run(&tmp, plan.probe))
        .await
        .expect("probe task");

    let server = ServerProcess::start(ServerOpts::default()).await;
    let client = server.client().await;
    let mut one = Vec::new();
    let mut four = Vec::new();
    for n in SIZES {
        for (writers, rows) in [(1, &mut one), (WRITERS, &mut four)] {
            let txn = figure(&client, n, writers, true, plan).await;
            let plain = figure(&client, n, writers, false, plan).await;
            rows.push(Row { n, txn, plain });
        }
    }
    eprintln!("txn bench: 1-event breakdown");
    let steps = breakdown(&client, plan).await;
    drop(client);
    drop(server);

    let kafka = kafka(args, plan).await;

    let secs = plan.budget.as_secs();
    let mut out = format!(
        "Events of {EVENT_BYTES} B, routing keys spread over {KEYS} keys, a {SEGMENTS}-segment \
         stream per figure; each figure runs for {secs} s or a maximum count (5,000 / 2,000 / 200 \
         transactions or batches per writer for 1 / 100 / 10,000 events), after {WARMUP} untimed \
         ones per writer. `commit()` includes its flush of the transaction's events; begin → commit \
         is `begin()` + the writes + `commit()`. A plain batch is N `write_event()` calls on one \
         `EventWriter` (`WriterConfig::default()`, kept open) then `flush()`. Throughput is events \
         (and MB = 10^6 B of payload) per second over the whole loop. Ratios > 1x: the transaction \
         takes longer (latency) or moves more (throughput).\n\n\
         ## One writer, sequential transactions\n\n{}\n\
         ## {WRITERS} writers at once (each its own writer id, same stream; latencies over all of them)\n\n{}\n\
         ## Where a 1-event transaction's time goes\n\n{}\n\
         Disk (fdatasync probe in the temporary dir, before the server started): {:.0} MB/s in 1 MiB \
         writes + fdatasync; {:.0} syncs/s of 4 KiB from one thread, {:.0} from 16.\n\n",
        aquifer_table(&one),
        aquifer_table(&four),
        breakdown_table(&steps, &disk),
        disk.seq_mb_s,
        disk.small_syncs_s_1,
        disk.small_syncs_s_16,
    );
    out += "## Kafka's transactional producer (durable broker)\n\n";
    match kafka {
        Ok((version, runs)) => {
            out += &format!(
                "{version}; Java kafka-clients transactional producer (`transactional.id`, \
                 `enable.idempotence=true`, `acks=all`), one producer, transactions back to back, \
                 events spread round-robin over the topic's {SEGMENTS} partitions, {secs} s or the \
                 same maximum count per size. Ratios against the one-writer Aquifer transactions \
                 above.\n\n"
            );
            for (setup, figures) in runs {
                out += &format!(
                    "Producer batching: {setup}.\n\n{}\n",
                    kafka_table(&one, &figures)
                );
            }
        }
        Err(why) => {
            eprintln!("txn bench: kafka {why}");
            out += &format!("Kafka {why}.\n");
        }
    }
    out
}
