package io.aquifer.flink.source;

import io.aquifer.client.Event;
import org.apache.flink.api.connector.source.SourceOutput;
import org.apache.flink.connector.base.source.reader.RecordEmitter;
import org.apache.flink.util.Collector;

/** Deserializes one event and moves its split's offset past it (what the checkpoint records). */
final class AquiferRecordEmitter<T> implements RecordEmitter<Event, T, AquiferSplitState> {
  private final AquiferDeserializer<T> deserializer;
  private final ReaderLag lag;
  private final OutputCollector<T> collector = new OutputCollector<>();

  AquiferRecordEmitter(AquiferDeserializer<T> deserializer, ReaderLag lag) {
    this.deserializer = deserializer;
    this.lag = lag;
  }

  @Override
  public void emitRecord(Event event, SourceOutput<T> output, AquiferSplitState state)
      throws Exception {
    collector.output = output;
    deserializer.deserialize(event, collector);
    state.advanceTo(event.nextOffset());
    lag.emitted(event.framedBytes());
  }

  private static final class OutputCollector<T> implements Collector<T> {
    SourceOutput<T> output;

    @Override
    public void collect(T record) {
      output.collect(record);
    }

    @Override
    public void close() {}
  }
}
