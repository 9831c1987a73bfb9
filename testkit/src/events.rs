//! Events as the tests write and check them: keyed payloads with per-key
//! sequence numbers, whole-stream reads, and per-key order checks.

use futures::TryStreamExt;
use std::collections::HashMap;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::timing::wait_for;
use aquifer_client::{Client, Event, ReaderConfig, StartFrom, StreamName};

pub fn stream_name(s: &str) -> StreamName {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} should be a valid stream name: {e}"))
}

/// Reads a whole stream from its head without follow. A read that fails as
/// `Unavailable` (a node still electing after a restart) starts over, a
/// bounded number of times; anything else panics.
pub async fn read_all(client: &Client, name: &StreamName, timeout: Duration) -> Vec<Event> {
    let deadline = Instant::now() + timeout;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match read_all_once(client, name, deadline).await {
            Ok(events) => return events,
            Err(aquifer_client::Error::Unavailable { .. })
                if attempts < 50 && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("reading {name:?} failed after {attempts} attempts: {e}"),
        }
    }
}

async fn read_all_once(
    client: &Client,
    name: &StreamName,
    deadline: Instant,
) -> Result<Vec<Event>, aquifer_client::Error> {
    let config = ReaderConfig::default().start(StartFrom::Head).follow(false);
    let mut reader = client.reader(name, config).await?;
    let mut events = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, reader.try_next()).await {
            Ok(Ok(Some(event))) => events.push(event),
            Ok(Ok(None)) => return Ok(events),
            Ok(Err(e)) => return Err(e),
            Err(_) => panic!(
                "reading {name:?} did not finish in time ({} events so far)",
                events.len()
            ),
        }
    }
}

/// One parsed test event: payload `key:seq:writer`, routing key `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedEvent {
    pub key: String,
    pub seq: u64,
    pub writer: String,
}

pub fn keyed_payload(key: &str, seq: u64, writer: &str) -> bytes::Bytes {
    bytes::Bytes::from(format!("{key}:{seq}:{writer}"))
}

/// Parses a `key:seq:writer` event and checks it carries `key` as its routing
/// key.
pub fn parse_keyed(event: &Event) -> KeyedEvent {
    let text = std::str::from_utf8(&event.payload)
        .unwrap_or_else(|_| panic!("payload at {:?} is not UTF-8", event.position));
    let mut parts = text.splitn(3, ':');
    let (Some(key), Some(seq), Some(writer)) = (parts.next(), parts.next(), parts.next()) else {
        panic!(
            "payload {text:?} at {:?} is not key:seq:writer",
            event.position
        )
    };
    let seq = seq
        .parse()
        .unwrap_or_else(|_| panic!("payload {text:?}: seq is not a number"));
    assert_eq!(
        event.routing_key.as_deref(),
        Some(key),
        "routing key of {text:?} at {:?}",
        event.position
    );
    KeyedEvent {
        key: key.to_owned(),
        seq,
        writer: writer.to_owned(),
    }
}

/// Checks that within every key the sequence numbers strictly increase (so
/// nothing is duplicated or reordered) and returns them per key.
pub fn per_key_sequences(events: &[Event]) -> HashMap<String, Vec<u64>> {
    let mut by_key: HashMap<String, Vec<u64>> = HashMap::new();
    for event in events {
        let e = parse_keyed(event);
        let seqs = by_key.entry(e.key.clone()).or_default();
        if let Some(&last) = seqs.last() {
            assert!(
                e.seq > last,
                "key {}: seq {} read after {} (duplicate or reordered) at {:?}",
                e.key,
                e.seq,
                last,
                event.position
            );
        }
        seqs.push(e.seq);
    }
    by_key
}

/// Writes sequences `seqs` of keys `k0..k{keys}` (payload `key:seq:w`,
/// routing key = key) at about `per_second` events/s as writer
/// `writer_id`, then waits for every ack (panics on a failed write).
pub async fn write_paced(
    client: &Client,
    name: &StreamName,
    writer_id: &str,
    keys: u64,
    seqs: std::ops::Range<u64>,
    per_second: u64,
) {
    let writer = client
        .writer(
            name,
            aquifer_client::WriterConfig::default().writer_id(writer_id),
        )
        .await
        .expect("writer");
    let per_tick = (per_second / keys.max(1) / 100).max(1); // sequences per 10 ms
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut seq = seqs.start;
    while seq < seqs.end {
        tick.tick().await;
        let n = per_tick.min(seqs.end - seq);
        // Each key's sequences of this tick are one batch (`write_batch`):
        // scales and failovers land between and inside batches.
        for k in 0..keys {
            let key = format!("k{k}");
            let batch: Vec<bytes::Bytes> = (seq..seq + n)
                .map(|s| keyed_payload(&key, s, "w"))
                .collect();
            writer
                .write_batch(Some(&key), &batch)
                .await
                .expect("queued");
        }
        seq += n;
    }
    writer.flush().await.expect("every write acknowledged");
    writer.close().await.expect("closed");
}

/// Writes `key:seq:padding` events (routing key = key) for keys `k0..k{keys}`
/// and seqs `from..to`, with `pad` bytes of padding, and waits until every
/// one is durable.
pub async fn write_keyed_range(
    writer: &aquifer_client::EventWriter,
    keys: u64,
    from: u64,
    to: u64,
    pad: usize,
) {
    let padding = "p".repeat(pad);
    for seq in from..to {
        for k in 0..keys {
            writer
                .write_event(Some(&format!("k{k}")), format!("k{k}:{seq}:{padding}"))
                .await
                .expect("queue");
        }
    }
    writer.flush().await.expect("acknowledged");
}

/// Waits until every segment of `name` holds bytes and all of them are in
/// tier-2 (nothing left in a tail buffer).
pub async fn wait_all_in_tier2(client: &Client, name: &StreamName, timeout: Duration) {
    let admin = client.admin();
    wait_for("every segment's bytes in tier-2", timeout, || {
        let admin = admin.clone();
        let name = name.clone();
        async move {
            admin.describe_stream(&name).await.is_ok_and(|i| {
                i.segments
                    .iter()
                    .all(|s| s.length > 0 && s.tier2_length == s.length)
            })
        }
    })
    .await;
}

/// A successful CLI run's stdout as its lines, sorted (order-free compare).
pub fn sorted_lines(out: &Output) -> Vec<Vec<u8>> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<Vec<u8>> = out
        .stdout
        .split(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    lines.pop(); // after the last newline
    lines.sort();
    lines
}

/// Creates `name` with `segments` segments and a writer for it.
pub async fn stream_with_writer(
    client: &Client,
    name: &StreamName,
    segments: u32,
) -> aquifer_client::EventWriter {
    client
        .admin()
        .create_stream(name, segments)
        .await
        .expect("create stream");
    client
        .writer(name, aquifer_client::WriterConfig::default())
        .await
        .expect("writer")
}
