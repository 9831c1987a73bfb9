package io.aquifer.client;

import io.grpc.Metadata;
import io.grpc.Status;

/**
 * An error from Aquifer: the gRPC status code, the server's {@code aquifer-reason} when it sent one
 * (which case a status is: {@code sealed}, {@code transaction-aborted}, ...), and a message a user
 * can act on.
 */
public class AquiferException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  static final Metadata.Key<String> REASON =
      Metadata.Key.of("aquifer-reason", Metadata.ASCII_STRING_MARSHALLER);
  static final Metadata.Key<String> LEADER =
      Metadata.Key.of("aquifer-leader", Metadata.ASCII_STRING_MARSHALLER);

  public static final String REASON_SEALED = "sealed";
  public static final String REASON_TRANSACTION_COMMITTED = "transaction-committed";
  public static final String REASON_TRANSACTION_ABORTED = "transaction-aborted";
  public static final String REASON_TRANSACTION_NOT_OPEN = "transaction-not-open";

  private final Status.Code code;
  private final String reason;

  public AquiferException(Status.Code code, String reason, String message) {
    super(message);
    this.code = code;
    this.reason = reason;
  }

  AquiferException(Status.Code code, String reason, String message, Throwable cause) {
    super(message, cause);
    this.code = code;
    this.reason = reason;
  }

  /** Wraps a gRPC failure, keeping its code, reason and description. */
  static AquiferException from(Throwable t, String what) {
    if (t instanceof AquiferException) {
      return (AquiferException) t;
    }
    Status status = Status.fromThrowable(t);
    Metadata trailers = Status.trailersFromThrowable(t);
    String reason = trailers == null ? null : trailers.get(REASON);
    String description = status.getDescription() == null ? "" : status.getDescription();
    Status.Code code = status.getCode();
    // grpc-java's Netty transport reports a connection that closed under a
    // call as UNKNOWN "channel closed" (a ClosedChannelException): the node
    // went away, which is what UNAVAILABLE says, and is retried like it.
    if (code == Status.Code.UNKNOWN && closedChannel(t)) {
      code = Status.Code.UNAVAILABLE;
    }
    return new AquiferException(code, reason, what + ": " + code + ": " + description, t);
  }

  private static boolean closedChannel(Throwable t) {
    for (Throwable c = t; c != null; c = c.getCause() == c ? null : c.getCause()) {
      if (c instanceof java.nio.channels.ClosedChannelException) {
        return true;
      }
      Status s = Status.fromThrowable(c);
      if (s.getCause() instanceof java.nio.channels.ClosedChannelException) {
        return true;
      }
    }
    return false;
  }

  /** The node a refusal named as the one to ask instead, if any. */
  static String leaderOf(Throwable t) {
    Metadata trailers = Status.trailersFromThrowable(t);
    return trailers == null ? null : trailers.get(LEADER);
  }

  public Status.Code code() {
    return code;
  }

  /** The server's {@code aquifer-reason}, or null. */
  public String reason() {
    return reason;
  }

  /** Worth retrying the same request: the node is unreachable, leaderless or busy. */
  public boolean isRetryable() {
    return code == Status.Code.UNAVAILABLE
        || code == Status.Code.DEADLINE_EXCEEDED
        || code == Status.Code.RESOURCE_EXHAUSTED
        || code == Status.Code.ABORTED;
  }

  static boolean isRetryable(Throwable t) {
    return t instanceof AquiferException
        ? ((AquiferException) t).isRetryable()
        : from(t, "").isRetryable();
  }
}
