#!/usr/bin/env bash
# sa-load against a real 2-stage cluster: every request of an open-loop run
# completes; its JSON lines hold what sa-client, an independent path, gets
# for the same request (the seed --seed + i, the same mix draw); two runs
# with the same seed send the same requests and get the same tokens; the
# token counts of the deltas add up to what was generated; Ctrl-C cancels
# and still writes the summary; over the HTTP API (--http) the same seeds
# give the same text; bad usage and bad workload files exit 2 with the
# reason.   usage: test_sa_load.sh BIN_DIR
BIN=$1
TOOLS=$(cd "$(dirname "$0")/../../tools/sa-experiment" && pwd)
source "$(dirname "$0")/lib.sh"

M=$T/model
make_model "$M" 5
L=$(grep -o '"num_hidden_layers": *[0-9]*' "$M/config.json" | grep -o '[0-9]*$')
start_coordinator "$M" --http 127.0.0.1:0 --served-model-name tiny
for _ in $(seq 100); do grep -q '^http http' "$T/coordinator.log" && break; sleep 0.05; done
URL=$(grep -ao '^http http://[^ ]*' "$T/coordinator.log" | head -n 1 | cut -d' ' -f2)
start_encoder "$M" enc0
start_worker "$M" "0:$((L / 2))" r0 stage0
start_worker "$M" "$((L / 2)):$L" r0 stage1
wait_ready 1 1
make_clips "$T/clips" 2
cat >"$T/w.json" <<JSON
{"items": [
  {"clip": "clips/clip0.wav", "prompt": "How many?", "n": 4, "max_tokens": 24,
   "temperature": 0.9, "top_p": 0.95, "weight": 2},
  {"clip": "clips/clip1.wav", "prompt": "Which is higher?", "n": 2, "max_tokens": 16,
   "temperature": 0.7},
  {"prompt": "Say something.", "max_tokens": 12}
]}
JSON

load() { "$BIN/sa-load" --workload "$T/w.json" --coordinator "$COORD" --quiet "$@"; }

load --rate 8 --requests 12 --seed 40 --out "$T/a.jsonl" --summary "$T/a.sum" \
  --id-prefix a 2>"$T/a.err" || fail "open-loop run failed: $(cat "$T/a.err")"
load --concurrency 3 --requests 12 --seed 40 --out "$T/b.jsonl" --id-prefix b \
  2>"$T/b.err" || fail "closed-loop run failed: $(cat "$T/b.err")"
grep -q "TTFT" "$T/a.err" || fail "no summary on stderr"

/usr/bin/python3 - "$T/a.jsonl" "$T/b.jsonl" "$T/a.sum" "$T/w.json" "$TOOLS" >"$T/picks.txt" <<'PY' ||
import json, sys
sys.path.insert(0, sys.argv[5])
from analyze import same_result  # a chain the vote cancelled may stop a step apart
a = [json.loads(l) for l in open(sys.argv[1])]
b = {r["i"]: r for r in map(json.loads, open(sys.argv[2]))}
s = json.load(open(sys.argv[3]))
items = json.load(open(sys.argv[4]))["items"]
assert len(a) == 12 and sorted(r["i"] for r in a) == list(range(12)), "want requests 0..11"
assert s["sent"] == 12 and s["completed"] == 12 and s["failed"] == 0, s
assert s["ttft_s"]["n"] == 12 and s["ttft_s"]["p50"] <= s["e2e_s"]["p50"], s
kinds = set()
for r in a:
    assert r["status"] == "OK", r
    assert r["id"] == "a-%d" % r["i"] and r["seed"] == str(40 + r["i"]), r
    it = items[r["item"]]
    res = r["result"]
    assert len(res["chains"]) == it.get("n", 1), r
    gen = sum(len(c["tokens"]) for c in res["chains"])
    assert gen == res["tokens_generated"], (gen, res["tokens_generated"])
    # every token is counted by a delta, except ones that never made text
    assert gen - it.get("n", 1) <= r["tokens"] <= gen, (r["tokens"], gen)
    assert sum(c for _, _, c in r["arrivals"]) == r["tokens"]
    t = [x[1] for x in r["arrivals"]]
    assert t == sorted(t) and r["submit_s"] <= t[0] <= r["end_s"], r["arrivals"][:3]
    assert abs(r["ttft_s"] - (t[0] - r["submit_s"])) < 1e-3
    # the same seed and index: the same request, the same tokens
    o = b[r["i"]]
    assert o["item"] == r["item"] and o["seed"] == r["seed"]
    assert same_result(o["result"], res), (r["i"], o["result"], res)
    kinds.add(r["item"])
    c0 = res["chains"][0]
    print(r["i"], r["item"], r["seed"], c0["finish"], " ".join(map(str, c0["tokens"])))
assert len(kinds) >= 2, "the mix drew one item only"
PY
  fail "the JSON lines are wrong"
pass "12 requests, open and closed loop: complete, counted, the same per seed"

# sa-client, an independent client, gets the same tokens for two of them
for i in 0 1 2; do
  read -r idx item seed finish toks < <(sed -n "$((i + 1))p" "$T/picks.txt")
  case $item in
  0) args=(--prompt "How many?" -n 4 --max-tokens 24 --temperature 0.9 --top-p 0.95 "$T/clips/clip0.wav") ;;
  1) args=(--prompt "Which is higher?" -n 2 --max-tokens 16 --temperature 0.7 "$T/clips/clip1.wav") ;;
  2) args=(--no-audio --prompt "Say something." --max-tokens 12) ;;
  esac
  "$BIN/sa-client" submit "${args[@]}" --seed "$seed" --json --coordinator "$COORD" \
    >"$T/c$i.json" 2>"$T/c$i.err" || fail "sa-client: $(cat "$T/c$i.err")"
  got=$(tokens_of "$(final_of "$T/c$i.json")")
  # a chain the vote cancelled stops where its last step was: a prefix
  [[ "$got" == "$toks" ]] || { [[ $finish == cancelled ]] &&
    { [[ "$got " == "$toks "* ]] || [[ "$toks " == "$got "* ]]; }; } ||
    fail "request $idx: sa-load got '$toks' ($finish), sa-client '$got'"
done
pass "sa-client gets the tokens sa-load recorded"

# the HTTP API: the same requests (seeds, mix), the same text per chain
load --http "$URL" --rate 8 --requests 12 --seed 40 --out "$T/h.jsonl" --summary "$T/h.sum" \
  2>"$T/h.err" || fail "HTTP run failed: $(cat "$T/h.err")"
/usr/bin/python3 - "$T/a.jsonl" "$T/h.jsonl" "$T/h.sum" "$TOOLS" <<'PY' || fail "the HTTP run differs"
import json, sys
sys.path.insert(0, sys.argv[4])
from analyze import same_result
a = {r["i"]: r for r in map(json.loads, open(sys.argv[1]))}
h = [json.loads(l) for l in open(sys.argv[2])]
s = json.load(open(sys.argv[3]))
assert len(h) == 12 and s["completed"] == 12 and s["failed"] == 0, s
for r in h:
    assert r["status"] == "OK" and r["transport"] == "http", r
    o = a[r["i"]]
    assert r["item"] == o["item"] and r["seed"] == o["seed"]
    # HTTP puts the reasoning and the answer in one content, split by </think>
    for c in r["result"]["chains"]:
        c["text"] = c["text"].replace("</think>", "", 1)
    assert same_result(r["result"], o["result"]), (r["i"], r["result"], o["result"])
    assert r["ttft_s"] is not None and r["arrivals"], r["i"]
PY
pass "over HTTP: 12 requests, the same text per chain as over RPC"

# SIGINT: what is in flight is cancelled, the summary is still written
load --rate 20 --duration 30 --out "$T/c.jsonl" --summary "$T/c.sum" 2>"$T/c.err" &
lp=$!
sleep 1.5
kill -INT $lp
wait $lp || true
python3 - "$T/c.sum" "$T/c.jsonl" <<'PY' || fail "interrupted run: $(tail -3 "$T/c.err")"
import json, sys
s = json.load(open(sys.argv[1]))
lines = [json.loads(l) for l in open(sys.argv[2])]
assert s["sent"] == len(lines) and s["sent"] == s["completed"] + s["failed"] + s["cancelled"], s
assert s["failed"] == 0, s
PY
pass "Ctrl-C: cancelled, every request recorded, summary written"

# bad usage and bad workloads: exit 2 with the reason
expect_usage() {
  local want=$1; shift
  set +e
  "$BIN/sa-load" "$@" --coordinator "$COORD" >"$T/u.out" 2>"$T/u.err"
  local rc=$?
  set -e
  [[ $rc -eq 2 ]] || fail "sa-load $*: exit $rc, want 2"
  grep -q -- "$want" "$T/u.err" || fail "sa-load $*: '$(cat "$T/u.err")' does not say '$want'"
}
expect_usage "needs --workload" --rate 1 --requests 1
expect_usage "one of --rate or --concurrency" --workload "$T/w.json" --requests 1
expect_usage "one of --rate or --concurrency" --workload "$T/w.json" --rate 1 --concurrency 1 --requests 1
expect_usage "--rate must be" --workload "$T/w.json" --rate -1 --requests 1
echo '{"items": [{"promt": "x"}]}' >"$T/bad1.json"
expect_usage 'unknown key "promt"' --workload "$T/bad1.json" --rate 1 --requests 1
echo '{"items": [{"clip": "nope.wav"}]}' >"$T/bad2.json"
expect_usage "nope.wav" --workload "$T/bad2.json" --rate 1 --requests 1
printf '\x00\xff{' >"$T/bad3.json"
expect_usage "not valid JSON" --workload "$T/bad3.json" --rate 1 --requests 1
expect_usage "No such file" --workload "$T/none.json" --rate 1 --requests 1
expect_usage "--model must be" --workload "$T/w.json" --rate 1 --requests 1 --http "$URL" --model ""
"$BIN/sa-load" --help | grep -q -- "--workload" || fail "--help"
pass "bad usage and bad workload files: exit 2 with the reason"
