#!/usr/bin/env bash
# Where the CPU goes in compare workloads: runs
# `cargo bench --bench compare -- --only aquifer --workloads <W,...>` under
# `perf record` (system-wide, 999 Hz, no call graphs) and prints, as
# Markdown, the busiest symbols of the Aquifer server and of the load
# generator during each workload's window only (found from the bench's
# progress lines, stamped with the clock perf uses).
#
#   benches/profile.sh b                            # 100 B events, 4 producers
#   benches/profile.sh b,d,h > /tmp/profile.md      # d runs a first, for its backlog
#
# Needs perf (Debian: linux-perf) and permission to profile the system
# (root, or kernel.perf_event_paranoid <= -1). The bench is built as usual.
set -euo pipefail

wanted=${1:?usage: benches/profile.sh WORKLOAD[,WORKLOAD...] [TOP]}
top=${2:-20}
repo=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d /tmp/aquifer-profile-XXXXXX)
watch=
trap '[ -z "$watch" ] || kill "$watch" 2>/dev/null || true; rm -rf "$tmp"' EXIT

command -v perf >/dev/null || { echo "profile.sh: perf is not installed" >&2; exit 2; }

workloads=$wanted
case ",$wanted," in *,d,*) workloads="a,$wanted" ;; esac

cd "$repo"
cargo build --release --bench compare >&2

# The server's and the bench's process ids, as they appear.
(
  while true; do
    s=$(pgrep -f "target/release/aquifer serve" | head -1 || true)
    b=$(pgrep -f "deps/compare-" | head -1 || true)
    if [ -n "$s" ] && [ -n "$b" ]; then
      echo "$s $b" > "$tmp/pids"
      break
    fi
    sleep 0.1
  done
) &
watch=$!

stamp='
import sys, time
for line in sys.stdin:
    sys.stdout.write(f"{time.monotonic():.6f} {line}")
'
perf record -q -k CLOCK_MONOTONIC -F 999 -a -o "$tmp/perf.data" -- \
  cargo bench --bench compare -- --only aquifer --workloads "$workloads" \
  2> >(python3 -u -c "$stamp" > "$tmp/progress") > "$tmp/report.md"
sleep 0.5
read -r server bench < "$tmp/pids"

# The window of workload $1: from its progress line to the next one.
window_of() {
  python3 -c '
import sys
lines = [l.split(" ", 1) for l in open(sys.argv[1]) if " compare: aquifer: " in l]
start = end = None
for i, (t, text) in enumerate(lines):
    if start is None and text.startswith(f"compare: aquifer: {sys.argv[2]}."):
        start = float(t)
        end = float(lines[i + 1][0]) if i + 1 < len(lines) else None
if start is None or end is None:
    sys.exit(f"profile.sh: no window for workload {sys.argv[2]} in the bench progress")
print(f"{start:.6f},{end:.6f}")
' "$tmp/progress" "$1"
}

# The top symbols of process $1 in the window, titled $2.
summary() {
  echo
  echo "#### $2"
  echo
  echo '| share of all samples | where | symbol |'
  echo '|---:|---|---|'
  perf report -q -i "$tmp/perf.data" --time "$window" --pid "$1" --no-children \
    --sort dso,sym --stdio 2>/dev/null |
    awk -v top="$top" 'NF >= 3 && $1 ~ /%$/ && n < top {
      pct = $1; dso = $2; $1 = ""; $2 = ""; sub(/^ +/, "");
      gsub(/\|/, "/"); printf "| %s | %s | `%s` |\n", pct, dso, $0; n++ }'
}

# How the window's samples split between the server, the bench and idle
# (by process: `perf report --sort pid` counts threads).
share() {
  perf script -i "$tmp/perf.data" --time "$window" -F pid 2>/dev/null |
    awk -v s="$server" -v b="$bench" '{ n++; if ($1 == s) srv++; else if ($1 == b) gen++; else if ($1 == 0) idle++ }
      END { if (n == 0) n = 1; printf "server %.1f %%, load generator %.1f %%, idle %.1f %%, everything else %.1f %%", 100 * srv / n, 100 * gen / n, 100 * idle / n, 100 * (n - srv - gen - idle) / n }'
}

# The report's row of workload $1.
result_of() {
  if [ "$1" = d ]; then
    awk '/^## Catch-up/ { f = 1 } f && /^\| aquifer \|/ { print; exit }' "$tmp/report.md"
  else
    grep -E "^\| $1\. " "$tmp/report.md" | head -1
  fi
}

echo "Profiled at $(git rev-parse --short HEAD) on $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, by \`benches/profile.sh $wanted\`."
for workload in ${wanted//,/ }; do
  window=$(window_of "$workload")
  start=${window%,*}
  end=${window#*,}
  echo
  echo "### Workload $workload"
  echo
  echo "Window: $(python3 -c "print(f'{$end - $start:.1f}')") s. Samples (999 Hz on every CPU) in it: $(share)."
  echo
  echo "Result: $(result_of "$workload")"
  summary "$server" "Aquifer server (top $top symbols, % of all samples in the window)"
  summary "$bench" "Load generator: the compare bench and its clients (top $top)"
done
