//! The audit log: who asked what of this node, and what came of it, as
//! hash-chained records in the node's own internal stream
//! `_system/audit-<node id>` (one segment, one writer: this node).
//!
//! Owns the [`Audit`] handle the node holds (`node.audit`), which the rest
//! of the server calls with [`Audit::record`]; the bounded queue behind it
//! and its drop policy (drop the newest when full, counted and logged); the
//! record format and chain ([`record`]); and the writer task ([`writer`])
//! that batches queued records into appends through an [`writer::AuditLog`]
//! the node provides.
//!
//! Must never: block, await or fail in [`Audit::record`] (it sits on the
//! data path); audit its own appends (they go through the node's internal
//! append path, which records nothing, so nothing recurses); fork a chain
//! (after a restart or a failed append it resumes from the last record
//! actually stored).

pub mod record;
pub(crate) mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::auth::Principal;
use crate::metrics::Metrics;
use record::{OutcomeKind, Record};

/// The scope of the server's internal streams.
pub const SCOPE: &str = "_system";
/// How often, at most, a full queue is logged.
const DROP_WARN_INTERVAL_MS: u64 = 10_000;
/// Longest `target` and `detail` kept in a record (longer ones are cut),
/// so a record stays far below any `event_bytes_max`.
const TEXT_BYTES_MAX: usize = 1024;

/// The name of node `node`'s audit stream in [`SCOPE`].
pub fn stream_name(node: u64) -> String {
    format!("audit-{node}")
}

/// The writer id node `node` appends its audit records under.
pub fn writer_id(node: u64) -> String {
    format!("audit-{node}")
}

/// `[audit]` in the server config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Record admin calls, session opens and authentication and
    /// authorization failures in `_system/audit-<node id>`.
    pub enabled: bool,
    /// Records queued for the audit writer; past it new records are
    /// dropped (counted in `aquifer_audit_records_dropped_total`).
    pub queue_records: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            queue_records: 10_000,
        }
    }
}

impl AuditConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=1_000_000).contains(&self.queue_records) {
            return Err(format!(
                "audit.queue_records must be 1..=1000000, not {}",
                self.queue_records
            ));
        }
        Ok(())
    }
}

/// How a call ended, for its audit record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Refused by authorization: why.
    Denied(String),
    /// Refused by authentication: why.
    Unauthenticated(String),
    /// Failed: the status code and message.
    Failed(String),
}

impl Outcome {
    /// The outcome of a call answered with `result`.
    pub fn of<T>(result: &Result<T, tonic::Status>) -> Outcome {
        match result {
            Ok(_) => Outcome::Ok,
            Err(s) => Outcome::failed(s),
        }
    }

    /// A call that failed with `status` (refusals by auth as such).
    pub fn failed(status: &tonic::Status) -> Outcome {
        match status.code() {
            tonic::Code::PermissionDenied => Outcome::Denied(status.message().to_string()),
            tonic::Code::Unauthenticated => Outcome::Unauthenticated(status.message().to_string()),
            code => Outcome::Failed(format!("{code:?}: {}", status.message())),
        }
    }

    fn split(self) -> (OutcomeKind, String) {
        match self {
            Outcome::Ok => (OutcomeKind::Ok, String::new()),
            Outcome::Denied(why) => (OutcomeKind::Denied, why),
            Outcome::Unauthenticated(why) => (OutcomeKind::Unauthenticated, why),
            Outcome::Failed(why) => (OutcomeKind::Failed, why),
        }
    }
}

/// What a caller hands [`Audit::record`]; the audit log adds the time, the
/// node, the sequence number and the chain.
#[derive(Clone, Debug)]
pub struct AuditRecord<'a> {
    pub principal: &'a Principal,
    /// `stream.create`, `append.open`, `read.open`, `scan.open`, `locate`,
    /// `acl.grant`, `auth`, …
    pub operation: &'a str,
    /// `scope/stream`, a segment id, or empty.
    pub target: String,
    pub outcome: Outcome,
    pub bytes: u64,
}

/// The node's audit log handle; clones share one queue.
#[derive(Clone)]
pub struct Audit {
    /// None: auditing is off.
    shared: Option<Arc<Shared>>,
}

struct Shared {
    node: u64,
    queue: mpsc::Sender<Record>,
    /// Dropped since the writer last recorded that records were lost.
    unreported_drops: AtomicU64,
    dropped: Counter,
    /// Unix ms before which a full queue is not logged again.
    next_warn_ms: AtomicU64,
}

/// The writer's end of the queue.
pub(crate) struct AuditQueue {
    records: mpsc::Receiver<Record>,
    shared: Arc<Shared>,
    written: Counter,
}

impl Audit {
    /// A handle for node `node`, and the queue its writer drains (None when
    /// auditing is off).
    pub(crate) fn new(
        config: &AuditConfig,
        node: u64,
        metrics: &Metrics,
    ) -> (Audit, Option<AuditQueue>) {
        if !config.enabled {
            return (Audit { shared: None }, None);
        }
        let (tx, rx) = mpsc::channel(config.queue_records);
        let shared = Arc::new(Shared {
            node,
            queue: tx,
            unreported_drops: AtomicU64::new(0),
            dropped: metrics.audit_records_dropped.clone(),
            next_warn_ms: AtomicU64::new(0),
        });
        let queue = AuditQueue {
            records: rx,
            shared: shared.clone(),
            written: metrics.audit_records_written.clone(),
        };
        (
            Audit {
                shared: Some(shared),
            },
            Some(queue),
        )
    }

    /// Queues a record; never blocks, awaits or fails. A full queue drops
    /// this (the newest) record: counted, logged at most every 10 s, and
    /// recorded in the log itself once there is room again.
    pub fn record(&self, r: AuditRecord<'_>) {
        let Some(shared) = &self.shared else {
            return;
        };
        let (outcome, detail) = r.outcome.split();
        let record = Record {
            v: record::VERSION,
            seq: 0,
            time_ms: now_ms(),
            node: shared.node,
            principal: r.principal.name().to_string(),
            op: r.operation.to_string(),
            target: cut(r.target),
            outcome,
            detail: cut(detail),
            bytes: r.bytes,
            prev: String::new(),
            hash: String::new(),
        };
        if shared.queue.try_send(record).is_err() {
            shared.dropped.inc();
            let lost = shared.unreported_drops.fetch_add(1, Ordering::Relaxed) + 1;
            let now = now_ms();
            let next = shared.next_warn_ms.load(Ordering::Relaxed);
            if now >= next
                && shared
                    .next_warn_ms
                    .compare_exchange(
                        next,
                        now + DROP_WARN_INTERVAL_MS,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                tracing::warn!(
                    dropped = lost,
                    "the audit queue is full (audit.queue_records): dropping the newest records until the audit writer catches up"
                );
            }
        }
    }
}

impl AuditQueue {
    /// The record saying how many records were dropped since the last one
    /// (None: none were).
    fn drops_record(&self) -> Option<Record> {
        let lost = self.shared.unreported_drops.swap(0, Ordering::Relaxed);
        (lost > 0).then(|| Record {
            v: record::VERSION,
            seq: 0,
            time_ms: now_ms(),
            node: self.shared.node,
            principal: "aquifer".into(),
            op: "audit.dropped".into(),
            target: String::new(),
            outcome: OutcomeKind::Failed,
            detail: format!("{lost} audit records dropped: the audit queue was full"),
            bytes: 0,
            prev: String::new(),
            hash: String::new(),
        })
    }
}

/// `text` cut to at most [`TEXT_BYTES_MAX`] bytes, on a character boundary.
fn cut(mut text: String) -> String {
    if text.len() > TEXT_BYTES_MAX {
        let mut at = TEXT_BYTES_MAX;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
    text
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
