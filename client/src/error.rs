//! The client's one error type, and how gRPC statuses map onto it.
//!
//! Owns the mapping from `tonic::Status` (codes, transport failures) to
//! [`Error`] variants and the rule for which errors are worth retrying.
//! Every variant displays as one line a user can act on.

use std::error::Error as StdError;

use tonic::{Code, Status};

/// Everything that can go wrong in the Aquifer client.
///
/// `Display` is a single line meant for a user (the server's message where
/// there is one); match on the variant to decide what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A scope or stream name breaks the naming rule (`[A-Za-z0-9_-]{1,255}`).
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
    /// The stream or segment is sealed (`FAILED_PRECONDITION`).
    #[error("{0}")]
    Sealed(String),
    /// The server is out of a budget (memory, in-flight bytes); retry later
    /// (`RESOURCE_EXHAUSTED`).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The server cannot be reached or the connection broke (`UNAVAILABLE`,
    /// `DEADLINE_EXCEEDED`, `CANCELLED`, transport errors).
    #[error("{0}")]
    Unavailable(String),
    /// Event bytes do not decode (bad checksum, truncated frame), read back
    /// by the client or found by the server (`DATA_LOSS`).
    #[error("{0}")]
    Corrupt(String),
    /// The offset is outside the segment: removed by retention (the message
    /// names the new head) or past its end (`OUT_OF_RANGE`).
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
    /// Any other gRPC status: its code and message.
    #[error("{0}")]
    Server(String),
    /// The writer (or one of its segment sessions) is closed.
    #[error("the writer is closed")]
    Closed,
}

impl Error {
    /// True for errors that may go away by themselves: `Unavailable` and
    /// `ResourceExhausted`. The writer and readers retry these internally
    /// (with backoff, up to a timeout) before handing them out.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable(_) | Error::ResourceExhausted(_) | Error::NotLeader { .. }
        )
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        let msg = status_message(&status);
        match status.code() {
            Code::NotFound => Error::NotFound(msg),
            Code::AlreadyExists => Error::AlreadyExists(msg),
            Code::InvalidArgument => Error::InvalidArgument(msg),
            Code::FailedPrecondition => Error::Sealed(msg),
            Code::ResourceExhausted => Error::ResourceExhausted(msg),
            Code::DataLoss => Error::Corrupt(msg),
            Code::OutOfRange => Error::OutOfRange(msg),
            Code::Unavailable => match status
                .metadata()
                .get(aquifer_proto::wire::LEADER_METADATA_KEY)
                .and_then(|v| v.to_str().ok())
            {
                Some(leader) => Error::NotLeader {
                    leader: leader.to_string(),
                    message: msg,
                },
                None => Error::Unavailable(msg),
            },
            Code::DeadlineExceeded | Code::Cancelled => Error::Unavailable(msg),
            Code::Unknown | Code::Internal if is_transport_failure(&status) => {
                Error::Unavailable(format!("connection to the server failed: {msg}"))
            }
            code => Error::Server(format!("server error ({}): {msg}", code_word(code))),
        }
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

/// The status message plus its source chain, on one line. Falls back to the
/// code's description when the message is empty.
fn status_message(status: &Status) -> String {
    let mut msg = status.message().trim().to_string();
    let mut source = status.source();
    while let Some(err) = source {
        let text = err.to_string();
        if !text.is_empty() && !msg.contains(&text) {
            if msg.is_empty() {
                msg = text;
            } else {
                msg = format!("{msg}: {text}");
            }
        }
        source = err.source();
    }
    if msg.is_empty() {
        msg = status.code().description().to_string();
    }
    one_line(&msg)
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
        assert_eq!(e, Error::NotFound("stream a/b does not exist".into()));
        assert_eq!(e.to_string(), "stream a/b does not exist");
        assert!(matches!(
            Error::from(Status::failed_precondition("segment 3 is sealed")),
            Error::Sealed(_)
        ));
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
    fn messages_are_one_line() {
        let e = Error::from(Status::internal("line one\nline two"));
        assert!(!e.to_string().contains('\n'));
        assert_eq!(e.to_string(), "server error (internal): line one; line two");
        let e = Error::from(Status::not_found(""));
        assert!(!e.to_string().is_empty());
    }
}
