//! Record framing of log files.
//!
//! A record is `magic u32 | payload_len u32 | crc u32 | kind u8 | payload`,
//! little endian, where crc is CRC-32 (crc32fast) over payload_len, kind and
//! payload. The magic lets recovery tell a torn tail (nothing valid after the
//! damage) from corruption in the middle (valid records follow it).

/// "AQLG".
pub const MAGIC: u32 = 0x4751_4C41;
pub const HEADER_BYTES: usize = 13;
/// Largest payload a record may carry: a raft entry holds one append batch,
/// which the API bounds far below this.
pub const PAYLOAD_BYTES_MAX: usize = 256 * 1024 * 1024;
// The header's length field is a u32.
const _: () = assert!(PAYLOAD_BYTES_MAX <= u32::MAX as usize);

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A raft `Entry` (protobuf).
    Entry = 1,
    /// A raft `HardState` (protobuf); the last one wins.
    HardState = 2,
    /// A raft `ConfState` (protobuf); the last one wins.
    ConfState = 3,
    /// A raft `Snapshot` (protobuf), alone in the group's snapshot file.
    Snapshot = 4,
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(RecordKind::Entry),
            2 => Some(RecordKind::HardState),
            3 => Some(RecordKind::ConfState),
            4 => Some(RecordKind::Snapshot),
            _ => None,
        }
    }
}

/// Appends one framed record to `out`.
pub fn encode(out: &mut Vec<u8>, kind: RecordKind, payload: &[u8]) {
    encode_with(out, kind, |out| {
        out.extend_from_slice(payload);
        Ok::<(), std::convert::Infallible>(())
    })
    .unwrap_or_else(|never| match never {});
}

/// Appends one framed record whose payload `write` appends to `out` in
/// place (no intermediate buffer); the header is filled in afterwards.
pub fn encode_with<E>(
    out: &mut Vec<u8>,
    kind: RecordKind,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    write(out)?;
    let payload_len = out.len() - start - HEADER_BYTES;
    // Callers bound what they write far below this (raft entries by the
    // message limit, snapshots by the tail budget); past it the record
    // could never be read back, so writing it would be a silent loss.
    assert!(
        payload_len <= PAYLOAD_BYTES_MAX,
        "log record payload of {payload_len} bytes is over {PAYLOAD_BYTES_MAX}"
    );
    // Fits: PAYLOAD_BYTES_MAX fits the u32 length field (checked below).
    let len = (payload_len as u32).to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(&[kind as u8]);
    crc.update(&out[start + HEADER_BYTES..]);
    let header = &mut out[start..start + HEADER_BYTES];
    header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    header[4..8].copy_from_slice(&len);
    header[8..12].copy_from_slice(&crc.finalize().to_le_bytes());
    header[12] = kind as u8;
    Ok(())
}

/// The result of decoding at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    Record {
        kind: RecordKind,
        payload: &'a [u8],
        /// Header plus payload.
        framed_len: usize,
    },
    /// Not a valid record here; `why` says what failed.
    Invalid { why: &'static str },
}

/// Decodes the record at the start of `buf`.
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < HEADER_BYTES {
        return Decoded::Invalid {
            why: "record header cut short",
        };
    }
    let word = |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    if word(0) != MAGIC {
        return Decoded::Invalid {
            why: "bad record magic",
        };
    }
    let len = word(4) as usize;
    if len > PAYLOAD_BYTES_MAX {
        return Decoded::Invalid {
            why: "record length out of range",
        };
    }
    if buf.len() < HEADER_BYTES + len {
        return Decoded::Invalid {
            why: "record payload cut short",
        };
    }
    let payload = &buf[HEADER_BYTES..HEADER_BYTES + len];
    let mut crc = crc32fast::Hasher::new();
    crc.update(&buf[4..8]);
    crc.update(&buf[12..13]);
    crc.update(payload);
    if crc.finalize() != word(8) {
        return Decoded::Invalid {
            why: "record checksum mismatch",
        };
    }
    match RecordKind::from_u8(buf[12]) {
        Some(kind) => Decoded::Record {
            kind,
            payload,
            framed_len: HEADER_BYTES + len,
        },
        None => Decoded::Invalid {
            why: "unknown record kind",
        },
    }
}

/// Whether any valid record starts after `from` in `buf`: a damaged record
/// with valid ones behind it is corruption, not a torn tail.
pub fn valid_record_after(buf: &[u8], from: usize) -> Option<usize> {
    let magic = MAGIC.to_le_bytes();
    let mut pos = from;
    while pos + HEADER_BYTES <= buf.len() {
        if buf[pos..pos + 4] == magic {
            if let Decoded::Record { .. } = decode(&buf[pos..]) {
                return Some(pos);
            }
        }
        pos += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_damage() {
        let mut buf = Vec::new();
        encode(&mut buf, RecordKind::Entry, b"first");
        let second_at = buf.len();
        encode(&mut buf, RecordKind::HardState, b"second");
        match decode(&buf) {
            Decoded::Record {
                kind,
                payload,
                framed_len,
            } => {
                assert_eq!(kind, RecordKind::Entry);
                assert_eq!(payload, b"first");
                assert_eq!(framed_len, second_at);
            }
            other => panic!("{other:?}"),
        }
        // A flipped payload byte fails the checksum; the next record is still found.
        let mut bad = buf.clone();
        bad[HEADER_BYTES] ^= 0x40;
        assert!(matches!(decode(&bad), Decoded::Invalid { .. }));
        assert_eq!(valid_record_after(&bad, 1), Some(second_at));
        // A torn tail has nothing valid after it.
        let torn = &buf[..buf.len() - 3];
        assert!(matches!(
            decode(&torn[second_at..]),
            Decoded::Invalid { .. }
        ));
        assert_eq!(valid_record_after(torn, second_at + 1), None);
    }

    /// Records of every kind (and a few unknown ones) around arbitrary
    /// payloads, with valid checksums.
    fn records() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            (1u8..=6, proptest::collection::vec(any::<u8>(), 0..48)),
            0..6,
        )
        .prop_map(|records| {
            let mut buf = Vec::new();
            for (kind, payload) in records {
                let at = buf.len();
                encode(&mut buf, RecordKind::Entry, &payload);
                // An unknown kind keeps a valid checksum: re-sum it.
                buf[at + 12] = kind;
                let mut crc = crc32fast::Hasher::new();
                crc.update(&buf[at + 4..at + 8]);
                crc.update(&buf[at + 12..]);
                let sum = crc.finalize().to_le_bytes();
                buf[at + 8..at + 12].copy_from_slice(&sum);
            }
            buf
        })
    }

    proptest::proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic_or_allocate(
            buf in proptest::collection::vec(any::<u8>(), 0..256),
            from in any::<usize>(),
        ) {
            let ((), largest) = aquifer_alloc_probe::largest_allocation(|| {
                if let Decoded::Record { payload, framed_len, .. } = decode(&buf) {
                    assert_eq!(framed_len, HEADER_BYTES + payload.len());
                    assert!(framed_len <= buf.len());
                }
                let from = from % (buf.len() + 1);
                if let Some(at) = valid_record_after(&buf, from) {
                    assert!(at >= from && matches!(decode(&buf[at..]), Decoded::Record { .. }));
                }
            });
            // Decoding borrows: it allocates nothing, whatever a length claims.
            prop_assert_eq!(largest, 0);
        }

        #[test]
        fn damaged_records_are_refused_or_found_whole(
            buf in records(),
            flips in proptest::collection::vec((any::<usize>(), 1u8..), 1..4),
            claim in any::<u32>(),
        ) {
            let mut bad = buf.clone();
            if !bad.is_empty() {
                for (at, x) in &flips {
                    let at = at % bad.len();
                    bad[at] ^= x;
                }
                // A length field claiming up to 4 GiB.
                if bad.len() >= 8 {
                    bad[4..8].copy_from_slice(&claim.to_le_bytes());
                }
            }
            let mut pos = 0;
            while let Decoded::Record { framed_len, .. } = decode(&bad[pos..]) {
                pos += framed_len;
            }
            prop_assert!(pos <= bad.len());
            prop_assert!(valid_record_after(&bad, pos.min(bad.len())).is_none_or(|at| at < bad.len()));
        }
    }
}
