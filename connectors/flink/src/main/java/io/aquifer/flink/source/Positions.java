package io.aquifer.flink.source;

import io.aquifer.client.AquiferClient;
import io.aquifer.client.StreamCut;
import io.aquifer.client.StreamName;
import java.io.Serializable;

/** Where a source starts and (bounded) where it ends; resolved to cuts when the job first starts. */
public final class Positions {
  private Positions() {}

  /** Start: the head, the tail as of the first start, or a cut. */
  public static final class Start implements Serializable {
    private static final long serialVersionUID = 1L;
    final String kind;
    final String cut;

    private Start(String kind, String cut) {
      this.kind = kind;
      this.cut = cut;
    }

    public static Start head() {
      return new Start("head", null);
    }

    public static Start tail() {
      return new Start("tail", null);
    }

    public static Start cut(StreamCut cut) {
      return new Start("cut", cut.toString());
    }

    StreamCut resolve(AquiferClient client, StreamName stream) {
      switch (kind) {
        case "tail":
          return client.tailCut(stream);
        case "cut":
          return StreamCut.parse(cut);
        default:
          return client.headCut(stream);
      }
    }

    @Override
    public String toString() {
      return cut == null ? kind : kind + " " + cut;
    }
  }

  /** End of a bounded source: the tail as of the first start, or a cut. */
  public static final class End implements Serializable {
    private static final long serialVersionUID = 1L;
    final String kind;
    final String cut;

    private End(String kind, String cut) {
      this.kind = kind;
      this.cut = cut;
    }

    public static End tail() {
      return new End("tail", null);
    }

    public static End cut(StreamCut cut) {
      return new End("cut", cut.toString());
    }

    StreamCut resolve(AquiferClient client, StreamName stream) {
      return "cut".equals(kind) ? StreamCut.parse(cut) : client.tailCut(stream);
    }

    @Override
    public String toString() {
      return cut == null ? kind : kind + " " + cut;
    }
  }
}
