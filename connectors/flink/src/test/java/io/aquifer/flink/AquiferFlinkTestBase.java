package io.aquifer.flink;

import io.aquifer.client.AquiferClient;
import io.aquifer.client.AquiferServer;
import io.aquifer.client.StreamName;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.apache.flink.runtime.testutils.MiniClusterResourceConfiguration;
import org.apache.flink.test.junit5.MiniClusterExtension;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.extension.RegisterExtension;

/** A real Aquifer node and a Flink MiniCluster (1 TaskManager, 4 slots) for every test class. */
public abstract class AquiferFlinkTestBase {
  @RegisterExtension
  static final MiniClusterExtension MINI =
      new MiniClusterExtension(
          new MiniClusterResourceConfiguration.Builder()
              .setNumberTaskManagers(1)
              .setNumberSlotsPerTaskManager(4)
              .build());

  protected static AquiferServer server;
  protected static AquiferClient client;

  @BeforeAll
  static void startAquifer() throws Exception {
    server = AquiferServer.start();
    client = AquiferClient.connect(server.address());
  }

  @AfterAll
  static void stopAquifer() {
    if (client != null) {
      client.close();
    }
    if (server != null) {
      server.close();
    }
  }

  /** Writes {@code perKey} events "key,seq" for each of {@code keys} keys, interleaved. */
  protected static void writeSequences(StreamName stream, int keys, int from, int perKey) {
    AquiferFlinkTestBaseAccess.write(client, stream, keys, from, perKey);
  }

  /** Every payload of {@code stream}, read with the Rust CLI (`aquifer scan`). */
  protected static List<String> scanWithCli(StreamName stream) throws Exception {
    List<String> out = new ArrayList<>();
    for (String line : server.cli("scan", stream.toString()).split("\n")) {
      if (!line.isEmpty()) {
        out.add(line);
      }
    }
    return out;
  }

  /** "key,value" lines grouped by key, in the order they appear (per segment, hence per key). */
  protected static Map<String, List<Long>> byKey(List<String> lines) {
    Map<String, List<Long>> out = new HashMap<>();
    for (String line : lines) {
      String[] f = line.split(",");
      out.computeIfAbsent(f[0], k -> new ArrayList<>()).add(Long.parseLong(f[1]));
    }
    return out;
  }
}
