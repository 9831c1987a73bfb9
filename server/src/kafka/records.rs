//! Kafka records and Aquifer events, both ways.
//!
//! A record written through Kafka becomes one event: its key the routing
//! key (a Kafka key must be UTF-8 here, as routing keys are; none or empty:
//! no routing key), its value the payload (a null value: an empty one).
//! Headers and the producer's timestamp are not stored yet. An event read
//! through Kafka is a record at its event index, with its routing key as
//! key and its append time (to the event index's precision) as timestamp.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::codes;
use super::producers::{sequenced, Sequenced};
use aquifer_proto::frame::{encode_event, framed_len, ROUTING_KEY_BYTES_MAX};

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
    for record in records {
        let key = match &record.key {
            None => None,
            Some(k) if k.is_empty() => None,
            Some(k) => Some(std::str::from_utf8(k).map_err(|_| {
                (
                    codes::INVALID_RECORD,
                    "record keys must be UTF-8 here: they become Aquifer routing keys".to_string(),
                )
            })?),
        };
        if key.is_some_and(|k| k.len() > ROUTING_KEY_BYTES_MAX) {
            return Err((
                codes::INVALID_RECORD,
                format!("record key over {ROUTING_KEY_BYTES_MAX} bytes"),
            ));
        }
        let value = record.value.as_deref().unwrap_or(&[]);
        let size = framed_len(key, value.len()) as u64;
        if size > event_bytes_max {
            return Err((
                codes::INVALID_RECORD,
                format!("record of {size} bytes is over event_bytes_max ({event_bytes_max})"),
            ));
        }
        encode_event(&mut out, key, value);
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

/// One event read for a fetch.
#[derive(Debug, Clone)]
pub(super) struct Fetched {
    pub index: u64,
    pub key: Option<String>,
    pub payload: Bytes,
    pub append_ms: u64,
}

/// `events` (consecutive indexes) as one uncompressed record batch.
pub(super) fn batch_of(events: &[Fetched], leader_epoch: i32) -> Result<Bytes, String> {
    let first = events.first().map_or(0, |e| e.index);
    let records: Vec<Record> = events
        .iter()
        .map(|e| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: leader_epoch,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i64::try_from(e.index).unwrap_or(i64::MAX),
            // No producer, so the batch's base sequence is -1; the encoder
            // keeps records in one batch while offset - sequence stays
            // the same, so the sequence runs along with the offset.
            sequence: i32::try_from(e.index - first)
                .unwrap_or(i32::MAX)
                .wrapping_sub(1),
            timestamp: i64::try_from(e.append_ms).unwrap_or(i64::MAX),
            key: e.key.as_ref().map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Some(e.payload.clone()),
            headers: Default::default(),
        })
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

    #[test]
    fn bad_records_are_refused_with_a_reason() {
        let (code, _) = events_of(Bytes::from_static(b"garbage"), 1 << 20).unwrap_err();
        assert_eq!(code, codes::CORRUPT_MESSAGE);
        let big = [Fetched {
            index: 0,
            key: None,
            payload: Bytes::from(vec![0u8; 2048]),
            append_ms: 0,
        }];
        let (code, why) = events_of(batch_of(&big, 0).unwrap(), 1024).unwrap_err();
        assert_eq!(code, codes::INVALID_RECORD);
        assert!(why.contains("event_bytes_max"), "{why}");
    }
}
