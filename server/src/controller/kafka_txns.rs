//! Kafka transactional producers, part of the metadata: each
//! transactional id's producer id, epoch and open transaction, changed by
//! `meta` entries, so they are replicated, in every snapshot, and there on
//! whichever node leads `meta` next (the Kafka transaction coordinator is
//! that node).
//!
//! A Kafka transaction is one Aquifer transaction (section 11b) per stream
//! it writes, begun when the producer adds the stream's first partition,
//! plus the consumer offsets it commits. Ending it is one entry that
//! commits (or aborts) every one of those transactions and applies the
//! offsets, so a commit is all or nothing across topics.
//!
//! Ids are forgotten when unused for `expiry_ms` (and their transaction
//! timeout), looked for at each InitProducerId, so replicas forget the same
//! ids at the same entry; at the bound, the id unused longest goes first.
//! A forgotten id's old producer is then unknown (`Mapping`), never let in.
//!
//! This module owns the table and its rules, and plans what else an entry
//! changes (Aquifer transactions to begin or end, offsets to apply); the
//! meta state carries the plan out. It never reads segments and never
//! decides whether a stream exists (the Aquifer begin does).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::kafka_offsets::{KafkaOffset, KafkaOffsetsCommand};
use super::txns::TxnState;

/// Transactional ids the cluster keeps: every one is in every metadata
/// snapshot (about 100 bytes each).
pub const KAFKA_TXN_IDS_MAX: usize = 100_000;
/// Streams (topics) one Kafka transaction may write.
pub const STREAMS_PER_TXN_MAX: usize = 256;
/// Consumer groups one Kafka transaction may commit offsets for.
pub const GROUPS_PER_TXN_MAX: usize = 16;
/// The owner label of the Aquifer transactions a Kafka one holds.
pub const OWNER_PREFIX: &str = "kafka-txn:";

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum KafkaTxnOp {
    Unspecified = 0,
    /// InitProducerId: a new producer, or the next epoch (fencing the
    /// last one and aborting what it left open).
    Init = 1,
    /// AddPartitionsToTxn: the first partition of a stream.
    AddStream = 2,
    /// AddOffsetsToTxn.
    AddGroup = 3,
    /// TxnOffsetCommit: offsets applied when the transaction commits.
    Offsets = 4,
    /// EndTxn.
    End = 5,
}

/// One change to transactional id `transactional_id`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KafkaTxnCommand {
    #[prost(string, tag = "1")]
    pub transactional_id: String,
    #[prost(enumeration = "KafkaTxnOp", tag = "2")]
    pub op: i32,
    /// The producer's id (Init: the id a new producer gets).
    #[prost(int64, tag = "3")]
    pub producer_id: i64,
    /// The producer's epoch (Init: unused).
    #[prost(int32, tag = "4")]
    pub epoch: i32,
    /// Init: the producer's transaction timeout.
    #[prost(uint64, tag = "5")]
    pub timeout_ms: u64,
    /// AddStream: the stream, and the id of the Aquifer transaction to
    /// begin on it.
    #[prost(string, tag = "6")]
    pub scope: String,
    #[prost(string, tag = "7")]
    pub stream: String,
    #[prost(string, tag = "8")]
    pub txn_id: String,
    /// AddGroup, Offsets: the consumer group.
    #[prost(string, tag = "9")]
    pub group: String,
    #[prost(message, repeated, tag = "10")]
    pub offsets: Vec<KafkaOffset>,
    /// End: commit (else abort).
    #[prost(bool, tag = "11")]
    pub commit: bool,
    /// The proposer's clock.
    #[prost(uint64, tag = "12")]
    pub now_ms: u64,
    /// Init: ids unused this long (and their timeout) are forgotten first
    /// (0: only at the bound).
    #[prost(uint64, tag = "13")]
    pub expiry_ms: u64,
}

/// A stream the open Kafka transaction writes, and its Aquifer transaction.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct KafkaTxnStream {
    #[prost(string, tag = "1")]
    pub scope: String,
    #[prost(string, tag = "2")]
    pub stream: String,
    #[prost(string, tag = "3")]
    pub txn_id: String,
}

/// Offsets of one group the open transaction commits.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KafkaTxnOffsets {
    #[prost(string, tag = "1")]
    pub group: String,
    #[prost(message, repeated, tag = "2")]
    pub offsets: Vec<KafkaOffset>,
}

/// How the last transaction of an id ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum Ended {
    None = 0,
    Committed = 1,
    Aborted = 2,
}

/// A transactional id, as every snapshot holds it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KafkaTxnRecord {
    #[prost(string, tag = "1")]
    pub transactional_id: String,
    #[prost(int64, tag = "2")]
    pub producer_id: i64,
    #[prost(int32, tag = "3")]
    pub epoch: i32,
    #[prost(uint64, tag = "4")]
    pub timeout_ms: u64,
    /// The open transaction's streams (empty: none open).
    #[prost(message, repeated, tag = "5")]
    pub streams: Vec<KafkaTxnStream>,
    /// Groups the open transaction was told of (AddOffsetsToTxn).
    #[prost(string, repeated, tag = "6")]
    pub groups: Vec<String>,
    #[prost(message, repeated, tag = "7")]
    pub offsets: Vec<KafkaTxnOffsets>,
    #[prost(enumeration = "Ended", tag = "8")]
    pub last_end: i32,
    #[prost(uint64, tag = "9")]
    pub updated_ms: u64,
}

impl KafkaTxnRecord {
    fn is_open(&self) -> bool {
        !self.streams.is_empty() || !self.groups.is_empty() || !self.offsets.is_empty()
    }

    /// The Aquifer transaction that holds stream `scope/stream`'s writes.
    pub fn txn_of(&self, scope: &str, stream: &str) -> Option<&str> {
        self.streams
            .iter()
            .find(|s| s.scope == scope && s.stream == stream)
            .map(|s| s.txn_id.as_str())
    }
}

/// Why a change is refused (each is a Kafka error: `kafka::txns`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KafkaTxnsError {
    /// Another producer took the id (a newer epoch), or this one's
    /// transaction timed out and the coordinator moved on.
    #[error("{0}")]
    Fenced(String),
    /// The producer id is not the id's.
    #[error("{0}")]
    Mapping(String),
    /// Not allowed in the transaction's state.
    #[error("{0}")]
    State(String),
    /// A bound reached.
    #[error("{0}")]
    Full(String),
    #[error("{0}")]
    Invalid(String),
}

/// An Aquifer transaction to begin with an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    pub scope: String,
    pub stream: String,
    pub txn_id: String,
    pub timeout_ms: u64,
    pub owner: String,
}

/// What an entry changes besides the table.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    pub begin: Option<Begin>,
    /// Aquifer transactions to commit (true) or abort (false).
    pub end: Vec<(String, bool)>,
    /// Offsets committed with the transaction.
    pub offsets: Vec<KafkaOffsetsCommand>,
    /// The transaction had timed out: it was aborted and the epoch bumped,
    /// so the producer is told it is fenced.
    pub timed_out: bool,
}

/// Every transactional id, which id each producer id is, and the ids by
/// when they were last used.
#[derive(Debug, Default)]
pub struct KafkaTxns {
    ids: BTreeMap<String, KafkaTxnRecord>,
    producers: HashMap<i64, String>,
    by_use: BTreeSet<(u64, String)>,
}

impl KafkaTxns {
    pub fn restore(records: Vec<KafkaTxnRecord>) -> Self {
        let mut t = KafkaTxns::default();
        for r in records {
            t.put(r);
        }
        t
    }

    pub fn snapshot(&self) -> Vec<KafkaTxnRecord> {
        self.ids.values().cloned().collect()
    }

    pub fn get(&self, transactional_id: &str) -> Option<&KafkaTxnRecord> {
        self.ids.get(transactional_id)
    }

    /// The record of the transactional id producer `producer_id` is.
    pub fn of_producer(&self, producer_id: i64) -> Option<&KafkaTxnRecord> {
        self.ids.get(self.producers.get(&producer_id)?)
    }

    /// Stores `r` (as a plan was carried out).
    pub fn put(&mut self, r: KafkaTxnRecord) {
        self.remove(&r.transactional_id);
        self.producers
            .insert(r.producer_id, r.transactional_id.clone());
        self.by_use
            .insert((r.updated_ms, r.transactional_id.clone()));
        self.ids.insert(r.transactional_id.clone(), r);
    }

    fn remove(&mut self, transactional_id: &str) {
        if let Some(old) = self.ids.remove(transactional_id) {
            self.producers.remove(&old.producer_id);
            self.by_use.remove(&(old.updated_ms, old.transactional_id));
        }
    }

    /// Before Init `c` of a new id: forgets the ids unused for its
    /// `expiry_ms` and their timeout, and at the bound the one unused
    /// longest whose timeout has passed (its transaction is over); how
    /// many it forgot.
    pub fn make_room(&mut self, c: &KafkaTxnCommand) -> usize {
        let over = |r: &KafkaTxnRecord, idle_ms: u64| {
            r.updated_ms.saturating_add(idle_ms.max(r.timeout_ms)) < c.now_ms
        };
        let mut gone = Vec::new();
        for (_, id) in &self.by_use {
            let Some(r) = self.ids.get(id) else { continue };
            let expired = c.expiry_ms > 0 && over(r, c.expiry_ms);
            let evicted = gone.is_empty() && self.ids.len() >= KAFKA_TXN_IDS_MAX && over(r, 0);
            if !(expired || evicted) {
                break;
            }
            gone.push(id.clone());
        }
        for id in &gone {
            self.remove(id);
        }
        gone.len()
    }

    /// The record after `c` and what else changes with it; nothing here
    /// changes. `state_of` answers an Aquifer transaction's state (None:
    /// forgotten, long finished).
    pub fn plan(
        &self,
        c: &KafkaTxnCommand,
        state_of: impl Fn(&str) -> Option<TxnState>,
    ) -> Result<(KafkaTxnRecord, Plan), KafkaTxnsError> {
        let op = KafkaTxnOp::try_from(c.op).unwrap_or(KafkaTxnOp::Unspecified);
        let tid = &c.transactional_id;
        if op == KafkaTxnOp::Init {
            return self.plan_init(c, &state_of);
        }
        let mut r = self.ids.get(tid).cloned().ok_or_else(|| {
            KafkaTxnsError::Mapping(format!(
                "transactional id {tid:?} has no producer: call InitProducerId first"
            ))
        })?;
        check_producer(&r, c)?;
        r.updated_ms = c.now_ms;
        // An Aquifer transaction that is no longer open timed out (or its
        // stream went): the Kafka transaction is over, as Kafka's
        // coordinator aborts one past its timeout and bumps the epoch.
        if r.streams
            .iter()
            .any(|s| state_of(&s.txn_id) != Some(TxnState::Open))
        {
            let plan = Plan {
                end: abort_all(&r, &state_of),
                timed_out: true,
                ..Plan::default()
            };
            clear(&mut r, Ended::Aborted);
            bump(&mut r, c.producer_id);
            return Ok((r, plan));
        }
        let mut plan = Plan::default();
        match op {
            KafkaTxnOp::AddStream => {
                if r.txn_of(&c.scope, &c.stream).is_none() {
                    if r.streams.len() >= STREAMS_PER_TXN_MAX {
                        return Err(KafkaTxnsError::Full(format!(
                            "a transaction writes at most {STREAMS_PER_TXN_MAX} topics"
                        )));
                    }
                    plan.begin = Some(Begin {
                        scope: c.scope.clone(),
                        stream: c.stream.clone(),
                        txn_id: c.txn_id.clone(),
                        timeout_ms: r.timeout_ms,
                        owner: format!("{OWNER_PREFIX}{tid}"),
                    });
                    r.streams.push(KafkaTxnStream {
                        scope: c.scope.clone(),
                        stream: c.stream.clone(),
                        txn_id: c.txn_id.clone(),
                    });
                }
            }
            KafkaTxnOp::AddGroup => add_group(&mut r, &c.group)?,
            KafkaTxnOp::Offsets => {
                add_group(&mut r, &c.group)?;
                let pending = match r.offsets.iter_mut().find(|o| o.group == c.group) {
                    Some(p) => p,
                    None => {
                        r.offsets.push(KafkaTxnOffsets {
                            group: c.group.clone(),
                            offsets: Vec::new(),
                        });
                        // Just pushed.
                        let last = r.offsets.len() - 1;
                        &mut r.offsets[last]
                    }
                };
                for o in &c.offsets {
                    let same = |p: &KafkaOffset| {
                        p.scope == o.scope && p.stream == o.stream && p.partition == o.partition
                    };
                    pending.offsets.retain(|p| !same(p));
                    pending.offsets.push(o.clone());
                }
            }
            KafkaTxnOp::End => {
                let asked = if c.commit {
                    Ended::Committed
                } else {
                    Ended::Aborted
                };
                if !r.is_open() {
                    // A retry of the end that was answered, or an end with
                    // nothing begun.
                    if r.last_end == asked as i32 {
                        return Ok((r, plan));
                    }
                    return Err(KafkaTxnsError::State(format!(
                        "transactional id {tid:?} has no open transaction to {}",
                        if c.commit { "commit" } else { "abort" }
                    )));
                }
                plan.end = r
                    .streams
                    .iter()
                    .map(|s| (s.txn_id.clone(), c.commit))
                    .collect();
                if c.commit {
                    plan.offsets = r
                        .offsets
                        .iter()
                        .map(|o| KafkaOffsetsCommand {
                            group: o.group.clone(),
                            offsets: o.offsets.clone(),
                            delete: false,
                        })
                        .collect();
                }
                clear(&mut r, asked);
            }
            KafkaTxnOp::Init | KafkaTxnOp::Unspecified => {
                return Err(KafkaTxnsError::Invalid(format!(
                    "Kafka transaction op {}",
                    c.op
                )))
            }
        }
        Ok((r, plan))
    }

    fn plan_init(
        &self,
        c: &KafkaTxnCommand,
        state_of: &impl Fn(&str) -> Option<TxnState>,
    ) -> Result<(KafkaTxnRecord, Plan), KafkaTxnsError> {
        let mut plan = Plan::default();
        let r = match self.ids.get(&c.transactional_id) {
            None => {
                if self.ids.len() >= KAFKA_TXN_IDS_MAX {
                    return Err(KafkaTxnsError::Full(format!(
                        "the cluster keeps {KAFKA_TXN_IDS_MAX} transactional ids, the most it \
                         holds, and none is unused past its transaction timeout: reuse ids \
                         rather than making new ones"
                    )));
                }
                KafkaTxnRecord {
                    transactional_id: c.transactional_id.clone(),
                    producer_id: c.producer_id,
                    epoch: 0,
                    timeout_ms: c.timeout_ms,
                    updated_ms: c.now_ms,
                    ..Default::default()
                }
            }
            Some(old) => {
                let mut r = old.clone();
                // What the fenced producer left open is aborted.
                plan.end = abort_all(&r, state_of);
                let ended = if r.is_open() {
                    Ended::Aborted
                } else {
                    Ended::try_from(r.last_end).unwrap_or(Ended::None)
                };
                clear(&mut r, ended);
                bump(&mut r, c.producer_id);
                r.timeout_ms = c.timeout_ms;
                r.updated_ms = c.now_ms;
                r
            }
        };
        Ok((r, plan))
    }
}

/// The producer must be the id's, at its epoch.
fn check_producer(r: &KafkaTxnRecord, c: &KafkaTxnCommand) -> Result<(), KafkaTxnsError> {
    if c.producer_id != r.producer_id {
        return Err(KafkaTxnsError::Mapping(format!(
            "producer id {} is not transactional id {:?}'s",
            c.producer_id, r.transactional_id
        )));
    }
    if c.epoch != r.epoch {
        return Err(KafkaTxnsError::Fenced(format!(
            "producer epoch {} of transactional id {:?} is fenced by epoch {}",
            c.epoch, r.transactional_id, r.epoch
        )));
    }
    Ok(())
}

fn add_group(r: &mut KafkaTxnRecord, group: &str) -> Result<(), KafkaTxnsError> {
    if group.is_empty() {
        return Err(KafkaTxnsError::Invalid("an empty group id".into()));
    }
    if !r.groups.iter().any(|g| g == group) {
        if r.groups.len() >= GROUPS_PER_TXN_MAX {
            return Err(KafkaTxnsError::Full(format!(
                "a transaction commits offsets of at most {GROUPS_PER_TXN_MAX} groups"
            )));
        }
        r.groups.push(group.to_string());
    }
    Ok(())
}

/// Aborts of every still-live Aquifer transaction of `r`.
fn abort_all(
    r: &KafkaTxnRecord,
    state_of: &impl Fn(&str) -> Option<TxnState>,
) -> Vec<(String, bool)> {
    r.streams
        .iter()
        .filter(|s| state_of(&s.txn_id) == Some(TxnState::Open))
        .map(|s| (s.txn_id.clone(), false))
        .collect()
}

fn clear(r: &mut KafkaTxnRecord, ended: Ended) {
    r.streams.clear();
    r.groups.clear();
    r.offsets.clear();
    r.last_end = ended as i32;
}

/// The next epoch; a new producer id once the epoch would pass Kafka's
/// largest (a short).
fn bump(r: &mut KafkaTxnRecord, fresh_producer_id: i64) {
    if r.epoch >= i32::from(i16::MAX) - 1 {
        r.producer_id = fresh_producer_id;
        r.epoch = 0;
    } else {
        r.epoch += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(op: KafkaTxnOp, pid: i64, epoch: i32) -> KafkaTxnCommand {
        KafkaTxnCommand {
            transactional_id: "t".into(),
            op: op as i32,
            producer_id: pid,
            epoch,
            timeout_ms: 60_000,
            ..Default::default()
        }
    }

    fn run(
        t: &mut KafkaTxns,
        c: KafkaTxnCommand,
        states: &HashMap<String, TxnState>,
    ) -> Result<Plan, KafkaTxnsError> {
        let (r, plan) = t.plan(&c, |id| states.get(id).copied())?;
        t.put(r);
        Ok(plan)
    }

    fn add(stream: &str, txn: &str, pid: i64, epoch: i32) -> KafkaTxnCommand {
        KafkaTxnCommand {
            scope: "kafka".into(),
            stream: stream.into(),
            txn_id: txn.into(),
            ..cmd(KafkaTxnOp::AddStream, pid, epoch)
        }
    }

    #[test]
    fn a_transaction_begins_per_stream_and_ends_all_at_once() {
        let mut t = KafkaTxns::default();
        let mut states = HashMap::new();
        run(&mut t, cmd(KafkaTxnOp::Init, 7, 0), &states).unwrap();
        assert_eq!(t.of_producer(7).map(|r| r.epoch), Some(0));
        let plan = run(&mut t, add("a", "x1", 7, 0), &states).unwrap();
        assert_eq!(plan.begin.map(|b| b.owner), Some("kafka-txn:t".to_string()));
        states.insert("x1".to_string(), TxnState::Open);
        // The same stream again begins nothing.
        assert_eq!(
            run(&mut t, add("a", "x9", 7, 0), &states).unwrap().begin,
            None
        );
        run(&mut t, add("b", "x2", 7, 0), &states).unwrap();
        states.insert("x2".to_string(), TxnState::Open);
        let offsets = KafkaTxnCommand {
            group: "g".into(),
            offsets: vec![KafkaOffset {
                scope: "kafka".into(),
                stream: "in".into(),
                partition: 0,
                offset: 5,
                ..Default::default()
            }],
            ..cmd(KafkaTxnOp::Offsets, 7, 0)
        };
        run(&mut t, offsets, &states).unwrap();
        let end = KafkaTxnCommand {
            commit: true,
            ..cmd(KafkaTxnOp::End, 7, 0)
        };
        let plan = run(&mut t, end.clone(), &states).unwrap();
        assert_eq!(
            plan.end,
            vec![("x1".to_string(), true), ("x2".to_string(), true)]
        );
        assert_eq!(plan.offsets.len(), 1);
        assert_eq!(plan.offsets[0].offsets[0].offset, 5);
        // A retried end is answered again, changing nothing; the other
        // end is refused.
        assert_eq!(run(&mut t, end, &states).unwrap(), Plan::default());
        let abort = cmd(KafkaTxnOp::End, 7, 0);
        assert!(matches!(
            run(&mut t, abort, &states),
            Err(KafkaTxnsError::State(_))
        ));
    }

    #[test]
    fn a_new_epoch_fences_the_old_producer_and_aborts_what_it_left() {
        let mut t = KafkaTxns::default();
        let mut states = HashMap::new();
        run(&mut t, cmd(KafkaTxnOp::Init, 7, 0), &states).unwrap();
        run(&mut t, add("a", "x1", 7, 0), &states).unwrap();
        states.insert("x1".to_string(), TxnState::Open);
        let plan = run(&mut t, cmd(KafkaTxnOp::Init, 8, 0), &states).unwrap();
        assert_eq!(plan.end, vec![("x1".to_string(), false)]);
        let r = t.get("t").unwrap();
        assert_eq!((r.producer_id, r.epoch), (7, 1), "same id, next epoch");
        assert!(matches!(
            run(&mut t, add("a", "x2", 7, 0), &states),
            Err(KafkaTxnsError::Fenced(_))
        ));
        assert!(matches!(
            run(&mut t, add("a", "x2", 99, 1), &states),
            Err(KafkaTxnsError::Mapping(_))
        ));
        // Past the largest epoch, a new producer id.
        let mut r = t.get("t").unwrap().clone();
        r.epoch = i32::from(i16::MAX) - 1;
        t.put(r);
        run(&mut t, cmd(KafkaTxnOp::Init, 55, 0), &states).unwrap();
        assert_eq!(t.of_producer(55).map(|r| r.epoch), Some(0));
        assert!(t.of_producer(7).is_none());
    }

    #[test]
    fn unused_ids_are_forgotten_and_the_bound_makes_room() {
        let mut t = KafkaTxns::default();
        let states = HashMap::new();
        let init = |id: &str, now_ms: u64, expiry_ms: u64| KafkaTxnCommand {
            transactional_id: id.into(),
            now_ms,
            expiry_ms,
            timeout_ms: 1_000,
            ..cmd(KafkaTxnOp::Init, now_ms as i64, 0)
        };
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            run(&mut t, init(id, 10_000 * (i as u64 + 1), 0), &states).unwrap();
        }
        // Unused for 15 s at 40 s: a (10 s) and b (20 s), not c (30 s).
        assert_eq!(t.make_room(&init("d", 40_000, 15_000)), 2);
        assert!(t.get("a").is_none() && t.get("b").is_none());
        assert!(t.get("c").is_some());
        assert!(t.of_producer(10_000).is_none(), "its producer is unknown");
        // Never, without expiry, below the bound.
        assert_eq!(t.make_room(&init("e", 10_000_000, 0)), 0);
    }

    #[test]
    fn a_timed_out_transaction_fences_its_producer() {
        let mut t = KafkaTxns::default();
        let mut states = HashMap::new();
        run(&mut t, cmd(KafkaTxnOp::Init, 7, 0), &states).unwrap();
        run(&mut t, add("a", "x1", 7, 0), &states).unwrap();
        states.insert("x1".to_string(), TxnState::Open);
        run(&mut t, add("b", "x2", 7, 0), &states).unwrap();
        states.insert("x2".to_string(), TxnState::Open);
        // x1 times out: the next change finds it aborting.
        states.insert("x1".to_string(), TxnState::Aborting);
        let end = KafkaTxnCommand {
            commit: true,
            ..cmd(KafkaTxnOp::End, 7, 0)
        };
        let plan = run(&mut t, end, &states).unwrap();
        assert!(plan.timed_out);
        assert_eq!(
            plan.end,
            vec![("x2".to_string(), false)],
            "the rest aborted"
        );
        assert!(plan.offsets.is_empty());
        assert_eq!(t.get("t").map(|r| r.epoch), Some(1));
    }
}
