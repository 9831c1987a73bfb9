//! Recovery from damaged log files: a torn tail is cut off and the node
//! serves on; corruption with valid records after it stops the node with a
//! message naming the file and offset, and it starts again once the byte is
//! restored.

use aquifer_testkit as common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aquifer_client::{Client, Event, StreamName, WriterConfig};
use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};

use common::{flip_byte, log_files, put_byte, read_all, stream_name, ServerOpts, ServerProcess};

/// Nothing moves to tier-2 during these tests, so the log keeps every event.
const NO_TIERING: &str = "\
[tier2]
chunk_bytes = 67108864
flush_interval_ms = 3600000
";
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes `payloads` with one writer (all without key, so in one segment
/// order for a one-segment stream), pipelined, and waits for every ack.
async fn write_pipelined(
    client: &Client,
    name: &StreamName,
    writer_id: &str,
    payloads: Vec<Bytes>,
) {
    let config = WriterConfig::default().writer_id(writer_id);
    let writer = client.writer(name, config).await.expect("open writer");
    let mut pending = FuturesOrdered::new();
    for (i, payload) in payloads.into_iter().enumerate() {
        let ack = writer.write_event(None, payload).await.expect("write");
        pending.push_back(async move { (i, ack.await) });
        while pending.len() >= 1024 {
            let (i, res) = pending.next().await.expect("non-empty");
            res.unwrap_or_else(|e| panic!("ack of event {i}: {e}"));
        }
    }
    writer.flush().await.expect("flush");
    while let Some((i, res)) = pending.next().await {
        res.unwrap_or_else(|e| panic!("ack of event {i}: {e}"));
    }
    let _ = writer.close().await;
}

/// Writes each payload and waits for its ack before the next: each becomes a
/// log record of its own.
async fn write_one_by_one(
    client: &Client,
    name: &StreamName,
    writer_id: &str,
    payloads: Vec<Bytes>,
) {
    let config = WriterConfig::default().writer_id(writer_id);
    let writer = client.writer(name, config).await.expect("open writer");
    for (i, payload) in payloads.into_iter().enumerate() {
        let ack = writer.write_event(None, payload).await.expect("write");
        writer.flush().await.expect("flush");
        ack.await
            .unwrap_or_else(|e| panic!("ack of event {i}: {e}"));
    }
    let _ = writer.close().await;
}

fn payload_texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| String::from_utf8(e.payload.to_vec()).expect("utf-8 payload"))
        .collect()
}

/// The log directory group of the (only) segment of `name`.
async fn container_group(client: &Client, name: &StreamName, data_dir: &Path) -> String {
    let info = client
        .admin()
        .describe_stream(name)
        .await
        .expect("describe stream");
    assert_eq!(info.segments.len(), 1, "{info:?}");
    let group = format!("container-{}", info.segments[0].container);
    let dir = data_dir.join("log").join(&group);
    assert!(
        dir.is_dir(),
        "no log directory {} for the segment's container; {}/log holds {:?}",
        dir.display(),
        data_dir.display(),
        std::fs::read_dir(data_dir.join("log"))
            .map(|d| d
                .filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .collect::<Vec<_>>())
            .unwrap_or_default()
    );
    group
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_cut_and_the_node_serves_on() {
    let mut server = ServerProcess::start(ServerOpts::with_config(NO_TIERING)).await;
    let client = server.client().await;
    let name = stream_name("recovery/torn");
    client
        .admin()
        .create_stream(&name, 1)
        .await
        .expect("create stream");

    const BULK: usize = 2000;
    const LAST: usize = 5;
    let text = |i: usize| format!("event-{i:06}-{}", "p".repeat(100));
    write_pipelined(
        &client,
        &name,
        "torn-w1",
        (0..BULK).map(|i| text(i).into()).collect(),
    )
    .await;
    write_one_by_one(
        &client,
        &name,
        "torn-w2",
        (BULK..BULK + LAST).map(|i| text(i).into()).collect(),
    )
    .await;
    let group = container_group(&client, &name, server.data_dir()).await;
    drop(client);
    server.kill9();

    let files = log_files(server.data_dir(), &group);
    let active = files.last().expect("the container has a log file").clone();
    let len = std::fs::metadata(&active).expect("stat").len();
    assert!(
        len > 8,
        "active log file {} is only {len} bytes",
        active.display()
    );
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&active)
        .expect("open log file");
    file.set_len(len - 3).expect("truncate");
    file.sync_all().expect("fsync");
    drop(file);
    eprintln!("cut 3 bytes off {} ({len} bytes)", active.display());

    server.restart().await;
    let client = server.client().await;
    let events = read_all(&client, &name, READ_TIMEOUT).await;
    let got = payload_texts(&events);
    let total = BULK + LAST;
    assert!(
        got.len() >= total - LAST && got.len() <= total,
        "after a torn tail {} of {total} events are readable (at most the last {LAST} may go)",
        got.len()
    );
    for (i, t) in got.iter().enumerate() {
        assert_eq!(t, &text(i), "event {i} after recovery");
    }
    eprintln!("{} of {total} events survived the torn tail", got.len());

    // New writes work and land after what survived.
    write_one_by_one(
        &client,
        &name,
        "torn-w3",
        (0..3).map(|i| format!("new-{i}").into()).collect(),
    )
    .await;
    write_pipelined(
        &client,
        &name,
        "torn-w4",
        (3..100).map(|i| format!("new-{i}").into()).collect(),
    )
    .await;
    let events = read_all(&client, &name, READ_TIMEOUT).await;
    let after = payload_texts(&events);
    assert_eq!(
        &after[..got.len()],
        got.as_slice(),
        "old events changed after new writes"
    );
    let new: Vec<String> = (0..100).map(|i| format!("new-{i}")).collect();
    assert_eq!(
        &after[got.len()..],
        new.as_slice(),
        "new events after recovery"
    );
}

/// Finds the payload of event `marker` in the group's log files and returns
/// (file, offset inside the payload) where at least `after` bytes follow.
fn locate(files: &[PathBuf], markers: &[String], after: u64) -> Option<(PathBuf, u64)> {
    for marker in markers {
        for file in files {
            let data = std::fs::read(file).expect("read log file");
            let found = data
                .windows(marker.len())
                .position(|w| w == marker.as_bytes());
            if let Some(pos) = found {
                let at = (pos + marker.len() + 20) as u64;
                if at + after < data.len() as u64 {
                    return Some((file.clone(), at));
                }
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_with_valid_records_after_it_stops_the_node() {
    let mut server = ServerProcess::start(ServerOpts::with_config(NO_TIERING)).await;
    let client = server.client().await;
    let name = stream_name("recovery/corrupt");
    client
        .admin()
        .create_stream(&name, 1)
        .await
        .expect("create stream");
    const EVENTS: usize = 600;
    let text = |i: usize| format!("evt-{i:06}-{}", "x".repeat(2048));
    write_pipelined(
        &client,
        &name,
        "corrupt-w1",
        (0..EVENTS).map(|i| text(i).into()).collect(),
    )
    .await;
    // A later write of its own: whatever the batching made of the run above,
    // at least one whole record follows the one that will be damaged (a
    // damaged last record is a torn tail, truncated by design).
    write_pipelined(&client, &name, "corrupt-w2", vec!["after".into()]).await;
    let group = container_group(&client, &name, server.data_dir()).await;
    drop(client);
    server.kill9();

    // Flip a byte inside the payload of an event from the middle of the run,
    // so the damage is inside a checksummed record with many valid records
    // after it (a few hundred KiB).
    let files = log_files(server.data_dir(), &group);
    let markers: Vec<String> = [300, 250, 350, 200, 150]
        .iter()
        .map(|i| format!("evt-{i:06}-"))
        .collect();
    let (file, offset) = match locate(&files, &markers, 128 * 1024) {
        Some(found) => found,
        None => {
            // Payloads are not stored as plain bytes: fall back to the middle
            // of the largest log file.
            let file = files
                .iter()
                .max_by_key(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
                .expect("a log file")
                .clone();
            let len = std::fs::metadata(&file).expect("stat").len();
            assert!(
                len > 256 * 1024,
                "log file {} is only {len} bytes",
                file.display()
            );
            eprintln!("payload markers not found in the log; flipping the middle byte");
            (file, len / 2)
        }
    };
    let old = flip_byte(&file, offset);
    eprintln!("flipped byte {offset} of {}", file.display());

    server.respawn();
    let status = server.wait_for_exit(EXIT_TIMEOUT);
    let stderr = server.stderr_text();
    let Some(status) = status else {
        server.kill9();
        panic!(
            "the node kept running with a corrupt log file {} (byte {offset} flipped); stderr:\n{stderr}",
            file.display()
        );
    };
    assert!(
        !status.success(),
        "the node exited successfully on a corrupt log; stderr:\n{stderr}"
    );
    let file_name = file
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned();
    let named = format!("{group}/{file_name}");
    assert!(
        stderr.contains(&named),
        "stderr does not name the corrupt file {named}:\n{stderr}"
    );
    let lower = stderr.to_lowercase();
    assert!(
        lower.contains("offset"),
        "stderr does not mention the offset:\n{stderr}"
    );
    assert!(
        lower.contains("corrupt"),
        "stderr does not say corrupt:\n{stderr}"
    );

    // The refusal changed nothing: restore the byte and the node starts with
    // every event.
    put_byte(&file, offset, old);
    server.restart().await;
    let client = server.client().await;
    let events = read_all(&client, &name, READ_TIMEOUT).await;
    let got = payload_texts(&events);
    assert_eq!(got.len(), EVENTS + 1, "events after restoring the byte");
    for (i, t) in got.iter().take(EVENTS).enumerate() {
        assert_eq!(t, &text(i), "event {i} after restoring the byte");
    }
    assert_eq!(got[EVENTS], "after");
}

/// SIGTERM stops the node cleanly (exit 0, within the harness's limit), and
/// a restart serves every event written before, on every segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_and_restart_keep_every_event() {
    let mut server = ServerProcess::start(ServerOpts::default()).await;
    let client = server.client().await;
    let name = stream_name("recovery/graceful");
    client
        .admin()
        .create_stream(&name, 4)
        .await
        .expect("create stream");
    let config = WriterConfig::default().writer_id("graceful-w");
    let writer = client.writer(&name, config).await.expect("open writer");
    let mut pending = FuturesOrdered::new();
    for i in 0..1000u64 {
        let key = format!("k{}", i % 16);
        let ack = writer
            .write_event(Some(key.as_str()), format!("{key}:{i}"))
            .await
            .expect("write");
        pending.push_back(ack);
    }
    while let Some(res) = pending.next().await {
        res.expect("ack");
    }
    writer.close().await.expect("close");
    drop(client);

    let status = server.stop();
    assert!(
        status.success(),
        "SIGTERM: the node exited with {status}; stderr:\n{}",
        server.stderr_text()
    );
    server.restart().await;
    let client = server.client().await;
    let events = read_all(&client, &name, READ_TIMEOUT).await;
    assert_eq!(events.len(), 1000, "events after a clean restart");
    let mut per_key: std::collections::HashMap<String, Vec<u64>> = Default::default();
    for e in &events {
        let text = std::str::from_utf8(&e.payload).expect("utf-8");
        let (key, i) = text.split_once(':').expect("key:i");
        assert_eq!(e.routing_key.as_deref(), Some(key));
        per_key
            .entry(key.to_owned())
            .or_default()
            .push(i.parse().expect("number"));
    }
    for (key, seqs) in per_key {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "order of {key}: {seqs:?}"
        );
        assert_eq!(
            seqs.len(),
            1000 / 16 + usize::from(key_index(&key) < 1000 % 16)
        );
    }
}

fn key_index(key: &str) -> u64 {
    key.trim_start_matches('k').parse().expect("k<number>")
}
