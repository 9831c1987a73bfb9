//! `aquifer txn ...`: list a stream's transactions, show one, commit or
//! abort one by id (from any process: what a committer does after the
//! writer that began it is gone). `aquifer write --txn` (in `write.rs`)
//! writes all of stdin as one transaction.
//!
//! Owns the commands' flags and output; names and ids are checked before
//! anything is dialled.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aquifer_client::{Client, StreamName, TransactionInfo, TransactionState};
use clap::Subcommand;

use super::units::format_duration;
use super::{header, write_table};

#[derive(Subcommand, Debug)]
pub enum TxnCommand {
    /// List a stream's open and recently finished transactions.
    List {
        /// The stream, as SCOPE/STREAM.
        #[arg(value_name = "SCOPE/STREAM")]
        name: String,
    },
    /// Show one transaction: its state, lease, parts and why it aborted.
    Status {
        /// The stream, as SCOPE/STREAM.
        #[arg(value_name = "SCOPE/STREAM")]
        name: String,
        /// The transaction's id (32 hex digits; dashes allowed).
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Commit a transaction by id: waits until every event is visible.
    /// Committing a committed one is fine; an aborted one is refused.
    Commit {
        /// The stream, as SCOPE/STREAM.
        #[arg(value_name = "SCOPE/STREAM")]
        name: String,
        /// The transaction's id.
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Abort a transaction by id: none of its events will ever be visible.
    /// Aborting an aborted one is fine; a committed one is refused.
    Abort {
        /// The stream, as SCOPE/STREAM.
        #[arg(value_name = "SCOPE/STREAM")]
        name: String,
        /// The transaction's id.
        #[arg(value_name = "ID")]
        id: String,
    },
}

pub async fn run(addr: &str, cmd: TxnCommand) -> anyhow::Result<()> {
    match cmd {
        TxnCommand::List { name } => {
            let name: StreamName = name.parse()?;
            let client = super::connect(addr).await?;
            let txns = client
                .transactional_writer(&name, "cli-txn-list")?
                .list()
                .await?;
            let mut rows = vec![header(&[
                "ID",
                "STATE",
                "AGE",
                "PARTS",
                "LEASE LEFT",
                "OWNER",
                "REASON",
            ])];
            for t in &txns {
                rows.push(vec![
                    t.id.clone(),
                    t.state.to_string(),
                    format_duration(age(t.begun_ms)),
                    t.parts.len().to_string(),
                    lease(t),
                    owner(t),
                    t.reason.clone(),
                ]);
            }
            let mut out = std::io::stdout().lock();
            write_table(&mut out, &rows)?;
            Ok(())
        }
        TxnCommand::Status { name, id } => {
            let (client, name) = connect(addr, &name).await?;
            let t = client.transaction(&name, &id).await?.status().await?;
            print_info(&t)
        }
        TxnCommand::Commit { name, id } => {
            let (client, name) = connect(addr, &name).await?;
            let t = client.transaction(&name, &id).await?.commit().await?;
            eprintln!("transaction {} is {}", t.id, t.state);
            Ok(())
        }
        TxnCommand::Abort { name, id } => {
            let (client, name) = connect(addr, &name).await?;
            let t = client.transaction(&name, &id).await?.abort().await?;
            eprintln!("transaction {} is {}", t.id, t.state);
            Ok(())
        }
    }
}

async fn connect(addr: &str, name: &str) -> anyhow::Result<(Client, StreamName)> {
    let name: StreamName = name.parse()?;
    Ok((super::connect(addr).await?, name))
}

/// How long ago `ms` (since the epoch) was.
fn age(ms: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Duration::from_millis(now.saturating_sub(ms))
}

fn lease(t: &TransactionInfo) -> String {
    if t.state == TransactionState::Open {
        format_duration(t.lease_left)
    } else {
        "-".into()
    }
}

/// The owner label, "-" for none; control characters escaped (it is the
/// client's opaque bytes and must not break the table's lines).
fn owner(t: &TransactionInfo) -> String {
    if t.owner.is_empty() {
        return "-".into();
    }
    t.owner
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn print_info(t: &TransactionInfo) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "transaction {} of {}", t.id, t.stream)?;
    writeln!(out, "state:      {}", t.state)?;
    writeln!(out, "owner:      {}", owner(t))?;
    if !t.reason.is_empty() {
        writeln!(out, "reason:     {}", t.reason)?;
    }
    writeln!(out, "age:        {}", format_duration(age(t.begun_ms)))?;
    writeln!(out, "timeout:    {}", format_duration(t.timeout))?;
    writeln!(out, "lease left: {}", lease(t))?;
    let mut rows = vec![header(&["SEGMENT", "TRANSACTION SEGMENT", "KEYS"])];
    for p in &t.parts {
        rows.push(vec![
            p.segment_id.to_string(),
            p.transaction_segment_id.to_string(),
            format!("[{:.4}, {:.4})", p.key_low, p.key_high),
        ]);
    }
    writeln!(out, "parts:")?;
    write_table(&mut out, &rows)?;
    Ok(())
}
