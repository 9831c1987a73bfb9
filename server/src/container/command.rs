//! Commands a container's raft log carries, encoded with prost. They are a
//! storage format: add fields with new tags, never reuse or renumber one.

use bytes::Bytes;

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerCommand {
    // Tag 5 is reserved: it was a single-chunk "chunk flushed" command that
    // no release ever proposed (ChunksFlushed, tag 7, replaced it). Never
    // reuse it.
    #[prost(oneof = "Cmd", tags = "1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12")]
    pub cmd: Option<Cmd>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Cmd {
    #[prost(message, tag = "1")]
    Create(SegmentRef),
    #[prost(message, tag = "2")]
    Append(Append),
    #[prost(message, tag = "3")]
    Seal(SegmentRef),
    #[prost(message, tag = "4")]
    Delete(SegmentRef),
    #[prost(message, tag = "6")]
    Truncate(Truncate),
    /// One tier-2 object holding pieces of several segments.
    #[prost(message, tag = "7")]
    ChunksFlushed(ChunksFlushed),
    /// Fold each segment's traffic since the last tick into its rates.
    #[prost(message, tag = "8")]
    RateTick(RateTick),
    /// A committed transaction's parts of one parent join it, in one piece.
    #[prost(message, tag = "9")]
    MergeTxn(TxnPartsRef),
    /// An aborted transaction's part is discarded.
    #[prost(message, tag = "10")]
    DropTxn(TxnPartRef),
    /// The metadata forgot these finished transactions: so do the parts'
    /// tombstones.
    #[prost(message, tag = "11")]
    ForgetTxns(TxnSegmentsRef),
    /// A committed transaction's part is about to be copied to the
    /// successors of its sealed parent: it takes no more appends.
    #[prost(message, tag = "12")]
    SealTxn(TxnPartRef),
}

/// Parts `txn_segment_ids` of parent `segment_id`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnPartsRef {
    #[prost(uint64, tag = "1")]
    pub segment_id: u64,
    #[prost(uint64, repeated, tag = "2")]
    pub txn_segment_ids: Vec<u64>,
}

/// Transaction segment `txn_segment_id`, a part of parent `segment_id`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnPartRef {
    #[prost(uint64, tag = "1")]
    pub segment_id: u64,
    #[prost(uint64, tag = "2")]
    pub txn_segment_id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnSegmentsRef {
    #[prost(uint64, repeated, tag = "1")]
    pub txn_segment_ids: Vec<u64>,
}

/// A rate tick, with its time and windows in the entry so every replica
/// (and every replay) computes the same rates.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateTick {
    #[prost(uint64, tag = "1")]
    pub now_ms: u64,
    /// One per rate window, shortest first.
    #[prost(uint64, repeated, tag = "2")]
    pub windows_ms: Vec<u64>,
    /// Writer ids that wrote nothing for longer than this (by the
    /// segments' tick time) are forgotten; 0 keeps them
    /// (`writer_id_expiry_ms`).
    #[prost(uint64, tag = "3")]
    pub writer_idle_ms: u64,
}

/// The storage writer put one object holding each chunk's bytes at its
/// `object_offset`; each chunk that applies becomes part of its segment.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChunksFlushed {
    #[prost(message, repeated, tag = "1")]
    pub chunks: Vec<ChunkFlushed>,
}

/// The segment now starts at `head`; chunks that end at or below it leave
/// the segment (and are deleted from tier-2). Retention's head is the end
/// of one of the segment's chunks; a client's (`at_event_boundary`) is any
/// event boundary at or below the length, which the API checked before
/// proposing (segment bytes never change, so the check stays true).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Truncate {
    #[prost(uint64, tag = "1")]
    pub segment_id: u64,
    #[prost(uint64, tag = "2")]
    pub head: u64,
    #[prost(bool, tag = "3")]
    pub at_event_boundary: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SegmentRef {
    #[prost(uint64, tag = "1")]
    pub segment_id: u64,
}

/// A batch of framed events from one writer, already validated by the API.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Append {
    #[prost(uint64, tag = "1")]
    pub segment_id: u64,
    #[prost(string, tag = "2")]
    pub writer_id: String,
    #[prost(int64, tag = "3")]
    pub first_event_number: i64,
    #[prost(uint32, tag = "4")]
    pub event_count: u32,
    #[prost(bytes = "bytes", tag = "5")]
    pub events: Bytes,
    /// A conditional append: applied only if the segment is exactly this
    /// long when the entry applies (None: any length). Checked at apply
    /// time, so it holds against every entry ordered before it.
    #[prost(uint64, optional, tag = "6")]
    pub expected_length: Option<u64>,
    /// A transactional append: `segment_id` is a transaction segment, a
    /// part of this parent (created by its first append, never after the
    /// part was merged or dropped).
    #[prost(uint64, optional, tag = "7")]
    pub txn_parent: Option<u64>,
    /// When the leader took the batch (ms since the epoch): the event
    /// index's append time (0: the segment's tick time).
    #[prost(uint64, tag = "8")]
    pub append_ms: u64,
}

/// The storage writer put `[start, end)` of a segment to tier-2 in object
/// `name` at `object_offset`; once applied the chunk is part of the segment.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChunkFlushed {
    #[prost(uint64, tag = "1")]
    pub segment_id: u64,
    #[prost(uint64, tag = "2")]
    pub start: u64,
    #[prost(uint64, tag = "3")]
    pub end: u64,
    #[prost(string, tag = "4")]
    pub name: String,
    /// Wall-clock time of the flush (ms since the epoch), for retention by
    /// time. Decided by the storage writer, so replay sees the same value.
    #[prost(uint64, tag = "5")]
    pub flushed_at_ms: u64,
    /// Where the chunk's bytes start inside the object (objects hold
    /// chunks of several segments).
    #[prost(uint64, tag = "6")]
    pub object_offset: u64,
}

impl ContainerCommand {
    pub fn encode(cmd: Cmd) -> Vec<u8> {
        prost::Message::encode_to_vec(&ContainerCommand { cmd: Some(cmd) })
    }
}

/// A container's applied state in its raft snapshot: segment metadata, the
/// writer dedup table and the tail buffers (bytes not yet in tier-2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerSnapshot {
    #[prost(message, repeated, tag = "1")]
    pub segments: Vec<SegmentSnapshot>,
    /// Open transactions' parts, as segments (`part_of` set).
    #[prost(message, repeated, tag = "2")]
    pub txn_segments: Vec<SegmentSnapshot>,
    /// Parts merged or dropped whose transactions the metadata still keeps.
    #[prost(message, repeated, tag = "3")]
    pub closed_txns: Vec<ClosedTxn>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ClosedTxn {
    #[prost(uint64, tag = "1")]
    pub txn_segment_id: u64,
    /// Merged (true) or dropped.
    #[prost(bool, tag = "2")]
    pub merged: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SegmentSnapshot {
    #[prost(uint64, tag = "1")]
    pub segment_id: u64,
    #[prost(uint64, tag = "2")]
    pub length: u64,
    #[prost(bool, tag = "3")]
    pub sealed: bool,
    #[prost(uint64, tag = "4")]
    pub tier2_length: u64,
    #[prost(message, repeated, tag = "5")]
    pub chunks: Vec<ChunkFlushed>,
    #[prost(message, repeated, tag = "6")]
    pub writers: Vec<WriterPosition>,
    #[prost(message, repeated, tag = "7")]
    pub tail: Vec<TailBlock>,
    #[prost(uint64, tag = "8")]
    pub head: u64,
    #[prost(uint64, tag = "9")]
    pub events_total: u64,
    #[prost(uint64, tag = "10")]
    pub bytes_total: u64,
    #[prost(uint64, tag = "11")]
    pub ticked_events: u64,
    #[prost(uint64, tag = "12")]
    pub ticked_bytes: u64,
    #[prost(uint64, tag = "13")]
    pub ticked_ms: u64,
    #[prost(double, repeated, tag = "14")]
    pub events_per_second: Vec<f64>,
    #[prost(double, repeated, tag = "15")]
    pub bytes_per_second: Vec<f64>,
    /// A transaction part: its parent segment (0: a stream segment).
    #[prost(uint64, tag = "16")]
    pub part_of: u64,
    /// The event index's marks, in offset order (`EventIndex`).
    #[prost(message, repeated, tag = "17")]
    pub index_marks: Vec<IndexMarkSnapshot>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct IndexMarkSnapshot {
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    #[prost(uint64, tag = "2")]
    pub index: u64,
    #[prost(uint64, tag = "3")]
    pub first_ms: u64,
    #[prost(uint64, tag = "4")]
    pub last_ms: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WriterPosition {
    #[prost(string, tag = "1")]
    pub writer_id: String,
    #[prost(int64, tag = "2")]
    pub last_event_number: i64,
    /// The segment's tick time at its last append (`WriterMark`).
    #[prost(uint64, tag = "3")]
    pub seen_ms: u64,
    /// Its recent batches, newest first (`WriterMark::recent`).
    #[prost(message, repeated, tag = "4")]
    pub recent: Vec<RecentBatch>,
}

/// Where one of a writer's recent batches was applied.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RecentBatch {
    #[prost(int64, tag = "1")]
    pub first_event_number: i64,
    #[prost(uint64, tag = "2")]
    pub first_index: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TailBlock {
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    #[prost(bytes = "bytes", tag = "2")]
    pub events: Bytes,
    /// Set: the block is this chunk, already in tier-2 (a merged
    /// transaction part's), and `events` is empty.
    #[prost(message, optional, tag = "3")]
    pub chunk: Option<ChunkFlushed>,
}
