//! The routing-key hash, a wire rule: every client (Rust, Java, ...) and
//! the server (which re-routes a transaction's events after a scale) must
//! compute it identically so that one key always lands in one segment.
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
//!
//! `proto/testdata/key-positions.tsv` holds 300 keys and their positions
//! (exact f64 bits), checked by this module's tests; the Java client's
//! tests check the same file.

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every vector of the shared file (`KEY<TAB>BITS<TAB>POSITION`, `#`
    /// lines are comments): the position's bits exactly, and the decimal
    /// naming the same double.
    #[test]
    fn the_shared_test_vectors_hold() {
        let file = include_str!("../testdata/key-positions.tsv");
        let mut checked = 0;
        for (n, line) in file.lines().enumerate() {
            if line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            let [key, bits, decimal] = fields[..] else {
                panic!("line {}: {} fields, not 3: {line:?}", n + 1, fields.len());
            };
            assert_eq!(bits.len(), 16, "line {}: {bits:?}", n + 1);
            let bits = u64::from_str_radix(bits, 16).expect("hex bits");
            let position = key_position(key);
            assert_eq!(
                position.to_bits(),
                bits,
                "line {}: key {key:?} is at {position:?}, the file says {}",
                n + 1,
                f64::from_bits(bits)
            );
            assert_eq!(decimal.parse::<f64>().map(f64::to_bits), Ok(bits));
            assert!((0.0..=1.0).contains(&position));
            checked += 1;
        }
        assert_eq!(checked, 300);
    }

    #[test]
    fn known_values() {
        assert_eq!(fnv1a_64(b""), FNV_OFFSET_BASIS);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fmix64(0), 0);
    }
}
