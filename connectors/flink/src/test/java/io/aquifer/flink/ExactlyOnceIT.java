package io.aquifer.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.aquifer.client.StreamName;
import io.aquifer.flink.source.AquiferSource;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichMapFunction;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.util.Collector;
import org.junit.jupiter.api.Test;

/** Test 1: a keyed count from an Aquifer stream to an Aquifer stream, exactly once through a failure. */
class ExactlyOnceIT extends AquiferFlinkTestBase {
  static final AtomicBoolean FAILED = new AtomicBoolean();
  static final AtomicLong SEEN = new AtomicLong();

  /** Counts per key: emits "key,count" for every event. */
  static final class CountPerKey extends KeyedProcessFunction<String, String, String> {
    private transient ValueState<Long> count;

    @Override
    public void open(OpenContext context) {
      count = getRuntimeContext().getState(new ValueStateDescriptor<>("count", Types.LONG));
    }

    @Override
    public void processElement(String line, Context ctx, Collector<String> out) throws Exception {
      long n = count.value() == null ? 1 : count.value() + 1;
      count.update(n);
      out.collect(ctx.getCurrentKey() + "," + n);
    }
  }

  /** Fails the job once, after {@code after} records went through it (over every attempt). */
  static final class FailOnce extends RichMapFunction<String, String> {
    private final long after;

    FailOnce(long after) {
      this.after = after;
    }

    @Override
    public String map(String value) {
      if (SEEN.incrementAndGet() == after && FAILED.compareAndSet(false, true)) {
        throw new IllegalStateException("induced failure after " + after + " records");
      }
      return value;
    }
  }

  @Test
  void aKeyedCountIsExactlyOnceThroughAFailure() throws Exception {
    StreamName in = new StreamName("eo", "in");
    StreamName out = new StreamName("eo", "out");
    client.createStream(in, 4);
    client.createStream(out, 2);
    int keys = 20;
    int perKey = 500;
    writeSequences(in, keys, 0, perKey);

    StreamExecutionEnvironment env = checkpointedEnv(2);
    AquiferSource<String> source =
        utf8Source(in, true);
    env.fromSource(source, WatermarkStrategy.noWatermarks(), "aquifer")
        .keyBy(line -> line.split(",")[0])
        .process(new CountPerKey())
        .map(new FailOnce(keys * perKey / 2))
        .sinkTo(
            keyedExactlyOnceSink(out, "eo-count"));
    env.execute("exactly-once count");

    assertTrue(FAILED.get(), "the induced failure happened");
    List<String> lines = scanWithCli(out);
    Map<String, List<Long>> counts = byKey(lines);
    assertEquals(keys, counts.size());
    for (Map.Entry<String, List<Long>> e : counts.entrySet()) {
      List<Long> c = e.getValue();
      assertEquals(perKey, c.size(), "key " + e.getKey() + ": every count exactly once");
      for (int i = 0; i < perKey; i++) {
        assertEquals(i + 1, c.get(i), "key " + e.getKey() + ": counts in order, no gap, no repeat");
      }
    }
    assertEquals(keys * perKey, lines.size());
    // Nothing left open: what the failed attempt began was aborted on restore.
    long open =
        client.transactions(out, Duration.ofMinutes(1)).list().stream()
            .filter(t -> t.getState() == io.aquifer.proto.v1.TransactionState.TRANSACTION_STATE_OPEN)
            .count();
    assertEquals(0, open, "no transaction left open");
  }
}
