//! Transactions on the node: leases, and driving decided transactions to
//! their end. The metadata leader, every [`DRIVE_INTERVAL`]:
//! - times out open transactions not pinged for their timeout (the lease is
//!   the leader's own clock and memory: a new leader starts every lease
//!   afresh, so a failover never shortens one);
//! - for each committing transaction, asks the leader of every part's
//!   container to merge the part into its parent (one raft entry per part),
//!   then records the transaction committed; aborting ones likewise drop
//!   their parts, then are recorded aborted;
//! - forgets old finished transactions once their containers forgot the
//!   parts' tombstones.
//!
//! Every step is idempotent, so a leader that dies between any two is
//! followed by one that carries on from the recorded state.
//!
//! Must never: finish a transaction before every part is merged (or
//! dropped); time a transaction out on a node that does not lead `meta`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aquifer_proto::v1::finish_parts_request::Action;
use tokio::sync::watch;

use crate::container::command::{Cmd, TxnPartRef, TxnSegmentsRef};
use crate::controller::txns::{self, TxnPart, TxnRecord, TxnState};
use crate::controller::{StreamKey, TxnOp};
use crate::error::Error;

use super::Node;

/// How often the metadata leader drives transactions.
const DRIVE_INTERVAL: Duration = Duration::from_millis(100);

/// When each open transaction's lease ends, on the metadata leader.
#[derive(Default)]
pub(crate) struct Leases {
    /// The `meta` term these leases were granted in: a new term starts over.
    term: Option<u64>,
    ends: HashMap<String, Instant>,
}

impl Leases {
    fn restart_if(&mut self, term: Option<u64>) {
        if self.term != term {
            self.term = term;
            self.ends.clear();
        }
    }

    /// Renews transaction `id`'s lease for `timeout_ms` from now.
    pub(crate) fn renew(&mut self, term: Option<u64>, id: &str, timeout_ms: u64) {
        self.restart_if(term);
        self.ends.insert(
            id.to_string(),
            Instant::now() + Duration::from_millis(timeout_ms),
        );
    }

    /// When transaction `t`'s lease ends (a fresh one if none was noted).
    fn end(&mut self, term: Option<u64>, t: &TxnRecord) -> Instant {
        self.restart_if(term);
        *self
            .ends
            .entry(t.id.clone())
            .or_insert_with(|| Instant::now() + Duration::from_millis(t.timeout_ms))
    }

    /// Ms left of transaction `t`'s lease.
    pub(crate) fn left_ms(&mut self, term: Option<u64>, t: &TxnRecord) -> u64 {
        let end = self.end(term, t);
        end.saturating_duration_since(Instant::now()).as_millis() as u64
    }
}

/// Runs [`Node::drive_txns_once`] every [`DRIVE_INTERVAL`] until `stop`.
pub(super) async fn drive_loop(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(DRIVE_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !node.controller.is_leader() {
            continue;
        }
        if let Err(e) = node.drive_txns_once().await {
            tracing::debug!(error = %e, "transaction pass failed; will retry");
        }
    }
}

fn key_of(t: &TxnRecord) -> StreamKey {
    StreamKey {
        scope: t.scope.clone(),
        stream: t.stream.clone(),
    }
}

impl Node {
    /// Renews transaction `id`'s lease (a ping or a begin).
    pub(crate) fn renew_lease(&self, id: &str, timeout_ms: u64) {
        let term = self.controller.group().leader_term();
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .renew(term, id, timeout_ms);
    }

    /// Ms left of an open transaction's lease (on the metadata leader).
    pub(crate) fn lease_left_ms(&self, t: &TxnRecord) -> u64 {
        let term = self.controller.group().leader_term();
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .left_ms(term, t)
    }

    /// One pass of the metadata leader over every transaction.
    async fn drive_txns_once(&self) -> Result<(), Error> {
        let all = self.controller.txns();
        let term = self.controller.group().leader_term();
        let now = Instant::now();
        let mut finished: BTreeMap<StreamKey, Vec<TxnRecord>> = BTreeMap::new();
        let mut live = 0;
        for t in &all {
            match t.state() {
                TxnState::Open => {
                    live += 1;
                    let end = self
                        .leases
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .end(term, t);
                    if end <= now {
                        tracing::info!(txn = %t.id, stream = %key_of(t), timeout_ms = t.timeout_ms, "transaction timed out: aborting it");
                        self.controller
                            .txn_change(TxnOp::TimeOut, &t.id, &key_of(t), 0)
                            .await?;
                        self.metrics.txn_timeouts.inc();
                    }
                }
                TxnState::Committing | TxnState::Aborting => {
                    live += 1;
                    if let Err(e) = self.finish_txn(t).await {
                        tracing::debug!(txn = %t.id, error = %e, "transaction not finished yet; will retry");
                    }
                }
                TxnState::Committed | TxnState::Aborted => {
                    finished.entry(key_of(t)).or_default().push(t.clone());
                }
            }
        }
        self.metrics.txn_open.set(live);
        let now_ms = crate::tier::writer::now_ms();
        for (key, records) in finished {
            for id in txns::to_forget(records.iter(), now_ms) {
                let Some(t) = records.iter().find(|r| r.id == id) else {
                    continue;
                };
                self.finish_parts(Action::Forget, &t.parts).await?;
                self.controller
                    .txn_change(TxnOp::Forget, &id, &key, 0)
                    .await?;
            }
        }
        Ok(())
    }

    /// Carries a decided transaction to its end: every part merged
    /// (committing) or dropped (aborting), then the end recorded. The
    /// record after.
    pub(crate) async fn finish_txn(&self, t: &TxnRecord) -> Result<TxnRecord, Error> {
        let action = match t.state() {
            TxnState::Committing => Action::Merge,
            TxnState::Aborting => Action::Drop,
            _ => return Ok(t.clone()),
        };
        self.finish_parts(action, &t.parts).await?;
        let after = self
            .controller
            .txn_change(TxnOp::Finish, &t.id, &key_of(t), 0)
            .await?
            .ok_or_else(|| Error::TransactionNotFound(t.id.clone()))?;
        if after.state() != t.state() {
            match after.state() {
                TxnState::Committed => self.metrics.txn_commits.inc(),
                _ => self.metrics.txn_aborts.inc(),
            };
            tracing::debug!(txn = %t.id, state = after.state().name(), "transaction finished");
        }
        Ok(after)
    }

    /// Merges, drops or forgets `parts`, each at its container's leader
    /// (here or another node), the containers in parallel.
    pub(crate) async fn finish_parts(
        &self,
        action: Action,
        parts: &[TxnPart],
    ) -> Result<(), Error> {
        let mut by_container: BTreeMap<u32, Vec<TxnPart>> = BTreeMap::new();
        for p in parts {
            by_container
                .entry(self.container_of(p.segment_id).id)
                .or_default()
                .push(p.clone());
        }
        let asks = by_container
            .into_values()
            .map(|parts| self.container_finish(action, parts));
        for answer in futures::future::join_all(asks).await {
            answer?;
        }
        Ok(())
    }

    async fn container_finish(&self, action: Action, parts: Vec<TxnPart>) -> Result<(), Error> {
        let Some(first) = parts.first() else {
            return Ok(());
        };
        let redirect = match self.local_finish_parts(action, &parts).await {
            Ok(()) => return Ok(()),
            Err(Error::NotLeader { leader, message }) => (leader, message),
            Err(e) => return Err(e),
        };
        let c = self.container_of(first.segment_id).id;
        let mut addrs: Vec<String> = redirect.0.into_iter().collect();
        for n in self.placed(c).unwrap_or_default() {
            if n == self.config.node_id {
                continue;
            }
            if let Some(a) = self.addresses.get(n).filter(|a| !addrs.contains(a)) {
                addrs.push(a);
            }
        }
        let mut last = Error::Unavailable(redirect.1);
        for addr in addrs {
            match self.peers.finish_parts(&addr, action, &parts).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// [`Node::finish_parts`] for parts of one container this node leads;
    /// refuses, naming where to go, if it does not lead it.
    pub(crate) async fn local_finish_parts(
        &self,
        action: Action,
        parts: &[TxnPart],
    ) -> Result<(), Error> {
        let Some(first) = parts.first() else {
            return Ok(());
        };
        let c = self.serving_container(first.segment_id)?;
        c.check_leader()?;
        if parts
            .iter()
            .any(|p| self.container_of(p.segment_id).id != c.id)
        {
            return Err(Error::InvalidArgument(
                "transaction parts of one call must share a container".into(),
            ));
        }
        if action == Action::Forget {
            let txn_segment_ids = parts.iter().map(|p| p.txn_segment_id).collect();
            c.propose(Cmd::ForgetTxns(TxnSegmentsRef { txn_segment_ids }))
                .await?;
            return Ok(());
        }
        // Proposed together: one log write carries them all.
        let proposals = parts.iter().map(|p| {
            let part = TxnPartRef {
                segment_id: p.segment_id,
                txn_segment_id: p.txn_segment_id,
            };
            c.propose(match action {
                Action::Merge => Cmd::MergeTxn(part),
                _ => Cmd::DropTxn(part),
            })
        });
        for outcome in futures::future::join_all(proposals).await {
            outcome?;
        }
        Ok(())
    }
}
