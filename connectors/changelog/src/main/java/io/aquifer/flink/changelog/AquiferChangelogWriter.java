package io.aquifer.flink.changelog;

import io.aquifer.flink.changelog.ChangeFormat.Change;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.TreeMap;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.runtime.state.KeyGroupRange;
import org.apache.flink.runtime.state.SnapshotResult;
import org.apache.flink.runtime.state.StreamStateHandle;
import org.apache.flink.runtime.state.changelog.ChangelogStateHandleStreamImpl;
import org.apache.flink.runtime.state.changelog.SequenceNumber;
import org.apache.flink.runtime.state.changelog.StateChange;
import org.apache.flink.runtime.state.changelog.StateChangelogWriter;

/**
 * One operator's (and key-group range's) changelog. Every {@code append} gets the next sequence
 * number and is buffered; {@code persist(from)} appends what is not yet uploaded as events of at
 * most {@link #EVENT_BYTES} and answers a handle naming every uploaded event holding a change at
 * or after {@code from}, with {@code from} beside each so a restore skips older changes in it.
 * An upload that fails, or whose position came back unknown (a duplicate after a reconnect), is
 * uploaded again at the next persist: a handle only ever names events at known positions.
 *
 * <p>Called from the task thread; acks complete on the client's threads, hence the lock.
 * Space: {@code truncate}, {@code confirm} and {@code reset} together say which changes a
 * retained checkpoint may still name ({@link #free}).
 */
final class AquiferChangelogWriter implements StateChangelogWriter<ChangelogStateHandleStreamImpl> {
  /** Largest payload of one event (the server's default event limit is 8 MiB). */
  static final int EVENT_BYTES = 4 * 1024 * 1024;

  private final AquiferChangelogStorage storage;
  private final String key;
  private final KeyGroupRange keyGroupRange;
  private long nextSqn;
  private List<Change> notUploaded = new ArrayList<>();
  /** First sequence number of each upload → the upload, in order. */
  private final TreeMap<Long, Upload> uploads = new TreeMap<>();
  /** Checkpoints persisted and neither confirmed nor reset yet: id → the sqn they start at. */
  private final TreeMap<Long, Long> pending = new TreeMap<>();
  /** The start sqns of the last {@code retained} confirmed checkpoints, oldest first. */
  private final java.util.ArrayDeque<Long> confirmed = new java.util.ArrayDeque<>();
  private final int retained;
  private final long uploadEarly;
  private long notUploadedBytes;
  /** Flink's truncation point: it will not persist anything older again. */
  private long truncatedTo;
  private boolean closed;

  AquiferChangelogWriter(
      AquiferChangelogStorage storage,
      String key,
      KeyGroupRange keyGroupRange,
      int retained,
      long uploadEarly) {
    this.storage = storage;
    this.key = key;
    this.keyGroupRange = keyGroupRange;
    this.retained = Math.max(1, retained);
    this.uploadEarly = uploadEarly;
  }

  /** One event's worth of changes, from append to ack. */
  private static final class Upload {
    /** Kept only until the event is placed (to upload it again if it is not): then dropped. */
    volatile List<Change> changes;
    final long firstSqn;
    final long lastSqn;
    final long bytes;
    CompletableFuture<Locator> done;

    Upload(List<Change> changes, long bytes) {
      this.changes = changes;
      this.firstSqn = changes.get(0).sqn;
      this.lastSqn = changes.get(changes.size() - 1).sqn;
      this.bytes = bytes;
    }

    boolean failed() {
      return done.isCompletedExceptionally();
    }
  }

  @Override
  public SequenceNumber initialSequenceNumber() {
    return SequenceNumber.of(0);
  }

  @Override
  public synchronized SequenceNumber nextSequenceNumber() {
    return SequenceNumber.of(nextSqn);
  }

  @Override
  public void appendMeta(byte[] value) {
    append(StateChange.META_KEY_GROUP, value);
  }

  @Override
  public synchronized void append(int keyGroup, byte[] value) {
    if (closed) {
      throw new IllegalStateException("append to a closed changelog writer");
    }
    Change c = new Change(nextSqn++, keyGroup, value);
    notUploaded.add(c);
    notUploadedBytes += c.encodedBytes();
    if (notUploadedBytes >= uploadEarly) {
      // Between checkpoints: a persist then has only the rest to send.
      for (Upload u : split(notUploaded)) {
        upload(u);
      }
      notUploaded = new ArrayList<>();
      notUploadedBytes = 0;
    }
  }

  @Override
  public synchronized CompletableFuture<SnapshotResult<ChangelogStateHandleStreamImpl>> persist(
      SequenceNumber from, long checkpointId) {
    long fromSqn = number(from);
    pending.put(checkpointId, fromSqn);
    // Failed or unplaced uploads go again, first, so sequence order holds in the stream.
    List<Change> again = new ArrayList<>();
    for (Iterator<Upload> it = uploads.values().iterator(); it.hasNext(); ) {
      Upload u = it.next();
      if (u.done.isDone() && (u.failed() || u.done.join() == null)) {
        again.addAll(u.changes);
        it.remove();
      }
    }
    again.addAll(notUploaded);
    notUploaded = new ArrayList<>();
    notUploadedBytes = 0;
    long incremental = 0;
    for (Upload u : split(again)) {
      upload(u);
      incremental += u.bytes;
    }
    List<Upload> needed = new ArrayList<>();
    long size = 0;
    for (Upload u : uploads.values()) {
      if (u.lastSqn >= fromSqn) {
        needed.add(u);
        size += u.bytes;
      }
    }
    if (needed.isEmpty()) {
      return CompletableFuture.completedFuture(SnapshotResult.empty());
    }
    CompletableFuture<?>[] waits = needed.stream().map(u -> u.done).toArray(CompletableFuture[]::new);
    long total = size;
    long added = incremental;
    return CompletableFuture.allOf(waits)
        .orTimeout(storage.persistTimeout().toMillis(), TimeUnit.MILLISECONDS)
        .thenApply(
            ignored -> {
              List<Tuple2<StreamStateHandle, Long>> handles = new ArrayList<>();
              for (Upload u : needed) {
                Locator at = u.done.join();
                if (at == null) {
                  throw new IllegalStateException(
                      "an upload's position is unknown (a retried append); the next persist uploads it again");
                }
                handles.add(Tuple2.of(at.toHandle(), Math.max(fromSqn, u.firstSqn)));
              }
              return SnapshotResult.of(
                  new ChangelogStateHandleStreamImpl(
                      handles, keyGroupRange, total, added, AquiferChangelogStorage.IDENTIFIER));
            });
  }

  /** Cuts changes into uploads of at most EVENT_BYTES (a larger single change goes alone). */
  private static List<Upload> split(List<Change> changes) {
    List<Upload> out = new ArrayList<>();
    List<Change> run = new ArrayList<>();
    long bytes = ChangeFormat.HEADER_BYTES;
    for (Change c : changes) {
      if (!run.isEmpty() && bytes + c.encodedBytes() > EVENT_BYTES) {
        out.add(new Upload(run, bytes));
        run = new ArrayList<>();
        bytes = ChangeFormat.HEADER_BYTES;
      }
      run.add(c);
      bytes += c.encodedBytes();
    }
    if (!run.isEmpty()) {
      out.add(new Upload(run, bytes));
    }
    return out;
  }

  private void upload(Upload u) {
    u.done =
        storage
            .upload(key, u.firstSqn, u.lastSqn, u.changes, u.bytes)
            .thenApply(
                at -> {
                  if (at != null) {
                    u.changes = null;
                  }
                  return at;
                });
    uploads.put(u.firstSqn, u);
  }

  @Override
  public synchronized void truncate(SequenceNumber to) {
    long toSqn = number(to);
    truncatedTo = Math.max(truncatedTo, toSqn);
    uploads.headMap(toSqn).entrySet().removeIf(e -> e.getValue().lastSqn < toSqn);
    notUploaded.removeIf(c -> c.sqn < toSqn);
    notUploadedBytes = notUploaded.stream().mapToLong(Change::encodedBytes).sum();
    free();
  }

  /** Checkpoint {@code checkpointId}, which names changes from {@code from}, completed. */
  @Override
  public synchronized void confirm(SequenceNumber from, SequenceNumber to, long checkpointId) {
    pending.headMap(checkpointId, true).clear();
    confirmed.addLast(number(from));
    while (confirmed.size() > retained) {
      confirmed.removeFirst();
    }
    free();
  }

  /** Checkpoint {@code checkpointId} was aborted: it needs nothing. */
  @Override
  public synchronized void reset(SequenceNumber from, SequenceNumber to, long checkpointId) {
    pending.remove(checkpointId);
    free();
  }

  /**
   * Frees the events holding only changes no one can need: older than Flink's truncation point,
   * than every retained completed checkpoint's first change, and than every checkpoint still in
   * progress. (Flink's truncate alone is not enough: the latest completed checkpoint may still
   * name changes before it, as the DFS storage's hand-over of confirmed files to the JobManager
   * shows.)
   */
  private void free() {
    long keep = truncatedTo;
    for (long f : confirmed) {
      keep = Math.min(keep, f);
    }
    for (long f : pending.values()) {
      keep = Math.min(keep, f);
    }
    if (confirmed.isEmpty()) {
      // No completed checkpoint seen: a restored one may name anything before.
      return;
    }
    storage.truncate(key, keep);
  }

  @Override
  public synchronized void truncateAndClose(SequenceNumber lastUploaded) {
    notUploaded.clear();
    closed = true;
  }

  @Override
  public synchronized void close() {
    closed = true;
  }

  private static long number(SequenceNumber n) {
    return ((SequenceNumber.GenericSequenceNumber) n).number;
  }
}
