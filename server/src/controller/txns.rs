//! Transactions: which transactions each stream has, their parts (one hidden
//! transaction segment per segment active when the transaction began, hosted
//! in that parent's container) and their state. The records live in the
//! `meta` state machine (replicated, durable, linearizable) and are their
//! own storage format (prost; never reuse a tag).
//!
//! Owns the rules, as pure functions of a [`TxnRecord`]: the state moves
//! open → committing → committed, or open → aborting → aborted, never back
//! and never across. The decision (committing / aborting) is recorded here
//! first; the containers' merges and drops follow (`node/txns.rs` drives
//! them), and only then is the transaction marked finished.
//!
//! Must never: let a committing transaction abort or an aborting one commit;
//! read a clock (times come in the commands, so replay is deterministic);
//! keep finished records without bound.

use std::collections::BTreeMap;

/// Open (and committing) transactions one stream may have.
pub const TXNS_PER_STREAM_MAX: usize = 1000;
/// Open (and committing) transactions the cluster may have.
pub const TXNS_MAX: usize = 10_000;
/// Finished transactions kept per stream for `status` and `list`, oldest
/// forgotten first (once their containers forgot their parts).
pub const FINISHED_KEPT_PER_STREAM: usize = 100;
/// A finished transaction is kept at least this long (ms), so a committer
/// that retries after a failover still finds its answer.
pub const FINISHED_KEPT_MS: u64 = 10 * 60 * 1000;
/// Lease bounds (ms): a transaction times out this long after its last ping.
pub const TXN_TIMEOUT_MIN_MS: u64 = 1000;
pub const TXN_TIMEOUT_MAX_MS: u64 = 24 * 3600 * 1000;
pub const TXN_TIMEOUT_DEFAULT_MS: u64 = 600 * 1000;

/// A transaction's state (the wire's `TransactionState` numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum TxnState {
    Open = 1,
    Committing = 2,
    Committed = 3,
    Aborting = 4,
    Aborted = 5,
}

impl TxnState {
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Open => "open",
            TxnState::Committing => "committing",
            TxnState::Committed => "committed",
            TxnState::Aborting => "aborting",
            TxnState::Aborted => "aborted",
        }
    }

    /// Open or committing: its parts still hold events.
    pub fn is_live(self) -> bool {
        matches!(self, TxnState::Open | TxnState::Committing)
    }

    pub fn is_finished(self) -> bool {
        matches!(self, TxnState::Committed | TxnState::Aborted)
    }
}

/// One part: events for `segment_id` wait in `txn_segment_id`, which lives
/// in the parent's container.
///
/// A scale may seal a part's parent before the transaction commits (a
/// sealed segment never grows again). The commit then *moves* the part:
/// it gets one child part per successor of its parent (`from` names it),
/// its events are copied into them by routing key, in order, and it is
/// dropped; the children are merged (or moved again) like any part.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnPart {
    #[prost(uint64, tag = "1")]
    pub segment_id: u64,
    #[prost(uint64, tag = "2")]
    pub txn_segment_id: u64,
    /// Its children are recorded; it is being copied into them.
    #[prost(bool, tag = "3")]
    pub moving: bool,
    /// The part this one is a child of (0: one of the transaction's first).
    #[prost(uint64, tag = "4")]
    pub from: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnRecord {
    /// 32 lowercase hex digits.
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub scope: String,
    #[prost(string, tag = "3")]
    pub stream: String,
    #[prost(enumeration = "TxnState", tag = "4")]
    pub state: i32,
    #[prost(uint64, tag = "5")]
    pub timeout_ms: u64,
    #[prost(uint64, tag = "6")]
    pub begun_ms: u64,
    #[prost(uint64, tag = "7")]
    pub finished_ms: u64,
    #[prost(string, tag = "8")]
    pub reason: String,
    #[prost(message, repeated, tag = "9")]
    pub parts: Vec<TxnPart>,
    /// The client's opaque label (empty: none; records from before it
    /// existed decode with none).
    #[prost(string, tag = "10")]
    pub owner: String,
}

impl TxnRecord {
    /// The part whose transaction segment is `txn_segment_id`.
    pub fn part(&self, txn_segment_id: u64) -> Option<&TxnPart> {
        self.parts
            .iter()
            .find(|p| p.txn_segment_id == txn_segment_id)
    }
}

/// Why a transaction change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    #[error("transaction {0} not found (never begun, or finished long ago and forgotten)")]
    NotFound(String),
    #[error("transaction {id} was committed; it can no longer be aborted")]
    Committed { id: String },
    #[error("transaction {id} was aborted ({reason}); it can no longer be committed")]
    Aborted { id: String, reason: String },
    #[error("transaction {id} is {state}, not open: it takes no more events or pings")]
    NotOpen { id: String, state: &'static str },
    #[error("{0}")]
    Full(String),
    #[error("{0}")]
    Invalid(String),
}

/// A change the meta leader applies to a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Commit,
    Abort,
    /// Open past its lease: aborted.
    TimeOut,
    /// The stream was sealed or deleted: open transactions abort.
    StreamGone(&'static str),
    /// Every part is merged (committing) or dropped (aborting).
    Finish,
}

/// Applies `change` to `r` at `now_ms`; `Ok(true)` if the record changed.
/// Repeating a change that already happened is `Ok(false)` (idempotent).
pub fn apply_change(r: &mut TxnRecord, change: Change, now_ms: u64) -> Result<bool, TxnError> {
    let state = r.state();
    let id = r.id.clone();
    let set = |r: &mut TxnRecord, s: TxnState| r.state = s as i32;
    match (change, state) {
        (Change::Commit, TxnState::Open) => set(r, TxnState::Committing),
        (Change::Commit, TxnState::Committing | TxnState::Committed) => return Ok(false),
        (Change::Commit, TxnState::Aborting | TxnState::Aborted) => {
            return Err(TxnError::Aborted {
                id,
                reason: r.reason.clone(),
            })
        }
        (Change::Abort, TxnState::Open) => {
            set(r, TxnState::Aborting);
            r.reason = "aborted".into();
        }
        (Change::Abort, TxnState::Aborting | TxnState::Aborted) => return Ok(false),
        (Change::Abort, TxnState::Committing | TxnState::Committed) => {
            return Err(TxnError::Committed { id })
        }
        (Change::TimeOut, TxnState::Open) => {
            set(r, TxnState::Aborting);
            r.reason = "timed out".into();
        }
        (Change::StreamGone(why), TxnState::Open) => {
            set(r, TxnState::Aborting);
            r.reason = why.into();
        }
        (Change::TimeOut | Change::StreamGone(_), _) => return Ok(false),
        (Change::Finish, TxnState::Committing) => {
            set(r, TxnState::Committed);
            r.finished_ms = now_ms;
        }
        (Change::Finish, TxnState::Aborting) => {
            set(r, TxnState::Aborted);
            r.finished_ms = now_ms;
        }
        (Change::Finish, TxnState::Committed | TxnState::Aborted) => return Ok(false),
        (Change::Finish, TxnState::Open) => {
            return Err(TxnError::NotOpen {
                id,
                state: "open (undecided)",
            })
        }
    }
    Ok(true)
}

/// Records the children of part `txn_segment_id` of committing transaction
/// `t`, one per `successors` of its parent, their ids from `new_id(i)`;
/// returns how many ids it took. Idempotent: a part already moving (or
/// gone) takes none.
pub fn split_part(
    t: &mut TxnRecord,
    txn_segment_id: u64,
    successors: &[u64],
    new_id: impl Fn(usize) -> Result<u64, TxnError>,
) -> Result<usize, TxnError> {
    if t.state() != TxnState::Committing {
        return Err(TxnError::Invalid(format!(
            "transaction {} is {}: only a committing one moves its parts",
            t.id,
            t.state().name()
        )));
    }
    let Some(part) = t
        .parts
        .iter_mut()
        .find(|p| p.txn_segment_id == txn_segment_id)
    else {
        return Ok(0);
    };
    if part.moving {
        return Ok(0);
    }
    if successors.is_empty() {
        return Err(TxnError::Invalid(format!(
            "segment {} has no successors: part {txn_segment_id} cannot move",
            part.segment_id
        )));
    }
    part.moving = true;
    for (i, &s) in successors.iter().enumerate() {
        t.parts.push(TxnPart {
            segment_id: s,
            txn_segment_id: new_id(i)?,
            moving: false,
            from: txn_segment_id,
        });
    }
    Ok(successors.len())
}

/// Part `txn_segment_id`'s events are in its children: it leaves `t`.
/// Idempotent.
pub fn part_moved(t: &mut TxnRecord, txn_segment_id: u64) -> Result<(), TxnError> {
    if t.part(txn_segment_id).is_some_and(|p| !p.moving) {
        return Err(TxnError::Invalid(format!(
            "part {txn_segment_id} of transaction {} has no children to have moved to",
            t.id
        )));
    }
    t.parts.retain(|p| p.txn_segment_id != txn_segment_id);
    Ok(())
}

/// A begin's owner label: opaque, at most
/// [`TRANSACTION_OWNER_BYTES_MAX`](aquifer_proto::wire::TRANSACTION_OWNER_BYTES_MAX)
/// bytes of UTF-8 (empty: none).
pub fn check_owner(owner: &str) -> Result<(), TxnError> {
    let max = aquifer_proto::wire::TRANSACTION_OWNER_BYTES_MAX;
    if owner.len() > max {
        return Err(TxnError::Invalid(format!(
            "transaction owner is {} bytes, longer than {max}: \
             use a shorter label (e.g. a job name and subtask number)",
            owner.len()
        )));
    }
    Ok(())
}

/// Transaction ids are UUIDs; stored and shown as 32 lowercase hex digits
/// (dashes accepted on input).
pub fn normalize_id(id: &str) -> Result<String, TxnError> {
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(TxnError::Invalid(format!(
            "transaction id {id:?} is not a UUID (32 hex digits, dashes allowed)"
        )));
    }
    Ok(hex.to_ascii_lowercase())
}

/// The finished records of one stream to forget at `now_ms`: beyond the
/// newest [`FINISHED_KEPT_PER_STREAM`], or older than [`FINISHED_KEPT_MS`]
/// once over half that count. Oldest first.
pub fn to_forget<'a>(records: impl Iterator<Item = &'a TxnRecord>, now_ms: u64) -> Vec<String> {
    let mut finished: Vec<&TxnRecord> = records.filter(|r| r.state().is_finished()).collect();
    finished.sort_by_key(|r| (r.finished_ms, r.id.clone()));
    let over = finished.len().saturating_sub(FINISHED_KEPT_PER_STREAM);
    finished
        .iter()
        .enumerate()
        .filter(|(i, r)| {
            *i < over
                || (finished.len() > FINISHED_KEPT_PER_STREAM / 2
                    && now_ms.saturating_sub(r.finished_ms) > FINISHED_KEPT_MS)
        })
        .map(|(_, r)| r.id.clone())
        .collect()
}

/// Transactions by id.
pub type TxnTable = BTreeMap<String, TxnRecord>;

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> TxnRecord {
        TxnRecord {
            id: "ab".repeat(16),
            state: TxnState::Open as i32,
            ..Default::default()
        }
    }

    #[test]
    fn commit_then_finish_and_idempotence() {
        let mut r = open();
        assert_eq!(apply_change(&mut r, Change::Commit, 1), Ok(true));
        assert_eq!(r.state(), TxnState::Committing);
        assert_eq!(apply_change(&mut r, Change::Commit, 2), Ok(false));
        assert!(matches!(
            apply_change(&mut r, Change::Abort, 3),
            Err(TxnError::Committed { .. })
        ));
        // A timeout after the decision changes nothing.
        assert_eq!(apply_change(&mut r, Change::TimeOut, 3), Ok(false));
        assert_eq!(apply_change(&mut r, Change::Finish, 4), Ok(true));
        assert_eq!((r.state(), r.finished_ms), (TxnState::Committed, 4));
        assert_eq!(apply_change(&mut r, Change::Commit, 5), Ok(false));
        assert_eq!(apply_change(&mut r, Change::Finish, 5), Ok(false));
        assert!(apply_change(&mut r, Change::Abort, 5).is_err());
    }

    #[test]
    fn abort_and_timeout_refuse_commit() {
        let mut r = open();
        assert_eq!(apply_change(&mut r, Change::TimeOut, 1), Ok(true));
        assert_eq!(
            (r.state(), r.reason.as_str()),
            (TxnState::Aborting, "timed out")
        );
        assert_eq!(apply_change(&mut r, Change::Abort, 2), Ok(false));
        let refused = apply_change(&mut r, Change::Commit, 2).unwrap_err();
        assert!(refused.to_string().contains("timed out"), "{refused}");
        assert_eq!(apply_change(&mut r, Change::Finish, 3), Ok(true));
        assert_eq!(r.state(), TxnState::Aborted);
        let mut r = open();
        assert!(apply_change(&mut r, Change::Finish, 1).is_err());
        assert_eq!(
            apply_change(&mut r, Change::StreamGone("stream sealed"), 1),
            Ok(true)
        );
        assert_eq!(r.reason, "stream sealed");
    }

    #[test]
    fn a_part_in_a_sealed_segment_moves_to_children_once() {
        let mut r = open();
        r.parts.push(TxnPart {
            segment_id: 1,
            txn_segment_id: 10,
            ..Default::default()
        });
        let ids = |i: usize| Ok(20 + i as u64);
        assert!(
            split_part(&mut r, 10, &[2, 3], ids).is_err(),
            "only when committing"
        );
        apply_change(&mut r, Change::Commit, 1).unwrap();
        assert_eq!(split_part(&mut r, 10, &[2, 3], ids).unwrap(), 2);
        assert_eq!(
            split_part(&mut r, 10, &[2, 3], ids).unwrap(),
            0,
            "idempotent"
        );
        let children: Vec<(u64, u64, u64)> = r
            .parts
            .iter()
            .filter(|p| p.from == 10)
            .map(|p| (p.segment_id, p.txn_segment_id, p.from))
            .collect();
        assert_eq!(children, vec![(2, 20, 10), (3, 21, 10)]);
        assert!(r.part(10).is_some_and(|p| p.moving));
        assert!(part_moved(&mut r, 20).is_err(), "a part that is not moving");
        part_moved(&mut r, 10).unwrap();
        part_moved(&mut r, 10).unwrap();
        assert_eq!(r.parts.len(), 2);
    }

    #[test]
    fn owners_are_at_most_255_bytes() {
        let max = aquifer_proto::wire::TRANSACTION_OWNER_BYTES_MAX;
        assert!(check_owner("").is_ok());
        assert!(check_owner(&"o".repeat(max)).is_ok());
        let long = check_owner(&"o".repeat(max + 1)).unwrap_err();
        assert!(
            matches!(&long, TxnError::Invalid(m) if m.contains("256 bytes")),
            "{long}"
        );
        // Bytes, not characters: 128 two-byte characters are 256 bytes.
        assert!(check_owner(&"é".repeat(127)).is_ok());
        assert!(check_owner(&"é".repeat(128)).is_err());
    }

    #[test]
    fn ids_are_uuids() {
        let id = normalize_id("67E55044-10B1-426F-9247-BB680E5FE0C8").unwrap();
        assert_eq!(id, "67e5504410b1426f9247bb680e5fe0c8");
        assert!(normalize_id("xyz").is_err());
        assert!(normalize_id(&"g".repeat(32)).is_err());
    }

    #[test]
    fn finished_records_are_forgotten_oldest_first() {
        let records: Vec<TxnRecord> = (0..FINISHED_KEPT_PER_STREAM as u64 + 3)
            .map(|i| TxnRecord {
                id: format!("{i:032x}"),
                state: TxnState::Committed as i32,
                finished_ms: 1000 + i,
                ..Default::default()
            })
            .chain([open()])
            .collect();
        let forget = to_forget(records.iter(), 2000);
        assert_eq!(
            forget,
            vec![
                format!("{:032x}", 0),
                format!("{:032x}", 1),
                format!("{:032x}", 2)
            ]
        );
        // Old enough: all but the open one go once over half the count.
        let forget = to_forget(records.iter(), 1000 + FINISHED_KEPT_MS + 500);
        assert_eq!(forget.len(), FINISHED_KEPT_PER_STREAM + 3);
        let few: Vec<TxnRecord> = records.iter().take(3).cloned().collect();
        assert!(to_forget(few.iter(), u64::MAX).is_empty());
    }
}
