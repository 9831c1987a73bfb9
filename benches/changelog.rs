//! Flink's state changelog on Aquifer against Flink's own DSTL, in one run:
//! the same keyed job (a generator at a fixed rate over N keys, one
//! ValueState of B bytes per key replaced per record, parallelism P, the
//! hashmap backend with `state.changelog.enabled`, a checkpoint every
//! second, materialization every 3 min so the changelog carries the state)
//! in a fresh local MiniCluster per storage, one after the other, in one JVM
//! (`benches/peers/changelog-bench/`, Flink 2.3.0):
//! - `aquifer`: `state.changelog.storage: aquifer` (connectors/changelog)
//!   on one release `aquifer serve` started here, whose tier-2 is the S3
//!   test server below (so its PUTs are S3 PUTs too);
//! - `filesystem-local`: Flink's DSTL (`flink-dstl-dfs`, `filesystem`) on a
//!   local temporary directory;
//! - `filesystem-s3`: the DSTL on `s3://dstl/changelog` through
//!   flink-s3-fs-hadoop (S3A) against the SeaweedFS S3 server of
//!   `../shared/s3/start-s3.sh`, started here on loopback.
//!
//! Each storage is wrapped by the driver's `timed` storage (found by
//! service loading like any other), which times every `persist()` from the
//! call to the completion of its future, and the part spent inside the call
//! (on the task thread); checkpoint durations come from the MiniCluster's
//! execution-graph checkpoint stats. Costs over the measured window: the
//! node's Prometheus counters and stream sizes for Aquifer, files and bytes
//! in the directory for the local DSTL, the S3A client's request counters and
//! a listing of the prefix for S3.
//!
//! After the job runs, a probe (`io.aquifer.flink.changelog.PersistProbe`,
//! outside Flink) takes the aquifer persist apart at the job's persist size
//! and at a tenth and a hundredth of it.
//!
//! ```text
//! cargo bench --bench changelog -- [--write-results] [--seconds S]
//!     [--warmup-secs W] [--rate R] [--keys N] [--value-bytes B]
//!     [--parallelism P] [--checkpoint-ms C] [--only aquifer,filesystem-local,filesystem-s3]
//!     [--no-probe] [--aquifer-tier2 s3|file]
//! ```
//! Defaults: 30 s measured per storage after the first checkpoint and 5 s of
//! warm-up, 20,000 records/s over 1,000 keys, 200-byte values, parallelism 2,
//! a checkpoint per 1,000 ms. `--write-results` writes
//! `benches/RESULTS-changelog.md`. The driver is built by
//! `benches/peers/build-changelog-bench.sh` (which first installs the
//! connectors, from a copy of `connectors/`, into ~/.m2); it needs `java`,
//! `mvn` and `rsync`. `AQUIFER_CHANGELOG_JAVA_OPTS` adds JVM options to the
//! driver's `java` (a profiler, say).

use aquifer_testkit as common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use aquifer_testkit::bench;
use common::{ServerOpts, ServerProcess};

/// Every storage, in the order they run.
const STORAGES: [&str; 3] = ["aquifer", "filesystem-local", "filesystem-s3"];
/// The target of the issue: aquifer's persist() p99.
const TARGET_P99_MS: f64 = 20.0;
/// The driver's JVM heap.
const JAVA_HEAP: &str = "-Xmx2g";
/// What one storage may take beyond its warm-up and window (JVM and
/// MiniCluster start, the first checkpoint, cancelling, closing).
const STORAGE_SLACK: Duration = Duration::from_secs(300);
/// Buckets of the S3 server: the DSTL's and aquifer's tier-2.
const DSTL_BUCKET: &str = "dstl";
const TIER2_BUCKET: &str = "aquifer-tier2";
/// Probe rounds per size (the first fifth is warm-up) and the pause between.
const PROBE_ROUNDS: u32 = 60;
const PROBE_INTERVAL_MS: u64 = 300;

struct Config {
    seconds: u64,
    warmup_secs: u64,
    rate: u64,
    keys: u64,
    value_bytes: u64,
    parallelism: u64,
    checkpoint_ms: u64,
    only: Vec<String>,
    probe: bool,
    tier2_s3: bool,
    write_results: bool,
}

impl Config {
    fn command(&self) -> String {
        let mut c = format!(
            "cargo bench --bench changelog -- --seconds {} --warmup-secs {} --rate {} --keys {} --value-bytes {} --parallelism {} --checkpoint-ms {}",
            self.seconds,
            self.warmup_secs,
            self.rate,
            self.keys,
            self.value_bytes,
            self.parallelism,
            self.checkpoint_ms
        );
        if self.only.len() != STORAGES.len() {
            c += &format!(" --only {}", self.only.join(","));
        }
        if !self.probe {
            c += " --no-probe";
        }
        if !self.tier2_s3 {
            c += " --aquifer-tier2 file";
        }
        if self.write_results {
            c += " --write-results";
        }
        c
    }

    /// Changes one writer (one subtask) persists per checkpoint.
    fn changes_per_persist(&self) -> u64 {
        (self.rate * self.checkpoint_ms / 1000 / self.parallelism).max(1)
    }
}

fn parse_args() -> Config {
    let mut c = Config {
        seconds: 30,
        warmup_secs: 5,
        rate: 20_000,
        keys: 1_000,
        value_bytes: 200,
        parallelism: 2,
        checkpoint_ms: 1_000,
        only: STORAGES.iter().map(|s| s.to_string()).collect(),
        probe: true,
        tier2_s3: true,
        write_results: false,
    };
    let mut it = std::env::args().skip(1);
    let usage = |msg: &str| -> ! {
        eprintln!("changelog bench: {msg}");
        std::process::exit(2)
    };
    while let Some(arg) = it.next() {
        let mut number = |what: &str, max: u64| -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|&n: &u64| n > 0 && n <= max)
                .unwrap_or_else(|| usage(&format!("{what} takes a number in 1..={max}")))
        };
        match arg.as_str() {
            "--seconds" => c.seconds = number("--seconds", 3600),
            "--warmup-secs" => c.warmup_secs = number("--warmup-secs", 600),
            "--rate" => c.rate = number("--rate", 10_000_000),
            "--keys" => c.keys = number("--keys", 100_000_000),
            "--value-bytes" => c.value_bytes = number("--value-bytes", 1 << 20),
            "--parallelism" => c.parallelism = number("--parallelism", 64),
            "--checkpoint-ms" => c.checkpoint_ms = number("--checkpoint-ms", 600_000),
            "--only" => {
                let list = it.next().unwrap_or_default();
                let only: Vec<String> = list.split(',').map(str::to_owned).collect();
                if only.is_empty() || only.iter().any(|s| !STORAGES.contains(&s.as_str())) {
                    usage("--only takes a comma-separated list of aquifer, filesystem-local, filesystem-s3");
                }
                // Always in the same order.
                c.only = STORAGES
                    .iter()
                    .filter(|s| only.iter().any(|o| o == *s))
                    .map(|s| s.to_string())
                    .collect();
            }
            "--no-probe" => c.probe = false,
            "--aquifer-tier2" => match it.next().as_deref() {
                Some("s3") => c.tier2_s3 = true,
                Some("file") => c.tier2_s3 = false,
                _ => usage("--aquifer-tier2 s3|file"),
            },
            "--write-results" => c.write_results = true,
            "--bench" => {}
            other => eprintln!("changelog bench: ignoring argument {other:?}"),
        }
    }
    c
}

fn main() {
    let config = parse_args();
    let args = bench::Args {
        quick: false,
        write_results: config.write_results,
        flags: Vec::new(),
    };
    let started = Instant::now();
    let load_start = bench::load_average();
    let report = match run(&config) {
        Ok(r) => r,
        Err(e) => format!("**The benchmark did not run:** {e:#}\n"),
    };
    bench::finish(
        "changelog",
        &args,
        started,
        &report,
        "RESULTS-changelog.md",
        || header(&config, &load_start, started.elapsed()) + &report,
    );
}

/// The results file's opening: command, date, revision, machine.
fn header(config: &Config, load_start: &str, took: Duration) -> String {
    let dirty = !bench::command_line("git", &["status", "--porcelain"]).is_empty();
    format!(
        "# Flink state changelog: aquifer against the DSTL (local disk, S3)\n\n\
         Command: `{}` (benches/changelog.rs, {:.0} s)  \n\
         Date: {}  \n\
         Revision: {}{}  \n\
         Machine: {} vCPU VM ({}), everything on loopback: one release `aquifer serve`, one \
         SeaweedFS S3 server (`../shared/s3/start-s3.sh`) and the driver's JVM (the MiniCluster, \
         one at a time) side by side; the machine is shared (others' builds and tests run), load \
         average at the start {load_start}, at the end {}.\n\n",
        config.command(),
        took.as_secs_f64(),
        bench::command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        bench::command_line("git", &["rev-parse", "--short", "HEAD"]),
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        bench::cpu_model(),
        bench::load_average(),
    )
}

// ------------------------------------------------------------ S3 server

/// `../shared/s3/start-s3.sh`, beside this repository.
fn s3_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/s3/start-s3.sh")
}

/// A SeaweedFS S3 server this bench started (and stops, by its PID).
struct S3Server {
    pid: Option<String>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl S3Server {
    fn start(buckets: &str) -> Result<S3Server> {
        let script = s3_script();
        if !script.exists() {
            bail!("{} not found", script.display());
        }
        let install = Command::new("bash")
            .arg(&script)
            .arg("install")
            .stdin(Stdio::null())
            .output()
            .context("run start-s3.sh install")?;
        if !install.status.success() {
            bail!("start-s3.sh install failed: {}", last_line(&install.stderr));
        }
        use rand::Rng;
        let mut rng = rand::rng();
        for _ in 0..20 {
            // As tests/e2e_s3.rs: below the ephemeral range even for
            // PORT+10005.
            let port: u16 = rng.random_range(20_000..22_700);
            let offsets = [0u16, 1, 2, 3, 5, 11, 12, 13, 14, 10_005];
            if !offsets
                .iter()
                .all(|o| std::net::TcpListener::bind(("127.0.0.1", port + o)).is_ok())
            {
                continue;
            }
            let dir = tempfile::Builder::new()
                .prefix("aquifer-changelog-s3-")
                .tempdir()?;
            let out = Command::new("bash")
                .arg(&script)
                .args(["start", &port.to_string()])
                .arg(dir.path())
                .arg(buckets)
                .stdin(Stdio::null())
                .output()
                .context("run start-s3.sh start")?;
            if out.status.success() {
                let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if pid.parse::<u32>().is_err() {
                    bail!("start-s3.sh start printed {pid:?}, not a PID");
                }
                return Ok(S3Server {
                    pid: Some(pid),
                    port,
                    _dir: dir,
                });
            }
            eprintln!(
                "changelog bench: the S3 server did not start on port {port}: {}",
                last_line(&out.stderr)
            );
        }
        bail!("no port range was free for the S3 server")
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("bash")
                .arg(s3_script())
                .args(["stop", &pid])
                .stdin(Stdio::null())
                .output();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_owned()
}

// ------------------------------------------------------------ the driver

/// `benches/peers/<script>`'s last line of stdout, or its stderr's last
/// line as the error.
fn install(script: &str) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches/peers")
        .join(script);
    let out = Command::new("bash")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {}", path.display()))?;
    if !out.status.success() {
        bail!("{script}: {}", last_line(&out.stderr));
    }
    let line = last_line(&out.stdout);
    if line.is_empty() {
        bail!("{script} printed nothing");
    }
    Ok(line)
}

/// A `java` child: stdout line by line, stderr in a file; killed on drop.
struct Java {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Java {
    fn spawn(classpath: &str, main: &str, args: &[String]) -> Result<Java> {
        let dir = tempfile::Builder::new()
            .prefix("aquifer-changelog-java-")
            .tempdir()?;
        let stderr = dir.path().join("java.stderr");
        let extra: Vec<String> = std::env::var("AQUIFER_CHANGELOG_JAVA_OPTS")
            .map(|v| v.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let mut child = Command::new("java")
            .arg(JAVA_HEAP)
            .args(extra)
            .arg("-cp")
            .arg(classpath)
            .arg(main)
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&stderr)?))
            .spawn()
            .with_context(|| format!("spawn java {main}"))?;
        let stdout = child.stdout.take().context("java's stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Java {
            child,
            lines,
            stderr,
            _dir: dir,
        })
    }

    /// Every stdout line until one equal to `last`, within `timeout`
    /// (then the process is killed and this fails).
    fn lines_until(&mut self, last: &str, timeout: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == last => return Ok(out),
                Ok(line) => {
                    if let Some(storage) = line.strip_prefix("RUN ") {
                        eprintln!("changelog bench: measuring {storage}");
                    }
                    out.push(line)
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.kill();
                    bail!("no {last} within {timeout:?}: {}", self.stderr_tail())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.wait(Duration::from_secs(10));
                    bail!(
                        "java ended ({status}) before {last}: {}",
                        self.stderr_tail()
                    )
                }
            }
        }
    }

    /// The driver's own lines of stderr, else its last three.
    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let own: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("ChangelogBench: ") && l.contains("failed"))
            .collect();
        let lines: Vec<&str> = if own.is_empty() {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(3)..].to_vec()
        } else {
            own
        };
        lines.join(" | ")
    }

    /// Waits (bounded) for the exit, killing the process after `timeout`.
    fn wait(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.to_string();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
        "killed after the timeout".into()
    }

    fn kill(&mut self) {
        // Our own child, by its handle (its PID, not yet reaped).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Java {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

// ------------------------------------------------------------ the run

/// The aquifer node's config: metrics on `metrics`, tier-2 on the S3 server
/// (when there is one and it is wanted).
fn server_config(metrics: u16, s3: Option<&S3Server>) -> String {
    let mut c = format!("metrics_listen = \"127.0.0.1:{metrics}\"\n");
    if let Some(s3) = s3 {
        c += &format!(
            "[tier2]\nurl = \"s3://{TIER2_BUCKET}/aquifer\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
             access_key_id = \"testkey\"\nsecret_access_key = \"testsecret\"\nallow_http = true\n",
            s3.endpoint()
        );
    }
    c
}

struct Outcome {
    results: Vec<Value>,
    probes: Vec<String>,
    notes: Vec<String>,
    tier2: String,
    /// The driver's JVM and Flink versions.
    runtime: String,
}

fn run(config: &Config) -> Result<String> {
    let classpath_file = install("build-changelog-bench.sh").context("building the driver")?;
    let classpath = std::fs::read_to_string(&classpath_file)
        .with_context(|| format!("read {classpath_file}"))?
        .trim()
        .to_owned();
    let mut notes = Vec::new();
    let mut storages = config.only.clone();

    let s3 = match S3Server::start(&format!("{DSTL_BUCKET},{TIER2_BUCKET}")) {
        Ok(s) => Some(s),
        Err(e) => {
            let note = format!("the S3 test server is unavailable ({e:#}): filesystem-s3 left out, aquifer's tier-2 on local files");
            eprintln!("changelog bench: {note}");
            notes.push(note);
            storages.retain(|s| s != "filesystem-s3");
            None
        }
    };
    let rt = bench::runtime();
    let metrics = common::free_port();
    let tier2_s3 = if config.tier2_s3 { s3.as_ref() } else { None };
    let tier2 = match tier2_s3 {
        Some(_) => format!("S3 (`s3://{TIER2_BUCKET}/aquifer` on the same S3 server, default chunking: 8 MiB or 10 s)"),
        None => "local files (`<data dir>/tier2`, default chunking: 8 MiB or 10 s)".to_owned(),
    };
    let mut server = if storages.iter().any(|s| s == "aquifer") || config.probe {
        Some(rt.block_on(ServerProcess::start(ServerOpts::with_config(
            &server_config(metrics, tier2_s3),
        ))))
    } else {
        None
    };
    let work = tempfile::Builder::new()
        .prefix("aquifer-changelog-work-")
        .tempdir()?;

    let mut args: Vec<String> = vec![
        "--storages".into(),
        storages.join(","),
        "--seconds".into(),
        config.seconds.to_string(),
        "--warmup-secs".into(),
        config.warmup_secs.to_string(),
        "--rate".into(),
        config.rate.to_string(),
        "--keys".into(),
        config.keys.to_string(),
        "--value-bytes".into(),
        config.value_bytes.to_string(),
        "--parallelism".into(),
        config.parallelism.to_string(),
        "--checkpoint-ms".into(),
        config.checkpoint_ms.to_string(),
        "--work-dir".into(),
        work.path().display().to_string(),
    ];
    if let Some(server) = &server {
        args.extend([
            "--aquifer".into(),
            server.addr(),
            "--aquifer-metrics".into(),
            format!("127.0.0.1:{metrics}"),
        ]);
    }
    if let Some(s3) = &s3 {
        args.extend([
            "--s3-endpoint".into(),
            s3.endpoint(),
            "--s3-bucket".into(),
            DSTL_BUCKET.into(),
        ]);
    }
    let mut results = Vec::new();
    let mut runtime = String::new();
    if !storages.is_empty() {
        eprintln!(
            "changelog bench: running {} ({} s each)",
            storages.join(", "),
            config.seconds
        );
        let per = Duration::from_secs(config.seconds + config.warmup_secs) + STORAGE_SLACK;
        let mut java = Java::spawn(&classpath, "aquifer.bench.changelog.ChangelogBench", &args)?;
        let lines = java.lines_until(
            "DONE",
            Duration::from_secs(60) + per * storages.len() as u32,
        )?;
        java.wait(Duration::from_secs(60));
        for line in lines {
            if let Some(r) = line.strip_prefix("READY ") {
                runtime = r.to_owned();
            }
            if let Some(json) = line.strip_prefix("RESULT ") {
                results.push(
                    serde_json::from_str::<Value>(json).with_context(|| format!("parse {json}"))?,
                );
            }
        }
    }

    let mut probes = Vec::new();
    if config.probe {
        if let Some(server) = &server {
            let n = config.changes_per_persist();
            let sizes: Vec<String> = [n, n / 10, n / 100]
                .iter()
                .filter(|&&s| s > 0)
                .map(|s| s.to_string())
                .collect();
            // The change as the job's: key (8 bytes), namespace and value.
            let change_bytes = config.value_bytes + 20;
            eprintln!(
                "changelog bench: probing aquifer persists of {} changes",
                sizes.join(", ")
            );
            let mut java = Java::spawn(
                &classpath,
                "io.aquifer.flink.changelog.PersistProbe",
                &[
                    server.addr(),
                    sizes.join(","),
                    change_bytes.to_string(),
                    PROBE_ROUNDS.to_string(),
                    PROBE_INTERVAL_MS.to_string(),
                ],
            )?;
            match java.lines_until("DONE", Duration::from_secs(600)) {
                Ok(lines) => {
                    probes = lines
                        .into_iter()
                        .filter(|l| l.starts_with("PROBE "))
                        .collect()
                }
                Err(e) => notes.push(format!("the persist probe failed: {e:#}")),
            }
            java.wait(Duration::from_secs(30));
        }
    }
    if let Some(mut s) = server.take() {
        s.stop();
    }
    drop(s3);
    Ok(report(
        config,
        &Outcome {
            results,
            probes,
            notes,
            tier2,
            runtime,
        },
    ))
}

// ------------------------------------------------------------ the report

/// What the figures say, side by side: only what this run measured.
fn reading(results: &[Value]) -> String {
    let by = |name: &str| {
        results.iter().find(|r| {
            get(r, "storage").and_then(Value::as_str) == Some(name) && get(r, "error").is_none()
        })
    };
    let Some(aq) = by("aquifer") else {
        return String::new();
    };
    let mut lines = Vec::new();
    let p99 = |r: &Value| num(r, "persist.complete.p99_ms").unwrap_or(0.0);
    for other in ["filesystem-local", "filesystem-s3"] {
        if let Some(r) = by(other) {
            lines.push(format!(
                "persist() p99: aquifer {} ms, {other} {} ms ({:.2}x); p50 {} against {} ms.",
                ms(Some(p99(aq))),
                ms(Some(p99(r))),
                p99(aq) / p99(r).max(1e-9),
                ms(num(aq, "persist.complete.p50_ms")),
                ms(num(r, "persist.complete.p50_ms")),
            ));
        }
    }
    let call = |r: &Value| num(r, "persist.call.p50_ms").unwrap_or(0.0);
    let complete = |r: &Value| num(r, "persist.complete.p50_ms").unwrap_or(0.0);
    if let Some(r) = by("filesystem-local").or_else(|| by("filesystem-s3")) {
        lines.push(format!(
            "Inside the persist() call (the task thread, in the checkpoint's synchronous phase): \
             aquifer {} ms p50 ({:.0}% of its persist), the DSTL {} ms ({}): both hand the \
             changes to an upload thread (the aquifer storage also uploads early, at \
             `upload-early`, between checkpoints).",
            ms(Some(call(aq))),
            100.0 * call(aq) / complete(aq).max(1e-9),
            ms(Some(call(r))),
            get(r, "storage").and_then(Value::as_str).unwrap_or("?"),
        ));
    }
    let batches = num(aq, "costs.append_batches").unwrap_or(0.0);
    if batches > 0.0 {
        lines.push(format!(
            "The node itself acknowledged an append in {:.1} ms on average (batch received → \
             durable, its `aquifer_append_ack_seconds`: raft log write and fdatasync included), of \
             {:.2} MB each, against {} ms for the whole persist at p50: the rest is the client's \
             (encoding, copies, gRPC) and the transfer.",
            num(aq, "costs.append_ack_seconds_sum").unwrap_or(0.0) / batches * 1e3,
            num(aq, "costs.append_bytes").unwrap_or(0.0) / batches / 1e6,
            ms(num(aq, "persist.complete.p50_ms")),
        ));
    }
    let growth = |r: &Value| num(r, "heap.growth_mb_per_s").unwrap_or(0.0);
    let others: Vec<f64> = ["filesystem-local", "filesystem-s3"]
        .iter()
        .filter_map(|n| by(n))
        .map(growth)
        .collect();
    let most_other = others.iter().copied().fold(0.0f64, f64::max);
    let written =
        num(aq, "costs.append_bytes").unwrap_or(0.0) / num(aq, "seconds").unwrap_or(1.0) / 1e6;
    if growth(aq) > 1.0 && !others.is_empty() && growth(aq) > 3.0 * most_other.max(0.1) {
        lines.push(format!(
            "With aquifer the heap grew {:.1} MB/s (the DSTL: at most {:+.1} MB/s) while it appended \
             {:.1} MB/s: the storage keeps every change it uploaded (each upload's list of changes, \
             for a re-upload) until the changelog is truncated, i.e. until the next \
             materialization — at this rate a 3-minute interval holds ~{:.0} MB, Flink's default \
             10 minutes ~{:.0} MB.",
            growth(aq),
            most_other,
            written,
            growth(aq) * 180.0,
            growth(aq) * 600.0,
        ));
    }
    if lines.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n## Reading\n\n");
    for l in lines {
        s += &format!("- {l}\n");
    }
    s
}

fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn num(v: &Value, path: &str) -> Option<f64> {
    get(v, path).and_then(Value::as_f64)
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(x) if x < 10.0 => format!("{x:.2}"),
        Some(x) if x < 100.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.0}"),
    }
}

fn mb(bytes: f64) -> String {
    format!("{:.1} MB", bytes / 1e6)
}

fn count(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| format!("{x:.0}"))
}

/// From the deltas of a cumulative Prometheus histogram (`costs.<prefix><le>`
/// → count): the upper bounds of the buckets holding the p50, the p99 and the
/// largest observation, in ms.
fn bucket_bounds(r: &Value, prefix: &str) -> Option<(f64, f64, f64)> {
    let costs = get(r, "costs")?.as_object()?;
    let mut b: Vec<(f64, f64)> = costs
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(prefix)?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v.as_f64()?))
        })
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = b.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let at = |q: f64| {
        b.iter()
            .find(|(_, n)| *n >= q * total)
            .map_or(f64::INFINITY, |(le, _)| le * 1e3)
    };
    Some((at(0.5), at(0.99), at(1.0)))
}

fn le(ms_bound: f64) -> String {
    if ms_bound.is_finite() {
        format!("≤ {}", ms(Some(ms_bound)))
    } else {
        "> 105 s".into()
    }
}

fn report(config: &Config, o: &Outcome) -> String {
    let mut s = String::new();
    let per_persist = config.changes_per_persist();
    s += &format!(
        "## The job\n\n\
         A generator source at {} records/s (Flink's `DataGeneratorSource`, rate-limited) over {} keys, \
         `keyBy` then one `KeyedProcessFunction` replacing its key's `ValueState<byte[]>` with {} fresh \
         (incompressible) bytes per record, into a discarding sink; parallelism {}; hashmap backend, \
         `state.changelog.enabled: true`, `state.changelog.periodic-materialize.interval: 3 min` (no \
         materialization in a run: the changelog carries the state); a checkpoint every {} ms \
         (checkpoint storage: a local directory for every storage; restart strategy: none). One \
         TaskManager with {} slots in a fresh MiniCluster per storage, one after the other in one JVM \
         (`-Xmx2g`, {}); each measured for {} s after its first completed checkpoint and {} s of warm-up. \
         So each persist() carries about a checkpoint interval of one subtask's changes: ~{} changes, \
         ~{:.1} MB.\n\n\
         Storages: `aquifer` with its defaults (persist delay 2 ms, one segment; the node's tier-2: {}); \
         `filesystem` (Flink's DSTL, flink-dstl-dfs 2.3.0) with its defaults (persist delay 10 ms, \
         preemptive persist at 5 MB, upload timeout 1 s, no compression) on a local directory, and on \
         `s3://{DSTL_BUCKET}/changelog` through flink-s3-fs-hadoop 2.3.0 (Hadoop S3A 3.3.4, path-style, \
         single PUTs below its multipart threshold) against SeaweedFS 4.48. Durability differs: aquifer \
         acknowledges after its raft log's fdatasync, the S3 server after storing the PUT, the DSTL on \
         a local directory after writing and closing the file (no fsync: the page cache).\n\n",
        config.rate,
        config.keys,
        config.value_bytes,
        config.parallelism,
        config.checkpoint_ms,
        config.parallelism,
        o.runtime,
        config.seconds,
        config.warmup_secs,
        per_persist,
        per_persist as f64 * (config.value_bytes as f64 + 36.0) / 1e6,
        o.tier2,
    );

    s += "## persist() and checkpoints\n\n\
          persist(): from the call to the completion of its future, every persist begun in the \
          window (the `timed` wrapper, the same for every storage); \"in the call\" is the part \
          before persist() returns, spent on the task thread. Checkpoints: those triggered in the \
          window, end to end (trigger to the last acknowledgement), and the slowest subtask's \
          synchronous and asynchronous parts. Milliseconds.\n\n\
          | storage | persist p50 | p99 | p99.9 | max | persists | in the call p50 / p99 | checkpoint p50 | p99 | max | checkpoints (failed) | slowest sync p50 / async p50 | records/s |\n\
          |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for r in &o.results {
        let name = get(r, "storage").and_then(Value::as_str).unwrap_or("?");
        if let Some(err) = get(r, "error").and_then(Value::as_str) {
            s += &format!(
                "| {name} | failed: {} |||||||||||| \n",
                err.replace('|', "/")
            );
            continue;
        }
        s += &format!(
            "| {name} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} ({}) | {} / {} | {:.0} |\n",
            ms(num(r, "persist.complete.p50_ms")),
            ms(num(r, "persist.complete.p99_ms")),
            ms(num(r, "persist.complete.p999_ms")),
            ms(num(r, "persist.complete.max_ms")),
            count(num(r, "persist.complete.count")),
            ms(num(r, "persist.call.p50_ms")),
            ms(num(r, "persist.call.p99_ms")),
            ms(num(r, "checkpoints.end_to_end.p50_ms")),
            ms(num(r, "checkpoints.end_to_end.p99_ms")),
            ms(num(r, "checkpoints.end_to_end.max_ms")),
            count(num(r, "checkpoints.end_to_end.count")),
            count(num(r, "checkpoints.failed")),
            ms(num(r, "checkpoints.sync_slowest_subtask.p50_ms")),
            ms(num(r, "checkpoints.async_slowest_subtask.p50_ms")),
            num(r, "records_per_s").unwrap_or(0.0),
        );
    }
    let n = o
        .results
        .iter()
        .filter_map(|r| num(r, "persist.complete.count"))
        .fold(f64::INFINITY, f64::min);
    if n.is_finite() && n < 1000.0 {
        s += &format!(
            "\nQuantiles are nearest-rank over {n:.0} or more persists per storage: with fewer than \
             1,000, p99.9 is the maximum, and with fewer than 100 so is p99.\n"
        );
    }

    let aquifer = o
        .results
        .iter()
        .find(|r| get(r, "storage").and_then(Value::as_str) == Some("aquifer"));
    match aquifer.and_then(|r| num(r, "persist.complete.p99_ms")) {
        Some(p99) => {
            s += &format!(
                "\n**Target (persist() p99 under {TARGET_P99_MS:.0} ms with aquifer): {}** — aquifer's \
                 p99 was {} ms here.\n",
                if p99 < TARGET_P99_MS { "met" } else { "not met" },
                ms(Some(p99))
            );
        }
        None => s += "\n**Target (persist() p99 under 20 ms with aquifer): not measured.**\n",
    }

    s += "\n## What each costs\n\nOver the measured window (a counter's end minus its start), and per completed checkpoint. \
          Heap growth: the driver's heap in use after a full GC a second before the window and right \
          after it (the MiniCluster runs in that JVM), per second.\n\n\
          | storage | writes | writes per checkpoint | bytes written | MB/s | heap growth | other |\n\
          |---|---:|---:|---:|---:|---:|---|\n";
    for r in &o.results {
        let name = get(r, "storage").and_then(Value::as_str).unwrap_or("?");
        if get(r, "error").is_some() {
            continue;
        }
        let secs = num(r, "seconds").unwrap_or(1.0);
        let ckpts = num(r, "checkpoints.end_to_end.count")
            .unwrap_or(0.0)
            .max(1.0);
        let c = |k: &str| num(r, &format!("costs.{k}")).unwrap_or(0.0);
        let flink_bytes = num(r, "persist.incremental_bytes").unwrap_or(0.0);
        let (write_count, writes, bytes, other) = match name {
            "aquifer" => {
                let batches = c("append_batches");
                let ack_mean = if batches > 0.0 { c("append_ack_seconds_sum") / batches * 1e3 } else { 0.0 };
                let hist = |prefix: &str| {
                    bucket_bounds(r, prefix).map_or("–".to_owned(), |(p50, p99, max)| {
                        format!("p50 {} / p99 {} / max {} ms", le(p50), le(p99), le(max))
                    })
                };
                (
                    batches,
                    format!("{:.0} appends ({:.0} events)", batches, c("append_events")),
                    c("append_bytes"),
                    format!(
                        "{:.0} raft log writes (write + fdatasync: {}); the node's ack (batch received → durable) \
                         {:.1} ms mean, {}; tier-2: {:.0} PUTs, {}; streams held {} at the end",
                        c("log_writes"),
                        hist("log_write_le_"),
                        ack_mean,
                        hist("ack_le_"),
                        c("tier2_puts"),
                        mb(c("tier2_put_bytes")),
                        mb(c("stream_bytes_held")),
                    ),
                )
            }
            "filesystem-local" => (
                c("files"),
                format!("{:.0} files", c("files")),
                c("bytes"),
                "new files in the directory (none deleted in a run)".to_owned(),
            ),
            "filesystem-s3" => (
                c("s3a_object_put_request"),
                format!("{:.0} PUTs", c("s3a_object_put_request")),
                c("s3a_object_put_bytes"),
                format!(
                    "S3A client counters; multipart parts {:.0}, HEAD {:.0}, LIST {:.0} (some are the bench's own listing); \
                     the server lists {:.0} new objects, {}",
                    c("s3a_multipart_upload_part_put"),
                    c("s3a_object_metadata_request"),
                    c("s3a_object_list_request"),
                    c("objects"),
                    mb(c("bytes")),
                ),
            ),
            _ => (0.0, "?".into(), 0.0, String::new()),
        };
        s += &format!(
            "| {name} | {writes} | {:.1} | {} | {:.2} | {:+.1} MB/s ({:.0} → {:.0} MB) | {other}; Flink's handles: {} of new changes |\n",
            write_count / ckpts,
            mb(bytes),
            bytes / secs / 1e6,
            num(r, "heap.growth_mb_per_s").unwrap_or(0.0),
            num(r, "heap.before_mb").unwrap_or(0.0),
            num(r, "heap.after_mb").unwrap_or(0.0),
            mb(flink_bytes),
        );
    }

    if !o.probes.is_empty() {
        s += &format!(
            "\n## Where an aquifer persist's time goes (probe, outside Flink)\n\n\
             `io.aquifer.flink.changelog.PersistProbe` (benches/peers/changelog-bench/, a diagnosis \
             tool in the storage's package): a writer of the real aquifer storage on the same node, \
             N changes of {} bytes appended then persist() timed, {} rounds {} ms apart (the first \
             fifth left out), nothing else in its JVM; then the storage's steps alone on the same \
             changes: `ChangeFormat.encode`, `Framing.frame`, and an `EventWriter.write` of the encoded \
             payload to a stream of its own (the call, and to its ack). p50 / p90 / max, ms.\n\n\
             | changes (MB) | persist() call | persist() complete | encode | frame | EventWriter.write call | write → ack |\n\
             |---:|---:|---:|---:|---:|---:|---:|\n",
            config.value_bytes + 20,
            PROBE_ROUNDS,
            PROBE_INTERVAL_MS
        );
        for p in &o.probes {
            let f: std::collections::HashMap<&str, f64> = p
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
                .collect();
            let trio = |k: &str| {
                format!(
                    "{} / {} / {}",
                    ms(f.get(format!("{k}_p50").as_str()).copied()),
                    ms(f.get(format!("{k}_p90").as_str()).copied()),
                    ms(f.get(format!("{k}_max").as_str()).copied())
                )
            };
            s += &format!(
                "| {} ({:.2}) | {} | {} | {} | {} | {} | {} |\n",
                f.get("changes").copied().unwrap_or(0.0),
                f.get("persist_bytes").copied().unwrap_or(0.0) / 1e6,
                trio("persist_call"),
                trio("persist_complete"),
                trio("encode"),
                trio("frame"),
                trio("write_call"),
                trio("write_ack"),
            );
        }
    }

    s += &reading(&o.results);

    if !o.notes.is_empty() {
        s += "\n## Notes\n\n";
        for n in &o.notes {
            s += &format!("- {n}\n");
        }
    }
    s += "\n## Raw results\n\nThe driver's RESULT lines (JSON), for figures the tables leave out.\n\n```\n";
    for r in &o.results {
        s += &format!("{r}\n");
    }
    for p in &o.probes {
        s += &format!("{p}\n");
    }
    s += "```\n";
    s
}
