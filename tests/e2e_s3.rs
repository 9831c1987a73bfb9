//! Tier-2 on a real S3 server: SeaweedFS, installed and started on loopback
//! by `../shared/s3/start-s3.sh` (it handles conditional puts under races,
//! which chunk naming relies on). When the server cannot be installed or
//! started here, the test says so on stderr and skips.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use aquifer_client::WriterConfig;
use rand::Rng;

use common::{per_key_sequences, read_all, stream_name, wait_for, ServerOpts, ServerProcess};

const BUCKET: &str = "aquifer";

/// A SeaweedFS S3 server this test started (and stops, by PID).
struct S3Server {
    script: PathBuf,
    pid: String,
    port: u16,
    _dir: tempfile::TempDir,
}

impl S3Server {
    fn start() -> Result<S3Server, String> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/s3/start-s3.sh");
        if !script.exists() {
            return Err(format!("{} not found", script.display()));
        }
        let install = Command::new("bash")
            .arg(&script)
            .arg("install")
            .output()
            .map_err(|e| e.to_string())?;
        if !install.status.success() {
            return Err(format!(
                "install failed: {}",
                String::from_utf8_lossy(&install.stderr)
            ));
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut rng = rand::rng();
        for _ in 0..20 {
            let port: u16 = rng.random_range(20_000..40_000);
            let offsets = [0u16, 1, 2, 3, 5, 11, 12, 13, 14, 10_005];
            let free = offsets
                .iter()
                .all(|o| std::net::TcpListener::bind(("127.0.0.1", port + o)).is_ok());
            if !free {
                continue;
            }
            let out = Command::new("bash")
                .arg(&script)
                .args(["start", &port.to_string()])
                .arg(dir.path())
                .arg(BUCKET)
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                return Ok(S3Server {
                    script,
                    pid,
                    port,
                    _dir: dir,
                });
            }
            eprintln!(
                "s3 test: start on port {port} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err("no port range free for the S3 server".into())
    }

    fn tier2_config(&self, prefix: &str) -> String {
        format!(
            "[tier2]\nurl = \"s3://{BUCKET}/{prefix}\"\nendpoint = \"http://127.0.0.1:{}\"\n\
             region = \"us-east-1\"\naccess_key_id = \"testkey\"\nsecret_access_key = \"testsecret\"\n\
             allow_http = true\nchunk_bytes = 65536\nflush_interval_ms = 200\n",
            self.port
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .args(["stop", &self.pid])
            .output();
    }
}

/// Events flushed to S3 survive a kill -9 of the node and are read back from
/// S3, exactly once and in per-key order; nothing of tier-2 is on local disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_flush_to_s3_and_read_back_after_kill9() {
    let s3 = match S3Server::start() {
        Ok(s) => s,
        Err(why) => {
            eprintln!("SKIPPING S3 test: the S3 test server is not available here: {why}");
            return;
        }
    };
    let mut server =
        ServerProcess::start(ServerOpts::with_config(&s3.tier2_config("node-a"))).await;
    let client = server.client().await;
    let name = stream_name("s3/events");
    client
        .admin()
        .create_stream(&name, 2)
        .await
        .expect("create");
    let writer = client
        .writer(&name, WriterConfig::default())
        .await
        .expect("writer");
    const KEYS: u64 = 20;
    const PER_KEY: u64 = 150;
    for seq in 0..PER_KEY {
        for k in 0..KEYS {
            let payload = format!("k{k}:{seq}:{}", "x".repeat(1000));
            writer
                .write_event(Some(&format!("k{k}")), payload)
                .await
                .expect("queue");
        }
    }
    writer.flush().await.expect("flush");

    // Wait until every byte is in tier-2 (S3) and nothing is left in the tail.
    let admin = client.admin();
    wait_for(
        "every segment flushed to S3",
        Duration::from_secs(60),
        || {
            let admin = admin.clone();
            let name = name.clone();
            async move {
                admin.describe_stream(&name).await.is_ok_and(|info| {
                    info.segments
                        .iter()
                        .all(|s| s.length > 0 && s.tier2_length == s.length && s.chunk_count > 0)
                })
            }
        },
    )
    .await;
    assert!(
        !server.data_dir().join("tier2").exists(),
        "with an s3:// url nothing of tier-2 may be on local disk"
    );

    server.kill9();
    server.restart().await;
    let client = server.client().await;
    let events = read_all(&client, &name, Duration::from_secs(60)).await;
    assert_eq!(
        events.len() as u64,
        KEYS * PER_KEY,
        "every acknowledged event, once"
    );
    for (key, seqs) in per_key_sequences(&events) {
        let expected: Vec<u64> = (0..PER_KEY).collect();
        assert_eq!(seqs, expected, "key {key} in order, no gap, no duplicate");
    }
}
