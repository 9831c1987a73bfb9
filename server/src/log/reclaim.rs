//! Reclaiming disk space of files the log no longer needs (log files below
//! a snapshot, older snapshots), a little at a time.
//!
//! The data dir's filesystem may discard freed blocks at once (ext4 mounted
//! with `discard`): one unlink of a 64 MiB log file then queues a 64 MiB
//! discard in front of every group's next fdatasync, while shrinking it a
//! little at a time first does not stall them (figures: "Profiling pass" in
//! `benches/RESULTS.md`). So a file to drop is renamed to
//! `<name>.free` (cheap, and no longer read by replay) and one background
//! thread shrinks it step by step, then unlinks it. A `.free` file left by a
//! crash is picked up again when its directory is opened.
//!
//! A destroyed replica's whole log directory goes the same way
//! ([`Reclaimer::release_dir`]): its files one by one, then the directory.
//!
//! It must never touch a file that is not named `.free` or in a directory
//! handed over whole: renaming is the caller's promise that nothing needs
//! the bytes any more.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::Duration;

/// Suffix of files waiting to be reclaimed.
pub const FREE_SUFFIX: &str = ".free";
/// Bytes freed per step, and the pause between steps: up to 200 MB/s, far
/// above what the logs write, in steps small enough not to stall them.
const STEP_BYTES: u64 = 2 * 1024 * 1024;
const STEP_PAUSE: Duration = Duration::from_millis(10);
/// Files waiting at most; past it a file is unlinked at once (the disk
/// space matters more than the stall then).
const QUEUE_MAX: usize = 1024;

/// A node's reclaim thread, and the queue of files waiting for it. Clones
/// share the thread; it ends when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Reclaimer {
    /// None when the thread could not start: files are unlinked at once.
    queue: Option<SyncSender<PathBuf>>,
}

impl Reclaimer {
    /// Starts the reclaim thread.
    pub fn start() -> Reclaimer {
        let (tx, rx) = sync_channel::<PathBuf>(QUEUE_MAX);
        let spawned = std::thread::Builder::new()
            .name("log-reclaim".into())
            .spawn(move || {
                for path in rx {
                    shrink_and_remove(&path);
                }
            });
        match spawned {
            Ok(_) => Reclaimer { queue: Some(tx) },
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the log reclaim thread; files are unlinked at once");
                Reclaimer { queue: None }
            }
        }
    }

    /// Renames `path` to `<path>.free` and hands it to the reclaim thread.
    /// The caller syncs the directory.
    pub fn release(&self, path: &Path) -> std::io::Result<()> {
        let mut free = path.as_os_str().to_owned();
        free.push(FREE_SUFFIX);
        let free = PathBuf::from(free);
        std::fs::rename(path, &free)?;
        self.hand_over(free);
        Ok(())
    }

    /// Reclaims every file in `dir` and then `dir` itself: the directory of
    /// a destroyed log, already renamed out of every group's way.
    pub fn release_dir(&self, dir: &Path) -> std::io::Result<()> {
        for item in std::fs::read_dir(dir)? {
            let path = item?.path();
            if path.is_dir() {
                continue; // never made by the log; left for a human
            }
            self.hand_over(path);
        }
        self.hand_over(dir.to_owned());
        Ok(())
    }

    /// Queues the `.free` files in `dir` (left by a crash) for reclaiming.
    pub fn resume(&self, dir: &Path) -> std::io::Result<()> {
        for item in std::fs::read_dir(dir)? {
            let path = item?.path();
            if path.to_string_lossy().ends_with(FREE_SUFFIX) {
                self.hand_over(path);
            }
        }
        Ok(())
    }

    fn hand_over(&self, free: PathBuf) {
        let Some(tx) = &self.queue else {
            remove_now(&free);
            return;
        };
        match tx.try_send(free) {
            Ok(()) => {}
            Err(TrySendError::Full(free) | TrySendError::Disconnected(free)) => remove_now(&free),
        }
    }
}

fn shrink_and_remove(path: &Path) {
    if path.is_dir() {
        // Queued after its files, which are gone by now.
        if let Err(e) = std::fs::remove_dir(path) {
            tracing::warn!(dir = %path.display(), error = %e, "cannot remove a destroyed log directory");
        }
        return;
    }
    if let Ok(meta) = std::fs::metadata(path) {
        let mut len = meta.len();
        while len > STEP_BYTES {
            len -= STEP_BYTES;
            if std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(len))
                .is_err()
            {
                break; // the unlink below still frees it
            }
            std::thread::sleep(STEP_PAUSE);
        }
    }
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(file = %path.display(), error = %e, "cannot remove a reclaimed log file");
        }
    }
}

fn remove_now(free: &Path) {
    let removed = if free.is_dir() {
        std::fs::remove_dir(free)
    } else {
        std::fs::remove_file(free)
    };
    if let Err(e) = removed {
        tracing::warn!(file = %free.display(), error = %e, "cannot remove a log file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_and_left_over_files_are_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let released = dir.path().join("00000000000000000001.log");
        std::fs::write(&released, vec![7u8; 5 * 1024 * 1024]).expect("write");
        let left_over = dir.path().join("snapshot-00000000000000000009.free");
        std::fs::write(&left_over, b"from before a crash").expect("write");
        let kept = dir.path().join("00000000000000000002.log");
        std::fs::write(&kept, b"live").expect("write");

        let reclaimer = Reclaimer::start();
        reclaimer.release(&released).expect("release");
        assert!(!released.exists(), "renamed away at once");
        reclaimer.resume(dir.path()).expect("resume");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let names = || {
            let mut n: Vec<String> = std::fs::read_dir(dir.path())
                .expect("list")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            n.sort();
            n
        };
        while names().len() > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(names(), vec!["00000000000000000002.log".to_string()]);
    }
}
