//! The standard suite, run the same way against each broker: what each
//! workload is (sizes, batching, rates, windows) and the server-side cost of
//! each (CPU seconds, peak RSS, disk bytes written) read from /proc around it.
//!
//! Order per broker: a (1 KiB max rate), d (catch-up read of a's backlog),
//! b (100 B max rate), c (tail latency at a fixed rate).

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::broker::{self, Broker, ProcSample};
use crate::drive::{self, CatchUp, Load, ProduceResult, TailResult};
use crate::workloads::Window;

/// Partitions (and producers) of the throughput workloads.
pub const PARTITIONS: u32 = 4;
/// (a): 1 KiB events, batches of up to 64 (64 KiB), 8 in flight per producer.
pub const A_PAYLOAD: usize = 1024;
pub const A_BATCH: usize = 64;
/// (b): 100 B events, batches of up to 1,024 (100 KiB), 8 in flight.
pub const B_PAYLOAD: usize = 100;
pub const B_BATCH: usize = 1024;
pub const DEPTH: usize = 8;
/// (c): one producer on one partition at this rate, 100 B events, up to
/// 4 sends in flight; events due while all 4 wait go out together.
pub const C_RATE: f64 = 10_000.0;
pub const C_PAYLOAD: usize = 100;
pub const C_DEPTH: usize = 4;
pub const C_BATCH: usize = 1024;

/// How long each workload runs, and how much backlog (d) reads.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub window: Window,
    pub catch_up_bytes_max: u64,
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

/// One broker's results; a workload that could not run holds its error.
pub struct Suite {
    pub a: Result<(ProduceResult, Usage)>,
    pub d: Result<(CatchUp, Usage)>,
    pub b: Result<(ProduceResult, Usage)>,
    pub c: Result<(TailResult, Usage)>,
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

fn max_load(topic: &str, payload_bytes: usize, batch_max: usize) -> Load {
    Load {
        topic: topic.into(),
        partitions: PARTITIONS,
        payload_bytes,
        batch_max,
        depth: DEPTH,
        rate: None,
        timestamped: false,
    }
}

/// Runs a, d, b, c on `broker`, reporting progress on stderr as `name`.
pub async fn run<B: Broker>(name: &str, broker: &B, plan: Plan) -> Suite {
    let pid = broker.pid();
    let base = Instant::now();
    let w = plan.window;
    let step = |what: &str| eprintln!("compare: {name}: {what}");

    step("a. 1 KiB events, 4 producers, max rate");
    let a_load = max_load("a-1k", A_PAYLOAD, A_BATCH);
    let a = measured(pid, async {
        broker.create(&a_load.topic, PARTITIONS).await?;
        Ok(drive::produce(broker, &a_load, w, base).await)
    })
    .await;

    step("d. catch-up read of a's backlog");
    let d = match &a {
        Ok((a, _)) => {
            let events = (plan.catch_up_bytes_max / A_PAYLOAD as u64).min(a.total_acked);
            measured(pid, drive::catch_up(broker, "a-1k", PARTITIONS, events)).await
        }
        Err(e) => Err(anyhow::anyhow!("no backlog: a failed: {e:#}")),
    };

    step("b. 100 B events, 4 producers, max rate");
    let b_load = max_load("b-100b", B_PAYLOAD, B_BATCH);
    let b = measured(pid, async {
        broker.create(&b_load.topic, PARTITIONS).await?;
        Ok(drive::produce(broker, &b_load, w, base).await)
    })
    .await;

    step("c. tail latency at 10,000 events/s");
    let c_load = Load {
        topic: "c-tail".into(),
        partitions: 1,
        payload_bytes: C_PAYLOAD,
        batch_max: C_BATCH,
        depth: C_DEPTH,
        rate: Some(C_RATE),
        timestamped: true,
    };
    let c = measured(pid, drive::tail(broker, &c_load, w)).await;
    Suite { a, d, b, c }
}

/// Windows for a full or quick run; `slow` brokers (one fsync per message)
/// get shorter ones.
pub fn plan(quick: bool, slow: bool) -> Plan {
    let (warmup, measure) = match (quick, slow) {
        (false, false) => (3, 15),
        (false, true) => (2, 6),
        (true, false) => (1, 4),
        (true, true) => (1, 3),
    };
    Plan {
        window: Window {
            warmup: Duration::from_secs(warmup),
            measure: Duration::from_secs(measure),
        },
        catch_up_bytes_max: if quick { 64 << 20 } else { 512 << 20 },
    }
}
