//! Seeds of randomized tests (printed, replayable) and bounded waits.

use std::time::{Duration, Instant};

/// Poll interval of the wait-for-condition loops.
pub(crate) const POLL: Duration = Duration::from_millis(25);

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
