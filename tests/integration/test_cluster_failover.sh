#!/usr/bin/env bash
# A stage dies mid-request and nothing is lost (docs/faults.md): the coordinator
# re-prefills the request (prompt + tokens so far) on a healthy replica and
# the client's stream goes on without a gap or a duplicate — its tokens equal
# single-process `sa-model generate` exactly. Then with a single replica: the
# request waits until a replacement stage registers, and completes exactly.
BIN=$1
source "$(dirname "$0")/lib.sh"

M=$T/model
make_model "$M" 15
make_clips "$T/clips" 2
start_coordinator "$M" --heartbeat-timeout-ms 3000
start_encoder "$M" encoder0
declare -A PID_OF
for r in r0 r1; do
  start_worker "$M" 0:2 $r "$r-a"; PID_OF[$r-a]=$LAST_PID
  start_worker "$M" 2: $r "$r-b"; PID_OF[$r-b]=$LAST_PID
done
wait_ready 2 1

want_tokens() { # clip seed max
  "$BIN/sa-model" generate --model "$M" --audio "$1" --max-tokens "$3" --seed "$2" \
    --temperature 0 --ids --threads 1 2>/dev/null | grep -a '^ids:' | sed 's/^ids: *//' || true
}
# waits until no healthy stage reports KV in use (stale figures of the last
# request would point at the wrong stage)
kv_idle() {
  for _ in $(seq 100); do
    n=$("$BIN/sa-client" status --json --coordinator "$COORD" |
      grep -o '{[^{}]*"role":"stage"[^{}]*}' | grep '"healthy":true' |
      grep -o '"kv_blocks_used":[0-9]*' | cut -d: -f2 | awk '{s+=$1} END{print s+0}' || true)
    [[ $n -eq 0 ]] && return 0
    sleep 0.1
  done
  fail "KV still in use between requests"
}
# the stage of the busy replica's last layers: the one whose KV is in use
busy_last_stage() {
  "$BIN/sa-client" status --json --coordinator "$COORD" |
    grep -o '{[^{}]*"role":"stage"[^{}]*}' | grep '"healthy":true' | grep -v '"kv_blocks_used":0,' |
    grep '"last_layer":3' | grep -o '"node_id":"[^"]*"' | head -n 1 | cut -d'"' -f4
}

# --- 1: two replicas, the serving one loses a stage ------------------------
# greedy: the tiny random model never emits <|EOT|>, so it runs to max-tokens
"$BIN/sa-client" submit "$T/clips/clip0.wav" --max-tokens 3000 --seed 21 --temperature 0 --json --coordinator "$COORD" >"$T/a.out" 2>"$T/a.err" &
cpid=$!
victim=""
for _ in $(seq 200); do victim=$(busy_last_stage || true); [[ -n $victim ]] && break; sleep 0.02; done
[[ -n $victim ]] || fail "could not see which replica serves the request"
kill -9 "${PID_OF[$victim]}"
kill -0 "$cpid" 2>/dev/null || fail "the request ended before the stage was killed (too fast)"
wait "$cpid" || fail "the request failed although another replica was healthy: $(cat "$T/a.err")"
got=$(tokens_of "$(final_of "$T/a.out")")
want=$(want_tokens "$T/clips/clip0.wav" 21 3000)
[[ -n $want && "$got" == "$want" ]] || fail "after failover the tokens differ from generate"
grep -q "failing over" "$T/coordinator.log" || fail "the coordinator did not fail over"
pass "stage $victim died mid-request; re-prefilled on the other replica; $(wc -w <<<"$got") tokens equal sa-model generate"

kv_idle

# --- 2: one replica left, it loses a stage; a replacement arrives later ----
"$BIN/sa-client" submit "$T/clips/clip1.wav" --max-tokens 3000 --seed 22 --temperature 0 --json --coordinator "$COORD" >"$T/b.out" 2>"$T/b.err" &
cpid=$!
victim=""
for _ in $(seq 200); do victim=$(busy_last_stage || true); [[ -n $victim ]] && break; sleep 0.02; done
[[ -n $victim ]] || fail "could not see the serving stage"
kill -9 "${PID_OF[$victim]}"
sleep 3
kill -0 "$cpid" 2>/dev/null || fail "the request ended although a replacement may come: $(cat "$T/b.err")"
rep=${victim%-b}
start_worker "$M" 2: "$rep" "$rep-b2"
PID_OF[$rep-b2]=$LAST_PID
wait "$cpid" || fail "the request failed after the replacement came: $(cat "$T/b.err")"
got=$(tokens_of "$(final_of "$T/b.out")")
want=$(want_tokens "$T/clips/clip1.wav" 22 3000)
[[ -n $want && "$got" == "$want" ]] || fail "after the replacement the tokens differ from generate"
pass "the last replica lost a stage; the request waited for a replacement and completed exactly"

# --- 3: four chains (forked prompt) lose their stage; each chain replays ----
start_worker "$M" 0:2 r2 r2-a; PID_OF[r2-a]=$LAST_PID
start_worker "$M" 2: r2 r2-b; PID_OF[r2-b]=$LAST_PID
wait_ready 2 1
kv_idle
"$BIN/sa-client" submit "$T/clips/clip0.wav" -n 4 --vote none --max-tokens 2500 --seed 23 \
  --temperature 0.7 --top-k 3 --json --coordinator "$COORD" >"$T/c.out" 2>"$T/c.err" &
cpid=$!
victim=""
for _ in $(seq 200); do victim=$(busy_last_stage || true); [[ -n $victim ]] && break; sleep 0.02; done
[[ -n $victim ]] || fail "could not see the serving stage (n = 4)"
kill -9 "${PID_OF[$victim]}"
kill -0 "$cpid" 2>/dev/null || fail "the 4-chain request ended before the stage was killed"
wait "$cpid" || fail "the 4-chain request failed: $(cat "$T/c.err")"
final=$(final_of "$T/c.out")
[[ -n $final ]] || fail "no final result from the 4-chain request; its last lines: $(tail -n 3 "$T/c.out" | cut -c1-300)"
for i in 0 1 2 3; do
  got=$(chain_tokens "$final" $i)
  [[ -n $got ]] || fail "no tokens of chain $i in the final result: ${final:0:600}"
  want=$("$BIN/sa-model" generate --model "$M" --audio "$T/clips/clip0.wav" --max-tokens 2500 \
    --seed 23 --chain $i --temperature 0.7 --top-k 3 --ids --threads 1 2>/dev/null |
    grep -a '^ids:' | sed 's/^ids: *//' || true)
  [[ -n $want ]] || fail "sa-model generate --chain $i gave no ids"
  [[ "$got" == "$want" ]] || fail "chain $i differs from generate --chain $i after failover"
done
pass "4 forked chains lost their stage mid-generation; each replayed and equals sa-model generate --chain i"
