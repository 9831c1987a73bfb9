"""A confluent-kafka (librdkafka) idempotent producer against Aquifer's
Kafka listener, through a kill -9 and restart of the node, which
tests/e2e_kafka.rs does while this runs. The producer writes N records,
paced so the kill falls in the middle, each to a partition of its own
choosing; librdkafka retries whatever was in flight when the node died.
Then every partition is read from the beginning: each record must be
there exactly once, in the order it was produced, at the offset its
delivery report named. Exits non-zero otherwise."""
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

BOOT = sys.argv[1]
TOPIC = "idempotent.t"
PARTITIONS = 3
N = 6000
# About 12 s of producing: the test kills the node after 3 s.
PER_TICK, TICK_S = 100, 0.2
DEADLINE = time.time() + 150


def fail(why):
    print("FAIL:", why, flush=True)
    sys.exit(1)


admin = AdminClient({"bootstrap.servers": BOOT})
for f in admin.create_topics([NewTopic(TOPIC, PARTITIONS)]).values():
    f.result()

acked = {}  # value -> (partition, offset)
errors = []


def report(err, msg):
    if err is not None:
        errors.append(str(err))
    else:
        acked[int(msg.value())] = (msg.partition(), msg.offset())


p = Producer({
    "bootstrap.servers": BOOT,
    "enable.idempotence": True,
    "linger.ms": 5,
    # Long enough to ride out the restart: a record that times out would
    # be a failure here, not a retry.
    "message.timeout.ms": 120000,
    "reconnect.backoff.max.ms": 500,
})
for i in range(N):
    p.produce(TOPIC, partition=i % PARTITIONS, value=str(i), on_delivery=report)
    p.poll(0)
    if i % PER_TICK == PER_TICK - 1:
        time.sleep(TICK_S)
    if time.time() > DEADLINE:
        fail(f"timed out producing at record {i}")
left = p.flush(120)
if left != 0 or errors:
    fail(f"{left} records unacknowledged, errors: {errors[:5]}")
if len(acked) != N:
    fail(f"{N - len(acked)} records have no delivery report")
print("produced", N, "records through the restart", flush=True)

c = Consumer({
    "bootstrap.servers": BOOT,
    "group.id": "idempotent-check",
    "enable.auto.commit": False,
})
c.assign([TopicPartition(TOPIC, q, 0) for q in range(PARTITIONS)])
read = {q: [] for q in range(PARTITIONS)}
while sum(len(v) for v in read.values()) < N:
    m = c.poll(0.5)
    if m is not None and not m.error():
        read[m.partition()].append((m.offset(), int(m.value())))
    if time.time() > DEADLINE:
        fail(f"read {sum(len(v) for v in read.values())} of {N} records")
extra = c.poll(2.0)
if extra is not None and not extra.error():
    fail(f"a record past the {N} produced: partition {extra.partition()} value {extra.value()}")
c.close()

for q, got in read.items():
    values = [v for _, v in got]
    expected = list(range(q, N, PARTITIONS))
    if values != expected:
        dups = len(values) - len(set(values))
        fail(f"partition {q}: {len(values)} records, {dups} duplicated, "
             f"first difference at {next(i for i, (a, b) in enumerate(zip(values + [None], expected + [None])) if a != b)}")
    if [o for o, _ in got] != list(range(len(got))):
        fail(f"partition {q}: offsets are not dense from 0")
    for o, v in got:
        if acked[v] != (q, o):
            fail(f"value {v} acknowledged at {acked[v]}, read at {(q, o)}")
print("every record exactly once, in order, at its acknowledged offset", flush=True)
print("OK", flush=True)
