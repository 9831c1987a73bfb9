"""A confluent-kafka (librdkafka) consumer group against Aquifer's Kafka
listener. Phase `rebalance`: two members share a topic, a third joins,
one leaves, and every record is read with offsets committed as it goes.
Phase `resume` (tests/e2e_kafka.rs runs it after a kill -9 and restart
of the node): a new member of the group resumes at the committed
offsets and reads exactly the records produced since. Phase `rebalance`
ends with static members (group.instance.id): one restarts and takes its
partitions back without rebalancing the other. Exits non-zero on
any loss or a resume from the wrong place."""
import sys
import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

BOOT, PHASE = sys.argv[1], sys.argv[2]
TOPIC = "groups.t"
N = 2000
DEADLINE = time.time() + 120


def fail(why):
    print("FAIL:", why, flush=True)
    sys.exit(1)


def produce(first, count):
    p = Producer({"bootstrap.servers": BOOT, "enable.idempotence": True})
    for i in range(first, first + count):
        p.produce(TOPIC, key=str(i % 13), value=str(i))
    if p.flush(30) != 0:
        fail("records not acknowledged")


def consumer(name, group="g", instance=None, on_assign=None):
    config = {
        "bootstrap.servers": BOOT,
        "group.id": group,
        "client.id": name,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
    }
    if instance is not None:
        config["group.instance.id"] = instance
    c = Consumer(config)
    if on_assign is None:
        c.subscribe([TOPIC])
    else:
        c.subscribe([TOPIC], on_assign=on_assign)
    return c


def poll_all(members, seen):
    for c in members:
        m = c.poll(0.1)
        if m is None:
            continue
        if m.error():
            print("consumer error:", m.error(), flush=True)
            continue
        seen.add(int(m.value()))
        c.commit(message=m, asynchronous=False)
    if time.time() > DEADLINE:
        fail(f"timed out with {len(seen)} records read")


if PHASE == "resume":
    produce(N, 100)
    c = consumer("c4")
    resumed = []
    while len(resumed) < 100:
        m = c.poll(0.5)
        if m is not None and not m.error():
            resumed.append(int(m.value()))
        if time.time() > DEADLINE:
            fail(f"resumed with {len(resumed)} records only")
    extra = c.poll(2.0)
    if extra is not None and not extra.error():
        resumed.append(int(extra.value()))
    if sorted(resumed) != list(range(N, N + 100)):
        fail(f"resumed at the wrong place: {sorted(resumed)[:5]}... ({len(resumed)} records)")
    c.close()
    print("OK", flush=True)
    sys.exit(0)

admin = AdminClient({"bootstrap.servers": BOOT})
for f in admin.create_topics([NewTopic(TOPIC, 4)]).values():
    f.result()
produce(0, N)

seen = set()
members = [consumer("c1"), consumer("c2")]
while len(seen) < N // 3:
    poll_all(members, seen)
# Both members hold partitions before the third joins.
if not all(c.assignment() for c in members):
    fail("a member of two got no partitions")
members.append(consumer("c3"))
while len(seen) < 2 * N // 3:
    poll_all(members, seen)
members.pop(0).close()  # c1 leaves the group
while len(seen) < N:
    poll_all(members, seen)
if seen != set(range(N)):
    fail(f"records lost: {sorted(set(range(N)) - seen)[:10]}")
print("read all", N, "records across the rebalances", flush=True)
for c in members:
    c.close()

# Static members: s2 restarts (a close sends no LeaveGroup for a static
# member) and comes back with its instance id within its session: it takes
# its partitions back and s1 is not rebalanced.
assigned = []
seen = set()
s1 = consumer("s1", "gs", "ia", on_assign=lambda c, parts: assigned.append(len(parts)))
# s1 holds every partition before s2 joins, so s1 leads the group and s2,
# the one that restarts, follows (a returning leader rebalances).
while not s1.assignment():
    poll_all([s1], seen)
s2 = consumer("s2", "gs", "ib")
members = [s1, s2]
while len(seen) < N // 2 or len(assigned) < 2 or not s2.assignment():
    poll_all(members, seen)
before = len(assigned)
s2.close()
members = [s1, consumer("s2-again", "gs", "ib")]
while len(seen) < N:
    poll_all(members, seen)
if seen != set(range(N)):
    fail(f"static members lost records: {sorted(set(range(N)) - seen)[:10]}")
if len(assigned) != before:
    fail(f"s1 was rebalanced when s2 came back ({assigned})")
print("a static member came back without a rebalance", flush=True)
for c in members:
    c.close()

print("OK", flush=True)
