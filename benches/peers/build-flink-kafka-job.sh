#!/usr/bin/env bash
# Builds the Flink job of tests/e2e_kafka.rs (tests/kafka/flink-job/: Flink
# 2.2.1 and flink-connector-kafka 5.0.0-2.2 from Maven Central) into the
# cache and prints the path of a file holding its runtime classpath (classes
# first, then every jar), for `java -cp "$(cat FILE)" KafkaExactlyOnceJob ...`.
# Idempotent: a build whose .complete marker holds the hash of the job's
# sources is reused.
source "$(dirname "$0")/common.sh"

HERE="$(cd "$(dirname "$0")" && pwd)"
JOB="$(cd "$HERE/../../tests/kafka/flink-job" && pwd)"
DIR="$PEERS_DIR/flink-kafka-job"
lock flink-kafka-job

command -v mvn >/dev/null || fail "mvn is not installed (needed to build the Flink job)"
command -v java >/dev/null || fail "java is not installed (needed to run the Flink job)"

STAMP="$(cd "$JOB" && tree_hash pom.xml src)"
job_classpath flink-kafka-job "$JOB/pom.xml" "$DIR" "$STAMP"
echo "$DIR/classpath.txt"
