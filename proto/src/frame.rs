//! Event framing: how one event is laid out in segment bytes (see the top of
//! `aquifer.proto`). Appends carry framed events, segments store them as they
//! are, reads return them whole.
//!
//! Decoding never trusts its input: every length is bounds-checked and every
//! body is checked against its CRC before it is handed out.

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes before the body: body length and CRC.
pub const HEADER_BYTES: usize = 8;
/// The routing key's length prefix inside the body.
pub const KEY_LEN_BYTES: usize = 2;
/// The key length that says the body is extended: the key's real length
/// and the attributes' length follow (see `aquifer.proto`).
pub const EXTENDED: u16 = u16::MAX;
/// What an extended body adds after [`EXTENDED`]: u16 key length, u32
/// attributes length.
pub const EXTENSION_BYTES: usize = 6;
/// Longest routing key, in bytes of UTF-8 (the largest length is
/// [`EXTENDED`]'s).
pub const ROUTING_KEY_BYTES_MAX: usize = u16::MAX as usize - 1;

/// Why a run of bytes is not a valid sequence of framed events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("event at offset {offset} is cut short: {available} of {needed} bytes present")]
    Truncated {
        offset: u64,
        needed: usize,
        available: usize,
    },
    #[error("event at offset {offset} fails its checksum (corrupt data or a read at an offset that is not an event boundary)")]
    Checksum { offset: u64 },
    #[error("event at offset {offset} has a malformed body: {why}")]
    Malformed { offset: u64, why: &'static str },
    #[error("event at offset {offset} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        offset: u64,
        size: usize,
        limit: usize,
    },
}

/// One decoded event, borrowing nothing: attributes and payload share the
/// input's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramedEvent {
    /// Offset of the event's first byte in its segment.
    pub offset: u64,
    /// None when the event was written without a routing key.
    pub routing_key: Option<String>,
    /// Bytes the store keeps with the event but never reads (empty: none):
    /// their first byte names their format (1: a Kafka record's timestamp,
    /// headers and key, `server/src/kafka/attributes.rs`); a reader skips
    /// a format it does not know.
    pub attributes: Bytes,
    pub payload: Bytes,
    /// Total framed size, header included.
    pub framed_len: usize,
}

/// Framed size of an event with this key and payload.
pub fn framed_len(routing_key: Option<&str>, payload_len: usize) -> usize {
    framed_len_with(routing_key, 0, payload_len)
}

/// Framed size of an event with this key, `attributes_len` bytes of
/// attributes and the payload.
pub fn framed_len_with(
    routing_key: Option<&str>,
    attributes_len: usize,
    payload_len: usize,
) -> usize {
    let extension = if attributes_len > 0 {
        EXTENSION_BYTES + attributes_len
    } else {
        0
    };
    HEADER_BYTES + KEY_LEN_BYTES + extension + routing_key.map_or(0, str::len) + payload_len
}

/// Appends one framed event to `out`. Keys longer than
/// [`ROUTING_KEY_BYTES_MAX`] are the caller's to reject first.
pub fn encode_event(out: &mut BytesMut, routing_key: Option<&str>, payload: &[u8]) {
    encode_event_with(out, routing_key, &[], payload)
}

/// Appends one framed event with `attributes` (none if empty: then the
/// frame is the plain one [`encode_event`] writes).
pub fn encode_event_with(
    out: &mut BytesMut,
    routing_key: Option<&str>,
    attributes: &[u8],
    payload: &[u8],
) {
    let key = routing_key.unwrap_or("").as_bytes();
    // Every length is the caller's to check (keys against
    // ROUTING_KEY_BYTES_MAX, events against the server's limit, far below
    // 4 GiB): a frame whose length field wrapped would corrupt the batch.
    assert!(
        key.len() <= ROUTING_KEY_BYTES_MAX,
        "routing key of {} bytes is over {ROUTING_KEY_BYTES_MAX}",
        key.len()
    );
    let framed = framed_len_with(routing_key, attributes.len(), payload.len());
    let body_len_field = u32::try_from(framed - HEADER_BYTES);
    assert!(
        body_len_field.is_ok(),
        "event of {framed} bytes does not fit a frame"
    );
    // Fits: checked against ROUTING_KEY_BYTES_MAX (below u16::MAX) above.
    let key_len = (key.len() as u16).to_le_bytes();
    let mut prefix = [0u8; KEY_LEN_BYTES + EXTENSION_BYTES];
    let prefix = if attributes.is_empty() {
        prefix[..KEY_LEN_BYTES].copy_from_slice(&key_len);
        &prefix[..KEY_LEN_BYTES]
    } else {
        // Fits: the whole body's length fits a u32 (checked above).
        let attributes_len = (attributes.len() as u32).to_le_bytes();
        prefix[..2].copy_from_slice(&EXTENDED.to_le_bytes());
        prefix[2..4].copy_from_slice(&key_len);
        prefix[4..].copy_from_slice(&attributes_len);
        &prefix[..]
    };
    let mut crc = crc32fast::Hasher::new();
    crc.update(prefix);
    crc.update(key);
    crc.update(attributes);
    crc.update(payload);
    out.reserve(framed);
    out.put_u32_le(body_len_field.unwrap_or(u32::MAX));
    out.put_u32_le(crc.finalize());
    out.put_slice(prefix);
    out.put_slice(key);
    out.put_slice(attributes);
    out.put_slice(payload);
}

/// Iterates over the framed events in `data`, whose first byte sits at
/// segment offset `base_offset`. Stops at the first error; a partial event at
/// the end is an error ([`FrameError::Truncated`]).
pub struct FrameIter {
    data: Bytes,
    pos: usize,
    base_offset: u64,
    max_event_bytes: usize,
}

impl FrameIter {
    /// `max_event_bytes` bounds the framed size of each event.
    pub fn new(data: Bytes, base_offset: u64, max_event_bytes: usize) -> Self {
        FrameIter {
            data,
            pos: 0,
            base_offset,
            max_event_bytes,
        }
    }

    /// Bytes consumed so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }

    fn decode_next(&mut self) -> Result<FramedEvent, FrameError> {
        // Fits: the previous event's end was checked below (or pos is 0).
        let offset = self.base_offset + self.pos as u64;
        let event = check_event(&self.data[self.pos..], offset, self.max_event_bytes)?;
        // The caller's base offset comes off the wire too: an event ending
        // past the largest offset would make every `offset + len` after it
        // overflow.
        if offset.checked_add(event.framed_len as u64).is_none() {
            return Err(FrameError::Malformed {
                offset,
                why: "event ends past the largest segment offset",
            });
        }
        let at = |r: std::ops::Range<usize>| self.pos + r.start..self.pos + r.end;
        let routing_key = match event.key {
            Some(r) => Some(String::from_utf8_lossy(&self.data[at(r)]).into_owned()),
            None => None,
        };
        let attributes = match event.attributes {
            Some(r) => self.data.slice(at(r)),
            None => Bytes::new(),
        };
        let payload = self.data.slice(at(event.payload));
        self.pos += event.framed_len;
        Ok(FramedEvent {
            offset,
            routing_key,
            attributes,
            payload,
            framed_len: event.framed_len,
        })
    }
}

/// Where the parts of one checked event lie, relative to its first byte.
struct CheckedEvent {
    framed_len: usize,
    key: Option<std::ops::Range<usize>>,
    attributes: Option<std::ops::Range<usize>>,
    payload: std::ops::Range<usize>,
}

/// Checks the event at the start of `rest` (lengths, checksum, UTF-8 key)
/// without copying anything out of it.
fn check_event(
    rest: &[u8],
    offset: u64,
    max_event_bytes: usize,
) -> Result<CheckedEvent, FrameError> {
    if rest.len() < HEADER_BYTES {
        return Err(FrameError::Truncated {
            offset,
            needed: HEADER_BYTES,
            available: rest.len(),
        });
    }
    let body_len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    let framed = HEADER_BYTES + body_len;
    if framed > max_event_bytes {
        return Err(FrameError::TooLarge {
            offset,
            size: framed,
            limit: max_event_bytes,
        });
    }
    if rest.len() < framed {
        return Err(FrameError::Truncated {
            offset,
            needed: framed,
            available: rest.len(),
        });
    }
    let body = &rest[HEADER_BYTES..framed];
    if crc32fast::hash(body) != crc {
        return Err(FrameError::Checksum { offset });
    }
    if body.len() < KEY_LEN_BYTES {
        return Err(FrameError::Malformed {
            offset,
            why: "body shorter than its key length field",
        });
    }
    let mut key_len = u16::from_le_bytes([body[0], body[1]]) as usize;
    let mut key_start = HEADER_BYTES + KEY_LEN_BYTES;
    let mut attributes_len = 0usize;
    if key_len == EXTENDED as usize {
        let Some(ext) = body.get(KEY_LEN_BYTES..KEY_LEN_BYTES + EXTENSION_BYTES) else {
            return Err(FrameError::Malformed {
                offset,
                why: "body shorter than its extension",
            });
        };
        key_len = u16::from_le_bytes([ext[0], ext[1]]) as usize;
        attributes_len = u32::from_le_bytes([ext[2], ext[3], ext[4], ext[5]]) as usize;
        key_start += EXTENSION_BYTES;
    }
    // No overflow: each is below 2^32 and the sum is compared, not kept.
    if (body.len() as u64)
        < (key_start - HEADER_BYTES) as u64 + key_len as u64 + attributes_len as u64
    {
        return Err(FrameError::Malformed {
            offset,
            why: "routing key or attributes run past the body",
        });
    }
    let key = (key_len > 0).then_some(key_start..key_start + key_len);
    let attributes_start = key_start + key_len;
    let payload_start = attributes_start + attributes_len;
    let attributes = (attributes_len > 0).then_some(attributes_start..payload_start);
    if let Some(k) = &key {
        if std::str::from_utf8(&rest[k.clone()]).is_err() {
            return Err(FrameError::Malformed {
                offset,
                why: "routing key is not UTF-8",
            });
        }
    }
    Ok(CheckedEvent {
        framed_len: framed,
        key,
        attributes,
        payload: payload_start..framed,
    })
}

/// Checks every event in `data` (as [`FrameIter`] would, but allocating
/// nothing) and returns how many there are: the server's check of an append.
pub fn count_events(data: &[u8], max_event_bytes: usize) -> Result<u32, FrameError> {
    let mut pos = 0usize;
    let mut count = 0u32;
    while pos < data.len() {
        pos += check_event(&data[pos..], pos as u64, max_event_bytes)?.framed_len;
        count += 1;
    }
    Ok(count)
}

impl Iterator for FrameIter {
    type Item = Result<FramedEvent, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.data.len() {
            return None;
        }
        let item = self.decode_next();
        if item.is_err() {
            // Stop after the first error: what follows cannot be located.
            self.pos = self.data.len();
        }
        Some(item)
    }
}

/// The framed length the event starting at `data` claims (its length field
/// plus the header), unchecked; None while `data` is shorter than a header.
pub fn claimed_framed_len(data: &[u8]) -> Option<usize> {
    let b = data.get(..HEADER_BYTES)?;
    Some(HEADER_BYTES + u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// Length of the longest prefix of `data` made of whole events, reading only
/// the length fields (no checksums): used to cut reads at event boundaries.
pub fn whole_events_prefix(data: &[u8], limit: usize) -> usize {
    let mut pos = 0usize;
    while let Some(framed) = claimed_framed_len(&data[pos..]) {
        if data.len() - pos < framed || (pos + framed > limit && pos > 0) {
            break;
        }
        pos += framed;
    }
    pos
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_with_and_without_key() {
        let mut buf = BytesMut::new();
        encode_event(&mut buf, Some("k1"), b"hello");
        encode_event(&mut buf, None, b"");
        let data = buf.freeze();
        let events: Vec<_> = FrameIter::new(data.clone(), 100, 1 << 20)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].offset, 100);
        assert_eq!(events[0].routing_key.as_deref(), Some("k1"));
        assert_eq!(&events[0].payload[..], b"hello");
        assert_eq!(events[0].framed_len, framed_len(Some("k1"), 5));
        assert_eq!(events[1].offset, 100 + events[0].framed_len as u64);
        assert_eq!(events[1].routing_key, None);
        assert_eq!(whole_events_prefix(&data, usize::MAX), data.len());
        assert_eq!(
            whole_events_prefix(&data[..data.len() - 1], usize::MAX),
            events[0].framed_len
        );
    }

    #[test]
    fn attributes_extend_the_body_and_plain_readers_of_lengths_skip_them() {
        let mut buf = BytesMut::new();
        encode_event_with(&mut buf, Some("k1"), b"\x01attrs", b"value");
        encode_event_with(&mut buf, None, b"\x01a", b"");
        encode_event_with(&mut buf, Some("k3"), b"", b"plain");
        let data = buf.freeze();
        let events: Vec<_> = FrameIter::new(data.clone(), 0, 1 << 20)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(events[0].routing_key.as_deref(), Some("k1"));
        assert_eq!(&events[0].attributes[..], b"\x01attrs");
        assert_eq!(&events[0].payload[..], b"value");
        assert_eq!(
            events[0].framed_len,
            framed_len_with(Some("k1"), 6, 5),
            "header, key length, extension, key, attributes, payload"
        );
        assert_eq!(
            events[0].framed_len,
            framed_len(Some("k1"), 5) + EXTENSION_BYTES + 6
        );
        assert_eq!(events[1].routing_key, None);
        assert_eq!(&events[1].attributes[..], b"\x01a");
        assert!(events[1].payload.is_empty());
        assert!(events[2].attributes.is_empty());
        assert_eq!(events[2].framed_len, framed_len(Some("k3"), 5));
        assert_eq!(count_events(&data, 1 << 20), Ok(3));
        assert_eq!(whole_events_prefix(&data, usize::MAX), data.len());

        // An extension claiming more than its body holds is malformed.
        let mut bad = BytesMut::new();
        encode_event_with(&mut bad, Some("k"), b"\x01", b"");
        let mut bad = bad.to_vec();
        bad[12..16].copy_from_slice(&1000u32.to_le_bytes());
        let crc = crc32fast::hash(&bad[HEADER_BYTES..]);
        bad[4..8].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            FrameIter::new(bad.into(), 0, 1 << 20).next(),
            Some(Err(FrameError::Malformed { .. }))
        ));
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The vectors the Java client's FramingTest checks too.
    #[test]
    fn framings_match_the_shared_vectors() {
        let file = include_str!("../testdata/framed-events.tsv");
        let mut checked = 0;
        for line in file
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 4, "KEY, ATTRIBUTES, PAYLOAD, FRAME: {line}");
            let key = (!f[0].is_empty()).then_some(f[0]);
            let (attributes, payload) = (unhex(f[1]), unhex(f[2]));
            let mut buf = BytesMut::new();
            encode_event_with(&mut buf, key, &attributes, &payload);
            assert_eq!(&buf[..], &unhex(f[3])[..], "{line}");
            let event = FrameIter::new(buf.freeze(), 0, 1 << 20)
                .next()
                .unwrap()
                .unwrap();
            assert_eq!(event.routing_key.as_deref(), key);
            assert_eq!(event.attributes, attributes);
            assert_eq!(event.payload, payload);
            checked += 1;
        }
        assert!(checked >= 5, "{checked} vectors");
    }

    #[test]
    fn detects_corruption_truncation_and_oversize() {
        let mut buf = BytesMut::new();
        encode_event(&mut buf, Some("key"), b"payload");
        let good = buf.freeze();
        let mut bad = good.to_vec();
        *bad.last_mut().unwrap() ^= 1;
        let err = FrameIter::new(bad.into(), 0, 1 << 20).next().unwrap();
        assert_eq!(err, Err(FrameError::Checksum { offset: 0 }));
        let cut = good.slice(..good.len() - 2);
        assert!(matches!(
            FrameIter::new(cut, 0, 1 << 20).next(),
            Some(Err(FrameError::Truncated { .. }))
        ));
        assert!(matches!(
            FrameIter::new(good, 0, 10).next(),
            Some(Err(FrameError::TooLarge { .. }))
        ));
    }

    #[test]
    fn count_events_checks_like_the_iterator() {
        let mut buf = BytesMut::new();
        encode_event(&mut buf, Some("k"), b"one");
        encode_event(&mut buf, None, b"two");
        assert_eq!(count_events(&buf, 1 << 20), Ok(2));
        let mut bad = buf.to_vec();
        *bad.last_mut().unwrap() ^= 1;
        let second = framed_len(Some("k"), 3) as u64;
        assert_eq!(
            count_events(&bad, 1 << 20),
            Err(FrameError::Checksum { offset: second })
        );
        assert!(matches!(
            count_events(&buf, 8),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            count_events(&buf[..buf.len() - 1], 1 << 20),
            Err(FrameError::Truncated { .. })
        ));
    }

    #[test]
    fn whole_events_prefix_respects_limit_but_keeps_one() {
        let mut buf = BytesMut::new();
        encode_event(&mut buf, None, &[0u8; 100]);
        encode_event(&mut buf, None, &[0u8; 100]);
        let one = framed_len(None, 100);
        assert_eq!(whole_events_prefix(&buf, one + 1), one);
        // A single event larger than the limit is still returned whole.
        assert_eq!(whole_events_prefix(&buf, 10), one);
    }

    /// Allocations unrelated to any claimed length: `Bytes`' shared header
    /// once a buffer is cloned, an error's message.
    const BOOKKEEPING_BYTES: usize = 1024;

    /// Decodes `data` every way the crate can (iterator, count, prefix) and
    /// checks the answers agree; returns the largest allocation made.
    fn decode_all_ways(data: &Bytes, base: u64, max: usize) -> usize {
        let ((), largest) = aquifer_alloc_probe::largest_allocation(|| {
            let mut ok = 0u32;
            let mut failed = false;
            let mut end = base;
            for item in FrameIter::new(data.clone(), base, max) {
                match item {
                    Ok(e) => {
                        assert_eq!(e.offset, end, "events are contiguous");
                        assert!(e.framed_len <= max && e.payload.len() < e.framed_len);
                        end = e.offset + e.framed_len as u64;
                        ok += 1;
                    }
                    Err(_) => failed = true,
                }
            }
            // The count starts at offset 0, so only the base's overflow
            // check can set the two apart.
            match count_events(data, max) {
                Ok(n) => assert!(failed || n == ok, "{n} counted, {ok} iterated"),
                Err(_) => assert!(failed, "count refused what the iterator took"),
            }
            assert!(whole_events_prefix(data, max) <= data.len());
        });
        largest
    }

    /// A routing key, attributes and a payload.
    type Parts = (Option<String>, Vec<u8>, Vec<u8>);

    /// Valid framings of up to 8 events, with and without attributes.
    fn framed_events() -> impl Strategy<Value = Vec<Parts>> {
        proptest::collection::vec(
            (
                proptest::option::of("[a-z\\PC]{0,12}"),
                prop_oneof![
                    Just(Vec::new()),
                    proptest::collection::vec(any::<u8>(), 1..16)
                ],
                proptest::collection::vec(any::<u8>(), 0..64),
            ),
            0..8,
        )
    }

    fn encode_all(events: &[Parts]) -> BytesMut {
        let mut buf = BytesMut::new();
        for (k, a, p) in events {
            encode_event_with(&mut buf, k.as_deref(), a, p);
        }
        buf
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic_or_allocate_what_they_claim(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            base in any::<u64>(),
            max in prop_oneof![Just(usize::MAX), 0usize..1024],
        ) {
            let data = Bytes::from(data);
            let largest = decode_all_ways(&data, base, max);
            // A key is copied out, never more than the input holds.
            prop_assert!(
                largest <= data.len() + BOOKKEEPING_BYTES,
                "{largest} bytes allocated for {}",
                data.len()
            );
        }

        #[test]
        fn damaged_framings_never_panic_and_intact_ones_round_trip(
            events in framed_events(),
            flips in proptest::collection::vec((any::<usize>(), 1u8..), 0..4),
            claim in proptest::option::of((any::<usize>(), any::<u32>())),
            cut in proptest::option::of(any::<usize>()),
            base in any::<u64>(),
        ) {
            let mut buf = encode_all(&events);
            let intact = flips.is_empty() && claim.is_none() && cut.is_none();
            if !buf.is_empty() {
                for (at, x) in &flips {
                    let at = at % buf.len();
                    buf[at] ^= x;
                }
                // A length field (or anything) overwritten with a large claim.
                if let Some((at, claimed)) = claim {
                    let at = at % buf.len();
                    let n = (buf.len() - at).min(4);
                    buf[at..at + n].copy_from_slice(&claimed.to_le_bytes()[..n]);
                }
                if let Some(cut) = cut {
                    buf.truncate(cut % buf.len());
                }
            }
            let data = buf.freeze();
            let largest = decode_all_ways(&data, base, usize::MAX);
            prop_assert!(largest <= data.len() + BOOKKEEPING_BYTES);
            if intact && base.checked_add(data.len() as u64).is_some() {
                let back: Vec<_> = FrameIter::new(data, base, usize::MAX)
                    .map(|e| e.map(|e| (e.routing_key, e.attributes.to_vec(), e.payload.to_vec())))
                    .collect::<Result<_, _>>()
                    .unwrap();
                let want: Vec<_> = events
                    .into_iter()
                    .map(|(k, a, p)| (k.filter(|k| !k.is_empty()), a, p))
                    .collect();
                prop_assert_eq!(back, want);
            }
        }
    }

    #[test]
    fn an_event_ending_past_the_largest_offset_is_refused() {
        let mut buf = BytesMut::new();
        encode_event(&mut buf, None, b"x");
        let err = FrameIter::new(buf.freeze(), u64::MAX - 3, usize::MAX).next();
        assert!(
            matches!(err, Some(Err(FrameError::Malformed { .. }))),
            "{err:?}"
        );
    }
}
