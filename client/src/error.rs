//! The client's one error type, and how gRPC statuses map onto it.
//!
//! Owns the mapping from `tonic::Status` (codes, metadata, transport
//! failures) to [`Error`] variants and the rule for which errors are worth
//! retrying. Every variant displays as one line a user can act on; it must
//! never flatten a cause it can keep: failures below gRPC keep theirs as
//! [`std::error::Error::source`].

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use aquifer_proto::wire;
use tonic::{Code, Status};

/// The cause kept by [`Error::Unavailable`]: a transport error, or the last
/// error before retries gave up.
pub type Source = Arc<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong in the Aquifer client.
///
/// `Display` is a single line meant for a user (the server's message where
/// there is one); match on the variant to decide what to do. New variants
/// may come in minor releases, so keep a `_` arm.
///
/// ```
/// use aquifer_client::{Error, StreamName};
///
/// let err = "no-slash".parse::<StreamName>().unwrap_err();
/// assert!(matches!(err, Error::InvalidName(_)));
/// assert!(!err.is_retryable());
/// assert!(err.to_string().contains("SCOPE/STREAM"));
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A scope or stream name breaks the naming rule (`[A-Za-z0-9._-]{1,255}`, not `.` or `..`).
    #[error("{0}")]
    InvalidName(String),
    /// The stream, scope or segment does not exist (`NOT_FOUND`).
    #[error("{0}")]
    NotFound(String),
    /// The stream already exists (`ALREADY_EXISTS`).
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is malformed: oversize event or routing key, bad
    /// configuration, bad framing (`INVALID_ARGUMENT`).
    #[error("{0}")]
    InvalidArgument(String),
    /// The stream or segment is sealed: it takes no more events, reads
    /// still work (`FAILED_PRECONDITION` for a sealed segment).
    #[error("{0}")]
    Sealed(String),
    /// A conditional append found the segment `actual_length` bytes long,
    /// not the length it expected; nothing was appended and the event
    /// number stays unused (`FAILED_PRECONDITION` with the server's
    /// `condition-failed` reason). Read what was appended since, then
    /// decide again.
    #[error("{message}")]
    ConditionFailed {
        /// The segment's length when the append was refused.
        actual_length: u64,
        /// The server's message.
        message: String,
    },
    /// The cluster is not in a state that allows the request, e.g. removing
    /// its last node, or changing membership of a node that runs alone
    /// (any other `FAILED_PRECONDITION`). Retrying as is will not help.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The server is out of a budget (memory, in-flight bytes); retry later
    /// (`RESOURCE_EXHAUSTED`).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The server cannot be reached or the connection broke (`UNAVAILABLE`,
    /// `DEADLINE_EXCEEDED`, `CANCELLED`, transport errors), or retries gave
    /// up. `source` is the cause below gRPC (a transport error) or the last
    /// error retried, when there is one.
    #[error("{message}")]
    Unavailable {
        /// What failed, on one line.
        message: String,
        /// Why, when known.
        #[source]
        source: Option<Source>,
    },
    /// Event bytes do not decode (bad checksum, truncated frame), read back
    /// by the client or found by the server (`DATA_LOSS`).
    #[error("{0}")]
    Corrupt(String),
    /// The offset is outside the segment: removed by retention or a
    /// truncation (the message names the new head) or past its end
    /// (`OUT_OF_RANGE`).
    #[error("{0}")]
    OutOfRange(String),
    /// The node does not lead the group that owns the request; `leader` is
    /// the address of the node that does. The client follows it by itself:
    /// you see this only when redirects keep failing.
    #[error("{message}")]
    NotLeader {
        /// `host:port` of the leader.
        leader: String,
        /// The server's message.
        message: String,
    },
    /// The node wants credentials, or refused the ones sent
    /// (`UNAUTHENTICATED`): set a token or a client certificate.
    #[error("{0}")]
    Unauthenticated(String),
    /// The client's principal may not do this (`PERMISSION_DENIED`): an
    /// admin grants it with `aquifer acl grant`.
    #[error("{0}")]
    PermissionDenied(String),
    /// Any other gRPC status: its code and message.
    #[error("{0}")]
    Server(String),
    /// The writer (or one of its segment sessions) is closed.
    #[error("the writer is closed")]
    Closed,
    /// A group reader is no longer in its reader group (it left, or timed
    /// out and its segments went to others): it must join again
    /// (`NOT_FOUND` with reason `reader-unknown`). Group readers rejoin by
    /// themselves.
    #[error("{0}")]
    ReaderUnknown(String),
    /// The transaction was committed, so it cannot be aborted
    /// (`FAILED_PRECONDITION` with reason `transaction-committed`).
    #[error("{0}")]
    TransactionCommitted(String),
    /// The transaction was aborted (by a call, a timeout, or its stream's
    /// seal or deletion), so it cannot be committed (reason
    /// `transaction-aborted`).
    #[error("{0}")]
    TransactionAborted(String),
    /// The transaction is no longer open: it takes no more events or pings
    /// (reason `transaction-not-open`).
    #[error("{0}")]
    TransactionNotOpen(String),
}

impl Error {
    /// True for errors that may go away by themselves: [`Error::Unavailable`],
    /// [`Error::ResourceExhausted`] and [`Error::NotLeader`]. The writer,
    /// the readers and admin calls retry these internally (with backoff, up
    /// to a timeout) before handing them out.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::ResourceExhausted(_) | Error::NotLeader { .. }
        )
    }

    /// An [`Error::Unavailable`] without a known cause.
    pub(crate) fn unavailable(message: impl Into<String>) -> Error {
        Error::Unavailable {
            message: one_line(&message.into()),
            source: None,
        }
    }

    /// An [`Error::Unavailable`] caused by `source`.
    pub(crate) fn unavailable_from(
        message: impl Into<String>,
        source: impl StdError + Send + Sync + 'static,
    ) -> Error {
        Error::Unavailable {
            message: one_line(&message.into()),
            source: Some(Arc::new(source)),
        }
    }
}

/// The reason the server's metadata gives for a status, if any.
fn reason(status: &Status) -> Option<&str> {
    status
        .metadata()
        .get(wire::REASON_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
}

/// A `FAILED_PRECONDITION` by what the server's reason metadata says it is:
/// a sealed segment, a failed condition (with the actual length), or
/// another precondition. The words of the message never decide it.
fn failed_precondition(status: &Status, msg: String) -> Error {
    let length = || {
        status
            .metadata()
            .get(wire::SEGMENT_LENGTH_METADATA_KEY)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    };
    match reason(status) {
        Some(wire::REASON_SEALED) => Error::Sealed(msg),
        Some(wire::REASON_TRANSACTION_COMMITTED) => Error::TransactionCommitted(msg),
        Some(wire::REASON_TRANSACTION_ABORTED) => Error::TransactionAborted(msg),
        Some(wire::REASON_TRANSACTION_NOT_OPEN) => Error::TransactionNotOpen(msg),
        Some(wire::REASON_CONDITION_FAILED) => match length() {
            Some(actual_length) => Error::ConditionFailed {
                actual_length,
                message: msg,
            },
            None => Error::FailedPrecondition(msg),
        },
        _ => Error::FailedPrecondition(msg),
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        let msg = status_message(&status);
        match status.code() {
            Code::NotFound if reason(&status) == Some(wire::REASON_READER_UNKNOWN) => {
                Error::ReaderUnknown(msg)
            }
            Code::NotFound => Error::NotFound(msg),
            Code::AlreadyExists => Error::AlreadyExists(msg),
            Code::InvalidArgument => Error::InvalidArgument(msg),
            Code::FailedPrecondition => failed_precondition(&status, msg),
            Code::ResourceExhausted => Error::ResourceExhausted(msg),
            Code::DataLoss => Error::Corrupt(msg),
            Code::OutOfRange => Error::OutOfRange(msg),
            Code::Unauthenticated => Error::Unauthenticated(format!("unauthenticated: {msg}")),
            Code::PermissionDenied => Error::PermissionDenied(format!("permission denied: {msg}")),
            Code::Unavailable => match status
                .metadata()
                .get(wire::LEADER_METADATA_KEY)
                .and_then(|v| v.to_str().ok())
            {
                Some(leader) => Error::NotLeader {
                    leader: leader.to_string(),
                    message: msg,
                },
                None => unavailable(msg, status),
            },
            Code::DeadlineExceeded | Code::Cancelled => unavailable(msg, status),
            Code::Unknown | Code::Internal if is_transport_failure(&status) => {
                unavailable(format!("connection to the server failed: {msg}"), status)
            }
            code => Error::Server(format!("server error ({}): {msg}", code_word(code))),
        }
    }
}

/// `Unavailable` for a status; keeps the status as the source when it has a
/// cause of its own (a transport error the client made it from).
fn unavailable(message: String, status: Status) -> Error {
    if status.source().is_some() {
        Error::unavailable_from(message, StatusCause(status))
    } else {
        Error::unavailable(message)
    }
}

/// A status kept as a source: shows only the status's cause chain, since
/// the [`Error`]'s message already is the status's message.
struct StatusCause(Status);

impl fmt::Debug for StatusCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for StatusCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.source() {
            Some(cause) => write!(f, "{cause}"),
            None => f.write_str(self.0.message()),
        }
    }
}

impl StdError for StatusCause {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source().and_then(StdError::source)
    }
}

/// A status the client made up itself because the connection or the HTTP/2
/// stream broke (as opposed to one the server sent on purpose): these carry
/// the underlying error as their source, or one of tonic's fixed messages for
/// a stream cut short.
fn is_transport_failure(status: &Status) -> bool {
    if status.source().is_some() {
        return true;
    }
    let m = status.message();
    m.starts_with("transport error")
        || m.starts_with("h2 protocol error")
        || m.starts_with("protocol error: missing grpc-status")
        || m.starts_with("Unexpected EOF decoding stream")
        || m.starts_with("error trying to connect")
}

/// The status message on one line; the code's description when the message
/// is empty. Its cause, if any, is kept as a source, not copied in.
fn status_message(status: &Status) -> String {
    let msg = status.message().trim();
    if msg.is_empty() {
        status.code().description().to_string()
    } else {
        one_line(msg)
    }
}

/// Joins the lines of `s` with "; " so an error always prints as one line.
pub(crate) fn one_line(s: &str) -> String {
    if !s.contains(['\n', '\r']) {
        return s.to_string();
    }
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Builds the message for a transport-level error (connect failure) from its
/// whole source chain.
pub(crate) fn chain_message(err: &(dyn StdError + 'static)) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !text.is_empty() && !msg.contains(&text) {
            msg = format!("{msg}: {text}");
        }
        source = e.source();
    }
    one_line(&msg)
}

fn code_word(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_codes() {
        let e = Error::from(Status::not_found("stream a/b does not exist"));
        assert!(matches!(&e, Error::NotFound(m) if m == "stream a/b does not exist"));
        assert_eq!(e.to_string(), "stream a/b does not exist");
        assert!(Error::from(Status::unavailable("x")).is_retryable());
        assert!(Error::from(Status::deadline_exceeded("x")).is_retryable());
        assert!(Error::from(Status::resource_exhausted("x")).is_retryable());
        assert!(!Error::from(Status::invalid_argument("x")).is_retryable());
        // A server-sent UNKNOWN is not a transport failure.
        let e = Error::from(Status::unknown("boom"));
        assert_eq!(e.to_string(), "server error (unknown): boom");
        // A stream cut short is.
        assert!(Error::from(Status::unknown(
            "protocol error: missing grpc-status trailer, stream was terminated"
        ))
        .is_retryable());
        assert!(Error::from(Status::internal("Unexpected EOF decoding stream.")).is_retryable());
    }

    #[test]
    fn failed_precondition_by_what_it_means() {
        // What server/src/error.rs's SegmentSealed sends.
        let mut sealed = Status::failed_precondition(
            "segment 3 is sealed: its stream takes no more events (reads still work)",
        );
        sealed.metadata_mut().insert(
            aquifer_proto::wire::REASON_METADATA_KEY,
            aquifer_proto::wire::REASON_SEALED.parse().unwrap(),
        );
        assert!(matches!(Error::from(sealed), Error::Sealed(_)));
        // The words alone do not make it sealed: the reason does.
        let worded = Status::failed_precondition("segment 3 is sealed");
        assert!(matches!(Error::from(worded), Error::FailedPrecondition(_)));
        // A failed condition carries the actual length.
        let mut condition = Status::failed_precondition("segment 3 is 120 bytes long, not 100");
        condition.metadata_mut().insert(
            aquifer_proto::wire::REASON_METADATA_KEY,
            aquifer_proto::wire::REASON_CONDITION_FAILED
                .parse()
                .unwrap(),
        );
        let without_length = Error::from(condition.clone());
        assert!(matches!(without_length, Error::FailedPrecondition(_)));
        condition.metadata_mut().insert(
            aquifer_proto::wire::SEGMENT_LENGTH_METADATA_KEY,
            "120".parse().unwrap(),
        );
        let e = Error::from(condition);
        assert!(
            matches!(&e, Error::ConditionFailed { actual_length: 120, message } if message.contains("not 100")),
            "{e:?}"
        );
        assert!(!e.is_retryable());
        // What the cluster service says for membership preconditions.
        for msg in [
            "cannot remove the last node",
            "this node runs alone (no --peers): it has no cluster to change",
        ] {
            let e = Error::from(Status::failed_precondition(msg));
            assert!(
                matches!(&e, Error::FailedPrecondition(m) if m == msg),
                "{e:?}"
            );
            assert!(!e.is_retryable());
        }
    }

    #[test]
    fn not_leader_is_retryable_and_names_the_leader() {
        let mut status = Status::unavailable("not the leader");
        status.metadata_mut().insert(
            aquifer_proto::wire::LEADER_METADATA_KEY,
            "10.0.0.2:7450".parse().unwrap(),
        );
        let e = Error::from(status);
        assert!(matches!(&e, Error::NotLeader { leader, .. } if leader == "10.0.0.2:7450"));
        assert!(e.is_retryable());
    }

    #[test]
    fn transport_failures_keep_their_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let status = Status::from_error(Box::new(io));
        let e = Error::from(status);
        assert!(e.is_retryable(), "{e:?}");
        let cause = e.source().expect("a source");
        assert!(cause.to_string().contains("refused"), "{cause}");
        // A status the server sent on purpose has no cause below it.
        assert!(Error::from(Status::unavailable("shutting down"))
            .source()
            .is_none());
    }

    #[test]
    fn messages_are_one_line() {
        let e = Error::from(Status::internal("line one\nline two"));
        assert!(!e.to_string().contains('\n'));
        assert_eq!(e.to_string(), "server error (internal): line one; line two");
        let e = Error::from(Status::not_found(""));
        assert!(!e.to_string().is_empty());
    }
}
