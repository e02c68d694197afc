#!/usr/bin/env bash
# The short experiment: experiments/ci.yaml on emulated hosts (network
# namespaces, CPU quotas), a fault-free run and the same load with a stage
# killed (-9) mid-run. Checked from what sa-experiment wrote (what its plots
# show): every request of the fault run completed, none lost, none
# duplicated, every token identical to the fault-free run; the fault was
# logged, detected and throughput recovered; each host's CPU use and the
# machine's speed were recorded; the plots exist; nothing of the hosts is left behind. Skips (77) without root or network namespaces.
#   usage: test_experiment.sh BIN_DIR
set -euo pipefail
BIN=$1
SRC=$(cd "$(dirname "$0")/../.." && pwd)
EXP=$SRC/tools/sa-experiment/sa-experiment
fail() { echo "FAIL: $*" >&2; exit 1; }

if [[ $(id -u) -ne 0 ]] || ! ip netns list >/dev/null 2>&1 || [[ ! -d /sys/fs/cgroup/cpu ]]; then
  echo "skip: needs root, network namespaces and the cgroup v1 cpu controller"
  exit 77
fi
OUT=$(mktemp -d /tmp/sa-exp.XXXXXX)
trap '"$EXP" clean >/dev/null 2>&1 || true' EXIT
"$EXP" run "$SRC/experiments/ci.yaml" --out "$OUT" --bin "$BIN" --cache "$OUT/cache" \
  >"$OUT/run.log" 2>&1 || { tail -n 40 "$OUT/run.log"; fail "sa-experiment run failed"; }
cat "$OUT/run.log" | grep -v '^  ' || true

/usr/bin/python3 - "$OUT" <<'PY' || fail "the experiment's results are wrong"
import json, os, sys
out = sys.argv[1]
doc = json.load(open(os.path.join(out, "summary.json")))
runs = {r["run"]: r for r in doc["runs"]}
assert set(runs) == {"baseline", "stage-killed"}, runs.keys()
b, f = runs["baseline"], runs["stage-killed"]
for r in (b, f):
    assert r["sent"] > 20, r["sent"]
    assert r["completed"] == r["sent"] == r["records"], r
    assert r["failed"] == 0 and r["cancelled"] == 0 and r["duplicate_ids"] == 0, r
assert f["sent"] == b["sent"], "same seed and duration: the same requests"
idn = f["identity"]
assert idn["lost"] == 0 and idn["duplicated"] == 0 and idn["differing"] == 0, idn
assert idn["identical"] == b["completed"] == idn["compared"], idn
fault = f["faults"]
assert len(fault) == 1 and fault[0]["action"] == "kill" and fault[0]["result"] == "killed", fault
assert fault[0]["detect_s"] is not None and fault[0]["detect_s"] < 15, fault
assert fault[0]["recover_s"] is not None, fault
# what each host used over the load (hosts.json): every host's processes
# ran and were charged, within its quota; its CFS periods were counted
hosts = b["hosts"]
assert set(hosts) == {"coord", "enc0", "r0s0", "r1s0"}, hosts
for h in hosts.values():
    assert 0 < h["cpu_s"] <= h["cpu"] * 30 and 0 <= h["throttled_share"] <= 1, hosts
# the steps' batch sizes over the load (the coordinator's sa_step_rows):
# cumulative, ending at every step of the load
rows = b["coordinator"]["step_rows"]
assert rows and rows[-1][0] == "+Inf" and rows[-1][1] == b["coordinator"]["steps"], rows
assert all(x[1] <= y[1] for x, y in zip(rows, rows[1:])), rows
# the machine's speed before and after each run (speed.json, speed.py)
for r in runs:
    sp = json.load(open(os.path.join(out, r, "speed.json")))
    assert 0 < sp["before"]["step_s"] < 1 and 0 < sp["after"]["step_s"] < 1, sp
for p in ("baseline/throughput.png", "baseline/latency_cdf.png",
          "stage-killed/throughput.png", "identity.png"):
    assert os.path.getsize(os.path.join(out, p)) > 5000, p
print("ok: %d requests, %d identical after a stage was killed (detected in %.1f s, "
      "throughput back in %.1f s)" % (f["sent"], idn["identical"], fault[0]["detect_s"],
                                       fault[0]["recover_s"]))
PY
"$EXP" clean >/dev/null
ip netns list | grep -q '^sax-' && fail "namespaces left behind"
ip link show sax-br0 >/dev/null 2>&1 && fail "bridge left behind"
[[ -d /sys/fs/cgroup/cpu/sax ]] && fail "cgroups left behind"
[[ -d /sys/fs/cgroup/cpuacct/sax ]] && fail "cpuacct groups left behind"
rm -rf "$OUT"
echo "ok: hosts torn down"
