//! Batch scans for compute engines: stream cuts, the segment ranges between
//! two cuts, and bounded reads of a range, to be run in parallel.
//!
//! Owns the cut and range arithmetic; the reads themselves are ordinary
//! segment reads with an end offset, so retries and framing checks are the
//! reader's.

use std::collections::HashMap;
use std::sync::Arc;

use crate::conn::Conn;
use crate::direct::Tier2Stores;
use crate::reader::SegmentReader;
use crate::{Admin, Error, Position, SegmentInfo, StreamName};

/// One position per segment of a stream: a consistent point in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamCut {
    /// At most one position per segment.
    pub positions: Vec<Position>,
}

impl StreamCut {
    /// A cut at `positions` (at most one per segment).
    pub fn new(positions: Vec<Position>) -> StreamCut {
        StreamCut { positions }
    }

    fn offset_of(&self, segment_id: u64) -> Option<u64> {
        self.positions
            .iter()
            .find(|p| p.segment_id == segment_id)
            .map(|p| p.offset)
    }
}

/// The bytes `[start, end)` of one segment, with where they are stored:
/// `[start, tier2_end)` is in tier-2 chunks, the rest in the server's tail
/// buffer (as of when the range was listed).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SegmentRange {
    /// The segment.
    pub segment_id: u64,
    /// The slice of the key space the segment owns: `[key_low, key_high)`.
    pub key_low: f64,
    /// See `key_low`.
    pub key_high: f64,
    /// First byte of the range (an event boundary).
    pub start: u64,
    /// One past its last byte (an event boundary).
    pub end: u64,
    /// Where tier-2 ends inside the range (`start..=end`).
    pub tier2_end: u64,
}

/// How a range is read by [`BatchClient::read_range`].
///
/// ```
/// use aquifer_client::ScanConfig;
///
/// assert!(!ScanConfig::default().direct);
/// assert!(ScanConfig::default().direct(true).direct);
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ScanConfig {
    /// Read the part already in tier-2 straight from the object store (the
    /// broker only says where it is and serves the unflushed rest). For S3
    /// the credentials come from the standard AWS environment variables; a
    /// local filesystem tier-2 must be reachable at the broker's path.
    /// Default: false (everything through the broker).
    pub direct: bool,
}

impl ScanConfig {
    /// Sets [`direct`](Self::direct).
    pub fn direct(mut self, direct: bool) -> Self {
        self.direct = direct;
        self
    }
}

/// Batch access to streams; get one from [`crate::Client::batch`].
///
/// A scan takes two cuts, lists the segment ranges between them and reads
/// each range as its own stream of events, as many at a time as wanted:
///
/// ```no_run
/// use aquifer_client::{Client, ScanConfig};
/// use futures::TryStreamExt;
///
/// # async fn example() -> Result<(), aquifer_client::Error> {
/// let batch = Client::connect("127.0.0.1:7450").await?.batch();
/// let name = "shop/orders".parse()?;
/// let (from, to) = (batch.head_cut(&name).await?, batch.tail_cut(&name).await?);
/// let reads = batch
///     .segment_ranges(&name, &from, &to)
///     .await?
///     .into_iter()
///     .map(|range| batch.read_range(&range, &ScanConfig::default()).try_collect::<Vec<_>>());
/// let events: usize = futures::future::try_join_all(reads).await?.iter().map(Vec::len).sum();
/// println!("{events} events");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct BatchClient {
    conn: Arc<Conn>,
    admin: Admin,
    /// Tier-2 stores opened by direct reads, shared by clones.
    stores: Arc<Tier2Stores>,
}

impl BatchClient {
    pub(crate) fn new(conn: Arc<Conn>, admin: Admin) -> Self {
        BatchClient {
            conn,
            admin,
            stores: Arc::default(),
        }
    }

    /// The first readable position of every segment.
    pub async fn head_cut(&self, stream: &StreamName) -> Result<StreamCut, Error> {
        self.cut(stream, |s| s.head_offset).await
    }

    /// The end of every segment now: everything committed so far.
    pub async fn tail_cut(&self, stream: &StreamName) -> Result<StreamCut, Error> {
        self.cut(stream, |s| s.length).await
    }

    async fn cut(
        &self,
        stream: &StreamName,
        offset: impl Fn(&SegmentInfo) -> u64,
    ) -> Result<StreamCut, Error> {
        let info = self.admin.describe_stream(stream).await?;
        Ok(StreamCut::new(
            info.segments
                .iter()
                .map(|s| Position::new(s.segment_id, offset(s)))
                .collect(),
        ))
    }

    /// The non-empty ranges between two cuts, one per segment. A segment
    /// missing from `from` starts at its head; missing from `to`, it ends at
    /// its current length.
    pub async fn segment_ranges(
        &self,
        stream: &StreamName,
        from: &StreamCut,
        to: &StreamCut,
    ) -> Result<Vec<SegmentRange>, Error> {
        let info = self.admin.describe_stream(stream).await?;
        let known: HashMap<u64, ()> = info.segments.iter().map(|s| (s.segment_id, ())).collect();
        if let Some(p) = from
            .positions
            .iter()
            .chain(&to.positions)
            .find(|p| !known.contains_key(&p.segment_id))
        {
            return Err(Error::InvalidArgument(format!(
                "segment {} in the cut is not a segment of {stream}",
                p.segment_id
            )));
        }
        let mut ranges = Vec::new();
        for s in &info.segments {
            let start = from
                .offset_of(s.segment_id)
                .unwrap_or(s.head_offset)
                .max(s.head_offset);
            let end = to.offset_of(s.segment_id).unwrap_or(s.length).min(s.length);
            if start < end {
                ranges.push(SegmentRange {
                    segment_id: s.segment_id,
                    key_low: s.key_low,
                    key_high: s.key_high,
                    start,
                    end,
                    tier2_end: s.tier2_length.clamp(start, end),
                });
            }
        }
        Ok(ranges)
    }

    /// Reads one range: a stream of its events in order, ending at the
    /// range's end. With [`ScanConfig::direct`], the part already in tier-2
    /// comes straight from the object store.
    pub fn read_range(&self, range: &SegmentRange, config: &ScanConfig) -> SegmentReader {
        SegmentReader::bounded(
            &self.conn,
            range.segment_id,
            range.start,
            range.end,
            config.direct.then(|| self.stores.clone()),
        )
    }
}
