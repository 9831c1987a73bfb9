//! A 3-node cluster of real `aquifer serve` processes: every group is
//! replicated on all three, writes go on through `kill -9` of container and
//! metadata leaders, and every acknowledged event reads back exactly once,
//! in per-key order. A new leader collects the orphan objects of earlier
//! terms.

mod common;

use std::time::Duration;

use aquifer_client::Client;

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
    let writer = common::stream_with_writer(&client, &name, 4).await;
    write_keyed_range(&writer, KEYS, 0, 100, 100).await;

    // A container leader dies: its segments move to a new leader, which
    // deletes an object an earlier term put but never recorded.
    let orphans = cluster.tier2_dir().join("chunks").join("c0");
    std::fs::create_dir_all(&orphans).expect("chunk dir");
    let orphan = orphans.join("t000000000000-0000000000000-00000000deadbeef.chunk");
    std::fs::write(&orphan, b"never recorded").expect("plant orphan");
    let victim = cluster.leader_of("container-0").await;
    cluster.node(victim).kill9();
    write_keyed_range(&writer, KEYS, 100, 200, 100).await;
    common::wait_for(
        "the new leader to delete the orphan",
        Duration::from_secs(30),
        || {
            let orphan = orphan.clone();
            async move { !orphan.exists() }
        },
    )
    .await;
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

    // Any node answers admin calls, also to a plain gRPC client that does
    // not follow redirects: non-leaders forward them to the leader (once
    // there is one again after the restarts).
    for id in 1..=3u64 {
        let addr = format!("http://{}", cluster.node(id).addr());
        let answers = || {
            let addr = addr.clone();
            async move {
                let Ok(mut raw) =
                    aquifer_proto::v1::stream_admin_client::StreamAdminClient::connect(addr).await
                else {
                    return false;
                };
                raw.describe_stream(aquifer_proto::v1::DescribeStreamRequest {
                    name: Some(aquifer_proto::v1::StreamName {
                        scope: "cluster".into(),
                        stream: "failover".into(),
                    }),
                })
                .await
                .is_ok_and(|info| info.into_inner().segments.len() == 4)
            }
        };
        common::wait_for(
            "every node to answer describe",
            Duration::from_secs(30),
            answers,
        )
        .await;
    }

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

/// A partition that cuts a container leader off from the other nodes: the
/// majority elects a new leader and writes go on there; after the heal the
/// old leader catches up, and nothing is lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_continue_when_the_leader_is_partitioned_away() {
    let mut cluster = TestCluster::start(3, "", "flush_interval_ms = 500").await;
    let client = Client::connect(&cluster.node(1).addr())
        .await
        .expect("connect");
    let name = stream_name("cluster/partition");
    let writer = common::stream_with_writer(&client, &name, 2).await;
    write_keyed_range(&writer, KEYS, 0, 100, 100).await;
    let leader = cluster.leader_of("container-0").await;
    cluster.isolate(leader).await;
    write_keyed_range(&writer, KEYS, 100, 200, 100).await;
    // The majority has its own leader (the isolated node may still think
    // it leads until check-quorum makes it step down).
    let new_leader = cluster.leader_among("container-0", &[leader]).await;
    cluster.heal().await;
    assert_ne!(new_leader, leader);
    write_keyed_range(&writer, KEYS, 200, 300, 100).await;
    writer.close().await.expect("close");
    let reader = Client::connect(&cluster.node(leader).addr())
        .await
        .expect("connect");
    let events = read_all(&reader, &name, Duration::from_secs(60)).await;
    assert_eq!(events.len() as u64, KEYS * 300, "every event once");
    for (key, seqs) in per_key_sequences(&events) {
        assert_eq!(seqs, (0..300).collect::<Vec<u64>>(), "key {key}");
    }
    let status = cluster.node(1).cli(&["cluster", "status"], None);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        text.contains("container-0") && text.contains("1,2,3"),
        "{text}"
    );
    // Node health as node 1 sees it: itself, and the others up after the heal.
    assert!(text.contains("self") && text.contains(" up"), "{text}");
}

/// A node down while the others write past their snapshot interval comes
/// back too far behind for the log: the leader sends it a snapshot (again,
/// after the first ones are lost), and afterwards it alone serves every
/// event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_far_behind_catches_up_by_snapshot() {
    let mut cluster = TestCluster::start(
        3,
        "snapshot_log_bytes = 1048576",
        "chunk_bytes = 262144\nflush_interval_ms = 500",
    )
    .await;
    let client = Client::connect(&cluster.node(1).addr())
        .await
        .expect("connect");
    let name = stream_name("cluster/snapshot");
    let writer = common::stream_with_writer(&client, &name, 2).await;
    write_keyed_range(&writer, KEYS, 0, 50, 500).await;
    cluster.node(3).kill9();
    // ~4 MB: several snapshots and log truncations on nodes 1 and 2.
    write_keyed_range(&writer, KEYS, 50, 550, 500).await;
    writer.close().await.expect("close");
    // The first snapshots sent to it are lost: the leaders must hear of it
    // and send again, not wait for them forever.
    cluster.drop_snapshots_to(3).await;
    cluster.node(3).restart().await;
    let failed = || {
        let logs: Vec<String> = cluster.nodes[..2].iter().map(|n| n.stderr_text()).collect();
        async move { logs.iter().any(|l| l.contains("dropping a snapshot")) }
    };
    common::wait_for(
        "a leader to drop a snapshot to node 3",
        Duration::from_secs(30),
        failed,
    )
    .await;
    cluster.heal().await;
    let installed = || {
        let log = cluster.nodes[2].stderr_text();
        async move { log.contains("installed a snapshot from the leader") }
    };
    common::wait_for(
        "node 3 to install a snapshot",
        Duration::from_secs(60),
        installed,
    )
    .await;
    // Node 3 alone (no quorum: reads need none) serves everything.
    // Everything the leaders committed (their commit index, the highest
    // any node reports) is applied on node 3.
    let mut committed = std::collections::HashMap::new();
    for id in 1..=2 {
        let c = Client::connect(&cluster.node(id).addr())
            .await
            .expect("connect");
        for g in c.cluster_status().await.expect("status").groups {
            let e = committed.entry(g.name).or_insert(0);
            *e = (*e).max(g.commit_index);
        }
    }
    let status = || {
        let addr = cluster.nodes[2].addr();
        let committed = committed.clone();
        async move {
            let Ok(c) = Client::connect(&addr).await else {
                return false;
            };
            c.cluster_status().await.is_ok_and(|s| {
                s.groups
                    .iter()
                    .all(|g| g.applied_index >= committed.get(&g.name).copied().unwrap_or(0))
            })
        }
    };
    common::wait_for(
        "node 3 to apply everything",
        Duration::from_secs(60),
        status,
    )
    .await;
    let segments: Vec<u64> = client
        .admin()
        .describe_stream(&name)
        .await
        .expect("describe")
        .segments
        .iter()
        .map(|s| s.segment_id)
        .collect();
    cluster.node(1).kill9();
    cluster.node(2).kill9();
    let reader = Client::connect(&cluster.node(3).addr())
        .await
        .expect("connect");
    let mut events = Vec::new();
    for id in segments {
        let mut r = reader
            .segment_reader(id, 0, false)
            .await
            .expect("segment reader");
        while let Some(e) = r.next().await.expect("read from node 3") {
            events.push(e);
        }
    }
    assert_eq!(events.len() as u64, KEYS * 550, "every event on node 3");
    for (key, seqs) in per_key_sequences(&events) {
        assert_eq!(seqs, (0..550).collect::<Vec<u64>>(), "key {key}");
    }
}

/// Membership online: a fourth node joins while writers run (every group
/// adds it and sends it a snapshot), then node 2 is removed and stopped;
/// the new node alone serves every event at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_added_and_removed_while_writing() {
    let mut cluster = TestCluster::start(3, "", "flush_interval_ms = 500").await;
    let client = Client::connect(&cluster.node(1).addr())
        .await
        .expect("connect");
    let name = stream_name("cluster/membership");
    let writer = common::stream_with_writer(&client, &name, 4).await;
    write_keyed_range(&writer, KEYS, 0, 100, 100).await;

    let joiner = cluster.spawn_joiner().await;
    let addr = cluster.node(joiner).addr();
    client
        .admin()
        .add_node(joiner, &addr)
        .await
        .expect("add node");
    write_keyed_range(&writer, KEYS, 100, 200, 100).await;
    let replicas_are = |want: Vec<u64>| {
        let addr = addr.clone();
        async move {
            let Ok(c) = Client::connect(&addr).await else {
                return false;
            };
            c.cluster_status().await.is_ok_and(|s| {
                s.groups.len() == 5
                    && s.groups.iter().all(|g| {
                        g.replicas == want
                            && g.commit_index > 1
                            && g.applied_index >= g.commit_index
                    })
            })
        }
    };
    common::wait_for(
        "every group on 4 nodes, node 4 caught up",
        Duration::from_secs(60),
        || replicas_are(vec![1, 2, 3, 4]),
    )
    .await;

    client.admin().remove_node(2).await.expect("remove node");
    write_keyed_range(&writer, KEYS, 200, 300, 100).await;
    common::wait_for(
        "node 2 dropped from every group",
        Duration::from_secs(60),
        || replicas_are(vec![1, 3, 4]),
    )
    .await;
    cluster.node(2).kill9();
    write_keyed_range(&writer, KEYS, 300, 400, 100).await;
    writer.close().await.expect("close");

    let reader = Client::connect(&addr).await.expect("connect");
    let events = read_all(&reader, &name, Duration::from_secs(60)).await;
    assert_eq!(events.len() as u64, KEYS * 400, "every event once");
    for (key, seqs) in per_key_sequences(&events) {
        assert_eq!(seqs, (0..400).collect::<Vec<u64>>(), "key {key}");
    }
}
