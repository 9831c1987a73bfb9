package io.aquifer.flink.source;

import io.aquifer.client.AquiferClient;
import io.aquifer.client.SegmentGraph;
import io.aquifer.client.StreamCut;
import io.aquifer.client.StreamName;
import io.aquifer.proto.v1.SegmentInfo;
import io.aquifer.proto.v1.StreamInfo;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import javax.annotation.Nullable;
import org.apache.flink.api.connector.source.SourceEvent;
import org.apache.flink.api.connector.source.SplitEnumerator;
import org.apache.flink.api.connector.source.SplitEnumeratorContext;
import org.apache.flink.api.connector.source.SplitsAssignment;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Hands segments to readers in the order scaling requires: a successor only once every one of its
 * predecessors was read to its end <em>and</em> (unbounded) a checkpoint completed after that, so
 * the predecessor's events are behind a barrier every downstream operator aligned on before any
 * successor event: per-key order holds across readers and across failures.
 *
 * <p>A reader that fails gets back only what was assigned to it since its last checkpoint ({@link
 * #addSplitsBack}), from the offsets it was assigned with: no global failover. Runs in the
 * coordinator thread; describes run in Flink's worker threads via {@code callAsync}. Must never
 * hand out one segment twice at a time, nor a successor early.
 */
final class AquiferEnumerator implements SplitEnumerator<AquiferSplit, AquiferEnumeratorState> {
  private static final Logger LOG = LoggerFactory.getLogger(AquiferEnumerator.class);
  /** Without any checkpoint (checkpointing off), finished segments are released after this. */
  private static final long RELEASE_WITHOUT_CHECKPOINT_MS = 10_000;
  private static final long DISCOVERY_INTERVAL_MS = 1_000;

  private final SplitEnumeratorContext<AquiferSplit> context;
  private final AquiferClient client;
  private final StreamName stream;
  private final boolean bounded;
  private final Positions.Start start;
  private final Positions.End end;

  private StreamCut startCut;
  private StreamCut endCut;
  /** Read to their end and released: their successors may go. */
  private final Set<Long> finished = new HashSet<>();
  /** Read to their end, waiting for a checkpoint (unbounded): id → when reported. */
  private final Map<Long, Long> unreleased = new LinkedHashMap<>();
  /** Unreleased segments a checkpoint snapshot covers: checkpoint id → segments. */
  private final TreeMap<Long, List<Long>> releasedBy = new TreeMap<>();
  private boolean sawCheckpoint;
  private final Map<Long, Integer> assigned = new HashMap<>();
  private final Map<Long, AquiferSplit> pending = new LinkedHashMap<>();
  /** Pending splits a failed reader gave back: they go to that reader again. */
  private final Map<Long, Integer> returnedTo = new HashMap<>();
  private final SegmentGraph graph = new SegmentGraph();
  private volatile int activeSegments;
  private boolean noMoreSplits;

  AquiferEnumerator(
      SplitEnumeratorContext<AquiferSplit> context,
      AquiferClient client,
      StreamName stream,
      Positions.Start start,
      @Nullable Positions.End end,
      @Nullable AquiferEnumeratorState restored) {
    this.context = context;
    this.client = client;
    this.stream = stream;
    this.start = start;
    this.end = end;
    this.bounded = end != null;
    if (restored != null) {
      startCut = restored.startCut;
      endCut = restored.endCut;
      // Finished at a checkpoint: in no reader's state of that checkpoint, so released.
      finished.addAll(restored.finished);
      assigned.putAll(restored.assigned);
      restored.pending.forEach(s -> pending.put(s.segmentId(), s));
    }
  }

  @Override
  public void start() {
    context.metricGroup().gauge("activeSegments", () -> activeSegments);
    context.callAsync(this::describe, this::onDescribe, 0, DISCOVERY_INTERVAL_MS);
  }

  /** Worker thread: the stream's metadata (and, the first time, the cuts). */
  private Described describe() {
    StreamCut s = startCut == null ? start.resolve(client, stream) : null;
    StreamCut e = bounded && endCut == null ? end.resolve(client, stream) : null;
    return new Described(client.describeStream(stream), s, e);
  }

  private static final class Described {
    final StreamInfo info;
    final StreamCut start;
    final StreamCut end;

    Described(StreamInfo info, StreamCut start, StreamCut end) {
      this.info = info;
      this.start = start;
      this.end = end;
    }
  }

  private void onDescribe(Described d, Throwable error) {
    if (error != null) {
      LOG.warn("describing {} failed; trying again in {} ms", stream, DISCOVERY_INTERVAL_MS, error);
      return;
    }
    if (startCut == null) {
      startCut = d.start;
      LOG.info("{}: reading from cut {}", stream, startCut);
    }
    if (bounded && endCut == null) {
      endCut = d.end;
      LOG.info("{}: bounded, reading up to cut {}", stream, endCut);
    }
    graph.learn(d.info.getSegmentsList());
    activeSegments = AquiferClient.activeSegments(d.info).size();
    if (!sawCheckpoint) {
      long now = System.currentTimeMillis();
      List<Long> due = new ArrayList<>();
      unreleased.forEach(
          (id, at) -> {
            if (now - at >= RELEASE_WITHOUT_CHECKPOINT_MS) {
              due.add(id);
            }
          });
      due.forEach(this::release);
    }
    planSplits(d.info);
    assignPending();
    maybeFinish(d.info);
  }

  /** Turns every segment whose predecessors are all released into a pending split. */
  private void planSplits(StreamInfo info) {
    Set<Long> beforeStart = new HashSet<>();
    for (long id : startCut.positions().keySet()) {
      beforeStart.addAll(graph.ancestors(id));
    }
    Set<Long> afterEnd = new HashSet<>();
    if (bounded) {
      for (long id : endCut.positions().keySet()) {
        afterEnd.addAll(graph.descendants(id));
      }
    }
    boolean progress = true;
    while (progress) {
      progress = false;
      for (SegmentInfo s : info.getSegmentsList()) {
        long id = s.getSegmentId();
        if (finished.contains(id)
            || unreleased.containsKey(id)
            || assigned.containsKey(id)
            || pending.containsKey(id)) {
          continue;
        }
        boolean skip =
            (beforeStart.contains(id) && !startCut.positions().containsKey(id))
                || (afterEnd.contains(id) && !endCut.positions().containsKey(id));
        if (skip) {
          finished.add(id);
          progress = true;
          continue;
        }
        boolean free = true;
        for (long p : s.getPredecessorsList()) {
          if (graph.knows(p) && !finished.contains(p)) {
            free = false;
            break;
          }
        }
        if (!free) {
          continue;
        }
        long from = Math.max(startCut.positions().getOrDefault(id, s.getHeadOffset()), s.getHeadOffset());
        long to = -1;
        if (bounded) {
          to = Math.min(endCut.positions().getOrDefault(id, s.getLength()), s.getLength());
          if (from >= to) {
            finished.add(id);
            progress = true;
            continue;
          }
        }
        pending.put(id, new AquiferSplit(id, from, to));
      }
    }
  }

  private void assignPending() {
    Set<Integer> readers = context.registeredReaders().keySet();
    // Wait for every reader (at start, and for a failed one to come back): splits spread over
    // all subtasks, and a failed reader's splits return to it rather than piling on the others.
    if (pending.isEmpty() || readers.size() < context.currentParallelism()) {
      return;
    }
    Map<Integer, Integer> load = new HashMap<>();
    readers.forEach(r -> load.put(r, 0));
    assigned.values().forEach(r -> load.computeIfPresent(r, (k, v) -> v + 1));
    Map<Integer, List<AquiferSplit>> out = new HashMap<>();
    for (AquiferSplit split : new ArrayList<>(pending.values())) {
      Integer owner = returnedTo.get(split.segmentId());
      int reader =
          owner != null
              ? owner
              : load.entrySet().stream()
                  .min(
                      Map.Entry.<Integer, Integer>comparingByValue()
                          .thenComparing(Map.Entry.comparingByKey()))
                  .map(Map.Entry::getKey)
                  .orElseThrow();
      if (!readers.contains(reader)) {
        continue;
      }
      load.merge(reader, 1, Integer::sum);
      out.computeIfAbsent(reader, k -> new ArrayList<>()).add(split);
      assigned.put(split.segmentId(), reader);
      pending.remove(split.segmentId());
      returnedTo.remove(split.segmentId());
    }
    if (out.isEmpty()) {
      return;
    }
    LOG.info("{}: assigning {}", stream, out);
    context.assignSplits(new SplitsAssignment<>(out));
    if (noMoreSplits) {
      // Splits given back by a failed reader after the end was signalled: the reader that
      // restarted gets them, then the end again.
      out.keySet().forEach(context::signalNoMoreSplits);
    }
  }

  /** Bounded: everything read; unbounded: the stream is sealed and every segment read. */
  private void maybeFinish(StreamInfo info) {
    if (noMoreSplits || !pending.isEmpty() || !assigned.isEmpty() || !unreleased.isEmpty()) {
      return;
    }
    if (!bounded && !info.getSealed()) {
      return;
    }
    for (SegmentInfo s : info.getSegmentsList()) {
      if (!finished.contains(s.getSegmentId())) {
        return;
      }
    }
    noMoreSplits = true;
    LOG.info("{}: every segment read; no more splits", stream);
    for (int reader : context.registeredReaders().keySet()) {
      context.signalNoMoreSplits(reader);
    }
  }

  private void release(long id) {
    unreleased.remove(id);
    finished.add(id);
  }

  @Override
  public void handleSplitRequest(int subtaskId, @Nullable String requesterHostname) {
    // Splits are pushed as they become ready; readers never ask.
  }

  @Override
  public void handleSourceEvent(int subtaskId, SourceEvent event) {
    if (!(event instanceof SplitsFinishedEvent)) {
      return;
    }
    long now = System.currentTimeMillis();
    for (long id : ((SplitsFinishedEvent) event).segmentIds) {
      assigned.remove(id);
      if (bounded) {
        finished.add(id);
      } else if (!finished.contains(id)) {
        unreleased.putIfAbsent(id, now);
      }
    }
    // Successors may be listed by now: look at once rather than at the next tick.
    context.callAsync(this::describe, this::onDescribe);
  }

  @Override
  public void addSplitsBack(List<AquiferSplit> splits, int subtaskId) {
    // Assigned to the failed reader since its last checkpoint: hand them out again, from the
    // offsets they were assigned with (nothing of them is in any checkpoint).
    for (AquiferSplit s : splits) {
      assigned.remove(s.segmentId());
      pending.put(s.segmentId(), s);
      returnedTo.put(s.segmentId(), subtaskId);
    }
    LOG.info("{}: reader {} failed; {} split(s) back", stream, subtaskId, splits.size());
    assignPending();
  }

  @Override
  public void addReader(int subtaskId) {
    assignPending();
    // Only once nothing is left for it: a reader told "no more" before its splits came would
    // finish without them.
    if (noMoreSplits && !returnedTo.containsValue(subtaskId)) {
      context.signalNoMoreSplits(subtaskId);
    }
  }

  @Override
  public AquiferEnumeratorState snapshotState(long checkpointId) {
    sawCheckpoint = true;
    if (!unreleased.isEmpty()) {
      releasedBy.put(checkpointId, new ArrayList<>(unreleased.keySet()));
    }
    Set<Long> done = new HashSet<>(finished);
    done.addAll(unreleased.keySet());
    return new AquiferEnumeratorState(
        startCut,
        endCut,
        done,
        new HashMap<>(assigned),
        new ArrayList<>(pending.values()));
  }

  @Override
  public void notifyCheckpointComplete(long checkpointId) {
    Map<Long, List<Long>> due = releasedBy.headMap(checkpointId, true);
    due.values().forEach(ids -> ids.forEach(this::release));
    due.clear();
    context.callAsync(this::describe, this::onDescribe);
  }

  @Override
  public void close() {
    client.close();
  }
}
