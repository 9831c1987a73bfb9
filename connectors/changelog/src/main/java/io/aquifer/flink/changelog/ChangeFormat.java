package io.aquifer.flink.changelog;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;

/**
 * One event's payload: a run of one writer's changes, in sequence order. {@code 'C', version 1,
 * u32 count, then per change: i64 sequence number, i32 key group (-1: metadata), i32 length,
 * bytes}. The event framing's CRC already guards the bytes; this checks the shape.
 */
final class ChangeFormat {
  static final int HEADER_BYTES = 6;
  static final int CHANGE_OVERHEAD_BYTES = 16;
  private static final byte MAGIC = 'C';
  private static final byte VERSION = 1;

  private ChangeFormat() {}

  /** A change as the writer buffers it. */
  static final class Change {
    final long sqn;
    final int keyGroup;
    final byte[] bytes;

    Change(long sqn, int keyGroup, byte[] bytes) {
      this.sqn = sqn;
      this.keyGroup = keyGroup;
      this.bytes = bytes;
    }

    int encodedBytes() {
      return CHANGE_OVERHEAD_BYTES + bytes.length;
    }
  }

  static byte[] encode(List<Change> changes) {
    int size = HEADER_BYTES;
    for (Change c : changes) {
      size += c.encodedBytes();
    }
    ByteArrayOutputStream bytes = new ByteArrayOutputStream(size);
    try (DataOutputStream out = new DataOutputStream(bytes)) {
      out.writeByte(MAGIC);
      out.writeByte(VERSION);
      out.writeInt(changes.size());
      for (Change c : changes) {
        out.writeLong(c.sqn);
        out.writeInt(c.keyGroup);
        out.writeInt(c.bytes.length);
        out.write(c.bytes);
      }
    } catch (IOException e) {
      throw new IllegalStateException("writing to memory", e);
    }
    return bytes.toByteArray();
  }

  static List<Change> decode(byte[] payload) throws IOException {
    try (DataInputStream in = new DataInputStream(new ByteArrayInputStream(payload))) {
      if (payload.length < HEADER_BYTES || in.readByte() != MAGIC || in.readByte() != VERSION) {
        throw new IOException("not an Aquifer changelog event (bad magic or version)");
      }
      int count = in.readInt();
      if (count < 0 || (long) count * CHANGE_OVERHEAD_BYTES > payload.length) {
        throw new IOException("a changelog event claims " + count + " changes");
      }
      List<Change> out = new ArrayList<>(count);
      for (int i = 0; i < count; i++) {
        long sqn = in.readLong();
        int keyGroup = in.readInt();
        int len = in.readInt();
        if (len < 0 || len > in.available()) {
          throw new IOException("a change claims " + len + " bytes");
        }
        byte[] bytes = new byte[len];
        in.readFully(bytes);
        out.add(new Change(sqn, keyGroup, bytes));
      }
      if (in.available() != 0) {
        throw new IOException("a changelog event has " + in.available() + " bytes past its changes");
      }
      return out;
    }
  }
}
