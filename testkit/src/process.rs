//! The real `aquifer` binary as a process on loopback: start, restart,
//! `kill -9`, stop; the CLI run against it; free ports.
//!
//! Every process it starts is ended by its PID (never by name), every wait is
//! bounded in time, and every temporary directory lives in a `TempDir` owned
//! by the value that created it.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aquifer_client::Client;

use crate::timing::POLL;

/// The `aquifer` binary of the build running this test or bench: cargo builds
/// it for the root package's tests and benches, in the directory above the
/// `deps/` one their executables run from (`target/debug` for `cargo test`,
/// `target/release` for `cargo bench`). `AQUIFER_BIN` names another.
pub fn bin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("AQUIFER_BIN") {
            return PathBuf::from(path);
        }
        let exe = std::env::current_exe().expect("the test's own path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test runs from target/<profile>/deps");
        let bin = dir.join("aquifer");
        assert!(
            bin.exists(),
            "{} does not exist: run through `cargo test` or `cargo bench` of the root package",
            bin.display()
        );
        bin
    })
}
/// How long a node may take to start serving.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one CLI command may run.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);
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
    /// How the harness's own clients connect (readiness, `client()`): TLS
    /// with this CA, this token.
    pub connect_as: ConnectAs,
}

/// TLS trust and credentials of the harness's clients of a secured node.
#[derive(Debug, Default, Clone)]
pub struct ConnectAs {
    pub ca_file: Option<PathBuf>,
    pub token: Option<String>,
}

impl ConnectAs {
    /// A client builder for `addr` with these settings.
    pub fn builder(&self, addr: &str) -> aquifer_client::ClientBuilder {
        let mut b = Client::builder(addr);
        if let Some(ca) = &self.ca_file {
            b = b.tls_ca(std::fs::read(ca).expect("read the CA file"));
        }
        if let Some(token) = &self.token {
            b = b.token(token);
        }
        b
    }
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
    connect_as: ConnectAs,
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
            connect_as: opts.connect_as,
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
        let mut cmd = Command::new(bin());
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
                match self.connect_as.builder(&self.addr()).connect().await {
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
        self.connect_as
            .builder(&self.addr())
            .connect()
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

/// Ports tests give their servers: below Linux's ephemeral range (32768
/// and up), so no outgoing connection can take one between the moment it
/// is picked and the moment its server binds it (it could with a port the
/// kernel handed out for `:0`).
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback port below the ephemeral range that nobody listens on now
/// and that this process has not handed out before (two picks made before
/// either is bound, a node's client and peer ports, could otherwise be
/// the same).
pub fn free_port() -> u16 {
    use rand::Rng;
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(TEST_PORTS);
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Runs `aquifer ARGS...` with optional stdin; killed and a panic after
/// [`CLI_TIMEOUT`].
pub fn cli<S: AsRef<str>>(args: &[S], stdin: Option<&[u8]>) -> Output {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let mut child = Command::new(bin())
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
        let mut child = Command::new(bin())
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

    /// Kills the child (SIGKILL) and reaps it, keeping what it wrote
    /// before: [`Self::next_line`] still returns every line it flushed,
    /// then None. (What a killed reader printed may be all that shows an
    /// event was read: it may have reported its position past it.)
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the child (SIGKILL), reaps it and returns its stderr (its
    /// stdout lines not read yet are dropped; see [`Self::kill9`]).
    pub fn kill(mut self) -> String {
        self.kill9();
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
