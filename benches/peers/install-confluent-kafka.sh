#!/usr/bin/env bash
# Makes a Python virtualenv with confluent-kafka (PyPI; its wheel carries
# librdkafka) unless it is there, and prints its python's path.
# Idempotent. The Kafka listener's end-to-end test (tests/e2e_kafka.rs)
# runs tests/kafka/*.py with it.
source "$(dirname "$0")/common.sh"

VENV="$PEERS_DIR/confluent-kafka-venv"
VERSION=2.16.1
lock confluent-kafka
# version() is the version string (older releases answered a tuple).
if ! "$VENV/bin/python" -c "import confluent_kafka, sys; v = confluent_kafka.version(); sys.exit((v[0] if isinstance(v, tuple) else v) != '$VERSION')" 2>/dev/null; then
    command -v python3 >/dev/null || fail "python3 is needed to run the confluent-kafka tests"
    rm -rf "$VENV"
    quiet "$PEERS_DIR/confluent-kafka-venv.log" "python3 -m venv" python3 -m venv "$VENV"
    quiet "$PEERS_DIR/confluent-kafka-pip.log" "pip install confluent-kafka==$VERSION" \
        "$VENV/bin/pip" install --disable-pip-version-check "confluent-kafka==$VERSION"
fi
echo "$VENV/bin/python"
