package io.aquifer.flink.source;

import io.aquifer.client.StreamCut;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.apache.flink.core.io.SimpleVersionedSerializer;

/**
 * The enumerator's checkpoint: the cuts it resolved, the segments read to their end, those owned
 * by readers (their offsets are in the readers' checkpoints) and the splits not handed out yet.
 */
public final class AquiferEnumeratorState {
  /** Null until the first describe resolved it. */
  final StreamCut startCut;
  /** Null for an unbounded source. */
  final StreamCut endCut;
  final Set<Long> finished;
  final Map<Long, Integer> assigned;
  final List<AquiferSplit> pending;

  AquiferEnumeratorState(
      StreamCut startCut,
      StreamCut endCut,
      Set<Long> finished,
      Map<Long, Integer> assigned,
      List<AquiferSplit> pending) {
    this.startCut = startCut;
    this.endCut = endCut;
    this.finished = finished;
    this.assigned = assigned;
    this.pending = pending;
  }

  /** Version 1, data streams of the fields above. */
  public static final class Serializer implements SimpleVersionedSerializer<AquiferEnumeratorState> {
    public static final Serializer INSTANCE = new Serializer();

    @Override
    public int getVersion() {
      return 1;
    }

    @Override
    public byte[] serialize(AquiferEnumeratorState s) throws IOException {
      ByteArrayOutputStream bytes = new ByteArrayOutputStream();
      try (DataOutputStream out = new DataOutputStream(bytes)) {
        out.writeBoolean(s.startCut != null);
        if (s.startCut != null) {
          out.writeUTF(s.startCut.toString());
        }
        out.writeBoolean(s.endCut != null);
        if (s.endCut != null) {
          out.writeUTF(s.endCut.toString());
        }
        out.writeInt(s.finished.size());
        for (long id : s.finished) {
          out.writeLong(id);
        }
        out.writeInt(s.assigned.size());
        for (Map.Entry<Long, Integer> e : s.assigned.entrySet()) {
          out.writeLong(e.getKey());
          out.writeInt(e.getValue());
        }
        out.writeInt(s.pending.size());
        for (AquiferSplit split : s.pending) {
          out.writeLong(split.segmentId());
          out.writeLong(split.offset());
          out.writeLong(split.endOffset());
        }
      }
      return bytes.toByteArray();
    }

    @Override
    public AquiferEnumeratorState deserialize(int version, byte[] serialized) throws IOException {
      if (version != 1) {
        throw new IOException("Aquifer enumerator state version " + version + " is unknown to this connector");
      }
      try (DataInputStream in = new DataInputStream(new ByteArrayInputStream(serialized))) {
        StreamCut start = in.readBoolean() ? cut(in.readUTF()) : null;
        StreamCut end = in.readBoolean() ? cut(in.readUTF()) : null;
        Set<Long> finished = new HashSet<>();
        for (int i = in.readInt(); i > 0; i--) {
          finished.add(in.readLong());
        }
        Map<Long, Integer> assigned = new HashMap<>();
        for (int i = in.readInt(); i > 0; i--) {
          assigned.put(in.readLong(), in.readInt());
        }
        List<AquiferSplit> pending = new ArrayList<>();
        for (int i = in.readInt(); i > 0; i--) {
          pending.add(new AquiferSplit(in.readLong(), in.readLong(), in.readLong()));
        }
        return new AquiferEnumeratorState(start, end, finished, assigned, pending);
      }
    }

    private static StreamCut cut(String text) {
      return text.isEmpty() ? new StreamCut(Map.of()) : StreamCut.parse(text);
    }
  }
}
