//! The writer and readers against an in-memory mock node (`mock/`): exact
//! positions, per-key order, exactly-once across injected failures and hard
//! restarts, back-pressure, and non-retryable errors.

mod mock;

use futures::TryStreamExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use aquifer_client::{
    key_position, Client, Error, Event, EventWriter, Position, ReaderConfig, StartFrom, StreamName,
    WriteAck, WriterConfig,
};
use aquifer_proto::frame;
use bytes::Bytes;
use mock::{MockServer, State};

const T: Duration = Duration::from_secs(30);

async fn setup(segments: u32) -> (Arc<State>, MockServer, Client, StreamName) {
    let state = State::new();
    let server = MockServer::start(state.clone(), "127.0.0.1:0".parse().unwrap());
    let client = Client::connect(&server.addr.to_string()).await.unwrap();
    let name: StreamName = "test/s".parse().unwrap();
    client.admin().create_stream(&name, segments).await.unwrap();
    (state, server, client, name)
}

fn config(id: &str) -> WriterConfig {
    WriterConfig::default().writer_id(id)
}

/// Every event in every segment, decoded from the mock's bytes.
fn stored(state: &State, segment_ids: &[u64]) -> Vec<(u64, frame::FramedEvent)> {
    let mut out = Vec::new();
    for &id in segment_ids {
        let data = Bytes::from(state.segment_data(id));
        for ev in frame::FrameIter::new(data, 0, 1 << 30) {
            out.push((id, ev.unwrap()));
        }
    }
    out
}

/// Checks each key's payloads `key:seq` are 0..n in order, exactly once.
fn assert_once_in_order(events: &[(Option<String>, Bytes)], keys: usize, per_key: u64) {
    let mut next: HashMap<String, u64> = HashMap::new();
    for (key, payload) in events {
        let key = key.clone().unwrap();
        let text = std::str::from_utf8(payload).unwrap();
        let (k, seq) = text.split_once(':').unwrap();
        assert_eq!(k, key);
        let seq: u64 = seq.parse().unwrap();
        let n = next.entry(key.clone()).or_default();
        assert_eq!(seq, *n, "key {key}: duplicate or reordered");
        *n += 1;
    }
    assert_eq!(next.len(), keys);
    assert!(next.values().all(|&n| n == per_key), "{next:?}");
}

async fn write_keyed(
    writer: &EventWriter,
    keys: usize,
    per_key: u64,
) -> Vec<(String, u64, WriteAck)> {
    write_keyed_seqs(writer, keys, 0..per_key).await
}

/// Writes `key-K:SEQ` for every seq, then every key; waits for the acks.
async fn write_keyed_seqs(
    writer: &EventWriter,
    keys: usize,
    seqs: std::ops::Range<u64>,
) -> Vec<(String, u64, WriteAck)> {
    let mut pending = Vec::new();
    for seq in seqs {
        for k in 0..keys {
            let key = format!("key-{k}");
            let p = writer
                .write_event(Some(&key), format!("{key}:{seq}"))
                .await
                .unwrap();
            pending.push((key, seq, p));
        }
    }
    writer.flush().await.unwrap();
    let mut out = Vec::new();
    for (key, seq, p) in pending {
        out.push((key, seq, tokio::time::timeout(T, p).await.unwrap().unwrap()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_then_read_back_exactly_at_acked_positions() {
    let (state, _server, client, name) = setup(4).await;
    let writer = client
        .writer(&name, config("w1").batch_bytes_max(4096))
        .await
        .unwrap();
    let acked = write_keyed(&writer, 40, 50).await;
    writer.close().await.unwrap();

    let info = client.admin().describe_stream(&name).await.unwrap();
    let ids: Vec<u64> = info.segments.iter().map(|s| s.segment_id).collect();
    assert!(
        info.segments.iter().all(|s| s.length > 0),
        "all segments used"
    );

    // The stored bytes: each key's events once, in order, at acked offsets.
    let stored = stored(&state, &ids);
    assert_eq!(stored.len(), 2000);
    let at: HashMap<Position, &frame::FramedEvent> = stored
        .iter()
        .map(|(id, e)| {
            (
                Position {
                    segment_id: *id,
                    offset: e.offset,
                },
                e,
            )
        })
        .collect();
    for (key, seq, ack) in &acked {
        let e = at[&ack.position().unwrap()];
        assert_eq!(e.routing_key.as_deref(), Some(key.as_str()));
        assert_eq!(e.payload, format!("{key}:{seq}").as_bytes());
    }

    // The reader gives back the same, per-key ordered.
    let mut reader = client.reader(&name, ReaderConfig::default()).await.unwrap();
    let mut read = Vec::new();
    while let Some(ev) = tokio::time::timeout(T, reader.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        let e = at[&ev.position];
        assert_eq!(ev.next_offset, ev.position.offset + e.framed_len as u64);
        read.push((ev.routing_key, ev.payload));
    }
    assert_once_in_order(&read, 40, 50);

    // Tail without follow: nothing.
    let mut reader = client
        .reader(
            &name,
            ReaderConfig::default().start(StartFrom::Tail).follow(false),
        )
        .await
        .unwrap();
    assert!(reader.try_next().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_after_apply_are_retried_without_duplicates() {
    let (state, _server, client, name) = setup(2).await;
    let writer = client
        .writer(
            &name,
            config("w-retry")
                .batch_bytes_max(512)
                .linger(Duration::from_millis(2)),
        )
        .await
        .unwrap();
    // Fail 6 batches after applying them, spread over the run.
    let mut pending = Vec::new();
    for seq in 0..400u64 {
        if seq % 60 == 10 {
            state.fail_after_apply.fetch_add(1, Ordering::SeqCst);
        }
        for k in 0..8 {
            let key = format!("k{k}");
            pending.push(
                writer
                    .write_event(Some(&key), format!("{key}:{seq}"))
                    .await
                    .unwrap(),
            );
        }
    }
    state.fail_setups.store(3, Ordering::SeqCst);
    writer.flush().await.unwrap();
    let mut unknown = 0;
    for p in pending {
        if p.await.unwrap().offset.is_none() {
            unknown += 1;
        }
    }
    writer.close().await.unwrap();
    assert!(
        state.setups.load(Ordering::SeqCst) > 2,
        "sessions were set up again"
    );
    assert!(unknown > 0, "some events were acked as already applied");

    let info = client.admin().describe_stream(&name).await.unwrap();
    let ids: Vec<u64> = info.segments.iter().map(|s| s.segment_id).collect();
    let events: Vec<_> = stored(&state, &ids)
        .into_iter()
        .map(|(_, e)| (e.routing_key, e.payload))
        .collect();
    assert_once_in_order(&events, 8, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_and_reader_survive_a_restart_on_the_same_port() {
    let (state, server, client, name) = setup(3).await;
    let addr: SocketAddr = server.addr;
    let writer = Arc::new(client.writer(&name, config("w-restart")).await.unwrap());
    let mut follower = client
        .reader(
            &name,
            ReaderConfig::default().start(StartFrom::Head).follow(true),
        )
        .await
        .unwrap();

    let first = write_keyed(&writer, 6, 20).await;
    assert_eq!(first.len(), 120);

    // Kill the node with events in flight, restart it a bit later.
    let w = writer.clone();
    let during = tokio::spawn(async move {
        let mut pending = Vec::new();
        for seq in 20..60u64 {
            for k in 0..6 {
                let key = format!("key-{k}");
                pending.push(
                    w.write_event(Some(&key), format!("{key}:{seq}"))
                        .await
                        .unwrap(),
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for p in pending {
            p.await.unwrap();
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _server = MockServer::start(state.clone(), addr);
    tokio::time::timeout(T, during).await.unwrap().unwrap();
    writer.flush().await.unwrap();

    let info = client.admin().describe_stream(&name).await.unwrap();
    let ids: Vec<u64> = info.segments.iter().map(|s| s.segment_id).collect();
    let events: Vec<_> = stored(&state, &ids)
        .into_iter()
        .map(|(_, e)| (e.routing_key, e.payload))
        .collect();
    assert_once_in_order(&events, 6, 60);

    // The following reader got everything once, across the restart.
    let mut read = Vec::new();
    while read.len() < 360 {
        let ev = tokio::time::timeout(T, follower.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        read.push((ev.routing_key, ev.payload));
    }
    assert_once_in_order(&read, 6, 60);
    // Sealing ends the following reader.
    client.admin().seal_stream(&name).await.unwrap();
    assert!(tokio::time::timeout(T, follower.try_next())
        .await
        .unwrap()
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_resume_after_cuts_without_duplicates() {
    let (state, _server, client, name) = setup(2).await;
    let writer = client.writer(&name, config("w")).await.unwrap();
    write_keyed(&writer, 10, 100).await;
    writer.close().await.unwrap();
    state.read_chunk.store(300, Ordering::SeqCst);
    state.cut_reads.store(20, Ordering::SeqCst);
    let mut reader = client.reader(&name, ReaderConfig::default()).await.unwrap();
    let mut read = Vec::new();
    while let Some(ev) = tokio::time::timeout(T, reader.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        read.push((ev.routing_key, ev.payload));
    }
    assert_once_in_order(&read, 10, 100);
    assert_eq!(state.cut_reads.load(Ordering::SeqCst), 0);

    // A segment reader from a saved position.
    let info = client.admin().describe_stream(&name).await.unwrap();
    let seg = &info.segments[0];
    let mut all = client.segment_reader(seg.segment_id, 0, false);
    let first = all.try_next().await.unwrap().unwrap();
    let second = all.try_next().await.unwrap().unwrap();
    let mut from = client.segment_reader(seg.segment_id, first.next_offset, false);
    assert_eq!(from.try_next().await.unwrap().unwrap(), second);
    let mut reader = client
        .reader(
            &name,
            ReaderConfig::default()
                .start(StartFrom::Positions(vec![Position {
                    segment_id: seg.segment_id,
                    offset: seg.length,
                }]))
                .follow(false),
        )
        .await
        .unwrap();
    let mut n = 0;
    while let Some(ev) = reader.try_next().await.unwrap() {
        assert_ne!(ev.position.segment_id, seg.segment_id);
        n += 1;
    }
    assert!(n > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_event_waits_while_the_budget_is_used_up() {
    let (state, _server, client, name) = setup(1).await;
    let writer = client
        .writer(&name, config("w-bp").in_flight_bytes_max(10_000))
        .await
        .unwrap();
    state.pause_acks.send_replace(true);
    let payload = vec![b'x'; 990]; // 1000 bytes framed
    let mut pending = Vec::new();
    for _ in 0..10 {
        pending.push(writer.write_event(None, payload.clone()).await.unwrap());
    }
    // The budget is full: the next write waits.
    let blocked = tokio::time::timeout(
        Duration::from_millis(300),
        writer.write_event(None, payload.clone()),
    )
    .await;
    assert!(blocked.is_err(), "write_event did not wait for the budget");
    state.pause_acks.send_replace(false);
    let p = tokio::time::timeout(T, writer.write_event(None, payload.clone()))
        .await
        .unwrap()
        .unwrap();
    pending.push(p);
    for p in pending {
        p.await.unwrap();
    }
    // An event larger than the whole budget still goes through.
    let big = writer.write_event(None, vec![b'y'; 50_000]).await.unwrap();
    big.await.unwrap();
    writer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_and_bad_input_errors_are_final_and_clear() {
    let (state, _server, client, name) = setup(1).await;
    let writer = client.writer(&name, config("w-seal")).await.unwrap();
    writer
        .write_event(Some("k"), "a")
        .await
        .unwrap()
        .await
        .unwrap();
    state.seal("test", "s");
    let err = writer
        .write_event(Some("k"), "b")
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Sealed(_)), "{err:?}");
    assert!(err.to_string().contains("sealed"));
    // Later writes fail at once, and flush reports it.
    assert!(matches!(
        writer.write_event(Some("k"), "c").await,
        Err(Error::Sealed(_))
    ));
    assert!(matches!(writer.flush().await, Err(Error::Sealed(_))));

    // Bad input never reaches the server.
    let long_key = "k".repeat(frame::ROUTING_KEY_BYTES_MAX + 1);
    assert!(matches!(
        writer.write_event(Some(&long_key), "x").await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(writer.close().await, Err(Error::Sealed(_))));

    // Unknown streams and duplicates.
    let missing: StreamName = "test/missing".parse().unwrap();
    assert!(matches!(
        client.writer(&missing, config("x")).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        client.reader(&missing, ReaderConfig::default()).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        client.admin().create_stream(&name, 1).await,
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        client.admin().list_streams(Some("bad scope")).await,
        Err(Error::InvalidName(_))
    ));
    assert_eq!(
        client
            .admin()
            .list_streams(Some("test"))
            .await
            .unwrap()
            .len(),
        1
    );
    client.admin().delete_stream(&name).await.unwrap();
    assert!(matches!(
        client.admin().delete_stream(&name).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_writer_id_continues_numbering() {
    let (state, _server, client, name) = setup(1).await;
    let writer = client.writer(&name, config("same")).await.unwrap();
    write_keyed(&writer, 1, 10).await;
    writer.close().await.unwrap();
    // A new writer with the same id continues after event 10 (not deduped).
    let writer = client.writer(&name, config("same")).await.unwrap();
    let p = writer.write_event(Some("key-0"), "key-0:10").await.unwrap();
    assert!(p.await.unwrap().offset.is_some());
    writer.close().await.unwrap();
    let info = client.admin().describe_stream(&name).await.unwrap();
    let events: Vec<_> = stored(&state, &[info.segments[0].segment_id])
        .into_iter()
        .map(|(_, e)| (e.routing_key, e.payload))
        .collect();
    assert_once_in_order(&events, 1, 11);
    assert_eq!(state.duplicates.load(Ordering::SeqCst), 0);
}

/// Not a test: serves a mock node for manual CLI checks, e.g.
/// `MOCK_ADDR=127.0.0.1:7461 MOCK_SECS=60 cargo test -p aquifer-client
/// --test against_mock -- --ignored serve_mock_for_manual_checks`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "manual tool: serves a mock node for MOCK_SECS seconds"]
async fn serve_mock_for_manual_checks() {
    let addr: SocketAddr = std::env::var("MOCK_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:7461".into())
        .parse()
        .unwrap();
    let secs: u64 = std::env::var("MOCK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let _server = MockServer::start(State::new(), addr);
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_error_still_reports_what_the_server_applied() {
    let (state, _server, client, name) = setup(1).await;
    let writer = client.writer(&name, config("w-final")).await.unwrap();
    state.invalid_after_apply.store(1, Ordering::SeqCst);
    // The batch is applied, then the session ends with INVALID_ARGUMENT
    // before its ack: the writer learns from a setup that it is written.
    let p = writer.write_event(Some("k"), "k:0").await.unwrap();
    assert_eq!(p.await.unwrap().offset, None);
    // The segment is failed for good for this writer.
    assert!(matches!(
        writer.write_event(Some("k"), "k:1").await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        writer.flush().await,
        Err(Error::InvalidArgument(_))
    ));
    drop(writer);
    let info = client.admin().describe_stream(&name).await.unwrap();
    assert_eq!(state.applied_batches(info.segments[0].segment_id), 1);
}

/// Whether segment `id`'s key range holds `key`.
fn holds(state: &State, id: u64, key: &str) -> bool {
    let (low, high) = state.range(id);
    let pos = key_position(key);
    low <= pos && (pos < high || high >= 1.0)
}

/// Every event the mock stores for the stream, ordered by segment epoch,
/// then offset: a key lives in one segment per epoch, so this is each key's
/// write order if scaling kept it. Checks each event is in a segment that
/// owns its key.
async fn stored_by_epoch(
    state: &State,
    client: &Client,
    name: &StreamName,
) -> Vec<(Option<String>, Bytes)> {
    let mut segments = client.admin().describe_stream(name).await.unwrap().segments;
    segments.sort_by_key(|s| (s.epoch, s.segment_id));
    let mut out = Vec::new();
    for s in &segments {
        for (id, ev) in stored(state, &[s.segment_id]) {
            let key = ev.routing_key.clone().unwrap();
            assert!(holds(state, id, &key), "{key} stored in segment {id}");
            out.push((ev.routing_key, ev.payload));
        }
    }
    out
}

/// Waits until the mock stores at least `n` events of the stream.
async fn wait_stored(state: &State, n: usize) {
    let deadline = tokio::time::Instant::now() + T;
    while stored(state, &state.all_segments("test", "s")).len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never stored {n} events"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until the mock's scale that created `ids` is in force.
async fn wait_active(state: &State, ids: &[u64]) {
    let deadline = tokio::time::Instant::now() + T;
    while !ids.iter().all(|id| state.active("test", "s").contains(id)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{ids:?} never active"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_keeps_each_key_once_and_in_order_across_a_split_and_a_merge() {
    let (state, _server, client, name) = setup(2).await;
    let writer = Arc::new(
        client
            .writer(&name, config("w-scale").batch_bytes_max(512))
            .await
            .unwrap(),
    );
    let (keys, per_key) = (16usize, 240u64);
    let w = writer.clone();
    // Paced, so both scales land while writes are queued and in flight.
    let writing = tokio::spawn(async move {
        let mut pending = Vec::new();
        for seq in 0..per_key {
            for k in 0..keys {
                let key = format!("key-{k}");
                let p = w
                    .write_event(Some(&key), format!("{key}:{seq}"))
                    .await
                    .unwrap();
                pending.push((key, p));
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let mut acks = Vec::new();
        for (key, p) in pending {
            acks.push((key, tokio::time::timeout(T, p).await.unwrap().unwrap()));
        }
        acks
    });
    let total = keys * per_key as usize;
    // Split [0, 0.5) in two, then merge its upper half with [0.5, 1); each
    // new epoch shows up 300 ms after the seal.
    wait_stored(&state, total / 3).await;
    let halves = state.scale("test", "s", &[(100, 2)], &[], Duration::from_millis(300));
    wait_active(&state, &halves).await;
    wait_stored(&state, total * 2 / 3).await;
    let merged = state.scale(
        "test",
        "s",
        &[],
        &[vec![halves[1], 101]],
        Duration::from_millis(300),
    );
    let acks = writing.await.unwrap();
    writer.flush().await.unwrap();

    // Every event once, each key in write order, each in a segment owning
    // its key; every ack names such a segment.
    let events = stored_by_epoch(&state, &client, &name).await;
    assert_eq!(events.len(), total);
    assert_once_in_order(&events, keys, per_key);
    for (key, ack) in &acks {
        assert!(
            holds(&state, ack.segment_id, key),
            "{key} acked in {}",
            ack.segment_id
        );
    }
    // The scales hit live traffic: every segment of every epoch took events.
    for id in [100, 101, halves[0], halves[1], merged[0]] {
        assert!(!state.segment_data(id).is_empty(), "segment {id} unused");
    }
    let info = client.admin().describe_stream(&name).await.unwrap();
    assert_eq!(info.epoch, 2);
    let mut active: Vec<u64> = info.active_segments().map(|s| s.segment_id).collect();
    active.sort_unstable();
    assert_eq!(active, vec![halves[0], merged[0]]);
    Arc::try_unwrap(writer).ok().unwrap().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_flight_at_the_seal_are_resolved_or_moved_never_duplicated() {
    let (state, _server, client, name) = setup(1).await;
    let writer = client
        .writer(&name, config("w-flight").batch_bytes_max(256))
        .await
        .unwrap();
    let keys = 8;
    write_keyed_seqs(&writer, keys, 0..5).await;
    // Applied but never acknowledged: the writer still holds them when the
    // seal comes.
    state.swallow_acks.store(true, Ordering::SeqCst);
    let mut pending = Vec::new();
    let write = |seq: u64, k: usize| {
        let key = format!("key-{k}");
        let writer = &writer;
        async move {
            let p = writer
                .write_event(Some(&key), format!("{key}:{seq}"))
                .await
                .unwrap();
            (seq, key, p)
        }
    };
    for seq in 5..15 {
        for k in 0..keys {
            pending.push(write(seq, k).await);
        }
    }
    wait_stored(&state, keys * 15).await;
    let halves = state.scale("test", "s", &[(100, 2)], &[], Duration::from_millis(200));
    state.swallow_acks.store(false, Ordering::SeqCst);
    // Sent to the sealed segment before the writer knows: refused there.
    for seq in 15..30 {
        for k in 0..keys {
            pending.push(write(seq, k).await);
        }
    }
    // Written while the writer waits for the successors: held behind the
    // refused ones.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for seq in 30..45 {
        for k in 0..keys {
            pending.push(write(seq, k).await);
        }
    }
    let mut resolved_on_seal = 0;
    for (seq, key, p) in pending {
        let ack = tokio::time::timeout(T, p).await.unwrap().unwrap();
        if seq < 15 {
            // The server had them: resolved by the fresh setup's answer,
            // where they are (offset unknown).
            assert_eq!(ack.segment_id, 100, "{key}:{seq}");
            resolved_on_seal += usize::from(ack.offset.is_none());
        } else {
            assert!(
                halves.contains(&ack.segment_id),
                "{key}:{seq} in {}",
                ack.segment_id
            );
            assert!(holds(&state, ack.segment_id, &key));
        }
    }
    assert_eq!(resolved_on_seal, keys * 10);
    let events = stored_by_epoch(&state, &client, &name).await;
    assert_eq!(events.len(), keys * 45);
    assert_once_in_order(&events, keys, 45);
    writer.close().await.unwrap();
}

/// Each segment's (first, last) index in `events`.
fn spans(events: &[Event]) -> HashMap<u64, (usize, usize)> {
    let mut spans: HashMap<u64, (usize, usize)> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        spans
            .entry(e.position.segment_id)
            .and_modify(|s| s.1 = i)
            .or_insert((i, i));
    }
    spans
}

/// Every event once, per key in order, and every segment's first event
/// after the last event of each of its predecessors.
async fn assert_read_in_graph_order(
    client: &Client,
    name: &StreamName,
    events: &[Event],
    keys: usize,
    per_key: u64,
) {
    let pairs: Vec<(Option<String>, Bytes)> = events
        .iter()
        .map(|e| (e.routing_key.clone(), e.payload.clone()))
        .collect();
    assert_once_in_order(&pairs, keys, per_key);
    let spans = spans(events);
    let info = client.admin().describe_stream(name).await.unwrap();
    let mut checked = 0;
    for s in &info.segments {
        for p in &s.predecessors {
            let (Some(first), Some(before)) = (spans.get(&s.segment_id), spans.get(p)) else {
                continue;
            };
            assert!(
                first.0 > before.1,
                "segment {} read before predecessor {p} ended",
                s.segment_id
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "successor edges checked: {checked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_read_successors_only_after_every_predecessor() {
    let (state, _server, client, name) = setup(2).await;
    // Small read messages, so segments read in parallel would interleave.
    state.read_chunk.store(256, Ordering::SeqCst);
    let follower = client
        .reader(&name, ReaderConfig::default().follow(true))
        .await
        .unwrap();
    let following = tokio::spawn(async move { follower.try_collect::<Vec<Event>>().await });
    let writer = client
        .writer(&name, config("w-read").batch_bytes_max(512))
        .await
        .unwrap();
    let keys = 12;
    write_keyed_seqs(&writer, keys, 0..40).await;
    let halves = state.scale("test", "s", &[(100, 2)], &[], Duration::from_millis(100));
    write_keyed_seqs(&writer, keys, 40..80).await;
    wait_active(&state, &halves).await;
    state.scale(
        "test",
        "s",
        &[],
        &[vec![halves[1], 101]],
        Duration::from_millis(100),
    );
    write_keyed_seqs(&writer, keys, 80..120).await;
    writer.close().await.unwrap();

    // Not following: the whole graph from one describe.
    let read: Vec<Event> = client
        .reader(&name, ReaderConfig::default())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_read_in_graph_order(&client, &name, &read, keys, 120).await;

    // A saved position in a successor: its predecessor counts as read.
    let resumed: Vec<Event> = client
        .reader(
            &name,
            ReaderConfig::default().start(StartFrom::Positions(vec![Position::new(halves[0], 0)])),
        )
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(resumed.iter().all(|e| e.position.segment_id != 100));
    let in_100 = read.iter().filter(|e| e.position.segment_id == 100).count();
    assert_eq!(resumed.len(), read.len() - in_100);

    // A scan from the head cut (first segments) to the tail cut (active
    // ones) covers every segment of every epoch once.
    let batch = client.batch();
    let (head, tail) = (
        batch.head_cut(&name).await.unwrap(),
        batch.tail_cut(&name).await.unwrap(),
    );
    assert_eq!(head.positions.len(), 2);
    assert_eq!(tail.positions.len(), 2);
    let ranges = batch.segment_ranges(&name, &head, &tail).await.unwrap();
    assert_eq!(ranges.len(), 5);
    let mut scanned = Vec::new();
    for range in &ranges {
        let events: Vec<Event> = batch
            .read_range(range, &aquifer_client::ScanConfig::default())
            .try_collect()
            .await
            .unwrap();
        scanned.extend(events.into_iter().map(|e| e.payload));
    }
    let mut expected: Vec<Bytes> = read.iter().map(|e| e.payload.clone()).collect();
    expected.sort();
    scanned.sort();
    assert_eq!(scanned, expected);

    // Following: it learned each successor as its predecessor ended, and
    // ends once the stream is sealed and read.
    state.seal("test", "s");
    let followed = tokio::time::timeout(T, following)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_read_in_graph_order(&client, &name, &followed, keys, 120).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_made_while_a_scale_is_pending_ends_up_in_the_successors() {
    let (state, _server, client, name) = setup(1).await;
    // Sealed now, successors recorded in 300 ms: the new writer still sees
    // the sealed segment as its keys' owner.
    let halves = state.scale("test", "s", &[(100, 3)], &[], Duration::from_millis(300));
    let writer = client.writer(&name, config("w-pending")).await.unwrap();
    let mut pending = Vec::new();
    for i in 0..30 {
        let key = (i % 2 == 0).then(|| format!("key-{i}"));
        pending.push(
            writer
                .write_event(key.as_deref(), format!("e{i}"))
                .await
                .unwrap(),
        );
    }
    writer.flush().await.unwrap();
    for p in pending {
        let ack = tokio::time::timeout(T, p).await.unwrap().unwrap();
        assert!(
            halves.contains(&ack.segment_id),
            "acked in {}",
            ack.segment_id
        );
    }
    assert!(state.segment_data(100).is_empty());
    let mut payloads: Vec<Bytes> = stored(&state, &halves)
        .into_iter()
        .map(|(_, e)| e.payload)
        .collect();
    payloads.sort();
    let mut expected: Vec<Bytes> = (0..30).map(|i| Bytes::from(format!("e{i}"))).collect();
    expected.sort();
    assert_eq!(payloads, expected);
    writer.close().await.unwrap();
}

/// A flush waiting for events that a reconnect's setup reports applied is
/// answered right then, though nothing else comes to wake the session (the
/// writer stall once seen under `kill -9` in the middle of a scale).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_is_answered_when_a_reconnect_resolves_its_events() {
    let (state, _server, client, name) = setup(1).await;
    let writer = client.writer(&name, config("w-flush")).await.unwrap();
    // Applied, then the session breaks before the ack.
    state.fail_after_apply.store(1, Ordering::SeqCst);
    let p = writer.write_event(Some("k"), "k:0").await.unwrap();
    tokio::time::timeout(T, writer.flush())
        .await
        .expect("the flush is answered")
        .unwrap();
    // Resolved by the setup (offset unknown), written once.
    assert_eq!(p.await.unwrap().offset, None);
    let info = client.admin().describe_stream(&name).await.unwrap();
    assert_eq!(state.applied_batches(info.segments[0].segment_id), 1);
}
