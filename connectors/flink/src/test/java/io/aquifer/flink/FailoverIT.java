package io.aquifer.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.aquifer.client.StreamName;
import io.aquifer.flink.source.AquiferSource;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.flink.api.common.JobExecutionResult;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.RichMapFunction;
import org.apache.flink.runtime.executiongraph.AccessExecutionGraph;
import org.apache.flink.runtime.executiongraph.AccessExecutionJobVertex;
import org.apache.flink.runtime.executiongraph.AccessExecutionVertex;
import org.apache.flink.runtime.minicluster.MiniCluster;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.test.junit5.InjectMiniCluster;
import org.junit.jupiter.api.Test;

/**
 * Test 2: two independent pipelines (source → map → sink, forward edges, so two failover
 * regions). One subtask fails once: only its region restarts, its splits resume from the
 * checkpoint, the other subtask runs on untouched, and the output holds every event once.
 */
class FailoverIT extends AquiferFlinkTestBase {
  static final AtomicBoolean FAILED = new AtomicBoolean();
  static final AtomicLong SEEN_BY_ZERO = new AtomicLong();

  static final class FailSubtaskZeroOnce extends RichMapFunction<String, String> {
    private final long after;

    FailSubtaskZeroOnce(long after) {
      this.after = after;
    }

    @Override
    public String map(String value) throws Exception {
      if (getRuntimeContext().getTaskInfo().getIndexOfThisSubtask() == 0) {
        if (SEEN_BY_ZERO.incrementAndGet() >= after && FAILED.compareAndSet(false, true)) {
          throw new IllegalStateException("induced failure of subtask 0");
        }
        // Slow enough that the failure comes after a few checkpoints.
        Thread.sleep(0, 200_000);
      }
      return value;
    }
  }

  @Test
  void oneSubtaskFailsAndOnlyItsRegionRestarts(@InjectMiniCluster MiniCluster cluster)
      throws Exception {
    StreamName in = new StreamName("failover", "in");
    StreamName out = new StreamName("failover", "out");
    client.createStream(in, 4);
    client.createStream(out, 2);
    int keys = 16;
    int perKey = 1000;
    writeSequences(in, keys, 0, perKey);

    StreamExecutionEnvironment env = checkpointedEnv(2);
    AquiferSource<String> source =
        utf8Source(in, true);
    env.fromSource(source, WatermarkStrategy.noWatermarks(), "aquifer")
        .map(new FailSubtaskZeroOnce(keys * perKey / 4))
        .sinkTo(
            keyedExactlyOnceSink(out, "failover"));
    JobExecutionResult result = env.execute("region failover");
    assertTrue(FAILED.get(), "the induced failure happened");

    AccessExecutionGraph graph = cluster.getExecutionGraph(result.getJobID()).get();
    Map<Integer, Integer> attempts = new HashMap<>();
    for (AccessExecutionJobVertex v : graph.getAllVertices().values()) {
      for (AccessExecutionVertex t : v.getTaskVertices()) {
        attempts.merge(
            t.getParallelSubtaskIndex(), t.getCurrentExecutionAttempt().getAttemptNumber(), Math::max);
      }
    }
    assertEquals(1, attempts.get(0), "subtask 0's region restarted once: " + attempts);
    assertEquals(0, attempts.get(1), "subtask 1 never restarted (no global failover): " + attempts);

    List<String> lines = scanWithCli(out);
    assertEquals(keys * perKey, lines.size(), "every event exactly once");
    assertEquals(keys * perKey, lines.stream().distinct().count());
    Map<String, List<Long>> seqs = byKey(lines);
    for (Map.Entry<String, List<Long>> e : seqs.entrySet()) {
      List<Long> s = e.getValue();
      for (int i = 1; i < s.size(); i++) {
        assertTrue(s.get(i - 1) < s.get(i), "key " + e.getKey() + " in order");
      }
    }
  }
}
