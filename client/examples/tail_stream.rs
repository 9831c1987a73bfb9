//! Tails `examples/tail`: a reader follows the stream from its current end
//! while a writer appends 20 events; the reader prints each and stops after
//! the 20th (or after 30 s).
//!
//! Run against a node: `cargo run --example tail_stream`.

use std::time::Duration;

use aquifer_client::{Client, Error, ReaderConfig, StartFrom, StreamName, WriterConfig};
use futures::{StreamExt, TryStreamExt};

const EVENTS: usize = 20;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let addr = std::env::var("AQUIFER_ADDR").unwrap_or_else(|_| "127.0.0.1:7450".into());
    let client = Client::connect(&addr).await?;
    let name: StreamName = "examples/tail".parse()?;
    match client.admin().create_stream(&name, 2).await {
        Ok(_) | Err(Error::AlreadyExists(_)) => {}
        Err(e) => return Err(e),
    }
    // From the tail: only what is written from now on.
    let config = ReaderConfig::default().start(StartFrom::Tail).follow(true);
    let reader = client.reader(&name, config).await?;

    let writer = client.writer(&name, WriterConfig::default()).await?;
    let producer = tokio::spawn(async move {
        for i in 0..EVENTS {
            writer.write_event(None, format!("tick {i}")).await?.await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        writer.close().await
    });

    let events = reader.take(EVENTS).try_for_each(|event| async move {
        println!(
            "segment {} offset {}: {}",
            event.position.segment_id,
            event.position.offset,
            String::from_utf8_lossy(&event.payload)
        );
        Ok(())
    });
    match tokio::time::timeout(Duration::from_secs(30), events).await {
        Ok(result) => result?,
        Err(_) => return Err(Error::Server("no events within 30 s".into())),
    }
    producer
        .await
        .map_err(|e| Error::Server(format!("writer task: {e}")))??;
    println!("tailed {EVENTS} events");
    Ok(())
}
