//! Reads of one segment: from the tail buffer, or from tier-2 through the
//! block cache, in offset order; with follow, waits on the segment's change
//! notification (never polls) and ends after the last event of a sealed
//! segment.
//!
//! Memory is bounded per reader: each response holds about
//! [`READ_RESPONSE_BYTES`] and the channel to the client holds a few.
//!
//! Also answers whether an offset is an event boundary (for a client's
//! truncation), and what a segment's last event is (the audit writer
//! resuming), by walking frames the same way. It never changes a segment.

pub mod filter;

use std::sync::Arc;

use aquifer_proto::frame::{whole_events_prefix, FrameIter};
use aquifer_proto::v1::ReadSegmentResponse;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::container::{ReadSource, Segment};
use crate::error::Error;
use crate::tier::Tier2;

/// How long a read past a replica's end waits for the replica to catch up
/// before sending the reader to another node.
const REPLICA_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(5);

/// Bytes of events per response (a single larger event goes alone).
pub const READ_RESPONSE_BYTES: usize = 1024 * 1024;

/// What to read.
#[derive(Debug, Clone, Copy)]
pub struct ReadRange {
    pub offset: u64,
    /// Stop here (an event boundary); None: no end.
    pub end: Option<u64>,
    pub follow: bool,
    /// Other replicas serve this segment too (cluster): an offset past this
    /// replica's end may be one it has not applied yet, so the read waits
    /// rather than refusing it.
    pub replicated: bool,
}

type Out = mpsc::Sender<Result<ReadSegmentResponse, tonic::Status>>;

/// Streams `range` of `segment` into `out` until done, the client leaves, or
/// an error (which is sent as the last item). `gone` says why the segment
/// vanished under the read: deleted, or this node's replica of its container
/// destroyed (moved to other nodes) or replaced by a snapshot.
pub async fn stream_segment(
    segment: Arc<Segment>,
    tier2: Arc<Tier2>,
    range: ReadRange,
    out: Out,
    closed: impl std::future::Future<Output = ()>,
    gone: impl FnOnce() -> Error,
) {
    let result = tokio::select! {
        r = stream_inner(&segment, &tier2, range, &out) => r,
        _ = closed => Err(Error::Unavailable("the server is shutting down; resume reading elsewhere or later".into())),
    };
    let result = match result {
        Err(Error::SegmentNotFound(_)) => Err(gone()),
        other => other,
    };
    if let Err(e) = result {
        tracing::debug!(segment = segment.id, error = %e, "read ended with an error");
        let _ = out.send(Err(e.into())).await;
    }
}

async fn stream_inner(
    segment: &Segment,
    tier2: &Tier2,
    range: ReadRange,
    out: &Out,
) -> Result<(), Error> {
    let mut changed = segment.subscribe();
    let end = match range.end {
        Some(e) => Some(e),
        None if range.follow => None,
        None => Some(segment.view().length),
    };
    let mut offset = range.offset;
    loop {
        if end.is_some_and(|e| offset >= e) {
            return Ok(());
        }
        changed.borrow_and_update();
        let limit = end.map_or(READ_RESPONSE_BYTES, |e| {
            READ_RESPONSE_BYTES.min((e - offset) as usize)
        });
        let events: Bytes = match segment.locate(offset, limit) {
            ReadSource::Tail(b) => {
                tier2.metrics().read_from("tail", b.len() as u64);
                b
            }
            ReadSource::Tier2(chunk) => tier2.read(segment.id, &chunk, offset, limit).await?,
            ReadSource::End { sealed: true } => {
                let last = ReadSegmentResponse {
                    offset,
                    events: Bytes::new(),
                    end_of_segment: true,
                };
                let _ = out.send(Ok(last)).await;
                return Ok(());
            }
            ReadSource::End { sealed: false } if end.is_some() => {
                // The end offset came from another replica's length: this
                // one has not applied that far yet.
                behind(segment, &mut changed, offset).await?;
                continue;
            }
            ReadSource::End { sealed: false } => {
                tokio::select! {
                    r = changed.changed() => if r.is_err() { return Ok(()) },
                    _ = out.closed() => return Ok(()),
                }
                continue;
            }
            ReadSource::Deleted => return Err(Error::SegmentNotFound(segment.id)),
            ReadSource::Truncated { head } => {
                return Err(Error::Truncated {
                    segment: segment.id,
                    offset,
                    head,
                })
            }
            ReadSource::PastEnd { .. } if range.replicated => {
                // A replica may not have applied what another one served yet
                // (a reader resuming here after a failover).
                behind(segment, &mut changed, offset).await?;
                continue;
            }
            ReadSource::PastEnd { length } => {
                return Err(Error::OffsetOutOfRange {
                    segment: segment.id,
                    offset,
                    length,
                })
            }
        };
        // Cut at the end offset, on an event boundary.
        let events = match end {
            Some(e) if offset + events.len() as u64 > e => {
                let cut = whole_events_prefix(&events[..(e - offset) as usize], usize::MAX);
                events.slice(..cut)
            }
            _ => events,
        };
        if events.is_empty() {
            return Err(Error::Corrupt(format!(
                "no whole event at offset {offset} of segment {} (not an event boundary?)",
                segment.id
            )));
        }
        let n = events.len() as u64;
        if out
            .send(Ok(ReadSegmentResponse {
                offset,
                events,
                end_of_segment: false,
            }))
            .await
            .is_err()
        {
            return Ok(()); // the client left
        }
        offset += n;
    }
}

/// Whether `offset` (at or below the length) is an event boundary of
/// `segment`: walks the frame lengths from the nearest boundary the segment
/// knows below it (its head, the start of the chunk or tail block holding
/// `offset`), so it reads at most one chunk or one batch, in pieces of
/// [`READ_RESPONSE_BYTES`]. The bytes walked were checked when appended.
/// An offset the head has passed meanwhile counts as one: truncating there
/// changes nothing.
pub async fn is_event_boundary(
    segment: &Segment,
    tier2: &Tier2,
    offset: u64,
) -> Result<bool, Error> {
    let mut pos = segment.known_boundary_below(offset);
    while pos < offset {
        // Whole events, the last one possibly past `offset` (cut below): a
        // limit of the distance left could be too short for one header.
        let events = match segment.locate(pos, READ_RESPONSE_BYTES) {
            ReadSource::Tail(b) => b,
            ReadSource::Tier2(chunk) => {
                tier2
                    .read(segment.id, &chunk, pos, READ_RESPONSE_BYTES)
                    .await?
            }
            // The head moved past `pos` meanwhile: it is a boundary too.
            ReadSource::Truncated { head } if head <= offset => {
                pos = head;
                continue;
            }
            ReadSource::Truncated { .. } => return Ok(true), // below the head now
            ReadSource::Deleted => return Err(Error::SegmentNotFound(segment.id)),
            ReadSource::End { .. } | ReadSource::PastEnd { .. } => return Ok(false),
        };
        let upto = events.len().min((offset - pos) as usize);
        let whole = whole_events_prefix(&events[..upto], usize::MAX);
        if whole == 0 {
            return Ok(false); // the event at `pos` runs past `offset`
        }
        pos += whole as u64;
    }
    Ok(pos == offset)
}

/// The payload of `segment`'s last event (None: it holds none above its
/// head): walks frames from the nearest boundary the segment knows below
/// its end (the start of the last chunk or tail block), so it reads at most
/// one chunk or batch.
pub async fn last_event(segment: &Segment, tier2: &Tier2) -> Result<Option<Bytes>, Error> {
    let length = segment.view().length;
    let Some(before_end) = length.checked_sub(1) else {
        return Ok(None);
    };
    let mut pos = segment.known_boundary_below(before_end);
    let mut last = None;
    while pos < length {
        let events = match segment.locate(pos, READ_RESPONSE_BYTES) {
            ReadSource::Tail(b) => b,
            ReadSource::Tier2(chunk) => {
                tier2
                    .read(segment.id, &chunk, pos, READ_RESPONSE_BYTES)
                    .await?
            }
            ReadSource::Truncated { head } => {
                pos = head;
                continue;
            }
            ReadSource::Deleted => return Err(Error::SegmentNotFound(segment.id)),
            ReadSource::End { .. } | ReadSource::PastEnd { .. } => break,
        };
        let whole = whole_events_prefix(&events, usize::MAX);
        if whole == 0 {
            return Err(Error::Corrupt(format!(
                "segment {}: no whole event at offset {pos}",
                segment.id
            )));
        }
        let mut at = 0;
        for event in FrameIter::new(events.slice(..whole), pos, usize::MAX) {
            match event {
                Ok(event) => {
                    at += event.framed_len;
                    last = Some(event.payload);
                }
                // Damaged (its checksum fails): its raw bytes stand for it,
                // so a writer resuming after it neither stops nor forks.
                Err(_) => {
                    last = Some(events.slice(at..whole));
                    break;
                }
            }
        }
        pos += whole as u64;
    }
    Ok(last)
}

/// This replica has not applied up to `offset` yet: waits a little for it,
/// then sends the reader to another node (Unavailable is retried there).
async fn behind(
    segment: &Segment,
    changed: &mut tokio::sync::watch::Receiver<u64>,
    offset: u64,
) -> Result<(), Error> {
    match tokio::time::timeout(REPLICA_CATCH_UP, changed.changed()).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Error::Unavailable(format!(
            "this replica has {} bytes of segment {}, not yet offset {offset}; retry (another node is ahead)",
            segment.view().length,
            segment.id
        ))),
    }
}
