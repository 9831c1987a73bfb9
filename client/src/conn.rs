//! Connections to Aquifer nodes: one shared tonic `Channel` per node, the
//! gRPC stubs built on it, the retry backoff every retrying task uses, and
//! the cluster routing rules.
//!
//! Owns address parsing, message size limits, HTTP/2 settings, replacing
//! the channel when it keeps failing (so a server that dies and comes back
//! on the same address is reached again), and [`Nodes`]: the nodes a client
//! knows, with the leader last seen per segment and for metadata, so tasks
//! follow a redirect (`NOT_LEADER` naming the leader) or move to another
//! node when theirs is down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::error::chain_message;
use crate::proto::append_client::AppendClient;
use crate::proto::read_client::ReadClient;
use crate::proto::segments_client::SegmentsClient;
use crate::proto::stream_admin_client::StreamAdminClient;
use crate::Error;

/// Largest gRPC message the client sends or accepts: one maximal event
/// (the server allows up to 64 MiB) plus framing slack.
pub(crate) const MESSAGE_BYTES_MAX: usize = aquifer_proto::wire::CLIENT_MESSAGE_BYTES_MAX;

/// After this many consecutive failed attempts a task replaces the shared
/// channel with a fresh one.
const RESET_AFTER_ATTEMPTS: u32 = 2;

/// Retry delays: `initial`, doubling on every failed attempt up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// Delay before retry number `attempt` (1-based); zero before the first.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let shift = (attempt - 1).min(16);
        self.initial.saturating_mul(1 << shift).min(self.max)
    }
}

/// A channel with the client's credentials on every call.
pub(crate) type Transport = InterceptedService<Channel, Credentials>;

/// Puts the client's bearer token (if any) on every request.
#[derive(Clone, Debug, Default)]
pub(crate) struct Credentials {
    pub(crate) bearer: Option<MetadataValue<Ascii>>,
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(b) = &self.bearer {
            req.metadata_mut().insert("authorization", b.clone());
        }
        Ok(req)
    }
}

/// What a [`crate::ClientBuilder`] set, shared by every connection of one
/// client (the seed and the nodes learned from it).
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// How long dialling a node may take.
    pub(crate) connect_timeout: Duration,
    /// Deadline of each unary call, and of an admin call's redirects and
    /// retries together.
    pub(crate) request_timeout: Duration,
    pub(crate) backoff: Backoff,
    /// TLS to every node (None: plaintext).
    pub(crate) tls: Option<ClientTlsConfig>,
    pub(crate) credentials: Credentials,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            // Short enough that a writer finds a new leader soon after an
            // election (failover), long enough that retries do not load a
            // struggling node.
            backoff: Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(250),
            },
            tls: None,
            credentials: Credentials::default(),
        }
    }
}

/// One node's address and the channel to it, shared by every stub.
#[derive(Debug)]
pub(crate) struct Conn {
    addr: String,
    settings: Arc<Settings>,
    /// The client's other nodes (None for a connection made alone).
    nodes: Option<Arc<Nodes>>,
    endpoint: Endpoint,
    /// The channel and its generation; the generation lets many tasks that
    /// saw the same broken channel replace it only once.
    channel: Mutex<(u64, Channel)>,
}

impl Conn {
    /// Connects eagerly: fails with [`Error::Unavailable`] when the node
    /// cannot be reached within the connect timeout.
    pub(crate) async fn connect(addr: &str, settings: Arc<Settings>) -> Result<Conn, Error> {
        let addr = normalize(addr);
        let endpoint = endpoint(&addr, &settings)?;
        let timeout = settings.connect_timeout;
        let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
            Ok(Ok(channel)) => channel,
            // The cause in the message itself: a TLS refusal (unknown CA,
            // wrong name) is what the user must act on.
            Ok(Err(e)) => {
                let message = format!("cannot reach aquifer at {addr}: {}", chain_message(&e));
                return Err(Error::unavailable_from(message, e));
            }
            Err(_) => return Err(no_answer(&addr, timeout)),
        };
        Ok(Conn {
            addr,
            settings,
            nodes: None,
            endpoint,
            channel: Mutex::new((0, channel)),
        })
    }

    /// A connection that dials when first used.
    fn lazy(addr: &str, nodes: Arc<Nodes>, settings: Arc<Settings>) -> Result<Conn, Error> {
        let addr = normalize(addr);
        let endpoint = endpoint(&addr, &settings)?;
        Ok(Conn {
            addr,
            settings,
            nodes: Some(nodes),
            channel: Mutex::new((0, endpoint.connect_lazy())),
            endpoint,
        })
    }

    /// For a [`Error::NotLeader`] naming the leader: the connection to it.
    pub(crate) fn redirect(&self, err: &Error) -> Option<Arc<Conn>> {
        let Error::NotLeader { leader, .. } = err else {
            return None;
        };
        self.nodes.as_ref()?.get(leader)
    }

    /// The next node after this one (itself when it knows no other): where
    /// a task goes when this node keeps failing.
    pub(crate) fn next(self: &Arc<Self>) -> Arc<Conn> {
        self.nodes
            .as_ref()
            .and_then(|n| n.next_after(&self.addr))
            .unwrap_or_else(|| self.clone())
    }

    /// The client's nodes, if this connection belongs to a client.
    pub(crate) fn nodes(&self) -> Option<Arc<Nodes>> {
        self.nodes.clone()
    }
}

/// The error of a node that did not answer within the connect timeout.
pub(crate) fn no_answer(addr: &str, timeout: Duration) -> Error {
    Error::unavailable(format!(
        "cannot reach aquifer at {addr}: no answer within {:.1} s",
        timeout.as_secs_f64()
    ))
}

/// `host:port` without a scheme, the form nodes name each other in.
fn normalize(addr: &str) -> String {
    let addr = addr.trim();
    addr.strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr)
        .trim_end_matches('/')
        .to_string()
}

/// How to dial node `addr` with `settings` (the node status probe's
/// endpoint too, so both speak TLS alike).
pub(crate) fn endpoint(addr: &str, settings: &Settings) -> Result<Endpoint, Error> {
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| {
        Error::InvalidArgument(format!(
            "invalid server address {addr:?} (expected HOST:PORT): {}",
            chain_message(&e)
        ))
    })?;
    if let Some(tls) = &settings.tls {
        endpoint = endpoint.tls_config(tls.clone()).map_err(|e| {
            Error::InvalidArgument(format!("TLS settings for {addr}: {}", chain_message(&e)))
        })?;
    }
    Ok(endpoint
        .connect_timeout(settings.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024))
}

impl Conn {
    /// A connection that dials only when used (unit tests).
    #[cfg(test)]
    pub(crate) fn from_lazy_for_tests(endpoint: Endpoint) -> Conn {
        Conn {
            addr: endpoint.uri().to_string(),
            settings: Arc::default(),
            nodes: None,
            channel: Mutex::new((0, endpoint.connect_lazy())),
            endpoint,
        }
    }

    /// The address as given to `connect`.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// The client's settings.
    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Delay before retry number `attempt` (see [`Backoff::delay`]).
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        self.settings.backoff.delay(attempt)
    }

    /// `msg` as a unary request with the request timeout as its deadline.
    pub(crate) fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.settings.request_timeout);
        req
    }

    /// The current channel (with the client's credentials) and its
    /// generation.
    pub(crate) fn channel(&self) -> (u64, Transport) {
        let guard = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        let transport = InterceptedService::new(guard.1.clone(), self.settings.credentials.clone());
        (guard.0, transport)
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

    pub(crate) fn admin(&self) -> StreamAdminClient<Transport> {
        StreamAdminClient::new(self.channel().1)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    pub(crate) fn append(channel: Transport) -> AppendClient<Transport> {
        AppendClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    pub(crate) fn read(channel: Transport) -> ReadClient<Transport> {
        ReadClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    pub(crate) fn segments(channel: Transport) -> SegmentsClient<Transport> {
        SegmentsClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }
}

/// The nodes a client knows and the leaders it has seen: segment sessions
/// and admin calls start where they last succeeded. Connections hold their
/// `Nodes`; `Nodes` only remembers connections weakly (no cycle), so a
/// node's connection closes once no task uses it, and is made again on
/// demand.
#[derive(Debug, Default)]
pub(crate) struct Nodes {
    /// The settings every connection of this client uses.
    settings: Arc<Settings>,
    /// Addresses in the order learned (the first is the one connected to)
    /// and the live connection to each, if any.
    known: Mutex<Vec<(String, Weak<Conn>)>>,
    /// The last node that took appends for a segment.
    segment_leaders: Mutex<HashMap<u64, Weak<Conn>>>,
    /// The last node that answered an admin call.
    meta_leader: Mutex<Weak<Conn>>,
}

impl Nodes {
    /// Starts with a connected seed node.
    pub(crate) fn with_seed(seed: Conn) -> Arc<Conn> {
        let nodes = Arc::new(Nodes {
            settings: seed.settings.clone(),
            ..Nodes::default()
        });
        let seed = Arc::new(Conn {
            nodes: Some(nodes.clone()),
            ..seed
        });
        lock(&nodes.known).push((seed.addr.clone(), Arc::downgrade(&seed)));
        seed
    }

    /// The connection to `addr`, made (lazily) when there is none.
    pub(crate) fn get(self: &Arc<Self>, addr: &str) -> Option<Arc<Conn>> {
        let addr = normalize(addr);
        let mut known = lock(&self.known);
        let slot = match known.iter().position(|(a, _)| *a == addr) {
            Some(i) => i,
            None => {
                known.push((addr.clone(), Weak::new()));
                known.len() - 1
            }
        };
        if let Some(conn) = known[slot].1.upgrade() {
            return Some(conn);
        }
        let conn = Arc::new(Conn::lazy(&addr, self.clone(), self.settings.clone()).ok()?);
        known[slot].1 = Arc::downgrade(&conn);
        Some(conn)
    }

    /// Remembers `addr` without connecting.
    pub(crate) fn learn(&self, addr: &str) {
        let addr = normalize(addr);
        let mut known = lock(&self.known);
        if !known.iter().any(|(a, _)| *a == addr) {
            known.push((addr, Weak::new()));
        }
    }

    fn next_after(self: &Arc<Self>, addr: &str) -> Option<Arc<Conn>> {
        let next = {
            let known = lock(&self.known);
            let i = known.iter().position(|(a, _)| a == addr)?;
            known.get((i + 1) % known.len())?.0.clone()
        };
        self.get(&next)
    }

    /// Nodes known.
    pub(crate) fn len(&self) -> usize {
        lock(&self.known).len()
    }

    pub(crate) fn segment_leader(&self, segment_id: u64) -> Option<Arc<Conn>> {
        lock(&self.segment_leaders).get(&segment_id)?.upgrade()
    }

    pub(crate) fn set_segment_leader(&self, segment_id: u64, conn: &Arc<Conn>) {
        lock(&self.segment_leaders).insert(segment_id, Arc::downgrade(conn));
    }

    pub(crate) fn meta_leader(&self) -> Option<Arc<Conn>> {
        lock(&self.meta_leader).upgrade()
    }

    pub(crate) fn set_meta_leader(&self, conn: &Arc<Conn>) {
        *lock(&self.meta_leader) = Arc::downgrade(conn);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap() {
        let b = Settings::default().backoff;
        assert_eq!(b.delay(0), Duration::ZERO);
        assert_eq!(b.delay(1), Duration::from_millis(50));
        assert_eq!(b.delay(2), Duration::from_millis(100));
        assert_eq!(b.delay(3), Duration::from_millis(200));
        assert_eq!(b.delay(4), Duration::from_millis(250));
        assert_eq!(b.delay(1000), Duration::from_millis(250));
    }

    #[tokio::test]
    async fn unreachable_server_is_unavailable() {
        // Port 1 on localhost: nothing listens there.
        match Conn::connect("127.0.0.1:1", Arc::default()).await {
            Err(e @ Error::Unavailable { .. }) => {
                // The cause follows, and stays the error's source.
                let message = e.to_string();
                assert!(
                    message.starts_with("cannot reach aquifer at 127.0.0.1:1: "),
                    "{message}"
                );
                assert!(std::error::Error::source(&e).is_some());
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(matches!(
            Conn::connect("not a uri at all", Arc::default()).await,
            Err(Error::InvalidArgument(_)) | Err(Error::Unavailable { .. })
        ));
    }
}
