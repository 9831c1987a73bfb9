//! aquifer-testkit: what the end-to-end tests and the benchmarks share (a
//! dev-only crate; never published, never a dependency of the product).
//!
//! - [`bench`]: the benches' arguments, runtime and results files;
//! - [`process`]: the real `aquifer` binary on loopback, and the CLI;
//! - [`cluster`]: clusters of real processes;
//! - [`in_process`]: nodes of `aquifer_server` in the test's own process;
//! - [`kafka`]: a small Kafka client (frames, a connection, a
//!   transactional producer that retries);
//! - [`logs`]: the test process's own log, on demand;
//! - [`metrics`]: a node's `/metrics`, scraped and parsed;
//! - [`pki`]: test certificates (a CA and what it signs);
//! - [`events`]: keyed test events, whole-stream reads, per-key order;
//! - [`files`]: log files and the bytes tests damage in them;
//! - [`timing`]: replayable seeds and bounded waits;
//! - [`workloads`]: the benchmarks' load generators (writes at a rate,
//!   tailing, catch-up reads, scans) and their latency histograms.
//!
//! The tests and benches use it as `use aquifer_testkit as common;`.

pub mod bench;
pub mod cluster;
pub mod events;
pub mod files;
pub mod in_process;
pub mod kafka;
pub mod logs;
pub mod metrics;
pub mod pki;
pub mod process;
pub mod timing;
pub mod workloads;

pub use cluster::*;
pub use events::*;
pub use files::*;
pub use process::*;
pub use timing::*;
