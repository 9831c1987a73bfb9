//! Crash rounds: writers with fixed writer ids write continuously while the
//! node is killed with SIGKILL at random moments and restarted. The writers'
//! retries must carry them across every restart, and in the end every
//! acknowledged event is there exactly once, in per-key order, with no
//! duplicates of anything.
//!
//! Randomized: the seed is printed; replay with `AQUIFER_TEST_SEED=<seed>`.
//! The soak version (`cargo test --test e2e_crash -- --ignored`) runs
//! `AQUIFER_SOAK_ROUNDS` rounds (default 200).

use aquifer_testkit as common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aquifer_client::{EventWriter, WriterConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;

use common::{
    keyed_payload, log_files, per_key_sequences, read_all, stream_name, test_seed, ServerOpts,
    ServerProcess,
};

const WRITERS: usize = 4;
const KEYS_PER_WRITER: usize = 8;
/// Each writer writes EVENTS_PER_TICK events every TICK: 2000 events/s.
const TICK: Duration = Duration::from_millis(10);
const EVENTS_PER_TICK: usize = 20;
/// Writes a test writer may have queued but not yet acknowledged.
const IN_FLIGHT_MAX: u32 = 4096;
/// Longest kill delay after a restart.
const DELAY_MS_MAX: u64 = 1500;
/// How long writers may take to make progress after a restart.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);
/// Final flush and ack wait of each writer.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
const READ_TIMEOUT: Duration = Duration::from_secs(180);

/// Frequent tiering, snapshots and log truncation so that crashes also hit
/// chunk uploads and snapshot writes; a short raft tick so that restarts
/// elect quickly.
const CONFIG: &str = "\
snapshot_log_bytes = 1048576

[tier2]
chunk_bytes = 262144
flush_interval_ms = 500

[raft]
tick_ms = 50
";

#[derive(Default)]
struct Ledger {
    /// Per key, the sequence numbers whose writes were acknowledged.
    acked: Mutex<HashMap<String, BTreeSet<u64>>>,
    acked_count: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Ledger {
    fn acked_count(&self) -> u64 {
        self.acked_count.load(Ordering::SeqCst)
    }

    /// Records the acknowledged sequences `seqs` of `key`.
    fn acked(&self, key: String, seqs: impl IntoIterator<Item = u64>) {
        let mut acked = self.acked.lock().expect("lock");
        let set = acked.entry(key).or_default();
        let mut n = 0u64;
        for seq in seqs {
            set.insert(seq);
            n += 1;
        }
        self.acked_count.fetch_add(n, Ordering::SeqCst);
    }

    fn error(&self, e: String) {
        eprintln!("writer error: {e}");
        self.errors.lock().expect("lock").push(e);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_survive_kill9_rounds() {
    crash_rounds("writers_survive_kill9_rounds", 25).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "soak: long; run with --ignored (AQUIFER_SOAK_ROUNDS, default 200)"]
async fn writers_survive_kill9_soak() {
    let rounds = std::env::var("AQUIFER_SOAK_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    crash_rounds("writers_survive_kill9_soak", rounds).await;
}

async fn crash_rounds(test: &str, rounds: usize) {
    let seed = test_seed(test);
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let mut server = ServerProcess::start(ServerOpts::with_config(CONFIG)).await;
    let client = server.client().await;
    let name = stream_name("crash/events");
    client
        .admin()
        .create_stream(&name, 4)
        .await
        .expect("create stream");

    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let config = WriterConfig::default().writer_id(format!("crash-w{w}"));
        let writer = client.writer(&name, config).await.expect("open writer");
        writers.push(tokio::spawn(run_writer(
            w,
            writer,
            ledger.clone(),
            stop.clone(),
        )));
    }
    wait_for_progress(&ledger, 0, "the first acks").await;

    for round in 0..rounds {
        let delay = rng.random_range(0..=DELAY_MS_MAX);
        // Mostly wait until writes flow again before the next kill; sometimes
        // kill while the writers are still retrying into a recovering node.
        let check_progress = rng.random_bool(0.75);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let before = ledger.acked_count();
        server.kill9();
        eprintln!(
            "round {round}: killed after {delay} ms, {before} acked so far ({:.1?} elapsed)",
            started.elapsed()
        );
        server.restart().await;
        if check_progress {
            wait_for_progress(&ledger, before, &format!("acks after restart {round}")).await;
        }
        let errors = ledger.errors.lock().expect("lock").clone();
        assert!(
            errors.is_empty(),
            "round {round} (seed {seed}): writer errors: {errors:?}"
        );
    }
    let before = ledger.acked_count();
    wait_for_progress(&ledger, before, "acks after the last restart").await;

    stop.store(true, Ordering::SeqCst);
    let mut written: HashMap<String, u64> = HashMap::new();
    for handle in writers {
        let counts = tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(30), handle)
            .await
            .expect("writer finished in time")
            .expect("writer task");
        written.extend(counts);
    }
    let errors = ledger.errors.lock().expect("lock").clone();
    assert!(errors.is_empty(), "seed {seed}: writer errors: {errors:?}");

    let events = read_all(&client, &name, READ_TIMEOUT).await;
    // Strictly increasing per key: no duplicates, no reordering, of acked and
    // unacked events alike.
    let read = per_key_sequences(&events);
    let acked = ledger.acked.lock().expect("lock");
    let mut acked_total = 0usize;
    for (key, count) in &written {
        let seqs = read.get(key).map(Vec::as_slice).unwrap_or_default();
        let present: BTreeSet<u64> = seqs.iter().copied().collect();
        let acked_of_key = acked.get(key).cloned().unwrap_or_default();
        acked_total += acked_of_key.len();
        let missing: Vec<u64> = acked_of_key.difference(&present).copied().collect();
        assert!(
            missing.is_empty(),
            "seed {seed}: key {key}: acknowledged events missing: {missing:?}"
        );
        assert!(
            seqs.iter().all(|s| s < count),
            "seed {seed}: key {key}: events never written were read: {seqs:?} (written {count})"
        );
        // With no writer errors every write was acknowledged in the end.
        let all: Vec<u64> = (0..*count).collect();
        assert_eq!(
            seqs,
            all.as_slice(),
            "seed {seed}: key {key}: not every write is there"
        );
    }
    for key in read.keys() {
        assert!(
            written.contains_key(key),
            "seed {seed}: unknown key {key} read"
        );
    }
    // What the crashes met on disk (diagnostic only).
    for group in [
        "meta",
        "container-0",
        "container-1",
        "container-2",
        "container-3",
    ] {
        let dir = server.data_dir().join("log").join(group);
        if dir.is_dir() {
            eprintln!(
                "{group}: {} log file(s), snapshot files: {}",
                log_files(server.data_dir(), group).len(),
                std::fs::read_dir(&dir).map_or(0, |d| d
                    .flatten()
                    .filter(|f| f.file_name().to_string_lossy().starts_with("snapshot-"))
                    .count())
            );
        }
    }
    eprintln!(
        "{test}: {rounds} rounds, {} events written, {acked_total} acked, {} read, {:.1?}",
        written.values().sum::<u64>(),
        events.len(),
        started.elapsed()
    );
}

async fn wait_for_progress(ledger: &Ledger, above: u64, what: &str) {
    let deadline = Instant::now() + PROGRESS_TIMEOUT;
    while ledger.acked_count() <= above {
        let errors = ledger.errors.lock().expect("lock").clone();
        assert!(
            errors.is_empty(),
            "writer errors while waiting for {what}: {errors:?}"
        );
        assert!(
            Instant::now() < deadline,
            "no new acks within {PROGRESS_TIMEOUT:?} waiting for {what} (acked {above})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `w{w}-k*` keys at a steady rate until `stop` (odd writers a batch
/// per tick, even ones event by event); returns the number of events queued
/// per key (sequence numbers 0..n).
async fn run_writer(
    w: usize,
    writer: EventWriter,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) -> HashMap<String, u64> {
    let writer_id = format!("crash-w{w}");
    let keys: Vec<String> = (0..KEYS_PER_WRITER).map(|k| format!("w{w}-k{k}")).collect();
    let mut next = vec![0u64; KEYS_PER_WRITER];
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_MAX as usize));
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut i = 0usize;
    'writing: while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        if w % 2 == 1 {
            // Odd writers write each tick's events as one batch of one key
            // (`write_batch`), so kills land inside batches too.
            let permits = in_flight
                .clone()
                .acquire_many_owned(EVENTS_PER_TICK as u32)
                .await
                .expect("semaphore open");
            let k = i % KEYS_PER_WRITER;
            i += 1;
            let key = keys[k].clone();
            let seqs = next[k]..next[k] + EVENTS_PER_TICK as u64;
            let batch: Vec<_> = seqs
                .clone()
                .map(|seq| keyed_payload(&key, seq, &writer_id))
                .collect();
            match writer.write_batch(Some(key.as_str()), &batch).await {
                Ok(pending) => {
                    next[k] = seqs.end;
                    let ledger = ledger.clone();
                    tokio::spawn(async move {
                        match pending.await {
                            Ok(ack) => {
                                assert_eq!(ack.events, seqs.clone().count());
                                ledger.acked(key, seqs.clone());
                            }
                            Err(e) => ledger.error(format!("ack of {key}:{seqs:?}: {e}")),
                        }
                        drop(permits);
                    });
                }
                Err(e) => {
                    ledger.error(format!("{writer_id}: write {key}:{seqs:?}: {e}"));
                    break 'writing;
                }
            }
            continue;
        }
        for _ in 0..EVENTS_PER_TICK {
            let permit = in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore open");
            let k = i % KEYS_PER_WRITER;
            i += 1;
            let key = &keys[k];
            let seq = next[k];
            match writer
                .write_event(Some(key.as_str()), keyed_payload(key, seq, &writer_id))
                .await
            {
                Ok(pending) => {
                    next[k] += 1;
                    let ledger = ledger.clone();
                    let key = key.clone();
                    tokio::spawn(async move {
                        match pending.await {
                            Ok(_) => ledger.acked(key, [seq]),
                            Err(e) => ledger.error(format!("ack of {key}:{seq}: {e}")),
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    ledger.error(format!("{writer_id}: write {key}:{seq}: {e}"));
                    break 'writing;
                }
            }
        }
    }
    match tokio::time::timeout(DRAIN_TIMEOUT, writer.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => ledger.error(format!("{writer_id}: flush: {e}")),
        Err(_) => ledger.error(format!("{writer_id}: flush took over {DRAIN_TIMEOUT:?}")),
    }
    // Every tracker holds a permit until its ack resolves.
    match tokio::time::timeout(DRAIN_TIMEOUT, in_flight.acquire_many(IN_FLIGHT_MAX)).await {
        Ok(permits) => drop(permits.expect("semaphore open")),
        Err(_) => ledger.error(format!(
            "{writer_id}: acks still pending after {DRAIN_TIMEOUT:?}"
        )),
    }
    let _ = writer.close().await;
    keys.into_iter().zip(next).collect()
}
