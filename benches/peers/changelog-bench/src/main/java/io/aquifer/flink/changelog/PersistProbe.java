package io.aquifer.flink.changelog;

import io.aquifer.client.AquiferClient;
import io.aquifer.client.EventWriter;
import io.aquifer.client.Framing;
import io.aquifer.client.StreamName;
import io.aquifer.client.WriteAck;
import io.aquifer.client.WriterConfig;
import io.aquifer.flink.changelog.ChangeFormat.Change;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.apache.flink.api.common.JobID;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.runtime.state.KeyGroupRange;
import org.apache.flink.runtime.state.changelog.SequenceNumber;
import org.apache.flink.runtime.state.changelog.StateChangelogStorage;
import org.apache.flink.runtime.state.changelog.StateChangelogWriter;

/**
 * Diagnosis only (not part of the benchmark's figures): where the time of one aquifer persist()
 * goes, outside Flink. It lives in the storage's package (a split package on the bench's
 * classpath) to call its package-private parts; it changes nothing in them. Per round: N changes
 * of B bytes are appended to a writer of the real storage, then persist() is timed (the call and
 * the completion), and the same changes go through the storage's steps one at a time — {@code
 * ChangeFormat.encode}, {@code Framing.frame}, and a plain {@link EventWriter#write} of the
 * encoded payload to its own stream (call, then ack).
 *
 * <p>Stdout: one {@code PROBE key=value...} line per size (milliseconds; p50, p90, max and mean
 * over the rounds but the first fifth, the JIT's warm-up), then {@code DONE}.
 *
 * <pre>java -cp ... io.aquifer.flink.changelog.PersistProbe ADDRESS [changes,...] [bytes] [rounds] [interval-ms]</pre>
 */
public final class PersistProbe {
  public static void main(String[] argv) throws Exception {
    String address = argv[0];
    String[] sizes = (argv.length > 1 ? argv[1] : "10000").split(",");
    int bytes = argv.length > 2 ? Integer.parseInt(argv[2]) : 220;
    int rounds = Math.min(argv.length > 3 ? Integer.parseInt(argv[3]) : 60, 10_000);
    long intervalMs = argv.length > 4 ? Long.parseLong(argv[4]) : 500;
    for (String size : sizes) {
      probe(address, Integer.parseInt(size.trim()), bytes, rounds, intervalMs);
    }
    System.out.println("DONE");
    System.out.flush();
    System.exit(0);
  }

  static void probe(String address, int changes, int bytes, int rounds, long intervalMs)
      throws Exception {
    Configuration c = new Configuration();
    c.setString("state.changelog.aquifer.address", address);
    c.setString("state.changelog.aquifer.scope", "bench-changelog-probe");
    StateChangelogStorage<?> storage =
        new AquiferChangelogStorageFactory().createStorage(new JobID(), c, null, null);
    StateChangelogWriter<?> writer = storage.createWriter("probe", KeyGroupRange.of(0, 63), null);

    AquiferClient client = AquiferClient.connect(address);
    StreamName plain = new StreamName("bench-changelog-probe", "plain-" + UUID.randomUUID().toString().substring(0, 8));
    client.createStream(plain, 1);
    // As the storage's own writer: the persist delay as linger.
    EventWriter plainWriter =
        client.writer(plain, new WriterConfig().linger(Duration.ofMillis(2)).inFlightBytesMax(128L << 20));

    long[] call = new long[rounds];
    long[] complete = new long[rounds];
    long[] encode = new long[rounds];
    long[] frame = new long[rounds];
    long[] writeCall = new long[rounds];
    long[] writeAck = new long[rounds];
    byte[] value = new byte[bytes];
    long sqn = 0;
    for (int r = 0; r < rounds; r++) {
      List<Change> list = new ArrayList<>(changes);
      for (int i = 0; i < changes; i++) {
        value[0] = (byte) i;
        byte[] v = value.clone();
        writer.append(i % 64, v);
        list.add(new Change(sqn++, i % 64, v));
      }
      long t0 = System.nanoTime();
      CompletableFuture<?> f = writer.persist(SequenceNumber.of(0), r);
      long t1 = System.nanoTime();
      f.get(30, TimeUnit.SECONDS);
      long t2 = System.nanoTime();
      call[r] = t1 - t0;
      complete[r] = t2 - t0;

      long e0 = System.nanoTime();
      byte[] payload = ChangeFormat.encode(list);
      long e1 = System.nanoTime();
      Framing.frame("probe", payload);
      long e2 = System.nanoTime();
      CompletableFuture<WriteAck> ack = plainWriter.write("probe", payload);
      long e3 = System.nanoTime();
      ack.get(30, TimeUnit.SECONDS);
      long e4 = System.nanoTime();
      encode[r] = e1 - e0;
      frame[r] = e2 - e1;
      writeCall[r] = e3 - e2;
      writeAck[r] = e4 - e2;
      Thread.sleep(intervalMs);
    }
    StringBuilder line =
        new StringBuilder(
            String.format(
                java.util.Locale.ROOT,
                "PROBE changes=%d value_bytes=%d rounds=%d measured=%d persist_bytes=%d",
                changes, bytes, rounds, rounds - rounds / 5, (long) changes * (bytes + ChangeFormat.CHANGE_OVERHEAD_BYTES)));
    line.append(fields("persist_call", call))
        .append(fields("persist_complete", complete))
        .append(fields("encode", encode))
        .append(fields("frame", frame))
        .append(fields("write_call", writeCall))
        .append(fields("write_ack", writeAck));
    System.out.println(line);
    System.out.flush();
    plainWriter.close();
    writer.close();
    storage.close();
    client.close();
  }

  /** " NAME_p50=ms NAME_p90=ms NAME_max=ms NAME_mean=ms" over all rounds but the first fifth. */
  static String fields(String name, long[] ns) {
    long[] w = Arrays.copyOfRange(ns, ns.length / 5, ns.length);
    Arrays.sort(w);
    return String.format(
        java.util.Locale.ROOT,
        " %1$s_p50=%2$.3f %1$s_p90=%3$.3f %1$s_max=%4$.3f %1$s_mean=%5$.3f",
        name, q(w, 0.5), q(w, 0.9), w[w.length - 1] / 1e6, Arrays.stream(w).average().orElse(0) / 1e6);
  }

  static double q(long[] s, double q) {
    int rank = (int) Math.ceil(q * s.length);
    return s[Math.max(0, Math.min(s.length - 1, rank - 1))] / 1e6;
  }
}
