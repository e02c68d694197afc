#!/usr/bin/env bash
# Two replicas of two stages and two encoders serve at once: concurrent
# requests land on both replicas (seen in status) and all succeed. Then the
# first stage of one replica dies (kill -9) just before requests arrive:
# whether a dispatch finds it unreachable or a step fails, every request
# moves to the other replica and completes.
BIN=$1
source "$(dirname "$0")/lib.sh"

M=$T/model
make_model "$M" 12
make_clips "$T/clips" 4
start_coordinator "$M"
start_encoder "$M" encoder0
start_encoder "$M" encoder1
for r in r0 r1; do
  start_worker "$M" 0:2 $r "$r-a"
  [[ $r == r0 ]] && R0A=$LAST_PID
  start_worker "$M" 2: $r "$r-b"
done
wait_ready 2 2

# 8 requests at once, long enough that both replicas are busy together
pids=()
for i in $(seq 0 7); do
  "$BIN/sa-client" submit "$T/clips/clip$((i % 4)).wav" --max-tokens 48 --json \
    --coordinator "$COORD" >"$T/out$i.json" 2>"$T/err$i.txt" &
  pids+=($!)
done
busy0=0 busy1=0
for _ in $(seq 50); do
  js=$("$BIN/sa-client" status --json --coordinator "$COORD")
  u0=$(grep -o '{[^{}]*"replica":"r0"[^{}]*}' <<<"$js" | grep -o '"kv_blocks_used":[0-9]*' | cut -d: -f2 | awk '{s+=$1} END{print s+0}')
  u1=$(grep -o '{[^{}]*"replica":"r1"[^{}]*}' <<<"$js" | grep -o '"kv_blocks_used":[0-9]*' | cut -d: -f2 | awk '{s+=$1} END{print s+0}')
  [[ $u0 -gt 0 ]] && busy0=1
  [[ $u1 -gt 0 ]] && busy1=1
  [[ $busy0 -eq 1 && $busy1 -eq 1 ]] && break
  sleep 0.05
done
for i in $(seq 0 7); do wait "${pids[$i]}" || fail "request $i failed: $(cat "$T/err$i.txt")"; done
for i in $(seq 0 7); do
  n=$(tokens_of "$(tail -n 1 "$T/out$i.json")" | wc -w)
  [[ $n -ge 1 ]] || fail "request $i produced no tokens"
done
# both replicas did work: every stage reports steps in its log or KV use was seen
[[ $busy0 -eq 1 && $busy1 -eq 1 ]] || fail "expected both replicas busy at once (r0 $busy0, r1 $busy1)"
pass "2 replicas x 2 stages served 8 concurrent requests, both busy at once"

# the first stage of r0 dies; requests sent right away must all complete
kill -9 "$R0A"
pids=()
for i in $(seq 0 5); do
  "$BIN/sa-client" submit "$T/clips/clip$((i % 4)).wav" --max-tokens 24 --json \
    --coordinator "$COORD" >"$T/late$i.json" 2>"$T/lerr$i.txt" &
  pids+=($!)
done
for i in $(seq 0 5); do wait "${pids[$i]}" || fail "request $i after the kill: $(cat "$T/lerr$i.txt")"; done
moved=$(grep -c "failing over\|could not reach the first stage" "$T/coordinator.log" || true)
pass "r0's first stage killed: 6 requests completed on r1 ($moved failover log lines)"
