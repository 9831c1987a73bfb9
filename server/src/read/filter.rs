//! Row-level reads: a reader whose grant is limited to routing-key
//! prefixes gets only the events whose key matches.
//!
//! Owns cutting a read response into the runs of events the reader may
//! see, each sent with its true offset, so positions, resumption and
//! end-of-segment work as for any reader (a skipped stretch is just a jump
//! in offsets). It never sends a byte of an event it filtered out.

use aquifer_proto::frame::FrameIter;
use aquifer_proto::v1::ReadSegmentResponse;
use tokio::sync::mpsc;
use tonic::Status;

use crate::auth::acl::Access;

type Responses = mpsc::Sender<Result<ReadSegmentResponse, Status>>;

/// The runs of `msg`'s events `access` allows, one response each, in
/// order; the end-of-segment mark rides on the last one (an empty response
/// when nothing is left but the mark).
pub fn visible_runs(
    msg: ReadSegmentResponse,
    access: &Access,
    event_bytes_max: usize,
) -> Result<Vec<ReadSegmentResponse>, Status> {
    let ReadSegmentResponse {
        offset,
        events,
        end_of_segment,
    } = msg;
    let mut runs: Vec<ReadSegmentResponse> = Vec::new();
    // The run being gathered: [start, end) within `events`.
    let mut run: Option<(usize, usize)> = None;
    let flush = |run: &mut Option<(usize, usize)>, runs: &mut Vec<ReadSegmentResponse>| {
        if let Some((from, to)) = run.take() {
            runs.push(ReadSegmentResponse {
                offset: offset + from as u64,
                events: events.slice(from..to),
                end_of_segment: false,
            });
        }
    };
    for framed in FrameIter::new(events.clone(), offset, event_bytes_max) {
        let framed = framed.map_err(|e| Status::data_loss(format!("corrupt segment data: {e}")))?;
        let at = (framed.offset - offset) as usize;
        let end = at + framed.framed_len;
        if access.allows_key(framed.routing_key.as_deref().unwrap_or("")) {
            run = Some(match run {
                Some((from, _)) => (from, end),
                None => (at, end),
            });
        } else {
            flush(&mut run, &mut runs);
        }
    }
    flush(&mut run, &mut runs);
    if end_of_segment {
        match runs.last_mut() {
            Some(last) => last.end_of_segment = true,
            None => runs.push(ReadSegmentResponse {
                offset: offset + events.len() as u64,
                events: bytes::Bytes::new(),
                end_of_segment: true,
            }),
        }
    }
    Ok(runs)
}

/// Passes what a read sends on `from` to `to`, filtered to `access`
/// (spawned between the read and its client for key-restricted readers).
pub async fn forward_visible(
    mut from: mpsc::Receiver<Result<ReadSegmentResponse, Status>>,
    to: Responses,
    access: Access,
    event_bytes_max: usize,
) {
    while let Some(item) = from.recv().await {
        let runs = match item.and_then(|msg| visible_runs(msg, &access, event_bytes_max)) {
            Ok(runs) => runs,
            Err(status) => {
                let _ = to.send(Err(status)).await;
                return;
            }
        };
        for run in runs {
            if to.send(Ok(run)).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aquifer_proto::frame::encode_event;
    use bytes::BytesMut;

    #[test]
    fn only_allowed_keys_pass_each_run_at_its_true_offset() {
        let mut b = BytesMut::new();
        let mut offsets = Vec::new();
        for (k, p) in [
            ("user1", "a"),
            ("user1x", "b"),
            ("user2", "c"),
            ("user1", "d"),
            ("", "e"),
        ] {
            offsets.push(b.len() as u64 + 100);
            encode_event(&mut b, (!k.is_empty()).then_some(k), p.as_bytes());
        }
        let total = b.len() as u64;
        let msg = ReadSegmentResponse {
            offset: 100,
            events: b.freeze(),
            end_of_segment: true,
        };
        let access = Access::Keys(vec!["user1".into()]);
        let runs = visible_runs(msg.clone(), &access, 1 << 20).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].offset, offsets[0]);
        assert_eq!(runs[1].offset, offsets[3]);
        let seen: Vec<(u64, String)> = runs
            .iter()
            .flat_map(|r| FrameIter::new(r.events.clone(), r.offset, 1 << 20))
            .map(|f| {
                let f = f.unwrap();
                (f.offset, String::from_utf8(f.payload.to_vec()).unwrap())
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (offsets[0], "a".into()),
                (offsets[1], "b".into()),
                (offsets[3], "d".into())
            ]
        );
        assert!(!runs[0].end_of_segment && runs[1].end_of_segment);
        // Nothing visible: only the end mark, at the end.
        let none = visible_runs(msg.clone(), &Access::Keys(vec!["zz".into()]), 1 << 20).unwrap();
        assert_eq!(none.len(), 1);
        assert!(none[0].events.is_empty() && none[0].end_of_segment);
        assert_eq!(none[0].offset, 100 + total);
        // Everything visible: one run, as it came.
        let all = visible_runs(msg.clone(), &Access::All, 1 << 20).unwrap();
        assert_eq!(all, vec![msg]);
    }
}
