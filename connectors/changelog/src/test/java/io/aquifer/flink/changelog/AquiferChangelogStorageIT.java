package io.aquifer.flink.changelog;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.aquifer.client.AquiferClient;
import io.aquifer.client.AquiferServer;
import io.aquifer.proto.v1.SegmentInfo;
import io.aquifer.proto.v1.StreamInfo;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.apache.flink.api.common.JobID;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.runtime.state.KeyGroupRange;
import org.apache.flink.runtime.state.SnapshotResult;
import org.apache.flink.runtime.state.changelog.ChangelogStateHandleStreamImpl;
import org.apache.flink.runtime.state.changelog.SequenceNumber;
import org.apache.flink.runtime.state.changelog.StateChange;
import org.apache.flink.runtime.state.changelog.StateChangelogStorageView;
import org.apache.flink.runtime.state.changelog.StateChangelogWriter;
import org.apache.flink.util.CloseableIterator;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/** The storage's writer semantics, restore, truncation and fencing against a real node. */
class AquiferChangelogStorageIT {
  static AquiferServer server;
  static AquiferClient client;
  static Configuration config;

  @BeforeAll
  static void start() throws Exception {
    server = AquiferServer.start();
    client = AquiferClient.connect(server.address());
    config = new Configuration();
    config.set(AquiferChangelogOptions.ADDRESS, server.address());
    config.set(AquiferChangelogOptions.SCOPE, "changelog-it");
  }

  @AfterAll
  static void stop() {
    client.close();
    server.close();
  }

  static byte[] bytes(String s) {
    return s.getBytes(StandardCharsets.UTF_8);
  }

  static List<String> restore(ChangelogStateHandleStreamImpl handle) throws Exception {
    List<String> out = new ArrayList<>();
    try (StateChangelogStorageView<?> view = new AquiferChangelogStorageFactory().createStorageView(config);
        CloseableIterator<StateChange> changes =
            ((AquiferChangelogReader) view.createReader()).getChanges(handle)) {
      changes.forEachRemaining(
          c -> out.add(c.getKeyGroup() + ":" + new String(c.getChange(), StandardCharsets.UTF_8)));
    }
    return out;
  }

  static ChangelogStateHandleStreamImpl persist(
      StateChangelogWriter<ChangelogStateHandleStreamImpl> w, long from, long checkpoint)
      throws Exception {
    SnapshotResult<ChangelogStateHandleStreamImpl> r =
        w.persist(SequenceNumber.of(from), checkpoint).get();
    return r.getJobManagerOwnedSnapshot();
  }

  @Test
  void persistNamesExactlyTheChangesFromItsSequenceNumber() throws Exception {
    AquiferChangelogStorage storage = new AquiferChangelogStorage(new JobID(), config);
    try {
      StateChangelogWriter<ChangelogStateHandleStreamImpl> w =
          storage.createWriter("op-1", KeyGroupRange.of(0, 9), null);
      for (int i = 0; i < 50; i++) {
        w.append(i % 10, bytes("a" + i));
      }
      w.appendMeta(bytes("meta"));
      ChangelogStateHandleStreamImpl first = persist(w, 0, 1);
      List<String> all = restore(first);
      assertEquals(51, all.size());
      assertEquals("3:a3", all.get(3));
      assertEquals(StateChange.META_KEY_GROUP + ":meta", all.get(50));
      SequenceNumber mark = w.nextSequenceNumber();
      for (int i = 50; i < 60; i++) {
        w.append(i % 10, bytes("a" + i));
      }
      // A persist from the mark names only the later changes, though its first event holds more.
      List<String> later = restore(persist(w, 25, 2));
      assertEquals(36, later.size(), later.toString());
      assertEquals("5:a25", later.get(0));
      assertEquals(StateChange.META_KEY_GROUP + ":meta", later.get(25));
      assertEquals("9:a59", later.get(35));
      assertEquals(
          10,
          restore(persist(w, ((SequenceNumber.GenericSequenceNumber) mark).number, 3)).size());
      // Nothing new and nothing from there: empty.
      assertEquals(
          null,
          w.persist(w.nextSequenceNumber(), 4).get().getJobManagerOwnedSnapshot());
      // A change larger than one event's worth travels alone, split from the rest.
      byte[] big = new byte[AquiferChangelogWriter.EVENT_BYTES - 30];
      big[7] = 42;
      SequenceNumber beforeBig = w.nextSequenceNumber();
      w.append(1, bytes("small"));
      w.append(2, big);
      w.append(3, bytes("after"));
      ChangelogStateHandleStreamImpl h =
          persist(w, ((SequenceNumber.GenericSequenceNumber) beforeBig).number, 5);
      assertTrue(h.getHandlesAndOffsets().size() >= 2, "split into events");
      try (StateChangelogStorageView<?> view =
              new AquiferChangelogStorageFactory().createStorageView(config);
          CloseableIterator<StateChange> it =
              ((AquiferChangelogReader) view.createReader()).getChanges(h)) {
        assertArrayEquals(bytes("small"), it.next().getChange());
        assertArrayEquals(big, it.next().getChange());
        assertArrayEquals(bytes("after"), it.next().getChange());
      }
    } finally {
      storage.close();
    }
  }

  @Test
  void truncationMovesTheHeadPastWhatNoWriterNeeds() throws Exception {
    AquiferChangelogStorage storage = new AquiferChangelogStorage(new JobID(), config);
    try {
      StateChangelogWriter<ChangelogStateHandleStreamImpl> a =
          storage.createWriter("op-a", KeyGroupRange.of(0, 0), null);
      StateChangelogWriter<ChangelogStateHandleStreamImpl> b =
          storage.createWriter("op-b", KeyGroupRange.of(1, 1), null);
      byte[] kib = new byte[1024];
      ChangelogStateHandleStreamImpl bAll = null;
      for (int round = 0; round < 20; round++) {
        for (int i = 0; i < 10; i++) {
          a.append(0, kib);
          b.append(1, kib);
        }
        persist(a, 0, round);
        bAll = persist(b, 0, round);
      }
      // Flink's truncate alone frees nothing while the last completed checkpoint names the
      // changes: a checkpoint from the materialization point must complete first.
      SequenceNumber aNow = a.nextSequenceNumber();
      a.truncate(aNow);
      a.confirm(SequenceNumber.of(0), aNow, 20);
      Thread.sleep(300);
      assertEquals(0, head(storage), "the completed checkpoint 20 still names a's changes");
      a.persist(aNow, 21).get();
      a.confirm(aNow, aNow, 21);
      long deadline = System.nanoTime() + Duration.ofSeconds(10).toNanos();
      while (head(storage) == 0 && System.nanoTime() < deadline) {
        Thread.sleep(50);
      }
      assertTrue(head(storage) > 0, "a's first event is freed");
      assertEquals(200, restore(bAll).size(), "b still restores everything it persisted");
      SequenceNumber bNow = b.nextSequenceNumber();
      b.truncate(bNow);
      b.persist(bNow, 21).get();
      b.confirm(bNow, bNow, 21);
      deadline = System.nanoTime() + Duration.ofSeconds(10).toNanos();
      while (head(storage) < client.describeStream(storage.stream()).getSegments(0).getLength()
          && System.nanoTime() < deadline) {
        Thread.sleep(50);
      }
      SegmentInfo s = client.describeStream(storage.stream()).getSegments(0);
      assertEquals(s.getLength(), s.getHeadOffset(), "nothing is needed any more: all of it freed");
      // A handle whose events were truncated fails loudly rather than restoring less.
      for (int i = 0; i < 5; i++) {
        a.append(0, kib);
      }
      ChangelogStateHandleStreamImpl live = persist(a, 0, 99);
      assertEquals(5, restore(live).size());
    } finally {
      storage.close();
    }
  }

  static long head(AquiferChangelogStorage storage) {
    StreamInfo info = client.describeStream(storage.stream());
    return info.getSegments(0).getHeadOffset();
  }

  @Test
  void aZombieAttemptAppendingOnChangesNothingANewAttemptRestores() throws Exception {
    JobID job = new JobID();
    AquiferChangelogStorage old = new AquiferChangelogStorage(job, config);
    AquiferChangelogStorage fresh = new AquiferChangelogStorage(job, config);
    try {
      StateChangelogWriter<ChangelogStateHandleStreamImpl> zombie =
          old.createWriter("op-1", KeyGroupRange.of(0, 3), null);
      for (int i = 0; i < 100; i++) {
        zombie.append(i % 4, bytes("v" + i));
      }
      ChangelogStateHandleStreamImpl checkpointed = persist(zombie, 0, 7);
      List<String> expected = restore(checkpointed);
      assertEquals(100, expected.size());

      // The new attempt restores while the old one, not yet dead, keeps appending and
      // persisting under the same operator and key groups.
      StateChangelogWriter<ChangelogStateHandleStreamImpl> next =
          fresh.createWriter("op-1", KeyGroupRange.of(0, 3), null);
      Thread zombieLoop =
          new Thread(
              () -> {
                try {
                  for (int r = 0; r < 50; r++) {
                    for (int i = 0; i < 20; i++) {
                      zombie.append(i % 4, bytes("zombie" + r + "-" + i));
                    }
                    persist(zombie, 0, 8 + r);
                  }
                } catch (Exception e) {
                  throw new RuntimeException(e);
                }
              });
      zombieLoop.start();
      for (int attempt = 0; attempt < 5; attempt++) {
        assertEquals(expected, restore(checkpointed), "the restore reads what was checkpointed");
      }
      for (String change : expected) {
        next.append(Integer.parseInt(change.split(":")[0]), bytes(change.split(":")[1] + "'"));
      }
      ChangelogStateHandleStreamImpl mine = persist(next, 0, 9);
      zombieLoop.join();
      assertEquals(expected, restore(checkpointed));
      List<String> own = restore(mine);
      assertEquals(100, own.size());
      assertTrue(own.stream().noneMatch(c -> c.contains("zombie")), "nothing of the zombie");
      assertNotEquals(old.stream(), fresh.stream(), "each attempt appends to a stream of its own");
    } finally {
      old.close();
      fresh.close();
    }
  }

  @Test
  void persistsBeyondTheInFlightBudgetBackPressureUntilTheNodeAnswers() throws Exception {
    Configuration small = new Configuration(config);
    small.set(
        AquiferChangelogOptions.IN_FLIGHT_MAX,
        org.apache.flink.configuration.MemorySize.parse("64kb"));
    AquiferChangelogStorage storage = new AquiferChangelogStorage(new JobID(), small);
    try {
      StateChangelogWriter<ChangelogStateHandleStreamImpl> w =
          storage.createWriter("op-bp", KeyGroupRange.of(0, 0), null);
      assertTrue(storage.getAvailabilityProvider().isAvailable());
      server.kill();
      for (int i = 0; i < 100; i++) {
        w.append(0, new byte[1024]);
      }
      java.util.concurrent.CompletableFuture<?> persisted = w.persist(SequenceNumber.of(0), 1);
      assertTrue(!storage.getAvailabilityProvider().isAvailable(), "over budget: unavailable");
      Thread.sleep(300);
      assertTrue(!persisted.isDone(), () -> "the node is down, yet the persist ended: " + outcome(persisted));
      server.restart();
      persisted.get(60, java.util.concurrent.TimeUnit.SECONDS);
      storage.getAvailabilityProvider().getAvailableFuture().get(10, java.util.concurrent.TimeUnit.SECONDS);
      assertEquals(100, restore(w.persist(SequenceNumber.of(0), 2).get().getJobManagerOwnedSnapshot()).size());
    } finally {
      // The other tests need the node, whatever failed here.
      if (!server.isRunning()) {
        server.restart();
      }
      storage.close();
    }
  }

  static String outcome(java.util.concurrent.CompletableFuture<?> f) {
    try {
      return "completed with " + f.getNow(null);
    } catch (Exception e) {
      return "failed with " + e;
    }
  }

  @Test
  void badHandlesAreRefusedClearly() {
    ChangelogStateHandleStreamImpl forged =
        new ChangelogStateHandleStreamImpl(
            List.of(
                org.apache.flink.api.java.tuple.Tuple2.of(
                    new org.apache.flink.runtime.state.memory.ByteStreamStateHandle(
                        "x", new byte[] {9, 9}),
                    0L)),
            KeyGroupRange.of(0, 0),
            1,
            1,
            "aquifer");
    Exception e = assertThrows(Exception.class, () -> restore(forged));
    assertTrue(String.valueOf(e.getMessage()).contains("not one this storage wrote"), e.toString());
  }
}
