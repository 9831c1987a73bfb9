package io.aquifer.client;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;

/** One event read back: where it is, its routing key (null: none) and its payload. */
public final class Event {
  private final long segmentId;
  private final long offset;
  private final long nextOffset;
  private final String routingKey;
  private final byte[] payload;

  Event(long segmentId, long offset, long nextOffset, String routingKey, byte[] payload) {
    this.segmentId = segmentId;
    this.offset = offset;
    this.nextOffset = nextOffset;
    this.routingKey = routingKey;
    this.payload = payload;
  }

  public long segmentId() {
    return segmentId;
  }

  /** Byte offset of the event in its segment. */
  public long offset() {
    return offset;
  }

  /** Offset of the event after this one: where a reader resumes. */
  public long nextOffset() {
    return nextOffset;
  }

  /** The routing key, or null for an event written without one. */
  public String routingKey() {
    return routingKey;
  }

  public byte[] payload() {
    return payload;
  }

  /** Framed size in the segment (header included). */
  public int framedBytes() {
    return (int) (nextOffset - offset);
  }

  public String payloadUtf8() {
    return new String(payload, StandardCharsets.UTF_8);
  }

  @Override
  public String toString() {
    return "Event{segment="
        + segmentId
        + ", offset="
        + offset
        + ", key="
        + routingKey
        + ", payload="
        + Arrays.toString(Arrays.copyOf(payload, Math.min(16, payload.length)))
        + "}";
  }
}
