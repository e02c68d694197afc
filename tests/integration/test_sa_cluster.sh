#!/usr/bin/env bash
# sa-cluster as a user runs it, on its own topology (free ports, a run dir
# in the test's folder): `up` makes a CurveZMQ key set and comes up
# encrypted; the supervisor restarts a child killed with -9 (backoff, never
# giving up) and the cluster serves again; a model whose weights are cut
# short makes `up` fail with the worker's own error instead of waiting for
# its health timeout.
BIN=$1
source "$(dirname "$0")/lib.sh"

M=$T/model
make_model "$M" 81
make_clips "$T/clips" 1
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
topo() { # FILE MODEL RUN_DIR
  cat >"$1" <<EOF
model: $2
run_dir: $3
threads: 1
coordinator:
  listen: tcp://127.0.0.1:$(port)
encoders:
  - listen: tcp://127.0.0.1:$(port)
replicas:
  - name: r0
    kv_mem: 8MiB
    stages:
      - layers: auto
        listen: tcp://127.0.0.1:$(port)
      - layers: auto
        listen: tcp://127.0.0.1:$(port)
EOF
}
topo "$T/ok.yaml" "$M" "$T/run"
# stop the supervisors too, keeping the test's exit status for cleanup
trap 'rc=$?; for y in ok bad; do "$BIN/sa-cluster" down "$T/$y.yaml" >/dev/null 2>&1; done; (exit $rc); cleanup' EXIT
"$BIN/sa-cluster" up "$T/ok.yaml" --timeout 60 >"$T/up.out" 2>&1 || fail "up: $(cat "$T/up.out")"
grep -q "made a CurveZMQ key set" "$T/up.out" || fail "no key set: $(cat "$T/up.out")"
grep -q "encrypted (CurveZMQ)" "$T/up.out" || fail "not encrypted: $(cat "$T/up.out")"
[[ $(stat -c %a "$T/run/keys/client.key") == 600 ]] || fail "client.key is not 0600"
CO=$(grep -o 'listen: tcp://[^ ]*' "$T/ok.yaml" | head -n 1 | cut -d' ' -f2)
export SA_KEY=$T/run/keys/client.key SA_ALLOW=$T/run/keys/allow
"$BIN/sa-client" submit "$T/clips/clip0.wav" --max-tokens 4 --json --coordinator "$CO" \
  >"$T/a.out" 2>&1 || fail "submit: $(cat "$T/a.out")"
pass "up: encrypted with a key set made on first start; a request completes"

# kill -9 a stage: the supervisor brings it back and the cluster serves
pid=$(pgrep -f "sa-worker.*$T/model.*--layers 1:" | head -n 1)
[[ -n $pid ]] || fail "no stage 1 process"
kill -9 "$pid"
for _ in $(seq 100); do grep -q "restarted r0-stage1" "$T/run/sa-cluster.log" && break; sleep 0.1; done
grep -q "restarted r0-stage1" "$T/run/sa-cluster.log" || fail "the stage was not restarted"
ok=0
for _ in $(seq 100); do
  if "$BIN/sa-client" submit "$T/clips/clip0.wav" --max-tokens 4 --json --coordinator "$CO" \
    >"$T/b.out" 2>&1; then ok=1; break; fi
  sleep 0.2
done
[[ $ok -eq 1 ]] || fail "no service after the restart: $(cat "$T/b.out")"
pass "a stage killed with -9 is restarted ($(grep -o 'restarting in [0-9.]* s' "$T/run/sa-cluster.log" | head -n 1)); the cluster serves"
"$BIN/sa-cluster" down "$T/ok.yaml" >/dev/null

# a model whose weights are cut short: up fails at once, with the reason
mkdir -p "$T/bad"
cp "$M"/config.json "$M"/tokenizer*.json "$T/bad/"
head -c 4096 "$M/model.safetensors" >"$T/bad/model.safetensors"
topo "$T/bad.yaml" "$T/bad" "$T/run2"
start=$(date +%s)
if "$BIN/sa-cluster" up "$T/bad.yaml" --timeout 250 >"$T/bad.out" 2>&1; then
  "$BIN/sa-cluster" down "$T/bad.yaml" >/dev/null
  fail "up succeeded with a truncated model"
fi
took=$(( $(date +%s) - start ))
# the child's own failure, not the health timeout (which would say "not healthy after")
grep -q "could not start" "$T/bad.out" || fail "up's error: $(cat "$T/bad.out")"
grep -q "not healthy after" "$T/bad.out" && fail "up waited for its timeout"
pass "a truncated model: up fails in $took s: $(grep -m1 'could not start' "$T/bad.out")"
