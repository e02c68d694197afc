#!/usr/bin/env bash
# The think budget holds to the token (docs/architecture.md §5): with --think-budget B each
# chain that does not close </think> itself (the tiny random model samples it
# only by chance) reasons exactly B tokens and its token B+1 is </think> (the id comes from the
# model's tokenizer via sa-model tokenize, not from the cluster); a chain
# that emits <|EOT|> before the budget stops there.
#   usage: test_cot_think_budget.sh BIN_DIR
BIN=$1
source "$(dirname "$0")/lib.sh"

M=$T/model
make_model "$M" 31
L=$(grep -o '"num_hidden_layers": *[0-9]*' "$M/config.json" | grep -o '[0-9]*$')
start_coordinator "$M"
start_worker "$M" "0:$((L / 2))" r0 stage0
start_worker "$M" "$((L / 2)):$L" r0 stage1
wait_ready 1 0

THINK_END=$("$BIN/sa-model" tokenize --model "$M" --text "</think>")
EOT=$("$BIN/sa-model" tokenize --model "$M" --text "<|EOT|>")
[[ $THINK_END =~ ^[0-9]+$ && $EOT =~ ^[0-9]+$ ]] || fail "special ids: '$THINK_END' '$EOT'"

for budget in 1 7 20; do
  "$BIN/sa-client" submit --no-audio --prompt "Think, then answer: what is loud?" -n 8 \
    --vote none --temperature 0.9 --seed $((budget * 13)) --think-budget "$budget" \
    --max-tokens 40 --json --coordinator "$COORD" >"$T/b$budget.json" 2>"$T/b$budget.err" ||
    fail "budget $budget: request failed: $(cat "$T/b$budget.err")"
  tail -n 1 "$T/b$budget.json" >"$T/b$budget.final"
  python3 - "$T/b$budget.final" "$budget" "$THINK_END" "$EOT" <<'PY' || fail "budget $budget"
import json, sys
f = json.load(open(sys.argv[1]))
budget, think_end, eot = map(int, sys.argv[2:5])
reached = 0
for c in f["chains"]:
    t = c["tokens"]
    if think_end in t:
        # the first </think> closes the reasoning: forced right after the
        # budget, or earlier if the model sampled it (rare, allowed)
        k = t.index(think_end)
        assert k <= budget, "chain %d: </think> at token %d, budget %d" % (c["chain"], k + 1, budget)
        assert c["reasoning_tokens"] == k, (c["chain"], c["reasoning_tokens"], k)
        n_answer = len(t) - k - 1 - (1 if t[-1] == eot else 0)
        assert c["answer_tokens"] == n_answer, (c["chain"], c["answer_tokens"], n_answer)
        assert eot not in t[:-1], "chain %d: went on after <|EOT|>" % c["chain"]
        reached += k == budget
    else:
        # ended before the budget: only by <|EOT|>
        assert c["finish_reason"] == "eot" and t[-1] == eot and len(t) <= budget, \
            "chain %d: %d tokens, no </think>, finish %s" % (c["chain"], len(t), c["finish_reason"])
        assert c["reasoning_tokens"] == len(t) - 1
print("budget %d: %d of 8 chains reached it" % (budget, reached))
assert reached >= 6, "too few chains reached the budget to test it"
PY
done
pass "think budget holds to the token (budgets 1, 7, 20; 8 sampled chains each)"
