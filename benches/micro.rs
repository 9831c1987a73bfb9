//! Criterion micro-benchmarks of the hot paths: log record framing and
//! checksums, a log write with group commit (one fdatasync for 1 vs 64
//! entries), block cache get/put, and event batch framing.
//!
//! ```text
//! cargo bench --bench micro                      # full criterion run
//! cargo bench --bench micro -- --quick           # short (criterion's quick mode)
//! ```
//! Results: `target/criterion/`, and a summary in `benches/RESULTS.md`.

use aquifer_proto::frame::{count_events, encode_event, FrameIter};
use aquifer_server::cache::{BlockCache, BlockKey, BLOCK_BYTES};
use aquifer_server::log::record::{self, Decoded, RecordKind};
use aquifer_server::log::{LogContext, LogStorage};
use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use raft::prelude::Entry;

/// A batch of `n` framed events of `payload` bytes, keyed.
fn batch(n: usize, payload: usize) -> Bytes {
    let body = vec![b'x'; payload];
    let mut out = BytesMut::new();
    for i in 0..n {
        encode_event(&mut out, Some(&format!("key-{}", i % 64)), &body);
    }
    out.freeze()
}

fn framing(c: &mut Criterion) {
    let mut g = c.benchmark_group("framing");
    for (n, size) in [(1024usize, 100usize), (64, 1024)] {
        let data = batch(n, size);
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(format!("encode {n} x {size} B"), |b| {
            b.iter(|| batch(n, size));
        });
        g.bench_function(
            format!("count+check {n} x {size} B (server append path)"),
            |b| {
                b.iter(|| count_events(&data, usize::MAX).expect("valid batch"));
            },
        );
        g.bench_function(format!("decode {n} x {size} B (client read path)"), |b| {
            b.iter(|| FrameIter::new(data.clone(), 0, usize::MAX).count());
        });
    }
    g.finish();
}

fn records(c: &mut Criterion) {
    let mut g = c.benchmark_group("log record");
    for size in [1024usize, 64 * 1024] {
        let payload = vec![7u8; size];
        let mut framed = Vec::new();
        record::encode(&mut framed, RecordKind::Entry, &payload);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("encode + crc {size} B"), |b| {
            let mut out = Vec::with_capacity(size + 64);
            b.iter(|| {
                out.clear();
                record::encode(&mut out, RecordKind::Entry, &payload);
            });
        });
        g.bench_function(format!("decode + verify {size} B"), |b| {
            b.iter(|| matches!(record::decode(&framed), Decoded::Record { .. }));
        });
    }
    g.finish();
}

fn log_write(c: &mut Criterion) {
    let mut g = c.benchmark_group("log write (write + fdatasync)");
    g.sample_size(20);
    for entries in [1usize, 64] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = LogStorage::open(dir.path(), &LogContext::start()).expect("open log");
        let next = std::cell::Cell::new(1u64);
        let data = vec![1u8; 1024];
        g.throughput(Throughput::Elements(entries as u64));
        g.bench_function(format!("{entries} x 1 KiB entries, one fdatasync"), |b| {
            b.iter_batched(
                || {
                    let first = next.get();
                    next.set(first + entries as u64);
                    (0..entries)
                        .map(|i| Entry {
                            index: first + i as u64,
                            term: 1,
                            data: data.clone().into(),
                            ..Default::default()
                        })
                        .collect::<Vec<_>>()
                },
                |batch| log.persist(&batch, None).expect("persist"),
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

fn cache(c: &mut Criterion) {
    let mut g = c.benchmark_group("block cache");
    let cache = BlockCache::new(64 * BLOCK_BYTES);
    let block = Bytes::from(vec![0u8; BLOCK_BYTES as usize]);
    for b in 0..32 {
        cache.insert(
            BlockKey {
                segment_id: 1,
                chunk_start: 0,
                block: b,
            },
            block.clone(),
        );
    }
    let mut i = 0u64;
    g.bench_function("get (hit)", |b| {
        b.iter(|| {
            i = (i + 1) % 32;
            cache.get(&BlockKey {
                segment_id: 1,
                chunk_start: 0,
                block: i,
            })
        });
    });
    let mut n = 1_000u64;
    g.bench_function("insert 1 MiB block (evicting)", |b| {
        b.iter(|| {
            n += 1;
            cache.insert(
                BlockKey {
                    segment_id: 2,
                    chunk_start: 0,
                    block: n,
                },
                block.clone(),
            );
        });
    });
    g.finish();
}

criterion_group!(benches, framing, records, log_write, cache);
criterion_main!(benches);
