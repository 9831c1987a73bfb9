//! What a Kafka record holds that an Aquifer event has no field for: the
//! producer's timestamp, headers, a key that is not UTF-8 (or empty rather
//! than absent), and a null value. They ride in the event's attributes
//! (`aquifer_proto::frame`), format 1, which the store keeps and never reads.
//!
//! Owns that format, both ways. It must never trust stored bytes: every
//! length is checked, and attributes it cannot read are another writer's
//! (any native client may write attributes), so they are ignored, never a
//! failed fetch.
//!
//! Format 1, little-endian: `u8 1 | u8 flags | [i64 timestamp] | [u32 count,
//! count × (u32 key_len, key, i32 value_len (-1: null), value)]`. A flag
//! says whether each optional part is there.

use bytes::{BufMut, Bytes};

/// The format byte of a Kafka record's attributes.
const FORMAT: u8 = 1;
/// The routing key is the standard base64 of a key that is not UTF-8.
const KEY_BASE64: u8 = 1;
/// The key was empty, not absent (both leave the event without a key).
const KEY_EMPTY: u8 = 1 << 1;
/// The value was null (a tombstone), not empty.
const VALUE_NULL: u8 = 1 << 2;
/// A producer timestamp follows.
const TIMESTAMP: u8 = 1 << 3;
/// Headers follow.
const HEADERS: u8 = 1 << 4;

/// A record's parts that the event itself cannot hold.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct RecordAttributes {
    pub key_base64: bool,
    pub key_empty: bool,
    pub value_null: bool,
    /// The producer's timestamp (CreateTime), if it gave one.
    pub timestamp: Option<i64>,
    /// Header keys (UTF-8, as Kafka's are) and values, in record order.
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

impl RecordAttributes {
    fn flags(&self) -> u8 {
        let mut flags = 0;
        for (set, flag) in [
            (self.key_base64, KEY_BASE64),
            (self.key_empty, KEY_EMPTY),
            (self.value_null, VALUE_NULL),
            (self.timestamp.is_some(), TIMESTAMP),
            (!self.headers.is_empty(), HEADERS),
        ] {
            if set {
                flags |= flag;
            }
        }
        flags
    }

    /// The attributes' bytes; empty when there is nothing to keep, so the
    /// event is framed plainly.
    #[cfg(test)]
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        Bytes::from(out)
    }

    /// Appends the attributes' bytes to `out` (nothing when there is
    /// nothing to keep).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let flags = self.flags();
        if flags == 0 {
            return;
        }
        out.put_u8(FORMAT);
        out.put_u8(flags);
        if let Some(ts) = self.timestamp {
            out.put_i64_le(ts);
        }
        if !self.headers.is_empty() {
            // Fits: a request is at most 64 MiB, so its headers are fewer
            // and shorter than 2^31.
            out.put_u32_le(self.headers.len() as u32);
            for (key, value) in &self.headers {
                out.put_u32_le(key.len() as u32);
                out.put_slice(key);
                match value {
                    None => out.put_i32_le(-1),
                    Some(v) => {
                        out.put_i32_le(v.len() as i32);
                        out.put_slice(v);
                    }
                }
            }
        }
    }

    /// The record attributes in `attributes`: none for empty ones, for
    /// another format, or for bytes that do not decode as format 1.
    pub fn decode(attributes: &Bytes) -> RecordAttributes {
        Self::try_decode(attributes).unwrap_or_default()
    }

    fn try_decode(attributes: &Bytes) -> Option<RecordAttributes> {
        let mut r = Reader {
            data: attributes,
            pos: 0,
        };
        if r.u8()? != FORMAT {
            return None;
        }
        let flags = r.u8()?;
        let timestamp = if flags & TIMESTAMP != 0 {
            Some(i64::from_le_bytes(r.take(8)?.as_ref().try_into().ok()?))
        } else {
            None
        };
        let mut headers = Vec::new();
        if flags & HEADERS != 0 {
            let count = r.u32()?;
            for _ in 0..count {
                let key_len = r.u32()? as usize;
                let key = r.take(key_len)?;
                let value_len = r.u32()? as i32;
                let value = match value_len {
                    -1 => None,
                    n => Some(r.take(usize::try_from(n).ok()?)?),
                };
                headers.push((key, value));
            }
        }
        Some(RecordAttributes {
            key_base64: flags & KEY_BASE64 != 0,
            key_empty: flags & KEY_EMPTY != 0,
            value_null: flags & VALUE_NULL != 0,
            timestamp,
            headers,
        })
    }
}

/// A bounds-checked cursor over stored attributes.
struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<Bytes> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len())?;
        let out = self.data.slice(self.pos..end);
        self.pos = end;
        Some(out)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.as_ref().try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_and_nothing_is_empty() {
        assert!(RecordAttributes::default().encode().is_empty());
        let all = RecordAttributes {
            key_base64: true,
            key_empty: false,
            value_null: true,
            timestamp: Some(-5),
            headers: vec![
                (
                    Bytes::from_static(b"trace"),
                    Some(Bytes::from_static(b"\x00\x01")),
                ),
                (Bytes::from_static(b"none"), None),
                (Bytes::from_static(b"empty"), Some(Bytes::new())),
            ],
        };
        assert_eq!(RecordAttributes::decode(&all.encode()), all);
        let ts = RecordAttributes {
            timestamp: Some(1_700_000_000_000),
            ..Default::default()
        };
        assert_eq!(ts.encode().len(), 10, "format, flags, timestamp");
        assert_eq!(RecordAttributes::decode(&ts.encode()), ts);
    }

    #[test]
    fn foreign_or_damaged_attributes_are_ignored() {
        let all = RecordAttributes {
            timestamp: Some(7),
            headers: vec![(Bytes::from_static(b"h"), Some(Bytes::from_static(b"v")))],
            ..Default::default()
        }
        .encode();
        for cut in 0..all.len() {
            let _ = RecordAttributes::decode(&all.slice(..cut));
        }
        assert_eq!(
            RecordAttributes::decode(&Bytes::from_static(b"\x02\xff")),
            RecordAttributes::default()
        );
        let mut huge = all.to_vec();
        huge[10..14].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            RecordAttributes::decode(&Bytes::from(huge)),
            RecordAttributes::default()
        );
    }
}
