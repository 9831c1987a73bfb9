// The Flink job of benches/flink.rs: the same job over an Aquifer source
// (aquifer-flink) or a Kafka source (flink-connector-kafka), in a local
// MiniCluster of this JVM. Built by benches/peers/build-flink-job.sh.
//
//   java -cp "$(cat <classpath file>)" FlinkSourceBench --source aquifer|kafka
//       --address HOST:PORT (aquifer) | --bootstrap HOST:PORT (kafka)
//       --stream SCOPE/STREAM (aquifer) | --topic T (kafka)
//       --mode throughput|latency --events N [--parallelism P] [--timeout-secs S]
//
// The job: source (payload bytes) -> map (stateless: parse the payload's
// first 9 bytes) -> counting sink, all chained, parallelism P (default 2).
// Payload layout (written by benches/flink.rs): bytes 0..8 the writer's
// send time in ns since the Unix epoch, little-endian; byte 8 is 1 for an
// event whose latency counts, 0 for a preloaded or warm-up one; the rest is
// filler.
//
// throughput: reads the stream / topic from its head to its tail as of the
//   job's start (bounded: AquiferSource.boundedAtTail(),
//   KafkaSource.setBounded(OffsetsInitializer.latest())), expects exactly N
//   records, and reports records/s from the first record any subtask saw to
//   the last one (System.nanoTime in this JVM), and the job's wall time.
// latency: tails from the head (the stream / topic is fresh, so no event can
//   be missed whenever the writer starts) until N events with the flag set
//   were seen, then cancels the job; each such event's end-to-end latency is
//   the sink's wall clock (Instant.now) minus its send time, same machine,
//   same clock. Percentiles over all N.
//
// stdout (everything else, Flink's own log included, goes to stderr):
//   READY                    once the job was submitted
//   FIRST                    once the first record reached a sink (latency)
//   RESULT source=.. mode=.. records=.. seconds=.. rps=.. job_seconds=..
//          [measured=.. p50_ms=.. p99_ms=.. p999_ms=.. max_ms=..] [cpu_s=..] per_subtask=a/b
// (seconds: first to last record; job_seconds: submission to the end; cpu_s,
// throughput mode: this JVM's CPU time from the first record to the last
// subtask's end, all threads.)
// On any failure or timeout: a message on stderr and exit status 1.

import io.aquifer.client.Event;
import io.aquifer.flink.source.AquiferDeserializer;
import io.aquifer.flink.source.AquiferSource;
import java.io.IOException;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.LongAdder;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.connector.sink2.Sink;
import org.apache.flink.api.connector.sink2.SinkWriter;
import org.apache.flink.api.connector.sink2.WriterInitContext;
import org.apache.flink.api.connector.source.Source;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.JobManagerOptions;
import org.apache.flink.configuration.RestOptions;
import org.apache.flink.configuration.TaskManagerOptions;
import org.apache.flink.connector.kafka.source.KafkaSource;
import org.apache.flink.connector.kafka.source.KafkaSourceBuilder;
import org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.core.execution.JobClient;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.util.Collector;
import org.apache.kafka.clients.consumer.ConsumerRecord;

public final class FlinkSourceBench {
  private static final String USAGE =
      "usage: FlinkSourceBench --source aquifer|kafka (--address HOST:PORT --stream SCOPE/STREAM"
          + " | --bootstrap HOST:PORT --topic T) --mode throughput|latency --events N"
          + " [--parallelism P] [--timeout-secs S]";

  private FlinkSourceBench() {}

  public static void main(String[] argv) {
    int status;
    try {
      status = run(parse(argv));
    } catch (Throwable e) {
      System.err.println("FlinkSourceBench: " + e);
      Throwable cause = e.getCause();
      while (cause != null) {
        System.err.println("  caused by: " + cause);
        cause = cause.getCause();
      }
      status = 1;
    }
    System.out.flush();
    System.err.flush();
    // Flink's, gRPC's and Kafka's threads are not all daemons: exit here.
    System.exit(status);
  }

  private static Map<String, String> parse(String[] argv) {
    Map<String, String> a = new HashMap<>();
    for (int i = 0; i < argv.length; i += 2) {
      if (!argv[i].startsWith("--") || i + 1 >= argv.length) {
        throw new IllegalArgumentException(USAGE);
      }
      a.put(argv[i].substring(2), argv[i + 1]);
    }
    for (String required : new String[] {"source", "mode", "events"}) {
      if (!a.containsKey(required)) {
        throw new IllegalArgumentException("missing --" + required + "; " + USAGE);
      }
    }
    return a;
  }

  private static int run(Map<String, String> a) throws Exception {
    String sourceName = a.get("source");
    boolean latency =
        switch (a.get("mode")) {
          case "throughput" -> false;
          case "latency" -> true;
          default -> throw new IllegalArgumentException("--mode throughput|latency; " + USAGE);
        };
    long events = Long.parseLong(a.get("events"));
    int parallelism = Integer.parseInt(a.getOrDefault("parallelism", "2"));
    long timeoutNs = TimeUnit.SECONDS.toNanos(Long.parseLong(a.getOrDefault("timeout-secs", "600")));

    Source<byte[], ?, ?> source =
        switch (sourceName) {
          case "aquifer" -> aquifer(a, latency);
          case "kafka" -> kafka(a, latency);
          default -> throw new IllegalArgumentException("--source aquifer|kafka; " + USAGE);
        };

    StreamExecutionEnvironment env =
        StreamExecutionEnvironment.createLocalEnvironment(parallelism, loopbackOnly());
    env.fromSource(source, WatermarkStrategy.noWatermarks(), sourceName)
        .map(new ParseSendTime())
        .name("parse")
        .sinkTo(new CountingSink(latency))
        .name("count");

    long started = System.nanoTime();
    long deadline = started + timeoutNs;
    JobClient job = env.executeAsync("flink-source-bench " + sourceName + " " + a.get("mode"));
    System.out.println("READY");
    System.out.flush();

    if (latency) {
      boolean first = false;
      // The counter every 10 ms, the job's status (a MiniCluster request) every 0.5 s.
      for (long round = 0; Recorder.MEASURED.sum() < events; round++) {
        if (!first && Recorder.firstSeen) {
          first = true;
          System.out.println("FIRST");
          System.out.flush();
        }
        if (round % 50 == 0 && terminal(job)) {
          job.getJobExecutionResult().get(30, TimeUnit.SECONDS); // throws the failure
          throw new IllegalStateException("the job ended after "
              + Recorder.MEASURED.sum() + " of " + events + " measured events");
        }
        if (System.nanoTime() > deadline) {
          job.cancel().get(60, TimeUnit.SECONDS);
          throw new IllegalStateException("timed out after " + Recorder.MEASURED.sum() + " of "
              + events + " measured events");
        }
        Thread.sleep(10);
      }
      job.cancel().get(60, TimeUnit.SECONDS);
      waitTerminal(job, deadline);
    } else {
      long left = Math.max(1, deadline - System.nanoTime());
      try {
        job.getJobExecutionResult().get(left, TimeUnit.NANOSECONDS);
      } catch (java.util.concurrent.TimeoutException e) {
        job.cancel().get(60, TimeUnit.SECONDS);
        throw new IllegalStateException("timed out after " + Recorder.seen() + " records");
      }
    }
    double jobSeconds = (System.nanoTime() - started) / 1e9;
    return report(sourceName, a.get("mode"), latency, events, jobSeconds);
  }

  /** Every endpoint of the MiniCluster on 127.0.0.1 (the REST server on a free port). */
  private static Configuration loopbackOnly() {
    Configuration conf = new Configuration();
    conf.set(RestOptions.BIND_ADDRESS, "127.0.0.1");
    conf.set(RestOptions.ADDRESS, "127.0.0.1");
    conf.set(RestOptions.BIND_PORT, "0");
    conf.set(JobManagerOptions.ADDRESS, "127.0.0.1");
    conf.set(JobManagerOptions.BIND_HOST, "127.0.0.1");
    conf.set(TaskManagerOptions.HOST, "127.0.0.1");
    conf.set(TaskManagerOptions.BIND_HOST, "127.0.0.1");
    return conf;
  }

  private static void waitTerminal(JobClient job, long deadline) throws Exception {
    while (System.nanoTime() < deadline + TimeUnit.SECONDS.toNanos(60)) {
      if (terminal(job)) {
        return;
      }
      Thread.sleep(20);
    }
  }

  /**
   * Whether the job reached a terminal state. Once it has, the local executor shuts the MiniCluster
   * down, and asking for the status fails: that counts as terminal too.
   */
  private static boolean terminal(JobClient job) throws InterruptedException {
    try {
      return job.getJobStatus().get(30, TimeUnit.SECONDS).isGloballyTerminalState();
    } catch (IllegalStateException e) {
      return true; // "MiniCluster is not yet running or has already been shut down"
    } catch (java.util.concurrent.ExecutionException | java.util.concurrent.TimeoutException e) {
      return job.getJobExecutionResult().isDone() || e.getCause() instanceof IllegalStateException;
    }
  }

  private static Source<byte[], ?, ?> aquifer(Map<String, String> a, boolean latency) {
    AquiferSource.Builder<byte[]> b =
        AquiferSource.<byte[]>builder()
            .address(need(a, "address"))
            .stream(need(a, "stream"))
            .startFromHead()
            .deserializer(new PayloadBytes());
    if (!latency) {
      b.boundedAtTail();
    }
    return b.build();
  }

  private static Source<byte[], ?, ?> kafka(Map<String, String> a, boolean latency) {
    KafkaSourceBuilder<byte[]> b =
        KafkaSource.<byte[]>builder()
            .setBootstrapServers(need(a, "bootstrap"))
            .setTopics(need(a, "topic"))
            .setGroupId("flink-source-bench")
            .setStartingOffsets(OffsetsInitializer.earliest())
            .setDeserializer(new KafkaValueBytes());
    if (!latency) {
      b.setBounded(OffsetsInitializer.latest());
    }
    return b.build();
  }

  private static String need(Map<String, String> a, String key) {
    String v = a.get(key);
    if (v == null) {
      throw new IllegalArgumentException("missing --" + key + "; " + USAGE);
    }
    return v;
  }

  private static int report(
      String source, String mode, boolean latency, long events, double jobSeconds) {
    List<Recorder> all = new ArrayList<>(Recorder.ALL);
    long records = 0;
    long first = Long.MAX_VALUE;
    long last = Long.MIN_VALUE;
    StringBuilder perSubtask = new StringBuilder();
    long[] lat = new long[0];
    int n = 0;
    for (Recorder r : all) {
      synchronized (r) {
        if (perSubtask.length() > 0) {
          perSubtask.append('/');
        }
        perSubtask.append(r.count);
        if (r.count == 0) {
          continue;
        }
        records += r.count;
        first = Math.min(first, r.firstNs);
        last = Math.max(last, r.lastNs);
        if (latency) {
          lat = Arrays.copyOf(lat, n + r.latN);
          System.arraycopy(r.lat, 0, lat, n, r.latN);
          n += r.latN;
        }
      }
    }
    if (!latency && records != events) {
      System.err.println("FlinkSourceBench: read " + records + " records, expected " + events);
      return 1;
    }
    if (latency && n < events) {
      System.err.println("FlinkSourceBench: " + n + " measured events, expected " + events);
      return 1;
    }
    double seconds = records > 1 ? (last - first) / 1e9 : 0;
    StringBuilder out = new StringBuilder();
    out.append(String.format(Locale.ROOT,
        "RESULT source=%s mode=%s records=%d seconds=%.3f rps=%.0f job_seconds=%.3f",
        source, mode, records, seconds, seconds > 0 ? records / seconds : 0, jobSeconds));
    if (latency) {
      Arrays.sort(lat, 0, n);
      out.append(String.format(Locale.ROOT,
          " measured=%d p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f",
          n, q(lat, n, 0.50), q(lat, n, 0.99), q(lat, n, 0.999), lat[n - 1] / 1e6));
    }
    if (!latency && Recorder.CPU_AT_FIRST.get() >= 0 && Recorder.CPU_AT_LAST.get() >= 0) {
      out.append(String.format(Locale.ROOT, " cpu_s=%.3f",
          (Recorder.CPU_AT_LAST.get() - Recorder.CPU_AT_FIRST.get()) / 1e9));
    }
    out.append(" per_subtask=").append(perSubtask);
    System.out.println(out);
    return 0;
  }

  /** The q-quantile (nearest rank) of sorted ns values, in ms. */
  private static double q(long[] sorted, int n, double q) {
    int rank = (int) Math.ceil(q * n);
    return sorted[Math.max(0, Math.min(n - 1, rank - 1))] / 1e6;
  }

  /** An Aquifer event's payload, as is (the client decoded it into its own array). */
  static final class PayloadBytes implements AquiferDeserializer<byte[]> {
    private static final long serialVersionUID = 1L;

    @Override
    public void deserialize(Event event, Collector<byte[]> out) {
      out.collect(event.payload());
    }

    @Override
    public TypeInformation<byte[]> getProducedType() {
      return PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO;
    }
  }

  /** A Kafka record's value, as is (kafka-clients' ByteArrayDeserializer hands it over too). */
  static final class KafkaValueBytes implements KafkaRecordDeserializationSchema<byte[]> {
    private static final long serialVersionUID = 1L;

    @Override
    public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<byte[]> out)
        throws IOException {
      out.collect(record.value());
    }

    @Override
    public TypeInformation<byte[]> getProducedType() {
      return PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO;
    }
  }

  /**
   * The stateless map: the send time of a measured event (ns since the epoch), 0 for a preloaded
   * or warm-up one.
   */
  static final class ParseSendTime implements MapFunction<byte[], Long> {
    private static final long serialVersionUID = 1L;

    @Override
    public Long map(byte[] p) {
      if (p.length < 9) {
        throw new IllegalArgumentException("a payload of " + p.length + " bytes (at least 9)");
      }
      long t = 0;
      for (int i = 7; i >= 0; i--) {
        t = (t << 8) | (p[i] & 0xff);
      }
      return p[8] == 1 ? t : 0L;
    }
  }

  /** Counts its records (and, in latency mode, measures the marked ones). */
  static final class CountingSink implements Sink<Long> {
    private static final long serialVersionUID = 1L;
    private final boolean latency;

    CountingSink(boolean latency) {
      this.latency = latency;
    }

    @Override
    public SinkWriter<Long> createWriter(WriterInitContext context) {
      Recorder r = new Recorder();
      Recorder.ALL.add(r);
      return new SinkWriter<Long>() {
        @Override
        public void write(Long sendNs, Context ctx) {
          if (latency) {
            r.recordLatency(sendNs);
          } else {
            r.count();
          }
        }

        @Override
        public void flush(boolean endOfInput) {}

        @Override
        public void close() {
          r.publish();
        }
      };
    }
  }

  /**
   * One sink subtask's counts. The job runs in this JVM's MiniCluster (no user-code jar, so the
   * operators' classes are this class loader's): the main thread reads every recorder once the job
   * ended. Throughput mode counts without locking and publishes under the lock on close (after the
   * last record, before the job finishes); latency mode records under the lock.
   */
  static final class Recorder {
    static final ConcurrentLinkedQueue<Recorder> ALL = new ConcurrentLinkedQueue<>();
    static final LongAdder MEASURED = new LongAdder();
    /** Throughput mode: the process's CPU time at the first record and after the last one. */
    static final AtomicLong CPU_AT_FIRST = new AtomicLong(-1);
    static final AtomicLong CPU_AT_LAST = new AtomicLong(-1);
    static volatile boolean firstSeen;

    long count;
    long firstNs;
    long lastNs;
    long[] lat = new long[1024];
    int latN;

    /** Unlocked, for throughput mode. */
    private long uCount;
    private long uFirst;
    private long uLast;

    void count() {
      long now = System.nanoTime();
      if (uCount++ == 0) {
        uFirst = now;
        CPU_AT_FIRST.compareAndSet(-1, processCpuNs());
      }
      uLast = now;
    }

    synchronized void publish() {
      if (uCount > 0) {
        count = uCount;
        firstNs = uFirst;
        lastNs = uLast;
        CPU_AT_LAST.accumulateAndGet(processCpuNs(), Math::max);
      }
    }

    /** This JVM's CPU time so far (every thread: the job's, Flink's, the client's, GC, JIT). */
    static long processCpuNs() {
      return ((com.sun.management.OperatingSystemMXBean)
              java.lang.management.ManagementFactory.getOperatingSystemMXBean())
          .getProcessCpuTime();
    }

    synchronized void recordLatency(long sendNs) {
      Instant wall = Instant.now();
      long now = System.nanoTime();
      if (count++ == 0) {
        firstNs = now;
        firstSeen = true;
      }
      lastNs = now;
      if (sendNs != 0) {
        long e2e = wall.getEpochSecond() * 1_000_000_000L + wall.getNano() - sendNs;
        if (latN == lat.length) {
          lat = Arrays.copyOf(lat, lat.length * 2);
        }
        lat[latN++] = e2e;
        MEASURED.increment();
      }
    }

    /** Records seen so far, for a timeout's message (a racy read of counters still moving). */
    static long seen() {
      long n = 0;
      for (Recorder r : ALL) {
        n += r.uCount + r.count;
      }
      return n;
    }
  }
}
