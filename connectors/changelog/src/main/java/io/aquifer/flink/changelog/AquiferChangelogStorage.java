package io.aquifer.flink.changelog;

import io.aquifer.client.AquiferClient;
import io.aquifer.client.AquiferException;
import io.aquifer.client.EventWriter;
import io.aquifer.client.Framing;
import io.aquifer.client.StreamName;
import io.aquifer.client.WriterConfig;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.flink.api.common.JobID;
import org.apache.flink.api.common.operators.MailboxExecutor;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.runtime.io.AvailabilityProvider;
import org.apache.flink.runtime.state.KeyGroupRange;
import org.apache.flink.runtime.state.changelog.ChangelogStateHandleStreamImpl;
import org.apache.flink.runtime.state.changelog.StateChangelogHandleReader;
import org.apache.flink.runtime.state.changelog.StateChangelogStorage;
import org.apache.flink.runtime.state.changelog.StateChangelogWriter;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * One TaskManager's changelog for one job: a stream of its own ({@code scope/<job>-<random>}),
 * written by one {@link EventWriter} that every operator's writer shares, so the persists of many
 * small operators within the persist delay go out as one append (one raft entry).
 *
 * <p>Fencing is by stream: a stream is written only by the storage that created it, with a writer
 * id of its own, so a zombie attempt on another TaskManager appends elsewhere; and a handle names
 * exact events (segment, offset, length) that are never rewritten, so nothing appended later,
 * by anyone, changes what a restore reads. Space is freed by moving each segment's head to the
 * oldest event a writer of this storage still needs ({@link #truncate}); a closed writer keeps its
 * events (a checkpoint may name them) until the storage closes, when the stream gets a time
 * retention instead.
 */
final class AquiferChangelogStorage implements StateChangelogStorage<ChangelogStateHandleStreamImpl> {
  private static final Logger LOG = LoggerFactory.getLogger(AquiferChangelogStorage.class);
  static final String IDENTIFIER = "aquifer";

  private final AquiferClient client;
  private final StreamName stream;
  private final EventWriter writer;
  private final Duration persistTimeout;
  private final Duration retentionAfterClose;
  private final long inFlightMax;
  private final AtomicLong inFlight = new AtomicLong();
  /**
   * Flink's helper is not thread-safe, and its {@code resetAvailable} drops the future a task waits
   * on without completing it: every change goes through {@link #overBudget} and {@link
   * #underBudget}, under this lock.
   */
  private final Object availabilityLock = new Object();
  private final AvailabilityProvider.AvailabilityHelper availability =
      new AvailabilityProvider.AvailabilityHelper();
  private final AvailabilityProvider availabilityView =
      () -> {
        synchronized (availabilityLock) {
          return availability.getAvailableFuture();
        }
      };
  /** Writer → first sequence number of each placed event → {last sqn, segment, offset}. */
  private final Map<String, TreeMap<Long, long[]>> placements = new HashMap<>();
  /** In-flight append → the segments' ends when it began. */
  private final Map<Long, Map<Long, Long>> inFlightFloors = new HashMap<>();
  private long appends;
  /** Segment → one past the last event acknowledged to this storage. */
  private final Map<Long, Long> ends = new HashMap<>();
  /** Segment → the head this storage last asked for. */
  private final Map<Long, Long> heads = new HashMap<>();
  /** Encodes and appends uploads, in the order persists and early uploads hand them over. */
  private final ExecutorService uploader =
      Executors.newSingleThreadExecutor(
          r -> {
            Thread t = new Thread(r, "aquifer-changelog-upload");
            t.setDaemon(true);
            return t;
          });
  private final ExecutorService truncations =
      Executors.newSingleThreadExecutor(
          r -> {
            Thread t = new Thread(r, "aquifer-changelog-truncate");
            t.setDaemon(true);
            return t;
          });
  private int writers;
  /** Completed checkpoints Flink keeps: their changes must stay. */
  private final int retained;
  /** A writer uploads its buffered changes once they reach this, without waiting for a persist. */
  private final long uploadEarly;

  AquiferChangelogStorage(JobID job, Configuration config) {
    this.client = AquiferClient.connect(config.get(AquiferChangelogOptions.ADDRESS));
    this.persistTimeout = config.get(AquiferChangelogOptions.PERSIST_TIMEOUT);
    this.retentionAfterClose = config.get(AquiferChangelogOptions.RETENTION_AFTER_CLOSE);
    this.inFlightMax = config.get(AquiferChangelogOptions.IN_FLIGHT_MAX).getBytes();
    this.retained = config.get(org.apache.flink.configuration.CheckpointingOptions.MAX_RETAINED_CHECKPOINTS);
    this.uploadEarly = config.get(AquiferChangelogOptions.UPLOAD_EARLY).getBytes();
    String suffix = UUID.randomUUID().toString().replace("-", "").substring(0, 12);
    this.stream = new StreamName(config.get(AquiferChangelogOptions.SCOPE), job.toHexString() + "-" + suffix);
    client.createStream(stream, config.get(AquiferChangelogOptions.SEGMENTS));
    // Twice the availability bound: the writer blocks only if a task ignores back-pressure.
    this.writer =
        client.writer(
            stream,
            new WriterConfig()
                .writerId("changelog-" + suffix)
                .linger(config.get(AquiferChangelogOptions.PERSIST_DELAY))
                .inFlightBytesMax(2 * inFlightMax));
    underBudget();
    LOG.info("state changelog for job {} in {}", job, stream);
  }

  StreamName stream() {
    return stream;
  }

  Duration persistTimeout() {
    return persistTimeout;
  }

  @Override
  public StateChangelogWriter<ChangelogStateHandleStreamImpl> createWriter(
      String operatorId, KeyGroupRange keyGroupRange, MailboxExecutor mailboxExecutor) {
    synchronized (this) {
      writers++;
      return new AquiferChangelogWriter(
          this, operatorId + "/" + keyGroupRange + "/" + writers, keyGroupRange, retained, uploadEarly);
    }
  }

  /**
   * Uploads one event of {@code writerKey} holding its changes {@code firstSqn..lastSqn}: encoded
   * and appended on the uploader thread, never the task's; completes with where it is (null:
   * unknown, a duplicate after a reconnect). Its bytes count against the in-flight budget from
   * this call until its ack.
   */
  CompletableFuture<Locator> upload(
      String writerKey, long firstSqn, long lastSqn, List<ChangeFormat.Change> changes, long bytes) {
    long id;
    synchronized (this) {
      id = ++appends;
      // Until it is placed, no head moves past where the segments end now.
      inFlightFloors.put(id, new HashMap<>(ends));
    }
    inFlight.addAndGet(bytes);
    overBudget();
    int keyBytes = writerKey.getBytes(StandardCharsets.UTF_8).length;
    String name = stream.toString();
    CompletableFuture<Locator> placedAt = new CompletableFuture<>();
    CompletableFuture.supplyAsync(() -> ChangeFormat.encode(changes), uploader)
        .thenCompose(
            payload -> {
              int framed = Framing.framedSize(keyBytes, payload.length);
              return writer
                  .write(writerKey, payload)
                  .thenApply(
                      a -> a.offset() < 0 ? null : new Locator(name, a.segmentId(), a.offset(), framed));
            })
        .whenComplete(
            (at, error) -> {
              placed(id, writerKey, firstSqn, lastSqn, at, bytes);
              if (error != null) {
                placedAt.completeExceptionally(error);
              } else {
                placedAt.complete(at);
              }
            });
    return placedAt;
  }

  private void placed(
      long id, String writerKey, long firstSqn, long lastSqn, Locator at, long bytes) {
    synchronized (this) {
      inFlightFloors.remove(id);
      if (at != null) {
        ends.merge(at.segmentId, at.offset + at.framedBytes, Math::max);
        placements
            .computeIfAbsent(writerKey, k -> new TreeMap<>())
            .put(firstSqn, new long[] {lastSqn, at.segmentId, at.offset});
      }
    }
    inFlight.addAndGet(-bytes);
    underBudget();
  }

  /** Over the in-flight budget: unavailable (Flink back-pressures the tasks). */
  private void overBudget() {
    synchronized (availabilityLock) {
      if (inFlight.get() > inFlightMax) {
        availability.resetUnavailable();
      }
    }
  }

  /** Down to half the budget: available again, and the tasks waiting are woken. */
  private void underBudget() {
    CompletableFuture<?> waiting;
    synchronized (availabilityLock) {
      if (inFlight.get() > inFlightMax / 2 || availability.isAvailable()) {
        return;
      }
      waiting = availability.getUnavailableToResetAvailable();
    }
    // Acks arrive under the client's locks: the waiters run on another thread.
    CompletableFuture.runAsync(() -> waiting.complete(null));
  }

  /**
   * {@code writerKey} no longer needs its changes before {@code toSqn}: forget its events that
   * hold only those, and move each segment's head to the oldest event any writer of this storage
   * still needs (never past an append still in flight).
   */
  synchronized void truncate(String writerKey, long toSqn) {
    TreeMap<Long, long[]> mine = placements.get(writerKey);
    if (mine != null) {
      mine.values().removeIf(p -> p[0] < toSqn);
    }
    for (Map.Entry<Long, Long> end : ends.entrySet()) {
      long segment = end.getKey();
      long head = end.getValue();
      for (Map<Long, Long> floor : inFlightFloors.values()) {
        head = Math.min(head, floor.getOrDefault(segment, 0L));
      }
      for (TreeMap<Long, long[]> p : placements.values()) {
        for (long[] at : p.values()) {
          if (at[1] == segment) {
            head = Math.min(head, at[2]);
          }
        }
      }
      if (head > heads.getOrDefault(segment, 0L)) {
        heads.put(segment, head);
        long target = head;
        truncations.execute(() -> truncateSegment(segment, target));
      }
    }
  }

  private void truncateSegment(long segment, long head) {
    try {
      client.truncateSegment(segment, head);
      LOG.debug("{}: segment {} truncated to {}", stream, segment, head);
    } catch (AquiferException e) {
      // Space only: the next truncation moves the head further.
      LOG.warn("{}: truncating segment {} to {} failed", stream, segment, head, e);
    }
  }

  @Override
  public AvailabilityProvider getAvailabilityProvider() {
    return availabilityView;
  }

  @Override
  public StateChangelogHandleReader<ChangelogStateHandleStreamImpl> createReader() {
    return new AquiferChangelogReader(client);
  }

  @Override
  public void close() {
    try {
      writer.close();
      // A retained checkpoint may still name these events: keep them for a while, then let
      // retention remove the stream's data.
      client.updateRetention(stream, retentionAfterClose, 0);
    } catch (AquiferException e) {
      LOG.warn("closing the state changelog in {}", stream, e);
    } finally {
      truncations.shutdownNow();
      uploader.shutdownNow();
      client.close();
    }
  }
}
