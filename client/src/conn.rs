//! The connection to one Aquifer node: a shared tonic `Channel`, the gRPC
//! stubs built on it, and the retry backoff every retrying task uses.
//!
//! Owns address parsing, message size limits, HTTP/2 settings, and replacing
//! the channel when it keeps failing (so a server that dies and comes back
//! on the same address is reached again).

use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::error::chain_message;
use crate::proto::append_client::AppendClient;
use crate::proto::read_client::ReadClient;
use crate::proto::stream_admin_client::StreamAdminClient;
use crate::Error;

/// Largest gRPC message the client sends or accepts: one maximal event
/// (the server allows up to 64 MiB) plus framing slack.
pub const MAX_MESSAGE_BYTES: usize = 72 * 1024 * 1024;

/// How long [`crate::Client::connect`] waits for the first connection.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Deadline of unary admin calls.
pub(crate) const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// First retry delay; doubles on every failed attempt up to [`BACKOFF_MAX`].
pub(crate) const BACKOFF_START: Duration = Duration::from_millis(50);
/// Longest retry delay.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// After this many consecutive failed attempts a task replaces the shared
/// channel with a fresh one.
const RESET_AFTER_ATTEMPTS: u32 = 2;

/// Delay before retry number `attempt` (1-based): 50 ms doubling to 1 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    let shift = (attempt - 1).min(16);
    BACKOFF_START.saturating_mul(1 << shift).min(BACKOFF_MAX)
}

/// One node's address and the channel to it, shared by every stub.
#[derive(Debug)]
pub(crate) struct Conn {
    addr: String,
    endpoint: Endpoint,
    /// The channel and its generation; the generation lets many tasks that
    /// saw the same broken channel replace it only once.
    channel: Mutex<(u64, Channel)>,
}

impl Conn {
    /// Connects eagerly: fails with [`Error::Unavailable`] when the node
    /// cannot be reached within [`CONNECT_TIMEOUT`].
    pub(crate) async fn connect(addr: &str) -> Result<Conn, Error> {
        let addr = addr.trim();
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| {
                Error::InvalidArgument(format!(
                    "invalid server address {addr:?} (expected HOST:PORT): {}",
                    chain_message(&e)
                ))
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .initial_stream_window_size(4 * 1024 * 1024)
            .initial_connection_window_size(16 * 1024 * 1024);
        let unreachable =
            |why: String| Error::Unavailable(format!("cannot reach aquifer at {addr}: {why}"));
        let channel = match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => return Err(unreachable(chain_message(&e))),
            Err(_) => {
                return Err(unreachable(format!(
                    "no answer within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
        };
        Ok(Conn {
            addr: addr.to_string(),
            endpoint,
            channel: Mutex::new((0, channel)),
        })
    }

    /// A connection that dials only when used (unit tests).
    #[cfg(test)]
    pub(crate) fn from_lazy_for_tests(endpoint: Endpoint) -> Conn {
        Conn {
            addr: endpoint.uri().to_string(),
            channel: Mutex::new((0, endpoint.connect_lazy())),
            endpoint,
        }
    }

    /// The address as given to `connect`.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// The current channel and its generation.
    pub(crate) fn channel(&self) -> (u64, Channel) {
        let guard = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        (guard.0, guard.1.clone())
    }

    /// Called by a retrying task after failed attempt number `attempt` on the
    /// channel of generation `generation`: from the second failure on, swaps
    /// in a fresh (lazily connecting) channel unless another task already did.
    pub(crate) fn failed(&self, generation: u64, attempt: u32) {
        if attempt < RESET_AFTER_ATTEMPTS {
            return;
        }
        let mut guard = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        if guard.0 == generation {
            tracing::debug!(addr = %self.addr, "replacing the channel after repeated failures");
            *guard = (generation + 1, self.endpoint.connect_lazy());
        }
    }

    pub(crate) fn admin(&self) -> StreamAdminClient<Channel> {
        StreamAdminClient::new(self.channel().1)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(crate) fn append(channel: Channel) -> AppendClient<Channel> {
        AppendClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(crate) fn read(channel: Channel) -> ReadClient<Channel> {
        ReadClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_one_second() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_millis(50));
        assert_eq!(backoff(2), Duration::from_millis(100));
        assert_eq!(backoff(5), Duration::from_millis(800));
        assert_eq!(backoff(6), Duration::from_secs(1));
        assert_eq!(backoff(1000), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn unreachable_server_is_unavailable() {
        // Port 1 on localhost: nothing listens there.
        match Conn::connect("127.0.0.1:1").await {
            Err(Error::Unavailable(msg)) => {
                assert!(
                    msg.starts_with("cannot reach aquifer at 127.0.0.1:1: "),
                    "{msg}"
                );
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(matches!(
            Conn::connect("not a uri at all").await,
            Err(Error::InvalidArgument(_)) | Err(Error::Unavailable(_))
        ));
    }
}
