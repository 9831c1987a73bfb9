package io.aquifer.client;

import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import java.time.Duration;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;

/**
 * The channels to a cluster's nodes, one per address, and the retry rule every call shares:
 * a refusal that names another node ({@code aquifer-leader}) is followed at once; any other
 * retryable failure is retried with backoff until the retry timeout. Owns no call's semantics.
 */
final class Connection implements AutoCloseable {
  /** The largest event (64 MiB) plus the framing around it, as the Rust client allows. */
  static final int MESSAGE_BYTES_MAX = 64 * 1024 * 1024 + 8 * 1024 * 1024;

  private final String address;
  private final Duration retryTimeout;
  private final Duration requestTimeout;
  private final ConcurrentHashMap<String, ManagedChannel> channels = new ConcurrentHashMap<>();
  /** The node that last answered a metadata call (transactions, groups follow the leader). */
  private volatile String metaLeader;

  Connection(String address, Duration requestTimeout, Duration retryTimeout) {
    this.address = address;
    this.metaLeader = address;
    this.requestTimeout = requestTimeout;
    this.retryTimeout = retryTimeout;
  }

  String address() {
    return address;
  }

  Duration retryTimeout() {
    return retryTimeout;
  }

  Duration requestTimeout() {
    return requestTimeout;
  }

  ManagedChannel channel(String target) {
    return channels.computeIfAbsent(
        target,
        t ->
            ManagedChannelBuilder.forTarget(t)
                .usePlaintext()
                .maxInboundMessageSize(MESSAGE_BYTES_MAX)
                .build());
  }

  /** A unary call at the metadata leader, retried as the class comment says. */
  <T> T meta(String what, Function<ManagedChannel, T> call) {
    return retrying(
        what,
        metaLeader,
        call,
        node -> {
          metaLeader = node;
        });
  }

  /** A unary call starting at {@code first}, retried as the class comment says. */
  <T> T retrying(
      String what,
      String first,
      Function<ManagedChannel, T> call,
      java.util.function.Consumer<String> answered) {
    long deadline = System.nanoTime() + retryTimeout.toNanos();
    String target = first;
    Backoff backoff = new Backoff();
    while (true) {
      try {
        T out = call.apply(channel(target));
        answered.accept(target);
        return out;
      } catch (RuntimeException e) {
        AquiferException error = AquiferException.from(e, what);
        if (!error.isRetryable() || System.nanoTime() > deadline) {
          throw error;
        }
        String leader = AquiferException.leaderOf(e);
        if (leader != null && !leader.equals(target)) {
          target = leader;
          continue;
        }
        if (!target.equals(address) && leader == null) {
          // The node we were sent to is gone: start over from the one we were given.
          target = address;
        }
        backoff.sleep();
      }
    }
  }

  @Override
  public void close() {
    for (ManagedChannel c : channels.values()) {
      c.shutdownNow();
    }
    for (ManagedChannel c : channels.values()) {
      try {
        c.awaitTermination(5, TimeUnit.SECONDS);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        return;
      }
    }
  }

  /** Exponential backoff from 20 ms to 1 s. */
  static final class Backoff {
    private long delayMs = 20;

    void sleep() {
      try {
        Thread.sleep(delayMs);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        throw new AquiferException(io.grpc.Status.Code.CANCELLED, null, "interrupted", e);
      }
      delayMs = Math.min(1000, delayMs * 2);
    }

    long next() {
      long d = delayMs;
      delayMs = Math.min(1000, delayMs * 2);
      return d;
    }

    void reset() {
      delayMs = 20;
    }
  }
}
