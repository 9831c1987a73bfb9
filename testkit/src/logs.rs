//! The test process's own log (the client's side of an end-to-end test),
//! for debugging a failure: with `AQUIFER_TEST_LOGS=DIR` set, [`init`]
//! writes it to `DIR/client.<pid>.log`, filtered by `RUST_LOG` (default
//! `aquifer_client=debug`). The servers' logs land in the same directory
//! when a test fails (see `ServerProcess`'s `Drop`).
//!
//! Must never: log anywhere when the variable is unset (a passing suite
//! stays quiet), or fail a test because a log cannot be written.

use std::sync::Mutex;

/// Installs the test process's log once; later calls do nothing.
pub fn init() {
    let Some(dir) = std::env::var_os("AQUIFER_TEST_LOGS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("client.{}.log", std::process::id()));
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        return;
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("aquifer_client=debug"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .try_init();
}
