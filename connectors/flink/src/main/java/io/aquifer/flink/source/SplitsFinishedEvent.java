package io.aquifer.flink.source;

import java.util.List;
import org.apache.flink.api.connector.source.SourceEvent;

/** Reader to enumerator: these segments were read to their end (all their events emitted). */
final class SplitsFinishedEvent implements SourceEvent {
  private static final long serialVersionUID = 1L;

  final List<Long> segmentIds;

  SplitsFinishedEvent(List<Long> segmentIds) {
    this.segmentIds = segmentIds;
  }
}
