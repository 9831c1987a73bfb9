//! The state synchronizer against the real binary: updaters in separate
//! processes (this test binary, run again as `updater_process`) each add one
//! to a shared counter a thousand times by setting it to the value they
//! read plus one, while one of them compacts now and then. Only if every
//! update was decided on the latest state — none lost, none applied twice —
//! does the counter end at exactly their sum; a synchronizer opened
//! afterwards starts from the last compacted whole state.

use aquifer_testkit as common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aquifer_client::{Client, DecodeError, SyncConfig, SyncState};

use common::{stream_name, ServerOpts, ServerProcess};

const UPDATERS: usize = 3;
const UPDATES_PER_UPDATER: u64 = 1000;
/// The first updater compacts after every this many of its updates.
const COMPACT_EVERY: u64 = 250;
/// Tells the re-run test binary to act as an updater: "ADDR STREAM INDEX".
const UPDATER_ENV: &str = "AQUIFER_TEST_SYNC_UPDATER";
const UPDATERS_TIMEOUT: Duration = Duration::from_secs(120);

/// A counter whose updates set it (so an update decided on a stale value
/// would lose increments).
#[derive(Debug, PartialEq)]
struct Counter(u64);

impl SyncState for Counter {
    type Update = u64;

    fn apply(&mut self, value: &u64) {
        self.0 = *value;
    }

    fn encode_state(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }

    fn decode_state(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(Counter(u64::from_le_bytes(bytes.try_into()?)))
    }

    fn encode_update(value: &u64) -> Vec<u8> {
        value.to_le_bytes().to_vec()
    }

    fn decode_update(bytes: &[u8]) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(bytes.try_into()?))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updaters_in_separate_processes_count_exactly() {
    let server = ServerProcess::start(ServerOpts::default()).await;
    let client = server.client().await;
    let name = stream_name("sync/counter");
    let mut counter = client
        .state_synchronizer::<Counter>(&name, SyncConfig::default())
        .await
        .expect("open");
    assert!(counter.initialize(Counter(0)).await.expect("initialize"));
    assert!(!counter.initialize(Counter(7)).await.expect("again"));

    let logs = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("test binary");
    let mut updaters: Vec<_> = (0..UPDATERS)
        .map(|i| {
            let log = logs.path().join(format!("updater-{i}.log"));
            let file = std::fs::File::create(&log).expect("log file");
            let child = Command::new(&exe)
                .args(["--exact", "updater_process", "--ignored", "--nocapture"])
                .env(UPDATER_ENV, format!("{} {name} {i}", server.addr()))
                .stdout(file.try_clone().expect("log file"))
                .stderr(file)
                .stdin(Stdio::null())
                .spawn()
                .expect("start an updater");
            (child, log)
        })
        .collect();
    let deadline = Instant::now() + UPDATERS_TIMEOUT;
    for (child, log) in &mut updaters {
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("an updater ran past {UPDATERS_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let output = std::fs::read_to_string(&*log).unwrap_or_default();
        assert!(status.success(), "updater failed ({status}):\n{output}");
        assert!(output.contains("1 passed"), "the updater ran:\n{output}");
        for line in output.lines().filter(|l| l.starts_with("updater ")) {
            eprintln!("{line}");
        }
    }

    let total = UPDATERS as u64 * UPDATES_PER_UPDATER;
    counter.fetch_updates().await.expect("fetch");
    assert_eq!(counter.state(), Some(&Counter(total)));
    // Compaction truncated the stream: a synchronizer opened now starts at
    // the head, a whole state, and reaches the same state and revision.
    let info = client
        .admin()
        .describe_stream(&name)
        .await
        .expect("describe");
    let head = info.segments[0].head_offset;
    assert!(head > 0, "compactions moved the head");
    let late = client
        .state_synchronizer::<Counter>(&name, SyncConfig::default())
        .await
        .expect("open later");
    assert_eq!(late.state(), Some(&Counter(total)));
    assert_eq!(late.revision(), counter.revision());
    let mut reads = client.segment_reader(info.segments[0].segment_id, 0, false);
    assert!(matches!(
        futures::TryStreamExt::try_next(&mut reads).await,
        Err(aquifer_client::Error::OutOfRange(_))
    ));
}

/// One updater of `updaters_in_separate_processes_count_exactly`, in a
/// process of its own; does nothing unless that test started it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by updaters_in_separate_processes_count_exactly as a separate process"]
async fn updater_process() {
    let Ok(spec) = std::env::var(UPDATER_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split(' ').collect();
    let [addr, stream, index] = parts[..] else {
        panic!("{UPDATER_ENV} should be \"ADDR STREAM INDEX\", not {spec:?}");
    };
    let compacts = index == "0";
    let client = Client::connect(addr).await.expect("connect");
    let mut counter = client
        .state_synchronizer::<Counter>(&stream_name(stream), SyncConfig::default())
        .await
        .expect("open");
    let started = Instant::now();
    let mut decisions = 0u64;
    for i in 1..=UPDATES_PER_UPDATER {
        let wrote = counter
            .update(|c| {
                decisions += 1;
                vec![c.0 + 1]
            })
            .await
            .unwrap_or_else(|e| panic!("update {i}: {e}"));
        assert!(wrote);
        if compacts && i % COMPACT_EVERY == 0 {
            counter.compact().await.expect("compact");
        }
    }
    eprintln!(
        "updater {index}: {UPDATES_PER_UPDATER} updates, {decisions} decisions, in {:?}",
        started.elapsed()
    );
}
