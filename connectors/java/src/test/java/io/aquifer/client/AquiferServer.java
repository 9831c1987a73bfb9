package io.aquifer.client;

import java.io.File;
import java.io.IOException;
import java.net.ServerSocket;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.stream.Stream;

/**
 * A real {@code aquifer serve} for tests: the release binary the Rust build made (system property
 * {@code aquifer.binary}), on a free loopback port, with a temporary data directory. {@link
 * #close()} kills it and removes the directory; a shutdown hook does the same if the JVM dies
 * first.
 */
public final class AquiferServer implements AutoCloseable {
  private final Path dataDir;
  private final int port;
  private final Path log;
  private Process process;
  private final Thread hook;

  private AquiferServer(Path dataDir, int port) {
    this.dataDir = dataDir;
    this.port = port;
    this.log = dataDir.resolveSibling(dataDir.getFileName() + ".log");
    this.hook = new Thread(this::stop);
  }

  /** Starts a single node and waits until it answers. */
  public static AquiferServer start() throws IOException {
    AquiferServer server = new AquiferServer(Files.createTempDirectory("aquifer-test-"), freePort());
    Runtime.getRuntime().addShutdownHook(server.hook);
    server.launch();
    return server;
  }

  /** The aquifer binary the tests run. */
  public static Path binary() {
    String path = System.getProperty("aquifer.binary");
    if (path == null || path.isEmpty()) {
      path = "../../target/release/aquifer";
    }
    Path p = Paths.get(path).toAbsolutePath().normalize();
    if (!Files.isExecutable(p)) {
      throw new IllegalStateException(
          "no aquifer binary at " + p + ": run `cargo build --release` first (or set -Daquifer.binary)");
    }
    return p;
  }

  private void launch() throws IOException {
    List<String> cmd = new ArrayList<>();
    cmd.add(binary().toString());
    cmd.add("serve");
    cmd.add("--data-dir");
    cmd.add(dataDir.toString());
    cmd.add("--listen");
    cmd.add(address());
    ProcessBuilder pb = new ProcessBuilder(cmd);
    pb.redirectErrorStream(true);
    pb.redirectOutput(ProcessBuilder.Redirect.appendTo(log.toFile()));
    process = pb.start();
    awaitReady();
  }

  private void awaitReady() {
    long deadline = System.nanoTime() + Duration.ofSeconds(60).toNanos();
    try (AquiferClient probe =
        AquiferClient.connect(address(), Duration.ofSeconds(2), Duration.ofMillis(1))) {
      while (true) {
        if (!process.isAlive()) {
          throw new IllegalStateException("aquifer serve exited: see " + log);
        }
        try {
          probe.listStreams(null);
          return;
        } catch (AquiferException e) {
          if (System.nanoTime() > deadline) {
            throw new IllegalStateException("aquifer serve did not answer within 60 s: see " + log, e);
          }
          Thread.sleep(50);
        }
      }
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new IllegalStateException(e);
    }
  }

  public String address() {
    return "127.0.0.1:" + port;
  }

  /** kill -9, then start again on the same port and data directory. */
  public void crashAndRestart() throws IOException, InterruptedException {
    kill();
    restart();
  }

  /** kill -9 (the node stays down until {@link #restart}). */
  public void kill() throws InterruptedException {
    process.destroyForcibly().waitFor();
  }

  /** Whether the node's process is alive (false after {@link #kill}). */
  public boolean isRunning() {
    return process != null && process.isAlive();
  }

  /** Starts the node again on the same port and data directory. */
  public void restart() throws IOException {
    launch();
  }

  /** Runs the aquifer CLI against this node; returns its stdout (fails on a non-zero exit). */
  public String cli(String... args) throws IOException, InterruptedException {
    List<String> cmd = new ArrayList<>();
    cmd.add(binary().toString());
    for (String a : args) {
      cmd.add(a);
    }
    ProcessBuilder pb = new ProcessBuilder(cmd);
    pb.environment().put("AQUIFER_ADDR", address());
    pb.redirectError(ProcessBuilder.Redirect.INHERIT);
    Process p = pb.start();
    byte[] out = p.getInputStream().readAllBytes();
    int rc = p.waitFor();
    if (rc != 0) {
      throw new IllegalStateException("aquifer " + String.join(" ", args) + " exited with " + rc);
    }
    return new String(out, java.nio.charset.StandardCharsets.UTF_8);
  }

  private void stop() {
    if (process != null) {
      try {
        process.destroyForcibly().waitFor();
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
      }
    }
    try (Stream<Path> walk = Files.walk(dataDir)) {
      walk.sorted(Comparator.reverseOrder()).map(Path::toFile).forEach(File::delete);
    } catch (IOException ignored) {
      // Best effort: a temp dir.
    }
  }

  @Override
  public void close() {
    stop();
    try {
      Runtime.getRuntime().removeShutdownHook(hook);
    } catch (IllegalStateException ignored) {
      // Shutting down already.
    }
  }

  private static int freePort() throws IOException {
    try (ServerSocket s = new ServerSocket(0, 1, java.net.InetAddress.getLoopbackAddress())) {
      return s.getLocalPort();
    }
  }
}
