//! What the harness-less benches share: their command-line arguments, the
//! runtime, printing and writing the results file.

/// `--quick` (a smoke run) and `--write-results` (write the results file);
/// cargo's own `--bench` is accepted, anything else is reported and ignored.
pub struct Args {
    pub quick: bool,
    pub write_results: bool,
}

pub fn parse_args(bench: &str) -> Args {
    let mut args = Args {
        quick: false,
        write_results: false,
    };
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--write-results" => args.write_results = true,
            "--bench" => {}
            other => eprintln!("{bench} bench: ignoring argument {other:?}"),
        }
    }
    args
}

/// What `program args` prints, trimmed, or "unknown": the date and
/// revision lines of results files.
pub fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// A multi-thread runtime for a bench's async body.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Prints `report` and how long the bench took since `started`; with
/// `--write-results`, writes `text()` to `benches/<file>`.
pub fn finish(
    bench: &str,
    args: &Args,
    started: std::time::Instant,
    report: &str,
    file: &str,
    text: impl FnOnce() -> String,
) {
    println!("{report}");
    eprintln!("{bench} bench: done in {:.1?}", started.elapsed());
    if args.write_results {
        // This crate sits in the workspace, beside the root package that
        // owns `benches/`.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../benches")
            .join(file);
        std::fs::write(&path, text()).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        eprintln!("{bench} bench: wrote {}", path.display());
    }
}

/// The opening lines of a results file: title, command, date, revision and
/// machine (`machine` says what runs where).
pub fn results_header(title: &str, bench: &str, args: &Args, machine: &str) -> String {
    format!(
        "# {title}\n\nCommand: `cargo bench --bench {bench} -- --write-results{}`  \n\
         Date: {}  \nRevision: {}  \nMachine: {} cores, {machine}\n\n",
        if args.quick { " --quick" } else { "" },
        command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        command_line("git", &["rev-parse", "--short", "HEAD"]),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    )
}
