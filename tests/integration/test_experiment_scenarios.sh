#!/usr/bin/env bash
# sa-experiment check on the committed scenarios (valid) and on malformed
# ones: each refused with exit 2 and a message naming the key.
#   usage: test_experiment_scenarios.sh BIN_DIR
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
EXP=$SRC/tools/sa-experiment/sa-experiment
T=$(mktemp -d /tmp/sa-scn.XXXXXX)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

for f in "$SRC"/experiments/*.yaml; do
  "$EXP" check "$f" >/dev/null || fail "$f does not check"
done
"$EXP" --help | grep -q "run SCENARIO" || fail "--help"

W='workload: {items: [{prompt: hi}]}'
bad() {
  local want=$1 body=$2
  printf '%s\n' "$body" >"$T/s.yaml"
  set +e
  "$EXP" check "$T/s.yaml" >"$T/out" 2>&1
  local rc=$?
  set -e
  [[ $rc -eq 2 ]] || fail "exit $rc, want 2, for: $body"
  grep -q -- "$want" "$T/out" || fail "'$(cat "$T/out")' does not say '$want' for: $body"
}
bad "a scenario is a mapping" "- 1"
bad "not valid YAML" "name: [x"
bad "name:" "$W
load: {rate: 1}"
bad "unknown key 'colour'" "name: x
colour: red"
bad "exactly one of workload" "name: x
load: {rate: 1}"
bad "exactly one of rate" "name: x
$W"
bad "exactly one of rate" "name: x
$W
load: {rate: 1, concurrency: 2}"
bad "cluster.replicas: must be an integer" "name: x
$W
load: {rate: 1}
cluster: {replicas: two}"
bad "cluster.replicas: 99 is outside" "name: x
$W
load: {rate: 1}
cluster: {replicas: 99}"
bad "unknown key 'replica'" "name: x
$W
load: {rate: 1}
cluster: {replica: 2}"
bad "hosts.bandwidth" "name: x
$W
load: {rate: 1}
hosts: {bandwidth: fast}"
bad "faults\[0\].target: 'r5s0' is not a process" "name: x
$W
load: {rate: 1}
faults: [{at: 3, action: kill, target: r5s0}]"
bad "faults\[0\].action: one of" "name: x
$W
load: {rate: 1}
faults: [{at: 3, action: explode, target: coord}]"
bad "only stop, partition, cpu and drain are undone" "name: x
$W
load: {rate: 1}
faults: [{at: 3, action: kill, target: coord, for: 2}]"
bad "faults\[0\].at: must be a number" "name: x
$W
load: {rate: 1}
faults: [{action: kill, target: coord}]"
bad "baseline: 'nope'" "name: x
$W
load: {rate: 1}
baseline: nope"
bad "'a' twice" "name: x
$W
load: {rate: 1}
runs: [{name: a}, {name: a}]"
bad "model.preset" "name: x
$W
load: {rate: 1}
model: {preset: huge}"
bad "matrix" "name: x
$W
load: {rate: 1}
matrix: {stages: [1, 2]}"
bad "load.warmup: 100 is outside" "name: x
$W
load: {rate: 1, duration: 10, warmup: 100}"
bad "cluster.replicas: must be an integer" "name: x
$W
load: {rate_per_replica: 1}
matrix: {replicas: [1x, 2], rate_per_replica: [0.5]}"
echo "ok: the committed scenarios check; 21 malformed ones are refused with the key named"
