package aquifer.bench.changelog;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.ServiceLoader;
import java.util.concurrent.CompletableFuture;
import org.apache.flink.api.common.JobID;
import org.apache.flink.api.common.operators.MailboxExecutor;
import org.apache.flink.configuration.ConfigOption;
import org.apache.flink.configuration.ConfigOptions;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.runtime.io.AvailabilityProvider;
import org.apache.flink.runtime.metrics.groups.TaskManagerJobMetricGroup;
import org.apache.flink.runtime.state.KeyGroupRange;
import org.apache.flink.runtime.state.LocalRecoveryConfig;
import org.apache.flink.runtime.state.SnapshotResult;
import org.apache.flink.runtime.state.changelog.ChangelogStateHandle;
import org.apache.flink.runtime.state.changelog.SequenceNumber;
import org.apache.flink.runtime.state.changelog.StateChangelogHandleReader;
import org.apache.flink.runtime.state.changelog.StateChangelogStorage;
import org.apache.flink.runtime.state.changelog.StateChangelogStorageFactory;
import org.apache.flink.runtime.state.changelog.StateChangelogStorageView;
import org.apache.flink.runtime.state.changelog.StateChangelogWriter;

/**
 * {@code state.changelog.storage: timed}: the storage named by {@code state.changelog.timed.inner}
 * (found by the same service loading Flink uses), with every writer's {@code persist()} timed
 * from the call to the completion of the future it returned, into {@link PersistTimings}. Only
 * {@code persist} is touched: every other call, the availability provider and the readers are
 * the inner storage's own, so the job runs exactly as with the inner storage configured directly.
 */
public final class TimedChangelogStorageFactory implements StateChangelogStorageFactory {
  public static final String IDENTIFIER = "timed";

  public static final ConfigOption<String> INNER =
      ConfigOptions.key("state.changelog.timed.inner")
          .stringType()
          .noDefaultValue()
          .withDescription("The identifier of the storage the timed one wraps (aquifer, filesystem).");

  @Override
  public String getIdentifier() {
    return IDENTIFIER;
  }

  static StateChangelogStorageFactory inner(Configuration configuration) throws IOException {
    String wanted =
        configuration
            .getOptional(INNER)
            .orElseThrow(() -> new IOException("state.changelog.timed.inner is not set"));
    List<String> seen = new ArrayList<>();
    for (StateChangelogStorageFactory f :
        ServiceLoader.load(
            StateChangelogStorageFactory.class, TimedChangelogStorageFactory.class.getClassLoader())) {
      if (f.getIdentifier().equals(wanted) && !(f instanceof TimedChangelogStorageFactory)) {
        return f;
      }
      seen.add(f.getIdentifier());
    }
    throw new IOException("no state changelog storage '" + wanted + "' on the classpath (found " + seen + ")");
  }

  @Override
  public StateChangelogStorage<?> createStorage(
      JobID jobID,
      Configuration configuration,
      TaskManagerJobMetricGroup metricGroup,
      LocalRecoveryConfig localRecoveryConfig)
      throws IOException {
    StateChangelogStorage<?> storage =
        inner(configuration).createStorage(jobID, configuration, metricGroup, localRecoveryConfig);
    return wrap(storage);
  }

  @Override
  public StateChangelogStorageView<?> createStorageView(Configuration configuration) throws IOException {
    return inner(configuration).createStorageView(configuration);
  }

  private static <H extends ChangelogStateHandle> TimedStorage<H> wrap(StateChangelogStorage<H> storage) {
    return new TimedStorage<>(storage);
  }

  /** The inner storage; its writers wrapped. */
  static final class TimedStorage<H extends ChangelogStateHandle> implements StateChangelogStorage<H> {
    private final StateChangelogStorage<H> inner;

    TimedStorage(StateChangelogStorage<H> inner) {
      this.inner = inner;
    }

    @Override
    public StateChangelogWriter<H> createWriter(
        String operatorID, KeyGroupRange keyGroupRange, MailboxExecutor mailboxExecutor) {
      return new TimedWriter<>(inner.createWriter(operatorID, keyGroupRange, mailboxExecutor));
    }

    @Override
    public AvailabilityProvider getAvailabilityProvider() {
      return inner.getAvailabilityProvider();
    }

    @Override
    public StateChangelogHandleReader<H> createReader() {
      return inner.createReader();
    }

    @Override
    public void close() throws Exception {
      inner.close();
    }
  }

  /** Delegates everything; times persist(). */
  static final class TimedWriter<H extends ChangelogStateHandle> implements StateChangelogWriter<H> {
    private final StateChangelogWriter<H> inner;

    TimedWriter(StateChangelogWriter<H> inner) {
      this.inner = inner;
    }

    @Override
    public CompletableFuture<SnapshotResult<H>> persist(SequenceNumber from, long checkpointId)
        throws IOException {
      long start = System.nanoTime();
      boolean measured = PersistTimings.measuring();
      CompletableFuture<SnapshotResult<H>> f;
      try {
        f = inner.persist(from, checkpointId);
      } catch (IOException | RuntimeException e) {
        PersistTimings.failed(measured);
        throw e;
      }
      long returned = System.nanoTime();
      f.whenComplete(
          (r, error) -> {
            long done = System.nanoTime();
            if (error != null) {
              PersistTimings.failed(measured);
              return;
            }
            long full = 0;
            long incremental = 0;
            H handle = r == null ? null : r.getJobManagerOwnedSnapshot();
            if (handle != null) {
              full = handle.getStateSize();
              incremental = handle.getCheckpointedSize();
            }
            PersistTimings.completed(measured, returned - start, done - start, full, incremental);
          });
      return f;
    }

    @Override
    public SequenceNumber initialSequenceNumber() {
      return inner.initialSequenceNumber();
    }

    @Override
    public SequenceNumber nextSequenceNumber() {
      return inner.nextSequenceNumber();
    }

    @Override
    public void appendMeta(byte[] value) throws IOException {
      inner.appendMeta(value);
    }

    @Override
    public void append(int keyGroup, byte[] value) throws IOException {
      inner.append(keyGroup, value);
    }

    @Override
    public void truncate(SequenceNumber to) {
      inner.truncate(to);
    }

    @Override
    public void confirm(SequenceNumber from, SequenceNumber to, long checkpointId) {
      inner.confirm(from, to, checkpointId);
    }

    @Override
    public void reset(SequenceNumber from, SequenceNumber to, long checkpointId) {
      inner.reset(from, to, checkpointId);
    }

    @Override
    public void truncateAndClose(SequenceNumber lastUploaded) {
      inner.truncateAndClose(lastUploaded);
    }

    @Override
    public void close() {
      inner.close();
    }
  }
}
