#!/usr/bin/env bash
# The directory on PostgreSQL against the embedded redb file (not a test):
# the real binaries, a throwaway PostgreSQL cluster, wrk and curl, all in one
# run on this machine, so that the ratios compare like with like.
#
#   - stored decisions with a warm memo: PostgreSQL replica / redb;
#   - two replicas on one database against one (two wrk runs at once);
#   - the first decision after another replica's write (a memo miss, asked
#     `at_least` the write's revision), its latency;
#   - invite accept and role change over HTTP on each backend, latency.
#
#   bash benches/replicas.sh        # needs wrk and PostgreSQL (initdb, pg_ctl)
#   DURATION=10s ROUNDS=100 bash benches/replicas.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-16}
ROUNDS=${ROUNDS:-50}
cargo build --release --bin cedard >/dev/null
bin=./target/release/cedard

pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$pgbin/initdb" ] || { echo "PostgreSQL (initdb, pg_ctl) is needed" >&2; exit 1; }
work=$(mktemp -d)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres:postgres "$work"
port=$((20000 + RANDOM % 20000))
as_pg "$pgbin/initdb" -D "$work/pg" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
as_pg "$pgbin/pg_ctl" -D "$work/pg" -o "-p $port -k $work -c listen_addresses=127.0.0.1" -l "$work/pg.log" -w start >/dev/null
url="postgres://postgres@127.0.0.1:$port/postgres"
trap 'kill $(jobs -p) 2>/dev/null || true; as_pg "$pgbin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

$bin serve --data "$work/one.redb" --listen 127.0.0.1:8290 2>"$work/redb.log" &
$bin serve --store "$url" --listen 127.0.0.1:8291 2>"$work/a.log" &
$bin serve --store "$url" --listen 127.0.0.1:8292 2>"$work/b.log" &
for p in 8290 8291 8292; do
  for _ in $(seq 200); do curl -sf -o /dev/null "http://127.0.0.1:$p/readyz" && break; sleep 0.05; done
done

api() {  # PORT METHOD PATH ACTOR BODY
  curl -sf -X "$2" -H 'content-type: application/json' -H "x-actor: $4" -d "$5" "http://127.0.0.1:$1$3"
}
token_of() { sed 's/.*"token":"\([^"]*\)".*/\1/'; }
revision_of() { sed 's/.*"store_revision":\([0-9]*\).*/\1/'; }
seed() {  # PORT: olga's team, dana a dev of it
  api "$1" POST /v1/users "" '{"id": "olga", "email": "olga@example.com"}' >/dev/null
  api "$1" POST /v1/accounts/olga/convert olga '{"name": "Acme"}' >/dev/null
  api "$1" POST /v1/users "" '{"id": "dana", "email": "dana@example.com"}' >/dev/null
  local t; t=$(api "$1" POST /v1/accounts/olga/invites olga '{"role": "dev"}' | token_of)
  api "$1" POST /v1/invites/accept dana "{\"token\": \"$t\"}" >/dev/null
}
seed 8290
seed 8291

check() {  # [consistency JSON]
  local extra=""
  [ -n "${1:-}" ] && extra=", \"consistency\": $1"
  echo "{\"principal\": {\"type\": \"User\", \"id\": \"dana\"}, \"action\": {\"type\": \"Action\", \"id\": \"startPod\"}, \"resource\": {\"type\": \"Pod\", \"id\": \"p1\"}, \"entities\": [{\"uid\": {\"type\": \"Pod\", \"id\": \"p1\"}, \"attrs\": {\"account\": {\"type\": \"Account\", \"id\": \"olga\"}}, \"parents\": []}]$extra}"
}
check >"$work/body.json"
for p in 8290 8291 8292; do
  curl -sf -H 'content-type: application/json' --data @"$work/body.json" "http://127.0.0.1:$p/v1/is_authorized" | grep -q '"decision":"allow"' \
    || { echo "port $p did not answer allow for the stored dev" >&2; exit 1; }
done
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$work/body.json", "r")
wrk.body = f:read("*a")
f:close()
LUA
rate() { wrk -t1 -c"${2:-$CONNECTIONS}" -d"$DURATION" -s "$work/post.lua" "$1" | awk '/Requests\/sec/ {print $2}'; }

echo "machine: $(nproc) cores, $(uname -m); PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}'); wrk -t1 -c$CONNECTIONS -d$DURATION"
r1=$(rate http://127.0.0.1:8290/v1/is_authorized)
p1=$(rate http://127.0.0.1:8291/v1/is_authorized)
r2=$(rate http://127.0.0.1:8290/v1/is_authorized)
p2=$(rate http://127.0.0.1:8291/v1/is_authorized)
echo "stored decision, warm memo, redb:        $r1, $r2 req/s"
echo "stored decision, warm memo, PostgreSQL:  $p1, $p2 req/s"
awk -v a="$p1" -v b="$p2" -v c="$r1" -v d="$r2" 'BEGIN { printf "ratio PostgreSQL/redb: %.2f\n", (a+b)/(c+d) }'

one=$(rate http://127.0.0.1:8291/v1/is_authorized)
half=$((CONNECTIONS / 2))
rate http://127.0.0.1:8291/v1/is_authorized "$half" >"$work/ra" &
pa=$!
rate http://127.0.0.1:8292/v1/is_authorized "$half" >"$work/rb" &
pb=$!
wait "$pa" "$pb"
two=$(awk '{s += $1} END {print s}' "$work/ra" "$work/rb")
echo "one replica: $one req/s; two replicas on one database (same machine, ${half} connections each): $two req/s"
awk -v a="$two" -v b="$one" 'BEGIN { printf "ratio two/one replicas: %.2f (2 cores shared by both replicas, PostgreSQL and wrk)\n", a/b }'

median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
# The first decision on B after a role change on A, asked at least the
# change's revision: B must read past its memo.
: >"$work/first"
for i in $(seq "$ROUNDS"); do
  role=$([ $((i % 2)) = 0 ] && echo dev || echo basic)
  rev=$(api 8291 PUT /v1/accounts/olga/members/dana olga "{\"role\": \"$role\"}" | revision_of)
  check "{\"at_least\": $rev}" >"$work/q.json"
  curl -s -o /dev/null -w '%{time_total}\n' -H 'content-type: application/json' --data @"$work/q.json" \
    http://127.0.0.1:8292/v1/is_authorized >>"$work/first"
done
echo "first decision on replica B after a write on A (at_least its revision): median $(median <"$work/first") s over $ROUNDS"

for p in 8290 8291; do
  : >"$work/role.$p"; : >"$work/accept.$p"
  for i in $(seq "$ROUNDS"); do
    role=$([ $((i % 2)) = 0 ] && echo dev || echo basic)
    curl -s -o /dev/null -w '%{time_total}\n' -X PUT -H 'content-type: application/json' -H 'x-actor: olga' \
      -d "{\"role\": \"$role\"}" "http://127.0.0.1:$p/v1/accounts/olga/members/dana" >>"$work/role.$p"
    api "$p" POST /v1/users "" "{\"id\": \"j$i\", \"email\": \"j$i@example.com\"}" >/dev/null
    t=$(api "$p" POST /v1/accounts/olga/invites olga '{"role": "basic"}' | token_of)
    curl -s -o /dev/null -w '%{time_total}\n' -X POST -H 'content-type: application/json' -H "x-actor: j$i" \
      -d "{\"token\": \"$t\"}" "http://127.0.0.1:$p/v1/invites/accept" >>"$work/accept.$p"
  done
done
echo "role change over HTTP: redb median $(median <"$work/role.8290") s, PostgreSQL median $(median <"$work/role.8291") s"
echo "invite accept over HTTP: redb median $(median <"$work/accept.8290") s, PostgreSQL median $(median <"$work/accept.8291") s"
