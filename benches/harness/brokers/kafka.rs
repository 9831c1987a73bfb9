//! Apache Kafka (KRaft, one node that is broker and controller) behind the
//! `Broker` trait, driven by rskafka (pure Rust; produce requests always ask
//! for acks=all): a producer is one rskafka client with a partition client
//! per partition (rskafka gives each partition client its own connection to
//! the partition's leader and has no produce request spanning partitions), a
//! send is one produce request of the batch to one partition; a consumer
//! fetches every partition concurrently, each from offset 0.
//!
//! Two set-ups: durable, with `log.flush.interval.messages=1` (the broker
//! fsyncs the partition's log after every append, i.e. per produce request,
//! before it answers), and Kafka's defaults, which acknowledge from the page
//! cache and leave fsync to the OS and to replication (not durable per ack
//! on one node).
//!
//! Transactions: rskafka has none, so `Kafka::transactional_producer` runs
//! Kafka's own Java transactional producer (`benches/peers/kafka-txn/`,
//! compiled by `build-kafka-txn.sh`) as a child process against the broker
//! (one node, so the transaction state log has a replication factor and a
//! min ISR of one) and parses the figures it prints. In the durable set-up
//! the flush per append also covers the transaction coordinator's log
//! (`__transaction_state`, no topic override) and the commit markers:
//! commitTransaction returns once PrepareCommit is appended (and flushed)
//! there; the markers and CompleteCommit are written after the answer, and
//! the producer's next transaction waits for them (the partition leader
//! retries adding the partition every `add.partitions.to.txn.retry.backoff.ms`,
//! 20 ms by default). rskafka cannot read the control records (commit
//! markers) of such a topic: consume it with another client.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use rskafka::chrono::Utc;
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::broker::{self, Broker, Consumer, Producer, ServerChild};
use crate::common::free_port;

/// Bytes one fetch asks for per partition.
const FETCH_BYTES_MAX: i32 = 4 << 20;
/// How long a fetch waits at the end of a partition for new records (ms).
const FETCH_WAIT_MS: i32 = 500;
/// Fetched batches a consumer buffers across its partitions.
const CONSUMER_QUEUE: usize = 16;
/// How much longer than its `seconds` the transactional producer may take
/// (JVM start, initTransactions, the warm-up and last transactions, close)
/// before it is killed.
const TXN_BENCH_SLACK: Duration = Duration::from_secs(60);
/// The JVM options of Kafka's own start scripts (kafka-server-start.sh).
const JVM_OPTS: &[&str] = &[
    "-Xms1G",
    "-Xmx1G",
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
];

pub struct Kafka {
    server: Served,
    bootstrap: String,
    port: u16,
    /// The connection that creates topics.
    admin: Client,
    /// The install's jars (kafka-clients for the transactional producer).
    lib: PathBuf,
    /// Warnings and errors to stderr: the broker's log4j2 configuration,
    /// also the transactional producer's.
    log4j: PathBuf,
}

/// The process behind the Kafka protocol: Apache Kafka, or an Aquifer
/// node's Kafka listener (the same client on two brokers).
enum Served {
    Kafka(ServerChild),
    #[allow(dead_code)] // made by aquifer_listener (benches/compare.rs only)
    Aquifer(crate::common::ServerProcess),
}

impl Served {
    fn pid(&self) -> u32 {
        match self {
            Served::Kafka(s) => s.pid(),
            Served::Aquifer(s) => s.pid().unwrap_or(0),
        }
    }
}

/// One run of [`Kafka::transactional_producer`].
#[allow(dead_code)] // used by benches/txn.rs (issue 17)
#[derive(Debug, Clone, Copy)]
pub struct KafkaTxnRun<'a> {
    /// A fresh topic, created with `partitions`.
    pub topic: &'a str,
    pub partitions: u32,
    pub events_per_txn: usize,
    pub event_bytes: usize,
    /// At most this long, and at most `max_txns` transactions.
    pub seconds: u64,
    pub max_txns: u64,
    /// The producer's `batch.size` (bytes) and `linger.ms`; None:
    /// kafka-clients' defaults.
    pub batching: Option<(usize, u64)>,
}

/// What one run of Kafka's transactional producer measured
/// (`Kafka::transactional_producer`): latencies in ms over the committed
/// transactions, throughput over their wall time (MB = 10^6 bytes).
#[allow(dead_code)] // read by benches/txn.rs (issue 17)
#[derive(Debug, Clone, serde::Deserialize)]
pub struct KafkaTxnFigures {
    pub events_per_txn: usize,
    /// Transactions committed (and measured).
    pub txns: u64,
    /// From the commitTransaction call to its return: the flush of the
    /// transaction's records (acks=all) and the EndTxn round trip.
    pub commit_p50_ms: f64,
    pub commit_p99_ms: f64,
    /// From beginTransaction to commitTransaction's return.
    pub txn_p50_ms: f64,
    pub txn_p99_ms: f64,
    /// Committed events per second.
    pub events_per_s: f64,
    /// Committed event bytes (payloads) per second, in MB.
    pub mb_per_s: f64,
}

impl Kafka {
    /// Fetches the jars (if needed), formats a fresh log dir and starts the
    /// broker; `durable` adds `log.flush.interval.messages=1`. Returns the
    /// broker and its version.
    pub async fn start(durable: bool) -> Result<(Kafka, String)> {
        let home = broker::install("install-kafka.sh")?;
        let lib = Path::new(&home).join("lib");
        let version = kafka_version(&lib)?;
        let classpath = format!("{}/*", lib.display());
        let (port, controller_port) = (free_port(), free_port());
        let dir = ServerChild::temp_dir(if durable { "kafka-durable" } else { "kafka" })?;
        let props = dir.path().join("server.properties");
        let log4j = dir.path().join("log4j2.properties");
        std::fs::write(
            &props,
            server_properties(&dir.path().join("data"), port, controller_port, durable),
        )?;
        std::fs::write(&log4j, LOG4J2)?;
        let log4j_opt = format!("-Dlog4j2.configurationFile={}", log4j.display());

        let format = Command::new("java")
            .args([
                "-cp",
                &classpath,
                &log4j_opt,
                "kafka.tools.StorageTool",
                "format",
            ])
            .args(["-t", &cluster_id(), "-c"])
            .arg(&props)
            .output()
            .context("run kafka.tools.StorageTool")?;
        if !format.status.success() {
            let err = String::from_utf8_lossy(&format.stderr);
            return Err(anyhow!(
                "kafka storage format failed: {}",
                err.lines().last().unwrap_or("")
            ));
        }

        let mut cmd = Command::new("java");
        cmd.args(JVM_OPTS)
            .args(["-cp", &classpath, &log4j_opt, "kafka.Kafka"])
            .arg(&props);
        let mut server = ServerChild::spawn(cmd, dir)?;
        let bootstrap = format!("127.0.0.1:{port}");
        server
            .wait_ready(Duration::from_secs(90), || async {
                let client = ClientBuilder::new(vec![bootstrap.clone()]).build().await?;
                client.list_topics().await?;
                Ok(())
            })
            .await?;
        let admin = ClientBuilder::new(vec![bootstrap.clone()]).build().await?;
        Ok((
            Kafka {
                server: Served::Kafka(server),
                bootstrap,
                port,
                admin,
                lib,
                log4j,
            },
            version,
        ))
    }

    /// An Aquifer node with `config` (the aquifer entry's budgets) serving
    /// the Kafka protocol, driven by this same client: the Kafka path of
    /// Aquifer next to its native one. Returns it and a version line.
    #[allow(dead_code)] // called by benches/compare.rs only
    pub async fn aquifer_listener(config: &str) -> Result<(Kafka, String)> {
        let port = free_port();
        let config = format!("{config}kafka_listen = \"127.0.0.1:{port}\"\n");
        let server =
            crate::common::ServerProcess::start(crate::common::ServerOpts::with_config(&config))
                .await;
        let bootstrap = format!("127.0.0.1:{port}");
        let admin = ClientBuilder::new(vec![bootstrap.clone()]).build().await?;
        Ok((
            Kafka {
                server: Served::Aquifer(server),
                bootstrap,
                port,
                admin,
                lib: PathBuf::new(),
                log4j: PathBuf::new(),
            },
            "the aquifer build above, its Kafka listener".into(),
        ))
    }

    /// Creates `run.topic` with its partitions and runs one Kafka transactional
    /// producer (Java kafka-clients: `transactional.id`,
    /// `enable.idempotence=true`, `acks=all`, otherwise its defaults) on it:
    /// after initTransactions and an untimed warm-up transaction,
    /// transactions of `events_per_txn` events of `event_bytes` bytes
    /// (spread round-robin over the partitions), back to back, for at most
    /// `seconds` and at most `max_txns` transactions; `batching`, if given,
    /// sets the producer's `batch.size` (bytes) and `linger.ms` instead of
    /// kafka-clients' defaults (16 KiB, 5 ms). The Java program is
    /// compiled on first use (`benches/peers/build-kafka-txn.sh`); it is
    /// killed if it runs `TXN_BENCH_SLACK` past `seconds` or this future is
    /// dropped.
    #[allow(dead_code)] // called by benches/txn.rs (issue 17)
    pub async fn transactional_producer(&self, run: &KafkaTxnRun<'_>) -> Result<KafkaTxnFigures> {
        let KafkaTxnRun {
            topic,
            partitions,
            events_per_txn,
            event_bytes,
            seconds,
            max_txns,
            batching,
        } = *run;
        self.create(topic, partitions).await?;
        let classes = broker::install("build-kafka-txn.sh")?;
        let mut cmd = tokio::process::Command::new("java");
        cmd.arg("-cp")
            .arg(format!("{classes}:{}/*", self.lib.display()))
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.log4j.display()
            ))
            .arg("KafkaTxnBench")
            .args(["--bootstrap", &self.bootstrap, "--topic", topic])
            .args(["--partitions", &partitions.to_string()])
            .args(["--events-per-txn", &events_per_txn.to_string()])
            .args(["--event-bytes", &event_bytes.to_string()])
            .args(["--seconds", &seconds.to_string()])
            .args(["--max-txns", &max_txns.to_string()]);
        if let Some((bytes, linger_ms)) = batching {
            cmd.args(["--batch-bytes", &bytes.to_string()])
                .args(["--linger-ms", &linger_ms.to_string()]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().context("spawn java KafkaTxnBench")?;
        let limit = Duration::from_secs(seconds) + TXN_BENCH_SLACK;
        // On the timeout the child is dropped with the future: killed.
        let out = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .map_err(|_| anyhow!("KafkaTxnBench still running after {limit:?}: killed"))?
            .context("wait for java KafkaTxnBench")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last_err = || {
            stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
        };
        if !out.status.success() {
            return Err(anyhow!(
                "KafkaTxnBench exited with {}: {}",
                out.status,
                last_err()
            ));
        }
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .ok_or_else(|| anyhow!("KafkaTxnBench printed no figures: {}", last_err()))?;
        let figures: KafkaTxnFigures = serde_json::from_str(line)
            .with_context(|| format!("KafkaTxnBench's figures {line:?}"))?;
        if figures.txns == 0 || figures.events_per_txn != events_per_txn {
            return Err(anyhow!(
                "KafkaTxnBench measured no transactions or another run: {line}"
            ));
        }
        Ok(figures)
    }

    /// A client of its own (as a separate producer or consumer has) and
    /// its partition clients for `partitions` of `topic`.
    /// Clients of `partitions` over one connection; `nodelay`: set
    /// TCP_NODELAY on them now (producers get it in `producers_opened`).
    async fn partition_clients(
        &self,
        topic: &str,
        partitions: &[u32],
        nodelay: bool,
    ) -> Result<Vec<PartitionClient>> {
        let client = ClientBuilder::new(vec![self.bootstrap.clone()])
            .build()
            .await?;
        let mut out = Vec::with_capacity(partitions.len());
        for &p in partitions {
            let partition = client
                .partition_client(topic, p as i32, UnknownTopicHandling::Retry)
                .await?;
            // One request so the connection to the partition's leader is
            // open before its socket options are set.
            partition.get_offset(OffsetAt::Latest).await?;
            out.push(partition);
        }
        if nodelay {
            nodelay_to(self.port);
        }
        Ok(out)
    }
}

/// Sets TCP_NODELAY on every socket of this process connected to
/// 127.0.0.1:`port`. rskafka neither sets it nor exposes its sockets, and
/// with Nagle's algorithm on, a pipelined produce or fetch request waits for
/// the ACK of the previous one (up to a 40 ms delayed ACK): that would be
/// the client's latency, not the broker's. Every other client here (and
/// Kafka's own Java client) sets it.
fn nodelay_to(port: u16) {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in fds.flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<libc::c_int>() else {
            continue;
        };
        // SAFETY: a zeroed sockaddr_in is a valid value of it.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `addr` and `len` describe a writable buffer of that size;
        // on an fd that is not a socket (or is closed by now) getpeername
        // fails and nothing is changed.
        let rc =
            unsafe { libc::getpeername(fd, (&raw mut addr).cast::<libc::sockaddr>(), &mut len) };
        if rc != 0
            || i32::from(addr.sin_family) != libc::AF_INET
            || u16::from_be(addr.sin_port) != port
        {
            continue;
        }
        let one: libc::c_int = 1;
        // SAFETY: `fd` is a TCP socket (it has an AF_INET peer); the option
        // value is a valid c_int of the size passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&raw const one).cast::<libc::c_void>(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// The version in the name of the kafka_2.13-<version>.jar in `lib`.
fn kafka_version(lib: &Path) -> Result<String> {
    for entry in std::fs::read_dir(lib)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(v) = name
            .strip_prefix("kafka_2.13-")
            .and_then(|n| n.strip_suffix(".jar"))
        {
            return Ok(v.to_owned());
        }
    }
    Err(anyhow!("no kafka_2.13 jar in {}", lib.display()))
}

fn server_properties(data: &Path, port: u16, controller_port: u16, durable: bool) -> String {
    let mut p = format!(
        "process.roles=broker,controller\n\
         node.id=1\n\
         controller.quorum.voters=1@127.0.0.1:{controller_port}\n\
         listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}\n\
         advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
         controller.listener.names=CONTROLLER\n\
         listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
         inter.broker.listener.name=PLAINTEXT\n\
         log.dirs={}\n\
         num.partitions=1\n\
         offsets.topic.replication.factor=1\n\
         transaction.state.log.replication.factor=1\n\
         transaction.state.log.min.isr=1\n\
         share.coordinator.state.topic.replication.factor=1\n\
         share.coordinator.state.topic.min.isr=1\n\
         group.initial.rebalance.delay.ms=0\n",
        data.display()
    );
    if durable {
        p.push_str("log.flush.interval.messages=1\n");
    }
    p
}

/// Warnings and errors only, to the server's log.
const LOG4J2: &str = "rootLogger.level = WARN\n\
rootLogger.appenderRef.stderr.ref = STDERR\n\
appender.stderr.type = Console\n\
appender.stderr.name = STDERR\n\
appender.stderr.target = SYSTEM_ERR\n\
appender.stderr.layout.type = PatternLayout\n\
appender.stderr.layout.pattern = [%d] %p %m (%c)%n\n";

/// A random cluster id as Kafka writes one: 16 bytes in URL-safe base64
/// without padding, not starting with '-' (the top bit cleared keeps the
/// first character in A..f).
fn cluster_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bits = rand::random::<u128>() & !(1u128 << 127);
    // 22 characters of 6 bits cover 132 bits: the last one holds 2 bits.
    (0..22)
        .map(|i| {
            let shift = 128i32 - 6 * (i + 1);
            let v = if shift >= 0 {
                (bits >> shift) as usize
            } else {
                (bits << -shift) as usize
            };
            ALPHABET[v & 63] as char
        })
        .collect()
}

impl Broker for Kafka {
    type Producer = KafkaProducer;
    type Consumer = KafkaConsumer;

    /// rskafka keeps its bootstrap connection beside the one to the
    /// partition's leader.
    const SOCKETS_PER_PRODUCER: usize = 2;

    /// One pass over this process's sockets for every producer opened
    /// (one per producer would be quadratic with thousands of them).
    fn producers_opened(&self) {
        nodelay_to(self.port);
    }

    fn pid(&self) -> u32 {
        self.server.pid()
    }

    async fn create(&self, topic: &str, partitions: u32) -> Result<()> {
        self.admin
            .controller_client()?
            .create_topic(topic, partitions as i32, 1, 30_000)
            .await?;
        Ok(())
    }

    async fn producer(&self, topic: &str, partitions: &[u32]) -> Result<KafkaProducer> {
        Ok(KafkaProducer {
            partitions: self.partition_clients(topic, partitions, false).await?,
        })
    }

    async fn consumer(&self, topic: &str, partitions: u32) -> Result<KafkaConsumer> {
        let (tx, rx) = mpsc::channel(CONSUMER_QUEUE);
        let mut fetchers = Vec::new();
        let all: Vec<u32> = (0..partitions).collect();
        for client in self.partition_clients(topic, &all, true).await? {
            let client = Arc::new(client);
            let tx = tx.clone();
            fetchers.push(tokio::spawn(async move {
                let mut offset = 0i64;
                loop {
                    let res = client
                        .fetch_records(offset, 1..FETCH_BYTES_MAX, FETCH_WAIT_MS)
                        .await
                        .map_err(anyhow::Error::from)
                        .map(|(records, _high_watermark)| {
                            let mut batch = Vec::with_capacity(records.len());
                            for r in records {
                                offset = offset.max(r.offset + 1);
                                batch.push(Bytes::from(r.record.value.unwrap_or_default()));
                            }
                            batch
                        });
                    let failed = res.is_err();
                    if tx.send(res).await.is_err() || failed {
                        return;
                    }
                }
            }));
        }
        Ok(KafkaConsumer { rx, fetchers })
    }
}

pub struct KafkaProducer {
    partitions: Vec<PartitionClient>,
}

impl Producer for KafkaProducer {
    async fn send(&self, index: usize, events: Vec<Bytes>) -> Result<()> {
        let timestamp = Utc::now();
        let records = events
            .into_iter()
            .map(|e| Record {
                key: None,
                value: Some(e.to_vec()),
                headers: BTreeMap::new(),
                timestamp,
            })
            .collect();
        self.partitions[index]
            .produce(records, Compression::NoCompression)
            .await?;
        Ok(())
    }
}

pub struct KafkaConsumer {
    rx: mpsc::Receiver<Result<Vec<Bytes>>>,
    fetchers: Vec<JoinHandle<()>>,
}

impl Consumer for KafkaConsumer {
    async fn next(&mut self, out: &mut Vec<Bytes>) -> Result<()> {
        loop {
            let batch = self.rx.recv().await.context("every fetcher stopped")??;
            if !batch.is_empty() {
                out.extend(batch);
                return Ok(());
            }
        }
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        for f in &self.fetchers {
            f.abort();
        }
    }
}
