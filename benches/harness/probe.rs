//! What the disk under the data dir can do, so the benchmark results read as
//! a fraction of the machine's limit: large writes + fdatasync (bandwidth),
//! and 4 KiB writes + fdatasync from one and from 16 threads (sync rate).

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Results of the fdatasync probe.
#[derive(Debug, Clone, Copy)]
pub struct DiskProbe {
    /// 1 MiB appends, each followed by fdatasync: MB/s (10^6 bytes).
    pub seq_mb_s: f64,
    /// 4 KiB appends + fdatasync, one thread: syncs per second.
    pub small_syncs_s_1: f64,
    /// 4 KiB appends + fdatasync, 16 threads (own files): syncs per second.
    pub small_syncs_s_16: f64,
}

const MIB: usize = 1024 * 1024;
/// Upper bound on bytes the bandwidth probe writes.
const SEQ_BYTES_MAX: usize = 512 * MIB;
const SMALL_THREADS: usize = 16;

/// Runs the probe in a fresh directory under `dir` (same filesystem as the
/// server's data dir), each part for about `each`.
pub fn run(dir: &Path, each: Duration) -> DiskProbe {
    let tmp = tempfile::Builder::new()
        .prefix("fsync-probe-")
        .tempdir_in(dir)
        .expect("probe dir");
    let seq_mb_s = seq_bandwidth(&tmp.path().join("seq"), each);
    let small_syncs_s_1 = small_syncs(tmp.path(), 1, each);
    let small_syncs_s_16 = small_syncs(tmp.path(), SMALL_THREADS, each);
    DiskProbe {
        seq_mb_s,
        small_syncs_s_1,
        small_syncs_s_16,
    }
}

fn seq_bandwidth(path: &Path, each: Duration) -> f64 {
    let mut f = File::create(path).expect("create probe file");
    let buf = vec![0x5au8; MIB];
    let start = Instant::now();
    let mut written = 0usize;
    while start.elapsed() < each && written < SEQ_BYTES_MAX {
        f.write_all(&buf).expect("probe write");
        f.sync_data().expect("probe fdatasync");
        written += buf.len();
    }
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(path);
    written as f64 / 1e6 / secs
}

fn small_syncs(dir: &Path, threads: usize, each: Duration) -> f64 {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let path = dir.join(format!("small-{threads}-{t}"));
            std::thread::spawn(move || {
                let mut f = File::create(&path).expect("create probe file");
                let buf = vec![0xa5u8; 4096];
                let mut n = 0u64;
                // At most 1 GiB per file whatever the disk's speed.
                while start.elapsed() < each && n < 262_144 {
                    f.write_all(&buf).expect("probe write");
                    f.sync_data().expect("probe fdatasync");
                    n += 1;
                }
                drop(f);
                let _ = std::fs::remove_file(&path);
                n
            })
        })
        .collect();
    let total: u64 = handles
        .into_iter()
        .map(|h| h.join().expect("probe thread"))
        .sum();
    total as f64 / start.elapsed().as_secs_f64()
}
