//! Tier-2 on the local filesystem: reads that start in tier-2 run into the
//! live tail without a gap or a duplicate, and orphan chunks are collected.

use aquifer_testkit as common;

use futures::TryStreamExt;
use std::time::Duration;

use aquifer_client::{ReaderConfig, StartFrom, WriterConfig};

use common::{
    per_key_sequences, read_all, stream_name, wait_all_in_tier2, wait_for, write_keyed_range,
    ServerOpts, ServerProcess,
};

const CONFIG: &str = "[tier2]\nchunk_bytes = 65536\nflush_interval_ms = 100\n";

/// A follow reader from the head reads flushed chunks from tier-2, then the
/// tail buffer, then events written after it started: each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_from_head_crosses_from_tier2_into_the_live_tail() {
    let server = ServerProcess::start(ServerOpts::with_config(CONFIG)).await;
    let client = server.client().await;
    let name = stream_name("tier/cross");
    client
        .admin()
        .create_stream(&name, 2)
        .await
        .expect("create");
    let writer = client
        .writer(&name, WriterConfig::default())
        .await
        .expect("writer");
    const KEYS: u64 = 8;
    write_keyed_range(&writer, KEYS, 0, 200, 300).await;
    wait_all_in_tier2(&client, &name, Duration::from_secs(30)).await;
    // More events that stay in the tail for now, then a reader from the head.
    write_keyed_range(&writer, KEYS, 200, 250, 300).await;
    let mut reader = client
        .reader(
            &name,
            ReaderConfig::default().start(StartFrom::Head).follow(true),
        )
        .await
        .expect("reader");
    // ... and events written while it reads.
    write_keyed_range(&writer, KEYS, 250, 300, 300).await;
    let mut events = Vec::new();
    while events.len() < (KEYS * 300) as usize {
        match tokio::time::timeout(Duration::from_secs(30), reader.try_next()).await {
            Ok(Ok(Some(e))) => events.push(e),
            other => panic!(
                "follow reader stopped after {} events: {other:?}",
                events.len()
            ),
        }
    }
    for (key, seqs) in per_key_sequences(&events) {
        assert_eq!(
            seqs,
            (0..300).collect::<Vec<u64>>(),
            "key {key}: no gap, no duplicate"
        );
    }
}

/// Chunk objects of earlier terms that no committed entry names (a put cut
/// off by a crash, a deleted segment's leftovers) are deleted once the
/// restarted node leads; real chunks stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_chunks_are_collected_at_start_up() {
    let mut server = ServerProcess::start(ServerOpts::with_config(CONFIG)).await;
    let client = server.client().await;
    let name = stream_name("tier/orphans");
    let info = client
        .admin()
        .create_stream(&name, 1)
        .await
        .expect("create");
    let container = info.segments[0].container;
    let writer = client
        .writer(&name, WriterConfig::default())
        .await
        .expect("writer");
    write_keyed_range(&writer, 4, 0, 100, 300).await;
    wait_all_in_tier2(&client, &name, Duration::from_secs(30)).await;
    server.kill9();
    let chunks = server.data_dir().join("tier2").join("chunks");
    let live = chunks.join(format!("c{container}"));
    let cut_off = live.join("t000000000000-0000000000000-00000000deadbeef.chunk");
    let other = chunks.join(format!("c{}", (container + 1) % 4));
    std::fs::write(&cut_off, b"never recorded").expect("plant orphan");
    std::fs::create_dir_all(&other).expect("dir");
    std::fs::write(other.join("x.chunk"), b"deleted segment").expect("plant orphan");
    let real_before = std::fs::read_dir(&live).expect("chunks").count();

    server.restart().await;
    let gone = |path: std::path::PathBuf| async move { !path.exists() };
    common::wait_for(
        "the orphan next to live chunks to be deleted",
        Duration::from_secs(10),
        || gone(cut_off.clone()),
    )
    .await;
    common::wait_for(
        "the object of a container without segments to be deleted",
        Duration::from_secs(10),
        || gone(other.join("x.chunk")),
    )
    .await;
    let real_after = std::fs::read_dir(&live).expect("chunks").count();
    assert_eq!(real_after, real_before - 1, "every recorded object is kept");
    let client = server.client().await;
    assert_eq!(
        read_all(&client, &name, Duration::from_secs(30))
            .await
            .len(),
        400
    );
}

/// Many small segments share objects: far fewer tier-2 objects (PUTs) than
/// chunks, and everything reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_segments_share_tier2_objects() {
    let config = "containers = 1\n[tier2]\nchunk_bytes = 262144\nflush_interval_ms = 200\n";
    let server = ServerProcess::start(ServerOpts::with_config(config)).await;
    let client = server.client().await;
    let name = stream_name("tier/many");
    client
        .admin()
        .create_stream(&name, 32)
        .await
        .expect("create");
    let writer = client
        .writer(&name, WriterConfig::default())
        .await
        .expect("writer");
    // ~1 MB; enough keys that every segment gets some.
    write_keyed_range(&writer, 512, 0, 6, 300).await;
    wait_all_in_tier2(&client, &name, Duration::from_secs(30)).await;
    let info = client
        .admin()
        .describe_stream(&name)
        .await
        .expect("describe");
    let chunks: u32 = info.segments.iter().map(|s| s.chunk_count).sum();
    let objects = std::fs::read_dir(server.data_dir().join("tier2/chunks/c0"))
        .expect("objects")
        .count() as u32;
    assert!(chunks >= 32, "every segment has a chunk: {chunks}");
    assert!(
        objects * 4 <= chunks,
        "{objects} objects for {chunks} chunks: segments do not share objects"
    );
    assert_eq!(
        read_all(&client, &name, Duration::from_secs(30))
            .await
            .len(),
        512 * 6
    );
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Writing many times the log budget keeps the local log within it: groups
/// snapshot and drop their log files, the bytes live on in tier-2, and every
/// event reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_log_disk_stays_bounded_while_tier2_grows() {
    let config = "max_event_bytes = 1048576\nin_flight_bytes_max = 2097152\n\
                  tail_buffer_bytes_max = 4194304\nsnapshot_log_bytes = 2097152\n\
                  [tier2]\nchunk_bytes = 262144\nflush_interval_ms = 100\n";
    let server = ServerProcess::start(ServerOpts::with_config(config)).await;
    let client = server.client().await;
    let name = stream_name("tier/bounded");
    client
        .admin()
        .create_stream(&name, 1)
        .await
        .expect("create");
    let writer = client
        .writer(&name, WriterConfig::default())
        .await
        .expect("writer");
    let log_dir = server.data_dir().join("log");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let log_dir = log_dir.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            // Bounded: at most 2 minutes of samples.
            for _ in 0..2400 {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                peak = peak.max(dir_bytes(&log_dir));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        })
    };
    // 60,000 events of ~330 bytes: about 10 times the 2 MiB snapshot interval.
    write_keyed_range(&writer, 10, 0, 6000, 300).await;
    wait_all_in_tier2(&client, &name, Duration::from_secs(60)).await;
    let admin = client.admin();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.await.expect("sampler").max(dir_bytes(&log_dir));
    eprintln!("local log peak: {peak} bytes");
    let length = admin
        .describe_stream(&name)
        .await
        .expect("describe")
        .segments[0]
        .length;
    assert!(length > 18 * 1024 * 1024, "wrote {length} bytes");
    let tier2 = dir_bytes(&server.data_dir().join("tier2"));
    assert!(tier2 >= length, "tier-2 holds {tier2} of {length} bytes");
    // Budget per busy group: the interval, two files of a quarter of it, and
    // a snapshot holding at most the 4 MiB tail budget.
    assert!(
        peak < 16 * 1024 * 1024,
        "local log held up to {peak} bytes while {length} were written with a 2 MiB snapshot interval"
    );
    let events = read_all(&client, &name, Duration::from_secs(60)).await;
    assert_eq!(events.len(), 60_000);
}

/// With the default 256 MiB snapshot interval, a stream written, sealed and
/// flushed to tier-2 leaves the local log within seconds: a group whose
/// unflushed tail is small beside its log snapshots early and drops the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_follows_tier2_after_a_seal_and_flush() {
    let config = "[tier2]\nchunk_bytes = 1048576\nflush_interval_ms = 100\n";
    let server = ServerProcess::start(ServerOpts::with_config(config)).await;
    let client = server.client().await;
    let name = stream_name("tier/follows");
    let admin = client.admin();
    admin.create_stream(&name, 2).await.expect("create");
    let writer = client
        .writer(&name, WriterConfig::default())
        .await
        .expect("writer");
    // 80,000 events of ~330 bytes: about 26 MiB, a tenth of the interval.
    write_keyed_range(&writer, 10, 0, 8000, 300).await;
    writer.flush().await.expect("flush");
    let log_dir = server.data_dir().join("log");
    let written = dir_bytes(&log_dir);
    assert!(written > 20 * 1024 * 1024, "the log holds {written} bytes");
    admin.seal_stream(&name).await.expect("seal");
    wait_all_in_tier2(&client, &name, Duration::from_secs(60)).await;
    let flushed = std::time::Instant::now();
    let mut left = dir_bytes(&log_dir);
    while left > 4 * 1024 * 1024 && flushed.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = dir_bytes(&log_dir);
    }
    eprintln!(
        "local log: {written} bytes written, {left} left {:?} after the flush",
        flushed.elapsed()
    );
    assert!(
        left <= 4 * 1024 * 1024,
        "30 s after the flush the local log still holds {left} bytes (of {written})"
    );
    let events = read_all(&client, &name, Duration::from_secs(60)).await;
    assert_eq!(events.len(), 80_000, "everything reads back from tier-2");
}

/// Retention by size truncates the head whole chunks at a time and deletes
/// them from tier-2; a read below the new head fails with an error naming
/// it; `stream update` sets retention on an existing stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_size_removes_chunks_from_the_head() {
    let server = ServerProcess::start(ServerOpts::with_config(CONFIG)).await;
    let client = server.client().await;
    let name = stream_name("tier/retained");
    let retention = aquifer_client::Retention::default().size_bytes(256 * 1024);
    let info = client
        .admin()
        .create_stream_with_retention(&name, 1, retention)
        .await
        .expect("create");
    assert_eq!(info.retention, retention);
    let segment = info.segments[0].segment_id;
    // Small batches make small chunks: retention drops whole chunks, and a
    // chunk is up to chunk_bytes plus one batch.
    let small_batches = || WriterConfig::default().batch_bytes_max(16 * 1024);
    let writer = client.writer(&name, small_batches()).await.expect("writer");
    write_keyed_range(&writer, 4, 0, 1500, 300).await; // ~2 MB
    let admin = client.admin();
    let retained = |name: aquifer_client::StreamName, limit: u64| {
        let admin = admin.clone();
        async move {
            admin.describe_stream(&name).await.is_ok_and(|i| {
                let s = &i.segments[0];
                s.head_offset > 0 && s.tier2_length == s.length && s.length - s.head_offset <= limit
            })
        }
    };
    // The limit, plus at most one chunk (64 KiB and a 16 KiB batch).
    wait_for(
        "retention to truncate the head",
        Duration::from_secs(30),
        || retained(name.clone(), 256 * 1024 + 2 * 65536),
    )
    .await;
    // The only stream on the node: every object is this segment's. The
    // objects go just after the truncation commits.
    let chunks_dir = server.data_dir().join("tier2/chunks");
    wait_for(
        "truncated objects to be deleted",
        Duration::from_secs(10),
        || {
            let on_disk = dir_bytes(&chunks_dir);
            async move { on_disk <= 256 * 1024 + 2 * 65536 }
        },
    )
    .await;

    let mut below_head = client.segment_reader(segment, 0, false);
    match below_head.try_next().await {
        Err(aquifer_client::Error::OutOfRange(msg)) => {
            assert!(
                msg.contains("retention") && msg.contains("starts at"),
                "{msg}"
            );
        }
        other => panic!("a read below the head must fail with the new head: {other:?}"),
    }
    // Reading from the head gets the newest events, each key's in order.
    let events = read_all(&client, &name, Duration::from_secs(30)).await;
    assert!(
        !events.is_empty() && events.len() < 6000,
        "{} events kept",
        events.len()
    );
    for (key, seqs) in per_key_sequences(&events) {
        assert_eq!(
            seqs.last(),
            Some(&1499),
            "key {key} keeps its newest events"
        );
    }

    // Retention set later, through the CLI.
    let later = stream_name("tier/later");
    client
        .admin()
        .create_stream(&later, 1)
        .await
        .expect("create");
    let writer = client
        .writer(&later, small_batches())
        .await
        .expect("writer");
    write_keyed_range(&writer, 4, 0, 1000, 300).await;
    let out = server.cli(
        &[
            "stream",
            "update",
            "tier/later",
            "--retention-size",
            "128KiB",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("retention set by update", Duration::from_secs(30), || {
        retained(later.clone(), 128 * 1024 + 2 * 65536)
    })
    .await;
}

/// Retention by time: chunks flushed longer ago than the limit leave the
/// head, so an idle stream ends up with nothing but its (empty) tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_time_expires_old_chunks() {
    let server = ServerProcess::start(ServerOpts::with_config(CONFIG)).await;
    let client = server.client().await;
    let name = stream_name("tier/expiring");
    let retention = aquifer_client::Retention::default().time(Duration::from_millis(500));
    client
        .admin()
        .create_stream_with_retention(&name, 1, retention)
        .await
        .expect("create");
    let writer = client
        .writer(&name, WriterConfig::default())
        .await
        .expect("writer");
    write_keyed_range(&writer, 2, 0, 500, 300).await;
    let admin = client.admin();
    wait_for("every chunk expired", Duration::from_secs(30), || {
        let admin = admin.clone();
        let name = name.clone();
        async move {
            admin.describe_stream(&name).await.is_ok_and(|i| {
                let s = &i.segments[0];
                s.length > 0 && s.head_offset == s.length && s.chunk_count == 0
            })
        }
    })
    .await;
    assert!(read_all(&client, &name, Duration::from_secs(10))
        .await
        .is_empty());
}

/// A tier-2 object that a read needs is gone or cut short: that read fails
/// with a clear DATA_LOSS error naming the object; the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_short_chunk_fails_the_read_not_the_node() {
    let server = ServerProcess::start(ServerOpts::with_config(CONFIG)).await;
    let client = server.client().await;
    let name = stream_name("tier/damaged");
    let info = client
        .admin()
        .create_stream(&name, 1)
        .await
        .expect("create");
    let container = info.segments[0].container;
    let writer = client
        .writer(&name, WriterConfig::default())
        .await
        .expect("writer");
    // Two flushes, so at least two objects: the first holds offset 0.
    write_keyed_range(&writer, 4, 0, 100, 300).await;
    wait_all_in_tier2(&client, &name, Duration::from_secs(30)).await;
    let second_start = client
        .admin()
        .describe_stream(&name)
        .await
        .expect("describe")
        .segments[0]
        .length;
    write_keyed_range(&writer, 4, 100, 200, 300).await;
    wait_all_in_tier2(&client, &name, Duration::from_secs(30)).await;
    let dir = server
        .data_dir()
        .join("tier2/chunks")
        .join(format!("c{container}"));
    let mut objects: Vec<_> = std::fs::read_dir(&dir)
        .expect("objects")
        .flatten()
        .map(|e| e.path())
        .collect();
    objects.sort();
    assert!(objects.len() >= 2, "{objects:?}");
    // The first object goes; every other one is cut short.
    std::fs::remove_file(&objects[0]).expect("remove an object");
    for object in &objects[1..] {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(object)
            .expect("open");
        f.set_len(10).expect("cut an object short");
    }

    let segment = info.segments[0].segment_id;
    for (offset, what) in [(0, "missing"), (second_start, "shorter than recorded")] {
        let mut reader = client.segment_reader(segment, offset, false);
        match reader.try_next().await {
            Err(aquifer_client::Error::Corrupt(msg)) => {
                assert!(msg.contains(what) && msg.contains("chunk"), "{msg}");
            }
            other => panic!("expected a data-loss error ({what}), got {other:?}"),
        }
    }
    // The node is fine: admin and other streams work.
    let other = stream_name("tier/healthy");
    client
        .admin()
        .create_stream(&other, 1)
        .await
        .expect("create");
    let w = client
        .writer(&other, WriterConfig::default())
        .await
        .expect("writer");
    write_keyed_range(&w, 2, 0, 10, 10).await;
    assert_eq!(
        read_all(&client, &other, Duration::from_secs(10))
            .await
            .len(),
        20
    );
}
