//! Batch scans for compute engines: stream cuts, the segment ranges between
//! two cuts, and bounded reads of a range, to be run in parallel.
//!
//! Owns the cut and range arithmetic, across epochs too: a head cut holds
//! the stream's first segments, a tail cut its active ones, and the ranges
//! between two cuts cover every segment of every epoch in between once
//! (segments before the first cut or after the second are left out). The
//! reads themselves are ordinary segment reads with an end offset, so
//! retries and framing checks are the reader's.

use std::collections::HashMap;
use std::sync::Arc;

use crate::conn::Conn;
use crate::direct::Tier2Stores;
use crate::graph::Graph;
use crate::reader::SegmentReader;
use crate::{Admin, Error, Position, SegmentInfo, StreamName};

/// One position per segment of a stream: a consistent point in it. After
/// scales a cut may hold segments of different epochs; a segment a cut does
/// not name is before it if it is a predecessor (at any distance) of one it
/// names, after it if it is a successor of one.
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

    /// Parses the text form [`Display`](std::fmt::Display) writes:
    /// `SEGMENT:OFFSET` pairs joined by commas, e.g. `7:0,8:1024`.
    pub fn parse(text: &str) -> Result<StreamCut, Error> {
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "stream cut {text:?} {why}: expected SEGMENT:OFFSET pairs joined by commas, e.g. 7:0,8:1024"
            ))
        };
        let mut positions: Vec<Position> = Vec::new();
        for pair in text.trim().split(',') {
            let (seg, off) = pair
                .split_once(':')
                .ok_or_else(|| bad("has a pair without ':'"))?;
            let seg: u64 = seg
                .trim()
                .parse()
                .map_err(|_| bad("has a bad segment id"))?;
            let off: u64 = off.trim().parse().map_err(|_| bad("has a bad offset"))?;
            if positions.iter().any(|p| p.segment_id == seg) {
                return Err(bad("names a segment twice"));
            }
            positions.push(Position::new(seg, off));
        }
        Ok(StreamCut { positions })
    }

    fn offset_of(&self, segment_id: u64) -> Option<u64> {
        self.positions
            .iter()
            .find(|p| p.segment_id == segment_id)
            .map(|p| p.offset)
    }
}

/// The stable text form of a cut, a token users can hold and pass back
/// (`StreamCut::parse` reads it): `SEGMENT:OFFSET` pairs joined by commas.
///
/// ```
/// use aquifer_client::{Position, StreamCut};
///
/// let cut = StreamCut::new(vec![Position::new(7, 0), Position::new(8, 1024)]);
/// assert_eq!(cut.to_string(), "7:0,8:1024");
/// assert_eq!(StreamCut::parse("7:0,8:1024").unwrap(), cut);
/// assert!(StreamCut::parse("7-0").is_err());
/// ```
impl std::fmt::Display for StreamCut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.positions.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{}", p.segment_id, p.offset)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for StreamCut {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StreamCut::parse(s)
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

    /// The stream's beginning: the first readable position of each of its
    /// first segments (those with no predecessor still listed).
    pub async fn head_cut(&self, stream: &StreamName) -> Result<StreamCut, Error> {
        let info = self.admin.describe_stream(stream).await?;
        let listed = |id: &u64| info.segments.iter().any(|s| s.segment_id == *id);
        Ok(StreamCut::new(
            info.segments
                .iter()
                .filter(|s| !s.predecessors.iter().any(listed))
                .map(|s| Position::new(s.segment_id, s.head_offset))
                .collect(),
        ))
    }

    /// The stream now: the end of each active segment, everything
    /// committed so far.
    pub async fn tail_cut(&self, stream: &StreamName) -> Result<StreamCut, Error> {
        let info = self.admin.describe_stream(stream).await?;
        Ok(StreamCut::new(
            info.active_segments()
                .map(|s| Position::new(s.segment_id, s.length))
                .collect(),
        ))
    }

    /// The non-empty ranges between two cuts, one per segment, over every
    /// epoch in between. A segment before `from` (a predecessor of one it
    /// names) or after `to` (a successor of one it names) is left out; any
    /// other segment missing from `from` starts at its head, missing from
    /// `to` it ends at its current length.
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
        Ok(ranges_between(&info.segments, from, to))
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

/// The ranges between `from` and `to` over `segments` (one describe).
fn ranges_between(segments: &[SegmentInfo], from: &StreamCut, to: &StreamCut) -> Vec<SegmentRange> {
    let graph = Graph::new(segments);
    let before: std::collections::BTreeSet<u64> = from
        .positions
        .iter()
        .flat_map(|p| graph.ancestors(p.segment_id))
        .collect();
    let after: std::collections::BTreeSet<u64> = to
        .positions
        .iter()
        .flat_map(|p| graph.descendants(p.segment_id))
        .collect();
    let mut ranges = Vec::new();
    for s in segments {
        let (in_from, in_to) = (from.offset_of(s.segment_id), to.offset_of(s.segment_id));
        if (in_from.is_none() && before.contains(&s.segment_id))
            || (in_to.is_none() && after.contains(&s.segment_id))
        {
            continue;
        }
        let start = in_from.unwrap_or(s.head_offset).max(s.head_offset);
        let end = in_to.unwrap_or(s.length).min(s.length);
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
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(id: u64, preds: &[u64], succs: &[u64], length: u64) -> SegmentInfo {
        SegmentInfo {
            segment_id: id,
            predecessors: preds.to_vec(),
            successors: succs.to_vec(),
            sealed: !succs.is_empty(),
            length,
            ..Default::default()
        }
    }

    fn spans(ranges: &[SegmentRange]) -> Vec<(u64, u64, u64)> {
        ranges
            .iter()
            .map(|r| (r.segment_id, r.start, r.end))
            .collect()
    }

    #[test]
    fn ranges_between_cuts_of_different_epochs_cover_each_segment_once() {
        // 1 split into 2 and 3; 3 and 4 merged into 5.
        let segments = [
            seg(1, &[], &[2, 3], 100),
            seg(4, &[], &[5], 40),
            seg(2, &[1], &[], 30),
            seg(3, &[1], &[5], 20),
            seg(5, &[3, 4], &[], 10),
        ];
        let cut = |ps: &[(u64, u64)]| {
            StreamCut::new(ps.iter().map(|&(s, o)| Position::new(s, o)).collect())
        };
        // Head (first segments) to tail (active ones): everything once.
        let head = cut(&[(1, 0), (4, 0)]);
        let tail = cut(&[(2, 30), (5, 10)]);
        assert_eq!(
            spans(&ranges_between(&segments, &head, &tail)),
            vec![(1, 0, 100), (4, 0, 40), (2, 0, 30), (3, 0, 20), (5, 0, 10)]
        );
        // From a cut inside epoch 1 to one inside epoch 0's successors: 1
        // is before it, 5 after the second.
        let from = cut(&[(2, 10), (3, 5), (4, 30)]);
        let to = cut(&[(2, 25), (3, 20), (4, 40)]);
        assert_eq!(
            spans(&ranges_between(&segments, &from, &to)),
            vec![(4, 30, 40), (2, 10, 25), (3, 5, 20)]
        );
        // Old-style cuts naming every segment still work.
        let all = cut(&[(1, 50), (4, 0), (2, 0), (3, 0), (5, 0)]);
        let ranges = ranges_between(&segments, &all, &StreamCut::default());
        assert_eq!(spans(&ranges)[0], (1, 50, 100));
        assert_eq!(ranges.len(), 5);
    }
}
