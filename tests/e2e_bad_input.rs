//! Bad input from the CLI, the client crate and raw connections: every bad
//! request gets a clear error, and the node keeps serving good ones.

use aquifer_testkit as common;

use std::collections::HashMap;
use std::time::Duration;

use aquifer_client::{Client, Error, StreamName, WriterConfig};
use aquifer_proto::v1 as pb;
use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{cli_err, cli_ok, read_all, stream_name, test_seed, ServerOpts, ServerProcess};

const MIB: usize = 1024 * 1024;
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes one event with `key` and waits for its ack.
async fn write_acked(
    writer: &aquifer_client::EventWriter,
    key: &str,
    payload: &str,
) -> Result<aquifer_client::WriteAck, Error> {
    let pending = writer
        .write_event(Some(key), Bytes::from(payload.to_owned()))
        .await?;
    tokio::time::timeout(ACK_TIMEOUT, pending)
        .await
        .unwrap_or_else(|_| panic!("ack of {key} took over {ACK_TIMEOUT:?}"))
}

/// Creates a stream, writes and reads back a few events: the node serves.
async fn assert_serves(client: &Client, name: &str) {
    let writer_id = format!("probe-{}", name.replace('/', "-"));
    let name = stream_name(name);
    client
        .admin()
        .create_stream(&name, 2)
        .await
        .expect("create stream on a healthy node");
    let config = WriterConfig::default().writer_id(writer_id);
    let writer = client.writer(&name, config).await.expect("open writer");
    for i in 0..10 {
        write_acked(&writer, &format!("k{i}"), &format!("probe-{i}"))
            .await
            .expect("write on a healthy node");
    }
    let _ = writer.close().await;
    let events = read_all(client, &name, READ_TIMEOUT).await;
    assert_eq!(events.len(), 10, "events read back from a healthy node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_and_unknown_streams_are_clear_errors() {
    let server = ServerProcess::start(ServerOpts::default()).await;
    let long = "n".repeat(256);
    let long_name = format!("scope/{long}");
    for bad in [
        "bad name/x",
        "a/b/c",
        long_name.as_str(),
        "noslash",
        "/x",
        "x/",
    ] {
        let out = server.cli(&["stream", "create", bad, "--segments", "1"], None);
        let line = cli_err(&out, &format!("stream create {bad:?}"), &["name", "255"]);
        eprintln!("{bad:?} -> {line}");
        assert!(
            bad.parse::<StreamName>().is_err(),
            "the client crate accepts the bad name {bad:?}"
        );
    }
    assert!(StreamName::new("bad name", "x").is_err());
    assert!(StreamName::new("ok", &long).is_err());
    assert!(matches!(
        "a/b/c".parse::<StreamName>(),
        Err(Error::InvalidName { .. })
    ));

    // Nothing was created by the failed attempts.
    let out = cli_ok(&server.cli(&["stream", "list"], None), "stream list");
    assert!(!out.contains("bad name"), "a bad name was created:\n{out}");

    // Unknown streams, through the CLI.
    let out = server.cli(&["write", "nope/missing"], Some(b"x\n"));
    cli_err(&out, "write to an unknown stream", &["not found"]);
    let out = server.cli(&["read", "nope/missing", "--from", "head"], None);
    cli_err(&out, "read of an unknown stream", &["not found"]);
    let out = server.cli(&["stream", "describe", "nope/missing"], None);
    cli_err(&out, "describe of an unknown stream", &["not found"]);
    let out = server.cli(&["stream", "seal", "nope/missing"], None);
    cli_err(&out, "seal of an unknown stream", &["not found"]);
    let out = server.cli(&["stream", "delete", "nope/missing"], None);
    cli_err(&out, "delete of an unknown stream", &["not found"]);

    // ... and through the client crate.
    let client = server.client().await;
    let missing = stream_name("nope/missing");
    let err = client
        .admin()
        .describe_stream(&missing)
        .await
        .expect_err("describe of an unknown stream");
    assert!(matches!(err, Error::NotFound { .. }), "describe: {err:?}");
    let config = WriterConfig::default().writer_id("missing-w");
    match client.writer(&missing, config).await {
        Err(e) => assert!(matches!(e, Error::NotFound { .. }), "writer: {e:?}"),
        Ok(writer) => {
            let e = write_acked(&writer, "k", "x")
                .await
                .expect_err("write to an unknown stream");
            assert!(matches!(e, Error::NotFound { .. }), "write: {e:?}");
        }
    }

    // Creating twice, and delete then describe.
    cli_ok(
        &server.cli(&["stream", "create", "bad/twice", "--segments", "1"], None),
        "first create",
    );
    let out = server.cli(&["stream", "create", "bad/twice", "--segments", "1"], None);
    cli_err(&out, "second create", &["exists"]);
    let twice = stream_name("bad/twice");
    let err = client
        .admin()
        .create_stream(&twice, 1)
        .await
        .expect_err("second create via the client");
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");

    cli_ok(
        &server.cli(&["stream", "delete", "bad/twice"], None),
        "delete",
    );
    let out = server.cli(&["stream", "describe", "bad/twice"], None);
    cli_err(&out, "describe after delete", &["not found"]);
    let err = client
        .admin()
        .describe_stream(&twice)
        .await
        .expect_err("describe after delete");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    let err = client
        .admin()
        .delete_stream(&twice)
        .await
        .expect_err("second delete");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    let listed = client.admin().list_streams(None).await.expect("list");
    assert!(
        listed.iter().all(|s| s.name.stream != "twice"),
        "a deleted stream is still listed: {listed:?}"
    );

    assert_serves(&client, "bad/after-names").await;
}

/// An oversize event (9 MiB, over the default 8 MiB limit but under the
/// client's own) fails as InvalidArgument; the writer's other segments and
/// the node keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_event_is_invalid_argument() {
    let server = ServerProcess::start(ServerOpts::default()).await;
    let client = server.client().await;

    let name = stream_name("bad/oversize");
    client
        .admin()
        .create_stream(&name, 4)
        .await
        .expect("create stream");
    let config = WriterConfig::default().writer_id("oversize-w");
    let writer = client.writer(&name, config).await.expect("open writer");
    let keys: Vec<String> = (0..32).map(|i| format!("key-{i}")).collect();
    let mut segment_of: HashMap<&str, u64> = HashMap::new();
    for key in &keys {
        let pos = write_acked(&writer, key, &format!("before:{key}"))
            .await
            .expect("write before the oversize event");
        segment_of.insert(key, pos.segment_id);
    }
    let big = Bytes::from(vec![b'b'; 9 * MIB]);
    let err = match writer.write_event(Some(keys[0].as_str()), big).await {
        Err(e) => e,
        Ok(pending) => tokio::time::timeout(ACK_TIMEOUT, pending)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "a 9 MiB event got no answer within {ACK_TIMEOUT:?} (expected InvalidArgument)"
                )
            })
            .expect_err("a 9 MiB event is accepted"),
    };
    assert!(
        matches!(err, Error::InvalidArgument { .. }),
        "oversize: {err:?}"
    );
    let bad_segment = segment_of[keys[0].as_str()];
    let mut other_ok = 0;
    for key in &keys {
        let res = write_acked(&writer, key, &format!("after:{key}")).await;
        if segment_of[key.as_str()] != bad_segment {
            res.unwrap_or_else(|e| panic!("write of {key} to another segment after oversize: {e}"));
            other_ok += 1;
        }
    }
    assert!(other_ok > 0, "all 32 keys map to one segment of 4");
    let _ = writer.close().await;
    // A fresh writer reaches every segment, the oversize one included.
    let config = WriterConfig::default().writer_id("oversize-w2");
    let writer = client.writer(&name, config).await.expect("open writer");
    for key in &keys {
        write_acked(&writer, key, &format!("fresh:{key}"))
            .await
            .unwrap_or_else(|e| panic!("fresh writer, key {key}: {e}"));
    }
    let _ = writer.close().await;
    let events = read_all(&client, &name, READ_TIMEOUT).await;
    assert!(
        events.iter().all(|e| e.payload.len() < MIB),
        "the oversize event was stored"
    );
    for key in &keys {
        for prefix in ["before", "fresh"] {
            let want = format!("{prefix}:{key}");
            let n = events
                .iter()
                .filter(|e| e.payload == want.as_bytes())
                .count();
            assert_eq!(n, 1, "{want} read {n} times");
        }
    }

    assert_serves(&client, "bad/after-oversize").await;
}

/// A sealed stream refuses writes (client and CLI) and still reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_stream_refuses_writes() {
    let server = ServerProcess::start(ServerOpts::default()).await;
    let client = server.client().await;
    let sealed = stream_name("bad/sealed");
    client
        .admin()
        .create_stream(&sealed, 2)
        .await
        .expect("create stream");
    let config = WriterConfig::default().writer_id("sealed-w");
    let writer = client.writer(&sealed, config).await.expect("open writer");
    for i in 0..10 {
        write_acked(&writer, &format!("k{i}"), &format!("pre-seal-{i}"))
            .await
            .expect("write before seal");
    }
    let info = client.admin().seal_stream(&sealed).await.expect("seal");
    assert!(info.sealed, "seal_stream answers a sealed stream: {info:?}");
    assert!(
        info.segments.iter().all(|s| s.sealed),
        "segments sealed: {info:?}"
    );
    client
        .admin()
        .seal_stream(&sealed)
        .await
        .expect("seal is idempotent");
    let err = write_acked(&writer, "k0", "post-seal")
        .await
        .expect_err("write to a sealed stream via an open writer");
    assert!(matches!(err, Error::Sealed { .. }), "open writer: {err:?}");
    let _ = writer.close().await;
    let config = WriterConfig::default().writer_id("sealed-w2");
    match client.writer(&sealed, config).await {
        Err(e) => assert!(matches!(e, Error::Sealed { .. }), "new writer: {e:?}"),
        Ok(writer) => {
            let e = write_acked(&writer, "k1", "post-seal")
                .await
                .expect_err("write to a sealed stream via a new writer");
            assert!(matches!(e, Error::Sealed { .. }), "new writer: {e:?}");
        }
    }
    let out = server.cli(&["write", "bad/sealed"], Some(b"post-seal\n"));
    cli_err(&out, "CLI write to a sealed stream", &["sealed"]);
    let events = read_all(&client, &sealed, READ_TIMEOUT).await;
    assert_eq!(events.len(), 10, "a sealed stream still reads");
    assert!(events.iter().all(|e| e.payload.starts_with(b"pre-seal-")));

    assert_serves(&client, "bad/after-sealed").await;
}

/// Raw gRPC requests that bypass the client crate's checks: the server
/// validates on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_validates_raw_requests() {
    let server = ServerProcess::start(ServerOpts::default()).await;
    let url = format!("http://{}", server.addr());
    let mut admin = pb::stream_admin_client::StreamAdminClient::connect(url.clone())
        .await
        .expect("connect admin");
    let pb_name = |scope: &str, stream: &str| {
        Some(pb::StreamName {
            scope: scope.into(),
            stream: stream.into(),
        })
    };
    let long = "n".repeat(256);
    for (scope, stream) in [
        ("bad scope", "x"),
        ("", "x"),
        ("s", ""),
        ("s", long.as_str()),
        ("a/b", "c"),
    ] {
        let status = admin
            .create_stream(pb::CreateStreamRequest {
                name: pb_name(scope, stream),
                segment_count: 1,
                retention: None,
                scaling: None,
            })
            .await
            .expect_err("a bad name is refused by the server");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{scope:?}/{stream:?}: {status:?}"
        );
    }
    let status = admin
        .create_stream(pb::CreateStreamRequest {
            name: None,
            segment_count: 1,
            retention: None,
            scaling: None,
        })
        .await
        .expect_err("a missing name is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    let info = admin
        .create_stream(pb::CreateStreamRequest {
            name: pb_name("raw", "s"),
            segment_count: 1,
            retention: None,
            scaling: None,
        })
        .await
        .expect("create")
        .into_inner();
    let segment_id = info.segments[0].segment_id;

    // Bad framing: a checksum that does not match.
    let mut events = BytesMut::new();
    aquifer_proto::frame::encode_event(&mut events, Some("k"), b"payload");
    let last = events.len() - 1;
    events[last] ^= 0xff;
    let status = raw_append(&url, segment_id, events.freeze(), 1)
        .await
        .expect_err("bad framing is refused");
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "bad crc: {status:?}"
    );

    // An event count that does not match the bytes.
    let mut events = BytesMut::new();
    aquifer_proto::frame::encode_event(&mut events, Some("k"), b"payload");
    let status = raw_append(&url, segment_id, events.freeze(), 2)
        .await
        .expect_err("a wrong event count is refused");
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "wrong count: {status:?}"
    );

    // An oversize event in a message that fits the transport limit.
    let mut events = BytesMut::new();
    aquifer_proto::frame::encode_event(&mut events, None, &vec![b'o'; 8 * MIB + 1024]);
    let status = raw_append(&url, segment_id, events.freeze(), 1)
        .await
        .expect_err("an oversize event is refused");
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "oversize: {status:?}"
    );

    // An unknown segment.
    let mut events = BytesMut::new();
    aquifer_proto::frame::encode_event(&mut events, None, b"x");
    let status = raw_append(&url, 0xdead_beef_0000, events.freeze(), 1)
        .await
        .expect_err("an unknown segment is refused");
    assert_eq!(
        status.code(),
        tonic::Code::NotFound,
        "unknown segment: {status:?}"
    );

    // Nothing bad was stored, and the segment still takes a good batch.
    let mut events = BytesMut::new();
    aquifer_proto::frame::encode_event(&mut events, Some("k"), b"good");
    raw_append(&url, segment_id, events.freeze(), 1)
        .await
        .expect("a good batch after bad ones");
    let client = server.client().await;
    let events = read_all(&client, &stream_name("raw/s"), READ_TIMEOUT).await;
    let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload.as_ref()).collect();
    assert_eq!(payloads, [b"good".as_slice()], "stored events");

    assert_serves(&client, "bad/after-raw").await;
}

/// One append session: setup, one batch; returns the batch's ack or the
/// status that ended the session.
async fn raw_append(
    url: &str,
    segment_id: u64,
    events: Bytes,
    event_count: u32,
) -> Result<pb::AppendAck, tonic::Status> {
    use pb::append_request::Kind as Req;
    use pb::append_response::Kind as Resp;
    let mut client = pb::append_client::AppendClient::connect(url.to_owned())
        .await
        .expect("connect append")
        .max_encoding_message_size(64 * MIB)
        .max_decoding_message_size(64 * MIB);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::AppendRequest {
        kind: Some(Req::Setup(pb::SetupAppend {
            segment_id,
            writer_id: format!("raw-{segment_id}-{}", rand::random::<u32>()),
            ..Default::default()
        })),
    })
    .await
    .expect("queue setup");
    tx.send(pb::AppendRequest {
        kind: Some(Req::Batch(pb::AppendBatch {
            first_event_number: 1,
            event_count,
            events,
        })),
    })
    .await
    .expect("queue batch");
    let call = async {
        let mut responses = client
            .append_session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        loop {
            match responses.message().await? {
                Some(pb::AppendResponse {
                    kind: Some(Resp::Setup(_)),
                }) => continue,
                Some(pb::AppendResponse {
                    kind: Some(Resp::Ack(ack)),
                }) => return Ok(ack),
                Some(other) => panic!("unexpected append response {other:?}"),
                None => panic!("the append session ended without an ack or a status"),
            }
        }
    };
    let res = tokio::time::timeout(ACK_TIMEOUT, call)
        .await
        .expect("append session answered in time");
    drop(tx);
    res
}

/// Garbage bytes, a half HTTP/2 preface and garbage frames on the gRPC port:
/// the node survives and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_wire_does_not_hurt_the_node() {
    let seed = test_seed("garbage_on_the_wire_does_not_hurt_the_node");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut server = ServerProcess::start(ServerOpts::default()).await;
    let addr = server.addr();
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    let garbage =
        |rng: &mut StdRng, n: usize| -> Vec<u8> { (0..n).map(|_| rng.random()).collect() };

    // Several KiB of random bytes on fresh connections.
    for _ in 0..5 {
        let n = rng.random_range(1024..16 * 1024);
        let bytes = garbage(&mut rng, n);
        send_and_drain(&addr, &bytes).await;
    }
    // Random bytes after a valid preface (garbage frames).
    for _ in 0..5 {
        let n = rng.random_range(64..8 * 1024);
        let mut bytes = PREFACE.to_vec();
        bytes.extend(garbage(&mut rng, n));
        send_and_drain(&addr, &bytes).await;
    }
    // A frame header announcing a huge frame, then nothing.
    let mut huge = PREFACE.to_vec();
    huge.extend([0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01]);
    send_and_drain(&addr, &huge).await;

    // Half a preface on connections that stay open while others are served.
    let mut half_open = Vec::new();
    for _ in 0..8 {
        let mut conn = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        conn.write_all(&PREFACE[..PREFACE.len() / 2])
            .await
            .expect("write half preface");
        half_open.push(conn);
    }
    let client = server.client().await;
    assert_serves(&client, "bad/while-half-open").await;
    drop(half_open);

    // Many garbage connections at once.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let n = rng.random_range(1..4096);
        let bytes = garbage(&mut rng, n);
        let addr = addr.clone();
        tasks.push(tokio::spawn(
            async move { send_and_drain(&addr, &bytes).await },
        ));
    }
    for t in tasks {
        t.await.expect("garbage task");
    }

    assert!(
        server.try_wait().is_none(),
        "the node exited after garbage input"
    );
    let client = server.client().await;
    assert_serves(&client, "bad/after-garbage").await;
    let stderr = server.stderr_text();
    assert!(!stderr.contains("panicked"), "the node panicked:\n{stderr}");
}

/// Sends `bytes` on a fresh connection, closes the write side and reads
/// whatever comes back until the node closes or 5 s pass.
async fn send_and_drain(addr: &str, bytes: &[u8]) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The node may close on the first bad byte: a failed write is fine.
    let _ = conn.write_all(bytes).await;
    let _ = conn.shutdown().await;
    let mut buf = vec![0u8; 64 * 1024];
    let drain = async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
}
