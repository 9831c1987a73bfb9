//! Cluster benchmarks: a 3-node loopback cluster next to a single node in
//! the same run — durable 1 KiB throughput, ack latency at half load — and
//! failover time: a container leader killed (-9) → the first acknowledged
//! write after it, over repeated trials.
//!
//! ```text
//! cargo bench --bench cluster -- [--quick] [--write-results]
//! ```
//! `--write-results` writes `benches/RESULTS-cluster.md`. All nodes run on
//! this one machine (2 cores here): three replicas share its CPU and disk.

use aquifer_testkit as common;
use aquifer_testkit::workloads;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use aquifer_client::{Client, StreamName, WriterConfig};
use bytes::Bytes;
use hdrhistogram::Histogram;

use aquifer_testkit::bench::{self as args, parse_args, Args};
use common::{ServerOpts, ServerProcess, TestCluster};
use workloads::{Window, WriteLoad, WriteResult};

fn main() {
    let args = parse_args("cluster");
    let started = Instant::now();
    let report = args::runtime().block_on(run(&args));
    args::finish(
        "cluster",
        &args,
        started,
        &report,
        "RESULTS-cluster.md",
        || {
            format!(
                "{}{report}\n",
                args::results_header(
                    "Cluster benchmark results",
                    "cluster",
                    &args,
                    "loopback; all nodes on this one machine."
                )
            )
        },
    );
}

fn load(stream: &str, rate: Option<f64>) -> WriteLoad {
    WriteLoad {
        stream: stream.into(),
        segments: 4,
        writers: 4,
        keys_per_writer: 64,
        payload_bytes: 1024,
        rate,
        timestamped: false,
    }
}

/// Max throughput, then half of it, on one deployment.
async fn throughput(client: &Client, tag: &str, window: Window) -> (WriteResult, WriteResult) {
    let base = Instant::now();
    eprintln!("cluster bench: {tag}: 1 KiB, 4 writers, max");
    let max = workloads::run_write(
        client,
        &load(&format!("bench/{tag}-max"), None),
        window,
        base,
    )
    .await;
    let half = (max.events_s() / 2.0).max(1.0);
    eprintln!("cluster bench: {tag}: 1 KiB, 4 writers, {half:.0} events/s");
    let at_half = workloads::run_write(
        client,
        &load(&format!("bench/{tag}-half"), Some(half)),
        window,
        base,
    )
    .await;
    (max, at_half)
}

/// One failover trial: a writer acks steadily on a 1-segment stream; the
/// leader of its container is killed; the time to the first ack after the
/// kill is the failover time. The node is restarted and caught up after.
async fn failover_trial(
    cluster: &mut TestCluster,
    client: &Client,
    name: &StreamName,
    container: &str,
) -> Duration {
    let writer = client
        .writer(name, WriterConfig::default())
        .await
        .expect("writer");
    let payload = Bytes::from(vec![b'f'; 1024]);
    // Warm: the session is set up with the current leader.
    for _ in 0..50 {
        writer
            .write_event(Some("k"), payload.clone())
            .await
            .expect("queue")
            .await
            .expect("ack");
    }
    // Every running node must name the same leader: right after a restart
    // or a rebalancing transfer one may still believe it leads.
    let leader = agreed_leader(cluster, container).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let pump = {
        let payload = payload.clone();
        tokio::spawn(async move {
            // One event at a time, every ms: each ack's time is its own.
            for _ in 0..20_000 {
                let Ok(pending) = writer.write_event(Some("k"), payload.clone()).await else {
                    return;
                };
                if pending.await.is_ok() && tx.send(Instant::now()).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = Instant::now();
    cluster.node(leader).kill9();
    let mut first_after = None;
    let deadline = killed_at + Duration::from_secs(30);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            // An ack already on the wire when the leader died arrives within
            // microseconds; no election finishes in under 10 ms.
            Ok(Some(acked)) if acked > killed_at + Duration::from_millis(10) => {
                first_after = Some(acked - killed_at);
                break;
            }
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => break,
        }
    }
    pump.abort();
    cluster.node(leader).restart().await;
    // Let it catch up (and the balancer settle) before the next trial.
    tokio::time::sleep(Duration::from_secs(4)).await;
    first_after.unwrap_or(Duration::from_secs(30))
}

/// The leader of `group` once every node agrees on it.
async fn agreed_leader(cluster: &TestCluster, group: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = std::collections::BTreeSet::new();
        for node in &cluster.nodes {
            if let Ok(c) = Client::connect(&node.addr()).await {
                if let Ok(s) = c.cluster_status().await {
                    if let Some(g) = s.groups.iter().find(|g| g.name == group) {
                        seen.insert(g.leader_id);
                    }
                }
            }
        }
        if let [Some(leader)] = seen.iter().copied().collect::<Vec<_>>()[..] {
            return leader;
        }
        assert!(Instant::now() < deadline, "no agreed leader of {group}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run(args: &Args) -> String {
    let window = if args.quick {
        Window {
            warmup: Duration::from_millis(500),
            measure: Duration::from_secs(3),
        }
    } else {
        Window {
            warmup: Duration::from_secs(2),
            measure: Duration::from_secs(10),
        }
    };
    let trials = if args.quick { 5 } else { 20 };

    let single = ServerProcess::start(ServerOpts::default()).await;
    let client = single.client().await;
    let (single_max, single_half) = throughput(&client, "single", window).await;
    drop(client);
    drop(single);

    let mut cluster = TestCluster::start(3, "", "").await;
    let client = Client::connect(&cluster.node(1).addr())
        .await
        .expect("connect");
    let (cluster_max, cluster_half) = throughput(&client, "cluster", window).await;

    let name: StreamName = "bench/failover".parse().expect("name");
    let info = client
        .admin()
        .create_stream(&name, 1)
        .await
        .expect("create");
    let container = format!("container-{}", info.segments[0].container);
    let mut failover = Histogram::<u64>::new_with_bounds(1, 60_000, 3).expect("histogram");
    let mut times = Vec::new();
    for trial in 1..=trials {
        let took = failover_trial(&mut cluster, &client, &name, &container).await;
        eprintln!("cluster bench: failover trial {trial}/{trials}: {took:.2?}");
        failover
            .record(took.as_millis().max(1) as u64)
            .expect("record");
        times.push(took);
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "Each throughput workload: {:.1} s warm-up, {:.1} s measured; 1 KiB events, 4 writers, 4 segments; \
         every ack after fdatasync on a majority (cluster) or the node (single).\n",
        window.warmup.as_secs_f64(),
        window.measure.as_secs_f64()
    );
    let _ = writeln!(out, "| deployment | workload | events/s | MB/s | ack p50 | ack p99 | ack p99.9 | ack max | errors |");
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (who, what, r) in [
        ("single node", "max", &single_max),
        ("single node", "half of its max", &single_half),
        ("3 nodes", "max", &cluster_max),
        ("3 nodes", "half of its max", &cluster_half),
    ] {
        let q = |p: f64| format!("{:.2} ms", r.ack_us.value_at_quantile(p) as f64 / 1000.0);
        let _ = writeln!(
            out,
            "| {who} | {what} | {:.0} | {:.1} | {} | {} | {} | {:.2} ms | {} |",
            r.events_s(),
            r.mb_s(),
            q(0.5),
            q(0.99),
            q(0.999),
            r.ack_us.max() as f64 / 1000.0,
            r.errors
        );
    }
    let p99_ms = |r: &WriteResult| r.ack_us.value_at_quantile(0.99) as f64 / 1000.0;
    let _ = writeln!(
        out,
        "\n3-node durable throughput = {:.0} % of single node (target ≥ 60 %); \
         3-node ack p99 at half load = {:.2} ms, {:.1}× the single node's (target ≤ 3×); \
         ack p99 at max load {:.2} ms single, {:.2} ms 3 nodes (target ≤ 100 ms).\n",
        100.0 * cluster_max.mb_s() / single_max.mb_s().max(1e-9),
        p99_ms(&cluster_half),
        p99_ms(&cluster_half) / p99_ms(&single_half).max(1e-9),
        p99_ms(&single_max),
        p99_ms(&cluster_max),
    );
    times.sort();
    let _ = writeln!(
        out,
        "| failover ({trials} trials: container leader kill -9 → first ack after it) | median | p90 | max |\n|---|---:|---:|---:|\n| 3 nodes, default raft timing (tick 100 ms, election 10 ticks) | {:.2} s | {:.2} s | {:.2} s |",
        failover.value_at_quantile(0.5) as f64 / 1000.0,
        failover.value_at_quantile(0.9) as f64 / 1000.0,
        failover.max() as f64 / 1000.0
    );
    let _ = writeln!(
        out,
        "\nTrials (s): {}",
        times
            .iter()
            .map(|t| format!("{:.2}", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    out
}
