//! The newest raft entries of one group's log, kept in memory so raft
//! (appends to followers, apply) rarely reads the disk.
//!
//! Holds a contiguous run of entries ending at the log's last index, bounded
//! by [`ENTRY_CACHE_BYTES_MAX`] of entry data (always at least one entry).
//! It is a copy: it never decides what is durable or committed.

use std::collections::VecDeque;

use raft::prelude::Entry;

/// Entry data kept in memory per group.
pub const ENTRY_CACHE_BYTES_MAX: usize = 8 * 1024 * 1024;

#[derive(Default)]
pub(super) struct EntryCache {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl EntryCache {
    /// Adds the entry after the newest one, then drops the oldest past the
    /// budget.
    pub(super) fn push(&mut self, e: Entry) {
        self.bytes += e.data.len();
        self.entries.push_back(e);
        while self.bytes > ENTRY_CACHE_BYTES_MAX && self.entries.len() > 1 {
            self.pop_front();
        }
    }

    /// Drops entries from `index` on (raft overwrote them).
    pub(super) fn truncate_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|e| e.index >= index) {
            if let Some(e) = self.entries.pop_back() {
                self.bytes -= e.data.len();
            }
        }
    }

    /// Drops entries up to and including `index` (compacted away).
    pub(super) fn drop_through(&mut self, index: u64) {
        while self.entries.front().is_some_and(|e| e.index <= index) {
            self.pop_front();
        }
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Entry `index`, if it is cached.
    pub(super) fn get(&self, index: u64) -> Option<&Entry> {
        let front = self.entries.front()?.index;
        let pos = usize::try_from(index.checked_sub(front)?).ok()?;
        self.entries.get(pos)
    }

    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.data.len();
        }
    }
}
