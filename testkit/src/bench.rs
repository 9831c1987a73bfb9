//! What the harness-less benches share: their command-line arguments, the
//! runtime, printing and writing the results file.

/// `--quick` (a smoke run), `--write-results` (write the results file) and
/// the bench's own flags that were given; cargo's own `--bench` is
/// accepted, anything else is reported and ignored.
pub struct Args {
    pub quick: bool,
    pub write_results: bool,
    /// Of the bench's own flags (see [`parse_args_with`]), those given.
    pub flags: Vec<&'static str>,
}

impl Args {
    /// Whether the bench's own `flag` was given.
    pub fn has(&self, flag: &str) -> bool {
        self.flags.contains(&flag)
    }
}

pub fn parse_args(bench: &str) -> Args {
    parse_args_with(bench, &[])
}

/// [`parse_args`] for a bench that also takes the flags in `own`.
pub fn parse_args_with(bench: &str, own: &[&'static str]) -> Args {
    let mut args = Args {
        quick: false,
        write_results: false,
        flags: Vec::new(),
    };
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--write-results" => args.write_results = true,
            "--bench" => {}
            other => match own.iter().find(|f| **f == other) {
                Some(flag) => args.flags.push(flag),
                None => eprintln!("{bench} bench: ignoring argument {other:?}"),
            },
        }
    }
    args
}

/// The CPU's model name, or "unknown": the machine line of results files.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The 1, 5 and 15 minute load averages: the machine is shared, so they
/// say how much else ran beside a benchmark.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
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
