#!/usr/bin/env bash
# Elastic pipelines, with real processes: stages registered with a layer
# range only (no replica name) are assembled by the coordinator into
# pipelines covering [0, L); killing the first half of one pipeline and the
# second half of the other leaves two halves that re-assemble into one
# working pipeline; a new pair of stages started under load forms another
# pipeline without restarting anything, and the running requests complete.
BIN=$1
source "$(dirname "$0")/lib.sh"
# the load below is sized to overflow one pipeline's KV (8 MiB) in fp32
export SA_KV_TYPE=f32

M=$T/model
make_model "$M" 95
make_clips "$T/clips" 1
start_coordinator "$M"
start_encoder "$M" encoder0
declare -A PID
for n in a1 a2; do start_worker "$M" 0:2 "" "$n"; PID[$n]=$LAST_PID; done
for n in b1 b2; do start_worker "$M" 2: "" "$n"; PID[$n]=$LAST_PID; done
wait_ready 2 1
pipe_of() { "$BIN/sa-client" status --json --coordinator "$COORD" |
  grep -o "{[^{}]*\"node_id\":\"$1\"[^{}]*}" | grep -o '"replica":"[^"]*"' | cut -d'"' -f4; }
ready() { "$BIN/sa-client" status --json --coordinator "$COORD" | grep -o '"replicas_ready":[0-9]*' | cut -d: -f2; }
pa1=$(pipe_of a1) pb1=$(pipe_of b1) pa2=$(pipe_of a2) pb2=$(pipe_of b2)
[[ -n $pa1 && -n $pa2 && $pa1 != "$pa2" && $pb1 != "$pb2" ]] ||
  fail "two pipelines expected: a1 $pa1, a2 $pa2, b1 $pb1, b2 $pb2"
pass "4 stages without a replica name formed 2 pipelines ($pa1, $pa2)"

# kill the first half of a1's pipeline and the second half of the other one
other_b=$([[ $pb1 == "$pa1" ]] && echo b2 || echo b1)
keep_b=$([[ $other_b == b1 ]] && echo b2 || echo b1)
kill -9 "${PID[a1]}" "${PID[$other_b]}"
for _ in $(seq 200); do
  [[ $(ready) -eq 1 && -n $(pipe_of a2) && $(pipe_of a2) == "$(pipe_of $keep_b)" ]] && break
  sleep 0.05
done
[[ $(ready) -eq 1 ]] || fail "the halves did not re-assemble (ready $(ready))"
[[ $(pipe_of a2) == "$(pipe_of $keep_b)" ]] || fail "a2 and $keep_b are not one pipeline"
grep -q "dissolved" "$T/coordinator.log" || fail "no pipeline was dissolved"
"$BIN/sa-client" submit "$T/clips/clip0.wav" --max-tokens 16 --json --coordinator "$COORD" \
  >"$T/one.out" 2>&1 || fail "the re-assembled pipeline: $(cat "$T/one.out")"
pass "a1 and $other_b killed: a2 and $keep_b re-assembled into $(pipe_of a2), which serves"

# a new pair under load: more requests than one pipeline's KV holds (greedy
# chains of the random model run to max_tokens), so some wait in the queue;
# another pipeline forms from the new pair without restarting anything, the
# waiting requests run there (seen in status: the new stages hold KV), and
# every request completes
qd() { "$BIN/sa-client" status --json --coordinator "$COORD" | grep -o '"requests_queued":[0-9]*' | cut -d: -f2; }
kv_of() { "$BIN/sa-client" status --json --coordinator "$COORD" |
  grep -o "{[^{}]*\"node_id\":\"$1\"[^{}]*}" | grep -o '"kv_blocks_used":[0-9]*' | cut -d: -f2; }
pids=()
for i in 1 2 3 4 5 6 7 8; do
  "$BIN/sa-client" submit "$T/clips/clip0.wav" --max-tokens 4000 --seed "$i" --temperature 0 \
    --json --coordinator "$COORD" >"$T/load$i.out" 2>&1 &
  pids+=($!)
  PIDS+=($!)
done
for _ in $(seq 200); do [[ $(qd) -gt 0 ]] && break; sleep 0.05; done
queued=$(qd)
[[ $queued -gt 0 ]] || fail "no request waited: the load does not fill one pipeline"
t_join=$(date +%s.%N)
start_worker "$M" 0:2 "" c1 --kv-mem 8MiB
start_worker "$M" 2: "" c2 --kv-mem 8MiB
for _ in $(seq 200); do [[ $(ready) -eq 2 ]] && break; sleep 0.05; done
[[ $(ready) -eq 2 ]] || fail "the new pair did not form a pipeline"
took=0
for _ in $(seq 400); do [[ $(kv_of c2) -gt 0 ]] && { took=1; break; }; sleep 0.05; done
[[ $took -eq 1 ]] || fail "the new pipeline took none of the $queued waiting requests"
echo "the new pipeline took waiting requests $(awk "BEGIN{printf \"%.2f\", $(date +%s.%N) - $t_join}") s after its stages started"
for p in "${pids[@]}"; do wait "$p" || fail "a request under load failed"; done
pass "a new pair of stages formed pipeline $(pipe_of c1) under load and ran the $queued waiting requests; all 8 completed"

# no encoder up (encoders restarting, a restarted coordinator before they
# re-register): a request with audio waits for one instead of failing
kill -9 "${PIDS[1]}" # encoder0, started second
encs_up() { "$BIN/sa-client" status --json --coordinator "$COORD" |
  grep -o '{[^{}]*"role":"encoder"[^{}]*}' | grep -c '"healthy":true' || true; }
for _ in $(seq 400); do [[ $(encs_up) -eq 0 ]] && break; sleep 0.05; done
[[ $(encs_up) -eq 0 ]] || fail "the killed encoder is still counted healthy"
"$BIN/sa-client" submit "$T/clips/clip0.wav" --max-tokens 8 --coordinator "$COORD" \
  >"$T/wait.out" 2>"$T/wait.err" &
wp=$!
sleep 1.5
kill -0 $wp 2>/dev/null || fail "the request did not wait for an encoder: $(cat "$T/wait.err")"
start_encoder "$M" encoder1
wait $wp || fail "the request failed after an encoder came up: $(cat "$T/wait.err")"
pass "with no encoder up, a request waited for one and completed"
