//! A 3-node cluster of real `aquifer serve` processes: every group is
//! replicated on all three, writes go on through `kill -9` of container and
//! metadata leaders, and every acknowledged event reads back exactly once,
//! in per-key order.

mod common;

use std::time::Duration;

use aquifer_client::{Client, WriterConfig};

use common::{per_key_sequences, read_all, stream_name, write_keyed_range, TestCluster};

const KEYS: u64 = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_continue_through_kill9_of_leaders() {
    let mut cluster =
        TestCluster::start(3, "", "chunk_bytes = 262144\nflush_interval_ms = 500").await;
    let client = Client::connect(&cluster.node(1).addr())
        .await
        .expect("connect");
    let name = stream_name("cluster/failover");
    client
        .admin()
        .create_stream(&name, 4)
        .await
        .expect("create through any node");
    let writer = client
        .writer(&name, WriterConfig::default())
        .await
        .expect("writer");
    write_keyed_range(&writer, KEYS, 0, 100, 100).await;

    // A container leader dies: its segments move to a new leader.
    let victim = cluster.leader_of("container-0").await;
    cluster.node(victim).kill9();
    write_keyed_range(&writer, KEYS, 100, 200, 100).await;
    cluster.node(victim).restart().await;

    // The metadata leader dies: admin calls and writes go on.
    let meta = cluster.leader_of("meta").await;
    cluster.node(meta).kill9();
    write_keyed_range(&writer, KEYS, 200, 300, 100).await;
    let other = stream_name("cluster/after-meta-failover");
    client
        .admin()
        .create_stream(&other, 2)
        .await
        .expect("create after the metadata leader died");
    cluster.node(meta).restart().await;
    write_keyed_range(&writer, KEYS, 300, 400, 100).await;
    writer.close().await.expect("close");

    // Every node serves the same events (reads go to any replica).
    for id in 1..=3u64 {
        let reader = Client::connect(&cluster.node(id).addr())
            .await
            .expect("connect");
        let events = read_all(&reader, &name, Duration::from_secs(60)).await;
        assert_eq!(
            events.len() as u64,
            KEYS * 400,
            "node {id}: every event once"
        );
        for (key, seqs) in per_key_sequences(&events) {
            assert_eq!(seqs, (0..400).collect::<Vec<u64>>(), "node {id}, key {key}");
        }
    }
}
