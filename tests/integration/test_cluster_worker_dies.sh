#!/usr/bin/env bash
# A stage worker dies mid-request: the client gets a clear UNAVAILABLE error
# instead of a hang, the coordinator takes the replica out, and once a new
# worker for that layer range registers the cluster serves again.
# (Re-prefilling the lost sequences on a healthy replica is not done yet.)
BIN=$1
source "$(dirname "$0")/lib.sh"

M=$T/model
make_model "$M" 15
make_clips "$T/clips" 1
start_coordinator "$M" --heartbeat-timeout-ms 2000
start_encoder "$M" encoder0
start_worker "$M" 0:2 r0 s0
start_worker "$M" 2: r0 s1
victim=$LAST_PID
wait_ready 1 1

"$BIN/sa-client" submit "$T/clips/clip0.wav" --max-tokens 4000 --json --coordinator "$COORD" \
  >"$T/long.out" 2>"$T/long.err" &
cpid=$!
for _ in $(seq 200); do [[ $(kv_used_total) -gt 0 ]] && break; sleep 0.05; done
kill -9 "$victim"
rc=0
for _ in $(seq 300); do   # the client must come back within 30 s
  if ! kill -0 "$cpid" 2>/dev/null; then break; fi
  sleep 0.1
done
if kill -0 "$cpid" 2>/dev/null; then
  kill "$cpid"
  fail "the client hangs after a stage died"
fi
wait "$cpid" || rc=$?
[[ $rc -ne 0 ]] || fail "the request succeeded although its stage died"
grep -q "UNAVAILABLE" "$T/long.err" || fail "client error is not UNAVAILABLE: $(cat "$T/long.err")"
pass "client got: $(grep -o 'error: .*' "$T/long.err" | head -n 1)"

# the replica is out until a new stage for 2:L registers
for _ in $(seq 100); do
  "$BIN/sa-client" status --coordinator "$COORD" | grep -q "replicas ready: 0" && break
  sleep 0.1
done
"$BIN/sa-client" status --coordinator "$COORD" | grep -q "replicas ready: 0" ||
  fail "the replica still counts as ready with a dead stage"
start_worker "$M" 2: r0 s1b
wait_ready 1 1
"$BIN/sa-client" submit "$T/clips/clip0.wav" --max-tokens 8 --coordinator "$COORD" \
  >/dev/null 2>"$T/after.err" || fail "no service after the stage came back: $(cat "$T/after.err")"
pass "a replacement stage restored service"
