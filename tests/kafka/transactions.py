"""confluent-kafka (librdkafka) transactional producers against Aquifer's
Kafka listener, in two phases that tests/e2e_kafka.rs runs with a kill -9
and restart of the node between them:

  before  committed, aborted and committed-with-offsets transactions over
          two topics, several batches per partition and transaction (so
          sequences run on across transactions); a second producer with
          the same transactional id fences the first, whose open
          transaction is aborted; a transaction is left open.
  after   a new producer with the id aborts what was left open, commits
          one more; a read_committed consumer reads exactly the committed
          records, in order, and the group's offsets committed in the
          transactions are there.

Prints OK and exits 0, or says what failed and exits 1."""
import sys
import time

from confluent_kafka import (Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic

BOOT, PHASE = sys.argv[1], sys.argv[2]
TOPICS = ["txn.a", "txn.b"]
PARTITIONS = 2
GROUP = "txn-group"
IN_TOPIC = "txn.in"


def fail(why):
    print("FAIL:", why, flush=True)
    sys.exit(1)


def producer(tid):
    p = Producer({
        "bootstrap.servers": BOOT,
        "transactional.id": tid,
        "transaction.timeout.ms": 60000,
        "linger.ms": 2,
    })
    p.init_transactions(30)
    return p


def send(p, tag, n):
    """n records to every partition of both topics, flushed in several
    batches so each partition gets more than one per transaction."""
    for i in range(n):
        for t in TOPICS:
            for part in range(PARTITIONS):
                p.produce(t, partition=part, key=f"{tag}", value=f"{tag}-{i}")
        if i % 5 == 4:
            p.flush(30)
    p.flush(30)


def committed_group_offsets():
    c = Consumer({"bootstrap.servers": BOOT, "group.id": GROUP})
    got = c.committed([TopicPartition(IN_TOPIC, 0), TopicPartition(IN_TOPIC, 1)], 30)
    c.close()
    return [tp.offset for tp in got]


def read_committed():
    c = Consumer({
        "bootstrap.servers": BOOT,
        "group.id": f"reader-{time.time()}",
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    c.assign([TopicPartition(t, p, 0) for t in TOPICS for p in range(PARTITIONS)])
    got = {(t, p): [] for t in TOPICS for p in range(PARTITIONS)}
    deadline = time.time() + 60
    idle = 0
    while time.time() < deadline and idle < 10:
        msg = c.poll(0.5)
        if msg is None:
            idle += 1
            continue
        idle = 0
        if msg.error():
            fail(f"consumer: {msg.error()}")
        got[(msg.topic(), msg.partition())].append(msg.value().decode())
    c.close()
    return got


if PHASE == "before":
    admin = AdminClient({"bootstrap.servers": BOOT})
    for f in admin.create_topics([NewTopic(t, PARTITIONS) for t in TOPICS + [IN_TOPIC]]).values():
        f.result()
    p = producer("txn-1")
    p.begin_transaction()
    send(p, "c1", 12)
    p.commit_transaction(30)

    p.begin_transaction()
    send(p, "ab", 7)
    p.abort_transaction(30)

    # Offsets of a consume-transform-produce loop, committed with the
    # records (the consumer never joins: generation -1, as librdkafka
    # sends for an unjoined consumer's metadata).
    meta_consumer = Consumer({"bootstrap.servers": BOOT, "group.id": GROUP})
    p.begin_transaction()
    send(p, "c2", 6)
    p.send_offsets_to_transaction(
        [TopicPartition(IN_TOPIC, 0, 17), TopicPartition(IN_TOPIC, 1, 4)],
        meta_consumer.consumer_group_metadata(), 30)
    p.commit_transaction(30)
    meta_consumer.close()
    if committed_group_offsets() != [17, 4]:
        fail(f"offsets committed with the transaction: {committed_group_offsets()}")

    # A second producer with the id fences the first and aborts its open
    # transaction.
    p.begin_transaction()
    send(p, "fenced", 3)
    p2 = producer("txn-1")
    try:
        p.commit_transaction(30)
        fail("a fenced producer committed")
    except KafkaException as e:
        err = e.args[0]
        if err.code() not in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                              KafkaError.INVALID_PRODUCER_EPOCH):
            fail(f"the fenced producer's commit failed with {err}, not fencing")
    # Left open across the kill: the next producer aborts it.
    p2.begin_transaction()
    send(p2, "open", 4)
    print("OK", flush=True)
    sys.exit(0)

if PHASE == "after":
    p3 = producer("txn-1")
    p3.begin_transaction()
    send(p3, "c3", 5)
    p3.commit_transaction(30)
    got = read_committed()
    for (t, part), values in got.items():
        want = ([f"c1-{i}" for i in range(12)] + [f"c2-{i}" for i in range(6)]
                + [f"c3-{i}" for i in range(5)])
        if values != want:
            fail(f"{t}/{part} read {values}, wanted {want}")
    if committed_group_offsets() != [17, 4]:
        fail(f"offsets after the restart: {committed_group_offsets()}")
    print("OK", flush=True)
    sys.exit(0)

fail(f"unknown phase {PHASE}")
