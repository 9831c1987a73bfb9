package io.aquifer.client;

import io.aquifer.proto.v1.CreateStreamRequest;
import io.aquifer.proto.v1.DeleteStreamRequest;
import io.aquifer.proto.v1.DescribeStreamRequest;
import io.aquifer.proto.v1.ListStreamsRequest;
import io.aquifer.proto.v1.MergeSegments;
import io.aquifer.proto.v1.ScaleStreamRequest;
import io.aquifer.proto.v1.ScalingPolicy;
import io.aquifer.proto.v1.SealStreamRequest;
import io.aquifer.proto.v1.SegmentInfo;
import io.aquifer.proto.v1.SplitSegment;
import io.aquifer.proto.v1.StreamAdminGrpc;
import io.aquifer.proto.v1.StreamInfo;
import io.aquifer.proto.v1.TruncateSegmentRequest;
import io.aquifer.proto.v1.SegmentsGrpc;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.TimeUnit;

/**
 * A connection to an Aquifer cluster: admin calls, writers, segment readers, stream cuts and
 * transactions. Thread-safe; one per process is enough. Close it to release its channels.
 *
 * <pre>{@code
 * try (AquiferClient client = AquiferClient.connect("127.0.0.1:7450")) {
 *   StreamName clicks = StreamName.parse("analytics/clicks");
 *   client.createStream(clicks, 4);
 *   try (EventWriter w = client.writer(clicks, new WriterConfig().writerId("importer-1"))) {
 *     w.write("user-1", "hello".getBytes(StandardCharsets.UTF_8));
 *   }
 * }
 * }</pre>
 */
public final class AquiferClient implements AutoCloseable {
  private final Connection conn;

  private AquiferClient(Connection conn) {
    this.conn = conn;
  }

  /** A client of the node at {@code HOST:PORT}, with a 30 s request and 60 s retry timeout. */
  public static AquiferClient connect(String address) {
    return connect(address, Duration.ofSeconds(30), Duration.ofSeconds(60));
  }

  /**
   * A client of the node at {@code address}: each call may take {@code requestTimeout}, and
   * retryable failures (no leader, node down) are retried for {@code retryTimeout}.
   */
  public static AquiferClient connect(
      String address, Duration requestTimeout, Duration retryTimeout) {
    if (address == null || !address.contains(":")) {
      throw new IllegalArgumentException(
          "an Aquifer address is HOST:PORT, e.g. 127.0.0.1:7450; got " + address);
    }
    return new AquiferClient(new Connection(address, requestTimeout, retryTimeout));
  }

  Connection connection() {
    return conn;
  }

  public String address() {
    return conn.address();
  }

  private StreamAdminGrpc.StreamAdminBlockingStub admin(io.grpc.Channel channel) {
    return StreamAdminGrpc.newBlockingStub(channel)
        .withDeadlineAfter(conn.requestTimeout().toMillis(), TimeUnit.MILLISECONDS);
  }

  // ---- admin ----

  /** Creates a stream of {@code segments} segments (fixed scaling, keep everything). */
  public StreamInfo createStream(StreamName name, int segments) {
    return createStream(name, segments, null);
  }

  /** Creates a stream; {@code scaling} null means fixed. */
  public StreamInfo createStream(StreamName name, int segments, ScalingPolicy scaling) {
    CreateStreamRequest.Builder req =
        CreateStreamRequest.newBuilder().setName(name.toProto()).setSegmentCount(segments);
    if (scaling != null) {
      req.setScaling(scaling);
    }
    return conn.meta("create " + name, ch -> admin(ch).createStream(req.build()));
  }

  public StreamInfo describeStream(StreamName name) {
    return conn.meta(
        "describe " + name,
        ch ->
            admin(ch)
                .describeStream(DescribeStreamRequest.newBuilder().setName(name.toProto()).build()));
  }

  /** Every stream, or those of {@code scope} (null: all). */
  public List<StreamInfo> listStreams(String scope) {
    return conn.meta(
        "list streams",
        ch ->
            admin(ch)
                .listStreams(
                    ListStreamsRequest.newBuilder().setScope(scope == null ? "" : scope).build())
                .getStreamsList());
  }

  public StreamInfo sealStream(StreamName name) {
    return conn.meta(
        "seal " + name,
        ch -> admin(ch).sealStream(SealStreamRequest.newBuilder().setName(name.toProto()).build()));
  }

  public void deleteStream(StreamName name) {
    conn.meta(
        "delete " + name,
        ch ->
            admin(ch).deleteStream(DeleteStreamRequest.newBuilder().setName(name.toProto()).build()));
  }

  /**
   * Sets a stream's retention: keep data flushed to tier-2 less than {@code time} ago (null: no
   * time limit) and about {@code sizeBytes} (0: no size limit).
   */
  public StreamInfo updateRetention(StreamName name, Duration time, long sizeBytes) {
    io.aquifer.proto.v1.UpdateStreamRequest req =
        io.aquifer.proto.v1.UpdateStreamRequest.newBuilder()
            .setName(name.toProto())
            .setRetention(
                io.aquifer.proto.v1.Retention.newBuilder()
                    .setTimeMs(time == null ? 0 : time.toMillis())
                    .setSizeBytes(sizeBytes))
            .build();
    return conn.meta("update " + name, ch -> admin(ch).updateStream(req));
  }

  /** Splits {@code segmentId} into {@code pieces} equal key ranges. */
  public StreamInfo splitSegment(StreamName name, long segmentId, int pieces) {
    ScaleStreamRequest req =
        ScaleStreamRequest.newBuilder()
            .setName(name.toProto())
            .addSplits(SplitSegment.newBuilder().setSegmentId(segmentId).setPieces(pieces))
            .build();
    return conn.meta("scale " + name, ch -> admin(ch).scaleStream(req));
  }

  /** Merges key-adjacent active segments into one. */
  public StreamInfo mergeSegments(StreamName name, List<Long> segmentIds) {
    ScaleStreamRequest req =
        ScaleStreamRequest.newBuilder()
            .setName(name.toProto())
            .addMerges(MergeSegments.newBuilder().addAllSegmentIds(segmentIds))
            .build();
    return conn.meta("scale " + name, ch -> admin(ch).scaleStream(req));
  }

  /** Moves a segment's head to {@code headOffset} (an event boundary); returns the new head. */
  public long truncateSegment(long segmentId, long headOffset) {
    return conn.meta(
        "truncate segment " + segmentId,
        ch ->
            SegmentsGrpc.newBlockingStub(ch)
                .withDeadlineAfter(conn.requestTimeout().toMillis(), TimeUnit.MILLISECONDS)
                .truncateSegment(
                    TruncateSegmentRequest.newBuilder()
                        .setSegmentId(segmentId)
                        .setHeadOffset(headOffset)
                        .build())
                .getHeadOffset());
  }

  // ---- scaling metadata and cuts ----

  /**
   * The segments a writer writes to now: the unsealed ones (of any epoch: a scale replaces only
   * the segments it names); once the stream is sealed, the ones no scale replaced.
   */
  public static List<SegmentInfo> activeSegments(StreamInfo info) {
    boolean open = info.getSegmentsList().stream().anyMatch(s -> !s.getSealed());
    List<SegmentInfo> out = new ArrayList<>();
    for (SegmentInfo s : info.getSegmentsList()) {
      if (open ? !s.getSealed() : s.getSuccessorsCount() == 0) {
        out.add(s);
      }
    }
    return out;
  }

  /** The segments that replaced {@code segmentId} when a scale sealed it. */
  List<SegmentInfo> successorsOf(StreamName stream, long segmentId) {
    StreamInfo info = describeStream(stream);
    Map<Long, SegmentInfo> byId = new HashMap<>();
    for (SegmentInfo s : info.getSegmentsList()) {
      byId.put(s.getSegmentId(), s);
    }
    SegmentInfo sealed = byId.get(segmentId);
    List<SegmentInfo> out = new ArrayList<>();
    if (sealed == null) {
      return out;
    }
    for (long id : sealed.getSuccessorsList()) {
      SegmentInfo s = byId.get(id);
      if (s != null) {
        out.add(s);
      }
    }
    return out;
  }

  /** The stream's beginning: the head of each of its first segments (no listed predecessor). */
  public StreamCut headCut(StreamName stream) {
    StreamInfo info = describeStream(stream);
    Set<Long> listed = new HashSet<>();
    info.getSegmentsList().forEach(s -> listed.add(s.getSegmentId()));
    Map<Long, Long> positions = new HashMap<>();
    for (SegmentInfo s : info.getSegmentsList()) {
      if (s.getPredecessorsList().stream().noneMatch(listed::contains)) {
        positions.put(s.getSegmentId(), s.getHeadOffset());
      }
    }
    return new StreamCut(positions);
  }

  /** The stream now: the end of each active segment, everything committed so far. */
  public StreamCut tailCut(StreamName stream) {
    Map<Long, Long> positions = new HashMap<>();
    for (SegmentInfo s : activeSegments(describeStream(stream))) {
      positions.put(s.getSegmentId(), s.getLength());
    }
    return new StreamCut(positions);
  }

  // ---- writing and reading ----

  /** A batching writer over the stream's active segments, following its scales. */
  public EventWriter writer(StreamName stream, WriterConfig config) {
    List<EventWriter.Route> routes = new ArrayList<>();
    for (SegmentInfo s : activeSegments(describeStream(stream))) {
      routes.add(EventWriter.Route.of(s));
    }
    return new EventWriter(this, stream, config, routes, null);
  }

  /**
   * Reads segment {@code segmentId} from {@code offset} (an event boundary) up to {@code
   * endOffset} (exclusive; -1: its end, or with {@code follow} forever, until it is sealed and
   * read to its end).
   */
  public SegmentReader segmentReader(long segmentId, long offset, long endOffset, boolean follow) {
    return new SegmentReader(conn, segmentId, offset, endOffset, follow);
  }

  /** Transactions on {@code stream}, each living {@code timeout} without a ping. */
  public Transactions transactions(StreamName stream, Duration timeout) {
    return new Transactions(this, stream, timeout);
  }

  @Override
  public void close() {
    conn.close();
  }
}
