#!/usr/bin/env bash
# Speculative long-CoT KV sharing (docs/architecture.md §4, docs/architecture.md §5): after a ~300-token prompt
# is forked into 8 chains, the blocks in use on every stage are the prompt's
# (shared by all 8) plus 8 private tails, not 8 prompts; a client cancel then
# frees every block on every stage.
#
# To read a stage mid-flight without depending on timing, the other stage is
# frozen (SIGSTOP): the pipeline stops, the stage read sends a fresh
# heartbeat, and the token counts streamed so far bound the tails.   usage: test_cot_kv.sh BIN_DIR
BIN=$1
source "$(dirname "$0")/lib.sh"

M=$T/model
make_model "$M" 7
L=$(grep -o '"num_hidden_layers": *[0-9]*' "$M/config.json" | grep -o '[0-9]*$')
start_coordinator "$M" --heartbeat-timeout-ms 60000
start_worker "$M" "0:$((L / 2))" r0 stage0 --kv-mem 16MiB
STAGE0_PID=$LAST_PID
start_worker "$M" "$((L / 2)):$L" r0 stage1 --kv-mem 16MiB
STAGE1_PID=$LAST_PID
wait_ready 1 0

status_json() { "$BIN/sa-client" status --json --coordinator "$COORD"; }

# ~300 prompt tokens; greedy chains of this model run long without <|EOT|>
PROMPT=$(for i in $(seq 0 99); do printf 'w%d ' "$i"; done)
"$BIN/sa-client" submit --no-audio --prompt "$PROMPT" --max-tokens 1 --json \
  --coordinator "$COORD" >"$T/probe.json" || fail "probe request failed"
PL=$(grep -o '"prompt_tokens":[0-9]*' "$T/probe.json" | tail -n 1 | cut -d: -f2)
[[ $PL -ge 280 && $PL -le 330 ]] || fail "prompt is $PL tokens, want about 300"
# prefill covers PL - 1 tokens; more blocks than that on the last stage
# (fresh from every step result) means the fork happened
PREFILL_BLOCKS=$(((PL - 1 + 15) / 16))
for _ in $(seq 100); do [[ $(kv_used_total) -eq 0 ]] && break; sleep 0.1; done

"$BIN/sa-client" submit --no-audio --prompt "$PROMPT" -n 8 --vote none --temperature 0 \
  --max-tokens 3000 --json --coordinator "$COORD" >"$T/stream.json" 2>"$T/client.err" &
CLIENT=$!

forked=0
for _ in $(seq 1000); do
  u=$(status_json | grep -o '"node_id":"stage1"[^}]*' | grep -o '"kv_blocks_used":[0-9]*' |
    cut -d: -f2)
  if [[ ${u:-0} -gt $PREFILL_BLOCKS ]]; then forked=1; break; fi
  kill -0 "$CLIENT" 2>/dev/null || break
  sleep 0.01
done
[[ $forked -eq 1 ]] || fail "never saw the forked chains on the last stage"

# check_stage NAME: the named stage's blocks, read while the other is frozen
check_stage() {
  python3 - "$T/status-$1.json" "$T/stream-$1.json" "$1" "$PL" <<'PY' || fail "KV blocks on $1"
import json, math, sys
st = json.load(open(sys.argv[1]))
ev = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
name, pl = sys.argv[3], int(sys.argv[4])
toks = [0] * 8
for e in ev:
    if e.get("type") == "delta":
        toks[e["chain"]] += 1
assert st["chains_running"] == 8, "want 8 chains running, got %d" % st["chains_running"]
w = [w for w in st["workers"] if w["node_id"] == name][0]
B = 16
used, shared = w["kv_blocks_used"], w["kv_blocks_shared"]
full, prompt_blocks = (pl - 1) // B, (pl - 1 + B - 1) // B
# each chain: its copy of the partial prompt block + its own tokens
# (+ steps in flight and detokenizer hold-back: 4 tokens of slack)
tails = sum(math.ceil(((pl - 1) % B + t + 1 + 4) / B) for t in toks)
print("%s: %d blocks used, %d shared; prompt %d tokens = %d blocks; tokens per chain %s; "
      "bound prompt + tails = %d; 8 prompts would be >= %d" %
      (name, used, shared, pl, prompt_blocks, toks, full + tails, 8 * full + 8))
assert w["sequences"] == 8, "%s holds %d sequences" % (name, w["sequences"])
assert shared == full, "%s: %d shared blocks, want the %d full prompt blocks" % (name, shared, full)
assert used >= full + 8, "%s: fewer than 8 private blocks" % name
assert used <= full + tails, "%s: %d blocks used > prompt + tails %d" % (name, used, full + tails)
assert full + tails < 8 * full + 8, "the check would not tell 8 prompts apart"
PY
}

# phase 1: freeze the last stage; stage 0 goes idle and heartbeats its state
# (every 1 s). Each freeze is kept well under the RPC layer's 5 s silence
# limit (core/rpc.h), both together too.
kill -STOP "$STAGE1_PID"
sleep 1.8
status_json >"$T/status-stage0.json"
cp "$T/stream.json" "$T/stream-stage0.json"
# phase 2: let it go, freeze stage 0 instead and read the last stage
kill -CONT "$STAGE1_PID"
kill -STOP "$STAGE0_PID"
sleep 1.8
status_json >"$T/status-stage1.json"
cp "$T/stream.json" "$T/stream-stage1.json"
kill -CONT "$STAGE0_PID"
check_stage stage0
check_stage stage1
pass "forked prompt: blocks used = the prompt once + 8 private tails on both stages"

# client cancel: SIGINT makes sa-client cancel the stream
kill -INT "$CLIENT"
wait "$CLIENT" && fail "the cancelled client exited 0"
for _ in $(seq 100); do
  js=$(status_json)
  used=$(grep -o '"kv_blocks_used":[0-9]*' <<<"$js" | cut -d: -f2 | awk '{s+=$1} END{print s+0}')
  seqs=$(grep -o '"sequences":[0-9]*' <<<"$js" | cut -d: -f2 | awk '{s+=$1} END{print s+0}')
  [[ $used -eq 0 && $seqs -eq 0 ]] && break
  sleep 0.1
done
[[ $used -eq 0 && $seqs -eq 0 ]] || fail "after the client cancel: $used blocks, $seqs sequences: $js"
grep -q '"chains_running":0' <<<"$js" || fail "chains still running after cancel: $js"
pass "client cancel freed every block on every stage"
