package io.aquifer.client;

import java.io.Serializable;
import java.time.Duration;
import java.util.UUID;

/** How an {@link EventWriter} batches, bounds memory and retries; the Rust client's defaults. */
public final class WriterConfig implements Serializable {
  private static final long serialVersionUID = 1L;

  private String writerId = "java-" + UUID.randomUUID().toString().replace("-", "");
  private int batchBytesMax = 256 * 1024;
  private Duration linger = Duration.ofMillis(1);
  private long inFlightBytesMax = 2L * 1024 * 1024;
  private Duration retryTimeout = Duration.ofSeconds(60);

  /**
   * The writer id, stable across retries: the server keeps the last event number it applied per
   * (segment, writer id) and drops a resent batch. 1 to 255 bytes. Default: random.
   */
  public WriterConfig writerId(String id) {
    if (id == null || id.isEmpty() || id.getBytes(java.nio.charset.StandardCharsets.UTF_8).length > 255) {
      throw new IllegalArgumentException("a writer id is 1 to 255 bytes: " + id);
    }
    this.writerId = id;
    return this;
  }

  /** A batch is sent once it holds this many framed bytes... Default: 256 KiB. */
  public WriterConfig batchBytesMax(int bytes) {
    if (bytes < 1) {
      throw new IllegalArgumentException("batchBytesMax must be positive");
    }
    this.batchBytesMax = bytes;
    return this;
  }

  /** ... or once its first event waited this long. Default: 1 ms. */
  public WriterConfig linger(Duration linger) {
    this.linger = linger;
    return this;
  }

  /**
   * Framed bytes queued or unacknowledged; at the limit writes wait. Default: 2 MiB, which bounds
   * ack latency at saturation (about this over the node's throughput); raise it for a writer far
   * from the node (throughput is at most this per round trip).
   */
  public WriterConfig inFlightBytesMax(long bytes) {
    if (bytes < 1) {
      throw new IllegalArgumentException("inFlightBytesMax must be positive");
    }
    this.inFlightBytesMax = bytes;
    return this;
  }

  /**
   * How long a segment's session keeps retrying a retryable failure with no ack before its
   * pending writes fail. Default: 60 s.
   */
  public WriterConfig retryTimeout(Duration timeout) {
    this.retryTimeout = timeout;
    return this;
  }

  public String writerId() {
    return writerId;
  }

  public int batchBytesMax() {
    return batchBytesMax;
  }

  public Duration linger() {
    return linger;
  }

  public long inFlightBytesMax() {
    return inFlightBytesMax;
  }

  public Duration retryTimeout() {
    return retryTimeout;
  }

  /** A copy (configs are mutable builders). */
  public WriterConfig copy() {
    WriterConfig c = new WriterConfig();
    c.writerId = writerId;
    c.batchBytesMax = batchBytesMax;
    c.linger = linger;
    c.inFlightBytesMax = inFlightBytesMax;
    c.retryTimeout = retryTimeout;
    return c;
  }
}
