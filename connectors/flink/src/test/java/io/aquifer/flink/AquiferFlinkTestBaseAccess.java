package io.aquifer.flink;

import io.aquifer.client.AquiferClient;
import io.aquifer.client.EventWriter;
import io.aquifer.client.StreamName;
import io.aquifer.client.WriterConfig;
import java.nio.charset.StandardCharsets;

/** Writing "key,seq" sequences with any client (the base class's helper uses its own). */
final class AquiferFlinkTestBaseAccess {
  private AquiferFlinkTestBaseAccess() {}

  static void write(AquiferClient client, StreamName stream, int keys, int from, int perKey) {
    try (EventWriter w = client.writer(stream, new WriterConfig())) {
      for (int seq = from; seq < from + perKey; seq++) {
        for (int k = 0; k < keys; k++) {
          String key = "k" + k;
          w.write(key, (key + "," + seq).getBytes(StandardCharsets.UTF_8));
        }
      }
      w.flush();
    }
  }
}
