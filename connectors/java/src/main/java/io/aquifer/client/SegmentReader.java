package io.aquifer.client;

import io.aquifer.proto.v1.ReadGrpc;
import io.aquifer.proto.v1.ReadSegmentRequest;
import io.aquifer.proto.v1.ReadSegmentResponse;
import io.grpc.Context;
import java.util.Iterator;
import java.util.List;

/**
 * Reads one segment in order from an offset, blocking: {@link #next()} returns the next events
 * (whole, checked frames) or null once the read is over. Reconnects from where it got to on a
 * retryable failure (following {@code aquifer-leader}); a truncated range fails with
 * OUT_OF_RANGE. {@link #close()} may be called from any thread and ends a blocked {@code next}.
 */
public final class SegmentReader implements AutoCloseable {
  private final Connection conn;
  private final long segmentId;
  private final long endOffset;
  private final boolean follow;

  private long offset;
  private boolean endOfSegment;
  private boolean finished;
  private volatile boolean closed;
  private String target;
  private Context.CancellableContext context;
  private Iterator<ReadSegmentResponse> responses;

  SegmentReader(Connection conn, long segmentId, long offset, long endOffset, boolean follow) {
    this.conn = conn;
    this.segmentId = segmentId;
    this.offset = offset;
    this.endOffset = endOffset;
    this.follow = follow;
    this.target = conn.address();
  }

  public long segmentId() {
    return segmentId;
  }

  /** Where the next event starts. */
  public long offset() {
    return offset;
  }

  /** True once the end of a sealed segment was read: no event will ever follow. */
  public boolean reachedEndOfSegment() {
    return endOfSegment;
  }

  /**
   * The next events, in order; null when the read is over (the end offset, the end of a sealed
   * segment, or without follow the length as of the call).
   */
  public List<Event> next() {
    Connection.Backoff backoff = new Connection.Backoff();
    long failingSince = 0;
    while (true) {
      if (finished || closed || (endOffset >= 0 && offset >= endOffset)) {
        finished = true;
        return null;
      }
      try {
        if (responses == null) {
          open();
        }
        if (!responses.hasNext()) {
          responses = null;
          if (!follow) {
            finished = true;
            return null;
          }
          // A following read ended by the server without an end of segment: reopen.
          continue;
        }
        ReadSegmentResponse r = responses.next();
        List<Event> events =
            Framing.decode(segmentId, r.getOffset(), r.getEvents().asReadOnlyByteBuffer());
        if (r.getOffset() != offset) {
          throw new AquiferException(
              io.grpc.Status.Code.INTERNAL,
              null,
              "segment " + segmentId + ": the server sent offset " + r.getOffset()
                  + " where " + offset + " was next");
        }
        if (!events.isEmpty()) {
          offset = events.get(events.size() - 1).nextOffset();
        }
        if (r.getEndOfSegment()) {
          endOfSegment = true;
          finished = true;
          cancel();
        }
        if (events.isEmpty()) {
          continue;
        }
        return events;
      } catch (RuntimeException e) {
        cancel();
        responses = null;
        if (closed) {
          finished = true;
          return null;
        }
        AquiferException error = AquiferException.from(e, "read segment " + segmentId);
        long now = System.nanoTime();
        if (failingSince == 0) {
          failingSince = now;
        }
        if (!error.isRetryable() || now - failingSince > conn.retryTimeout().toNanos()) {
          throw error;
        }
        String leader = AquiferException.leaderOf(e);
        if (leader != null && !leader.equals(target)) {
          target = leader;
        } else {
          target = conn.address();
          backoff.sleep();
        }
      }
    }
  }

  private void open() {
    ReadSegmentRequest.Builder req =
        ReadSegmentRequest.newBuilder().setSegmentId(segmentId).setOffset(offset).setFollow(follow);
    if (endOffset >= 0) {
      req.setEndOffset(endOffset);
    }
    context = Context.current().withCancellation();
    ReadGrpc.ReadBlockingStub stub = ReadGrpc.newBlockingStub(conn.channel(target));
    Context previous = context.attach();
    try {
      responses = stub.readSegment(req.build());
    } finally {
      context.detach(previous);
    }
  }

  private void cancel() {
    Context.CancellableContext c = context;
    if (c != null) {
      c.cancel(null);
    }
  }

  @Override
  public void close() {
    closed = true;
    cancel();
  }
}
