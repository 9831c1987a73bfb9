//! End-to-end writes and reads through the client crate and the CLI against a
//! real node on loopback.

use aquifer_testkit as common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aquifer_client::{WriteAck, WriterConfig};
use futures::stream::{FuturesUnordered, StreamExt};

use common::{
    cli_ok, keyed_payload, parse_keyed, per_key_sequences, read_all, stream_name, ServerOpts,
    ServerProcess,
};

const WRITERS: usize = 4;
const KEYS_PER_WRITER: usize = 50;
const EVENTS_PER_KEY: u64 = 500;
const TOTAL_EVENTS: usize = WRITERS * KEYS_PER_WRITER * EVENTS_PER_KEY as usize;
/// Un-acknowledged writes one test writer keeps before it waits for acks.
const MAX_IN_FLIGHT: usize = 4096;
const WRITE_TIMEOUT: Duration = Duration::from_secs(240);
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// 100k keyed events from 4 concurrent writers (each with its own keys) to a
/// 4-segment stream come back exactly once, in per-key order, at the
/// positions their acks named, and the segments hold exactly those bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_keyed_writers_read_back_exactly_once_in_key_order() {
    let server = ServerProcess::start(ServerOpts::default()).await;
    let client = server.client().await;
    let name = stream_name("e2e/keyed");
    let info = client
        .admin()
        .create_stream(&name, 4)
        .await
        .expect("create stream");
    assert_eq!(
        info.segments.len(),
        4,
        "segments of a 4-segment stream: {info:?}"
    );

    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let writer_id = format!("w{w}");
        let config = WriterConfig::default().writer_id(writer_id.clone());
        let writer = client.writer(&name, config).await.expect("open writer");
        tasks.push(tokio::spawn(async move {
            let writer = writer;
            let keys: Vec<String> = (0..KEYS_PER_WRITER).map(|k| format!("w{w}-k{k}")).collect();
            let mut pending = FuturesUnordered::new();
            let mut positions: HashMap<(String, u64), WriteAck> = HashMap::new();
            for seq in 0..EVENTS_PER_KEY {
                for key in &keys {
                    let ack = writer
                        .write_event(Some(key.as_str()), keyed_payload(key, seq, &writer_id))
                        .await
                        .unwrap_or_else(|e| panic!("{writer_id}: write {key}:{seq}: {e}"));
                    let id = (key.clone(), seq);
                    pending.push(async move { (id, ack.await) });
                    while pending.len() >= MAX_IN_FLIGHT {
                        let (id, res) = pending.next().await.expect("non-empty");
                        let pos = res.unwrap_or_else(|e| panic!("ack of {id:?}: {e}"));
                        positions.insert(id, pos);
                    }
                }
            }
            writer.flush().await.expect("flush");
            while let Some((id, res)) = pending.next().await {
                let pos = res.unwrap_or_else(|e| panic!("ack of {id:?}: {e}"));
                positions.insert(id, pos);
            }
            let _ = writer.close().await;
            positions
        }));
    }
    let mut acked: HashMap<(String, u64), WriteAck> = HashMap::new();
    let joined = tokio::time::timeout(WRITE_TIMEOUT, futures::future::join_all(tasks))
        .await
        .expect("writers finished in time");
    for positions in joined {
        acked.extend(positions.expect("writer task"));
    }
    assert_eq!(acked.len(), TOTAL_EVENTS, "acknowledged events");

    let events = read_all(&client, &name, READ_TIMEOUT).await;
    assert_eq!(events.len(), TOTAL_EVENTS, "events read back");

    // Exactly once and in order per key, from the key's writer.
    let by_key = per_key_sequences(&events);
    assert_eq!(by_key.len(), WRITERS * KEYS_PER_WRITER, "keys read back");
    let expected: Vec<u64> = (0..EVENTS_PER_KEY).collect();
    for (key, seqs) in &by_key {
        assert_eq!(seqs, &expected, "sequence of key {key}");
    }
    for event in &events {
        let e = parse_keyed(event);
        let owner = e.key.split('-').next().expect("key has a writer prefix");
        assert_eq!(e.writer, owner, "writer of key {}", e.key);
        let acked_at = acked.get(&(e.key.clone(), e.seq)).expect("acked event");
        assert_eq!(
            Some(event.position),
            acked_at.position(),
            "{}:{} is read at another position than its ack named",
            e.key,
            e.seq
        );
    }

    // Per segment, events are contiguous from offset 0 to the segment length.
    let mut by_segment: BTreeMap<u64, Vec<&aquifer_client::Event>> = BTreeMap::new();
    for event in &events {
        by_segment
            .entry(event.position.segment_id)
            .or_default()
            .push(event);
    }
    let info = client
        .admin()
        .describe_stream(&name)
        .await
        .expect("describe stream");
    assert!(!info.sealed);
    let mut total_framed = 0u64;
    for seg in &info.segments {
        let evs = by_segment.remove(&seg.segment_id).unwrap_or_default();
        let mut offset = seg.head_offset;
        for event in &evs {
            assert_eq!(
                event.position.offset, offset,
                "segment {}: events not contiguous",
                seg.segment_id
            );
            let framed =
                aquifer_proto::frame::framed_len(event.routing_key.as_deref(), event.payload.len())
                    as u64;
            assert_eq!(
                event.next_offset,
                offset + framed,
                "next_offset of {:?}",
                event.position
            );
            offset = event.next_offset;
            total_framed += framed;
        }
        assert_eq!(
            offset, seg.length,
            "segment {}: events end before the segment length",
            seg.segment_id
        );
    }
    assert!(
        by_segment.is_empty(),
        "events from segments the stream does not list: {:?}",
        by_segment.keys().collect::<Vec<_>>()
    );
    let total_length: u64 = info.segments.iter().map(|s| s.length - s.head_offset).sum();
    assert_eq!(total_length, total_framed, "segment bytes vs framed events");
}

/// `stream create`, `write --key-field-tab`, `read --with-key`, `--max`,
/// `stream describe` and `list`, and `read --follow` seeing a later write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_round_trip() {
    let server = ServerProcess::start(ServerOpts::default()).await;

    cli_ok(
        &server.cli(&["stream", "create", "cli/round", "--segments", "2"], None),
        "stream create",
    );

    let lines: Vec<String> = (0..30).map(|i| format!("key{}\tline-{i}", i % 3)).collect();
    let input = lines.join("\n") + "\n";
    cli_ok(
        &server.cli(
            &["write", "cli/round", "--key-field-tab"],
            Some(input.as_bytes()),
        ),
        "write --key-field-tab",
    );

    let out = cli_ok(
        &server.cli(&["read", "cli/round", "--from", "head", "--with-key"], None),
        "read --with-key",
    );
    let got: Vec<&str> = out.lines().collect();
    let mut got_sorted = got.clone();
    got_sorted.sort_unstable();
    let mut want_sorted: Vec<&str> = lines.iter().map(String::as_str).collect();
    want_sorted.sort_unstable();
    assert_eq!(
        got_sorted, want_sorted,
        "read --with-key gives back what was written"
    );
    for key in ["key0", "key1", "key2"] {
        let of_key: Vec<&str> = got.iter().copied().filter(|l| l.starts_with(key)).collect();
        let written: Vec<&str> = lines
            .iter()
            .map(String::as_str)
            .filter(|l| l.starts_with(key))
            .collect();
        assert_eq!(of_key, written, "order of {key}");
    }

    let out = cli_ok(
        &server.cli(&["read", "cli/round", "--from", "head"], None),
        "read without key",
    );
    let mut payloads: Vec<&str> = out.lines().collect();
    payloads.sort_unstable();
    let mut want: Vec<String> = (0..30).map(|i| format!("line-{i}")).collect();
    want.sort_unstable();
    assert_eq!(payloads, want, "read prints payloads only");

    let out = cli_ok(
        &server.cli(&["read", "cli/round", "--from", "head", "--max", "5"], None),
        "read --max 5",
    );
    assert_eq!(out.lines().count(), 5, "read --max 5 printed:\n{out}");

    cli_ok(
        &server.cli(
            &["write", "cli/round", "--key", "fixed"],
            Some(b"a\nb\nc\n"),
        ),
        "write --key",
    );
    let out = cli_ok(
        &server.cli(&["read", "cli/round", "--from", "head", "--with-key"], None),
        "read after write --key",
    );
    let fixed: Vec<&str> = out.lines().filter(|l| l.starts_with("fixed\t")).collect();
    assert_eq!(fixed, ["fixed\ta", "fixed\tb", "fixed\tc"]);
    assert_eq!(out.lines().count(), 33);

    let out = cli_ok(
        &server.cli(&["stream", "describe", "cli/round"], None),
        "describe",
    );
    assert!(out.contains("round"), "describe output:\n{out}");
    let out = cli_ok(&server.cli(&["stream", "list"], None), "list");
    assert!(out.contains("cli/round"), "list output:\n{out}");

    // A following reader sees what was there and then a later write.
    cli_ok(
        &server.cli(&["stream", "create", "cli/follow", "--segments", "1"], None),
        "create follow stream",
    );
    cli_ok(
        &server.cli(&["write", "cli/follow"], Some(b"first\n")),
        "write first",
    );
    let follower = server.cli_child(&["read", "cli/follow", "--from", "head", "--follow"]);
    let wait = Duration::from_secs(30);
    let first = follower.next_line(wait);
    assert_eq!(first.as_deref(), Some("first"), "follower's first line");
    cli_ok(
        &server.cli(&["write", "cli/follow"], Some(b"second\n")),
        "write second",
    );
    let second = follower.next_line(wait);
    let stderr = follower.kill();
    assert_eq!(
        second.as_deref(),
        Some("second"),
        "follower did not receive a line written after it started; its stderr:\n{stderr}"
    );
}

/// Binary, multi-line, empty and keyless events survive a shell pipeline:
/// `read --format json | write --format json` into another stream gives
/// back every payload byte for byte, with its key, in per-key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_round_trip_any_payload_through_a_pipe() {
    let server = ServerProcess::start(ServerOpts::default()).await;
    let client = server.client().await;
    let (src, dst) = (stream_name("pipe/src"), stream_name("pipe/dst"));
    for name in [&src, &dst] {
        client
            .admin()
            .create_stream(name, 2)
            .await
            .expect("create stream");
    }
    let every_byte: Vec<u8> = (0..=255u8).collect();
    let mut written: Vec<(Option<String>, Vec<u8>)> = vec![
        (Some("bin".into()), every_byte.clone()),
        (Some("bin".into()), vec![0xff, 0xfe, b'\n', 0, b'\r']),
        (
            Some("text".into()),
            b"line one\nline two\n\n\"quoted\"\ttab".to_vec(),
        ),
        (Some("text".into()), "ünïcødé ✓".as_bytes().to_vec()),
        (None, Vec::new()),
        (None, b"\n".to_vec()),
        (
            Some("bin".into()),
            every_byte.iter().rev().copied().collect(),
        ),
    ];
    for i in 0..20u8 {
        written.push((Some(format!("k{}", i % 4)), vec![i, b'\n', 0x80 + i]));
    }
    let writer = client
        .writer(&src, WriterConfig::default())
        .await
        .expect("writer");
    for (key, payload) in &written {
        // Not awaited: close() below waits for every ack.
        let _pending = writer
            .write_event(key.as_deref(), payload.clone())
            .await
            .expect("queue");
    }
    writer.close().await.expect("close writer");

    let addr = server.addr();
    let pipeline = format!(
        "'{bin}' read pipe/src --addr {addr} --format json | '{bin}' write pipe/dst --addr {addr} --format json",
        bin = common::bin().display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &pipeline])
        .output()
        .expect("run the pipeline");
    assert!(
        out.status.success(),
        "pipeline failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let read = read_all(&client, &dst, READ_TIMEOUT).await;
    let got: Vec<(Option<String>, Vec<u8>)> = read
        .iter()
        .map(|e| (e.routing_key.clone(), e.payload.to_vec()))
        .collect();
    let (mut got_sorted, mut want_sorted) = (got.clone(), written.clone());
    got_sorted.sort();
    want_sorted.sort();
    assert_eq!(got_sorted, want_sorted, "every event, byte for byte");
    for key in ["bin", "text", "k0", "k1", "k2", "k3"] {
        let of = |v: &[(Option<String>, Vec<u8>)]| -> Vec<Vec<u8>> {
            v.iter()
                .filter(|(k, _)| k.as_deref() == Some(key))
                .map(|(_, p)| p.clone())
                .collect()
        };
        assert_eq!(of(&got), of(&written), "order of key {key}");
    }
}

/// `stream update` and `stream describe` show retention limits the way
/// they are typed (`7d`, `100 GiB`), not as seconds and bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_limits_show_as_typed() {
    let server = ServerProcess::start(ServerOpts::default()).await;
    cli_ok(
        &server.cli(&["stream", "create", "cli/kept"], None),
        "stream create",
    );
    let updated = cli_ok(
        &server.cli(
            &[
                "stream",
                "update",
                "cli/kept",
                "--retention-time",
                "7d",
                "--retention-size",
                "100GiB",
            ],
            None,
        ),
        "stream update",
    );
    let described = cli_ok(
        &server.cli(&["stream", "describe", "cli/kept"], None),
        "stream describe",
    );
    for out in [&updated, &described] {
        assert!(
            out.contains("retention: time 7d, size 100 GiB"),
            "retention as typed:\n{out}"
        );
    }
    let updated = cli_ok(
        &server.cli(
            &["stream", "update", "cli/kept", "--retention-time", "90s"],
            None,
        ),
        "stream update",
    );
    assert!(
        updated.contains("retention: time 90s, size 100 GiB"),
        "{updated}"
    );
}

/// With budgets far below what the writers push (a 1 MiB tail buffer, 128
/// KiB in flight per container, chunks of 256 KiB), writers are slowed, never
/// stuck: 20 MB from 4 pipelining writers all land, and read back whole.
/// (Regression: a session blocked on the in-flight budget once held the
/// budget of its own applied batches, and the node stalled.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tiny_budgets_slow_writers_down_without_stalling() {
    let config =
        "max_event_bytes = 65536\nin_flight_bytes_max = 131072\ntail_buffer_bytes_max = 1048576\n\
                  [tier2]\nchunk_bytes = 262144\nflush_interval_ms = 100\n";
    let server = ServerProcess::start(ServerOpts::with_config(config)).await;
    let client = server.client().await;
    let name = stream_name("e2e/tiny-budgets");
    client
        .admin()
        .create_stream(&name, 4)
        .await
        .expect("create");
    const PER_WRITER: usize = 5000;
    let payload = bytes::Bytes::from(vec![b'x'; 1000]);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let writer = client
            .writer(&name, WriterConfig::default())
            .await
            .expect("writer");
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                let key = format!("w{w}-k{}", i % 16);
                writer
                    .write_event(Some(&key), payload.clone())
                    .await
                    .expect("queue");
            }
            writer.flush().await.expect("flush");
        }));
    }
    tokio::time::timeout(Duration::from_secs(120), async {
        for t in tasks {
            t.await.expect("writer task");
        }
    })
    .await
    .expect("writers finished in time: the node must not stall at its budgets");
    let events = read_all(&client, &name, READ_TIMEOUT).await;
    assert_eq!(events.len(), WRITERS * PER_WRITER);
}
