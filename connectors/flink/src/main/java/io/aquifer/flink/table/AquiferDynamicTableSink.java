package io.aquifer.flink.table;

import io.aquifer.flink.sink.AquiferSink;
import java.time.Duration;
import java.util.Objects;
import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.table.connector.ChangelogMode;
import org.apache.flink.table.connector.format.EncodingFormat;
import org.apache.flink.table.connector.sink.DynamicTableSink;
import org.apache.flink.table.connector.sink.SinkV2Provider;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.types.DataType;
import org.apache.flink.table.types.logical.LogicalType;

/** Rows written to an Aquifer stream: each row one event, its payload through the table's format. */
public final class AquiferDynamicTableSink implements DynamicTableSink {
  private final EncodingFormat<SerializationSchema<RowData>> format;
  private final DataType physicalDataType;
  private final String address;
  private final String stream;
  private final DeliveryGuarantee guarantee;
  private final String transactionalIdPrefix;
  private final Duration transactionTimeout;
  private final String keyField;
  private final int keyIndex;
  private final LogicalType keyType;

  /** {@code keyField} null (and {@code keyIndex} -1, {@code keyType} null): events have no key. */
  public AquiferDynamicTableSink(
      EncodingFormat<SerializationSchema<RowData>> format,
      DataType physicalDataType,
      String address,
      String stream,
      DeliveryGuarantee guarantee,
      String transactionalIdPrefix,
      Duration transactionTimeout,
      String keyField,
      int keyIndex,
      LogicalType keyType) {
    this.format = Objects.requireNonNull(format, "format");
    this.physicalDataType = Objects.requireNonNull(physicalDataType, "physicalDataType");
    this.address = Objects.requireNonNull(address, "address");
    this.stream = Objects.requireNonNull(stream, "stream");
    this.guarantee = Objects.requireNonNull(guarantee, "guarantee");
    this.transactionalIdPrefix = Objects.requireNonNull(transactionalIdPrefix, "prefix");
    this.transactionTimeout = Objects.requireNonNull(transactionTimeout, "transactionTimeout");
    this.keyField = keyField;
    this.keyIndex = keyIndex;
    this.keyType = keyType;
  }

  @Override
  public ChangelogMode getChangelogMode(ChangelogMode requestedMode) {
    return format.getChangelogMode();
  }

  @Override
  public SinkRuntimeProvider getSinkRuntimeProvider(Context context) {
    SerializationSchema<RowData> encoder = format.createRuntimeEncoder(context, physicalDataType);
    AquiferSink.Builder<RowData> builder =
        AquiferSink.<RowData>builder()
            .address(address)
            .stream(stream)
            .deliveryGuarantee(guarantee)
            .serializer(encoder)
            .transactionalIdPrefix(transactionalIdPrefix)
            .transactionTimeout(transactionTimeout);
    if (keyField != null) {
      builder.keySelector(new FieldKey(RowData.createFieldGetter(keyType, keyIndex)));
    }
    return SinkV2Provider.of(builder.build());
  }

  @Override
  public DynamicTableSink copy() {
    return new AquiferDynamicTableSink(
        format,
        physicalDataType,
        address,
        stream,
        guarantee,
        transactionalIdPrefix,
        transactionTimeout,
        keyField,
        keyIndex,
        keyType);
  }

  @Override
  public String asSummaryString() {
    return "Aquifer("
        + stream
        + ", "
        + guarantee
        + (keyField == null ? "" : ", routing key " + keyField)
        + ")";
  }

  @Override
  public boolean equals(Object o) {
    if (!(o instanceof AquiferDynamicTableSink)) {
      return false;
    }
    AquiferDynamicTableSink that = (AquiferDynamicTableSink) o;
    return format.equals(that.format)
        && physicalDataType.equals(that.physicalDataType)
        && address.equals(that.address)
        && stream.equals(that.stream)
        && guarantee == that.guarantee
        && transactionalIdPrefix.equals(that.transactionalIdPrefix)
        && transactionTimeout.equals(that.transactionTimeout)
        && Objects.equals(keyField, that.keyField)
        && keyIndex == that.keyIndex
        && Objects.equals(keyType, that.keyType);
  }

  @Override
  public int hashCode() {
    return Objects.hash(
        format,
        physicalDataType,
        address,
        stream,
        guarantee,
        transactionalIdPrefix,
        transactionTimeout,
        keyField,
        keyIndex,
        keyType);
  }

  /** A row's routing key: one column's value as a string; a null value is no key. */
  static final class FieldKey implements KeySelector<RowData, String> {
    private static final long serialVersionUID = 1L;
    private final RowData.FieldGetter getter;

    FieldKey(RowData.FieldGetter getter) {
      this.getter = getter;
    }

    @Override
    public String getKey(RowData row) {
      Object value = getter.getFieldOrNull(row);
      return value == null ? null : value.toString();
    }
  }
}
