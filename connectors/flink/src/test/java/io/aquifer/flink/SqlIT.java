package io.aquifer.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.aquifer.client.Event;
import io.aquifer.client.EventWriter;
import io.aquifer.client.SegmentReader;
import io.aquifer.client.StreamName;
import io.aquifer.client.WriterConfig;
import io.aquifer.proto.v1.SegmentInfo;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.table.api.EnvironmentSettings;
import org.apache.flink.table.api.TableEnvironment;
import org.apache.flink.table.api.ValidationException;
import org.apache.flink.types.Row;
import org.apache.flink.util.CloseableIterator;
import org.junit.jupiter.api.Test;

/** The `aquifer` SQL connector on a MiniCluster against a real `aquifer serve`. */
class SqlIT extends AquiferFlinkTestBase {
  private static final ObjectMapper JSON = new ObjectMapper();

  static TableEnvironment tableEnv() {
    Configuration conf = new Configuration();
    conf.setString("execution.checkpointing.interval", "500 ms");
    return TableEnvironment.create(
        EnvironmentSettings.newInstance().inStreamingMode().withConfiguration(conf).build());
  }

  static String with(String stream, String... more) {
    StringBuilder s =
        new StringBuilder("'connector'='aquifer','address'='")
            .append(server.address())
            .append("','stream'='")
            .append(stream)
            .append('\'');
    for (String m : more) {
      s.append(',').append(m);
    }
    return s.toString();
  }

  @Test
  void jsonFilterProjectExactlyOnceWithRoutingKeys() throws Exception {
    StreamName clicks = StreamName.parse("sql/clicks");
    StreamName out = StreamName.parse("sql/out");
    client.createStream(clicks, 2);
    client.createStream(out, 3);

    List<String> expected = new ArrayList<>();
    int filtered = 0;
    try (EventWriter w = client.writer(clicks, new WriterConfig())) {
      for (int i = 0; i < 200; i++) {
        String user = "u" + (i % 7);
        String url = "/page/" + (i % 5);
        int n = (i % 6) - 2; // -2..3: a third of the rows are filtered out
        String json = "{\"user_id\":\"" + user + "\",\"url\":\"" + url + "\",\"n\":" + n + "}";
        w.write(user, json.getBytes(StandardCharsets.UTF_8));
        if (n > 0) {
          expected.add(user + "|" + url + "|" + (n * 2));
        } else {
          filtered++;
        }
      }
      w.flush();
    }
    assertTrue(filtered > 0);

    TableEnvironment tEnv = tableEnv();
    tEnv.executeSql(
        "CREATE TABLE clicks (user_id STRING, url STRING, n INT) WITH ("
            + with("sql/clicks", "'format'='json'", "'scan.bounded.mode'='tail'")
            + ")");
    tEnv.executeSql(
        "CREATE TABLE counts (user_id STRING, url STRING, n INT) WITH ("
            + with(
                "sql/out",
                "'format'='json'",
                "'sink.routing-key.field'='user_id'",
                "'sink.delivery-guarantee'='exactly-once'",
                "'sink.transactional-id-prefix'='sql-it'")
            + ")");
    tEnv.executeSql("INSERT INTO counts SELECT user_id, url, n * 2 FROM clicks WHERE n > 0")
        .await();

    // The Rust CLI: one payload per line.
    List<String> actual = new ArrayList<>();
    for (String line : server.cli("scan", "sql/out").split("\n")) {
      if (line.isBlank()) {
        continue;
      }
      JsonNode row = JSON.readTree(line);
      assertEquals(3, row.size(), "three columns in " + line);
      int n = row.get("n").asInt();
      assertTrue(n > 0, "a filtered row came through: " + line);
      actual.add(row.get("user_id").asText() + "|" + row.get("url").asText() + "|" + n);
    }
    Collections.sort(expected);
    Collections.sort(actual);
    assertEquals(expected, actual);

    // Each event's routing key is its user_id column.
    int keyed = 0;
    for (SegmentInfo s : client.describeStream(out).getSegmentsList()) {
      try (SegmentReader r = client.segmentReader(s.getSegmentId(), s.getHeadOffset(), -1, false)) {
        List<Event> batch;
        while ((batch = r.next()) != null) {
          for (Event e : batch) {
            JsonNode row = JSON.readTree(e.payload());
            assertEquals(row.get("user_id").asText(), e.routingKey(), e.payloadUtf8());
            keyed++;
          }
        }
      }
    }
    assertEquals(expected.size(), keyed);
  }

  @Test
  void csvRoundTrip() throws Exception {
    client.createStream(StreamName.parse("sql/csv"), 2);
    TableEnvironment tEnv = tableEnv();
    tEnv.executeSql(
        "CREATE TABLE t (id INT, name STRING, score DOUBLE) WITH ("
            + with(
                "sql/csv",
                "'format'='csv'",
                "'csv.null-literal'='NULL'", // a format option, through to the csv format
                "'scan.bounded.mode'='tail'")
            + ")");
    tEnv.executeSql(
            "INSERT INTO t VALUES (1, 'ada', 2.5), (2, 'bob', -1.0), (3, 'cy, jr', 0.0),"
                + " (4, CAST(NULL AS STRING), 9.75)")
        .await();

    List<String> lines = new ArrayList<>();
    for (String line : server.cli("scan", "sql/csv").split("\n")) {
      if (!line.isBlank()) {
        lines.add(line);
      }
    }
    Collections.sort(lines);
    assertEquals(List.of("1,ada,2.5", "2,bob,-1.0", "3,\"cy, jr\",0.0", "4,NULL,9.75"), lines);

    List<String> rows = new ArrayList<>();
    try (CloseableIterator<Row> it = tEnv.executeSql("SELECT id, name, score FROM t").collect()) {
      it.forEachRemaining(r -> rows.add(r.getField(0) + "|" + r.getField(1) + "|" + r.getField(2)));
    }
    Collections.sort(rows);
    assertEquals(List.of("1|ada|2.5", "2|bob|-1.0", "3|cy, jr|0.0", "4|null|9.75"), rows);
  }

  /** The messages of an exception and all its causes, joined. */
  static String messages(Throwable t) {
    StringBuilder s = new StringBuilder();
    for (Throwable c = t; c != null; c = c.getCause()) {
      s.append(c.getMessage()).append('\n');
    }
    return s.toString();
  }

  static String planFails(TableEnvironment tEnv, String table, String options, String statement) {
    tEnv.executeSql(
        "CREATE TABLE " + table + " (user_id STRING, url STRING, n INT) WITH (" + options + ")");
    ValidationException e =
        assertThrows(ValidationException.class, () -> tEnv.explainSql(statement));
    return messages(e);
  }

  @Test
  void badOptionsFailWithTheOptionNamed() {
    TableEnvironment tEnv = tableEnv();

    String m =
        planFails(
            tEnv,
            "sideways",
            with("sql/none", "'format'='json'", "'scan.startup.mode'='sideways'"),
            "SELECT * FROM sideways");
    assertTrue(m.contains("'scan.startup.mode'") && m.contains("sideways"), m);
    assertTrue(m.contains("head, tail, cut"), m);

    m =
        planFails(
            tEnv,
            "nostream",
            "'connector'='aquifer','format'='json'",
            "SELECT * FROM nostream");
    assertTrue(m.contains("Missing required options") && m.contains("stream"), m);

    m =
        planFails(
            tEnv,
            "badstream",
            with("nosl", "'format'='json'"),
            "SELECT * FROM badstream");
    assertTrue(m.contains("'stream'") && m.contains("SCOPE/STREAM"), m);

    m =
        planFails(
            tEnv,
            "nocut",
            with("sql/none", "'format'='json'", "'scan.startup.mode'='cut'"),
            "SELECT * FROM nocut");
    assertTrue(m.contains("'scan.startup.cut' is required"), m);

    m =
        planFails(
            tEnv,
            "badcut",
            with("sql/none", "'format'='json'", "'scan.bounded.mode'='cut'", "'scan.bounded.cut'='7'"),
            "SELECT * FROM badcut");
    assertTrue(m.contains("'scan.bounded.cut'") && m.contains("SEGMENT:OFFSET"), m);

    m =
        planFails(
            tEnv,
            "badguarantee",
            with("sql/none", "'format'='json'", "'sink.delivery-guarantee'='twice'"),
            "INSERT INTO badguarantee SELECT 'a', 'b', 1");
    assertTrue(m.contains("'sink.delivery-guarantee'") && m.contains("exactly-once"), m);

    m =
        planFails(
            tEnv,
            "badkey",
            with("sql/none", "'format'='json'", "'sink.routing-key.field'='nope'"),
            "INSERT INTO badkey SELECT 'a', 'b', 1");
    assertTrue(m.contains("'sink.routing-key.field'") && m.contains("nope"), m);
    assertTrue(m.contains("[user_id, url, n]"), m);

    m =
        planFails(
            tEnv,
            "typo",
            with("sql/none", "'format'='json'", "'scan.startup.mdoe'='tail'"),
            "SELECT * FROM typo");
    assertTrue(m.contains("scan.startup.mdoe"), m);

    // A good table plans (nothing connects to the server while planning).
    tEnv.executeSql(
        "CREATE TABLE good (user_id STRING, url STRING, n INT) WITH ("
            + with("sql/none", "'format'='json'", "'scan.startup.mode'='cut'",
                "'scan.startup.cut'='0:0,1:0'", "'scan.bounded.mode'='tail'")
            + ")");
    String plan = tEnv.explainSql("SELECT * FROM good");
    assertTrue(plan.contains("TableSourceScan(table=[[default_catalog, default_database, good]]"), plan);
  }
}
