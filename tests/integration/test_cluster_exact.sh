#!/usr/bin/env bash
# The cluster's tokens equal single-process `sa-model generate` exactly:
# 8 concurrent requests with different clips through a P-stage pipeline,
# greedy and seeded sampling.   usage: test_cluster_exact.sh BIN_DIR STAGES
BIN=$1 STAGES=$2
source "$(dirname "$0")/lib.sh"

M=$T/model
make_model "$M" 11
make_clips "$T/clips" 8
L=$(grep -o '"num_hidden_layers": *[0-9]*' "$M/config.json" | grep -o '[0-9]*$')
start_coordinator "$M"
start_encoder "$M" encoder0
at=0
for s in $(seq 0 $((STAGES - 1))); do
  next=$(((s + 1) * L / STAGES))
  start_worker "$M" "$at:$next" r0 "stage$s"
  at=$next
done
wait_ready 1 1

run_case() { # name, sampling args...
  local name=$1; shift
  local pids=() i
  for i in $(seq 0 7); do
    "$BIN/sa-client" submit "$T/clips/clip$i.wav" --prompt "What do you hear in clip $i?" \
      --max-tokens 24 --seed $((100 + i)) "$@" --json --coordinator "$COORD" \
      >"$T/out-$name-$i.json" 2>"$T/err-$name-$i.txt" &
    pids+=($!)
  done
  for i in $(seq 0 7); do wait "${pids[$i]}" || fail "$name: client $i failed: $(cat "$T/err-$name-$i.txt")"; done
  for i in $(seq 0 7); do
    local got want
    got=$(tokens_of "$(tail -n 1 "$T/out-$name-$i.json")")
    want=$("$BIN/sa-model" generate --model "$M" --audio "$T/clips/clip$i.wav" \
      --prompt "What do you hear in clip $i?" --max-tokens 24 --seed $((100 + i)) "$@" \
      --ids --threads 1 2>/dev/null | grep -a '^ids:' | sed 's/^ids: *//')
    [[ -n $want ]] || fail "$name: sa-model generate gave no ids for clip $i"
    echo "clip $i: $got" ; [[ "$got" == "$want" ]] || fail "$name clip $i: cluster [$got] != generate [$want]"
  done
  pass "$name: 8 concurrent requests over $STAGES stages equal sa-model generate"
}

run_case greedy --temperature 0
run_case sampled --temperature 0.9 --top-p 0.9 --top-k 50 --repetition-penalty 1.1
