//! Idempotent producers: producer ids, and a producer's batch as a
//! writer's numbered append.
//!
//! InitProducerId gives a producer id that no node gives twice: the node's
//! wall clock in ms, shifted left 10 bits, with the node id's low 10 bits
//! below (increasing on each node, even within one ms). A producer's
//! (id, epoch) is one Aquifer writer id per partition, and Kafka's
//! sequence numbers (from 0 per partition) are its event numbers minus
//! one, so the writer table's exactly-once rules (section 8) hold for
//! Kafka producers too: across retries, leader changes and restarts. A
//! bumped epoch starts a new writer at sequence 0.
//!
//! It owns the mapping and the classification of a batch against what is
//! applied; the append itself is `produce`'s.

use std::sync::atomic::{AtomicI64, Ordering};

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::records::Record;
use kafka_protocol::ResponseError as K;

use super::{codes, Kafka};

/// Bits of a producer id below the clock: the node id's low bits.
const NODE_BITS: u32 = 10;

/// Hands out this node's producer ids.
pub(super) struct ProducerIds {
    last: AtomicI64,
    node: i64,
}

impl ProducerIds {
    pub(super) fn new(node_id: u64) -> Self {
        ProducerIds {
            last: AtomicI64::new(0),
            node: (node_id & ((1 << NODE_BITS) - 1)) as i64,
        }
    }

    pub(super) fn next(&self) -> i64 {
        let now =
            i64::try_from(crate::tier::writer::now_ms()).unwrap_or(0) << NODE_BITS | self.node;
        let step = 1 << NODE_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let id = now.max(last + step);
            match self
                .last
                .compare_exchange(last, id, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return id,
                Err(seen) => last = seen,
            }
        }
    }
}

/// A produced batch's producer, from its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Sequenced {
    pub writer_id: String,
    pub producer_id: i64,
    pub epoch: i16,
    /// A transactional producer's batch: it goes to its transaction.
    pub transactional: bool,
    /// Event numbers: Kafka's sequences plus one.
    pub first: i64,
    pub last: i64,
}

/// The batch's producer and event numbers (None: no producer id, an
/// unnumbered append); or why the records cannot be taken.
pub(super) fn sequenced(records: &[&Record]) -> Result<Option<Sequenced>, (i16, String)> {
    let Some(first) = records.first() else {
        return Ok(None);
    };
    if first.producer_id < 0 {
        return Ok(None);
    }
    let mut next = i64::from(first.sequence);
    for r in records {
        if r.producer_id != first.producer_id
            || r.producer_epoch != first.producer_epoch
            || r.transactional != first.transactional
            || i64::from(r.sequence) != next
        {
            return Err((
                codes::INVALID_RECORD,
                "the records of one partition must come from one producer with consecutive sequences".into(),
            ));
        }
        next += 1;
    }
    Ok(Some(Sequenced {
        writer_id: format!(
            "kafka-producer-{}.{}",
            first.producer_id, first.producer_epoch
        ),
        producer_id: first.producer_id,
        epoch: first.producer_epoch,
        transactional: first.transactional,
        first: i64::from(first.sequence) + 1,
        last: next,
    }))
}

/// What to do with a batch, against its writer's last applied number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Checked {
    Append,
    /// Applied before: acknowledged again, never appended twice.
    Duplicate,
}

/// Against the writer's last applied event number: append, a duplicate,
/// or the Kafka error (out of order, unknown producer).
pub(super) fn check(s: &Sequenced, applied: i64) -> Result<Checked, (i16, String)> {
    if s.last <= applied {
        return Ok(Checked::Duplicate);
    }
    if s.first == applied + 1 {
        return Ok(Checked::Append);
    }
    if applied == 0 && s.first > 1 {
        // Nothing of this producer here: never written, or its writer id
        // expired (writer_id_expiry_ms); the producer starts again.
        return Err((
            K::UnknownProducerId.code(),
            format!(
                "no sequence of this producer is known here; sequence {} cannot follow",
                s.first - 1
            ),
        ));
    }
    Err((
        K::OutOfOrderSequenceNumber.code(),
        format!("sequence {} arrived, {} was expected", s.first - 1, applied),
    ))
}

/// A duplicate's answer: the offset the batch was appended at, when it is
/// one of the producer's last five batches in the partition (`original`,
/// from the writer table), as Kafka answers them; an older one is
/// `DUPLICATE_SEQUENCE_NUMBER`, which clients also take as success, with
/// no offset.
pub(super) fn duplicate(s: &Sequenced, original: Option<u64>) -> Result<i64, (i16, String)> {
    match original {
        Some(index) => Ok(i64::try_from(index).unwrap_or(i64::MAX)),
        None => Err((
            K::DuplicateSequenceNumber.code(),
            format!(
                "sequences {}..{} were appended before",
                s.first - 1,
                s.last - 1
            ),
        )),
    }
}

impl Kafka {
    pub(super) async fn init_producer_id(
        &self,
        req: InitProducerIdRequest,
        version: i16,
    ) -> InitProducerIdResponse {
        let r = InitProducerIdResponse::default();
        if let Some(tid) = req.transactional_id.as_ref().filter(|t| !t.0.is_empty()) {
            return self
                .init_transactional(tid.0.to_string(), req.transaction_timeout_ms, version)
                .await;
        }
        // A producer bumping its own epoch (KIP-360) keeps its id while
        // the epoch lasts.
        if req.producer_id.0 >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
            return r
                .with_producer_id(req.producer_id)
                .with_producer_epoch(req.producer_epoch + 1);
        }
        r.with_producer_id(ProducerId(self.producer_ids.next()))
            .with_producer_epoch(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_ids_increase_and_carry_the_node() {
        let ids = ProducerIds::new(3);
        let a = ids.next();
        let b = ids.next();
        assert!(b > a && a > 0);
        assert_eq!(a & 0x3ff, 3);
        assert_eq!(b & 0x3ff, 3);
    }

    #[test]
    fn batches_are_classified_like_kafka_does() {
        let s = |first: i64, last: i64| Sequenced {
            writer_id: "w".into(),
            producer_id: 1,
            epoch: 0,
            transactional: false,
            first,
            last,
        };
        assert_eq!(check(&s(1, 3), 0), Ok(Checked::Append));
        assert_eq!(check(&s(4, 5), 3), Ok(Checked::Append));
        assert_eq!(check(&s(1, 3), 3), Ok(Checked::Duplicate));
        assert_eq!(check(&s(2, 3), 5), Ok(Checked::Duplicate));
        assert_eq!(duplicate(&s(1, 3), Some(7)), Ok(7));
        assert_eq!(duplicate(&s(1, 3), None).unwrap_err().0, 46);
        assert_eq!(check(&s(2, 4), 3).unwrap_err().0, 45);
        assert_eq!(check(&s(6, 7), 3).unwrap_err().0, 45);
        assert_eq!(check(&s(6, 7), 0).unwrap_err().0, 59);
    }
}
