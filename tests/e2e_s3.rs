//! Tier-2 on a real S3 server: SeaweedFS, installed and started on loopback
//! by `../shared/s3/start-s3.sh` (it handles conditional puts under races,
//! which chunk naming relies on). When the server cannot be installed or
//! started here, the test says so on stderr and skips.

use aquifer_testkit as common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use aquifer_client::WriterConfig;
use rand::Rng;

use common::{
    per_key_sequences, read_all, stream_name, wait_all_in_tier2, write_keyed_range, ServerOpts,
    ServerProcess,
};

const BUCKET: &str = "aquifer";

/// A SeaweedFS S3 server this test started (and stops, by PID).
struct S3Server {
    script: PathBuf,
    pid: Option<String>,
    port: u16,
    dir: tempfile::TempDir,
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
        let mut rng = rand::rng();
        for _ in 0..20 {
            // Below the ephemeral range (32768+) even for PORT+10005, so
            // no other test's free-port probe can take one of its ports.
            let port: u16 = rng.random_range(20_000..22_700);
            let offsets = [0u16, 1, 2, 3, 5, 11, 12, 13, 14, 10_005];
            let free = offsets
                .iter()
                .all(|o| std::net::TcpListener::bind(("127.0.0.1", port + o)).is_ok());
            if !free {
                continue;
            }
            let mut server = S3Server {
                script: script.clone(),
                pid: None,
                port,
                dir: tempfile::tempdir().map_err(|e| e.to_string())?,
            };
            match server.run() {
                Ok(()) => return Ok(server),
                Err(why) => eprintln!("s3 test: start on port {port} failed: {why}"),
            }
        }
        Err("no port range free for the S3 server".into())
    }

    /// Starts the server process on this port and data dir (again).
    fn run(&mut self) -> Result<(), String> {
        let out = Command::new("bash")
            .arg(&self.script)
            .args(["start", &self.port.to_string()])
            .arg(self.dir.path())
            .arg(BUCKET)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        self.pid = Some(String::from_utf8_lossy(&out.stdout).trim().to_owned());
        Ok(())
    }

    /// Stops the server process (its data stays).
    fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("bash")
                .arg(&self.script)
                .args(["stop", &pid])
                .output();
        }
    }

    fn tier2_config(&self, prefix: &str) -> String {
        format!(
            "tail_buffer_bytes_max = 16777216\n[tier2]\nurl = \"s3://{BUCKET}/{prefix}\"\nendpoint = \"http://127.0.0.1:{}\"\n\
             region = \"us-east-1\"\naccess_key_id = \"testkey\"\nsecret_access_key = \"testsecret\"\n\
             allow_http = true\nchunk_bytes = 65536\nflush_interval_ms = 200\n",
            self.port
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
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
    write_keyed_range(&writer, KEYS, 0, PER_KEY, 1000).await;

    // Every byte in tier-2 (S3), nothing left in the tail.
    wait_all_in_tier2(&client, &name, Duration::from_secs(60)).await;
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

    // A direct scan reads the chunks from S3 itself (credentials from the
    // standard environment variables) and prints the same events.
    let scan = |direct: bool| {
        let mut args = vec!["scan", "s3/events", "--addr"];
        let addr = server.addr();
        args.push(&addr);
        if direct {
            args.push("--direct");
        }
        let out = Command::new(common::bin())
            .args(&args)
            .env("AWS_ACCESS_KEY_ID", "testkey")
            .env("AWS_SECRET_ACCESS_KEY", "testsecret")
            .output()
            .expect("run scan");
        common::sorted_lines(&out)
    };
    let brokered = scan(false);
    assert_eq!(brokered.len() as u64, KEYS * PER_KEY);
    assert_eq!(
        scan(true),
        brokered,
        "--direct from S3 prints the same events"
    );
}

/// S3 stopped while writers keep going: appends are still acknowledged while
/// the tail buffers have room, nothing is lost, and once S3 is back flushing
/// catches up by itself and every event reads back once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_survive_an_s3_outage_and_flushing_catches_up() {
    let mut s3 = match S3Server::start() {
        Ok(s) => s,
        Err(why) => {
            eprintln!("SKIPPING S3 test: the S3 test server is not available here: {why}");
            return;
        }
    };
    let server = ServerProcess::start(ServerOpts::with_config(&s3.tier2_config("node-b"))).await;
    let client = server.client().await;
    let name = stream_name("s3/outage");
    client
        .admin()
        .create_stream(&name, 2)
        .await
        .expect("create");
    let writer = client
        .writer(&name, WriterConfig::default())
        .await
        .expect("writer");
    const KEYS: u64 = 10;
    write_keyed_range(&writer, KEYS, 0, 100, 500).await;
    wait_all_in_tier2(&client, &name, Duration::from_secs(60)).await;

    s3.stop();
    // 2,000 events of ~0.5 KiB fit the 16 MiB tail budget: still acknowledged.
    write_keyed_range(&writer, KEYS, 100, 300, 500).await;
    let info = client
        .admin()
        .describe_stream(&name)
        .await
        .expect("describe");
    let in_tail: u64 = info.segments.iter().map(|s| s.tail_buffer_bytes).sum();
    assert!(
        in_tail > 0,
        "with S3 down the new bytes wait in the tail buffers"
    );

    s3.run().expect("S3 server restarts");
    wait_all_in_tier2(&client, &name, Duration::from_secs(120)).await;
    let events = read_all(&client, &name, Duration::from_secs(60)).await;
    assert_eq!(
        events.len() as u64,
        KEYS * 300,
        "every acknowledged event, once"
    );
    for (key, seqs) in per_key_sequences(&events) {
        assert_eq!(seqs, (0..300).collect::<Vec<u64>>(), "key {key} in order");
    }
}

/// A read that needs tier-2 while S3 is down fails within
/// `tier2.request_timeout_ms` with UNAVAILABLE naming tier-2 (not after
/// object_store's minutes of retries), and succeeds once S3 is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_during_an_s3_outage_fails_fast_and_clearly() {
    let mut s3 = match S3Server::start() {
        Ok(s) => s,
        Err(why) => {
            eprintln!("SKIPPING S3 test: the S3 test server is not available here: {why}");
            return;
        }
    };
    // A small cache, so the read must go to tier-2.
    let config = format!(
        "cache_bytes_max = 1048576\n{}request_timeout_ms = 3000\n",
        s3.tier2_config("outage")
    );
    let server = ServerProcess::start(ServerOpts::with_config(&config)).await;
    let client = server.client().await;
    let name = stream_name("s3/outage");
    client
        .admin()
        .create_stream(&name, 1)
        .await
        .expect("create");
    let writer = client
        .writer(&name, WriterConfig::default())
        .await
        .expect("writer");
    write_keyed_range(&writer, 10, 0, 1000, 1000).await;
    wait_all_in_tier2(&client, &name, Duration::from_secs(60)).await;
    client.admin().seal_stream(&name).await.expect("seal");

    let segment = client
        .admin()
        .describe_stream(&name)
        .await
        .expect("describe")
        .segments[0]
        .segment_id;
    s3.stop();
    // One raw read (the clients would retry UNAVAILABLE for their own retry timeout).
    let started = std::time::Instant::now();
    let mut raw =
        aquifer_proto::v1::read_client::ReadClient::connect(format!("http://{}", server.addr()))
            .await
            .expect("connect");
    let first = tokio::time::timeout(Duration::from_secs(30), async {
        let mut stream = raw
            .read_segment(aquifer_proto::v1::ReadSegmentRequest {
                segment_id: segment,
                offset: 0,
                follow: false,
                end_offset: 0,
            })
            .await?
            .into_inner();
        stream.message().await
    })
    .await
    .expect("the read answers within 30 s");
    let took = started.elapsed();
    let status = first.expect_err("the read cannot succeed with tier-2 down");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("tier-2"),
        "the error names tier-2: {}",
        status.message()
    );
    assert!(
        took < Duration::from_secs(20),
        "it failed after {took:?}, not within the 3 s request timeout"
    );
    eprintln!("read failed after {took:?}: {}", status.message());

    s3.run().expect("restart the S3 server");
    let events = read_all(&client, &name, Duration::from_secs(60)).await;
    assert_eq!(
        events.len(),
        10_000,
        "everything reads back once S3 is back"
    );
}
