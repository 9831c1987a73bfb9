package io.aquifer.flink.source;

import java.io.IOException;
import java.nio.ByteBuffer;
import org.apache.flink.core.io.SimpleVersionedSerializer;

/** Version 1: segment id, offset, end offset, 8 bytes each. */
public final class AquiferSplitSerializer implements SimpleVersionedSerializer<AquiferSplit> {
  public static final AquiferSplitSerializer INSTANCE = new AquiferSplitSerializer();

  @Override
  public int getVersion() {
    return 1;
  }

  @Override
  public byte[] serialize(AquiferSplit split) {
    return ByteBuffer.allocate(24)
        .putLong(split.segmentId())
        .putLong(split.offset())
        .putLong(split.endOffset())
        .array();
  }

  @Override
  public AquiferSplit deserialize(int version, byte[] bytes) throws IOException {
    if (version != 1 || bytes.length != 24) {
      throw new IOException("an Aquifer split of version " + version + " and " + bytes.length + " bytes is not one this connector wrote");
    }
    ByteBuffer in = ByteBuffer.wrap(bytes);
    return new AquiferSplit(in.getLong(), in.getLong(), in.getLong());
  }
}
