//! The Kafka listener against a real `aquifer serve` process, with a Rust
//! Kafka client (rskafka) and, where the project's script can install it,
//! Debian's kcat (librdkafka 2.0.2).
//!
//! Shown here: topics created through Kafka are streams; produce answers
//! dense offsets from 0; fetches by offset return the same records from the
//! tail buffer and from tier-2, from any offset; events written natively
//! are records too and the other way round; earliest, latest and by-time
//! offsets; a fetch at the end waits for the next append (woken, not
//! polled); offsets and data survive `kill -9`; garbage on the port closes
//! that connection and nothing else.

use aquifer_testkit as common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{free_port, read_all, stream_name, ServerOpts, ServerProcess};
use rskafka::chrono::Utc;
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;

fn config(kafka_port: u16) -> String {
    format!(
        "kafka_listen = \"127.0.0.1:{kafka_port}\"\n[tier2]\nchunk_bytes = 65536\nflush_interval_ms = 100\n"
    )
}

async fn kafka_client(port: u16) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ClientBuilder::new(vec![format!("127.0.0.1:{port}")])
            .build()
            .await
        {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("kafka client: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no Kafka client: {e}"),
        }
    }
}

async fn partition(client: &Client, topic: &str, p: i32) -> PartitionClient {
    client
        .partition_client(topic, p, UnknownTopicHandling::Retry)
        .await
        .expect("partition client")
}

fn record(key: &str, value: String) -> Record {
    Record {
        key: Some(key.as_bytes().to_vec()),
        value: Some(value.into_bytes()),
        headers: BTreeMap::new(),
        timestamp: Utc::now(),
    }
}

/// Every record of a partition from `from` to `until` (exclusive).
async fn fetch_all(p: &PartitionClient, from: i64, until: i64) -> Vec<(i64, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = from;
    let deadline = Instant::now() + Duration::from_secs(60);
    while at < until {
        assert!(Instant::now() < deadline, "fetched only to {at} of {until}");
        let (records, _hw) = p
            .fetch_records(at, 1..256 * 1024, 1_000)
            .await
            .expect("fetch");
        for r in records.into_iter().take_while(|r| r.offset < until) {
            assert_eq!(r.offset, at, "offsets are dense and in order");
            at += 1;
            out.push((
                r.offset,
                r.record.key.unwrap_or_default(),
                r.record.value.unwrap_or_default(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_clients_produce_and_fetch_streams() {
    let kafka_port = free_port();
    let mut server = ServerProcess::start(ServerOpts::with_config(&config(kafka_port))).await;
    let native = server.client().await;
    let kafka = kafka_client(kafka_port).await;

    // A topic with a dot in its name is a stream of the scope `kafka`.
    let topic = "orders.v1";
    kafka
        .controller_client()
        .expect("controller")
        .create_topic(topic, 3, 1, 10_000)
        .await
        .expect("create topic");
    let name = stream_name("kafka/orders.v1");
    let info = native.admin().describe_stream(&name).await.expect("stream");
    assert_eq!(info.segments.len(), 3);
    let topics = kafka.list_topics().await.expect("list topics");
    let listed = topics
        .iter()
        .find(|t| t.name == topic)
        .expect("topic listed");
    assert_eq!(listed.partitions.len(), 3);

    // Produce: dense offsets from 0, per partition.
    let p0 = partition(&kafka, topic, 0).await;
    let mut expected = Vec::new();
    for batch in 0..40 {
        let records: Vec<Record> = (0..50)
            .map(|i| {
                record(
                    &format!("k{}", i % 7),
                    format!("{batch}-{i}-{}", "x".repeat(200)),
                )
            })
            .collect();
        expected.extend(records.iter().map(|r| r.value.clone().unwrap_or_default()));
        let offsets = p0
            .produce(records, Compression::NoCompression)
            .await
            .expect("produce");
        let first = batch * 50;
        assert_eq!(offsets, (first..first + 50).collect::<Vec<i64>>());
    }
    let n = expected.len() as i64;
    assert_eq!(p0.get_offset(OffsetAt::Latest).await.unwrap(), n);
    assert_eq!(p0.get_offset(OffsetAt::Earliest).await.unwrap(), 0);
    let p1 = partition(&kafka, topic, 1).await;
    assert_eq!(p1.get_offset(OffsetAt::Latest).await.unwrap(), 0);

    // Fetched back from the tail buffer, then, once flushed, from tier-2,
    // from the start and from inside a produced batch.
    let check = |got: &[(i64, Vec<u8>, Vec<u8>)], from: i64| {
        assert_eq!(got.len() as i64, n - from);
        for (offset, key, value) in got {
            assert_eq!(value, &expected[*offset as usize]);
            assert_eq!(key, format!("k{}", offset % 50 % 7).as_bytes());
        }
    };
    check(&fetch_all(&p0, 0, n).await, 0);
    // Partition 0 is the segment lowest in key order.
    wait_in_tier2(&native, &name).await;
    check(&fetch_all(&p0, 0, n).await, 0);
    check(&fetch_all(&p0, 1234, n).await, 1234);
    let past = p0.fetch_records(n + 5, 1..1024, 10).await.unwrap_err();
    assert!(format!("{past:?}").contains("OffsetOutOfRange"), "{past:?}");

    // Native readers see every record as an event with its key.
    let events = read_all(&native, &name, Duration::from_secs(30)).await;
    assert_eq!(events.len() as i64, n);
    assert!(events
        .iter()
        .all(|e| e.routing_key.as_deref().is_some_and(|k| k.starts_with('k'))));

    // Native events are records of the partition their segment is.
    let writer = native
        .writer(&name, aquifer_client::WriterConfig::default())
        .await
        .unwrap();
    for i in 0..30 {
        writer
            .write_event(Some(&format!("native-{i}")), format!("n{i}"))
            .await
            .unwrap();
    }
    writer.flush().await.unwrap();
    let mut native_seen = 0;
    for p in 0..3 {
        let pc = partition(&kafka, topic, p).await;
        let end = pc.get_offset(OffsetAt::Latest).await.unwrap();
        let from = if p == 0 { n } else { 0 };
        let got = fetch_all(&pc, from, end).await;
        for (_, key, value) in &got {
            assert!(key.starts_with(b"native-"));
            assert!(value.starts_with(b"n"));
        }
        native_seen += got.len();
    }
    assert_eq!(native_seen, 30);

    // By time: a time before everything is offset 0; after everything,
    // none (-1 from Kafka, an error from rskafka or the end).
    let early = Utc::now() - rskafka::chrono::Duration::hours(1);
    assert_eq!(p0.get_offset(OffsetAt::Timestamp(early)).await.unwrap(), 0);

    // A fetch at the end waits for the next append, and is woken by it.
    let end = p0.get_offset(OffsetAt::Latest).await.unwrap();
    let waiter = {
        let p = partition(&kafka_client(kafka_port).await, topic, 0).await;
        tokio::spawn(async move {
            let started = Instant::now();
            let (records, _) = p.fetch_records(end, 1..1024 * 1024, 10_000).await.unwrap();
            (records, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    p0.produce(
        vec![record("late", "late".into())],
        Compression::NoCompression,
    )
    .await
    .unwrap();
    let (records, waited) = waiter.await.unwrap();
    assert_eq!(records.len(), 1, "woken by the append");
    assert_eq!(records[0].offset, end);
    assert!(
        waited < Duration::from_secs(9),
        "woken, not timed out: {waited:?}"
    );

    // Garbage and an oversize frame close their connections; the node
    // serves on.
    for junk in [
        &b"\x00\x00\x00\x08garbage!"[..],
        &b"\x7f\xff\xff\xff"[..],
        &b"\xff\xff\xff\xfe"[..],
    ] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", kafka_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(junk).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "closed after {junk:?}");
    }
    assert_eq!(p0.get_offset(OffsetAt::Latest).await.unwrap(), end + 1);

    // kill -9: offsets and records are where they were, and produce goes on.
    server.kill9();
    server.restart().await;
    let kafka = kafka_client(kafka_port).await;
    let p0 = partition(&kafka, topic, 0).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let latest = loop {
        match p0.get_offset(OffsetAt::Latest).await {
            Ok(o) => break o,
            Err(e) if Instant::now() < deadline => {
                eprintln!("after restart: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no offsets after restart: {e}"),
        }
    };
    assert_eq!(latest, end + 1);
    check(&fetch_all(&p0, 0, n).await, 0);
    let offsets = p0
        .produce(
            vec![record("again", "again".into())],
            Compression::NoCompression,
        )
        .await
        .unwrap();
    assert_eq!(offsets, vec![end + 1]);

    // Deleting the topic deletes the stream.
    kafka
        .controller_client()
        .unwrap()
        .delete_topic(topic, 10_000)
        .await
        .expect("delete topic");
    assert!(native.admin().describe_stream(&name).await.is_err());
}

/// Waits until partition 0 (the segment lowest in key order) of `name`
/// is all in tier-2.
async fn wait_in_tier2(native: &aquifer_client::Client, name: &aquifer_client::StreamName) {
    let admin = native.admin();
    common::timing::wait_for("partition 0 all in tier-2", Duration::from_secs(30), || {
        let (admin, name) = (admin.clone(), name.clone());
        async move {
            admin.describe_stream(&name).await.is_ok_and(|i| {
                let p0 = i
                    .segments
                    .iter()
                    .min_by(|a, b| a.key_low.total_cmp(&b.key_low));
                p0.is_some_and(|s| s.length > 0 && s.tier2_length == s.length)
            })
        }
    })
    .await;
}

/// Keys that are not UTF-8, empty keys, null values, headers and the
/// producer's timestamps come back through Kafka as written — from the
/// tail, from tier-2 and after kill -9 — and native readers see each key
/// (base64 where it is not UTF-8) and value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_come_back_with_headers_timestamps_and_byte_keys() {
    let kafka_port = free_port();
    let mut server = ServerProcess::start(ServerOpts::with_config(&config(kafka_port))).await;
    let native = server.client().await;
    let kafka = kafka_client(kafka_port).await;
    kafka
        .controller_client()
        .expect("controller")
        .create_topic("records", 1, 1, 10_000)
        .await
        .expect("create topic");
    let at = |ms: i64| rskafka::chrono::DateTime::from_timestamp_millis(ms).expect("a time");
    let headers = |pairs: &[(&str, &[u8])]| -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    };
    let written = vec![
        Record {
            key: Some(vec![0xff, 0x00, 0x01]),
            value: Some(b"binary key".to_vec()),
            headers: headers(&[("trace", b"\x00\x01\xfe"), ("empty", b"")]),
            timestamp: at(1_577_836_800_000),
        },
        Record {
            key: Some(Vec::new()),
            value: None,
            headers: headers(&[("tombstone", b"yes")]),
            timestamp: at(1_600_000_000_123),
        },
        Record {
            key: None,
            value: Some(Vec::new()),
            headers: BTreeMap::new(),
            timestamp: at(42),
        },
        Record {
            // Kafka times are milliseconds: Utc::now() would not compare.
            timestamp: at(1_700_000_000_000),
            ..record("text", "plain".into())
        },
    ];
    let p0 = partition(&kafka, "records", 0).await;
    let offsets = p0
        .produce(written.clone(), Compression::NoCompression)
        .await
        .expect("produce");
    assert_eq!(offsets, vec![0, 1, 2, 3]);
    let fetch = |p: PartitionClient| async move {
        let (records, _) = p
            .fetch_records(0, 1..1024 * 1024, 1_000)
            .await
            .expect("fetch");
        records.into_iter().map(|r| r.record).collect::<Vec<_>>()
    };
    assert_eq!(
        fetch(partition(&kafka, "records", 0).await).await,
        written,
        "from the tail"
    );

    let name = stream_name("kafka/records");
    let events = read_all(&native, &name, Duration::from_secs(30)).await;
    let seen: Vec<(Option<&str>, &[u8])> = events
        .iter()
        .map(|e| (e.routing_key.as_deref(), &e.payload[..]))
        .collect();
    assert_eq!(
        seen,
        vec![
            (Some("/wAB"), &b"binary key"[..]),
            (None, &b""[..]),
            (None, &b""[..]),
            (Some("text"), &b"plain"[..]),
        ],
        "natives see keys (base64 if not UTF-8) and values"
    );

    wait_in_tier2(&native, &name).await;
    assert_eq!(
        fetch(partition(&kafka, "records", 0).await).await,
        written,
        "from tier-2"
    );
    server.kill9();
    server.restart().await;
    let kafka = kafka_client(kafka_port).await;
    let p0 = partition(&kafka, "records", 0).await;
    assert_eq!(fetch(p0).await, written, "after kill -9");
}

/// Bad topic names, partition counts and a second create get Kafka's
/// errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_topics_are_refused_with_kafka_errors() {
    let kafka_port = free_port();
    let server = ServerProcess::start(ServerOpts::with_config(&config(kafka_port))).await;
    let kafka = kafka_client(kafka_port).await;
    let controller = kafka.controller_client().unwrap();
    let err = controller
        .create_topic("bad/name", 1, 1, 5_000)
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("InvalidTopic"), "{err:?}");
    let err = controller
        .create_topic("many", 5000, 1, 5_000)
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("InvalidPartitions"), "{err:?}");
    controller.create_topic("once", 1, 1, 5_000).await.unwrap();
    let err = controller
        .create_topic("once", 1, 1, 5_000)
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("TopicAlreadyExists"), "{err:?}");
    drop(server);
}

/// What the project's install script `benches/peers/<script>` prints
/// last (the path of what it installed); None (the test says why and
/// skips) where it cannot install it.
fn installed(script: &str, what: &str) -> Option<String> {
    let path = format!("{}/benches/peers/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash").arg(path).output().ok()?;
    if !out.status.success() {
        eprintln!(
            "skipping: {what} unavailable: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(str::to_owned)
}

/// kcat installed by the project's script.
fn kcat() -> Option<String> {
    installed("install-kcat.sh", "kcat")
}

/// Runs kcat with `args` (and `stdin`), bounded in time; its stdout.
fn run_kcat(kcat: &str, args: &[&str], stdin: &str) -> String {
    use std::process::{Command, Stdio};
    let mut child = Command::new("timeout")
        .arg("60")
        .arg(kcat)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kcat");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("kcat stdin");
    drop(input);
    let out = child.wait_with_output().expect("kcat");
    assert!(
        out.status.success(),
        "kcat {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Debian's kcat (librdkafka 2.0.2): produce keyed and gzip-compressed
/// records, consume them from the beginning, the end, the last N and a
/// time, list the metadata, print JSON, and read the same after kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_produces_consumes_and_lists() {
    let Some(kcat) = kcat() else { return };
    let kafka_port = free_port();
    let mut server = ServerProcess::start(ServerOpts::with_config(&config(kafka_port))).await;
    let native = server.client().await;
    native
        .admin()
        .create_stream(&stream_name("kafka/events.kc"), 2)
        .await
        .unwrap();
    let broker = format!("127.0.0.1:{kafka_port}");
    let b = broker.as_str();
    let lines: String = (0..300)
        .map(|i| format!("key{}:value-{i}\n", i % 5))
        .collect();
    let produce = |args: &[&str], input: &str| {
        let args: Vec<&str> = ["-b", b, "-P", "-t", "events.kc", "-K:"]
            .iter()
            .chain(args)
            .copied()
            .collect();
        run_kcat(&kcat, &args, input);
    };
    let consume_as = |p: &str, from: &str, fmt: &str| -> String {
        let args = [
            "-b",
            b,
            "-C",
            "-t",
            "events.kc",
            "-p",
            p,
            "-o",
            from,
            "-e",
            "-f",
            fmt,
        ];
        run_kcat(&kcat, &args, "")
    };
    produce(&["-p", "0", "-z", "gzip"], &lines);
    produce(&["-p", "0"], "last:one\n");
    let expected: Vec<String> = (0..300)
        .map(|i| format!("{i} key{} value-{i}", i % 5))
        .chain(["300 last one".to_string()])
        .collect();
    let consume = |from: &str| -> Vec<String> {
        consume_as("0", from, "%o %k %s\\n")
            .lines()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(consume("beginning"), expected);
    assert_eq!(consume("-2"), expected[299..].to_vec());
    assert_eq!(consume("end"), Vec::<String>::new());
    assert_eq!(consume("s@1000"), expected);
    assert_eq!(consume("250"), expected[250..].to_vec());

    // Headers come back as written.
    produce(
        &["-p", "1", "-H", "trace=t-1", "-H", "app=kcat"],
        "hk:with headers\n",
    );
    assert_eq!(
        consume_as("1", "beginning", "%k|%s|%h\\n"),
        "hk|with headers|trace=t-1,app=kcat\n"
    );

    let listed = run_kcat(&kcat, &["-b", b, "-L", "-t", "events.kc"], "");
    assert!(
        listed.contains("topic \"events.kc\" with 2 partitions"),
        "{listed}"
    );
    assert!(listed.contains("partition 0, leader 1"), "{listed}");
    let json = run_kcat(
        &kcat,
        &[
            "-b",
            b,
            "-C",
            "-t",
            "events.kc",
            "-p",
            "0",
            "-o",
            "-1",
            "-e",
            "-J",
        ],
        "",
    );
    let v: serde_json::Value =
        serde_json::from_str(json.lines().next().unwrap_or("")).expect("kcat -J");
    assert_eq!(v["offset"], 300);
    assert_eq!(v["key"], "last");
    assert_eq!(v["payload"], "one");
    assert!(
        v["ts"].as_i64().is_some_and(|t| t > 1_700_000_000_000),
        "{v}"
    );

    server.kill9();
    server.restart().await;
    assert_eq!(consume("beginning"), expected);
}

/// One Kafka connection speaking raw requests (what no client here lets a
/// test send on purpose: a resent sequence, a gap).
struct Raw {
    stream: std::net::TcpStream,
    correlation: i32,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Raw {
            stream,
            correlation: 0,
        }
    }

    fn call<Req, Resp>(
        &mut self,
        key: kafka_protocol::messages::ApiKey,
        version: i16,
        req: &Req,
    ) -> Resp
    where
        Req: kafka_protocol::protocol::Encodable,
        Resp: kafka_protocol::protocol::Decodable,
    {
        self.correlation += 1;
        let frame = common::kafka::request_frame(key, version, self.correlation, req).unwrap();
        self.stream.write_all(&frame).unwrap();
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).unwrap();
        let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut reply).unwrap();
        common::kafka::response(reply.into(), key, version, self.correlation).unwrap()
    }

    /// Commits `offset` for partition 0 of `topic` from outside group
    /// `g` (generation -1, as Flink does): the error code.
    fn offset_commit(&mut self, g: &str, topic: &str, offset: i64) -> i16 {
        use kafka_protocol::messages::offset_commit_request::{
            OffsetCommitRequestPartition, OffsetCommitRequestTopic,
        };
        use kafka_protocol::messages::{ApiKey, OffsetCommitRequest, OffsetCommitResponse};
        let req = OffsetCommitRequest::default()
            .with_group_id(kafka_protocol::protocol::StrBytes::from_string(g.to_string()).into())
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(
                    kafka_protocol::protocol::StrBytes::from_string(topic.to_string()).into(),
                )
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(offset)])]);
        let r: OffsetCommitResponse = self.call(ApiKey::OffsetCommit, 2, &req);
        r.topics[0].partitions[0].error_code
    }

    /// Group `g`'s committed offset of partition 0 of `topic` (-1: none).
    fn offset_fetch(&mut self, g: &str, topic: &str) -> i64 {
        use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
        use kafka_protocol::messages::{ApiKey, OffsetFetchRequest, OffsetFetchResponse};
        let req = OffsetFetchRequest::default()
            .with_group_id(kafka_protocol::protocol::StrBytes::from_string(g.to_string()).into())
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(
                    kafka_protocol::protocol::StrBytes::from_string(topic.to_string()).into(),
                )
                .with_partition_indexes(vec![0])]));
        let r: OffsetFetchResponse = self.call(ApiKey::OffsetFetch, 1, &req);
        r.topics[0].partitions[0].committed_offset
    }

    /// The broker ids this node's metadata names.
    fn brokers(&mut self) -> Vec<i32> {
        use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse};
        let r: MetadataResponse = self.call(ApiKey::Metadata, 4, &MetadataRequest::default());
        r.brokers.iter().map(|b| b.node_id.0).collect()
    }

    /// Metadata of `topic`, asking to create it if it does not exist:
    /// (the topic's error code, its partitions).
    fn metadata_creating(&mut self, topic: &str) -> (i16, usize) {
        use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
        use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse};
        let name = kafka_protocol::protocol::StrBytes::from_string(topic.to_string());
        let req = MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(name.into()))
            ]))
            .with_allow_auto_topic_creation(true);
        let r: MetadataResponse = self.call(ApiKey::Metadata, 4, &req);
        (r.topics[0].error_code, r.topics[0].partitions.len())
    }

    /// The coordinator of group `g` as this node names it: (error, node, port).
    fn coordinator(&mut self, g: &str) -> (i16, i32, i32) {
        use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
        let req = FindCoordinatorRequest::default().with_key(g.to_string().into());
        let r: FindCoordinatorResponse = self.call(ApiKey::FindCoordinator, 3, &req);
        (r.error_code, r.node_id.0, r.port)
    }

    fn init_producer(&mut self) -> i64 {
        use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, InitProducerIdResponse};
        let req = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000);
        let r: InitProducerIdResponse = self.call(ApiKey::InitProducerId, 4, &req);
        assert_eq!((r.error_code, r.producer_epoch), (0, 0));
        assert!(r.producer_id.0 > 0);
        r.producer_id.0
    }

    /// Produces `count` records of producer `pid` from `sequence` to
    /// partition 0 of `topic`: (error code, base offset).
    fn produce(&mut self, topic: &str, pid: i64, sequence: i32, count: i32) -> (i16, i64) {
        use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
        use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
        use kafka_protocol::protocol::StrBytes;
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let records: Vec<Record> = (0..count)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: pid,
                producer_epoch: 0,
                timestamp_type: TimestampType::Creation,
                offset: i64::from(i),
                sequence: sequence + i,
                timestamp: 0,
                key: Some(bytes::Bytes::from(format!("key-{}", sequence + i))),
                value: Some(bytes::Bytes::from(format!("seq-{}", sequence + i))),
                headers: Default::default(),
            })
            .collect();
        let mut batch = bytes::BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut batch, records.iter(), &options).unwrap();
        let partition = PartitionProduceData::default()
            .with_index(0)
            .with_records(Some(batch.freeze()));
        let req = ProduceRequest::default()
            .with_transactional_id(None)
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.into())))
                .with_partition_data(vec![partition])]);
        let r: ProduceResponse = self.call(ApiKey::Produce, 7, &req);
        let p = &r.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    }
}

/// Idempotent producers: a resent batch is acknowledged at its original
/// offset and not appended again, also after kill -9 (one older than the
/// producer's last five batches: DUPLICATE_SEQUENCE); a gap is
/// OUT_OF_ORDER_SEQUENCE; a producer nothing is known of that starts past
/// sequence 0 is UNKNOWN_PRODUCER_ID; kcat with enable.idempotence writes
/// dense offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producers_append_each_batch_once() {
    let kafka_port = free_port();
    let mut server = ServerProcess::start(ServerOpts::with_config(&config(kafka_port))).await;
    let native = server.client().await;
    native
        .admin()
        .create_stream(&stream_name("kafka/idem"), 1)
        .await
        .unwrap();
    let mut raw = Raw::connect(kafka_port);
    let pid = raw.init_producer();
    assert!(
        raw.init_producer() > pid,
        "producer ids are never given twice"
    );
    assert_eq!(raw.produce("idem", pid, 0, 3), (0, 0));
    assert_eq!(raw.produce("idem", pid, 3, 2), (0, 3));
    assert_eq!(
        raw.produce("idem", pid, 3, 2),
        (0, 3),
        "a resend is acknowledged at its original offset"
    );
    assert_eq!(raw.produce("idem", pid, 0, 3), (0, 0));
    assert_eq!(
        raw.produce("idem", pid, 9, 1).0,
        45,
        "a gap is out of order"
    );
    assert_eq!(
        raw.produce("idem", pid, 4, 2).0,
        45,
        "an overlap is out of order"
    );
    let other = raw.init_producer();
    assert_eq!(raw.produce("idem", other, 5, 1).0, 59, "unknown producer");
    assert_eq!(raw.produce("idem", other, 0, 1), (0, 5));

    server.kill9();
    server.restart().await;
    let mut raw = Raw::connect(kafka_port);
    let deadline = Instant::now() + Duration::from_secs(30);
    let resent = loop {
        let r = raw.produce("idem", pid, 3, 2);
        if r.0 != 5 && r.0 != 6 || Instant::now() > deadline {
            break r; // past the election after the restart
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        resent,
        (0, 3),
        "still a duplicate after kill -9, at its offset"
    );
    assert_eq!(raw.produce("idem", pid, 5, 1), (0, 6));
    for seq in 6..11 {
        assert_eq!(raw.produce("idem", pid, seq, 1), (0, i64::from(seq) + 1));
    }
    assert_eq!(
        raw.produce("idem", pid, 5, 1).0,
        46,
        "a batch older than the last five is a duplicate without its offset"
    );
    let events = read_all(&native, &stream_name("kafka/idem"), Duration::from_secs(30)).await;
    let payloads: Vec<String> = events
        .iter()
        .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
        .collect();
    assert_eq!(
        payloads,
        [
            "seq-0", "seq-1", "seq-2", "seq-3", "seq-4", "seq-0", "seq-5", "seq-6", "seq-7",
            "seq-8", "seq-9", "seq-10"
        ]
    );

    // librdkafka's idempotent producer.
    let Some(kcat) = kcat() else { return };
    let b = format!("127.0.0.1:{kafka_port}");
    let lines: String = (0..200).map(|i| format!("k{i}:v{i}\n")).collect();
    run_kcat(
        &kcat,
        &[
            "-b",
            &b,
            "-P",
            "-t",
            "idem",
            "-p",
            "0",
            "-K:",
            "-X",
            "enable.idempotence=true",
        ],
        &lines,
    );
    let got = run_kcat(
        &kcat,
        &[
            "-b", &b, "-C", "-t", "idem", "-p", "0", "-o", "12", "-e", "-f", "%o %s\\n",
        ],
        "",
    );
    let expected: Vec<String> = (0..200).map(|i| format!("{} v{i}", 12 + i)).collect();
    assert_eq!(got.lines().collect::<Vec<_>>(), expected);
}

/// One node with a Kafka listener, once a Kafka client reaches it: the
/// process and the listener's port.
async fn kafka_node() -> (ServerProcess, u16) {
    let kafka_port = free_port();
    let server = ServerProcess::start(ServerOpts::with_config(&config(kafka_port))).await;
    let _ = kafka_client(kafka_port).await;
    (server, kafka_port)
}

/// confluent-kafka's python, in a virtualenv made by the project's
/// script.
fn confluent_python() -> Option<String> {
    installed("install-confluent-kafka.sh", "confluent-kafka")
}

/// Runs a phase of tests/kafka/groups.py, bounded in time, and asserts it
/// passed.
fn run_groups_phase(python: &str, broker: &str, phase: &str) {
    let out = python_script(python, "groups.py", &[broker, phase])
        .wait_with_output()
        .expect("wait python");
    assert_script_passed(&format!("groups.py {phase}"), &out);
}

/// Starts tests/kafka/`script` with `args`, bounded to 180 s.
fn python_script(python: &str, script: &str, args: &[&str]) -> std::process::Child {
    let path = format!("{}/tests/kafka/{script}", env!("CARGO_MANIFEST_DIR"));
    std::process::Command::new("timeout")
        .args(["180", python, &path])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python")
}

/// A script passes by exiting 0 after printing OK.
fn assert_script_passed(what: &str, out: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{what}: {stdout}");
    assert!(
        out.status.success() && stdout.contains("OK"),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A librdkafka consumer group (confluent-kafka 2.16): two members, a
/// third joins, one leaves, every record read with offsets committed as
/// it goes; after kill -9 and a restart a new member resumes at the
/// committed offsets (they are metadata, durable once answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_groups_rebalance_commit_and_resume_after_kill_9() {
    let Some(python) = confluent_python() else {
        return;
    };
    let (mut server, kafka_port) = kafka_node().await;
    let broker = format!("127.0.0.1:{kafka_port}");
    run_groups_phase(&python, &broker, "rebalance");
    server.kill9();
    server.restart().await;
    let _ = kafka_client(kafka_port).await;
    run_groups_phase(&python, &broker, "resume");
    drop(server);
}

/// confluent-kafka's AdminClient (tests/kafka/admin.py): DescribeConfigs
/// of a topic and a broker, and auto-create on (3 partitions): a producer
/// writes to a topic that did not exist and a consumer reads it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_clients_describe_configs_and_topics_auto_create() {
    let Some(python) = confluent_python() else {
        return;
    };
    let kafka_port = free_port();
    let config = format!(
        "kafka_auto_create_topics = true\nkafka_auto_create_partitions = 3\n{}",
        config(kafka_port)
    );
    let server = ServerProcess::start(ServerOpts::with_config(&config)).await;
    let _ = kafka_client(kafka_port).await;
    let out = python_script(&python, "admin.py", &[&format!("127.0.0.1:{kafka_port}")])
        .wait_with_output()
        .expect("wait python");
    assert_script_passed("admin.py", &out);
    drop(server);
}

/// librdkafka's transactional producer (tests/kafka/transactions.py):
/// committed transactions are read whole by a read_committed consumer,
/// aborted and fenced ones never, offsets sent with a transaction are
/// committed with it; a transaction left open over a kill -9 is aborted
/// by the next producer of its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_producers_commit_abort_and_fence_through_kill_9() {
    let Some(python) = confluent_python() else {
        return;
    };
    let (mut server, kafka_port) = kafka_node().await;
    let broker = format!("127.0.0.1:{kafka_port}");
    let run = |phase: &str| {
        let out = python_script(&python, "transactions.py", &[&broker, phase])
            .wait_with_output()
            .expect("wait python");
        assert_script_passed(&format!("transactions.py {phase}"), &out);
    };
    run("before");
    server.kill9();
    server.restart().await;
    let _ = kafka_client(kafka_port).await;
    run("after");
    drop(server);
}

/// Runs tests/kafka/idempotent.py against `brokers` while `fault`
/// strikes (it starts producing about a second in, for about 12 s), and
/// asserts every record landed exactly once, in order, at the offset its
/// delivery report named.
async fn idempotent_producer_through<F: std::future::Future<Output = ()>>(
    python: &str,
    brokers: &str,
    fault: F,
) {
    let producer = python_script(python, "idempotent.py", &[brokers]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    fault.await;
    let out = tokio::task::spawn_blocking(move || producer.wait_with_output())
        .await
        .expect("join")
        .expect("wait python");
    assert_script_passed("idempotent.py", &out);
}

/// A librdkafka idempotent producer (confluent-kafka 2.16) through a
/// `kill -9` and restart of the node in the middle of its run: every
/// record is in its partition exactly once, in the order produced, at the
/// offset its delivery report named (retried batches that had been
/// applied are acknowledged at their original offsets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_through_kill_9_writes_each_record_once() {
    let Some(python) = confluent_python() else {
        return;
    };
    let (mut server, kafka_port) = kafka_node().await;
    let broker = format!("127.0.0.1:{kafka_port}");
    idempotent_producer_through(&python, &broker, async {
        server.kill9();
        server.restart().await;
    })
    .await;
    drop(server);
}

/// Three nodes, each with a Kafka listener: metadata names every node's
/// listener and each partition's leader, FindCoordinator the metadata
/// leader's. librdkafka's idempotent producer runs through a `kill -9` of
/// the node leading the partitions' container (finding the new leader
/// through fresh metadata) with the same exactly-once result; then Kafka's
/// own Java VerifiableProducer and VerifiableConsumer do, through another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_serves_kafka_through_kill_9_of_the_partition_leader() {
    let (python, jars) = (confluent_python(), kafka_jars());
    if python.is_none() && jars.is_none() {
        return;
    }
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut cluster = common::TestCluster::start_with(
        3,
        |id| {
            format!(
                "containers = 1\nkafka_listen = \"127.0.0.1:{}\"",
                ports[(id - 1) as usize]
            )
        },
        "chunk_bytes = 65536\nflush_interval_ms = 100",
    )
    .await;
    let brokers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let victim = cluster.leader_of("container-0").await;
    let meta = cluster.leader_of("meta").await;
    // Every node's metadata names all three listeners once they reported,
    // and every node sends a group to the metadata leader's.
    let deadline = Instant::now() + Duration::from_secs(30);
    for &port in &ports {
        let mut raw = Raw::connect(port);
        while raw.brokers().len() < 3 || raw.coordinator("g").0 != 0 {
            assert!(
                Instant::now() < deadline,
                "metadata of node at {port} lacks brokers"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut brokers = raw.brokers();
        brokers.sort();
        assert_eq!(brokers, [1, 2, 3]);
        let leader_port = i32::from(ports[(meta - 1) as usize]);
        assert_eq!(raw.coordinator("g"), (0, meta as i32, leader_port));
    }
    if let Some(python) = python {
        idempotent_producer_through(&python, &brokers.join(","), async {
            cluster.node(victim).kill9();
        })
        .await;
        cluster.node(victim).restart().await;
    }
    if let Some(jars) = jars {
        // Right after the restart the controller may still be electing.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let created = match kafka_client(ports[0]).await.controller_client() {
                Ok(c) => c.create_topic("verifiable", 3, 1, 10_000).await,
                Err(e) => Err(e),
            };
            match created {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("create topic: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("create topic: {e}"),
            }
        }
        let victim = cluster.leader_of("container-0").await;
        java_clients_through(&jars, &brokers.join(","), "verifiable", async {
            cluster.node(victim).kill9();
        })
        .await;
    }
    drop(cluster);
}

/// Kafka transactions on a 3-node cluster: tests/kafka/transactions.py's
/// first phase, `kill -9` of the transaction coordinator (the `meta`
/// leader) while a transaction is open, then its second phase against the
/// survivors: the new coordinator knows every transactional id, the open
/// transaction is aborted by the next producer of its id, and exactly the
/// committed records and offsets are there. Before it, a Metadata request
/// to a node that does not lead the metadata auto-creates a topic there
/// (`CreateKafkaTopic` to the leader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_transactions_survive_kill_9_of_the_coordinator() {
    let Some(python) = confluent_python() else {
        return;
    };
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut cluster = common::TestCluster::start_with(
        3,
        |id| {
            format!(
                "kafka_listen = \"127.0.0.1:{}\"\nkafka_auto_create_topics = true\n\
                 kafka_auto_create_partitions = 2",
                ports[(id - 1) as usize]
            )
        },
        "chunk_bytes = 65536\nflush_interval_ms = 100",
    )
    .await;
    // Every node names all three brokers before clients start.
    let deadline = Instant::now() + Duration::from_secs(30);
    for &port in &ports {
        let mut raw = Raw::connect(port);
        while raw.brokers().len() < 3 {
            assert!(Instant::now() < deadline, "node at {port} lacks brokers");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let coordinator = cluster.leader_of("meta").await;
    let follower = (1..=3u64).find(|&n| n != coordinator).unwrap_or(1);
    let mut raw = Raw::connect(ports[(follower - 1) as usize]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, partitions) = raw.metadata_creating("auto.cluster");
        if code == 0 && partitions == 2 {
            break;
        }
        // LEADER_NOT_AVAILABLE while it is created and its leaders elected.
        assert_eq!(code, 5, "auto-create at a follower");
        assert!(Instant::now() < deadline, "auto.cluster never appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let run = |brokers: String, phase: &'static str| {
        let python = python.clone();
        async move {
            let out = tokio::task::spawn_blocking(move || {
                python_script(&python, "transactions.py", &[&brokers, phase]).wait_with_output()
            })
            .await
            .expect("join")
            .expect("wait python");
            assert_script_passed(&format!("transactions.py {phase}"), &out);
        }
    };
    let all: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    run(all.join(","), "before").await;
    cluster.node(coordinator).kill9();
    let survivors: Vec<String> = ports
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as u64 + 1 != coordinator)
        .map(|(_, p)| format!("127.0.0.1:{p}"))
        .collect();
    run(survivors.join(","), "after").await;
    drop(cluster);
}

/// Kafka's own jars (broker and tools, kafka 4.4.0), fetched from Maven
/// Central by the project's script: the folder holding `lib/`.
fn kafka_jars() -> Option<String> {
    installed("install-kafka.sh", "Kafka 4.4.0 jars")
}

/// A Java tool's process, killed when dropped (also on a failed assert).
struct Tool(std::process::Child);

impl Tool {
    /// Waits up to `limit` for it to exit; its status, or None (still running).
    async fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().expect("wait tool") {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One of Kafka's Verifiable tools, its JSON lines on stdout sent to
/// `lines` as they come.
fn verifiable(
    jars: &str,
    tool: &str,
    args: &[&str],
    lines: std::sync::mpsc::Sender<serde_json::Value>,
) -> Tool {
    use std::io::BufRead;
    let mut child = std::process::Command::new("java")
        .args(["-cp", &format!("{jars}/lib/*")])
        .arg(format!("org.apache.kafka.tools.{tool}"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run java");
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str(&line) {
                if lines.send(v).is_err() {
                    return;
                }
            }
        }
    });
    Tool(child)
}

/// (partition, offset) → value, of the JSON lines named `name`.
fn placed_values(lines: &[serde_json::Value], name: &str) -> Vec<((i64, i64), String)> {
    lines
        .iter()
        .filter(|v| v["name"] == name)
        .map(|v| {
            let value = v["value"].as_str().unwrap_or_default().to_string();
            let at = (
                v["partition"].as_i64().unwrap_or(-1),
                v["offset"].as_i64().unwrap_or(-1),
            );
            (at, value)
        })
        .collect()
}

/// Kafka's VerifiableProducer (idempotent, acks=all) and VerifiableConsumer
/// (a group, committing as it goes) on `brokers` while `fault` strikes:
/// every acknowledged value is in its partition once, at the offset it
/// was acknowledged at, the offsets dense (nothing written twice), and the
/// consumer reads each one there.
async fn java_clients_through<F: std::future::Future<Output = ()>>(
    jars: &str,
    brokers: &str,
    topic: &str,
    fault: F,
) {
    const N: usize = 3000;
    let config = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        config.path(),
        // The tool sets retries=0, which idempotence refuses.
        "enable.idempotence=true\nretries=2147483647\ndelivery.timeout.ms=120000\n\
         reconnect.backoff.max.ms=500\n",
    )
    .expect("producer config");
    let (consumed_tx, consumed) = std::sync::mpsc::channel();
    let consumer = verifiable(
        jars,
        "VerifiableConsumer",
        &[
            "--bootstrap-server",
            brokers,
            "--topic",
            topic,
            "--group-id",
            "verifiable",
            "--reset-policy",
            "earliest",
            "--verbose",
        ],
        consumed_tx,
    );
    let (produced_tx, produced) = std::sync::mpsc::channel();
    let max = N.to_string();
    let mut producer = verifiable(
        jars,
        "VerifiableProducer",
        &[
            "--bootstrap-server",
            brokers,
            "--topic",
            topic,
            "--max-messages",
            &max,
            "--throughput",
            "300",
            "--acks",
            "-1",
            "--command-config",
            &config.path().display().to_string(),
        ],
        produced_tx,
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    fault.await;
    let status = producer.wait(Duration::from_secs(150)).await;
    let produced: Vec<serde_json::Value> = produced.try_iter().collect();
    let errors: Vec<_> = produced
        .iter()
        .filter(|v| v["name"] == "producer_send_error")
        .collect();
    assert!(
        status.is_some_and(|s| s.success()) && errors.is_empty(),
        "VerifiableProducer: {status:?}, errors: {errors:?}"
    );
    let acked = placed_values(&produced, "producer_send_success");
    assert_eq!(acked.len(), N, "every record acknowledged");
    let mut by_partition: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for ((p, o), _) in &acked {
        by_partition.entry(*p).or_default().push(*o);
    }
    for (p, offsets) in &mut by_partition {
        offsets.sort();
        let dense: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(
            offsets, &dense,
            "partition {p}: acknowledged offsets are dense"
        );
    }
    // The consumer reads on until it saw every acknowledged record.
    let acked: BTreeMap<(i64, i64), String> = acked.into_iter().collect();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut read: BTreeMap<(i64, i64), String> = BTreeMap::new();
    while read.len() < acked.len() && Instant::now() < deadline {
        seen.extend(consumed.try_iter());
        read.extend(placed_values(&seen, "record_data"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(consumer);
    eprintln!(
        "Java clients: {} records acknowledged in {} partitions, {} read",
        acked.len(),
        by_partition.len(),
        read.len()
    );
    assert_eq!(read.len(), acked.len(), "the consumer read every record");
    for (at, value) in &acked {
        assert_eq!(read.get(at), Some(value), "record at {at:?}");
    }
}

/// A group with no members loses its committed offsets once its newest
/// commit is older than `kafka_offsets_retention_ms`; one that commits
/// again keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_of_a_group_without_members_expire() {
    let kafka_port = free_port();
    let config = format!("kafka_offsets_retention_ms = 3000\n{}", config(kafka_port));
    let server = ServerProcess::start(ServerOpts::with_config(&config)).await;
    let native = server.client().await;
    native
        .admin()
        .create_stream(&stream_name("kafka/expiring"), 1)
        .await
        .unwrap();
    let mut raw = Raw::connect(kafka_port);
    assert_eq!(raw.offset_commit("gone", "expiring", 5), 0);
    assert_eq!(raw.offset_commit("kept", "expiring", 7), 0);
    assert_eq!(raw.offset_fetch("gone", "expiring"), 5);
    // "kept" commits every second; "gone" never again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut commits = 0;
    while raw.offset_fetch("gone", "expiring") != -1 {
        assert!(Instant::now() < deadline, "the offsets never expired");
        tokio::time::sleep(Duration::from_secs(1)).await;
        commits += 1;
        assert_eq!(raw.offset_commit("kept", "expiring", 7 + commits), 0);
    }
    assert!(
        commits >= 2,
        "expired after {commits} s, before the retention"
    );
    assert_eq!(raw.offset_fetch("kept", "expiring"), 7 + commits);
    drop(server);
}

/// Every version ApiVersions advertises of the metadata, offset, group
/// and transaction APIs answers a request on one connection, which stays open: the
/// responses never carry a field their version lacks (the codec would
/// refuse to encode it and the connection would close), in error answers
/// and in answers about a group with a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_advertised_version_answers_on_one_connection() {
    use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::leave_group_request::MemberIdentity;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
    use kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    let kafka_port = free_port();
    let server = ServerProcess::start(ServerOpts::with_config(&config(kafka_port))).await;
    server
        .client()
        .await
        .admin()
        .create_stream(&stream_name("kafka/versions"), 2)
        .await
        .unwrap();
    let s = |v: &str| StrBytes::from_string(v.to_string());
    let mut raw = Raw::connect(kafka_port);
    let advertised: ApiVersionsResponse =
        raw.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert_eq!(advertised.error_code, 0);
    let mut answered = 0;
    let tid = || TransactionalId(s("tv"));
    let mut producer = (ProducerId(-1), -1i16);
    for range in &advertised.api_keys {
        let Ok(api) = ApiKey::try_from(range.api_key) else {
            continue;
        };
        for v in range.min_version..=range.max_version {
            let group = || GroupId(s("g"));
            match api {
                ApiKey::Metadata => {
                    let _: MetadataResponse = raw.call(api, v, &MetadataRequest::default());
                }
                ApiKey::FindCoordinator => {
                    let req = if v >= 4 {
                        FindCoordinatorRequest::default().with_coordinator_keys(vec![s("g")])
                    } else {
                        FindCoordinatorRequest::default().with_key(s("g"))
                    };
                    let _: FindCoordinatorResponse = raw.call(api, v, &req);
                }
                ApiKey::JoinGroup => {
                    // Before v4 this joins (and the group has a member for
                    // the describes below); from v4 it is MEMBER_ID_REQUIRED.
                    let req = JoinGroupRequest::default()
                        .with_group_id(group())
                        .with_session_timeout_ms(6000)
                        .with_rebalance_timeout_ms(1000)
                        .with_protocol_type(s("consumer"))
                        .with_protocols(vec![JoinGroupRequestProtocol::default()
                            .with_name(s("range"))
                            .with_metadata(bytes::Bytes::from_static(b"md"))]);
                    let _: JoinGroupResponse = raw.call(api, v, &req);
                }
                ApiKey::SyncGroup => {
                    let req = SyncGroupRequest::default().with_group_id(group());
                    let _: SyncGroupResponse = raw.call(api, v, &req);
                }
                ApiKey::Heartbeat => {
                    let req = HeartbeatRequest::default().with_group_id(group());
                    let _: HeartbeatResponse = raw.call(api, v, &req);
                }
                ApiKey::LeaveGroup => {
                    let req = if v >= 3 {
                        LeaveGroupRequest::default()
                            .with_group_id(group())
                            .with_members(vec![MemberIdentity::default().with_member_id(s("x"))])
                    } else {
                        LeaveGroupRequest::default()
                            .with_group_id(group())
                            .with_member_id(s("x"))
                    };
                    let _: LeaveGroupResponse = raw.call(api, v, &req);
                }
                ApiKey::OffsetCommit => {
                    let req = OffsetCommitRequest::default()
                        .with_group_id(GroupId(s("outside")))
                        .with_generation_id_or_member_epoch(-1)
                        .with_topics(vec![OffsetCommitRequestTopic::default()
                            .with_name(TopicName(s("versions")))
                            .with_partitions(vec![OffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(1)])]);
                    let r: OffsetCommitResponse = raw.call(api, v, &req);
                    assert_eq!(r.topics[0].partitions[0].error_code, 0, "OffsetCommit v{v}");
                }
                ApiKey::OffsetFetch => {
                    let req = if v >= 8 {
                        OffsetFetchRequest::default()
                            .with_groups(vec![OffsetFetchRequestGroup::default()
                                .with_group_id(GroupId(s("outside")))])
                    } else {
                        OffsetFetchRequest::default().with_group_id(GroupId(s("outside")))
                    };
                    let _: OffsetFetchResponse = raw.call(api, v, &req);
                }
                ApiKey::DescribeGroups => {
                    let req = DescribeGroupsRequest::default().with_groups(vec![
                        group(),
                        GroupId(s("outside")),
                        GroupId(s("none")),
                    ]);
                    let _: DescribeGroupsResponse = raw.call(api, v, &req);
                }
                ApiKey::ListGroups => {
                    let _: ListGroupsResponse = raw.call(api, v, &ListGroupsRequest::default());
                }
                ApiKey::DeleteGroups => {
                    let req =
                        DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("none"))]);
                    let _: DeleteGroupsResponse = raw.call(api, v, &req);
                }
                ApiKey::DescribeConfigs => {
                    let req = DescribeConfigsRequest::default().with_resources(vec![
                        DescribeConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(s("versions")),
                        DescribeConfigsResource::default()
                            .with_resource_type(4)
                            .with_resource_name(s("1")),
                    ]);
                    let r: DescribeConfigsResponse = raw.call(api, v, &req);
                    assert!(
                        r.results.iter().all(|r| r.error_code == 0),
                        "DescribeConfigs v{v}"
                    );
                    assert!(r.results[0]
                        .configs
                        .iter()
                        .any(|c| c.name.as_str() == "retention.ms"));
                }
                // One transaction through every version: each InitProducerId
                // bumps the epoch, the rest use the last.
                ApiKey::InitProducerId => {
                    let req = InitProducerIdRequest::default()
                        .with_transactional_id(Some(tid()))
                        .with_transaction_timeout_ms(60_000);
                    let r: InitProducerIdResponse = raw.call(api, v, &req);
                    assert_eq!(r.error_code, 0, "InitProducerId v{v}");
                    producer = (r.producer_id, r.producer_epoch);
                }
                ApiKey::AddPartitionsToTxn => {
                    let req = AddPartitionsToTxnRequest::default()
                        .with_v3_and_below_transactional_id(tid())
                        .with_v3_and_below_producer_id(producer.0)
                        .with_v3_and_below_producer_epoch(producer.1)
                        .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
                            .with_name(TopicName(s("versions")))
                            .with_partitions(vec![0, 1])]);
                    let r: AddPartitionsToTxnResponse = raw.call(api, v, &req);
                    let codes: Vec<i16> = r.results_by_topic_v3_and_below[0]
                        .results_by_partition
                        .iter()
                        .map(|p| p.partition_error_code)
                        .collect();
                    assert_eq!(codes, vec![0, 0], "AddPartitionsToTxn v{v}");
                }
                ApiKey::AddOffsetsToTxn => {
                    let req = AddOffsetsToTxnRequest::default()
                        .with_transactional_id(tid())
                        .with_producer_id(producer.0)
                        .with_producer_epoch(producer.1)
                        .with_group_id(GroupId(s("outside")));
                    let r: AddOffsetsToTxnResponse = raw.call(api, v, &req);
                    assert_eq!(r.error_code, 0, "AddOffsetsToTxn v{v}");
                }
                ApiKey::TxnOffsetCommit => {
                    let req = TxnOffsetCommitRequest::default()
                        .with_transactional_id(tid())
                        .with_group_id(GroupId(s("outside")))
                        .with_producer_id(producer.0)
                        .with_producer_epoch(producer.1)
                        .with_generation_id(-1)
                        .with_topics(vec![TxnOffsetCommitRequestTopic::default()
                            .with_name(TopicName(s("versions")))
                            .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(7)])]);
                    let r: TxnOffsetCommitResponse = raw.call(api, v, &req);
                    assert_eq!(
                        r.topics[0].partitions[0].error_code, 0,
                        "TxnOffsetCommit v{v}"
                    );
                }
                ApiKey::EndTxn => {
                    // The first commits; the others repeat it, answered alike.
                    let req = EndTxnRequest::default()
                        .with_transactional_id(tid())
                        .with_producer_id(producer.0)
                        .with_producer_epoch(producer.1)
                        .with_committed(true);
                    let r: EndTxnResponse = raw.call(api, v, &req);
                    assert_eq!(r.error_code, 0, "EndTxn v{v}");
                }
                _ => continue,
            }
            answered += 1;
        }
    }
    // Metadata 0-12, FindCoordinator 0-6, JoinGroup 0-9, SyncGroup 0-5,
    // Heartbeat 0-4, LeaveGroup 0-5, OffsetCommit 2-9, OffsetFetch 1-9,
    // DescribeGroups 0-5, ListGroups 0-4, DeleteGroups 0-2, InitProducerId
    // 0-4, AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit and EndTxn
    // 0-3, DescribeConfigs 1-4.
    assert_eq!(
        answered,
        13 + 7 + 10 + 6 + 5 + 6 + 8 + 9 + 6 + 5 + 3 + 5 + 4 * 4 + 4
    );
    // The transaction's offset came with its commit (OffsetCommit had 1).
    assert_eq!(raw.offset_fetch("outside", "versions"), 7);
    drop(server);
}

/// Flink's own Kafka connector (flink-connector-kafka 5.0.0-2.2 on Flink
/// 2.2.1, tests/kafka/flink-job): a job copies a topic to another with the
/// exactly-once sink (Kafka transactions) and fails on purpose 150 records
/// after its second checkpoint, while it has sent records of an open
/// transaction (with an at-least-once sink those are left as duplicates:
/// 132 of 3,000 when tried). After the restart the output holds every input
/// record exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flinks_kafka_connector_copies_a_topic_exactly_once_through_a_failure() {
    let Some(classpath) = installed("build-flink-kafka-job.sh", "the Flink Kafka job") else {
        return;
    };
    let classpath = std::fs::read_to_string(&classpath).expect("classpath file");
    let (server, kafka_port) = kafka_node().await;
    let kafka = kafka_client(kafka_port).await;
    let controller = kafka.controller_client().expect("controller");
    for topic in ["flink.in", "flink.out"] {
        controller
            .create_topic(topic, 2, 1, 10_000)
            .await
            .expect("create topic");
    }
    let mut expected = Vec::new();
    for p in 0..2 {
        let pc = partition(&kafka, "flink.in", p).await;
        for batch in 0..15 {
            let records: Vec<Record> = (0..100)
                .map(|i| record(&format!("k{i}"), format!("p{p}-{}", batch * 100 + i)))
                .collect();
            expected.extend(records.iter().filter_map(|r| r.value.clone()));
            pc.produce(records, Compression::NoCompression)
                .await
                .expect("produce input");
        }
    }
    let broker = format!("127.0.0.1:{kafka_port}");
    let mut job = Tool(
        std::process::Command::new("java")
            .args(["-cp", classpath.trim(), "KafkaExactlyOnceJob"])
            .args([broker.as_str(), "flink.in", "flink.out"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run the Flink job"),
    );
    let status = job.wait(Duration::from_secs(300)).await;
    let mut stdout = String::new();
    if let Some(mut out) = job.0.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "the job did not finish: {status:?}\n{stdout}"
    );
    assert!(stdout.contains("FAILED ON PURPOSE"), "{stdout}");
    assert!(stdout.contains("DONE"), "{stdout}");
    let mut got = Vec::new();
    for p in 0..2 {
        let pc = partition(&kafka, "flink.out", p).await;
        let end = pc.get_offset(OffsetAt::Latest).await.expect("latest");
        got.extend(fetch_all(&pc, 0, end).await.into_iter().map(|(_, _, v)| v));
    }
    got.sort();
    expected.sort();
    assert_eq!(got.len(), expected.len(), "records out");
    assert!(got == expected, "every input record exactly once");
    drop(server);
}
