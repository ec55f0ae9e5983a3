#!/usr/bin/env bash
# Load benchmark (not a test): the Cedar paper's workloads
# (../shared/cedar-workloads: gdrive, github and tinytodo at small, medium
# and large) over HTTP. For each, the real cedard binary serves the
# workload's policies, schema and entities (`--entities`), and wrk asks its
# 2,000 requests in turn; a bare axum endpoint that parses the same bodies
# and decides nothing is measured in the same run, so each line's ratio is
# of one run. The in-process comparison with bare `is_authorized` is
# `cargo bench --bench workloads`.
#
#   bash benches/workloads.sh             # needs wrk (apt-get install wrk)
#   DURATION=10s ONLY=gdrive bash benches/workloads.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-1}
W=${CEDAR_WORKLOADS:-../shared/cedar-workloads}
ONLY=${ONLY:-}
cargo build --release --bin cedard --example bare >/dev/null

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
./target/release/examples/bare 127.0.0.1:8191 &

wait_up() {  # PORT
  for _ in $(seq 400); do curl -s -o /dev/null "http://127.0.0.1:$1/healthz" && return 0; sleep 0.05; done
  echo "nothing answers on port $1" >&2; return 1
}
rate() {  # URL LUA
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s "$2" "$1" | awk '/Requests\/sec/ {print $2}'
}
wait_up 8191
echo "machine: $(nproc) cores, $(uname -m); wrk -t$THREADS -c$CONNECTIONS -d$DURATION"
printf '%-18s %10s %10s %7s\n' workload bare cedard ratio
for w in gdrive github tinytodo; do
  for s in small medium large; do
    [ -n "$ONLY" ] && [[ "$w/$s" != *"$ONLY"* ]] && continue
    dir="$W/$w"
    cat >"$work/req.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {}
for line in io.lines("$dir/$s/requests.jsonl") do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
LUA
    ./target/release/cedard serve --policies "$dir/policies" --schema "$dir/schema" \
      --entities "$dir/$s/entities.json" --data "$work/$w-$s.redb" --listen 127.0.0.1:8190 \
      2>"$work/$w-$s.log" &
    pid=$!
    wait_up 8190 || { cat "$work/$w-$s.log" >&2; exit 1; }
    # Every request of the workload is answered (allow or deny), none fails.
    head -n 50 "$dir/$s/requests.jsonl" | while read -r line; do
      curl -sf -H 'content-type: application/json' -d "$line" http://127.0.0.1:8190/v1/is_authorized \
        | grep -q '"decision":"\(allow\|deny\)"' || { echo "$w/$s: no decision for $line" >&2; exit 1; }
    done
    bare=$(rate http://127.0.0.1:8191/v1/is_authorized "$work/req.lua")
    ced=$(rate http://127.0.0.1:8190/v1/is_authorized "$work/req.lua")
    awk -v n="$w/$s" -v b="$bare" -v c="$ced" 'BEGIN { printf "%-18s %10.0f %10.0f %7.2f\n", n, b, c, c/b }'
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
