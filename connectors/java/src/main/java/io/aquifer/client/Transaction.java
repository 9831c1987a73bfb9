package io.aquifer.client;

import io.aquifer.proto.v1.TransactionInfo;
import io.aquifer.proto.v1.TransactionPart;
import io.aquifer.proto.v1.TransactionState;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;

/**
 * One transaction: events written to it stay invisible until {@link #commit}, then all become
 * visible (each segment's contiguously, in per-key write order); after {@link #abort} or a timeout
 * without {@link #ping}, never. Writes route by key to the transaction's parts.
 */
public final class Transaction implements AutoCloseable {
  private final Transactions owner;
  private final TransactionInfo info;
  private final EventWriter writer;

  Transaction(Transactions owner, AquiferClient client, TransactionInfo info, WriterConfig config) {
    this.owner = owner;
    this.info = info;
    List<EventWriter.Route> routes = new ArrayList<>();
    for (TransactionPart p : info.getPartsList()) {
      routes.add(
          new EventWriter.Route(p.getTransactionSegmentId(), p.getKeyLow(), p.getKeyHigh(), 0));
    }
    this.writer = new EventWriter(client, owner.stream(), config, routes, info.getTransactionId());
  }

  /** 32 hex digits. */
  public String id() {
    return info.getTransactionId();
  }

  /** As of begin (or resume). */
  public TransactionInfo info() {
    return info;
  }

  /** Queues one event into the transaction (see {@link EventWriter#write}). */
  public CompletableFuture<WriteAck> write(String routingKey, byte[] payload) {
    return writer.write(routingKey, payload);
  }

  /** Makes every event written so far durable in the transaction (still invisible). */
  public void flush() {
    writer.flush();
  }

  /** Flushes, then commits; with {@code wait}, returns once the events are visible. */
  public TransactionInfo commit(boolean wait) {
    writer.flush();
    TransactionInfo out = owner.commit(id(), wait);
    writer.close();
    return out;
  }

  /** Aborts: nothing written to the transaction ever becomes visible. */
  public TransactionInfo abort() {
    closeWriterQuietly();
    return owner.abort(id());
  }

  /** Renews the lease for the transaction's timeout. */
  public TransactionInfo ping() {
    return owner.ping(id());
  }

  public TransactionState state() {
    return owner.status(id()).getState();
  }

  private void closeWriterQuietly() {
    try {
      writer.close();
    } catch (AquiferException ignored) {
      // Aborting: whatever did not reach the transaction does not matter.
    }
  }

  /** Ends the writer's sessions (does not commit or abort). */
  @Override
  public void close() {
    closeWriterQuietly();
  }
}
