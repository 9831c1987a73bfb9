//! Aquifer behind the `Broker` trait: a topic is a stream with one segment
//! per partition, a producer is one `EventWriter` (one connection, one
//! writer id) with a routing key per partition that lands in that
//! partition's segment, a consumer is an `EventReader` tailing every segment
//! from the head.

use anyhow::{anyhow, Result};
use aquifer_client::{
    key_position, Client, EventReader, EventWriter, ReaderConfig, StartFrom, StreamName,
    WriterConfig,
};
use bytes::Bytes;
use futures::stream::ReadyChunks;
use futures::StreamExt;

use crate::broker::{Broker, Consumer, Producer};
use crate::common::metrics::{samples, scrape};
use crate::common::{free_port, ServerOpts, ServerProcess};

/// The node's memory budgets (as in benches/core.rs).
pub const TAIL_BUFFER_BYTES_MAX: u64 = 256 << 20;
pub const CACHE_BYTES_MAX: u64 = 256 << 20;
/// Client (and Kafka) connections the node accepts: the open-file limit
/// caps what the load generator opens below this.
const CONNECTIONS_MAX: usize = 32_768;

pub struct Aquifer {
    server: ServerProcess,
    admin: Client,
    /// Where the node serves `/metrics` (k reads its writer-id table).
    metrics_port: u16,
}

/// Writer ids idle this long are forgotten (`writer_id_expiry_ms`; the
/// default is a day): short, so k shows the table shrinking back.
pub const WRITER_ID_EXPIRY: std::time::Duration = std::time::Duration::from_secs(30);
/// The node's rate tick (`scaling.tick_ms`), at which expiry is checked.
pub const RATE_TICK: std::time::Duration = std::time::Duration::from_secs(5);

impl Aquifer {
    /// The node's configuration (also of `aquifer-kafka` in compare):
    /// the memory budgets, and connection limits above k's writers (every
    /// one of them comes from 127.0.0.1).
    pub fn config() -> String {
        format!(
            "tail_buffer_bytes_max = {TAIL_BUFFER_BYTES_MAX}\ncache_bytes_max = {CACHE_BYTES_MAX}\n\
             connections_max = {CONNECTIONS_MAX}\nconnections_per_address_max = {CONNECTIONS_MAX}\n\
             kafka_connections_max = {CONNECTIONS_MAX}\n"
        )
    }

    pub async fn start() -> Result<Aquifer> {
        let metrics_port = free_port();
        let config = format!(
            "{}metrics_listen = \"127.0.0.1:{metrics_port}\"\nwriter_id_expiry_ms = {}\n",
            Aquifer::config(),
            WRITER_ID_EXPIRY.as_millis()
        );
        let server = ServerProcess::start(ServerOpts::with_config(&config)).await;
        let admin = Client::connect(&server.addr()).await?;
        Ok(Aquifer {
            server,
            admin,
            metrics_port,
        })
    }
}

fn stream_name(topic: &str) -> Result<StreamName> {
    Ok(format!("compare/{topic}").parse()?)
}

/// A routing key that lands in segment `partition` of `partitions`
/// (segment i owns key positions [i/n, (i+1)/n)).
fn key_for(partition: u32, partitions: u32) -> Result<String> {
    (0..100_000)
        .map(|j| format!("p{partition}-{j}"))
        .find(|k| (key_position(k) * f64::from(partitions)) as u32 == partition)
        .ok_or_else(|| anyhow!("no routing key found for segment {partition}"))
}

impl Broker for Aquifer {
    type Producer = AquiferProducer;
    type Consumer = AquiferConsumer;

    fn pid(&self) -> u32 {
        self.server.pid().unwrap_or(0)
    }

    async fn writer_ids(&self) -> Option<u64> {
        let text = scrape(self.metrics_port).await;
        let ids = samples(&text)
            .into_iter()
            .filter(|(name, _)| name.starts_with("aquifer_writer_ids{"))
            .map(|(_, v)| v as u64)
            .sum();
        Some(ids)
    }

    fn writer_id_expiry(&self) -> Option<std::time::Duration> {
        Some(WRITER_ID_EXPIRY + 2 * RATE_TICK)
    }

    async fn create(&self, topic: &str, partitions: u32) -> Result<()> {
        self.admin
            .admin()
            .create_stream(&stream_name(topic)?, partitions)
            .await?;
        Ok(())
    }

    async fn producer(&self, topic: &str, partitions: &[u32]) -> Result<AquiferProducer> {
        let name = stream_name(topic)?;
        let client = Client::connect(&self.server.addr()).await?;
        let segments = client.admin().describe_stream(&name).await?.segments.len() as u32;
        let writer = client.writer(&name, WriterConfig::default()).await?;
        AquiferProducer::new(writer, partitions, segments)
    }

    async fn consumer(&self, topic: &str, _partitions: u32) -> Result<AquiferConsumer> {
        let client = Client::connect(&self.server.addr()).await?;
        let config = ReaderConfig::default().start(StartFrom::Head).follow(true);
        let reader = client.reader(&stream_name(topic)?, config).await?;
        Ok(AquiferConsumer {
            reader: reader.ready_chunks(CONSUMER_CHUNK_EVENTS),
        })
    }
}

pub struct AquiferProducer {
    writer: EventWriter,
    /// The routing key of each of the producer's partitions.
    keys: Vec<String>,
}

impl AquiferProducer {
    /// A producer over `writer` whose partition i writes to segment
    /// `partitions[i]` of `segments` (one routing key each).
    pub fn new(writer: EventWriter, partitions: &[u32], segments: u32) -> Result<AquiferProducer> {
        Ok(AquiferProducer {
            writer,
            keys: partitions
                .iter()
                .map(|&p| key_for(p, segments))
                .collect::<Result<_>>()?,
        })
    }
}

impl Producer for AquiferProducer {
    async fn send(&self, index: usize, events: Vec<Bytes>) -> Result<()> {
        // The events of one send are one batch: framed into batch-sized
        // buffers, one future for all.
        let key = &self.keys[index];
        self.writer.write_batch(Some(key), &events).await?.await?;
        Ok(())
    }
}

/// Events a consumer hands over per `next` at most: what the reader has
/// ready, as a Kafka consumer's poll returns what its fetches brought (one
/// event per call would put the harness's per-call costs on every event).
const CONSUMER_CHUNK_EVENTS: usize = 4096;

pub struct AquiferConsumer {
    reader: ReadyChunks<EventReader>,
}

impl Consumer for AquiferConsumer {
    async fn next(&mut self, out: &mut Vec<Bytes>) -> Result<()> {
        let Some(events) = self.reader.next().await else {
            return Err(anyhow!("the stream ended"));
        };
        for event in events {
            out.push(event?.payload);
        }
        Ok(())
    }
}
