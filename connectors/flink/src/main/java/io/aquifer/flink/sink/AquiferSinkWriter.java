package io.aquifer.flink.sink;

import io.aquifer.client.AquiferClient;
import io.aquifer.client.AquiferException;
import io.aquifer.client.EventWriter;
import io.aquifer.client.StreamName;
import io.aquifer.client.Transaction;
import io.aquifer.client.Transactions;
import io.aquifer.client.WriteAck;
import io.aquifer.client.WriterConfig;
import io.aquifer.proto.v1.TransactionInfo;
import io.aquifer.proto.v1.TransactionState;
import java.io.IOException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.List;
import java.util.OptionalLong;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.api.connector.sink2.CommittingSinkWriter;
import org.apache.flink.api.connector.sink2.StatefulSinkWriter;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * A sink subtask. At least once: one batching writer, flushed on every checkpoint. Exactly once:
 * one transaction per checkpoint; {@link #prepareCommit} flushes it and hands its id to the
 * committer, and the next begins with the next event. Transactions carry the owner label {@code
 * prefix/subtask/checkpoint} (the checkpoint after which they began), so a restored writer aborts
 * every transaction its subtask began after the restored checkpoint: those were never
 * pre-committed in it. Owns its client, writer and open transaction; never commits (the committer
 * does).
 */
final class AquiferSinkWriter<IN>
    implements StatefulSinkWriter<IN, AquiferWriterState>,
        CommittingSinkWriter<IN, AquiferCommittable> {
  private static final Logger LOG = LoggerFactory.getLogger(AquiferSinkWriter.class);

  private final AquiferClient client;
  private final StreamName stream;
  private final DeliveryGuarantee guarantee;
  private final SerializationSchema<IN> serializer;
  private final KeySelector<IN, String> keys;
  private final String prefix;
  private final int subtask;
  private final WriterConfig writerConfig;
  private final Transactions transactions;

  private EventWriter writer;
  private Transaction current;
  /** The last checkpoint this writer snapshotted (or restored from): labels the next transaction. */
  private long lastCheckpoint;
  private final AtomicReference<Throwable> failure = new AtomicReference<>();
  private final ScheduledExecutorService pinger;

  AquiferSinkWriter(
      AquiferClient client,
      StreamName stream,
      DeliveryGuarantee guarantee,
      SerializationSchema<IN> serializer,
      KeySelector<IN, String> keys,
      String prefix,
      Duration transactionTimeout,
      int subtask,
      int parallelism,
      OptionalLong restoredCheckpoint,
      Collection<AquiferWriterState> restored) {
    this.client = client;
    this.stream = stream;
    this.guarantee = guarantee;
    this.serializer = serializer;
    this.keys = keys;
    this.prefix = prefix;
    this.subtask = subtask;
    this.lastCheckpoint = restoredCheckpoint.orElse(0);
    this.writerConfig = new WriterConfig().writerId(prefix + "-" + subtask);
    this.transactions = client.transactions(stream, transactionTimeout);
    if (guarantee == DeliveryGuarantee.EXACTLY_ONCE) {
      abortLeftovers(restoredCheckpoint, restored, parallelism);
      long every = Math.max(1_000, transactionTimeout.toMillis() / 3);
      pinger =
          Executors.newSingleThreadScheduledExecutor(
              r -> {
                Thread t = new Thread(r, "aquifer-sink-ping-" + subtask);
                t.setDaemon(true);
                return t;
              });
      pinger.scheduleAtFixedRate(this::ping, every, every, TimeUnit.MILLISECONDS);
    } else {
      pinger = null;
    }
  }

  /**
   * Aborts the open transactions an earlier attempt of this subtask (or of the subtasks whose
   * state it restored) began after the restored checkpoint; on a fresh start, all of theirs.
   * Subtask 0 of a fresh start also aborts those of subtasks beyond the current parallelism.
   */
  private void abortLeftovers(
      OptionalLong restoredCheckpoint, Collection<AquiferWriterState> restored, int parallelism) {
    Set<Integer> mine = new TreeSet<>();
    mine.add(subtask);
    for (AquiferWriterState s : restored) {
      if (s.prefix.equals(prefix)) {
        mine.add(s.subtask);
      }
    }
    long from = restoredCheckpoint.orElse(-1);
    int aborted = 0;
    for (TransactionInfo t : transactions.list()) {
      if (t.getState() != TransactionState.TRANSACTION_STATE_OPEN) {
        continue;
      }
      Owner o = Owner.parse(t.getOwner(), prefix);
      if (o == null) {
        continue;
      }
      boolean ours = mine.contains(o.subtask) || (from < 0 && subtask == 0 && o.subtask >= parallelism);
      if (ours && o.checkpoint >= from) {
        transactions.abort(t.getTransactionId());
        aborted++;
      }
    }
    if (aborted > 0) {
      LOG.info(
          "{}: aborted {} transaction(s) an earlier attempt of subtask {} left open", stream, aborted, subtask);
    }
  }

  /** {@code prefix/subtask/checkpoint}, the label of this sink's transactions. */
  static final class Owner {
    final int subtask;
    final long checkpoint;

    Owner(int subtask, long checkpoint) {
      this.subtask = subtask;
      this.checkpoint = checkpoint;
    }

    static String format(String prefix, int subtask, long checkpoint) {
      return prefix + "/" + subtask + "/" + checkpoint;
    }

    /** Null when the label is not one of this prefix. */
    static Owner parse(String label, String prefix) {
      if (!label.startsWith(prefix + "/")) {
        return null;
      }
      String[] rest = label.substring(prefix.length() + 1).split("/");
      if (rest.length != 2) {
        return null;
      }
      try {
        return new Owner(Integer.parseInt(rest[0]), Long.parseLong(rest[1]));
      } catch (NumberFormatException e) {
        return null;
      }
    }
  }

  @Override
  public void write(IN element, Context context) throws IOException {
    rethrow();
    String key;
    try {
      key = keys == null ? null : keys.getKey(element);
    } catch (Exception e) {
      throw new IOException("the sink's key selector failed", e);
    }
    byte[] payload = serializer.serialize(element);
    if (guarantee == DeliveryGuarantee.EXACTLY_ONCE) {
      if (current == null) {
        current = transactions.begin(Owner.format(prefix, subtask, lastCheckpoint), writerConfig);
      }
      current.write(key, payload).whenComplete(this::onAck);
    } else {
      if (writer == null) {
        writer = client.writer(stream, writerConfig);
      }
      writer.write(key, payload).whenComplete(this::onAck);
    }
  }

  private void onAck(WriteAck ignored, Throwable error) {
    if (error != null) {
      failure.compareAndSet(null, error);
    }
  }

  private void rethrow() throws IOException {
    Throwable t = failure.get();
    if (t != null) {
      throw new IOException("writing to " + stream + " failed", t);
    }
  }

  @Override
  public void flush(boolean endOfInput) throws IOException {
    try {
      if (writer != null) {
        writer.flush();
      }
      if (current != null) {
        current.flush();
      }
    } catch (AquiferException e) {
      throw new IOException("flushing to " + stream + " failed", e);
    }
    rethrow();
  }

  @Override
  public Collection<AquiferCommittable> prepareCommit() throws IOException {
    if (current == null) {
      return Collections.emptyList();
    }
    Transaction t = current;
    current = null;
    try {
      t.flush();
    } catch (AquiferException e) {
      throw new IOException("pre-committing " + t.id() + " on " + stream + " failed", e);
    }
    rethrow();
    t.close();
    return List.of(new AquiferCommittable(stream.toString(), t.id()));
  }

  @Override
  public List<AquiferWriterState> snapshotState(long checkpointId) {
    lastCheckpoint = checkpointId;
    return List.of(new AquiferWriterState(prefix, subtask));
  }

  private void ping() {
    Transaction t = current;
    if (t == null) {
      return;
    }
    try {
      t.ping();
    } catch (AquiferException e) {
      if (AquiferException.REASON_TRANSACTION_NOT_OPEN.equals(e.reason())) {
        failure.compareAndSet(null, e);
      }
      // Otherwise retried at the next tick.
    }
  }

  @Override
  public void close() {
    if (pinger != null) {
      pinger.shutdownNow();
    }
    List<AutoCloseable> toClose = new ArrayList<>();
    if (current != null) {
      // Never pre-committed: nothing of it may become visible.
      Transaction t = current;
      current = null;
      try {
        t.abort();
      } catch (AquiferException e) {
        LOG.warn("aborting {} on close failed; it times out on its own", t.id(), e);
      }
    }
    if (writer != null) {
      toClose.add(writer);
    }
    toClose.add(client);
    for (AutoCloseable c : toClose) {
      try {
        c.close();
      } catch (Exception e) {
        LOG.warn("closing the sink writer of {}", stream, e);
      }
    }
  }
}
