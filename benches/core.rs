//! Core benchmarks of one Aquifer node: write throughput and ack latency,
//! latency at a fixed rate, small-event throughput, tail (write → read)
//! latency and peak memory, next to what the disk can do.
//!
//! ```text
//! cargo bench --bench core -- [--quick] [--write-results]
//! ```
//! `--quick` runs ~3 s per workload (a smoke run); `--write-results` also
//! writes `benches/RESULTS.md` with the machine, date, git revision and
//! command. The server is the bench-profile (release) build of `aquifer`,
//! started fresh on loopback with a temporary data dir.

use aquifer_testkit as common;
#[path = "harness/probe.rs"]
mod probe;
use aquifer_testkit::workloads;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use aquifer_testkit::bench::{self as args, command_line, parse_args, Args};
use common::{ServerOpts, ServerProcess};
use workloads::{TailResult, Window, WriteLoad, WriteResult};

const MIB: u64 = 1024 * 1024;
/// The node's memory budgets, set explicitly so the RSS line can name them.
const TAIL_BUFFER_BYTES_MAX: u64 = 256 * MIB;
const CACHE_BYTES_MAX: u64 = 256 * MIB;
/// Rate of the append-with-catch-up-reader workload (g), events/s.
const G_RATE: f64 = 10_000.0;
/// Fixed rate of the tail-latency workload, events/s.
const TAIL_RATE: f64 = 10_000.0;

fn main() {
    let args = parse_args("core");
    let started = Instant::now();
    let report = args::runtime().block_on(run(&args));
    args::finish("core", &args, started, &report, "RESULTS.md", || {
        results_file(&args, &report)
    });
}

async fn run(args: &Args) -> String {
    let (window, probe_each) = if args.quick {
        (
            Window {
                warmup: Duration::from_millis(500),
                measure: Duration::from_secs(3),
            },
            Duration::from_millis(500),
        )
    } else {
        (
            Window {
                warmup: Duration::from_secs(2),
                measure: Duration::from_secs(12),
            },
            Duration::from_secs(2),
        )
    };
    // AQUIFER_BENCH_CONFIG adds top-level TOML lines (experiments only).
    let extra = std::env::var("AQUIFER_BENCH_CONFIG").unwrap_or_default();
    let config = format!(
        "{extra}\ntail_buffer_bytes_max = {TAIL_BUFFER_BYTES_MAX}\ncache_bytes_max = {CACHE_BYTES_MAX}\n"
    );
    let server = ServerProcess::start(ServerOpts::with_config(&config)).await;
    let pid = server.pid().expect("server pid");

    // The disk probe runs on the data dir's filesystem while the node idles.
    let probe_dir: PathBuf = server
        .data_dir()
        .parent()
        .expect("data dir has a parent")
        .to_owned();
    let fs_type = command_line("stat", &["-f", "-c", "%T", &probe_dir.to_string_lossy()]);
    eprintln!("core bench: fdatasync probe in {}", probe_dir.display());
    let disk = tokio::task::spawn_blocking(move || probe::run(&probe_dir, probe_each))
        .await
        .expect("probe task");

    let client = server.client().await;
    let max_1k = WriteLoad {
        stream: "bench/a-max-1k".into(),
        segments: 4,
        writers: 4,
        keys_per_writer: 64,
        payload_bytes: 1024,
        rate: None,
        timestamped: false,
    };
    let base = Instant::now();
    eprintln!("core bench: a. 1 KiB events, 4 writers, max rate");
    let a = workloads::run_write(&client, &max_1k, window, base).await;
    let half = (a.events_s() / 2.0).max(1.0);
    eprintln!("core bench: b. 1 KiB events, 4 writers, {half:.0} events/s");
    let b = workloads::run_write(
        &client,
        &WriteLoad {
            stream: "bench/b-half-1k".into(),
            rate: Some(half),
            ..max_1k.clone()
        },
        window,
        base,
    )
    .await;
    eprintln!("core bench: c. 100 B events, 4 writers, max rate");
    let c = workloads::run_write(
        &client,
        &WriteLoad {
            stream: "bench/c-max-100b".into(),
            payload_bytes: 100,
            ..max_1k.clone()
        },
        window,
        base,
    )
    .await;
    eprintln!("core bench: d. tail latency at {TAIL_RATE} events/s");
    let d = workloads::run_tail(
        &client,
        &WriteLoad {
            stream: "bench/d-tail".into(),
            segments: 1,
            writers: 1,
            keys_per_writer: 1,
            payload_bytes: 100,
            rate: Some(TAIL_RATE),
            timestamped: true,
        },
        window,
    )
    .await;
    // f. Catch-up: the backlog of a, mostly in tier-2 by now, read from the
    // head; then the same range again, now from the block cache.
    eprintln!("core bench: f. catch-up reads of a from the head");
    let catch_up_bytes = CACHE_BYTES_MAX * 3 / 4;
    let f_tier2 = workloads::run_catch_up(&client, "bench/a-max-1k", catch_up_bytes).await;
    let f_cache = workloads::run_catch_up(&client, "bench/a-max-1k", catch_up_bytes).await;
    // g. Append latency at a moderate fixed rate, alone and while a catch-up
    // reader drains the backlog of c from tier-2.
    let g_load = |stream: &str| WriteLoad {
        stream: stream.into(),
        segments: 1,
        writers: 1,
        keys_per_writer: 16,
        payload_bytes: 1024,
        rate: Some(G_RATE),
        timestamped: false,
    };
    eprintln!("core bench: g. 1 KiB at {G_RATE} events/s, alone");
    let g_alone = workloads::run_write(&client, &g_load("bench/g-alone"), window, base).await;
    eprintln!("core bench: g. the same with a catch-up reader of c");
    let reader = {
        let client = client.clone();
        tokio::spawn(
            async move { workloads::run_catch_up(&client, "bench/c-max-100b", u64::MAX).await },
        )
    };
    let g_reader =
        workloads::run_write(&client, &g_load("bench/g-with-reader"), window, base).await;
    reader.abort();
    // h. Tier-2 PUTs per GiB written, 1 segment and 100 segments.
    eprintln!("core bench: h. tier-2 puts per GiB, 1 and 100 segments");
    let h_1 = workloads::run_put_count(
        &client,
        &server.data_dir().join("tier2"),
        "bench/h-1-segment",
        1,
    )
    .await;
    let h_100 = workloads::run_put_count(
        &client,
        &server.data_dir().join("tier2"),
        "bench/h-100-segments",
        100,
    )
    .await;
    // i. Batch scans of a (4 segments) with 1, 2 and 4 readers, through the
    // brokers and direct from tier-2.
    let mut i_scans = Vec::new();
    for direct in [false, true] {
        for readers in [1, 2, 4] {
            eprintln!("core bench: i. scan of a, {readers} readers, direct: {direct}");
            let scan = workloads::run_scan(&client, "bench/a-max-1k", readers, direct).await;
            i_scans.push((readers, direct, scan));
        }
    }
    let rss = proc_status_kib(pid, "VmHWM");
    let rss_now = proc_status_kib(pid, "VmRSS");
    drop(client);
    drop(server);

    report(&Report {
        window,
        disk,
        fs_type,
        a,
        b,
        half,
        c,
        d,
        f_tier2,
        f_cache,
        g_alone,
        g_reader,
        h: [h_1, h_100],
        i_scans,
        rss_hwm_kib: rss,
        rss_now_kib: rss_now,
    })
}

struct Report {
    window: Window,
    disk: probe::DiskProbe,
    fs_type: String,
    a: WriteResult,
    b: WriteResult,
    half: f64,
    c: WriteResult,
    d: TailResult,
    f_tier2: workloads::CatchUp,
    f_cache: workloads::CatchUp,
    g_alone: WriteResult,
    g_reader: WriteResult,
    h: [workloads::PutCount; 2],
    /// (readers, direct, result)
    i_scans: Vec<(usize, bool, workloads::CatchUp)>,
    rss_hwm_kib: Option<u64>,
    rss_now_kib: Option<u64>,
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn quantiles(h: &Histogram<u64>) -> [String; 4] {
    if h.is_empty() {
        return ["-".into(), "-".into(), "-".into(), "-".into()];
    }
    [
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
    ]
}

fn errors(r: &WriteResult) -> String {
    match &r.first_error {
        None => "0".into(),
        Some(e) => format!("{} (first: {e})", r.errors),
    }
}

fn report(r: &Report) -> String {
    let mut out = String::new();
    let fsync_us = 1e6 / r.disk.small_syncs_s_1.max(1e-9);
    let _ = writeln!(
        out,
        "Each workload: {:.1} s warm-up, then {:.1} s measured. Ack latency: \
         write_event call to PendingWrite resolved.\n",
        r.window.warmup.as_secs_f64(),
        r.window.measure.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| workload | events/s | MB/s | ack p50 | ack p99 | ack p99.9 | ack max | vs machine | errors |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|---|");
    let rows: [(String, &WriteResult); 3] = [
        ("a. 1 KiB, 4 writers, 4 segments, max".into(), &r.a),
        (
            format!(
                "b. 1 KiB, 4 writers, fixed {:.0} events/s (half of a)",
                r.half
            ),
            &r.b,
        ),
        ("c. 100 B, 4 writers, 4 segments, max".into(), &r.c),
    ];
    for (name, w) in rows {
        let [p50, p99, p999, max] = quantiles(&w.ack_us);
        let vs = format!(
            "{:.0}% of 1 MiB-fdatasync MB/s; ack p50 = {:.0}× a 4 KiB fdatasync",
            100.0 * w.mb_s() / r.disk.seq_mb_s.max(1e-9),
            if w.ack_us.is_empty() {
                0.0
            } else {
                w.ack_us.value_at_quantile(0.5) as f64 / fsync_us
            }
        );
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {:.1} | {p50} | {p99} | {p999} | {max} | {vs} | {} |",
            w.events_s(),
            w.mb_s(),
            errors(w)
        );
    }

    let d = &r.d;
    let [p50, p99, p999, max] = quantiles(&d.e2e_us);
    let [a50, a99, _, _] = quantiles(&d.write.ack_us);
    let _ = writeln!(
        out,
        "\n| tail workload | sent/s | received in window | write→read p50 | p99 | p99.9 | max | ack p50 | ack p99 | errors |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let _ = writeln!(
        out,
        "| d. 1 writer at {TAIL_RATE:.0} events/s, 100 B, tailing reader | {:.0} | {} of {} | {p50} | {p99} | {p999} | {max} | {a50} | {a99} | {} |",
        d.write.events_s(),
        d.received,
        d.write.events,
        errors(&d.write)
    );

    let kib = |v: Option<u64>| v.map_or("-".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0));
    let _ = writeln!(
        out,
        "\n| memory | peak RSS (VmHWM) | RSS at end | memory budget (tail buffers + cache + containers × in-flight) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|");
    let _ = writeln!(
        out,
        "| e. server after a-h | {} | {} | {} MiB |",
        kib(r.rss_hwm_kib),
        kib(r.rss_now_kib),
        aquifer_server::ServerConfig {
            tail_buffer_bytes_max: TAIL_BUFFER_BYTES_MAX,
            cache_bytes_max: CACHE_BYTES_MAX,
            ..Default::default()
        }
        .memory_budget_bytes()
            / MIB
    );

    let _ = writeln!(
        out,
        "\n| catch-up read (1 reader, 4 segments, from the head of a) | MB/s | events/s | bytes |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for (label, f) in [
        (
            "f. first pass: tier-2 (local filesystem) through the read path",
            &r.f_tier2,
        ),
        ("f. same range again: block cache", &r.f_cache),
    ] {
        let _ = writeln!(
            out,
            "| {label} | {:.1} | {:.0} | {} |",
            f.mb_s(),
            f.events as f64 / f.took.as_secs_f64().max(1e-9),
            f.bytes
        );
    }

    let _ = writeln!(
        out,
        "\n| append with a catch-up reader (1 KiB, 1 writer, {G_RATE} events/s) | ack p50 | ack p99 | ack p99.9 | ack max |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for (label, g) in [
        ("g. alone", &r.g_alone),
        ("g. while a reader catches up on c from tier-2", &r.g_reader),
    ] {
        let h = &g.ack_us;
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} |",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max())
        );
    }
    let _ = writeln!(out, "\n| tier-2 puts (default chunk_bytes, flush interval) | bytes written | chunk objects | PUTs per GiB |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for (label, h) in [("h. 1 segment", &r.h[0]), ("h. 100 segments", &r.h[1])] {
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {:.0} |",
            h.bytes,
            h.objects,
            h.objects as f64 / (h.bytes as f64 / (1u64 << 30) as f64)
        );
    }

    let _ = writeln!(
        out,
        "\n| i. batch scan of a (4 segments, whole stream) | readers | MB/s | speed-up vs 1 reader |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for (readers, direct, scan) in &r.i_scans {
        let one = r
            .i_scans
            .iter()
            .find(|(n, d, _)| *n == 1 && d == direct)
            .map_or(1.0, |(_, _, s)| s.mb_s());
        let how = if *direct {
            "direct from tier-2"
        } else {
            "through the broker"
        };
        let _ = writeln!(
            out,
            "| {how} | {readers} | {:.1} | {:.2}× |",
            scan.mb_s(),
            scan.mb_s() / one.max(1e-9)
        );
    }

    let _ = writeln!(
        out,
        "\n| disk probe ({}) | 1 MiB write + fdatasync | 4 KiB write + fdatasync, 1 thread | same, 16 threads |",
        r.fs_type
    );
    let _ = writeln!(out, "|---|---:|---:|---:|");
    let _ = writeln!(
        out,
        "| data dir's filesystem | {:.1} MB/s | {:.0} /s ({:.2} ms each) | {:.0} /s |",
        r.disk.seq_mb_s,
        r.disk.small_syncs_s_1,
        fsync_us / 1000.0,
        r.disk.small_syncs_s_16
    );
    out
}

fn results_file(args: &Args, report: &str) -> String {
    let cpu = args::cpu_model();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = args::load_average();
    let date = command_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]);
    let dir = env!("CARGO_MANIFEST_DIR");
    let rev = command_line("git", &["-C", dir, "rev-parse", "--short", "HEAD"]);
    let dirty = !command_line("git", &["-C", dir, "status", "--porcelain"]).is_empty();
    let mut command = String::from("cargo bench --bench core --");
    if args.quick {
        command.push_str(" --quick");
    }
    command.push_str(" --write-results");
    format!(
        "# Aquifer benchmark results\n\n\
         Aquifer side by side with Redis Streams, NATS JetStream and Kafka: \
         [RESULTS-peers.md](RESULTS-peers.md) (`cargo bench --bench compare`). \
         A 3-node cluster next to a single node (throughput, ack latency at half \
         load, failover time): [RESULTS-cluster.md](RESULTS-cluster.md) \
         (`cargo bench --bench cluster`).\n\n\
         Written by `{command}` (benches/core.rs). One node, release build, \
         loopback, fresh temporary data dir; client and server share the machine.\n\n\
         - machine: {cpu}, {nproc} CPUs (load average at the end: {load})\n\
         - date: {date}\n\
         - git: {rev}{}\n\
         - command: `{command}`\n\n\
         {report}",
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        }
    )
}

/// A `kB` field of /proc/PID/status, in KiB.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(&format!("{field}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
