//! Client connections: how many are open, from where, and how long one may
//! hold a slot without completing its handshake or having a request open.
//! Owns the registry of open connections, the decision on each accepted one
//! (admit, admit in place of another, refuse), the sweeper that closes stale
//! ones, and the layer that counts each connection's open requests.
//!
//! It must never make a connection wait: past the limits one is closed at
//! once, so the accept loop keeps up and a flood cannot leave legitimate
//! clients in the listen backlog.
//!
//! - At `connections_max` a new connection takes the place of the oldest
//!   one that has not completed its handshake, else of the one idle longest
//!   (no request open); when every connection has a request open it is
//!   refused. A flood of silent sockets or half-open HTTP/2 connections so
//!   only ever displaces its own kind, and a client that handshakes and
//!   calls at once gets in.
//! - One IP address holds at most `connections_per_address_max`.
//! - Loopback clients have [`LOOPBACK_RESERVED`] slots past
//!   `connections_max`: the operator on the node gets in even while remote
//!   clients hold every slot with requests open. (Peers have a port of
//!   their own, guarded the same way with its own limit.)
//! - Under TLS the handshake counted here is TLS's first bytes; the TLS
//!   handshake itself has the same timeout (`api::builder`), so a ClientHello
//!   and silence is closed in time too.
//! - A connection that has not sent the HTTP/2 preface and its first frame
//!   header within `handshake_timeout_ms`, or has had no request open for
//!   `connection_idle_timeout_ms`, is closed.
//!
//! Every connection the node closes itself is counted by reason in
//! `connections_closed_total`, and logged at most once per [`WARN_EVERY`].

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use futures::{Stream, StreamExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::codegen::{http, Service};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use crate::config::ServerConfig;
use crate::metrics::{ConnectionLabels, Metrics};

/// Bytes a client sends to open HTTP/2: the 24-byte preface and the 9-byte
/// header of its first frame (SETTINGS). Fewer within the handshake timeout
/// and the connection is closed.
const HANDSHAKE_BYTES: u64 = 24 + 9;
/// Connections loopback clients may open past `connections_max`.
pub const LOOPBACK_RESERVED: usize = 8;
/// How often stale connections are looked for: timeouts hold to within it.
const SWEEP_EVERY: Duration = Duration::from_millis(200);
/// At most one warning about closed connections this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What the guard enforces, and where it counts.
pub struct Rules {
    max: usize,
    per_address_max: usize,
    handshake_ms: u64,
    idle_ms: u64,
    open: Gauge,
    closed: Family<ConnectionLabels, Counter>,
}

impl Rules {
    /// The client port's: the config's limits, counted in the node's metrics.
    pub fn of(config: &ServerConfig, metrics: &Metrics) -> Rules {
        Rules {
            max: config.connections_max,
            per_address_max: config.connections_per_address_max,
            handshake_ms: config.handshake_timeout_ms,
            idle_ms: config.connection_idle_timeout_ms,
            open: metrics.connections.clone(),
            closed: metrics.connections_closed.clone(),
        }
    }

    /// The peer port's: `max` connections from any mix of nodes, the
    /// config's timeouts (a peer reconnects by itself), counted nowhere
    /// (the metrics are the client port's).
    pub fn for_peers(config: &ServerConfig, max: usize) -> Rules {
        Rules {
            max,
            per_address_max: max,
            handshake_ms: config.handshake_timeout_ms,
            idle_ms: config.connection_idle_timeout_ms,
            open: Gauge::default(),
            closed: Family::default(),
        }
    }
}

/// Guards `incoming`: connections past the limits are closed at once, stale
/// ones later. The layer must wrap the connections' services, so the guard
/// knows which connections have requests open.
pub fn guard(
    incoming: impl Stream<Item = io::Result<TcpStream>> + Send + 'static,
    rules: Rules,
) -> (
    impl Stream<Item = io::Result<Guarded>> + Send + 'static,
    RequestsLayer,
) {
    let registry = Arc::new(Registry::new(rules));
    tokio::spawn(sweep(Arc::downgrade(&registry)));
    let layer = RequestsLayer {
        registry: registry.clone(),
    };
    let guarded = incoming.filter_map(move |accepted| {
        let registry = registry.clone();
        async move {
            let io = match accepted {
                Ok(io) => io,
                Err(e) => return Some(Err(e)),
            };
            // Dropping `io` closes it: refused at once.
            let remote = io.peer_addr().ok()?;
            let conn = registry.admit(remote)?;
            Some(Ok(Guarded { io, conn, registry }))
        }
    });
    (guarded, layer)
}

/// One open connection as the registry sees it.
struct Conn {
    remote: SocketAddr,
    ip: IpAddr,
    /// Milliseconds since the registry's epoch, as are the times below.
    opened_ms: u64,
    /// Bytes read, counted up to [`HANDSHAKE_BYTES`].
    read: AtomicU64,
    requests: AtomicUsize,
    /// When the last request ended (the opening, before any).
    idle_since_ms: AtomicU64,
    closed: AtomicBool,
    /// The connection's task, woken to find itself closed.
    waker: AtomicWaker,
}

impl Conn {
    fn handshaken(&self) -> bool {
        self.read.load(Ordering::Relaxed) >= HANDSHAKE_BYTES
    }

    fn idle(&self) -> bool {
        self.requests.load(Ordering::Acquire) == 0
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

#[derive(Default)]
struct Open {
    by_remote: HashMap<SocketAddr, Arc<Conn>>,
    per_ip: HashMap<IpAddr, usize>,
}

impl Open {
    fn remove(&mut self, conn: &Conn) {
        self.by_remote.remove(&conn.remote);
        if let Some(n) = self.per_ip.get_mut(&conn.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&conn.ip);
            }
        }
    }

    /// The connection to close for a new one: the oldest not handshaken,
    /// else the one idle longest; none while every one has a request open.
    fn victim(&self) -> Option<Arc<Conn>> {
        let conns = self.by_remote.values();
        let silent = conns
            .clone()
            .filter(|c| !c.handshaken())
            .min_by_key(|c| c.opened_ms);
        silent
            .or_else(|| {
                conns
                    .filter(|c| c.idle())
                    .min_by_key(|c| c.idle_since_ms.load(Ordering::Relaxed))
            })
            .cloned()
    }
}

struct Registry {
    rules: Rules,
    epoch: Instant,
    open: Mutex<Open>,
    /// Connections closed since the last warning, by reason.
    unlogged: Mutex<HashMap<&'static str, u64>>,
    last_warned_ms: AtomicU64,
}

impl Registry {
    fn new(rules: Rules) -> Registry {
        Registry {
            rules,
            epoch: Instant::now(),
            open: Mutex::default(),
            unlogged: Mutex::default(),
            last_warned_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `remote`, closing another if the limit
    /// calls for it; None: refused.
    fn admit(&self, remote: SocketAddr) -> Option<Arc<Conn>> {
        let ip = remote.ip().to_canonical();
        let now = self.now_ms();
        let mut open = self.lock();
        if open.per_ip.get(&ip).copied().unwrap_or(0) >= self.rules.per_address_max {
            drop(open);
            self.closed("refused_address_limit");
            return None;
        }
        let cap = if ip.is_loopback() {
            self.rules.max + LOOPBACK_RESERVED
        } else {
            self.rules.max
        };
        if open.by_remote.len() >= cap {
            let Some(victim) = open.victim() else {
                drop(open);
                self.closed("refused_limit");
                return None;
            };
            open.remove(&victim);
            victim.close();
            self.closed("evicted");
        }
        let conn = Arc::new(Conn {
            remote,
            ip,
            opened_ms: now,
            read: AtomicU64::new(0),
            requests: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(now),
            closed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        // A closed connection from the same port whose task has not
        // dropped it yet is gone already.
        if let Some(stale) = open.by_remote.get(&remote).cloned() {
            open.remove(&stale);
            stale.close();
        }
        open.by_remote.insert(remote, conn.clone());
        *open.per_ip.entry(ip).or_default() += 1;
        self.rules.open.set(open.by_remote.len() as i64);
        Some(conn)
    }

    /// Forgets `conn` (its IO was dropped), unless it was closed and
    /// forgotten already.
    fn release(&self, conn: &Arc<Conn>) {
        let mut open = self.lock();
        if open
            .by_remote
            .get(&conn.remote)
            .is_some_and(|c| Arc::ptr_eq(c, conn))
        {
            open.remove(conn);
        }
        self.rules.open.set(open.by_remote.len() as i64);
    }

    fn find(&self, remote: SocketAddr) -> Option<Arc<Conn>> {
        self.lock().by_remote.get(&remote).cloned()
    }

    /// Closes the connections past their handshake or idle timeout.
    fn sweep(&self) {
        let now = self.now_ms();
        let mut open = self.lock();
        let stale: Vec<(Arc<Conn>, &'static str)> = open
            .by_remote
            .values()
            .filter_map(|c| {
                let reason = if !c.handshaken() {
                    let waited = now.saturating_sub(c.opened_ms);
                    (waited >= self.rules.handshake_ms).then_some("handshake_timeout")
                } else {
                    let idle = now.saturating_sub(c.idle_since_ms.load(Ordering::Relaxed));
                    (c.idle() && idle >= self.rules.idle_ms).then_some("idle_timeout")
                };
                reason.map(|r| (c.clone(), r))
            })
            .collect();
        for (c, _) in &stale {
            open.remove(c);
            c.close();
        }
        self.rules.open.set(open.by_remote.len() as i64);
        drop(open);
        for (_, reason) in stale {
            self.closed(reason);
        }
    }

    /// Counts a connection the node closed itself; warns now and then.
    fn closed(&self, reason: &'static str) {
        self.rules
            .closed
            .get_or_create(&ConnectionLabels { reason })
            .inc();
        let mut unlogged = self.unlogged.lock().unwrap_or_else(|p| p.into_inner());
        *unlogged.entry(reason).or_default() += 1;
        let now = self.now_ms();
        let last = self.last_warned_ms.load(Ordering::Relaxed);
        let every = u64::try_from(WARN_EVERY.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < every {
            return;
        }
        // 0 means never: the first closing is logged at once.
        self.last_warned_ms.store(now.max(1), Ordering::Relaxed);
        let counts: Vec<String> = unlogged.drain().map(|(r, n)| format!("{r}={n}")).collect();
        tracing::warn!(
            closed = %counts.join(" "),
            connections_max = self.rules.max,
            per_address_max = self.rules.per_address_max,
            "closing client connections at the connection limits or timeouts (counts since the last warning)"
        );
    }
}

/// Sweeps until the registry is gone (the server and its connections).
async fn sweep(registry: Weak<Registry>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match registry.upgrade() {
            Some(r) => r.sweep(),
            None => return,
        }
    }
}

/// An admitted connection: fails its reads and writes once the registry
/// closed it, so its HTTP/2 connection ends and the socket closes.
pub struct Guarded {
    io: TcpStream,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl Guarded {
    fn check_open(&self) -> io::Result<()> {
        if self.conn.is_closed() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed at the connection limits or timeouts",
            ));
        }
        Ok(())
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.registry.release(&self.conn);
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Registered before the check, so a close between the two wakes us.
        this.conn.waker.register(cx.waker());
        this.check_open()?;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if !this.conn.handshaken() {
            let n = (buf.filled().len() - before) as u64;
            this.conn.read.fetch_add(n, Ordering::Relaxed);
        }
        read
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_open()?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_open()?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Counts each connection's open requests (a request is open until its
/// response body is dropped: a streaming read stays open while it streams).
#[derive(Clone)]
pub struct RequestsLayer {
    registry: Arc<Registry>,
}

impl<S> tower_layer::Layer<S> for RequestsLayer {
    type Service = CountRequests<S>;

    fn layer(&self, inner: S) -> CountRequests<S> {
        CountRequests {
            inner,
            registry: self.registry.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CountRequests<S> {
    inner: S,
    registry: Arc<Registry>,
}

impl<S, B, R> Service<http::Request<B>> for CountRequests<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Counted<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // Under TLS tonic wraps the TCP connection's info in its own.
        let extensions = req.extensions();
        let tcp = extensions.get::<TcpConnectInfo>().or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .map(TlsConnectInfo::get_ref)
        });
        let open = tcp
            .and_then(TcpConnectInfo::remote_addr)
            .and_then(|remote| self.registry.find(remote))
            .map(|conn| OpenRequest::new(conn, self.registry.clone()));
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Counted { body, _open: open }))
        })
    }
}

/// One open request of a connection.
struct OpenRequest {
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl OpenRequest {
    fn new(conn: Arc<Conn>, registry: Arc<Registry>) -> Self {
        conn.requests.fetch_add(1, Ordering::AcqRel);
        OpenRequest { conn, registry }
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        if self.conn.requests.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.conn
                .idle_since_ms
                .store(self.registry.now_ms(), Ordering::Relaxed);
        }
    }
}

/// A response body that keeps its request counted as open.
pub struct Counted<B> {
    body: B,
    _open: Option<OpenRequest>,
}

impl<B: http_body::Body + Unpin> http_body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(
        max: usize,
        per_address_max: usize,
        handshake_ms: u64,
        idle_ms: u64,
    ) -> Arc<Registry> {
        Arc::new(Registry::new(Rules {
            max,
            per_address_max,
            handshake_ms,
            idle_ms,
            open: Gauge::default(),
            closed: Family::default(),
        }))
    }

    fn remote(ip: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((ip, port))
    }

    const REMOTE: [u8; 4] = [10, 0, 0, 1];

    fn handshake(c: &Conn) {
        c.read.store(HANDSHAKE_BYTES, Ordering::Relaxed);
    }

    #[test]
    fn at_the_limit_the_silent_go_first_then_the_idle_and_the_busy_never() {
        let r = registry(3, 100, 60_000, 60_000);
        let a = r.admit(remote(REMOTE, 1)).unwrap();
        let b = r.admit(remote(REMOTE, 2)).unwrap();
        let c = r.admit(remote(REMOTE, 3)).unwrap();
        handshake(&a);
        handshake(&c);
        let _busy_a = OpenRequest::new(a.clone(), r.clone());
        // b never handshook: it goes first.
        let d = r.admit(remote(REMOTE, 4)).unwrap();
        assert!(b.is_closed() && !a.is_closed() && !c.is_closed());
        // d has not handshaken either, and is the only silent one.
        let e = r.admit(remote(REMOTE, 5)).unwrap();
        assert!(d.is_closed() && !c.is_closed());
        handshake(&e);
        let _busy_e = OpenRequest::new(e.clone(), r.clone());
        // Only c is idle now.
        let f = r.admit(remote(REMOTE, 6)).unwrap();
        assert!(c.is_closed());
        handshake(&f);
        let _busy_f = OpenRequest::new(f.clone(), r.clone());
        // Every connection has a request open: refused.
        assert!(r.admit(remote(REMOTE, 7)).is_none());
        assert!(!a.is_closed() && !f.is_closed());
        assert_eq!(
            r.rules
                .closed
                .get_or_create(&ConnectionLabels { reason: "evicted" })
                .get(),
            3
        );
        assert_eq!(
            r.rules
                .closed
                .get_or_create(&ConnectionLabels {
                    reason: "refused_limit"
                })
                .get(),
            1
        );
        assert_eq!(r.rules.open.get(), 3);
    }

    #[test]
    fn loopback_has_a_reserve_and_one_address_a_limit() {
        let r = registry(2, 3, 60_000, 60_000);
        let mut busy = Vec::new();
        for port in 1..=2 {
            let c = r.admit(remote(REMOTE, port)).unwrap();
            handshake(&c);
            busy.push(OpenRequest::new(c, r.clone()));
        }
        assert!(
            r.admit(remote([10, 0, 0, 2], 1)).is_none(),
            "remote clients are at the limit"
        );
        // The operator on the node still gets in, up to the reserve (and
        // its address's limit).
        let local: Vec<_> = (1..=3)
            .filter_map(|p| r.admit(remote([127, 0, 0, 1], p)))
            .collect();
        assert_eq!(local.len(), 3);
        assert!(
            r.admit(remote([127, 0, 0, 1], 4)).is_none(),
            "per-address limit"
        );
        assert!(r.admit(remote([127, 0, 0, 2], 1)).is_some());
        // A released connection frees its address's slot.
        for c in &local {
            r.release(c);
        }
        let again = r.admit(remote([127, 0, 0, 1], 5)).unwrap();
        r.release(&again);
        assert!(r.find(remote([127, 0, 0, 1], 5)).is_none());
    }

    #[test]
    fn the_sweep_closes_the_silent_and_the_idle_only() {
        let r = registry(10, 10, 0, 0);
        let silent = r.admit(remote(REMOTE, 1)).unwrap();
        let idle = r.admit(remote(REMOTE, 2)).unwrap();
        let busy = r.admit(remote(REMOTE, 3)).unwrap();
        handshake(&idle);
        handshake(&busy);
        let open = OpenRequest::new(busy.clone(), r.clone());
        r.sweep();
        assert!(silent.is_closed() && idle.is_closed() && !busy.is_closed());
        assert_eq!(r.rules.open.get(), 1);
        // Its last request over, the busy one is idle too.
        drop(open);
        r.sweep();
        assert!(busy.is_closed());
        let long = registry(10, 10, 60_000, 60_000);
        let young = long.admit(remote(REMOTE, 1)).unwrap();
        long.sweep();
        assert!(!young.is_closed(), "within its handshake timeout");
    }
}
