package io.aquifer.flink.changelog;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import org.apache.flink.runtime.state.memory.ByteStreamStateHandle;

/**
 * Where one changelog event is: stream, segment, offset, framed length. Travels in Flink's
 * checkpoint metadata as a {@link ByteStreamStateHandle} (a type the metadata format knows) whose
 * name is unique per event and whose bytes are this locator: the handle is a pointer, never the
 * changes themselves.
 */
final class Locator {
  final String stream;
  final long segmentId;
  final long offset;
  final int framedBytes;

  Locator(String stream, long segmentId, long offset, int framedBytes) {
    this.stream = stream;
    this.segmentId = segmentId;
    this.offset = offset;
    this.framedBytes = framedBytes;
  }

  ByteStreamStateHandle toHandle() {
    ByteArrayOutputStream bytes = new ByteArrayOutputStream();
    try (DataOutputStream out = new DataOutputStream(bytes)) {
      out.writeByte(1);
      out.writeUTF(stream);
      out.writeLong(segmentId);
      out.writeLong(offset);
      out.writeInt(framedBytes);
    } catch (IOException e) {
      throw new IllegalStateException("writing to memory", e);
    }
    String name = "aquifer:" + stream + ":" + Long.toUnsignedString(segmentId) + ":" + offset;
    return new ByteStreamStateHandle(name, bytes.toByteArray());
  }

  static Locator fromHandle(ByteStreamStateHandle handle) throws IOException {
    try (DataInputStream in = new DataInputStream(new ByteArrayInputStream(handle.getData()))) {
      if (in.readByte() != 1) {
        throw new IOException("changelog handle " + handle.getHandleName() + " is not one this storage wrote");
      }
      return new Locator(in.readUTF(), in.readLong(), in.readLong(), in.readInt());
    }
  }

  @Override
  public String toString() {
    return stream + " segment " + Long.toUnsignedString(segmentId) + " at " + offset;
  }
}
