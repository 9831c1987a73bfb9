//! A writer that restarts without duplicating: a first "process" appends
//! 60 of 100 numbered events under a fixed writer id and stops; the
//! restarted process, with the same writer id, finds how far the stream got
//! and sends the rest. The stream then holds each event exactly once.
//!
//! What the writer id guarantees: every retry *inside* a writer (a broken
//! connection, a leader change, a resent batch) is applied once, because the
//! server remembers the last event number per (segment, writer id). A new
//! writer continues that numbering after what the server has, so a restarted
//! process must not resend what is already stored: it resumes from the
//! stream's contents, as here (the client has no way yet to replay old
//! event numbers; see the README).
//!
//! Run against a node: `cargo run --example exactly_once_writer`. Each run
//! uses a fresh stream, `examples/once-<random>`.

use aquifer_client::{Client, Error, StreamName, WriterConfig};
use futures::TryStreamExt;

const EVENTS: u64 = 100;

/// Sends `order N` for N in `from..to` under `writer_id`, durably.
async fn send(
    client: &Client,
    name: &StreamName,
    writer_id: &str,
    from: u64,
    to: u64,
) -> Result<(), Error> {
    let config = WriterConfig::default().writer_id(writer_id);
    let writer = client.writer(name, config).await?;
    for i in from..to {
        let _pending = writer
            .write_event(Some("orders"), format!("order {i}"))
            .await?;
    }
    writer.close().await
}

/// The order numbers the stream holds, in order.
async fn stored(client: &Client, name: &StreamName) -> Result<Vec<u64>, Error> {
    let events: Vec<_> = client
        .reader(name, Default::default())
        .await?
        .try_collect()
        .await?;
    Ok(events
        .iter()
        .filter_map(|e| {
            std::str::from_utf8(&e.payload)
                .ok()?
                .strip_prefix("order ")?
                .parse()
                .ok()
        })
        .collect())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let addr = std::env::var("AQUIFER_ADDR").unwrap_or_else(|_| "127.0.0.1:7450".into());
    let client = Client::connect(&addr).await?;
    let run = format!("{:08x}", rand::random::<u32>());
    let name = StreamName::new("examples", format!("once-{run}"))?;
    client.admin().create_stream(&name, 1).await?;
    let writer_id = format!("importer-{run}");

    send(&client, &name, &writer_id, 0, 60).await?;
    println!("first process wrote orders 0..60, then stopped");

    // The restarted process: resume after the last order stored.
    let next = stored(&client, &name)
        .await?
        .last()
        .map_or(0, |last| last + 1);
    send(&client, &name, &writer_id, next, EVENTS).await?;
    println!("restarted process resumed at order {next}");

    let orders = stored(&client, &name).await?;
    println!("the stream holds {} events", orders.len());
    if orders != (0..EVENTS).collect::<Vec<_>>() {
        return Err(Error::Server(format!(
            "expected orders 0..{EVENTS} once each, found {orders:?}"
        )));
    }
    println!("each order exactly once, in order");
    Ok(())
}
