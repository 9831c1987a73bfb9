//! Memory for segment bytes, each kind with a byte budget.
//!
//! - [`TailBudget`]: bytes applied but not yet in tier-2, held in the
//!   per-segment tail buffers (see `container::segment`). They cannot be
//!   evicted, so the budget is enforced on the way in: appends wait for room
//!   (back-pressure) and the storage writer frees it by flushing.
//! - [`BlockCache`]: fixed-size blocks read back from tier-2, in a
//!   byte-weighted `moka` cache that evicts on its own.
//!
//! Neither ever holds the only copy of acknowledged data for long: tail
//! bytes are also in the log until tier-2 has them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Notify;

/// The shared budget of all tail buffers on a node.
#[derive(Debug)]
pub struct TailBudget {
    used: AtomicU64,
    /// Of `used`, the bytes open transactions' parts hold: they leave only
    /// by a commit or an abort, never by flushing.
    txn: AtomicU64,
    max: u64,
    freed: Notify,
}

impl TailBudget {
    pub fn new(max: u64) -> Arc<Self> {
        Arc::new(TailBudget {
            used: AtomicU64::new(0),
            txn: AtomicU64::new(0),
            max,
            freed: Notify::new(),
        })
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Whether more than half the budget is in use: the storage writer then
    /// flushes small segments too instead of waiting for a full chunk.
    pub fn under_pressure(&self) -> bool {
        self.used() * 2 > self.max
    }

    /// Waits until `incoming` more bytes fit. One batch always fits into an
    /// empty budget, so an oversize batch cannot wait forever.
    pub async fn wait_for_room(&self, incoming: u64) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let used = self.used();
            if used == 0 || used + incoming <= self.max {
                return;
            }
            freed.await;
        }
    }

    /// Bytes entered a tail buffer (at apply; never waits, so replaying the
    /// log cannot block).
    pub fn add(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Bytes open transactions hold on this node.
    pub fn txn_used(&self) -> u64 {
        self.txn.load(Ordering::Acquire)
    }

    /// Bytes entered a transaction's part (at apply).
    pub fn add_txn(&self, bytes: u64) {
        self.txn.fetch_add(bytes, Ordering::AcqRel);
        self.add(bytes);
    }

    /// A part merged into its parent's tail: its bytes stay in memory, as
    /// tail bytes the storage writer may now flush.
    pub fn merge_txn(&self, bytes: u64) {
        self.txn.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// A part was dropped (aborted) or replaced by a snapshot.
    pub fn release_txn(&self, bytes: u64) {
        self.txn.fetch_sub(bytes, Ordering::AcqRel);
        self.release(bytes);
    }

    /// Bytes left a tail buffer (flushed to tier-2, or the segment deleted).
    pub fn release(&self, bytes: u64) {
        let prev = self.used.fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(prev >= bytes, "tail budget released more than it held");
        self.freed.notify_waiters();
    }
}

/// Size of a block read from tier-2 and cached.
pub const BLOCK_BYTES: u64 = 1024 * 1024;

/// Identifies a block: a chunk object (by segment and its start offset) and
/// the block's index inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub segment_id: u64,
    pub chunk_start: u64,
    pub block: u64,
}

/// Blocks read back from tier-2.
#[derive(Clone)]
pub struct BlockCache {
    blocks: moka::sync::Cache<BlockKey, Bytes>,
}

impl BlockCache {
    pub fn new(bytes_max: u64) -> Self {
        let blocks = moka::sync::Cache::builder()
            .weigher(|_k: &BlockKey, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
            .max_capacity(bytes_max)
            .build();
        BlockCache { blocks }
    }

    pub fn get(&self, key: &BlockKey) -> Option<Bytes> {
        self.blocks.get(key)
    }

    pub fn insert(&self, key: BlockKey, block: Bytes) {
        self.blocks.insert(key, block);
    }

    /// Bytes held now. Settles moka's pending bookkeeping first (it counts
    /// lazily), so call it now and then, not per read.
    pub fn weighted_size(&self) -> u64 {
        self.blocks.run_pending_tasks();
        self.blocks.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn appends_wait_for_room_until_released() {
        let budget = TailBudget::new(100);
        budget.add(80);
        budget.wait_for_room(20).await; // fits exactly
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.wait_for_room(30).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        budget.release(50);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(!budget.under_pressure());
    }

    #[test]
    fn block_cache_is_bounded_by_bytes() {
        let cache = BlockCache::new(4 * BLOCK_BYTES);
        for block in 0..16 {
            let key = BlockKey {
                segment_id: 1,
                chunk_start: 0,
                block,
            };
            cache.insert(key, Bytes::from(vec![0u8; BLOCK_BYTES as usize]));
        }
        cache.blocks.run_pending_tasks();
        assert!(cache.weighted_size() <= 4 * BLOCK_BYTES);
    }
}
