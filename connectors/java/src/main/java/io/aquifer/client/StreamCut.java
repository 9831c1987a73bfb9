package io.aquifer.client;

import java.io.Serializable;
import java.util.Collections;
import java.util.Map;
import java.util.TreeMap;

/**
 * One position per segment: a consistent point in a stream. A segment the cut does not name is
 * before it if it is a predecessor (at any distance) of one it names, after it if a successor.
 * The text form is the Rust client's: {@code SEGMENT:OFFSET} pairs joined by commas, e.g. {@code
 * 7:0,8:1024}.
 */
public final class StreamCut implements Serializable {
  private static final long serialVersionUID = 1L;

  private final TreeMap<Long, Long> positions;

  public StreamCut(Map<Long, Long> positions) {
    this.positions = new TreeMap<>(positions);
  }

  public Map<Long, Long> positions() {
    return Collections.unmodifiableMap(positions);
  }

  /** Parses the text form {@link #toString()} writes. */
  public static StreamCut parse(String text) {
    TreeMap<Long, Long> positions = new TreeMap<>();
    for (String pair : text.trim().split(",")) {
      int colon = pair.indexOf(':');
      if (colon < 0) {
        throw badCut(text, "has a pair without ':'");
      }
      long segment;
      long offset;
      try {
        segment = Long.parseUnsignedLong(pair.substring(0, colon).trim());
        offset = Long.parseUnsignedLong(pair.substring(colon + 1).trim());
      } catch (NumberFormatException e) {
        throw badCut(text, "has a bad number");
      }
      if (positions.put(segment, offset) != null) {
        throw badCut(text, "names a segment twice");
      }
    }
    return new StreamCut(positions);
  }

  private static IllegalArgumentException badCut(String text, String why) {
    return new IllegalArgumentException(
        "stream cut \""
            + text
            + "\" "
            + why
            + ": expected SEGMENT:OFFSET pairs joined by commas, e.g. 7:0,8:1024");
  }

  @Override
  public boolean equals(Object o) {
    return o instanceof StreamCut && ((StreamCut) o).positions.equals(positions);
  }

  @Override
  public int hashCode() {
    return positions.hashCode();
  }

  @Override
  public String toString() {
    StringBuilder out = new StringBuilder();
    for (Map.Entry<Long, Long> p : positions.entrySet()) {
      if (out.length() > 0) {
        out.append(',');
      }
      out.append(Long.toUnsignedString(p.getKey()))
          .append(':')
          .append(Long.toUnsignedString(p.getValue()));
    }
    return out.toString();
  }
}
