//! The brokers of the comparison, each started on loopback with a fresh
//! temporary data directory and every acknowledgement durable (fsync before
//! the ack) unless its name says otherwise, behind the `Broker` trait.
//!
//! - `aquifer`: the release binary through `aquifer_testkit`'s ServerProcess;
//! - `redis_streams`: Debian's redis-server, AOF with `appendfsync always`;
//! - `nats_jetstream`: nats-server with JetStream file storage and
//!   `sync_interval: always`;
//! - `kafka`: a KRaft single-node broker, with `log.flush.interval.messages=1`
//!   (durable) or its defaults (page cache only).

pub mod aquifer;
pub mod kafka;
pub mod nats_jetstream;
pub mod redis_streams;
