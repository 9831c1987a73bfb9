#!/usr/bin/env bash
# Builds the Flink job of benches/flink.rs (benches/peers/flink-job/: Flink
# 2.3.0, aquifer-flink, flink-connector-kafka 5.0.0-2.2) into the cache and
# prints the path of a file holding its runtime classpath (classes first,
# then every jar), for `java -cp "$(cat FILE)" FlinkSourceBench ...`.
#
# First installs the connector (io.aquifer:aquifer-flink:0.1.0-SNAPSHOT and
# aquifer-client) into ~/.m2 from connectors/ with `mvn -q install
# -DskipTests -pl flink -am` (the flink module and what it needs, not the
# other modules), unless the installed jars were built from the same sources.
# Idempotent: a build whose .complete marker holds the hash of the job's
# sources and of the installed connector jars is reused.
source "$(dirname "$0")/common.sh"

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CONNECTORS="$ROOT/connectors"
JOB="$HERE/flink-job"
DIR="$PEERS_DIR/flink-job"
M2="${MAVEN_REPO_LOCAL:-$HOME/.m2/repository}"
FLINK_JAR="$M2/io/aquifer/aquifer-flink/0.1.0-SNAPSHOT/aquifer-flink-0.1.0-SNAPSHOT.jar"
CLIENT_JAR="$M2/io/aquifer/aquifer-client/0.1.0-SNAPSHOT/aquifer-client-0.1.0-SNAPSHOT.jar"

command -v mvn >/dev/null || fail "mvn is not installed (needed to build the Flink job)"
command -v java >/dev/null || fail "java is not installed (needed to run the Flink job)"
[ -f "$CONNECTORS/pom.xml" ] || fail "no $CONNECTORS/pom.xml"

CONNECTOR_STAMP="$(cd "$CONNECTORS" && tree_hash pom.xml .mvn java flink)"
if [ "$(cat "$DIR-connector.complete" 2>/dev/null)" != "$CONNECTOR_STAMP" ] ||
    [ ! -f "$FLINK_JAR" ] || [ ! -f "$CLIENT_JAR" ]; then
    mkdir -p "$(dirname "$DIR")"
    mvn_quiet "$PEERS_DIR/flink-connector-mvn.log" "mvn install (connectors/, -pl flink -am)" \
        bash -c 'cd "$1" && mvn -B -q install -DskipTests -pl flink -am' _ "$CONNECTORS"
    echo "$CONNECTOR_STAMP" >"$DIR-connector.complete"
fi

STAMP="$( (cd "$JOB" && tree_hash pom.xml src; sha256sum "$FLINK_JAR" "$CLIENT_JAR") | sha256sum | cut -d' ' -f1)"
job_classpath flink-job "$JOB/pom.xml" "$DIR" "$STAMP"
echo "$DIR/classpath.txt"
