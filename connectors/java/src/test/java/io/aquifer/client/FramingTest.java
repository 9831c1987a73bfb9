package io.aquifer.client;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.HexFormat;
import java.util.List;
import org.junit.jupiter.api.Test;

class FramingTest {
  @Test
  void framesRoundTripWithOffsets() throws Exception {
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    byte[] a = Framing.frame("user-1", "hello".getBytes(StandardCharsets.UTF_8));
    byte[] b = Framing.frame(null, new byte[0]);
    out.write(a);
    out.write(b);
    List<Event> events = Framing.decode(7, 100, out.toByteArray());
    assertEquals(2, events.size());
    assertEquals("user-1", events.get(0).routingKey());
    assertEquals("hello", events.get(0).payloadUtf8());
    assertEquals(100, events.get(0).offset());
    assertEquals(100 + a.length, events.get(1).offset());
    assertNull(events.get(1).routingKey());
    assertArrayEquals(new byte[0], events.get(1).payload());
    assertEquals(100 + a.length + b.length, events.get(1).nextOffset());
    assertEquals(a.length, Framing.framedSize(6, 5));
  }

  /** The shared vectors (proto/testdata/framed-events.tsv) the Rust tests check too. */
  @Test
  void framingsMatchTheRustClientByteForByte() throws Exception {
    List<String> lines =
        Files.readAllLines(Paths.get("../../proto/testdata/framed-events.tsv"), StandardCharsets.UTF_8);
    int checked = 0;
    for (String line : lines) {
      if (line.isEmpty() || line.startsWith("#")) {
        continue;
      }
      String[] f = line.split("\t", -1);
      assertEquals(4, f.length, "KEY, ATTRIBUTES, PAYLOAD, FRAME: " + line);
      byte[] framed = HexFormat.of().parseHex(f[3]);
      List<Event> events = Framing.decode(1, 0, framed);
      assertEquals(1, events.size(), line);
      assertEquals(f[0].isEmpty() ? null : f[0], events.get(0).routingKey(), line);
      assertArrayEquals(HexFormat.of().parseHex(f[2]), events.get(0).payload(), line);
      assertEquals(framed.length, events.get(0).nextOffset(), line);
      if (f[1].isEmpty()) {
        // Without attributes, this client writes the same bytes.
        assertArrayEquals(framed, Framing.frame(f[0], HexFormat.of().parseHex(f[2])), line);
      }
      checked++;
    }
    assertTrue(checked >= 5, "the file holds " + checked + " vectors");
  }

  @Test
  void corruptAndTornFramesAreRefused() {
    byte[] a = Framing.frame("k", "payload".getBytes(StandardCharsets.UTF_8));
    byte[] flipped = a.clone();
    flipped[flipped.length - 1] ^= 1;
    AquiferException e = assertThrows(AquiferException.class, () -> Framing.decode(1, 0, flipped));
    assertEquals(io.grpc.Status.Code.DATA_LOSS, e.code());
    byte[] torn = java.util.Arrays.copyOf(a, a.length - 2);
    assertThrows(AquiferException.class, () -> Framing.decode(1, 0, torn));
  }

  @Test
  void cutsRoundTripTheRustTextForm() {
    StreamCut cut = StreamCut.parse("7:0,8:1024");
    assertEquals("7:0,8:1024", cut.toString());
    assertEquals(1024L, cut.positions().get(8L));
    assertThrows(IllegalArgumentException.class, () -> StreamCut.parse("7-0"));
    assertThrows(IllegalArgumentException.class, () -> StreamCut.parse("7:0,7:1"));
    assertEquals(StreamName.parse("a/b"), new StreamName("a", "b"));
    assertThrows(IllegalArgumentException.class, () -> StreamName.parse("ab"));
  }
}
