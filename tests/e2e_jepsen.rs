//! A Jepsen-style check of a cluster (3 nodes unless told): writers with known payloads
//! and per-key sequence numbers, a tailing reader, a reader group (two
//! readers on different nodes, checkpointed every 2 s), and a nemesis
//! mixing `kill -9`, restarts, partitions that isolate a node, and scales
//! (splits and merges of the stream's active segments) for a bounded
//! time. At the end it reads everything and reports:
//! - lost: acknowledged events missing from the final read;
//! - duplicated: an event (key, sequence) read twice;
//! - reordered: a key's events out of sequence order;
//! - vanished: events the tailing reader saw that the final read lacks;
//! - missed by the group: acknowledged events no group reader handed on
//!   (the group is at-least-once between checkpoints, so its re-reads are
//!   counted, not failed);
//! - transactions (two transactional writers commit or abort at random):
//!   a committed one not visible whole, an aborted one with any event
//!   visible, or one whose events in a segment are not one contiguous run,
//!   in the final read or as the tailing reader saw them (it must see each
//!   committed transaction's events in a segment all together, and all).
//!   A commit or abort whose answer was lost is resolved at the end from
//!   the transaction's status; committed events count as acknowledged.
//! - Kafka transactions (a transactional producer through every node's
//!   Kafka listener, `aquifer_testkit::kafka`, on a 2-partition topic the
//!   nemesis never scales): a committed one not whole, an aborted one with
//!   any record visible, one whose answer was lost neither whole nor
//!   absent, a record twice, or a transaction's records in a partition not
//!   one run in the order sent.
//!
//! Pass = zero of each. The short run is part of the suite; the soak:
//! `AQUIFER_JEPSEN_SECS=600 cargo test --release --test e2e_jepsen -- --ignored`
//! (`AQUIFER_TEST_SEED` replays a nemesis schedule; `AQUIFER_JEPSEN_NODES=4`
//! runs it on 4 nodes, where each container has 3 of the 4 and every node
//! sends clients on for the container it lacks).

use aquifer_testkit as common;

use futures::TryStreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aquifer_client::{
    CheckpointState, Client, EventWriter, GroupEvent, ReaderConfig, ReaderGroupConfig, Scale,
    StartFrom, WriterConfig,
};
use futures::stream::{FuturesUnordered, StreamExt};
use rand::{Rng, SeedableRng};

use common::{read_all, stream_name, TestCluster};

/// Writers, each with its own keys.
const WRITERS: u64 = 2;
const KEYS_PER_WRITER: u64 = 8;
/// Events a writer may have queued but not acknowledged.
const IN_FLIGHT_MAX: usize = 512;
/// Transactional writers, each with its own keys, and the shape of their
/// transactions: events per key per transaction, keys per writer.
const TXN_WRITERS: u64 = 2;
const TXN_KEYS: u64 = 4;
const TXN_EVENTS_PER_KEY: u64 = 8;
/// The Kafka transactions' topic (the stream `kafka/<it>`), its
/// partitions, and each transaction's batches per partition and records
/// per batch.
const KAFKA_TOPIC: &str = "jepsen.kafka";
const KAFKA_PARTITIONS: i32 = 2;
const KAFKA_BATCHES: usize = 2;
const KAFKA_BATCH_RECORDS: usize = 4;

#[derive(Default)]
struct History {
    /// (key, sequence) acknowledged.
    acked: HashSet<(String, u64)>,
    /// Writes that failed (outcome unknown: may or may not be there).
    failed: u64,
    /// (key, sequence) seen by the tailing reader.
    tailed: Vec<(String, u64)>,
    /// Segment reads of the tailing reader that stopped with an error.
    tail_errors: u64,
    /// (key, sequence) handed on by the group's readers.
    grouped: Vec<(String, u64)>,
    /// Checkpoint markers the group's readers handed on.
    markers: u64,
    /// Group reads that gave up for a while (then resumed).
    group_errors: u64,
    /// Transaction events the tailing reader saw: (segment, transaction tag).
    tailed_txn: Vec<(u64, String)>,
    /// Every transaction: its tag, id, events and how it ended as far as
    /// its writer knows.
    txns: Vec<TxnOutcome>,
    /// Every Kafka transaction, as its producer knows it.
    kafka_txns: Vec<KafkaTxnOutcome>,
}

/// One Kafka transaction of the checker: the records it sent
/// (`kt<n>:<partition>:<i>`), and how it ended as far as its producer
/// knows (None: the EndTxn commit's answer was lost).
struct KafkaTxnOutcome {
    records: Vec<String>,
    committed: Option<bool>,
}

/// Writes Kafka transactions through `brokers` until `until`: each adds
/// both partitions, sends `KAFKA_BATCHES` batches to each, and commits
/// (about two in three) or aborts. A failed step ends the transaction as
/// aborted (it never asked to commit; the next InitProducerId aborts it);
/// a commit whose answer was lost is unknown.
async fn write_kafka_txns_until(
    brokers: Vec<String>,
    until: Instant,
    seed: u64,
    history: Arc<Mutex<History>>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut producer = common::kafka::TxnProducer::new(brokers, "jepsen-kafka", 60_000);
    let mut n = 0u64;
    while Instant::now() < until {
        if !producer.ready() {
            if let Err(e) = producer.init().await {
                eprintln!("jepsen: Kafka InitProducerId: {e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        n += 1;
        let tag = format!("kt{n}");
        let mut records = Vec::new();
        let partitions: Vec<i32> = (0..KAFKA_PARTITIONS).collect();
        let mut sent = producer.add_partitions(KAFKA_TOPIC, &partitions).await;
        'batches: for b in 0..KAFKA_BATCHES {
            for &p in &partitions {
                if sent.is_err() {
                    break 'batches;
                }
                let batch: Vec<String> = (0..KAFKA_BATCH_RECORDS)
                    .map(|i| format!("{tag}:{p}:{}", b * KAFKA_BATCH_RECORDS + i))
                    .collect();
                records.extend(batch.iter().cloned());
                sent = producer.produce(KAFKA_TOPIC, p, &batch).await;
            }
        }
        let commit = rng.random_bool(0.67);
        let committed = match sent {
            Err(e) => {
                eprintln!("jepsen: Kafka transaction {tag} failed before its end: {e:?}");
                producer.reset();
                Some(false)
            }
            Ok(()) => match producer.end(commit).await {
                Ok(()) => Some(commit),
                Err(e) => {
                    eprintln!("jepsen: Kafka EndTxn of {tag} (commit {commit}): {e:?}");
                    producer.reset();
                    // An abort that failed never commits.
                    if commit {
                        None
                    } else {
                        Some(false)
                    }
                }
            },
        };
        history
            .lock()
            .unwrap()
            .kafka_txns
            .push(KafkaTxnOutcome { records, committed });
    }
}

/// What the Kafka checks found in the final read.
struct KafkaChecked {
    committed: usize,
    aborted: usize,
    /// Commits whose answer was lost.
    unknown: usize,
    /// Must all be 0: not whole, aborted but seen, lost answer neither
    /// whole nor absent, duplicated, interleaved or out of order.
    bad: (usize, usize, usize, usize, usize),
}

/// The Kafka checks of the final read of `events` (the topic's stream).
fn check_kafka(h: &History, events: &[aquifer_client::Event]) -> KafkaChecked {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut order: Vec<(u64, String)> = Vec::new();
    let mut last_index: HashMap<(u64, String), u64> = HashMap::new();
    let mut out_of_order = 0;
    for e in events {
        let text = String::from_utf8_lossy(&e.payload).into_owned();
        let mut parts = text.split(':');
        let (Some(tag), Some(_), Some(i)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let i: u64 = i.parse().unwrap_or(0);
        let at = (e.position.segment_id, tag.to_string());
        if last_index.get(&at).is_some_and(|&l| i <= l) {
            out_of_order += 1;
        }
        last_index.insert(at.clone(), i);
        order.push(at);
        *seen.entry(text).or_default() += 1;
    }
    let duplicated = seen.values().filter(|&&n| n > 1).count();
    let (mut committed, mut aborted, mut unknown) = (0, 0, 0);
    let (mut not_whole, mut aborted_seen, mut unknown_partial) = (0, 0, 0);
    for t in &h.kafka_txns {
        let visible = t.records.iter().filter(|r| seen.contains_key(*r)).count();
        match t.committed {
            Some(true) => {
                committed += 1;
                not_whole += usize::from(visible != t.records.len());
            }
            Some(false) => {
                aborted += 1;
                aborted_seen += usize::from(visible > 0);
            }
            None => {
                unknown += 1;
                unknown_partial += usize::from(visible != 0 && visible != t.records.len());
            }
        }
    }
    KafkaChecked {
        committed,
        aborted,
        unknown,
        bad: (
            not_whole,
            aborted_seen,
            unknown_partial,
            duplicated,
            interleaved(&order) + out_of_order,
        ),
    }
}

/// One transaction of the checker.
struct TxnOutcome {
    tag: String,
    id: String,
    /// (key, sequence) it wrote.
    events: Vec<(String, u64)>,
    /// Some(true): committed; Some(false): aborted; None: unknown (the
    /// answer was lost).
    committed: Option<bool>,
}

/// The transaction tag of a transactional payload `key:seq:x<tag>`.
fn txn_tag(payload: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(payload).ok()?;
    text.split(':')
        .nth(2)?
        .strip_prefix('x')
        .map(str::to_string)
}

/// Writes transactions of `TXN_KEYS` keys × `TXN_EVENTS_PER_KEY` events
/// (payload `t{id}k{k}:{seq}:x{tag}`) until `until`, committing about two
/// in three and aborting the rest; a transaction whose write fails is
/// aborted. Records each with what its writer knows of its end.
async fn write_txns_until(
    client: Client,
    name: aquifer_client::StreamName,
    id: u64,
    until: Instant,
    seed: u64,
    history: Arc<Mutex<History>>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let Ok(writer) = client.transactional_writer(&name, format!("jepsen-txn-{id}")) else {
        return;
    };
    let writer = writer.timeout(Duration::from_secs(60));
    let mut seq = 0u64;
    let mut n = 0u64;
    while Instant::now() < until {
        let Ok(Ok(txn)) = tokio::time::timeout(Duration::from_secs(20), writer.begin()).await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let tag = format!("{id}.{n}");
        n += 1;
        let mut events = Vec::new();
        let mut pending = Vec::new();
        let mut failed = false;
        for _ in 0..TXN_EVENTS_PER_KEY {
            for k in 0..TXN_KEYS {
                let key = format!("t{id}k{k}");
                match txn.write(Some(&key), format!("{key}:{seq}:x{tag}")).await {
                    Ok(p) => pending.push(p),
                    Err(_) => failed = true,
                }
                events.push((key, seq));
            }
            seq += 1;
        }
        for p in pending {
            failed |= p.await.is_err();
        }
        let commit = !failed && rng.random_range(0..3) < 2;
        let txn_id = txn.id().to_string();
        let outcome = if commit {
            match tokio::time::timeout(Duration::from_secs(30), txn.commit()).await {
                Ok(Ok(_)) => Some(true),
                _ => None,
            }
        } else {
            match tokio::time::timeout(Duration::from_secs(30), txn.abort()).await {
                Ok(Ok(_)) => Some(false),
                _ => None,
            }
        };
        history.lock().unwrap().txns.push(TxnOutcome {
            tag,
            id: txn_id,
            events,
            committed: outcome,
        });
    }
}

/// How transaction `id` ended, for one whose commit or abort answer was
/// lost: an open one is aborted now (a later commit is then refused).
async fn resolve_txn(client: &Client, name: &aquifer_client::StreamName, id: &str) -> bool {
    use aquifer_client::{Error, TransactionState as S};
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = String::from("no answer");
    loop {
        assert!(
            Instant::now() < deadline,
            "transaction {id} never ended; last seen: {last}"
        );
        let t = match client.transaction(name, id).await {
            Ok(t) => t,
            Err(e) => {
                last = e.to_string();
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let status = t.status().await;
        last = format!("{status:?}");
        match status.map(|i| i.state) {
            Ok(S::Committed) => return true,
            Ok(S::Aborted) => return false,
            Ok(S::Open) => match t.abort().await {
                Ok(_) => return false,
                Err(Error::TransactionCommitted(_)) => return true,
                Err(_) => {}
            },
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Transactions whose events in some segment are not one contiguous run
/// of `order` (segment, tag) — a tag's events interleaved with others'.
fn interleaved(order: &[(u64, String)]) -> usize {
    let mut by_segment: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for (seg, tag) in order {
        by_segment.entry(*seg).or_default().push(tag);
    }
    let mut bad = HashSet::new();
    for tags in by_segment.values() {
        let mut done: HashSet<&str> = HashSet::new();
        let mut current: Option<&str> = None;
        for &t in tags {
            if current != Some(t) {
                if let Some(c) = current {
                    done.insert(c);
                }
                if done.contains(t) {
                    bad.insert(t.to_string());
                }
                current = Some(t);
            }
        }
    }
    bad.len()
}

fn parse(payload: &[u8]) -> Option<(String, u64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.split(':');
    let key = parts.next()?.to_string();
    let seq = parts.next()?.parse().ok()?;
    Some((key, seq))
}

/// Writes `w{writer}k{k}:{seq}` events until `until`, recording acks.
async fn write_until(writer: EventWriter, id: u64, until: Instant, history: Arc<Mutex<History>>) {
    let mut pending = FuturesUnordered::new();
    let mut seq = 0u64;
    while Instant::now() < until {
        for k in 0..KEYS_PER_WRITER {
            let key = format!("w{id}k{k}");
            let payload = format!("{key}:{seq}:jepsen");
            match writer.write_event(Some(&key), payload).await {
                Ok(p) => pending.push(async move { (key, seq, p.await) }),
                Err(_) => history.lock().unwrap().failed += 1,
            }
        }
        seq += 1;
        while pending.len() >= IN_FLIGHT_MAX {
            if let Some((key, seq, outcome)) = pending.next().await {
                record(&history, key, seq, outcome.is_ok());
            }
        }
    }
    while let Some((key, seq, outcome)) = pending.next().await {
        record(&history, key, seq, outcome.is_ok());
    }
}

/// Splits a random active segment of `name` in two, or merges a random
/// key-adjacent pair, keeping 2 to 8 active segments. True if it scaled.
async fn scale_once(
    client: &Client,
    name: &aquifer_client::StreamName,
    rng: &mut rand::rngs::StdRng,
) -> bool {
    let Ok(info) = client.admin().describe_stream(name).await else {
        return false;
    };
    let mut active: Vec<_> = info
        .segments
        .iter()
        .filter(|s| !s.sealed && s.successors.is_empty())
        .collect();
    active.sort_by(|a, b| a.key_low.total_cmp(&b.key_low));
    let split = active.len() < 3 || (active.len() < 8 && rng.random_bool(0.5));
    let scale = if split {
        let s = active[rng.random_range(0..active.len())];
        Scale::default().split(s.segment_id, 2)
    } else {
        let i = rng.random_range(0..active.len() - 1);
        Scale::default().merge([active[i].segment_id, active[i + 1].segment_id])
    };
    let admin = client.admin();
    let call = admin.scale_stream(name, &scale);
    matches!(
        tokio::time::timeout(Duration::from_secs(15), call).await,
        Ok(Ok(_))
    )
}

fn record(history: &Mutex<History>, key: String, seq: u64, acked: bool) {
    let mut h = history.lock().unwrap();
    if acked {
        h.acked.insert((key, seq));
    } else {
        h.failed += 1;
    }
}

/// Starts the reader group's readers (on nodes 1 and 3) and its
/// checkpointer (a checkpoint every 2 s until `until`); returns their tasks.
async fn start_group(
    cluster: &mut TestCluster,
    name: &aquifer_client::StreamName,
    until: Instant,
    history: &Arc<Mutex<History>>,
) -> (
    aquifer_client::ReaderGroup,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let admin = Client::connect(&cluster.node(3).addr())
        .await
        .expect("connect");
    let group = admin.reader_group("jepsen", "consumers");
    group
        .create(
            std::slice::from_ref(name),
            &ReaderGroupConfig::default().reader_timeout(Duration::from_secs(10)),
        )
        .await
        .expect("create the reader group");
    let mut tasks = Vec::new();
    for (i, node) in [1u64, 3].into_iter().enumerate() {
        let client = Client::connect(&cluster.node(node).addr())
            .await
            .expect("connect");
        let group = client.reader_group("jepsen", "consumers");
        let history = history.clone();
        tasks.push(tokio::spawn(async move {
            let mut reader = group.reader(&format!("r{i}")).await.expect("join");
            loop {
                match reader.try_next().await {
                    Ok(Some(GroupEvent::Event(e))) => {
                        if let Some(event) = parse(&e.payload) {
                            history.lock().unwrap().grouped.push(event);
                        }
                    }
                    Ok(Some(GroupEvent::Checkpoint(_))) => history.lock().unwrap().markers += 1,
                    Ok(Some(_)) => {}
                    Ok(None) => return,
                    Err(e) => {
                        eprintln!("jepsen: group reader error (it resumes): {e}");
                        history.lock().unwrap().group_errors += 1;
                    }
                }
            }
        }));
    }
    let checkpointer = group.clone();
    tasks.push(tokio::spawn(async move {
        let mut n = 0u64;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_secs(2)).await;
            n += 1;
            // Refused while too many are outstanding, or during a failover:
            // the next one tries again.
            let _ = checkpointer.checkpoint(&format!("j{n}")).await;
        }
    }));
    (group, tasks)
}

async fn run(fault_secs: u64) {
    let seed: u64 = std::env::var("AQUIFER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("jepsen: seed {seed} (AQUIFER_TEST_SEED={seed} replays the nemesis)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let nodes: u64 = std::env::var("AQUIFER_JEPSEN_NODES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let kafka_ports: Vec<u16> = (0..nodes).map(|_| common::free_port()).collect();
    let mut cluster = TestCluster::start_with(
        nodes as usize,
        |id| {
            format!(
                "kafka_listen = \"127.0.0.1:{}\"",
                kafka_ports[(id - 1) as usize]
            )
        },
        "flush_interval_ms = 1000",
    )
    .await;
    let client = Client::connect(&cluster.node(1).addr())
        .await
        .expect("connect");
    let name = stream_name("jepsen/history");
    client
        .admin()
        .create_stream(&name, 4)
        .await
        .expect("create");
    let kafka_name = stream_name(&format!("kafka/{KAFKA_TOPIC}"));
    client
        .admin()
        .create_stream(&kafka_name, KAFKA_PARTITIONS as u32)
        .await
        .expect("create the Kafka topic");
    let history = Arc::new(Mutex::new(History::default()));
    let until = Instant::now() + Duration::from_secs(fault_secs);

    // The tailing reader: follows from the head on node 2.
    let tail_client = Client::connect(&cluster.node(2).addr())
        .await
        .expect("connect");
    let mut tail = tail_client
        .reader(
            &name,
            ReaderConfig::default().start(StartFrom::Head).follow(true),
        )
        .await
        .expect("tailing reader");
    let tailed = history.clone();
    let tailer = tokio::spawn(async move {
        loop {
            match tail.try_next().await {
                Ok(Some(e)) => {
                    if let Some(event) = parse(&e.payload) {
                        let mut h = tailed.lock().unwrap();
                        h.tailed.push(event);
                        if let Some(tag) = txn_tag(&e.payload) {
                            h.tailed_txn.push((e.position.segment_id, tag));
                        }
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    // That segment's read stopped; the others go on.
                    eprintln!("jepsen: tailing reader error: {e}");
                    tailed.lock().unwrap().tail_errors += 1;
                }
            }
        }
    });

    let (group, group_tasks) = start_group(&mut cluster, &name, until, &history).await;

    let mut writers = Vec::new();
    for id in 0..WRITERS {
        let writer = client
            .writer(
                &name,
                WriterConfig::default().writer_id(format!("jepsen-writer-{id}")),
            )
            .await
            .expect("writer");
        writers.push(tokio::spawn(write_until(
            writer,
            id,
            until,
            history.clone(),
        )));
    }

    let txn_writers: Vec<_> = (0..TXN_WRITERS)
        .map(|id| {
            tokio::spawn(write_txns_until(
                client.clone(),
                name.clone(),
                id,
                until,
                seed ^ (id + 1),
                history.clone(),
            ))
        })
        .collect();

    let kafka_writer = tokio::spawn(write_kafka_txns_until(
        kafka_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect(),
        until,
        seed.rotate_left(17),
        history.clone(),
    ));

    // The nemesis: one fault at a time, each healed before the next.
    let mut faults: BTreeMap<&str, u32> = BTreeMap::new();
    while Instant::now() + Duration::from_secs(4) < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
        let victim = rng.random_range(1..=nodes);
        match rng.random_range(0..4) {
            0 => {
                *faults.entry("kill -9 + restart").or_default() += 1;
                cluster.node(victim).kill9();
                tokio::time::sleep(Duration::from_millis(rng.random_range(200..2000))).await;
                cluster.node(victim).restart().await;
            }
            1 => {
                *faults.entry("kill -9 of a leader + restart").or_default() += 1;
                let group = format!("container-{}", rng.random_range(0..4));
                let leader = cluster.leader_of(&group).await;
                cluster.node(leader).kill9();
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..2500))).await;
                cluster.node(leader).restart().await;
            }
            2 => {
                let done = scale_once(&client, &name, &mut rng).await;
                *faults
                    .entry(if done {
                        "scale"
                    } else {
                        "scale refused or timed out"
                    })
                    .or_default() += 1;
            }
            _ => {
                *faults.entry("partition isolating a node").or_default() += 1;
                cluster.isolate(victim).await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
                cluster.heal().await;
            }
        }
    }
    for w in writers {
        w.await.expect("writer task");
    }
    for w in txn_writers {
        w.await.expect("transactional writer task");
    }
    kafka_writer.await.expect("Kafka writer task");
    // Transactions whose end is unknown are resolved from their status;
    // a committed one's events count as acknowledged from here on.
    let unknown: Vec<(usize, String)> = history
        .lock()
        .unwrap()
        .txns
        .iter()
        .enumerate()
        .filter(|(_, t)| t.committed.is_none())
        .map(|(i, t)| (i, t.id.clone()))
        .collect();
    for (i, id) in &unknown {
        let committed = resolve_txn(&client, &name, id).await;
        history.lock().unwrap().txns[*i].committed = Some(committed);
    }
    {
        let mut h = history.lock().unwrap();
        let committed: Vec<(String, u64)> = h
            .txns
            .iter()
            .filter(|t| t.committed == Some(true))
            .flat_map(|t| t.events.iter().cloned())
            .collect();
        h.acked.extend(committed);
    }
    // Let the tailing reader catch up with the last acknowledged events.
    let expected = history.lock().unwrap().acked.len();
    let caught_up_at = Instant::now();
    let deadline = caught_up_at + Duration::from_secs(60);
    while history.lock().unwrap().tailed.len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "jepsen: the tailing reader had {} of {expected} events {:.1?} after the writers stopped",
        history.lock().unwrap().tailed.len(),
        caught_up_at.elapsed()
    );
    tailer.abort();
    // And the reader group with them.
    let grouped_all = || {
        let h = history.lock().unwrap();
        let grouped: HashSet<&(String, u64)> = h.grouped.iter().collect();
        h.acked.iter().filter(|k| !grouped.contains(k)).count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while grouped_all() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in group_tasks {
        t.abort();
    }
    if grouped_all() > 0 {
        // For the post-mortem: who held what when the group fell behind.
        eprintln!(
            "jepsen: the group missed events; its state: {:#?}",
            group.describe().await
        );
    }
    let checkpoints = group.describe().await.map_or(0, |g| {
        g.checkpoints
            .iter()
            .filter(|c| c.state == CheckpointState::Complete)
            .count()
    });

    let reader = Client::connect(&cluster.node(3).addr())
        .await
        .expect("connect");
    let events = read_all(&reader, &name, Duration::from_secs(120)).await;
    let kafka_events = read_all(&reader, &kafka_name, Duration::from_secs(120)).await;
    let h = history.lock().unwrap();
    let KafkaChecked {
        committed: k_committed,
        aborted: k_aborted,
        unknown: k_unknown,
        bad: kafka_bad,
    } = check_kafka(&h, &kafka_events);
    let mut seen: HashMap<(String, u64), u32> = HashMap::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut reordered = 0u64;
    for e in &events {
        let (key, seq) = parse(&e.payload).expect("a payload the writers wrote");
        if last.get(&key).is_some_and(|&l| seq <= l) {
            reordered += 1;
        }
        last.insert(key.clone(), seq);
        *seen.entry((key, seq)).or_default() += 1;
    }
    let lost = h.acked.iter().filter(|k| !seen.contains_key(*k)).count();
    // Transactions: whole or absent, contiguous per segment, in the final
    // read and as the tailing reader saw them.
    let mut final_txn: Vec<(u64, String)> = Vec::new();
    for e in &events {
        if let Some(tag) = txn_tag(&e.payload) {
            final_txn.push((e.position.segment_id, tag));
        }
    }
    let mut visible: HashMap<&str, usize> = HashMap::new();
    for (_, tag) in &final_txn {
        *visible.entry(tag).or_default() += 1;
    }
    let (mut committed, mut aborted, mut not_whole, mut aborted_seen) = (0, 0, 0, 0);
    for t in &h.txns {
        let n = visible.get(t.tag.as_str()).copied().unwrap_or(0);
        if t.committed == Some(true) {
            committed += 1;
            not_whole += usize::from(n != t.events.len());
        } else {
            aborted += 1;
            aborted_seen += usize::from(n > 0);
        }
    }
    let count = |v: &[(u64, String)]| {
        let mut m: HashMap<(u64, String), usize> = HashMap::new();
        for x in v {
            *m.entry(x.clone()).or_default() += 1;
        }
        m
    };
    let tail_partial = {
        let (tail, full) = (count(&h.tailed_txn), count(&final_txn));
        full.iter()
            .filter(|(k, n)| tail.get(*k) != Some(*n))
            .count()
    };
    let interleaved_final = interleaved(&final_txn);
    let interleaved_tail = interleaved(&h.tailed_txn);
    let duplicated = seen.values().filter(|&&n| n > 1).count();
    let vanished = h.tailed.iter().filter(|k| !seen.contains_key(*k)).count();
    let grouped: HashSet<&(String, u64)> = h.grouped.iter().collect();
    let missed = h.acked.iter().filter(|k| !grouped.contains(k)).count();
    let reread = h.grouped.len() - grouped.len();
    eprintln!(
        "jepsen: {nodes} nodes, {fault_secs} s of faults {faults:?}; {} acknowledged, {} failed (unknown), {} read, {} tailed; \
         lost {lost}, duplicated {duplicated}, reordered {reordered}, vanished {vanished}; \
         group: {} handed on, missed {missed}, re-read {reread}, {} markers, {checkpoints} checkpoints complete (of the last kept), {} read errors; \
         transactions: {committed} committed ({} with a lost answer), {aborted} aborted; not whole {not_whole}, aborted but seen {aborted_seen}, \
         interleaved {interleaved_final} (tailed {interleaved_tail}), partial in the tail {tail_partial}; \
         Kafka transactions: {k_committed} committed, {k_aborted} aborted, {k_unknown} with a lost commit answer, {} records read; \
         not whole, aborted but seen, lost answer partial, duplicated, interleaved or out of order {kafka_bad:?}",
        h.acked.len(),
        h.failed,
        events.len(),
        h.tailed.len(),
        h.grouped.len(),
        h.markers,
        h.group_errors,
        unknown.len(),
        kafka_events.len()
    );
    assert!(!h.acked.is_empty(), "the writers made progress");
    assert_eq!(
        h.tail_errors, 0,
        "the tailing reader resumed after every fault"
    );
    assert_eq!(
        h.tailed.len(),
        h.acked.len(),
        "the tailing reader saw every acknowledged event"
    );
    assert_eq!(
        (lost, duplicated, reordered, vanished),
        (0, 0, 0, 0),
        "lost, duplicated, reordered, vanished (seed {seed})"
    );
    assert_eq!(
        missed, 0,
        "acknowledged events the group missed (seed {seed})"
    );
    assert!(committed > 0 && aborted > 0, "transactions ran both ways");
    assert_eq!(
        (not_whole, aborted_seen, interleaved_final, interleaved_tail, tail_partial),
        (0, 0, 0, 0, 0),
        "transactions not whole, aborted but seen, interleaved (final, tailed), partial in the tail (seed {seed})"
    );
    assert!(
        k_committed > 0 && k_aborted > 0,
        "Kafka transactions ran both ways"
    );
    assert_eq!(
        kafka_bad,
        (0, 0, 0, 0, 0),
        "Kafka transactions not whole, aborted but seen, lost answer partial, duplicated, \
         interleaved or out of order (seed {seed})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jepsen_short() {
    run(30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: long; AQUIFER_JEPSEN_SECS sets the fault time (default 600)"]
async fn jepsen_soak() {
    let secs = std::env::var("AQUIFER_JEPSEN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    run(secs).await;
}
