package io.aquifer.flink.sink;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import org.apache.flink.core.io.SimpleVersionedSerializer;

/** What the committer commits: one pre-committed transaction, by stream and id. */
public final class AquiferCommittable {
  final String stream;
  final String transactionId;

  AquiferCommittable(String stream, String transactionId) {
    this.stream = stream;
    this.transactionId = transactionId;
  }

  public String stream() {
    return stream;
  }

  public String transactionId() {
    return transactionId;
  }

  @Override
  public String toString() {
    return "transaction " + transactionId + " of " + stream;
  }

  /** Version 1: stream and id as UTF strings. */
  static final class Serializer implements SimpleVersionedSerializer<AquiferCommittable> {
    static final Serializer INSTANCE = new Serializer();

    @Override
    public int getVersion() {
      return 1;
    }

    @Override
    public byte[] serialize(AquiferCommittable c) throws IOException {
      ByteArrayOutputStream bytes = new ByteArrayOutputStream();
      try (DataOutputStream out = new DataOutputStream(bytes)) {
        out.writeUTF(c.stream);
        out.writeUTF(c.transactionId);
      }
      return bytes.toByteArray();
    }

    @Override
    public AquiferCommittable deserialize(int version, byte[] serialized) throws IOException {
      if (version != 1) {
        throw new IOException("Aquifer committable version " + version + " is unknown to this connector");
      }
      try (DataInputStream in = new DataInputStream(new ByteArrayInputStream(serialized))) {
        return new AquiferCommittable(in.readUTF(), in.readUTF());
      }
    }
  }
}
