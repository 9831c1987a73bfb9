//! Manual scaling end to end, through the client and the CLI against a real
//! node: a keyed writer and a tailing reader across a split and a merge made
//! with `aquifer stream scale`, then `stream history` and `describe`, and
//! the scale flags refused before anything is dialled.

use aquifer_testkit as common;

use std::time::Duration;

use aquifer_client::{Event, ReaderConfig, SegmentInfo, WriterConfig};
use futures::TryStreamExt;

use common::{
    cli, cli_err, cli_ok, keyed_payload, per_key_sequences, read_all, stream_name, ServerOpts,
    ServerProcess,
};

const KEYS: u64 = 24;
const SEQS: u64 = 300;
const T: Duration = Duration::from_secs(120);

/// Each key's sequence numbers are exactly `0..SEQS`, in order.
fn assert_every_key_once_in_order(events: &[Event], what: &str) {
    let by_key = per_key_sequences(events);
    assert_eq!(by_key.len(), KEYS as usize, "{what}: keys");
    let want: Vec<u64> = (0..SEQS).collect();
    for (key, seqs) in &by_key {
        assert_eq!(seqs, &want, "{what}: key {key}");
    }
}

/// The active segment whose key range starts at `low`.
fn active_at(segments: &[SegmentInfo], low: f64) -> u64 {
    segments
        .iter()
        .find(|s| !s.sealed && s.key_low == low)
        .unwrap_or_else(|| panic!("no active segment at {low}: {segments:?}"))
        .segment_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_split_and_merge_keep_every_key_once_and_in_order() {
    let server = ServerProcess::start(ServerOpts::default()).await;
    let client = server.client().await;
    let name = stream_name("e2e/scaled");
    let created = client
        .admin()
        .create_stream(&name, 2)
        .await
        .expect("create stream");
    let follower = client
        .reader(&name, ReaderConfig::default().follow(true))
        .await
        .expect("follower");
    let following = tokio::spawn(async move { follower.try_collect::<Vec<Event>>().await });
    let writer = client
        .writer(&name, WriterConfig::default().writer_id("scaled-1"))
        .await
        .expect("writer");
    // Paced over a few seconds, so both scales land mid-write.
    let writing = tokio::spawn(async move {
        let mut pending = Vec::new();
        for seq in 0..SEQS {
            for k in 0..KEYS {
                let key = format!("k{k}");
                let p = writer
                    .write_event(Some(&key), keyed_payload(&key, seq, "scaled-1"))
                    .await
                    .expect("queue");
                pending.push(p);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for p in pending {
            p.await.expect("acknowledged");
        }
        writer.close().await.expect("close");
    });

    tokio::time::sleep(Duration::from_millis(800)).await;
    let first = active_at(&created.segments, 0.0).to_string();
    let out = cli_ok(
        &server.cli(&["stream", "scale", "e2e/scaled", "--split", &first], None),
        "scale --split",
    );
    assert!(out.contains("epoch 1"), "scale --split printed:\n{out}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let now = client
        .admin()
        .describe_stream(&name)
        .await
        .expect("describe");
    let merge = format!(
        "{},{}",
        active_at(&now.segments, 0.25),
        active_at(&now.segments, 0.5)
    );
    let out = cli_ok(
        &server.cli(&["stream", "scale", "e2e/scaled", "--merge", &merge], None),
        "scale --merge",
    );
    assert!(out.contains("epoch 2"), "scale --merge printed:\n{out}");
    tokio::time::timeout(T, writing)
        .await
        .expect("writer finished in time")
        .expect("writer task");

    // One line per epoch; the first holds the segments the stream began with.
    let history = cli_ok(
        &server.cli(&["stream", "history", "e2e/scaled"], None),
        "history",
    );
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 4, "header and 3 epochs:\n{history}");
    let mut original: Vec<u64> = created.segments.iter().map(|s| s.segment_id).collect();
    original.sort_unstable();
    let original: Vec<String> = original.iter().map(u64::to_string).collect();
    assert!(
        lines[1].starts_with('0') && lines[1].ends_with(&original.join(",")),
        "epoch 0 line: {}",
        lines[1]
    );
    let described = cli_ok(
        &server.cli(&["stream", "describe", "e2e/scaled"], None),
        "describe",
    );
    assert!(
        described.contains("epoch 2") && described.contains("SUCCESSORS"),
        "describe printed:\n{described}"
    );

    let read = read_all(&client, &name, T).await;
    assert_every_key_once_in_order(&read, "read from the head");
    client.admin().seal_stream(&name).await.expect("seal");
    let followed = tokio::time::timeout(T, following)
        .await
        .expect("follower ended once the stream was sealed")
        .expect("follower task")
        .expect("follow read");
    assert_every_key_once_in_order(&followed, "followed");

    // Bad scale flags are refused before dialling (nothing listens on :1).
    let nowhere = ["--addr", "127.0.0.1:1", "stream", "scale", "e2e/scaled"];
    let refused = |extra: &[&str]| cli(&[&nowhere[..], extra].concat(), None);
    cli_err(
        &refused(&["--split", "abc"]),
        "split of a non-number",
        &["not a segment id"],
    );
    cli_err(
        &refused(&["--split", "5:1"]),
        "split into one",
        &["2 to 16 pieces"],
    );
    cli_err(
        &refused(&["--merge", "5"]),
        "merge of one",
        &["at least two"],
    );
    cli_err(&refused(&[]), "nothing to scale", &["nothing to scale"]);
}
