//! Command-line arguments shared by the harness-less benches.

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
