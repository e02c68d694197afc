#!/usr/bin/env bash
# A client that goes away mid-generation cancels its request, and the KV
# blocks it held are freed on every stage (seen in sa-client status).
BIN=$1
source "$(dirname "$0")/lib.sh"

M=$T/model
make_model "$M" 14
make_clips "$T/clips" 1
start_coordinator "$M"
start_encoder "$M" encoder0
start_worker "$M" 0:1 r0 s0
start_worker "$M" 1:2 r0 s1
start_worker "$M" 2: r0 s2
wait_ready 1 1
[[ $(kv_used_total) -eq 0 ]] || fail "KV in use before any request"

"$BIN/sa-client" submit "$T/clips/clip0.wav" --max-tokens 4000 --json --coordinator "$COORD" \
  >"$T/long.out" 2>&1 &
cpid=$!
seen=0
for _ in $(seq 200); do
  if [[ $(kv_used_total) -gt 0 ]]; then seen=1; break; fi
  sleep 0.05
done
[[ $seen -eq 1 ]] || fail "the request never held KV blocks"
kill -9 "$cpid"   # the client vanishes without a word
wait "$cpid" 2>/dev/null || true
freed=0
for _ in $(seq 200); do   # ZeroMQ heartbeats notice the lost peer within seconds
  if [[ $(kv_used_total) -eq 0 ]]; then freed=1; break; fi
  sleep 0.1
done
"$BIN/sa-client" status --coordinator "$COORD"
[[ $freed -eq 1 ]] || fail "KV blocks still used after the client went away"
grep -q "client went away" "$T/coordinator.log" || fail "coordinator did not log the cancel"
pass "client disconnect freed the KV blocks on all 3 stages"
