package aquifer.bench.changelog;

import io.aquifer.client.AquiferClient;
import io.aquifer.proto.v1.SegmentInfo;
import io.aquifer.proto.v1.StreamInfo;
import java.io.FileNotFoundException;
import java.io.IOException;
import java.lang.reflect.Method;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.stream.Stream;
import org.apache.flink.api.common.JobID;
import org.apache.flink.api.common.JobStatus;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.connector.source.util.ratelimit.RateLimiterStrategy;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.connector.datagen.source.DataGeneratorSource;
import org.apache.flink.connector.datagen.source.GeneratorFunction;
import org.apache.flink.core.fs.FileStatus;
import org.apache.flink.core.fs.FileSystem;
import org.apache.flink.runtime.checkpoint.AbstractCheckpointStats;
import org.apache.flink.runtime.checkpoint.CheckpointStatsSnapshot;
import org.apache.flink.runtime.checkpoint.CheckpointStatsStatus;
import org.apache.flink.runtime.checkpoint.FailedCheckpointStats;
import org.apache.flink.runtime.checkpoint.SubtaskStateStats;
import org.apache.flink.runtime.checkpoint.TaskStateStats;
import org.apache.flink.runtime.jobgraph.JobGraph;
import org.apache.flink.runtime.jobmaster.JobResult;
import org.apache.flink.runtime.minicluster.MiniCluster;
import org.apache.flink.runtime.minicluster.MiniClusterConfiguration;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink;
import org.apache.flink.util.Collector;

/**
 * The state-changelog benchmark's driver (benches/changelog.rs): for each storage given, in
 * this one JVM and one after the other, a fresh MiniCluster runs the same keyed job (a
 * generator at a fixed rate over N keys, one ValueState of B bytes per key updated per record,
 * parallelism P, hashmap backend with the changelog on, a checkpoint every C ms, materialization
 * rarely) with {@code state.changelog.storage: timed} wrapping the storage under test:
 *
 * <ul>
 *   <li>{@code aquifer}: {@code state.changelog.aquifer.address};
 *   <li>{@code filesystem-local}: Flink's DSTL ({@code filesystem}) on a local directory;
 *   <li>{@code filesystem-s3}: the DSTL on {@code s3://BUCKET/PREFIX} through
 *       flink-s3-fs-hadoop (S3A) against {@code --s3-endpoint}.
 * </ul>
 *
 * <p>After the first completed checkpoint and the warm-up, it measures for {@code --seconds}:
 * every persist() (call to completion, {@link PersistTimings}), the checkpoints triggered in the
 * window (the execution graph's checkpoint stats: end-to-end and the slowest subtask's async
 * part), records processed, and what the storage cost over the window: for aquifer the node's
 * Prometheus counters (events, bytes, append batches, log writes, its own tier-2 PUTs) and the
 * changelog streams' sizes; for the local directory the files and bytes in it; for S3 the
 * S3A client's request counters (PUTs, bytes) and a listing of the prefix.
 *
 * <p>Stdout: {@code RUN <storage>} when a window starts, one {@code RESULT {json}} line per
 * storage, then {@code DONE}. Everything else (progress, Flink's warnings) goes to stderr.
 */
public final class ChangelogBench {
  static final String SCOPE = "bench-changelog";
  static final AtomicLong RECORDS = new AtomicLong();

  static final class Args {
    List<String> storages = List.of("aquifer", "filesystem-local", "filesystem-s3");
    int seconds = 30;
    int warmupSecs = 5;
    long rate = 20_000;
    int keys = 1_000;
    int valueBytes = 200;
    int parallelism = 2;
    long checkpointMs = 1_000;
    String materialize = "3 min";
    Path workDir;
    String aquifer;
    String aquiferMetrics;
    String s3Endpoint;
    String s3Bucket = "dstl";
    String s3Prefix = "changelog";
    String s3AccessKey = "testkey";
    String s3SecretKey = "testsecret";

    static Args parse(String[] argv) throws IOException {
      Args a = new Args();
      for (int i = 0; i < argv.length; i++) {
        String k = argv[i];
        if (i + 1 >= argv.length) {
          throw new IllegalArgumentException(k + " takes a value");
        }
        String v = argv[++i];
        switch (k) {
          case "--storages" -> a.storages = Arrays.asList(v.split(","));
          case "--seconds" -> a.seconds = Integer.parseInt(v);
          case "--warmup-secs" -> a.warmupSecs = Integer.parseInt(v);
          case "--rate" -> a.rate = Long.parseLong(v);
          case "--keys" -> a.keys = Integer.parseInt(v);
          case "--value-bytes" -> a.valueBytes = Integer.parseInt(v);
          case "--parallelism" -> a.parallelism = Integer.parseInt(v);
          case "--checkpoint-ms" -> a.checkpointMs = Long.parseLong(v);
          case "--materialize" -> a.materialize = v;
          case "--work-dir" -> a.workDir = Paths.get(v).toAbsolutePath();
          case "--aquifer" -> a.aquifer = v;
          case "--aquifer-metrics" -> a.aquiferMetrics = v;
          case "--s3-endpoint" -> a.s3Endpoint = v;
          case "--s3-bucket" -> a.s3Bucket = v;
          case "--s3-prefix" -> a.s3Prefix = v;
          case "--s3-access-key" -> a.s3AccessKey = v;
          case "--s3-secret-key" -> a.s3SecretKey = v;
          default -> throw new IllegalArgumentException("unknown argument " + k);
        }
      }
      if (a.workDir == null) {
        a.workDir = Files.createTempDirectory("changelog-bench-");
      }
      if (a.seconds <= 0 || a.seconds > 3600 || a.warmupSecs < 0 || a.warmupSecs > 600) {
        throw new IllegalArgumentException("--seconds 1..3600, --warmup-secs 0..600");
      }
      return a;
    }
  }

  static void log(String msg) {
    System.err.println("ChangelogBench: " + msg);
    System.err.flush();
  }

  public static void main(String[] argv) throws Exception {
    Args args = Args.parse(argv);
    Files.createDirectories(args.workDir);
    System.out.println(
        "READY java "
            + System.getProperty("java.version")
            + " ("
            + System.getProperty("java.vm.name")
            + "), Flink "
            + org.apache.flink.runtime.util.EnvironmentInformation.getVersion());
    System.out.flush();
    for (String storage : args.storages) {
      Json result;
      try {
        result = runOne(args, storage);
      } catch (Throwable t) {
        log(storage + " failed: " + t);
        for (Throwable c = t.getCause(); c != null && c != c.getCause(); c = c.getCause()) {
          log("  caused by " + c);
        }
        result = new Json().str("storage", storage).str("error", describe(t));
      }
      System.out.println("RESULT " + result);
      System.out.flush();
    }
    System.out.println("DONE");
    System.out.flush();
    // Flink's and gRPC's non-daemon threads must not keep the JVM alive.
    System.exit(0);
  }

  static String describe(Throwable t) {
    StringBuilder b = new StringBuilder(String.valueOf(t));
    Throwable c = t.getCause();
    for (int i = 0; c != null && i < 4; i++, c = c.getCause()) {
      b.append(" <- ").append(c);
    }
    return b.toString();
  }

  // ------------------------------------------------------------------ configuration

  static Configuration config(Args a, String storage) throws IOException {
    Configuration c = new Configuration();
    c.setString("state.backend.type", "hashmap");
    c.setString("state.changelog.enabled", "true");
    c.setString("state.changelog.storage", TimedChangelogStorageFactory.IDENTIFIER);
    c.setString("state.changelog.periodic-materialize.interval", a.materialize);
    c.setString("execution.checkpointing.interval", a.checkpointMs + " ms");
    Path checkpoints = a.workDir.resolve("checkpoints-" + storage);
    Files.createDirectories(checkpoints);
    c.setString("execution.checkpointing.dir", checkpoints.toUri().toString());
    c.setString("restart-strategy.type", "none");
    c.setString("web.checkpoints.history", "100000");
    c.setString("rest.bind-address", "127.0.0.1");
    c.setString("rest.address", "127.0.0.1");
    c.setString("rest.bind-port", "0");
    c.setString("jobmanager.bind-host", "127.0.0.1");
    c.setString("taskmanager.bind-host", "127.0.0.1");
    c.setString("taskmanager.host", "127.0.0.1");
    // S3 for every run (the filesystem factories are initialized from it).
    if (a.s3Endpoint != null) {
      c.setString("s3.endpoint", a.s3Endpoint);
      c.setString("s3.path.style.access", "true");
      c.setString("s3.access-key", a.s3AccessKey);
      c.setString("s3.secret-key", a.s3SecretKey);
      c.setString("s3.endpoint.region", "us-east-1");
      c.setString("s3.connection.ssl.enabled", "false");
    }
    switch (storage) {
      case "aquifer" -> {
        if (a.aquifer == null) {
          throw new IllegalArgumentException("aquifer needs --aquifer HOST:PORT");
        }
        c.setString(TimedChangelogStorageFactory.INNER.key(), "aquifer");
        c.setString("state.changelog.aquifer.address", a.aquifer);
        c.setString("state.changelog.aquifer.scope", SCOPE);
      }
      case "filesystem-local" -> {
        Path dir = a.workDir.resolve("dstl-local");
        Files.createDirectories(dir);
        c.setString(TimedChangelogStorageFactory.INNER.key(), "filesystem");
        c.setString("state.changelog.dstl.dfs.base-path", dir.toUri().toString());
      }
      case "filesystem-s3" -> {
        if (a.s3Endpoint == null) {
          throw new IllegalArgumentException("filesystem-s3 needs --s3-endpoint URL");
        }
        c.setString(TimedChangelogStorageFactory.INNER.key(), "filesystem");
        c.setString("state.changelog.dstl.dfs.base-path", s3Base(a));
      }
      default -> throw new IllegalArgumentException("unknown storage " + storage);
    }
    return c;
  }

  static String s3Base(Args a) {
    return "s3://" + a.s3Bucket + "/" + a.s3Prefix;
  }

  // ------------------------------------------------------------------ the job

  /** Record i: key i mod keys. */
  static final class Index implements GeneratorFunction<Long, Long> {
    @Override
    public Long map(Long i) {
      return i;
    }
  }

  static final class KeyOf implements KeySelector<Long, Long> {
    private final int keys;

    KeyOf(int keys) {
      this.keys = keys;
    }

    @Override
    public Long getKey(Long i) {
      return i % keys;
    }
  }

  /** Per record: its key's value replaced by B fresh (incompressible) bytes. */
  static final class Update extends KeyedProcessFunction<Long, Long, Long> {
    private final int valueBytes;
    private transient ValueState<byte[]> value;

    Update(int valueBytes) {
      this.valueBytes = valueBytes;
    }

    @Override
    public void open(OpenContext context) {
      value =
          getRuntimeContext()
              .getState(
                  new ValueStateDescriptor<>(
                      "value", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO));
    }

    @Override
    public void processElement(Long i, Context ctx, Collector<Long> out) throws Exception {
      byte[] v = new byte[valueBytes];
      long x = i * 0x9E3779B97F4A7C15L + 1;
      for (int b = 0; b < v.length; b++) {
        x ^= x << 13;
        x ^= x >>> 7;
        x ^= x << 17;
        v[b] = (byte) x;
      }
      value.update(v);
      RECORDS.incrementAndGet();
    }
  }

  static JobGraph job(Args a, Configuration c) {
    StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment(c);
    env.setParallelism(a.parallelism);
    env.enableCheckpointing(a.checkpointMs);
    env.fromSource(
            new DataGeneratorSource<>(
                new Index(), Long.MAX_VALUE, RateLimiterStrategy.perSecond(a.rate), Types.LONG),
            WatermarkStrategy.noWatermarks(),
            "generator")
        .keyBy(new KeyOf(a.keys))
        .process(new Update(a.valueBytes))
        .name("update")
        .sinkTo(new DiscardingSink<>());
    return env.getStreamGraph().getJobGraph();
  }

  // ------------------------------------------------------------------ one storage

  static Json runOne(Args a, String storage) throws Exception {
    log(storage + ": starting");
    Configuration c = config(a, storage);
    FileSystem.initialize(c, null);
    // What the previous storage's MiniCluster left takes a while to become garbage: let it go.
    settleHeap();
    MiniCluster cluster =
        new MiniCluster(
            new MiniClusterConfiguration.Builder()
                .setConfiguration(c)
                .setNumTaskManagers(1)
                .setNumSlotsPerTaskManager(a.parallelism)
                .setCommonBindAddress("127.0.0.1")
                .build());
    cluster.start();
    JobID id = null;
    Costs costs = null;
    try {
      id = cluster.submitJob(job(a, c)).get(60, TimeUnit.SECONDS).getJobID();
      costs = Costs.of(a, storage, id);
      awaitFirstCheckpoint(cluster, id, 120);
      sleepWhileRunning(cluster, id, a.warmupSecs * 1000L);
      // The heap the job holds, before the window and (below) after it; the full GC's pause
      // lands a second before the window, not in it.
      long heap0Nanos = System.nanoTime();
      double heap0 = heapAfterGc();
      sleepWhileRunning(cluster, id, 1_000);

      System.out.println("RUN " + storage);
      System.out.flush();
      Map<String, Double> before = costs.sample();
      long records0 = RECORDS.get();
      PersistTimings.start();
      long t0 = System.currentTimeMillis();
      long n0 = System.nanoTime();
      sleepWhileRunning(cluster, id, a.seconds * 1000L);
      PersistTimings.stop();
      long t1 = System.currentTimeMillis();
      double elapsed = (System.nanoTime() - n0) / 1e9;
      long records = RECORDS.get() - records0;
      Map<String, Double> after = costs.sample();
      double heap1 = heapAfterGc();
      double heapSecs = (System.nanoTime() - heap0Nanos) / 1e9;
      // Persists begun in the window may still complete: wait (bounded) for the window's
      // last checkpoint to finish too.
      Thread.sleep(Math.min(5_000, 2 * a.checkpointMs + 500));
      PersistTimings.Snapshot persists = PersistTimings.snapshot();
      CheckpointStatsSnapshot stats = cluster.getExecutionGraph(id).get(30, TimeUnit.SECONDS).getCheckpointStatsSnapshot();

      Json j = new Json().str("storage", storage).num("seconds", elapsed);
      j.num("records", records).num("records_per_s", records / elapsed).obj(
          "heap",
          new Json()
              .num("before_mb", heap0)
              .num("after_mb", heap1)
              .num("growth_mb_per_s", (heap1 - heap0) / heapSecs));
      j.obj("persist", persistJson(persists));
      j.obj("checkpoints", checkpointJson(stats, t0, t1));
      Json cost = new Json();
      for (Map.Entry<String, Double> e : after.entrySet()) {
        cost.num(e.getKey(), e.getValue() - before.getOrDefault(e.getKey(), 0.0));
      }
      for (Map.Entry<String, Double> e : costs.gauges().entrySet()) {
        cost.num(e.getKey(), e.getValue());
      }
      j.obj("costs", cost);
      log(storage + ": " + j);
      return j;
    } finally {
      if (id != null) {
        try {
          cluster.cancelJob(id).get(30, TimeUnit.SECONDS);
          cluster.requestJobResult(id).get(60, TimeUnit.SECONDS);
        } catch (Exception e) {
          log(storage + ": cancelling the job: " + e);
        }
      }
      try {
        cluster.closeAsync().get(60, TimeUnit.SECONDS);
      } catch (Exception e) {
        log(storage + ": closing the MiniCluster: " + e);
      }
      if (costs != null) {
        costs.close();
      }
    }
  }

  /** MB in use after a full GC (the MiniCluster runs in this JVM). */
  static double heapAfterGc() {
    System.gc();
    Runtime rt = Runtime.getRuntime();
    return (rt.totalMemory() - rt.freeMemory()) / 1e6;
  }

  /** Full GCs a second apart until the heap in use stops shrinking (at most 15). */
  static void settleHeap() throws InterruptedException {
    double last = heapAfterGc();
    for (int i = 0; i < 15; i++) {
      Thread.sleep(1_000);
      double now = heapAfterGc();
      if (now > last * 0.98) {
        return;
      }
      last = now;
    }
  }

  static void awaitFirstCheckpoint(MiniCluster cluster, JobID id, int timeoutSecs) throws Exception {
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(timeoutSecs);
    while (System.nanoTime() < deadline) {
      checkRunning(cluster, id);
      CheckpointStatsSnapshot s =
          cluster.getExecutionGraph(id).get(30, TimeUnit.SECONDS).getCheckpointStatsSnapshot();
      if (s != null && s.getCounts().getNumberOfCompletedCheckpoints() > 0) {
        return;
      }
      Thread.sleep(200);
    }
    throw new IllegalStateException("no checkpoint completed within " + timeoutSecs + " s");
  }

  /** Sleeps {@code ms}, failing as soon as the job is no longer running. */
  static void sleepWhileRunning(MiniCluster cluster, JobID id, long ms) throws Exception {
    long end = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(ms);
    while (true) {
      checkRunning(cluster, id);
      long left = end - System.nanoTime();
      if (left <= 0) {
        return;
      }
      Thread.sleep(Math.min(500, TimeUnit.NANOSECONDS.toMillis(left) + 1));
    }
  }

  static void checkRunning(MiniCluster cluster, JobID id) throws Exception {
    JobStatus status = cluster.getJobStatus(id).get(30, TimeUnit.SECONDS);
    if (status == JobStatus.RUNNING || status == JobStatus.CREATED || status == JobStatus.INITIALIZING) {
      return;
    }
    String why = "";
    if (status.isGloballyTerminalState()) {
      JobResult r = cluster.requestJobResult(id).get(30, TimeUnit.SECONDS);
      why = r.getSerializedThrowable().map(t -> ": " + describe(t.deserializeError(ChangelogBench.class.getClassLoader()))).orElse("");
    }
    throw new IllegalStateException("the job is " + status + why);
  }

  // ------------------------------------------------------------------ figures

  static double ms(long ns) {
    return ns / 1e6;
  }

  /** Nearest rank: the smallest value with at least q of the values at or below it. */
  static long quantile(long[] sorted, double q) {
    if (sorted.length == 0) {
      return 0;
    }
    int rank = (int) Math.ceil(q * sorted.length);
    return sorted[Math.max(0, Math.min(sorted.length - 1, rank - 1))];
  }

  static Json latencies(long[] sortedNs) {
    Json j = new Json().num("count", sortedNs.length);
    if (sortedNs.length > 0) {
      j.num("p50_ms", ms(quantile(sortedNs, 0.5)))
          .num("p99_ms", ms(quantile(sortedNs, 0.99)))
          .num("p999_ms", ms(quantile(sortedNs, 0.999)))
          .num("max_ms", ms(sortedNs[sortedNs.length - 1]))
          .num("mean_ms", ms((long) Arrays.stream(sortedNs).average().orElse(0)));
    }
    return j;
  }

  static Json persistJson(PersistTimings.Snapshot p) {
    return new Json()
        .obj("complete", latencies(p.complete))
        .obj("call", latencies(p.call))
        .num("failures", p.failures)
        .num("full_bytes", p.fullBytes)
        .num("incremental_bytes", p.incrementalBytes)
        .num("warmup_persists", p.unmeasured);
  }

  static Json checkpointJson(CheckpointStatsSnapshot s, long t0, long t1) {
    List<Long> e2e = new ArrayList<>();
    List<Long> async = new ArrayList<>();
    List<Long> sync = new ArrayList<>();
    long failed = 0;
    long pending = 0;
    String firstFailure = null;
    long checkpointed = 0;
    for (AbstractCheckpointStats cp : s.getHistory().getCheckpoints()) {
      if (cp instanceof FailedCheckpointStats f && f.getFailureMessage() != null) {
        // The history is newest first: the last one seen is the oldest.
        firstFailure = "checkpoint " + f.getCheckpointId() + ": " + f.getFailureMessage();
      }
      if (cp.getTriggerTimestamp() < t0 || cp.getTriggerTimestamp() >= t1) {
        continue;
      }
      if (cp.getStatus() == CheckpointStatsStatus.FAILED) {
        failed++;
        continue;
      }
      if (cp.getStatus() != CheckpointStatsStatus.COMPLETED) {
        pending++;
        continue;
      }
      e2e.add(cp.getEndToEndDuration());
      checkpointed += cp.getCheckpointedSize();
      long maxAsync = 0;
      long maxSync = 0;
      for (TaskStateStats t : cp.getAllTaskStateStats()) {
        for (SubtaskStateStats st : t.getSubtaskStats()) {
          if (st != null) {
            maxAsync = Math.max(maxAsync, st.getAsyncCheckpointDuration());
            maxSync = Math.max(maxSync, st.getSyncCheckpointDuration());
          }
        }
      }
      async.add(maxAsync);
      sync.add(maxSync);
    }
    Json j = new Json();
    if (firstFailure != null) {
      j.str("first_failure", firstFailure);
    }
    return j
        .obj("end_to_end", msLatencies(e2e))
        .obj("async_slowest_subtask", msLatencies(async))
        .obj("sync_slowest_subtask", msLatencies(sync))
        .num("failed", failed)
        .num("not_completed", pending)
        .num("checkpointed_bytes", checkpointed)
        .num("total_failed_in_job", s.getCounts().getNumberOfFailedCheckpoints());
  }

  static Json msLatencies(List<Long> millis) {
    long[] ns = millis.stream().mapToLong(m -> m * 1_000_000L).sorted().toArray();
    return latencies(ns);
  }

  // ------------------------------------------------------------------ costs

  /** What a storage costs, as counters sampled at the window's start and end. */
  interface Costs extends AutoCloseable {
    Map<String, Double> sample() throws Exception;

    /** Absolute figures taken once, at the end. */
    default Map<String, Double> gauges() throws Exception {
      return Map.of();
    }

    @Override
    default void close() {}

    static Costs of(Args a, String storage, JobID job) throws IOException {
      return switch (storage) {
        case "aquifer" -> new AquiferCosts(a, job);
        case "filesystem-local" -> new LocalCosts(a.workDir.resolve("dstl-local"));
        case "filesystem-s3" -> new S3Costs(a);
        default -> throw new IllegalArgumentException(storage);
      };
    }
  }

  /** The node's Prometheus counters (only this bench writes to it) and the streams' sizes. */
  static final class AquiferCosts implements Costs {
    private final Args a;
    /** This job's changelog streams: {@code SCOPE/<job id>-<suffix>}, one per TaskManager. */
    private final String prefix;
    private final HttpClient http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();

    AquiferCosts(Args a, JobID job) {
      this.a = a;
      this.prefix = job.toHexString() + "-";
    }

    @Override
    public Map<String, Double> sample() throws Exception {
      Map<String, Double> out = new LinkedHashMap<>();
      if (a.aquiferMetrics != null) {
        String text =
            http.send(
                    HttpRequest.newBuilder(URI.create("http://" + a.aquiferMetrics + "/metrics"))
                        .timeout(Duration.ofSeconds(10))
                        .build(),
                    HttpResponse.BodyHandlers.ofString())
                .body();
        String stream = "stream=\"" + SCOPE + "/" + prefix;
        out.put("append_events", sum(text, "aquifer_append_events_total", stream));
        out.put("append_bytes", sum(text, "aquifer_append_bytes_total", stream));
        // Node-wide (only this bench writes to the node while the window runs).
        out.put("append_batches", sum(text, "aquifer_append_ack_seconds_count", null));
        out.put("append_ack_seconds_sum", sum(text, "aquifer_append_ack_seconds_sum", null));
        out.put("log_write_seconds_sum", sum(text, "aquifer_log_write_seconds_sum", null));
        out.put("log_writes", sum(text, "aquifer_log_write_entries_count", null));
        out.put("log_entries", sum(text, "aquifer_log_write_entries_sum", null));
        out.put("tier2_puts", sum(text, "aquifer_tier2_puts_total", null));
        // The node's own latency histograms (cumulative buckets, upper bounds in seconds).
        buckets(text, "aquifer_append_ack_seconds_bucket", "ack_le_", out);
        buckets(text, "aquifer_log_write_seconds_bucket", "log_write_le_", out);
        out.put("tier2_put_bytes", sum(text, "aquifer_tier2_put_bytes_total", null));
      }
      long[] sizes = streamBytes();
      out.put("stream_bytes_appended", (double) sizes[0]);
      return out;
    }

    @Override
    public Map<String, Double> gauges() {
      long[] sizes = streamBytes();
      return Map.of("streams", (double) sizes[2], "stream_bytes_held", (double) sizes[1]);
    }

    /** Over the bench's streams: {sum of lengths, sum of length - head, streams}. */
    private long[] streamBytes() {
      long length = 0;
      long held = 0;
      long streams = 0;
      try (AquiferClient client = AquiferClient.connect(a.aquifer)) {
        for (StreamInfo s : client.listStreams(SCOPE)) {
          if (!s.getName().getStream().startsWith(prefix)) {
            continue;
          }
          streams++;
          for (SegmentInfo seg : s.getSegmentsList()) {
            length += seg.getLength();
            held += seg.getLength() - seg.getHeadOffset();
          }
        }
      }
      return new long[] {length, held, streams};
    }

    /** Every {@code name{le="X"} N} sample as {@code prefix + X → N}. */
    static void buckets(String text, String name, String prefix, Map<String, Double> out) {
      for (String line : text.split("\n")) {
        if (!line.startsWith(name + "{le=\"")) {
          continue;
        }
        int start = name.length() + 5;
        int end = line.indexOf('"', start);
        int sp = line.lastIndexOf(' ');
        if (end > start && sp > end) {
          out.put(prefix + line.substring(start, end), Double.parseDouble(line.substring(sp + 1)));
        }
      }
    }

    /** Sums the samples of {@code name} (whose labels contain {@code label}, if given). */
    static double sum(String text, String name, String label) {
      double total = 0;
      for (String line : text.split("\n")) {
        if (!line.startsWith(name)) {
          continue;
        }
        String rest = line.substring(name.length());
        if (!(rest.startsWith(" ") || rest.startsWith("{"))) {
          continue;
        }
        if (label != null && !rest.contains(label)) {
          continue;
        }
        int sp = line.lastIndexOf(' ');
        total += Double.parseDouble(line.substring(sp + 1));
      }
      return total;
    }
  }

  /** Files and bytes under the DSTL's local directory. */
  static final class LocalCosts implements Costs {
    private final Path dir;

    LocalCosts(Path dir) {
      this.dir = dir;
    }

    @Override
    public Map<String, Double> sample() throws IOException {
      long files = 0;
      long bytes = 0;
      if (Files.isDirectory(dir)) {
        try (Stream<Path> walk = Files.walk(dir)) {
          for (Iterator<Path> it = walk.iterator(); it.hasNext(); ) {
            Path p = it.next();
            if (Files.isRegularFile(p)) {
              files++;
              bytes += Files.size(p);
            }
          }
        }
      }
      Map<String, Double> out = new LinkedHashMap<>();
      out.put("files", (double) files);
      out.put("bytes", (double) bytes);
      return out;
    }
  }

  /**
   * The S3A client's own request counters (the FileSystem instance Flink caches for the bucket,
   * the one the DSTL writes through), then a listing of the prefix from the server.
   */
  static final class S3Costs implements Costs {
    private final Args a;

    S3Costs(Args a) {
      this.a = a;
    }

    @Override
    public Map<String, Double> sample() throws Exception {
      Map<String, Double> out = new LinkedHashMap<>();
      FileSystem fs = FileSystem.get(URI.create("s3://" + a.s3Bucket + "/"));
      Map<String, Long> stats = s3aStatistics(fs);
      for (String k :
          List.of(
              "object_put_request",
              "object_put_bytes",
              "multipart_upload_part_put",
              "object_multipart_initiated",
              "object_delete_request",
              "object_list_request",
              "object_metadata_request",
              "action_http_head_request",
              "action_http_get_request")) {
        out.put("s3a_" + k, (double) stats.getOrDefault(k, 0L));
      }
      long[] listed = list(fs, new org.apache.flink.core.fs.Path(s3Base(a)));
      out.put("objects", (double) listed[0]);
      out.put("bytes", (double) listed[1]);
      return out;
    }

    static long[] list(FileSystem fs, org.apache.flink.core.fs.Path p) throws IOException {
      long objects = 0;
      long bytes = 0;
      FileStatus[] entries;
      try {
        entries = fs.listStatus(p);
      } catch (FileNotFoundException e) {
        return new long[] {0, 0};
      }
      if (entries == null) {
        return new long[] {0, 0};
      }
      for (FileStatus s : entries) {
        if (s.isDir()) {
          long[] sub = list(fs, s.getPath());
          objects += sub[0];
          bytes += sub[1];
        } else {
          objects++;
          bytes += s.getLen();
        }
      }
      return new long[] {objects, bytes};
    }

    /** getHadoopFileSystem().getStorageStatistics(), by reflection (the jar's classes). */
    static Map<String, Long> s3aStatistics(FileSystem fs) throws Exception {
      Map<String, Long> out = new LinkedHashMap<>();
      Method hadoop = fs.getClass().getMethod("getHadoopFileSystem");
      Object h = hadoop.invoke(fs);
      Object stats = h.getClass().getMethod("getStorageStatistics").invoke(h);
      Iterator<?> it = (Iterator<?>) stats.getClass().getMethod("getLongStatistics").invoke(stats);
      while (it.hasNext()) {
        Object s = it.next();
        Method name = s.getClass().getMethod("getName");
        Method value = s.getClass().getMethod("getValue");
        name.setAccessible(true);
        value.setAccessible(true);
        out.put((String) name.invoke(s), ((Number) value.invoke(s)).longValue());
      }
      return out;
    }
  }

  // ------------------------------------------------------------------ JSON out

  /** A flat-or-nested JSON object, built in insertion order. */
  static final class Json {
    private final StringBuilder b = new StringBuilder("{");

    private Json key(String k) {
      if (b.length() > 1) {
        b.append(',');
      }
      b.append('"').append(k).append("\":");
      return this;
    }

    Json num(String k, double v) {
      key(k);
      if (Double.isFinite(v)) {
        b.append(v == Math.rint(v) && Math.abs(v) < 1e15 ? String.valueOf((long) v) : String.format(Locale.ROOT, "%.4f", v));
      } else {
        b.append("null");
      }
      return this;
    }

    Json str(String k, String v) {
      key(k).b.append('"');
      for (char ch : v.toCharArray()) {
        switch (ch) {
          case '"' -> b.append("\\\"");
          case '\\' -> b.append("\\\\");
          case '\n' -> b.append("\\n");
          case '\r' -> b.append("\\r");
          case '\t' -> b.append("\\t");
          default -> {
            if (ch < 0x20) {
              b.append(String.format("\\u%04x", (int) ch));
            } else {
              b.append(ch);
            }
          }
        }
      }
      b.append('"');
      return this;
    }

    Json obj(String k, Json v) {
      key(k).b.append(v);
      return this;
    }

    @Override
    public String toString() {
      return b + "}";
    }
  }
}
