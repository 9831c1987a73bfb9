//! What every broker in the comparison offers the workload driver
//! (`drive.rs`): topics of N partitions, producers (one connection each, as
//! far as the broker's client allows) of one or more partitions whose `send`
//! appends a batch to one of them and resolves once the broker acknowledged
//! every event of it, and a consumer that tails all partitions of a topic
//! from the first event.
//!
//! Also owns what is shared by the peer brokers' start-up: running an install
//! script from `benches/peers/`, a server process ended by its PID on drop,
//! and the per-process counters read from /proc (CPU, peak RSS, disk writes).

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;

/// A broker under test, started and configured for the comparison.
pub trait Broker: Send + Sync + 'static {
    type Producer: Producer;
    type Consumer: Consumer;

    /// Sockets one producer holds open in the load generator (and in the
    /// server): what decides how many producers the file-descriptor limit
    /// allows (see `drive::fd_budget`).
    const SOCKETS_PER_PRODUCER: usize = 1;

    /// Called once a workload's producers are all open, before its clock
    /// starts.
    fn producers_opened(&self) {}

    /// Writer ids the broker remembers for exactly-once, if it has such a
    /// table (Aquifer's dedup table; k shows it bounded).
    fn writer_ids(&self) -> impl Future<Output = Option<u64>> + Send {
        async { None }
    }

    /// How long after its last write an idle writer id is surely forgotten,
    /// if the broker forgets them within a run.
    fn writer_id_expiry(&self) -> Option<Duration> {
        None
    }

    /// The server process whose CPU, memory and disk writes are measured.
    fn pid(&self) -> u32;

    /// Creates `topic` with `partitions` independent ordered logs.
    fn create(&self, topic: &str, partitions: u32) -> impl Future<Output = Result<()>> + Send;

    /// A producer (its own connection) appending to `partitions` of
    /// `topic`.
    fn producer(
        &self,
        topic: &str,
        partitions: &[u32],
    ) -> impl Future<Output = Result<Self::Producer>> + Send;

    /// A consumer (its own connection) of every partition of `topic` from
    /// the first event, waiting at the end for more.
    fn consumer(
        &self,
        topic: &str,
        partitions: u32,
    ) -> impl Future<Output = Result<Self::Consumer>> + Send;
}

pub trait Producer: Send + Sync + 'static {
    /// Appends `events` in order to the producer's `index`th partition (an
    /// index into the `partitions` it was opened for); resolves once the
    /// broker acknowledged all of them (after fsync where the broker is
    /// configured for it).
    fn send(&self, index: usize, events: Vec<Bytes>) -> impl Future<Output = Result<()>> + Send;
}

pub trait Consumer: Send + 'static {
    /// Waits for at least one more event and appends the events that are
    /// ready (payloads, in partition order) to `out`.
    fn next(&mut self, out: &mut Vec<Bytes>) -> impl Future<Output = Result<()>> + Send;
}

/// `benches/peers/`, where the install scripts live.
pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers")
}

/// Runs `benches/peers/<script>` and returns the last line it printed (the
/// binary or folder it installed); its stderr's last line on failure.
pub fn install(script: &str) -> Result<String> {
    let path = peers_dir().join(script);
    let out = Command::new("bash")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {}", path.display()))?;
    let last = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_owned()
    };
    if !out.status.success() {
        bail!("{script}: {}", last(&out.stderr));
    }
    let line = last(&out.stdout);
    if line.is_empty() {
        bail!("{script} printed nothing");
    }
    Ok(line)
}

/// The trimmed stdout and stderr of a command (versions), or why not.
pub fn command_text(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
        .trim()
        .to_owned(),
        Err(e) => format!("{program}: {e}"),
    }
}

/// A peer broker's server process: output goes to `log` in its temporary
/// directory; dropping it kills the process by its PID (SIGKILL: the data
/// is thrown away with the directory) and reaps it.
pub struct ServerChild {
    child: Child,
    log: PathBuf,
    /// The process's files (data, config, log), removed after the kill
    /// (fields drop after `Drop::drop` ran).
    _dir: tempfile::TempDir,
}

impl ServerChild {
    /// A fresh temporary directory for a server named `name`.
    pub fn temp_dir(name: &str) -> Result<tempfile::TempDir> {
        Ok(tempfile::Builder::new()
            .prefix(&format!("aquifer-compare-{name}-"))
            .tempdir()?)
    }

    /// Spawns `cmd` with its output in `<dir>/server.log`.
    pub fn spawn(mut cmd: Command, dir: tempfile::TempDir) -> Result<ServerChild> {
        let log = dir.path().join("server.log");
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {:?}", cmd.get_program()))?;
        Ok(ServerChild {
            child,
            log,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Calls `ready` every 100 ms until it succeeds, the process exits or
    /// `timeout` passes; the error then carries the end of the server's log.
    pub async fn wait_ready<F, Fut>(&mut self, timeout: Duration, mut ready: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("never tried");
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("exited at start-up with {status}: {}", self.log_tail());
            }
            match tokio::time::timeout(Duration::from_secs(5), ready()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = format!("{e:#}"),
                Err(_) => last = "readiness check timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "not ready within {timeout:?} (last: {last}): {}",
            self.log_tail()
        )
    }

    /// The last lines of the server's log, on one line.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(3).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Counters of one process from /proc, to diff around a workload.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// utime + stime + waited-for children's (Redis forks for AOF rewrites).
    pub cpu_s: f64,
    /// Bytes the process caused to be written to storage (/proc/PID/io).
    pub write_bytes: u64,
}

impl ProcSample {
    pub fn read(pid: u32) -> ProcSample {
        ProcSample {
            cpu_s: cpu_seconds(pid).unwrap_or(0.0),
            write_bytes: proc_io(pid, "write_bytes").unwrap_or(0),
        }
    }
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..15)?
        .iter()
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / hz.max(1) as f64)
}

fn proc_io(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let line = text.lines().find(|l| l.starts_with(&format!("{field}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A `kB` field of /proc/PID/status, in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(&format!("{field}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the process's peak RSS (VmHWM) to its current RSS, so the peak
/// read after a workload is that workload's; false if the kernel refused.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}
