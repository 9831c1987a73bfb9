//! The comparison's report as Markdown: the machine's limits, one row per
//! broker for each workload, and Aquifer / peer ratios (the headline
//! figures, then throughput for every max-rate workload).

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::drive::ProduceResult;
use crate::probe::DiskProbe;
use crate::suite::{self, Outcome, Suite, Usage};

/// A broker's outcome: its results, or why it did not run.
pub struct Entry {
    pub name: String,
    /// Marked in every row (e.g. "not durable per ack").
    pub note: Option<String>,
    pub outcome: Result<Suite, String>,
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// p50, p99, p99.9, max in ms.
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

/// The broker's name, with its note.
pub fn label(e: &Entry) -> String {
    match &e.note {
        Some(n) => format!("{} ({n})", e.name),
        None => e.name.clone(),
    }
}

fn usage_cells(u: &Usage, acked_bytes: u64) -> String {
    let rss = u
        .peak_rss_kib
        .map_or("-".into(), |k| format!("{:.0}", k as f64 / 1024.0));
    let amp = if acked_bytes == 0 {
        "-".into()
    } else {
        format!("{:.2}", u.write_bytes as f64 / acked_bytes as f64)
    };
    format!(
        "{:.1} | {:.1} | {rss} | {amp}",
        u.server_cpu_s, u.client_cpu_s
    )
}

fn errors(r: &ProduceResult) -> String {
    match &r.first_error {
        None => "0".into(),
        Some(e) => format!("{} ({})", r.errors, e.replace('|', "/")),
    }
}

fn failed(e: &anyhow::Error) -> String {
    format!("failed: {}", format!("{e:#}").replace('|', "/"))
}

/// Renders the whole report.
pub fn render(entries: &[Entry], disk: &DiskProbe, fs_type: &str) -> String {
    let mut out = String::new();
    let fsync_ms = 1e3 / disk.small_syncs_s_1.max(1e-9);
    let _ = writeln!(
        out,
        "## Machine limits (same run, filesystem of the data dirs: {fs_type})\n\n\
         | probe | result |\n|---|---:|\n\
         | sequential 1 MiB write + fdatasync | {:.1} MB/s |\n\
         | 4 KiB write + fdatasync, 1 thread | {:.0} /s ({fsync_ms:.2} ms each) |\n\
         | 4 KiB write + fdatasync, 16 threads | {:.0} /s |\n",
        disk.seq_mb_s, disk.small_syncs_s_1, disk.small_syncs_s_16
    );
    for e in entries.iter().filter(|e| e.name == "aquifer") {
        let Ok(s) = &e.outcome else { continue };
        for spec in [&suite::A, &suite::H] {
            if let Some(r) = s.done(spec.id) {
                let _ = writeln!(
                    out,
                    "{}: workload {} acked {:.1} MB/s durably = {:.0}% of the sequential fdatasync limit.\n",
                    label(e),
                    spec.id,
                    r.mb_s(),
                    100.0 * r.mb_s() / disk.seq_mb_s.max(1e-9)
                );
            }
        }
    }
    let unavailable: Vec<_> = entries
        .iter()
        .filter_map(|e| e.outcome.as_ref().err().map(|why| (e, why)))
        .collect();
    if !unavailable.is_empty() {
        let _ = writeln!(out, "Unavailable:\n");
        for (e, why) in unavailable {
            let _ = writeln!(out, "- {}: unavailable: {why}", label(e));
        }
        let _ = writeln!(out);
    }

    let _ = writeln!(
        out,
        "## Throughput and ack latency\n\n\
         Workloads (P producers over N partitions: producer i writes partitions i, i + P, ..., a batch to each in turn):\n"
    );
    for spec in suite::PRODUCE {
        let _ = writeln!(out, "- {}", suite::describe(spec));
    }
    let _ = writeln!(
        out,
        "\nAck latency (ms): from the send of a batch (max rate) or the time an event was due (paced) to its \
         acknowledgement; events/s, MB/s and latencies count the events acknowledged inside the measured window. \
         Server CPU and client CPU: seconds over the whole workload (warm-up and drain included); RSS: the server's \
         peak during it (MiB); disk/acked: bytes the server wrote to storage per payload byte acknowledged.\n"
    );
    let _ = writeln!(
        out,
        "| workload | broker | events/s | MB/s | ack p50 | p99 | p99.9 | max | server CPU s | client CPU s | peak RSS | disk/acked | errors |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for spec in suite::PRODUCE {
        for e in entries {
            let Some(p) = e.outcome.as_ref().ok().and_then(|s| s.produced(spec.id)) else {
                continue;
            };
            let workload = suite::label(spec, p.rate);
            let row = match &p.outcome {
                Outcome::Done(r, u) => {
                    let [p50, p99, p999, max] = quantiles(&r.ack_us);
                    format!(
                        "{:.0} | {:.1} | {p50} | {p99} | {p999} | {max} | {} | {}",
                        r.events_s(),
                        r.mb_s(),
                        usage_cells(u, r.total_acked * spec.payload_bytes as u64),
                        errors(r)
                    )
                }
                Outcome::Failed(err) => failed(err),
                Outcome::Skipped(why) => format!("skipped: {why}"),
            };
            let _ = writeln!(out, "| {workload} | {} | {row} |", label(e));
        }
    }

    let _ = writeln!(
        out,
        "\n## End-to-end latency (c: 1 producer, 1 partition, 100 B events due at {:.0}/s, a consumer tailing)\n\n\
         Latency (ms) from the time each event was due to its ack (ack) or to its arrival at the consumer (e2e), \
         for events acknowledged (acked/s) or received (received/s) inside the measured window; a broker that cannot keep up \
         shows the rate it sustained.\n",
        suite::C_RATE
    );
    let _ = writeln!(
        out,
        "| broker | acked/s | received/s | e2e p50 | p99 | p99.9 | max | ack p50 | ack p99 | server CPU s | client CPU s | peak RSS | disk/acked | errors |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for e in entries {
        let Ok(s) = &e.outcome else { continue };
        match &s.c {
            Ok((c, u)) => {
                let [p50, p99, p999, max] = quantiles(&c.e2e_us);
                let [a50, a99, _, _] = quantiles(&c.produce.ack_us);
                let mut errs = errors(&c.produce);
                if let Some(ce) = &c.consumer_error {
                    errs.push_str(&format!("; consumer: {}", ce.replace('|', "/")));
                }
                let _ = writeln!(
                    out,
                    "| {} | {:.0} | {:.0} | {p50} | {p99} | {p999} | {max} | {a50} | {a99} | {} | {errs} |",
                    label(e),
                    c.produce.events_s(),
                    c.received as f64 / c.produce.secs,
                    usage_cells(u, c.produce.total_acked * suite::C_PAYLOAD as u64),
                );
            }
            Err(err) => {
                let _ = writeln!(out, "| {} | {} |", label(e), failed(err));
            }
        }
    }

    let _ = writeln!(
        out,
        "\n## Catch-up (d: one consumer of all {} partitions of a, from the first event)\n",
        suite::A.partitions
    );
    let _ = writeln!(
        out,
        "| broker | MB/s | events/s | bytes read | seconds | server CPU s | client CPU s | peak RSS |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for e in entries {
        let Ok(s) = &e.outcome else { continue };
        match &s.d {
            Ok((d, u)) => {
                let rss = u
                    .peak_rss_kib
                    .map_or("-".into(), |k| format!("{:.0}", k as f64 / 1024.0));
                let _ = writeln!(
                    out,
                    "| {} | {:.1} | {:.0} | {} | {:.2} | {:.1} | {:.1} | {rss} |",
                    label(e),
                    d.mb_s(),
                    d.events as f64 / d.took.as_secs_f64().max(1e-9),
                    d.bytes,
                    d.took.as_secs_f64(),
                    u.server_cpu_s,
                    u.client_cpu_s
                );
            }
            Err(err) => {
                let _ = writeln!(out, "| {} | {} |", label(e), failed(err));
            }
        }
    }
    many(&mut out, entries);
    ratios(&mut out, entries);
    out
}

/// Server CPU per event acknowledged, µs.
fn cpu_us_per_event(r: &ProduceResult, u: &Usage) -> Option<f64> {
    (r.total_acked > 0).then(|| u.server_cpu_s * 1e6 / r.total_acked as f64)
}

/// The k section: many small writers.
fn many(out: &mut String, entries: &[Entry]) {
    let _ = writeln!(
        out,
        "\n## Many small writers (k: {} B events, {:.0} events/s per writer, each writer its own producer over {} partitions)\n\n\
         Each writer is its own producer: its own connection (and, for Aquifer, its own writer id), as far as the \
         open-file limit allows; past it writers share connections (the connections column says how many there \
         were). Latency from the time each event was due to its ack; writers are spread evenly over the \
         {:.0} ms between their events. Server CPU per event: the server's CPU over the whole workload \
         (warm-up, start-up of the connections and drain included) per event acknowledged.\n",
        suite::K_PAYLOAD,
        suite::K_RATE,
        suite::K_PARTITIONS,
        1e3 / suite::K_RATE
    );
    let _ = writeln!(
        out,
        "| writers | broker | connections | acked/s | ack p50 | p99 | p99.9 | max | server CPU µs/event | server CPU s | client CPU s | peak RSS | disk/acked | errors |"
    );
    let _ = writeln!(
        out,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for writers in suite::K_WRITERS {
        for e in entries {
            let Ok(s) = &e.outcome else { continue };
            let Some((_, result)) = s.k.iter().find(|(w, _)| *w == writers) else {
                continue;
            };
            let row = match result {
                Ok((r, u)) => {
                    let [p50, p99, p999, max] = quantiles(&r.ack_us);
                    let per_event =
                        cpu_us_per_event(r, u).map_or("-".into(), |c| format!("{c:.1}"));
                    format!(
                        "{} | {:.0} | {p50} | {p99} | {p999} | {max} | {per_event} | {} | {}",
                        r.connections,
                        r.events_s(),
                        usage_cells(u, r.total_acked * suite::K_PAYLOAD as u64),
                        errors(r)
                    )
                }
                Err(err) => failed(err),
            };
            let _ = writeln!(out, "| {writers} | {} | {row} |", label(e));
        }
    }
    for e in entries {
        let Ok(s) = &e.outcome else { continue };
        if s.writer_ids.is_empty() {
            continue;
        }
        let seen: Vec<String> = s
            .writer_ids
            .iter()
            .map(|(when, ids)| format!("{ids} {when}"))
            .collect();
        let _ = writeln!(
            out,
            "\n{}: writer ids in the dedup table (all containers): {}.",
            label(e),
            seen.join(", ")
        );
    }
}

/// The figures the headline ratio table compares, if the workload ran.
struct Key {
    a_events_s: Option<f64>,
    b_events_s: Option<f64>,
    a_ack_p99: Option<f64>,
    c_ack_p99: Option<f64>,
    c_e2e_p99: Option<f64>,
    d_mb_s: Option<f64>,
    j_ack_p99: Option<f64>,
    /// k's ack p99 and server CPU per event, by `suite::K_WRITERS`.
    k_ack_p99: Vec<Option<f64>>,
    k_cpu: Vec<Option<f64>>,
}

fn p99(h: &Histogram<u64>) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(0.99) as f64)
}

fn key(s: &Suite) -> Key {
    let events_s = |id| s.done(id).map(ProduceResult::events_s);
    let ack_p99 = |id| s.done(id).and_then(|r| p99(&r.ack_us));
    Key {
        a_events_s: events_s(suite::A.id),
        b_events_s: events_s(suite::B.id),
        a_ack_p99: ack_p99(suite::A.id),
        c_ack_p99: s.c.as_ref().ok().and_then(|(c, _)| p99(&c.produce.ack_us)),
        c_e2e_p99: s.c.as_ref().ok().and_then(|(c, _)| p99(&c.e2e_us)),
        d_mb_s: s.d.as_ref().ok().map(|(d, _)| d.mb_s()),
        j_ack_p99: ack_p99(suite::J.id),
        k_ack_p99: k_figure(s, |r, _| p99(&r.ack_us)),
        k_cpu: k_figure(s, cpu_us_per_event),
    }
}

/// `f` of each k run, in `suite::K_WRITERS` order.
fn k_figure(s: &Suite, f: impl Fn(&ProduceResult, &Usage) -> Option<f64>) -> Vec<Option<f64>> {
    suite::K_WRITERS
        .iter()
        .map(|w| {
            s.k.iter()
                .find(|(n, _)| n == w)
                .and_then(|(_, r)| r.as_ref().ok())
                .and_then(|(r, u)| f(r, u))
        })
        .collect()
}

fn ratio(ours: Option<f64>, theirs: Option<f64>) -> String {
    match (ours, theirs) {
        (Some(o), Some(t)) if t > 0.0 => format!("{:.2}×", o / t),
        _ => "-".into(),
    }
}

fn ratios(out: &mut String, entries: &[Entry]) {
    let Some(Ok(ours)) = entries
        .first()
        .filter(|e| e.name == "aquifer")
        .map(|e| e.outcome.as_ref())
    else {
        return;
    };
    let peers: Vec<(String, Option<&Suite>)> = entries
        .iter()
        .skip(1)
        .map(|e| (label(e), e.outcome.as_ref().ok()))
        .collect();
    if peers.is_empty() {
        return;
    }
    let mine = key(ours);
    let _ = writeln!(
        out,
        "\n## Aquifer / peer\n\n\
         Throughput and catch-up: above 1× Aquifer is faster. Latency and CPU per event: below 1× Aquifer is \
         lower (j: each broker at half of its own a rate).\n"
    );
    let k_heads: String = suite::K_WRITERS
        .iter()
        .map(|w| format!(" k{w} ack p99 | k{w} CPU/event |"))
        .collect();
    let _ = writeln!(
        out,
        "| peer | a events/s | b events/s | a ack p99 | c ack p99 | c e2e p99 | d catch-up MB/s | j ack p99 |{k_heads}"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|{}",
        "---:|".repeat(2 * suite::K_WRITERS.len())
    );
    for (peer, s) in &peers {
        let Some(s) = s else {
            let _ = writeln!(out, "| {peer} | unavailable | | | | | | |");
            continue;
        };
        let t = key(s);
        let k_cells: String = (0..suite::K_WRITERS.len())
            .map(|i| {
                format!(
                    " {} | {} |",
                    ratio(mine.k_ack_p99[i], t.k_ack_p99[i]),
                    ratio(mine.k_cpu[i], t.k_cpu[i])
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "| {peer} | {} | {} | {} | {} | {} | {} | {} |{k_cells}",
            ratio(mine.a_events_s, t.a_events_s),
            ratio(mine.b_events_s, t.b_events_s),
            ratio(mine.a_ack_p99, t.a_ack_p99),
            ratio(mine.c_ack_p99, t.c_ack_p99),
            ratio(mine.c_e2e_p99, t.c_e2e_p99),
            ratio(mine.d_mb_s, t.d_mb_s),
            ratio(mine.j_ack_p99, t.j_ack_p99),
        );
    }

    let _ = writeln!(
        out,
        "\nThroughput (events/s) of every max-rate workload, Aquifer / peer:\n"
    );
    let names: Vec<&str> = peers.iter().map(|(n, _)| n.as_str()).collect();
    let _ = writeln!(out, "| workload | {} |", names.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(names.len()));
    for spec in suite::PRODUCE.into_iter().filter(|s| s.of_a.is_none()) {
        let events_s = |s: &Suite| s.done(spec.id).map(ProduceResult::events_s);
        let cells: Vec<String> = peers
            .iter()
            .map(|(_, s)| ratio(events_s(ours), s.and_then(events_s)))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} |",
            suite::label(spec, None),
            cells.join(" | ")
        );
    }
}
