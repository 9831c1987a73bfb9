package io.aquifer.flink.source;

import org.apache.flink.api.connector.source.SourceSplit;

/**
 * A split is one segment, from an offset to an end offset (-1: to its end, following it). Its
 * offset is in Flink's checkpoint: a restored reader resumes there.
 */
public final class AquiferSplit implements SourceSplit {
  private final long segmentId;
  private final long offset;
  private final long endOffset;

  public AquiferSplit(long segmentId, long offset, long endOffset) {
    this.segmentId = segmentId;
    this.offset = offset;
    this.endOffset = endOffset;
  }

  public long segmentId() {
    return segmentId;
  }

  /** Where reading (re)starts: an event boundary. */
  public long offset() {
    return offset;
  }

  /** Exclusive end, or -1: read to the end of the segment (following it while it is open). */
  public long endOffset() {
    return endOffset;
  }

  public AquiferSplit at(long newOffset) {
    return new AquiferSplit(segmentId, newOffset, endOffset);
  }

  @Override
  public String splitId() {
    return Long.toUnsignedString(segmentId);
  }

  @Override
  public String toString() {
    return "segment " + splitId() + " [" + offset + ", " + (endOffset < 0 ? "end" : endOffset) + ")";
  }
}
