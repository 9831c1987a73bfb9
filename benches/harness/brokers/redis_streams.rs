//! Redis Streams behind the `Broker` trait: partition p of a topic is the
//! stream key `<topic>:<p>`; a producer is one connection, a send one
//! pipeline of XADDs to one of its keys; a consumer is XREAD BLOCK over
//! every partition's key.
//!
//! Durability: AOF with `appendfsync always`. Redis writes and fsyncs the
//! AOF before it sends the replies of an event-loop round, so an XADD's
//! reply means the entry is on disk (one fsync per round, for every client
//! of that round). RDB snapshots are off (`--save ''`); the AOF's automatic
//! rewrite keeps its defaults.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::io::tcp::TcpSettings;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, Value};

use crate::broker::{self, Broker, Consumer, Producer, ServerChild};
use crate::common::free_port;

/// Entries one XREAD returns at most.
const READ_COUNT: usize = 4096;
/// How long one XREAD blocks for new entries (ms) before asking again.
const BLOCK_MS: usize = 1000;

pub struct Redis {
    server: ServerChild,
    url: String,
}

impl Redis {
    /// Installs (if needed) and starts redis-server; Err says why not.
    pub async fn start() -> Result<Redis> {
        let bin = broker::install("install-redis.sh")?;
        let port = free_port();
        let dir = ServerChild::temp_dir("redis")?;
        let mut cmd = Command::new(&bin);
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--dir")
            .arg(dir.path())
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", "", "--daemonize", "no", "--protected-mode", "no"])
            // k's writers (Redis caps it at what its open-file limit allows).
            .args(["--maxclients", "32768"]);
        let mut server = ServerChild::spawn(cmd, dir)?;
        let url = format!("redis://127.0.0.1:{port}/");
        server
            .wait_ready(Duration::from_secs(30), || async {
                let mut c = connect(&url).await?;
                redis::cmd("PING").query_async::<()>(&mut c).await?;
                Ok(())
            })
            .await?;
        Ok(Redis { server, url })
    }

    pub fn version() -> String {
        broker::command_text("redis-server", &["--version"])
    }
}

async fn connect(url: &str) -> Result<MultiplexedConnection> {
    // TCP_NODELAY, as every other client here sets: redis-rs leaves Nagle's
    // algorithm on by default, which delays pipelined writes behind
    // delayed ACKs.
    let info = url
        .into_connection_info()?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    let client = redis::Client::open(info)?;
    // No response timeout: a durable ack under load may take longer than
    // the client's default 500 ms, and the workload bounds waits itself.
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

fn key(topic: &str, partition: u32) -> String {
    format!("{topic}:{partition}")
}

impl Broker for Redis {
    type Producer = RedisProducer;
    type Consumer = RedisConsumer;

    fn pid(&self) -> u32 {
        self.server.pid()
    }

    async fn create(&self, _topic: &str, _partitions: u32) -> Result<()> {
        // A stream key comes into being with its first XADD.
        Ok(())
    }

    async fn producer(&self, topic: &str, partitions: &[u32]) -> Result<RedisProducer> {
        Ok(RedisProducer {
            conn: connect(&self.url).await?,
            keys: partitions.iter().map(|&p| key(topic, p)).collect(),
        })
    }

    async fn consumer(&self, topic: &str, partitions: u32) -> Result<RedisConsumer> {
        Ok(RedisConsumer {
            conn: connect(&self.url).await?,
            keys: (0..partitions).map(|p| key(topic, p)).collect(),
            last_ids: vec!["0-0".into(); partitions as usize],
        })
    }
}

pub struct RedisProducer {
    conn: MultiplexedConnection,
    /// The stream key of each of the producer's partitions.
    keys: Vec<String>,
}

impl Producer for RedisProducer {
    async fn send(&self, index: usize, events: Vec<Bytes>) -> Result<()> {
        let mut pipe = redis::pipe();
        for event in &events {
            pipe.cmd("XADD")
                .arg(&self.keys[index])
                .arg("*")
                .arg("d")
                .arg(event.as_ref());
        }
        // Clones of a multiplexed connection share its socket.
        pipe.query_async::<()>(&mut self.conn.clone()).await?;
        Ok(())
    }
}

pub struct RedisConsumer {
    conn: MultiplexedConnection,
    keys: Vec<String>,
    /// Last entry id read per key.
    last_ids: Vec<String>,
}

impl Consumer for RedisConsumer {
    async fn next(&mut self, out: &mut Vec<Bytes>) -> Result<()> {
        loop {
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(BLOCK_MS)
                .arg("STREAMS")
                .arg(&self.keys)
                .arg(&self.last_ids);
            let reply: Value = cmd.query_async(&mut self.conn).await?;
            let before = out.len();
            self.take(reply, out).context("parse XREAD reply")?;
            if out.len() > before {
                return Ok(());
            }
        }
    }
}

impl RedisConsumer {
    /// Appends the payloads of an XREAD reply (RESP2: `[[key, [[id,
    /// [field, value]], ...]], ...]`, or nil after BLOCK) to `out` and
    /// remembers each key's last id.
    fn take(&mut self, reply: Value, out: &mut Vec<Bytes>) -> Result<()> {
        let streams = match reply {
            Value::Nil => return Ok(()),
            Value::Array(streams) => streams,
            Value::Map(pairs) => pairs
                .into_iter()
                .map(|(k, v)| Value::Array(vec![k, v]))
                .collect(),
            other => bail!("unexpected reply {other:?}"),
        };
        for stream in streams {
            let Value::Array(mut kv) = stream else {
                bail!("stream entry is not an array")
            };
            let (Some(Value::Array(entries)), Some(Value::BulkString(key))) = (kv.pop(), kv.pop())
            else {
                bail!("stream entry is not [key, entries]")
            };
            let idx = self
                .keys
                .iter()
                .position(|k| k.as_bytes() == key.as_slice())
                .context("reply for a key not asked for")?;
            for entry in entries {
                let Value::Array(mut entry) = entry else {
                    bail!("entry is not an array")
                };
                let (Some(Value::Array(mut fields)), Some(Value::BulkString(id))) =
                    (entry.pop(), entry.pop())
                else {
                    bail!("entry is not [id, fields]")
                };
                let Some(Value::BulkString(payload)) = fields.pop() else {
                    bail!("entry has no value")
                };
                out.push(Bytes::from(payload));
                self.last_ids[idx] = String::from_utf8(id)?;
            }
        }
        Ok(())
    }
}
