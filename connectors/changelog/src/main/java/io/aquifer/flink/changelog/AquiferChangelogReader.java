package io.aquifer.flink.changelog;

import io.aquifer.client.AquiferClient;
import io.aquifer.client.AquiferException;
import io.aquifer.client.Event;
import io.aquifer.client.SegmentReader;
import io.aquifer.flink.changelog.ChangeFormat.Change;
import java.io.IOException;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.runtime.state.StreamStateHandle;
import org.apache.flink.runtime.state.changelog.ChangelogStateHandleStreamImpl;
import org.apache.flink.runtime.state.changelog.StateChange;
import org.apache.flink.runtime.state.changelog.StateChangelogHandleReader;
import org.apache.flink.runtime.state.memory.ByteStreamStateHandle;
import org.apache.flink.util.CloseableIterator;

/**
 * Restore: reads exactly the events a handle names (each at its segment and offset, one event
 * long, checksummed by the framing) and returns their changes from the handle's sequence number
 * on, in order; from the tail buffer, the cache or tier-2 alike. A handle whose events were
 * truncated fails with a clear error rather than restoring less.
 */
final class AquiferChangelogReader implements StateChangelogHandleReader<ChangelogStateHandleStreamImpl> {
  private final AquiferClient client;

  AquiferChangelogReader(AquiferClient client) {
    this.client = client;
  }

  @Override
  public CloseableIterator<StateChange> getChanges(ChangelogStateHandleStreamImpl handle)
      throws IOException {
    List<Tuple2<StreamStateHandle, Long>> parts = handle.getHandlesAndOffsets();
    Iterator<Tuple2<StreamStateHandle, Long>> next = parts.iterator();
    return new CloseableIterator<StateChange>() {
      private Iterator<StateChange> current = java.util.Collections.emptyIterator();

      @Override
      public boolean hasNext() {
        while (!current.hasNext() && next.hasNext()) {
          try {
            current = read(next.next()).iterator();
          } catch (IOException e) {
            throw new java.io.UncheckedIOException(e);
          }
        }
        return current.hasNext();
      }

      @Override
      public StateChange next() {
        if (!hasNext()) {
          throw new java.util.NoSuchElementException();
        }
        return current.next();
      }

      @Override
      public void close() {}
    };
  }

  private List<StateChange> read(Tuple2<StreamStateHandle, Long> part) throws IOException {
    if (!(part.f0 instanceof ByteStreamStateHandle)) {
      throw new IOException("changelog handle " + part.f0 + " is not one the aquifer storage wrote");
    }
    Locator at = Locator.fromHandle((ByteStreamStateHandle) part.f0);
    long fromSqn = part.f1;
    List<Event> events;
    try (SegmentReader r =
        client.segmentReader(at.segmentId, at.offset, at.offset + at.framedBytes, false)) {
      events = r.next();
    } catch (AquiferException e) {
      throw new IOException("reading the state changelog at " + at + " failed", e);
    }
    if (events == null || events.size() != 1 || events.get(0).framedBytes() != at.framedBytes) {
      throw new IOException("the state changelog at " + at + " is not the one event the handle names");
    }
    List<StateChange> out = new ArrayList<>();
    for (Change c : ChangeFormat.decode(events.get(0).payload())) {
      if (c.sqn < fromSqn) {
        continue;
      }
      out.add(
          c.keyGroup == StateChange.META_KEY_GROUP
              ? StateChange.ofMetadataChange(c.bytes)
              : StateChange.ofDataChange(c.keyGroup, c.bytes));
    }
    return out;
  }
}
