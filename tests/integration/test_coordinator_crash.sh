#!/usr/bin/env bash
# Coordinator crash recovery with nothing lost (issue #16): kill -9 the
# coordinator (--state DIR) while 8 streaming requests run (2 of them with
# n=4); start it again on the same state dir and endpoint. Every request
# resumes by re-prefill and completes with the tokens of a crash-free run
# (the reference below, same seeds), every client's stream resumes from the
# bytes it held (the text it printed equals the crash-free run's: no gap, no
# duplicate), and no KV block is left used on any stage. Then a torn and a
# corrupt tail: bytes appended to the journal after a kill are dropped with
# a warning, and the request before them still completes.
BIN=$1
source "$(dirname "$0")/lib.sh"

M=$T/model
make_model "$M" 67
make_clips "$T/clips" 4
STATE=$T/state
start_coordinator "$M" --state "$STATE"
CPID=${PIDS[0]}
start_encoder "$M" encoder0
start_worker "$M" 0:1 r0 s0 --kv-mem 32MiB
start_worker "$M" 1: r0 s1 --kv-mem 32MiB
wait_ready 1 1

# run_requests PREFIX: the 8 requests in the background; pids in RUN_PIDS
run_requests() {
  RUN_PIDS=()
  local i args
  for i in 0 1 2 3 4 5 6 7; do
    # the tiny random model: greedy chains loop to max_tokens; sampled ones
    # (top-k 8) run long too, through the sampler and its RNG keys
    args=(-n 1 --max-tokens $((1200 + 100 * i)) --temperature 0)
    [[ $i -eq 2 || $i -eq 5 ]] && args=(-n 4 --max-tokens 2000 --temperature 0.9 --top-k 8)
    "$BIN/sa-client" submit "$T/clips/clip$((i % 4)).wav" --request-id "$1-$i" "${args[@]}" \
      --vote none --seed $((11 + i)) --json --coordinator "$COORD" --timeout 300 \
      >"$T/$1-$i.out" 2>"$T/$1-$i.err" &
    RUN_PIDS+=($!)
    PIDS+=($!)
  done
}

# streamed FILE CHAIN -> the text of the chain's deltas, concatenated (hex)
streamed() {
  python3 - "$1" "$2" <<'EOF'
import json, sys
out = []
for line in open(sys.argv[1], encoding="utf-8", errors="surrogateescape"):
    ev = json.loads(line)
    if ev.get("type") == "delta" and ev["chain"] == int(sys.argv[2]):
        out.append(ev["text"])
print("".join(out).encode("utf-8", "surrogateescape").hex())
EOF
}

run_requests ref
for p in "${RUN_PIDS[@]}"; do wait "$p" || fail "a reference request failed"; done
pass "8 reference requests done without a crash"

run_requests crash
# kill once every client streams
for _ in $(seq 600); do
  ok=1
  for i in 0 1 2 3 4 5 6 7; do
    [[ $(grep -c '"type":"delta"' "$T/crash-$i.out" 2>/dev/null) -ge 3 ]] || ok=0
  done
  [[ $ok -eq 1 ]] && break
  sleep 0.05
done
[[ $ok -eq 1 ]] || fail "the requests did not all stream"
for i in 0 1 2 3 4 5 6 7; do
  [[ -z $(final_of "$T/crash-$i.out") ]] || fail "crash-$i ended before the kill; lengthen it"
done
kill -9 "$CPID"
t_kill=$(date +%s.%N)
declare -A SIZE_AT_KILL
for i in 0 1 2 3 4 5 6 7; do SIZE_AT_KILL[$i]=$(stat -c %s "$T/crash-$i.out"); done
EP=$(cat "$T/coord.ep")
# shellcheck disable=SC2046
"$BIN/sa-coordinator" --model "$M" --listen "$EP" $(sec coordinator) --state "$STATE" \
  >"$T/coordinator2.log" 2>&1 &
CPID=$!
PIDS+=($CPID)
# the first byte any client receives after the restart
t_first=
for _ in $(seq 1200); do
  for i in 0 1 2 3 4 5 6 7; do
    if [[ $(stat -c %s "$T/crash-$i.out") -gt ${SIZE_AT_KILL[$i]} ]]; then
      t_first=$(date +%s.%N)
      break 2
    fi
  done
  sleep 0.02
done
[[ -n $t_first ]] || fail "no client received anything after the restart"
for i in 0 1 2 3 4 5 6 7; do
  wait "${RUN_PIDS[$i]}" || fail "crash-$i failed after the restart: $(tail -n 3 "$T/crash-$i.err")"
done
# the first request whose chains were all re-prefilled (its next step
# decodes a new token), from the restarted coordinator's log
t_dec=$(python3 -c 'import datetime, sys
for line in open(sys.argv[1]):
    if "decoding resumes" in line:
        print(datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp())
        break' "$T/coordinator2.log")
[[ -n $t_dec ]] || fail "no request re-prefilled after the restart"
echo "recovery: $(awk "BEGIN{printf \"%.2f\", $t_first - $t_kill}") s from kill -9 to the first byte at a client (text the journal held), $(awk "BEGIN{printf \"%.2f\", $t_dec - $t_kill}") s to the first request decoding again"
grep -q "resumes from the journal" "$T/coordinator2.log" || fail "nothing resumed from the journal"
grep -q "resuming request" "$T/crash-0.err" || fail "client crash-0 did not resume its stream"

chains_checked=0
for i in 0 1 2 3 4 5 6 7; do
  ref=$(final_of "$T/ref-$i.out")
  got=$(final_of "$T/crash-$i.out")
  [[ -n $got ]] || fail "crash-$i: no final result"
  n=1
  [[ $i -eq 2 || $i -eq 5 ]] && n=4
  for c in $(seq 0 $((n - 1))); do
    a=$(chain_tokens "$ref" "$c")
    b=$(chain_tokens "$got" "$c")
    [[ -n $a && $a == "$b" ]] || fail "request $i chain $c: tokens differ from the crash-free run
  ref:   $a
  crash: $b"
    [[ $(streamed "$T/ref-$i.out" "$c") == $(streamed "$T/crash-$i.out" "$c") ]] ||
      fail "request $i chain $c: the streamed text differs from the crash-free run (gap or duplicate)"
    chains_checked=$((chains_checked + 1))
  done
done
pass "kill -9 under 8 streaming requests: all completed, $chains_checked chains token-identical, every stream without gap or duplicate"

for _ in $(seq 100); do [[ $(kv_used_total) -eq 0 ]] && break; sleep 0.1; done
[[ $(kv_used_total) -eq 0 ]] || fail "KV still used once the resumed requests finished: $(kv_used_total)"
pass "no KV block used on any stage once the resumed requests finished"

# a torn tail (half a record) and a corrupt one (a record whose checksum
# fails): each dropped with a warning, the request journaled before it kept
for tail in torn corrupt; do
  "$BIN/sa-client" submit "$T/clips/clip0.wav" --request-id "$tail-0" -n 1 --vote none \
    --max-tokens 1200 --temperature 0 --seed 11 --json --coordinator "$COORD" --timeout 300 \
    >"$T/$tail.out" 2>"$T/$tail.err" &
  cpid=$!
  PIDS+=($cpid)
  for _ in $(seq 600); do
    [[ $(grep -c '"type":"delta"' "$T/$tail.out" 2>/dev/null) -ge 3 ]] && break
    sleep 0.05
  done
  kill -9 "$CPID"
  size=$(stat -c %s "$STATE/journal")
  if [[ $tail == torn ]]; then # a record header promising 4000 bytes, 10 of them written
    printf '\xa0\x0f\x00\x00\x12\x34\x56\x78\x03abcdefghi' >>"$STATE/journal"
  else # a whole record with a wrong checksum
    printf '\x05\x00\x00\x00\x00\x00\x00\x00\x03abcd' >>"$STATE/journal"
  fi
  # shellcheck disable=SC2046
  "$BIN/sa-coordinator" --model "$M" --listen "$EP" $(sec coordinator) --state "$STATE" \
    >"$T/coordinator-$tail.log" 2>&1 &
  CPID=$!
  PIDS+=($CPID)
  wait "$cpid" || fail "$tail-0 failed after the restart: $(tail -n 3 "$T/$tail.err")"
  grep -q "bytes are dropped" "$T/coordinator-$tail.log" ||
    fail "no warning about the $tail tail: $(grep -i journal "$T/coordinator-$tail.log")"
  [[ $(chain_tokens "$(final_of "$T/$tail.out")" 0) == $(chain_tokens "$(final_of "$T/ref-0.out")" 0) ]] ||
    fail "$tail-0: tokens differ from the crash-free run"
  [[ $(streamed "$T/$tail.out" 0) == $(streamed "$T/ref-0.out" 0) ]] ||
    fail "$tail-0: the streamed text differs from the crash-free run"
  [[ $(stat -c %s "$STATE/journal") -gt 0 ]] || fail "the journal is gone"
  pass "a $tail journal tail after $size good bytes: dropped with a warning; the request before it completed identically"
done

# an ended request is kept for a resume: asking again by id gives its result
"$BIN/sa-client" submit "$T/clips/clip0.wav" --request-id crash-3 --json --coordinator "$COORD" \
  >"$T/again.out" 2>"$T/again.err" || fail "resuming an ended request failed: $(cat "$T/again.err")"
[[ $(chain_tokens "$(final_of "$T/again.out")" 0) == $(chain_tokens "$(final_of "$T/ref-3.out")" 0) ]] ||
  fail "the kept result of crash-3 differs"
[[ $(streamed "$T/again.out" 0) == $(streamed "$T/ref-3.out" 0) ]] ||
  fail "the kept text of crash-3 differs"
pass "a request that ended while its client was away: its whole stream and result are given again by id"

# ended requests kept for a resume hold no KV and are not running: they do
# not count against --max-requests (a restart on a busy journal restores
# hundreds of them; new requests must still get in)
kill -9 "$CPID"
# shellcheck disable=SC2046
"$BIN/sa-coordinator" --model "$M" --listen "$EP" $(sec coordinator) --state "$STATE" \
  --max-requests 1 >"$T/coordinator-max1.log" 2>&1 &
CPID=$!
PIDS+=($CPID)
wait_ready 1 1
kept=$(grep -o '[0-9]* ended kept' "$T/coordinator-max1.log" | head -n 1 | grep -o '^[0-9]*' || true)
[[ ${kept:-0} -ge 2 ]] || fail "the journal restored ${kept:-0} ended requests, want 2 or more"
"$BIN/sa-client" submit "$T/clips/clip0.wav" --max-tokens 4 --json --coordinator "$COORD" \
  >"$T/max1.out" 2>"$T/max1.err" || fail "a new request was refused: $(cat "$T/max1.err")"
pass "with $kept ended requests kept and --max-requests 1, a new request still runs"
