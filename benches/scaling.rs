//! Scaling benchmarks, one node on loopback, all in one run:
//! - scale-up reaction time: from a step to 8x an events/s target on a
//!   1-segment stream to the first write acknowledged by a successor, with
//!   test windows (0.5 to 4 s) and with the production windows (2 to 20 min,
//!   5 s ticks; the segment older than its cooldown);
//! - the largest gap between acks while a segment splits at half load;
//! - write throughput of a stream created with 1 segment, before and after
//!   it is scaled to 4.
//!
//! ```text
//! cargo bench --bench scaling -- [--quick] [--write-results]
//! ```
//! `--quick` skips the production-window run (about 90 s).
//! `--write-results` writes `benches/RESULTS-scaling.md`.

use aquifer_testkit as common;
use aquifer_testkit::workloads;

use std::time::{Duration, Instant};

use aquifer_client::{Scale, ScalingPolicy, StreamName, WriterConfig};
use futures::stream::{FuturesUnordered, StreamExt};

use aquifer_testkit::bench::{self as args, parse_args, Args};
use common::{ServerOpts, ServerProcess};
use workloads::{Window, WriteLoad};

/// The events/s target of the reaction runs, and the load stepped to.
const TARGET: u64 = 1_000;
const STEP: u64 = 8 * TARGET;
const KEYS: usize = 64;

fn main() {
    let args = parse_args("scaling");
    let started = Instant::now();
    let report = args::runtime().block_on(run(&args));
    args::finish(
        "scaling",
        &args,
        started,
        &report,
        "RESULTS-scaling.md",
        || {
            format!(
                "{}{report}\n",
                args::results_header(
                    "Scaling benchmark results",
                    "scaling",
                    &args,
                    "one node on loopback."
                )
            )
        },
    );
}

async fn run(args: &Args) -> String {
    let mut out = String::from("| figure | value |\n|---|---:|\n");
    let test_windows =
        "[scaling]\ntick_ms = 100\nwindows_ms = [500, 1000, 2000, 4000]\ncooldown_ms = 1000\n";
    let reaction = react(test_windows, "bench/react-test").await;
    out += &format!(
        "| scale-up reaction, test windows (0.5/1/2/4 s, 100 ms ticks) | {reaction:.2} s |\n"
    );
    if args.quick {
        out += "| scale-up reaction, production windows (2/5/10/20 min, 5 s ticks) | skipped (--quick) |\n";
    } else {
        // Cooldown 0: the segment has been around longer than its cooldown.
        let production = "[scaling]\ntick_ms = 5000\ncooldown_ms = 0\n";
        let reaction = react(production, "bench/react-prod").await;
        out += &format!("| scale-up reaction, production windows (2/5/10/20 min, 5 s ticks) | {reaction:.1} s |\n");
    }
    let (max, rate, gap, p99) = gap_during_split().await;
    out += &format!(
        "| 1 KiB, 1 writer, max on 2 segments | {max:.0} events/s |\n\
         | largest gap between acks while a segment splits, at half load ({rate:.0} events/s) | {:.0} ms |\n\
         | ack p99 over that run | {:.1} ms |\n",
        gap.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0
    );
    let (one, four) = throughput_before_after().await;
    out += &format!(
        "| 1 KiB, 4 writers, stream created with 1 segment | {one:.1} MB/s |\n\
         | the same stream after scaling to 4 segments | {four:.1} MB/s ({:.2}x) |\n",
        four / one
    );
    out
}

/// Seconds from a step to `STEP` events/s on a 1-segment stream with an
/// events/s policy to the first ack from a successor.
async fn react(config: &str, stream: &str) -> f64 {
    let server = ServerProcess::start(ServerOpts::with_config(config)).await;
    let client = server.client().await;
    let name: StreamName = stream.parse().expect("name");
    let policy = ScalingPolicy::events_per_second(TARGET).scale_factor(2);
    let info = client
        .admin()
        .create_stream_with(&name, 1, Default::default(), policy)
        .await
        .expect("create");
    let first = info.segments[0].segment_id;
    let writer = client
        .writer(&name, WriterConfig::default())
        .await
        .expect("writer");
    eprintln!("scaling bench: {stream}: stepping to {STEP} events/s");
    let step = Instant::now();
    let deadline = step + Duration::from_secs(600);
    let mut acks = FuturesUnordered::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let due = (step.elapsed().as_secs_f64() * STEP as f64) as u64;
                while sent < due {
                    let key = format!("k{}", sent % KEYS as u64);
                    let p = writer.write_event(Some(&key), vec![b'x'; 100]).await.expect("queued");
                    acks.push(p);
                    sent += 1;
                }
            }
            Some(ack) = acks.next() => {
                let ack = ack.expect("acknowledged");
                if ack.segment_id != first {
                    return step.elapsed().as_secs_f64();
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{stream}: no successor took writes in 10 minutes"
        );
    }
}

/// 1 KiB events as fast as acks allow from `writers` writers on `stream`
/// (created with `segments`), measured for `secs` after a 1 s warm-up.
fn max_load(stream: &str, segments: u32, writers: usize, secs: u64) -> (WriteLoad, Window) {
    let load = WriteLoad {
        stream: stream.into(),
        segments,
        writers,
        keys_per_writer: KEYS,
        payload_bytes: 1024,
        rate: None,
        timestamped: false,
    };
    let window = Window {
        warmup: Duration::from_secs(1),
        measure: Duration::from_secs(secs),
    };
    (load, window)
}

/// Max rate on a 2-segment stream, then half of it while segment 0 splits:
/// (max events/s, the half rate, the largest gap between consecutive acks,
/// ack p99).
async fn gap_during_split() -> (f64, f64, Duration, Duration) {
    let server = ServerProcess::start(ServerOpts::default()).await;
    let client = server.client().await;
    let (load, window) = max_load("bench/gap-max", 2, 1, 4);
    eprintln!("scaling bench: max rate on 2 segments");
    let max = workloads::run_write(&client, &load, window, Instant::now())
        .await
        .events_s();
    let rate = max / 2.0;
    let name: StreamName = "bench/gap".parse().expect("name");
    let info = client
        .admin()
        .create_stream(&name, 2)
        .await
        .expect("create");
    let target = info.segments[0].segment_id;
    let writer = client
        .writer(&name, WriterConfig::default())
        .await
        .expect("writer");
    eprintln!("scaling bench: {rate:.0} events/s, splitting after 2 s");
    let start = Instant::now();
    let run = Duration::from_secs(6);
    let mut acks = FuturesUnordered::new();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut sent = 0u64;
    let mut last_ack = start;
    let mut gap = Duration::ZERO;
    let mut latency = workloads::histogram();
    let admin = client.admin();
    let mut split = Some(Box::pin(async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        admin
            .scale_stream(&name, &Scale::default().split(target, 2))
            .await
    }));
    while start.elapsed() < run || !acks.is_empty() {
        tokio::select! {
            _ = tick.tick(), if start.elapsed() < run => {
                let due = (start.elapsed().as_secs_f64() * rate) as u64;
                while sent < due {
                    let key = format!("k{}", sent % KEYS as u64);
                    let at = Instant::now();
                    let p = writer.write_event(Some(&key), vec![b'x'; 1024]).await.expect("queued");
                    acks.push(async move { (at, p.await) });
                    sent += 1;
                }
            }
            Some((at, ack)) = acks.next() => {
                ack.expect("acknowledged");
                let now = Instant::now();
                gap = gap.max(now - last_ack);
                last_ack = now;
                let _ = latency.record((now - at).as_micros() as u64);
            }
            done = async { split.as_mut().expect("pending split").await }, if split.is_some() => {
                done.expect("split");
                split = None;
            }
        }
    }
    let p99 = Duration::from_micros(latency.value_at_quantile(0.99));
    (max, rate, gap, p99)
}

/// MB/s of 4 writers (1 KiB) on a stream created with 1 segment, then on
/// the same stream after two scales made it 4.
async fn throughput_before_after() -> (f64, f64) {
    let server = ServerProcess::start(ServerOpts::default()).await;
    let client = server.client().await;
    let (load, window) = max_load("bench/grow", 1, 4, 5);
    eprintln!("scaling bench: 1 segment");
    let one = workloads::run_write(&client, &load, window, Instant::now())
        .await
        .mb_s();
    let name: StreamName = load.stream.parse().expect("name");
    let admin = client.admin();
    let first = admin
        .describe_stream(&name)
        .await
        .expect("describe")
        .segments[0]
        .segment_id;
    let halves = admin
        .scale_stream(&name, &Scale::default().split(first, 2))
        .await
        .expect("split in 2");
    let active: Vec<u64> = halves.active_segments().map(|s| s.segment_id).collect();
    let quarters = active
        .iter()
        .fold(Scale::default(), |scale, &id| scale.split(id, 2));
    let four = admin
        .scale_stream(&name, &quarters)
        .await
        .expect("split in 4");
    assert_eq!(four.active_segments().count(), 4);
    eprintln!("scaling bench: 4 segments");
    let four = workloads::run_write(&client, &load, window, Instant::now())
        .await
        .mb_s();
    (one, four)
}
