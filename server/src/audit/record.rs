//! The audit record format and its hash chain: encoding a record, and
//! checking a segment's records one after another ([`Chain`]).
//!
//! A record is one event, its payload the record as JSON in exactly the
//! form [`Record::encode`] writes (serde's field order, no spaces), with a
//! version field `v`. Its `hash` is the SHA-256, in hex, of the same JSON
//! with `"hash":""`; its `prev` is the `hash` of the record before it in the
//! same segment, or [`genesis`] of the segment for the first one. Its `seq`
//! is its event number under the node's audit writer id: 1, 2, 3, … in the
//! segment.
//!
//! Pure functions only: no I/O, no clock. The server writes with it and the
//! CLI's `audit verify` checks with it, so both agree by construction.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The record format's version (`v`).
pub const VERSION: u32 = 1;

/// What happened to the call a record describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeKind {
    /// Done as asked.
    Ok,
    /// Refused by an authorization check.
    Denied,
    /// Refused: the caller is not (or not validly) authenticated.
    Unauthenticated,
    /// Attempted and failed (the detail names the status code).
    Failed,
}

impl OutcomeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Ok => "ok",
            OutcomeKind::Denied => "denied",
            OutcomeKind::Unauthenticated => "unauthenticated",
            OutcomeKind::Failed => "failed",
        }
    }
}

/// One audit record as stored. Field order is the encoding's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub v: u32,
    /// Its event number in the segment under the node's audit writer id.
    pub seq: u64,
    /// When the node took the call, unix ms.
    pub time_ms: u64,
    /// The node that took the call (and wrote the record).
    pub node: u64,
    pub principal: String,
    /// What was asked: `stream.create`, `append.open`, `auth`, …
    pub op: String,
    /// What it was asked of: `scope/stream`, a segment id, or empty.
    pub target: String,
    pub outcome: OutcomeKind,
    /// Why it was refused or failed (`NotFound: …`); empty when ok.
    pub detail: String,
    /// Bytes the call moved, when it says (0 otherwise).
    pub bytes: u64,
    /// The `hash` of the record before it in the segment ([`genesis`] for
    /// the first).
    pub prev: String,
    /// SHA-256 (hex) of this record's encoding with `hash` empty.
    pub hash: String,
}

impl Record {
    /// The SHA-256 (hex) of this record with its `hash` field empty.
    pub fn compute_hash(&self) -> String {
        let unhashed = Record {
            hash: String::new(),
            ..self.clone()
        };
        hex(&Sha256::digest(unhashed.to_json()))
    }

    /// Sets `prev` and `seq`, then the hash over them and the rest.
    pub fn seal(&mut self, seq: u64, prev: &str) {
        self.v = VERSION;
        self.seq = seq;
        self.prev = prev.to_string();
        self.hash = self.compute_hash();
    }

    /// The record's stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        self.to_json()
    }

    fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings and numbers into memory cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes stored bytes: only a record in exactly the form
    /// [`Record::encode`] writes is one (any other spelling of the same
    /// values is refused too, so no byte can change unnoticed).
    pub fn decode(bytes: &[u8]) -> Result<Record, Broken> {
        let r: Record = serde_json::from_slice(bytes)
            .map_err(|e| Broken::Undecodable(format!("not an audit record: {e}")))?;
        if r.v != VERSION {
            return Err(Broken::Undecodable(format!(
                "record version {} is not {VERSION}",
                r.v
            )));
        }
        if r.encode() != bytes {
            return Err(Broken::Undecodable(
                "bytes are not in the record's canonical encoding (altered)".into(),
            ));
        }
        Ok(r)
    }
}

/// What the first record of segment `segment_id` chains to: binds a chain
/// to its segment, so records moved from another segment do not verify.
pub fn genesis(segment_id: u64) -> String {
    hex(&Sha256::digest(format!(
        "aquifer-audit/v{VERSION}/genesis/{segment_id}"
    )))
}

/// What a record's successor chains to when the record is undecodable:
/// the SHA-256 of its raw bytes (a writer resuming after a damaged record
/// neither stops nor forks; `verify` reports the damage).
pub fn raw_hash(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Why a record breaks its segment's chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    #[error("undecodable record: {0}")]
    Undecodable(String),
    #[error("hash mismatch: the record's contents were altered (stored hash {stored}, contents hash to {computed})")]
    HashMismatch { stored: String, computed: String },
    #[error("missing predecessor: expected sequence number {expected}, found {found} (records removed or reordered)")]
    Sequence { expected: u64, found: u64 },
    #[error("missing predecessor: prev is {prev} but the record before hashes to {expected} (the record before was replaced or removed)")]
    Prev { expected: String, prev: String },
}

/// Checks one segment's records in offset order.
#[derive(Debug, Clone)]
pub struct Chain {
    /// What the next record's `prev` must be; None: anything (the segment's
    /// head moved past its first record, so the chain starts mid-way).
    prev: Option<String>,
    /// The next record's `seq`; None: anything (likewise).
    next_seq: Option<u64>,
    /// Records checked so far.
    pub records: u64,
}

impl Chain {
    /// A chain of segment `segment_id` read from its first record
    /// (`from_start`), or from a head retention or truncation moved.
    pub fn new(segment_id: u64, from_start: bool) -> Chain {
        Chain {
            prev: from_start.then(|| genesis(segment_id)),
            next_seq: from_start.then_some(1),
            records: 0,
        }
    }

    /// Checks the next record's bytes against the chain so far.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Record, Broken> {
        let r = Record::decode(bytes)?;
        let computed = r.compute_hash();
        if computed != r.hash {
            return Err(Broken::HashMismatch {
                stored: r.hash.clone(),
                computed,
            });
        }
        if let Some(expected) = self.next_seq.filter(|&s| s != r.seq) {
            return Err(Broken::Sequence {
                expected,
                found: r.seq,
            });
        }
        if let Some(expected) = self.prev.as_ref().filter(|&p| *p != r.prev) {
            return Err(Broken::Prev {
                expected: expected.clone(),
                prev: r.prev.clone(),
            });
        }
        self.prev = Some(r.hash.clone());
        self.next_seq = r.seq.checked_add(1);
        self.records += 1;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(op: &str) -> Record {
        Record {
            v: VERSION,
            seq: 0,
            time_ms: 1_700_000_000_000,
            node: 1,
            principal: "alice".into(),
            op: op.into(),
            target: "a/b".into(),
            outcome: OutcomeKind::Ok,
            detail: String::new(),
            bytes: 7,
            prev: String::new(),
            hash: String::new(),
        }
    }

    /// Five chained records of segment 9, encoded.
    fn chain_of_five() -> Vec<Vec<u8>> {
        let mut prev = genesis(9);
        (1..=5)
            .map(|seq| {
                let mut r = record(&format!("op{seq}"));
                r.seal(seq, &prev);
                prev = r.hash.clone();
                r.encode()
            })
            .collect()
    }

    fn verify(records: &[Vec<u8>]) -> Result<u64, (usize, Broken)> {
        let mut chain = Chain::new(9, true);
        for (i, r) in records.iter().enumerate() {
            chain.push(r).map_err(|e| (i, e))?;
        }
        Ok(chain.records)
    }

    #[test]
    fn encodes_and_verifies_a_chain() {
        let records = chain_of_five();
        let first = String::from_utf8(records[0].clone()).unwrap();
        assert!(
            first.starts_with(
                r#"{"v":1,"seq":1,"time_ms":1700000000000,"node":1,"principal":"alice","op":"op1""#
            ),
            "{first}"
        );
        assert!(first.contains(r#""outcome":"ok""#), "{first}");
        assert_eq!(Record::decode(&records[0]).unwrap().op, "op1");
        assert_eq!(verify(&records), Ok(5));
        // Bound to its segment: the same records do not verify as another's.
        let mut other = Chain::new(10, true);
        assert!(matches!(other.push(&records[0]), Err(Broken::Prev { .. })));
    }

    #[test]
    fn detects_an_altered_record() {
        let mut records = chain_of_five();
        let text = String::from_utf8(records[2].clone()).unwrap();
        records[2] = text.replace("alice", "alica").into_bytes();
        match verify(&records) {
            Err((2, Broken::HashMismatch { .. })) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn detects_an_altered_record_whose_hash_was_recomputed() {
        let mut records = chain_of_five();
        let mut r = Record::decode(&records[2]).unwrap();
        r.target = "a/other".into();
        r.hash = r.compute_hash();
        records[2] = r.encode();
        // Record 2 is self-consistent; its successor no longer chains to it.
        match verify(&records) {
            Err((3, Broken::Prev { .. })) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn detects_a_removed_record() {
        let mut records = chain_of_five();
        records.remove(1);
        match verify(&records) {
            Err((
                1,
                Broken::Sequence {
                    expected: 2,
                    found: 3,
                },
            )) => {}
            other => panic!("{other:?}"),
        }
        // The first one removed: the second does not chain to genesis.
        let records = chain_of_five();
        assert!(matches!(
            verify(&records[1..]),
            Err((0, Broken::Sequence { expected: 1, .. }))
        ));
    }

    #[test]
    fn detects_reordered_records() {
        let mut records = chain_of_five();
        records.swap(1, 2);
        match verify(&records) {
            Err((
                1,
                Broken::Sequence {
                    expected: 2,
                    found: 3,
                },
            )) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_undecodable_and_respelled_bytes() {
        let records = chain_of_five();
        assert!(matches!(
            verify(&[b"not json".to_vec()]),
            Err((0, Broken::Undecodable(_)))
        ));
        // The same values, spelled differently (a space): still caught.
        let text = String::from_utf8(records[0].clone()).unwrap();
        let spaced = text.replacen(",", ", ", 1).into_bytes();
        assert!(matches!(
            verify(&[spaced]),
            Err((0, Broken::Undecodable(_)))
        ));
        let other_version = text.replacen(r#""v":1"#, r#""v":2"#, 1).into_bytes();
        assert!(matches!(
            verify(&[other_version]),
            Err((0, Broken::Undecodable(_)))
        ));
    }

    #[test]
    fn a_chain_past_a_moved_head_starts_anywhere() {
        let records = chain_of_five();
        let mut chain = Chain::new(9, false);
        for r in &records[2..] {
            chain.push(r).unwrap();
        }
        assert_eq!(chain.records, 3);
        // ... but is checked from there on.
        let mut chain = Chain::new(9, false);
        chain.push(&records[2]).unwrap();
        assert!(chain.push(&records[4]).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Audit records come back from tier-2, where tampering is the
        /// point: arbitrary and damaged bytes break the chain, never panic
        /// or allocate past what they hold.
        #[test]
        fn arbitrary_and_damaged_records_never_panic_or_allocate_what_they_claim(
            arbitrary in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            flips in proptest::collection::vec((proptest::prelude::any::<usize>(), 1u8..), 0..3),
            which in 0usize..5,
        ) {
            let mut records = chain_of_five();
            let damaged = &mut records[which];
            for (at, x) in &flips {
                let at = at % damaged.len();
                damaged[at] ^= x;
            }
            let input = records.iter().map(Vec::len).sum::<usize>() + arbitrary.len();
            let (ok, largest) = aquifer_alloc_probe::largest_allocation(|| {
                let mut chain = Chain::new(9, true);
                let ok = records.iter().all(|r| chain.push(r).is_ok());
                let _ = Chain::new(9, false).push(&arbitrary);
                ok
            });
            proptest::prop_assert_eq!(ok, flips.is_empty() || records == chain_of_five());
            // Decoding copies strings out and re-encodes to compare.
            proptest::prop_assert!(largest <= 4 * input + 4096, "{largest} bytes for {input}");
        }
    }
}
