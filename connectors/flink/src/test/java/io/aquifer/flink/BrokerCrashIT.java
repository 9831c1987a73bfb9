package io.aquifer.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.aquifer.client.StreamName;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.junit.jupiter.api.Test;

/**
 * The Aquifer node is killed with SIGKILL and restarted while an exactly-once job reads from it
 * and writes to it: readers, transactional writers and commits ride it out, and the output holds
 * every event once, in per-key order.
 */
class BrokerCrashIT extends AquiferFlinkTestBase {
  static final AtomicLong SEEN = new AtomicLong();

  static final class Slow implements MapFunction<String, String> {
    @Override
    public String map(String value) throws Exception {
      if (SEEN.incrementAndGet() % 20 == 0) {
        Thread.sleep(2);
      }
      return value;
    }
  }

  @Test
  void anExactlyOnceJobRidesOutAKill9OfTheNode() throws Exception {
    StreamName in = new StreamName("crash", "in");
    StreamName out = new StreamName("crash", "out");
    client.createStream(in, 2);
    client.createStream(out, 2);
    int keys = 10;
    int perKey = 1000;
    writeSequences(in, keys, 0, perKey);

    StreamExecutionEnvironment env = checkpointedEnv(2);
    env.fromSource(
            utf8Source(in, true),
            WatermarkStrategy.noWatermarks(),
            "aquifer")
        .map(new Slow())
        .sinkTo(
            keyedExactlyOnceSink(out, "crash"));
    CompletableFuture<Void> job =
        executeAsync(env, "broker crash");
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
    while (SEEN.get() < keys * perKey / 3 && System.nanoTime() < deadline) {
      Thread.sleep(10);
    }
    assertTrue(SEEN.get() < keys * perKey, "the kill comes mid-job");
    server.crashAndRestart();
    job.get(180, TimeUnit.SECONDS);

    List<String> lines = scanWithCli(out);
    assertEquals(keys * perKey, lines.size(), "every event exactly once");
    Map<String, List<Long>> seqs = byKey(lines);
    for (Map.Entry<String, List<Long>> e : seqs.entrySet()) {
      List<Long> s = e.getValue();
      assertEquals(perKey, s.size());
      for (int i = 0; i < s.size(); i++) {
        assertEquals(i, s.get(i), "key " + e.getKey() + " in order, no gap, no repeat");
      }
    }
  }
}
