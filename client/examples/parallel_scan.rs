//! A batch scan: writes 2,000 events to the 4 segments of `examples/scan`,
//! then takes a head and a tail cut and reads every segment range between
//! them in parallel, printing events and bytes per range.
//!
//! Run against a node: `cargo run --example parallel_scan`.

use aquifer_client::{Client, Error, ScanConfig, StreamName, WriterConfig};
use futures::TryStreamExt;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let addr = std::env::var("AQUIFER_ADDR").unwrap_or_else(|_| "127.0.0.1:7450".into());
    let client = Client::connect(&addr).await?;
    let name: StreamName = "examples/scan".parse()?;
    match client.admin().create_stream(&name, 4).await {
        Ok(_) | Err(Error::AlreadyExists(_)) => {}
        Err(e) => return Err(e),
    }
    let writer = client.writer(&name, WriterConfig::default()).await?;
    for i in 0..2000 {
        let _pending = writer
            .write_event(Some(&format!("key-{}", i % 50)), vec![b'x'; 100])
            .await?;
    }
    writer.close().await?;

    let batch = client.batch();
    let (from, to) = (batch.head_cut(&name).await?, batch.tail_cut(&name).await?);
    let ranges = batch.segment_ranges(&name, &from, &to).await?;
    let config = ScanConfig::default();
    let reads = ranges.iter().map(|range| {
        let reader = batch.read_range(range, &config);
        async move {
            let events: Vec<_> = reader.try_collect().await?;
            let bytes: usize = events.iter().map(|e| e.payload.len()).sum();
            Ok::<_, Error>((range.segment_id, events.len(), bytes))
        }
    });
    let mut total = 0;
    for (segment, events, bytes) in futures::future::try_join_all(reads).await? {
        println!("segment {segment}: {events} events, {bytes} bytes");
        total += events;
    }
    println!("scanned {total} events in {} ranges", ranges.len());
    Ok(())
}
