package io.aquifer.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.aquifer.client.AquiferClient;
import io.aquifer.client.AquiferServer;
import io.aquifer.client.StreamName;
import io.aquifer.flink.source.AquiferDeserializer;
import io.aquifer.flink.source.AquiferSource;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.function.Predicate;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.core.execution.JobClient;
import org.apache.flink.metrics.Gauge;
import org.apache.flink.metrics.Metric;
import org.apache.flink.runtime.testutils.InMemoryReporter;
import org.apache.flink.runtime.testutils.MiniClusterResourceConfiguration;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink;
import org.apache.flink.test.junit5.MiniClusterExtension;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

/**
 * FLIP-33 source metrics and the enumerator's activeSegments gauge, read through Flink's
 * in-memory reporter while a job tails a stream that a split scales.
 */
class MetricsIT {
  static final InMemoryReporter REPORTER = InMemoryReporter.createWithRetainedMetrics();

  @RegisterExtension
  static final MiniClusterExtension MINI =
      new MiniClusterExtension(
          new MiniClusterResourceConfiguration.Builder()
              .setConfiguration(REPORTER.addToConfiguration(new Configuration()))
              .setNumberTaskManagers(1)
              .setNumberSlotsPerTaskManager(2)
              .build());

  /** Slow enough that the reader lags behind what was written. */
  static final class Slow implements MapFunction<String, String> {
    @Override
    public String map(String value) throws Exception {
      Thread.sleep(1);
      return value;
    }
  }

  static List<Object> values(String name) {
    List<Object> out = new ArrayList<>();
    for (Map<String, Metric> group : REPORTER.getMetricsByGroup().values()) {
      for (Map.Entry<String, Metric> m : group.entrySet()) {
        if (m.getKey().equals(name) && m.getValue() instanceof Gauge) {
          out.add(((Gauge<?>) m.getValue()).getValue());
        }
      }
    }
    return out;
  }

  static void await(String what, Predicate<List<Object>> ok, String name) throws InterruptedException {
    long deadline = System.nanoTime() + Duration.ofSeconds(60).toNanos();
    while (!ok.test(values(name))) {
      assertTrue(System.nanoTime() < deadline, what + ": " + name + " = " + values(name));
      Thread.sleep(100);
    }
  }

  @Test
  void pendingBytesLagAndActiveSegmentsAreReported() throws Exception {
    try (AquiferServer server = AquiferServer.start();
        AquiferClient client = AquiferClient.connect(server.address())) {
      StreamName stream = new StreamName("metrics", "in");
      client.createStream(stream, 2);
      AquiferFlinkTestBaseAccess.write(client, stream, 10, 0, 500);

      StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
      env.setParallelism(1);
      AquiferSource<String> source =
          AquiferSource.<String>builder()
              .address(server.address())
              .stream(stream.toString())
              .deserializer(AquiferDeserializer.utf8())
              .build();
      env.fromSource(
              source,
              WatermarkStrategy.<String>forMonotonousTimestamps()
                  .withTimestampAssigner((line, t) -> System.currentTimeMillis() - 5_000),
              "aquifer")
          .map(new Slow())
          .sinkTo(new DiscardingSink<>());
      JobClient job = env.executeAsync("metrics");
      try {
        await("the reader lags", v -> v.stream().anyMatch(x -> ((Long) x) > 0), "pendingBytes");
        await("records pending", v -> v.stream().anyMatch(x -> ((Long) x) > 0), "pendingRecords");
        await("event-time lag", v -> v.stream().anyMatch(x -> ((Long) x) >= 5_000), "currentEmitEventTimeLag");
        await("two segments", v -> v.contains(2), "activeSegments");
        long first = client.describeStream(stream).getSegments(0).getSegmentId();
        client.splitSegment(stream, first, 2);
        await("three after a split", v -> v.contains(3), "activeSegments");
        await("caught up", v -> !v.isEmpty() && v.stream().allMatch(x -> ((Long) x) == 0), "pendingBytes");
      } finally {
        job.cancel().get();
      }
      assertEquals(3, AquiferClient.activeSegments(client.describeStream(stream)).size());
    }
  }
}
