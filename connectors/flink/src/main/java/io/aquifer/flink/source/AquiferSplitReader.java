package io.aquifer.flink.source;

import io.aquifer.client.AquiferClient;
import io.aquifer.client.Event;
import io.aquifer.client.SegmentReader;
import java.io.IOException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.TimeUnit;
import org.apache.flink.connector.base.source.reader.RecordsBySplits;
import org.apache.flink.connector.base.source.reader.RecordsWithSplitIds;
import org.apache.flink.connector.base.source.reader.splitreader.SplitReader;
import org.apache.flink.connector.base.source.reader.splitreader.SplitsAddition;
import org.apache.flink.connector.base.source.reader.splitreader.SplitsChange;

/**
 * Reads a reader's segments at once: one pump thread per segment (a blocking {@link SegmentReader},
 * following the segment unless bounded) feeds one bounded queue, so memory is bounded by the
 * queue and back-pressure reaches the server through gRPC flow control. Owns the pumps; never
 * emits (the fetcher thread does) and never skips or reorders a segment's events.
 */
final class AquiferSplitReader implements SplitReader<Event, AquiferSplit> {
  /** Read responses queued between the pumps and the fetcher (each at most ~1 MiB). */
  static final int QUEUE_ITEMS = 16;

  private static final Item WAKE = new Item(null, null, false, null);

  private final AquiferClient client;
  private final BlockingQueue<Item> queue = new ArrayBlockingQueue<>(QUEUE_ITEMS);
  private final Map<String, Pump> pumps = new HashMap<>();

  AquiferSplitReader(AquiferClient client) {
    this.client = client;
  }

  private static final class Item {
    final String splitId;
    final List<Event> events;
    final boolean finished;
    final Throwable error;

    Item(String splitId, List<Event> events, boolean finished, Throwable error) {
      this.splitId = splitId;
      this.events = events;
      this.finished = finished;
      this.error = error;
    }
  }

  @Override
  public RecordsWithSplitIds<Event> fetch() throws IOException {
    RecordsBySplits.Builder<Event> out = new RecordsBySplits.Builder<>();
    List<Item> items = new ArrayList<>();
    try {
      Item first = queue.poll(100, TimeUnit.MILLISECONDS);
      if (first != null) {
        items.add(first);
        queue.drainTo(items, QUEUE_ITEMS);
      }
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      return out.build();
    }
    for (Item item : items) {
      if (item == WAKE) {
        continue;
      }
      if (item.error != null) {
        throw new IOException("reading segment " + item.splitId + " failed", item.error);
      }
      if (item.events != null) {
        out.addAll(item.splitId, item.events);
      }
      if (item.finished) {
        pumps.remove(item.splitId);
        out.addFinishedSplit(item.splitId);
      }
    }
    return out.build();
  }

  @Override
  public void handleSplitsChanges(SplitsChange<AquiferSplit> change) {
    if (!(change instanceof SplitsAddition)) {
      return;
    }
    for (AquiferSplit split : change.splits()) {
      boolean follow = split.endOffset() < 0;
      SegmentReader reader =
          client.segmentReader(split.segmentId(), split.offset(), split.endOffset(), follow);
      Pump pump = new Pump(split.splitId(), reader);
      pumps.put(split.splitId(), pump);
      pump.thread.start();
    }
  }

  @Override
  public void wakeUp() {
    queue.offer(WAKE);
  }

  @Override
  public void close() {
    for (Pump p : pumps.values()) {
      p.stop();
    }
    pumps.clear();
  }

  /** One segment's reads, into the queue. */
  private final class Pump {
    final String splitId;
    final SegmentReader reader;
    final Thread thread;
    volatile boolean stopping;

    Pump(String splitId, SegmentReader reader) {
      this.splitId = splitId;
      this.reader = reader;
      this.thread = new Thread(this::run, "aquifer-read-" + splitId);
      this.thread.setDaemon(true);
    }

    void run() {
      try {
        List<Event> events;
        while ((events = reader.next()) != null) {
          queue.put(new Item(splitId, events, false, null));
        }
        if (!Thread.currentThread().isInterrupted()) {
          queue.put(new Item(splitId, null, true, null));
        }
      } catch (InterruptedException e) {
        // Stopped.
      } catch (RuntimeException e) {
        if (stopping) {
          return;
        }
        try {
          queue.put(new Item(splitId, null, false, e));
        } catch (InterruptedException stopped) {
          // Stopped while failing: nothing to report to.
        }
      }
    }

    void stop() {
      stopping = true;
      reader.close();
      thread.interrupt();
    }
  }
}
