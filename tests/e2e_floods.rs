//! Connection floods against the real binary: silent sockets, half-open
//! HTTP/2 connections and many connections from one address never lock a
//! client out, and the node closes what never handshakes or sits idle.
//! Loopback only, bounded in count and time.

use aquifer_testkit as common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aquifer_client::{Client, ReaderConfig, StartFrom};
use futures::TryStreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use common::{cli_ok, stream_name, ServerOpts, ServerProcess};

/// The client preface and an empty SETTINGS frame: an HTTP/2 handshake
/// from a client that then never sends anything more.
const PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
/// How long a client may take to list streams during a flood.
const CLIENT_WITHIN: Duration = Duration::from_secs(2);

fn addr(server: &ServerProcess) -> SocketAddr {
    server.addr().parse().expect("a socket address")
}

/// Connects from `from` (any 127.0.0.0/8 address) to `to`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind a loopback address");
    socket.connect(to).await.expect("connect")
}

/// Whether the peer closed `sock` by `deadline` (whatever it sent first).
async fn closed_by(sock: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sock.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// How many of `socks` the peer closed by `deadline`.
async fn count_closed(socks: &mut [TcpStream], deadline: Instant) -> usize {
    let mut closed = 0;
    for s in socks {
        if closed_by(s, deadline).await {
            closed += 1;
        }
    }
    closed
}

/// A fresh client lists streams, within [`CLIENT_WITHIN`] of starting.
async fn client_gets_in(server: &ServerProcess) -> Duration {
    let started = Instant::now();
    let client = Client::connect(&server.addr())
        .await
        .expect("connect during the flood");
    client
        .admin()
        .list_streams(None)
        .await
        .expect("list during the flood");
    let took = started.elapsed();
    assert!(
        took < CLIENT_WITHIN,
        "the client took {took:?} during the flood"
    );
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_open_floods_do_not_lock_clients_out() {
    let server = ServerProcess::start(ServerOpts::with_config(
        "connections_max = 64\nhandshake_timeout_ms = 1500\nconnection_idle_timeout_ms = 3000\n",
    ))
    .await;
    let to = addr(&server);
    let flood_start = Instant::now();
    // Past connections_max plus the loopback reserve (64 + 8), all from
    // 127.0.0.1 like the clients below.
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(connect_from([127, 0, 0, 1], to).await);
    }
    let mut half_open = Vec::new();
    for _ in 0..30 {
        let mut s = connect_from([127, 0, 0, 1], to).await;
        s.write_all(PREFACE_AND_SETTINGS)
            .await
            .expect("send the preface");
        half_open.push(s);
    }
    let took = client_gets_in(&server).await;
    eprintln!("a client listed streams in {took:?} during the flood");
    let out = tokio::task::spawn_blocking({
        let addr = server.addr();
        move || {
            let started = Instant::now();
            let out = common::cli(&["stream", "list", "--addr", &addr], None);
            (out, started.elapsed())
        }
    })
    .await
    .expect("the CLI ran");
    cli_ok(&out.0, "stream list during the flood");
    assert!(out.1 < Duration::from_secs(5), "the CLI took {:?}", out.1);

    // Every silent socket is gone once the handshake timeout passed (some
    // long before: evicted for newer connections).
    let deadline = flood_start + Duration::from_millis(1500 + 1500);
    assert_eq!(count_closed(&mut silent, deadline).await, silent.len());
    // The half-open ones handshook, then idled past the idle timeout.
    let deadline = flood_start + Duration::from_millis(3000 + 2000);
    assert_eq!(
        count_closed(&mut half_open, deadline).await,
        half_open.len()
    );
    client_gets_in(&server).await;
    let log = server.stderr_text();
    assert!(log.contains("closing client connections"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_slot() {
    let server = ServerProcess::start(ServerOpts::with_config(
        "connections_max = 64\nconnections_per_address_max = 8\n",
    ))
    .await;
    let to = addr(&server);
    let mut flood = Vec::new();
    for _ in 0..20 {
        flood.push(connect_from([127, 0, 0, 2], to).await);
    }
    // The 12 past the address's limit are closed at once; its 8 stay (the
    // handshake timeout is 5 s by default).
    let deadline = Instant::now() + Duration::from_millis(1000);
    assert_eq!(count_closed(&mut flood, deadline).await, 12);
    // Another address still gets in.
    client_gets_in(&server).await;
}

/// At `connections_max` (here 2, under its old name; all test clients are
/// loopback, so 8 more) connections with a request open are never closed
/// for a newcomer, which is refused at once instead of waiting; once one
/// closes, a new client gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_connections_keep_their_slots_and_newcomers_are_refused_at_once() {
    let server = ServerProcess::start(ServerOpts::with_config("max_connections = 2\n")).await;
    let name = stream_name("floods/busy");
    Client::connect(&server.addr())
        .await
        .expect("connect")
        .admin()
        .create_stream(&name, 1)
        .await
        .expect("create");
    // Each holds a following read open on its own connection.
    let mut busy = Vec::new();
    for _ in 0..2 + 8 {
        let client = Client::connect(&server.addr()).await.expect("connect");
        let mut reader = client
            .reader(
                &name,
                ReaderConfig::default().start(StartFrom::Head).follow(true),
            )
            .await
            .expect("a following reader");
        let reading = tokio::spawn(async move { reader.try_next().await.map(|_| ()) });
        busy.push((client, reading));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let mut refused = TcpStream::connect(server.addr()).await.expect("connect");
    assert!(
        closed_by(&mut refused, started + Duration::from_secs(1)).await,
        "a connection past the limit was kept waiting"
    );
    let third = tokio::time::timeout(Duration::from_secs(3), async {
        let c = Client::connect(&server.addr()).await?;
        c.admin().list_streams(None).await
    })
    .await;
    assert!(!matches!(third, Ok(Ok(_))), "served past the limit");
    let log = server.stderr_text();
    assert!(log.contains("refused_limit"), "{log}");

    let (gone, reading) = busy.pop().expect("a busy client");
    reading.abort();
    drop(gone);
    let newcomer = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(c) = Client::connect(&server.addr()).await {
                if c.admin().list_streams(None).await.is_ok() {
                    return c;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("a slot frees once a client closes");
    drop(newcomer);
    for (client, _) in &busy {
        client
            .admin()
            .list_streams(None)
            .await
            .expect("a busy client is still served");
    }
}
