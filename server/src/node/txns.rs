//! Transactions on the node: leases, and driving decided transactions to
//! their end. The metadata leader, every [`DRIVE_INTERVAL`]:
//! - times out open transactions not pinged for their timeout (the lease is
//!   the leader's own clock and memory: a new leader starts every lease
//!   afresh, so a failover never shortens one);
//! - for each committing transaction, asks the leader of every part's
//!   container to merge the part into its parent (one raft entry per
//!   parent), then records the transaction committed; aborting ones
//!   likewise drop their parts, then are recorded aborted;
//! - first, a committing transaction's part in a segment a scale sealed
//!   moves: child parts are recorded for the successors, the part's
//!   container leader copies its events into them by routing key (numbered
//!   appends, so a repeated copy is a duplicate) and drops it;
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

use aquifer_proto::frame::FrameIter;
use aquifer_proto::keys::key_position;
use aquifer_proto::v1::finish_parts_request::Action;
use aquifer_proto::v1::{AppendPartRequest, FinishPart, MoveTarget};
use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

use crate::container::command::{Append, Cmd, TxnPartRef, TxnPartsRef, TxnSegmentsRef};
use crate::container::state::Applied;
use crate::controller::txns::{self, TxnPart, TxnRecord, TxnState};
use crate::controller::{StreamKey, TxnOp};
use crate::error::Error;

use super::Node;

/// How often the metadata leader drives transactions.
const DRIVE_INTERVAL: Duration = Duration::from_millis(100);
/// Scales one commit follows in one go before it yields to the next pass.
const MOVE_ROUNDS_MAX: usize = 8;
/// A moved part's events travel in appends of about this size.
const MOVE_BATCH_BYTES: usize = 1024 * 1024;

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
                        let timed_out = self
                            .controller
                            .txn_change_new(TxnOp::TimeOut, &t.id, &key_of(t))
                            .await;
                        match timed_out {
                            Ok((_, true)) => self.metrics.txn_timeouts.inc(),
                            Ok((_, false)) => 0,
                            // Not this pass: the next one tries again.
                            Err(e) => {
                                tracing::debug!(txn = %t.id, error = %e, "timeout not recorded yet");
                                0
                            }
                        };
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
        // Leases of transactions no longer open go.
        let open: std::collections::HashSet<&str> = all
            .iter()
            .filter(|t| t.state() == TxnState::Open)
            .map(|t| t.id.as_str())
            .collect();
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ends
            .retain(|id, _| open.contains(id.as_str()));
        let now_ms = crate::tier::writer::now_ms();
        for (key, records) in finished {
            for id in txns::to_forget(records.iter(), now_ms) {
                let Some(t) = records.iter().find(|r| r.id == id) else {
                    continue;
                };
                // One that cannot be forgotten now (a container without a
                // leader) holds up no other.
                let forgotten = match self.finish_parts(Action::Forget, &t.parts).await {
                    Ok(()) => self.controller.txn_change(TxnOp::Forget, &id, &key).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = forgotten {
                    tracing::debug!(txn = %id, error = %e, "transaction not forgotten yet");
                }
            }
        }
        Ok(())
    }

    /// Carries a decided transaction to its end: every part merged
    /// (committing; parts in segments a scale sealed are moved to the
    /// successors first) or dropped (aborting), then the end recorded. The
    /// record after.
    pub(crate) async fn finish_txn(&self, t: &TxnRecord) -> Result<TxnRecord, Error> {
        let mut t = t.clone();
        match t.state() {
            TxnState::Committing => {
                t = self.move_parts(t).await?;
                self.finish_parts(Action::Merge, &t.parts).await?;
            }
            TxnState::Aborting => self.finish_parts(Action::Drop, &t.parts).await?,
            _ => return Ok(t),
        }
        let (after, changed) = self
            .controller
            .txn_change_new(TxnOp::Finish, &t.id, &key_of(&t))
            .await?;
        let after = after.ok_or_else(|| Error::TransactionNotFound(t.id.clone()))?;
        if changed {
            match after.state() {
                TxnState::Committed => self.metrics.txn_commits.inc(),
                _ => self.metrics.txn_aborts.inc(),
            };
            tracing::debug!(txn = %t.id, state = after.state().name(), "transaction finished");
        }
        Ok(after)
    }

    /// Moves every part of committing `t` whose parent a scale sealed to
    /// the parent's successors (again, if those were sealed too), until
    /// every part's parent takes appends; the record after.
    async fn move_parts(&self, mut t: TxnRecord) -> Result<TxnRecord, Error> {
        for _ in 0..MOVE_ROUNDS_MAX {
            let stream = self.controller.get(&key_of(&t))?;
            let successors = |id: u64| {
                stream
                    .segments
                    .iter()
                    .find(|g| g.id == id)
                    .map(|g| g.successors.clone())
                    .unwrap_or_default()
            };
            let to_split: Vec<u64> = t
                .parts
                .iter()
                .filter(|p| !p.moving && !successors(p.segment_id).is_empty())
                .map(|p| p.txn_segment_id)
                .collect();
            for x in to_split {
                t = self
                    .controller
                    .txn_part_change(TxnOp::SplitPart, &t.id, x)
                    .await?
                    .ok_or_else(|| Error::TransactionNotFound(t.id.clone()))?;
            }
            let moving: Vec<TxnPart> = t.parts.iter().filter(|p| p.moving).cloned().collect();
            if moving.is_empty() {
                return Ok(t);
            }
            for part in moving {
                let targets: Vec<MoveTarget> = t
                    .parts
                    .iter()
                    .filter(|c| c.from == part.txn_segment_id)
                    .map(|c| {
                        let (key_low, key_high) = stream
                            .segments
                            .iter()
                            .find(|g| g.id == c.segment_id)
                            .map_or((0.0, 1.0), |g| (g.key_low, g.key_high));
                        MoveTarget {
                            segment_id: c.segment_id,
                            transaction_segment_id: c.txn_segment_id,
                            key_low,
                            key_high,
                        }
                    })
                    .collect();
                self.move_part(&part, targets).await?;
                t = self
                    .controller
                    .txn_part_change(TxnOp::PartMoved, &t.id, part.txn_segment_id)
                    .await?
                    .ok_or_else(|| Error::TransactionNotFound(t.id.clone()))?;
                tracing::info!(txn = %t.id, part = part.txn_segment_id, segment = part.segment_id, "transaction part moved to the successors of its sealed segment");
            }
        }
        Err(Error::Unavailable(format!(
            "transaction {}: its segments keep scaling; the commit carries on next pass",
            t.id
        )))
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
        let asks = by_container.into_values().map(|parts| async move {
            let first = parts.first().map_or(0, |p| p.segment_id);
            match self.local_finish_parts(action, &parts).await {
                Err(Error::NotLeader { leader, message }) => {
                    let parts = &parts;
                    self.at_replicas_of(first, leader, message, |addr| async move {
                        self.peers.finish_parts(&addr, action, parts).await
                    })
                    .await
                }
                other => other,
            }
        });
        for answer in futures::future::join_all(asks).await {
            answer?;
        }
        Ok(())
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
        let cmds: Vec<Cmd> = match action {
            Action::Forget => vec![Cmd::ForgetTxns(TxnSegmentsRef {
                txn_segment_ids: parts.iter().map(|p| p.txn_segment_id).collect(),
            })],
            Action::Merge => {
                // A parent's parts (a moved part's children may share one)
                // merge in one entry, so they land contiguously.
                let mut by_parent: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
                for p in parts {
                    by_parent
                        .entry(p.segment_id)
                        .or_default()
                        .push(p.txn_segment_id);
                }
                by_parent
                    .into_iter()
                    .map(|(segment_id, txn_segment_ids)| {
                        Cmd::MergeTxn(TxnPartsRef {
                            segment_id,
                            txn_segment_ids,
                        })
                    })
                    .collect()
            }
            _ => parts
                .iter()
                .map(|p| {
                    Cmd::DropTxn(TxnPartRef {
                        segment_id: p.segment_id,
                        txn_segment_id: p.txn_segment_id,
                    })
                })
                .collect(),
        };
        // Proposed together: one log write carries them all.
        for outcome in futures::future::join_all(cmds.into_iter().map(|cmd| c.propose(cmd))).await {
            outcome?;
        }
        Ok(())
    }

    /// Moves `part` to `targets` (its parent's successors' parts) at the
    /// leader of its container, here or elsewhere.
    async fn move_part(&self, part: &TxnPart, targets: Vec<MoveTarget>) -> Result<(), Error> {
        match self.local_move_part(part, &targets).await {
            Err(Error::NotLeader { leader, message }) => {
                let targets = &targets;
                self.at_replicas_of(part.segment_id, leader, message, |addr| async move {
                    self.peers.move_part(&addr, part, targets).await
                })
                .await
            }
            other => other,
        }
    }

    /// [`Node::move_part`] where this node leads the part's container: seal
    /// the part (no append may land after the copy), copy its events to the
    /// targets by routing key in order (numbered, so a repeated copy is a
    /// duplicate), then drop it. A part already dropped was moved before.
    pub(crate) async fn local_move_part(
        &self,
        part: &TxnPart,
        targets: &[MoveTarget],
    ) -> Result<(), Error> {
        let c = self.serving_container(part.segment_id)?;
        c.check_leader()?;
        let this = TxnPartRef {
            segment_id: part.segment_id,
            txn_segment_id: part.txn_segment_id,
        };
        c.propose(Cmd::SealTxn(this.clone())).await?;
        let Some((chunks, mem)) = c.txn_blocks(part.txn_segment_id).await? else {
            return Ok(());
        };
        // A spilled part's oldest bytes are in tier-2: read them back.
        let mut blocks = Vec::with_capacity(chunks.len() + mem.len());
        for chunk in &chunks {
            let mut at = chunk.start;
            while at < chunk.end {
                let bytes = self
                    .tier2
                    .read(part.txn_segment_id, chunk, at, MOVE_BATCH_BYTES)
                    .await?;
                at += bytes.len() as u64;
                blocks.push(bytes);
            }
        }
        blocks.extend(mem);
        let batches = route_events(&blocks, targets)?;
        let writer_id = format!("txn-move-{}", part.txn_segment_id);
        let copies = targets.iter().zip(batches).map(|(target, batches)| {
            let writer_id = writer_id.clone();
            async move {
                let mut next = 1i64;
                for (events, count) in batches {
                    let req = AppendPartRequest {
                        part: Some(FinishPart {
                            segment_id: target.segment_id,
                            transaction_segment_id: target.transaction_segment_id,
                        }),
                        writer_id: writer_id.clone(),
                        first_event_number: next,
                        event_count: count,
                        events: events.freeze(),
                    };
                    next += i64::from(count);
                    self.append_part(req).await?;
                }
                Ok::<(), Error>(())
            }
        });
        for copied in futures::future::join_all(copies).await {
            copied?;
        }
        if let Applied::TxnDropped { objects } = c.propose(Cmd::DropTxn(this)).await? {
            self.tier2.delete_unreferenced(objects).await;
        }
        Ok(())
    }

    /// Appends copied events to a transaction part at its container's
    /// leader, here or elsewhere.
    async fn append_part(&self, req: AppendPartRequest) -> Result<(), Error> {
        let segment = req.part.as_ref().map_or(0, |p| p.segment_id);
        match self.local_append_part(req.clone()).await {
            Err(Error::NotLeader { leader, message }) => {
                let req = &req;
                self.at_replicas_of(segment, leader, message, |addr| async move {
                    self.peers.append_part(&addr, req.clone()).await
                })
                .await
            }
            other => other,
        }
    }

    /// [`Node::append_part`] where this node leads the part's container.
    pub(crate) async fn local_append_part(&self, req: AppendPartRequest) -> Result<(), Error> {
        let part = req
            .part
            .ok_or_else(|| Error::InvalidArgument("an append to a part names the part".into()))?;
        let c = self.serving_container(part.segment_id)?;
        c.check_leader()?;
        let bytes = u32::try_from(req.events.len())
            .map_err(|_| Error::InvalidArgument("append over 4 GiB".into()))?;
        self.budget.wait_for_room(u64::from(bytes)).await;
        let cmd = Cmd::Append(Append {
            segment_id: part.transaction_segment_id,
            writer_id: req.writer_id,
            first_event_number: req.first_event_number,
            event_count: req.event_count,
            events: req.events,
            expected_length: None,
            txn_parent: Some(part.segment_id),
            append_ms: crate::tier::writer::now_ms(),
        });
        c.submit(cmd, bytes).await?.await?;
        Ok(())
    }
}

/// A moved part's events, per target (in `targets`' order), cut into
/// batches of about [`MOVE_BATCH_BYTES`]: each event goes to the target
/// whose key range holds its routing key (keyless ones to the first), in
/// the order the part holds them.
fn route_events(
    blocks: &[Bytes],
    targets: &[MoveTarget],
) -> Result<Vec<Vec<(BytesMut, u32)>>, Error> {
    if targets.is_empty() {
        return Err(Error::Internal(
            "a part moves to at least one segment".into(),
        ));
    }
    let mut order: Vec<usize> = (0..targets.len()).collect();
    order.sort_by(|&a, &b| targets[a].key_low.total_cmp(&targets[b].key_low));
    let mut out: Vec<Vec<(BytesMut, u32)>> = vec![Vec::new(); targets.len()];
    for block in blocks {
        let mut events = FrameIter::new(block.clone(), 0, usize::MAX);
        let mut at = 0usize;
        for event in events.by_ref() {
            let event = event.map_err(|e| Error::Corrupt(format!("a transaction part: {e}")))?;
            let target = match &event.routing_key {
                None => order[0],
                Some(key) => {
                    let pos = key_position(key);
                    order
                        .iter()
                        .copied()
                        .rev()
                        .find(|&i| targets[i].key_low <= pos)
                        .unwrap_or(order[0])
                }
            };
            let batches = &mut out[target];
            if batches
                .last()
                .is_none_or(|(b, _)| b.len() + event.framed_len > MOVE_BATCH_BYTES)
            {
                batches.push((BytesMut::new(), 0));
            }
            if let Some((b, n)) = batches.last_mut() {
                b.extend_from_slice(&block[at..at + event.framed_len]);
                *n += 1;
            }
            at += event.framed_len;
        }
    }
    Ok(out)
}
