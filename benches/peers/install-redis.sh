#!/usr/bin/env bash
# Installs Redis (Debian's redis-server) unless it is already on PATH, and
# prints the path of redis-server. Idempotent.
source "$(dirname "$0")/common.sh"

if ! command -v redis-server >/dev/null; then
    [ "$(id -u)" = 0 ] || fail "redis-server is not installed and installing it needs root (apt-get install redis-server)"
    export DEBIAN_FRONTEND=noninteractive
    # An old package list may lack the package: update once, then retry.
    if ! apt-get install -y --no-install-recommends redis-server >"$PEERS_DIR/redis-apt.log" 2>&1; then
        quiet "$PEERS_DIR/redis-apt-update.log" "apt-get update" apt-get update
        quiet "$PEERS_DIR/redis-apt.log" "apt-get install redis-server" apt-get install -y --no-install-recommends redis-server
    fi
fi
command -v redis-server
