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
    let mut crc = payload_crc(kind, payload_len);
    crc.update(&out[start + HEADER_BYTES..]);
    out[start..start + HEADER_BYTES].copy_from_slice(&header(kind, payload_len, crc));
    Ok(())
}

/// The checksum of a record of `kind` with a payload of `payload_len`
/// bytes, before the payload is fed to it.
fn payload_crc(kind: RecordKind, payload_len: usize) -> crc32fast::Hasher {
    // Callers bound what they write far below this (raft entries by the
    // message limit, snapshots by the tail budget); past it the record
    // could never be read back, so writing it would be a silent loss.
    assert!(
        payload_len <= PAYLOAD_BYTES_MAX,
        "log record payload of {payload_len} bytes is over {PAYLOAD_BYTES_MAX}"
    );
    let mut crc = crc32fast::Hasher::new();
    // Fits: PAYLOAD_BYTES_MAX fits the u32 length field (checked above).
    crc.update(&(payload_len as u32).to_le_bytes());
    crc.update(&[kind as u8]);
    crc
}

fn header(kind: RecordKind, payload_len: usize, crc: crc32fast::Hasher) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&(payload_len as u32).to_le_bytes());
    h[8..12].copy_from_slice(&crc.finalize().to_le_bytes());
    h[12] = kind as u8;
    h
}

/// A record written to the start of a file as its payload is produced
/// (a prost message encodes straight into it, as a `BufMut`), so the
/// payload is never whole in memory: it goes out `STREAM_BUFFER_BYTES` at a
/// time, checksummed on the way, and [`RecordStream::finish`] writes the
/// header last. A snapshot of a 256 MiB tail costs 1 MiB here, not 256.
pub struct RecordStream<'f> {
    file: &'f mut std::fs::File,
    kind: RecordKind,
    payload_len: usize,
    written: usize,
    buf: Vec<u8>,
    crc: crc32fast::Hasher,
    /// The first write error; later writes are dropped and `finish` says so.
    error: Option<std::io::Error>,
}

const STREAM_BUFFER_BYTES: usize = 1024 * 1024;

impl<'f> RecordStream<'f> {
    /// Starts a record of `kind` whose payload will be exactly
    /// `payload_len` bytes, at the start of the (empty) `file`.
    pub fn start(
        file: &'f mut std::fs::File,
        kind: RecordKind,
        payload_len: usize,
    ) -> std::io::Result<Self> {
        use std::io::Write;
        let crc = payload_crc(kind, payload_len);
        file.write_all(&[0u8; HEADER_BYTES])?;
        Ok(RecordStream {
            file,
            kind,
            payload_len,
            written: 0,
            buf: Vec::with_capacity(STREAM_BUFFER_BYTES),
            crc,
            error: None,
        })
    }

    fn write_out(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.crc.update(bytes);
        self.written += bytes.len();
        if self.error.is_none() {
            if let Err(e) = self.file.write_all(bytes) {
                self.error = Some(e);
            }
        }
    }

    fn flush_buf(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.write_out(&buf);
        self.buf = buf;
        self.buf.clear();
    }

    /// Writes what is buffered and the header: the record is whole in the
    /// file (not yet synced) if the payload came to the promised length.
    pub fn finish(mut self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.flush_buf();
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.written != self.payload_len {
            return Err(std::io::Error::other(format!(
                "record payload came to {} bytes, not the {} promised",
                self.written, self.payload_len
            )));
        }
        let header = header(self.kind, self.payload_len, self.crc);
        self.file.write_all_at(&header, 0)
    }
}

// SAFETY: every method delegates to `Vec<u8>`'s `BufMut`, which upholds
// the trait's contract; `advance_mut` only adds a flush of the bytes the
// caller has just initialised.
unsafe impl bytes::BufMut for RecordStream<'_> {
    fn remaining_mut(&self) -> usize {
        // What the record may still take: prost checks it before encoding.
        self.payload_len
            .saturating_sub(self.written + self.buf.len())
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller initialised `cnt` bytes of `chunk_mut`, which
        // is the vector's spare capacity.
        unsafe { self.buf.advance_mut(cnt) };
        if self.buf.len() >= STREAM_BUFFER_BYTES {
            self.flush_buf();
        }
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        if self.buf.len() == self.buf.capacity() {
            self.flush_buf(); // rather than let the vector grow
        }
        self.buf.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        // The buffer never grows past its first allocation.
        if self.buf.len() + src.len() > STREAM_BUFFER_BYTES {
            self.flush_buf();
        }
        if src.len() >= STREAM_BUFFER_BYTES {
            // A large field (a tail chunk) goes out from where it is.
            self.write_out(src);
        } else {
            self.buf.extend_from_slice(src);
        }
    }
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
    fn a_streamed_record_is_the_encoded_one_and_holds_a_buffer_not_the_payload() {
        use bytes::BufMut as _;
        let payload: Vec<u8> = (0..5 * STREAM_BUFFER_BYTES + 77)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut want = Vec::new();
        encode(&mut want, RecordKind::Snapshot, &payload);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        let mut file = std::fs::File::create(&path).unwrap();
        let ((), largest) = aquifer_alloc_probe::largest_allocation(|| {
            let mut out =
                RecordStream::start(&mut file, RecordKind::Snapshot, payload.len()).unwrap();
            // Small puts buffer, a large one goes out from where it is.
            out.put_slice(&payload[..10]);
            out.put_u8(payload[10]);
            out.put_slice(&payload[11..3 * STREAM_BUFFER_BYTES]);
            out.put_slice(&payload[3 * STREAM_BUFFER_BYTES..]);
            out.finish().unwrap();
        });
        assert_eq!(std::fs::read(&path).unwrap(), want);
        assert!(
            largest <= 2 * STREAM_BUFFER_BYTES,
            "{largest} bytes allocated"
        );

        // A payload shorter than promised is an error, not a record.
        let mut file = std::fs::File::create(&path).unwrap();
        let mut out = RecordStream::start(&mut file, RecordKind::Snapshot, 100).unwrap();
        out.put_slice(&[1; 99]);
        assert!(out.finish().is_err());
    }

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
