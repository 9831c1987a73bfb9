package io.aquifer.client;

import io.aquifer.proto.v1.BeginTransactionRequest;
import io.aquifer.proto.v1.ListTransactionsRequest;
import io.aquifer.proto.v1.TransactionInfo;
import io.aquifer.proto.v1.TransactionRequest;
import io.aquifer.proto.v1.TransactionsGrpc;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * Transactions on one stream: begin (optionally labelled with an owner), resume by id from any
 * process, list. Calls go to the metadata leader.
 */
public final class Transactions {
  private final AquiferClient client;
  private final StreamName stream;
  private final Duration timeout;

  Transactions(AquiferClient client, StreamName stream, Duration timeout) {
    this.client = client;
    this.stream = stream;
    this.timeout = timeout;
  }

  public StreamName stream() {
    return stream;
  }

  TransactionsGrpc.TransactionsBlockingStub stub(io.grpc.Channel channel) {
    return TransactionsGrpc.newBlockingStub(channel)
        .withDeadlineAfter(client.connection().requestTimeout().toMillis(), TimeUnit.MILLISECONDS);
  }

  /** Begins a transaction; {@code owner} (null: none) is a label {@link #list} reports. */
  public Transaction begin(String owner, WriterConfig config) {
    BeginTransactionRequest req =
        BeginTransactionRequest.newBuilder()
            .setScope(stream.scope())
            .setStream(stream.stream())
            .setTimeoutMs(timeout.toMillis())
            .setOwner(owner == null ? "" : owner)
            .build();
    TransactionInfo info =
        client.connection().meta("begin a transaction on " + stream, ch -> stub(ch).beginTransaction(req));
    return new Transaction(this, client, info, config);
  }

  /** A transaction begun elsewhere, by id: to write more, commit or abort it. */
  public Transaction resume(String id, WriterConfig config) {
    return new Transaction(this, client, call("status", id, false), config);
  }

  /** Open and recently finished transactions of the stream. */
  public List<TransactionInfo> list() {
    ListTransactionsRequest req =
        ListTransactionsRequest.newBuilder().setScope(stream.scope()).setStream(stream.stream()).build();
    return client
        .connection()
        .meta("list transactions of " + stream, ch -> stub(ch).listTransactions(req))
        .getTransactionsList();
  }

  /** Commits by id (idempotent); with {@code wait}, returns once the events are visible. */
  public TransactionInfo commit(String id, boolean wait) {
    TransactionInfo info = call("commit", id, wait);
    // The server waits up to 10 s for the merges; past that it answers COMMITTING.
    long deadline = System.nanoTime() + client.connection().retryTimeout().toNanos();
    Connection.Backoff backoff = new Connection.Backoff();
    while (wait
        && info.getState() == io.aquifer.proto.v1.TransactionState.TRANSACTION_STATE_COMMITTING) {
      if (System.nanoTime() > deadline) {
        throw new AquiferException(
            io.grpc.Status.Code.DEADLINE_EXCEEDED,
            null,
            "transaction " + id + " of " + stream + " is committed but not yet visible; it will be");
      }
      backoff.sleep();
      info = call("status", id, false);
    }
    return info;
  }

  /** Aborts by id (idempotent). */
  public TransactionInfo abort(String id) {
    return call("abort", id, false);
  }

  public TransactionInfo status(String id) {
    return call("status", id, false);
  }

  public TransactionInfo ping(String id) {
    return call("ping", id, false);
  }

  TransactionInfo call(String op, String id, boolean wait) {
    TransactionRequest req =
        TransactionRequest.newBuilder()
            .setScope(stream.scope())
            .setStream(stream.stream())
            .setTransactionId(id)
            .setWait(wait)
            .build();
    String what = op + " transaction " + id + " of " + stream;
    return client
        .connection()
        .meta(
            what,
            ch -> {
              TransactionsGrpc.TransactionsBlockingStub s = stub(ch);
              switch (op) {
                case "commit":
                  return s.commitTransaction(req);
                case "abort":
                  return s.abortTransaction(req);
                case "ping":
                  return s.pingTransaction(req);
                default:
                  return s.transactionStatus(req);
              }
            });
  }
}
