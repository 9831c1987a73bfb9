//! Elastic streams against the real binary: scales by hand and by a rate
//! policy while a keyed writer writes and a tailing reader follows; every
//! acknowledged event is read once, in per-key order, by both.

use aquifer_testkit as common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aquifer_client::{Client, Event, ReaderConfig, Scale, StreamName};
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

/// Writes sequences `0..to` of every key at about 8,000 events/s, so
/// scales land in the middle.
async fn write_paced(client: Client, name: StreamName, to: u64) {
    assert_eq!(write_at(client, name, 8_000, 0, to).await, to);
}

/// Scales by hand through the CLI while a keyed writer writes and a
/// tailing reader follows: a split, then a merge of the split's last piece
/// with its neighbour; `stream history` and `describe` show the epochs and
/// the successor graph; bad scales are refused with the reason (bad flags
/// before anything is dialled).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_splits_and_merges_keep_every_key_once_and_in_order() {
    let server = ServerProcess::start(ServerOpts::default()).await;
    let client = server.client().await;
    let name = common::stream_name("scale/manual");
    let created = client
        .admin()
        .create_stream(&name, 2)
        .await
        .expect("create");
    let to = 3_000;
    let tailing = tail(client.clone(), name.clone(), (KEYS * to) as usize);
    let writing = tokio::spawn(write_paced(client.clone(), name.clone(), to));

    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = active(&client, &name).await;
    let out = common::cli_ok(
        &server.cli(
            &[
                "stream",
                "scale",
                "scale/manual",
                "--split",
                &format!("{}:3", first[0]),
            ],
            None,
        ),
        "scale --split",
    );
    assert!(out.contains("epoch 1"), "scale --split printed:\n{out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = active(&client, &name).await;
    assert_eq!(now.len(), 4, "{now:?}");
    let merge = format!("{},{}", now[2], now[3]);
    let out = common::cli_ok(
        &server.cli(
            &["stream", "scale", "scale/manual", "--merge", &merge],
            None,
        ),
        "scale --merge",
    );
    assert!(out.contains("epoch 2"), "scale --merge printed:\n{out}");
    // A merge of segments that are not neighbours (or no longer active) is
    // refused where the scale executes, with the reason.
    let err = client
        .admin()
        .scale_stream(&name, &Scale::default().merge([now[0], now[3]]))
        .await
        .unwrap_err();
    let why = err.to_string();
    assert!(
        why.contains("not an active segment") || why.contains("key-adjacent"),
        "{why}"
    );

    writing.await.expect("writer task");
    let all = common::read_all(&client, &name, Duration::from_secs(60)).await;
    assert_eq!(all.len() as u64, KEYS * to, "every acknowledged event once");
    assert_once_in_order(&all, to, "read from the head");
    let tailed = tailing.await.expect("tailing task");
    assert_once_in_order(&tailed, to, "tailing reader");

    // One line per epoch; the first holds the segments the stream began with.
    let history = common::cli_ok(
        &server.cli(&["stream", "history", "scale/manual"], None),
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
    let described = common::cli_ok(
        &server.cli(&["stream", "describe", "scale/manual"], None),
        "describe",
    );
    assert!(
        described.contains("epoch 2") && described.contains("SUCCESSORS"),
        "describe printed:\n{described}"
    );
    let info = client
        .admin()
        .describe_stream(&name)
        .await
        .expect("describe");
    let sealed: HashMap<u64, usize> = info
        .segments
        .iter()
        .filter(|s| !s.successors.is_empty())
        .map(|s| (s.segment_id, s.successors.len()))
        .collect();
    assert_eq!(sealed.get(&first[0]), Some(&3));

    // Bad scale flags are refused before dialling (nothing listens on :1).
    let nowhere = ["--addr", "127.0.0.1:1", "stream", "scale", "scale/manual"];
    let refused = |extra: &[&str]| common::cli(&[&nowhere[..], extra].concat(), None);
    common::cli_err(
        &refused(&["--split", "abc"]),
        "split of a non-number",
        &["not a segment id"],
    );
    common::cli_err(
        &refused(&["--split", "5:1"]),
        "split into one",
        &["2 to 16 pieces"],
    );
    common::cli_err(
        &refused(&["--merge", "5"]),
        "merge of one",
        &["at least two"],
    );
    common::cli_err(&refused(&[]), "nothing to scale", &["nothing to scale"]);
}

/// A scale's steps span a metadata leader's `kill -9`: each round starts a
/// split, kills the meta leader a moment later and restarts it; the scale
/// completes (on whichever node leads next), no key is left with two
/// writable segments or none, and the writer's events are all read once,
/// in per-key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scale_survives_kill9_of_the_metadata_leader() {
    common::logs::init();
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
    let Ok(written) = tokio::time::timeout(Duration::from_secs(120), writing).await else {
        let info = client.admin().describe_stream(&name).await;
        panic!("the writer stalled: every write should be acknowledged within 2 minutes; the stream: {info:#?}");
    };
    written.expect("writer task");
    let all = common::read_all(&client, &name, Duration::from_secs(60)).await;
    assert_once_in_order(&all, to, "read after the failovers");
}

/// Writes sequences `from..to` of every key at about `per_second`
/// events/s, then waits for every ack; returns `to`.
async fn write_at(client: Client, name: StreamName, per_second: u64, from: u64, to: u64) -> u64 {
    let id = format!("paced-{from}");
    common::write_paced(&client, &name, &id, KEYS, from..to, per_second).await;
    to
}

/// An `aquifer write --key-field-tab` process fed sequences `from..` of
/// every key at about `per_second` events/s until `stop`; returns the next
/// sequence once the process, its stdin closed, exited 0 (every event
/// acknowledged).
fn cli_writer(
    addr: String,
    stream: &'static str,
    per_second: u64,
    from: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        use std::io::Write as _;
        let mut child = std::process::Command::new(common::bin())
            .args(["write", stream, "--key-field-tab", "--addr", &addr])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn aquifer write");
        let mut stdin = child.stdin.take().expect("stdin");
        let per_tick = (per_second / KEYS / 100).max(1);
        let mut seq = from;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let mut lines = String::new();
            for _ in 0..per_tick {
                for k in 0..KEYS {
                    lines.push_str(&format!("k{k}\tk{k}:{seq}:w\n"));
                }
                seq += 1;
            }
            stdin.write_all(lines.as_bytes()).expect("feed the writer");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(stdin);
        let status = child.wait().expect("the writer exits");
        assert!(status.success(), "aquifer write exited {status}");
        seq
    })
}

/// An events/s policy with windows in seconds: a keyed `aquifer write`
/// process at about 8x the target splits a 1-segment stream to at least 4
/// segments; another at a tenth of it lets the stream merge back toward its
/// minimum. Both writers exit 0. A tailing reader and a
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

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fast = cli_writer(server.addr(), "scale/auto", 8_000, 0, stop.clone());
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
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = tokio::task::spawn_blocking(move || fast.join().expect("fast writer"))
        .await
        .expect("join");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slow = cli_writer(server.addr(), "scale/auto", 100, written, stop.clone());
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
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let to = tokio::task::spawn_blocking(move || slow.join().expect("slow writer"))
        .await
        .expect("join");

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
