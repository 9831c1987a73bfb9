//! The standard suite, run the same way against each broker: what each
//! workload is (sizes, producers, partitions, batching, rates, windows) and
//! the server-side cost of each (CPU seconds, peak RSS, disk bytes written)
//! read from /proc around it.
//!
//! Order per broker, in the plan's long window: a (1 KiB max rate), d
//! (catch-up read of a's backlog), b (100 B max rate), c (tail latency at a
//! fixed rate); then, in its short window, the rest of the event size ×
//! producers × partitions matrix at max rate (e–i: 100 B, 1 KiB and 64 KiB
//! from 1 producer, 64 KiB from 4, 1 KiB from 4 over 16 partitions) and j
//! (a's load paced at half the rate the broker just reached in a).

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;

use crate::broker::{self, Broker, ProcSample};
use crate::drive::{self, CatchUp, Load, ProduceResult, TailResult};
use crate::workloads::Window;

/// A produce workload: `producers` producers over `partitions` partitions
/// (producer i writes partitions i, i + producers, ...), each keeping at
/// most `depth` batches of at most `batch_max` events in flight.
#[derive(Debug)]
pub struct Spec {
    /// Its letter in the report.
    pub id: &'static str,
    pub payload_bytes: usize,
    pub producers: u32,
    pub partitions: u32,
    pub batch_max: usize,
    pub depth: usize,
    /// None: as fast as acks allow; Some(f): paced at f × the events/s the
    /// same broker reached in a.
    pub of_a: Option<f64>,
    /// Runs in the plan's long window (a, b), not its short one.
    pub long: bool,
}

impl Spec {
    /// Its topic (a fresh one per workload).
    pub fn topic(&self) -> String {
        format!("{}-{}b", self.id, self.payload_bytes)
    }
}

const KIB: usize = 1024;

/// a: 1 KiB events, batches of up to 64 (64 KiB), 8 in flight per producer.
pub const A: Spec = Spec {
    id: "a",
    payload_bytes: KIB,
    producers: 4,
    partitions: 4,
    batch_max: 64,
    depth: 8,
    of_a: None,
    long: true,
};
/// b: 100 B events, batches of up to 1,024 (100 KiB), 8 in flight.
pub const B: Spec = Spec {
    id: "b",
    payload_bytes: 100,
    batch_max: 1024,
    ..A
};
/// e: b from one producer.
pub const E: Spec = Spec {
    id: "e",
    producers: 1,
    partitions: 1,
    long: false,
    ..B
};
/// f: a from one producer.
pub const F: Spec = Spec {
    id: "f",
    producers: 1,
    partitions: 1,
    long: false,
    ..A
};
/// g: 64 KiB events from one producer, batches of up to 8 (512 KiB), 4 in
/// flight (2 MiB).
pub const G: Spec = Spec {
    id: "g",
    payload_bytes: 64 * KIB,
    batch_max: 8,
    depth: 4,
    ..F
};
/// h: g from 4 producers, one partition each.
pub const H: Spec = Spec {
    id: "h",
    producers: 4,
    partitions: 4,
    ..G
};
/// i: a's producers over 16 partitions, 4 each.
pub const I: Spec = Spec {
    id: "i",
    partitions: 16,
    long: false,
    ..A
};
/// j: a paced at half of a's events/s.
pub const J: Spec = Spec {
    id: "j",
    of_a: Some(0.5),
    long: false,
    ..A
};
/// The produce workloads in the report's order.
pub const PRODUCE: [&Spec; 8] = [&A, &B, &E, &F, &G, &H, &I, &J];

/// c: one producer on one partition at this rate, 100 B events, up to
/// 4 sends in flight; events due while all 4 wait go out together.
pub const C_RATE: f64 = 10_000.0;
pub const C_PAYLOAD: usize = 100;
pub const C_DEPTH: usize = 4;
pub const C_BATCH: usize = 1024;

/// k: many small writers (Pravega's IoT case), each its own producer
/// (connection and writer id) over `K_PARTITIONS` partitions, `K_RATE`
/// events/s each, events of `K_PAYLOAD` bytes, up to `K_DEPTH` sends in
/// flight; events due while all wait go out together (up to `K_BATCH`).
pub const K_WRITERS: [u32; 2] = [1_000, 10_000];
pub const K_RATE: f64 = 10.0;
pub const K_PAYLOAD: usize = 100;
pub const K_PARTITIONS: u32 = 16;
pub const K_DEPTH: usize = 4;
pub const K_BATCH: usize = 16;

/// The k workload of `writers` writers.
pub fn k_load(writers: u32) -> Load {
    Load {
        topic: format!("k-{writers}"),
        producers: writers,
        partitions: K_PARTITIONS,
        payload_bytes: K_PAYLOAD,
        batch_max: K_BATCH,
        depth: K_DEPTH,
        rate: Some(K_RATE * f64::from(writers)),
        timestamped: false,
    }
}

/// Why a plan skips a workload.
pub const SKIP_WHY: &str = "one fsync per message";

/// How long each workload runs, how much backlog d reads, what is skipped.
#[derive(Debug, Clone)]
pub struct Plan {
    /// a, b, c, d.
    pub window: Window,
    /// e–j.
    pub short: Window,
    /// k (longer warm-up: thousands of writers settle).
    pub many: Window,
    pub catch_up_bytes_max: u64,
    /// Produce workloads left out (for `SKIP_WHY`).
    pub skip: &'static [&'static str],
    /// Only these workloads run (by letter; `--workloads`), if set.
    pub only: Option<Vec<String>>,
}

impl Plan {
    /// Whether workload `id` runs.
    pub fn runs(&self, id: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.iter().any(|w| w == id))
    }
}

/// What a workload left out by `--workloads` holds.
fn not_run() -> anyhow::Error {
    anyhow!("not run (--workloads)")
}

/// A workload's cost to the broker's server process (and to the load
/// generator, which shares the machine).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub server_cpu_s: f64,
    pub client_cpu_s: f64,
    /// Peak RSS during the workload (or of the process's life, if the
    /// kernel refused to reset the peak).
    pub peak_rss_kib: Option<u64>,
    pub write_bytes: u64,
}

/// How a produce workload went.
pub enum Outcome {
    Done(Box<ProduceResult>, Usage),
    Failed(anyhow::Error),
    Skipped(&'static str),
}

/// One produce workload of a broker.
pub struct Produced {
    pub spec: &'static Spec,
    /// The events/s (over all producers) a paced workload was due at.
    pub rate: Option<f64>,
    pub outcome: Outcome,
}

impl Produced {
    /// Its results, if it ran.
    pub fn done(&self) -> Option<&ProduceResult> {
        match &self.outcome {
            Outcome::Done(r, _) => Some(r),
            _ => None,
        }
    }
}

/// One broker's results; a workload that could not run holds its error.
pub struct Suite {
    /// In the order they ran.
    pub produce: Vec<Produced>,
    pub d: Result<(CatchUp, Usage)>,
    pub c: Result<(TailResult, Usage)>,
    /// k, by number of writers (`K_WRITERS`).
    pub k: Vec<(u32, Result<(ProduceResult, Usage)>)>,
    /// The broker's writer-id table after each k run, then once idle ids
    /// expired (when, the wait), if it has one.
    pub writer_ids: Vec<(String, u64)>,
}

impl Suite {
    /// Produce workload `id`.
    pub fn produced(&self, id: &str) -> Option<&Produced> {
        self.produce.iter().find(|p| p.spec.id == id)
    }

    /// The results of produce workload `id`, if it ran.
    pub fn done(&self, id: &str) -> Option<&ProduceResult> {
        self.produced(id).and_then(Produced::done)
    }

    /// The ack latency of every workload that measures one, in letter
    /// order (c's of its producer); None where it did not run.
    pub fn ack_latencies(&self) -> Vec<(&'static str, Option<&Histogram<u64>>)> {
        let c = ("c", self.c.as_ref().ok().map(|(c, _)| &c.produce.ack_us));
        let mut all: Vec<_> = self
            .produce
            .iter()
            .map(|p| (p.spec.id, p.done().map(|r| &r.ack_us)))
            .collect();
        all.push(c);
        all.sort_by_key(|(id, _)| *id);
        all
    }
}

fn size(bytes: usize) -> String {
    if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} B")
    }
}

/// "1 producer", "4 producers".
fn count(n: u32, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// A produce workload in a few words ("i. 1 KiB, 4 producers, 16
/// partitions"), with the rate it was paced at.
pub fn label(spec: &Spec, rate: Option<f64>) -> String {
    let mut s = format!(
        "{}. {}, {}",
        spec.id,
        size(spec.payload_bytes),
        count(spec.producers, "producer")
    );
    if spec.partitions != spec.producers {
        s.push_str(&format!(", {}", count(spec.partitions, "partition")));
    }
    match (spec.of_a, rate) {
        (Some(f), Some(r)) => s.push_str(&format!(", {r:.0}/s ({:.0} % of a)", f * 100.0)),
        (Some(f), None) => s.push_str(&format!(", at {:.0} % of a", f * 100.0)),
        (None, _) => s.push_str(", max"),
    }
    s
}

/// A produce workload's shape in one sentence, for the report's legend.
pub fn describe(spec: &Spec) -> String {
    let pace = match spec.of_a {
        None => "as fast as acks allow".to_owned(),
        Some(f) => format!(
            "paced at {:.0} % of the events/s the same broker reached in a",
            f * 100.0
        ),
    };
    format!(
        "{}: {} events, {} over {}, batches of up to {} ({}), {} in flight per producer, {pace}",
        spec.id,
        size(spec.payload_bytes),
        count(spec.producers, "producer"),
        count(spec.partitions, "partition"),
        spec.batch_max,
        size(spec.batch_max * spec.payload_bytes),
        spec.depth,
    )
}

/// Runs `f` and reads the server's counters around it.
async fn measured<T, F: Future<Output = Result<T>>>(pid: u32, f: F) -> Result<(T, Usage)> {
    broker::reset_peak_rss(pid);
    let (server0, client0) = (ProcSample::read(pid), ProcSample::read(std::process::id()));
    let out = f.await?;
    let (server1, client1) = (ProcSample::read(pid), ProcSample::read(std::process::id()));
    Ok((
        out,
        Usage {
            server_cpu_s: server1.cpu_s - server0.cpu_s,
            client_cpu_s: client1.cpu_s - client0.cpu_s,
            peak_rss_kib: broker::proc_status_kib(pid, "VmHWM"),
            write_bytes: server1.write_bytes.saturating_sub(server0.write_bytes),
        },
    ))
}

/// Runs produce workload `spec` on a fresh topic, unless `plan` skips it;
/// `a_events_s` is the broker's a, which paced workloads need.
async fn produce<B: Broker>(
    name: &str,
    broker: &B,
    spec: &'static Spec,
    plan: &Plan,
    a_events_s: Option<f64>,
    base: Instant,
) -> Produced {
    let rate = spec.of_a.and_then(|f| a_events_s.map(|r| f * r));
    let produced = |outcome| Produced {
        spec,
        rate,
        outcome,
    };
    if !plan.runs(spec.id) {
        return produced(Outcome::Failed(not_run()));
    }
    eprintln!("compare: {name}: {}", label(spec, rate));
    if plan.skip.contains(&spec.id) {
        return produced(Outcome::Skipped(SKIP_WHY));
    }
    if spec.of_a.is_some() && !rate.is_some_and(|r| r > 0.0) {
        return produced(Outcome::Failed(anyhow!(
            "no rate: a did not run or acknowledged nothing"
        )));
    }
    let load = Load {
        topic: spec.topic(),
        producers: spec.producers,
        partitions: spec.partitions,
        payload_bytes: spec.payload_bytes,
        batch_max: spec.batch_max,
        depth: spec.depth,
        rate,
        timestamped: false,
    };
    let window = if spec.long { plan.window } else { plan.short };
    let result = measured(broker.pid(), async {
        broker.create(&load.topic, load.partitions).await?;
        Ok(drive::produce(broker, &load, window, base).await)
    })
    .await;
    produced(match result {
        Ok((r, u)) => Outcome::Done(Box::new(r), u),
        Err(e) => Outcome::Failed(e),
    })
}

/// Runs the suite on `broker`, reporting progress on stderr as `name`.
pub async fn run<B: Broker>(name: &str, broker: &B, plan: Plan) -> Suite {
    let pid = broker.pid();
    let base = Instant::now();
    let step = |what: &str| eprintln!("compare: {name}: {what}");

    let a = produce(name, broker, &A, &plan, None, base).await;
    let a_events_s = a.done().map(ProduceResult::events_s);

    let d = match a.done() {
        _ if !plan.runs("d") => Err(not_run()),
        Some(a) => {
            step("d. catch-up read of a's backlog");
            let events = (plan.catch_up_bytes_max / A.payload_bytes as u64).min(a.total_acked);
            measured(
                pid,
                drive::catch_up(broker, &A.topic(), A.partitions, events),
            )
            .await
        }
        None => Err(anyhow!("no backlog: a did not run")),
    };

    let b = produce(name, broker, &B, &plan, a_events_s, base).await;

    let c_load = Load {
        topic: "c-tail".into(),
        producers: 1,
        partitions: 1,
        payload_bytes: C_PAYLOAD,
        batch_max: C_BATCH,
        depth: C_DEPTH,
        rate: Some(C_RATE),
        timestamped: true,
    };
    let c = if plan.runs("c") {
        step("c. tail latency at 10,000 events/s");
        measured(pid, drive::tail(broker, &c_load, plan.window)).await
    } else {
        Err(not_run())
    };

    let mut all = vec![a, b];
    for spec in PRODUCE.into_iter().filter(|s| !s.long) {
        all.push(produce(name, broker, spec, &plan, a_events_s, base).await);
    }

    let mut k = Vec::new();
    let mut writer_ids = Vec::new();
    for writers in K_WRITERS.into_iter().filter(|_| plan.runs("k")) {
        step(&format!("k. {writers} writers, {K_RATE:.0} events/s each"));
        let load = k_load(writers);
        let result = measured(pid, async {
            broker.create(&load.topic, load.partitions).await?;
            Ok(drive::produce(broker, &load, plan.many, base).await)
        })
        .await;
        k.push((writers, result));
        if let Some(ids) = broker.writer_ids().await {
            writer_ids.push((format!("after k with {writers} writers"), ids));
        }
    }
    if let (Some(wait), false) = (broker.writer_id_expiry(), writer_ids.is_empty()) {
        step("k. waiting for idle writer ids to expire");
        tokio::time::sleep(wait).await;
        if let Some(ids) = broker.writer_ids().await {
            writer_ids.push((format!("{:.0} s later, idle", wait.as_secs_f64()), ids));
        }
    }
    Suite {
        produce: all,
        d,
        c,
        k,
        writer_ids,
    }
}

/// Windows for a full or quick run; `slow` brokers (one fsync per message)
/// get shorter ones and skip e (100 B from one producer: b already shows
/// their per-message limit).
pub fn plan(quick: bool, slow: bool) -> Plan {
    let secs = |(warmup, measure): (f64, f64)| Window {
        warmup: Duration::from_secs_f64(warmup),
        measure: Duration::from_secs_f64(measure),
    };
    let (long, short) = match (quick, slow) {
        (false, false) => ((3.0, 15.0), (2.0, 6.0)),
        (false, true) => ((2.0, 6.0), (2.0, 6.0)),
        (true, false) => ((1.0, 4.0), (1.0, 2.0)),
        (true, true) => ((1.0, 3.0), (1.0, 2.0)),
    };
    let many = if quick { (2.0, 3.0) } else { (4.0, 10.0) };
    Plan {
        window: secs(long),
        short: secs(short),
        many: secs(many),
        catch_up_bytes_max: if quick { 64 << 20 } else { 512 << 20 },
        skip: if slow { &["e"] } else { &[] },
        only: None,
    }
}
