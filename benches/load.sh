#!/usr/bin/env bash
# Load benchmark (not a test): the HTTP check rate of the real cedard binary
# against a bare axum endpoint that parses the same JSON and decides nothing,
# measured in the same run, plus the latency of a saved policy edit.
#
#   bash benches/load.sh            # needs wrk (apt-get install wrk)
#   DURATION=10s CONNECTIONS=16 bash benches/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-1}
cargo build --release --bin cedard --example bare --example reload_latency >/dev/null

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cp -r policies schema "$work/"

./target/release/cedard serve --policies "$work/policies" --schema "$work/schema" \
  --listen 127.0.0.1:8190 2>"$work/cedard.log" &
./target/release/examples/bare 127.0.0.1:8191 &
for port in 8190 8191; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.05; done
done

# The check: a dev member starting a pod, three inline entities.
cat >"$work/body.json" <<'JSON'
{"principal": {"type": "User", "id": "dana"}, "action": {"type": "Action", "id": "startPod"}, "resource": {"type": "Pod", "id": "p1"},
 "entities": [
  {"uid": {"type": "User", "id": "dana"}, "attrs": {"email": "dana@example.com"}, "parents": [{"type": "Role", "id": "acme/dev"}]},
  {"uid": {"type": "Account", "id": "acme"}, "attrs": {"name": "Acme", "kind": "team", "owner": {"type": "User", "id": "olga"}, "account": {"type": "Account", "id": "acme"},
   "roles": {"basic": {"type": "Role", "id": "acme/basic"}, "billing": {"type": "Role", "id": "acme/billing"}, "dev": {"type": "Role", "id": "acme/dev"}, "admin": {"type": "Role", "id": "acme/admin"}}}, "parents": []},
  {"uid": {"type": "Pod", "id": "p1"}, "attrs": {"account": {"type": "Account", "id": "acme"}}, "parents": [{"type": "Account", "id": "acme"}]}
 ]}
JSON
curl -sf -X POST --data @"$work/body.json" http://127.0.0.1:8190/v1/is_authorized | grep -q '"decision":"allow"' \
  || { echo "cedard did not answer allow for the benchmark check" >&2; exit 1; }
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$work/body.json", "r")
wrk.body = f:read("*a")
f:close()
LUA

# The same check with a different user in every request, so that cedard's
# memo of decoded entities misses on the principal: the cold-ish case.
sed 's/"dana"/"USERID"/g' "$work/body.json" >"$work/template.json"
cat >"$work/distinct.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$work/template.json", "r")
local template = f:read("*a")
f:close()
local counter = 0
request = function()
  counter = counter + 1
  local body = template:gsub("USERID", "user-" .. counter)
  return wrk.format(nil, nil, nil, body)
end
LUA

rate() {
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s "${2:-$work/post.lua}" "$1" | awk '/Requests\/sec/ {print $2}'
}
echo "machine: $(nproc) cores, $(uname -m); wrk -t$THREADS -c$CONNECTIONS -d$DURATION"
bare1=$(rate http://127.0.0.1:8191/v1/is_authorized)
cedard1=$(rate http://127.0.0.1:8190/v1/is_authorized)
bare2=$(rate http://127.0.0.1:8191/v1/is_authorized)
cedard2=$(rate http://127.0.0.1:8190/v1/is_authorized)
echo "bare axum endpoint: $bare1, $bare2 req/s"
echo "cedard check:       $cedard1, $cedard2 req/s"
awk -v a="$cedard1" -v b="$cedard2" -v c="$bare1" -v d="$bare2" \
  'BEGIN { printf "ratio cedard/bare: %.2f (runs interleaved, sums compared)\n", (a+b)/(c+d) }'
bare3=$(rate http://127.0.0.1:8191/v1/is_authorized "$work/distinct.lua")
cedard3=$(rate http://127.0.0.1:8190/v1/is_authorized "$work/distinct.lua")
echo "distinct user per request: bare $bare3, cedard $cedard3 req/s"
awk -v a="$cedard3" -v c="$bare3" 'BEGIN { printf "ratio cedard/bare, distinct users: %.2f\n", a/c }'

./target/release/examples/reload_latency "$work/policies" http://127.0.0.1:8190 ${ROUNDS:-20}
