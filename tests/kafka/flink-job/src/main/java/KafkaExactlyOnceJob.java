// Flink's own Kafka connector against Aquifer's Kafka listener: a KafkaSource
// (read_committed, bounded at the input's end) through a map that fails once
// on purpose, 150 records after two checkpoints completed (so records of an
// open transaction were sent, which a sink without transactions would leave
// behind as duplicates), into a KafkaSink with
// DeliveryGuarantee.EXACTLY_ONCE (Kafka transactions). Flink restarts from
// the last checkpoint: the sink resumes and commits the transactions that
// checkpoint prepared, aborts what the failed attempt left open, and the
// source rereads from its checkpointed offsets. tests/e2e_kafka.rs then reads
// the output topic: every input record exactly once.
//
//   java -cp CLASSPATH KafkaExactlyOnceJob BOOTSTRAP IN_TOPIC OUT_TOPIC
//
// Prints "FAILED ON PURPOSE" when it fails and "DONE" when the job finished.

import java.time.Duration;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.api.common.serialization.SimpleStringSchema;
import org.apache.flink.api.common.state.CheckpointListener;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.JobManagerOptions;
import org.apache.flink.configuration.RestOptions;
import org.apache.flink.configuration.RestartStrategyOptions;
import org.apache.flink.configuration.TaskManagerOptions;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.connector.kafka.sink.KafkaSink;
import org.apache.flink.connector.kafka.source.KafkaSource;
import org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer;
import org.apache.flink.core.execution.CheckpointingMode;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;

public final class KafkaExactlyOnceJob {
  /** Checkpoints completed in this JVM (the MiniCluster's tasks share it). */
  static final AtomicInteger CHECKPOINTS = new AtomicInteger();
  /** Whether the failure happened: once per run, so the restart goes through. */
  static final AtomicBoolean FAILED = new AtomicBoolean();
  /** Records passed on since the second checkpoint completed. */
  static final AtomicInteger SINCE = new AtomicInteger();
  /** Records after the second checkpoint at which the job fails: well inside
   *  one checkpoint interval at 1 ms per record. */
  static final int FAIL_AFTER = 150;

  /** Passes records on, slowly enough for checkpoints; fails once (above). */
  static final class FailOnce implements MapFunction<String, String>, CheckpointListener {
    @Override
    public String map(String value) throws Exception {
      Thread.sleep(1);
      if (CHECKPOINTS.get() >= 2
          && SINCE.incrementAndGet() >= FAIL_AFTER
          && FAILED.compareAndSet(false, true)) {
        System.out.println("FAILED ON PURPOSE");
        throw new RuntimeException("failure induced by the test");
      }
      return value;
    }

    @Override
    public void notifyCheckpointComplete(long checkpointId) {
      CHECKPOINTS.incrementAndGet();
    }
  }

  public static void main(String[] args) throws Exception {
    if (args.length != 3) {
      System.err.println("usage: KafkaExactlyOnceJob BOOTSTRAP IN_TOPIC OUT_TOPIC");
      System.exit(2);
    }
    String bootstrap = args[0];
    Configuration conf = new Configuration();
    // Loopback only.
    conf.set(RestOptions.BIND_ADDRESS, "127.0.0.1");
    conf.set(RestOptions.ADDRESS, "127.0.0.1");
    conf.set(RestOptions.BIND_PORT, "0");
    conf.set(JobManagerOptions.ADDRESS, "127.0.0.1");
    conf.set(JobManagerOptions.BIND_HOST, "127.0.0.1");
    conf.set(TaskManagerOptions.HOST, "127.0.0.1");
    conf.set(TaskManagerOptions.BIND_HOST, "127.0.0.1");
    conf.set(RestartStrategyOptions.RESTART_STRATEGY, "fixed-delay");
    conf.set(RestartStrategyOptions.RESTART_STRATEGY_FIXED_DELAY_ATTEMPTS, 3);
    conf.set(RestartStrategyOptions.RESTART_STRATEGY_FIXED_DELAY_DELAY, Duration.ofMillis(500));
    StreamExecutionEnvironment env = StreamExecutionEnvironment.createLocalEnvironment(2, conf);
    env.enableCheckpointing(300, CheckpointingMode.EXACTLY_ONCE);

    KafkaSource<String> source =
        KafkaSource.<String>builder()
            .setBootstrapServers(bootstrap)
            .setTopics(args[1])
            .setGroupId("flink-exactly-once")
            .setStartingOffsets(OffsetsInitializer.earliest())
            .setBounded(OffsetsInitializer.latest())
            .setProperty("isolation.level", "read_committed")
            .setValueOnlyDeserializer(new SimpleStringSchema())
            .build();
    KafkaSink<String> sink =
        KafkaSink.<String>builder()
            .setBootstrapServers(bootstrap)
            .setRecordSerializer(
                KafkaRecordSerializationSchema.builder()
                    .setTopic(args[2])
                    .setValueSerializationSchema(new SimpleStringSchema())
                    .build())
            .setDeliveryGuarantee(DeliveryGuarantee.EXACTLY_ONCE)
            .setTransactionalIdPrefix("aquifer-e2e-" + System.currentTimeMillis())
            .setProperty("transaction.timeout.ms", "60000")
            .build();
    env.fromSource(source, WatermarkStrategy.noWatermarks(), "kafka-in")
        .map(new FailOnce())
        .name("fail-once")
        .sinkTo(sink)
        .name("kafka-out");
    env.execute("kafka-exactly-once");
    System.out.println("DONE");
  }
}
