//! Transactions end to end on the real binary: events invisible until
//! commit, then all visible, contiguous in each segment and in per-key
//! order; abort and timeout discard them; commit and abort are idempotent
//! and refuse each other; another process commits by id; concurrent
//! transactions and plain writers on the same keys; `kill -9` of a single
//! node and of a container's leader in a 3-node cluster during commit leave
//! each transaction whole or absent; the `txn` commands and `write --txn`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use aquifer_client::{Client, Error, Event, ReaderConfig, StartFrom, StreamName, TransactionState};
use aquifer_testkit as common;
use common::{cli_err, cli_ok, stream_name, ServerOpts, ServerProcess, TestCluster};
use futures::TryStreamExt;

/// Events of one test payload `key:seq:writer`; a transaction's writer
/// field is `t<name>`.
fn parse(e: &Event) -> common::KeyedEvent {
    common::parse_keyed(e)
}

/// Writes `per_key` events of each of `keys` keys into a new transaction
/// named `tag` (payload `k:seq:tag`); returns it, uncommitted.
async fn write_txn(
    client: &Client,
    name: &StreamName,
    tag: &str,
    keys: u64,
    per_key: u64,
) -> aquifer_client::Transaction {
    let w = client
        .transactional_writer(name, format!("w-{tag}"))
        .expect("transactional writer");
    let txn = w.begin().await.expect("begin");
    for seq in 0..per_key {
        for k in 0..keys {
            let key = format!("k{k}");
            txn.write(Some(&key), common::keyed_payload(&key, seq, tag))
                .await
                .expect("write");
        }
    }
    txn.flush().await.expect("flush");
    txn
}

/// Checks that in every segment the events of each transaction (writer
/// field starting with `t`) form one contiguous run, in per-key order
/// within it; returns the events per transaction tag.
fn check_contiguous(events: &[Event]) -> HashMap<String, Vec<common::KeyedEvent>> {
    let mut by_segment: BTreeMap<u64, Vec<&Event>> = BTreeMap::new();
    for e in events {
        by_segment.entry(e.position.segment_id).or_default().push(e);
    }
    let mut per_txn: HashMap<String, Vec<common::KeyedEvent>> = HashMap::new();
    for (segment, evs) in by_segment {
        let mut finished: HashSet<String> = HashSet::new();
        let mut current: Option<String> = None;
        let mut last_seq: HashMap<(String, String), u64> = HashMap::new();
        for e in evs {
            let k = parse(e);
            if current.as_deref() != Some(k.writer.as_str()) {
                if let Some(c) = current.take() {
                    if c.starts_with('t') {
                        finished.insert(c);
                    }
                }
                assert!(
                    !finished.contains(&k.writer),
                    "segment {segment}: transaction {} is not contiguous (resumes at {:?})",
                    k.writer,
                    e.position
                );
                current = Some(k.writer.clone());
            }
            // Plain writers' order is checked by `per_key_sequences`.
            let ordered = k.writer.starts_with('t');
            if let Some(prev) = last_seq
                .insert((k.writer.clone(), k.key.clone()), k.seq)
                .filter(|_| ordered)
            {
                assert!(
                    k.seq > prev,
                    "segment {segment}: {} key {} seq {} after {prev}",
                    k.writer,
                    k.key,
                    k.seq
                );
            }
            if k.writer.starts_with('t') {
                per_txn.entry(k.writer.clone()).or_default().push(k);
            }
        }
    }
    per_txn
}

/// A node serving `/metrics` too; its metrics port.
async fn metered_server() -> (ServerProcess, u16) {
    let port = common::free_port();
    let config = format!("metrics_listen = \"127.0.0.1:{port}\"\n");
    (
        ServerProcess::start(ServerOpts::with_config(&config)).await,
        port,
    )
}

/// The events of `name` from its head (no follow).
async fn read_all(client: &Client, name: &StreamName) -> Vec<Event> {
    common::read_all(client, name, Duration::from_secs(60)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commit_shows_everything_at_once_abort_nothing_and_both_are_idempotent() {
    let server = ServerProcess::start(ServerOpts::default()).await;
    let client = server.client().await;
    let name = stream_name("txn/basic");
    client
        .admin()
        .create_stream(&name, 4)
        .await
        .expect("create");
    // A tailing reader from the start: it must see nothing before commit.
    let config = ReaderConfig::default().start(StartFrom::Head).follow(true);
    let mut tail = client.reader(&name, config).await.expect("reader");

    let (keys, per_key) = (16u64, 125u64);
    let txn = write_txn(&client, &name, "t1", keys, per_key).await;
    let id = txn.id().to_string();
    assert_eq!(txn.info().parts.len(), 4, "one part per segment");
    let early = tokio::time::timeout(Duration::from_millis(500), tail.try_next()).await;
    assert!(
        early.is_err(),
        "an event was visible before commit: {early:?}"
    );
    assert!(read_all(&client, &name).await.is_empty());
    let status = client.transaction(&name, &id).await.expect("resume");
    assert_eq!(
        status.status().await.expect("status").state,
        TransactionState::Open
    );

    let info = txn.commit().await.expect("commit");
    assert_eq!(info.state, TransactionState::Committed);
    let total = (keys * per_key) as usize;
    let mut tailed = Vec::new();
    while tailed.len() < total {
        let e = tokio::time::timeout(Duration::from_secs(10), tail.try_next())
            .await
            .expect("tailing reader got the commit")
            .expect("read")
            .expect("an event");
        tailed.push(e);
    }
    let events = read_all(&client, &name).await;
    assert_eq!(events.len(), total);
    let per_txn = check_contiguous(&events);
    assert_eq!(per_txn["t1"].len(), total);
    check_contiguous(&tailed);

    // Idempotent commit; abort of a committed one is refused.
    let again = client.transaction(&name, &id).await.expect("resume");
    assert_eq!(
        again.commit().await.expect("commit again").state,
        TransactionState::Committed
    );
    let refused = client.transaction(&name, &id).await.unwrap().abort().await;
    assert!(
        matches!(refused, Err(Error::TransactionCommitted(_))),
        "{refused:?}"
    );

    // An aborted transaction's events never appear; abort is idempotent
    // and commit refused.
    let t2 = write_txn(&client, &name, "t2", keys, 10).await;
    let id2 = t2.id().to_string();
    assert_eq!(
        t2.abort().await.expect("abort").state,
        TransactionState::Aborted
    );
    let again = client.transaction(&name, &id2).await.unwrap();
    assert_eq!(
        again.abort().await.expect("abort again").state,
        TransactionState::Aborted
    );
    let refused = client
        .transaction(&name, &id2)
        .await
        .unwrap()
        .commit()
        .await;
    assert!(
        matches!(refused, Err(Error::TransactionAborted(_))),
        "{refused:?}"
    );
    // Writing to it is refused too.
    let late = client.transaction(&name, &id2).await.unwrap();
    let w = late.write(Some("k0"), "late").await.expect("queued");
    assert!(matches!(w.await, Err(Error::TransactionNotOpen(_))));
    assert_eq!(read_all(&client, &name).await.len(), total);

    // Another client commits a transaction it did not begin, by id.
    let t3 = write_txn(&client, &name, "t3", keys, 5).await;
    let id3 = t3.id().to_string();
    drop(t3);
    let other = server.client().await;
    let resumed = other.transaction(&name, &id3).await.expect("resume");
    assert_eq!(
        resumed.commit().await.expect("commit").state,
        TransactionState::Committed
    );
    let events = read_all(&client, &name).await;
    let per_txn = check_contiguous(&events);
    assert_eq!(per_txn["t3"].len(), (keys * 5) as usize);
    assert!(!per_txn.contains_key("t2"));
    let unknown = client.transaction(&name, &"0".repeat(32)).await;
    assert!(matches!(unknown, Err(Error::NotFound(_))), "{unknown:?}");
}

/// Waits until `name`'s current epoch is at least `epoch` (a scale put in
/// force); returns its active segments sorted by key.
async fn wait_epoch(
    client: &Client,
    name: &StreamName,
    epoch: u64,
) -> Vec<aquifer_client::SegmentInfo> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let info = client
            .admin()
            .describe_stream(name)
            .await
            .expect("describe");
        if info.epoch >= epoch {
            let mut active: Vec<_> = info.active_segments().cloned().collect();
            active.sort_by(|a, b| a.key_low.total_cmp(&b.key_low));
            return active;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "epoch {epoch} never came: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A transaction open across a split and then a merge of its segments
/// commits every event exactly once, contiguously in each segment and in
/// per-key order, while a plain writer writes the same keys throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_open_across_a_split_and_a_merge_commits_whole() {
    let server = ServerProcess::start(ServerOpts::default()).await;
    let client = server.client().await;
    let name = stream_name("txn/scaling");
    client
        .admin()
        .create_stream(&name, 2)
        .await
        .expect("create");
    let (keys, per_key) = (32u64, 40u64);
    // Its events say writer "w" (`write_paced`).
    let plain = tokio::spawn({
        let (client, name) = (client.clone(), name.clone());
        async move { common::write_paced(&client, &name, "plain", keys, 0..60, 2_000).await }
    });
    let txn = write_txn(&client, &name, "tx", keys, per_key / 2).await;
    let active = wait_epoch(&client, &name, 0).await;
    client
        .admin()
        .scale_stream(
            &name,
            &aquifer_client::Scale::default().split(active[0].segment_id, 2),
        )
        .await
        .expect("split");
    let active = wait_epoch(&client, &name, 1).await;
    // More writes into the open transaction after the split: they still go
    // to its first parts (the transaction's segments as it began).
    for seq in per_key / 2..per_key {
        for k in 0..keys {
            let key = format!("k{k}");
            txn.write(Some(&key), common::keyed_payload(&key, seq, "tx"))
                .await
                .expect("write");
        }
    }
    client
        .admin()
        .scale_stream(
            &name,
            &aquifer_client::Scale::default().merge([active[1].segment_id, active[2].segment_id]),
        )
        .await
        .expect("merge");
    let active: HashSet<u64> = wait_epoch(&client, &name, 2)
        .await
        .iter()
        .map(|g| g.segment_id)
        .collect();
    let info = txn.commit().await.expect("commit");
    assert_eq!(info.state, TransactionState::Committed);
    // Its parts moved to the successors of the segments the scales sealed.
    assert!(
        info.parts.iter().all(|p| active.contains(&p.segment_id)),
        "parts {:?}, active {active:?}",
        info.parts
    );
    plain.await.expect("plain writer");
    let events = read_all(&client, &name).await;
    let per_txn = check_contiguous(&events);
    let tx = &per_txn["tx"];
    assert_eq!(tx.len(), (keys * per_key) as usize, "every event once");
    let mut by_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for e in tx {
        by_key.entry(&e.key).or_default().push(e.seq);
    }
    for (k, seqs) in by_key {
        assert_eq!(
            seqs,
            (0..per_key).collect::<Vec<_>>(),
            "key {k}: in order, once"
        );
    }
    // Plain events kept their per-key order too.
    let plain: Vec<Event> = events
        .into_iter()
        .filter(|e| parse(e).writer == "w")
        .collect();
    assert_eq!(plain.len(), (keys * 60) as usize);
    common::per_key_sequences(&plain);
    // After the commit the stream scales again freely.
    let active = wait_epoch(&client, &name, 2).await;
    client
        .admin()
        .scale_stream(
            &name,
            &aquifer_client::Scale::default().split(active[0].segment_id, 2),
        )
        .await
        .expect("a later split");
}

/// A transaction not pinged is aborted after its timeout and its events
/// never appear; a pinged one outlives its timeout and commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_without_pings_times_out_and_one_with_pings_lives() {
    let (server, port) = metered_server().await;
    let client = server.client().await;
    let name = stream_name("txn/timeout");
    client
        .admin()
        .create_stream(&name, 2)
        .await
        .expect("create");
    let w = client
        .transactional_writer(&name, "w-timeout")
        .expect("writer")
        .timeout(Duration::from_millis(1500));
    let silent = w.begin().await.expect("begin");
    let pinged = w.begin().await.expect("begin");
    for i in 0..50u64 {
        let key = format!("k{}", i % 4);
        silent
            .write(Some(&key), common::keyed_payload(&key, i, "tsilent"))
            .await
            .expect("write");
        pinged
            .write(Some(&key), common::keyed_payload(&key, i, "tpinged"))
            .await
            .expect("write");
    }
    silent.flush().await.expect("flush");
    pinged.flush().await.expect("flush");
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        pinged.ping().await.expect("ping");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let status = silent.status().await.expect("status");
    assert_eq!(status.state, TransactionState::Aborted, "{status:?}");
    assert_eq!(status.reason, "timed out");
    let refused = silent.commit().await;
    assert!(
        matches!(refused, Err(Error::TransactionAborted(_))),
        "{refused:?}"
    );
    assert_eq!(
        pinged.commit().await.expect("commit").state,
        TransactionState::Committed
    );
    let events = read_all(&client, &name).await;
    let per_txn = check_contiguous(&events);
    assert_eq!(per_txn["tpinged"].len(), 50);
    assert!(
        !per_txn.contains_key("tsilent"),
        "a timed-out event appeared"
    );
    // The metadata leader counted it all; its counters and the open gauge
    // follow within a pass of its driver.
    let expected = [
        ("aquifer_transaction_timeouts_total", 1.0),
        ("aquifer_transaction_aborts_total", 1.0),
        ("aquifer_transaction_commits_total", 1.0),
        ("aquifer_transactions_open", 0.0),
    ];
    common::wait_for(
        "the transaction metrics",
        Duration::from_secs(5),
        || async {
            let m = common::metrics::samples(&common::metrics::scrape(port).await);
            expected.iter().all(|(k, v)| m.get(*k) == Some(v))
                && m.get("aquifer_transaction_commit_seconds_count") >= Some(&1.0)
        },
    )
    .await;
}

/// Concurrent transactions and plain writers on the same keys: each
/// transaction lands contiguously in each segment, per-key order holds
/// within it, and the plain writers' order holds too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transactions_and_plain_writers_on_the_same_keys() {
    let server = ServerProcess::start(ServerOpts::default()).await;
    let client = server.client().await;
    let name = stream_name("txn/concurrent");
    client
        .admin()
        .create_stream(&name, 3)
        .await
        .expect("create");
    let keys = 12u64;
    // Its events say writer "w" (`write_paced`).
    let plain = tokio::spawn({
        let (client, name) = (client.clone(), name.clone());
        async move { common::write_paced(&client, &name, "plain", keys, 0..400, 4_000).await }
    });
    let txns: Vec<_> = (0..6)
        .map(|i| {
            let (client, name) = (client.clone(), name.clone());
            tokio::spawn(async move {
                let mut committed = Vec::new();
                for round in 0..4 {
                    let tag = format!("t{i}r{round}");
                    let txn = write_txn(&client, &name, &tag, keys, 20).await;
                    if (i + round) % 3 == 2 {
                        txn.abort().await.expect("abort");
                    } else {
                        txn.commit().await.expect("commit");
                        committed.push(tag);
                    }
                }
                committed
            })
        })
        .collect();
    let mut committed = HashSet::new();
    for t in txns {
        committed.extend(t.await.expect("transactions"));
    }
    plain.await.expect("plain writer");
    let events = read_all(&client, &name).await;
    let per_txn = check_contiguous(&events);
    let seen: HashSet<String> = per_txn.keys().cloned().collect();
    assert_eq!(
        seen, committed,
        "exactly the committed transactions are visible"
    );
    for (tag, evs) in &per_txn {
        assert_eq!(evs.len(), (keys * 20) as usize, "{tag} whole");
    }
    let plain: Vec<Event> = events
        .iter()
        .filter(|e| parse(e).writer == "w")
        .cloned()
        .collect();
    assert_eq!(plain.len(), (keys * 400) as usize);
    common::per_key_sequences(&plain);
}

/// Sends SIGKILL to `pid` after `delay`, from a task (the test reaps the
/// process afterwards with `kill9`, so the PID cannot be reused meanwhile).
fn kill_after(pid: u32, delay: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        // SAFETY: kill(2) on the PID of our own child, not yet reaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    })
}

/// How many of a transaction's events each of its parts' segments gets:
/// the events of `keys` keys, `per_key` each, routed by key.
fn expected_per_segment(
    txn: &aquifer_client::Transaction,
    keys: u64,
    per_key: u64,
) -> HashMap<u64, usize> {
    let mut out = HashMap::new();
    for k in 0..keys {
        let pos = aquifer_client::key_position(&format!("k{k}"));
        let part = txn
            .info()
            .parts
            .iter()
            .filter(|p| p.key_low <= pos)
            .max_by(|a, b| a.key_low.total_cmp(&b.key_low))
            .expect("a part");
        *out.entry(part.segment_id).or_default() += per_key as usize;
    }
    out
}

/// Checks that in each segment transaction `tag` is all there or absent;
/// returns how many of its events are visible.
fn whole_or_absent(events: &[Event], tag: &str, expected: &HashMap<u64, usize>) -> usize {
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for e in events.iter().filter(|e| parse(e).writer == tag) {
        *seen.entry(e.position.segment_id).or_default() += 1;
    }
    for (seg, n) in &seen {
        assert_eq!(
            Some(n),
            expected.get(seg),
            "{tag}: segment {seg} holds part of the transaction"
        );
    }
    seen.values().sum()
}

/// Waits until transaction `id` is committed (the driver finishes a
/// decided commit after a restart or failover).
async fn wait_committed(client: &Client, name: &StreamName, id: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(t) = client.transaction(name, id).await {
            match t.status().await.map(|i| i.state) {
                Ok(TransactionState::Committed) => return,
                Ok(TransactionState::Open) => {
                    let _ = t.commit().await;
                }
                _ => {}
            }
        }
        assert!(std::time::Instant::now() < deadline, "{id} never committed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `kill -9` of a single node while a commit is in flight, at a different
/// moment each round: after the restart each transaction is whole or absent
/// in every segment; a decided commit finishes by itself, an undecided one
/// commits when asked again; nothing is duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_during_commit_leaves_each_transaction_whole_or_absent() {
    let mut server = ServerProcess::start(ServerOpts::default()).await;
    let name = stream_name("txn/crash");
    server
        .client()
        .await
        .admin()
        .create_stream(&name, 4)
        .await
        .expect("create");
    let (keys, per_key) = (16u64, 200u64);
    let total = (keys * per_key) as usize;
    let (mut decided, mut undecided) = (0, 0);
    for round in 0..6u64 {
        let client = server.client().await;
        let tag = format!("t{round}");
        let txn = write_txn(&client, &name, &tag, keys, per_key).await;
        let (id, expected) = (
            txn.id().to_string(),
            expected_per_segment(&txn, keys, per_key),
        );
        let pid = server.pid().expect("running");
        let commit = tokio::spawn(txn.commit());
        kill_after(pid, Duration::from_micros(round * 1500))
            .await
            .expect("kill");
        server.kill9();
        commit.abort();
        server.restart().await;
        let client = server.client().await;
        let events = read_all(&client, &name).await;
        let visible = whole_or_absent(&events, &tag, &expected);
        let state = client
            .transaction(&name, &id)
            .await
            .expect("resume")
            .status()
            .await
            .expect("status")
            .state;
        eprintln!("round {round}: after the restart {state}, {visible} of {total} visible");
        match state {
            TransactionState::Open => undecided += 1,
            TransactionState::Committing | TransactionState::Committed => decided += 1,
            other => panic!("{tag} is {other} after a crash during its commit"),
        }
        wait_committed(&client, &name, &id).await;
        let events = read_all(&client, &name).await;
        assert_eq!(
            whole_or_absent(&events, &tag, &expected),
            total,
            "{tag} whole once committed"
        );
        check_contiguous(&events);
    }
    eprintln!("commits decided before the kill: {decided}, undecided: {undecided}");
}

/// A 3-node cluster: the leader of a container holding a part (and, in the
/// last round, the metadata leader) is killed with `kill -9` while a commit
/// is in flight; the client's commit (retried, it is idempotent) succeeds
/// and every event is visible exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_failover_during_commit_delivers_every_event_once() {
    let mut cluster = TestCluster::start(3, "", "").await;
    let name = stream_name("txn/failover");
    let admin = Client::connect(&cluster.node(1).addr())
        .await
        .expect("connect");
    let info = admin.admin().create_stream(&name, 4).await.expect("create");
    let (keys, per_key) = (16u64, 150u64);
    let total = (keys * per_key) as usize;
    for round in 0..3u64 {
        let group = if round == 2 {
            aquifer_proto::wire::META_GROUP.to_string()
        } else {
            aquifer_proto::wire::container_group(info.segments[round as usize].container)
        };
        let victim = cluster.leader_of(&group).await;
        let survivor = (1..=3).find(|&n| n != victim).expect("a survivor");
        let client = Client::connect(&cluster.node(survivor).addr())
            .await
            .expect("connect");
        let tag = format!("t{round}");
        let txn = write_txn(&client, &name, &tag, keys, per_key).await;
        let (id, expected) = (
            txn.id().to_string(),
            expected_per_segment(&txn, keys, per_key),
        );
        let pid = cluster.node(victim).pid().expect("running");
        let commit = tokio::spawn(txn.commit());
        kill_after(pid, Duration::from_millis(2))
            .await
            .expect("kill");
        cluster.node(victim).kill9();
        match commit.await.expect("commit task") {
            Ok(i) => assert_eq!(i.state, TransactionState::Committed),
            Err(e) => eprintln!("round {round}: commit answered {e}; asking again"),
        }
        wait_committed(&client, &name, &id).await;
        let events = read_all(&client, &name).await;
        assert_eq!(
            whole_or_absent(&events, &tag, &expected),
            total,
            "{tag} whole once committed"
        );
        check_contiguous(&events);
        eprintln!("round {round}: killed the leader of {group} (node {victim}) mid-commit; all {total} events once");
        cluster.node(victim).restart().await;
    }
}

/// `write --txn`: all of stdin at once at EOF, nothing after a bad line
/// (exit status non-zero); `txn list`, `status`, `commit` and `abort`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_write_txn_and_the_txn_commands() {
    let server = ServerProcess::start(ServerOpts::default()).await;
    cli_ok(
        &server.cli(&["stream", "create", "txn/cli", "--segments", "2"], None),
        "create",
    );
    let lines: String = (0..500).map(|i| format!("k{}\tv{i}\n", i % 7)).collect();
    let out = server.cli(
        &["write", "txn/cli", "--txn", "--key-field-tab"],
        Some(lines.as_bytes()),
    );
    cli_ok(&out, "write --txn");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("wrote 500 events in transaction"), "{said}");
    let read = server.cli(&["read", "txn/cli"], None);
    cli_ok(&read, "read");
    assert_eq!(read.stdout.iter().filter(|&&b| b == b'\n').count(), 500);

    // A bad line in the middle: the transaction aborts, nothing shows.
    let bad = "{\"payload\":\"ok\"}\nnot json\n";
    let out = server.cli(
        &["write", "txn/cli", "--txn", "--format", "json"],
        Some(bad.as_bytes()),
    );
    let said = cli_err(
        &out,
        "write --txn with a bad line",
        &["aborted: nothing was written"],
    );
    let aborted = said
        .split("transaction ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("the aborted transaction's id")
        .to_string();
    let read = server.cli(&["read", "txn/cli"], None);
    assert_eq!(read.stdout.iter().filter(|&&b| b == b'\n').count(), 500);

    let list = server.cli(&["txn", "list", "txn/cli"], None);
    cli_ok(&list, "txn list");
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("committed") && text.contains("aborted") && text.contains("OWNER"),
        "{text}"
    );
    let status = server.cli(&["txn", "status", "txn/cli", &aborted], None);
    cli_ok(&status, "txn status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("state:      aborted"), "{text}");
    assert!(text.contains("owner:      -"), "{text}");
    cli_err(
        &server.cli(&["txn", "commit", "txn/cli", &aborted], None),
        "commit of an aborted transaction",
        &["aborted", "can no longer be committed"],
    );
    cli_ok(
        &server.cli(&["txn", "abort", "txn/cli", &aborted], None),
        "abort again",
    );
    cli_err(
        &server.cli(&["txn", "status", "txn/cli", "not-an-id"], None),
        "a bad id",
        &["not a UUID"],
    );
}

/// A transaction larger than the node's transaction memory spills to
/// tier-2 as it is written, survives `kill -9` of the node while open, and
/// commits whole; the merge hands its chunks to the segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_transaction_spills_to_tier2_survives_a_crash_and_commits_whole() {
    let config = "transaction_bytes_max = 4194304\n[tier2]\nchunk_bytes = 1048576\n";
    let mut server = ServerProcess::start(ServerOpts::with_config(config)).await;
    let client = server.client().await;
    let name = stream_name("txn/large");
    client
        .admin()
        .create_stream(&name, 2)
        .await
        .expect("create");
    let w = client
        .transactional_writer(&name, "w-large")
        .expect("writer");
    let txn = w.begin().await.expect("begin");
    let id = txn.id().to_string();
    // 16 MiB: four times what open transactions may hold in memory here.
    let (keys, per_key) = (16u64, 1024u64);
    let pad = "x".repeat(1000);
    for seq in 0..per_key {
        for k in 0..keys {
            let key = format!("k{k}");
            // The writer field carries the padding: `tbigxxx…`.
            txn.write(Some(&key), format!("{key}:{seq}:tbig{pad}"))
                .await
                .expect("write");
        }
    }
    txn.flush().await.expect("flush");
    drop(txn);
    server.kill9();
    server.restart().await;
    let client = server.client().await;
    let info = client
        .transaction(&name, &id)
        .await
        .expect("resume")
        .commit()
        .await
        .expect("commit after the restart");
    assert_eq!(info.state, TransactionState::Committed);
    let events = read_all(&client, &name).await;
    let per_txn = check_contiguous(&events);
    let big = &per_txn[&format!("tbig{pad}")];
    assert_eq!(big.len(), (keys * per_key) as usize, "whole, once");
    let mut by_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for e in big {
        by_key.entry(&e.key).or_default().push(e.seq);
    }
    for (k, seqs) in by_key {
        assert_eq!(seqs, (0..per_key).collect::<Vec<_>>(), "key {k} in order");
    }
}

/// Bad transaction calls get a clear error and break nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_transaction_calls_get_clear_errors() {
    use aquifer_proto::v1 as pb;
    let server = ServerProcess::start(ServerOpts::default()).await;
    let client = server.client().await;
    let name = stream_name("txn/bad");
    client
        .admin()
        .create_stream(&name, 2)
        .await
        .expect("create");
    let missing = client
        .transactional_writer(&stream_name("txn/none"), "w")
        .expect("writer")
        .begin()
        .await;
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");
    let short = client
        .transactional_writer(&name, "w")
        .expect("writer")
        .timeout(Duration::from_millis(10))
        .begin()
        .await;
    assert!(
        matches!(&short, Err(Error::InvalidArgument(m)) if m.contains("timeout")),
        "{short:?}"
    );
    let bad_id = client.transaction(&name, "xyz").await;
    assert!(
        matches!(&bad_id, Err(Error::InvalidArgument(m)) if m.contains("UUID")),
        "{bad_id:?}"
    );
    let long = client
        .transactional_writer(&name, "w")
        .expect("writer")
        .owner("o".repeat(256))
        .begin()
        .await;
    assert!(
        matches!(&long, Err(Error::InvalidArgument(m)) if m.contains("owner") && m.contains("255")),
        "{long:?}"
    );
    // The owner label comes back from begin, status and list (what a
    // restarted sink subtask looks for to abort what it left open).
    let w = client
        .transactional_writer(&name, "w")
        .expect("writer")
        .owner("job-7/sink-3 é");
    let txn = w.begin().await.expect("begin");
    assert_eq!(txn.info().owner, "job-7/sink-3 é");
    assert_eq!(txn.status().await.expect("status").owner, "job-7/sink-3 é");
    let listed = w.list().await.expect("list");
    assert!(
        listed
            .iter()
            .any(|t| t.id == txn.id() && t.owner == "job-7/sink-3 é"),
        "{listed:?}"
    );
    // An append session naming the transaction with a segment that is not
    // one of its parts is refused; one naming an aborted one, too.
    let mut raw = pb::append_client::AppendClient::connect(format!("http://{}", server.addr()))
        .await
        .expect("connect");
    let setup = |segment_id: u64, transaction_id: &str| pb::AppendRequest {
        kind: Some(pb::append_request::Kind::Setup(pb::SetupAppend {
            segment_id,
            writer_id: "raw".into(),
            transaction_id: transaction_id.into(),
        })),
    };
    let parent = txn.info().parts[0].segment_id;
    let refused = raw
        .append_session(futures::stream::iter([setup(parent, txn.id())]))
        .await
        .expect_err("a stream segment is not a part");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let part = txn.info().parts[0].transaction_segment_id;
    let id = txn.id().to_string();
    txn.abort().await.expect("abort");
    let refused = raw
        .append_session(futures::stream::iter([setup(part, &id)]))
        .await
        .expect_err("an aborted transaction takes no writes");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert_eq!(
        refused
            .metadata()
            .get("aquifer-reason")
            .and_then(|v| v.to_str().ok()),
        Some("transaction-not-open")
    );
    // The limit of open transactions per stream is a clear error.
    let mut open = Vec::new();
    let full = loop {
        match w.begin().await {
            Ok(t) => open.push(t),
            Err(e) => break e,
        }
        assert!(open.len() <= 1000, "no limit on open transactions");
    };
    assert!(
        matches!(&full, Error::ResourceExhausted(m) if m.contains("open transactions")),
        "{full:?}"
    );
    assert_eq!(open.len(), 1000);
    for t in open.drain(..10) {
        t.abort().await.expect("abort");
    }
    let more = w.begin().await.expect("room again after aborts");
    more.commit().await.expect("commit an empty transaction");
}

/// A part written to after its transaction was forgotten (what a copy
/// delayed past the end of its transaction would do) is discarded by the
/// reconciler instead of holding its bytes forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_of_a_forgotten_transaction_is_swept() {
    use aquifer_proto::v1 as pb;
    // A peer port, where node-to-node calls like the stray copy are served.
    let (port, peer_port) = (common::free_port(), common::free_port());
    let config =
        format!("metrics_listen = \"127.0.0.1:{port}\"\npeer_listen = \"127.0.0.1:{peer_port}\"\n");
    let server = ServerProcess::start(ServerOpts::with_config(&config)).await;
    let client = server.client().await;
    let name = stream_name("txn/sweep");
    client
        .admin()
        .create_stream(&name, 1)
        .await
        .expect("create");
    let w = client.transactional_writer(&name, "w").expect("writer");
    let first = w.begin().await.expect("begin");
    let (id, part) = (first.id().to_string(), first.info().parts[0].clone());
    first.commit().await.expect("commit");
    // One more finished than a stream keeps: the first is forgotten.
    for _ in 0..100 {
        w.begin()
            .await
            .expect("begin")
            .commit()
            .await
            .expect("commit");
    }
    common::wait_for(
        "the first transaction forgotten",
        Duration::from_secs(10),
        || async {
            matches!(
                client.transaction(&name, &id).await,
                Err(Error::NotFound(_))
            )
        },
    )
    .await;
    let mut events = bytes::BytesMut::new();
    aquifer_proto::frame::encode_event(&mut events, Some("k"), &[7u8; 4096]);
    let mut cluster =
        pb::cluster_client::ClusterClient::connect(format!("http://127.0.0.1:{peer_port}"))
            .await
            .expect("connect");
    cluster
        .append_transaction_part(pb::AppendPartRequest {
            part: Some(pb::FinishPart {
                segment_id: part.segment_id,
                transaction_segment_id: part.transaction_segment_id,
            }),
            writer_id: "stray".into(),
            first_event_number: 1,
            event_count: 1,
            events: events.freeze(),
        })
        .await
        .expect("a late copy lands in a part no one will commit");
    common::wait_for(
        "the stray part discarded",
        Duration::from_secs(10),
        || async {
            server
                .stderr_text()
                .contains("discarding transaction parts of forgotten transactions")
        },
    )
    .await;
    // The log line comes as the discard is proposed; its bytes go once it
    // applies.
    common::wait_for(
        "the stray part's bytes released",
        Duration::from_secs(5),
        || async {
            let m = common::metrics::samples(&common::metrics::scrape(port).await);
            m.get("aquifer_transaction_bytes") == Some(&0.0)
        },
    )
    .await;
    assert!(
        read_all(&client, &name).await.is_empty(),
        "nothing of it is visible"
    );
}
