//! Shared harness for the end-to-end tests (and the benchmark harness, which
//! includes this file by `#[path]`): runs the real `aquifer` binary on
//! loopback, restarts and kills it, runs the CLI, and checks event logs.
//!
//! Rules it keeps: every process it starts is ended by its PID (never by
//! name), every wait is bounded in time, and every temporary directory lives
//! in a `TempDir` owned by the value that created it.
#![allow(dead_code)]

use futures::TryStreamExt;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aquifer_client::{Client, Event, ReaderConfig, StartFrom, StreamName};

/// The binary under test (the bench profile's build when run by `cargo bench`).
pub const BIN: &str = env!("CARGO_BIN_EXE_aquifer");
/// How long a node may take to start serving.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one CLI command may run.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Poll interval of the wait-for-condition loops.
const POLL: Duration = Duration::from_millis(25);
/// Attempts to find a free port when the first one turns out to be taken.
const PORT_ATTEMPTS: u32 = 5;

/// How a node is started.
#[derive(Debug, Default, Clone)]
pub struct ServerOpts {
    /// TOML text for `--config` (keys of `aquifer_server::ServerConfig`).
    pub config: Option<String>,
    /// Use this data dir instead of a fresh temporary one (the caller owns it).
    pub data_dir: Option<PathBuf>,
    /// Extra environment for the server process (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Listen on this port instead of a free one (cluster members must know
    /// each other's addresses before they start).
    pub port: Option<u16>,
}

impl ServerOpts {
    pub fn with_config(config: &str) -> Self {
        ServerOpts {
            config: Some(config.to_owned()),
            ..ServerOpts::default()
        }
    }
}

/// One `aquifer serve` process on 127.0.0.1, with its own data dir.
pub struct ServerProcess {
    child: Option<Child>,
    port: u16,
    data_dir: PathBuf,
    config_path: Option<PathBuf>,
    stderr_path: PathBuf,
    env: Vec<(String, String)>,
    /// Starts of this node so far (names the stderr file of each).
    starts: u32,
    /// Holds the stderr files, the config file and, unless one was passed
    /// in, the data dir; removed on drop.
    temp: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts a node and waits until it serves (panics with its stderr if it
    /// does not within [`START_TIMEOUT`]).
    pub async fn start(opts: ServerOpts) -> ServerProcess {
        let mut server = ServerProcess::spawn(opts);
        for attempt in 1..=PORT_ATTEMPTS {
            match server.wait_ready_inner().await {
                Ok(()) => return server,
                Err(why) if attempt < PORT_ATTEMPTS && server.lost_port_race() => {
                    eprintln!(
                        "harness: port {} was taken ({why}); trying another",
                        server.port
                    );
                    server.port = free_port();
                    server.respawn();
                }
                Err(why) => server.fail(&why),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Spawns a node without waiting for it to serve.
    pub fn spawn(opts: ServerOpts) -> ServerProcess {
        let temp = tempfile::Builder::new()
            .prefix("aquifer-test-")
            .tempdir()
            .expect("create temp dir");
        let data_dir = match opts.data_dir {
            Some(dir) => dir,
            None => temp.path().join("data"),
        };
        let config_path = opts.config.map(|text| {
            let path = temp.path().join("server.toml");
            std::fs::write(&path, text).expect("write config file");
            path
        });
        let mut server = ServerProcess {
            child: None,
            port: opts.port.unwrap_or_else(free_port),
            data_dir,
            config_path,
            stderr_path: PathBuf::new(),
            env: opts.env,
            starts: 0,
            temp,
        };
        server.respawn();
        server
    }

    /// Starts the process again (same data dir, port and config) without
    /// waiting; the previous one must have exited.
    pub fn respawn(&mut self) {
        if let Some(child) = self.child.as_mut() {
            assert!(
                child.try_wait().expect("try_wait").is_some(),
                "respawn while the previous process (pid {}) still runs",
                child.id()
            );
        }
        self.starts += 1;
        self.stderr_path = self.temp.path().join(format!("stderr.{}.log", self.starts));
        let stderr = File::create(&self.stderr_path).expect("create stderr file");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.addr());
        if let Some(path) = &self.config_path {
            cmd.arg("--config").arg(path);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        self.child = Some(cmd.spawn().expect("spawn aquifer serve"));
    }

    /// Restarts a node that was killed or stopped (same dir and port) and
    /// waits until it serves.
    pub async fn restart(&mut self) {
        self.respawn();
        self.wait_ready().await;
    }

    /// Waits until the node serves; panics with its stderr otherwise.
    pub async fn wait_ready(&mut self) {
        if let Err(why) = self.wait_ready_inner().await {
            self.fail(&why);
        }
    }

    async fn wait_ready_inner(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr: SocketAddr = self.addr().parse().expect("socket address");
        let mut last_error = String::from("never tried");
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Err(format!("the server exited during start-up with {status}"));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                match Client::connect(&self.addr()).await {
                    Ok(client) => match client.admin().list_streams(None).await {
                        Ok(_) => return Ok(()),
                        Err(e) => last_error = format!("list_streams: {e}"),
                    },
                    Err(e) => last_error = format!("connect: {e}"),
                }
            } else {
                last_error = "tcp connect refused".into();
            }
            tokio::time::sleep(POLL).await;
        }
        Err(format!(
            "the server did not serve within {START_TIMEOUT:?} (last error: {last_error})"
        ))
    }

    fn lost_port_race(&mut self) -> bool {
        self.try_wait().is_some() && {
            let err = self.stderr_text().to_lowercase();
            err.contains("address already in use") || err.contains("addrinuse")
        }
    }

    fn fail(&mut self, why: &str) -> ! {
        let stderr = self.stderr_text();
        self.kill9();
        panic!(
            "{why}\n--- server stderr ({}) ---\n{stderr}\n--- end of stderr ---",
            self.stderr_path.display()
        );
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The PID of the running process, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A fresh client of this node.
    pub async fn client(&self) -> Client {
        Client::connect(&self.addr())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.addr()))
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if child.try_wait().expect("try_wait").is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit (panics after [`STOP_TIMEOUT`]).
    pub fn stop(&mut self) -> ExitStatus {
        let pid = self.pid().expect("a started server");
        if self.try_wait().is_none() {
            // SAFETY: kill(2) on the PID of our own child, which has not been
            // reaped yet (try_wait returned None), so it cannot be reused.
            let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            assert_eq!(rc, 0, "kill(SIGTERM) failed");
        }
        match self.wait_for_exit(STOP_TIMEOUT) {
            Some(status) => status,
            None => self.fail(&format!("the server ignored SIGTERM for {STOP_TIMEOUT:?}")),
        }
    }

    /// The stderr of the current (or last) run.
    pub fn stderr_text(&self) -> String {
        let bytes = std::fs::read(&self.stderr_path).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Runs the CLI against this node: `aquifer ARGS... --addr ADDR`.
    pub fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        cli(&with_addr(args, &self.addr()), stdin)
    }

    /// Starts the CLI against this node as a child with piped stdout and
    /// stderr (for `read --follow`); the caller ends it with [`CliChild`].
    pub fn cli_child(&self, args: &[&str]) -> CliChild {
        CliChild::spawn(&with_addr(args, &self.addr()))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
        // Debugging a failed test: AQUIFER_TEST_LOGS=DIR keeps each node's
        // log there, named by port.
        if let Some(dir) = std::env::var_os("AQUIFER_TEST_LOGS") {
            if std::thread::panicking() {
                let dir = PathBuf::from(dir);
                let _ = std::fs::create_dir_all(&dir);
                for start in 1..=self.starts {
                    let from = self.temp.path().join(format!("stderr.{start}.log"));
                    let to = dir.join(format!("{}.{start}.log", self.port()));
                    let _ = std::fs::copy(from, to);
                }
            }
        }
    }
}

fn with_addr(args: &[&str], addr: &str) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.push("--addr".into());
    v.push(addr.into());
    v
}

/// A loopback port nobody listened on a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Runs `aquifer ARGS...` with optional stdin; killed and a panic after
/// [`CLI_TIMEOUT`].
pub fn cli<S: AsRef<str>>(args: &[S], stdin: Option<&[u8]>) -> Output {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let mut child = Command::new(BIN)
        .args(&args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn aquifer cli");
    let writer = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let data = data.to_vec();
        std::thread::spawn(move || {
            // A CLI that exits early closes the pipe: not our error to report.
            let _ = pipe.write_all(&data);
        })
    });
    let stdout = drain(child.stdout.take().expect("stdout pipe"));
    let stderr = drain(child.stderr.take().expect("stderr pipe"));
    let deadline = Instant::now() + CLI_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`aquifer {}` ran longer than {CLI_TIMEOUT:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Asserts the CLI succeeded and returns its stdout.
pub fn cli_ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: expected success, got {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts the CLI failed the documented way: non-zero exit and exactly one
/// stderr line, `error: ...`, that contains every one of `needles`
/// (case-insensitive). Returns the line.
pub fn cli_err(out: &Output, what: &str, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{what}: expected a non-zero exit, got {}\nstdout: {}\nstderr: {stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected one stderr line, got {}:\n{stderr}",
        lines.len()
    );
    let line = lines[0].trim().to_owned();
    assert!(
        line.starts_with("error: "),
        "{what}: stderr line does not start with \"error: \": {line}"
    );
    let lower = line.to_lowercase();
    for needle in needles {
        assert!(
            lower.contains(&needle.to_lowercase()),
            "{what}: error line does not mention {needle:?}: {line}"
        );
    }
    line
}

/// A CLI process whose stdout lines arrive on a channel (for `--follow`).
pub struct CliChild {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl CliChild {
    pub fn spawn<S: AsRef<str>>(args: &[S]) -> CliChild {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let mut child = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn aquifer cli");
        let stdout = child.stdout.take().expect("stdout pipe");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Some(drain(child.stderr.take().expect("stderr pipe")));
        CliChild {
            child,
            lines,
            stderr,
        }
    }

    /// The next stdout line, or None after `timeout` (or at end of output).
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Kills the child (SIGKILL), reaps it and returns its stderr.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let bytes = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for CliChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The seed of a randomized test: `AQUIFER_TEST_SEED` or a fresh one; printed
/// either way so a failure can be replayed.
pub fn test_seed(test: &str) -> u64 {
    let seed = match std::env::var("AQUIFER_TEST_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("AQUIFER_TEST_SEED={s:?} is not a u64")),
        Err(_) => rand::random(),
    };
    println!("{test}: seed {seed} (replay with AQUIFER_TEST_SEED={seed})");
    seed
}

/// Polls `cond` until it holds; panics after `timeout` naming `what`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

pub fn stream_name(s: &str) -> StreamName {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} should be a valid stream name: {e}"))
}

/// Reads a whole stream from its head without follow. A read that fails as
/// `Unavailable` (a node still electing after a restart) starts over, a
/// bounded number of times; anything else panics.
pub async fn read_all(client: &Client, name: &StreamName, timeout: Duration) -> Vec<Event> {
    let deadline = Instant::now() + timeout;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match read_all_once(client, name, deadline).await {
            Ok(events) => return events,
            Err(aquifer_client::Error::Unavailable { .. })
                if attempts < 50 && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("reading {name:?} failed after {attempts} attempts: {e}"),
        }
    }
}

async fn read_all_once(
    client: &Client,
    name: &StreamName,
    deadline: Instant,
) -> Result<Vec<Event>, aquifer_client::Error> {
    let config = ReaderConfig::default().start(StartFrom::Head).follow(false);
    let mut reader = client.reader(name, config).await?;
    let mut events = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, reader.try_next()).await {
            Ok(Ok(Some(event))) => events.push(event),
            Ok(Ok(None)) => return Ok(events),
            Ok(Err(e)) => return Err(e),
            Err(_) => panic!(
                "reading {name:?} did not finish in time ({} events so far)",
                events.len()
            ),
        }
    }
}

/// One parsed test event: payload `key:seq:writer`, routing key `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedEvent {
    pub key: String,
    pub seq: u64,
    pub writer: String,
}

pub fn keyed_payload(key: &str, seq: u64, writer: &str) -> bytes::Bytes {
    bytes::Bytes::from(format!("{key}:{seq}:{writer}"))
}

/// Parses a `key:seq:writer` event and checks it carries `key` as its routing
/// key.
pub fn parse_keyed(event: &Event) -> KeyedEvent {
    let text = std::str::from_utf8(&event.payload)
        .unwrap_or_else(|_| panic!("payload at {:?} is not UTF-8", event.position));
    let mut parts = text.splitn(3, ':');
    let (Some(key), Some(seq), Some(writer)) = (parts.next(), parts.next(), parts.next()) else {
        panic!(
            "payload {text:?} at {:?} is not key:seq:writer",
            event.position
        )
    };
    let seq = seq
        .parse()
        .unwrap_or_else(|_| panic!("payload {text:?}: seq is not a number"));
    assert_eq!(
        event.routing_key.as_deref(),
        Some(key),
        "routing key of {text:?} at {:?}",
        event.position
    );
    KeyedEvent {
        key: key.to_owned(),
        seq,
        writer: writer.to_owned(),
    }
}

/// Checks that within every key the sequence numbers strictly increase (so
/// nothing is duplicated or reordered) and returns them per key.
pub fn per_key_sequences(events: &[Event]) -> HashMap<String, Vec<u64>> {
    let mut by_key: HashMap<String, Vec<u64>> = HashMap::new();
    for event in events {
        let e = parse_keyed(event);
        let seqs = by_key.entry(e.key.clone()).or_default();
        if let Some(&last) = seqs.last() {
            assert!(
                e.seq > last,
                "key {}: seq {} read after {} (duplicate or reordered) at {:?}",
                e.key,
                e.seq,
                last,
                event.position
            );
        }
        seqs.push(e.seq);
    }
    by_key
}

/// Files of one raft group's log (`<data>/log/<group>/*.log`), sorted by
/// name: the last is the active one.
pub fn log_files(data_dir: &Path, group: &str) -> Vec<PathBuf> {
    let dir = data_dir.join("log").join(group);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files
}

/// Flips every bit of the byte at `offset` of `path`; returns the old byte.
pub fn flip_byte(path: &Path, offset: u64) -> u8 {
    use std::io::{Seek, SeekFrom};
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.read_exact(&mut b).expect("read byte");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.write_all(&[b[0] ^ 0xff]).expect("write byte");
    f.sync_all().expect("fsync");
    b[0]
}

/// Writes `byte` back at `offset` of `path`.
pub fn put_byte(path: &Path, offset: u64, byte: u8) {
    use std::io::{Seek, SeekFrom};
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.write_all(&[byte]).expect("write byte");
    f.sync_all().expect("fsync");
}

/// Writes `key:seq:padding` events (routing key = key) for keys `k0..k{keys}`
/// and seqs `from..to`, with `pad` bytes of padding, and waits until every
/// one is durable.
pub async fn write_keyed_range(
    writer: &aquifer_client::EventWriter,
    keys: u64,
    from: u64,
    to: u64,
    pad: usize,
) {
    let padding = "p".repeat(pad);
    for seq in from..to {
        for k in 0..keys {
            writer
                .write_event(Some(&format!("k{k}")), format!("k{k}:{seq}:{padding}"))
                .await
                .expect("queue");
        }
    }
    writer.flush().await.expect("acknowledged");
}

/// Waits until every segment of `name` holds bytes and all of them are in
/// tier-2 (nothing left in a tail buffer).
pub async fn wait_all_in_tier2(client: &Client, name: &StreamName, timeout: Duration) {
    let admin = client.admin();
    wait_for("every segment's bytes in tier-2", timeout, || {
        let admin = admin.clone();
        let name = name.clone();
        async move {
            admin.describe_stream(&name).await.is_ok_and(|i| {
                i.segments
                    .iter()
                    .all(|s| s.length > 0 && s.tier2_length == s.length)
            })
        }
    })
    .await;
}

/// A cluster of `aquifer serve` processes on loopback: node ids 1..=n,
/// every group replicated on all, tier-2 in one shared directory (what S3
/// is in production).
pub struct TestCluster {
    pub nodes: Vec<ServerProcess>,
    /// Holds the shared tier-2 directory.
    shared: tempfile::TempDir,
}

impl TestCluster {
    /// Starts `n` nodes and waits until every one serves. `top` and `tier2`
    /// are extra TOML lines for the top level and the `[tier2]` table.
    pub async fn start(n: usize, top: &str, tier2: &str) -> TestCluster {
        let shared = tempfile::Builder::new()
            .prefix("aquifer-cluster-")
            .tempdir()
            .expect("temp dir");
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("\"{}=127.0.0.1:{p}\"", i + 1))
            .collect();
        let mut nodes: Vec<ServerProcess> = ports
            .iter()
            .enumerate()
            .map(|(i, &port)| {
                let config = format!(
                    "node_id = {}\npeers = [{}]\n{top}\n[raft]\nfault_injection = true\n\
                     [tier2]\nurl = \"file://{}\"\n{tier2}\n",
                    i + 1,
                    peers.join(", "),
                    shared.path().join("tier2").display()
                );
                ServerProcess::spawn(ServerOpts {
                    config: Some(config),
                    port: Some(port),
                    ..ServerOpts::default()
                })
            })
            .collect();
        for node in &mut nodes {
            node.wait_ready().await;
        }
        TestCluster { nodes, shared }
    }

    /// Starts one more node with `--join` (not yet a member: add it with
    /// `add_node`) and returns its id.
    pub async fn spawn_joiner(&mut self) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let port = free_port();
        let mut peers: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("\"{}=127.0.0.1:{}\"", i + 1, n.port()))
            .collect();
        peers.push(format!("\"{id}=127.0.0.1:{port}\""));
        let config = format!(
            "node_id = {id}\npeers = [{}]\njoin = true\n[raft]\nfault_injection = true\n\
             [tier2]\nurl = \"file://{}\"\n",
            peers.join(", "),
            self.shared.path().join("tier2").display()
        );
        let mut node = ServerProcess::spawn(ServerOpts {
            config: Some(config),
            port: Some(port),
            ..ServerOpts::default()
        });
        node.wait_ready().await;
        self.nodes.push(node);
        id
    }

    /// The tier-2 directory all nodes share.
    pub fn tier2_dir(&self) -> std::path::PathBuf {
        self.shared.path().join("tier2")
    }

    /// Node `id` (1-based).
    pub fn node(&mut self, id: u64) -> &mut ServerProcess {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Every group's leader as the running nodes report them: group name
    /// → node id (groups without a known leader are missing).
    pub async fn leaders(&self) -> std::collections::HashMap<String, u64> {
        self.leaders_among(&[]).await
    }

    /// Like [`leaders`](Self::leaders), asking only nodes not in `skip`
    /// (an isolated node may still believe it leads).
    pub async fn leaders_among(&self, skip: &[u64]) -> std::collections::HashMap<String, u64> {
        let mut leaders = std::collections::HashMap::new();
        for status in self.statuses().await {
            if skip.contains(&status.node_id) {
                continue;
            }
            for g in status.groups {
                // A node's own word that it leads is the one to trust.
                if g.leader_id == status.node_id {
                    leaders.insert(g.name, g.leader_id);
                }
            }
        }
        leaders
    }

    /// Every running node's own view of the cluster (those that answer).
    pub async fn statuses(&self) -> Vec<aquifer_proto::v1::ClusterStatus> {
        let mut statuses = Vec::new();
        for node in &self.nodes {
            let Ok(channel) =
                tonic::transport::Endpoint::from_shared(format!("http://{}", node.addr()))
                    .expect("endpoint")
                    .connect_timeout(Duration::from_millis(500))
                    .connect()
                    .await
            else {
                continue;
            };
            let mut client = aquifer_proto::v1::cluster_client::ClusterClient::new(channel);
            if let Ok(status) = client
                .status(aquifer_proto::v1::ClusterStatusRequest {})
                .await
            {
                statuses.push(status.into_inner());
            }
        }
        statuses
    }

    /// Cuts node `isolated` off from the others (raft messages both ways;
    /// clients still reach it). Nodes that are down are skipped.
    pub async fn isolate(&self, isolated: u64) {
        let all: Vec<u64> = (1..=self.nodes.len() as u64).collect();
        for id in &all {
            let drop_to: Vec<u64> = if *id == isolated {
                all.iter().copied().filter(|&o| o != isolated).collect()
            } else {
                vec![isolated]
            };
            self.set_faults(
                *id,
                aquifer_proto::v1::Faults {
                    drop_to,
                    ..Default::default()
                },
            )
            .await;
        }
    }

    /// Every other node drops the snapshots it sends to node `to` (and
    /// nothing else).
    pub async fn drop_snapshots_to(&self, to: u64) {
        for id in (1..=self.nodes.len() as u64).filter(|&id| id != to) {
            self.set_faults(
                id,
                aquifer_proto::v1::Faults {
                    drop_snapshots_to: vec![to],
                    ..Default::default()
                },
            )
            .await;
        }
    }

    /// Ends every partition.
    pub async fn heal(&self) {
        for id in 1..=self.nodes.len() as u64 {
            self.set_faults(id, aquifer_proto::v1::Faults::default())
                .await;
        }
    }

    async fn set_faults(&self, id: u64, faults: aquifer_proto::v1::Faults) {
        let addr = self.nodes[(id - 1) as usize].addr();
        let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_timeout(Duration::from_millis(500))
            .connect()
            .await
        else {
            return; // down: nothing to cut
        };
        aquifer_proto::v1::cluster_client::ClusterClient::new(channel)
            .set_faults(faults)
            .await
            .unwrap_or_else(|e| panic!("set faults on node {id}: {e}"));
    }

    /// Waits until `group` has a leader among the running nodes.
    pub async fn leader_of(&self, group: &str) -> u64 {
        self.leader_among(group, &[]).await
    }

    /// Waits until `group` has a leader among the running nodes not in `skip`.
    pub async fn leader_among(&self, group: &str, skip: &[u64]) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(&id) = self.leaders_among(skip).await.get(group) {
                return id;
            }
            assert!(Instant::now() < deadline, "no leader for {group} in 30 s");
            tokio::time::sleep(POLL).await;
        }
    }
}

/// A successful CLI run's stdout as its lines, sorted (order-free compare).
pub fn sorted_lines(out: &Output) -> Vec<Vec<u8>> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<Vec<u8>> = out
        .stdout
        .split(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    lines.pop(); // after the last newline
    lines.sort();
    lines
}

/// Creates `name` with `segments` segments and a writer for it.
pub async fn stream_with_writer(
    client: &Client,
    name: &StreamName,
    segments: u32,
) -> aquifer_client::EventWriter {
    client
        .admin()
        .create_stream(name, segments)
        .await
        .expect("create stream");
    client
        .writer(name, aquifer_client::WriterConfig::default())
        .await
        .expect("writer")
}
