//! `aquifer scan`: a whole stream, head to tail as of now, its segment
//! ranges read in parallel (through the brokers, or from tier-2 directly).
//!
//! Owns the parallelism (a semaphore of `--parallel` slots) and the bounded
//! channel to the printer, so a slow stdout holds the readers back; it must
//! never buffer a whole range in memory.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use aquifer_client::{ScanConfig, StreamCut, StreamName};
use bytes::Bytes;
use clap::Args;
use futures::TryStreamExt;

#[derive(Args, Debug)]
pub struct ScanArgs {
    /// The stream to scan, as SCOPE/STREAM.
    #[arg(value_name = "SCOPE/STREAM")]
    name: String,
    /// Segment ranges read at the same time.
    #[arg(long, default_value_t = 4, value_name = "N")]
    parallel: usize,
    /// Print only a count, bytes and MB/s instead of the events.
    #[arg(long)]
    count: bool,
    /// Read the data already in tier-2 straight from the object store (the
    /// brokers only say where it is and serve the unflushed rest). S3
    /// credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
    #[arg(long)]
    direct: bool,
    /// Start at this stream cut (a token from `stream cut`) instead of the
    /// head.
    #[arg(long, value_name = "CUT")]
    from_cut: Option<String>,
    /// End at this stream cut instead of the tail as of now.
    #[arg(long, value_name = "CUT")]
    to_cut: Option<String>,
}

/// Events per message from a scan task to the printer.
const SCAN_CHUNK_EVENTS: u64 = 1024;

/// Part of one range's events, from a scan task to the printer; with
/// --count only the numbers travel.
#[derive(Default)]
struct ScanChunk {
    events: u64,
    bytes: u64,
    payloads: Vec<Bytes>,
}

pub async fn run(addr: &str, args: ScanArgs) -> anyhow::Result<()> {
    if args.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    let name: StreamName = args.name.parse()?;
    let from_cut = args.from_cut.as_deref().map(StreamCut::parse).transpose()?;
    let to_cut = args.to_cut.as_deref().map(StreamCut::parse).transpose()?;
    let client = super::connect(addr).await?;
    let batch = client.batch();
    let from = match from_cut {
        Some(cut) => cut,
        None => batch.head_cut(&name).await?,
    };
    let to = match to_cut {
        Some(cut) => cut,
        None => batch.tail_cut(&name).await?,
    };
    let ranges = batch.segment_ranges(&name, &from, &to).await?;
    let config = ScanConfig::default().direct(args.direct);
    let started = Instant::now();
    let slots = Arc::new(tokio::sync::Semaphore::new(args.parallel));
    // Bounded: a slow stdout holds the readers back.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<anyhow::Result<ScanChunk>>(args.parallel * 2);
    for range in ranges {
        let (batch, config, slots, tx) = (batch.clone(), config.clone(), slots.clone(), tx.clone());
        let keep = !args.count;
        tokio::spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            // Made only now: a range reader starts reading at once.
            let mut reader = batch.read_range(&range, &config);
            let mut chunk = ScanChunk::default();
            loop {
                match reader.try_next().await {
                    Ok(Some(e)) => {
                        chunk.events += 1;
                        chunk.bytes += e.payload.len() as u64;
                        if keep {
                            chunk.payloads.push(e.payload);
                        }
                        if chunk.events == SCAN_CHUNK_EVENTS
                            && tx.send(Ok(std::mem::take(&mut chunk))).await.is_err()
                        {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
            let _ = tx.send(Ok(chunk)).await;
        });
    }
    drop(tx);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, stdout.lock());
    let (mut events, mut bytes) = (0u64, 0u64);
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk?;
        events += chunk.events;
        bytes += chunk.bytes;
        for payload in chunk.payloads {
            out.write_all(&payload)?;
            out.write_all(b"\n")?;
        }
    }
    if args.count {
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        writeln!(
            out,
            "{events} events, {:.2} MB in {secs:.2} s ({:.1} MB/s)",
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / secs
        )?;
    }
    out.flush()?;
    Ok(())
}
