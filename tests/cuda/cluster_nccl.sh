#!/usr/bin/env bash
# The NCCL link between co-located CUDA stages, end to end (needs 2 GPUs):
# a 2-stage pipeline on cuda:0 -> cuda:1 must say the link came up and give
# the same tokens as the same pipeline with --no-nccl (activations over
# ZeroMQ), request after request (one at a time, so batches are the same).
# Exit 77 (skipped) with fewer than 2 GPUs.
#   usage: tests/cuda/cluster_nccl.sh BIN_DIR
BIN=$1
n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [[ ${n:-0} -lt 2 ]]; then echo "skipped: needs 2 GPUs (found ${n:-0})"; exit 77; fi
source "$(dirname "$0")/../integration/lib.sh"

M=$T/model
make_model "$M" 21
make_clips "$T/clips" 3
L=$(grep -o '"num_hidden_layers": *[0-9]*' "$M/config.json" | grep -o '[0-9]*$')
half=$((L / 2))

run() { # tag, extra worker args...
  local tag=$1; shift
  start_coordinator "$M"
  start_encoder "$M" "encoder-$tag"
  start_worker "$M" "0:$half" r0 "s0-$tag" --device cuda:0 "$@"
  start_worker "$M" "$half:" r0 "s1-$tag" --device cuda:1 "$@"
  wait_ready 1 1
  for i in 0 1 2; do
    "$BIN/sa-client" submit "$T/clips/clip$i.wav" --max-tokens 24 --temperature 0 --json \
      --coordinator "$COORD" | tail -n 1 >"$T/$tag-$i.json" || fail "$tag: request $i failed"
  done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
}

run nccl
grep -q "NCCL link to .* is up" "$T/s0-nccl.log" || fail "stage 0 never brought its NCCL link up"
grep -q "NCCL link from .* is up" "$T/s1-nccl.log" || fail "stage 1 never joined the NCCL link"
run zmq --no-nccl
for i in 0 1 2; do
  a=$(tokens_of "$(cat "$T/nccl-$i.json")")
  b=$(tokens_of "$(cat "$T/zmq-$i.json")")
  [[ -n $a && "$a" == "$b" ]] || fail "clip $i: NCCL [$a] != ZeroMQ [$b]"
  echo "clip $i: $a"
done
pass "2 CUDA stages: NCCL link up, tokens equal the ZeroMQ pipeline's"
