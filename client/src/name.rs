//! Stream names: parsing and validating `scope/stream`.
//!
//! Owns the naming rule shared by the CLI and every API call: scope and
//! stream are each 1 to 255 characters of `A-Z a-z 0-9 . _ -` (not `.` or `..`).

use std::fmt;
use std::str::FromStr;

use crate::{proto, Error};

/// Longest scope or stream name, in bytes (the characters allowed are all
/// one byte).
pub use aquifer_proto::name::NAME_BYTES_MAX;

/// A stream's full name: `scope/stream`.
///
/// Parse one with `"analytics/clicks".parse::<StreamName>()` or build it with
/// [`StreamName::new`]; both check the naming rule.
///
/// ```
/// use aquifer_client::StreamName;
///
/// let name: StreamName = "analytics/clicks".parse()?;
/// assert_eq!(name.scope, "analytics");
/// assert_eq!(name, StreamName::new("analytics", "clicks")?);
/// assert_eq!(name.to_string(), "analytics/clicks");
/// assert!("analytics/clicks.v2".parse::<StreamName>().is_ok()); // dots are allowed
/// assert!("analytics/..".parse::<StreamName>().is_err()); // but not `.` or `..`
/// # Ok::<(), aquifer_client::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName {
    /// The namespace, e.g. `analytics`.
    pub scope: String,
    /// The stream inside the scope, e.g. `clicks`.
    pub stream: String,
}

impl StreamName {
    /// Builds a name from its parts, checking each against the naming rule
    /// (`[A-Za-z0-9._-]{1,255}`, not `.` or `..`); a bad part is [`Error::InvalidName`].
    pub fn new(scope: impl Into<String>, stream: impl Into<String>) -> Result<Self, Error> {
        let scope = scope.into();
        let stream = stream.into();
        validate_part("scope", &scope)?;
        validate_part("stream", &stream)?;
        Ok(StreamName { scope, stream })
    }

    pub(crate) fn to_proto(&self) -> proto::StreamName {
        proto::StreamName {
            scope: self.scope.clone(),
            stream: self.stream.clone(),
        }
    }
}

/// Checks one part (scope or stream) against the naming rule.
pub(crate) fn validate_part(what: &str, part: &str) -> Result<(), Error> {
    if aquifer_proto::name::is_valid_name(part) {
        Ok(())
    } else {
        Err(Error::InvalidName(format!(
            "invalid {what} name {:?}: {}",
            shorten(part),
            aquifer_proto::name::NAME_RULE
        )))
    }
}

/// Keeps error messages short when a name is absurdly long.
fn shorten(s: &str) -> String {
    if s.chars().count() <= 64 {
        s.to_string()
    } else {
        let head: String = s.chars().take(61).collect();
        format!("{head}...")
    }
}

impl FromStr for StreamName {
    type Err = Error;

    /// Parses `scope/stream`.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.split_once('/') {
            Some((scope, stream)) if !stream.contains('/') => {
                validate_part("scope", scope)?;
                validate_part("stream", stream)?;
                Ok(StreamName {
                    scope: scope.to_string(),
                    stream: stream.to_string(),
                })
            }
            _ => Err(Error::InvalidName(format!(
                "invalid stream name {:?}: expected SCOPE/STREAM, each part to {}",
                shorten(s),
                aquifer_proto::name::NAME_RULE
            ))),
        }
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.scope, self.stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        let n: StreamName = "analytics/click-stream_2".parse().unwrap();
        assert_eq!(n.scope, "analytics");
        assert_eq!(n.stream, "click-stream_2");
        assert_eq!(n.to_string(), "analytics/click-stream_2");
        assert_eq!(StreamName::new("analytics", "click-stream_2").unwrap(), n);
        let long = "a".repeat(255);
        assert!(StreamName::new(long.clone(), long).is_ok());
    }

    #[test]
    fn rejects_bad_names_with_the_rule() {
        for bad in [
            "", "/", "scope", "scope/", "/stream", "a/b/c", "sc ope/s", "s/..", "./s", "s/ström",
            "s\n/x",
        ] {
            match bad.parse::<StreamName>() {
                Err(Error::InvalidName(msg)) => {
                    assert!(msg.contains(aquifer_proto::name::NAME_RULE), "{msg}");
                    assert!(!msg.contains('\n'), "{msg}");
                }
                other => panic!("{bad:?} parsed as {other:?}"),
            }
        }
        let long = "a".repeat(256);
        assert!(matches!(
            StreamName::new(long, "s"),
            Err(Error::InvalidName(_))
        ));
        assert!(matches!(
            StreamName::new("s", ""),
            Err(Error::InvalidName(_))
        ));
    }
}
