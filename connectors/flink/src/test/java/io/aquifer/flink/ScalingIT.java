package io.aquifer.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.aquifer.client.AquiferClient;
import io.aquifer.client.StreamName;
import io.aquifer.flink.source.AquiferSource;
import io.aquifer.proto.v1.SegmentInfo;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.junit.jupiter.api.Test;

/**
 * Test 3: the source stream is split and merged while the job tails it; per-key sequence numbers
 * arrive at the sink in order, each once; sealing the stream ends the job.
 */
class ScalingIT extends AquiferFlinkTestBase {
  @Test
  void perKeyOrderHoldsWhileTheSourceSplitsAndMerges() throws Exception {
    StreamName in = new StreamName("scaling", "in");
    StreamName out = new StreamName("scaling", "out");
    client.createStream(in, 2);
    client.createStream(out, 2);
    int keys = 24;
    int rounds = 40;
    int perRound = 25;

    StreamExecutionEnvironment env = checkpointedEnv(2);
    AquiferSource<String> source =
        utf8Source(in, false);
    env.fromSource(source, WatermarkStrategy.noWatermarks(), "aquifer")
        .sinkTo(
            keyedExactlyOnceSink(out, "scaling"));
    CompletableFuture<Void> job =
        executeAsync(env, "scaling");

    // Write while the job runs: split both segments after a quarter, merge two neighbours at the
    // half, split again at three quarters; then seal, which ends the unbounded source.
    for (int r = 0; r < rounds; r++) {
      writeSequences(in, keys, r * perRound, perRound);
      if (r == rounds / 4) {
        for (SegmentInfo s : AquiferClient.activeSegments(client.describeStream(in))) {
          client.splitSegment(in, s.getSegmentId(), 2);
        }
      } else if (r == rounds / 2) {
        List<SegmentInfo> active = new ArrayList<>(AquiferClient.activeSegments(client.describeStream(in)));
        active.sort((a, b) -> Double.compare(a.getKeyLow(), b.getKeyLow()));
        client.mergeSegments(in, List.of(active.get(1).getSegmentId(), active.get(2).getSegmentId()));
      } else if (r == 3 * rounds / 4) {
        SegmentInfo widest = AquiferClient.activeSegments(client.describeStream(in)).stream()
            .max((a, b) -> Double.compare(a.getKeyHigh() - a.getKeyLow(), b.getKeyHigh() - b.getKeyLow()))
            .orElseThrow();
        client.splitSegment(in, widest.getSegmentId(), 3);
      }
      Thread.sleep(50);
    }
    client.sealStream(in);
    job.get(120, java.util.concurrent.TimeUnit.SECONDS);

    assertEquals(4, client.describeStream(in).getEpoch(), "three scales happened while it ran");
    List<String> lines = scanWithCli(out);
    Map<String, List<Long>> seqs = byKey(lines);
    assertEquals(keys, seqs.size());
    for (Map.Entry<String, List<Long>> e : seqs.entrySet()) {
      List<Long> s = e.getValue();
      assertEquals(rounds * perRound, s.size(), "key " + e.getKey() + ": every event once");
      for (int i = 0; i < s.size(); i++) {
        assertEquals(i, s.get(i), "key " + e.getKey() + ": in order across the scales");
      }
    }
    assertTrue(lines.size() == keys * rounds * perRound);
  }
}
