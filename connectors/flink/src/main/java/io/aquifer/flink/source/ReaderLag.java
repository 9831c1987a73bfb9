package io.aquifer.flink.source;

import io.aquifer.client.AquiferClient;
import io.aquifer.client.StreamName;
import io.aquifer.proto.v1.SegmentInfo;
import java.util.concurrent.ConcurrentHashMap;

/**
 * How far a source reader's emitted events are behind its segments' ends, for FLIP-33's {@code
 * pendingBytes} and {@code pendingRecords} (bytes / the average framed event size emitted so
 * far). Segment lengths are refreshed by a describe at most once a second, in the metric
 * reporter's thread; offsets are the splits' own (what the checkpoint would record).
 */
final class ReaderLag {
  private static final long REFRESH_MS = 1_000;

  private final AquiferClient client;
  private final StreamName stream;
  private final ConcurrentHashMap<Long, AquiferSplitState> splits = new ConcurrentHashMap<>();
  private final ConcurrentHashMap<Long, Long> lengths = new ConcurrentHashMap<>();
  /** Written by the emitting thread only. */
  private volatile long eventsEmitted;
  private volatile long bytesEmitted;
  private volatile long refreshedAt;

  ReaderLag(AquiferClient client, StreamName stream) {
    this.client = client;
    this.stream = stream;
  }

  void track(long segmentId, AquiferSplitState state) {
    splits.put(segmentId, state);
  }

  void remove(long segmentId) {
    splits.remove(segmentId);
    lengths.remove(segmentId);
  }

  /** One event emitted (the emitting thread). */
  @SuppressWarnings("NonAtomicVolatileUpdate")
  void emitted(int framedBytes) {
    eventsEmitted++;
    bytesEmitted += framedBytes;
  }

  long pendingBytes() {
    refresh();
    long pending = 0;
    for (java.util.Map.Entry<Long, AquiferSplitState> e : splits.entrySet()) {
      long length = lengths.getOrDefault(e.getKey(), 0L);
      pending += Math.max(0, length - e.getValue().offset());
    }
    return pending;
  }

  long pendingRecords() {
    long events = eventsEmitted;
    long bytes = bytesEmitted;
    long pending = pendingBytes();
    if (events == 0 || bytes == 0) {
      // Nothing emitted yet to size events by: count bytes as the upper bound of records.
      return pending;
    }
    return pending * events / bytes;
  }

  private void refresh() {
    long now = System.currentTimeMillis();
    if (now - refreshedAt < REFRESH_MS || splits.isEmpty()) {
      return;
    }
    refreshedAt = now;
    try {
      for (SegmentInfo info : client.describeStream(stream).getSegmentsList()) {
        if (splits.containsKey(info.getSegmentId())) {
          lengths.merge(info.getSegmentId(), info.getLength(), Math::max);
        }
      }
    } catch (RuntimeException e) {
      // A metric: keep the last lengths until the next refresh.
    }
  }
}
