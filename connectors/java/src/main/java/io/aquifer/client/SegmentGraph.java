package io.aquifer.client;

import io.aquifer.proto.v1.SegmentInfo;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;

/**
 * A stream's segments as a graph of predecessors and successors, with the rule every ordered
 * reader follows: a segment is read only after every one of its predecessors is read to its end
 * (so per-key order holds across scales). The Rust client's {@code graph.rs}, in Java.
 *
 * <p>Not thread-safe. A predecessor no longer listed (removed by retention) counts as done.
 */
public final class SegmentGraph {
  private enum State {
    WAITING,
    STARTED,
    DONE
  }

  private static final class Node {
    SegmentInfo info;
    State state = State.WAITING;

    Node(SegmentInfo info) {
      this.info = info;
    }
  }

  private final TreeMap<Long, Node> nodes = new TreeMap<>();

  /** Adds segments not seen yet and refreshes the links and lengths of known ones. */
  public void learn(List<SegmentInfo> segments) {
    for (SegmentInfo s : segments) {
      Node n = nodes.get(s.getSegmentId());
      if (n == null) {
        nodes.put(s.getSegmentId(), new Node(s));
      } else {
        n.info = s;
      }
    }
  }

  public SegmentInfo info(long id) {
    Node n = nodes.get(id);
    return n == null ? null : n.info;
  }

  public boolean knows(long id) {
    return nodes.containsKey(id);
  }

  /** Every listed predecessor of {@code id}, at any distance. */
  public Set<Long> ancestors(long id) {
    return reach(id, true);
  }

  /** Every listed successor of {@code id}, at any distance. */
  public Set<Long> descendants(long id) {
    return reach(id, false);
  }

  private Set<Long> reach(long id, boolean up) {
    Set<Long> out = new TreeSet<>();
    ArrayDeque<Long> todo = new ArrayDeque<>();
    todo.add(id);
    while (!todo.isEmpty()) {
      Node n = nodes.get(todo.poll());
      if (n == null) {
        continue;
      }
      for (long next : up ? n.info.getPredecessorsList() : n.info.getSuccessorsList()) {
        if (nodes.containsKey(next) && out.add(next)) {
          todo.add(next);
        }
      }
    }
    return out;
  }

  /** Marks {@code id} read to its end (or not to be read at all). */
  public void finish(long id) {
    Node n = nodes.get(id);
    if (n != null) {
      n.state = State.DONE;
    }
  }

  /** Marks {@code id} handed out, so {@link #takeReady} does not return it. */
  public void start(long id) {
    Node n = nodes.get(id);
    if (n != null && n.state == State.WAITING) {
      n.state = State.STARTED;
    }
  }

  public boolean isFinished(long id) {
    Node n = nodes.get(id);
    return n != null && n.state == State.DONE;
  }

  /** The waiting segments whose predecessors are all done, now marked started. */
  public List<SegmentInfo> takeReady() {
    List<SegmentInfo> ready = new ArrayList<>();
    for (Node n : nodes.values()) {
      if (n.state != State.WAITING) {
        continue;
      }
      boolean free = true;
      for (long p : n.info.getPredecessorsList()) {
        Node pred = nodes.get(p);
        if (pred != null && pred.state != State.DONE) {
          free = false;
          break;
        }
      }
      if (free) {
        ready.add(n.info);
      }
    }
    for (SegmentInfo s : ready) {
      nodes.get(s.getSegmentId()).state = State.STARTED;
    }
    return ready;
  }

  /** True when every known segment is done. */
  public boolean allFinished() {
    return nodes.values().stream().allMatch(n -> n.state == State.DONE);
  }
}
