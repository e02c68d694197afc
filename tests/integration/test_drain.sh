#!/usr/bin/env bash
# Drain under load, with real processes: `sa-client drain r0` stops new work
# going to replica r0, lets its requests finish in place and reports done;
# requests sent meanwhile run on r1 only; `undrain` gives r0 work again.
# `drain --migrate` moves a running request to the other replica at once,
# and its tokens are identical to an undisturbed run of the same request.
# SIGTERM to a stage drains it first: its running request finishes there,
# then the process exits by itself; an encoder does the same.
BIN=$1
source "$(dirname "$0")/lib.sh"

M=$T/model
make_model "$M" 91
make_clips "$T/clips" 2
start_coordinator "$M"
start_encoder "$M" encoder0
ENC=${PIDS[-1]}
declare -A PID
for r in r0 r1; do
  start_worker "$M" 0:2 $r "$r-a"
  PID[$r-a]=$LAST_PID
  start_worker "$M" 2: $r "$r-b"
  PID[$r-b]=$LAST_PID
done
wait_ready 2 1
used() { # REPLICA -> KV blocks its stages hold
  "$BIN/sa-client" status --json --coordinator "$COORD" | grep -o "{[^{}]*\"replica\":\"$1\"[^{}]*}" |
    grep -o '"kv_blocks_used":[0-9]*' | cut -d: -f2 | awk '{s+=$1} END{print s+0}'
}
req() { # OUT SEED MAX
  "$BIN/sa-client" submit "$T/clips/clip0.wav" --max-tokens "$3" --seed "$2" --temperature 0.8 \
    --json --coordinator "$COORD" >"$1" 2>&1
}

# the reference: one request alone, undisturbed
req "$T/ref.out" 5 600 || fail "reference: $(tail -c 300 "$T/ref.out")"
REF=$(tokens_of "$(final_of "$T/ref.out")")
[[ $(wc -w <<<"$REF") -ge 100 ]] || fail "the reference is too short"

# --- drain without migration: r0's requests finish where they are
pids=()
for i in 1 2 3 4; do req "$T/a$i.out" $((10 + i)) 500 & pids+=($!); done
for _ in $(seq 200); do [[ $(used r0) -gt 0 && $(used r1) -gt 0 ]] && break; sleep 0.05; done
[[ $(used r0) -gt 0 ]] || fail "no request landed on r0"
SA_KEY=$KEYS/operator.key "$BIN/sa-client" drain r0 --coordinator "$COORD" >"$T/drain.out" 2>&1 &
DP=$!
# sent while r0 drains: they must all go to r1
late=()
for i in 1 2; do req "$T/late$i.out" $((20 + i)) 200 & late+=($!); done
for p in "${pids[@]}" "${late[@]}"; do wait "$p" || fail "a request failed during the drain"; done
wait "$DP" || fail "drain: $(cat "$T/drain.out")"
grep -q "drained; nothing runs there" "$T/drain.out" || fail "drain: $(cat "$T/drain.out")"
grep -q "moved off a draining replica" "$T/coordinator.log" && fail "a request moved without --migrate"
"$BIN/sa-client" status --coordinator "$COORD" | grep -q "drain" || fail "status does not show the drain"
for _ in $(seq 100); do [[ $(used r0) -eq 0 ]] && break; sleep 0.1; done
[[ $(used r0) -eq 0 ]] || fail "r0 still holds KV after the drain"
req "$T/b.out" 31 200 &
B=$!
for _ in $(seq 40); do [[ $(used r0) -gt 0 ]] && fail "new work went to the drained r0"; sleep 0.05; done
wait "$B" || fail "a request during the drain failed"
pass "drain r0: its requests finished in place, the rest ran on r1, drain reported done"
SA_KEY=$KEYS/operator.key "$BIN/sa-client" undrain r0 --coordinator "$COORD" >/dev/null || fail "undrain"

# --- drain with migration: the running request moves, tokens identical
req "$T/m.out" 5 600 &
MP=$!
on=""
for _ in $(seq 200); do
  if [[ $(used r0) -gt 0 ]]; then on=r0; break; fi
  if [[ $(used r1) -gt 0 ]]; then on=r1; break; fi
  sleep 0.02
done
[[ -n $on ]] || fail "the request never held KV"
SA_KEY=$KEYS/operator.key "$BIN/sa-client" drain "$on" --migrate --coordinator "$COORD" >"$T/mig.out" 2>&1 ||
  fail "drain --migrate: $(cat "$T/mig.out")"
wait "$MP" || fail "the migrated request failed: $(tail -c 300 "$T/m.out")"
grep -q "moved off a draining replica" "$T/coordinator.log" || fail "the request did not move"
GOT=$(tokens_of "$(final_of "$T/m.out")")
[[ "$GOT" == "$REF" ]] || fail "tokens after the move differ from the undisturbed run"
for _ in $(seq 100); do [[ $(used "$on") -eq 0 ]] && break; sleep 0.1; done
[[ $(used "$on") -eq 0 ]] || fail "$on still holds KV after the move"
pass "drain $on --migrate: the request moved and its $(wc -w <<<"$GOT") tokens equal the undisturbed run; $on holds no KV"

# --- SIGTERM to a stage: it drains (its request finishes there), then exits
SA_KEY=$KEYS/operator.key "$BIN/sa-client" undrain "$on" --coordinator "$COORD" >/dev/null || fail "undrain $on"
req "$T/t.out" 5 600 &
TP=$!
on=""
for _ in $(seq 200); do
  if [[ $(used r0) -gt 0 ]]; then on=r0; break; fi
  if [[ $(used r1) -gt 0 ]]; then on=r1; break; fi
  sleep 0.02
done
[[ -n $on ]] || fail "the request never held KV"
kill -TERM "${PID[$on-b]}"
wait "$TP" || fail "the request on the stopping stage failed: $(tail -c 300 "$T/t.out")"
[[ "$(tokens_of "$(final_of "$T/t.out")")" == "$REF" ]] || fail "tokens differ after SIGTERM"
for _ in $(seq 100); do kill -0 "${PID[$on-b]}" 2>/dev/null || break; sleep 0.1; done
kill -0 "${PID[$on-b]}" 2>/dev/null && fail "the stage did not exit after draining"
grep -q "draining (at most 30 s), then stopping" "$T/$on-b.log" || fail "the stage did not drain"
grep -q "moved off a draining replica\|failing over" <(grep -a "$(date +%Y)" "$T/coordinator.log" | tail -n 5) &&
  fail "the request moved instead of finishing in place"
pass "SIGTERM to $on-b: it drained ($(grep -o 'drained in [0-9.]* s' "$T/$on-b.log")), its request finished there (tokens equal), then it exited"

# --- SIGTERM to the encoder: it drains (nothing in flight), then exits
kill -TERM "$ENC"
for _ in $(seq 100); do kill -0 "$ENC" 2>/dev/null || break; sleep 0.1; done
kill -0 "$ENC" 2>/dev/null && fail "the encoder did not exit after SIGTERM"
grep -q "draining, then stopping" "$T/encoder0.log" || fail "the encoder did not drain first"
pass "SIGTERM to the encoder: it drained, then exited"
