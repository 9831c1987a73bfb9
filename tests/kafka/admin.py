"""confluent-kafka's AdminClient and producer against a node with
kafka_auto_create_topics on: DescribeConfigs of a topic (its retention as
created) and of a broker, and a producer writing to a topic that does not
exist yet, which the first Metadata request creates (with
kafka_auto_create_partitions partitions); a consumer reads it back.
Prints OK and exits 0, or says what failed and exits 1."""
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

BOOT = sys.argv[1]


def fail(why):
    print("FAIL:", why, flush=True)
    sys.exit(1)


admin = AdminClient({"bootstrap.servers": BOOT})
for f in admin.create_topics([NewTopic("described", 2, config={"retention.ms": "3600000"})]).values():
    f.result()

topic = ConfigResource(ConfigResource.Type.TOPIC, "described")
broker = ConfigResource(ConfigResource.Type.BROKER, "1")
got = {r: f.result() for r, f in admin.describe_configs([topic, broker]).items()}
topic_configs = {k: v.value for k, v in got[topic].items()}
broker_configs = {k: v.value for k, v in got[broker].items()}
if topic_configs.get("retention.ms") != "3600000":
    fail(f"topic configs: {topic_configs}")
if topic_configs.get("retention.bytes") != "-1" or topic_configs.get("cleanup.policy") != "delete":
    fail(f"topic configs: {topic_configs}")
if broker_configs.get("auto.create.topics.enable") != "true" or broker_configs.get("num.partitions") != "3":
    fail(f"broker configs: {broker_configs}")
try:
    missing = ConfigResource(ConfigResource.Type.TOPIC, "no-such-topic")
    admin.describe_configs([missing])[missing].result()
    fail("configs of a topic that does not exist")
except Exception as e:  # KafkaException: UNKNOWN_TOPIC_OR_PARTITION
    if "UNKNOWN_TOPIC" not in str(e):
        fail(f"configs of a missing topic failed with {e}")

# Auto-create: the producer's Metadata request creates the topic.
p = Producer({"bootstrap.servers": BOOT, "message.timeout.ms": 30000})
for i in range(30):
    p.produce("auto.created", value=f"a{i}")
if p.flush(30) != 0:
    fail("records to the auto-created topic were not delivered")
md = admin.list_topics("auto.created", timeout=10)
parts = md.topics["auto.created"].partitions
if len(parts) != 3:
    fail(f"the auto-created topic has {len(parts)} partitions")
c = Consumer({"bootstrap.servers": BOOT, "group.id": "admin-check", "auto.offset.reset": "earliest"})
c.assign([TopicPartition("auto.created", i, 0) for i in range(3)])
got, deadline = set(), time.time() + 30
while len(got) < 30 and time.time() < deadline:
    m = c.poll(0.5)
    if m is not None and not m.error():
        got.add(m.value().decode())
c.close()
if got != {f"a{i}" for i in range(30)}:
    fail(f"read back {len(got)} of 30")
print("OK", flush=True)
