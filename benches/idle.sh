#!/usr/bin/env bash
# What an idle daemon costs: the release binary on the default pack, its
# watcher on and the periodic check at its default, nobody asking. After
# start-up settles, measures the CPU it uses (utime + stime from /proc) and
# the bytes it reads over WINDOW seconds, then counts the system calls of
# every thread with strace over another WINDOW seconds. Needs strace. Prints one line per figure.
#
#   bash benches/idle.sh            # WINDOW=10 by default
#   BIN=path/to/cedard bash benches/idle.sh   # another build, to compare
set -euo pipefail
cd "$(dirname "$0")/.."
WINDOW=${WINDOW:-10}
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin cedard >/dev/null
  BIN=./target/release/cedard
fi
BIN=$(realpath "$BIN")
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cp -r policies schema "$work/"
(cd "$work" && exec "$BIN" serve --listen 127.0.0.1:8197 2>"$work/cedard.log") &
pid=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:8197/readyz >/dev/null && break; sleep 0.05; done
sleep 2
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
# CPU first, without strace (which slows what it traces), then the calls.
t0=$(ticks); r0=$(awk '/^rchar/ {print $2}' "/proc/$pid/io")
sleep "$WINDOW"
t1=$(ticks); r1=$(awk '/^rchar/ {print $2}' "/proc/$pid/io")
awk -v t="$((t1 - t0))" -v hz="$hz" -v w="$WINDOW" \
  'BEGIN { printf "idle CPU: %.2f%% of one core over %d s (%d ticks)\n", 100 * t / hz / w, w, t }'
echo "idle bytes read: $((r1 - r0)) in ${WINDOW} s"
timeout "$WINDOW" strace -f -c -p "$pid" -o "$work/strace.txt" 2>/dev/null || true
for call in openat read pread64 statx getdents64 epoll_wait futex; do
  n=$(awk -v c="$call" '$NF == c { print $4 }' "$work/strace.txt" | head -1)
  echo "idle $call: ${n:-0} calls in ${WINDOW} s"
done
