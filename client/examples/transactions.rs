//! Transactions: a loader writes a batch of orders over several segments as
//! one transaction and commits it (all visible at once); a second batch is
//! begun by one "process" that then disappears, and another commits it by
//! id, as a committer does after a restore; a third is aborted and never
//! shows.
//!
//! Run against a node: `cargo run --example transactions`. Each run uses a
//! fresh stream, `examples/txn-<random>`.

use std::time::Duration;

use aquifer_client::{Client, Error, StreamName, TransactionState};
use futures::TryStreamExt;

/// Writes `count` orders of a few customers into a new transaction.
async fn batch(
    client: &Client,
    name: &StreamName,
    label: &str,
    count: u32,
) -> Result<aquifer_client::Transaction, Error> {
    let txn = client
        .transactional_writer(name, format!("loader-{label}"))?
        .timeout(Duration::from_secs(60))
        .begin()
        .await?;
    for i in 0..count {
        let customer = format!("customer-{}", i % 5);
        let _pending = txn
            .write(Some(&customer), format!("{label} order {i}"))
            .await?;
    }
    txn.flush().await?;
    Ok(txn)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let addr = std::env::var("AQUIFER_ADDR").unwrap_or_else(|_| "127.0.0.1:7450".into());
    let client = Client::connect(&addr).await?;
    let name = StreamName::new("examples", format!("txn-{:08x}", rand::random::<u32>()))?;
    client.admin().create_stream(&name, 3).await?;

    let first = batch(&client, &name, "first", 100).await?;
    let info = first.commit().await?;
    println!("first batch: {} ({} parts)", info.state, info.parts.len());

    // Begun here, committed "elsewhere" by id.
    let second = batch(&client, &name, "second", 50).await?;
    let id = second.id().to_string();
    drop(second);
    let committer = Client::connect(&addr).await?;
    let info = committer.transaction(&name, &id).await?.commit().await?;
    assert_eq!(info.state, TransactionState::Committed);
    println!("second batch committed by id {id}");

    let third = batch(&client, &name, "third", 30).await?;
    println!("third batch: {}", third.abort().await?.state);

    let config = aquifer_client::ReaderConfig::default()
        .start(aquifer_client::StartFrom::Head)
        .follow(false);
    let events: Vec<_> = client.reader(&name, config).await?.try_collect().await?;
    assert_eq!(
        events.len(),
        150,
        "the two committed batches, nothing of the third"
    );
    println!(
        "the stream holds {} events: both committed batches, whole",
        events.len()
    );
    Ok(())
}
