#!/usr/bin/env bash
# Builds the driver of benches/changelog.rs (benches/peers/changelog-bench/:
# Flink 2.3.0, aquifer-flink-changelog, flink-dstl-dfs, flink-s3-fs-hadoop)
# into the cache and prints the path of a file holding its runtime classpath
# (classes first, then every jar), for
# `java -cp "$(cat FILE)" aquifer.bench.changelog.ChangelogBench ...`.
#
# First installs the connectors (io.aquifer:aquifer-client, aquifer-flink,
# aquifer-flink-changelog 0.1.0-SNAPSHOT) into ~/.m2, never building inside
# connectors/ (others build there): the sources are copied with rsync to
# $AQUIFER_CHANGELOG_BUILD_DIR (default /work/bench-cl, or ~/.cache/... when
# /work is absent) beside a link to proto/, and `mvn -q install -DskipTests`
# runs in the copy, unless the installed jars were built from the same
# sources. Idempotent: a driver build whose .complete marker holds the hash
# of its sources and of the installed connector jars is reused. Fails fast.
source "$(dirname "$0")/common.sh"

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CONNECTORS="$ROOT/connectors"
JOB="$HERE/changelog-bench"
DIR="$PEERS_DIR/changelog-bench"
if [ -n "${AQUIFER_CHANGELOG_BUILD_DIR:-}" ]; then
    COPY="$AQUIFER_CHANGELOG_BUILD_DIR"
elif [ -d /work ] && [ -w /work ]; then
    COPY=/work/bench-cl
else
    COPY="$PEERS_DIR/changelog-connectors-build"
fi
M2="${MAVEN_REPO_LOCAL:-$HOME/.m2/repository}"
JARS=(
    "$M2/io/aquifer/aquifer-client/0.1.0-SNAPSHOT/aquifer-client-0.1.0-SNAPSHOT.jar"
    "$M2/io/aquifer/aquifer-flink/0.1.0-SNAPSHOT/aquifer-flink-0.1.0-SNAPSHOT.jar"
    "$M2/io/aquifer/aquifer-flink-changelog/0.1.0-SNAPSHOT/aquifer-flink-changelog-0.1.0-SNAPSHOT.jar"
)

command -v mvn >/dev/null || fail "mvn is not installed (needed to build the changelog bench)"
command -v java >/dev/null || fail "java is not installed (needed to run the changelog bench)"
command -v rsync >/dev/null || fail "rsync is not installed (needed to copy connectors/)"
[ -f "$CONNECTORS/pom.xml" ] || fail "no $CONNECTORS/pom.xml"
[ -d "$CONNECTORS/changelog" ] || fail "no $CONNECTORS/changelog (the aquifer changelog storage)"
[ -d "$ROOT/proto" ] || fail "no $ROOT/proto"

mkdir -p "$PEERS_DIR"
CONNECTOR_STAMP="$( (cd "$CONNECTORS" && tree_hash .; cd "$ROOT/proto" && tree_hash .) | sha256sum | cut -d' ' -f1)"
missing=0
for j in "${JARS[@]}"; do [ -f "$j" ] || missing=1; done
if [ "$(cat "$DIR-connectors.complete" 2>/dev/null)" != "$CONNECTOR_STAMP" ] || [ "$missing" = 1 ]; then
    mkdir -p "$COPY/connectors"
    rsync -a --delete --exclude target "$CONNECTORS/" "$COPY/connectors/"
    ln -sfn "$ROOT/proto" "$COPY/proto"
    mvn_quiet "$PEERS_DIR/changelog-connectors-mvn.log" "mvn install (a copy of connectors/ in $COPY)" \
        bash -c 'cd "$1/connectors" && mvn -B -q install -DskipTests' _ "$COPY"
    for j in "${JARS[@]}"; do [ -f "$j" ] || fail "mvn install left no $j"; done
    echo "$CONNECTOR_STAMP" >"$DIR-connectors.complete"
fi

STAMP="$( (cd "$JOB" && tree_hash pom.xml src; sha256sum "${JARS[@]}") | sha256sum | cut -d' ' -f1)"
job_classpath changelog-bench "$JOB/pom.xml" "$DIR" "$STAMP"
echo "$DIR/classpath.txt"
