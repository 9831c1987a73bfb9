//! NATS JetStream behind the `Broker` trait: partition p of a topic is its
//! own JetStream stream `<topic>-<p>` (subject `<topic>.<p>`), file storage;
//! a producer is one connection, a send publishes every event to one of its
//! subjects and waits for each publish ack; a consumer merges one ordered
//! pull consumer per partition.
//!
//! Durability: `sync_interval: always` makes the file store fsync each
//! message before the publish ack (one fsync per message, so expect about
//! the disk's single-thread fsync rate).

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result};
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::stream::{BoxStream, SelectAll, StreamExt};
use futures::FutureExt;

use crate::broker::{self, Broker, Consumer, Producer, ServerChild};
use crate::common::free_port;

/// How long a publish ack or API call may take: a long backlog of durable
/// publishes waits its turn behind one fsync per message.
const ACK_TIMEOUT: Duration = Duration::from_secs(120);
/// Messages a consumer hands over per `next` at most.
const READ_BATCH: usize = 4096;

pub struct Nats {
    server: ServerChild,
    addr: String,
}

impl Nats {
    /// Installs (if needed) and starts nats-server; Err says why not.
    pub async fn start() -> Result<(Nats, String)> {
        let bin = broker::install("install-nats.sh")?;
        let version = broker::command_text(&bin, &["--version"]);
        let port = free_port();
        let dir = ServerChild::temp_dir("nats")?;
        let config = dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\n\
                 jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n  \
                 max_file_store: 64GB\n  max_memory_store: 1GB\n}}\n",
                dir.path().join("js").display()
            ),
        )?;
        let mut cmd = Command::new(&bin);
        cmd.arg("-c").arg(&config);
        let mut server = ServerChild::spawn(cmd, dir)?;
        let addr = format!("127.0.0.1:{port}");
        server
            .wait_ready(Duration::from_secs(30), || async {
                let js = context(&addr).await?;
                js.query_account().await?;
                Ok(())
            })
            .await?;
        Ok((Nats { server, addr }, version))
    }
}

async fn context(addr: &str) -> Result<jetstream::Context> {
    let client = async_nats::connect(addr).await?;
    Ok(jetstream::ContextBuilder::new()
        .timeout(ACK_TIMEOUT)
        .build(client))
}

fn stream_name(topic: &str, partition: u32) -> String {
    format!("{topic}-{partition}")
}

fn subject(topic: &str, partition: u32) -> String {
    format!("{topic}.{partition}")
}

impl Broker for Nats {
    type Producer = NatsProducer;
    type Consumer = NatsConsumer;

    fn pid(&self) -> u32 {
        self.server.pid()
    }

    async fn create(&self, topic: &str, partitions: u32) -> Result<()> {
        let js = context(&self.addr).await?;
        for p in 0..partitions {
            js.create_stream(stream::Config {
                name: stream_name(topic, p),
                subjects: vec![subject(topic, p)],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .with_context(|| format!("create stream {}", stream_name(topic, p)))?;
        }
        Ok(())
    }

    async fn producer(&self, topic: &str, partitions: &[u32]) -> Result<NatsProducer> {
        Ok(NatsProducer {
            js: context(&self.addr).await?,
            subjects: partitions.iter().map(|&p| subject(topic, p)).collect(),
        })
    }

    async fn consumer(&self, topic: &str, partitions: u32) -> Result<NatsConsumer> {
        let js = context(&self.addr).await?;
        let mut all = SelectAll::new();
        for p in 0..partitions {
            let messages = js
                .get_stream(stream_name(topic, p))
                .await?
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await?
                .messages()
                .await?;
            all.push(
                messages
                    .map(|m| m.map(|m| m.message.payload).map_err(anyhow::Error::from))
                    .boxed(),
            );
        }
        Ok(NatsConsumer { messages: all })
    }
}

pub struct NatsProducer {
    js: jetstream::Context,
    /// The subject of each of the producer's partitions.
    subjects: Vec<String>,
}

impl Producer for NatsProducer {
    async fn send(&self, index: usize, events: Vec<Bytes>) -> Result<()> {
        let subject = &self.subjects[index];
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            acks.push(self.js.publish(subject.clone(), event).await?);
        }
        for ack in acks {
            ack.await?;
        }
        Ok(())
    }
}

pub struct NatsConsumer {
    messages: SelectAll<BoxStream<'static, Result<Bytes>>>,
}

impl Consumer for NatsConsumer {
    async fn next(&mut self, out: &mut Vec<Bytes>) -> Result<()> {
        let first = self
            .messages
            .next()
            .await
            .context("every consumer ended")??;
        out.push(first);
        // Then whatever is ready now, without waiting.
        for _ in 1..READ_BATCH {
            match self.messages.next().now_or_never() {
                Some(Some(m)) => out.push(m?),
                _ => break,
            }
        }
        Ok(())
    }
}
