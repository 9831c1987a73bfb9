#!/usr/bin/env bash
# Builds nats-server from the Go module proxy into the cache (one build per
# version) and prints its path. Debian's nats-server (2.9) predates
# JetStream's `sync_interval: always`, so the module is the source.
source "$(dirname "$0")/common.sh"

VERSION="${NATS_SERVER_VERSION:-v2.15.2}"
BIN_DIR="$PEERS_DIR/nats-server-$VERSION/bin"
if [ ! -x "$BIN_DIR/nats-server" ]; then
    command -v go >/dev/null || fail "go is not installed (needed to build nats-server $VERSION)"
    mkdir -p "$BIN_DIR"
    # -p 1: one compile at a time, the machine is shared.
    quiet "$PEERS_DIR/nats-go-install.log" "go install nats-server@$VERSION" \
        env GOBIN="$BIN_DIR" GOFLAGS="-p=1" go install "github.com/nats-io/nats-server/v2@$VERSION"
fi
echo "$BIN_DIR/nats-server"
