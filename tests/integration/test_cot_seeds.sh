#!/usr/bin/env bash
# Speculative long-CoT (docs/architecture.md §5, docs/faults.md): chain i of an n = 8 request emits
# exactly the tokens of an independent n = 1 request with chain i's seed,
# over a 2-stage pipeline with sampling.   usage: test_cot_seeds.sh BIN_DIR
BIN=$1
source "$(dirname "$0")/lib.sh"

M=$T/model
make_model "$M" 21
L=$(grep -o '"num_hidden_layers": *[0-9]*' "$M/config.json" | grep -o '[0-9]*$')
start_coordinator "$M"
start_worker "$M" "0:$((L / 2))" r0 stage0
start_worker "$M" "$((L / 2)):$L" r0 stage1
wait_ready 1 0

SAMPLING=(--temperature 0.9 --top-p 0.95 --max-tokens 40)
PROMPT="Think step by step: which sound is louder, a whisper or a drum?"
"$BIN/sa-client" submit --no-audio --prompt "$PROMPT" -n 8 --vote none --seed 1234 \
  "${SAMPLING[@]}" --json --coordinator "$COORD" >"$T/n8.json" 2>"$T/n8.err" ||
  fail "n = 8 request failed: $(cat "$T/n8.err")"
tail -n 1 "$T/n8.json" >"$T/final.json"

# seeds and token lists per chain, one line each: "SEED TOK TOK ..."
python3 - "$T/final.json" >"$T/chains.txt" <<'PY' || fail "bad final result"
import json, sys
f = json.load(open(sys.argv[1]))
assert f["type"] == "final", f
ch = sorted(f["chains"], key=lambda c: c["chain"])
assert [c["chain"] for c in ch] == list(range(8)), "want chains 0..7"
for c in ch:
    assert c["finish_reason"] in ("eot", "length"), c["finish_reason"]
    assert len(c["tokens"]) > 0
    print(c["seed"], " ".join(map(str, c["tokens"])))
PY
[[ $(cut -d' ' -f1 "$T/chains.txt" | sort -u | wc -l) -eq 8 ]] || fail "chain seeds are not distinct"
[[ $(cut -d' ' -f2- "$T/chains.txt" | sort -u | wc -l) -ge 6 ]] ||
  fail "chains sampled (nearly) the same tokens: the per-chain RNG streams are not used"

i=0
while read -r seed toks; do
  "$BIN/sa-client" submit --no-audio --prompt "$PROMPT" -n 1 --seed "$seed" "${SAMPLING[@]}" \
    --json --coordinator "$COORD" >"$T/one-$i.json" 2>"$T/one-$i.err" ||
    fail "n = 1 request with seed $seed failed: $(cat "$T/one-$i.err")"
  got=$(tokens_of "$(tail -n 1 "$T/one-$i.json")")
  [[ "$got" == "$toks" ]] || fail "chain $i (seed $seed): n=8 gave [$toks], n=1 gave [$got]"
  i=$((i + 1))
done <"$T/chains.txt"
[[ $i -eq 8 ]] || fail "checked $i chains, want 8"
pass "8 chains of one request equal 8 independent requests with the chains' seeds (2 stages)"
