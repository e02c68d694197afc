#!/usr/bin/env bash
# Membership that heals, with real processes: a stage killed and restarted
# 300 times (more than the registry's 256 entries) under new node ids (as a
# crashed process restarts) takes its dead entry's place each time, so the
# registry stays at the cluster's live size
# (never "registry full"), and after the last restart the replica serves.
# A worker whose connection closes is marked down at once (not after the
# heartbeat timeout).
BIN=$1
source "$(dirname "$0")/lib.sh"

M=$T/model
make_model "$M" 71
make_clips "$T/clips" 1
start_coordinator "$M" --forget-after-ms 3000
start_encoder "$M" encoder0
start_worker "$M" 0:1 r0 s0
workers() { "$BIN/sa-client" status --json --coordinator "$COORD" | grep -o '"node_id"' | wc -l; }
healthy_stage1() {
  "$BIN/sa-client" status --json --coordinator "$COORD" |
    grep -o '{[^{}]*"first_layer":1[^{}]*}' | grep -c '"healthy":true' || true
}
for i in $(seq 300); do
  # a fresh process each time: the default node id (host and pid) is new
  # shellcheck disable=SC2046
  "$BIN/sa-worker" --model "$M" --layers 1: --replica r0 $(sec stage) --coordinator "$COORD" \
    --threads 1 --kv-mem 8MiB >>"$T/s1.log" 2>&1 &
  pid=$!
  PIDS+=($pid)
  for _ in $(seq 200); do [[ $(healthy_stage1) -ge 1 ]] && break; sleep 0.02; done
  [[ $(healthy_stage1) -ge 1 ]] || fail "restart $i did not register: $(tail -n 3 "$T/s1.log")"
  if [[ $i -lt 300 ]]; then
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
    for _ in $(seq 100); do [[ $(healthy_stage1) -eq 0 ]] && break; sleep 0.02; done
    [[ $(healthy_stage1) -eq 0 ]] || fail "restart $i: the dead stage was not marked down"
  fi
done
grep -q "registry full" "$T/coordinator.log" && fail "the registry filled up"
n=$(grep -c "takes the place of" "$T/coordinator.log" || true)
((n >= 270)) || fail "only $n restarts took their dead entry's place"
# entries left down are forgotten; the registry is the live cluster
for _ in $(seq 100); do [[ $(workers) -eq 3 ]] && break; sleep 0.1; done
[[ $(workers) -eq 3 ]] || fail "registry holds $(workers) entries for 3 live processes"
pass "300 stage restarts (more than the registry's 256 entries): $n took their dead entry's place; the registry holds the 3 live processes"
wait_ready 1 1
"$BIN/sa-client" submit "$T/clips/clip0.wav" --max-tokens 8 --json --coordinator "$COORD" \
  >"$T/ok.out" 2>&1 || fail "no service after the restarts: $(cat "$T/ok.out")"
pass "the replica serves after the last restart"
