#!/usr/bin/env bash
# Fetches the jars of a Kafka broker (KRaft, no ZooKeeper) from Maven Central
# into the cache (one folder per version) and prints the folder holding
# lib/. Idempotent: a folder whose .complete marker holds the pom's hash is
# reused; a changed pom fetches again.
source "$(dirname "$0")/common.sh"

VERSION="${KAFKA_VERSION:-4.4.0}"
DIR="$PEERS_DIR/kafka-$VERSION"
POM="$(dirname "$0")/kafka-pom.xml"
STAMP="$(sha256sum "$POM" | cut -d' ' -f1)"
lock "kafka-$VERSION"
if [ "$(cat "$DIR/.complete" 2>/dev/null)" != "$STAMP" ]; then
    command -v mvn >/dev/null || fail "mvn is not installed (needed to fetch kafka_2.13 $VERSION)"
    command -v java >/dev/null || fail "java is not installed (needed to run kafka $VERSION)"
    rm -rf "$DIR"
    mkdir -p "$DIR/lib"
    quiet "$PEERS_DIR/kafka-mvn.log" "mvn dependency:copy-dependencies (kafka_2.13 $VERSION)" \
        mvn -B -q -f "$POM" -Dkafka.version="$VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$DIR/lib"
    echo "$STAMP" >"$DIR/.complete"
fi
echo "$DIR"
