package io.aquifer.flink.source;

import io.aquifer.client.AquiferClient;
import io.aquifer.client.Event;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.apache.flink.api.connector.source.SourceReaderContext;
import org.apache.flink.connector.base.source.reader.SingleThreadMultiplexSourceReaderBase;

/**
 * A source subtask: its splits' events, emitted in segment order with per-split watermarks
 * (Flink's split-local outputs); finished splits are reported to the enumerator once all their
 * events are emitted.
 */
final class AquiferSourceReader<T>
    extends SingleThreadMultiplexSourceReaderBase<Event, T, AquiferSplit, AquiferSplitState> {
  private final AquiferClient client;
  private final ReaderLag lag;

  AquiferSourceReader(
      AquiferClient client,
      ReaderLag lag,
      AquiferDeserializer<T> deserializer,
      SourceReaderContext context) {
    super(
        () -> new AquiferSplitReader(client),
        new AquiferRecordEmitter<>(deserializer, lag),
        context.getConfiguration(),
        context);
    this.client = client;
    this.lag = lag;
    context.metricGroup().setPendingBytesGauge(lag::pendingBytes);
    context.metricGroup().setPendingRecordsGauge(lag::pendingRecords);
  }

  @Override
  public void start() {
    // Splits are pushed by the enumerator; nothing to request.
  }

  @Override
  protected void onSplitFinished(Map<String, AquiferSplitState> finished) {
    List<Long> ids = new ArrayList<>();
    for (String id : finished.keySet()) {
      long segmentId = Long.parseUnsignedLong(id);
      ids.add(segmentId);
      lag.remove(segmentId);
    }
    context.sendSourceEventToCoordinator(new SplitsFinishedEvent(ids));
  }

  @Override
  protected AquiferSplitState initializedState(AquiferSplit split) {
    AquiferSplitState state = new AquiferSplitState(split);
    lag.track(split.segmentId(), state);
    return state;
  }

  @Override
  protected AquiferSplit toSplitType(String splitId, AquiferSplitState state) {
    return state.toSplit();
  }

  @Override
  public void close() throws Exception {
    try {
      super.close();
    } finally {
      client.close();
    }
  }
}
