//! The server's error enum and its one mapping to `tonic::Status`.
//!
//! Messages are for users: each says what went wrong and, where there is
//! one, what to do about it.

use aquifer_proto::wire;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::group::ProposeError;
use crate::log::LogError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("stream {0} not found")]
    StreamNotFound(String),
    #[error("segment {0} not found (never created, or its stream was deleted)")]
    SegmentNotFound(u64),
    #[error("stream {0} already exists")]
    StreamExists(String),
    #[error("reader group {0} not found")]
    GroupNotFound(String),
    #[error("reader group {0} already exists")]
    GroupExists(String),
    #[error("{0}")]
    TransactionNotFound(String),
    /// A transaction call its state forbids; `reason` goes to the client
    /// in `aquifer-reason`.
    #[error("{message}")]
    TransactionState {
        reason: &'static str,
        message: String,
    },
    /// The reader is not (any more) in its group: it must join again.
    #[error("{0}")]
    ReaderUnknown(String),
    #[error("segment {0} is sealed: it takes no more events (its stream was sealed, or scaled: then its successors take them); reads still work")]
    SegmentSealed(u64),
    /// A conditional append met a segment of another length, `actual`
    /// (sent to the client in metadata); nothing was applied.
    #[error("{message}")]
    ConditionFailed { actual: u64, message: String },
    /// The request does not fit the state it meets (a scale under way).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("offset {offset} of segment {segment} was removed (by retention or a truncation); the segment now starts at offset {head}")]
    Truncated {
        segment: u64,
        offset: u64,
        head: u64,
    },
    #[error("offset {offset} is past the end of segment {segment} (length {length})")]
    OffsetOutOfRange {
        segment: u64,
        offset: u64,
        length: u64,
    },
    #[error("tier-2 storage: {0}")]
    Tier2(String),
    #[error("{0}")]
    Corrupt(String),
    #[error(transparent)]
    Log(#[from] LogError),
    /// A chunk that a committed entry refused: safe to delete.
    #[error("orphan chunk: {0}")]
    OrphanChunk(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{0}")]
    AclNotFound(String),
    /// No credentials, or ones that do not check out.
    #[error("{0}")]
    Unauthenticated(String),
    /// The principal may not do this (its ACLs).
    #[error("{0}")]
    PermissionDenied(String),
    /// This node does not lead the group; `leader` is where to go, if known.
    #[error("{message}")]
    NotLeader {
        message: String,
        leader: Option<String>,
    },
}

impl From<ProposeError> for Error {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::Dropped { .. } => Error::ResourceExhausted(e.to_string()),
            ProposeError::NotLeader {
                ref group,
                leader_address: ref leader,
                ..
            } => {
                let leader = leader.clone();
                let message = match &leader {
                    Some(addr) => format!("this node does not lead {group}; its leader is at {addr}"),
                    None => format!("this node does not lead {group} and knows no leader yet (election in progress); retry"),
                };
                Error::NotLeader { message, leader }
            }
            ProposeError::Lost { .. }
            | ProposeError::Stopped { .. }
            | ProposeError::TimedOut { .. } => Error::Unavailable(e.to_string()),
        }
    }
}

impl From<object_store::Error> for Error {
    fn from(e: object_store::Error) -> Self {
        Error::Tier2(e.to_string())
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = match &e {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::StreamNotFound(_)
            | Error::SegmentNotFound(_)
            | Error::GroupNotFound(_)
            | Error::ReaderUnknown(_)
            | Error::TransactionNotFound(_)
            | Error::AclNotFound(_) => Code::NotFound,
            Error::StreamExists(_) | Error::GroupExists(_) => Code::AlreadyExists,
            Error::SegmentSealed(_)
            | Error::ConditionFailed { .. }
            | Error::FailedPrecondition(_)
            | Error::TransactionState { .. } => Code::FailedPrecondition,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unavailable(_) | Error::Tier2(_) | Error::NotLeader { .. } => Code::Unavailable,
            Error::OffsetOutOfRange { .. } | Error::Truncated { .. } => Code::OutOfRange,
            Error::Corrupt(_) => Code::DataLoss,
            Error::Log(_) | Error::OrphanChunk(_) | Error::Internal(_) => Code::Internal,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
        };
        let mut status = Status::new(code, e.to_string());
        let reason = match &e {
            Error::SegmentSealed(_) => Some(wire::REASON_SEALED),
            Error::ConditionFailed { actual, .. } => {
                status.metadata_mut().insert(
                    wire::SEGMENT_LENGTH_METADATA_KEY,
                    MetadataValue::from(*actual),
                );
                Some(wire::REASON_CONDITION_FAILED)
            }
            Error::ReaderUnknown(_) => Some(wire::REASON_READER_UNKNOWN),
            Error::TransactionState { reason, .. } => Some(*reason),
            _ => None,
        };
        if let Some(reason) = reason {
            status.metadata_mut().insert(
                wire::REASON_METADATA_KEY,
                MetadataValue::from_static(reason),
            );
        }
        if let Error::NotLeader {
            leader: Some(addr), ..
        } = &e
        {
            if let Ok(v) = addr.parse() {
                status.metadata_mut().insert(wire::LEADER_METADATA_KEY, v);
            }
        }
        status
    }
}
