//! DescribeConfigs: what AdminClient and tools such as `kafka-configs` and
//! `kafka-topics --describe` ask of a topic or a broker, answered from the
//! stream's record and the node's configuration.
//!
//! It owns which Kafka config names mean what here. It never changes a
//! config (IncrementalAlterConfigs is not served) and never invents a
//! value: a name Aquifer has no answer for is left out, as Kafka leaves
//! out a name it does not know.

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as K;

use super::{brokers, Kafka};

/// Kafka's resource types.
const TOPIC: i8 = 2;
const BROKER: i8 = 4;
/// Kafka's config sources.
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
const STATIC_BROKER_CONFIG: i8 = 4;
const DEFAULT_CONFIG: i8 = 5;
/// Kafka's config types.
const BOOLEAN: i8 = 1;
const STRING: i8 = 2;
const INT: i8 = 3;
const LONG: i8 = 5;
const LIST: i8 = 7;

/// One config as answered: name, value, set for this resource (else a
/// default), read-only, type, documentation.
struct Entry {
    name: &'static str,
    value: String,
    set: bool,
    read_only: bool,
    kind: i8,
    doc: &'static str,
}

/// A limit of 0 (none) as Kafka writes it: -1.
fn limit(n: u64) -> String {
    if n == 0 {
        "-1".into()
    } else {
        n.to_string()
    }
}

impl Kafka {
    pub(super) async fn describe_configs(
        &self,
        req: DescribeConfigsRequest,
        version: i16,
    ) -> DescribeConfigsResponse {
        let mut r = DescribeConfigsResponse::default();
        for res in req.resources {
            let name = res.resource_name.to_string();
            let mut result = DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            let entries = match res.resource_type {
                TOPIC => self.topic_configs(&name),
                BROKER => self.broker_configs(&name),
                other => Err((
                    K::InvalidRequest.code(),
                    format!(
                        "resource type {other}: only topics (2) and brokers (4) have configs here"
                    ),
                )),
            };
            match entries {
                Ok(entries) => {
                    // None (or, leniently, no names): every config.
                    let wanted = res.configuration_keys.as_ref().filter(|k| !k.is_empty());
                    result.configs = entries
                        .into_iter()
                        .filter(|e| wanted.is_none_or(|w| w.iter().any(|k| k.as_str() == e.name)))
                        .map(|e| config_answer(e, version, res.resource_type))
                        .collect();
                }
                Err((code, message)) => {
                    result.error_code = code;
                    result.error_message = Some(StrBytes::from_string(message));
                }
            }
            r.results.push(result);
        }
        r
    }

    fn topic_configs(&self, topic: &str) -> Result<Vec<Entry>, (i16, String)> {
        super::topics::partitions(self, topic)
            .map_err(|code| (code, format!("no topic {topic}")))?;
        let stream = self
            .node
            .controller
            .get(&self.key(topic))
            .map_err(|e| (K::UnknownTopicOrPartition.code(), e.to_string()))?;
        let retention = stream.retention;
        Ok(vec![
            Entry {
                name: "retention.ms",
                value: limit(retention.time_ms),
                set: retention.time_ms > 0,
                read_only: true,
                kind: LONG,
                doc: "the stream's retention time (-1: none)",
            },
            Entry {
                name: "retention.bytes",
                value: limit(retention.bytes),
                set: retention.bytes > 0,
                read_only: true,
                kind: LONG,
                doc: "the stream's retention size (-1: none)",
            },
            Entry {
                name: "cleanup.policy",
                value: "delete".into(),
                set: false,
                read_only: true,
                kind: LIST,
                doc: "streams expire whole chunks by retention; there is no compaction",
            },
            Entry {
                name: "max.message.bytes",
                value: self.node.config.event_bytes_max.to_string(),
                set: false,
                read_only: true,
                kind: INT,
                doc: "the largest event (event_bytes_max)",
            },
            Entry {
                name: "message.timestamp.type",
                value: "CreateTime".into(),
                set: false,
                read_only: true,
                kind: STRING,
                doc: "a record's timestamp is its producer's, else its append time",
            },
        ])
    }

    fn broker_configs(&self, broker: &str) -> Result<Vec<Entry>, (i16, String)> {
        let known = broker.is_empty()
            || broker
                .parse::<i32>()
                .is_ok_and(|b| self.brokers().keys().any(|&n| brokers::broker_id(n).0 == b));
        if !known {
            return Err((
                K::InvalidRequest.code(),
                format!("no broker {broker:?} in this cluster"),
            ));
        }
        let c = &self.node.config;
        Ok(vec![
            Entry {
                name: "message.max.bytes",
                value: c.event_bytes_max.to_string(),
                set: false,
                read_only: true,
                kind: INT,
                doc: "the largest event (event_bytes_max)",
            },
            Entry {
                name: "auto.create.topics.enable",
                value: c.kafka_auto_create_topics.to_string(),
                set: c.kafka_auto_create_topics,
                read_only: true,
                kind: BOOLEAN,
                doc: "kafka_auto_create_topics",
            },
            Entry {
                name: "num.partitions",
                value: c.kafka_auto_create_partitions.to_string(),
                set: false,
                read_only: true,
                kind: INT,
                doc: "partitions of an auto-created topic (kafka_auto_create_partitions)",
            },
            Entry {
                name: "offsets.retention.minutes",
                value: (c.kafka_offsets_retention_ms / 60_000).to_string(),
                set: false,
                read_only: true,
                kind: INT,
                doc: "kafka_offsets_retention_ms, in minutes",
            },
            Entry {
                name: "transactional.id.expiration.ms",
                value: c.kafka_transactional_id_expiry_ms.to_string(),
                set: false,
                read_only: true,
                kind: INT,
                doc: "kafka_transactional_id_expiry_ms",
            },
        ])
    }
}

/// One config as its resource's answer lists it.
fn config_answer(e: Entry, version: i16, resource: i8) -> DescribeConfigsResourceResult {
    let source = match (e.set, resource) {
        (true, TOPIC) => DYNAMIC_TOPIC_CONFIG,
        (true, _) => STATIC_BROKER_CONFIG,
        (false, _) => DEFAULT_CONFIG,
    };
    let a = DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_static_str(e.name))
        .with_value(Some(StrBytes::from_string(e.value)))
        .with_read_only(e.read_only)
        .with_config_source(source);
    // Fields a version lacks stay at their defaults.
    if version >= 3 {
        a.with_config_type(e.kind)
            .with_documentation(Some(StrBytes::from_static_str(e.doc)))
    } else {
        a
    }
}
