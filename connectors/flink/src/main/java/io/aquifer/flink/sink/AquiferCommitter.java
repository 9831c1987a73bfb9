package io.aquifer.flink.sink;

import io.aquifer.client.AquiferClient;
import io.aquifer.client.AquiferException;
import io.aquifer.client.StreamName;
import java.time.Duration;
import java.util.Collection;
import org.apache.flink.api.connector.sink2.Committer;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Commits pre-committed transactions by id, after the checkpoint that holds them completed (and
 * again after a restore: commit is idempotent). A transaction that aborted meanwhile (it timed out
 * while the job was down) fails the commit with a known reason: its events are lost, and saying
 * so beats a silent gap.
 */
final class AquiferCommitter implements Committer<AquiferCommittable> {
  private static final Logger LOG = LoggerFactory.getLogger(AquiferCommitter.class);

  private final AquiferClient client;
  private final Duration timeout;

  AquiferCommitter(AquiferClient client, Duration timeout) {
    this.client = client;
    this.timeout = timeout;
  }

  @Override
  public void commit(Collection<CommitRequest<AquiferCommittable>> requests) {
    for (CommitRequest<AquiferCommittable> request : requests) {
      AquiferCommittable c = request.getCommittable();
      try {
        client.transactions(StreamName.parse(c.stream), timeout).commit(c.transactionId, true);
      } catch (AquiferException e) {
        if (AquiferException.REASON_TRANSACTION_ABORTED.equals(e.reason())) {
          request.signalFailedWithKnownReason(
              new IllegalStateException(
                  c + " was aborted before it could be committed (did it time out while the job was"
                      + " down? raise the sink's transaction timeout)", e));
        } else if (e.code() == io.grpc.Status.Code.NOT_FOUND) {
          // Finished long ago and forgotten: only a committed transaction's committable survives
          // a checkpoint, so it was committed.
          LOG.warn("{} is no longer known; it was committed before", c);
          request.signalAlreadyCommitted();
        } else if (e.isRetryable()) {
          request.retryLater();
        } else {
          request.signalFailedWithUnknownReason(e);
        }
      }
    }
  }

  @Override
  public void close() {
    client.close();
  }
}
