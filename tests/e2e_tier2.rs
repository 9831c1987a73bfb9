//! Tier-2 on the local filesystem: reads that start in tier-2 run into the
//! live tail without a gap or a duplicate, and orphan chunks are collected.

mod common;

use std::time::Duration;

use aquifer_client::{ReaderConfig, StartFrom, WriterConfig};

use common::{per_key_sequences, read_all, stream_name, wait_for, ServerOpts, ServerProcess};

const CONFIG: &str = "[tier2]\nchunk_bytes = 65536\nflush_interval_ms = 100\n";

async fn write_keyed(writer: &aquifer_client::EventWriter, keys: u64, from: u64, to: u64) {
    for seq in from..to {
        for k in 0..keys {
            let payload = format!("k{k}:{seq}:{}", "z".repeat(300));
            writer
                .write_event(Some(&format!("k{k}")), payload)
                .await
                .expect("queue");
        }
    }
    writer.flush().await.expect("acknowledged");
}

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
    write_keyed(&writer, KEYS, 0, 200).await;
    let admin = client.admin();
    wait_for("chunks in tier-2", Duration::from_secs(30), || {
        let admin = admin.clone();
        let name = name.clone();
        async move {
            admin.describe_stream(&name).await.is_ok_and(|i| {
                i.segments
                    .iter()
                    .all(|s| s.chunk_count > 0 && s.tier2_length == s.length)
            })
        }
    })
    .await;
    // More events that stay in the tail for now, then a reader from the head.
    write_keyed(&writer, KEYS, 200, 250).await;
    let mut reader = client
        .reader(
            &name,
            ReaderConfig {
                from: StartFrom::Head,
                follow: true,
            },
        )
        .await
        .expect("reader");
    // ... and events written while it reads.
    write_keyed(&writer, KEYS, 250, 300).await;
    let mut events = Vec::new();
    while events.len() < (KEYS * 300) as usize {
        match tokio::time::timeout(Duration::from_secs(30), reader.next()).await {
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

/// Chunk objects that no committed entry names (a put cut off by a crash, a
/// deleted segment's leftovers) are deleted at start-up; real chunks stay.
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
    let segment = info.segments[0].segment_id;
    let writer = client
        .writer(&name, WriterConfig::default())
        .await
        .expect("writer");
    write_keyed(&writer, 4, 0, 100).await;
    let admin = client.admin();
    wait_for("chunks in tier-2", Duration::from_secs(30), || {
        let admin = admin.clone();
        let name = name.clone();
        async move {
            admin.describe_stream(&name).await.is_ok_and(|i| {
                i.segments
                    .iter()
                    .all(|s| s.chunk_count > 0 && s.tier2_length == s.length)
            })
        }
    })
    .await;
    server.kill9();
    let segments = server.data_dir().join("tier2").join("segments");
    let cut_off = segments
        .join(segment.to_string())
        .join("00000000000000999999-c0-t9-00000000deadbeef.chunk");
    let gone_segment = segments.join("987654321");
    std::fs::write(&cut_off, b"never recorded").expect("plant orphan");
    std::fs::create_dir_all(&gone_segment).expect("dir");
    std::fs::write(gone_segment.join("x.chunk"), b"deleted segment").expect("plant orphan");
    let real_before = std::fs::read_dir(segments.join(segment.to_string()))
        .expect("chunks")
        .count();

    server.restart().await;
    assert!(!cut_off.exists(), "orphan of a live segment is deleted");
    assert!(
        !gone_segment.join("x.chunk").exists(),
        "chunk of an unknown segment is deleted"
    );
    let real_after = std::fs::read_dir(segments.join(segment.to_string()))
        .expect("chunks")
        .count();
    assert_eq!(real_after, real_before - 1, "every recorded chunk is kept");
    let client = server.client().await;
    assert_eq!(
        read_all(&client, &name, Duration::from_secs(30))
            .await
            .len(),
        400
    );
}
