#!/usr/bin/env bash
# Stored-directory benchmark (not a test), on the real binary and a real
# redb file of 100,000 users in 10,000 team accounts (examples/populate):
#
# 1. start-up: from exec to /readyz answering 200, for a file its last clean
#    close stamped (the usual restart) and for one without a stamp (after a
#    crash: the file is checked in full);
# 2. the check rate for a stored principal and its stored account, the Pod
#    sent inline, a random user of the 100,000 in every request, against the
#    bare axum endpoint parsing the same bodies, runs interleaved;
# 3. memory: the daemon's RSS after every ~100,000 decisions, up to
#    1,000,000 (it must stay flat: every memo is bounded);
# 4. the check rate of 2. again, warm (the memos hold the directory).
#
#   bash benches/stored.sh            # needs wrk
#   USERS=100000 ACCOUNTS=10000 DURATION=5s bash benches/stored.sh
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${USERS:-100000}
ACCOUNTS=${ACCOUNTS:-10000}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-16}
DECISIONS=${DECISIONS:-1000000}
cargo build --release --bin cedard --example bare --example populate >/dev/null

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cp -r policies schema "$work/"
data="$work/data/cedard.redb"
mkdir -p "$work/data"
./target/release/examples/populate "$data" "$USERS" "$ACCOUNTS"

port=8290
serve() {
  ./target/release/cedard serve --policies "$work/policies" --schema "$work/schema" \
    --data "$data" --listen "127.0.0.1:$port" >/dev/null 2>>"$work/cedard.log" &
  pid=$!
}
# Starts the daemon; sets `ms` to the milliseconds from exec to the first
# 200 from /readyz.
start() {
  local t0 t1
  t0=$(date +%s%N)
  serve
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")" = 200 ]; do
    kill -0 "$pid" 2>/dev/null || { echo "cedard exited; its log:" >&2; cat "$work/cedard.log" >&2; exit 1; }
    sleep 0.002
  done
  t1=$(date +%s%N)
  ms=$(( (t1 - t0) / 1000000 ))
}
stop() { kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; }

echo "machine: $(nproc) cores, $(uname -m); $USERS users in $ACCOUNTS accounts ($(du -m "$data" | cut -f1) MB)"
stamped=()
for _ in 1 2 3; do start; stamped+=("$ms"); stop; done
rm -f "$data.checked"
start
unstamped=$ms
echo "start-up to ready, stamped file (clean restarts): ${stamped[*]} ms"
echo "start-up to ready, no stamp (checked in full):    $unstamped ms"

./target/release/examples/bare 127.0.0.1:8291 >/dev/null &
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:8291/v1/is_authorized && break; sleep 0.05; done

# A random stored user u<i>, a member of account a<i % ACCOUNTS> (with a
# role by i % 4 in the sorted order, admin for the first ACCOUNTS users), asks to start that
# account's pod, sent inline.
cat >"$work/stored.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
math.randomseed(os.time())
request = function()
  local i = math.random(0, $USERS - 1)
  local a = i % $ACCOUNTS
  local body = '{"principal": {"type": "User", "id": "u' .. i .. '"}, "action": {"type": "Action", "id": "startPod"}, '
    .. '"resource": {"type": "Pod", "id": "pod-' .. a .. '"}, "entities": [{"uid": {"type": "Pod", "id": "pod-' .. a .. '"}, '
    .. '"attrs": {"account": {"type": "Account", "id": "a' .. a .. '"}}, "parents": [{"type": "Account", "id": "a' .. a .. '"}]}]}'
  return wrk.format(nil, nil, nil, body)
end
LUA
# The answers are right. Past the first ACCOUNTS users (the admins), user
# u<i> holds the schema's roles in their sorted order by i % 4 (admin,
# basic, billing, dev): u<ACCOUNTS+3> is a dev of a3 (allow),
# u<ACCOUNTS+2> billing of a2 (deny).
ask() {
  curl -sf -H 'content-type: application/json' "http://127.0.0.1:$port/v1/is_authorized" -d \
    "{\"principal\": {\"type\": \"User\", \"id\": \"u$1\"}, \"action\": {\"type\": \"Action\", \"id\": \"startPod\"}, \"resource\": {\"type\": \"Pod\", \"id\": \"pod-$2\"}, \"entities\": [{\"uid\": {\"type\": \"Pod\", \"id\": \"pod-$2\"}, \"attrs\": {\"account\": {\"type\": \"Account\", \"id\": \"a$2\"}}, \"parents\": [{\"type\": \"Account\", \"id\": \"a$2\"}]}]}"
}
ask $((ACCOUNTS + 3)) 3 | grep -q '"decision":"allow"' || { echo "the stored dev was not allowed" >&2; exit 1; }
ask $((ACCOUNTS + 2)) 2 | grep -q '"decision":"deny"' || { echo "the stored billing member was not denied" >&2; exit 1; }

run() {  # URL -> "requests rate"
  wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s "$work/stored.lua" "$1" \
    | awk '/requests in/ {n=$1} /Requests\/sec/ {r=$2} END {print n, r}'
}
rss() { awk '/VmRSS/ {print $2 / 1024}' "/proc/$pid/status"; }
# Bare and cedard twice each, interleaved; prints the rates and their
# ratio under LABEL, and adds cedard's decisions to `done_n`.
compare() {  # LABEL
  local bare1 bare2 cedard1 cedard2 n1 n2
  read -r _ bare1 < <(run http://127.0.0.1:8291/v1/is_authorized)
  read -r n1 cedard1 < <(run "http://127.0.0.1:$port/v1/is_authorized")
  read -r _ bare2 < <(run http://127.0.0.1:8291/v1/is_authorized)
  read -r n2 cedard2 < <(run "http://127.0.0.1:$port/v1/is_authorized")
  echo "$1, bare axum, same bodies:      $bare1, $bare2 req/s"
  echo "$1, cedard, stored user+account: $cedard1, $cedard2 req/s"
  awk -v l="$1" -v a="$cedard1" -v b="$cedard2" -v c="$bare1" -v d="$bare2" \
    'BEGIN { printf "%s, ratio cedard/bare, stored principal and account: %.2f\n", l, (a+b)/(c+d) }'
  done_n=$((done_n + n1 + n2))
}
echo "RSS before any decision: $(rss) MB"
done_n=0
compare cold
echo "decisions so far: $done_n; RSS $(rss) MB"
while [ "$done_n" -lt "$DECISIONS" ]; do
  read -r n _ < <(run "http://127.0.0.1:$port/v1/is_authorized")
  done_n=$((done_n + n))
  echo "decisions so far: $done_n; RSS $(rss) MB"
done
# Warm: every user and account has been asked about ten times over, so the
# memos hold the directory.
compare warm
stop
