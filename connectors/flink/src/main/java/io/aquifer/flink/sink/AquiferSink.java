package io.aquifer.flink.sink;

import io.aquifer.client.AquiferClient;
import io.aquifer.client.StreamName;
import java.io.IOException;
import java.time.Duration;
import java.util.Collection;
import java.util.List;
import java.util.Objects;
import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.api.connector.sink2.Committer;
import org.apache.flink.api.connector.sink2.CommitterInitContext;
import org.apache.flink.api.connector.sink2.Sink;
import org.apache.flink.api.connector.sink2.StatefulSinkWriter;
import org.apache.flink.api.connector.sink2.SupportsCommitter;
import org.apache.flink.api.connector.sink2.SupportsWriterState;
import org.apache.flink.api.connector.sink2.WriterInitContext;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.core.io.SimpleVersionedSerializer;

/**
 * A Sink V2 writing to one Aquifer stream, at least once (a batching writer flushed on every
 * checkpoint) or exactly once (one transaction per subtask per checkpoint, committed by id once
 * the checkpoint completes). Routing keys come from a key selector (null: no key).
 *
 * <pre>{@code
 * stream.sinkTo(AquiferSink.<String>builder()
 *     .address("127.0.0.1:7450")
 *     .stream("analytics/counts")
 *     .serializer(new SimpleStringSchema())
 *     .keySelector(line -> line.split(",")[0])
 *     .deliveryGuarantee(DeliveryGuarantee.EXACTLY_ONCE)
 *     .transactionalIdPrefix("counts-job")
 *     .build());
 * }</pre>
 */
public final class AquiferSink<IN>
    implements Sink<IN>,
        SupportsCommitter<AquiferCommittable>,
        SupportsWriterState<IN, AquiferWriterState> {
  private static final long serialVersionUID = 1L;

  private final String address;
  private final String stream;
  private final DeliveryGuarantee guarantee;
  private final SerializationSchema<IN> serializer;
  private final KeySelector<IN, String> keys;
  private final String prefix;
  private final Duration transactionTimeout;

  private AquiferSink(Builder<IN> b) {
    this.address = b.address;
    this.stream = Objects.requireNonNull(b.stream, "stream").toString();
    this.guarantee = b.guarantee;
    this.serializer = Objects.requireNonNull(b.serializer, "serializer");
    this.keys = b.keys;
    this.prefix = b.prefix;
    this.transactionTimeout = b.transactionTimeout;
  }

  public static <IN> Builder<IN> builder() {
    return new Builder<>();
  }

  @Override
  public AquiferSinkWriter<IN> createWriter(WriterInitContext context) throws IOException {
    return restoreWriter(context, List.of());
  }

  @Override
  public AquiferSinkWriter<IN> restoreWriter(
      WriterInitContext context, Collection<AquiferWriterState> restored) throws IOException {
    try {
      serializer.open(context.asSerializationSchemaInitializationContext());
    } catch (Exception e) {
      throw new IOException("opening the sink's serializer failed", e);
    }
    AquiferClient client = AquiferClient.connect(address);
    try {
      return new AquiferSinkWriter<>(
          client,
          StreamName.parse(stream),
          guarantee,
          serializer,
          keys,
          prefix,
          transactionTimeout,
          context.getTaskInfo().getIndexOfThisSubtask(),
          context.getTaskInfo().getNumberOfParallelSubtasks(),
          context.getRestoredCheckpointId(),
          restored);
    } catch (RuntimeException e) {
      client.close();
      throw new IOException("starting the Aquifer sink writer failed", e);
    }
  }

  @Override
  public SimpleVersionedSerializer<AquiferWriterState> getWriterStateSerializer() {
    return AquiferWriterState.Serializer.INSTANCE;
  }

  @Override
  public Committer<AquiferCommittable> createCommitter(CommitterInitContext context) {
    return new AquiferCommitter(AquiferClient.connect(address), transactionTimeout);
  }

  @Override
  public SimpleVersionedSerializer<AquiferCommittable> getCommittableSerializer() {
    return AquiferCommittable.Serializer.INSTANCE;
  }

  /** Builds an {@link AquiferSink}; stream and serializer are required. */
  public static final class Builder<IN> {
    private String address = "127.0.0.1:7450";
    private StreamName stream;
    private DeliveryGuarantee guarantee = DeliveryGuarantee.AT_LEAST_ONCE;
    private SerializationSchema<IN> serializer;
    private KeySelector<IN, String> keys;
    private String prefix = "aquifer-sink";
    private Duration transactionTimeout = Duration.ofMinutes(15);

    /** A node of the cluster, HOST:PORT. Default: 127.0.0.1:7450. */
    public Builder<IN> address(String address) {
      this.address = address;
      return this;
    }

    /** SCOPE/STREAM; the stream must exist. */
    public Builder<IN> stream(String name) {
      this.stream = StreamName.parse(name);
      return this;
    }

    /** NONE and AT_LEAST_ONCE write through a batching writer; EXACTLY_ONCE through transactions. */
    public Builder<IN> deliveryGuarantee(DeliveryGuarantee guarantee) {
      this.guarantee = guarantee;
      return this;
    }

    public Builder<IN> serializer(SerializationSchema<IN> serializer) {
      this.serializer = serializer;
      return this;
    }

    /** The routing key of each element (events of one key stay in order). Default: no key. */
    public Builder<IN> keySelector(KeySelector<IN, String> keys) {
      this.keys = keys;
      return this;
    }

    /**
     * Names this sink's transactions and writer ids; unique per job writing the stream (a new job
     * with the same prefix aborts what an old one left open). Default: aquifer-sink.
     */
    public Builder<IN> transactionalIdPrefix(String prefix) {
      if (prefix == null || prefix.isEmpty() || prefix.length() > 200 || prefix.contains("/")) {
        throw new IllegalArgumentException(
            "a transactional id prefix is 1 to 200 characters without '/': " + prefix);
      }
      this.prefix = prefix;
      return this;
    }

    /**
     * How long an exactly-once transaction lives without a ping: longer than a checkpoint interval
     * plus the longest recovery, or a restore finds it aborted. Default: 15 min (server max 24 h).
     */
    public Builder<IN> transactionTimeout(Duration timeout) {
      this.transactionTimeout = timeout;
      return this;
    }

    public AquiferSink<IN> build() {
      return new AquiferSink<>(this);
    }
  }
}
