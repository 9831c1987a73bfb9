package io.aquifer.client;

import java.io.Serializable;
import java.util.Objects;

/** A stream's full name: {@code scope/stream}. */
public final class StreamName implements Serializable {
  private static final long serialVersionUID = 1L;

  private final String scope;
  private final String stream;

  public StreamName(String scope, String stream) {
    this.scope = Objects.requireNonNull(scope, "scope");
    this.stream = Objects.requireNonNull(stream, "stream");
    for (String part : new String[] {scope, stream}) {
      // The server's rule (aquifer_proto::name): the dot is allowed for
      // Kafka topic names, but not the names "." and "..".
      if (!part.matches("[A-Za-z0-9._-]{1,255}") || part.equals(".") || part.equals("..")) {
        throw new IllegalArgumentException(
            "bad name \"" + part + "\" in " + scope + "/" + stream
                + ": use 1 to 255 characters from A-Z a-z 0-9 . _ - (not . or ..)");
      }
    }
  }

  /** Parses {@code scope/stream}. */
  public static StreamName parse(String text) {
    int slash = text.indexOf('/');
    if (slash <= 0 || slash == text.length() - 1 || text.indexOf('/', slash + 1) >= 0) {
      throw new IllegalArgumentException(
          "stream name \"" + text + "\" must be SCOPE/STREAM, e.g. analytics/clicks");
    }
    return new StreamName(text.substring(0, slash), text.substring(slash + 1));
  }

  public String scope() {
    return scope;
  }

  public String stream() {
    return stream;
  }

  io.aquifer.proto.v1.StreamName toProto() {
    return io.aquifer.proto.v1.StreamName.newBuilder().setScope(scope).setStream(stream).build();
  }

  @Override
  public boolean equals(Object o) {
    return o instanceof StreamName
        && ((StreamName) o).scope.equals(scope)
        && ((StreamName) o).stream.equals(stream);
  }

  @Override
  public int hashCode() {
    return Objects.hash(scope, stream);
  }

  @Override
  public String toString() {
    return scope + "/" + stream;
  }
}
