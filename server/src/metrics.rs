//! Prometheus metrics: the process's one registry, the series the data path
//! updates, and the `/metrics` HTTP endpoint.
//!
//! Counters and histograms are updated where things happen (append acks,
//! log writes, cache lookups, tier-2 puts, reads); gauges of state (raft
//! positions, buffer and cache sizes) are refreshed when scraped. Updates
//! are a few atomic operations: nothing here may log, allocate per event or
//! block the data path. The registry belongs to its node (never to the
//! process), so several nodes can run in one process.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaleLabels {
    /// `split` or `merge` (a scale that does both counts as a split).
    pub kind: String,
    /// `manual` or `auto`.
    pub trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SegmentLabels {
    pub segment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    pub tier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// Why the node closed a connection itself (see `api::connections`).
    pub reason: &'static str,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Every series the node exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub append_events: Family<StreamLabels, Counter>,
    pub append_bytes: Family<StreamLabels, Counter>,
    /// Batch received → ack ready, seconds.
    pub append_ack_seconds: Histogram,
    /// Time appends waited for the tail or in-flight budget.
    pub backpressure_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    pub log_write_seconds: Histogram,
    /// Entries made durable by one write + fdatasync (group commit size).
    pub log_write_entries: Histogram,
    pub raft_term: Family<GroupLabels, Gauge>,
    pub raft_leader: Family<GroupLabels, Gauge>,
    pub raft_commit_index: Family<GroupLabels, Gauge>,
    pub raft_applied_index: Family<GroupLabels, Gauge>,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_bytes: Gauge,
    pub tail_buffer_bytes: Gauge,
    pub tier2_put_bytes: Counter,
    pub tier2_puts: Counter,
    pub tier2_put_errors: Counter,
    /// Age of the oldest unflushed byte per container (leaders only).
    pub tier2_flush_lag_seconds: Family<GroupLabels, FloatGauge>,
    /// Writer ids a container's segments remember (its leader's view).
    pub writer_ids: Family<GroupLabels, Gauge>,
    pub read_bytes: Family<TierLabels, Counter>,
    pub connections: Gauge,
    /// Connections the node closed itself: refused at the limits, evicted
    /// to make room, or timed out (handshake, idle).
    pub connections_closed: Family<ConnectionLabels, Counter>,
    /// Active segments per stream: what a compute engine's autoscaler
    /// follows.
    pub stream_active_segments: Family<StreamLabels, Gauge>,
    pub scale_operations: Family<ScaleLabels, Counter>,
    /// Shortest-window rates of the segments this node leads.
    pub segment_events_per_second: Family<SegmentLabels, FloatGauge>,
    pub segment_bytes_per_second: Family<SegmentLabels, FloatGauge>,
    /// Transactions (counted by the metadata leader): open now, and those
    /// committed, aborted and timed out since it started.
    pub txn_open: Gauge,
    pub txn_commits: Counter,
    pub txn_aborts: Counter,
    pub txn_timeouts: Counter,
    /// From the commit call to every part merged (commits that waited).
    pub txn_commit_seconds: Histogram,
    /// Bytes open transactions hold on this node.
    pub txn_bytes: Gauge,
    /// Audit records this node stored in its audit stream, and those it
    /// dropped because its audit queue was full.
    pub audit_records_written: Counter,
    pub audit_records_dropped: Counter,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~3 min
    Histogram::new(exponential_buckets(0.00005, 2.0, 22))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every series at zero.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("aquifer");
        let m = Metrics {
            stream_active_segments: Family::default(),
            scale_operations: Family::default(),
            segment_events_per_second: Family::default(),
            segment_bytes_per_second: Family::default(),
            txn_open: Gauge::default(),
            txn_commits: Counter::default(),
            txn_aborts: Counter::default(),
            txn_timeouts: Counter::default(),
            txn_commit_seconds: latency_histogram(),
            txn_bytes: Gauge::default(),
            audit_records_written: Counter::default(),
            audit_records_dropped: Counter::default(),
            append_events: Family::default(),
            append_bytes: Family::default(),
            append_ack_seconds: latency_histogram(),
            backpressure_seconds: Counter::default(),
            log_write_seconds: latency_histogram(),
            log_write_entries: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            raft_term: Family::default(),
            raft_leader: Family::default(),
            raft_commit_index: Family::default(),
            raft_applied_index: Family::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_bytes: Gauge::default(),
            tail_buffer_bytes: Gauge::default(),
            tier2_put_bytes: Counter::default(),
            tier2_puts: Counter::default(),
            tier2_put_errors: Counter::default(),
            tier2_flush_lag_seconds: Family::default(),
            writer_ids: Family::default(),
            read_bytes: Family::default(),
            connections: Gauge::default(),
            connections_closed: Family::default(),
            registry: Registry::default(),
        };
        r.register(
            "append_events",
            "Events appended (acknowledged, not duplicates)",
            m.append_events.clone(),
        );
        r.register(
            "append_bytes",
            "Framed event bytes appended",
            m.append_bytes.clone(),
        );
        r.register(
            "append_ack_seconds",
            "Append batch received to acknowledged",
            m.append_ack_seconds.clone(),
        );
        r.register(
            "backpressure_seconds",
            "Time appends waited for memory budget",
            m.backpressure_seconds.clone(),
        );
        r.register(
            "log_write_seconds",
            "Raft log write + fdatasync",
            m.log_write_seconds.clone(),
        );
        r.register(
            "log_write_entries",
            "Entries made durable per log write (group commit)",
            m.log_write_entries.clone(),
        );
        r.register("raft_term", "Raft term per group", m.raft_term.clone());
        r.register(
            "raft_leader",
            "1 when this node leads the group",
            m.raft_leader.clone(),
        );
        r.register(
            "raft_commit_index",
            "Raft commit index per group",
            m.raft_commit_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "Raft applied index per group",
            m.raft_applied_index.clone(),
        );
        r.register("cache_hits", "Block cache hits", m.cache_hits.clone());
        r.register(
            "cache_misses",
            "Block cache misses (tier-2 GETs follow)",
            m.cache_misses.clone(),
        );
        r.register(
            "cache_bytes",
            "Bytes in the block cache",
            m.cache_bytes.clone(),
        );
        r.register(
            "tail_buffer_bytes",
            "Unflushed bytes in tail buffers",
            m.tail_buffer_bytes.clone(),
        );
        r.register(
            "tier2_put_bytes",
            "Bytes put to tier-2",
            m.tier2_put_bytes.clone(),
        );
        r.register("tier2_puts", "Tier-2 PUT requests", m.tier2_puts.clone());
        r.register(
            "tier2_put_errors",
            "Failed tier-2 PUTs (retried)",
            m.tier2_put_errors.clone(),
        );
        r.register(
            "tier2_flush_lag_seconds",
            "Age of the oldest unflushed byte per container",
            m.tier2_flush_lag_seconds.clone(),
        );
        r.register(
            "writer_ids",
            "Writer ids a container's segments remember for exactly-once (on its leader; bounded by writer_id_expiry_ms)",
            m.writer_ids.clone(),
        );
        r.register(
            "read_bytes",
            "Event bytes served to readers, by tier",
            m.read_bytes.clone(),
        );
        r.register(
            "connections",
            "Open client connections",
            m.connections.clone(),
        );
        r.register(
            "connections_closed",
            "Client connections the node closed itself, by reason",
            m.connections_closed.clone(),
        );
        r.register(
            "stream_active_segments",
            "Active segments per stream (the current epoch's)",
            m.stream_active_segments.clone(),
        );
        r.register(
            "scale_operations",
            "Scales started, by kind (split, merge) and trigger (manual, auto)",
            m.scale_operations.clone(),
        );
        r.register(
            "segment_events_per_second",
            "Events/s over the shortest rate window, per segment this node leads",
            m.segment_events_per_second.clone(),
        );
        r.register(
            "segment_bytes_per_second",
            "Bytes/s over the shortest rate window, per segment this node leads",
            m.segment_bytes_per_second.clone(),
        );
        r.register(
            "transactions_open",
            "Open and committing transactions (on the metadata leader)",
            m.txn_open.clone(),
        );
        r.register(
            "transaction_commits",
            "Transactions committed (by this node as metadata leader)",
            m.txn_commits.clone(),
        );
        r.register(
            "transaction_aborts",
            "Transactions aborted, timeouts included (by this node as metadata leader)",
            m.txn_aborts.clone(),
        );
        r.register(
            "transaction_timeouts",
            "Transactions aborted because no ping came for their timeout",
            m.txn_timeouts.clone(),
        );
        r.register(
            "transaction_commit_seconds",
            "From a commit call to every part merged into its segment",
            m.txn_commit_seconds.clone(),
        );
        r.register(
            "transaction_bytes",
            "Bytes open transactions hold in this node's memory",
            m.txn_bytes.clone(),
        );
        r.register(
            "audit_records_written",
            "Audit records this node stored in its audit stream",
            m.audit_records_written.clone(),
        );
        r.register(
            "audit_records_dropped",
            "Audit records dropped because the audit queue was full",
            m.audit_records_dropped.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn group(&self, name: &str) -> GroupLabels {
        GroupLabels {
            group: name.to_string(),
        }
    }

    /// Counts a scale started.
    pub fn scale_started(&self, kind: &str, trigger: &str) {
        self.scale_operations
            .get_or_create(&ScaleLabels {
                kind: kind.to_string(),
                trigger: trigger.to_string(),
            })
            .inc();
    }

    pub fn read_from(&self, tier: &str, bytes: u64) {
        self.read_bytes
            .get_or_create(&TierLabels {
                tier: tier.to_string(),
            })
            .inc_by(bytes);
    }
}

/// Scrapes served at once; more wait.
const SCRAPES_MAX: usize = 4;
/// A request must arrive within this and fit in this many bytes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_BYTES_MAX: usize = 8 * 1024;

/// What a scrape answers: the node's registry in the text format, its state
/// gauges refreshed first.
pub type Scrape = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    scrape: Scrape,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(SCRAPES_MAX));
    tokio::pin!(shutdown);
    loop {
        let (conn, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = tokio::time::timeout(REQUEST_TIMEOUT, answer(conn, &*scrape)).await {
                tracing::debug!(error = %e, "metrics endpoint: slow client dropped");
            }
        });
    }
}

async fn answer(mut conn: TcpStream, scrape: &(dyn Fn() -> String + Send + Sync)) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > REQUEST_BYTES_MAX {
            let _ = conn
                .write_all(&response(
                    "431 Request Header Fields Too Large",
                    "too large\n",
                ))
                .await;
            return;
        }
    }
    let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let reply = match (parts.next(), parts.next()) {
        (Some(b"GET"), Some(b"/metrics")) => response("200 OK", &scrape()),
        (Some(b"GET"), _) => response("404 Not Found", "try /metrics\n"),
        _ => response("405 Method Not Allowed", "only GET /metrics\n"),
    };
    let _ = conn.write_all(&reply).await;
    let _ = conn.shutdown().await;
}

fn response(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_metrics_and_refuses_the_rest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        metrics.tier2_puts.inc();
        let refreshed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = refreshed.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(move || {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                metrics.encode()
            }),
            async {
                let _ = stopped.await;
            },
        ));
        let get = |request: &'static str| async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(request.as_bytes()).await.unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("aquifer_tier2_puts_total"), "{ok}");
        assert!(refreshed.load(std::sync::atomic::Ordering::SeqCst));
        assert!(get("GET / HTTP/1.1\r\n\r\n").await.contains("404"));
        assert!(get("garbage\r\n\r\n").await.contains("405"));
        let _ = stop.send(());
        server.await.unwrap();
    }
}
