//! Kafka records and Aquifer events, both ways.
//!
//! A record written through Kafka becomes one event: its key the routing
//! key (a key that is not UTF-8: its standard base64; none or empty: no
//! routing key), its value the payload (a null value: an empty one), and
//! what else it holds — timestamp, headers, which key and value it had —
//! in the event's attributes (`attributes.rs`). An event read through
//! Kafka is a record at its event index, the same record that was written;
//! one written natively has its routing key as key and its append time (to
//! the event index's precision) as timestamp.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::attributes::RecordAttributes;
use super::codes;
use super::producers::{sequenced, Sequenced};
use aquifer_proto::frame::{encode_event_with, framed_len_with, ROUTING_KEY_BYTES_MAX};

/// A record's timestamp when the producer gave none.
const NO_TIMESTAMP: i64 = -1;

/// A produce request's records for one partition, as framed events.
#[derive(Debug)]
pub(super) struct Produced {
    pub events: Bytes,
    pub count: u32,
    /// The idempotent producer's writer id and event numbers, if any.
    pub sequenced: Option<Sequenced>,
}

/// The events of a partition's record batches (any compression), each
/// checked against `event_bytes_max`; or the Kafka error and why.
pub(super) fn events_of(records: Bytes, event_bytes_max: u64) -> Result<Produced, (i16, String)> {
    let mut buf = records;
    let sets = RecordBatchDecoder::decode_all(&mut buf).map_err(|e| {
        (
            codes::CORRUPT_MESSAGE,
            format!("record batch does not decode: {e}"),
        )
    })?;
    let records: Vec<&Record> = sets
        .iter()
        .flat_map(|s| &s.records)
        .filter(|r| !r.control)
        .collect();
    let sequenced = sequenced(&records)?;
    let mut out = BytesMut::new();
    let mut count = 0u32;
    // One buffer for every record's attributes: no allocation per record.
    let mut attributes = Vec::new();
    for record in records {
        let (key, kept) = event_parts(record);
        if key
            .as_ref()
            .is_some_and(|k| k.len() > ROUTING_KEY_BYTES_MAX)
        {
            return Err((
                codes::INVALID_RECORD,
                format!("record key over {ROUTING_KEY_BYTES_MAX} bytes (as a routing key)"),
            ));
        }
        attributes.clear();
        kept.encode_into(&mut attributes);
        let value = record.value.as_deref().unwrap_or(&[]);
        let size = framed_len_with(key.as_deref(), attributes.len(), value.len()) as u64;
        if size > event_bytes_max {
            return Err((
                codes::INVALID_RECORD,
                format!("record of {size} bytes is over event_bytes_max ({event_bytes_max})"),
            ));
        }
        encode_event_with(&mut out, key.as_deref(), &attributes, value);
        count += 1;
    }
    if count == 0 {
        return Err((codes::CORRUPT_MESSAGE, "no records in the request".into()));
    }
    Ok(Produced {
        events: out.freeze(),
        count,
        sequenced,
    })
}

/// A record's routing key and the attributes that keep the rest of it.
fn event_parts(record: &Record) -> (Option<Cow<'_, str>>, RecordAttributes) {
    let mut kept = RecordAttributes {
        value_null: record.value.is_none(),
        timestamp: (record.timestamp != NO_TIMESTAMP).then_some(record.timestamp),
        headers: record
            .headers
            .iter()
            .map(|(k, v)| (Bytes::from(k.clone()), v.clone()))
            .collect(),
        ..Default::default()
    };
    let key = match &record.key {
        None => None,
        Some(k) if k.is_empty() => {
            kept.key_empty = true;
            None
        }
        Some(k) => Some(match std::str::from_utf8(k) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => {
                kept.key_base64 = true;
                Cow::Owned(BASE64.encode(k))
            }
        }),
    };
    (key, kept)
}

/// One event read for a fetch.
#[derive(Debug, Clone)]
pub(super) struct Fetched {
    pub index: u64,
    pub key: Option<String>,
    pub attributes: Bytes,
    pub payload: Bytes,
    pub append_ms: u64,
}

impl Fetched {
    /// The record this event is: the one written through Kafka, or a
    /// native event's key, payload and append time.
    fn record(&self, leader_epoch: i32, first: u64) -> Record {
        let kept = RecordAttributes::decode(&self.attributes);
        let key = match &self.key {
            None if kept.key_empty => Some(Bytes::new()),
            None => None,
            // A key that does not decode was written natively to look
            // like one: it is its own bytes then.
            Some(k) if kept.key_base64 => Some(
                BASE64
                    .decode(k)
                    .map(Bytes::from)
                    .unwrap_or_else(|_| Bytes::copy_from_slice(k.as_bytes())),
            ),
            Some(k) => Some(Bytes::copy_from_slice(k.as_bytes())),
        };
        let headers = kept
            .headers
            .into_iter()
            .filter_map(|(k, v)| Some((StrBytes::from_utf8(k).ok()?, v)))
            .collect();
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: leader_epoch,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i64::try_from(self.index).unwrap_or(i64::MAX),
            // No producer, so the batch's base sequence is -1; the encoder
            // keeps records in one batch while offset - sequence stays
            // the same, so the sequence runs along with the offset.
            sequence: i32::try_from(self.index - first)
                .unwrap_or(i32::MAX)
                .wrapping_sub(1),
            timestamp: kept
                .timestamp
                .unwrap_or_else(|| i64::try_from(self.append_ms).unwrap_or(i64::MAX)),
            key,
            value: (!kept.value_null).then(|| self.payload.clone()),
            headers,
        }
    }
}

/// `events` (consecutive indexes) as one uncompressed record batch.
pub(super) fn batch_of(events: &[Fetched], leader_epoch: i32) -> Result<Bytes, String> {
    let first = events.first().map_or(0, |e| e.index);
    let records: Vec<Record> = events
        .iter()
        .map(|e| e.record(leader_epoch, first))
        .collect();
    let mut out = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut out, records.iter(), &options).map_err(|e| e.to_string())?;
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_events() {
        let fetched: Vec<Fetched> = (0..3)
            .map(|i| Fetched {
                index: 40 + i,
                key: (i != 1).then(|| format!("k{i}")),
                attributes: Bytes::new(),
                payload: Bytes::from(format!("v{i}")),
                append_ms: 1_000 + i,
            })
            .collect();
        let batch = batch_of(&fetched, 3).unwrap();
        let produced = events_of(batch.clone(), 1 << 20).unwrap();
        assert_eq!(produced.count, 3);
        let events: Vec<_> = aquifer_proto::frame::FrameIter::new(produced.events, 0, usize::MAX)
            .map(|e| e.unwrap())
            .collect();
        assert_eq!(events[0].routing_key.as_deref(), Some("k0"));
        assert_eq!(events[1].routing_key, None);
        assert_eq!(&events[2].payload[..], b"v2");
        let mut b = batch;
        let sets = RecordBatchDecoder::decode_all(&mut b).unwrap();
        assert_eq!(sets.len(), 1, "one batch, not one per record");
        let offsets: Vec<i64> = sets[0].records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![40, 41, 42]);
        assert_eq!(sets[0].records[2].timestamp, 1_002);
    }

    fn produced(records: &[Record]) -> Bytes {
        let mut out = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::Lz4,
        };
        RecordBatchEncoder::encode(&mut out, records.iter(), &options).unwrap();
        out.freeze()
    }

    /// What a record written through Kafka holds comes back through Kafka
    /// unchanged, and natives see its key and value.
    #[test]
    fn keys_values_headers_and_timestamps_come_back_as_written() {
        let record = |key: Option<&[u8]>,
                      value: Option<&[u8]>,
                      ts: i64,
                      headers: &[(&str, Option<&[u8]>)]| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: ts,
            key: key.map(Bytes::copy_from_slice),
            value: value.map(Bytes::copy_from_slice),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        StrBytes::from_string(k.to_string()),
                        v.map(Bytes::copy_from_slice),
                    )
                })
                .collect(),
        };
        let written = vec![
            record(Some(b"plain"), Some(b"v0"), 1_000, &[]),
            record(
                Some(b"\xff\x00bin"),
                Some(b"v1"),
                2_000,
                &[("trace", Some(b"\x01\x02")), ("null", None)],
            ),
            record(Some(b""), None, 3_000, &[("only", Some(b""))]),
            record(None, Some(b""), NO_TIMESTAMP, &[]),
        ];
        let produced = events_of(produced(&written), 1 << 20).unwrap();
        assert_eq!(produced.count, 4);
        let events: Vec<_> = aquifer_proto::frame::FrameIter::new(produced.events, 0, usize::MAX)
            .map(|e| e.unwrap())
            .collect();
        // Natives: the key (base64 when it is not UTF-8) and the value.
        assert_eq!(events[0].routing_key.as_deref(), Some("plain"));
        assert_eq!(events[1].routing_key.as_deref(), Some("/wBiaW4="));
        assert_eq!(&events[1].payload[..], b"v1");
        assert_eq!(events[2].routing_key, None);
        assert_eq!(events[3].routing_key, None);
        assert!(
            events[3].attributes.is_empty(),
            "nothing to keep: a plain frame"
        );
        let fetched: Vec<Fetched> = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| Fetched {
                index: 10 + i as u64,
                key: e.routing_key,
                attributes: e.attributes,
                payload: e.payload,
                append_ms: 9_999,
            })
            .collect();
        let mut batch = batch_of(&fetched, 0).unwrap();
        let read: Vec<Record> = RecordBatchDecoder::decode_all(&mut batch)
            .unwrap()
            .into_iter()
            .flat_map(|s| s.records)
            .collect();
        assert_eq!(read.len(), 4);
        for (i, (r, w)) in read.iter().zip(&written).enumerate() {
            assert_eq!(r.key, w.key, "key {i}");
            assert_eq!(r.value, w.value, "value {i}");
            assert_eq!(r.headers, w.headers, "headers {i}");
        }
        let stamps: Vec<i64> = read.iter().map(|r| r.timestamp).collect();
        assert_eq!(
            stamps,
            vec![1_000, 2_000, 3_000, 9_999],
            "no timestamp: the append time"
        );
    }

    #[test]
    fn bad_records_are_refused_with_a_reason() {
        let (code, _) = events_of(Bytes::from_static(b"garbage"), 1 << 20).unwrap_err();
        assert_eq!(code, codes::CORRUPT_MESSAGE);
        let big = [Fetched {
            index: 0,
            key: None,
            attributes: Bytes::new(),
            payload: Bytes::from(vec![0u8; 2048]),
            append_ms: 0,
        }];
        let (code, why) = events_of(batch_of(&big, 0).unwrap(), 1024).unwrap_err();
        assert_eq!(code, codes::INVALID_RECORD);
        assert!(why.contains("event_bytes_max"), "{why}");
    }
}
