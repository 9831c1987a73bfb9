//! Fetch and ListOffsets: reading a partition by event index.
//!
//! A fetch at index N starts at the event index's mark at or below N (or
//! where the previous fetch of that partition ended, remembered in a
//! bounded cache of cursors, so a consumer reading on costs no walk), walks
//! frames to N, and returns whole events from there through the tail
//! buffer, the block cache and tier-2, as segment reads do. A fetch with
//! too little to return waits on the partitions' change notifications
//! (never polls) up to its `max_wait_ms`.
//!
//! It never changes a segment.

use std::time::Duration;

use aquifer_proto::frame::{whole_events_prefix, FrameIter};
use bytes::Bytes;
use kafka_protocol::messages::fetch_request::FetchPartition;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
};
use tokio::sync::watch;

use super::records::{batch_of, Fetched};
use super::{codes, topics, Kafka};
use crate::container::{ReadSource, Segment};
use crate::error::Error;
use crate::read::READ_RESPONSE_BYTES;

/// Cursors remembered (segment, next event index → byte offset).
const CURSORS_MAX: u64 = 65_536;
/// The longest a fetch waits for data, whatever it asks.
const FETCH_WAIT_MAX: Duration = Duration::from_secs(30);
/// Bytes one fetch returns at most, whatever it asks.
const FETCH_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Marks read ahead for the append times of one partition's fetch.
const MARKS_PER_FETCH: usize = 4096;

/// Where fetches ended: the byte offset of a partition's next event index.
pub(super) struct Cursors(moka::sync::Cache<(u64, u64), u64>);

impl Cursors {
    pub(super) fn new() -> Self {
        Cursors(moka::sync::Cache::new(CURSORS_MAX))
    }
}

/// ListOffsets' special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

impl Kafka {
    pub(super) async fn fetch(&self, req: FetchRequest, version: i16) -> FetchResponse {
        let wait =
            Duration::from_millis(u64::try_from(req.max_wait_ms).unwrap_or(0)).min(FETCH_WAIT_MAX);
        let deadline = tokio::time::Instant::now() + wait;
        let min_bytes = usize::try_from(req.min_bytes).unwrap_or(0);
        let max_bytes = usize::try_from(req.max_bytes)
            .unwrap_or(FETCH_BYTES_MAX)
            .clamp(1, FETCH_BYTES_MAX);
        loop {
            let mut watches = Vec::new();
            let mut total = 0usize;
            let mut failed = false;
            let mut r = FetchResponse::default();
            for t in &req.topics {
                let topic = t.topic.0.as_str();
                let mut out = FetchableTopicResponse::default().with_topic(t.topic.clone());
                for p in &t.partitions {
                    let room = max_bytes.saturating_sub(total);
                    let data = self
                        .fetch_partition(topic, p, room, version, &mut watches)
                        .await;
                    total += data.records.as_ref().map_or(0, |b| b.len());
                    failed |= data.error_code != codes::NONE;
                    out.partitions.push(data);
                }
                r.responses.push(out);
            }
            if total >= min_bytes.max(1) || failed || tokio::time::Instant::now() >= deadline {
                return r;
            }
            if watches.is_empty() {
                return r;
            }
            // Nothing yet: wait for any partition to change, then read
            // again (the watches were taken before reading, so no append
            // in between is missed).
            let changed = futures::future::select_all(
                watches
                    .iter_mut()
                    .map(|w| Box::pin(async move { w.changed().await.is_ok() })),
            );
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return r;
            }
        }
    }

    async fn fetch_partition(
        &self,
        topic: &str,
        p: &FetchPartition,
        max_bytes: usize,
        version: i16,
        watches: &mut Vec<watch::Receiver<u64>>,
    ) -> PartitionData {
        let mut data = PartitionData::default()
            .with_partition_index(p.partition)
            .with_aborted_transactions(Some(Vec::new()));
        let (segment, epoch) = match self.led_segment(topic, p.partition) {
            Ok(s) => s,
            Err(code) => return data.with_error_code(code),
        };
        watches.push(segment.subscribe());
        let view = segment.index_view();
        data.high_watermark = as_offset(view.end);
        data.last_stable_offset = as_offset(view.end);
        if version >= 5 {
            data.log_start_offset = as_offset(view.first);
        }
        let Some(at) = u64::try_from(p.fetch_offset)
            .ok()
            .filter(|at| (view.first..=view.end).contains(at))
        else {
            return data.with_error_code(codes::OFFSET_OUT_OF_RANGE);
        };
        if at == view.end || max_bytes == 0 {
            return data.with_records(Some(Bytes::new()));
        }
        let limit = usize::try_from(p.partition_max_bytes)
            .unwrap_or(1)
            .clamp(1, max_bytes);
        match self.read_events(&segment, at, limit).await {
            Ok(events) if events.is_empty() => data.with_records(Some(Bytes::new())),
            Ok(events) => match batch_of(&events, epoch) {
                Ok(batch) => data.with_records(Some(batch)),
                Err(e) => {
                    tracing::error!(segment = segment.id, error = %e, "record batch does not encode");
                    data.with_error_code(codes::code_of(&Error::Internal(e)))
                }
            },
            Err(e) => {
                tracing::debug!(segment = segment.id, error = %e, "Kafka fetch failed");
                data.with_error_code(codes::code_of(&e))
            }
        }
    }

    /// The segment of a topic's partition and its leader epoch, if this
    /// node leads it; else the Kafka error.
    fn led_segment(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<(std::sync::Arc<Segment>, i32), i16> {
        let parts = topics::partitions(self, topic)?;
        let p = usize::try_from(partition)
            .ok()
            .and_then(|i| parts.get(i))
            .ok_or(codes::UNKNOWN_TOPIC_OR_PARTITION)?;
        let epoch = self.leader_epoch(p.segment).ok_or_else(|| {
            codes::code_of(&Error::NotLeader {
                message: String::new(),
                leader: None,
            })
        })?;
        let segment = self
            .node
            .container_of(p.segment)
            .segment(p.segment)
            .ok_or(codes::UNKNOWN_TOPIC_OR_PARTITION)?;
        Ok((segment, epoch))
    }

    /// Whole events from index `at` on, about `max_bytes` of them (at
    /// least one: a larger event goes alone, as Kafka's fetches do).
    async fn read_events(
        &self,
        segment: &Segment,
        at: u64,
        max_bytes: usize,
    ) -> Result<Vec<Fetched>, Error> {
        let marks = segment.marks_from(at, MARKS_PER_FETCH);
        let Some(first) = marks.first().copied() else {
            return Ok(Vec::new());
        };
        let (mut offset, mut index) = match self.cursors.0.get(&(segment.id, at)) {
            Some(offset) => (offset, at),
            None => (first.offset, first.index),
        };
        let mut mark = 0;
        let mut out = Vec::new();
        let mut size = 0usize;
        'read: loop {
            let bytes: Bytes = match segment.locate(offset, READ_RESPONSE_BYTES) {
                ReadSource::Tail(b) => b,
                ReadSource::Tier2(chunk) => {
                    self.node
                        .tier2
                        .read(segment.id, &chunk, offset, READ_RESPONSE_BYTES)
                        .await?
                }
                ReadSource::End { .. } => break,
                ReadSource::Deleted => return Err(Error::SegmentNotFound(segment.id)),
                ReadSource::Truncated { head } => {
                    return Err(Error::Truncated {
                        segment: segment.id,
                        offset,
                        head,
                    })
                }
                ReadSource::PastEnd { length } => {
                    return Err(Error::OffsetOutOfRange {
                        segment: segment.id,
                        offset,
                        length,
                    })
                }
            };
            let whole = whole_events_prefix(&bytes, usize::MAX);
            if whole == 0 {
                return Err(Error::Corrupt(format!(
                    "no whole event at offset {offset} of segment {}",
                    segment.id
                )));
            }
            for event in FrameIter::new(bytes.slice(..whole), offset, usize::MAX) {
                let event = event.map_err(|e| Error::Corrupt(e.to_string()))?;
                if index >= at {
                    if !out.is_empty() && size + event.framed_len > max_bytes {
                        break 'read;
                    }
                    while marks.get(mark + 1).is_some_and(|m| m.index <= index) {
                        mark += 1;
                    }
                    size += event.framed_len;
                    out.push(Fetched {
                        index,
                        key: event.routing_key,
                        attributes: event.attributes,
                        payload: event.payload,
                        append_ms: marks[mark].first_ms,
                    });
                }
                index += 1;
                offset += event.framed_len as u64;
            }
            if size >= max_bytes {
                break;
            }
        }
        if !out.is_empty() {
            self.cursors.0.insert((segment.id, index), offset);
        }
        Ok(out)
    }

    pub(super) async fn list_offsets(
        &self,
        req: ListOffsetsRequest,
        version: i16,
    ) -> ListOffsetsResponse {
        let mut r = ListOffsetsResponse::default();
        for t in req.topics {
            let topic = t.name.0.to_string();
            let mut out = ListOffsetsTopicResponse::default().with_name(t.name);
            for p in t.partitions {
                let mut answer = ListOffsetsPartitionResponse::default()
                    .with_partition_index(p.partition_index)
                    .with_timestamp(-1)
                    .with_offset(-1);
                match self.led_segment(&topic, p.partition_index) {
                    Err(code) => answer.error_code = code,
                    Ok((segment, epoch)) => {
                        if version >= 4 {
                            answer.leader_epoch = epoch;
                        }
                        let view = segment.index_view();
                        match p.timestamp {
                            LATEST => answer.offset = as_offset(view.end),
                            EARLIEST => answer.offset = as_offset(view.first),
                            MAX_TIMESTAMP => {
                                if let (Some(m), Some(last)) =
                                    (segment.last_mark(), view.end.checked_sub(1))
                                {
                                    answer.offset = as_offset(last);
                                    answer.timestamp = as_offset(m.last_ms);
                                }
                            }
                            t if t >= 0 => {
                                if let Some(m) = segment.mark_by_time(t as u64) {
                                    answer.offset = as_offset(m.index.max(view.first));
                                    answer.timestamp = as_offset(m.first_ms);
                                }
                            }
                            _ => answer.error_code = codes::INVALID_REQUEST,
                        }
                    }
                }
                out.partitions.push(answer);
            }
            r.topics.push(out);
        }
        r
    }
}

fn as_offset(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
