package io.aquifer.client;

import com.google.protobuf.ByteString;
import io.aquifer.proto.v1.AppendAck;
import io.aquifer.proto.v1.AppendBatch;
import io.aquifer.proto.v1.AppendGrpc;
import io.aquifer.proto.v1.AppendRequest;
import io.aquifer.proto.v1.AppendResponse;
import io.aquifer.proto.v1.SegmentInfo;
import io.aquifer.proto.v1.SetupAppend;
import io.grpc.stub.StreamObserver;
import java.io.ByteArrayOutputStream;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;

/**
 * The batching event writer: routes each event by key to a segment, batches per segment, numbers
 * batches (writer id + event numbers: a resent batch is never applied twice), bounds the bytes in
 * flight, reconnects, and hands a sealed segment's unacknowledged events to its successors in
 * their order. Also writes a transaction's events to its parts (fixed routes, no scaling).
 *
 * <p>Every change of a session's state happens under the writer's lock; gRPC callbacks and timers
 * take it too. Must never: renumber or re-batch a numbered batch; move a sealed segment's events
 * before the server said which it applied; route a key to a successor while an older segment
 * holding it is still routed to.
 */
public final class EventWriter implements AutoCloseable {
  private final Connection conn;
  private final AquiferClient client;
  private final StreamName stream;
  private final WriterConfig config;
  /** Null for a plain writer; set: every session writes into this transaction. */
  private final String transactionId;

  private final Semaphore inFlight;
  private final ScheduledExecutorService timers;
  private final List<Route> routes = new ArrayList<>();
  private final Map<Long, Session> sessions = new HashMap<>();
  private int roundRobin;
  private boolean closed;

  EventWriter(
      AquiferClient client,
      StreamName stream,
      WriterConfig config,
      List<Route> initialRoutes,
      String transactionId) {
    this.client = client;
    this.conn = client.connection();
    this.stream = stream;
    this.config = config.copy();
    this.transactionId = transactionId;
    this.inFlight = new Semaphore(permitsFor(config.inFlightBytesMax()));
    this.timers =
        Executors.newSingleThreadScheduledExecutor(
            r -> {
              Thread t = new Thread(r, "aquifer-writer-" + stream);
              t.setDaemon(true);
              return t;
            });
    this.routes.addAll(initialRoutes);
  }

  /** A route: the segment taking a key range (for a transaction, a part's transaction segment). */
  static final class Route {
    final long segmentId;
    final double keyLow;
    final double keyHigh;
    final long epoch;

    Route(long segmentId, double keyLow, double keyHigh, long epoch) {
      this.segmentId = segmentId;
      this.keyLow = keyLow;
      this.keyHigh = keyHigh;
      this.epoch = epoch;
    }

    static Route of(SegmentInfo s) {
      return new Route(s.getSegmentId(), s.getKeyLow(), s.getKeyHigh(), s.getEpoch());
    }

    boolean holds(double position) {
      return keyLow <= position && (position < keyHigh || keyHigh >= 1.0);
    }
  }

  public StreamName stream() {
    return stream;
  }

  public String writerId() {
    return config.writerId();
  }

  /**
   * Queues one event; the future completes once it is durable, with where it is (or fails with an
   * {@link AquiferException}). Blocks while the in-flight budget is spent: back-pressure.
   *
   * @param routingKey null or empty: no key (events are spread round-robin)
   */
  public CompletableFuture<WriteAck> write(String routingKey, byte[] payload) {
    byte[] framed = Framing.frame(routingKey == null || routingKey.isEmpty() ? null : routingKey, payload);
    if (framed.length > Connection.MESSAGE_BYTES_MAX - 64 * 1024) {
      throw new IllegalArgumentException(
          "an event of " + framed.length + " framed bytes is larger than a message may be");
    }
    int permits = Math.min(permitsFor(framed.length), permitsFor(config.inFlightBytesMax()));
    try {
      inFlight.acquire(permits);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new AquiferException(io.grpc.Status.Code.CANCELLED, null, "interrupted", e);
    }
    Pending event = new Pending(routingKey, framed, permits);
    synchronized (this) {
      if (closed) {
        inFlight.release(permits);
        throw new IllegalStateException("the writer is closed");
      }
      route(event);
    }
    return event.done;
  }

  /** Blocks until every event written before the call is durable; throws the first failure. */
  public void flush() {
    List<CompletableFuture<WriteAck>> waits = new ArrayList<>();
    synchronized (this) {
      for (Session s : sessions.values()) {
        s.sealOpen();
        s.trySend();
        s.collect(waits);
      }
    }
    try {
      CompletableFuture.allOf(waits.toArray(new CompletableFuture<?>[0])).get();
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new AquiferException(io.grpc.Status.Code.CANCELLED, null, "interrupted", e);
    } catch (ExecutionException e) {
      throw AquiferException.from(e.getCause(), "flush to " + stream);
    }
  }

  /** Flushes, then ends the sessions. */
  @Override
  public void close() {
    try {
      flush();
    } finally {
      synchronized (this) {
        closed = true;
        for (Session s : sessions.values()) {
          s.end();
        }
        sessions.clear();
      }
      timers.shutdownNow();
    }
  }

  // ---- routing (under the lock) ----

  private void route(Pending event) {
    Route r = pick(event.key);
    Session s = sessions.get(r.segmentId);
    if (s == null) {
      s = new Session(r.segmentId);
      sessions.put(r.segmentId, s);
      s.connect(conn.address());
    }
    s.add(event);
  }

  private Route pick(String key) {
    if (routes.isEmpty()) {
      throw new AquiferException(
          io.grpc.Status.Code.FAILED_PRECONDITION, null, stream + " has no segment to write to");
    }
    if (key == null || key.isEmpty()) {
      roundRobin = (roundRobin + 1) % routes.size();
      return routes.get(roundRobin);
    }
    double position = KeyPositions.of(key);
    Route best = null;
    for (Route r : routes) {
      if (r.holds(position) && (best == null || r.epoch < best.epoch)) {
        best = r;
      }
    }
    if (best != null) {
      return best;
    }
    // Not covered (cannot happen with ranges covering [0, 1)): the rule of keys.rs.
    List<Route> sorted = new ArrayList<>(routes);
    sorted.sort((a, b) -> Double.compare(a.keyLow, b.keyLow));
    List<Double> lows = new ArrayList<>();
    sorted.forEach(r -> lows.add(r.keyLow));
    return sorted.get(KeyPositions.pick(lows, position));
  }

  private static int permitsFor(long bytes) {
    // Permits are KiB so a budget of gigabytes fits an int.
    return (int) Math.max(1, Math.min(Integer.MAX_VALUE, (bytes + 1023) / 1024));
  }

  /** One event from write to ack. */
  private static final class Pending {
    final String key;
    final byte[] framed;
    final int permits;
    final CompletableFuture<WriteAck> done = new CompletableFuture<>();

    Pending(String key, byte[] framed, int permits) {
      this.key = key;
      this.framed = framed;
      this.permits = permits;
    }
  }

  /** A sealed batch: its bytes and its numbers never change once it is first sent. */
  private static final class Batch {
    Long firstEventNumber;
    final byte[] data;
    final List<Pending> events;

    Batch(byte[] data, List<Pending> events) {
      this.data = data;
      this.events = events;
    }

    long last() {
      return firstEventNumber + events.size() - 1;
    }
  }

  private enum State {
    CONNECTING,
    READY,
    /** Sealed: waiting for the successors before the events move on. */
    HANDING_OVER,
    ENDED
  }

  /** One (writer, segment) append session: batches from first write to ack. */
  private final class Session {
    final long segmentId;
    State state = State.CONNECTING;
    /** Bumped on every (re)connect, so callbacks of an older call are ignored. */
    int generation;
    StreamObserver<AppendRequest> requests;
    String target;
    Long nextEventNumber;
    final ArrayDeque<Batch> ready = new ArrayDeque<>();
    final ArrayDeque<Batch> inFlightBatches = new ArrayDeque<>();
    ByteArrayOutputStream open;
    List<Pending> openEvents;
    boolean lingerScheduled;
    boolean sealed;
    /** When the current run of failures began (0: none since the last ack). */
    long failingSince;
    final Connection.Backoff backoff = new Connection.Backoff();

    Session(long segmentId) {
      this.segmentId = segmentId;
    }

    void add(Pending e) {
      if (open == null) {
        open = new ByteArrayOutputStream();
        openEvents = new ArrayList<>();
      }
      open.write(e.framed, 0, e.framed.length);
      openEvents.add(e);
      if (open.size() >= config.batchBytesMax()) {
        sealOpen();
        trySend();
      } else if (!lingerScheduled) {
        lingerScheduled = true;
        long nanos = Math.max(1, config.linger().toNanos());
        timers.schedule(this::onLinger, nanos, TimeUnit.NANOSECONDS);
      }
    }

    void onLinger() {
      synchronized (EventWriter.this) {
        lingerScheduled = false;
        if (state == State.ENDED) {
          return;
        }
        sealOpen();
        trySend();
      }
    }

    void sealOpen() {
      if (open != null && !openEvents.isEmpty()) {
        ready.add(new Batch(open.toByteArray(), openEvents));
      }
      open = null;
      openEvents = null;
    }

    void trySend() {
      if (state != State.READY) {
        return;
      }
      while (!ready.isEmpty()) {
        Batch b = ready.poll();
        if (b.firstEventNumber == null) {
          b.firstEventNumber = nextEventNumber;
          nextEventNumber += b.events.size();
        }
        inFlightBatches.add(b);
        requests.onNext(
            AppendRequest.newBuilder()
                .setBatch(
                    AppendBatch.newBuilder()
                        .setFirstEventNumber(b.firstEventNumber)
                        .setEventCount(b.events.size())
                        .setEvents(ByteString.copyFrom(b.data)))
                .build());
      }
    }

    void collect(List<CompletableFuture<WriteAck>> out) {
      for (Batch b : inFlightBatches) {
        b.events.forEach(e -> out.add(e.done));
      }
      for (Batch b : ready) {
        b.events.forEach(e -> out.add(e.done));
      }
      if (openEvents != null) {
        openEvents.forEach(e -> out.add(e.done));
      }
    }

    void connect(String at) {
      generation++;
      int gen = generation;
      state = State.CONNECTING;
      target = at;
      while (!inFlightBatches.isEmpty()) {
        ready.addFirst(inFlightBatches.pollLast());
      }
      requests =
          AppendGrpc.newStub(conn.channel(at))
              .appendSession(
                  new StreamObserver<AppendResponse>() {
                    @Override
                    public void onNext(AppendResponse r) {
                      synchronized (EventWriter.this) {
                        if (gen == generation) {
                          onResponse(r);
                        }
                      }
                    }

                    @Override
                    public void onError(Throwable t) {
                      synchronized (EventWriter.this) {
                        if (gen == generation) {
                          onFailure(t);
                        }
                      }
                    }

                    @Override
                    public void onCompleted() {
                      synchronized (EventWriter.this) {
                        if (gen == generation && state != State.ENDED) {
                          onFailure(
                              new AquiferException(
                                  io.grpc.Status.Code.UNAVAILABLE,
                                  null,
                                  "the server ended the append session"));
                        }
                      }
                    }
                  });
      SetupAppend.Builder setup =
          SetupAppend.newBuilder().setSegmentId(segmentId).setWriterId(config.writerId());
      if (transactionId != null) {
        setup.setTransactionId(transactionId);
      }
      requests.onNext(AppendRequest.newBuilder().setSetup(setup).build());
    }

    void onResponse(AppendResponse r) {
      if (r.hasSetup()) {
        long serverLast = r.getSetup().getLastEventNumber();
        // Batches the server already has are done (their offsets unknown).
        while (!ready.isEmpty()
            && ready.peek().firstEventNumber != null
            && ready.peek().last() <= serverLast) {
          resolve(ready.poll(), -1);
        }
        long serverNext = Math.max(1, serverLast + 1);
        nextEventNumber = nextEventNumber == null ? serverNext : Math.max(nextEventNumber, serverNext);
        backoff.reset();
        if (ready.isEmpty()) {
          failingSince = 0;
        }
        if (sealed) {
          state = State.HANDING_OVER;
          requests.onCompleted();
          timers.execute(() -> handOver(this));
          return;
        }
        state = State.READY;
        trySend();
        return;
      }
      AppendAck ack = r.getAck();
      Batch b = inFlightBatches.poll();
      if (b == null || b.last() != ack.getLastEventNumber()) {
        onFailure(
            new AquiferException(
                io.grpc.Status.Code.INTERNAL,
                null,
                "segment " + segmentId + ": an ack for event " + ack.getLastEventNumber()
                    + " matches no batch in flight"));
        if (b != null) {
          inFlightBatches.addFirst(b);
        }
        return;
      }
      failingSince = 0;
      resolve(b, ack.getDuplicate() ? -1 : ack.getOffset());
    }

    /** Completes a batch's events: consecutive from {@code base}, or all unknown (-1). */
    void resolve(Batch b, long base) {
      long offset = base;
      for (Pending e : b.events) {
        inFlight.release(e.permits);
        e.done.complete(new WriteAck(segmentId, offset));
        if (offset >= 0) {
          offset += e.framed.length;
        }
      }
    }

    void onFailure(Throwable t) {
      AquiferException e = AquiferException.from(t, "append to segment " + segmentId + " of " + stream);
      if (requests != null) {
        try {
          requests.onCompleted();
        } catch (RuntimeException ignored) {
          // The call is already over.
        }
      }
      generation++;
      if (AquiferException.REASON_SEALED.equals(e.reason()) && transactionId == null) {
        // Scaled: learn what the server applied here, then move the rest on.
        sealed = true;
        connect(target);
        return;
      }
      long now = System.nanoTime();
      if (failingSince == 0) {
        failingSince = now;
      }
      if (e.isRetryable() && now - failingSince < config.retryTimeout().toNanos() && !closed) {
        String leader = AquiferException.leaderOf(t);
        String next = leader != null ? leader : conn.address();
        state = State.CONNECTING;
        long delay = leader != null && !leader.equals(target) ? 0 : backoff.next();
        timers.schedule(
            () -> {
              synchronized (EventWriter.this) {
                if (state == State.CONNECTING && sessions.get(segmentId) == this) {
                  connect(next);
                }
              }
            },
            delay,
            TimeUnit.MILLISECONDS);
        return;
      }
      fail(e);
    }

    /** Fails every event of the session and forgets it (a later write starts over). */
    void fail(AquiferException e) {
      state = State.ENDED;
      sealOpen();
      while (!inFlightBatches.isEmpty()) {
        ready.addFirst(inFlightBatches.pollLast());
      }
      for (Batch b : ready) {
        for (Pending p : b.events) {
          inFlight.release(p.permits);
          p.done.completeExceptionally(e);
        }
      }
      ready.clear();
      sessions.remove(segmentId, this);
    }

    /** Takes every event not yet applied, in order, leaving the session empty. */
    List<Pending> drain() {
      sealOpen();
      while (!inFlightBatches.isEmpty()) {
        ready.addFirst(inFlightBatches.pollLast());
      }
      List<Pending> out = new ArrayList<>();
      for (Batch b : ready) {
        out.addAll(b.events);
      }
      ready.clear();
      return out;
    }

    void end() {
      state = State.ENDED;
      generation++;
      if (requests != null) {
        try {
          requests.onCompleted();
        } catch (RuntimeException ignored) {
          // Already over.
        }
      }
    }
  }

  /** A sealed segment's hand-over: find its successors (no lock held), then move its events. */
  private void handOver(Session s) {
    List<SegmentInfo> successors;
    try {
      successors = client.successorsOf(stream, s.segmentId);
    } catch (AquiferException e) {
      synchronized (this) {
        s.fail(e);
      }
      return;
    }
    synchronized (this) {
      if (sessions.get(s.segmentId) != s) {
        return;
      }
      List<Pending> moved = s.drain();
      s.state = State.ENDED;
      sessions.remove(s.segmentId);
      routes.removeIf(r -> r.segmentId == s.segmentId);
      for (SegmentInfo next : successors) {
        if (routes.stream().noneMatch(r -> r.segmentId == next.getSegmentId())) {
          routes.add(Route.of(next));
        }
      }
      if (routes.isEmpty() && !moved.isEmpty()) {
        AquiferException sealedStream =
            new AquiferException(
                io.grpc.Status.Code.FAILED_PRECONDITION,
                AquiferException.REASON_SEALED,
                stream + " is sealed: segment " + s.segmentId + " has no successor");
        for (Pending p : moved) {
          inFlight.release(p.permits);
          p.done.completeExceptionally(sealedStream);
        }
        return;
      }
      for (Pending p : moved) {
        route(p);
      }
    }
  }
}
