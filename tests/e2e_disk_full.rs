//! Running out of disk: on a small tmpfs, appends are refused with
//! RESOURCE_EXHAUSTED naming the disk once its free space falls below
//! `disk_free_bytes_min`; the node keeps serving reads and admin calls, and
//! a writer still retrying gets its events in once a stream's deletion frees
//! the space. Needs root (to mount the tmpfs); elsewhere it says so and skips.

use aquifer_testkit as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aquifer_client::{Error, WriterConfig};

use common::{read_all, stream_name, ServerOpts, ServerProcess};

const MIB: usize = 1024 * 1024;

/// A tmpfs mounted for the test, unmounted on drop (after the server that
/// uses it, which is declared later and so dropped first).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_mib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "skipping: cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_space_floor_appends_are_refused_and_resume_once_space_is_freed() {
    let Some(disk) = Tmpfs::mount(96) else {
        return;
    };
    let data_dir: PathBuf = disk.path().join("data");
    // Local tier-2 in the data dir (the default): both fill the same tmpfs.
    let config = "disk_free_bytes_min = 41943040\n\
                  snapshot_log_bytes = 16777216\n\
                  [tier2]\nchunk_bytes = 1048576\nflush_interval_ms = 200\n";
    let mut server = ServerProcess::start(ServerOpts {
        data_dir: Some(data_dir),
        ..ServerOpts::with_config(config)
    })
    .await;
    let client = server.client().await;
    let admin = client.admin();
    let fill = stream_name("disk/fill");
    let keep = stream_name("disk/keep");
    admin.create_stream(&fill, 1).await.expect("create fill");
    admin.create_stream(&keep, 1).await.expect("create keep");

    // Fill until refused for 3 s (the writer's retry timeout): a refusal
    // that flushing to tier-2 and truncating the log cures meanwhile is
    // retried away.
    let writer = client
        .writer(
            &fill,
            WriterConfig::default()
                .writer_id("filler")
                .retry_timeout(Duration::from_secs(3)),
        )
        .await
        .expect("writer");
    let payload = vec![7u8; MIB];
    let mut acked = 0usize;
    let refusal = loop {
        assert!(
            acked < 96,
            "96 MiB acknowledged on a 96 MiB disk with a 40 MiB floor"
        );
        let pending = writer
            .write_event(Some("k"), payload.clone())
            .await
            .expect("queue");
        match pending.await {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
    };
    let message = refusal.to_string();
    assert!(
        matches!(refusal, Error::ResourceExhausted(_)),
        "{refusal:?}"
    );
    assert!(
        message.contains("would take it below the floor of 40 MiB (disk_free_bytes_min)"),
        "{message}"
    );
    assert!(
        message.contains(&disk.path().display().to_string()),
        "names the disk: {message}"
    );
    eprintln!("{acked} MiB acknowledged, then: {message}");
    assert!(acked >= 10, "only {acked} MiB went in before the floor");
    assert!(server.try_wait().is_none(), "the node is still running");

    // Reads and admin calls go on below the floor.
    let events = read_all(&client, &fill, Duration::from_secs(30)).await;
    assert_eq!(events.len(), acked, "every acknowledged event reads back");
    assert!(admin.describe_stream(&fill).await.is_ok());

    // A writer with room to retry waits through the refusal ...
    let patient = client
        .writer(
            &keep,
            WriterConfig::default()
                .writer_id("patient")
                .retry_timeout(Duration::from_secs(90)),
        )
        .await
        .expect("writer");
    let pending = patient
        .write_event(Some("k"), payload.clone())
        .await
        .expect("queue");
    let mut pending = Box::pin(pending);
    assert!(
        tokio::time::timeout(Duration::from_secs(2), &mut pending)
            .await
            .is_err(),
        "an append below the floor is not acknowledged"
    );
    // ... and gets in by itself once deleting the full stream frees the disk.
    let freed = Instant::now();
    admin.delete_stream(&fill).await.expect("delete fill");
    let ack = tokio::time::timeout(Duration::from_secs(60), &mut pending)
        .await
        .expect("the append resumes within 60 s of the space being freed")
        .expect("acknowledged");
    eprintln!(
        "append acknowledged {:?} after the delete (offset {:?})",
        freed.elapsed(),
        ack.offset
    );
    let events = read_all(&client, &keep, Duration::from_secs(30)).await;
    assert_eq!(events.len(), 1, "exactly once");
}
