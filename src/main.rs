//! `aquifer`: the command-line tool. Runs a node (`serve`), administers
//! streams (`stream ...`) and the cluster (`cluster ...`), writes stdin
//! lines as events (`write`), reads events to stdout (`read`), scans
//! streams in parallel (`scan`), administers reader groups (`group`) and
//! transactions (`txn`; `write --txn` writes one), and shows and checks
//! the audit log (`audit`).
//!
//! This file owns the top level only: the command tree, dispatch, and exit
//! codes: any failure exits non-zero with exactly one line,
//! `error: <message>`, on stderr; a closed stdout (e.g. `| head`) ends
//! quietly with 0. Each command lives in its own module under `cli/`.

mod cli;

// jemalloc, as TiKV runs: glibc's malloc kept hundreds of MiB of freed
// buffers (many threads' arenas, 1 MiB read and batch buffers) in a node's
// RSS past its memory bounds, and faulted fresh pages in for each large
// buffer. Freed pages go back to the OS within about a second (below).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (read once at start): a background thread purges
/// freed pages, dirty ones after 1 s instead of 10; allocations of 1 MiB
/// and more (batch, snapshot and chunk buffers) come from jemalloc's
/// oversize arena, which gives pages back as they are freed. At 1 s decay
/// the large buffers freed within the last second held RSS hundreds of MiB
/// past the node's bounds (compare g: 701-1129 MiB against 704); purging
/// every freed page at once costs 15 % of the small-event throughput
/// (faults on reuse), purging only the large ones costs nothing measurable
/// (docs/DESIGN.md, "The allocator").
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &u8 =
    &b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,oversize_threshold:1048576\0"[0];

use std::future::Future;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use cli::audit::AuditCommand;
use cli::cluster::ClusterCommand;
use cli::group::GroupCommand;
use cli::read::ReadArgs;
use cli::scan::ScanArgs;
use cli::serve::ServeArgs;
use cli::stream_admin::StreamCommand;
use cli::txn::TxnCommand;
use cli::write::WriteArgs;

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

    #[command(flatten)]
    security: cli::ConnectSecurity,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an Aquifer node until Ctrl-C or SIGTERM.
    ///
    /// Settings come from the built-in defaults, or from --config; the flags
    /// below override either (each flag is the config key of the same name).
    /// Logs go to stderr; set RUST_LOG (default "info") to change the level.
    Serve(ServeArgs),
    /// Create, list, describe, update, seal and delete streams.
    #[command(subcommand)]
    Stream(StreamCommand),
    /// Append each line of stdin as one event to a stream.
    ///
    /// Every line (without its newline) is one event's payload; with
    /// --format json every line is one event as `aquifer read --format json`
    /// prints it. Exits 0 only once every event is durable; prints a summary
    /// to stderr.
    Write(WriteArgs),
    /// Print a stream's events to stdout, one per line.
    ///
    /// Each event is written as its raw payload followed by a newline (with
    /// --with-key: "KEY<TAB>PAYLOAD"), or with --format json as one JSON
    /// object per line (any payload, binary or multi-line, survives a pipe
    /// into `aquifer write --format json`). Events of one segment, hence of
    /// one routing key, come in the order they were written.
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
    /// Reader groups: readers sharing a stream's segments, with
    /// checkpoints. Read as one reader with `aquifer read --group`.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Transactions: list a stream's, show one, commit or abort one by id.
    /// Write one with `aquifer write --txn`.
    #[command(subcommand)]
    Txn(TxnCommand),
    /// Access control: grant, revoke and list ACLs; who am I.
    #[command(subcommand)]
    Acl(cli::acl::AclCommand),
    /// Credentials for a node's auth config (hash a static token).
    #[command(subcommand)]
    Auth(cli::acl::AuthCommand),
    /// The audit log: every node records admin calls, session opens and
    /// refused calls, with their outcome, in its stream
    /// `_system/audit-<node id>`, each record hash-chained to the one
    /// before. `tail` shows it, `verify` checks the chains.
    #[command(subcommand)]
    Audit(AuditCommand),
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
    let addr = &cli.addr;
    cli::set_security(cli.security);
    match cli.command {
        Command::Serve(args) => {
            init_logging("info");
            cli::serve::run(args).await
        }
        Command::Stream(cmd) => client_command(cli::stream_admin::run(addr, cmd)).await,
        Command::Write(args) => client_command(cli::write::run(addr, args)).await,
        Command::Read(args) => client_command(cli::read::run(addr, args)).await,
        Command::Scan(args) => client_command(cli::scan::run(addr, args)).await,
        Command::Cluster(cmd) => client_command(cli::cluster::run(addr, cmd)).await,
        Command::Group(cmd) => client_command(cli::group::run(addr, cmd)).await,
        Command::Txn(cmd) => client_command(cli::txn::run(addr, cmd)).await,
        Command::Acl(cmd) => client_command(cli::acl::run(addr, cmd)).await,
        Command::Auth(cmd) => cli::acl::run_auth(cmd),
        Command::Audit(cmd) => client_command(cli::audit::run(addr, cmd)).await,
    }
}

/// Runs a client command. Client commands log only when RUST_LOG asks for
/// it: their stderr is for the summary and the error line.
async fn client_command(command: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        init_logging("warn");
    }
    command.await
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
                assert!(matches!(r.from, cli::read::From::Tail));
                assert_eq!(r.max, Some(3));
                assert!(!r.follow);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from(["aquifer", "write", "a/b", "--key", "k", "--key-field-tab"])
                .is_err()
        );
        assert!(Cli::try_parse_from([
            "aquifer",
            "write",
            "a/b",
            "--format",
            "json",
            "--key-field-tab"
        ])
        .is_err());
    }

    #[test]
    fn every_serve_flag_is_a_config_key() {
        let cli = Cli::try_parse_from([
            "aquifer",
            "serve",
            "--data-dir",
            "/tmp/x",
            "--listen",
            "127.0.0.1:1",
            "--node-id",
            "2",
            "--peers",
            "1=127.0.0.1:1,2=127.0.0.1:2",
            "--replication-factor",
            "2",
            "--join",
            "--metrics-listen",
            "127.0.0.1:3",
            "--containers",
            "8",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        let config = cli::serve::config(&args).unwrap();
        assert_eq!(config.data_dir, std::path::PathBuf::from("/tmp/x"));
        assert_eq!(config.listen, "127.0.0.1:1".parse().unwrap());
        assert_eq!(config.node_id, 2);
        assert_eq!(config.peers.len(), 2);
        assert_eq!(config.replication_factor, 2);
        assert!(config.join);
        assert_eq!(config.metrics_listen, Some("127.0.0.1:3".parse().unwrap()));
        assert_eq!(config.containers, 8);
    }

    #[test]
    fn errors_print_on_one_line() {
        assert_eq!(one_line("a\nb\r\n c"), "a; b; c");
        let e =
            anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe)).context("x");
        assert!(is_broken_pipe(&e));
    }
}
