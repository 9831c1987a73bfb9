//! Writes 1,000 events under 10 routing keys to `examples/keyed` (created
//! if missing) and prints where the last one of each key landed: events of
//! one key go to one segment, in order.
//!
//! Run against a node: `cargo run --example write_with_keys`
//! (address from AQUIFER_ADDR, default 127.0.0.1:7450).

use std::collections::BTreeMap;

use aquifer_client::{Client, Error, StreamName, WriterConfig};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let addr = std::env::var("AQUIFER_ADDR").unwrap_or_else(|_| "127.0.0.1:7450".into());
    let client = Client::connect(&addr).await?;
    let name: StreamName = "examples/keyed".parse()?;
    match client.admin().create_stream(&name, 4).await {
        Ok(_) | Err(Error::AlreadyExists(_)) => {}
        Err(e) => return Err(e),
    }
    let writer = client.writer(&name, WriterConfig::default()).await?;
    let mut pending = Vec::new();
    for i in 0..1000 {
        let key = format!("user-{}", i % 10);
        let write = writer.write_event(Some(&key), format!("event {i}")).await?;
        pending.push((key, write));
    }
    let mut last = BTreeMap::new();
    for (key, write) in pending {
        last.insert(key, write.await?);
    }
    writer.close().await?;
    for (key, ack) in &last {
        println!("{key}: segment {} offset {:?}", ack.segment_id, ack.offset);
    }
    println!("wrote 1000 events to {name}");
    Ok(())
}
