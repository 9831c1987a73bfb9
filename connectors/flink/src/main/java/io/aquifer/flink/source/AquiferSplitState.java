package io.aquifer.flink.source;

/** A split being read: its offset moves past each event as the event is emitted. */
final class AquiferSplitState {
  private final AquiferSplit split;
  /** Read by the metrics thread (pendingBytes). */
  private volatile long offset;

  AquiferSplitState(AquiferSplit split) {
    this.split = split;
    this.offset = split.offset();
  }

  void advanceTo(long next) {
    offset = next;
  }

  long offset() {
    return offset;
  }

  AquiferSplit toSplit() {
    return split.at(offset);
  }
}
