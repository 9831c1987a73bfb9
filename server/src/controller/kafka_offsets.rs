//! Kafka consumer groups' committed offsets, part of the metadata: a
//! commit is a `meta` entry, so it is replicated, durable once answered,
//! in every snapshot, and there on whichever node leads `meta` next (the
//! Kafka group coordinator is that node).
//!
//! This module owns the table and how commands change it. It never
//! decides who may commit (the coordinator's membership does, in
//! `kafka::membership`) and never reads segments: an offset is the
//! number a client committed, checked only for its bounds.

use std::collections::BTreeMap;

/// Committed offsets the cluster keeps, over all groups: every one is in
/// every metadata snapshot.
pub const KAFKA_OFFSETS_MAX: usize = 100_000;
/// Kafka's `offset.metadata.max.bytes` default.
pub const METADATA_BYTES_MAX: usize = 4096;

/// Commits of group `group`, or (`delete`) the end of the group's offsets.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KafkaOffsetsCommand {
    #[prost(string, tag = "1")]
    pub group: String,
    #[prost(message, repeated, tag = "2")]
    pub offsets: Vec<KafkaOffset>,
    #[prost(bool, tag = "3")]
    pub delete: bool,
}

/// One committed offset: the next record the group reads in a partition.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct KafkaOffset {
    /// The topic's stream.
    #[prost(string, tag = "1")]
    pub scope: String,
    #[prost(string, tag = "2")]
    pub stream: String,
    #[prost(int32, tag = "3")]
    pub partition: i32,
    #[prost(int64, tag = "4")]
    pub offset: i64,
    /// The partition leader epoch the client read it at (-1: none).
    #[prost(int32, tag = "5")]
    pub leader_epoch: i32,
    #[prost(string, tag = "6")]
    pub metadata: String,
    /// The coordinator's clock at the commit.
    #[prost(uint64, tag = "7")]
    pub commit_ms: u64,
}

/// A group's offsets in a snapshot.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KafkaGroupOffsets {
    #[prost(string, tag = "1")]
    pub group: String,
    #[prost(message, repeated, tag = "2")]
    pub offsets: Vec<KafkaOffset>,
}

type PartitionKey = (String, String, i32);

/// Every group's committed offsets, and how many there are in all.
#[derive(Debug, Default)]
pub struct KafkaOffsets {
    groups: BTreeMap<String, BTreeMap<PartitionKey, KafkaOffset>>,
    count: usize,
}

fn key_of(o: &KafkaOffset) -> PartitionKey {
    (o.scope.clone(), o.stream.clone(), o.partition)
}

/// Why a commit is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KafkaOffsetsError {
    #[error("{0}")]
    Invalid(String),
    /// The cluster keeps [`KAFKA_OFFSETS_MAX`] offsets at most.
    #[error("{0}")]
    Full(String),
}

impl KafkaOffsets {
    /// Applies one command; deleting a group that has no offsets is no
    /// error (the coordinator decides whether the group existed).
    pub fn apply(&mut self, c: KafkaOffsetsCommand) -> Result<(), KafkaOffsetsError> {
        if c.delete {
            if let Some(g) = self.groups.remove(&c.group) {
                self.count -= g.len();
            }
            return Ok(());
        }
        if let Some(o) = c
            .offsets
            .iter()
            .find(|o| o.metadata.len() > METADATA_BYTES_MAX)
        {
            return Err(KafkaOffsetsError::Invalid(format!(
                "offset metadata of {} bytes: the most is {METADATA_BYTES_MAX}",
                o.metadata.len()
            )));
        }
        let group = self.groups.get(&c.group);
        let new = c
            .offsets
            .iter()
            .filter(|o| group.is_none_or(|g| !g.contains_key(&key_of(o))))
            .count();
        if self.count + new > KAFKA_OFFSETS_MAX {
            return Err(KafkaOffsetsError::Full(format!(
                "the cluster holds {KAFKA_OFFSETS_MAX} committed Kafka offsets, the most it keeps: \
                 delete unused consumer groups first"
            )));
        }
        let group = self.groups.entry(c.group).or_default();
        for o in c.offsets {
            if group.insert(key_of(&o), o).is_none() {
                self.count += 1;
            }
        }
        Ok(())
    }

    /// Drops every offset of stream `scope/stream` (it was deleted; a
    /// topic made again under its name starts with none).
    pub fn drop_stream(&mut self, scope: &str, stream: &str) {
        for g in self.groups.values_mut() {
            let before = g.len();
            g.retain(|(s, t, _), _| !(s == scope && t == stream));
            self.count -= before - g.len();
        }
        self.groups.retain(|_, g| !g.is_empty());
    }

    /// Group `group`'s offsets, in partition order.
    pub fn of(&self, group: &str) -> Vec<KafkaOffset> {
        self.groups
            .get(group)
            .map(|g| g.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The groups whose newest commit is older than `before_ms` (wall
    /// clock ms), at most `max` of them.
    pub fn committed_before(&self, before_ms: u64, max: usize) -> Vec<String> {
        self.groups
            .iter()
            .filter(|(_, g)| g.values().all(|o| o.commit_ms < before_ms))
            .map(|(group, _)| group.clone())
            .take(max)
            .collect()
    }

    /// The groups that have offsets.
    pub fn groups(&self) -> Vec<String> {
        self.groups.keys().cloned().collect()
    }

    pub fn snapshot(&self) -> Vec<KafkaGroupOffsets> {
        self.groups
            .iter()
            .map(|(group, g)| KafkaGroupOffsets {
                group: group.clone(),
                offsets: g.values().cloned().collect(),
            })
            .collect()
    }

    /// The table a snapshot holds (it replaces this one).
    pub fn restore(snapshot: Vec<KafkaGroupOffsets>) -> Self {
        let mut t = KafkaOffsets::default();
        for g in snapshot {
            let offsets: BTreeMap<_, _> = g.offsets.into_iter().map(|o| (key_of(&o), o)).collect();
            t.count += offsets.len();
            if !offsets.is_empty() {
                t.groups.insert(g.group, offsets);
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset(stream: &str, partition: i32, offset: i64) -> KafkaOffset {
        KafkaOffset {
            scope: "kafka".into(),
            stream: stream.into(),
            partition,
            offset,
            leader_epoch: -1,
            metadata: String::new(),
            commit_ms: 1,
        }
    }

    fn commit(group: &str, offsets: Vec<KafkaOffset>) -> KafkaOffsetsCommand {
        KafkaOffsetsCommand {
            group: group.into(),
            offsets,
            delete: false,
        }
    }

    #[test]
    fn groups_are_old_by_their_newest_commit() {
        let at = |p, ms| KafkaOffset {
            commit_ms: ms,
            ..offset("a", p, 0)
        };
        let mut t = KafkaOffsets::default();
        t.apply(commit("old", vec![at(0, 10), at(1, 20)])).unwrap();
        t.apply(commit("mixed", vec![at(0, 10), at(1, 500)]))
            .unwrap();
        t.apply(commit("new", vec![at(0, 600)])).unwrap();
        assert_eq!(t.committed_before(100, 10), ["old"]);
        assert_eq!(t.committed_before(1000, 10), ["mixed", "new", "old"]);
        assert_eq!(t.committed_before(1000, 1).len(), 1);
    }

    #[test]
    fn commits_overwrite_count_and_survive_a_snapshot() {
        let mut t = KafkaOffsets::default();
        t.apply(commit("g", vec![offset("a", 0, 5), offset("a", 1, 7)]))
            .unwrap();
        t.apply(commit("g", vec![offset("a", 0, 9)])).unwrap();
        t.apply(commit("h", vec![offset("b", 0, 1)])).unwrap();
        assert_eq!(t.count, 3);
        assert_eq!(t.of("g")[0].offset, 9);
        let back = KafkaOffsets::restore(t.snapshot());
        assert_eq!(back.of("g"), t.of("g"));
        assert_eq!(back.count, 3);
        assert_eq!(back.groups(), vec!["g".to_string(), "h".to_string()]);
    }

    #[test]
    fn deletes_and_dropped_streams_free_their_room() {
        let mut t = KafkaOffsets::default();
        t.apply(commit("g", vec![offset("a", 0, 5), offset("b", 0, 7)]))
            .unwrap();
        t.drop_stream("kafka", "a");
        assert_eq!(t.of("g"), vec![offset("b", 0, 7)]);
        assert_eq!(t.count, 1);
        t.apply(KafkaOffsetsCommand {
            group: "g".into(),
            offsets: vec![],
            delete: true,
        })
        .unwrap();
        assert!(t.of("g").is_empty());
        assert_eq!(t.count, 0);
        assert!(t.groups().is_empty());
    }

    #[test]
    fn the_table_and_metadata_are_bounded() {
        let mut t = KafkaOffsets::default();
        let many: Vec<_> = (0..KAFKA_OFFSETS_MAX as i32)
            .map(|p| offset("a", p, 0))
            .collect();
        t.apply(commit("g", many)).unwrap();
        // Overwriting is no growth; a new entry is refused.
        t.apply(commit("g", vec![offset("a", 0, 1)])).unwrap();
        assert!(matches!(
            t.apply(commit("h", vec![offset("a", 0, 1)])),
            Err(KafkaOffsetsError::Full(_))
        ));
        let mut big = offset("a", 0, 1);
        big.metadata = "m".repeat(METADATA_BYTES_MAX + 1);
        assert!(matches!(
            t.apply(commit("g", vec![big])),
            Err(KafkaOffsetsError::Invalid(_))
        ));
    }
}
