//! The state synchronizer's records: each is the payload of one event in
//! the synchronizer's segment, so a reader always finds a record's start.
//!
//! Format, little endian:
//!
//! ```text
//! kind u8 = 1 (whole state) | u32 len | len bytes of the state
//! kind u8 = 2 (updates)     | u32 count | count × (u32 len | len bytes of one update)
//! ```
//!
//! Owns encoding and decoding; decoding checks every length against what is
//! left and that nothing is left over, and never allocates more than the
//! record's own size. It knows nothing of the user's types.

use bytes::{BufMut, Bytes, BytesMut};

use crate::Error;

/// Largest record: one event, as large as any server takes (the server's
/// own `event_bytes_max`, 8 MiB by default, may refuse a smaller one).
pub(crate) const RECORD_BYTES_MAX: usize = aquifer_proto::wire::EVENT_BYTES_MAX;

const KIND_STATE: u8 = 1;
const KIND_UPDATES: u8 = 2;
/// A length or count field.
const LEN_BYTES: usize = 4;

/// A decoded record, borrowing the event's bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Record<'a> {
    /// The whole state: everything before it is summed up in it.
    State(&'a [u8]),
    /// Updates to apply, in order, to the state before them, all or none.
    Updates(Vec<&'a [u8]>),
}

/// Why a record does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("empty record")]
    Empty,
    #[error("unknown record kind {0} (written by a newer client?)")]
    UnknownKind(u8),
    #[error("{what} needs {need} bytes but only {left} are left")]
    Short {
        what: &'static str,
        need: usize,
        left: usize,
    },
    #[error("{0} bytes left over after the record")]
    LeftOver(usize),
}

/// The record of a whole state.
pub(crate) fn encode_state(state: &[u8]) -> Result<Bytes, Error> {
    let mut out = record_buffer(KIND_STATE, LEN_BYTES + state.len())?;
    put_len(&mut out, state.len());
    out.put_slice(state);
    Ok(out.freeze())
}

/// The record of `updates` (each already encoded), applied all or none.
pub(crate) fn encode_updates(updates: &[Vec<u8>]) -> Result<Bytes, Error> {
    let body = LEN_BYTES + updates.iter().map(|u| LEN_BYTES + u.len()).sum::<usize>();
    let mut out = record_buffer(KIND_UPDATES, body)?;
    put_len(&mut out, updates.len());
    for u in updates {
        put_len(&mut out, u.len());
        out.put_slice(u);
    }
    Ok(out.freeze())
}

pub(crate) fn decode(record: &[u8]) -> Result<Record<'_>, RecordError> {
    let (&kind, mut rest) = record.split_first().ok_or(RecordError::Empty)?;
    let decoded = match kind {
        KIND_STATE => {
            let len = take_len(&mut rest, "the state's length")?;
            Record::State(take(&mut rest, len, "the state")?)
        }
        KIND_UPDATES => {
            let count = take_len(&mut rest, "the update count")?;
            // Every update takes at least its length field: a count the
            // bytes cannot hold is refused before anything is allocated.
            let need = count.saturating_mul(LEN_BYTES);
            if need > rest.len() {
                return Err(RecordError::Short {
                    what: "the updates",
                    need,
                    left: rest.len(),
                });
            }
            let mut updates = Vec::with_capacity(count);
            for _ in 0..count {
                let len = take_len(&mut rest, "an update's length")?;
                updates.push(take(&mut rest, len, "an update")?);
            }
            Record::Updates(updates)
        }
        other => return Err(RecordError::UnknownKind(other)),
    };
    if !rest.is_empty() {
        return Err(RecordError::LeftOver(rest.len()));
    }
    Ok(decoded)
}

/// A buffer holding the kind byte, with room for `body` bytes more; refuses
/// a record over [`RECORD_BYTES_MAX`] before allocating it.
fn record_buffer(kind: u8, body: usize) -> Result<BytesMut, Error> {
    let size = 1 + body;
    if size > RECORD_BYTES_MAX {
        return Err(Error::InvalidArgument(format!(
            "state synchronizer record of {size} bytes is over the limit of {RECORD_BYTES_MAX}: keep the state smaller or write fewer updates at once"
        )));
    }
    let mut out = BytesMut::with_capacity(size);
    out.put_u8(kind);
    Ok(out)
}

/// A length below [`RECORD_BYTES_MAX`], which fits a u32.
fn put_len(out: &mut BytesMut, len: usize) {
    const _: () = assert!(RECORD_BYTES_MAX <= u32::MAX as usize);
    out.put_u32_le(len as u32);
}

fn take_len(rest: &mut &[u8], what: &'static str) -> Result<usize, RecordError> {
    let b = take(rest, LEN_BYTES, what)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

fn take<'a>(rest: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], RecordError> {
    if rest.len() < n {
        return Err(RecordError::Short {
            what,
            need: n,
            left: rest.len(),
        });
    }
    let (taken, left) = rest.split_at(n);
    *rest = left;
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let state = encode_state(b"whole").unwrap();
        assert_eq!(&state[..], b"\x01\x05\x00\x00\x00whole");
        assert_eq!(decode(&state), Ok(Record::State(b"whole")));
        assert_eq!(decode(&encode_state(b"").unwrap()), Ok(Record::State(b"")));
        let updates = encode_updates(&[b"a".to_vec(), Vec::new(), b"ccc".to_vec()]).unwrap();
        assert_eq!(
            decode(&updates),
            Ok(Record::Updates(vec![&b"a"[..], b"", b"ccc"]))
        );
        assert_eq!(
            decode(&encode_updates(&[]).unwrap()),
            Ok(Record::Updates(Vec::new()))
        );
    }

    #[test]
    fn damaged_records_are_refused_clearly() {
        assert_eq!(decode(b""), Err(RecordError::Empty));
        assert_eq!(decode(b"\x07abc"), Err(RecordError::UnknownKind(7)));
        let state = encode_state(b"whole").unwrap();
        assert!(matches!(
            decode(&state[..state.len() - 1]),
            Err(RecordError::Short {
                what: "the state",
                ..
            })
        ));
        let mut longer = state.to_vec();
        longer.push(0);
        assert_eq!(decode(&longer), Err(RecordError::LeftOver(1)));
        let updates = encode_updates(&[b"a".to_vec(), b"bb".to_vec()]).unwrap();
        for cut in 1..updates.len() {
            assert!(
                matches!(decode(&updates[..cut]), Err(RecordError::Short { .. })),
                "cut at {cut}"
            );
        }
        // A count no bytes could hold allocates nothing and says so.
        assert!(matches!(
            decode(b"\x02\xff\xff\xff\xff"),
            Err(RecordError::Short {
                what: "the updates",
                ..
            })
        ));
        assert!(RecordError::UnknownKind(7).to_string().contains("kind 7"));
    }

    #[test]
    fn records_are_bounded() {
        let big = vec![0u8; RECORD_BYTES_MAX];
        assert!(matches!(encode_state(&big), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            encode_updates(&[big]),
            Err(Error::InvalidArgument(_))
        ));
        let fits = vec![0u8; RECORD_BYTES_MAX - 1 - LEN_BYTES];
        assert_eq!(encode_state(&fits).unwrap().len(), RECORD_BYTES_MAX);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_records_never_panic_or_allocate_what_they_claim(
            record in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
        ) {
            let (decoded, largest) = aquifer_alloc_probe::largest_allocation(|| decode(&record).is_ok());
            // An update count is checked against the bytes left before the
            // updates' vector is allocated.
            let bound = record.len() / LEN_BYTES * std::mem::size_of::<&[u8]>() + 1024;
            proptest::prop_assert!(largest <= bound, "{largest} bytes for {}", record.len());
            if decoded {
                proptest::prop_assert!(!record.is_empty());
            }
        }
    }
}
