#!/usr/bin/env bash
# Compiles benches/peers/kafka-txn/KafkaTxnBench.java (Kafka's transactional
# producer for the transactions benchmark) against the kafka-clients jar of
# the Kafka install (the folder given as $1, else the one install-kafka.sh
# prints) and prints the folder holding its classes, a sibling of the
# install. Idempotent: classes whose .complete marker holds the hash of the
# source and of the install's marker are reused; a changed source or a
# refetched Kafka compiles again.
source "$(dirname "$0")/common.sh"

KAFKA_DIR="${1:-$(bash "$(dirname "$0")/install-kafka.sh" | tail -n 1)}"
[ -d "$KAFKA_DIR/lib" ] || fail "no lib/ in the kafka install '$KAFKA_DIR'"
SRC="$(dirname "$0")/kafka-txn/KafkaTxnBench.java"
[ -f "$SRC" ] || fail "no $SRC"
DIR="$KAFKA_DIR-txn-bench"
STAMP="$(cat "$SRC" "$KAFKA_DIR/.complete" 2>/dev/null | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$DIR/.complete" 2>/dev/null)" != "$STAMP" ]; then
    command -v javac >/dev/null || fail "javac is not installed (needed to compile KafkaTxnBench.java)"
    rm -rf "$DIR"
    mkdir -p "$DIR/classes"
    quiet "$PEERS_DIR/kafka-txn-javac.log" "javac KafkaTxnBench.java" \
        javac --release 17 -Xlint:all -cp "$KAFKA_DIR/lib/*" -d "$DIR/classes" "$SRC"
    echo "$STAMP" >"$DIR/.complete"
fi
echo "$DIR/classes"
