//! Stream admin that spans the metadata group and the containers: create,
//! seal, delete and retention changes.
//!
//! Each change is written to `meta` first; the containers' half is made by
//! the reconciler ([`super::reconcile`]) on every node, and an admin call
//! waits (at most [`ADMIN_WAIT`]) until it is applied where it must be. It
//! never changes a container directly.

use std::collections::HashMap;
use std::time::Duration;

use crate::container::SegmentView;
use crate::controller::scaling::{Split, STREAM_SEGMENTS_MAX};
use crate::controller::{Retention, ScalingPolicy, StreamKey, StreamRecord};
use crate::error::Error;

use super::Node;

// Describe asks for a whole stream's segments in one call.
const _: () =
    assert!(STREAM_SEGMENTS_MAX as usize <= crate::cluster::peers::SEGMENT_VIEWS_PER_CALL_MAX);

/// How long an admin call waits for its container half to be applied.
const ADMIN_WAIT: Duration = Duration::from_secs(10);

/// Checks a scope or stream name against the protocol's naming rule.
pub fn validate_name(what: &str, name: &str) -> Result<(), Error> {
    if aquifer_proto::name::is_valid_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid {what} name {name:?}: {}",
            aquifer_proto::name::NAME_RULE
        )))
    }
}

impl Node {
    /// Reconciles until `done` holds for the views of segments `ids` (the
    /// container leaders elsewhere do their part), or fails after
    /// [`ADMIN_WAIT`].
    async fn settle(
        &self,
        what: &str,
        ids: &[u64],
        done: impl Fn(&Node, &HashMap<u64, SegmentView>) -> bool,
    ) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + ADMIN_WAIT;
        loop {
            self.reconcile_once().await?;
            let views = if ids.is_empty() {
                Ok(HashMap::new())
            } else {
                self.segment_views(ids).await
            };
            let why = match views {
                Ok(views) if done(self, &views) => return Ok(()),
                Ok(_) => "a container has no leader?".to_string(),
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "{what} is recorded but not yet applied by every container ({why}); it completes by itself once they have one"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates Kafka topic `name` on this node, the metadata leader, as the
    /// Kafka listener's auto-create does (`kafka_auto_create_partitions`
    /// partitions, no retention, fixed); an existing topic is no error.
    pub async fn create_kafka_topic(&self, name: &str) -> Result<(), Error> {
        if !aquifer_proto::name::is_valid_kafka_topic(name) {
            return Err(Error::InvalidArgument(format!(
                "invalid topic name {name:?}: use 1 to 249 characters from a-z A-Z 0-9 . _ -"
            )));
        }
        if !self.config.kafka_auto_create_topics {
            return Err(Error::FailedPrecondition(
                "kafka_auto_create_topics is off on the metadata leader".into(),
            ));
        }
        self.check_meta_leader()?;
        let key = StreamKey {
            scope: self.config.kafka_scope.clone(),
            stream: name.to_string(),
        };
        let segments = self.config.kafka_auto_create_partitions;
        match self
            .create_stream(
                &key,
                segments,
                Retention::default(),
                ScalingPolicy::default(),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(topic = name, segments, "Kafka topic auto-created");
                Ok(())
            }
            // Created meanwhile by another request: it is there.
            Err(Error::StreamExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn create_stream(
        &self,
        key: &StreamKey,
        segment_count: u32,
        retention: Retention,
        policy: ScalingPolicy,
    ) -> Result<StreamRecord, Error> {
        validate_name("scope", &key.scope)?;
        validate_name("stream", &key.stream)?;
        if segment_count > STREAM_SEGMENTS_MAX {
            return Err(Error::InvalidArgument(format!(
                "a stream can have at most {STREAM_SEGMENTS_MAX} segments, not {segment_count}"
            )));
        }
        let stream = self
            .controller
            .create(
                key,
                segment_count.max(1),
                self.config.containers,
                retention,
                policy,
            )
            .await?;
        let ids: Vec<u64> = stream.segments.iter().map(|g| g.id).collect();
        self.settle("the new stream", &ids, |_, views| {
            ids.iter().all(|id| views.contains_key(id))
        })
        .await?;
        Ok(stream)
    }

    pub fn stream(&self, key: &StreamKey) -> Result<StreamRecord, Error> {
        validate_name("scope", &key.scope)?;
        validate_name("stream", &key.stream)?;
        self.controller.get(key)
    }

    pub async fn set_retention(
        &self,
        key: &StreamKey,
        retention: Retention,
    ) -> Result<StreamRecord, Error> {
        self.stream(key)?;
        self.controller.set_retention(key, retention).await
    }

    pub async fn set_scaling(
        &self,
        key: &StreamKey,
        policy: ScalingPolicy,
    ) -> Result<StreamRecord, Error> {
        self.stream(key)?;
        self.controller.set_scaling(key, policy).await
    }

    pub async fn seal_stream(&self, key: &StreamKey) -> Result<StreamRecord, Error> {
        self.stream(key)?;
        let stream = self.controller.seal(key).await?;
        let ids: Vec<u64> = stream.segments.iter().map(|g| g.id).collect();
        self.settle("the seal", &ids, |_, views| {
            views.values().all(|v| v.sealed)
        })
        .await?;
        Ok(stream)
    }

    /// Scales `key` by hand: records the scale, then waits until the
    /// reconciler has created the successors, sealed the predecessors and
    /// the new epoch is in force.
    pub async fn scale_stream(
        &self,
        key: &StreamKey,
        splits: &[Split],
        merges: &[Vec<u64>],
    ) -> Result<StreamRecord, Error> {
        self.stream(key)?;
        let stream = self
            .controller
            .start_scale(key, splits, merges, self.config.containers)
            .await?;
        let kind = if splits.is_empty() { "merge" } else { "split" };
        self.metrics.scale_started(kind, "manual");
        let epoch = stream.scaling.as_ref().map_or(stream.epoch, |x| x.epoch);
        let key = key.clone();
        self.settle("the scale", &[], |node, _| {
            node.controller
                .get(&key)
                .is_ok_and(|s| s.epoch >= epoch && s.scaling.is_none())
        })
        .await?;
        self.controller.get(&key)
    }

    pub async fn delete_stream(&self, key: &StreamKey) -> Result<(), Error> {
        self.stream(key)?;
        self.controller.mark_deleting(key).await?;
        let key = key.clone();
        self.settle("the delete", &[], |node, _| {
            !node.controller.all().iter().any(|s| s.key == key)
        })
        .await
    }
}
