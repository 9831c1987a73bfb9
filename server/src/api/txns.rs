//! The `Transactions` service: begin, commit, abort, ping, status and list,
//! each checked here and decided in the metadata group
//! (`controller/txns.rs` holds the rules; `node/txns.rs` drives decided
//! transactions to their end). Events go in through append sessions whose
//! setup names the transaction (`append.rs`, [`txn_part`]).
//!
//! Only the metadata leader answers; another node refuses with the
//! leader's address and the client follows it.

use std::sync::Arc;
use std::time::Instant;

use aquifer_proto::v1 as pb;
use aquifer_proto::v1::transactions_server::Transactions;
use rand::Rng;
use tonic::{Request, Response, Status};

use crate::auth::acl::{Permission, Resource};
use crate::auth::Principal;
use crate::controller::txns::{
    check_owner, normalize_id, TxnPart, TxnRecord, TxnState, TXN_TIMEOUT_DEFAULT_MS,
    TXN_TIMEOUT_MAX_MS, TXN_TIMEOUT_MIN_MS,
};
use crate::controller::{StreamKey, TxnOp};
use crate::error::Error;
use crate::node::{validate_name, Node};

/// How long a commit or abort call waits for the transaction's end before
/// answering with its state (committing, aborting) as it is.
const FINISH_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Pause between attempts to finish it within that wait.
const FINISH_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

pub struct TxnService {
    node: Arc<Node>,
}

impl TxnService {
    pub fn new(node: Arc<Node>) -> Self {
        TxnService { node }
    }

    /// The stream's key, checked; and this node must lead `meta`.
    fn stream(&self, scope: &str, stream: &str) -> Result<StreamKey, Error> {
        validate_name("scope", scope)?;
        validate_name("stream", stream)?;
        self.node.check_meta_leader()?;
        Ok(StreamKey {
            scope: scope.to_string(),
            stream: stream.to_string(),
        })
    }

    /// Refuses `principal` unless it may write `scope/stream` (status and
    /// lists: write or read). `audited`: a call that changes something.
    fn allow(
        &self,
        principal: &Principal,
        scope: &str,
        stream: &str,
        operation: &str,
        kind: Needs,
    ) -> Result<(), Error> {
        let r = Resource::stream(scope, stream);
        match kind {
            Needs::WriteAudited => self
                .node
                .authorize(principal, Permission::Write, r, operation)
                .map(drop),
            Needs::Write => self.node.check(principal, Permission::Write, r).map(drop),
            Needs::WriteOrRead => match self.node.check(principal, Permission::Write, r) {
                Ok(_) => Ok(()),
                Err(_) => self.node.check(principal, Permission::Read, r).map(drop),
            },
        }
    }

    /// The stream and transaction a request names; the transaction must be
    /// one of that stream's.
    fn txn(&self, r: &pb::TransactionRequest) -> Result<(StreamKey, TxnRecord), Error> {
        let key = self.stream(&r.scope, &r.stream)?;
        let id =
            normalize_id(&r.transaction_id).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        match self.node.controller.txn(&id) {
            Some(t) if t.scope == key.scope && t.stream == key.stream => Ok((key, t)),
            _ => Err(Error::TransactionNotFound(format!(
                "transaction {id} of stream {key} not found (never begun, or finished long ago and forgotten)"
            ))),
        }
    }

    fn info(&self, t: &TxnRecord) -> pb::TransactionInfo {
        let ranges = self
            .node
            .controller
            .get(&StreamKey {
                scope: t.scope.clone(),
                stream: t.stream.clone(),
            })
            .ok();
        let range = |id: u64| {
            ranges
                .as_ref()
                .and_then(|s| s.segments.iter().find(|g| g.id == id))
                .map_or((0.0, 0.0), |g| (g.key_low, g.key_high))
        };
        pb::TransactionInfo {
            scope: t.scope.clone(),
            stream: t.stream.clone(),
            transaction_id: t.id.clone(),
            state: t.state,
            timeout_ms: t.timeout_ms,
            begun_ms: t.begun_ms,
            finished_ms: t.finished_ms,
            reason: t.reason.clone(),
            parts: t
                .parts
                .iter()
                .map(|p| {
                    let (key_low, key_high) = range(p.segment_id);
                    pb::TransactionPart {
                        segment_id: p.segment_id,
                        transaction_segment_id: p.txn_segment_id,
                        key_low,
                        key_high,
                    }
                })
                .collect(),
            lease_left_ms: if t.state() == TxnState::Open {
                self.node.lease_left_ms(t)
            } else {
                0
            },
            owner: t.owner.clone(),
        }
    }

    /// Drives a decided transaction to its end, for up to
    /// [`FINISH_WAIT`]: a merge may wait for a scale to be put in force, or
    /// for a container to elect a leader. The record as it is then (still
    /// committing or aborting if that did not happen in time: the driver
    /// carries on). Errors only when this node no longer leads `meta`.
    async fn finish(&self, mut t: TxnRecord) -> Result<TxnRecord, Error> {
        let deadline = Instant::now() + FINISH_WAIT;
        loop {
            if t.state().is_finished() || t.state() == TxnState::Open {
                return Ok(t);
            }
            match self.node.finish_txn(&t).await {
                Ok(done) => return Ok(done),
                Err(e) => {
                    self.node.check_meta_leader()?;
                    tracing::debug!(txn = %t.id, error = %e, "transaction not finished yet; retrying");
                }
            }
            if Instant::now() >= deadline {
                return Ok(self.node.controller.txn(&t.id).unwrap_or(t));
            }
            tokio::time::sleep(FINISH_RETRY).await;
            // Another driver (this node's loop) may have finished it.
            if let Some(now) = self.node.controller.txn(&t.id) {
                t = now;
            }
        }
    }

    async fn change(&self, op: TxnOp, key: &StreamKey, t: &TxnRecord) -> Result<TxnRecord, Error> {
        self.node
            .controller
            .txn_change(op, &t.id, key)
            .await?
            .ok_or_else(|| Error::TransactionNotFound(t.id.clone()))
    }
}

/// What a transaction call needs of its principal.
#[derive(Clone, Copy)]
enum Needs {
    /// Write, and the call is audited (begin, commit, abort).
    WriteAudited,
    /// Write, not audited (pings repeat through a transaction's life).
    Write,
    /// Write or read (status, list).
    WriteOrRead,
}

#[tonic::async_trait]
impl Transactions for TxnService {
    async fn begin_transaction(
        &self,
        req: Request<pb::BeginTransactionRequest>,
    ) -> Result<Response<pb::TransactionInfo>, Status> {
        let principal = Principal::of(&req);
        let r = req.into_inner();
        self.allow(
            &principal,
            &r.scope,
            &r.stream,
            "txn.begin",
            Needs::WriteAudited,
        )?;
        let key = self.stream(&r.scope, &r.stream)?;
        let timeout_ms = match r.timeout_ms {
            0 => TXN_TIMEOUT_DEFAULT_MS,
            t if (TXN_TIMEOUT_MIN_MS..=TXN_TIMEOUT_MAX_MS).contains(&t) => t,
            t => {
                return Err(Error::InvalidArgument(format!(
                    "transaction timeout {t} ms is outside {TXN_TIMEOUT_MIN_MS}..={TXN_TIMEOUT_MAX_MS} ms"
                ))
                .into())
            }
        };
        check_owner(&r.owner).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let id = format!("{:032x}", rand::rng().random::<u128>());
        let t = self
            .node
            .controller
            .txn_begin(&id, &key, timeout_ms, &r.owner)
            .await?
            .ok_or_else(|| Error::Internal("a begin answered no transaction".into()))?;
        self.node.renew_lease(&t.id, t.timeout_ms);
        tracing::debug!(txn = %t.id, stream = %key, owner = %t.owner, parts = t.parts.len(), "transaction begun");
        Ok(Response::new(self.info(&t)))
    }

    async fn commit_transaction(
        &self,
        req: Request<pb::TransactionRequest>,
    ) -> Result<Response<pb::TransactionInfo>, Status> {
        let started = Instant::now();
        let principal = Principal::of(&req);
        let r = req.into_inner();
        self.allow(
            &principal,
            &r.scope,
            &r.stream,
            "txn.commit",
            Needs::WriteAudited,
        )?;
        let (key, t) = self.txn(&r)?;
        let mut t = self.change(TxnOp::Commit, &key, &t).await?;
        if r.wait {
            // The driver would finish it within its interval; doing it here
            // makes the answer mean "visible" without that wait.
            t = self.finish(t).await?;
            if t.state() == TxnState::Committed {
                self.node
                    .metrics
                    .txn_commit_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
        }
        Ok(Response::new(self.info(&t)))
    }

    async fn abort_transaction(
        &self,
        req: Request<pb::TransactionRequest>,
    ) -> Result<Response<pb::TransactionInfo>, Status> {
        let principal = Principal::of(&req);
        let r = req.into_inner();
        self.allow(
            &principal,
            &r.scope,
            &r.stream,
            "txn.abort",
            Needs::WriteAudited,
        )?;
        let (key, t) = self.txn(&r)?;
        let t = self.change(TxnOp::Abort, &key, &t).await?;
        let t = self.finish(t).await?;
        Ok(Response::new(self.info(&t)))
    }

    async fn ping_transaction(
        &self,
        req: Request<pb::TransactionRequest>,
    ) -> Result<Response<pb::TransactionInfo>, Status> {
        let principal = Principal::of(&req);
        let r = req.into_inner();
        self.allow(&principal, &r.scope, &r.stream, "txn.ping", Needs::Write)?;
        let (_, t) = self.txn(&r)?;
        if t.state() != TxnState::Open {
            return Err(Error::from(crate::controller::txns::TxnError::NotOpen {
                id: t.id.clone(),
                state: t.state().name(),
            })
            .into());
        }
        self.node.renew_lease(&t.id, t.timeout_ms);
        Ok(Response::new(self.info(&t)))
    }

    async fn transaction_status(
        &self,
        req: Request<pb::TransactionRequest>,
    ) -> Result<Response<pb::TransactionInfo>, Status> {
        let principal = Principal::of(&req);
        let r = req.into_inner();
        self.allow(
            &principal,
            &r.scope,
            &r.stream,
            "txn.status",
            Needs::WriteOrRead,
        )?;
        let (_, t) = self.txn(&r)?;
        Ok(Response::new(self.info(&t)))
    }

    async fn list_transactions(
        &self,
        req: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        let principal = Principal::of(&req);
        let r = req.into_inner();
        self.allow(
            &principal,
            &r.scope,
            &r.stream,
            "txn.list",
            Needs::WriteOrRead,
        )?;
        let key = self.stream(&r.scope, &r.stream)?;
        self.node.controller.get(&key)?;
        let mut txns: Vec<TxnRecord> = self
            .node
            .controller
            .txns()
            .into_iter()
            .filter(|t| t.scope == key.scope && t.stream == key.stream)
            .collect();
        txns.sort_by_key(|t| (t.begun_ms, t.id.clone()));
        Ok(Response::new(pb::ListTransactionsResponse {
            transactions: txns.iter().map(|t| self.info(t)).collect(),
        }))
    }
}

/// For an append session's setup naming transaction `id`: the part whose
/// transaction segment is `txn_segment_id`, if the transaction is open as
/// this node's metadata knows it. The container refuses the append anyway
/// once the part was merged or dropped.
pub(super) fn txn_part(node: &Node, id: &str, txn_segment_id: u64) -> Result<TxnPart, Error> {
    let id = normalize_id(id).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let Some(t) = node.controller.txn(&id) else {
        // This node's metadata may lag a begin the leader just made.
        return Err(Error::Unavailable(format!(
            "transaction {id} is not known here (yet); retry"
        )));
    };
    if t.state() != TxnState::Open {
        return Err(crate::controller::txns::TxnError::NotOpen {
            id,
            state: t.state().name(),
        }
        .into());
    }
    t.part(txn_segment_id).cloned().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "segment {txn_segment_id} is not a transaction segment of transaction {id}"
        ))
    })
}
