//! Elastic streams against the real binary: scales by hand and by a rate
//! policy while a keyed writer writes and a tailing reader follows; every
//! acknowledged event is read once, in per-key order, by both.

use aquifer_testkit as common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aquifer_client::{Client, Event, ReaderConfig, Scale, StreamName, WriterConfig};
use common::{ServerOpts, ServerProcess};
use futures::TryStreamExt;

const KEYS: u64 = 16;

/// Reads `name` from the head, following, until `want` events arrived.
fn tail(client: Client, name: StreamName, want: usize) -> tokio::task::JoinHandle<Vec<Event>> {
    tokio::spawn(async move {
        let config = ReaderConfig::default().follow(true);
        let mut reader = client.reader(&name, config).await.expect("tailing reader");
        let mut events = Vec::with_capacity(want);
        let deadline = Instant::now() + Duration::from_secs(120);
        while events.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, reader.try_next()).await {
                Ok(Ok(Some(e))) => events.push(e),
                Ok(Ok(None)) => break,
                Ok(Err(e)) => panic!("tailing reader failed after {} events: {e}", events.len()),
                Err(_) => panic!(
                    "tailing reader stalled at {} of {want} events",
                    events.len()
                ),
            }
        }
        events
    })
}

/// Every key's sequence numbers are exactly `0..to`, in order.
fn assert_once_in_order(events: &[Event], to: u64, who: &str) {
    let by_key = common::per_key_sequences(events);
    assert_eq!(by_key.len() as u64, KEYS, "{who}: every key");
    let want: Vec<u64> = (0..to).collect();
    for (key, seqs) in by_key {
        assert_eq!(seqs, want, "{who}: key {key} once each, in order");
    }
}

/// The active segments' ids (the current epoch's), in key order.
async fn active(client: &Client, name: &StreamName) -> Vec<u64> {
    let info = client
        .admin()
        .describe_stream(name)
        .await
        .expect("describe");
    let mut segs: Vec<_> = info
        .segments
        .iter()
        .filter(|s| !s.sealed && s.successors.is_empty())
        .collect();
    segs.sort_by(|a, b| a.key_low.total_cmp(&b.key_low));
    segs.iter().map(|s| s.segment_id).collect()
}

/// Writes `to` sequence numbers of every key, pacing itself so scales land
/// in the middle.
async fn write_paced(client: Client, name: StreamName, to: u64) {
    let writer = client
        .writer(&name, WriterConfig::default().writer_id("scaled-writer"))
        .await
        .expect("writer");
    for seq in 0..to {
        for k in 0..KEYS {
            let key = format!("k{k}");
            writer
                .write_event(Some(&key), common::keyed_payload(&key, seq, "w"))
                .await
                .expect("queued");
        }
        if seq % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    writer.flush().await.expect("every write acknowledged");
    writer.close().await.expect("closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_splits_and_merges_keep_every_key_once_and_in_order() {
    let server = ServerProcess::start(ServerOpts::default()).await;
    let client = server.client().await;
    let name = common::stream_name("scale/manual");
    client
        .admin()
        .create_stream(&name, 2)
        .await
        .expect("create");
    let to = 3_000;
    let tailing = tail(client.clone(), name.clone(), (KEYS * to) as usize);
    let writing = tokio::spawn(write_paced(client.clone(), name.clone(), to));

    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = active(&client, &name).await;
    let split = client
        .admin()
        .scale_stream(&name, &Scale::default().split(first[0], 3))
        .await
        .expect("split");
    assert_eq!(split.epoch, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = active(&client, &name).await;
    assert_eq!(now.len(), 4, "{now:?}");
    // Merge the last successor of the split with its right neighbour.
    let merged = client
        .admin()
        .scale_stream(&name, &Scale::default().merge([now[2], now[3]]))
        .await
        .expect("merge");
    assert_eq!(merged.epoch, 2);
    // Bad scales are refused with the reason.
    let err = client
        .admin()
        .scale_stream(&name, &Scale::default().merge([now[0], now[3]]))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not an active segment")
            || err.to_string().contains("key-adjacent"),
        "{err}"
    );

    writing.await.expect("writer task");
    let all = common::read_all(&client, &name, Duration::from_secs(60)).await;
    assert_eq!(all.len() as u64, KEYS * to, "every acknowledged event once");
    assert_once_in_order(&all, to, "read from the head");
    let tailed = tailing.await.expect("tailing task");
    assert_once_in_order(&tailed, to, "tailing reader");
    let info = client
        .admin()
        .describe_stream(&name)
        .await
        .expect("describe");
    assert_eq!(info.epochs.len(), 3, "epochs 0, 1, 2");
    let sealed: HashMap<u64, usize> = info
        .segments
        .iter()
        .filter(|s| !s.successors.is_empty())
        .map(|s| (s.segment_id, s.successors.len()))
        .collect();
    assert_eq!(sealed.get(&first[0]), Some(&3));
}

/// A scale's steps span a metadata leader's `kill -9`: each round starts a
/// split, kills the meta leader a moment later and restarts it; the scale
/// completes (on whichever node leads next), no key is left with two
/// writable segments or none, and the writer's events are all read once,
/// in per-key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scale_survives_kill9_of_the_metadata_leader() {
    let mut cluster = common::TestCluster::start(3, "", "").await;
    let client = cluster.nodes[0].client().await;
    let name = common::stream_name("scale/failover");
    client
        .admin()
        .create_stream(&name, 1)
        .await
        .expect("create");
    let to = 2_000;
    let writing = tokio::spawn(write_paced(client.clone(), name.clone(), to));
    for round in 0..3u64 {
        let meta = cluster
            .leaders()
            .await
            .get(aquifer_proto::wire::META_GROUP)
            .copied()
            .expect("a metadata leader");
        let target = active(&client, &name).await[0];
        let scaling = {
            let client = client.clone();
            let name = name.clone();
            tokio::spawn(async move {
                client
                    .admin()
                    .scale_stream(&name, &Scale::default().split(target, 2))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(5 * round)).await;
        cluster.node(meta).kill9();
        cluster.node(meta).restart().await;
        // The call may have failed with the leader; the scale itself must
        // complete, or (killed before it was recorded) be asked again.
        let _ = scaling.await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let info = client.admin().describe_stream(&name).await;
            if let Ok(info) = &info {
                if info.epoch == round + 1 {
                    break;
                }
                if info.epoch == round {
                    let again = client
                        .admin()
                        .scale_stream(&name, &Scale::default().split(target, 2))
                        .await;
                    if let Ok(i) = again {
                        assert_eq!(i.epoch, round + 1);
                        break;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the scale never completed: {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The active segments tile the key space: no key with two writable
        // segments, none with none.
        let info = client
            .admin()
            .describe_stream(&name)
            .await
            .expect("describe");
        let mut ranges: Vec<(f64, f64)> = info
            .segments
            .iter()
            .filter(|s| !s.sealed && s.successors.is_empty())
            .map(|s| (s.key_low, s.key_high))
            .collect();
        ranges.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(
            ranges.first().map(|r| r.0),
            Some(0.0),
            "round {round}: {ranges:?}"
        );
        assert_eq!(
            ranges.last().map(|r| r.1),
            Some(1.0),
            "round {round}: {ranges:?}"
        );
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].1, pair[1].0, "round {round}: {ranges:?}");
        }
    }
    writing.await.expect("writer task");
    let all = common::read_all(&client, &name, Duration::from_secs(60)).await;
    assert_once_in_order(&all, to, "read after the failovers");
}

/// Writes sequences of every key at about `per_second` events/s until
/// `stop` turns true; returns how many sequences it wrote.
async fn write_at(
    client: Client,
    name: StreamName,
    per_second: u64,
    from: u64,
    stop: tokio::sync::watch::Receiver<bool>,
) -> u64 {
    let writer = client
        .writer(&name, WriterConfig::default().writer_id("auto-writer"))
        .await
        .expect("writer");
    let per_tick = (per_second / KEYS / 100).max(1); // sequences per 10 ms
    let mut seq = from;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !*stop.borrow() {
        tick.tick().await;
        for _ in 0..per_tick {
            for k in 0..KEYS {
                let key = format!("k{k}");
                writer
                    .write_event(Some(&key), common::keyed_payload(&key, seq, "w"))
                    .await
                    .expect("queued");
            }
            seq += 1;
        }
    }
    writer.flush().await.expect("every write acknowledged");
    writer.close().await.expect("closed");
    seq
}

/// An events/s policy with windows in seconds: a keyed writer at about 8x
/// the target splits a 1-segment stream to at least 4 segments; at a tenth
/// of it the stream merges back toward its minimum. A tailing reader and a
/// final read see every event once, in per-key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_policy_follows_the_traffic_up_and_down() {
    let config =
        "[scaling]\ntick_ms = 100\nwindows_ms = [500, 1000, 2000, 4000]\ncooldown_ms = 1000\n";
    let server = ServerProcess::start(ServerOpts::with_config(config)).await;
    let out = server.cli(
        &[
            "stream",
            "create",
            "scale/auto",
            "--scaling",
            "events:1000",
            "--scale-factor",
            "2",
        ],
        None,
    );
    common::cli_ok(&out, "stream create --scaling");
    let described = common::cli_ok(
        &server.cli(&["stream", "describe", "scale/auto"], None),
        "describe",
    );
    assert!(
        described.contains(
            "scaling: events:1000 (events/s per segment), scale factor 2, min segments 1"
        ),
        "{described}"
    );
    let client = server.client().await;
    let name = common::stream_name("scale/auto");
    let tailing = {
        let (client, name) = (client.clone(), name.clone());
        tokio::spawn(async move {
            let mut reader = client
                .reader(&name, ReaderConfig::default().follow(true))
                .await
                .expect("tailing reader");
            let mut events = Vec::new();
            while let Ok(Some(e)) = reader.try_next().await {
                events.push(e);
            }
            events
        })
    };

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let fast = tokio::spawn(write_at(client.clone(), name.clone(), 8_000, 0, stopped));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut most = 1;
    while most < 4 {
        assert!(
            Instant::now() < deadline,
            "never split to 4 segments (most {most})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        most = most.max(active(&client, &name).await.len());
    }
    stop.send_replace(true);
    let written = fast.await.expect("fast writer");

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let slow = tokio::spawn(write_at(
        client.clone(),
        name.clone(),
        100,
        written,
        stopped,
    ));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let n = active(&client, &name).await.len();
        if n <= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never merged back (still {n} active)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.send_replace(true);
    let to = slow.await.expect("slow writer");

    let all = common::read_all(&client, &name, Duration::from_secs(60)).await;
    assert_once_in_order(&all, to, "read from the head");
    // The tailing reader has every event too; then seal so it ends.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !tailing.is_finished() {
        client.admin().seal_stream(&name).await.expect("seal");
        assert!(Instant::now() < deadline, "the tailing reader never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let tailed = tailing.await.expect("tailing task");
    assert_once_in_order(&tailed, to, "tailing reader");
    let info = client
        .admin()
        .describe_stream(&name)
        .await
        .expect("describe");
    assert!(
        info.epochs.len() >= 3,
        "split and merged: {} epochs",
        info.epochs.len()
    );
}
