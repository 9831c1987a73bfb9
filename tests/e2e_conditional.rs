//! The synchronizer's building blocks against the real binary. Conditional
//! appends: two writers race for the same segment length round after round
//! and exactly one wins each round (the loser learns the actual length);
//! retries are duplicates, never applied twice; the same holds across
//! `kill -9` of the segment's leader in a 3-node cluster; and `aquifer
//! write --expect-length` says clearly when the length is not the one
//! expected. Truncation: at any event boundary, also inside a tier-2
//! chunk, never inside an event, never backward.

use aquifer_testkit as common;

use std::time::Duration;

use aquifer_client::{Appended, Client, Error, SegmentWriter};
use futures::TryStreamExt;

use common::{
    cli_err, cli_ok, stream_name, wait_all_in_tier2, ServerOpts, ServerProcess, TestCluster,
};

/// Rounds of the single-node race.
const ROUNDS: u64 = 200;

/// One racer: its writer and the number of its next event.
struct Racer {
    name: &'static str,
    writer: SegmentWriter,
    next: i64,
}

impl Racer {
    /// This round's append at `length`, resent as is (same number, length
    /// and bytes) after every retryable failure, until the outcome is known.
    async fn attempt(&self, round: u64, length: u64) -> Result<Appended, Error> {
        let payload = format!("{round}:{}", self.name);
        loop {
            match self
                .writer
                .append_conditional(self.next, length, None, payload.clone())
                .await
            {
                Err(e) if e.is_retryable() => {
                    eprintln!("{} round {round}: {e}; resending", self.name);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }
}

/// Races the two for `rounds` on a segment `length` bytes long: each round
/// both append at the same length at once. Returns each round's winner and
/// the final length.
async fn race(
    racers: &mut [Racer; 2],
    rounds: std::ops::Range<u64>,
    mut length: u64,
) -> (Vec<&'static str>, u64) {
    let mut winners = Vec::new();
    let (mut slowest, mut duplicates) = (Duration::ZERO, 0);
    for round in rounds.clone() {
        let started = std::time::Instant::now();
        let (ra, rb) = tokio::join!(
            racers[0].attempt(round, length),
            racers[1].attempt(round, length)
        );
        let (winner, appended, loser) = match (ra, rb) {
            (Ok(a), Err(lost)) => (0, a, lost),
            (Err(lost), Ok(b)) => (1, b, lost),
            other => panic!("round {round}: not exactly one winner: {other:?}"),
        };
        assert_eq!(
            appended.offset, length,
            "round {round}: at the length raced for"
        );
        match loser {
            Error::ConditionFailed { actual_length, .. } => assert_eq!(
                actual_length, appended.length,
                "round {round}: the loser sees the winner's length"
            ),
            other => panic!("round {round}: the loser got {other:?}"),
        }
        racers[winner].next += 1;
        winners.push(racers[winner].name);
        length = appended.length;
        slowest = slowest.max(started.elapsed());
        duplicates += usize::from(appended.duplicate);
    }
    eprintln!("rounds {rounds:?}: slowest {slowest:?}, {duplicates} won by a resent append");
    (winners, length)
}

fn racers(client: &Client, segment_id: u64) -> [Racer; 2] {
    ["a", "b"].map(|name| Racer {
        name,
        writer: client.segment_writer(segment_id, name).expect("writer"),
        next: 1,
    })
}

/// The segment's events, read from offset 0, as "round:winner" strings.
async fn payloads(client: &Client, segment_id: u64) -> Vec<String> {
    payloads_from(client, segment_id, 0).await
}

fn expected(winners: &[&str]) -> Vec<String> {
    winners
        .iter()
        .enumerate()
        .map(|(round, w)| format!("{round}:{w}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_conditional_appends_have_one_winner_per_round() {
    let server = ServerProcess::start(ServerOpts::default()).await;
    let client = server.client().await;
    let name = stream_name("conditional/race");
    let info = client
        .admin()
        .create_stream(&name, 1)
        .await
        .expect("create");
    let segment_id = info.segments[0].segment_id;
    let mut racers = racers(&client, segment_id);
    let (winners, length) = race(&mut racers, 0..ROUNDS, 0).await;
    assert!(
        winners.contains(&"a") && winners.contains(&"b"),
        "both win some rounds: {winners:?}"
    );
    assert_eq!(payloads(&client, segment_id).await, expected(&winners));

    // The last winner's retry is a duplicate at the same place; the last
    // loser's stale request is still refused (its number was never used).
    let (last_winner, last_loser) = if winners[winners.len() - 1] == "a" {
        (&racers[0], &racers[1])
    } else {
        (&racers[1], &racers[0])
    };
    let round = ROUNDS - 1;
    let payload = format!("{round}:{}", last_winner.name);
    let before = length - (payload.len() as u64 + 10); // framed: 8 header + 2 key length
    let again = last_winner
        .writer
        .append_conditional(last_winner.next - 1, before, None, payload)
        .await
        .expect("retry of the last winner");
    assert!(again.duplicate && again.offset == before && again.length == length);
    assert!(matches!(
        last_loser.attempt(round, before).await,
        Err(Error::ConditionFailed { actual_length, .. }) if actual_length == length
    ));
    // A number that is not next is refused as the caller's mistake.
    assert!(matches!(
        last_loser
            .writer
            .append_conditional(last_loser.next + 1, length, None, "x")
            .await,
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(payloads(&client, segment_id).await.len() as u64, ROUNDS);

    // Sealed refuses, like every append.
    client.admin().seal_stream(&name).await.expect("seal");
    assert!(matches!(
        last_loser.attempt(ROUNDS, length).await,
        Err(Error::Sealed(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_race_survives_kill9_of_the_segment_leader() {
    let mut cluster = TestCluster::start(3, "", "").await;
    let client = Client::connect(&cluster.node(1).addr())
        .await
        .expect("connect");
    let name = stream_name("conditional/failover");
    let info = client
        .admin()
        .create_stream(&name, 1)
        .await
        .expect("create");
    let segment = &info.segments[0];
    let segment_id = segment.segment_id;
    let group = aquifer_proto::wire::container_group(segment.container);
    let mut racers = racers(&client, segment_id);
    let (mut winners, length) = race(&mut racers, 0..40, 0).await;

    // The leader dies while a round is in flight: both racers resend with
    // the same numbers until the new leader answers.
    let victim = cluster.leader_of(&group).await;
    let pid = cluster.node(victim).pid().expect("running") as libc::pid_t;
    let kill = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(3)).await;
        // SAFETY: kill(2) on the PID of our own child; it is reaped only
        // after this task ended (kill9 below), so the PID cannot be reused.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let (more, _) = race(&mut racers, 40..100, length).await;
    kill.await.expect("kill task");
    cluster.node(victim).kill9();
    winners.extend(more);
    let new_leader = cluster.leader_of(&group).await;
    assert_ne!(new_leader, victim);

    let reader = Client::connect(&cluster.node(new_leader).addr())
        .await
        .expect("connect");
    assert_eq!(
        payloads(&reader, segment_id).await,
        expected(&winners),
        "each round's winner exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_write_expect_length() {
    let server = ServerProcess::start(ServerOpts::default()).await;
    let out = server.cli(&["stream", "create", "conditional/cli"], None);
    cli_ok(&out, "create");
    let write = |expect: &str, number: &str, line: &str| {
        server.cli(
            &[
                "write",
                "conditional/cli",
                "--writer-id",
                "cli",
                "--expect-length",
                expect,
                "--event-number",
                number,
            ],
            Some(line.as_bytes()),
        )
    };
    let out = write("0", "1", "first\n");
    cli_ok(&out, "first conditional write");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("at offset 0"), "{said}");
    let length = 8 + 2 + "first".len();

    let line = cli_err(
        &write("0", "2", "second\n"),
        "a stale length",
        &["not the expected 0", &format!("is {length} bytes long")],
    );
    assert!(line.contains("not applied"), "{line}");
    cli_ok(
        &write(&length.to_string(), "2", "second\n"),
        "at the length",
    );
    // A retry of the first is a duplicate, not a second copy.
    let out = write("0", "1", "first\n");
    cli_ok(&out, "retry");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already written"));
    cli_err(
        &write("0", "3", "a\nb\n"),
        "two lines",
        &["exactly one event"],
    );
    let out = server.cli(&["read", "conditional/cli"], None);
    assert_eq!(cli_ok(&out, "read"), "first\nsecond\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_at_event_boundaries_inside_a_chunk() {
    let config = "[tier2]\nchunk_bytes = 65536\nflush_interval_ms = 100\n";
    let server = ServerProcess::start(ServerOpts::with_config(config)).await;
    let client = server.client().await;
    let name = stream_name("conditional/truncate");
    let writer = common::stream_with_writer(&client, &name, 1).await;
    for i in 0..50 {
        writer
            .write_event(None, format!("event-{i:03}"))
            .await
            .expect("queue");
    }
    writer.close().await.expect("written");
    wait_all_in_tier2(&client, &name, Duration::from_secs(30)).await;
    let admin = client.admin();
    let segment = admin
        .describe_stream(&name)
        .await
        .expect("describe")
        .segments[0]
        .clone();
    let (id, length) = (segment.segment_id, segment.length);
    assert_eq!(segment.chunk_count, 1, "{segment:?}");
    let event = (8 + 2 + "event-000".len()) as u64;

    // Inside the chunk, at the 11th event: reads start there.
    assert_eq!(
        admin
            .truncate_segment(id, 10 * event)
            .await
            .expect("truncate"),
        10 * event
    );
    let rest = payloads_from(&client, id, 10 * event).await;
    assert_eq!(rest.len(), 40);
    assert_eq!(rest[0], "event-010");
    assert!(matches!(
        client.segment_reader(id, 0, false).try_next().await,
        Err(Error::OutOfRange(_))
    ));
    // Inside an event, past the end: refused; backward: nothing changes.
    let inside = admin.truncate_segment(id, 10 * event + 1).await;
    assert!(
        matches!(&inside, Err(Error::InvalidArgument(m)) if m.contains("not an event boundary")),
        "{inside:?}"
    );
    assert!(matches!(
        admin.truncate_segment(id, length + 1).await,
        Err(Error::OutOfRange(_))
    ));
    assert_eq!(
        admin.truncate_segment(id, event).await.expect("backward"),
        10 * event
    );
    // To the end: the chunk leaves the segment and tier-2.
    assert_eq!(
        admin.truncate_segment(id, length).await.expect("all"),
        length
    );
    let segment = admin
        .describe_stream(&name)
        .await
        .expect("describe")
        .segments[0]
        .clone();
    assert_eq!((segment.head_offset, segment.chunk_count), (length, 0));
    // Its container's objects (other containers hold the audit log's).
    let chunks = server
        .data_dir()
        .join("tier2")
        .join("chunks")
        .join(format!("c{}", segment.container));
    let objects: Vec<_> = std::fs::read_dir(chunks)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(objects.is_empty(), "deleted from tier-2: {objects:?}");
    assert!(payloads_from(&client, id, length).await.is_empty());
}

/// The segment's payloads from `offset` on.
async fn payloads_from(client: &Client, segment_id: u64, offset: u64) -> Vec<String> {
    client
        .segment_reader(segment_id, offset, false)
        .map_ok(|e| String::from_utf8(e.payload.to_vec()).expect("utf-8"))
        .try_collect()
        .await
        .expect("read")
}

/// A plain gRPC client gets a clear status for every bad request, and the
/// condition's refusal carries its reason and the actual length as metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_segment_requests_get_clear_statuses() {
    use aquifer_proto::v1::segments_client::SegmentsClient;
    use aquifer_proto::v1::{AppendConditionalRequest, TruncateSegmentRequest};
    use aquifer_proto::wire;
    use tonic::Code;

    let server = ServerProcess::start(ServerOpts::default()).await;
    let client = server.client().await;
    let info = client
        .admin()
        .create_stream(&stream_name("conditional/raw"), 1)
        .await
        .expect("create");
    let segment_id = info.segments[0].segment_id;
    let mut raw = SegmentsClient::connect(format!("http://{}", server.addr()))
        .await
        .expect("connect");
    let mut one = bytes::BytesMut::new();
    aquifer_proto::frame::encode_event(&mut one, None, b"x");
    let one = one.freeze();
    let good = AppendConditionalRequest {
        segment_id,
        writer_id: "raw".into(),
        event_number: 1,
        expected_length: 0,
        event: one.clone(),
    };
    let mut two = one.to_vec();
    two.extend_from_slice(&one);
    let cases = [
        (
            "empty writer id",
            AppendConditionalRequest {
                writer_id: String::new(),
                ..good.clone()
            },
            Code::InvalidArgument,
            "writer id",
        ),
        (
            "event number 0",
            AppendConditionalRequest {
                event_number: 0,
                ..good.clone()
            },
            Code::InvalidArgument,
            "start at 1",
        ),
        (
            "bad framing",
            AppendConditionalRequest {
                event: bytes::Bytes::from_static(b"garbage"),
                ..good.clone()
            },
            Code::InvalidArgument,
            "malformed",
        ),
        (
            "two events",
            AppendConditionalRequest {
                event: two.into(),
                ..good.clone()
            },
            Code::InvalidArgument,
            "holds 2",
        ),
        (
            "no segment",
            AppendConditionalRequest {
                segment_id: segment_id + 1000,
                ..good.clone()
            },
            Code::NotFound,
            "not found",
        ),
        (
            "impossible length",
            AppendConditionalRequest {
                expected_length: u64::MAX,
                ..good.clone()
            },
            Code::InvalidArgument,
            "largest segment length",
        ),
    ];
    for (what, req, code, needle) in cases {
        let status = raw.append_conditional(req).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(status.message().contains(needle), "{what}: {status:?}");
    }
    let applied = raw
        .append_conditional(good.clone())
        .await
        .expect("good")
        .into_inner();
    assert_eq!(
        (applied.offset, applied.length, applied.duplicate),
        (0, one.len() as u64, false)
    );
    let refused = raw
        .append_conditional(AppendConditionalRequest {
            event_number: 2,
            ..good
        })
        .await
        .expect_err("stale length");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let metadata = refused.metadata();
    assert_eq!(
        metadata
            .get(wire::REASON_METADATA_KEY)
            .and_then(|v| v.to_str().ok()),
        Some(wire::REASON_CONDITION_FAILED)
    );
    assert_eq!(
        metadata
            .get(wire::SEGMENT_LENGTH_METADATA_KEY)
            .and_then(|v| v.to_str().ok()),
        Some(one.len().to_string().as_str())
    );
    let status = raw
        .truncate_segment(TruncateSegmentRequest {
            segment_id: segment_id + 1000,
            head_offset: 0,
        })
        .await
        .expect_err("no segment");
    assert_eq!(status.code(), Code::NotFound);
}
