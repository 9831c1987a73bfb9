//! `aquifer`: the command-line tool. Runs a node (`serve`), administers
//! streams (`stream ...`), writes stdin lines as events (`write`) and reads
//! events to stdout (`read`).
//!
//! Owns argument parsing, output formats and exit codes: any failure exits
//! non-zero with exactly one line, `error: <message>`, on stderr; a closed
//! stdout (e.g. `| head`) ends quietly with 0.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use aquifer_client::{Client, ReaderConfig, StartFrom, StreamInfo, StreamName, WriterConfig};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::FutureExt;
use tokio::io::AsyncBufReadExt;

/// Aquifer: tiered stream storage. Writers append events to streams; the
/// server keeps them durable in a replicated log, moves older data to object
/// storage, and serves tailing and bulk reads.
#[derive(Parser, Debug)]
#[command(name = "aquifer", version, propagate_version = true)]
struct Cli {
    /// Address (HOST:PORT) of the Aquifer node that client commands talk to.
    #[arg(
        long,
        global = true,
        env = "AQUIFER_ADDR",
        default_value = "127.0.0.1:7450",
        value_name = "ADDR"
    )]
    addr: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an Aquifer node until Ctrl-C or SIGTERM.
    ///
    /// Settings come from the built-in defaults, or from --config; the flags
    /// below override either. Logs go to stderr; set RUST_LOG (default
    /// "info") to change the level.
    Serve(ServeArgs),
    /// Create, list, describe, seal and delete streams.
    #[command(subcommand)]
    Stream(StreamCommand),
    /// Append each line of stdin as one event to a stream.
    ///
    /// Every line (without its newline) is one event's payload. Exits 0 only
    /// once every event is durable; prints a summary to stderr.
    Write(WriteArgs),
    /// Print a stream's events to stdout, one per line.
    ///
    /// Each event is written as its raw payload followed by a newline (with
    /// --with-key: "KEY<TAB>PAYLOAD"). Events of one segment, hence of one
    /// routing key, come in the order they were written.
    Read(ReadArgs),
    /// Scan a whole stream as a batch: every event from the head to the tail
    /// as of now, the segments read in parallel (no follow).
    ///
    /// Events of one segment (hence one routing key) keep their order; events
    /// of different segments interleave.
    Scan(ScanArgs),
    /// Cluster membership and state.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// The nodes (health as the node at --addr sees them), and every raft
    /// group (the metadata group `meta` and each container) as its leader
    /// sees it: voters, learners (replicas catching up, and followers of
    /// `meta`), the nodes the placement puts it on (PLACED), term, and how
    /// far the leader has applied what is committed (LAG).
    Status,
    /// Add a node to a running cluster: start it first with
    /// `aquifer serve --join --node-id ID --listen ADDR --peers ...`; the
    /// placement then moves its share of container replicas to it (each
    /// joins as a learner, catches up from a snapshot, then votes) and it
    /// follows `meta`.
    AddNode {
        /// The new node's id (above 0, not used before).
        id: u64,
        /// HOST:PORT where clients and nodes reach it.
        address: String,
    },
    /// Remove a node: its container replicas move to the other nodes (new
    /// ones catch up before it is dropped) and groups move their leadership
    /// away (watch `cluster status`); stop the node after that.
    RemoveNode {
        /// The node's id.
        id: u64,
    },
}

#[derive(Args, Debug)]
struct ScanArgs {
    /// The stream to scan, as SCOPE/STREAM.
    #[arg(value_name = "SCOPE/STREAM")]
    name: String,
    /// Segment ranges read at the same time.
    #[arg(long, default_value_t = 4, value_name = "N")]
    parallel: usize,
    /// Print only a count, bytes and MB/s instead of the events.
    #[arg(long)]
    count: bool,
    /// Read the data already in tier-2 straight from the object store (the
    /// brokers only say where it is and serve the unflushed rest). S3
    /// credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
    #[arg(long)]
    direct: bool,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Directory for log files, snapshots and (by default) tier-2
    /// [default: aquifer-data, or the config file's data_dir].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on for gRPC [default: 127.0.0.1:7450, or the config
    /// file's listen].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// This node's id in a cluster [default: 1, or the config file's node_id].
    #[arg(long, value_name = "N")]
    node_id: Option<u64>,
    /// Every node of the cluster, this one included, as
    /// ID=HOST:PORT,ID=HOST:PORT,... (the addresses clients and peers
    /// reach them at). Omit for a single node.
    #[arg(long, value_name = "PEERS", value_delimiter = ',')]
    peers: Vec<String>,
    /// Replicas of each container in a cluster (capped at the number of
    /// nodes; the metadata group votes on up to 3 nodes and every other node
    /// follows it). Set when the cluster first forms, by the node that first
    /// leads it; later changes are ignored [default: 3, or the config file's
    /// replication_factor].
    #[arg(long, value_name = "N")]
    replication_factor: Option<u32>,
    /// Join a running cluster as a new node: form no groups, and wait for
    /// `aquifer cluster add-node` (run against any member) to add it.
    #[arg(long)]
    join: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics [default: off, or the
    /// config file's metrics_listen].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// TOML configuration file (every key optional; unknown keys are errors).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Number of segment containers on this node, fixed when the data
    /// directory is created [default: 4, or the config file's containers].
    #[arg(long, value_name = "N")]
    containers: Option<u32>,
}

#[derive(Subcommand, Debug)]
enum StreamCommand {
    /// Create a stream whose key space is split evenly over N segments.
    Create {
        /// The stream to create, as SCOPE/STREAM (each part 1-255 characters
        /// of A-Z a-z 0-9 _ -).
        #[arg(value_name = "SCOPE/STREAM")]
        name: String,
        /// Number of segments (parallelism of writes and reads).
        #[arg(long, default_value_t = 1, value_name = "N")]
        segments: u32,
        #[command(flatten)]
        retention: RetentionArgs,
    },
    /// Change a stream's retention; data past the new limits leaves the head
    /// within seconds (whole tier-2 chunks at a time).
    Update {
        /// The stream, as SCOPE/STREAM.
        #[arg(value_name = "SCOPE/STREAM")]
        name: String,
        #[command(flatten)]
        retention: RetentionArgs,
    },
    /// List streams, of one scope or of all scopes.
    List {
        /// Only streams of this scope [default: every scope].
        #[arg(value_name = "SCOPE")]
        scope: Option<String>,
    },
    /// Show a stream's segments: key ranges, offsets and where the bytes are.
    Describe {
        /// The stream, as SCOPE/STREAM.
        #[arg(value_name = "SCOPE/STREAM")]
        name: String,
    },
    /// Seal a stream: no more appends, reads still work. Idempotent.
    Seal {
        /// The stream, as SCOPE/STREAM.
        #[arg(value_name = "SCOPE/STREAM")]
        name: String,
    },
    /// Delete a stream and all its data.
    Delete {
        /// The stream, as SCOPE/STREAM.
        #[arg(value_name = "SCOPE/STREAM")]
        name: String,
    },
}

/// How much of a stream to keep. Without either flag: everything, forever.
#[derive(Args, Debug, Default)]
struct RetentionArgs {
    /// Keep events for this long after they reach tier-2: NUMBER with s, m,
    /// h or d (e.g. 7d, 12h); 0 for no time limit.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
    retention_time: Option<u64>,
    /// Keep about this much of the stream: NUMBER with B, KiB, MiB, GiB or
    /// TiB (e.g. 100GiB); 0 for no size limit.
    #[arg(long, value_name = "SIZE", value_parser = parse_size_bytes)]
    retention_size: Option<u64>,
}

impl RetentionArgs {
    fn retention(&self) -> aquifer_client::Retention {
        aquifer_client::Retention {
            time_ms: self.retention_time.unwrap_or(0),
            size_bytes: self.retention_size.unwrap_or(0),
        }
    }
}

/// `7d`, `12h`, `30m`, `45s` (or `0`) to milliseconds.
fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(0);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: use a number with s, m, h or d, e.g. 7d"))?;
    let ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "{s:?} is not a duration: use a number with s, m, h or d, e.g. 7d"
            ))
        }
    };
    n.checked_mul(ms)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// `100GiB`, `512MiB`, `4096` (bytes) to bytes.
fn parse_size_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| {
        format!("{s:?} is not a size: use a number with B, KiB, MiB, GiB or TiB, e.g. 100GiB")
    })?;
    let unit_bytes: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => {
            return Err(format!(
                "{s:?} is not a size: use a number with B, KiB, MiB, GiB or TiB, e.g. 100GiB"
            ))
        }
    };
    n.checked_mul(unit_bytes)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[derive(Args, Debug)]
struct WriteArgs {
    /// The stream to append to, as SCOPE/STREAM.
    #[arg(value_name = "SCOPE/STREAM")]
    name: String,
    /// Routing key for every event [default: none: events are spread
    /// round-robin over the segments].
    #[arg(long, value_name = "KEY", conflicts_with = "key_field_tab")]
    key: Option<String>,
    /// Take each line's routing key from the text before its first tab; the
    /// rest of the line is the payload (a line without a tab has no key).
    #[arg(long)]
    key_field_tab: bool,
    /// Writer id for exactly-once appends: reuse it to resume a writer
    /// without duplicates [default: random].
    #[arg(long, value_name = "ID")]
    writer_id: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum From {
    /// The first readable event of each segment.
    Head,
    /// The current end of each segment: only newer events.
    Tail,
}

#[derive(Args, Debug)]
struct ReadArgs {
    /// The stream to read, as SCOPE/STREAM.
    #[arg(value_name = "SCOPE/STREAM")]
    name: String,
    /// Where to start in each segment.
    #[arg(long, value_enum, default_value_t = From::Head)]
    from: From,
    /// Keep waiting for new events (until every segment is sealed and read)
    /// instead of stopping at the current end.
    #[arg(long)]
    follow: bool,
    /// Stop after N events [default: no limit].
    #[arg(long, value_name = "N")]
    max: Option<u64>,
    /// Print "KEY<TAB>PAYLOAD" (empty KEY for events without one).
    #[arg(long)]
    with_key: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for a blocked stdin read or lingering background tasks.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Stream(cmd) => {
            init_client_logging();
            stream_command(&cli.addr, cmd).await
        }
        Command::Write(args) => {
            init_client_logging();
            write(&cli.addr, args).await
        }
        Command::Read(args) => {
            init_client_logging();
            read(&cli.addr, args).await
        }
        Command::Scan(args) => {
            init_client_logging();
            scan(&cli.addr, args).await
        }
        Command::Cluster(cmd) => {
            init_client_logging();
            cluster_command(&cli.addr, cmd).await
        }
    }
}

async fn cluster_command(addr: &str, cmd: ClusterCommand) -> anyhow::Result<()> {
    let client = Client::connect(addr).await?;
    let status = match cmd {
        ClusterCommand::Status => client.cluster_view().await?,
        ClusterCommand::AddNode { id, address } => {
            let status = client.admin().add_node(id, &address).await?;
            eprintln!("node {id} at {address} added; its replicas catch up now");
            status
        }
        ClusterCommand::RemoveNode { id } => {
            let status = client.admin().remove_node(id).await?;
            eprintln!("node {id} is being removed; stop it once no group lists it as a replica");
            status
        }
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "answered by node {}", status.node_id)?;
    let mut rows = vec![["NODE", "ADDRESS", "HEALTH"].map(str::to_string).to_vec()];
    for n in &status.nodes {
        rows.push(vec![
            n.node_id.to_string(),
            n.address.clone(),
            n.health.clone(),
        ]);
    }
    write_table(&mut out, &rows)?;
    writeln!(out)?;
    let mut rows = vec![[
        "GROUP", "LEADER", "VOTERS", "LEARNERS", "PLACED", "TERM", "COMMIT", "APPLIED", "LAG",
    ]
    .map(str::to_string)
    .to_vec()];
    let ids = |ids: &[u64]| {
        let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
        if ids.is_empty() {
            "-".to_string()
        } else {
            ids.join(",")
        }
    };
    for g in &status.groups {
        rows.push(vec![
            g.name.clone(),
            if g.leader_id == 0 {
                "none".into()
            } else {
                g.leader_id.to_string()
            },
            ids(&g.replicas),
            ids(&g.learners),
            ids(&g.placement),
            g.term.to_string(),
            g.commit_index.to_string(),
            g.applied_index.to_string(),
            g.commit_index.saturating_sub(g.applied_index).to_string(),
        ]);
    }
    write_table(&mut out, &rows)?;
    Ok(())
}

// ---------------------------------------------------------------- serve

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging("info");
    let mut config = match &args.config {
        Some(path) => aquifer_server::ServerConfig::from_file(path)?,
        None => aquifer_server::ServerConfig::default(),
    };
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(n) = args.containers {
        config.containers = n;
    }
    if let Some(addr) = args.metrics_listen {
        config.metrics_listen = Some(addr);
    }
    if let Some(id) = args.node_id {
        config.node_id = id;
    }
    if !args.peers.is_empty() {
        config.peers = args.peers;
    }
    if let Some(rf) = args.replication_factor {
        config.replication_factor = rf;
    }
    if args.join {
        config.join = true;
    }
    config.validate()?;
    let shutdown = shutdown_signal().context("cannot install signal handlers")?;
    tracing::info!(listen = %config.listen, data_dir = %config.data_dir.display(), "starting aquifer");
    aquifer_server::serve(config, shutdown)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(())
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM; the handlers are installed now,
/// so a signal arriving before the server polls the future is not lost.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = int.recv() => tracing::info!("interrupted; shutting down"),
        }
    })
}

/// Logs to stderr, filtered by RUST_LOG (or `default`).
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .try_init();
}

/// Client commands log only when RUST_LOG asks for it: their stderr is for
/// the summary and the error line.
fn init_client_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        init_logging("warn");
    }
}

// ---------------------------------------------------------------- stream

async fn stream_command(addr: &str, cmd: StreamCommand) -> anyhow::Result<()> {
    // Validate names before dialling, so a typo is reported as such.
    let name = match &cmd {
        StreamCommand::Create { name, .. }
        | StreamCommand::Update { name, .. }
        | StreamCommand::Describe { name }
        | StreamCommand::Seal { name }
        | StreamCommand::Delete { name } => Some(name.parse::<StreamName>()?),
        StreamCommand::List { .. } => None,
    };
    let client = Client::connect(addr).await?;
    let admin = client.admin();
    let mut out = std::io::stdout().lock();
    match (cmd, name) {
        (
            StreamCommand::Create {
                segments,
                retention,
                ..
            },
            Some(name),
        ) => {
            if segments == 0 {
                bail!("--segments must be at least 1");
            }
            let info = admin
                .create_stream_with_retention(&name, segments, retention.retention())
                .await?;
            writeln!(
                out,
                "created stream {name} with {} segment{}",
                info.segments.len(),
                plural(info.segments.len())
            )?;
        }
        (StreamCommand::Update { retention, .. }, Some(name)) => {
            if retention.retention_time.is_none() && retention.retention_size.is_none() {
                bail!("nothing to change: give --retention-time and/or --retention-size (0 removes a limit)");
            }
            let current = admin
                .describe_stream(&name)
                .await?
                .retention
                .unwrap_or_default();
            let wanted = aquifer_client::Retention {
                time_ms: retention.retention_time.unwrap_or(current.time_ms),
                size_bytes: retention.retention_size.unwrap_or(current.size_bytes),
            };
            let info = admin.update_retention(&name, wanted).await?;
            describe(&mut out, &info)?;
        }
        (StreamCommand::List { scope }, _) => {
            let mut streams = admin.list_streams(scope.as_deref()).await?;
            streams.sort_by_key(display_name);
            if streams.is_empty() {
                eprintln!("no streams");
            } else {
                write_table(&mut out, &list_rows(&streams))?;
            }
        }
        (StreamCommand::Describe { .. }, Some(name)) => {
            let info = admin.describe_stream(&name).await?;
            describe(&mut out, &info)?;
        }
        (StreamCommand::Seal { .. }, Some(name)) => {
            admin.seal_stream(&name).await?;
            writeln!(out, "sealed stream {name}")?;
        }
        (StreamCommand::Delete { .. }, Some(name)) => {
            admin.delete_stream(&name).await?;
            writeln!(out, "deleted stream {name}")?;
        }
        _ => bail!("internal error: stream name missing"),
    }
    out.flush()?;
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn display_name(info: &StreamInfo) -> String {
    match &info.name {
        Some(n) => format!("{}/{}", n.scope, n.stream),
        None => "?".to_string(),
    }
}

fn list_rows(streams: &[StreamInfo]) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "STREAM".to_string(),
        "SEGMENTS".to_string(),
        "BYTES".to_string(),
        "SEALED".to_string(),
    ]];
    for s in streams {
        let bytes: u64 = s
            .segments
            .iter()
            .map(|g| g.length.saturating_sub(g.head_offset))
            .sum();
        rows.push(vec![
            display_name(s),
            s.segments.len().to_string(),
            bytes.to_string(),
            yes_no(s.sealed),
        ]);
    }
    rows
}

fn describe(out: &mut impl Write, info: &StreamInfo) -> std::io::Result<()> {
    writeln!(
        out,
        "stream {}: {} segment{}, sealed: {}",
        display_name(info),
        info.segments.len(),
        plural(info.segments.len()),
        yes_no(info.sealed)
    )?;
    let r = info.retention.unwrap_or_default();
    let limit = |v: u64, unit: &str| {
        if v == 0 {
            "none".to_string()
        } else {
            format!("{v} {unit}")
        }
    };
    writeln!(
        out,
        "retention: time {}, size {}",
        limit(r.time_ms / 1000, "s"),
        limit(r.size_bytes, "bytes")
    )?;
    let mut segments = info.segments.clone();
    segments.sort_by_key(|s| s.number);
    let mut rows = vec![[
        "SEGMENT",
        "NUMBER",
        "CONTAINER",
        "KEY RANGE",
        "HEAD",
        "LENGTH",
        "TIER2 LENGTH",
        "CHUNKS",
        "TAIL BUFFER",
        "LOG",
        "SEALED",
    ]
    .map(str::to_string)
    .to_vec()];
    for s in &segments {
        rows.push(vec![
            s.segment_id.to_string(),
            s.number.to_string(),
            s.container.to_string(),
            format!("[{:.4}, {:.4})", s.key_low, s.key_high),
            s.head_offset.to_string(),
            s.length.to_string(),
            s.tier2_length.to_string(),
            s.chunk_count.to_string(),
            s.tail_buffer_bytes.to_string(),
            s.log_bytes.to_string(),
            yes_no(s.sealed),
        ]);
    }
    write_table(out, &rows)
}

/// Left-aligned columns separated by two spaces; the first row is the
/// header.
fn write_table(out: &mut impl Write, rows: &[Vec<String>]) -> std::io::Result<()> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let width = widths.get(c).copied().unwrap_or(0);
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

// ---------------------------------------------------------------- write

/// Bytes of stdin buffered at most (lines beyond wait for the writer).
const STDIN_BUFFER: usize = 1024 * 1024;

async fn write(addr: &str, args: WriteArgs) -> anyhow::Result<()> {
    let name: StreamName = args.name.parse()?;
    let client = Client::connect(addr).await?;
    let mut config = WriterConfig::default();
    if let Some(id) = args.writer_id {
        config.writer_id = id;
    }
    let writer = client.writer(&name, config).await?;

    let progress = progress_spinner();
    let started = Instant::now();
    let mut input = tokio::io::BufReader::with_capacity(STDIN_BUFFER, tokio::io::stdin());
    let mut line = Vec::new();
    let mut events: u64 = 0;
    let mut bytes: u64 = 0;
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .await
            .context("cannot read stdin")?;
        if n == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let (key, payload): (Option<&str>, &[u8]) = if args.key_field_tab {
            match line.iter().position(|&b| b == b'\t') {
                Some(tab) => {
                    let key = std::str::from_utf8(&line[..tab]).map_err(|_| {
                        anyhow::anyhow!("line {}: the routing key is not valid UTF-8", events + 1)
                    })?;
                    (Some(key).filter(|k| !k.is_empty()), &line[tab + 1..])
                }
                None => (None, &line[..]),
            }
        } else {
            (args.key.as_deref(), &line[..])
        };
        // The PendingWrite is not awaited: flush() below reports failures.
        let _pending = writer
            .write_event(key, Bytes::copy_from_slice(payload))
            .await
            .with_context(|| format!("line {}", events + 1))?;
        events += 1;
        bytes += payload.len() as u64;
        if let Some(p) = &progress {
            if events.is_multiple_of(1024) {
                p.set_position(events);
            }
        }
    }
    let flushed = writer.close().await;
    if let Some(p) = &progress {
        p.finish_and_clear();
    }
    flushed?;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let mb = bytes as f64 / 1e6;
    eprintln!(
        "wrote {events} event{} ({mb:.2} MB, {:.0} events/s, {:.2} MB/s)",
        plural(events as usize),
        events as f64 / secs,
        mb / secs
    );
    Ok(())
}

/// A spinner with a running count, only when stderr is a terminal.
fn progress_spinner() -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} {human_pos} events ({per_sec}, {elapsed})",
    ) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(100));
    Some(bar)
}

// ---------------------------------------------------------------- read

async fn read(addr: &str, args: ReadArgs) -> anyhow::Result<()> {
    let name: StreamName = args.name.parse()?;
    let client = Client::connect(addr).await?;
    let config = ReaderConfig {
        from: match args.from {
            From::Head => StartFrom::Head,
            From::Tail => StartFrom::Tail,
        },
        follow: args.follow,
    };
    let mut reader = client.reader(&name, config).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, stdout.lock());
    let mut count: u64 = 0;
    while args.max.is_none_or(|max| count < max) {
        // Flush before waiting, so a tailing reader shows events promptly.
        let next = match reader.next().now_or_never() {
            Some(next) => next,
            None => {
                out.flush()?;
                reader.next().await
            }
        };
        let Some(event) = next? else { break };
        if args.with_key {
            if let Some(key) = &event.routing_key {
                out.write_all(key.as_bytes())?;
            }
            out.write_all(b"\t")?;
        }
        out.write_all(&event.payload)?;
        out.write_all(b"\n")?;
        count += 1;
    }
    out.flush()?;
    Ok(())
}

/// Events per message from a scan task to the printer.
const SCAN_CHUNK_EVENTS: u64 = 1024;

/// Part of one range's events, from a scan task to the printer; with
/// --count only the numbers travel.
#[derive(Default)]
struct ScanChunk {
    events: u64,
    bytes: u64,
    payloads: Vec<Bytes>,
}

async fn scan(addr: &str, args: ScanArgs) -> anyhow::Result<()> {
    if args.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    let name: StreamName = args.name.parse()?;
    let client = Client::connect(addr).await?;
    let batch = client.batch();
    let (from, to) = (batch.head_cut(&name).await?, batch.tail_cut(&name).await?);
    let ranges = batch.segment_ranges(&name, &from, &to).await?;
    let started = Instant::now();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(args.parallel));
    // Bounded: a slow stdout holds the readers back.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<anyhow::Result<ScanChunk>>(args.parallel * 2);
    for range in ranges {
        let (batch, slots, tx, keep) = (batch.clone(), slots.clone(), tx.clone(), !args.count);
        let direct = args.direct;
        tokio::spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            let mut reader = if direct {
                batch.read_range_direct(&range)
            } else {
                batch.read_range(&range)
            };
            let mut chunk = ScanChunk::default();
            loop {
                match reader.next().await {
                    Ok(Some(e)) => {
                        chunk.events += 1;
                        chunk.bytes += e.payload.len() as u64;
                        if keep {
                            chunk.payloads.push(e.payload);
                        }
                        if chunk.events == SCAN_CHUNK_EVENTS
                            && tx.send(Ok(std::mem::take(&mut chunk))).await.is_err()
                        {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
            let _ = tx.send(Ok(chunk)).await;
        });
    }
    drop(tx);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, stdout.lock());
    let (mut events, mut bytes) = (0u64, 0u64);
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk?;
        events += chunk.events;
        bytes += chunk.bytes;
        for payload in chunk.payloads {
            out.write_all(&payload)?;
            out.write_all(b"\n")?;
        }
    }
    if args.count {
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        writeln!(
            out,
            "{events} events, {:.2} MB in {secs:.2} s ({:.1} MB/s)",
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / secs
        )?;
    }
    out.flush()?;
    Ok(())
}

// ---------------------------------------------------------------- errors

/// Help and version go out as clap prints them; a usage error becomes the
/// one `error: ...` line (exit code 2, as clap's own).
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let message: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    eprintln!("error: {message} (see --help)");
    ExitCode::from(2)
}

/// True when the error comes from writing to a closed stdout.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Joins lines so the error is always one line.
fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_commands_and_defaults() {
        let cli = Cli::try_parse_from(["aquifer", "stream", "create", "a/b"]).unwrap();
        match cli.command {
            Command::Stream(StreamCommand::Create { name, segments, .. }) => {
                assert_eq!(name, "a/b");
                assert_eq!(segments, 1);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["aquifer", "read", "a/b", "--from", "tail", "--max", "3"])
            .unwrap();
        match cli.command {
            Command::Read(r) => {
                assert!(matches!(r.from, From::Tail));
                assert_eq!(r.max, Some(3));
                assert!(!r.follow);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from(["aquifer", "write", "a/b", "--key", "k", "--key-field-tab"])
                .is_err()
        );
    }

    #[test]
    fn parses_retention_durations_and_sizes() {
        assert_eq!(parse_duration_ms("7d"), Ok(7 * 86_400_000));
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("0"), Ok(0));
        assert!(parse_duration_ms("7 days").is_err());
        assert_eq!(parse_size_bytes("100GiB"), Ok(100 << 30));
        assert_eq!(parse_size_bytes("4096"), Ok(4096));
        assert!(parse_size_bytes("1PB").is_err());
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["A".to_string(), "LONG HEADER".to_string(), "X".to_string()],
            vec!["12345".to_string(), "1".to_string(), "yes".to_string()],
        ];
        let mut out = Vec::new();
        write_table(&mut out, &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "A      LONG HEADER  X\n12345  1            yes\n");
    }

    #[test]
    fn errors_print_on_one_line() {
        assert_eq!(one_line("a\nb\r\n c"), "a; b; c");
        let e =
            anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe)).context("x");
        assert!(is_broken_pipe(&e));
    }
}
