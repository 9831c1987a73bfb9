package io.aquifer.flink.changelog;

import io.aquifer.client.AquiferClient;
import org.apache.flink.api.common.JobID;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.runtime.metrics.groups.TaskManagerJobMetricGroup;
import org.apache.flink.runtime.state.LocalRecoveryConfig;
import org.apache.flink.runtime.state.changelog.ChangelogStateHandleStreamImpl;
import org.apache.flink.runtime.state.changelog.StateChangelogHandleReader;
import org.apache.flink.runtime.state.changelog.StateChangelogStorage;
import org.apache.flink.runtime.state.changelog.StateChangelogStorageFactory;
import org.apache.flink.runtime.state.changelog.StateChangelogStorageView;

/**
 * {@code state.changelog.storage: aquifer}, found by Flink's service loading
 * (META-INF/services). Options are {@link AquiferChangelogOptions}.
 */
public final class AquiferChangelogStorageFactory implements StateChangelogStorageFactory {
  @Override
  public String getIdentifier() {
    return AquiferChangelogStorage.IDENTIFIER;
  }

  @Override
  public StateChangelogStorage<?> createStorage(
      JobID jobID,
      Configuration configuration,
      TaskManagerJobMetricGroup metricGroup,
      LocalRecoveryConfig localRecoveryConfig) {
    return new AquiferChangelogStorage(jobID, configuration);
  }

  @Override
  public StateChangelogStorageView<?> createStorageView(Configuration configuration) {
    AquiferClient client = AquiferClient.connect(configuration.get(AquiferChangelogOptions.ADDRESS));
    return new StateChangelogStorageView<ChangelogStateHandleStreamImpl>() {
      @Override
      public StateChangelogHandleReader<ChangelogStateHandleStreamImpl> createReader() {
        return new AquiferChangelogReader(client);
      }

      @Override
      public void close() {
        client.close();
      }
    };
  }
}
