//! The same Flink job over Aquifer and over Kafka, in one run: a stateless
//! map (parse the payload's send time) and a counting sink, all chained, in
//! a local MiniCluster (`benches/peers/flink-job/`, Flink 2.3.0, parallelism
//! 2 by default), reading 1 KiB events through the Aquifer connector
//! (`connectors/flink`, `AquiferSource`) or flink-connector-kafka
//! 5.0.0-2.2 (`KafkaSource`), from a stream of 2 segments or a topic of 2
//! partitions:
//! - throughput: N preloaded events read from the head to the tail as of the
//!   job's start (bounded sources), records/s from the first record to the
//!   last, and the CPU the job and the broker spent on it, in K runs of the
//!   job over the same events;
//! - latency: the job tails a fresh stream / topic while this process writes
//!   at a fixed rate (warm-up events until the job saw the first one, plus
//!   `--warmup-secs`, then `rate × latency-secs` measured ones); end-to-end
//!   latency = the job's sink's wall clock minus the send time in the event,
//!   p50 / p99 / p99.9 / max, computed in the job.
//!
//! Each broker runs alone, one after the other: a release `aquifer serve`
//! (as compare.rs's: 256 MiB tail buffer and cache) with the client's
//! `EventWriter` writing, then Kafka through `harness/brokers/kafka.rs` with
//! compare.rs's durable set-up (KRaft, one node,
//! `log.flush.interval.messages=1`) and its rskafka producer (acks=all).
//!
//! ```text
//! cargo bench --bench flink -- [--write-results] [--events N] [--rounds K]
//!     [--rate R] [--latency-secs S] [--warmup-secs W] [--depth D]
//!     [--parallelism P] [--only aquifer|kafka]
//! ```
//! Defaults: 500,000 events read by 3 runs of the job (a fresh JVM each;
//! the median run is reported), 5,000 events/s for 20 s after 3 s of
//! warm-up, one send in flight per partition (`--depth`), parallelism 2.
//! `--write-results` writes `benches/RESULTS-flink.md`. The job is built by
//! `benches/peers/build-flink-job.sh` (which first installs the connector
//! from `connectors/` into ~/.m2); Kafka comes from
//! `benches/peers/install-kafka.sh`; both need `java` and `mvn`.
//! `AQUIFER_FLINK_JOB_JAVA_OPTS` adds JVM options to the job's `java` (a
//! profiler agent, say).

#[path = "harness/brokers/aquifer.rs"]
#[allow(dead_code)] // the compare suite's broker; its producer is used here
mod aquifer;
#[path = "harness/broker.rs"]
#[allow(dead_code)] // the comparison's counters and traits, partly used here
mod broker;
#[path = "harness/brokers/kafka.rs"]
#[allow(dead_code)]
mod kafka;
use aquifer_testkit as common;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use tokio::io::AsyncBufReadExt;

use aquifer::AquiferProducer;
use aquifer_client::{Client, StreamName, WriterConfig};
use aquifer_testkit::bench;
use broker::{Broker, ProcSample, Producer};
use common::{ServerOpts, ServerProcess};
use kafka::Kafka;

/// Payload bytes of every event.
const EVENT_BYTES: usize = 1024;
/// Segments of the stream, partitions of the topic (the paced writer's
/// loop polls exactly two partitions' sends).
const PARTITIONS: u32 = 2;
const _: () = assert!(PARTITIONS == 2);
/// Preload: events per send and sends in flight per partition (compare.rs's
/// workload a).
const PRELOAD_BATCH: usize = 64;
const PRELOAD_DEPTH: usize = 8;
/// Latency: the writer sends what is due every tick, one send per partition.
const TICK: Duration = Duration::from_millis(5);
/// How long the job may take to print READY (JVM, MiniCluster, submission)
/// and, in latency mode, to see its first event.
const JOB_START_TIMEOUT: Duration = Duration::from_secs(120);
/// What the job may take beyond its own reading time before it is killed.
const JOB_SLACK: Duration = Duration::from_secs(120);
/// The job's JVM heap (as the connector's tests give Flink's MiniCluster).
const JOB_HEAP: &str = "-Xmx2g";

struct Config {
    events: u64,
    rate: u64,
    latency_secs: u64,
    warmup_secs: u64,
    /// Latency mode: sends in flight per partition; events due meanwhile
    /// go out together in a later one.
    depth: usize,
    /// Throughput runs of the job over the same preloaded events.
    rounds: u32,
    parallelism: u32,
    only: Option<String>,
    write_results: bool,
}

impl Config {
    fn measured(&self) -> u64 {
        self.rate * self.latency_secs
    }

    fn command(&self) -> String {
        let mut c = format!(
            "cargo bench --bench flink -- --events {} --rounds {} --rate {} --latency-secs {} --warmup-secs {} --depth {} --parallelism {}",
            self.events, self.rounds, self.rate, self.latency_secs, self.warmup_secs, self.depth, self.parallelism
        );
        if let Some(only) = &self.only {
            c += &format!(" --only {only}");
        }
        if self.write_results {
            c += " --write-results";
        }
        c
    }
}

fn parse_args() -> Config {
    let mut c = Config {
        events: 500_000,
        rate: 5_000,
        latency_secs: 20,
        warmup_secs: 3,
        depth: 1,
        rounds: 3,
        parallelism: 2,
        only: None,
        write_results: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut number = |what: &str| -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|&n: &u64| n > 0)
                .unwrap_or_else(|| {
                    eprintln!("flink bench: {what} takes a positive number");
                    std::process::exit(2)
                })
        };
        match arg.as_str() {
            "--events" => c.events = number("--events"),
            "--rate" => c.rate = number("--rate"),
            "--latency-secs" => c.latency_secs = number("--latency-secs"),
            "--warmup-secs" => c.warmup_secs = number("--warmup-secs"),
            "--depth" => c.depth = number("--depth") as usize,
            "--rounds" => c.rounds = number("--rounds") as u32,
            "--parallelism" => c.parallelism = number("--parallelism") as u32,
            "--only" => match it.next().as_deref() {
                Some(b @ ("aquifer" | "kafka")) => c.only = Some(b.to_owned()),
                _ => {
                    eprintln!("flink bench: --only aquifer|kafka");
                    std::process::exit(2)
                }
            },
            "--write-results" => c.write_results = true,
            "--bench" => {}
            other => eprintln!("flink bench: ignoring argument {other:?}"),
        }
    }
    c
}

fn main() {
    let config = parse_args();
    let args = bench::Args {
        quick: false,
        write_results: config.write_results,
        flags: Vec::new(),
    };
    let started = Instant::now();
    let load_start = bench::load_average();
    let report = bench::runtime().block_on(run(&config));
    bench::finish("flink", &args, started, &report, "RESULTS-flink.md", || {
        header(&config, &load_start, started.elapsed()) + &report
    });
}

/// The results file's opening: command, date, revision, machine.
fn header(config: &Config, load_start: &str, took: Duration) -> String {
    let dirty = !bench::command_line("git", &["status", "--porcelain"]).is_empty();
    format!(
        "# Flink job over Aquifer and over Kafka\n\n\
         Command: `{}` (benches/flink.rs, {:.0} s)  \n\
         Date: {}  \n\
         Revision: {}{}  \n\
         Machine: {} vCPU VM ({}), everything on loopback: one broker at a time, this bench's \
         writer and the Flink job's JVM beside it; load average at the start {load_start}, at \
         the end {}.\n\n",
        config.command(),
        took.as_secs_f64(),
        bench::command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        bench::command_line("git", &["rev-parse", "--short", "HEAD"]),
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        bench::cpu_model(),
        bench::load_average(),
    )
}

// ---------------------------------------------------------------- payloads

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// An event as the job parses it: the send time (ns since the epoch, LE),
/// then 1 if its latency counts (0: preloaded or warm-up), then filler.
fn payload(send_ns: u64, measured: bool) -> Bytes {
    let mut b = BytesMut::with_capacity(EVENT_BYTES);
    b.put_u64_le(send_ns);
    b.put_u8(u8::from(measured));
    b.resize(EVENT_BYTES, b'x');
    b.freeze()
}

fn micros(d: Duration) -> u64 {
    d.as_micros().clamp(1, u128::from(u64::MAX)) as u64
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram")
}

// ----------------------------------------------------------------- brokers

/// What the bench needs of a broker: its process, where the job reads it,
/// and fresh topics of `PARTITIONS` partitions with a producer on them.
trait Target: Send + Sync {
    type P: Producer;
    fn pid(&self) -> u32;
    fn source(&self) -> Source;
    /// Creates `topic` and opens a producer over all its partitions.
    fn topic(&self, topic: &str) -> impl Future<Output = Result<Self::P>> + Send;
}

/// A release `aquifer serve` with compare.rs's memory budgets.
struct AquiferNode {
    server: ServerProcess,
    admin: Client,
}

/// The node's memory budgets (as benches/compare.rs and core.rs run it).
const TAIL_BUFFER_BYTES_MAX: u64 = 256 << 20;
const CACHE_BYTES_MAX: u64 = 256 << 20;

impl AquiferNode {
    async fn start() -> Result<(AquiferNode, String)> {
        let config = format!(
            "tail_buffer_bytes_max = {TAIL_BUFFER_BYTES_MAX}\ncache_bytes_max = {CACHE_BYTES_MAX}\n"
        );
        let server = ServerProcess::start(ServerOpts::with_config(&config)).await;
        let admin = Client::connect(&server.addr()).await?;
        let version = format!(
            "Aquifer {} (release build, 256 MiB tail buffer and cache)",
            git_rev()
        );
        Ok((AquiferNode { server, admin }, version))
    }
}

fn stream_name(topic: &str) -> String {
    format!("flink/{topic}")
}

impl Target for AquiferNode {
    type P = AquiferProducer;

    fn pid(&self) -> u32 {
        self.server.pid().unwrap_or(0)
    }

    fn source(&self) -> Source {
        Source::Aquifer {
            address: self.server.addr(),
        }
    }

    async fn topic(&self, topic: &str) -> Result<AquiferProducer> {
        let name: StreamName = stream_name(topic).parse()?;
        self.admin.admin().create_stream(&name, PARTITIONS).await?;
        let client = Client::connect(&self.server.addr()).await?;
        let writer = client.writer(&name, WriterConfig::default()).await?;
        let partitions: Vec<u32> = (0..PARTITIONS).collect();
        AquiferProducer::new(writer, &partitions, PARTITIONS)
    }
}

/// Kafka's bootstrap address: `harness/brokers/kafka.rs` keeps it to
/// itself, so it is read back from the `listeners=` line of the
/// server.properties the broker's command line names (its last argument).
fn kafka_bootstrap(pid: u32) -> Result<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let props = cmdline
        .split(|&b| b == 0)
        .rfind(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .context("the broker's command line")?;
    let text = std::fs::read_to_string(&props).with_context(|| format!("read {props}"))?;
    text.lines()
        .filter_map(|l| l.strip_prefix("listeners="))
        .flat_map(|l| l.split(','))
        .find_map(|l| l.strip_prefix("PLAINTEXT://"))
        .map(str::to_owned)
        .with_context(|| format!("no PLAINTEXT listener in {props}"))
}

struct KafkaTarget {
    kafka: Kafka,
    bootstrap: String,
}

impl Target for KafkaTarget {
    type P = kafka::KafkaProducer;

    fn pid(&self) -> u32 {
        self.kafka.pid()
    }

    fn source(&self) -> Source {
        Source::Kafka {
            bootstrap: self.bootstrap.clone(),
        }
    }

    async fn topic(&self, topic: &str) -> Result<kafka::KafkaProducer> {
        self.kafka.create(topic, PARTITIONS).await?;
        let all: Vec<u32> = (0..PARTITIONS).collect();
        self.kafka.producer(topic, &all).await
    }
}

// ----------------------------------------------------------------- writers

/// What the preload or the paced writer did.
struct Written {
    events: u64,
    secs: f64,
    /// Send → ack of each send, µs.
    ack_us: Histogram<u64>,
}

impl Written {
    fn events_s(&self) -> f64 {
        self.events as f64 / self.secs.max(1e-9)
    }
}

/// Writes `events` events round-robin over the partitions, `PRELOAD_BATCH`
/// per send, `PRELOAD_DEPTH` sends in flight per partition, each acked
/// (durably) before this returns.
async fn preload<P: Producer>(producer: Arc<P>, events: u64) -> Result<Written> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..PARTITIONS as usize {
        let producer = producer.clone();
        let mine = events / u64::from(PARTITIONS)
            + u64::from((index as u64) < events % u64::from(PARTITIONS));
        tasks.push(tokio::spawn(async move {
            let mut ack_us = histogram();
            let mut sent = 0u64;
            let mut in_flight = FuturesUnordered::new();
            while sent < mine || !in_flight.is_empty() {
                while sent < mine && in_flight.len() < PRELOAD_DEPTH {
                    let n = (mine - sent).min(PRELOAD_BATCH as u64);
                    let stamp = now_ns();
                    let batch: Vec<Bytes> = (0..n).map(|_| payload(stamp, false)).collect();
                    sent += n;
                    let producer = producer.clone();
                    in_flight.push(async move {
                        let t = Instant::now();
                        producer.send(index, batch).await.map(|()| t.elapsed())
                    });
                }
                if let Some(r) = in_flight.next().await {
                    ack_us.record(micros(r?)).expect("record");
                }
            }
            anyhow::Ok(ack_us)
        }));
    }
    let mut ack_us = histogram();
    for t in tasks {
        ack_us
            .add(&t.await.context("preload task")??)
            .expect("merge");
    }
    Ok(Written {
        events,
        secs: started.elapsed().as_secs_f64(),
        ack_us,
    })
}

/// Writes at `rate` events/s (due events go out every `TICK`, one send per
/// partition, event i to partition i mod 2, each stamped when it is handed
/// to the client; while a partition has `depth` sends in flight, its due
/// events wait and go out together in a later send): warm-up events until `first` is set (the job saw one)
/// and `warmup` more, then exactly `measured` measured ones. Returns the
/// measured phase's figures; every send is acked before it returns.
async fn paced<P: Producer>(
    producer: Arc<P>,
    rate: u64,
    depth: usize,
    warmup: Duration,
    measured: u64,
    first: Arc<AtomicBool>,
) -> Result<Written> {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut due_from = started;
    let mut sent_in_phase = 0u64;
    let mut measuring: Option<Instant> = None;
    let mut warm_until: Option<Instant> = None;
    let mut measured_sent = 0u64;
    let mut next_partition = 0usize;
    let mut ack_us = histogram();
    let mut in_flight: Vec<FuturesUnordered<_>> =
        (0..PARTITIONS).map(|_| FuturesUnordered::new()).collect();
    let deadline = started + JOB_START_TIMEOUT + warmup + Duration::from_secs(measured / rate) * 3;
    loop {
        if Instant::now() > deadline {
            bail!(
                "the paced writer is still running after {:.0?}: {measured_sent} of {measured} measured events sent",
                started.elapsed()
            );
        }
        // Phase changes: warm-up → (job saw one + warmup) → measured.
        if measuring.is_none() {
            if warm_until.is_none() && first.load(Ordering::Acquire) {
                warm_until = Some(Instant::now() + warmup);
            }
            if warm_until.is_some_and(|t| Instant::now() >= t) {
                let now = Instant::now();
                measuring = Some(now);
                due_from = now;
                sent_in_phase = 0;
            }
        }
        if measuring.is_some() && measured_sent >= measured {
            break;
        }
        let elapsed = due_from.elapsed().as_secs_f64();
        let due = ((elapsed * rate as f64) as u64).saturating_sub(sent_in_phase);
        let due = if measuring.is_some() {
            due.min(measured - measured_sent)
        } else {
            due
        };
        let mut batches: Vec<Vec<Bytes>> = (0..PARTITIONS).map(|_| Vec::new()).collect();
        // While the next partition has all its sends in flight, the due
        // events wait for a later tick (they are stamped when sent).
        let busy: Vec<bool> = in_flight.iter().map(|f| f.len() >= depth).collect();
        let stamp = now_ns();
        for _ in 0..due {
            let p = next_partition % PARTITIONS as usize;
            if busy[p] {
                break;
            }
            next_partition += 1;
            batches[p].push(payload(stamp, measuring.is_some()));
        }
        for (index, batch) in batches.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let n = batch.len() as u64;
            sent_in_phase += n;
            if measuring.is_some() {
                measured_sent += n;
            }
            let producer = producer.clone();
            let counted = measuring.is_some();
            in_flight[index].push(async move {
                let t = Instant::now();
                producer
                    .send(index, batch)
                    .await
                    .map(|()| (t.elapsed(), counted))
            });
        }
        // Collect acks until the next tick.
        let tick = ticker.tick();
        tokio::pin!(tick);
        loop {
            let [a, b] = &mut in_flight[..] else {
                unreachable!("two partitions")
            };
            tokio::select! {
                _ = &mut tick => break,
                Some(r) = a.next() => {
                    let (d, counted) = r?;
                    if counted { ack_us.record(micros(d)).expect("record"); }
                }
                Some(r) = b.next() => {
                    let (d, counted) = r?;
                    if counted { ack_us.record(micros(d)).expect("record"); }
                }
            }
        }
    }
    let secs = measuring.map_or(0.0, |t| t.elapsed().as_secs_f64());
    for f in &mut in_flight {
        while let Some(r) = f.next().await {
            let (d, counted) = r?;
            if counted {
                ack_us.record(micros(d)).expect("record");
            }
        }
    }
    Ok(Written {
        events: measured_sent,
        secs,
        ack_us,
    })
}

// --------------------------------------------------------------- the job

/// The job's runtime classpath, built (or reused) by build-flink-job.sh.
fn job_classpath() -> Result<String> {
    let file = broker::install("build-flink-job.sh")?;
    let cp = std::fs::read_to_string(&file).with_context(|| format!("read {file}"))?;
    Ok(cp.trim().to_owned())
}

/// `AQUIFER_FLINK_JOB_JAVA_OPTS`: more JVM options for the job (split at
/// whitespace), e.g. a profiler's `-agentpath:...`.
fn extra_java_opts() -> Vec<String> {
    std::env::var("AQUIFER_FLINK_JOB_JAVA_OPTS")
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// One run of the job: a `java` child ended on drop, its stdout read line
/// by line, its stderr in a file.
struct Job {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::Receiver<String>,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Job {
    fn spawn(classpath: &str, args: &[String]) -> Result<Job> {
        let dir = tempfile::Builder::new()
            .prefix("aquifer-flink-job-")
            .tempdir()?;
        let stderr = dir.path().join("job.stderr");
        let mut cmd = tokio::process::Command::new("java");
        cmd.arg(JOB_HEAP)
            .args(extra_java_opts())
            .arg("-cp")
            .arg(classpath)
            .arg("FlinkSourceBench")
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&stderr)?))
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("spawn java FlinkSourceBench")?;
        let stdout = child.stdout.take().context("the job's stdout")?;
        let (tx, lines) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
        });
        Ok(Job {
            child,
            lines,
            stderr,
            _dir: dir,
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The next stdout line starting with `prefix` (others are skipped),
    /// within `timeout`.
    async fn line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if line.starts_with(prefix) => return Ok(line),
                Ok(Some(_)) => {}
                Ok(None) => {
                    let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                        .await
                        .map_or("still running".into(), |s| {
                            s.map_or_else(|e| e.to_string(), |s| s.to_string())
                        });
                    bail!(
                        "the job ended ({status}) before printing {prefix}: {}",
                        self.stderr_tail()
                    );
                }
                Err(_) => bail!(
                    "no {prefix} from the job within {timeout:?}: {}",
                    self.stderr_tail()
                ),
            }
        }
    }

    /// The job's own error lines (its FlinkSourceBench: messages), else the
    /// last lines of its stderr.
    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let own: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("FlinkSourceBench") || l.starts_with("  caused by"))
            .collect();
        let lines: Vec<&str> = if own.is_empty() {
            text.lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect()
        } else {
            own
        };
        lines.join(" | ")
    }

    /// Waits (bounded) for the process to exit after its RESULT.
    async fn finish(mut self) {
        if tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .is_err()
        {
            eprintln!("flink bench: the job did not exit 60 s after its result: killing it");
            let _ = self.child.kill().await;
        }
    }
}

/// The `key=value` fields of a RESULT line.
fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn field(f: &HashMap<String, String>, key: &str) -> Result<f64> {
    f.get(key)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("the job's result has no {key}"))
}

/// Where the job reads from: the source's flags.
fn source_args(source: &Source, name: &str) -> Vec<String> {
    match source {
        Source::Aquifer { address } => vec![
            "--source".into(),
            "aquifer".into(),
            "--address".into(),
            address.clone(),
            "--stream".into(),
            stream_name(name),
        ],
        Source::Kafka { bootstrap } => vec![
            "--source".into(),
            "kafka".into(),
            "--bootstrap".into(),
            bootstrap.clone(),
            "--topic".into(),
            name.into(),
        ],
    }
}

enum Source {
    Aquifer { address: String },
    Kafka { bootstrap: String },
}

/// Throughput mode's figures: the preload, then one or more runs of the
/// job over the same events.
struct Throughput {
    preload: Written,
    /// In the order they ran.
    reads: Vec<Read>,
}

impl Throughput {
    /// The run with the median records/s (the lower middle one of an even
    /// count).
    fn median(&self) -> &Read {
        let mut by_rps: Vec<&Read> = self.reads.iter().collect();
        by_rps.sort_by(|a, b| a.rps().total_cmp(&b.rps()));
        by_rps[(by_rps.len() - 1) / 2]
    }

    /// "min–max" records/s over the runs.
    fn range(&self) -> String {
        let rps = self.reads.iter().map(Read::rps);
        let (lo, hi) = rps.fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(r), hi.max(r)));
        format!("{lo:.0}–{hi:.0}")
    }
}

/// One throughput run of the job.
struct Read {
    records: u64,
    read_secs: f64,
    job_secs: f64,
    /// The job's JVM, from its first record to its last subtask's end.
    job_cpu_s: f64,
    /// The broker's process over the whole job run.
    broker_cpu_s: f64,
    per_subtask: String,
}

impl Read {
    fn rps(&self) -> f64 {
        self.records as f64 / self.read_secs.max(1e-9)
    }
}

/// Latency mode's figures (ms).
struct Latency {
    written: Written,
    measured: u64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

async fn throughput<T: Target>(broker: &T, classpath: &str, config: &Config) -> Result<Throughput> {
    let topic = "flink-tput";
    let producer = Arc::new(broker.topic(topic).await?);
    eprintln!("flink bench: preloading {} events", config.events);
    let limit = Duration::from_secs(60 + config.events / 1_000);
    let preload = tokio::time::timeout(limit, preload(producer, config.events))
        .await
        .map_err(|_| anyhow!("the preload did not finish within {limit:?}"))??;
    eprintln!(
        "flink bench: preloaded {} events in {:.1} s ({:.0} events/s)",
        preload.events,
        preload.secs,
        preload.events_s()
    );
    let limit = JOB_SLACK + Duration::from_secs(config.events / 2_000);
    let mut args = source_args(&broker.source(), topic);
    args.extend([
        "--mode".into(),
        "throughput".into(),
        "--events".into(),
        config.events.to_string(),
        "--parallelism".into(),
        config.parallelism.to_string(),
        "--timeout-secs".into(),
        limit.as_secs().to_string(),
    ]);
    let mut reads = Vec::new();
    for round in 1..=config.rounds {
        let before = ProcSample::read(broker.pid());
        let mut job = Job::spawn(classpath, &args)?;
        job.line("READY", JOB_START_TIMEOUT).await?;
        let result = job.line("RESULT", limit + JOB_SLACK).await?;
        let after = ProcSample::read(broker.pid());
        job.finish().await;
        let f = fields(&result);
        let read = Read {
            records: field(&f, "records")? as u64,
            read_secs: field(&f, "seconds")?,
            job_secs: field(&f, "job_seconds")?,
            job_cpu_s: field(&f, "cpu_s").unwrap_or(f64::NAN),
            broker_cpu_s: after.cpu_s - before.cpu_s,
            per_subtask: f.get("per_subtask").cloned().unwrap_or_default(),
        };
        eprintln!(
            "flink bench: run {round} of {}: {} records in {:.2} s = {:.0} records/s",
            config.rounds,
            read.records,
            read.read_secs,
            read.rps()
        );
        reads.push(read);
    }
    Ok(Throughput { preload, reads })
}

async fn latency<T: Target>(broker: &T, classpath: &str, config: &Config) -> Result<Latency> {
    let topic = "flink-latency";
    let producer = Arc::new(broker.topic(topic).await?);
    let measured = config.measured();
    let warmup = Duration::from_secs(config.warmup_secs);
    let limit = JOB_START_TIMEOUT + warmup + Duration::from_secs(config.latency_secs) + JOB_SLACK;
    let mut args = source_args(&broker.source(), topic);
    args.extend([
        "--mode".into(),
        "latency".into(),
        "--events".into(),
        measured.to_string(),
        "--parallelism".into(),
        config.parallelism.to_string(),
        "--timeout-secs".into(),
        limit.as_secs().to_string(),
    ]);
    let mut job = Job::spawn(classpath, &args)?;
    job.line("READY", JOB_START_TIMEOUT).await?;
    eprintln!(
        "flink bench: job {} running; writing {} events/s",
        job.pid().unwrap_or(0),
        config.rate
    );
    let first = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(paced(
        producer,
        config.rate,
        config.depth,
        warmup,
        measured,
        first.clone(),
    ));
    let outcome = async {
        job.line("FIRST", JOB_START_TIMEOUT).await?;
        first.store(true, Ordering::Release);
        job.line("RESULT", limit).await
    }
    .await;
    let result = match outcome {
        Ok(r) => r,
        Err(e) => {
            writer.abort();
            return Err(e);
        }
    };
    let written = writer.await.context("paced writer task")??;
    job.finish().await;
    let f = fields(&result);
    Ok(Latency {
        written,
        measured: field(&f, "measured")? as u64,
        p50: field(&f, "p50_ms")?,
        p99: field(&f, "p99_ms")?,
        p999: field(&f, "p999_ms")?,
        max: field(&f, "max_ms")?,
    })
}

/// One broker's figures, or why there are none.
struct Run {
    name: &'static str,
    version: String,
    throughput: Result<Throughput, String>,
    latency: Result<Latency, String>,
}

async fn run_broker<T: Target>(
    name: &'static str,
    started: Result<(T, String)>,
    classpath: &str,
    config: &Config,
) -> Run {
    let (broker, version) = match started {
        Ok(b) => b,
        Err(e) => {
            let why = format!("{name} did not start: {e:#}");
            eprintln!("flink bench: {why}");
            return Run {
                name,
                version: String::new(),
                throughput: Err(why.clone()),
                latency: Err(why),
            };
        }
    };
    eprintln!("flink bench: {name}: throughput");
    let tput = throughput(&broker, classpath, config)
        .await
        .map_err(|e| format!("{e:#}"));
    match &tput {
        Ok(t) => eprintln!(
            "flink bench: {name}: median {:.0} records/s (runs: {})",
            t.median().rps(),
            t.range()
        ),
        Err(e) => eprintln!("flink bench: {name}: throughput failed: {e}"),
    }
    eprintln!("flink bench: {name}: latency");
    let lat = latency(&broker, classpath, config)
        .await
        .map_err(|e| format!("{e:#}"));
    match &lat {
        Ok(l) => eprintln!(
            "flink bench: {name}: e2e p50 {:.2} ms, p99 {:.2} ms over {} events",
            l.p50, l.p99, l.measured
        ),
        Err(e) => eprintln!("flink bench: {name}: latency failed: {e}"),
    }
    Run {
        name,
        version,
        throughput: tput,
        latency: lat,
    }
}

async fn run(config: &Config) -> String {
    let want = |b: &str| config.only.as_deref().is_none_or(|o| o == b);
    eprintln!("flink bench: building the Flink job (benches/peers/build-flink-job.sh)");
    let classpath = match tokio::task::spawn_blocking(job_classpath)
        .await
        .expect("build task")
    {
        Ok(cp) => cp,
        Err(e) => {
            eprintln!("flink bench: the Flink job could not be built: {e:#}");
            return format!("The Flink job could not be built: {e:#}.\n");
        }
    };
    let mut runs = Vec::new();
    if want("aquifer") {
        eprintln!("flink bench: starting aquifer");
        let started = AquiferNode::start().await;
        runs.push(run_broker("aquifer", started, &classpath, config).await);
    }
    if want("kafka") {
        eprintln!("flink bench: starting kafka (durable)");
        let started = match Kafka::start(true).await {
            Ok((kafka, v)) => kafka_bootstrap(kafka.pid()).map(|bootstrap| {
                (
                    KafkaTarget { kafka, bootstrap },
                    format!("Kafka {v} (KRaft, one node, `log.flush.interval.messages=1`), written by rskafka (acks=all)"),
                )
            }),
            Err(e) => Err(e),
        };
        runs.push(run_broker("kafka", started, &classpath, config).await);
    }
    report(config, &runs)
}

fn git_rev() -> String {
    bench::command_line("git", &["rev-parse", "--short", "HEAD"])
}

// ---------------------------------------------------------------- report

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}x", a / b)
    } else {
        "–".into()
    }
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn report(config: &Config, runs: &[Run]) -> String {
    let java = broker::command_text("java", &["-version"]);
    let mut out = format!(
        "The job (benches/peers/flink-job/, `FlinkSourceBench`): source → `map` (stateless: parse \
         the send time from the payload's first 9 bytes) → a counting sink, all chained, \
         parallelism {p}, Flink 2.3.0 in a local MiniCluster (`java {JOB_HEAP}`, {java}), default \
         settings (no checkpoints, object reuse off). Aquifer: `AquiferSource` (connectors/flink, \
         `startFromHead`, throughput `boundedAtTail()`); Kafka: flink-connector-kafka 5.0.0-2.2 \
         `KafkaSource` (`earliest()`, throughput `setBounded(latest())`), its consumer's defaults. \
         Events of {EVENT_BYTES} B on a stream of {PARTITIONS} segments / a topic of {PARTITIONS} \
         partitions, a fresh one per mode.\n\n\
         Brokers, one at a time: {}.\n\n",
        runs.iter()
            .map(|r| format!(
                "{}: {}",
                r.name,
                if r.version.is_empty() {
                    "unavailable"
                } else {
                    &r.version
                }
            ))
            .collect::<Vec<_>>()
            .join("; "),
        p = config.parallelism,
        java = java.lines().next().unwrap_or("java"),
    );

    out += &format!(
        "## Throughput: {} preloaded events, read head to tail, {} runs of the job\n\n\
         Preloaded by this process before the job starts ({PRELOAD_BATCH} events per send, \
         {PRELOAD_DEPTH} sends in flight per partition, every ack durable), then read by {} runs \
         of the job, each a fresh JVM; the row shows the run with the median records/s, and the \
         range over all runs. records/s is the job's count over the time from the first record \
         any subtask saw to the last one; job wall time includes the JVM's MiniCluster start and \
         the job's submission. Job CPU: the job's JVM (all threads, the JIT compiling the fresh \
         JVM's hot code included) from the first record to the end; broker CPU: the broker's \
         process over the whole job run.\n\n\
         | source | preload events/s | records | read s | records/s (median) | records/s (range) | MB/s | job wall s | job CPU s (µs/record) | broker CPU s (µs/record) | records per subtask |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        config.events, config.rounds, config.rounds,
    );
    for r in runs {
        match &r.throughput {
            Ok(t) => {
                let m = t.median();
                let per = |cpu: f64| 1e6 * cpu / m.records.max(1) as f64;
                out += &format!(
                    "| {} | {:.0} | {} | {:.2} | {:.0} | {} | {:.1} | {:.1} | {:.1} ({:.1}) | {:.1} ({:.1}) | {} |\n",
                    r.name,
                    t.preload.events_s(),
                    m.records,
                    m.read_secs,
                    m.rps(),
                    t.range(),
                    m.rps() * EVENT_BYTES as f64 / 1e6,
                    m.job_secs,
                    m.job_cpu_s,
                    per(m.job_cpu_s),
                    m.broker_cpu_s,
                    per(m.broker_cpu_s),
                    m.per_subtask,
                )
            }
            Err(e) => out += &format!("| {} | – | – | – | – | – | – | – | – | – | {e} |\n", r.name),
        }
    }

    out += &format!(
        "\n## End-to-end latency: {} events/s for {} s, tailing\n\n\
         The job tails a fresh stream / topic from its head; this process writes at the rate \
         (what is due every {} ms, one send per partition, at most {} in flight per \
         partition: events due meanwhile wait and go out together in a later send; each event \
         is stamped with the wall clock when it is handed to the client, so that wait is not in \
         its latency), \
         warm-up events until the job saw its first one plus {} s, then {} measured ones. \
         Latency = the sink's wall clock (`Instant.now()`) − the stamp, same machine, computed in \
         the job over every measured event. Write ack: send → durable ack of the measured \
         phase's sends, seen by the writer.\n\n\
         | source | measured events | written events/s | e2e p50 ms | e2e p99 ms | e2e p99.9 ms | e2e max ms | write ack p50 / p99 ms |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        config.rate,
        config.latency_secs,
        TICK.as_millis(),
        config.depth,
        config.warmup_secs,
        config.measured(),
    );
    for r in runs {
        match &r.latency {
            Ok(l) => {
                out += &format!(
                    "| {} | {} | {:.0} | {} | {} | {} | {} | {} / {} |\n",
                    r.name,
                    l.measured,
                    l.written.events_s(),
                    ms(l.p50),
                    ms(l.p99),
                    ms(l.p999),
                    ms(l.max),
                    ms(l.written.ack_us.value_at_quantile(0.5) as f64 / 1000.0),
                    ms(l.written.ack_us.value_at_quantile(0.99) as f64 / 1000.0),
                )
            }
            Err(e) => out += &format!("| {} | – | – | – | – | – | – | {e} |\n", r.name),
        }
    }

    let get = |name: &str| runs.iter().find(|r| r.name == name);
    if let (Some(a), Some(k)) = (get("aquifer"), get("kafka")) {
        out += "\n## Aquifer / Kafka\n\n| figure | Aquifer | Kafka | Aquifer / Kafka |\n|---|---:|---:|---:|\n";
        if let (Ok(at), Ok(kt)) = (&a.throughput, &k.throughput) {
            let (am, km) = (at.median(), kt.median());
            let per = |r: &Read| 1e6 * r.job_cpu_s / r.records.max(1) as f64;
            out += &format!(
                "| records/s, median run (higher is better) | {:.0} | {:.0} | {} |\n",
                am.rps(),
                km.rps(),
                ratio(am.rps(), km.rps())
            );
            out += &format!(
                "| job CPU µs per record, median run | {:.1} | {:.1} | {} |\n",
                per(am),
                per(km),
                ratio(per(am), per(km))
            );
        }
        if let (Ok(al), Ok(kl)) = (&a.latency, &k.latency) {
            out += &format!(
                "| e2e latency p50 ms (lower is better) | {} | {} | {} |\n",
                ms(al.p50),
                ms(kl.p50),
                ratio(al.p50, kl.p50)
            );
            out += &format!(
                "| e2e latency p99 ms (lower is better) | {} | {} | {} |\n",
                ms(al.p99),
                ms(kl.p99),
                ratio(al.p99, kl.p99)
            );
        }
    }
    out
}
