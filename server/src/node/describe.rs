//! Describe: the segments' views (head, length, sealed, bytes per tier) as
//! their containers hold them, from this node's replicas after a raft
//! ReadIndex, else from a node that holds the container.
//!
//! Read-only: it never proposes anything.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aquifer_proto::v1::SegmentInfo;

use crate::container::rates::rates_from;
use crate::container::{container_of, SegmentView};
use crate::error::Error;

use super::Node;

/// How long a describe waits for a container replica to catch up.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(3);

fn view_info(id: u64, v: &SegmentView) -> SegmentInfo {
    SegmentInfo {
        segment_id: id,
        head_offset: v.head,
        length: v.length,
        sealed: v.sealed,
        tier2_length: v.tier2_length,
        chunk_count: v.chunk_count,
        tail_buffer_bytes: v.tail_bytes,
        log_bytes: v.log_bytes,
        events_per_second: v.events_per_second.to_vec(),
        bytes_per_second: v.bytes_per_second.to_vec(),
        ..SegmentInfo::default()
    }
}

fn info_view(i: &SegmentInfo) -> SegmentView {
    SegmentView {
        head: i.head_offset,
        length: i.length,
        sealed: i.sealed,
        tier2_length: i.tier2_length,
        chunk_count: i.chunk_count,
        tail_bytes: i.tail_buffer_bytes,
        log_bytes: i.log_bytes,
        events_per_second: rates_from(&i.events_per_second),
        bytes_per_second: rates_from(&i.bytes_per_second),
    }
}

impl Node {
    /// `ids` grouped by the container that hosts them.
    fn by_container(&self, ids: &[u64]) -> BTreeMap<u32, Vec<u64>> {
        let mut by_container: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for &id in ids {
            by_container
                .entry(container_of(id, self.config.containers))
                .or_default()
                .push(id);
        }
        by_container
    }

    /// The segments among `ids` as their containers hold them, every
    /// acknowledged event included: from this node's replicas where it
    /// holds them (after a raft ReadIndex), else from a node that does.
    /// Segments no container has are left out.
    pub async fn segment_views(&self, ids: &[u64]) -> Result<HashMap<u64, SegmentView>, Error> {
        let by_container = self.by_container(ids);
        let asks = by_container
            .into_values()
            .map(|ids| self.container_views(ids));
        let mut views = HashMap::new();
        for answer in futures::future::join_all(asks).await {
            views.extend(answer?);
        }
        Ok(views)
    }

    async fn container_views(&self, ids: Vec<u64>) -> Result<Vec<(u64, SegmentView)>, Error> {
        let Some(&first) = ids.first() else {
            return Ok(Vec::new());
        };
        let redirect = match self.local_segment_views(&ids).await {
            Ok(views) => return Ok(views),
            Err(Error::NotLeader { leader, message }) => (leader, message),
            // This replica got no read point in time: another may.
            Err(Error::Unavailable(message)) => (None, message),
            Err(e) => return Err(e),
        };
        let ids = &ids;
        self.at_replicas_of(first, redirect.0, redirect.1, |addr| async move {
            let infos = self.peers.segment_views(&addr, ids.clone()).await?;
            Ok(infos.iter().map(|i| (i.segment_id, info_view(i))).collect())
        })
        .await
    }

    /// [`Node::segment_views`] from this node's replicas only (all of `ids`
    /// in one container); refuses, naming where to go, if it holds none.
    pub async fn local_segment_views(&self, ids: &[u64]) -> Result<Vec<(u64, SegmentView)>, Error> {
        let Some(&first) = ids.first() else {
            return Ok(Vec::new());
        };
        let c = self.serving_container(first)?;
        if c.leader_term().is_none() {
            c.group().read_index(READ_INDEX_TIMEOUT).await?;
        }
        Ok(ids
            .iter()
            .filter_map(|&id| c.segment(id).map(|s| (id, s.view())))
            .collect())
    }

    /// [`Node::local_segment_views`] as the `SegmentViews` call answers it.
    pub async fn segment_infos(&self, ids: &[u64]) -> Result<Vec<SegmentInfo>, Error> {
        let by_container = self.by_container(ids);
        let mut infos = Vec::new();
        for ids in by_container.values() {
            let views = self.local_segment_views(ids).await?;
            infos.extend(views.iter().map(|(id, v)| view_info(*id, v)));
        }
        Ok(infos)
    }
}
