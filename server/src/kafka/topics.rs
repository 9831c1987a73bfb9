//! Topics: which stream a topic is, its partitions, and the Metadata,
//! CreateTopics and DeleteTopics answers.
//!
//! A topic `T` is the stream `<kafka_scope>/T`. Kafka's topic names
//! (`[a-zA-Z0-9._-]{1,249}`, not `.` or `..`) are all valid stream names.
//! Its partitions are the stream's segments of epoch 0, in key order; a
//! stream that auto-scales, or was ever scaled, is no topic (its segment
//! set changes, Kafka's partitions may only grow) and is refused as an
//! invalid topic until a design for it exists.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{brokers, codes, Kafka};
use crate::controller::{Retention, ScalingKind, ScalingPolicy, StreamKey, StreamRecord};
use crate::error::Error;
use aquifer_proto::name::is_valid_kafka_topic as is_valid_topic;

/// One partition of a topic: its segment and where its container is led.
#[derive(Debug, Clone, Copy)]
pub(super) struct Partition {
    pub segment: u64,
}

/// A topic's partitions, or the Kafka error code saying why it is none.
pub(super) fn partitions(kafka: &Kafka, topic: &str) -> Result<Vec<Partition>, i16> {
    let stream = kafka
        .node
        .controller
        .get(&kafka.key(topic))
        .map_err(|_| codes::UNKNOWN_TOPIC_OR_PARTITION)?;
    partitions_of(&stream)
}

fn partitions_of(stream: &StreamRecord) -> Result<Vec<Partition>, i16> {
    if stream.deleting {
        return Err(codes::UNKNOWN_TOPIC_OR_PARTITION);
    }
    if stream.policy.kind != ScalingKind::Fixed || stream.epoch != 0 {
        return Err(codes::INVALID_TOPIC);
    }
    let mut segments: Vec<_> = stream.segments.iter().filter(|s| s.epoch == 0).collect();
    segments.sort_by(|a, b| a.key_low.total_cmp(&b.key_low));
    Ok(segments
        .into_iter()
        .map(|s| Partition { segment: s.id })
        .collect())
}

impl Kafka {
    pub(super) fn key(&self, topic: &str) -> StreamKey {
        StreamKey {
            scope: self.node.config.kafka_scope.clone(),
            stream: topic.to_string(),
        }
    }

    /// This node's part of a partition: the leader epoch (the container's
    /// raft term) if it leads the partition's container.
    pub(super) fn leader_epoch(&self, segment: u64) -> Option<i32> {
        let term = self.node.container_of(segment).leader_term()?;
        Some(i32::try_from(term).unwrap_or(i32::MAX))
    }

    pub(super) async fn metadata(&self, req: MetadataRequest, version: i16) -> MetadataResponse {
        let brokers = self.brokers();
        let mut r = MetadataResponse::default();
        r.brokers = brokers
            .iter()
            .map(|(&id, l)| {
                MetadataResponseBroker::default()
                    .with_node_id(brokers::broker_id(id))
                    .with_host(l.host.clone())
                    .with_port(l.port)
            })
            .collect();
        // Fields a version lacks must stay at their defaults (the codec
        // refuses to encode them otherwise).
        if version >= 2 {
            r.cluster_id = Some(StrBytes::from_static_str("aquifer"));
        }
        // The controller is the `meta` leader: it creates and deletes
        // topics.
        r.controller_id = self
            .leader_of(self.node.controller.group(), &brokers)
            .map_or(BrokerId(-1), |l| brokers::broker_id(l.node));
        let scope = &self.node.config.kafka_scope;
        // Before v4 every Metadata request may create topics.
        let may_create = self.node.config.kafka_auto_create_topics
            && (version < 4 || req.allow_auto_topic_creation);
        let names: Vec<String> = match req.topics {
            // All topics (v0 asks with an empty list, later with null).
            None => self.all_topics(),
            Some(t) if t.is_empty() && version == 0 => self.all_topics(),
            Some(t) => t
                .into_iter()
                .filter_map(|t| t.name.map(|n| n.0.to_string()))
                .collect(),
        };
        for name in names {
            let mut topic = MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(name.clone()))));
            let mut found = partitions(self, &name);
            if may_create && found.as_ref().err() == Some(&codes::UNKNOWN_TOPIC_OR_PARTITION) {
                found = self.auto_create(&name).await;
            }
            match found {
                Ok(parts) => {
                    if version >= 10 {
                        topic.topic_id = topic_id(scope, &name);
                    }
                    topic.partitions = parts
                        .iter()
                        .enumerate()
                        .map(|(i, p)| self.partition_metadata(i, p, &brokers, version))
                        .collect();
                }
                Err(code) => topic.error_code = code,
            }
            r.topics.push(topic);
        }
        r
    }

    fn partition_metadata(
        &self,
        i: usize,
        p: &Partition,
        brokers: &BTreeMap<u64, brokers::Listener>,
        version: i16,
    ) -> MetadataResponsePartition {
        let index = i32::try_from(i).unwrap_or(i32::MAX);
        let part = MetadataResponsePartition::default().with_partition_index(index);
        let container = self.node.container_of(p.segment);
        match self.leader_of(container.group(), brokers) {
            Some(leader) => {
                let id = brokers::broker_id(leader.node);
                // The container's replicas where the placement is known
                // (a cluster), the leader alone otherwise; the in-sync set
                // is the replicas as far as Kafka clients need it (they
                // only ever talk to the leader).
                let replicas: Vec<BrokerId> = match self.node.placed(container.id) {
                    Some(r) if r.contains(&leader.node) => {
                        r.iter().map(|&n| brokers::broker_id(n)).collect()
                    }
                    _ => vec![id],
                };
                part.with_leader_id(id)
                    .with_leader_epoch(if version >= 7 { leader.epoch } else { -1 })
                    .with_replica_nodes(replicas.clone())
                    .with_isr_nodes(replicas)
            }
            // Electing, or led by a node whose listener is not known yet:
            // clients retry with fresh metadata.
            None => part
                .with_error_code(codes::LEADER_NOT_AVAILABLE)
                .with_leader_id(BrokerId(-1)),
        }
    }

    /// Creates topic `name` for a Metadata request (auto-create on), here
    /// if this node leads the metadata, else at the node that does: its
    /// partitions, or the code a client retries with (the new topic's
    /// leaders are being elected, or this node's metadata has not seen it
    /// yet: `LEADER_NOT_AVAILABLE`, as Kafka answers a topic it just
    /// created), or why it cannot be.
    async fn auto_create(&self, name: &str) -> Result<Vec<Partition>, i16> {
        if !is_valid_topic(name) {
            return Err(codes::INVALID_TOPIC);
        }
        let created = match self.node.create_kafka_topic(name).await {
            Err(Error::NotLeader {
                leader: Some(addr), ..
            }) => self.node.peers.create_kafka_topic(&addr, name).await,
            other => other,
        };
        if let Err(e) = created {
            tracing::debug!(topic = name, error = %e, "Kafka topic auto-create failed");
            return Err(codes::LEADER_NOT_AVAILABLE);
        }
        partitions(self, name).map_err(|_| codes::LEADER_NOT_AVAILABLE)
    }

    fn all_topics(&self) -> Vec<String> {
        let scope = &self.node.config.kafka_scope;
        self.node
            .controller
            .all()
            .into_iter()
            .filter(|s| &s.key.scope == scope && partitions_of(s).is_ok())
            .map(|s| s.key.stream)
            .collect()
    }

    pub(super) async fn create_topics(
        &self,
        req: CreateTopicsRequest,
        version: i16,
    ) -> CreateTopicsResponse {
        let mut r = CreateTopicsResponse::default();
        for t in req.topics {
            let name = t.name.0.to_string();
            let mut result = CreatableTopicResult::default().with_name(t.name.clone());
            let outcome = match self.topic_spec(&name, t.num_partitions, &t.configs) {
                Err((code, message)) => Err((code, message)),
                Ok(_) if req.validate_only => Ok(()),
                Ok((segments, retention)) => self
                    .create(&name, segments, retention)
                    .await
                    .map_err(|e| (codes::meta_code(&e, codes::NOT_CONTROLLER), e.to_string())),
            };
            match outcome {
                Ok(()) if version >= 7 => {
                    result.num_partitions = t.num_partitions.max(1);
                    result.replication_factor = 1;
                    result.topic_id = topic_id(&self.node.config.kafka_scope, &name);
                }
                Ok(()) if version >= 5 => {
                    result.num_partitions = t.num_partitions.max(1);
                    result.replication_factor = 1;
                }
                Ok(()) => {}
                Err((code, message)) => {
                    result.error_code = code;
                    result.error_message = Some(StrBytes::from_string(message));
                }
            }
            r.topics.push(result);
        }
        r
    }

    /// The segment count and retention a CreateTopics entry asks for, or
    /// why it cannot be.
    fn topic_spec(
        &self,
        name: &str,
        partitions: i32,
        configs: &[kafka_protocol::messages::create_topics_request::CreatableTopicConfig],
    ) -> Result<(u32, Retention), (i16, String)> {
        if !is_valid_topic(name) {
            return Err((
                codes::INVALID_TOPIC,
                format!(
                    "invalid topic name {name:?}: use 1 to 249 characters from a-z A-Z 0-9 . _ -"
                ),
            ));
        }
        // -1: the broker's default, one partition here.
        let segments = match partitions {
            -1 => 1,
            n if (1..=1024).contains(&n) => n as u32,
            n => {
                return Err((
                    codes::INVALID_PARTITIONS,
                    format!("a topic has 1 to 1024 partitions, not {n}"),
                ))
            }
        };
        let mut retention = Retention::default();
        for c in configs {
            let value = c.value.as_ref().map(|v| v.as_str()).unwrap_or("");
            let number = || {
                value.parse::<i64>().map_err(|_| {
                    (
                        codes::INVALID_CONFIG,
                        format!("{}={value:?} is not a number", c.name.as_str()),
                    )
                })
            };
            // -1: unlimited, as in Kafka.
            let limit = |n: i64| u64::try_from(n).unwrap_or(0);
            match c.name.as_str() {
                "retention.ms" => retention.time_ms = limit(number()?),
                "retention.bytes" => retention.bytes = limit(number()?),
                // What every client sends and Aquifer has no choice in.
                "cleanup.policy" if value == "delete" => {}
                "min.insync.replicas" | "segment.bytes" | "segment.ms" | "compression.type"
                | "message.timestamp.type" | "max.message.bytes" => {}
                other => {
                    return Err((
                        codes::INVALID_CONFIG,
                        format!("topic config {other}={value:?} is not supported (retention.ms and retention.bytes are)"),
                    ))
                }
            }
        }
        Ok((segments, retention))
    }

    async fn create(&self, name: &str, segments: u32, retention: Retention) -> Result<(), Error> {
        self.node.check_meta_leader()?;
        let policy = ScalingPolicy::default();
        self.node
            .create_stream(&self.key(name), segments, retention, policy)
            .await
            .map(|_| ())
    }

    pub(super) async fn delete_topics(
        &self,
        req: DeleteTopicsRequest,
        version: i16,
    ) -> DeleteTopicsResponse {
        let names: Vec<TopicName> = if req.topic_names.is_empty() {
            req.topics.into_iter().filter_map(|t| t.name).collect()
        } else {
            req.topic_names
        };
        let mut r = DeleteTopicsResponse::default();
        for name in names {
            let topic = name.0.to_string();
            let mut result = DeletableTopicResult::default().with_name(Some(name));
            let outcome = match partitions(self, &topic) {
                Err(code) => Err((code, format!("no topic {topic}"))),
                Ok(_) => match self.node.check_meta_leader() {
                    Err(e) => Err((codes::meta_code(&e, codes::NOT_CONTROLLER), e.to_string())),
                    Ok(()) => self
                        .node
                        .delete_stream(&self.key(&topic))
                        .await
                        .map_err(|e| (codes::code_of(&e), e.to_string())),
                },
            };
            if let Err((code, message)) = outcome {
                result.error_code = code;
                if version >= 5 {
                    result.error_message = Some(StrBytes::from_string(message));
                }
            }
            r.responses.push(result);
        }
        r
    }
}

/// A stable, non-zero id for a topic (Kafka's topic ids): from the hash of
/// its stream name.
fn topic_id(scope: &str, topic: &str) -> uuid::Uuid {
    let h = |seed: u64| {
        let mut h = seed;
        for b in scope.bytes().chain([b'/']).chain(topic.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h | 1
    };
    uuid::Uuid::from_u64_pair(h(0xcbf2_9ce4_8422_2325), h(0x84222325cbf29ce4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_topic_names_are_stream_names() {
        assert!(is_valid_topic("orders.v1-eu_west"));
        assert!(is_valid_topic(&"t".repeat(249)));
        assert!(!is_valid_topic(&"t".repeat(250)));
        assert!(!is_valid_topic("a/b"));
        assert!(!is_valid_topic(""));
        assert_ne!(topic_id("kafka", "a"), topic_id("kafka", "b"));
    }
}
