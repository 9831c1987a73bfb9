package io.aquifer.client;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.zip.CRC32;

/**
 * The event framing, a wire rule (top of {@code aquifer.proto}): {@code u32 LE body_len, u32 LE
 * crc32(body), body = u16 LE key_len, key, payload}, or an extended body ({@code 0xFFFF, u16 LE
 * key_len, u32 LE attr_len, key, attributes, payload}) whose attributes this client skips. Owns
 * encoding and checked decoding; never accepts a frame whose length or checksum does not hold.
 */
public final class Framing {
  /** Bytes before the body. */
  public static final int HEADER_BYTES = 8;

  /** Longest routing key, in UTF-8 bytes (its length is a u16 whose largest value is EXTENDED). */
  public static final int KEY_BYTES_MAX = 0xfffe;

  /** The key length that says the body is extended. */
  private static final int EXTENDED = 0xffff;

  private Framing() {}

  /** Framed size of an event with {@code keyBytes} of key and {@code payloadBytes} of payload. */
  public static int framedSize(int keyBytes, int payloadBytes) {
    return HEADER_BYTES + 2 + keyBytes + payloadBytes;
  }

  /** Frames one event; {@code routingKey} null or empty means none. */
  public static byte[] frame(String routingKey, byte[] payload) {
    byte[] key =
        routingKey == null ? new byte[0] : routingKey.getBytes(StandardCharsets.UTF_8);
    if (key.length > KEY_BYTES_MAX) {
      throw new IllegalArgumentException(
          "routing key of " + key.length + " bytes is longer than " + KEY_BYTES_MAX);
    }
    int bodyLen = 2 + key.length + payload.length;
    ByteBuffer out = ByteBuffer.allocate(HEADER_BYTES + bodyLen).order(ByteOrder.LITTLE_ENDIAN);
    out.putInt(bodyLen);
    out.putInt(0);
    out.putShort((short) key.length);
    out.put(key);
    out.put(payload);
    CRC32 crc = new CRC32();
    crc.update(out.array(), HEADER_BYTES, bodyLen);
    out.putInt(4, (int) crc.getValue());
    return out.array();
  }

  /**
   * Decodes whole framed events of segment {@code segmentId} starting at {@code offset}.
   *
   * @throws AquiferException (DATA_LOSS) for a torn or corrupt frame
   */
  public static List<Event> decode(long segmentId, long offset, byte[] bytes) {
    return decode(segmentId, offset, ByteBuffer.wrap(bytes));
  }

  /**
   * Decodes from a buffer (a read response's bytes, without copying them first); only each
   * event's key and payload are copied out.
   */
  public static List<Event> decode(long segmentId, long offset, ByteBuffer buffer) {
    List<Event> events = new ArrayList<>();
    ByteBuffer in = buffer.slice().order(ByteOrder.LITTLE_ENDIAN);
    long at = offset;
    while (in.hasRemaining()) {
      if (in.remaining() < HEADER_BYTES + 2) {
        throw corrupt(segmentId, at, "a frame header is cut short");
      }
      int start = in.position();
      long bodyLen = Integer.toUnsignedLong(in.getInt());
      long crc = Integer.toUnsignedLong(in.getInt());
      if (bodyLen < 2 || bodyLen > in.remaining()) {
        throw corrupt(segmentId, at, "a frame claims " + bodyLen + " bytes");
      }
      ByteBuffer body = in.duplicate();
      body.position(start + HEADER_BYTES).limit(start + HEADER_BYTES + (int) bodyLen);
      CRC32 check = new CRC32();
      check.update(body);
      if (check.getValue() != crc) {
        throw corrupt(segmentId, at, "a frame's checksum does not match");
      }
      int keyLen = Short.toUnsignedInt(in.getShort());
      long prefix = 2;
      long attributesLen = 0;
      if (keyLen == EXTENDED) {
        if (bodyLen < 8) {
          throw corrupt(segmentId, at, "a frame is shorter than its extension");
        }
        keyLen = Short.toUnsignedInt(in.getShort());
        attributesLen = Integer.toUnsignedLong(in.getInt());
        prefix = 8;
      }
      if (keyLen + attributesLen > bodyLen - prefix) {
        throw corrupt(segmentId, at, "a key or its attributes are longer than their frame");
      }
      String key = null;
      if (keyLen > 0) {
        byte[] k = new byte[keyLen];
        in.get(k);
        key = new String(k, StandardCharsets.UTF_8);
      }
      // Attributes are another reader's (a Kafka record's headers, say).
      in.position(in.position() + (int) attributesLen);
      byte[] payload = new byte[(int) (bodyLen - prefix - keyLen - attributesLen)];
      in.get(payload);
      long next = at + HEADER_BYTES + bodyLen;
      events.add(new Event(segmentId, at, next, key, payload));
      at = next;
    }
    return events;
  }

  private static AquiferException corrupt(long segmentId, long offset, String why) {
    return new AquiferException(
        io.grpc.Status.Code.DATA_LOSS,
        null,
        "segment " + segmentId + " at offset " + offset + ": " + why);
  }
}
