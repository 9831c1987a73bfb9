//! Node-level tests on a single in-process node.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::BytesMut;

use super::Node;
use crate::config::ServerConfig;
use crate::container::command::{Append, Cmd};
use crate::controller::{Retention, StreamKey};

async fn open(dir: &std::path::Path) -> Arc<Node> {
    let config = ServerConfig {
        data_dir: dir.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    Node::open(config).await.unwrap()
}

/// One keyed event in the protocol's framing.
fn event() -> bytes::Bytes {
    let mut out = BytesMut::new();
    aquifer_proto::frame::encode_event(&mut out, Some("k"), b"payload");
    out.freeze()
}

/// A delete must not fail because another reconcile pass (the background
/// loop, or a second admin call) finished part of it first: the stream is
/// gone either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_succeeds_while_other_reconcile_passes_run() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path()).await;
    for round in 0..20 {
        let key = StreamKey {
            scope: "race".into(),
            stream: format!("s{round}"),
        };
        let stream = node
            .create_stream(&key, 4, Retention::default(), Default::default())
            .await
            .unwrap();
        let segment_id = stream.segments[0].id;
        let events = event();
        node.container_of(segment_id)
            .propose(Cmd::Append(Append {
                segment_id,
                writer_id: "w".into(),
                first_event_number: 1,
                event_count: 1,
                events,
                expected_length: None,
                txn_parent: None,
                append_ms: 0,
            }))
            .await
            .unwrap();
        node.seal_stream(&key).await.unwrap();
        // The background loop's passes, back to back: some start after the
        // delete is marked and race the delete's own pass.
        let racing = Arc::new(AtomicBool::new(true));
        let racer = tokio::spawn({
            let (node, racing) = (node.clone(), racing.clone());
            async move {
                while racing.load(Ordering::Relaxed) {
                    let _ = node.reconcile_once().await;
                    tokio::task::yield_now().await;
                }
            }
        });
        let deleted = node.delete_stream(&key).await;
        racing.store(false, Ordering::Relaxed);
        racer.await.unwrap();
        deleted.unwrap_or_else(|e| panic!("round {round}: delete failed: {e}"));
        assert!(node.controller.get(&key).is_err(), "round {round}: gone");
    }
    node.stop().await;
}

/// A split then a merge on one node: each returns with its epoch in force,
/// predecessors sealed (appends refused), successors taking appends, and
/// the successor graph recorded both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scales_seal_predecessors_and_open_successors() {
    use crate::controller::scaling::Split;
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path()).await;
    let key = StreamKey {
        scope: "scale".into(),
        stream: "s".into(),
    };
    let stream = node
        .create_stream(&key, 2, Retention::default(), Default::default())
        .await
        .unwrap();
    let first = stream.segments[0].id;
    let append = |segment_id: u64, number: i64| {
        let node = node.clone();
        async move {
            node.container_of(segment_id)
                .propose(Cmd::Append(Append {
                    segment_id,
                    writer_id: "w".into(),
                    first_event_number: number,
                    event_count: 1,
                    events: event(),
                    expected_length: None,
                    txn_parent: None,
                    append_ms: 0,
                }))
                .await
        }
    };
    append(first, 1).await.unwrap();
    let split = [Split {
        segment_id: first,
        pieces: 2,
    }];
    let scaled = node.scale_stream(&key, &split, &[]).await.unwrap();
    assert_eq!(scaled.epoch, 1);
    let old = scaled.segments.iter().find(|g| g.id == first).unwrap();
    assert_eq!(old.successors.len(), 2);
    let sealed = node.container_of(first).segment(first).unwrap().view();
    assert!(sealed.sealed, "the predecessor is sealed");
    assert!(matches!(
        append(first, 2).await,
        Err(crate::error::Error::SegmentSealed(_))
    ));
    for &s in &old.successors {
        assert!(!node.controller.is_pending(s));
        append(s, 1).await.unwrap();
    }
    // Bad scales are refused where they execute, with the reason.
    let err = node.scale_stream(&key, &split, &[]).await.unwrap_err();
    assert!(err.to_string().contains("not an active segment"), "{err}");
    let merged = node
        .scale_stream(&key, &[], std::slice::from_ref(&old.successors))
        .await
        .unwrap();
    assert_eq!(merged.epoch, 2);
    assert_eq!(merged.active().count(), 2);
    assert_eq!(merged.epochs.len(), 3);
    node.stop().await;
}

/// Auto-scaling on one node with windows in seconds: load at 8x an
/// events/s target splits the stream to at least 4 segments; silence then
/// merges it back to its minimum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_policy_splits_under_load_and_merges_when_quiet() {
    use crate::controller::{ScalingKind, ScalingPolicy};
    use std::collections::HashMap;
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig {
        data_dir: dir.path().to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    config.scaling.tick_ms = 100;
    config.scaling.windows_ms = [400, 800, 1_600, 3_200];
    config.scaling.cooldown_ms = 500;
    let node = Node::open(config).await.unwrap();
    let key = StreamKey {
        scope: "auto".into(),
        stream: "s".into(),
    };
    let policy = ScalingPolicy {
        kind: ScalingKind::EventsPerSecond,
        target: 1_000,
        scale_factor: 2,
        min_segments: 1,
    };
    node.create_stream(&key, 1, Retention::default(), policy)
        .await
        .unwrap();
    // 8,000 events/s: 80 events per active segment share every 10 ms.
    let mut numbers: HashMap<u64, i64> = HashMap::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut most = 1;
    while most < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "never reached 4 segments"
        );
        let stream = node.controller.get(&key).unwrap();
        let active: Vec<u64> = stream.active().map(|g| g.id).collect();
        most = most.max(active.len());
        let share = (active.len() as u32).max(1);
        let mut events = BytesMut::new();
        for _ in 0..(80 / share).max(1) {
            aquifer_proto::frame::encode_event(&mut events, Some("k"), b"x");
        }
        let events = events.freeze();
        for id in active {
            let next = numbers.entry(id).or_insert(0);
            let count = (80 / share).max(1);
            let applied = node
                .container_of(id)
                .propose(Cmd::Append(Append {
                    segment_id: id,
                    writer_id: "w".into(),
                    first_event_number: *next + 1,
                    event_count: count,
                    events: events.clone(),
                    expected_length: None,
                    txn_parent: None,
                    append_ms: 0,
                }))
                .await;
            // A segment sealed by a scale under way refuses; the others
            // take the load.
            if applied.is_ok() {
                *next += i64::from(count);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Quiet: the rates decay and cold neighbours merge, down to 1.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let stream = node.controller.get(&key).unwrap();
        if stream.active().count() == 1 && stream.scaling.is_none() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never merged back: {} active",
            stream.active().count()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    node.stop().await;
}

/// Retention removes a sealed predecessor once it has expired every byte
/// of it: the segment leaves describe, its container, then the metadata;
/// its successor is read from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_a_whole_expired_predecessor() {
    use crate::controller::scaling::Split;
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig {
        data_dir: dir.path().to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    config.tier2.flush_interval_ms = 100;
    let node = Node::open(config).await.unwrap();
    let key = StreamKey {
        scope: "expire".into(),
        stream: "s".into(),
    };
    let retention = Retention {
        time_ms: 500,
        ..Retention::default()
    };
    let stream = node
        .create_stream(&key, 1, retention, Default::default())
        .await
        .unwrap();
    let first = stream.segments[0].id;
    node.container_of(first)
        .propose(Cmd::Append(Append {
            segment_id: first,
            writer_id: "w".into(),
            first_event_number: 1,
            event_count: 1,
            events: event(),
            expected_length: None,
            txn_parent: None,
            append_ms: 0,
        }))
        .await
        .unwrap();
    let split = [Split {
        segment_id: first,
        pieces: 2,
    }];
    node.scale_stream(&key, &split, &[]).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let s = node.controller.get(&key).unwrap();
        let gone = s.segments.iter().all(|g| g.id != first);
        if gone && node.container_of(first).segment(first).is_none() {
            assert!(
                s.segments.iter().all(|g| g.epoch == 1),
                "only the successors stay"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the expired predecessor stayed: {s:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    node.stop().await;
}
