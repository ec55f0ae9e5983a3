#!/usr/bin/env bash
# How long proofs take: `cedard impact --prove` (every request environment,
# both directions, counterexamples decided by both sets) and
# `cedard validate --prove` (every policy in every environment: can it
# match, can it error; every environment: always allowed or denied), on the
# default pack and on the Cedar paper's workloads (../shared/cedar-workloads:
# gdrive, github, tinytodo and the two template variants; a proof does not
# depend on the generated entities, so their sizes do not matter). For each
# set: the set against itself (equivalent everywhere: identical policies
# are proved by the compiler without asking the solver), against the set
# with a copy of one permit added (equivalent, but the solver must prove
# it), and against the set with one widening edit (`permit (principal, action, resource);` added),
# which makes every environment that was not always allowed wider, each
# with a counterexample. Prints one line per proof with the time the proof
# itself reports and the whole command's wall time, best of RUNS.
# Needs cvc5 (`apt-get install cvc5`, or CVC5=path).
#
#   bash benches/prove.sh            # RUNS=3 by default
#   BIN=path/to/cedard bash benches/prove.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin cedard >/dev/null
  BIN=./target/release/cedard
fi
BIN=$(realpath "$BIN")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
workloads=../shared/cedar-workloads

# best_of NAME CMD...: runs CMD RUNS times; prints the smallest proof time
# (from the JSON report's `millis`) and wall time.
best_of() {
  local name=$1 field=$2; shift 2
  local best_proof="" best_wall="" verdict=""
  for _ in $(seq "$RUNS"); do
    local t0 t1 out code
    t0=$(date +%s%N)
    set +e
    out=$("$@" --format json 2>/dev/null)
    code=$?
    set -e
    t1=$(date +%s%N)
    local proof wall
    proof=$(printf '%s' "$out" | python3 -c "import json,sys; r=json.load(sys.stdin); print(r$field['millis'])")
    wall=$(( (t1 - t0) / 1000000 ))
    if [ -z "$best_proof" ] || [ "$proof" -lt "$best_proof" ]; then best_proof=$proof; fi
    if [ -z "$best_wall" ] || [ "$wall" -lt "$best_wall" ]; then best_wall=$wall; fi
    verdict=$code
  done
  printf '%-44s proof %6s ms   command %6s ms   exit %s\n' "$name" "$best_proof" "$best_wall" "$verdict"
}

run_set() {
  local name=$1 policies=$2 schema=$3
  local envs
  envs=$("$BIN" impact --prove --format json --policies "$policies" --schema "$schema" --candidate "$policies" 2>/dev/null \
    | python3 -c "import json,sys; print(len(json.load(sys.stdin)['proof']['environments']))")
  local count
  count=$(cat "$policies"/*.cedar | grep -cE '^\s*(permit|forbid)' || true)
  echo "# $name: $count policies and templates, $envs environments"
  best_of "$name: impact --prove, itself" "['proof']" \
    "$BIN" impact --prove --policies "$policies" --schema "$schema" --candidate "$policies"
  # An equivalent edit the compiler cannot see through alone: a copy of the
  # set's first permit, as a policy of its own.
  rm -rf "$work/cand" && cp -r "$policies" "$work/cand"
  python3 - "$work/cand" <<'PY'
import pathlib, re, sys
folder = pathlib.Path(sys.argv[1])
for f in sorted(folder.glob("*.cedar")):
    for chunk in f.read_text().split(";\n"):
        body = "\n".join(l for l in chunk.splitlines() if not l.strip().startswith(("@", "//")))
        if re.match(r"\s*permit\b", body) and "?" not in body:
            (folder / "copy.cedar").write_text('@id("copy")\n' + body.strip() + ";\n")
            sys.exit(0)
sys.exit("no permit to copy")
PY
  best_of "$name: impact --prove, a permit copied (equivalent)" "['proof']" \
    "$BIN" impact --prove --policies "$policies" --schema "$schema" --candidate "$work/cand"
  rm -rf "$work/cand" && cp -r "$policies" "$work/cand"
  printf '\n@id("widening")\npermit (principal, action, resource);\n' >> "$work/cand/widening.cedar"
  best_of "$name: impact --prove, one widening edit" "['proof']" \
    "$BIN" impact --prove --policies "$policies" --schema "$schema" --candidate "$work/cand"
  best_of "$name: validate --prove" "" \
    "$BIN" validate --prove --policies "$policies" --schema "$schema"
}

run_set "default pack" policies schema
# The default pack with N generated grants (GENERATED="1000 5000"), each naming one user and one
# account: how a proof grows with the set.
for n in ${GENERATED:-1000}; do
  mkdir -p "$work/gen$n"
  cp policies/*.cedar "$work/gen$n/"
  python3 - "$work/gen$n/grants-generated.cedar" "$n" <<'PY'
import sys
path, n = sys.argv[1], int(sys.argv[2])
with open(path, "w") as f:
    for i in range(n):
        f.write(f'@id("g{i}")\npermit (principal == User::"u{i}", action in [Action::"basic"], resource)\n'
                f'when {{ resource.account == Account::"a{i % 50}" }};\n\n')
PY
  run_set "default pack + $n generated grants" "$work/gen$n" schema
done
for w in gdrive github tinytodo gdrive-templates github-templates; do
  run_set "$w" "$workloads/$w/policies" "$workloads/$w/schema"
done
