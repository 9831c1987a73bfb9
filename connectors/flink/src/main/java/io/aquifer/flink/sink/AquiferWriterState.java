package io.aquifer.flink.sink;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import org.apache.flink.core.io.SimpleVersionedSerializer;

/**
 * A sink subtask's state: which owner labels its transactions carry ({@code prefix/subtask/...}),
 * so a restored writer, whatever its new subtask index, aborts what that subtask left open.
 */
public final class AquiferWriterState {
  final String prefix;
  final int subtask;

  AquiferWriterState(String prefix, int subtask) {
    this.prefix = prefix;
    this.subtask = subtask;
  }

  /** Version 1: prefix, subtask. */
  static final class Serializer implements SimpleVersionedSerializer<AquiferWriterState> {
    static final Serializer INSTANCE = new Serializer();

    @Override
    public int getVersion() {
      return 1;
    }

    @Override
    public byte[] serialize(AquiferWriterState s) throws IOException {
      ByteArrayOutputStream bytes = new ByteArrayOutputStream();
      try (DataOutputStream out = new DataOutputStream(bytes)) {
        out.writeUTF(s.prefix);
        out.writeInt(s.subtask);
      }
      return bytes.toByteArray();
    }

    @Override
    public AquiferWriterState deserialize(int version, byte[] serialized) throws IOException {
      if (version != 1) {
        throw new IOException("Aquifer writer state version " + version + " is unknown to this connector");
      }
      try (DataInputStream in = new DataInputStream(new ByteArrayInputStream(serialized))) {
        return new AquiferWriterState(in.readUTF(), in.readInt());
      }
    }
  }
}
