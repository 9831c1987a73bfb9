#!/usr/bin/env bash
# Builds and tests the Java client and the Flink connector (what .ci/run calls).
# Needs the release binary (`cargo build --release`): the tests start it.
# Java 17 and Maven come from Debian if missing; every Maven artifact comes
# from Maven Central into ~/.m2, which stays as the cache between runs.
# connectors/.mvn/maven.config sets batch mode and short registry timeouts,
# so an unreachable registry fails the build in seconds, not minutes.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v mvn >/dev/null || ! command -v javac >/dev/null; then
  echo "connectors: installing Java 17 and Maven (apt)"
  apt-get install -y -q openjdk-17-jdk-headless maven >/dev/null
fi
binary="$(cd .. && pwd)/target/release/aquifer"
if [ ! -x "$binary" ]; then
  echo "connectors: no $binary; run cargo build --release first" >&2
  exit 1
fi
start=$(date +%s)
mvn verify -Daquifer.binary="$binary"
echo "connectors: built and tested in $(( $(date +%s) - start )) s"
