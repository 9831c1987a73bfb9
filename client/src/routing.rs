//! Routing: which segment an event goes to.
//!
//! Owns which segment takes an event; the routing-key hash is a wire rule
//! (`aquifer_proto::keys`, which says how to compute it).
//!
//! Events without a routing key are spread round-robin over the segments.

use std::sync::atomic::{AtomicUsize, Ordering};

pub use aquifer_proto::keys::{fmix64, fnv1a_64, key_position};

use crate::SegmentInfo;

/// One segment a writer routes to.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Route {
    segment_id: u64,
    key_low: f64,
    key_high: f64,
    epoch: u64,
}

impl Route {
    /// `[key_low, key_high)`, the top range also holding 1.0.
    fn holds(&self, pos: f64) -> bool {
        self.key_low <= pos && (pos < self.key_high || self.key_high >= 1.0)
    }
}

/// The segments a writer routes over, sorted by `key_low`, plus the
/// round-robin cursor for events without a key.
///
/// Changes with scaling: a sealed segment leaves and its successors come in
/// once the writer has moved its events (see `reroute.rs`). Until then a
/// successor may overlap a predecessor that is still listed (a merge whose
/// other predecessor's seal the writer has not seen yet); a key then goes
/// to the oldest segment that holds it, the predecessor, so its events stay
/// behind the ones still to be moved from there.
#[derive(Debug)]
pub(crate) struct Router {
    /// Ascending by `key_low`, then epoch.
    routes: Vec<Route>,
    next: AtomicUsize,
}

impl Router {
    /// A router over `segments` (any order).
    pub(crate) fn new(segments: &[SegmentInfo]) -> Router {
        let mut router = Router {
            routes: Vec::with_capacity(segments.len()),
            next: AtomicUsize::new(0),
        };
        for s in segments {
            router.add(s);
        }
        router
    }

    /// Routes to `segment` too (no-op if it is there already).
    pub(crate) fn add(&mut self, segment: &SegmentInfo) {
        if self.contains(segment.segment_id) {
            return;
        }
        self.routes.push(Route {
            segment_id: segment.segment_id,
            key_low: segment.key_low,
            key_high: segment.key_high,
            epoch: segment.epoch,
        });
        self.routes.sort_by(|a, b| {
            a.key_low
                .total_cmp(&b.key_low)
                .then(a.epoch.cmp(&b.epoch))
                .then(a.segment_id.cmp(&b.segment_id))
        });
    }

    /// Stops routing to `segment_id`.
    pub(crate) fn remove(&mut self, segment_id: u64) {
        self.routes.retain(|r| r.segment_id != segment_id);
    }

    /// Whether `segment_id` is routed to.
    pub(crate) fn contains(&self, segment_id: u64) -> bool {
        self.routes.iter().any(|r| r.segment_id == segment_id)
    }

    /// The segment for an event whose key is at `position` (see
    /// [`key_position`]); `None` for a keyless event: round-robin. `None`
    /// only when no segment is routed to.
    pub(crate) fn route(&self, position: Option<f64>) -> Option<u64> {
        let n = self.routes.len();
        if n == 0 {
            return None;
        }
        let index = match position {
            Some(pos) => self.index_for(pos),
            None => self.next.fetch_add(1, Ordering::Relaxed) % n,
        };
        self.routes.get(index).map(|r| r.segment_id)
    }

    /// The oldest segment whose range holds `pos`; if none does (a gap in
    /// the table, which the server never leaves), the last one whose
    /// `key_low <= pos`, or the first.
    fn index_for(&self, pos: f64) -> usize {
        let holding = self
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.holds(pos))
            .min_by_key(|(_, r)| r.epoch)
            .map(|(i, _)| i);
        holding.unwrap_or_else(|| {
            self.routes
                .partition_point(|r| r.key_low <= pos)
                .saturating_sub(1)
        })
    }
}

/// Sorts segments by key range (ties: by number) and keeps the ones a
/// writer appends to: those no scale replaced (no successors listed). That
/// keeps a segment sealed by a scale whose epoch is not recorded yet (its
/// keys have no other owner yet: its session meets the seal and hands over)
/// and, on a sealed stream, the last epoch's (so writes fail with the
/// server's `Sealed` error).
pub(crate) fn writable_segments(mut segments: Vec<SegmentInfo>) -> Vec<SegmentInfo> {
    segments.sort_by(|a, b| {
        a.key_low
            .total_cmp(&b.key_low)
            .then(a.number.cmp(&b.number))
    });
    segments.retain(|s| s.successors.is_empty());
    segments
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(n: u32) -> Vec<SegmentInfo> {
        (0..n)
            .map(|i| SegmentInfo {
                segment_id: 100 + u64::from(i),
                number: i,
                key_low: f64::from(i) / f64::from(n),
                key_high: f64::from(i + 1) / f64::from(n),
                ..Default::default()
            })
            .collect()
    }

    fn index(router: &Router, key: &str) -> usize {
        router
            .route(Some(key_position(key)))
            .map_or(usize::MAX, |id| (id - 100) as usize)
    }

    #[test]
    fn fnv1a_matches_reference_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a_64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x85944171f73967e8);
        assert_eq!(fmix64(0), 0);
        let p = key_position("foobar");
        assert!((0.0..=1.0).contains(&p));
        assert_eq!(p, fmix64(0x85944171f73967e8) as f64 / 2f64.powi(64));
        // Pinned: other clients must compute the same positions.
        assert_eq!(fmix64(0x85944171f73967e8), 0x2c22194922d1672b);
        assert_eq!(key_position("user-42"), 0.6389953362913912);
    }

    #[test]
    fn small_key_sets_use_every_segment() {
        // FNV-1a alone maps all of these to a single segment of 4.
        for prefix in ["key-", "user-", "w1-k"] {
            let router = Router::new(&segments(4));
            let mut used = [false; 4];
            for i in 0..40 {
                used[index(&router, &format!("{prefix}{i}"))] = true;
            }
            assert_eq!(used, [true; 4], "keys {prefix}0..39");
        }
    }

    #[test]
    fn same_key_same_segment() {
        let router = Router::new(&segments(4));
        for i in 0..1000 {
            let key = format!("user-{i}");
            let first = index(&router, &key);
            for _ in 0..3 {
                assert_eq!(index(&router, &key), first);
            }
            // The chosen segment's range holds the key's position.
            let pos = key_position(&key);
            let s = &segments(4)[first];
            assert!(s.key_low <= pos && (pos < s.key_high || first == 3));
        }
    }

    #[test]
    fn keys_spread_evenly_over_four_segments() {
        let router = Router::new(&segments(4));
        let mut counts = [0usize; 4];
        for i in 0..10_000 {
            counts[index(&router, &format!("key-{i}"))] += 1;
        }
        for c in counts {
            assert!((2250..=2750).contains(&c), "uneven spread: {counts:?}");
        }
    }

    #[test]
    fn keyless_events_go_round_robin() {
        let router = Router::new(&segments(3));
        let got: Vec<u64> = (0..6).filter_map(|_| router.route(None)).collect();
        assert_eq!(got, vec![100, 101, 102, 100, 101, 102]);
        assert_eq!(Router::new(&segments(1)).route(None), Some(100));
        assert_eq!(Router::new(&segments(1)).route(Some(0.7)), Some(100));
        assert_eq!(Router::new(&[]).route(None), None);
    }

    #[test]
    fn positions_clamp_to_the_ends() {
        let router = Router::new(&segments(4));
        let at = |pos| router.route(Some(pos)).unwrap() - 100;
        assert_eq!(at(0.0), 0);
        assert_eq!(at(0.2499), 0);
        assert_eq!(at(0.25), 1);
        assert_eq!(at(0.99), 3);
        assert_eq!(at(1.0), 3);
        let mut gap = segments(2);
        gap[0].key_low = 0.1;
        assert_eq!(Router::new(&gap).route(Some(0.05)), Some(100));
    }

    #[test]
    fn a_key_goes_to_the_oldest_segment_holding_it_while_a_scale_is_half_seen() {
        // Merge of [0, 0.5) and [0.5, 1) into one: the writer has moved the
        // first predecessor's events (it left) but not yet the second's.
        let mut segs = segments(2);
        let merged = SegmentInfo {
            segment_id: 200,
            key_low: 0.0,
            key_high: 1.0,
            epoch: 1,
            ..Default::default()
        };
        let mut router = Router::new(&segs);
        router.remove(100);
        router.add(&merged);
        assert_eq!(router.route(Some(0.2)), Some(200));
        assert_eq!(router.route(Some(0.7)), Some(101));
        // The other way round: the tie on key_low goes to the older one.
        let mut router = Router::new(&segs);
        router.remove(101);
        router.add(&merged);
        assert_eq!(router.route(Some(0.2)), Some(100));
        assert_eq!(router.route(Some(0.7)), Some(200));
        // A split: each piece takes its half once the predecessor left.
        segs.truncate(1);
        let mut router = Router::new(&segs);
        router.remove(100);
        for (i, (low, high)) in [(0.0, 0.25), (0.25, 0.5)].into_iter().enumerate() {
            router.add(&SegmentInfo {
                segment_id: 300 + i as u64,
                key_low: low,
                key_high: high,
                epoch: 1,
                ..Default::default()
            });
        }
        assert!(!router.contains(100));
        assert_eq!(router.route(Some(0.1)), Some(300));
        assert_eq!(router.route(Some(0.3)), Some(301));
    }

    #[test]
    fn writable_segments_sorts_and_skips_sealed() {
        let mut segs = segments(3);
        segs.reverse();
        segs[0].sealed = true; // number 2, replaced by a scale
        segs[0].successors = vec![7];
        let w = writable_segments(segs.clone());
        assert_eq!(w.iter().map(|s| s.number).collect::<Vec<_>>(), vec![0, 1]);
        // Sealed, its successors not recorded yet: still its keys' owner.
        segs[1].sealed = true;
        assert_eq!(writable_segments(segs.clone()).len(), 2);
        for s in &mut segs {
            s.sealed = true;
        }
        assert_eq!(writable_segments(segs).len(), 2);
    }
}
