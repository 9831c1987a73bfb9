// Kafka's transactional producer (Java kafka-clients) for the transactions
// benchmark (issue 17): the Rust client of the harness (rskafka) has no
// transactions. Compiled by benches/peers/build-kafka-txn.sh, run by
// Kafka::transactional_producer in benches/harness/brokers/kafka.rs.
//
//   java -cp "<classes>:<kafka>/lib/*" KafkaTxnBench --bootstrap HOST:PORT
//       --topic T --partitions N --events-per-txn K --event-bytes B
//       --seconds S --max-txns M
//
// One producer (transactional.id, enable.idempotence=true, acks=all; every
// other setting is kafka-clients' default) runs, after initTransactions and
// one untimed warm-up transaction, transactions back to back until S seconds
// passed or M transactions committed: beginTransaction, K sends of B bytes
// (event i of the run goes to partition i mod N, keyed by that partition),
// commitTransaction. It prints one JSON line on stdout:
//   {"events_per_txn":K,"txns":n,"commit_p50_ms":..,"commit_p99_ms":..,
//    "txn_p50_ms":..,"txn_p99_ms":..,"events_per_s":..,"mb_per_s":..}
// commit_*: from the commitTransaction call to its return (the flush of the
// transaction's records plus the EndTxn round trip); txn_*: from
// beginTransaction to commitTransaction's return; events/s and MB/s (1e6
// bytes) count the committed events over the wall time of the counted
// transactions. On any error: a message on stderr and exit status 1.

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.Random;
import java.util.UUID;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public final class KafkaTxnBench {
    private static final String USAGE = "usage: KafkaTxnBench --bootstrap HOST:PORT --topic T"
            + " --partitions N --events-per-txn K --event-bytes B --seconds S --max-txns M"
            + " [--batch-bytes N --linger-ms N]";

    public static void main(String[] argv) {
        try {
            System.exit(run(argv));
        } catch (Throwable t) {
            System.err.println("KafkaTxnBench: " + t);
            System.exit(1);
        }
    }

    private static int run(String[] argv) {
        Map<String, String> args = new HashMap<>();
        for (int i = 0; i < argv.length; i += 2) {
            if (!argv[i].startsWith("--") || i + 1 >= argv.length) {
                throw new IllegalArgumentException("bad argument " + argv[i] + "; " + USAGE);
            }
            args.put(argv[i].substring(2), argv[i + 1]);
        }
        String bootstrap = required(args, "bootstrap");
        String topic = required(args, "topic");
        int partitions = (int) positive(args, "partitions", Integer.MAX_VALUE);
        int eventsPerTxn = (int) positive(args, "events-per-txn", Integer.MAX_VALUE);
        int eventBytes = (int) positive(args, "event-bytes", Integer.MAX_VALUE);
        long seconds = positive(args, "seconds", Integer.MAX_VALUE);
        long maxTxns = positive(args, "max-txns", Long.MAX_VALUE);
        // Optional: the producer's batching (kafka-clients' defaults otherwise:
        // batch.size 16384, linger.ms 5).
        String batchBytes = args.get("batch-bytes");
        String lingerMs = args.get("linger-ms");
        args.keySet().removeAll(Arrays.asList("bootstrap", "topic", "partitions",
                "events-per-txn", "event-bytes", "seconds", "max-txns", "batch-bytes", "linger-ms"));
        if (!args.isEmpty()) {
            throw new IllegalArgumentException("unknown arguments " + args.keySet() + "; " + USAGE);
        }

        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, "aquifer-bench-" + UUID.randomUUID());
        props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        if (batchBytes != null) {
            props.put(ProducerConfig.BATCH_SIZE_CONFIG, batchBytes);
            // A batch must fit one request.
            props.put(ProducerConfig.MAX_REQUEST_SIZE_CONFIG, Integer.toString(
                    Math.max(1 << 20, 2 * Integer.parseInt(batchBytes))));
        }
        if (lingerMs != null) {
            props.put(ProducerConfig.LINGER_MS_CONFIG, lingerMs);
        }

        byte[] value = new byte[eventBytes];
        new Random(17).nextBytes(value);
        byte[][] keys = new byte[partitions][];
        for (int p = 0; p < partitions; p++) {
            keys[p] = Integer.toString(p).getBytes(StandardCharsets.UTF_8);
        }

        long[] commitNs = new long[(int) Math.min(maxTxns, 1024)];
        long[] txnNs = new long[commitNs.length];
        int txns = 0;
        long elapsedNs;
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
            producer.initTransactions();
            long[] next = {0};
            // Warm-up: metadata, connections, the first partitions added.
            transaction(producer, topic, partitions, eventsPerTxn, keys, value, next);

            long start = System.nanoTime();
            long deadline = start + seconds * 1_000_000_000L;
            long end = start;
            while (txns < maxTxns && end < deadline) {
                long[] t = transaction(producer, topic, partitions, eventsPerTxn, keys, value, next);
                end = t[2];
                if (txns == commitNs.length) {
                    commitNs = Arrays.copyOf(commitNs, 2 * txns);
                    txnNs = Arrays.copyOf(txnNs, 2 * txns);
                }
                commitNs[txns] = t[2] - t[1];
                txnNs[txns] = t[2] - t[0];
                txns++;
            }
            elapsedNs = Math.max(end - start, 1);
            producer.close(Duration.ofSeconds(10));
        }

        double secs = elapsedNs / 1e9;
        double events = (double) txns * eventsPerTxn;
        long[] commit = Arrays.copyOf(commitNs, txns);
        long[] txn = Arrays.copyOf(txnNs, txns);
        Arrays.sort(commit);
        Arrays.sort(txn);
        System.out.printf(Locale.ROOT,
                "{\"events_per_txn\":%d,\"txns\":%d,\"commit_p50_ms\":%.3f,\"commit_p99_ms\":%.3f,"
                        + "\"txn_p50_ms\":%.3f,\"txn_p99_ms\":%.3f,\"events_per_s\":%.1f,"
                        + "\"mb_per_s\":%.3f}%n",
                eventsPerTxn, txns, ms(commit, 0.50), ms(commit, 0.99), ms(txn, 0.50),
                ms(txn, 0.99), events / secs, events * eventBytes / 1e6 / secs);
        System.out.flush();
        return 0;
    }

    // One transaction; returns the nanoTime before beginTransaction, before
    // commitTransaction and after it returned. `next` is the run's event
    // count, which picks each event's partition.
    private static long[] transaction(KafkaProducer<byte[], byte[]> producer, String topic,
            int partitions, int events, byte[][] keys, byte[] value, long[] next) {
        long t0 = System.nanoTime();
        producer.beginTransaction();
        for (int i = 0; i < events; i++) {
            int p = (int) (next[0]++ % partitions);
            // A failed send makes commitTransaction throw.
            producer.send(new ProducerRecord<>(topic, p, keys[p], value));
        }
        long t1 = System.nanoTime();
        producer.commitTransaction();
        long t2 = System.nanoTime();
        return new long[] {t0, t1, t2};
    }

    // The q-quantile (nearest rank) of sorted nanoseconds, in ms; 0 if none.
    private static double ms(long[] sorted, double q) {
        if (sorted.length == 0) {
            return 0;
        }
        int rank = (int) Math.ceil(q * sorted.length);
        return sorted[Math.max(rank, 1) - 1] / 1e6;
    }

    private static String required(Map<String, String> args, String name) {
        String v = args.get(name);
        if (v == null || v.isEmpty()) {
            throw new IllegalArgumentException("missing --" + name + "; " + USAGE);
        }
        return v;
    }

    private static long positive(Map<String, String> args, String name, long max) {
        long v = Long.parseLong(required(args, name));
        if (v < 1 || v > max) {
            throw new IllegalArgumentException("--" + name + " must be in 1.." + max);
        }
        return v;
    }
}
