//! Segment containers: a container is a raft group ([`crate::group`]) whose
//! state machine ([`state::ContainerState`]) hosts many segments. Segments
//! map to containers by a stable hash of their id.
//!
//! [`Container`] is the handle the API, the read path and the storage writer
//! use: propose commands, look up segments. It owns the container's
//! in-flight byte budget (bytes proposed but not yet applied).

pub mod command;
pub mod index;
pub mod rates;
pub mod segment;
pub mod state;
mod txn;

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::error::Error;
use crate::group::{Group, GroupConfig};
use command::{Cmd, ContainerCommand};
pub use segment::{Chunk, ReadSource, Segment, SegmentView};
use state::{Applied, ApplyError, ContainerState, SegmentMap};

use crate::cache::TailBudget;
use crate::log::LogError;

/// The container that hosts `segment_id` among `containers`: FNV-1a of the
/// id's little-endian bytes, modulo the count. Stable forever: changing it
/// would orphan every segment.
pub fn container_of(segment_id: u64, containers: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in segment_id.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(containers)) as u32
}

/// A node's containers, indexed by id: a cheap handle to share with the
/// node's tasks.
#[derive(Clone)]
pub struct Containers(Arc<[Arc<Container>]>);

impl Containers {
    /// `containers` in id order (container `i` at index `i`).
    pub fn new(containers: Vec<Arc<Container>>) -> Containers {
        Containers(containers.into())
    }

    /// The container hosting `segment_id`.
    pub fn of(&self, segment_id: u64) -> &Arc<Container> {
        // `container_of` is below the count, which is the slice's length.
        let count = u32::try_from(self.0.len()).unwrap_or(u32::MAX);
        &self.0[container_of(segment_id, count) as usize]
    }
}

impl<'a> IntoIterator for &'a Containers {
    type Item = &'a Arc<Container>;
    type IntoIter = std::slice::Iter<'a, Arc<Container>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl std::ops::Deref for Containers {
    type Target = [Arc<Container>];

    fn deref(&self) -> &[Arc<Container>] {
        &self.0
    }
}

pub struct Container {
    pub id: u32,
    group: Group<ContainerState>,
    segments: SegmentMap,
    /// Open transactions' parts (hidden from reads).
    parts: SegmentMap,
    in_flight: Arc<Semaphore>,
    in_flight_max: u32,
}

impl From<ApplyError> for Error {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::SegmentNotFound(id) => Error::SegmentNotFound(id),
            ApplyError::SegmentSealed(id) => Error::SegmentSealed(id),
            ApplyError::EventNumberOverlap { .. }
            | ApplyError::ConditionalEventNumberGap { .. } => Error::InvalidArgument(e.to_string()),
            ApplyError::ConditionFailed { actual, .. } => Error::ConditionFailed {
                actual,
                message: e.to_string(),
            },
            ApplyError::EventNumberGap { .. } | ApplyError::UnknownWriterGap { .. } => {
                Error::Unavailable(e.to_string())
            }
            ApplyError::StaleChunk { .. } => Error::OrphanChunk(e.to_string()),
            ApplyError::TxnPartClosed { .. } => Error::TransactionState {
                reason: aquifer_proto::wire::REASON_TRANSACTION_NOT_OPEN,
                message: e.to_string(),
            },
            ApplyError::BadTruncate { .. } | ApplyError::Malformed(_) => {
                Error::Internal(e.to_string())
            }
        }
    }
}

impl Container {
    pub fn start(
        id: u32,
        group: GroupConfig,
        budget: Arc<TailBudget>,
        in_flight_bytes_max: u64,
    ) -> Result<Self, LogError> {
        let segments = SegmentMap::default();
        let state = ContainerState::new(segments.clone(), budget);
        let parts = state.parts();
        let group = Group::start(group, state)?;
        // The config bounds it far below u32::MAX (and Semaphore::MAX_PERMITS).
        let in_flight_max = u32::try_from(in_flight_bytes_max).unwrap_or(u32::MAX);
        Ok(Container {
            id,
            group,
            segments,
            parts,
            in_flight: Arc::new(Semaphore::new(in_flight_max as usize)),
            in_flight_max,
        })
    }

    pub async fn wait_ready(&self) -> Result<(), Error> {
        Ok(self.group.wait_ready().await?)
    }

    /// The container's raft group (raft messages, status).
    pub fn group(&self) -> &Group<ContainerState> {
        &self.group
    }

    /// Refuses with where the leader is unless this node leads.
    pub fn check_leader(&self) -> Result<(), Error> {
        if self.leader_term().is_some() {
            return Ok(());
        }
        Err(self.group.not_leader().into())
    }

    /// The raft term this node leads the container in, if it does.
    pub fn leader_term(&self) -> Option<u64> {
        self.group.leader_term()
    }

    pub fn segment(&self, id: u64) -> Option<Arc<Segment>> {
        let map = self.segments.read().unwrap_or_else(|p| p.into_inner());
        map.get(&id).cloned()
    }

    /// The segments this container hosts now.
    pub fn segments(&self) -> Vec<Arc<Segment>> {
        let map = self.segments.read().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
    }

    /// Ids of the segments this container hosts now.
    pub fn segment_ids(&self) -> Vec<u64> {
        let map = self.segments.read().unwrap_or_else(|p| p.into_inner());
        map.keys().copied().collect()
    }

    /// Names of the tier-2 objects the container's segments and open
    /// transaction parts refer to (chunks, and merged parts' tier-2 blocks
    /// not yet reached by the flush).
    pub fn chunk_objects(&self) -> std::collections::HashSet<String> {
        let mut names = std::collections::HashSet::new();
        for map in [&self.segments, &self.parts] {
            let map = map.read().unwrap_or_else(|p| p.into_inner());
            for seg in map.values() {
                names.extend(seg.referenced_objects());
            }
        }
        names
    }

    /// The open transaction parts (the storage writer spills large ones).
    pub fn parts(&self) -> Vec<Arc<Segment>> {
        let map = self.parts.read().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
    }

    /// Proposes a control command (create, seal, delete, chunk flushed) and
    /// waits until it is applied. Control commands bypass the in-flight
    /// budget, so flushing can always free room for appends.
    pub async fn propose(&self, cmd: Cmd) -> Result<Applied, Error> {
        Ok(self.group.propose(ContainerCommand::encode(cmd)).await??)
    }

    /// Queues an append (see [`Group::submit`] for ordering) and returns a
    /// future of its outcome. `bytes` of the in-flight budget are held until
    /// it is applied; this waits while the budget is used up.
    pub async fn submit(
        &self,
        cmd: Cmd,
        bytes: u32,
    ) -> Result<impl std::future::Future<Output = Result<Applied, Error>> + Send + 'static, Error>
    {
        let permit = self
            .in_flight
            .clone()
            // A batch larger than the whole budget waits for all of it.
            .acquire_many_owned(bytes.clamp(1, self.in_flight_max))
            .await
            .map_err(|_| Error::Unavailable(format!("container {} is shutting down", self.id)))?;
        let outcome = self
            .group
            .submit(ContainerCommand::encode(cmd), Some(permit))
            .await?;
        Ok(async move { Ok(outcome.await??) })
    }

    /// The last event number applied for `writer` on transaction segment
    /// `id` (0: none).
    /// The writer of part `id` whose id starts with `prefix`, and its
    /// last applied event number.
    pub async fn txn_writer_like(
        &self,
        id: u64,
        prefix: String,
    ) -> Result<Option<(String, i64)>, Error> {
        Ok(self
            .group
            .query(move |s| s.txn_writer_like(id, &prefix))
            .await??)
    }

    pub async fn txn_last_event_number(&self, id: u64, writer: String) -> Result<i64, Error> {
        Ok(self
            .group
            .query(move |s| s.txn_last_event_number(id, &writer))
            .await??)
    }

    /// A sealed transaction part's bytes, to copy: its tier-2 chunks, then
    /// its memory blocks (None: copied and dropped before).
    pub async fn txn_blocks(
        &self,
        id: u64,
    ) -> Result<Option<(Vec<Chunk>, Vec<bytes::Bytes>)>, Error> {
        Ok(self.group.query(move |s| s.txn_blocks(id)).await??)
    }

    /// The last event number applied for `writer` on `segment` (0: none).
    pub async fn last_event_number(&self, segment: u64, writer: String) -> Result<i64, Error> {
        Ok(self
            .group
            .query(move |s| s.last_event_number(segment, &writer))
            .await??)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_hash_is_stable_and_spreads() {
        // Pinned values: changing the hash would move every segment of
        // every existing data directory.
        let four: Vec<u32> = (0..10).map(|id| container_of(id, 4)).collect();
        assert_eq!(four, [1, 0, 3, 2, 1, 0, 3, 2, 1, 0]);
        let seven: Vec<u32> = [0, 1, 2, 1000, 1 << 40, u64::MAX]
            .into_iter()
            .map(|id| container_of(id, 7))
            .collect();
        assert_eq!(seven, [5, 1, 6, 2, 5, 6]);
        let mut counts = [0u32; 4];
        for id in 0..4000 {
            counts[container_of(id, 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
