//! Aquifer errors as Kafka error codes, with the message a client shows
//! where the response has room for one. The one place the mapping is
//! spelled.

use kafka_protocol::ResponseError as K;

use crate::error::Error;

/// The Kafka error code for `e`: retriable codes where the client should
/// retry (after fresh metadata for a leader change), fatal ones where the
/// request itself is wrong.
pub(super) fn code_of(e: &Error) -> i16 {
    let k = match e {
        Error::NotLeader { .. } => K::NotLeaderOrFollower,
        Error::Unavailable(_) | Error::Log(_) => K::LeaderNotAvailable,
        Error::Tier2(_) | Error::Corrupt(_) | Error::OrphanChunk(_) => K::KafkaStorageError,
        Error::ResourceExhausted(_) => K::KafkaStorageError,
        Error::StreamNotFound(_) | Error::SegmentNotFound(_) => K::UnknownTopicOrPartition,
        Error::StreamExists(_) => K::TopicAlreadyExists,
        Error::Truncated { .. } | Error::OffsetOutOfRange { .. } => K::OffsetOutOfRange,
        Error::InvalidArgument(_) => K::InvalidRecord,
        Error::SegmentSealed(_) | Error::FailedPrecondition(_) => K::PolicyViolation,
        Error::PermissionDenied(_) | Error::Unauthenticated(_) => K::TopicAuthorizationFailed,
        _ => K::UnknownServerError,
    };
    k.code()
}

/// The code for a failed metadata call (a topic change, an offset
/// commit): `not_leader` (NOT_CONTROLLER or NOT_COORDINATOR) when this
/// node does not lead `meta` (or lost it meanwhile), so the client asks
/// the node the metadata names; else the error's own code.
pub(super) fn meta_code(e: &Error, not_leader: i16) -> i16 {
    match e {
        Error::NotLeader { .. } | Error::Unavailable(_) => not_leader,
        other => code_of(other),
    }
}

pub(super) const NONE: i16 = 0;
pub(super) const OFFSET_OUT_OF_RANGE: i16 = K::OffsetOutOfRange.code();
pub(super) const UNKNOWN_TOPIC_OR_PARTITION: i16 = K::UnknownTopicOrPartition.code();
pub(super) const INVALID_TOPIC: i16 = K::InvalidTopicException.code();
pub(super) const INVALID_PARTITIONS: i16 = K::InvalidPartitions.code();
pub(super) const INVALID_RECORD: i16 = K::InvalidRecord.code();
pub(super) const CORRUPT_MESSAGE: i16 = K::CorruptMessage.code();
pub(super) const NOT_CONTROLLER: i16 = K::NotController.code();
pub(super) const LEADER_NOT_AVAILABLE: i16 = K::LeaderNotAvailable.code();
pub(super) const REQUEST_TIMED_OUT: i16 = K::RequestTimedOut.code();
pub(super) const INVALID_CONFIG: i16 = K::InvalidConfig.code();
pub(super) const INVALID_REQUEST: i16 = K::InvalidRequest.code();
