package io.aquifer.flink.source;

import io.aquifer.client.Event;
import java.io.IOException;
import java.io.Serializable;
import java.nio.charset.StandardCharsets;
import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.typeutils.ResultTypeQueryable;
import org.apache.flink.util.Collector;

/** Turns events (routing key, payload, position) into records; zero or more per event. */
public interface AquiferDeserializer<T> extends Serializable, ResultTypeQueryable<T> {
  default void open(DeserializationSchema.InitializationContext context) throws Exception {}

  void deserialize(Event event, Collector<T> out) throws IOException;

  /** The payload alone, through one of Flink's formats (json, csv, raw, ...). */
  static <T> AquiferDeserializer<T> valueOnly(DeserializationSchema<T> schema) {
    return new AquiferDeserializer<T>() {
      private static final long serialVersionUID = 1L;

      @Override
      public void open(DeserializationSchema.InitializationContext context) throws Exception {
        schema.open(context);
      }

      @Override
      public void deserialize(Event event, Collector<T> out) throws IOException {
        schema.deserialize(event.payload(), out);
      }

      @Override
      public TypeInformation<T> getProducedType() {
        return schema.getProducedType();
      }
    };
  }

  /** Each payload as a UTF-8 string. */
  static AquiferDeserializer<String> utf8() {
    return new AquiferDeserializer<String>() {
      private static final long serialVersionUID = 1L;

      @Override
      public void deserialize(Event event, Collector<String> out) {
        out.collect(new String(event.payload(), StandardCharsets.UTF_8));
      }

      @Override
      public TypeInformation<String> getProducedType() {
        return Types.STRING;
      }
    };
  }
}
