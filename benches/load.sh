#!/usr/bin/env bash
# Load benchmark (not a test): the HTTP check rate of the real cedard binary
# against a bare axum endpoint that parses the same JSON and decides nothing,
# measured in the same run; the same check on a second cedard with a caller
# key, /metrics and the decision log all on ("production") against the first
# with all off; AuthZEN's evaluation against /v1/is_authorized on the same
# question; a `principal_token` against naming the same principal (one
# token, then a new token in every request); plus the latency of a saved
# policy edit.
#
#   bash benches/load.sh            # needs wrk (apt-get install wrk)
#   DURATION=10s CONNECTIONS=16 bash benches/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-1}
cargo build --release --bin cedard --example bare --example reload_latency --example mint_tokens >/dev/null

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cp -r policies schema "$work/"
# A trusted issuer (a JWKS file, nothing fetched) and ES256 tokens for dana,
# each with its own jti.
./target/release/examples/mint_tokens "$work/issuers" dana "${TOKENS:-100000}" "$work/tokens.txt"

./target/release/cedard serve --policies "$work/policies" --schema "$work/schema" \
  --issuers "$work/issuers" --data "$work/plain.redb" --listen 127.0.0.1:8190 2>"$work/cedard.log" &
# The production configuration: a caller key, metrics, the decision log.
KEY=$(./target/release/cedard keys create --data "$work/prod.redb" --name bench --scope decide 2>/dev/null)
./target/release/cedard serve --policies "$work/policies" --schema "$work/schema" \
  --data "$work/prod.redb" --listen 127.0.0.1:8192 \
  --decision-log "$work/decisions.log" --decision-log-max-mb 64 --decision-log-keep 2 2>"$work/prod.log" &
./target/release/examples/bare 127.0.0.1:8191 &
for port in 8190 8191 8192; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.05; done
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
curl -sf -H 'content-type: application/json' --data @"$work/body.json" http://127.0.0.1:8190/v1/is_authorized | grep -q '"decision":"allow"' \
  || { echo "cedard did not answer allow for the benchmark check" >&2; exit 1; }
curl -sf -H 'content-type: application/json' -H "authorization: Bearer $KEY" --data @"$work/body.json" \
  http://127.0.0.1:8192/v1/is_authorized | grep -q '"decision":"allow"' \
  || { echo "the production cedard did not answer allow for the benchmark check" >&2; exit 1; }
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then wrk.headers["Authorization"] = auth end
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
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then wrk.headers["Authorization"] = auth end
request = function()
  counter = counter + 1
  local body = template:gsub("USERID", "user-" .. counter)
  return wrk.format(nil, nil, nil, body)
end
LUA

rate() {  # URL [lua script] [Authorization header value]
  BENCH_AUTH="${3:-}" wrk -t"$THREADS" -c"${CONNECTIONS}" -d"$DURATION" -s "${2:-$work/post.lua}" "$1" | awk '/Requests\/sec/ {print $2}'
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
# Latency at about half that rate: each connection waits between requests
# (wrk's delay(); wrk does not correct for coordinated omission, so this is
# the latency of requests sent on schedule, not a wrk2 figure).
delay=$(awk -v r="$cedard3" -v c="$CONNECTIONS" 'BEGIN { d = c * 1000 / (r / 2); printf "%d", (d < 1 ? 1 : d) }')
printf 'function delay() return %s end\n' "$delay" | cat "$work/distinct.lua" - >"$work/paced.lua"
# The bare endpoint paced the same way is the floor this machine allows
# (wrk's timer, the scheduler); both are run twice, interleaved.
paced() {  # URL LABEL
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/paced.lua" "$1" \
    | awk -v d="$delay" -v l="$2" '/Requests\/sec/ {r=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} END { printf "%s, distinct users, paced (%s ms between requests per connection): %s req/s, p50 %s, p99 %s\n", l, d, r, p50, p99 }'
}
for _ in 1 2; do
  paced http://127.0.0.1:8191/v1/is_authorized "bare  "
  paced http://127.0.0.1:8190/v1/is_authorized "cedard"
done

# Production (key + metrics + decision log) against plain, interleaved.
plain1=$(rate http://127.0.0.1:8190/v1/is_authorized)
prod1=$(rate http://127.0.0.1:8192/v1/is_authorized "$work/post.lua" "Bearer $KEY")
plain2=$(rate http://127.0.0.1:8190/v1/is_authorized)
prod2=$(rate http://127.0.0.1:8192/v1/is_authorized "$work/post.lua" "Bearer $KEY")
echo "plain cedard:                      $plain1, $plain2 req/s"
echo "key + metrics + decision log:      $prod1, $prod2 req/s"
awk -v a="$prod1" -v b="$prod2" -v c="$plain1" -v d="$plain2" \
  'BEGIN { printf "ratio production/plain: %.2f\n", (a+b)/(c+d) }'
echo "decision log lines written: $(cat "$work"/decisions.log* | wc -l)"
curl -s -H "authorization: Bearer $KEY" http://127.0.0.1:8192/metrics >/dev/null || true

# AuthZEN against /v1 on the same question: dana, a stored dev of the
# stored team account `olga`, starting pod p1, which the caller describes
# (inline entity on /v1, properties on AuthZEN).
api() {  # METHOD PATH ACTOR BODY
  curl -sf -X "$1" -H 'content-type: application/json' -H "x-actor: $3" -d "$4" "http://127.0.0.1:8190$2"
}
api POST /v1/users "" '{"id": "olga", "email": "olga@example.com"}' >/dev/null
api POST /v1/accounts/olga/convert olga '{"name": "Acme"}' >/dev/null
api POST /v1/users "" '{"id": "dana", "email": "dana@example.com"}' >/dev/null
token=$(api POST /v1/accounts/olga/invites olga '{"role": "dev"}' | sed 's/.*"token":"\([^"]*\)".*/\1/')
api POST /v1/invites/accept dana "{\"token\": \"$token\"}" >/dev/null
cat >"$work/v1.json" <<'JSON'
{"principal": {"type": "User", "id": "dana"}, "action": {"type": "Action", "id": "startPod"}, "resource": {"type": "Pod", "id": "p1"},
 "entities": [{"uid": {"type": "Pod", "id": "p1"}, "attrs": {"account": {"type": "Account", "id": "olga"}}, "parents": [{"type": "Account", "id": "olga"}]}]}
JSON
cat >"$work/authzen.json" <<'JSON'
{"subject": {"type": "User", "id": "dana"}, "action": {"name": "startPod"},
 "resource": {"type": "Pod", "id": "p1", "properties": {"account": {"type": "Account", "id": "olga"}}}}
JSON
curl -sf -H 'content-type: application/json' --data @"$work/v1.json" http://127.0.0.1:8190/v1/is_authorized | grep -q '"decision":"allow"' \
  || { echo "cedard did not answer allow for the stored dev on /v1" >&2; exit 1; }
curl -sf -H 'content-type: application/json' --data @"$work/authzen.json" http://127.0.0.1:8190/access/v1/evaluation | grep -q '"decision":true' \
  || { echo "cedard did not answer true for the stored dev on AuthZEN" >&2; exit 1; }
for name in v1 authzen; do
  sed "s#$work/body.json#$work/$name.json#" "$work/post.lua" >"$work/$name.lua"
done
v1a=$(rate http://127.0.0.1:8190/v1/is_authorized "$work/v1.lua")
aza=$(rate http://127.0.0.1:8190/access/v1/evaluation "$work/authzen.lua")
v1b=$(rate http://127.0.0.1:8190/v1/is_authorized "$work/v1.lua")
azb=$(rate http://127.0.0.1:8190/access/v1/evaluation "$work/authzen.lua")
echo "same question, /v1/is_authorized:    $v1a, $v1b req/s"
echo "same question, /access/v1/evaluation: $aza, $azb req/s"
awk -v a="$aza" -v b="$azb" -v c="$v1a" -v d="$v1b" \
  'BEGIN { printf "ratio AuthZEN/v1: %.2f\n", (a+b)/(c+d) }'

# A token against naming the same principal: dana's token (`principal_token`)
# against `principal: dana`, the same stored facts, interleaved. The same
# token every time (the verified-token cache answers after the first), then
# a new token in every request (each verified: the signature checked).
head -1 "$work/tokens.txt" >"$work/one-token.txt"
python3 - "$work/v1.json" "$work/one-token.txt" "$work/token.json" <<'PY'
import json, sys
body = json.load(open(sys.argv[1]))
del body["principal"]
body["principal_token"] = open(sys.argv[2]).read().strip()
json.dump(body, open(sys.argv[3], "w"))
PY
curl -sf -H 'content-type: application/json' --data @"$work/token.json" http://127.0.0.1:8190/v1/is_authorized | grep -q '"decision":"allow"' \
  || { echo "cedard did not answer allow for dana's token" >&2; exit 1; }
sed "s#$work/body.json#$work/token.json#" "$work/post.lua" >"$work/token.lua"
sed 's/"principal_token": "[^"]*"/"principal_token": "TOKEN"/' "$work/token.json" >"$work/token-template.json"
cat >"$work/tokens.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$work/token-template.json", "r")
local template = f:read("*a")
f:close()
local tokens = {}
for line in io.lines("$work/tokens.txt") do tokens[#tokens + 1] = line end
local counter = 0
request = function()
  counter = counter + 1
  local body = template:gsub("TOKEN", tokens[(counter % #tokens) + 1])
  return wrk.format(nil, nil, nil, body)
end
LUA
named1=$(rate http://127.0.0.1:8190/v1/is_authorized "$work/v1.lua")
tok1=$(rate http://127.0.0.1:8190/v1/is_authorized "$work/token.lua")
named2=$(rate http://127.0.0.1:8190/v1/is_authorized "$work/v1.lua")
tok2=$(rate http://127.0.0.1:8190/v1/is_authorized "$work/token.lua")
fresh1=$(rate http://127.0.0.1:8190/v1/is_authorized "$work/tokens.lua")
echo "principal named:              $named1, $named2 req/s"
echo "principal_token (one token):  $tok1, $tok2 req/s"
echo "principal_token (a new token in every request): $fresh1 req/s"
awk -v a="$tok1" -v b="$tok2" -v c="$named1" -v d="$named2" -v f="$fresh1" \
  'BEGIN { printf "ratio token/named: %.2f; new token each request/named: %.2f\n", (a+b)/(c+d), 2*f/(c+d) }'

# A batch of 1,000 checks in one call: the stored dev asking about pod p1
# (described once, shared by the batch) with the three pod actions, and
# about the account's billing (a deny), in turn.
python3 - "$work/batch.json" <<'PY'
import json, sys
asks = [("connectPod", "Pod", "p1"), ("startPod", "Pod", "p1"), ("stopPod", "Pod", "p1"),
        ("viewBilling", "Account", "olga")]
reqs = [{"principal": {"type": "User", "id": "dana"}, "action": {"type": "Action", "id": a},
         "resource": {"type": t, "id": r}} for a, t, r in (asks[i % 4] for i in range(1000))]
ents = [{"uid": {"type": "Pod", "id": "p1"}, "attrs": {"account": {"type": "Account", "id": "olga"}},
         "parents": [{"type": "Account", "id": "olga"}]}]
json.dump({"requests": reqs, "entities": ents}, open(sys.argv[1], "w"))
PY
curl -sf -H 'content-type: application/json' --data @"$work/batch.json" http://127.0.0.1:8190/v1/is_authorized/batch \
  | grep -o '"decision":"allow"' | wc -l | grep -qx 750 \
  || { echo "the batch did not answer 750 allows of 1000" >&2; exit 1; }
sed "s#$work/body.json#$work/batch.json#" "$work/post.lua" >"$work/batch.lua"
calls=$(CONNECTIONS=4 rate http://127.0.0.1:8190/v1/is_authorized/batch "$work/batch.lua")
awk -v c="$calls" 'BEGIN { printf "batch of 1000: %.1f calls/s = %.0f decisions/s\n", c, c * 1000 }'

# Save to served: a save by rename (as editors save), an in-place write
# (which waits --settle-ms), and a ConfigMap-style swap of `..data` (last:
# it changes the folder's layout).
./target/release/examples/reload_latency "$work/policies" http://127.0.0.1:8190 ${ROUNDS:-20} rename
./target/release/examples/reload_latency "$work/policies" http://127.0.0.1:8190 ${ROUNDS:-20} inplace
./target/release/examples/reload_latency "$work/policies" http://127.0.0.1:8190 ${ROUNDS:-20} configmap
