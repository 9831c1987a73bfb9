package io.aquifer.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.aquifer.proto.v1.SegmentInfo;
import io.aquifer.proto.v1.StreamInfo;
import io.aquifer.proto.v1.TransactionInfo;
import io.aquifer.proto.v1.TransactionState;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/** The Java client against a real `aquifer serve`. */
class ClientIT {
  static AquiferServer server;
  static AquiferClient client;

  @BeforeAll
  static void start() throws Exception {
    server = AquiferServer.start();
    client = AquiferClient.connect(server.address());
  }

  @AfterAll
  static void stop() {
    if (client != null) {
      client.close();
    }
    if (server != null) {
      server.close();
    }
  }

  static byte[] utf8(String s) {
    return s.getBytes(StandardCharsets.UTF_8);
  }

  /** Every event of the stream, by segment, reading each segment from its head to its length. */
  static List<Event> readAll(StreamName name) {
    List<Event> out = new ArrayList<>();
    for (SegmentInfo s : client.describeStream(name).getSegmentsList()) {
      try (SegmentReader r = client.segmentReader(s.getSegmentId(), s.getHeadOffset(), -1, false)) {
        List<Event> batch;
        while ((batch = r.next()) != null) {
          out.addAll(batch);
        }
      }
    }
    return out;
  }

  @Test
  void writesRouteByKeyAndReadBackInOrder() {
    StreamName name = new StreamName("java", "basic");
    client.createStream(name, 3);
    try (EventWriter w = client.writer(name, new WriterConfig().writerId("basic-1"))) {
      List<CompletableFuture<WriteAck>> acks = new ArrayList<>();
      for (int i = 0; i < 3000; i++) {
        acks.add(w.write("key-" + (i % 17), utf8("key-" + (i % 17) + ":" + i)));
      }
      w.flush();
      acks.forEach(CompletableFuture::join);
      // Acks say exactly where each event is.
      WriteAck last = acks.get(2999).join();
      try (SegmentReader r = client.segmentReader(last.segmentId(), last.offset(), -1, false)) {
        assertEquals("key-" + (2999 % 17) + ":2999", r.next().get(0).payloadUtf8());
      }
    }
    List<Event> events = readAll(name);
    assertEquals(3000, events.size());
    Map<String, Integer> last = new HashMap<>();
    Map<String, Long> segmentOf = new HashMap<>();
    for (Event e : events) {
      int seq = Integer.parseInt(e.payloadUtf8().split(":")[1]);
      Integer before = last.put(e.routingKey(), seq);
      assertTrue(before == null || before < seq, "per-key order for " + e.routingKey());
      Long seg = segmentOf.put(e.routingKey(), e.segmentId());
      assertTrue(seg == null || seg == e.segmentId(), "one segment per key");
    }
    // The segment a key lands in is the one whose range holds its position (the wire rule).
    StreamInfo info = client.describeStream(name);
    for (Map.Entry<String, Long> k : segmentOf.entrySet()) {
      double p = KeyPositions.of(k.getKey());
      SegmentInfo s =
          info.getSegmentsList().stream()
              .filter(x -> x.getSegmentId() == k.getValue())
              .findFirst()
              .orElseThrow();
      assertTrue(s.getKeyLow() <= p && (p < s.getKeyHigh() || s.getKeyHigh() >= 1.0));
    }
    StreamCut tail = client.tailCut(name);
    long total = tail.positions().values().stream().mapToLong(Long::longValue).sum();
    assertTrue(total > 0);
    assertEquals(tail, StreamCut.parse(tail.toString()));
  }

  @Test
  void theWriterSurvivesAKillAndWritesEachEventOnce() throws Exception {
    StreamName name = new StreamName("java", "crash");
    client.createStream(name, 2);
    try (EventWriter w = client.writer(name, new WriterConfig().writerId("crash-1"))) {
      List<CompletableFuture<WriteAck>> acks = new ArrayList<>();
      for (int i = 0; i < 2000; i++) {
        acks.add(w.write("k" + (i % 5), utf8("k" + (i % 5) + ":" + i)));
        if (i == 1000) {
          server.crashAndRestart();
        }
      }
      w.flush();
      acks.forEach(CompletableFuture::join);
    }
    List<Event> events = readAll(name);
    assertEquals(2000, events.size(), "every acknowledged event once");
    assertEquals(2000, events.stream().map(Event::payloadUtf8).distinct().count());
  }

  @Test
  void theWriterFollowsASplitAndAMerge() {
    StreamName name = new StreamName("java", "scaled");
    StreamInfo created = client.createStream(name, 1);
    long first = created.getSegments(0).getSegmentId();
    try (EventWriter w = client.writer(name, new WriterConfig().writerId("scale-1"))) {
      for (int i = 0; i < 3000; i++) {
        w.write("k" + (i % 11), utf8("k" + (i % 11) + ":" + i));
        if (i == 1000) {
          client.splitSegment(name, first, 2);
        }
        if (i == 2000) {
          List<Long> active = new ArrayList<>();
          AquiferClient.activeSegments(client.describeStream(name))
              .forEach(s -> active.add(s.getSegmentId()));
          client.mergeSegments(name, active);
        }
      }
      w.flush();
    }
    StreamInfo info = client.describeStream(name);
    assertEquals(2, info.getEpoch());
    // Read in successor order: a segment after all its predecessors.
    SegmentGraph graph = new SegmentGraph();
    graph.learn(info.getSegmentsList());
    Map<String, Integer> last = new HashMap<>();
    int count = 0;
    List<SegmentInfo> ready;
    while (!(ready = graph.takeReady()).isEmpty()) {
      for (SegmentInfo s : ready) {
        try (SegmentReader r = client.segmentReader(s.getSegmentId(), 0, -1, false)) {
          List<Event> batch;
          while ((batch = r.next()) != null) {
            for (Event e : batch) {
              int seq = Integer.parseInt(e.payloadUtf8().split(":")[1]);
              Integer before = last.put(e.routingKey(), seq);
              assertTrue(before == null || before < seq, "per-key order across scales");
              count++;
            }
          }
        }
        graph.finish(s.getSegmentId());
      }
    }
    assertEquals(3000, count);
  }

  @Test
  void transactionsCommitAbortAndResumeById() {
    StreamName name = new StreamName("java", "txn");
    client.createStream(name, 2);
    Transactions txns = client.transactions(name, Duration.ofSeconds(60));
    Transaction t = txns.begin("sink-a/0/7", new WriterConfig());
    for (int i = 0; i < 100; i++) {
      t.write("k" + i, utf8("t:" + i));
    }
    t.flush();
    assertEquals(0, readAll(name).size(), "invisible until commit");
    Transaction aborted = txns.begin("sink-a/1/7", new WriterConfig());
    aborted.write("x", utf8("never"));
    aborted.flush();
    List<TransactionInfo> open = txns.list();
    assertTrue(open.stream().anyMatch(i -> i.getOwner().equals("sink-a/0/7")));
    // Another process commits by id; twice is fine.
    TransactionInfo done = txns.commit(t.id(), true);
    assertEquals(TransactionState.TRANSACTION_STATE_COMMITTED, done.getState());
    assertEquals(TransactionState.TRANSACTION_STATE_COMMITTED, txns.commit(t.id(), true).getState());
    t.close();
    aborted.abort();
    AquiferException e = assertThrows(AquiferException.class, () -> txns.commit(aborted.id(), true));
    assertEquals(AquiferException.REASON_TRANSACTION_ABORTED, e.reason());
    List<Event> events = readAll(name);
    assertEquals(100, events.size());
    assertTrue(events.stream().noneMatch(ev -> ev.payloadUtf8().equals("never")));
  }

  @Test
  void badInputGetsClearErrors() {
    AquiferException e =
        assertThrows(
            AquiferException.class, () -> client.describeStream(new StreamName("java", "missing")));
    assertEquals(io.grpc.Status.Code.NOT_FOUND, e.code());
    assertTrue(e.getMessage().contains("java/missing"), e.getMessage());
    assertThrows(IllegalArgumentException.class, () -> new WriterConfig().writerId(""));
    assertThrows(IllegalArgumentException.class, () -> AquiferClient.connect("nowhere"));
  }
}
