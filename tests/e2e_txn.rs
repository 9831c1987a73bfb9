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
use common::{stream_name, ServerOpts, ServerProcess};
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
            if let Some(prev) = last_seq.insert((k.writer.clone(), k.key.clone()), k.seq) {
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
