package io.aquifer.client;

import java.nio.charset.StandardCharsets;
import java.util.List;

/**
 * The routing-key hash, a wire rule ({@code proto/src/keys.rs}): FNV-1a 64 over the key's UTF-8
 * bytes, MurmurHash3's {@code fmix64}, read unsigned and divided by 2^64. Every client computes it
 * identically so one key always lands in one segment.
 */
public final class KeyPositions {
  private static final long FNV_OFFSET_BASIS = 0xcbf29ce484222325L;
  private static final long FNV_PRIME = 0x100000001b3L;
  private static final double TWO_TO_64 = 18446744073709551616.0;

  private KeyPositions() {}

  /** Position of {@code routingKey} in the key space [0, 1]. */
  public static double of(String routingKey) {
    long h = FNV_OFFSET_BASIS;
    for (byte b : routingKey.getBytes(StandardCharsets.UTF_8)) {
      h ^= b & 0xffL;
      h *= FNV_PRIME;
    }
    long m = fmix64(h);
    // Unsigned to double, rounding to nearest like Rust's `u64 as f64`.
    double u = m >= 0 ? (double) m : (double) ((m >>> 1) | (m & 1)) * 2.0;
    return u / TWO_TO_64;
  }

  static long fmix64(long h) {
    h ^= h >>> 33;
    h *= 0xff51afd7ed558ccdL;
    h ^= h >>> 33;
    h *= 0xc4ceb9fe1a85ec53L;
    h ^= h >>> 33;
    return h;
  }

  /**
   * Index of the range holding {@code position} among ranges sorted by their low ends: the last
   * one whose low end is at or below it (so 1.0 goes to the last, and a position below every low
   * end to the first).
   */
  static int pick(List<Double> sortedLows, double position) {
    int lo = 0;
    int hi = sortedLows.size() - 1;
    int found = 0;
    while (lo <= hi) {
      int mid = (lo + hi) >>> 1;
      if (sortedLows.get(mid) <= position) {
        found = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    return found;
  }
}
