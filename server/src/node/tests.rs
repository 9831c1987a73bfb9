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
            .create_stream(&key, 4, Retention::default())
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
        .create_stream(&key, 2, Retention::default())
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
