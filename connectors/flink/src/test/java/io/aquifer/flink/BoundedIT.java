package io.aquifer.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;

import io.aquifer.client.StreamCut;
import io.aquifer.client.StreamName;
import io.aquifer.flink.source.AquiferDeserializer;
import io.aquifer.flink.source.AquiferSource;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import org.apache.flink.api.common.RuntimeExecutionMode;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.util.CloseableIterator;
import org.junit.jupiter.api.Test;

/** Test 4: batch execution between two cuts reads exactly the events written between them. */
class BoundedIT extends AquiferFlinkTestBase {
  @Test
  void batchModeBetweenTwoCutsCountsExactlyTheEventsBetween() throws Exception {
    StreamName stream = new StreamName("bounded", "events");
    client.createStream(stream, 3);
    writeSequences(stream, 10, 0, 100);
    StreamCut from = client.tailCut(stream);
    // A scale between the cuts: the range spans two epochs.
    long first = client.describeStream(stream).getSegments(0).getSegmentId();
    writeSequences(stream, 10, 100, 150);
    client.splitSegment(stream, first, 2);
    writeSequences(stream, 10, 250, 150);
    StreamCut to = client.tailCut(stream);
    writeSequences(stream, 10, 400, 100);

    StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
    env.setRuntimeMode(RuntimeExecutionMode.BATCH);
    env.setParallelism(2);
    AquiferSource<String> source =
        AquiferSource.<String>builder()
            .address(server.address())
            .stream(stream.toString())
            .startFromCut(from)
            .boundedAt(to)
            .deserializer(AquiferDeserializer.utf8())
            .build();
    List<String> seen = new ArrayList<>();
    try (CloseableIterator<String> it =
        env.fromSource(source, WatermarkStrategy.noWatermarks(), "aquifer").executeAndCollect()) {
      it.forEachRemaining(seen::add);
    }
    assertEquals(10 * 300, seen.size(), "exactly the events between the cuts");
    Set<String> expected = new HashSet<>();
    for (int k = 0; k < 10; k++) {
      for (int seq = 100; seq < 400; seq++) {
        expected.add("k" + k + "," + seq);
      }
    }
    assertEquals(expected, new HashSet<>(seen));
  }
}
