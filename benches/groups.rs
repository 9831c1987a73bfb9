//! Reader-group benchmarks, one node on loopback, all in one run:
//! - group-read throughput against a plain `EventReader` over the same
//!   preloaded stream (and 4 group readers together);
//! - checkpoint latency (initiate → complete), p50/p99, with 4 readers
//!   reading while a writer writes;
//! - rebalance time: a reader joins, one leaves cleanly, one dies (dropped
//!   without leaving; 1 s reader timeout);
//! - conditional-append round trip, p50/p99 (one writer, sequential).
//!
//! ```text
//! cargo bench --bench groups -- [--quick] [--write-results]
//! ```
//! `--quick` runs fewer checkpoints and a smaller preload.
//! `--write-results` writes `benches/RESULTS-groups.md`.

use aquifer_testkit as common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aquifer_client::{
    Client, GroupEvent, ReaderConfig, ReaderGroup, ReaderGroupConfig, StreamName, WriterConfig,
};
use futures::TryStreamExt;
use hdrhistogram::Histogram;

use aquifer_testkit::bench::{self as args, parse_args, Args};
use common::{ServerOpts, ServerProcess};

fn main() {
    let args = parse_args("groups");
    let started = Instant::now();
    let report = args::runtime().block_on(run(&args));
    args::finish(
        "groups",
        &args,
        started,
        &report,
        "RESULTS-groups.md",
        || {
            format!(
                "{}{report}\n",
                args::results_header(
                    "Reader-group benchmark results",
                    "groups",
                    &args,
                    "one node on loopback."
                )
            )
        },
    );
}

async fn run(args: &Args) -> String {
    let server = ServerProcess::start(ServerOpts::default()).await;
    let client = server.client().await;
    let mut out = String::from("| figure | value |\n|---|---:|\n");
    let events = if args.quick { 100_000 } else { 400_000 };
    let (plain, one, four) = throughput(&client, events).await;
    out += &format!(
        "| plain EventReader, {events} events of 100 B, 4 segments | {plain:.0} events/s |\n\
         | 1 group reader, same stream | {one:.0} events/s ({:.2}x plain) |\n\
         | 4 group readers together, same stream | {four:.0} events/s ({:.2}x plain) |\n",
        one / plain,
        four / plain
    );
    let rounds = if args.quick { 10 } else { 40 };
    let (p50, p99, max, rate) = checkpoints(&client, rounds).await;
    out += &format!(
        "| checkpoint latency, 4 readers, writer at {rate:.0} events/s, {rounds} checkpoints | p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms |\n"
    );
    let appends = if args.quick { 500 } else { 3_000 };
    let (p50, p99) = conditional_appends(&client, appends).await;
    out += &format!(
        "| conditional append round trip, 100 B, {appends} in a row | p50 {p50:.2} ms, p99 {p99:.2} ms |\n"
    );
    let (join, leave, death) = rebalance(&client).await;
    out += &format!(
        "| rebalance after a reader joins (8 segments, 2 → 3 readers) | {:.0} ms |\n\
         | rebalance after a reader leaves cleanly (3 → 2) | {:.0} ms |\n\
         | takeover after a reader dies (reader timeout 1 s) | {:.0} ms |\n",
        join.as_secs_f64() * 1000.0,
        leave.as_secs_f64() * 1000.0,
        death.as_secs_f64() * 1000.0
    );
    out
}

async fn preload(client: &Client, name: &StreamName, segments: u32, events: u64) {
    client
        .admin()
        .create_stream(name, segments)
        .await
        .expect("create");
    let writer = client
        .writer(name, WriterConfig::default())
        .await
        .expect("writer");
    let payload = bytes::Bytes::from(vec![b'x'; 100]);
    for i in 0..events {
        let key = format!("k{}", i % 64);
        let _ack = writer
            .write_event(Some(&key), payload.clone())
            .await
            .expect("queued");
    }
    writer.flush().await.expect("flushed");
    writer.close().await.expect("closed");
}

/// Events/s of a plain reader, one group reader, and four group readers.
async fn throughput(client: &Client, events: u64) -> (f64, f64, f64) {
    let name: StreamName = "bench/groups-read".parse().expect("name");
    preload(client, &name, 4, events).await;
    let started = Instant::now();
    let mut reader = client
        .reader(&name, ReaderConfig::default())
        .await
        .expect("reader");
    let mut n = 0u64;
    while reader.try_next().await.expect("read").is_some() {
        n += 1;
    }
    assert_eq!(n, events);
    let plain = n as f64 / started.elapsed().as_secs_f64();
    let mut rates = Vec::new();
    for (group, readers) in [("one", 1usize), ("four", 4)] {
        let g = client.reader_group("bench", group);
        g.create(std::slice::from_ref(&name), &ReaderGroupConfig::default())
            .await
            .expect("group");
        let count = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for r in 0..readers {
            let (g, count) = (g.clone(), count.clone());
            tasks.push(tokio::spawn(async move {
                let mut reader = g.reader(&format!("r{r}")).await.expect("join");
                while count.load(Ordering::Relaxed) < events {
                    let next =
                        tokio::time::timeout(Duration::from_millis(50), reader.try_next()).await;
                    if let Ok(Ok(Some(GroupEvent::Event(_)))) = next {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
                reader
            }));
        }
        for t in tasks {
            let _ = t.await.expect("reader").close().await;
        }
        rates.push(count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64());
    }
    (plain, rates[0], rates[1])
}

/// Checkpoint latency percentiles (ms) with 4 readers and a live writer;
/// and the writer's rate.
async fn checkpoints(client: &Client, rounds: u64) -> (f64, f64, f64, f64) {
    let name: StreamName = "bench/groups-cp".parse().expect("name");
    client
        .admin()
        .create_stream(&name, 4)
        .await
        .expect("create");
    let g = client.reader_group("bench", "cp");
    g.create(std::slice::from_ref(&name), &ReaderGroupConfig::default())
        .await
        .expect("group");
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (client, name, stop, written) =
            (client.clone(), name.clone(), stop.clone(), written.clone());
        tokio::spawn(async move {
            let writer = client
                .writer(&name, WriterConfig::default())
                .await
                .expect("writer");
            let payload = bytes::Bytes::from(vec![b'x'; 100]);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                for _ in 0..200 {
                    let key = format!("k{}", i % 64);
                    let _ack = writer.write_event(Some(&key), payload.clone()).await;
                    i += 1;
                }
                written.store(i, Ordering::Relaxed);
            }
            let _ = writer.close().await;
        })
    };
    let mut readers = Vec::new();
    for r in 0..4 {
        let (g, stop) = (g.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut reader = g.reader(&format!("r{r}")).await.expect("join");
            while !stop.load(Ordering::Relaxed) {
                let _ = tokio::time::timeout(Duration::from_millis(50), reader.try_next()).await;
            }
            reader
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let w0 = written.load(Ordering::Relaxed);
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    for i in 0..rounds {
        let name = format!("b{i}");
        let t = Instant::now();
        g.checkpoint(&name).await.expect("checkpoint");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = g.describe().await.expect("describe");
            if info
                .checkpoint(&name)
                .is_some_and(|c| c.state == aquifer_client::CheckpointState::Complete)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "checkpoint {name} never completed"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        h.record(t.elapsed().as_micros() as u64).expect("record");
    }
    let rate = (written.load(Ordering::Relaxed) - w0) as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let _ = r.await.expect("reader").close().await;
    }
    writer.await.expect("writer");
    let ms = |v: u64| v as f64 / 1000.0;
    (
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
        rate,
    )
}

/// Waits until the group's readers are exactly `readers` and every one of
/// `segments` is owned, each reader owning `segments / readers` or one more.
async fn balanced(g: &ReaderGroup, readers: usize, segments: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = g.describe().await.expect("describe");
        let counts: Vec<usize> = info.readers.iter().map(|r| r.segments.len()).collect();
        let even = counts
            .iter()
            .all(|&c| c == segments / readers || c == segments.div_ceil(readers));
        if info.readers.len() == readers && counts.iter().sum::<usize>() == segments && even {
            return;
        }
        assert!(Instant::now() < deadline, "never balanced: {info:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Round trips (ms, p50 and p99) of `n` conditional appends in a row, each
/// at the length the previous one answered.
async fn conditional_appends(client: &Client, n: i64) -> (f64, f64) {
    let name: StreamName = "bench/groups-cond".parse().expect("name");
    let info = client
        .admin()
        .create_stream(&name, 1)
        .await
        .expect("create");
    let writer = client
        .segment_writer(info.segments[0].segment_id, "bench-cond")
        .expect("segment writer");
    let payload = bytes::Bytes::from(vec![b'x'; 100]);
    let mut length = 0;
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    for number in 1..=n {
        let t = Instant::now();
        let done = writer
            .append_conditional(number, length, None, payload.clone())
            .await
            .expect("conditional append");
        h.record(t.elapsed().as_micros() as u64).expect("record");
        length = done.length;
    }
    let ms = |v: u64| v as f64 / 1000.0;
    (ms(h.value_at_quantile(0.5)), ms(h.value_at_quantile(0.99)))
}

/// (join, clean leave, death) rebalance times over an 8-segment stream.
async fn rebalance(client: &Client) -> (Duration, Duration, Duration) {
    let name: StreamName = "bench/groups-balance".parse().expect("name");
    preload(client, &name, 8, 8_000).await;
    let g = client.reader_group("bench", "balance");
    g.create(
        std::slice::from_ref(&name),
        &ReaderGroupConfig::default().reader_timeout(Duration::from_secs(1)),
    )
    .await
    .expect("group");
    // Readers that keep taking events (and so report and release).
    let spawn = |id: &str| {
        let (g, id) = (g.clone(), id.to_string());
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut reader = g.reader(&id).await.expect("join");
            while !s.load(Ordering::Relaxed) {
                let _ = tokio::time::timeout(Duration::from_millis(20), reader.try_next()).await;
            }
            reader
        });
        (stop, task)
    };
    let a = spawn("a");
    let b = spawn("b");
    balanced(&g, 2, 8).await;
    let t = Instant::now();
    let c = spawn("c");
    balanced(&g, 3, 8).await;
    let join = t.elapsed();
    c.0.store(true, Ordering::Relaxed);
    let reader_c = c.1.await.expect("reader");
    let t = Instant::now();
    reader_c.close().await.expect("leave");
    balanced(&g, 2, 8).await;
    let leave = t.elapsed();
    b.0.store(true, Ordering::Relaxed);
    let reader_b = b.1.await.expect("reader");
    let t = Instant::now();
    drop(reader_b); // dies: no leave, no more heartbeats
    balanced(&g, 1, 8).await;
    let death = t.elapsed();
    a.0.store(true, Ordering::Relaxed);
    let _ = a.1.await.expect("reader").close().await;
    (join, leave, death)
}
