package io.aquifer.flink;

import io.aquifer.client.AquiferClient;
import io.aquifer.client.AquiferServer;
import io.aquifer.client.StreamName;
import io.aquifer.flink.sink.AquiferSink;
import io.aquifer.flink.source.AquiferDeserializer;
import io.aquifer.flink.source.AquiferSource;
import java.time.Duration;
import java.util.concurrent.CompletableFuture;
import org.apache.flink.api.common.serialization.SimpleStringSchema;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.RestartStrategyOptions;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.apache.flink.runtime.testutils.MiniClusterResourceConfiguration;
import org.apache.flink.test.junit5.MiniClusterExtension;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.extension.RegisterExtension;

/** A real Aquifer node and a Flink MiniCluster (1 TaskManager, 4 slots) for every test class. */
public abstract class AquiferFlinkTestBase {
  @RegisterExtension
  static final MiniClusterExtension MINI =
      new MiniClusterExtension(
          new MiniClusterResourceConfiguration.Builder()
              .setNumberTaskManagers(1)
              .setNumberSlotsPerTaskManager(4)
              .build());

  protected static AquiferServer server;
  protected static AquiferClient client;

  @BeforeAll
  static void startAquifer() throws Exception {
    server = AquiferServer.start();
    client = AquiferClient.connect(server.address());
  }

  @AfterAll
  static void stopAquifer() {
    if (client != null) {
      client.close();
    }
    if (server != null) {
      server.close();
    }
  }

  /** A streaming environment checkpointing every 500 ms, restarting up to 3 times. */
  protected static StreamExecutionEnvironment checkpointedEnv(int parallelism) {
    Configuration conf = new Configuration();
    conf.set(RestartStrategyOptions.RESTART_STRATEGY, "fixed-delay");
    conf.set(RestartStrategyOptions.RESTART_STRATEGY_FIXED_DELAY_ATTEMPTS, 3);
    conf.set(RestartStrategyOptions.RESTART_STRATEGY_FIXED_DELAY_DELAY, Duration.ofMillis(200));
    StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment(conf);
    env.setParallelism(parallelism);
    env.enableCheckpointing(500);
    return env;
  }

  /** UTF-8 events of {@code in} from its head: bounded at its tail, or tailing it. */
  protected static AquiferSource<String> utf8Source(StreamName in, boolean bounded) {
    AquiferSource.Builder<String> b =
        AquiferSource.<String>builder()
            .address(server.address())
            .stream(in.toString())
            .startFromHead()
            .deserializer(AquiferDeserializer.utf8());
    return (bounded ? b.boundedAtTail() : b).build();
  }

  /** An exactly-once sink of "key,..." lines to {@code out}, keyed by the first field. */
  protected static AquiferSink<String> keyedExactlyOnceSink(StreamName out, String prefix) {
    return AquiferSink.<String>builder()
        .address(server.address())
        .stream(out.toString())
        .serializer(new SimpleStringSchema())
        .keySelector(line -> line.split(",")[0])
        .deliveryGuarantee(DeliveryGuarantee.EXACTLY_ONCE)
        .transactionalIdPrefix(prefix)
        .build();
  }

  /** Runs the job on another thread; the future fails with the job's failure. */
  protected static CompletableFuture<Void> executeAsync(StreamExecutionEnvironment env, String name) {
    return CompletableFuture.runAsync(
        () -> {
          try {
            env.execute(name);
          } catch (Exception e) {
            throw new RuntimeException(e);
          }
        });
  }

  /** Writes {@code perKey} events "key,seq" for each of {@code keys} keys, interleaved. */
  protected static void writeSequences(StreamName stream, int keys, int from, int perKey) {
    AquiferFlinkTestBaseAccess.write(client, stream, keys, from, perKey);
  }

  /** Every payload of {@code stream}, read with the Rust CLI (`aquifer scan`). */
  protected static List<String> scanWithCli(StreamName stream) throws Exception {
    List<String> out = new ArrayList<>();
    for (String line : server.cli("scan", stream.toString()).split("\n")) {
      if (!line.isEmpty()) {
        out.add(line);
      }
    }
    return out;
  }

  /** "key,value" lines grouped by key, in the order they appear (per segment, hence per key). */
  protected static Map<String, List<Long>> byKey(List<String> lines) {
    Map<String, List<Long>> out = new HashMap<>();
    for (String line : lines) {
      String[] f = line.split(",");
      out.computeIfAbsent(f[0], k -> new ArrayList<>()).add(Long.parseLong(f[1]));
    }
    return out;
  }
}
