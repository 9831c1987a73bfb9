//! What security costs: workloads a (1 KiB events, 4 writers, as fast as
//! acks allow) and c (a tailing reader of 100 B events written at 10,000/s)
//! against a plaintext node and against a node with TLS on the client port
//! and token authentication (every call carries a bearer token, checked and
//! authorized against an ACL), alternating in the same run.
//!
//! ```text
//! cargo bench --bench security -- [--quick] [--write-results]
//! ```
//! `--write-results` writes `benches/RESULTS-security.md`. Target: the
//! secured node keeps ≥ 85 % of the plaintext throughput.

use aquifer_testkit as common;
use aquifer_testkit::workloads;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use aquifer_client::Client;

use aquifer_testkit::bench::{self as args, parse_args, Args};
use common::pki::TestCa;
use common::process::ConnectAs;
use common::{ServerOpts, ServerProcess};
use workloads::{TailResult, Window, WriteLoad, WriteResult};

/// Rounds per deployment: a and c alternate plaintext, secured, plaintext…
const ROUNDS: usize = 3;
const TAIL_RATE: f64 = 10_000.0;
const TOKEN: &str = "bench-writer-token";

fn main() {
    let args = parse_args("security");
    let started = Instant::now();
    let report = args::runtime().block_on(run(&args));
    args::finish(
        "security",
        &args,
        started,
        &report,
        "RESULTS-security.md",
        || {
            format!(
                "{}{report}\n",
                args::results_header(
                    "Security benchmark results",
                    "security",
                    &args,
                    "loopback; node and load generator on this one machine."
                )
            )
        },
    );
}

/// A node with TLS (a test CA) and static-token auth; `bench` may do
/// everything through an ACL grant (not as a superuser, so every call is
/// checked against the ACLs as a real client's would be).
async fn secured(ca: &TestCa, dir: &std::path::Path) -> (ServerProcess, Client) {
    let cert = ca.issue("localhost");
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        format!(
            "bench {}\nroot {}\n",
            aquifer_server::hash_token(TOKEN),
            aquifer_server::hash_token("root")
        ),
    )
    .expect("tokens file");
    let config = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n[auth]\ntokens_file = \"{}\"\nsuperusers = [\"root\"]\n",
        cert.cert_file.display(),
        cert.key_file.display(),
        tokens.display()
    );
    let server = ServerProcess::start(ServerOpts {
        config: Some(config),
        connect_as: ConnectAs {
            ca_file: Some(ca.ca_file.clone()),
            token: Some("root".into()),
        },
        ..ServerOpts::default()
    })
    .await;
    let root = server.client().await;
    for permission in ["create", "write", "read"] {
        root.admin()
            .grant(&aquifer_client::Grant {
                principal: "bench".into(),
                permission: permission.into(),
                resource: "bench".into(),
                key_prefixes: Vec::new(),
            })
            .await
            .expect("grant");
    }
    let client = ConnectAs {
        ca_file: Some(ca.ca_file.clone()),
        token: Some(TOKEN.into()),
    }
    .builder(&server.addr())
    .connect()
    .await
    .expect("connect with TLS and a token");
    (server, client)
}

fn write_load(stream: &str) -> WriteLoad {
    WriteLoad {
        stream: stream.into(),
        segments: 4,
        writers: 4,
        keys_per_writer: 16,
        payload_bytes: 1024,
        rate: None,
        timestamped: false,
    }
}

fn tail_load(stream: &str) -> WriteLoad {
    WriteLoad {
        stream: stream.into(),
        segments: 1,
        writers: 1,
        keys_per_writer: 1,
        payload_bytes: 100,
        rate: Some(TAIL_RATE),
        timestamped: true,
    }
}

#[derive(Default)]
struct Runs {
    a: Vec<WriteResult>,
    c: Vec<TailResult>,
}

async fn run(args: &Args) -> String {
    let window = if args.quick {
        Window {
            warmup: Duration::from_secs(1),
            measure: Duration::from_secs(4),
        }
    } else {
        Window {
            warmup: Duration::from_secs(2),
            measure: Duration::from_secs(12),
        }
    };
    let ca = TestCa::new("bench CA");
    let dir = tempfile::tempdir().expect("temp dir");
    let plain = ServerProcess::start(ServerOpts::default()).await;
    let plain_client = plain.client().await;
    let (_secure, secure_client) = secured(&ca, dir.path()).await;
    let deployments = [
        ("plaintext", &plain_client),
        ("TLS + token", &secure_client),
    ];
    let mut runs: [Runs; 2] = Default::default();
    for round in 0..ROUNDS {
        for (i, (name, client)) in deployments.iter().enumerate() {
            eprintln!("security bench: round {round}: {name}: a. 1 KiB, 4 writers, max");
            let a = workloads::run_write(
                client,
                &write_load(&format!("bench/a-{i}-{round}")),
                window,
                Instant::now(),
            )
            .await;
            runs[i].a.push(a);
        }
        for (i, (name, client)) in deployments.iter().enumerate() {
            eprintln!("security bench: round {round}: {name}: c. tail at {TAIL_RATE} events/s");
            let c =
                workloads::run_tail(client, &tail_load(&format!("bench/c-{i}-{round}")), window)
                    .await;
            runs[i].c.push(c);
        }
    }
    report(&deployments.map(|(n, _)| n), &runs, window)
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn report(names: &[&str; 2], runs: &[Runs; 2], window: Window) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Each workload ran {ROUNDS} times per deployment, alternating plaintext and secured \
         ({:.0} s warm-up, {:.0} s measured each); figures are the mean of the rounds' \
         throughput and the worst round's percentiles.\n",
        window.warmup.as_secs_f64(),
        window.measure.as_secs_f64()
    );
    let _ = writeln!(out, "| workload | deployment | events/s | MB/s | ack p50 ms | ack p99 ms | e2e p50 ms | e2e p99 ms | errors |");
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let mut a_rate = [0.0; 2];
    let mut c_p99 = [0u64; 2];
    for (i, r) in runs.iter().enumerate() {
        let events: Vec<f64> = r.a.iter().map(WriteResult::events_s).collect();
        let mb: Vec<f64> = r.a.iter().map(WriteResult::mb_s).collect();
        a_rate[i] = mean(&events);
        let p = |q: f64| {
            r.a.iter()
                .map(|w| w.ack_us.value_at_quantile(q))
                .max()
                .unwrap_or(0)
        };
        let errors: u64 = r.a.iter().map(|w| w.errors).sum();
        let _ = writeln!(
            out,
            "| a: 1 KiB ×4, max | {} | {:.0} | {:.1} | {} | {} | | | {errors} |",
            names[i],
            a_rate[i],
            mean(&mb),
            ms(p(0.5)),
            ms(p(0.99)),
        );
    }
    for (i, r) in runs.iter().enumerate() {
        let events: Vec<f64> = r.c.iter().map(|t| t.write.events_s()).collect();
        let ack = |q: f64| {
            r.c.iter()
                .map(|t| t.write.ack_us.value_at_quantile(q))
                .max()
                .unwrap_or(0)
        };
        let e2e = |q: f64| {
            r.c.iter()
                .map(|t| t.e2e_us.value_at_quantile(q))
                .max()
                .unwrap_or(0)
        };
        c_p99[i] = e2e(0.99);
        let errors: u64 = r.c.iter().map(|t| t.write.errors).sum();
        let _ = writeln!(
            out,
            "| c: tail, 100 B at {TAIL_RATE:.0}/s | {} | {:.0} | | {} | {} | {} | {} | {errors} |",
            names[i],
            mean(&events),
            ms(ack(0.5)),
            ms(ack(0.99)),
            ms(e2e(0.5)),
            ms(c_p99[i]),
        );
    }
    let ratio = a_rate[1] / a_rate[0].max(1.0);
    let _ = writeln!(
        out,
        "\nSecured / plaintext throughput in a: **{:.0} %** (target ≥ 85 %). Tail e2e p99 in c: \
         {} ms secured vs {} ms plaintext.",
        ratio * 100.0,
        ms(c_p99[1]),
        ms(c_p99[0])
    );
    let rounds: Vec<String> = (0..ROUNDS)
        .map(|k| {
            format!(
                "{:.0} %",
                100.0 * runs[1].a[k].events_s() / runs[0].a[k].events_s().max(1.0)
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "Per round, a secured / plaintext: {}.",
        rounds.join(", ")
    );
    out
}
