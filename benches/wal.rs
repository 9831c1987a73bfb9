//! The log choice (issue 21's "one log per node"), measured in one run on
//! one disk: a node's raft groups persisting their `Ready`s at once, each
//! group on its own thread as the group runners are, through
//! - **per-group**: [`LogStorage`], the log the server uses, one log
//!   directory and one fdatasync per group per round;
//! - **raft-engine**: TiKV's multi-raft log (one `Engine` for all groups;
//!   concurrent synced writes join one write group: one write and one
//!   fdatasync for all);
//! - **shared file**: the smallest log of our own design that shares an
//!   fdatasync, one append-only file and one committer thread that writes
//!   everything queued and syncs once. Only its write path exists (no
//!   replay, no compaction), so it is the best such a design could do.
//!
//! Payloads are random, and raft-engine's LZ4 of batches past 8 KiB is off
//! (`batch_compression_threshold = 0`): neither other log compresses, and
//! compressible payloads would measure LZ4, not the log.
//!
//! Each round is what raft hands a group runner: `entries` entries of
//! `bytes` bytes, then the hard state. A round's latency is from the call to
//! durable; throughput is all groups' rounds together.
//!
//! ```text
//! cargo bench --bench wal -- [--quick] [--write-results]
//! ```
//! `--write-results` writes `benches/RESULTS-wal.md`.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use aquifer_server::log::record::{self, RecordKind};
use aquifer_server::log::{LogContext, LogStorage};
use aquifer_testkit::bench::{self as args, parse_args};
use bytes::Bytes;
use hdrhistogram::Histogram;
use raft::prelude::{Entry, HardState};

/// What one group runner does per `Ready`: persist entries and hard state,
/// durable on return.
type Persist = Box<dyn FnMut(&[Entry], &HardState) + Send>;

/// A log candidate: opens the writer of group `g` (called on its thread).
trait Candidate: Sync {
    fn name(&self) -> &'static str;
    fn writer(&self, g: u64) -> Persist;
    /// fdatasyncs issued so far, where the candidate counts them.
    fn syncs(&self) -> Option<u64> {
        None
    }
}

struct PerGroup {
    dir: std::path::PathBuf,
    ctx: LogContext,
}

impl Candidate for PerGroup {
    fn name(&self) -> &'static str {
        "per-group"
    }
    fn writer(&self, g: u64) -> Persist {
        let mut log = LogStorage::open(&self.dir.join(g.to_string()), &self.ctx).expect("open log");
        Box::new(move |entries, hs| log.persist(entries, Some(hs)).expect("persist"))
    }
}

struct EntryExt;
impl raft_engine::MessageExt for EntryExt {
    type Entry = Entry;
    fn index(e: &Entry) -> u64 {
        e.index
    }
}

struct RaftEngine {
    engine: Arc<raft_engine::Engine>,
}

impl RaftEngine {
    fn open(dir: &Path) -> RaftEngine {
        let cfg = raft_engine::Config {
            dir: dir.to_string_lossy().into_owned(),
            batch_compression_threshold: raft_engine::ReadableSize(0),
            ..Default::default()
        };
        RaftEngine {
            engine: Arc::new(raft_engine::Engine::open(cfg).expect("open raft-engine")),
        }
    }
}

impl Candidate for RaftEngine {
    fn name(&self) -> &'static str {
        "raft-engine"
    }
    fn writer(&self, g: u64) -> Persist {
        let engine = self.engine.clone();
        Box::new(move |entries, hs| {
            let mut batch = raft_engine::LogBatch::default();
            batch
                .add_entries::<EntryExt>(g + 1, entries)
                .expect("add entries");
            batch
                .put_message(g + 1, b"hs".to_vec(), hs)
                .expect("put hard state");
            engine.write(&mut batch, true).expect("write");
        })
    }
}

/// One file, one committer: groups queue framed records and wait; the
/// committer writes all that is queued, fdatasyncs once and wakes them.
struct SharedFile {
    queue: mpsc::Sender<(Vec<u8>, mpsc::SyncSender<()>)>,
    syncs: Arc<std::sync::atomic::AtomicU64>,
}

impl SharedFile {
    fn open(dir: &Path) -> SharedFile {
        std::fs::create_dir_all(dir).expect("mkdir");
        let mut file = File::create(dir.join("node.log")).expect("create");
        let (queue, rx) = mpsc::channel::<(Vec<u8>, mpsc::SyncSender<()>)>();
        let syncs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = syncs.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut waiting = Vec::new();
            while let Ok(first) = rx.recv() {
                buf.clear();
                for (records, done) in std::iter::once(first).chain(rx.try_iter()) {
                    buf.extend_from_slice(&records);
                    waiting.push(done);
                }
                file.write_all(&buf).expect("write");
                file.sync_data().expect("fdatasync");
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for done in waiting.drain(..) {
                    let _ = done.send(());
                }
            }
        });
        SharedFile { queue, syncs }
    }
}

impl Candidate for SharedFile {
    fn name(&self) -> &'static str {
        "shared file"
    }
    fn writer(&self, g: u64) -> Persist {
        let queue = self.queue.clone();
        Box::new(move |entries, hs| {
            // The group id leads each record's payload, as replay would need.
            let mut out = Vec::new();
            let mut put = |kind, m: &dyn protobuf::Message| {
                record::encode_with(&mut out, kind, |o| {
                    o.extend_from_slice(&g.to_le_bytes());
                    m.write_to_vec(o)
                })
                .expect("encode record");
            };
            for e in entries {
                put(RecordKind::Entry, e);
            }
            put(RecordKind::HardState, hs);
            let (done, wait) = mpsc::sync_channel(1);
            queue.send((out, done)).expect("committer alive");
            wait.recv().expect("committed");
        })
    }
    fn syncs(&self) -> Option<u64> {
        Some(self.syncs.load(std::sync::atomic::Ordering::Relaxed))
    }
}

struct Shape {
    groups: u64,
    entries: usize,
    bytes: usize,
}

struct Outcome {
    rounds: u64,
    secs: f64,
    latency: Histogram<u64>,
    syncs: Option<u64>,
}

/// Every group writes `rounds_max` rounds or for `time_max`, whichever ends
/// first, all starting together.
fn drive(c: &dyn Candidate, shape: &Shape, rounds_max: u64, time_max: Duration) -> Outcome {
    let start = Arc::new(Barrier::new(shape.groups as usize + 1));
    let syncs_before = c.syncs();
    let (latency, rounds, secs) = std::thread::scope(|s| {
        let threads: Vec<_> = (0..shape.groups)
            .map(|g| {
                let start = start.clone();
                s.spawn(move || {
                    let mut persist = c.writer(g);
                    let data: Bytes = (0..shape.bytes).map(|_| rand::random::<u8>()).collect();
                    let mut hist = Histogram::<u64>::new(3).expect("histogram");
                    let mut index = 0u64;
                    start.wait();
                    let began = Instant::now();
                    let mut rounds = 0u64;
                    while rounds < rounds_max && began.elapsed() < time_max {
                        let entries: Vec<Entry> = (0..shape.entries)
                            .map(|_| {
                                index += 1;
                                Entry {
                                    index,
                                    term: 1,
                                    data: data.clone(),
                                    ..Default::default()
                                }
                            })
                            .collect();
                        let hs = HardState {
                            term: 1,
                            commit: index,
                            ..Default::default()
                        };
                        let t = Instant::now();
                        persist(&entries, &hs);
                        let _ = hist.record(t.elapsed().as_micros() as u64);
                        rounds += 1;
                    }
                    (hist, rounds, began.elapsed().as_secs_f64())
                })
            })
            .collect();
        start.wait();
        let mut all = Histogram::<u64>::new(3).expect("histogram");
        let (mut rounds, mut secs) = (0u64, 0f64);
        for t in threads {
            let (h, r, took) = t.join().expect("group thread");
            all.add(&h).expect("merge");
            rounds += r;
            secs = secs.max(took);
        }
        (all, rounds, secs)
    });
    Outcome {
        rounds,
        secs,
        latency,
        syncs: c.syncs().zip(syncs_before).map(|(a, b)| a - b),
    }
}

fn main() {
    let args = parse_args("wal");
    let started = Instant::now();
    let (rounds_max, time_max) = if args.quick {
        (500, Duration::from_secs(1))
    } else {
        (20_000, Duration::from_secs(6))
    };
    let shapes = [
        Shape {
            groups: 1,
            entries: 16,
            bytes: 1024,
        },
        Shape {
            groups: 4,
            entries: 16,
            bytes: 1024,
        },
        Shape {
            groups: 4,
            entries: 1,
            bytes: 100,
        },
        Shape {
            groups: 4,
            entries: 1,
            bytes: 64 * 1024,
        },
        Shape {
            groups: 16,
            entries: 4,
            bytes: 1024,
        },
    ];
    let mut report = String::from(
        "| groups × (entries × bytes) per round | log | rounds/s | MB/s | round p50 ms | round p99 ms | fdatasyncs per round |\n\
         |---|---|---:|---:|---:|---:|---:|\n",
    );
    for shape in &shapes {
        // A fresh directory per candidate and shape, on the bench's disk
        // (target/), not tmpfs.
        let root = tempfile::Builder::new()
            .prefix("wal-bench-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp dir");
        let candidates: Vec<Box<dyn Candidate>> = vec![
            Box::new(PerGroup {
                dir: root.path().join("per-group"),
                ctx: LogContext::start(),
            }),
            Box::new(RaftEngine::open(&root.path().join("raft-engine"))),
            Box::new(SharedFile::open(&root.path().join("shared"))),
        ];
        for c in &candidates {
            let o = drive(c.as_ref(), shape, rounds_max, time_max);
            let per_s = o.rounds as f64 / o.secs;
            let mb_s = per_s * (shape.entries * shape.bytes) as f64 / 1e6;
            let ms = |q: f64| o.latency.value_at_quantile(q) as f64 / 1000.0;
            let syncs = o
                .syncs
                .map_or("".into(), |s| format!("{:.2}", s as f64 / o.rounds as f64));
            let _ = writeln!(
                report,
                "| {} × ({} × {} B) | {} | {:.0} | {:.1} | {:.2} | {:.2} | {} |",
                shape.groups,
                shape.entries,
                shape.bytes,
                c.name(),
                per_s,
                mb_s,
                ms(0.5),
                ms(0.99),
                syncs
            );
            eprintln!(
                "wal bench: {} groups, {}: {per_s:.0} rounds/s",
                shape.groups,
                c.name()
            );
        }
    }
    args::finish("wal", &args, started, &report, "RESULTS-wal.md", || {
        format!(
            "{}{report}\n",
            args::results_header(
                "Log choice: per-group logs, raft-engine, one shared file",
                "wal",
                &args,
                "in-process, one thread per group, temp dirs under target/."
            )
        )
    });
}
