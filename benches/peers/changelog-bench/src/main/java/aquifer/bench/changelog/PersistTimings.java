package aquifer.bench.changelog;

import java.util.Arrays;

/**
 * What the timed writers measured, for the driver in the same JVM (the MiniCluster's tasks load
 * this class from the application classpath too, as the job ships no jars). Only persists that
 * began inside a measurement window ({@link #start} .. {@link #stop}) are kept; a persist that
 * began inside it and completes after it still counts.
 */
public final class PersistTimings {
  private PersistTimings() {}

  private static volatile boolean measuring;
  private static long[] completeNanos = new long[1024];
  private static long[] callNanos = new long[1024];
  private static int count;
  private static long failures;
  private static long fullBytes;
  private static long incrementalBytes;
  private static long unmeasured;

  static boolean measuring() {
    return measuring;
  }

  /** Forgets everything and starts measuring. */
  public static synchronized void start() {
    count = 0;
    failures = 0;
    fullBytes = 0;
    incrementalBytes = 0;
    unmeasured = 0;
    measuring = true;
  }

  public static void stop() {
    measuring = false;
  }

  static synchronized void completed(
      boolean measured, long call, long complete, long full, long incremental) {
    if (!measured) {
      unmeasured++;
      return;
    }
    if (count == completeNanos.length) {
      completeNanos = Arrays.copyOf(completeNanos, count * 2);
      callNanos = Arrays.copyOf(callNanos, count * 2);
    }
    completeNanos[count] = complete;
    callNanos[count] = call;
    count++;
    fullBytes += full;
    incrementalBytes += incremental;
  }

  static synchronized void failed(boolean measured) {
    if (measured) {
      failures++;
    }
  }

  /** A copy of what was measured. */
  public static synchronized Snapshot snapshot() {
    long[] c = Arrays.copyOf(completeNanos, count);
    long[] s = Arrays.copyOf(callNanos, count);
    Arrays.sort(c);
    Arrays.sort(s);
    return new Snapshot(c, s, failures, fullBytes, incrementalBytes, unmeasured);
  }

  /** Persist latencies, sorted, in ns. */
  public static final class Snapshot {
    /** Call to the future's completion. */
    public final long[] complete;
    /** Inside the persist() call itself (the task thread's share). */
    public final long[] call;
    public final long failures;
    /** Sum over the persists of the handles' state sizes and incremental (new) sizes. */
    public final long fullBytes;
    public final long incrementalBytes;
    /** Persists completed outside the window (warm-up). */
    public final long unmeasured;

    Snapshot(long[] complete, long[] call, long failures, long full, long incremental, long unmeasured) {
      this.complete = complete;
      this.call = call;
      this.failures = failures;
      this.fullBytes = full;
      this.incrementalBytes = incremental;
      this.unmeasured = unmeasured;
    }
  }
}
