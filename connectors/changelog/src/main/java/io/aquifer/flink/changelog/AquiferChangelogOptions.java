package io.aquifer.flink.changelog;

import java.time.Duration;
import org.apache.flink.configuration.ConfigOption;
import org.apache.flink.configuration.ConfigOptions;
import org.apache.flink.configuration.MemorySize;

/** The {@code state.changelog.aquifer.*} options, with defaults that work on one local node. */
public final class AquiferChangelogOptions {
  private AquiferChangelogOptions() {}

  public static final ConfigOption<String> ADDRESS =
      ConfigOptions.key("state.changelog.aquifer.address")
          .stringType()
          .defaultValue("127.0.0.1:7450")
          .withDescription("A node of the Aquifer cluster that holds the changelog, HOST:PORT.");

  public static final ConfigOption<String> SCOPE =
      ConfigOptions.key("state.changelog.aquifer.scope")
          .stringType()
          .defaultValue("flink-changelog")
          .withDescription(
              "The scope of the changelog streams: one stream per job per TaskManager, named"
                  + " after the job id and a random suffix.");

  public static final ConfigOption<Integer> SEGMENTS =
      ConfigOptions.key("state.changelog.aquifer.segments")
          .intType()
          .defaultValue(1)
          .withDescription(
              "Segments of each changelog stream; a writer (operator and key-group range) always"
                  + " appends to one of them.");

  public static final ConfigOption<Duration> PERSIST_DELAY =
      ConfigOptions.key("state.changelog.aquifer.persist-delay")
          .durationType()
          .defaultValue(Duration.ofMillis(2))
          .withDescription(
              "How long a persist waits for others of the same TaskManager to share its append"
                  + " (the writer's linger).");

  public static final ConfigOption<MemorySize> UPLOAD_EARLY =
      ConfigOptions.key("state.changelog.aquifer.upload-early")
          .memoryType()
          .defaultValue(MemorySize.parse("512kb"))
          .withDescription(
              "A writer uploads its buffered changes once they reach this size, between"
                  + " checkpoints, so a persist has little left to send.");

  public static final ConfigOption<MemorySize> IN_FLIGHT_MAX =
      ConfigOptions.key("state.changelog.aquifer.in-flight-max")
          .memoryType()
          .defaultValue(MemorySize.parse("64mb"))
          .withDescription(
              "Changes being persisted and not yet acknowledged; beyond it the storage reports"
                  + " itself unavailable (Flink back-pressures the tasks).");

  public static final ConfigOption<Duration> PERSIST_TIMEOUT =
      ConfigOptions.key("state.changelog.aquifer.persist-timeout")
          .durationType()
          .defaultValue(Duration.ofSeconds(30))
          .withDescription("A persist not durable by then fails its checkpoint.");

  public static final ConfigOption<Duration> RETENTION_AFTER_CLOSE =
      ConfigOptions.key("state.changelog.aquifer.retention-after-close")
          .durationType()
          .defaultValue(Duration.ofDays(7))
          .withDescription(
              "When a TaskManager releases the job, its changelog stream keeps what is left this"
                  + " long (a retained checkpoint may still need it), then retention removes it.");
}
