package io.aquifer.client;

/**
 * Where an acknowledged event is: its segment and offset, or offset -1 when the server answered
 * its batch as a duplicate (a retry it already had), which says the event is stored but not where.
 */
public final class WriteAck {
  private final long segmentId;
  private final long offset;

  WriteAck(long segmentId, long offset) {
    this.segmentId = segmentId;
    this.offset = offset;
  }

  public long segmentId() {
    return segmentId;
  }

  /** Byte offset of the event in its segment, or -1 if unknown. */
  public long offset() {
    return offset;
  }

  @Override
  public String toString() {
    return "segment " + segmentId + " at " + (offset < 0 ? "?" : Long.toString(offset));
  }
}
