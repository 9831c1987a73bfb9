//! Scaling plans and decisions: which active segments a scale seals and the
//! key ranges of the successors that replace them, checked before anything
//! is recorded; and when a rate policy calls for a scale.
//!
//! Pure functions of the stream's active segments and the request, run where
//! the scale executes (the `meta` state machine applies `StartScale`), so a
//! plan is valid against the state it changes, never against a stale copy.
//! It owns the rules (active segments only, key-adjacent merges, pieces,
//! the narrowest range a split may make, the fewest segments a stream may
//! have); it never allocates ids or touches containers.

use crate::container::rates::RATE_WINDOWS;
use crate::container::SegmentView;

/// Active segments one stream may have.
pub const STREAM_SEGMENTS_MAX: u32 = 1024;

/// Most pieces one split may make.
pub const SPLIT_PIECES_MAX: u32 = 16;
/// The narrowest key range a split may make: a range this narrow holds a
/// hot key (or a few), and splitting it further cannot spread its load.
pub const KEY_RANGE_MIN: f64 = 1.0 / 65536.0;

/// What a rate policy measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalingKind {
    /// Keep the segments the stream has (scaled only by hand).
    Fixed,
    EventsPerSecond,
    KibPerSecond,
}

/// How a stream follows its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalingPolicy {
    pub kind: ScalingKind,
    /// Events/s or KiB/s per segment (rate kinds).
    pub target: u64,
    /// Most pieces one split makes, 2..=16.
    pub scale_factor: u32,
    /// Fewest active segments, at least 1.
    pub min_segments: u32,
}

impl Default for ScalingPolicy {
    fn default() -> Self {
        ScalingPolicy {
            kind: ScalingKind::Fixed,
            target: 0,
            scale_factor: 2,
            min_segments: 1,
        }
    }
}

/// A segment as the rules see it: its id and key range `[low, high)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub id: u64,
    pub key_low: f64,
    pub key_high: f64,
}

/// One segment split into `pieces` equal key ranges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Split {
    pub segment_id: u64,
    pub pieces: u32,
}

/// What a scale seals and creates, in key order.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePlan {
    /// The active segments it seals.
    pub predecessors: Vec<u64>,
    /// The successors' key ranges `[low, high)`; together they cover the
    /// predecessors' ranges exactly.
    pub ranges: Vec<(f64, f64)>,
}

/// Plans splitting and merging `active` segments (the stream's current
/// epoch). `min_segments`: the fewest active segments the stream may be left
/// with (at most [`STREAM_SEGMENTS_MAX`]).
pub fn plan(
    active: &[Span],
    splits: &[Split],
    merges: &[Vec<u64>],
    min_segments: usize,
) -> Result<ScalePlan, String> {
    if splits.is_empty() && merges.is_empty() {
        return Err("nothing to scale: give at least one split or merge".into());
    }
    let find = |id: u64| {
        active
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| format!("segment {id} is not an active segment of the stream"))
    };
    let mut predecessors = Vec::new();
    let mut ranges = Vec::new();
    let take = |id: u64, predecessors: &mut Vec<u64>| {
        if predecessors.contains(&id) {
            return Err(format!("segment {id} is named twice"));
        }
        predecessors.push(id);
        Ok(())
    };
    for split in splits {
        let s = find(split.segment_id)?;
        take(s.id, &mut predecessors)?;
        let n = split.pieces;
        if !(2..=SPLIT_PIECES_MAX).contains(&n) {
            return Err(format!(
                "a split makes 2 to {SPLIT_PIECES_MAX} pieces, not {n}"
            ));
        }
        let width = (s.key_high - s.key_low) / f64::from(n);
        if width < KEY_RANGE_MIN {
            return Err(format!(
                "segment {} owns [{}, {}): {n} pieces would be narrower than 1/65536 of the key space (a hot key; it is not split further)",
                s.id, s.key_low, s.key_high
            ));
        }
        for i in 0..n {
            let low = s.key_low + width * f64::from(i);
            // The last piece ends where the segment did, exactly, so the
            // successors cover it without a gap from rounding.
            let high = if i + 1 == n {
                s.key_high
            } else {
                s.key_low + width * f64::from(i + 1)
            };
            ranges.push((low, high));
        }
    }
    for merge in merges {
        if merge.len() < 2 {
            return Err("a merge joins at least two segments".into());
        }
        let mut joined = Vec::with_capacity(merge.len());
        for &id in merge {
            let s = find(id)?;
            take(s.id, &mut predecessors)?;
            joined.push(s);
        }
        joined.sort_by(|a, b| a.key_low.total_cmp(&b.key_low));
        for pair in joined.windows(2) {
            if pair[0].key_high != pair[1].key_low {
                return Err(format!(
                    "segments {} [{}, {}) and {} [{}, {}) are not key-adjacent; only neighbours merge",
                    pair[0].id,
                    pair[0].key_low,
                    pair[0].key_high,
                    pair[1].id,
                    pair[1].key_low,
                    pair[1].key_high
                ));
            }
        }
        if let (Some(first), Some(last)) = (joined.first(), joined.last()) {
            ranges.push((first.key_low, last.key_high));
        }
    }
    let after = active.len() - predecessors.len() + ranges.len();
    if after < min_segments {
        return Err(format!(
            "the stream would have {after} active segments, fewer than its minimum of {min_segments}"
        ));
    }
    if after > STREAM_SEGMENTS_MAX as usize {
        return Err(format!(
            "the stream would have {after} active segments, more than the {STREAM_SEGMENTS_MAX} a stream may have"
        ));
    }
    ranges.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(ScalePlan {
        predecessors,
        ranges,
    })
}

/// What the auto-scaler knows of one active segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    pub segment_id: u64,
    pub key_low: f64,
    pub key_high: f64,
    /// In the policy's unit (events/s or KiB/s), one per window, shortest
    /// first.
    pub rates: [f64; RATE_WINDOWS],
    /// Since its epoch began.
    pub age_ms: u64,
}

impl Load {
    pub fn of(segment: &Span, policy: &ScalingPolicy, view: &SegmentView, age_ms: u64) -> Load {
        Load {
            segment_id: segment.id,
            key_low: segment.key_low,
            key_high: segment.key_high,
            rates: rates_in_unit(policy, view),
            age_ms,
        }
    }
}

/// A segment's rates in the policy's unit.
fn rates_in_unit(policy: &ScalingPolicy, view: &SegmentView) -> [f64; RATE_WINDOWS] {
    match policy.kind {
        ScalingKind::KibPerSecond => view.bytes_per_second.map(|b| b / 1024.0),
        ScalingKind::EventsPerSecond | ScalingKind::Fixed => view.events_per_second,
    }
}

/// Too hot for its target: the short window far above it, or the longer
/// ones above it (windows shortest first).
fn too_hot(r: &[f64; RATE_WINDOWS], target: f64) -> bool {
    r[0] > 5.0 * target || r[1] > 2.0 * target || r[2] > target
}

/// Cold: every window below the target, the longest below half of it.
fn cold(r: &[f64; RATE_WINDOWS], target: f64) -> bool {
    r.iter().all(|&x| x < target) && r[RATE_WINDOWS - 1] < target / 2.0
}

/// Whether a segment is over its target but too narrow to split again.
pub fn is_hot_key(segment: &Span, policy: &ScalingPolicy, view: &SegmentView) -> bool {
    policy.kind != ScalingKind::Fixed
        && too_hot(&rates_in_unit(policy, view), policy.target as f64)
        && (segment.key_high - segment.key_low) / 2.0 < KEY_RANGE_MIN
}

/// The scale a rate policy calls for, if any: splits of hot segments (into
/// as many pieces as the rate asks, up to the scale factor), else merges of
/// cold key-adjacent pairs whose sum stays below half the target (the band
/// between half the target and the split thresholds is the hysteresis that
/// keeps load near the target from oscillating). Segments younger than
/// `cooldown_ms` are left alone. `loads` are the active segments.
pub fn decide(
    policy: &ScalingPolicy,
    loads: &[Load],
    cooldown_ms: u64,
) -> Option<(Vec<Split>, Vec<Vec<u64>>)> {
    if policy.kind == ScalingKind::Fixed || policy.target == 0 {
        return None;
    }
    let target = policy.target as f64;
    let settled = |l: &Load| l.age_ms >= cooldown_ms;
    let mut room = (STREAM_SEGMENTS_MAX as usize).saturating_sub(loads.len());
    let mut splits = Vec::new();
    for l in loads
        .iter()
        .filter(|l| settled(l) && too_hot(&l.rates, target))
    {
        let peak = l.rates[..RATE_WINDOWS - 1]
            .iter()
            .copied()
            .fold(0.0, f64::max);
        let wanted = (peak / target)
            .ceil()
            .clamp(2.0, f64::from(policy.scale_factor)) as u32;
        // Never a piece narrower than the hot-key limit.
        let fit = ((l.key_high - l.key_low) / KEY_RANGE_MIN)
            .floor()
            .min(f64::from(SPLIT_PIECES_MAX)) as u32;
        let pieces = wanted.min(fit);
        if pieces >= 2 && (pieces - 1) as usize <= room {
            room -= (pieces - 1) as usize;
            splits.push(Split {
                segment_id: l.segment_id,
                pieces,
            });
        }
    }
    if !splits.is_empty() {
        return Some((splits, Vec::new()));
    }
    let mut sorted: Vec<&Load> = loads.iter().collect();
    sorted.sort_by(|a, b| a.key_low.total_cmp(&b.key_low));
    let mut left = loads.len();
    let mut merges = Vec::new();
    let mut i = 0;
    while i + 1 < sorted.len() {
        let (a, b) = (sorted[i], sorted[i + 1]);
        let joined_cold = a.rates[RATE_WINDOWS - 1] + b.rates[RATE_WINDOWS - 1] < target / 2.0;
        if left > policy.min_segments as usize
            && a.key_high == b.key_low
            && settled(a)
            && settled(b)
            && cold(&a.rates, target)
            && cold(&b.rates, target)
            && joined_cold
        {
            merges.push(vec![a.segment_id, b.segment_id]);
            left -= 1;
            i += 2;
        } else {
            i += 1;
        }
    }
    (!merges.is_empty()).then_some((Vec::new(), merges))
}

/// Whether key ranges `[a.0, a.1)` and `[b.0, b.1)` share keys.
pub fn overlaps(a: (f64, f64), b: (f64, f64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(id: u64, low: f64, high: f64) -> Span {
        Span {
            id,
            key_low: low,
            key_high: high,
        }
    }

    fn four() -> Vec<Span> {
        vec![
            seg(1, 0.0, 0.25),
            seg(2, 0.25, 0.5),
            seg(3, 0.5, 0.75),
            seg(4, 0.75, 1.0),
        ]
    }

    fn split(segment_id: u64, pieces: u32) -> Split {
        Split { segment_id, pieces }
    }

    /// `ranges` joined where one ends exactly where the next begins.
    fn union(mut ranges: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
        ranges.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut out: Vec<(f64, f64)> = Vec::new();
        for r in ranges {
            match out.last_mut() {
                Some(last) if last.1 == r.0 => last.1 = r.1,
                _ => out.push(r),
            }
        }
        out
    }

    /// Successor ranges cover exactly the predecessors' ranges: no gap, no
    /// overlap, no key outside them (exact float equality at every joint).
    fn covers(active: &[Span], plan: &ScalePlan) {
        for pair in plan.ranges.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "no overlap: {pair:?}");
        }
        let sealed = active
            .iter()
            .filter(|s| plan.predecessors.contains(&s.id))
            .map(|s| (s.key_low, s.key_high))
            .collect();
        assert_eq!(union(sealed), union(plan.ranges.clone()));
    }

    #[test]
    fn splits_cut_equal_pieces_ending_exactly_where_the_segment_did() {
        let active = four();
        let p = plan(&active, &[split(2, 3)], &[], 1).unwrap();
        assert_eq!(p.predecessors, vec![2]);
        assert_eq!(p.ranges.len(), 3);
        assert_eq!(p.ranges[0].0, 0.25);
        assert_eq!(p.ranges[2].1, 0.5);
        covers(&active, &p);
    }

    #[test]
    fn merges_join_key_adjacent_segments_in_any_order() {
        let active = four();
        let p = plan(&active, &[], &[vec![3, 2]], 1).unwrap();
        assert_eq!(p.ranges, vec![(0.25, 0.75)]);
        covers(&active, &p);
        let p = plan(&active, &[split(1, 2)], &[vec![4, 3]], 1).unwrap();
        assert_eq!(p.ranges.len(), 3);
        covers(&active, &p);
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let active = four();
        type Case = (Vec<Split>, Vec<Vec<u64>>, &'static str);
        let cases: Vec<Case> = vec![
            (vec![], vec![], "nothing to scale"),
            (vec![split(9, 2)], vec![], "not an active segment"),
            (vec![split(1, 1)], vec![], "2 to 16 pieces"),
            (vec![split(1, 17)], vec![], "2 to 16 pieces"),
            (vec![], vec![vec![1, 3]], "not key-adjacent"),
            (vec![], vec![vec![1]], "at least two"),
            (vec![split(1, 2)], vec![vec![1, 2]], "named twice"),
            (vec![], vec![vec![2, 2]], "named twice"),
        ];
        for (splits, merges, why) in cases {
            let err = plan(&active, &splits, &merges, 1).unwrap_err();
            assert!(err.contains(why), "{splits:?} {merges:?}: {err}");
        }
    }

    #[test]
    fn the_minimum_segment_count_holds_where_the_scale_executes() {
        let active = four();
        assert!(plan(&active, &[], &[vec![1, 2], vec![3, 4]], 2).is_ok());
        let err = plan(&active, &[], &[vec![1, 2, 3, 4]], 2).unwrap_err();
        assert!(err.contains("fewer than its minimum of 2"), "{err}");
    }

    fn load(id: u64, low: f64, high: f64, rates: [f64; RATE_WINDOWS], age_ms: u64) -> Load {
        Load {
            segment_id: id,
            key_low: low,
            key_high: high,
            rates,
            age_ms,
        }
    }

    fn events(target: u64, scale_factor: u32, min_segments: u32) -> ScalingPolicy {
        ScalingPolicy {
            kind: ScalingKind::EventsPerSecond,
            target,
            scale_factor,
            min_segments,
        }
    }

    /// Rates → decision, one row per rule.
    #[test]
    fn decisions_follow_the_rates() {
        let p = events(1000, 4, 1);
        let old = 60_000;
        let cool = 10_000;
        let half = |a, b| [load(1, 0.0, 0.5, a, old), load(2, 0.5, 1.0, b, old)];
        type Row = (&'static str, [Load; 2], Option<(Vec<Split>, Vec<Vec<u64>>)>);
        let quiet = [100.0, 100.0, 100.0, 100.0];
        let rows: Vec<Row> = vec![
            (
                "near the target: nothing",
                half([900.0; 4], [900.0; 4]),
                None,
            ),
            (
                "short window far above: split, pieces by rate up to the factor",
                half([8000.0, 900.0, 900.0, 900.0], quiet),
                Some((vec![split(1, 4)], vec![])),
            ),
            (
                "mid window above twice: split in 3",
                half([1500.0, 2500.0, 900.0, 900.0], quiet),
                Some((vec![split(1, 3)], vec![])),
            ),
            (
                "long window above: split in 2",
                half([1100.0, 1100.0, 1100.0, 900.0], quiet),
                Some((vec![split(1, 2)], vec![])),
            ),
            (
                "both cold, sum below half: merge",
                half(quiet, [50.0, 60.0, 70.0, 80.0]),
                Some((vec![], vec![vec![1, 2]])),
            ),
            (
                "cold each but the sum is not below half the target: hysteresis, nothing",
                half([300.0; 4], [300.0; 4]),
                None,
            ),
            (
                "one window at the target: not cold",
                half([1000.0, 100.0, 100.0, 100.0], quiet),
                None,
            ),
        ];
        for (why, loads, want) in rows {
            assert_eq!(decide(&p, &loads, cool), want, "{why}");
        }
    }

    #[test]
    fn cooldown_minimum_and_fixed_policies_hold_back() {
        let p = events(1000, 2, 1);
        let hot = [9000.0; 4];
        let young = [load(1, 0.0, 1.0, hot, 5_000)];
        assert_eq!(decide(&p, &young, 10_000), None, "in its cooldown");
        let cold = [0.0; 4];
        let two = [
            load(1, 0.0, 0.5, cold, 60_000),
            load(2, 0.5, 1.0, cold, 60_000),
        ];
        assert_eq!(
            decide(&events(1000, 2, 2), &two, 10_000),
            None,
            "at the minimum"
        );
        assert!(decide(&p, &two, 10_000).is_some());
        assert_eq!(decide(&ScalingPolicy::default(), &young, 0), None, "fixed");
    }

    #[test]
    fn a_hot_key_range_is_not_split_by_the_scaler_either() {
        let p = events(1000, 4, 1);
        let narrow = 1.5 / 65536.0;
        let l = [load(1, 0.5, 0.5 + narrow, [9000.0; 4], 60_000)];
        assert_eq!(decide(&p, &l, 0), None);
        let seg = seg(1, 0.5, 0.5 + narrow);
        let view = SegmentView {
            head: 0,
            length: 0,
            sealed: false,
            tier2_length: 0,
            chunk_count: 0,
            tail_bytes: 0,
            log_bytes: 0,
            events_per_second: [9000.0; 4],
            bytes_per_second: [0.0; 4],
        };
        assert!(is_hot_key(&seg, &p, &view));
        let wide = Span {
            key_high: 1.0,
            ..seg
        };
        assert!(!is_hot_key(&wide, &p, &view));
    }

    #[test]
    fn a_hot_key_range_is_not_split_further() {
        let narrow = vec![seg(1, 0.5, 0.5 + 1.5 / 65536.0)];
        let err = plan(&narrow, &[split(1, 2)], &[], 1).unwrap_err();
        assert!(err.contains("hot key"), "{err}");
        let ok = vec![seg(1, 0.5, 0.5 + 2.0 / 65536.0)];
        assert!(plan(&ok, &[split(1, 2)], &[], 1).is_ok());
    }
}
