#!/usr/bin/env bash
# Installs kcat (Debian's package: kcat 1.7.1 on librdkafka 2.0.2) unless it
# is already on PATH, and prints its path. Idempotent. The Kafka listener's
# end-to-end test (tests/e2e_kafka.rs) runs it.
source "$(dirname "$0")/common.sh"

if ! command -v kcat >/dev/null; then
    [ "$(id -u)" = 0 ] || fail "kcat is not installed and installing it needs root (apt-get install kcat)"
    export DEBIAN_FRONTEND=noninteractive
    # An old package list may lack the package: update once, then retry.
    if ! apt-get install -y --no-install-recommends kcat >"$PEERS_DIR/kcat-apt.log" 2>&1; then
        quiet "$PEERS_DIR/kcat-apt-update.log" "apt-get update" apt-get update
        quiet "$PEERS_DIR/kcat-apt.log" "apt-get install kcat" apt-get install -y --no-install-recommends kcat
    fi
fi
command -v kcat
