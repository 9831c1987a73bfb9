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
