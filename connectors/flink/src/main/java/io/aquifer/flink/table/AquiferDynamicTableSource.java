package io.aquifer.flink.table;

import io.aquifer.client.StreamCut;
import io.aquifer.flink.source.AquiferDeserializer;
import io.aquifer.flink.source.AquiferSource;
import java.util.Objects;
import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.table.connector.ChangelogMode;
import org.apache.flink.table.connector.format.DecodingFormat;
import org.apache.flink.table.connector.source.DynamicTableSource;
import org.apache.flink.table.connector.source.ScanTableSource;
import org.apache.flink.table.connector.source.SourceProvider;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.types.DataType;

/** An Aquifer stream scanned as a table: each event's payload through the table's format. */
public final class AquiferDynamicTableSource implements ScanTableSource {
  private final DecodingFormat<DeserializationSchema<RowData>> format;
  private final DataType physicalDataType;
  private final String address;
  private final String stream;
  private final AquiferDynamicTableFactory.StartupMode startup;
  private final StreamCut startCut;
  private final AquiferDynamicTableFactory.BoundedMode bounded;
  private final StreamCut endCut;

  public AquiferDynamicTableSource(
      DecodingFormat<DeserializationSchema<RowData>> format,
      DataType physicalDataType,
      String address,
      String stream,
      AquiferDynamicTableFactory.StartupMode startup,
      StreamCut startCut,
      AquiferDynamicTableFactory.BoundedMode bounded,
      StreamCut endCut) {
    this.format = Objects.requireNonNull(format, "format");
    this.physicalDataType = Objects.requireNonNull(physicalDataType, "physicalDataType");
    this.address = Objects.requireNonNull(address, "address");
    this.stream = Objects.requireNonNull(stream, "stream");
    this.startup = Objects.requireNonNull(startup, "startup");
    this.startCut = startCut;
    this.bounded = Objects.requireNonNull(bounded, "bounded");
    this.endCut = endCut;
  }

  @Override
  public ChangelogMode getChangelogMode() {
    return format.getChangelogMode();
  }

  @Override
  public ScanRuntimeProvider getScanRuntimeProvider(ScanContext context) {
    DeserializationSchema<RowData> decoder = format.createRuntimeDecoder(context, physicalDataType);
    AquiferSource.Builder<RowData> builder =
        AquiferSource.<RowData>builder()
            .address(address)
            .stream(stream)
            .deserializer(AquiferDeserializer.valueOnly(decoder));
    switch (startup) {
      case TAIL:
        builder.startFromTail();
        break;
      case CUT:
        builder.startFromCut(startCut);
        break;
      default:
        builder.startFromHead();
    }
    switch (bounded) {
      case TAIL:
        builder.boundedAtTail();
        break;
      case CUT:
        builder.boundedAt(endCut);
        break;
      default:
        // Unbounded.
    }
    return SourceProvider.of(builder.build());
  }

  /** Whether the scan ends (scan.bounded.mode is not unbounded). */
  public boolean isBounded() {
    return bounded != AquiferDynamicTableFactory.BoundedMode.UNBOUNDED;
  }

  @Override
  public DynamicTableSource copy() {
    return new AquiferDynamicTableSource(
        format, physicalDataType, address, stream, startup, startCut, bounded, endCut);
  }

  @Override
  public String asSummaryString() {
    StringBuilder s = new StringBuilder("Aquifer(").append(stream).append(", from ").append(startup);
    if (startCut != null) {
      s.append(' ').append(startCut);
    }
    if (isBounded()) {
      s.append(", to ").append(bounded);
      if (endCut != null) {
        s.append(' ').append(endCut);
      }
    }
    return s.append(')').toString();
  }

  @Override
  public boolean equals(Object o) {
    if (!(o instanceof AquiferDynamicTableSource)) {
      return false;
    }
    AquiferDynamicTableSource that = (AquiferDynamicTableSource) o;
    return format.equals(that.format)
        && physicalDataType.equals(that.physicalDataType)
        && address.equals(that.address)
        && stream.equals(that.stream)
        && startup == that.startup
        && Objects.equals(startCut, that.startCut)
        && bounded == that.bounded
        && Objects.equals(endCut, that.endCut);
  }

  @Override
  public int hashCode() {
    return Objects.hash(
        format, physicalDataType, address, stream, startup, startCut, bounded, endCut);
  }
}
