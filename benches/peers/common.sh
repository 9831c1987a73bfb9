# Shared by the install scripts: the cache directory and how to fail.
# Each install script prints, as its last line on stdout, what the harness
# needs (a binary or a folder); on failure it exits non-zero with one line on
# stderr that the harness reports as "unavailable: <reason>".
set -euo pipefail

PEERS_DIR="${AQUIFER_PEERS_DIR:-$HOME/.cache/aquifer-peers}"
mkdir -p "$PEERS_DIR"

# tree_hash FOLDER...: the hash of every file under them (not their build
# output).
tree_hash() {
    find "$@" -name target -prune -o -type f -print | LC_ALL=C sort |
        xargs -d '\n' sha256sum | sha256sum | cut -d' ' -f1
}

# job_classpath NAME POM DIR STAMP: compiles the Maven job POM into
# DIR/build (its pom takes -Dbench.build.dir) unless DIR/.complete holds
# STAMP, and writes DIR/classpath.txt: its classes, then every runtime jar.
job_classpath() {
    local name="$1" pom="$2" dir="$3" stamp="$4"
    if [ "$(cat "$dir/.complete" 2>/dev/null)" != "$stamp" ]; then
        rm -rf "$dir"
        mkdir -p "$dir"
        mvn_quiet "$PEERS_DIR/$name-mvn.log" "mvn compile ($name)" \
            mvn -B -q -f "$pom" -Dbench.build.dir="$dir/build" \
            compile dependency:build-classpath -Dmdep.outputFile="$dir/deps.txt" \
            -Dmdep.includeScope=runtime
        [ -d "$dir/build/classes" ] || fail "mvn left no $dir/build/classes"
        printf '%s:%s\n' "$dir/build/classes" "$(cat "$dir/deps.txt")" >"$dir/classpath.txt"
        echo "$stamp" >"$dir/.complete"
    fi
}

# lock NAME: holds an exclusive lock on $PEERS_DIR/NAME.lock until the
# script exits, so scripts that tests call at once from many threads install
# once, and none removes what another is using.
lock() {
    exec 9>"$PEERS_DIR/$1.lock"
    flock 9
}

fail() {
    echo "$*" >&2
    exit 1
}

# quiet LOG WHAT COMMAND...: runs COMMAND with its output in LOG; on
# failure the reason is "WHAT failed:" and the log's last line.
quiet() {
    local log="$1" what="$2"
    shift 2
    if ! "$@" >"$log" 2>&1; then
        fail "$what failed: $(grep -v '^\s*$' "$log" | tail -n 1) (log: $log)"
    fi
}

# mvn ... with its output in LOG; on failure the reason is WHAT and the
# first error Maven reported (its last lines are only advice).
mvn_quiet() {
    local log="$1" what="$2"
    shift 2
    if ! "$@" >"$log" 2>&1; then
        fail "$what failed: $(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -m 1 -E '^\[ERROR\] .+' ||
            tail -n 1 "$log") (log: $log)"
    fi
}
