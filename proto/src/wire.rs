//! The wire rules both sides must agree on: metadata keys, size limits and
//! the names of raft groups. The client and the server import these and
//! never spell them again.
//!
//! Owns only what is part of the protocol; never a tunable default (those
//! live in the server's config and the client's builders).

/// gRPC metadata key naming a node to go to on an `UNAVAILABLE` refusal from
/// a node that does not lead the group (or holds no replica of it).
pub const LEADER_METADATA_KEY: &str = "aquifer-leader";

/// gRPC metadata key saying which case an error status is, so clients tell
/// the cases apart without reading the message. Values: [`REASON_SEALED`],
/// [`REASON_CONDITION_FAILED`] (on `FAILED_PRECONDITION`),
/// [`REASON_READER_UNKNOWN`] (on `NOT_FOUND`), the transaction reasons
/// (on `FAILED_PRECONDITION`).
pub const REASON_METADATA_KEY: &str = "aquifer-reason";

/// [`REASON_METADATA_KEY`]'s value for an append to a sealed segment.
pub const REASON_SEALED: &str = "sealed";

/// [`REASON_METADATA_KEY`]'s value for a conditional append refused because
/// the segment is not the length it expected; the actual length is in
/// [`SEGMENT_LENGTH_METADATA_KEY`].
pub const REASON_CONDITION_FAILED: &str = "condition-failed";

/// gRPC metadata key carrying a segment's actual length (decimal ASCII) on a
/// [`REASON_CONDITION_FAILED`] refusal.
pub const SEGMENT_LENGTH_METADATA_KEY: &str = "aquifer-segment-length";
/// [`REASON_METADATA_KEY`]'s value for a reader-group call of a reader that
/// is not in the group (it left or timed out): it must join again.
pub const REASON_READER_UNKNOWN: &str = "reader-unknown";
/// [`REASON_METADATA_KEY`]'s values on `FAILED_PRECONDITION` for a
/// transaction call its state forbids: it was committed (abort refused) /
/// aborted (commit refused) / is no longer open (a write or ping refused).
pub const REASON_TRANSACTION_COMMITTED: &str = "transaction-committed";
pub const REASON_TRANSACTION_ABORTED: &str = "transaction-aborted";
pub const REASON_TRANSACTION_NOT_OPEN: &str = "transaction-not-open";

/// Longest writer id, in bytes.
pub const WRITER_ID_BYTES_MAX: usize = 255;

/// Longest transaction owner label (`BeginTransactionRequest.owner`), in
/// bytes.
pub const TRANSACTION_OWNER_BYTES_MAX: usize = 255;

/// Largest event any server accepts (the server's `event_bytes_max` is at
/// most this).
pub const EVENT_BYTES_MAX: usize = 64 * 1024 * 1024;

/// What a message carries besides its events' payloads: names, ids, frames.
pub const MESSAGE_OVERHEAD_BYTES_MAX: usize = 1024 * 1024;

/// Largest gRPC message a client sends or accepts: the largest event plus
/// room for the framing around it.
pub const CLIENT_MESSAGE_BYTES_MAX: usize = EVENT_BYTES_MAX + 8 * MESSAGE_OVERHEAD_BYTES_MAX;

/// Largest batch of raft messages between nodes (snapshots travel apart, in
/// pieces).
pub const RAFT_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

// A client must be able to take any message a server may send it.
const _: () = assert!(EVENT_BYTES_MAX + MESSAGE_OVERHEAD_BYTES_MAX <= CLIENT_MESSAGE_BYTES_MAX);

/// The metadata group's name.
pub const META_GROUP: &str = "meta";

const CONTAINER_GROUP_PREFIX: &str = "container-";

/// The raft group name of container `id`.
pub fn container_group(id: u32) -> String {
    format!("{CONTAINER_GROUP_PREFIX}{id}")
}

/// The container id a group name stands for, if it names a container.
pub fn parse_container_group(name: &str) -> Option<u32> {
    name.strip_prefix(CONTAINER_GROUP_PREFIX)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_group_names_round_trip() {
        for id in [0, 1, 42, u32::MAX] {
            assert_eq!(parse_container_group(&container_group(id)), Some(id));
        }
        assert_eq!(container_group(7), "container-7");
        assert_eq!(parse_container_group(META_GROUP), None);
        assert_eq!(parse_container_group("container-x"), None);
        assert_eq!(parse_container_group("container--1"), None);
    }
}
