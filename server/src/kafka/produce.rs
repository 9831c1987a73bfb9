//! Produce: a partition's records appended as one batch of events.
//!
//! Each partition's records become one append, checked and admitted as
//! the gRPC appends are (free-space floor, tail budget, in-flight budget)
//! and acknowledged only once applied, that is committed on a quorum and
//! fsynced: so `acks=1` is as durable as `acks=all` here. The partitions
//! of one request are appended concurrently. An idempotent producer's
//! batch is a numbered append of its writer id (`producers`): exactly
//! once. Without a producer id the append carries no writer id: at least
//! once, as a Kafka producer without idempotence is.

use std::time::Duration;

use futures::future::join_all;
use kafka_protocol::messages::produce_request::PartitionProduceData;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as K;

use super::producers::{Checked, Sequenced};
use super::records::{events_of, Produced};
use super::{codes, producers, topics, txns, Kafka};
use crate::container::command::{self, Cmd};
use crate::container::segment::Segment;
use crate::container::state::Applied;
use crate::error::Error;

/// The longest a produce waits for its appends, whatever it asks.
const PRODUCE_WAIT_MAX: Duration = Duration::from_secs(120);

impl Kafka {
    pub(super) async fn produce(&self, req: ProduceRequest, version: i16) -> ProduceResponse {
        let wait = Duration::from_millis(u64::try_from(req.timeout_ms).unwrap_or(0))
            .clamp(Duration::from_millis(1), PRODUCE_WAIT_MAX);
        let mut r = ProduceResponse::default();
        for t in req.topic_data {
            let topic = t.name.0.to_string();
            let answers = join_all(
                t.partition_data
                    .into_iter()
                    .map(|p| self.produce_partition(&topic, p, wait, version)),
            )
            .await;
            r.responses.push(
                TopicProduceResponse::default()
                    .with_name(t.name)
                    .with_partition_responses(answers),
            );
        }
        r
    }

    async fn produce_partition(
        &self,
        topic: &str,
        p: PartitionProduceData,
        wait: Duration,
        version: i16,
    ) -> PartitionProduceResponse {
        let answer = PartitionProduceResponse::default()
            .with_index(p.index)
            .with_base_offset(-1)
            .with_log_append_time_ms(-1);
        let outcome = match tokio::time::timeout(wait, self.append(topic, p)).await {
            Ok(o) => o,
            Err(_) => Err((
                codes::REQUEST_TIMED_OUT,
                format!("not acknowledged within {} ms", wait.as_millis()),
            )),
        };
        match outcome {
            Ok((base, start)) if version >= 5 => {
                answer.with_base_offset(base).with_log_start_offset(start)
            }
            Ok((base, _)) => answer.with_base_offset(base),
            Err((code, message)) => {
                tracing::debug!(topic, error = %message, "Kafka produce refused");
                // The error message field exists from v8 on.
                let answer = answer.with_error_code(code);
                if version >= 8 {
                    answer.with_error_message(Some(StrBytes::from_string(message)))
                } else {
                    answer
                }
            }
        }
    }

    /// Appends one partition's records; the base offset and log start.
    async fn append(
        &self,
        topic: &str,
        p: PartitionProduceData,
    ) -> Result<(i64, i64), (i16, String)> {
        let parts =
            topics::partitions(self, topic).map_err(|c| (c, format!("no topic {topic}")))?;
        let part = usize::try_from(p.index)
            .ok()
            .and_then(|i| parts.get(i))
            .ok_or((
                codes::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic {topic} has no partition {}", p.index),
            ))?;
        let records = p
            .records
            .ok_or((codes::CORRUPT_MESSAGE, "no records".to_string()))?;
        let produced = events_of(records, self.node.config.event_bytes_max)?;
        let failed = |e: Error| (codes::code_of(&e), e.to_string());
        let (container, segment) =
            crate::api::append::appendable(&self.node, part.segment).map_err(failed)?;
        let bytes = u32::try_from(produced.events.len())
            .map_err(|_| (codes::INVALID_RECORD, "records over 4 GiB".to_string()))?;
        self.node.space.admit(u64::from(bytes)).map_err(failed)?;
        self.node.budget.wait_for_room(u64::from(bytes)).await;
        if produced.sequenced.as_ref().is_some_and(|s| s.transactional) {
            return self
                .append_to_txn(topic, part.segment, produced, bytes)
                .await;
        }
        let count = produced.count;
        // An idempotent producer's batch is checked against what its
        // writer id has applied here first; without a producer id, no
        // writer id: applied as it comes, never numbered.
        let (writer_id, first_event_number) = match &produced.sequenced {
            None => (String::new(), 0),
            Some(s) => match producers::check(s, segment.last_event_number(&s.writer_id))? {
                Checked::Append => (s.writer_id.clone(), s.first),
                Checked::Duplicate => return acknowledged_before(&segment, s),
            },
        };
        let cmd = Cmd::Append(command::Append {
            segment_id: part.segment,
            writer_id,
            first_event_number,
            event_count: count,
            events: produced.events,
            expected_length: None,
            txn_parent: None,
            append_ms: crate::tier::writer::now_ms(),
        });
        let applied = container
            .submit(cmd, bytes)
            .await
            .map_err(failed)?
            .await
            .map_err(failed)?;
        match (applied, &produced.sequenced) {
            // Applied meanwhile by a retry on another connection.
            (
                Applied::Appended {
                    duplicate: true, ..
                },
                Some(s),
            ) => acknowledged_before(&segment, s),
            (Applied::Appended { index, .. }, _) => {
                let (events, appended) =
                    crate::api::append::append_counters(&self.node, part.segment);
                events.inc_by(u64::from(count));
                appended.inc_by(u64::from(bytes));
                Ok((
                    i64::try_from(index).unwrap_or(i64::MAX),
                    log_start(&segment),
                ))
            }
            (other, _) => Err(failed(Error::Internal(format!(
                "append answered {other:?}"
            )))),
        }
    }
}

impl Kafka {
    /// Appends a transactional producer's batch to its transaction's part
    /// of the partition: invisible until EndTxn commits it, so it has no
    /// offset yet (the answer's base offset is -1, which clients take as
    /// unknown). Exactly once by writer id, as in the partition itself.
    ///
    /// A producer's sequences run on across its transactions, while each
    /// transaction's part starts empty, so the part's writer id carries
    /// the sequence of its first batch (`<writer>+<sequence>`) and numbers
    /// batches from there. A batch before that first one (its first try
    /// failed while a later batch went in) is out of order, which aborts
    /// the transaction, never a duplicate that would drop it.
    async fn append_to_txn(
        &self,
        topic: &str,
        parent: u64,
        produced: Produced,
        bytes: u32,
    ) -> Result<(i64, i64), (i16, String)> {
        let Some(s) = produced.sequenced else {
            return Err((codes::INVALID_RECORD, "no producer id".into()));
        };
        let key = self.key(topic);
        let part = self
            .txn_part_of(s.producer_id, s.epoch, &key.scope, &key.stream, parent)
            .await?;
        let failed = |e: Error| (txns::part_append_code(&e), e.to_string());
        let (container, segment) =
            crate::api::append::appendable(&self.node, parent).map_err(failed)?;
        crate::api::append::check_txn_room(&self.node, bytes).map_err(failed)?;
        let prefix = format!("{}+", s.writer_id);
        let sequence = s.first - 1;
        let (writer_id, base, applied) = match container
            .txn_writer_like(part.txn_segment_id, prefix.clone())
            .await
            .map_err(failed)?
        {
            Some((w, last)) => {
                let base = w[prefix.len()..].parse::<i64>().unwrap_or(0);
                (w, base, last)
            }
            None => (format!("{prefix}{sequence}"), sequence, 0),
        };
        if sequence < base {
            return Err((
                K::OutOfOrderSequenceNumber.code(),
                format!(
                    "sequence {sequence} precedes {base}, this transaction's first in the partition"
                ),
            ));
        }
        let numbered = Sequenced {
            first: s.first - base,
            last: s.last - base,
            ..s
        };
        if producers::check(&numbered, applied)? == Checked::Duplicate {
            return Ok((-1, log_start(&segment)));
        }
        let cmd = Cmd::Append(command::Append {
            segment_id: part.txn_segment_id,
            writer_id,
            first_event_number: numbered.first,
            event_count: produced.count,
            events: produced.events,
            expected_length: None,
            txn_parent: Some(parent),
            append_ms: crate::tier::writer::now_ms(),
        });
        match container
            .submit(cmd, bytes)
            .await
            .map_err(failed)?
            .await
            .map_err(failed)?
        {
            Applied::Appended { .. } => Ok((-1, log_start(&segment))),
            other => Err(failed(Error::Internal(format!(
                "append answered {other:?}"
            )))),
        }
    }
}

/// A batch its producer's writer id applied before: its base offset (if
/// still known) and the log start.
fn acknowledged_before(segment: &Segment, s: &Sequenced) -> Result<(i64, i64), (i16, String)> {
    let base = producers::duplicate(s, segment.batch_index(&s.writer_id, s.first))?;
    Ok((base, log_start(segment)))
}

/// The partition's log start offset: the first index a reader can reach.
fn log_start(segment: &Segment) -> i64 {
    i64::try_from(segment.index_view().first).unwrap_or(0)
}
