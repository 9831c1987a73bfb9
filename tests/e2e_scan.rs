//! Batch scans: the segment ranges between the head and tail cuts, read in
//! parallel, return exactly the events written, across tier-2 and the tail.

use aquifer_testkit as common;

use futures::TryStreamExt;
use std::time::Duration;

use aquifer_client::{ScanConfig, WriterConfig};

use common::{
    per_key_sequences, stream_name, wait_all_in_tier2, write_keyed_range, ServerOpts, ServerProcess,
};

const CONFIG: &str = "[tier2]\nchunk_bytes = 65536\nflush_interval_ms = 100\n";
const KEYS: u64 = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_scan_returns_exactly_the_events_written() {
    let server = ServerProcess::start(ServerOpts::with_config(CONFIG)).await;
    let client = server.client().await;
    let name = stream_name("scan/events");
    client
        .admin()
        .create_stream(&name, 4)
        .await
        .expect("create");
    let writer = client
        .writer(&name, WriterConfig::default())
        .await
        .expect("writer");
    // Some events in tier-2, the newest still in the tail buffers.
    write_keyed_range(&writer, KEYS, 0, 300, 200).await;
    wait_all_in_tier2(&client, &name, Duration::from_secs(30)).await;
    write_keyed_range(&writer, KEYS, 300, 400, 200).await;

    let batch = client.batch();
    let from = batch.head_cut(&name).await.expect("head cut");
    let to = batch.tail_cut(&name).await.expect("tail cut");
    let ranges = batch
        .segment_ranges(&name, &from, &to)
        .await
        .expect("ranges");
    assert!(!ranges.is_empty() && ranges.len() <= 4, "{ranges:?}");
    assert!(
        ranges
            .iter()
            .all(|r| r.start <= r.tier2_end && r.tier2_end <= r.end),
        "{ranges:?}"
    );
    assert!(
        ranges.iter().any(|r| r.start < r.tier2_end),
        "part of the data is in tier-2: {ranges:?}"
    );
    let read_all = |direct: bool| {
        let reads = ranges.iter().map(|r| {
            let mut reader = batch.read_range(r, &ScanConfig::default().direct(direct));
            async move {
                let mut events = Vec::new();
                while let Some(e) = reader.try_next().await.expect("range read") {
                    events.push(e);
                }
                events
            }
        });
        futures::future::join_all(reads)
    };
    let events: Vec<_> = read_all(false).await.into_iter().flatten().collect();
    assert_eq!(events.len() as u64, KEYS * 400, "every event once");
    for (key, seqs) in per_key_sequences(&events) {
        assert_eq!(seqs, (0..400).collect::<Vec<u64>>(), "key {key}");
    }
    // Direct: tier-2 straight from the object store, then the tail from the
    // broker; the same events at the same positions.
    let direct: Vec<_> = read_all(true).await.into_iter().flatten().collect();
    assert_eq!(direct, events, "direct reads match brokered reads");

    // The same through the CLI, with a count and with the events.
    let out = server.cli(&["scan", "scan/events", "--parallel", "4", "--count"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("{} events", KEYS * 400)),
        "{text}"
    );
    let lines = |args: &[&str]| common::sorted_lines(&server.cli(args, None));
    let brokered = lines(&["scan", "scan/events", "--parallel", "2"]);
    assert_eq!(brokered.len() as u64, KEYS * 400);
    let direct = lines(&["scan", "scan/events", "--parallel", "3", "--direct"]);
    assert_eq!(direct, brokered, "--direct prints the same events");
}
