package io.aquifer.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.List;
import org.junit.jupiter.api.Test;

/** The shared vectors (proto/testdata/key-positions.tsv) the Rust tests check too. */
class KeyPositionsTest {
  @Test
  void positionsMatchTheRustClientBitForBit() throws Exception {
    Path file = Paths.get("../../proto/testdata/key-positions.tsv");
    List<String> lines = Files.readAllLines(file, StandardCharsets.UTF_8);
    int checked = 0;
    for (String line : lines) {
      if (line.isEmpty() || line.startsWith("#")) {
        continue;
      }
      String[] f = line.split("\t", -1);
      assertEquals(3, f.length, "a line of KEY, BITS, POSITION: " + line);
      long bits = Long.parseUnsignedLong(f[1], 16);
      double position = KeyPositions.of(f[0]);
      assertEquals(
          bits,
          Double.doubleToRawLongBits(position),
          "key " + f[0] + ": Java " + position + ", Rust " + Double.longBitsToDouble(bits));
      checked++;
    }
    assertTrue(checked >= 100, "the file holds " + checked + " vectors");
  }

  @Test
  void pickIsTheLastRangeStartingAtOrBelow() {
    List<Double> lows = List.of(0.0, 0.25, 0.5, 0.75);
    assertEquals(0, KeyPositions.pick(lows, 0.0));
    assertEquals(0, KeyPositions.pick(lows, 0.2499));
    assertEquals(1, KeyPositions.pick(lows, 0.25));
    assertEquals(3, KeyPositions.pick(lows, 1.0));
    assertEquals(0, KeyPositions.pick(List.of(0.1, 0.5), 0.05));
  }
}
