package io.aquifer.flink.source;

import io.aquifer.client.AquiferClient;
import io.aquifer.client.StreamCut;
import io.aquifer.client.StreamName;
import java.util.Objects;
import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.connector.source.Boundedness;
import org.apache.flink.api.connector.source.Source;
import org.apache.flink.api.connector.source.SourceReader;
import org.apache.flink.api.connector.source.SourceReaderContext;
import org.apache.flink.api.connector.source.SplitEnumerator;
import org.apache.flink.api.connector.source.SplitEnumeratorContext;
import org.apache.flink.api.java.typeutils.ResultTypeQueryable;
import org.apache.flink.core.io.SimpleVersionedSerializer;
import org.apache.flink.metrics.MetricGroup;
import org.apache.flink.util.UserCodeClassLoader;

/**
 * A FLIP-27 source over one Aquifer stream. Splits are segments; each split's offset is in Flink's
 * checkpoint. Unbounded (tailing from the head, the tail or a cut; a sealed stream read to its
 * end finishes it) or bounded between two cuts (batch execution works).
 *
 * <pre>{@code
 * AquiferSource<String> source = AquiferSource.<String>builder()
 *     .address("127.0.0.1:7450")
 *     .stream("analytics/clicks")
 *     .startFromHead()
 *     .deserializer(AquiferDeserializer.utf8())
 *     .build();
 * env.fromSource(source, WatermarkStrategy.noWatermarks(), "clicks");
 * }</pre>
 */
public final class AquiferSource<T>
    implements Source<T, AquiferSplit, AquiferEnumeratorState>, ResultTypeQueryable<T> {
  private static final long serialVersionUID = 1L;

  private final String address;
  private final StreamName stream;
  private final Positions.Start start;
  private final Positions.End end;
  private final AquiferDeserializer<T> deserializer;

  private AquiferSource(Builder<T> b) {
    this.address = Objects.requireNonNull(b.address, "address");
    this.stream = Objects.requireNonNull(b.stream, "stream");
    this.start = b.start;
    this.end = b.end;
    this.deserializer = Objects.requireNonNull(b.deserializer, "deserializer");
  }

  public static <T> Builder<T> builder() {
    return new Builder<>();
  }

  @Override
  public Boundedness getBoundedness() {
    return end == null ? Boundedness.CONTINUOUS_UNBOUNDED : Boundedness.BOUNDED;
  }

  @Override
  public SourceReader<T, AquiferSplit> createReader(SourceReaderContext context) throws Exception {
    deserializer.open(
        new DeserializationSchema.InitializationContext() {
          @Override
          public MetricGroup getMetricGroup() {
            return context.metricGroup().addGroup("deserializer");
          }

          @Override
          public UserCodeClassLoader getUserCodeClassLoader() {
            return context.getUserCodeClassLoader();
          }
        });
    AquiferClient client = AquiferClient.connect(address);
    return new AquiferSourceReader<>(client, new ReaderLag(client, stream), deserializer, context);
  }

  @Override
  public SplitEnumerator<AquiferSplit, AquiferEnumeratorState> createEnumerator(
      SplitEnumeratorContext<AquiferSplit> context) {
    return new AquiferEnumerator(context, AquiferClient.connect(address), stream, start, end, null);
  }

  @Override
  public SplitEnumerator<AquiferSplit, AquiferEnumeratorState> restoreEnumerator(
      SplitEnumeratorContext<AquiferSplit> context, AquiferEnumeratorState checkpoint) {
    return new AquiferEnumerator(
        context, AquiferClient.connect(address), stream, start, end, checkpoint);
  }

  @Override
  public SimpleVersionedSerializer<AquiferSplit> getSplitSerializer() {
    return AquiferSplitSerializer.INSTANCE;
  }

  @Override
  public SimpleVersionedSerializer<AquiferEnumeratorState> getEnumeratorCheckpointSerializer() {
    return AquiferEnumeratorState.Serializer.INSTANCE;
  }

  @Override
  public TypeInformation<T> getProducedType() {
    return deserializer.getProducedType();
  }

  /** Builds an {@link AquiferSource}; address, stream and deserializer are required. */
  public static final class Builder<T> {
    private String address = "127.0.0.1:7450";
    private StreamName stream;
    private Positions.Start start = Positions.Start.head();
    private Positions.End end;
    private AquiferDeserializer<T> deserializer;

    /** A node of the cluster, HOST:PORT. Default: 127.0.0.1:7450. */
    public Builder<T> address(String address) {
      this.address = address;
      return this;
    }

    /** SCOPE/STREAM. */
    public Builder<T> stream(String name) {
      this.stream = StreamName.parse(name);
      return this;
    }

    /** Start at the stream's head (the default). */
    public Builder<T> startFromHead() {
      this.start = Positions.Start.head();
      return this;
    }

    /** Start at the stream's tail as of the job's first start: only newer events. */
    public Builder<T> startFromTail() {
      this.start = Positions.Start.tail();
      return this;
    }

    /** Start at a stream cut (`aquifer stream cut`, or {@code AquiferClient.tailCut}). */
    public Builder<T> startFromCut(StreamCut cut) {
      this.start = Positions.Start.cut(cut);
      return this;
    }

    /** Bounded: end at the stream's tail as of the job's first start. */
    public Builder<T> boundedAtTail() {
      this.end = Positions.End.tail();
      return this;
    }

    /** Bounded: end at a stream cut (segments after it are not read). */
    public Builder<T> boundedAt(StreamCut cut) {
      this.end = Positions.End.cut(cut);
      return this;
    }

    public Builder<T> deserializer(AquiferDeserializer<T> deserializer) {
      this.deserializer = deserializer;
      return this;
    }

    /** The payload through one of Flink's formats. */
    public Builder<T> valueOnly(DeserializationSchema<T> schema) {
      this.deserializer = AquiferDeserializer.valueOnly(schema);
      return this;
    }

    public AquiferSource<T> build() {
      return new AquiferSource<>(this);
    }
  }
}
