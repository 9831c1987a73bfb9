package io.aquifer.flink.table;

import io.aquifer.client.StreamCut;
import io.aquifer.client.StreamName;
import io.aquifer.flink.sink.AquiferSink;
import java.time.Duration;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.stream.Collectors;
import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.configuration.ConfigOption;
import org.apache.flink.configuration.ConfigOptions;
import org.apache.flink.configuration.DescribedEnum;
import org.apache.flink.configuration.ReadableConfig;
import org.apache.flink.configuration.description.InlineElement;
import org.apache.flink.configuration.description.TextElement;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.table.api.ValidationException;
import org.apache.flink.table.connector.format.DecodingFormat;
import org.apache.flink.table.connector.format.EncodingFormat;
import org.apache.flink.table.connector.sink.DynamicTableSink;
import org.apache.flink.table.connector.source.DynamicTableSource;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.factories.DeserializationFormatFactory;
import org.apache.flink.table.factories.DynamicTableSinkFactory;
import org.apache.flink.table.factories.DynamicTableSourceFactory;
import org.apache.flink.table.factories.FactoryUtil;
import org.apache.flink.table.factories.SerializationFormatFactory;
import org.apache.flink.table.types.DataType;
import org.apache.flink.table.types.logical.LogicalType;
import org.apache.flink.table.types.logical.utils.LogicalTypeChecks;

/**
 * The {@code aquifer} connector for Flink SQL and the Table API: one Aquifer stream as a table,
 * each event's payload one row through a Flink format (json, csv, raw, ...).
 *
 * <pre>{@code
 * CREATE TABLE clicks (user_id STRING, url STRING, n INT) WITH (
 *   'connector' = 'aquifer',
 *   'address' = '127.0.0.1:7450',
 *   'stream' = 'analytics/clicks',
 *   'format' = 'json',
 *   'scan.startup.mode' = 'head',
 *   'sink.routing-key.field' = 'user_id',
 *   'sink.delivery-guarantee' = 'exactly-once'
 * )
 * }</pre>
 */
public final class AquiferDynamicTableFactory
    implements DynamicTableSourceFactory, DynamicTableSinkFactory {
  public static final String IDENTIFIER = "aquifer";

  /** Where a scan starts. */
  public enum StartupMode implements DescribedEnum {
    HEAD("head", "Every event still in the stream, from its head."),
    TAIL("tail", "Only events written after the job's first start (the tail as of then)."),
    CUT("cut", "From the stream cut given in 'scan.startup.cut'.");

    private final String value;
    private final String description;

    StartupMode(String value, String description) {
      this.value = value;
      this.description = description;
    }

    @Override
    public String toString() {
      return value;
    }

    @Override
    public InlineElement getDescription() {
      return TextElement.text(description);
    }
  }

  /** Where a scan ends, if it does. */
  public enum BoundedMode implements DescribedEnum {
    UNBOUNDED("unbounded", "Never ends: follows the stream (a sealed stream read to its end ends it)."),
    TAIL("tail", "Ends at the stream's tail as of the job's first start (a bounded scan)."),
    CUT("cut", "Ends at the stream cut given in 'scan.bounded.cut' (a bounded scan).");

    private final String value;
    private final String description;

    BoundedMode(String value, String description) {
      this.value = value;
      this.description = description;
    }

    @Override
    public String toString() {
      return value;
    }

    @Override
    public InlineElement getDescription() {
      return TextElement.text(description);
    }
  }

  public static final ConfigOption<String> ADDRESS =
      ConfigOptions.key("address")
          .stringType()
          .defaultValue("127.0.0.1:7450")
          .withDescription("A node of the Aquifer cluster, HOST:PORT.");

  public static final ConfigOption<String> STREAM =
      ConfigOptions.key("stream")
          .stringType()
          .noDefaultValue()
          .withDescription("The stream, as SCOPE/STREAM (e.g. analytics/clicks). Required.");

  public static final ConfigOption<StartupMode> SCAN_STARTUP_MODE =
      ConfigOptions.key("scan.startup.mode")
          .enumType(StartupMode.class)
          .defaultValue(StartupMode.HEAD)
          .withDescription("Where a scan starts: head, tail or cut.");

  public static final ConfigOption<String> SCAN_STARTUP_CUT =
      ConfigOptions.key("scan.startup.cut")
          .stringType()
          .noDefaultValue()
          .withDescription(
              "The stream cut to start at when 'scan.startup.mode' is 'cut': a token from "
                  + "`aquifer stream cut`, SEGMENT:OFFSET pairs joined by commas (e.g. 7:0,8:1024).");

  public static final ConfigOption<BoundedMode> SCAN_BOUNDED_MODE =
      ConfigOptions.key("scan.bounded.mode")
          .enumType(BoundedMode.class)
          .defaultValue(BoundedMode.UNBOUNDED)
          .withDescription("Where a scan ends: unbounded, tail or cut.");

  public static final ConfigOption<String> SCAN_BOUNDED_CUT =
      ConfigOptions.key("scan.bounded.cut")
          .stringType()
          .noDefaultValue()
          .withDescription(
              "The stream cut to end at when 'scan.bounded.mode' is 'cut' (same form as "
                  + "'scan.startup.cut').");

  public static final ConfigOption<DeliveryGuarantee> SINK_DELIVERY_GUARANTEE =
      ConfigOptions.key("sink.delivery-guarantee")
          .enumType(DeliveryGuarantee.class)
          .defaultValue(DeliveryGuarantee.AT_LEAST_ONCE)
          .withDescription(
              "none, at-least-once (a batching writer flushed on every checkpoint) or "
                  + "exactly-once (a transaction per subtask per checkpoint; needs checkpointing).");

  public static final ConfigOption<String> SINK_TRANSACTIONAL_ID_PREFIX =
      ConfigOptions.key("sink.transactional-id-prefix")
          .stringType()
          .defaultValue("aquifer-sink")
          .withDescription(
              "Names the sink's transactions and writer ids: 1 to 200 characters without '/', "
                  + "unique per job writing the stream.");

  public static final ConfigOption<Duration> SINK_TRANSACTION_TIMEOUT =
      ConfigOptions.key("sink.transaction-timeout")
          .durationType()
          .defaultValue(Duration.ofMinutes(15))
          .withDescription(
              "How long an exactly-once transaction lives without a ping: longer than a checkpoint "
                  + "interval plus the longest recovery (server maximum 24 h).");

  public static final ConfigOption<String> SINK_ROUTING_KEY_FIELD =
      ConfigOptions.key("sink.routing-key.field")
          .stringType()
          .noDefaultValue()
          .withDescription(
              "A column whose value (as a string) is each row's routing key; rows of one key keep "
                  + "their order. Default: no key.");

  @Override
  public String factoryIdentifier() {
    return IDENTIFIER;
  }

  @Override
  public Set<ConfigOption<?>> requiredOptions() {
    Set<ConfigOption<?>> options = new HashSet<>();
    options.add(STREAM);
    options.add(FactoryUtil.FORMAT);
    return options;
  }

  @Override
  public Set<ConfigOption<?>> optionalOptions() {
    Set<ConfigOption<?>> options = new HashSet<>();
    options.add(ADDRESS);
    options.add(SCAN_STARTUP_MODE);
    options.add(SCAN_STARTUP_CUT);
    options.add(SCAN_BOUNDED_MODE);
    options.add(SCAN_BOUNDED_CUT);
    options.add(SINK_DELIVERY_GUARANTEE);
    options.add(SINK_TRANSACTIONAL_ID_PREFIX);
    options.add(SINK_TRANSACTION_TIMEOUT);
    options.add(SINK_ROUTING_KEY_FIELD);
    return options;
  }

  @Override
  public DynamicTableSource createDynamicTableSource(Context context) {
    FactoryUtil.TableFactoryHelper helper = FactoryUtil.createTableFactoryHelper(this, context);
    DecodingFormat<DeserializationSchema<RowData>> format =
        helper.discoverDecodingFormat(DeserializationFormatFactory.class, FactoryUtil.FORMAT);
    ReadableConfig options = helper.getOptions();
    // Read the typed options first: a bad value fails here with the option's name and the choices,
    // before helper.validate() would fail on it with a bare parse error.
    StartupMode startup = enumOption(options, SCAN_STARTUP_MODE, StartupMode.values());
    BoundedMode bounded = enumOption(options, SCAN_BOUNDED_MODE, BoundedMode.values());
    enumOption(options, SINK_DELIVERY_GUARANTEE, DeliveryGuarantee.values());
    durationOption(options, SINK_TRANSACTION_TIMEOUT);
    helper.validate();

    String stream = stream(options);
    StreamCut startCut =
        cutFor(options, SCAN_STARTUP_MODE, startup == StartupMode.CUT, SCAN_STARTUP_CUT, startup);
    StreamCut endCut =
        cutFor(options, SCAN_BOUNDED_MODE, bounded == BoundedMode.CUT, SCAN_BOUNDED_CUT, bounded);
    return new AquiferDynamicTableSource(
        format,
        context.getPhysicalRowDataType(),
        options.get(ADDRESS),
        stream,
        startup,
        startCut,
        bounded,
        endCut);
  }

  @Override
  public DynamicTableSink createDynamicTableSink(Context context) {
    FactoryUtil.TableFactoryHelper helper = FactoryUtil.createTableFactoryHelper(this, context);
    EncodingFormat<SerializationSchema<RowData>> format =
        helper.discoverEncodingFormat(SerializationFormatFactory.class, FactoryUtil.FORMAT);
    ReadableConfig options = helper.getOptions();
    enumOption(options, SCAN_STARTUP_MODE, StartupMode.values());
    enumOption(options, SCAN_BOUNDED_MODE, BoundedMode.values());
    DeliveryGuarantee guarantee =
        enumOption(options, SINK_DELIVERY_GUARANTEE, DeliveryGuarantee.values());
    Duration timeout = durationOption(options, SINK_TRANSACTION_TIMEOUT);
    helper.validate();

    String stream = stream(options);
    String prefix = options.get(SINK_TRANSACTIONAL_ID_PREFIX);
    try {
      AquiferSink.builder().transactionalIdPrefix(prefix);
    } catch (IllegalArgumentException e) {
      throw new ValidationException(
          "Invalid value for option '" + SINK_TRANSACTIONAL_ID_PREFIX.key() + "': " + e.getMessage(),
          e);
    }
    if (timeout.isZero() || timeout.isNegative()) {
      throw new ValidationException(
          "Invalid value for option '"
              + SINK_TRANSACTION_TIMEOUT.key()
              + "': the timeout must be positive, got "
              + timeout);
    }

    DataType physical = context.getPhysicalRowDataType();
    int keyIndex = -1;
    LogicalType keyType = null;
    String keyField = options.getOptional(SINK_ROUTING_KEY_FIELD).orElse(null);
    if (keyField != null) {
      List<String> columns = LogicalTypeChecks.getFieldNames(physical.getLogicalType());
      keyIndex = columns.indexOf(keyField);
      if (keyIndex < 0) {
        throw new ValidationException(
            "Invalid value for option '"
                + SINK_ROUTING_KEY_FIELD.key()
                + "': '"
                + keyField
                + "' is not a physical column of table "
                + context.getObjectIdentifier().asSummaryString()
                + "; its columns are "
                + columns);
      }
      keyType = LogicalTypeChecks.getFieldTypes(physical.getLogicalType()).get(keyIndex);
    }
    return new AquiferDynamicTableSink(
        format,
        physical,
        options.get(ADDRESS),
        stream,
        guarantee,
        prefix,
        timeout,
        keyField,
        keyIndex,
        keyType);
  }

  private static String stream(ReadableConfig options) {
    String stream = options.get(STREAM);
    try {
      return StreamName.parse(stream).toString();
    } catch (IllegalArgumentException e) {
      throw new ValidationException(
          "Invalid value for option '" + STREAM.key() + "': " + e.getMessage(), e);
    }
  }

  /** The cut of a mode that needs one ({@code needed}), or null; a cut without its mode fails. */
  private static StreamCut cutFor(
      ReadableConfig options,
      ConfigOption<?> modeOption,
      boolean needed,
      ConfigOption<String> cutOption,
      Object mode) {
    String text = options.getOptional(cutOption).orElse(null);
    if (!needed) {
      if (text != null) {
        throw new ValidationException(
            "Option '"
                + cutOption.key()
                + "' is set but '"
                + modeOption.key()
                + "' is '"
                + mode
                + "': set '"
                + modeOption.key()
                + "' = 'cut' to use the cut, or remove '"
                + cutOption.key()
                + "'");
      }
      return null;
    }
    if (text == null || text.trim().isEmpty()) {
      throw new ValidationException(
          "Option '"
              + cutOption.key()
              + "' is required when '"
              + modeOption.key()
              + "' is 'cut' (a stream cut such as 7:0,8:1024, from `aquifer stream cut`)");
    }
    try {
      return StreamCut.parse(text);
    } catch (IllegalArgumentException e) {
      throw new ValidationException(
          "Invalid value for option '" + cutOption.key() + "': " + e.getMessage(), e);
    }
  }

  private static <E extends Enum<E>> E enumOption(
      ReadableConfig options, ConfigOption<E> option, E[] choices) {
    try {
      return options.get(option);
    } catch (IllegalArgumentException e) {
      throw new ValidationException(
          "Invalid value for option '"
              + option.key()
              + "': "
              + e.getMessage()
              + " Expected one of: "
              + Arrays.stream(choices).map(Object::toString).collect(Collectors.joining(", ")),
          e);
    }
  }

  private static Duration durationOption(ReadableConfig options, ConfigOption<Duration> option) {
    try {
      return options.get(option);
    } catch (IllegalArgumentException e) {
      throw new ValidationException(
          "Invalid value for option '"
              + option.key()
              + "': "
              + e.getMessage()
              + " Expected a duration such as '15 min', '90 s' or '500 ms'",
          e);
    }
  }
}
