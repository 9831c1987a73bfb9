//! A 3-node cluster in one test process (see `aquifer_testkit::in_process`): leaders
//! are elected for every group, a write is replicated (read back through
//! every node's own replica), and the cluster goes on when a node stops.

use std::collections::HashMap;
use std::time::Duration;

use aquifer_client::{Client, Event, ReaderConfig, StartFrom, StreamName, WriterConfig};
use aquifer_testkit::in_process::InProcessCluster;
use futures::TryStreamExt;

const CONTAINERS: u32 = 4;

fn groups() -> Vec<String> {
    std::iter::once(aquifer_proto::wire::META_GROUP.to_string())
        .chain((0..CONTAINERS).map(aquifer_proto::wire::container_group))
        .collect()
}

async fn write(client: &Client, name: &StreamName, from: u64, to: u64) {
    let writer = client
        .writer(name, WriterConfig::default())
        .await
        .expect("writer");
    for seq in from..to {
        for k in 0..8 {
            writer
                .write_event(Some(&format!("k{k}")), format!("k{k}:{seq}"))
                .await
                .expect("queued");
        }
    }
    writer.flush().await.expect("acknowledged");
}

/// Every event of `name`, read from the head through node `addr`.
async fn read_through(addr: &str, name: &StreamName) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let client = Client::connect(addr).await.expect("connect");
        let config = ReaderConfig::default().start(StartFrom::Head).follow(false);
        let mut events = Vec::new();
        let done = async {
            let mut reader = client.reader(name, config).await?;
            while let Some(e) = reader.try_next().await? {
                events.push(e);
            }
            Ok::<_, aquifer_client::Error>(())
        };
        match tokio::time::timeout_at(deadline, done).await {
            Ok(Ok(())) => return events,
            Ok(Err(e)) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Err(e)) => panic!("reading through {addr} failed: {e}"),
            Err(_) => panic!("reading through {addr} did not finish in 30 s"),
        }
    }
}

/// Per key, the sequence numbers in read order.
fn sequences(events: &[Event]) -> HashMap<String, Vec<u64>> {
    let mut by_key: HashMap<String, Vec<u64>> = HashMap::new();
    for e in events {
        let text = std::str::from_utf8(&e.payload).expect("utf-8 payload");
        let (key, seq) = text.split_once(':').expect("key:seq");
        assert_eq!(
            e.routing_key.as_deref(),
            Some(key),
            "routing key matches payload"
        );
        by_key
            .entry(key.to_string())
            .or_default()
            .push(seq.parse().expect("a number"));
    }
    by_key
}

fn assert_exactly(events: &[Event], to: u64, through: &str) {
    let by_key = sequences(events);
    assert_eq!(by_key.len(), 8, "every key, through {through}");
    for (key, seqs) in by_key {
        let want: Vec<u64> = (0..to).collect();
        assert_eq!(
            seqs, want,
            "key {key} once each and in order, through {through}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_in_one_process_elect_replicate_and_survive_a_stop() {
    let mut cluster = InProcessCluster::start(3, CONTAINERS).await;
    let leaders = cluster
        .wait_for_leaders(&groups(), Duration::from_secs(30))
        .await;

    let name: StreamName = "inproc/events".parse().expect("name");
    let client = Client::connect(cluster.addr(1)).await.expect("connect");
    client
        .admin()
        .create_stream(&name, 4)
        .await
        .expect("create stream");
    write(&client, &name, 0, 100).await;
    for id in cluster.running() {
        let addr = cluster.addr(id).to_string();
        assert_exactly(&read_through(&addr, &name).await, 100, &addr);
    }

    // Stop the node that leads the metadata group: every group it led
    // must find a new leader among the other two.
    let stopped = leaders[aquifer_proto::wire::META_GROUP];
    cluster.stop(stopped).await;
    assert!(
        cluster.status(stopped).await.is_none(),
        "a stopped node answers nothing"
    );
    let after = cluster
        .wait_for_leaders(&groups(), Duration::from_secs(30))
        .await;
    assert!(after.values().all(|&n| n != stopped), "{after:?}");

    let survivor = cluster.running()[0];
    let client = Client::connect(cluster.addr(survivor))
        .await
        .expect("connect");
    write(&client, &name, 100, 200).await;
    for id in cluster.running() {
        let addr = cluster.addr(id).to_string();
        assert_exactly(&read_through(&addr, &name).await, 200, &addr);
    }
}

/// Every node records the admin calls it takes in its own audit stream,
/// created by the metadata leader and appended to at its container's
/// leader wherever that is (here or through another node); every node's
/// chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_node_audits_the_calls_it_takes_in_a_chain_of_its_own() {
    let cluster = InProcessCluster::start(3, CONTAINERS).await;
    cluster
        .wait_for_leaders(&groups(), Duration::from_secs(30))
        .await;
    for id in cluster.running() {
        let client = Client::connect(cluster.addr(id)).await.expect("connect");
        let name: StreamName = format!("audited/from-{id}").parse().expect("name");
        client
            .admin()
            .create_stream(&name, 1)
            .await
            .expect("create stream");
    }
    for id in cluster.running() {
        let audit: StreamName = format!("_system/audit-{id}").parse().expect("name");
        let wanted = format!(r#""op":"stream.create","target":"audited/from-{id}""#);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let events = read_through(cluster.addr(1), &audit).await;
            let mut chain = aquifer_server::audit::record::Chain::new(
                events.first().map_or(0, |e| e.position.segment_id),
                true,
            );
            for e in &events {
                let r = chain.push(&e.payload).expect("the chain verifies");
                assert_eq!(r.node, id, "node {id}'s stream holds its own records");
            }
            let found = events
                .iter()
                .any(|e| String::from_utf8_lossy(&e.payload).contains(&wanted));
            if found {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {id}'s audit stream lacks its create: {} records",
                events.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
