//! OffsetCommit and OffsetFetch: consumer groups' committed offsets,
//! stored as metadata (`controller::kafka_offsets`), so a commit is
//! answered once it is replicated and applied on a quorum, and a new
//! coordinator has every commit the old one answered.
//!
//! This module owns the checks and the mapping between requests and the
//! table. It never changes membership; whether a member may commit is
//! `membership`'s answer.

use std::collections::HashMap;

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as K;

use super::membership::Code;
use super::{codes, topics, Kafka};
use crate::controller::kafka_offsets::{KafkaOffset, KafkaOffsetsCommand, METADATA_BYTES_MAX};

/// One partition's commit, as OffsetCommit and TxnOffsetCommit both
/// carry it.
pub(super) struct Commit {
    pub partition: i32,
    pub offset: i64,
    /// -1: none.
    pub leader_epoch: i32,
    pub metadata: String,
}

/// Each topic's partitions and their codes, as commit answers list them.
pub(super) type PartitionCodes = Vec<(TopicName, Vec<(i32, Code)>)>;

/// One group's committed offsets, by (topic, partition).
type Committed = HashMap<(String, i32), KafkaOffset>;

/// The answer's topics as response types of one OffsetFetch form (the
/// v8+ groups' or v1–7's): distinct types with the same fields.
macro_rules! fetched_topics {
    ($topic:ty, $partition:ty, $answer:expr) => {
        $answer
            .into_iter()
            .map(|(name, parts)| {
                <$topic>::default().with_name(name).with_partitions(
                    parts
                        .into_iter()
                        .map(|p| {
                            <$partition>::default()
                                .with_partition_index(p.0)
                                .with_committed_offset(p.1)
                                .with_committed_leader_epoch(p.2)
                                .with_metadata(Some(StrBytes::from_string(p.3)))
                        })
                        .collect(),
                )
            })
            .collect()
    };
}

/// A commit request's topics (OffsetCommit's or TxnOffsetCommit's: distinct
/// types with the same fields) as [`Commit`]s by topic; `with_epoch`: the
/// version carries the leader epoch.
macro_rules! commits_of {
    ($topics:expr, $with_epoch:expr) => {
        $topics
            .into_iter()
            .map(|t| {
                let commits = t
                    .partitions
                    .into_iter()
                    .map(|p| $crate::kafka::offsets::Commit {
                        partition: p.partition_index,
                        offset: p.committed_offset,
                        leader_epoch: if $with_epoch {
                            p.committed_leader_epoch
                        } else {
                            -1
                        },
                        metadata: p
                            .committed_metadata
                            .map(|m| m.to_string())
                            .unwrap_or_default(),
                    })
                    .collect();
                (t.name, commits)
            })
            .collect()
    };
}
pub(super) use commits_of;

/// A commit's answer topics of one response form from each partition's
/// code so far (`failed` where that was 0: the commit's own outcome).
macro_rules! commit_answers {
    ($topic:ty, $partition:ty, $answers:expr, $failed:expr) => {
        $answers
            .into_iter()
            .map(|(name, parts)| {
                <$topic>::default().with_name(name).with_partitions(
                    parts
                        .into_iter()
                        .map(|(index, code)| {
                            <$partition>::default()
                                .with_partition_index(index)
                                .with_error_code(if code == 0 { $failed } else { code })
                        })
                        .collect(),
                )
            })
            .collect()
    };
}
pub(super) use commit_answers;

impl Kafka {
    pub(super) async fn offset_commit(
        &self,
        req: OffsetCommitRequest,
        version: i16,
    ) -> OffsetCommitResponse {
        let group = req.group_id.0.to_string();
        let instance = req.group_instance_id.as_ref().map(|i| i.to_string());
        let allowed = self.commit_rights(
            &group,
            &req.member_id,
            req.generation_id_or_member_epoch,
            instance.as_deref(),
        );
        // The leader epoch field exists from v6 on.
        let topics = commits_of!(req.topics, version >= 6);
        let (answers, offsets) = self.checked_commits(topics, &allowed);
        let failed = if offsets.is_empty() {
            0
        } else {
            let change = KafkaOffsetsCommand {
                group,
                offsets,
                delete: false,
            };
            match self.node.controller.kafka_offsets_change(change).await {
                Ok(()) => 0,
                Err(e) => {
                    tracing::debug!(error = %e, "Kafka offset commit failed");
                    codes::meta_code(&e, K::NotCoordinator.code())
                }
            }
        };
        let mut r = OffsetCommitResponse::default();
        r.topics = commit_answers!(
            OffsetCommitResponseTopic,
            OffsetCommitResponsePartition,
            answers,
            failed
        );
        r
    }

    /// Whether `member` of `group` at `generation` may commit now: a group
    /// unknown here takes commits from outside it only (generation -1).
    pub(super) fn commit_rights(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        instance: Option<&str>,
    ) -> Result<(), Code> {
        if group.is_empty() {
            return Err(K::InvalidGroupId.code());
        }
        self.with_group(group, generation < 0, |g| {
            g.check_instance(member, instance)?;
            g.may_commit(member, generation)
        })
        .map_err(|code| {
            if code == K::UnknownMemberId.code() && generation >= 0 {
                K::IllegalGeneration.code()
            } else {
                code
            }
        })
    }

    /// Each partition's code so far, and the offsets to record of those
    /// that may be committed (`allowed`, a known partition, metadata
    /// within bounds).
    pub(super) fn checked_commits(
        &self,
        topics: Vec<(TopicName, Vec<Commit>)>,
        allowed: &Result<(), Code>,
    ) -> (PartitionCodes, Vec<KafkaOffset>) {
        let now = crate::tier::writer::now_ms();
        let scope = self.node.config.kafka_scope.clone();
        let mut answers = Vec::new();
        let mut offsets = Vec::new();
        for (name, commits) in topics {
            let topic = name.0.to_string();
            let parts = topics::partitions(self, &topic);
            let mut codes_of = Vec::new();
            for c in commits {
                let code = match (allowed, &parts) {
                    (Err(code), _) => *code,
                    (_, Err(_)) => K::UnknownTopicOrPartition.code(),
                    (_, Ok(parts))
                        if usize::try_from(c.partition).map_or(true, |i| i >= parts.len()) =>
                    {
                        K::UnknownTopicOrPartition.code()
                    }
                    _ if c.metadata.len() > METADATA_BYTES_MAX => K::OffsetMetadataTooLarge.code(),
                    _ => {
                        offsets.push(KafkaOffset {
                            scope: scope.clone(),
                            stream: topic.clone(),
                            partition: c.partition,
                            offset: c.offset,
                            leader_epoch: c.leader_epoch,
                            metadata: c.metadata,
                            commit_ms: now,
                        });
                        0
                    }
                };
                codes_of.push((c.partition, code));
            }
            answers.push((name, codes_of));
        }
        (answers, offsets)
    }

    pub(super) async fn offset_fetch(
        &self,
        req: OffsetFetchRequest,
        version: i16,
    ) -> OffsetFetchResponse {
        let mut r = OffsetFetchResponse::default();
        if version >= 8 {
            for g in req.groups {
                let wanted = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name, t.partition_indexes))
                        .collect::<Vec<_>>()
                });
                let mut group =
                    OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
                match self.committed(&g.group_id.0) {
                    Err(code) => group.error_code = code,
                    Ok(committed) => {
                        group.topics = fetched_topics!(
                            OffsetFetchResponseTopics,
                            OffsetFetchResponsePartitions,
                            answer(&committed, wanted, version)
                        );
                    }
                }
                r.groups.push(group);
            }
            return r;
        }
        let wanted = req.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name, t.partition_indexes))
                .collect::<Vec<_>>()
        });
        match self.committed(&req.group_id.0) {
            // Before v2 the error is per partition.
            Err(code) if version < 2 => {
                r.topics = wanted
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(name, parts)| {
                        OffsetFetchResponseTopic::default()
                            .with_name(name)
                            .with_partitions(
                                parts
                                    .into_iter()
                                    .map(|i| {
                                        OffsetFetchResponsePartition::default()
                                            .with_partition_index(i)
                                            .with_committed_offset(-1)
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
            }
            Err(code) => r.error_code = code,
            Ok(committed) => {
                r.topics = fetched_topics!(
                    OffsetFetchResponseTopic,
                    OffsetFetchResponsePartition,
                    answer(&committed, wanted, version)
                );
            }
        }
        r
    }

    /// Group `group`'s committed offsets in this listener's scope, if this
    /// node is its coordinator.
    fn committed(&self, group: &str) -> Result<Committed, Code> {
        self.check_coordinator()?;
        let scope = &self.node.config.kafka_scope;
        Ok(self
            .node
            .controller
            .kafka_offsets(group)
            .into_iter()
            .filter(|o| &o.scope == scope)
            .map(|o| ((o.stream.clone(), o.partition), o))
            .collect())
    }
}

/// A partition's answer: (partition, offset, leader epoch, metadata).
type Answered = (i32, i64, i32, String);

/// (partition, offset, leader epoch, metadata) per topic: of the wanted
/// partitions (-1: none committed), or all committed if none are named.
fn answer(
    committed: &Committed,
    wanted: Option<Vec<(TopicName, Vec<i32>)>>,
    version: i16,
) -> Vec<(TopicName, Vec<Answered>)> {
    // The leader epoch field exists from v5 on.
    let epoch = |o: &KafkaOffset| if version >= 5 { o.leader_epoch } else { -1 };
    match wanted {
        Some(topics) => topics
            .into_iter()
            .map(|(name, parts)| {
                let found = parts
                    .into_iter()
                    .map(|i| match committed.get(&(name.0.to_string(), i)) {
                        Some(o) => (i, o.offset, epoch(o), o.metadata.clone()),
                        None => (i, -1, -1, String::new()),
                    })
                    .collect();
                (name, found)
            })
            .collect(),
        None => {
            let mut by_topic: std::collections::BTreeMap<String, Vec<Answered>> =
                Default::default();
            for ((topic, i), o) in committed {
                by_topic.entry(topic.clone()).or_default().push((
                    *i,
                    o.offset,
                    epoch(o),
                    o.metadata.clone(),
                ));
            }
            by_topic
                .into_iter()
                .map(|(t, mut parts)| {
                    parts.sort_by_key(|p| p.0);
                    (TopicName(StrBytes::from_string(t)), parts)
                })
                .collect()
        }
    }
}
