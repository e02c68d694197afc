#!/usr/bin/env bash
# Speculative long-CoT voting end to end (docs/architecture.md §5): early consensus cancels
# the losing chains (steps of theirs may be in flight) and frees every
# block on every stage; majority stops once 4 of 8 agree, window:2 once 2 in
# a row do; --vote none runs every chain. Greedy chains with a think budget
# all give the same answer, so the outcome is known without looking at our
# own vote.   usage: test_cot_vote.sh BIN_DIR
BIN=$1
source "$(dirname "$0")/lib.sh"

M=$T/model
make_model "$M" 7
L=$(grep -o '"num_hidden_layers": *[0-9]*' "$M/config.json" | grep -o '[0-9]*$')
start_coordinator "$M"
start_worker "$M" "0:$((L / 2))" r0 stage0
start_worker "$M" "$((L / 2)):$L" r0 stage1
wait_ready 1 0

PROMPT="Which animal barks? Answer with one word."
MAXTOK=16

# run_vote NAME WANT_FINISHED VOTE_ARGS...: n = 8, every chain answers alike
run_vote() {
  local name=$1 want=$2; shift 2
  "$BIN/sa-client" submit --no-audio --prompt "$PROMPT" -n 8 --temperature 0 \
    --think-budget 4 --max-tokens $MAXTOK "$@" --json --coordinator "$COORD" \
    >"$T/$name.json" 2>"$T/$name.err" || fail "$name: request failed: $(cat "$T/$name.err")"
  tail -n 1 "$T/$name.json" >"$T/$name.final"
  python3 - "$T/$name.final" "$want" "$MAXTOK" <<'PY' || fail "$name: vote result"
import json, sys
f = json.load(open(sys.argv[1]))
want, maxtok = int(sys.argv[2]), int(sys.argv[3])
ch = f["chains"]
done = [c for c in ch if c["finish_reason"] in ("eot", "length")]
cancelled = [c for c in ch if c["finish_reason"] == "cancelled"]
print("finished %d, cancelled %d, votes %d, answer %r, saved %d" %
      (len(done), len(cancelled), f["votes"], f["answer"], f["tokens_saved"]))
assert len(done) + len(cancelled) == 8, [c["finish_reason"] for c in ch]
assert len(done) == want, "want %d chains to finish, got %d" % (want, len(done))
# greedy: all finished chains answered the same, and it is not empty
answers = {c["normalized_answer"] for c in done}
assert len(answers) == 1 and "" not in answers, answers
if want < 8:
    assert f["votes"] == want, f["votes"]
    assert f["answer"] == done[0]["answer"], (f["answer"], done[0]["answer"])
    assert f["tokens_saved"] == sum(maxtok - len(c["tokens"]) for c in cancelled) > 0
    assert all(c["normalized_answer"] == "" for c in cancelled)
else:
    assert f["tokens_saved"] == 0
PY
  for _ in $(seq 100); do
    js=$("$BIN/sa-client" status --json --coordinator "$COORD")
    used=$(grep -o '"kv_blocks_used":[0-9]*' <<<"$js" | cut -d: -f2 | awk '{s+=$1} END{print s+0}')
    seqs=$(grep -o '"sequences":[0-9]*' <<<"$js" | cut -d: -f2 | awk '{s+=$1} END{print s+0}')
    [[ $used -eq 0 && $seqs -eq 0 ]] && break
    sleep 0.1
  done
  [[ $used -eq 0 && $seqs -eq 0 ]] || fail "$name: $used KV blocks, $seqs sequences left: $js"
  pass "$name: $want of 8 chains ran to the end; every block on every stage freed"
}

run_vote majority 4 --vote majority
run_vote window2 2 --vote window:2
run_vote window3 3 --vote window:3
run_vote none 8 --vote none
