//! Kafka transactions: the transaction coordinator's requests
//! (InitProducerId with a transactional id, AddPartitionsToTxn,
//! AddOffsetsToTxn, EndTxn), TxnOffsetCommit, and where a transactional
//! batch is appended, on top of Aquifer transactions.
//!
//! The coordinator of every transactional id is the node leading `meta`,
//! as for groups: each request is one `meta` entry
//! (`controller::kafka_txns`), answered once applied on a quorum. A
//! Kafka transaction writes each topic into the parts of one Aquifer
//! transaction (section 11b), so nothing of it is in any partition before
//! EndTxn commits it; then every part is merged at once. It owns the
//! mapping from requests to entries and Kafka's error codes; the rules are
//! `controller::kafka_txns`'.

use std::time::{Duration, Instant};

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, EndTxnRequest, EndTxnResponse, InitProducerIdResponse, ProducerId,
    TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use kafka_protocol::ResponseError as K;
use rand::Rng;

use super::membership::Code;
use super::offsets::{commit_answers, commits_of};
use super::{codes, topics, Kafka};
use crate::controller::kafka_txns::{KafkaTxnCommand, KafkaTxnOp, KafkaTxnRecord, KafkaTxnsError};
use crate::controller::txns::{TxnPart, TxnState, TXN_TIMEOUT_MAX_MS, TXN_TIMEOUT_MIN_MS};
use crate::error::Error;

/// The longest EndTxn and InitProducerId wait for the transactions they
/// end to be merged or dropped (the driver finishes them after that).
const SETTLE_WAIT: Duration = Duration::from_secs(10);
/// The longest a transactional batch waits for this node's metadata to
/// learn of the partition's transaction (added on the coordinator).
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

/// The Kafka code of a refusal by the rules. Fencing is
/// `INVALID_PRODUCER_EPOCH` in versions before `PRODUCER_FENCED` existed
/// (InitProducerId 4, AddPartitionsToTxn 2, AddOffsetsToTxn 2, EndTxn 2,
/// TxnOffsetCommit 3, as Kafka answers them).
fn rule_code(e: &KafkaTxnsError, fenced_code: Code) -> Code {
    match e {
        KafkaTxnsError::Fenced(_) => fenced_code,
        KafkaTxnsError::Mapping(_) => K::InvalidProducerIdMapping.code(),
        KafkaTxnsError::State(_) => K::InvalidTxnState.code(),
        KafkaTxnsError::Full(_) | KafkaTxnsError::Invalid(_) => K::InvalidRequest.code(),
    }
}

/// The fencing code for `version` of an API where `PRODUCER_FENCED`
/// begins at `since`.
fn fenced(version: i16, since: i16) -> Code {
    if version >= since {
        K::ProducerFenced.code()
    } else {
        K::InvalidProducerEpoch.code()
    }
}

impl Kafka {
    /// Proposes `c`; the record after it, or the Kafka code of a refusal
    /// (`fenced_code` for fencing and for a transaction that timed out).
    async fn txn_change(
        &self,
        c: KafkaTxnCommand,
        fenced_code: Code,
    ) -> Result<KafkaTxnRecord, Code> {
        let tid = c.transactional_id.clone();
        match self.node.controller.kafka_txn_change(c).await {
            Ok(Ok((record, false))) => Ok(record),
            Ok(Ok((_, true))) => {
                tracing::info!(transactional_id = %tid, "Kafka transaction had timed out: aborted, producer fenced");
                Err(fenced_code)
            }
            Ok(Err(e)) => {
                tracing::debug!(transactional_id = %tid, error = %e, "Kafka transaction change refused");
                Err(rule_code(&e, fenced_code))
            }
            Err(e) => {
                tracing::debug!(transactional_id = %tid, error = %e, "Kafka transaction change failed");
                Err(codes::meta_code(&e, K::NotCoordinator.code()))
            }
        }
    }

    /// Waits (bounded) until the Aquifer transactions `ids` are merged or
    /// dropped, so an answered EndTxn means visible; what is left the
    /// metadata leader's driver finishes.
    async fn settle(&self, ids: Vec<String>) {
        let deadline = Instant::now() + SETTLE_WAIT;
        for id in ids {
            while Instant::now() < deadline {
                let Some(t) = self.node.controller.txn(&id) else {
                    break;
                };
                if t.state().is_finished() || t.state() == TxnState::Open {
                    break;
                }
                match self.node.finish_txn(&t).await {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::debug!(txn = %id, error = %e, "Kafka transaction not finished yet");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }

    /// The Aquifer transactions transactional id `tid` has open now.
    fn open_txns(&self, tid: &str) -> Vec<String> {
        self.node
            .controller
            .kafka_txn(tid)
            .map(|r| r.streams.into_iter().map(|s| s.txn_id).collect())
            .unwrap_or_default()
    }

    /// InitProducerId with a transactional id: the id's producer at its
    /// next epoch (a new producer: epoch 0), the last one fenced and what
    /// it left open aborted.
    pub(super) async fn init_transactional(
        &self,
        tid: String,
        timeout_ms: i32,
        version: i16,
    ) -> InitProducerIdResponse {
        let r = InitProducerIdResponse::default()
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let timeout = u64::try_from(timeout_ms).unwrap_or(0);
        if !(TXN_TIMEOUT_MIN_MS..=TXN_TIMEOUT_MAX_MS).contains(&timeout) {
            return r.with_error_code(K::InvalidTransactionTimeout.code());
        }
        let left = self.open_txns(&tid);
        let c = KafkaTxnCommand {
            transactional_id: tid,
            op: KafkaTxnOp::Init as i32,
            producer_id: self.producer_ids.next(),
            timeout_ms: timeout,
            expiry_ms: self.node.config.kafka_transactional_id_expiry_ms,
            ..Default::default()
        };
        match self.txn_change(c, fenced(version, 4)).await {
            Ok(record) => {
                self.settle(left).await;
                r.with_producer_id(ProducerId(record.producer_id))
                    // Fits: the rules keep epochs below i16::MAX.
                    .with_producer_epoch(record.epoch as i16)
            }
            Err(code) => r.with_error_code(code),
        }
    }

    pub(super) async fn add_partitions_to_txn(
        &self,
        req: AddPartitionsToTxnRequest,
        version: i16,
    ) -> AddPartitionsToTxnResponse {
        let tid = req.v3_and_below_transactional_id.0.to_string();
        let mut r = AddPartitionsToTxnResponse::default();
        for t in req.v3_and_below_topics {
            let topic = t.name.0.to_string();
            let code = match topics::partitions(self, &topic) {
                Err(code) => code,
                Ok(parts)
                    if t.partitions
                        .iter()
                        .any(|p| usize::try_from(*p).map_or(true, |i| i >= parts.len())) =>
                {
                    K::UnknownTopicOrPartition.code()
                }
                Ok(_) => {
                    let key = self.key(&topic);
                    let c = KafkaTxnCommand {
                        transactional_id: tid.clone(),
                        op: KafkaTxnOp::AddStream as i32,
                        producer_id: req.v3_and_below_producer_id.0,
                        epoch: i32::from(req.v3_and_below_producer_epoch),
                        scope: key.scope.clone(),
                        stream: key.stream.clone(),
                        txn_id: format!("{:032x}", rand::rng().random::<u128>()),
                        ..Default::default()
                    };
                    match self.txn_change(c, fenced(version, 2)).await {
                        Ok(record) => {
                            if let Some(id) = record.txn_of(&key.scope, &key.stream) {
                                self.node.renew_lease(id, record.timeout_ms);
                            }
                            codes::NONE
                        }
                        Err(code) => code,
                    }
                }
            };
            r.results_by_topic_v3_and_below.push(
                AddPartitionsToTxnTopicResult::default()
                    .with_name(t.name)
                    .with_results_by_partition(
                        t.partitions
                            .into_iter()
                            .map(|p| {
                                AddPartitionsToTxnPartitionResult::default()
                                    .with_partition_index(p)
                                    .with_partition_error_code(code)
                            })
                            .collect(),
                    ),
            );
        }
        r
    }

    pub(super) async fn add_offsets_to_txn(
        &self,
        req: AddOffsetsToTxnRequest,
        version: i16,
    ) -> AddOffsetsToTxnResponse {
        let c = KafkaTxnCommand {
            transactional_id: req.transactional_id.0.to_string(),
            op: KafkaTxnOp::AddGroup as i32,
            producer_id: req.producer_id.0,
            epoch: i32::from(req.producer_epoch),
            group: req.group_id.0.to_string(),
            ..Default::default()
        };
        let code = match self.txn_change(c, fenced(version, 2)).await {
            Ok(_) => codes::NONE,
            Err(code) => code,
        };
        AddOffsetsToTxnResponse::default().with_error_code(code)
    }

    /// TxnOffsetCommit: offsets recorded with the open transaction and
    /// committed with it (checked against the group as OffsetCommit is).
    pub(super) async fn txn_offset_commit(
        &self,
        req: TxnOffsetCommitRequest,
        version: i16,
    ) -> TxnOffsetCommitResponse {
        let group = req.group_id.0.to_string();
        let instance = req.group_instance_id.as_ref().map(|i| i.to_string());
        let allowed = self.commit_rights(
            &group,
            &req.member_id,
            req.generation_id,
            instance.as_deref(),
        );
        // The leader epoch field exists from v2 on.
        let topics = commits_of!(req.topics, version >= 2);
        let (answers, offsets) = self.checked_commits(topics, &allowed);
        let failed = if offsets.is_empty() {
            codes::NONE
        } else {
            let c = KafkaTxnCommand {
                transactional_id: req.transactional_id.0.to_string(),
                op: KafkaTxnOp::Offsets as i32,
                producer_id: req.producer_id.0,
                epoch: i32::from(req.producer_epoch),
                group,
                offsets,
                ..Default::default()
            };
            match self.txn_change(c, fenced(version, 3)).await {
                Ok(_) => codes::NONE,
                Err(code) => code,
            }
        };
        let mut r = TxnOffsetCommitResponse::default();
        r.topics = commit_answers!(
            TxnOffsetCommitResponseTopic,
            TxnOffsetCommitResponsePartition,
            answers,
            failed
        );
        r
    }

    /// EndTxn: every topic's Aquifer transaction committed (or aborted),
    /// with the offsets, in one entry; answered once they are merged (or
    /// the wait ran out: they are decided, the driver merges them).
    pub(super) async fn end_txn(&self, req: EndTxnRequest, version: i16) -> EndTxnResponse {
        let tid = req.transactional_id.0.to_string();
        let ending = self.open_txns(&tid);
        let c = KafkaTxnCommand {
            transactional_id: tid,
            op: KafkaTxnOp::End as i32,
            producer_id: req.producer_id.0,
            epoch: i32::from(req.producer_epoch),
            commit: req.committed,
            ..Default::default()
        };
        let code = match self.txn_change(c, fenced(version, 2)).await {
            Ok(_) => {
                self.settle(ending).await;
                codes::NONE
            }
            Err(code) => code,
        };
        EndTxnResponse::default()
            .with_error_code(code)
            .with_producer_id(req.producer_id)
            .with_producer_epoch(req.producer_epoch)
    }

    /// Where producer `producer_id` at `epoch` writes partition segment
    /// `parent` of stream `scope/stream` in its open transaction: the
    /// part. Waits (bounded) for this node's metadata to learn what the
    /// coordinator recorded.
    pub(super) async fn txn_part_of(
        &self,
        producer_id: i64,
        epoch: i16,
        scope: &str,
        stream: &str,
        parent: u64,
    ) -> Result<TxnPart, (Code, String)> {
        let deadline = Instant::now() + CATCH_UP_WAIT;
        loop {
            let found = self.node.controller.kafka_txn_of_producer(producer_id);
            let part = found.as_ref().and_then(|r| {
                let id = r.txn_of(scope, stream)?;
                let t = self.node.controller.txn(id)?;
                Some((r.epoch, t))
            });
            match (found.as_ref(), part) {
                (Some(r), _) if r.epoch > i32::from(epoch) => {
                    return Err((
                        K::InvalidProducerEpoch.code(),
                        format!(
                            "producer epoch {epoch} is fenced by epoch {} of transactional id {:?}",
                            r.epoch, r.transactional_id
                        ),
                    ))
                }
                (Some(_), Some((e, t))) if e == i32::from(epoch) => {
                    if t.state() != TxnState::Open {
                        return Err((
                            K::InvalidProducerEpoch.code(),
                            format!("the transaction is {} (timed out?)", t.state().name()),
                        ));
                    }
                    return t
                        .parts
                        .iter()
                        .find(|p| p.segment_id == parent && !p.moving)
                        .cloned()
                        .ok_or((
                            K::InvalidTxnState.code(),
                            "the partition is not in the transaction's stream".into(),
                        ));
                }
                _ if Instant::now() >= deadline => {
                    return Err((
                        K::InvalidTxnState.code(),
                        format!(
                            "producer {producer_id} epoch {epoch} has not added topic {stream} \
                             to a transaction (AddPartitionsToTxn)"
                        ),
                    ))
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// An error of the part's append as a Kafka code: a part that is gone
/// (merged, dropped: the transaction ended) fences the batch.
pub(super) fn part_append_code(e: &Error) -> Code {
    match e {
        Error::TransactionState { .. } | Error::SegmentSealed(_) => K::InvalidProducerEpoch.code(),
        other => codes::code_of(other),
    }
}
