//! The free-space floor: watches the filesystems appended bytes land on
//! (the data dir's, and a local tier-2's) and refuses appends with
//! RESOURCE_EXHAUSTED while one of them has less free than
//! `disk_free_bytes_min`, so a full disk never reaches the log writer.
//!
//! Owns the last free-space figure of each watched disk and the bytes
//! admitted since. It must never block the append path (it reads atomics;
//! only the watch loop calls `statvfs`) and never refuses anything but
//! appends: reads, tier-2 flushes, truncation and retention are what free
//! the space, so they keep running below the floor.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::Error;

/// One watched filesystem.
#[derive(Debug)]
struct Disk {
    /// What it holds, for messages ("the data dir", "local tier-2").
    role: &'static str,
    path: PathBuf,
    /// Free bytes (for unprivileged users) at the last look.
    free: AtomicU64,
}

/// The node's disks and its floor; cheap to clone.
#[derive(Debug, Clone)]
pub struct DiskSpace {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    disks: Vec<Disk>,
    floor: u64,
    /// Bytes admitted since the last look: a burst between two looks counts
    /// against the free space before `statvfs` sees it.
    admitted: AtomicU64,
}

impl DiskSpace {
    /// Watches `disks` (role, path); a floor of 0 turns the check off. Looks
    /// once now, so a node started on a full disk refuses from its first
    /// append; a disk it cannot look at counts as having room (and is logged).
    pub fn new(disks: Vec<(&'static str, PathBuf)>, floor: u64) -> DiskSpace {
        let disks = disks
            .into_iter()
            .map(|(role, path)| Disk {
                role,
                path,
                free: AtomicU64::new(u64::MAX),
            })
            .collect();
        let space = DiskSpace {
            inner: Arc::new(Inner {
                disks,
                floor,
                admitted: AtomicU64::new(0),
            }),
        };
        space.look();
        space
    }

    /// Reads each disk's free space afresh and starts a new admitted count.
    fn look(&self) {
        if self.inner.floor == 0 {
            return;
        }
        for disk in &self.inner.disks {
            match free_bytes(&disk.path) {
                Ok(free) => disk.free.store(free, Ordering::Relaxed),
                Err(e) => {
                    tracing::warn!(path = %disk.path.display(), error = %e, "cannot read free disk space");
                    disk.free.store(u64::MAX, Ordering::Relaxed);
                }
            }
        }
        self.inner.admitted.store(0, Ordering::Relaxed);
    }

    /// Admits an append of `bytes`, or refuses it naming the disk below the
    /// floor. Retryable: appends resume once space is freed.
    pub fn admit(&self, bytes: u64) -> Result<(), Error> {
        let floor = self.inner.floor;
        if floor == 0 {
            return Ok(());
        }
        let admitted = self.inner.admitted.load(Ordering::Relaxed);
        for disk in &self.inner.disks {
            let free = disk.free.load(Ordering::Relaxed).saturating_sub(admitted);
            if free < floor.saturating_add(bytes) {
                return Err(Error::ResourceExhausted(format!(
                    "{} ({}) has {} MiB free: a batch of {bytes} bytes would take it below \
                     the floor of {} MiB (disk_free_bytes_min); appends resume once retention, \
                     truncation or deleting streams frees space, or the disk grows",
                    disk.role,
                    disk.path.display(),
                    free / MIB,
                    floor / MIB,
                )));
            }
        }
        self.inner.admitted.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Looks at the disks every `every` until `stop` turns true.
    pub async fn watch(self, every: Duration, mut stop: watch::Receiver<bool>) {
        if self.inner.floor == 0 {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let was_low = self.admit(0).is_err();
                    self.look();
                    match (was_low, self.admit(0)) {
                        (false, Err(e)) => tracing::warn!("appends refused: {e}"),
                        (true, Ok(())) => tracing::info!("free disk space back above the floor: appends resume"),
                        _ => {}
                    }
                }
                _ = stop.changed() => return,
            }
        }
    }
}

const MIB: u64 = 1024 * 1024;

/// Bytes an unprivileged process may still write on `path`'s filesystem.
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(path)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_disk(free: u64, floor: u64) -> DiskSpace {
        DiskSpace {
            inner: Arc::new(Inner {
                disks: vec![Disk {
                    role: "the data dir",
                    path: PathBuf::from("/data"),
                    free: AtomicU64::new(free),
                }],
                floor,
                admitted: AtomicU64::new(0),
            }),
        }
    }

    #[test]
    fn admits_down_to_the_floor_counting_what_it_admitted() {
        let space = one_disk(100 * MIB, 60 * MIB);
        assert!(space.admit(30 * MIB).is_ok());
        // 70 MiB left by the count, though no look saw it yet.
        let e = space.admit(20 * MIB).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::ResourceExhausted(_)), "{e:?}");
        assert!(
            msg.contains("the data dir (/data) has 70 MiB free"),
            "{msg}"
        );
        assert!(msg.contains("a batch of 20971520 bytes would take it below the floor of 60 MiB (disk_free_bytes_min)"), "{msg}");
        assert!(space.admit(10 * MIB).is_ok(), "exactly to the floor");
        assert!(space.admit(1).is_err());
    }

    #[test]
    fn a_floor_of_zero_admits_everything() {
        let space = one_disk(0, 0);
        assert!(space.admit(u64::MAX).is_ok());
    }

    #[test]
    fn a_look_at_a_real_disk_reads_its_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        let space = DiskSpace::new(vec![("the data dir", dir.path().to_path_buf())], 1);
        assert!(space.admit(1).is_ok());
        // Beyond what the disk holds: refused.
        let space = DiskSpace::new(
            vec![("the data dir", dir.path().to_path_buf())],
            free.saturating_mul(4),
        );
        assert!(space.admit(1).is_err());
    }
}
