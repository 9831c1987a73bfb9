//! Routing: which segment an event goes to.
//!
//! Owns the routing-key hash, which every client (Rust, Java, ...) must
//! compute identically so that one key always lands in one segment:
//!
//! 1. `h` = 64-bit FNV-1a over the key's UTF-8 bytes (offset basis
//!    `0xcbf29ce484222325`, prime `0x100000001b3`; per byte: XOR, then
//!    wrapping multiply);
//! 2. `m` = MurmurHash3's 64-bit finalizer of `h` (`fmix64`):
//!    `h ^= h >>> 33; h *= 0xff51afd7ed558ccd; h ^= h >>> 33;
//!    h *= 0xc4ceb9fe1a85ec53; h ^= h >>> 33` (logical shifts, wrapping
//!    multiplies);
//! 3. key position = `m`, read as an unsigned integer and converted to the
//!    nearest IEEE-754 double, divided by 2^64. In Java (signed longs):
//!    `double u = m >= 0 ? (double) m : (double) ((m >>> 1) | (m & 1)) * 2.0;`
//!    then `u / 18446744073709551616.0`;
//! 4. the event goes to the segment with `key_low <= position < key_high`;
//!    precisely: among the segments sorted by `key_low`, the last one whose
//!    `key_low <= position` (so a position that rounds to 1.0 goes to the
//!    last segment, and one below every `key_low` to the first).
//!
//! Why the finalizer: FNV-1a alone leaves its top bits, which pick the
//! segment, nearly unchanged by the last bytes of a key, so keys like
//! `user-0` .. `user-9` would all land in one segment.
//!
//! Events without a routing key are spread round-robin over the segments.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::SegmentInfo;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a of `bytes`.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET_BASIS;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// MurmurHash3's 64-bit finalizer: spreads every input bit over the output.
pub fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// Position of a routing key in the key space `[0, 1]`:
/// `fmix64(fnv1a_64(key)) / 2^64`. (The conversion to `f64` may round up to
/// exactly 1.0 for hashes close to `u64::MAX`; routing clamps that to the
/// last segment.)
pub fn key_position(routing_key: &str) -> f64 {
    fmix64(fnv1a_64(routing_key.as_bytes())) as f64 / 18_446_744_073_709_551_616.0
}

/// The segments a writer routes over, sorted by `key_low`, plus the
/// round-robin cursor for events without a key.
#[derive(Debug)]
pub(crate) struct Router {
    /// `key_low` of each segment, ascending; index = segment index.
    key_lows: Vec<f64>,
    next: AtomicUsize,
}

impl Router {
    /// `segments` must be sorted by `key_low` and non-empty.
    pub(crate) fn new(segments: &[SegmentInfo]) -> Router {
        Router {
            key_lows: segments.iter().map(|s| s.key_low).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Index (into the sorted segments) of the segment for this event.
    pub(crate) fn route(&self, routing_key: Option<&str>) -> usize {
        let n = self.key_lows.len();
        if n <= 1 {
            return 0;
        }
        match routing_key {
            Some(key) => segment_for_position(&self.key_lows, key_position(key)),
            None => self.next.fetch_add(1, Ordering::Relaxed) % n,
        }
    }
}

/// The last segment whose `key_low <= pos` (the first one if none).
pub(crate) fn segment_for_position(key_lows: &[f64], pos: f64) -> usize {
    key_lows
        .partition_point(|&low| low <= pos)
        .saturating_sub(1)
}

/// Sorts segments by key range (ties: by number) and keeps the ones a
/// writer appends to: the unsealed ones, or all if every one is sealed (so
/// writes to a sealed stream fail with the server's `Sealed` error).
pub(crate) fn writable_segments(mut segments: Vec<SegmentInfo>) -> Vec<SegmentInfo> {
    segments.sort_by(|a, b| {
        a.key_low
            .total_cmp(&b.key_low)
            .then(a.number.cmp(&b.number))
    });
    if segments.iter().any(|s| !s.sealed) {
        segments.retain(|s| !s.sealed);
    }
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
                used[router.route(Some(&format!("{prefix}{i}")))] = true;
            }
            assert_eq!(used, [true; 4], "keys {prefix}0..39");
        }
    }

    #[test]
    fn same_key_same_segment() {
        let router = Router::new(&segments(4));
        for i in 0..1000 {
            let key = format!("user-{i}");
            let first = router.route(Some(&key));
            for _ in 0..3 {
                assert_eq!(router.route(Some(&key)), first);
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
            counts[router.route(Some(&format!("key-{i}")))] += 1;
        }
        for c in counts {
            assert!((2250..=2750).contains(&c), "uneven spread: {counts:?}");
        }
    }

    #[test]
    fn keyless_events_go_round_robin() {
        let router = Router::new(&segments(3));
        let got: Vec<usize> = (0..6).map(|_| router.route(None)).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(Router::new(&segments(1)).route(None), 0);
        assert_eq!(Router::new(&segments(1)).route(Some("k")), 0);
    }

    #[test]
    fn positions_clamp_to_the_ends() {
        let lows = [0.0, 0.25, 0.5, 0.75];
        assert_eq!(segment_for_position(&lows, 0.0), 0);
        assert_eq!(segment_for_position(&lows, 0.2499), 0);
        assert_eq!(segment_for_position(&lows, 0.25), 1);
        assert_eq!(segment_for_position(&lows, 0.99), 3);
        assert_eq!(segment_for_position(&lows, 1.0), 3);
        assert_eq!(segment_for_position(&[0.1, 0.5], 0.05), 0);
    }

    #[test]
    fn writable_segments_sorts_and_skips_sealed() {
        let mut segs = segments(3);
        segs.reverse();
        segs[0].sealed = true; // number 2
        let w = writable_segments(segs.clone());
        assert_eq!(w.iter().map(|s| s.number).collect::<Vec<_>>(), vec![0, 1]);
        for s in &mut segs {
            s.sealed = true;
        }
        assert_eq!(writable_segments(segs).len(), 3);
    }
}
