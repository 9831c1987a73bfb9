package io.aquifer.flink.changelog;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.aquifer.client.AquiferClient;
import io.aquifer.client.AquiferServer;
import io.aquifer.client.EventWriter;
import io.aquifer.client.StreamName;
import io.aquifer.client.WriterConfig;
import io.aquifer.flink.sink.AquiferSink;
import io.aquifer.flink.source.AquiferDeserializer;
import io.aquifer.flink.source.AquiferSource;
import io.aquifer.proto.v1.SegmentInfo;
import io.aquifer.proto.v1.StreamInfo;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichMapFunction;
import org.apache.flink.api.common.serialization.SimpleStringSchema;
import org.apache.flink.api.common.state.CheckpointListener;
import org.apache.flink.api.common.state.MapState;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.core.execution.JobClient;
import org.apache.flink.runtime.testutils.MiniClusterResourceConfiguration;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink;
import org.apache.flink.test.junit5.MiniClusterExtension;
import org.apache.flink.util.Collector;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

/**
 * Flink's changelog state backend with {@code state.changelog.storage: aquifer} on a
 * MiniCluster: exact state through a failure restored from the changelog, and materialization
 * freeing the changelog's space.
 */
class ChangelogJobIT {
  static final AquiferServer SERVER = startServer();
  static final Path CHECKPOINTS = tempDir();

  @RegisterExtension
  static final MiniClusterExtension MINI =
      new MiniClusterExtension(
          new MiniClusterResourceConfiguration.Builder()
              .setConfiguration(clusterConfig())
              .setNumberTaskManagers(1)
              .setNumberSlotsPerTaskManager(4)
              .build());

  static AquiferServer startServer() {
    try {
      return AquiferServer.start();
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  static Path tempDir() {
    try {
      return Files.createTempDirectory("aquifer-changelog-checkpoints-");
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  static Configuration clusterConfig() {
    Configuration c = new Configuration();
    c.setString("state.backend.type", "hashmap");
    c.setString("state.changelog.enabled", "true");
    c.setString("state.changelog.storage", "aquifer");
    c.set(AquiferChangelogOptions.ADDRESS, SERVER.address());
    c.setString("execution.checkpointing.dir", CHECKPOINTS.toUri().toString());
    c.setString("restart-strategy.type", "fixed-delay");
    c.setString("restart-strategy.fixed-delay.attempts", "3");
    c.setString("restart-strategy.fixed-delay.delay", "200 ms");
    return c;
  }

  @AfterAll
  static void stop() {
    SERVER.close();
  }

  static final AtomicBoolean FAILED = new AtomicBoolean();
  static final java.util.concurrent.atomic.AtomicInteger COMPLETED =
      new java.util.concurrent.atomic.AtomicInteger();
  static final AtomicLong SEEN = new AtomicLong();

  /** Per key: a count (ValueState) and every payload seen (MapState, ~1 KiB each). */
  static final class CountAndKeep extends KeyedProcessFunction<String, String, String> {
    private transient ValueState<Long> count;
    private transient MapState<Long, byte[]> kept;

    @Override
    public void open(OpenContext context) {
      count = getRuntimeContext().getState(new ValueStateDescriptor<>("count", Types.LONG));
      kept =
          getRuntimeContext()
              .getMapState(
                  new MapStateDescriptor<Long, byte[]>(
                      "kept",
                      org.apache.flink.api.common.typeinfo.BasicTypeInfo.LONG_TYPE_INFO,
                      org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo
                          .BYTE_PRIMITIVE_ARRAY_TYPE_INFO));
    }

    @Override
    public void processElement(String line, Context ctx, Collector<String> out) throws Exception {
      long n = count.value() == null ? 1 : count.value() + 1;
      count.update(n);
      byte[] blob = new byte[1024];
      blob[0] = (byte) n;
      kept.put(n, blob);
      int size = 0;
      for (Long ignored : kept.keys()) {
        size++;
      }
      out.collect(ctx.getCurrentKey() + "," + n + "," + size);
    }
  }

  /** Fails once, after N records and some completed checkpoints. */
  static final class FailAfterACheckpoint extends RichMapFunction<String, String>
      implements CheckpointListener {
    private final long after;
    private final int checkpoints;

    FailAfterACheckpoint(long after, int checkpoints) {
      this.after = after;
      this.checkpoints = checkpoints;
    }

    @Override
    public String map(String value) throws Exception {
      if (SEEN.incrementAndGet() >= after
          && COMPLETED.get() >= checkpoints
          && FAILED.compareAndSet(false, true)) {
        throw new IllegalStateException("induced failure: restore from the changelog");
      }
      return value;
    }

    @Override
    public void notifyCheckpointComplete(long checkpointId) {
      COMPLETED.incrementAndGet();
    }
  }

  static long changelogBytes(AquiferClient client, long[] headOut) {
    long held = 0;
    for (StreamInfo s : client.listStreams("flink-changelog")) {
      for (SegmentInfo seg : s.getSegmentsList()) {
        held += seg.getLength() - seg.getHeadOffset();
        headOut[0] = Math.max(headOut[0], seg.getHeadOffset());
      }
    }
    return held;
  }

  @Test
  void stateIsExactAfterARestoreFromTheChangelog() throws Exception {
    // Never materialized during the test: the restore replays the changelog alone.
    exactStateThroughAFailure("10 min", "a", 1);
  }

  @Test
  void stateIsExactAfterARestoreFromAMaterializationAndTheTruncatedChangelog() throws Exception {
    // Materialized every second and the changelog truncated behind it: the restore reads the
    // materialized state plus the changes after it, which truncation must have kept.
    String job = exactStateThroughAFailure("1 s", "b", 6);
    try (AquiferClient client = AquiferClient.connect(SERVER.address())) {
      long head = 0;
      for (StreamInfo s : client.listStreams("flink-changelog")) {
        if (s.getName().getStream().startsWith(job)) {
          for (SegmentInfo seg : s.getSegmentsList()) {
            head = Math.max(head, seg.getHeadOffset());
          }
        }
      }
      assertTrue(head > 0, "the changelog was truncated behind a materialization");
    }
  }

  /** Runs the job through one induced failure; returns its job id (hex). */
  private String exactStateThroughAFailure(String materialize, String name, int checkpoints)
      throws Exception {
    FAILED.set(false);
    COMPLETED.set(0);
    SEEN.set(0);
    try (AquiferClient client = AquiferClient.connect(SERVER.address())) {
      StreamName in = new StreamName("cl", "in-" + name);
      StreamName out = new StreamName("cl", "out-" + name);
      client.createStream(in, 2);
      client.createStream(out, 2);
      int keys = 20;
      int perKey = 600;

      Configuration job = new Configuration();
      job.setString("state.changelog.periodic-materialize.interval", materialize);
      StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment(job);
      env.setParallelism(2);
      env.enableCheckpointing(500);
      // Tails the input, which is written while the job runs and then sealed (which ends it).
      env.fromSource(
              AquiferSource.<String>builder()
                  .address(SERVER.address())
                  .stream(in.toString())
                  .deserializer(AquiferDeserializer.utf8())
                  .build(),
              WatermarkStrategy.noWatermarks(),
              "aquifer")
          .keyBy(line -> line.split(",")[0])
          .process(new CountAndKeep())
          .map(new FailAfterACheckpoint(keys * perKey / 2, checkpoints))
          .sinkTo(
              AquiferSink.<String>builder()
                  .address(SERVER.address())
                  .stream(out.toString())
                  .serializer(new SimpleStringSchema())
                  .keySelector(line -> line.split(",")[0])
                  .deliveryGuarantee(DeliveryGuarantee.EXACTLY_ONCE)
                  .transactionalIdPrefix("changelog-it-" + name)
                  .build());
      JobClient running = env.executeAsync("changelog exact state");
      try (EventWriter w = client.writer(in, new WriterConfig())) {
        for (int seq = 0; seq < perKey; seq++) {
          for (int k = 0; k < keys; k++) {
            w.write("k" + k, ("k" + k + "," + seq).getBytes(StandardCharsets.UTF_8));
          }
          if (seq % 10 == 0) {
            w.flush();
            Thread.sleep(100);
          }
        }
      }
      client.sealStream(in);
      running.getJobExecutionResult().get(120, java.util.concurrent.TimeUnit.SECONDS);
      assertTrue(FAILED.get(), "the job failed once after a checkpoint and restored");

      long[] head = {0};
      assertTrue(changelogBytes(client, head) > 0, "state changes went to the aquifer changelog");
      Map<String, List<long[]>> byKey = new HashMap<>();
      for (String line : SERVER.cli("scan", out.toString()).split("\n")) {
        if (line.isEmpty()) {
          continue;
        }
        String[] f = line.split(",");
        byKey
            .computeIfAbsent(f[0], k -> new ArrayList<>())
            .add(new long[] {Long.parseLong(f[1]), Long.parseLong(f[2])});
      }
      assertEquals(keys, byKey.size());
      for (Map.Entry<String, List<long[]>> e : byKey.entrySet()) {
        List<long[]> rows = e.getValue();
        assertEquals(perKey, rows.size(), "key " + e.getKey() + ": one row per event");
        for (int i = 0; i < perKey; i++) {
          assertEquals(i + 1, rows.get(i)[0], "key " + e.getKey() + ": the count restored exactly");
          assertEquals(i + 1, rows.get(i)[1], "key " + e.getKey() + ": the map state restored exactly");
        }
      }
      return running.getJobID().toHexString();
    }
  }

  @Test
  void materializationFreesTheChangelog() throws Exception {
    try (AquiferClient client = AquiferClient.connect(SERVER.address())) {
      StreamName in = new StreamName("cl", "tailed");
      client.createStream(in, 1);
      Configuration job = new Configuration();
      job.setString("state.changelog.periodic-materialize.interval", "1 s");
      StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment(job);
      env.setParallelism(1);
      env.enableCheckpointing(300);
      env.fromSource(
              AquiferSource.<String>builder()
                  .address(SERVER.address())
                  .stream(in.toString())
                  .deserializer(AquiferDeserializer.utf8())
                  .build(),
              WatermarkStrategy.noWatermarks(),
              "aquifer")
          .keyBy(line -> line.split(",")[0])
          .process(new CountAndKeep())
          .sinkTo(new DiscardingSink<>());
      JobClient running = env.executeAsync("changelog materialization");
      long peak = 0;
      long[] head = {0};
      long deadline = System.nanoTime() + Duration.ofSeconds(60).toNanos();
      long baseline = changelogBytes(client, new long[] {0});
      try {
        int round = 0;
        while (System.nanoTime() < deadline) {
          try (EventWriter w = client.writer(in, new WriterConfig())) {
            for (int i = 0; i < 200; i++) {
              w.write("k" + (i % 10), ("k" + (i % 10) + "," + round).getBytes(StandardCharsets.UTF_8));
            }
            w.flush();
          }
          round++;
          Thread.sleep(100);
          long held = changelogBytes(client, head) - baseline;
          peak = Math.max(peak, held);
          if (head[0] > 0 && held < peak / 2 && round > 30) {
            break;
          }
        }
      } finally {
        running.cancel().get();
      }
      long held = changelogBytes(client, head) - baseline;
      assertTrue(head[0] > 0, "materialization truncated the changelog (head " + head[0] + ")");
      assertTrue(held < peak, "its storage use dropped: held " + held + " of a peak of " + peak);
    }
  }
}
