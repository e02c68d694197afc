#!/usr/bin/env bash
# The OpenAI-compatible HTTP API end to end, with curl: health, models,
# chat completions streamed (SSE) and not, with WAV and MP3 audio parts and
# the assistant "<think>\n" prefix Step-Audio-R1's client sends; the streamed
# text equals sa-client's for the same seed; n chains; every error status
# with an OpenAI error object; API keys; a client that leaves mid-stream
# frees its KV; metrics count the requests.
BIN=$1
source "$(dirname "$0")/lib.sh"
command -v curl >/dev/null || fail "curl is missing (scripts/setup installs it)"

M=$T/model
make_model "$M" 21
make_clips "$T/clips" 1
ffmpeg -loglevel error -i "$T/clips/clip0.wav" "$T/clip0.mp3" || fail "ffmpeg mp3"
start_coordinator "$M" --http 127.0.0.1:0 --served-model-name tiny --http-max-body 3000000
start_encoder "$M" encoder0
start_worker "$M" 0:1 r0 s0
S0=$LAST_PID
start_worker "$M" 1: r0 s1
S1=$LAST_PID
wait_ready 1 1
URL=$(grep -ao '^http http://[^ ]*' "$T/coordinator.log" | head -n 1 | cut -d' ' -f2)
[[ -n $URL ]] || fail "the coordinator did not print its HTTP URL"
echo "$URL" >"$T/url"

# code METHOD PATH [curl args] -> HTTP status; body in $T/body
code() {
  local m=$1 p=$2; shift 2
  curl -s -o "$T/body" -w '%{http_code}' -X "$m" "$URL$p" "$@"
}
json() { python3 -c "import json,sys; d=json.load(open('$T/body')); print($1)"; }
b64() { base64 -w0 "$1"; }

[[ $(code GET /health) == 200 && $(json "d['status']") == ok ]] || fail "/health: $(cat "$T/body")"
pass "/health: $(cat "$T/body")"
[[ $(code GET /v1/models) == 200 && $(json "d['data'][0]['id']") == tiny ]] ||
  fail "/v1/models: $(cat "$T/body")"
pass "/v1/models lists tiny"

# --- a non-streamed text request
cat >"$T/text.json" <<'EOF'
{"model":"tiny","messages":[{"role":"system","content":"Be brief."},
 {"role":"user","content":"Hi"}],"max_tokens":8,"temperature":0}
EOF
[[ $(code POST /v1/chat/completions -H 'Content-Type: application/json' -d @"$T/text.json") == 200 ]] ||
  fail "text completion: $(cat "$T/body")"
[[ $(json "d['object']") == chat.completion && $(json "d['usage']['completion_tokens']") -ge 1 ]] ||
  fail "text completion body: $(cat "$T/body")"
pass "non-streamed text completion: $(json "d['usage']")"

# --- streamed, WAV audio, the R1 client's payload shape; equal to sa-client
python3 - "$T/clips/clip0.wav" wav >"$T/r1.json" <<'EOF'
import base64, json, sys
audio = base64.b64encode(open(sys.argv[1], 'rb').read()).decode()
print(json.dumps({
  "model": "tiny", "stream": True, "stream_options": {"include_usage": True},
  "max_tokens": 40, "temperature": 0.7, "seed": 7, "top_p": 1.0,
  "stop_token_ids": [151665], "skip_special_tokens": False,
  "continue_final_message": True, "add_generation_prompt": False,
  "messages": [
    {"role": "system", "content": "You are an expert in audio analysis."},
    {"role": "human", "eot": False, "content": [
      {"type": "input_audio", "input_audio": {"data": audio, "format": sys.argv[2]}},
      {"type": "text", "text": "What is happening?"}]},
    {"role": "assistant", "content": "<think>\n", "eot": False}]}))
EOF
[[ $(code POST /v1/chat/completions -H 'Content-Type: application/json' -d @"$T/r1.json") == 200 ]] ||
  fail "streamed audio completion: $(cat "$T/body")"
grep -q '^data: \[DONE\]$' "$T/body" || fail "the stream does not end with [DONE]"
python3 - "$T/body" >"$T/http.txt" <<'EOF'
import json, sys
text, usage, finish = "", None, None
for line in open(sys.argv[1]):
    if not line.startswith("data: ") or line.strip() == "data: [DONE]":
        continue
    c = json.loads(line[6:])
    assert c["object"] == "chat.completion.chunk", c
    for ch in c["choices"]:
        text += ch["delta"].get("content") or ""
        finish = ch.get("finish_reason") or finish
    usage = c.get("usage") or usage
assert usage and finish in ("stop", "length"), (usage, finish)
sys.stdout.write(text)
EOF
[[ $? -eq 0 ]] || fail "stream chunks are malformed: $(head -c 600 "$T/body")"
"$BIN/sa-client" submit "$T/clips/clip0.wav" --prompt "What is happening?" \
  --system "You are an expert in audio analysis." --max-tokens 40 --temperature 0.7 --seed 7 \
  --json --coordinator "$COORD" >"$T/rpc.out" 2>&1 || fail "sa-client: $(cat "$T/rpc.out")"
python3 - "$T/http.txt" "$T/rpc.out" <<'EOF' || fail "streamed text differs from sa-client's (above)"
import json, sys
http = open(sys.argv[1]).read()
reasoning, answer = "", ""
for line in open(sys.argv[2]):
    if not line.startswith("{"):
        continue
    e = json.loads(line)
    if e.get("type") == "delta" and e["chain"] == 0:
        if e["kind"] == "answer":
            answer += e["text"]
        else:
            reasoning += e["text"]
hr, sep, ha = http.partition("</think>")
if (hr, ha) != (reasoning, answer) or (not sep and answer):
    print("http:", repr(http[:300]), "\nrpc reasoning:", repr(reasoning[:200]),
          "\nrpc answer:", repr(answer[:200]), file=sys.stderr)
    sys.exit(1)
EOF
pass "streamed WAV completion equals sa-client for seed 7 ($(wc -c <"$T/http.txt") bytes)"

# --- an MP3 part as a data: URL, n = 4 chains, not streamed
python3 - "$T/clip0.mp3" >"$T/mp3.json" <<'EOF'
import base64, json, sys
audio = base64.b64encode(open(sys.argv[1], 'rb').read()).decode()
print(json.dumps({"model": "tiny", "n": 4, "max_tokens": 12, "temperature": 0.8, "seed": 3,
  "messages": [{"role": "user", "content": [
    {"type": "text", "text": "Listen:"},
    {"type": "audio_url", "audio_url": {"url": "data:audio/mpeg;base64," + audio}}]}]}))
EOF
[[ $(code POST /v1/chat/completions -d @"$T/mp3.json") == 200 && $(json "len(d['choices'])") == 4 ]] ||
  fail "MP3 n=4 completion: $(head -c 400 "$T/body")"
pass "MP3 audio_url, n=4: 4 choices, usage $(json "d['usage']")"

# --- two audio parts (the R1 client cuts long clips): each is encoded on its
# own and stands where it was put; prompt tokens add up part by part
sox "$T/clips/clip0.wav" "$T/partA.wav" trim 0 0.5
sox "$T/clips/clip0.wav" "$T/partB.wav" trim 0.5
python3 - "$T/partA.wav" "$T/partB.wav" "$T" <<'EOF'
import base64, json, sys
a, b, t = sys.argv[1:4]
def part(f):
    return {"type": "input_audio",
            "input_audio": {"data": base64.b64encode(open(f, "rb").read()).decode(), "format": "wav"}}
for name, parts in (("p0", []), ("pA", [part(a)]), ("pB", [part(b)]), ("pAB", [part(a), part(b)])):
    json.dump({"model": "tiny", "max_tokens": 2, "temperature": 0, "messages": [
        {"role": "user", "content": parts + [{"type": "text", "text": "Which is longer?"}]}]},
        open(f"{t}/{name}.json", "w"))
EOF
declare -A PT
for n in p0 pA pB pAB; do
  [[ $(code POST /v1/chat/completions -d @"$T/$n.json") == 200 ]] || fail "$n: $(head -c 300 "$T/body")"
  PT[$n]=$(json "d['usage']['prompt_tokens']")
done
[[ $((PT[pAB] - PT[p0])) -eq $((PT[pA] - PT[p0] + PT[pB] - PT[p0])) && ${PT[pA]} -gt ${PT[p0]} ]] ||
  fail "two audio parts: prompt tokens ${PT[pAB]}, parts alone ${PT[pA]} + ${PT[pB]} over ${PT[p0]}"
pass "two audio parts: prompt ${PT[pAB]} tokens = ${PT[p0]} + $((PT[pA] - PT[p0])) + $((PT[pB] - PT[p0]))"

# --- stop strings: the text ends right before the first one, which is not sent
cat >"$T/nostop.json" <<'EOF'
{"model":"tiny","max_tokens":40,"temperature":0,"messages":[{"role":"user","content":"Tell"}]}
EOF
[[ $(code POST /v1/chat/completions -d @"$T/nostop.json") == 200 ]] || fail "no-stop request"
cp "$T/body" "$T/nostop.out"
python3 - "$T/nostop.out" "$T" <<'EOF' || fail "stop strings (above)"
import json, subprocess, sys
full = json.load(open(sys.argv[1]))["choices"][0]["message"]["content"].split("</think>")[0]
if len(full) < 12:
    print("skip: text too short", file=sys.stderr)
    sys.exit(0)
stop = full[8:11]
want = full[:full.index(stop)]
url = open(sys.argv[2] + "/url").read().strip() + "/v1/chat/completions"
body = {"model": "tiny", "max_tokens": 40, "temperature": 0, "stop": [stop],
        "messages": [{"role": "user", "content": "Tell"}]}
for stream in (False, True):
    body["stream"] = stream
    out = subprocess.run(["curl", "-s", "-N", url, "-d", json.dumps(body)],
                         capture_output=True, text=True).stdout
    if stream:
        text, finish = "", None
        for line in out.splitlines():
            if line.startswith("data: {"):
                for c in json.loads(line[6:])["choices"]:
                    text += c["delta"].get("content") or ""
                    finish = c.get("finish_reason") or finish
    else:
        c = json.loads(out)["choices"][0]
        text, finish = c["message"]["content"], c["finish_reason"]
    if text != want or finish != "stop":
        print("stream" if stream else "json", repr(stop), repr(text), repr(want), finish,
              file=sys.stderr)
        sys.exit(1)
print("ok: stop %r: %d chars before it, streamed and not" % (stop, len(want)))
EOF

# --- errors: status and an OpenAI error object
expect() { # STATUS PARAM-OR-- NAME METHOD PATH [curl args]
  local want=$1 param=$2 name=$3; shift 3
  local got
  got=$(code "$@")
  [[ $got == "$want" ]] || fail "$name: HTTP $got, want $want: $(head -c 300 "$T/body")"
  python3 -c "import json; e=json.load(open('$T/body'))['error']; assert e['message'] and e['type']" ||
    fail "$name: not an OpenAI error object: $(head -c 300 "$T/body")"
  if [[ $param != -- ]]; then
    [[ $(json "d['error']['param']") == "$param" ]] || fail "$name: param is not $param: $(cat "$T/body")"
  fi
  pass "$name: $want $(json "d['error']['message']" | head -c 100)"
}
expect 400 -- "bad JSON" POST /v1/chat/completions -d '{"model": "tiny", "messages": ['
expect 400 messages "unknown role" POST /v1/chat/completions \
  -d '{"model":"tiny","messages":[{"role":"robot","content":"x"}]}'
expect 400 messages "bad base64" POST /v1/chat/completions \
  -d '{"model":"tiny","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"@@@","format":"wav"}}]}]}'
printf 'not audio at all' | base64 -w0 >"$T/notaudio.b64"
expect 400 -- "not audio" POST /v1/chat/completions \
  -d "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_audio\",\"input_audio\":{\"data\":\"$(cat "$T/notaudio.b64")\",\"format\":\"wav\"}}]}]}"
expect 400 temperature "temperature out of range" POST /v1/chat/completions \
  -d '{"model":"tiny","messages":[{"role":"user","content":"x"}],"temperature":-1}'
expect 400 max_tokens "max_tokens over the limit" POST /v1/chat/completions \
  -d '{"model":"tiny","messages":[{"role":"user","content":"x"}],"max_tokens":100000000}'
expect 400 -- "max_tokens over the context" POST /v1/chat/completions \
  -d '{"model":"tiny","messages":[{"role":"user","content":"x"}],"max_tokens":8000}'
expect 400 messages "audio in an assistant turn" POST /v1/chat/completions \
  -d '{"model":"tiny","messages":[{"role":"user","content":"a"},{"role":"assistant","content":[{"type":"input_audio","input_audio":{"data":"SUQz"}}]}]}'
expect 400 continue_final_message "nothing to continue" POST /v1/chat/completions \
  -d '{"model":"tiny","continue_final_message":true,"messages":[{"role":"user","content":"a"}]}'
expect 404 model "unknown model" POST /v1/chat/completions \
  -d '{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}'
expect 404 -- "unknown path" GET /v1/nothing
expect 405 -- "wrong method" GET /v1/chat/completions
head -c 3100000 /dev/zero | tr '\0' 'a' >"$T/big.json"
expect 413 -- "body over the limit" POST /v1/chat/completions --data-binary @"$T/big.json"
head -c 7000000 /dev/zero | tr '\0' 'a' >"$T/huge.json"
got=$(curl -s -o "$T/body" -w '%{http_code}' -X POST "$URL/v1/chat/completions" --data-binary @"$T/huge.json")
[[ $got == 413 ]] || fail "body over twice the limit: HTTP $got"
pass "body over twice the limit: 413 (H2O's own, unread)"

# --- a client that leaves mid-stream cancels its request and frees the KV
[[ $(kv_used_total) -eq 0 ]] || fail "KV in use before the disconnect test"
curl -s -N "$URL/v1/chat/completions" -d '{"model":"tiny","stream":true,"max_tokens":4000,
  "temperature":0,"messages":[{"role":"user","content":"go on"}]}' >"$T/cut.out" 2>&1 &
cpid=$!
seen=0
for _ in $(seq 200); do
  if [[ $(kv_used_total) -gt 0 ]] && grep -q '^data: {' "$T/cut.out"; then seen=1; break; fi
  sleep 0.02
done
[[ $seen -eq 1 ]] || fail "the long request never streamed while holding KV: $(head -c 300 "$T/cut.out")"
# the stages pause while the client leaves, so the request cannot end by
# itself meanwhile; the coordinator sees the leave at its next write
kill -STOP "$S0" "$S1"
kill -9 "$cpid"
wait "$cpid" 2>/dev/null || true
sleep 0.2
kill -CONT "$S0" "$S1"
left=0
for _ in $(seq 100); do
  if grep -q "HTTP client went away" "$T/coordinator.log"; then left=1; break; fi
  sleep 0.1
done
[[ $left -eq 1 ]] || fail "the coordinator did not see the HTTP client leave"
freed=0
for _ in $(seq 100); do
  if [[ $(kv_used_total) -eq 0 ]]; then freed=1; break; fi
  sleep 0.1
done
[[ $freed -eq 1 ]] || fail "KV blocks still used after the HTTP client left"
pass "an HTTP client leaving mid-stream cancels its request; KV freed"

# --- metrics count the requests
[[ $(code GET /metrics) == 200 ]] || fail "/metrics"
ok=$(grep '^sa_requests_total{outcome="ok"}' "$T/body" | awk '{print $2}')
[[ ${ok:-0} -ge 4 ]] || fail "sa_requests_total ok = ${ok:-none}, want >= 4: $(head -c 600 "$T/body")"
grep -q '^sa_kv_blocks_total{replica="r0",layers="0:1"}' "$T/body" || fail "no KV gauge per stage"
metric() { grep "^$1 " "$T/body" | awk '{print $2}'; }
[[ $(metric sa_time_to_first_token_seconds_count) -ge 4 &&
   $(metric sa_encode_duration_seconds_count) -ge 2 &&
   $(metric 'sa_step_duration_seconds_count{replica="r0"}') -ge 10 &&
   $(metric 'sa_stage_compute_seconds_count{replica="r0",layers="0:1"}') -ge 10 &&
   $(metric 'sa_stage_compute_seconds_count{replica="r0",layers="1:3"}') -ge 10 &&
   $(metric 'sa_inter_token_latency_seconds_bucket{le="+Inf"}') -eq $(metric sa_inter_token_latency_seconds_count) ]] ||
  fail "histograms missing or inconsistent: $(grep -E '_count|Inf' "$T/body" | head -n 12)"
# rows per step: as many steps as the step durations, the rows summing to the
# tokens through the steps; decode steps of one row each fall in le="1"
[[ $(metric 'sa_step_rows_count{replica="r0"}') -eq $(metric 'sa_step_duration_seconds_count{replica="r0"}') &&
   $(metric 'sa_step_rows_sum{replica="r0"}' | cut -d. -f1) -eq $(metric 'sa_step_tokens_total{replica="r0"}') &&
   $(metric 'sa_step_rows_bucket{replica="r0",le="1"}') -ge 1 &&
   $(metric 'sa_step_rows_bucket{replica="r0",le="+Inf"}') -eq $(metric 'sa_step_rows_count{replica="r0"}') ]] ||
  fail "sa_step_rows inconsistent: $(grep -E '^sa_step_(rows|tokens|duration_seconds_count)' "$T/body" | head -n 22)"
pass "/metrics: sa_requests_total{outcome=\"ok\"} $ok"

# --- the cluster still serves
[[ $(code POST /v1/chat/completions -d @"$T/text.json") == 200 ]] || fail "not serving after the errors"
pass "still serving after every bad request"

# --- a second coordinator: keys, no replica, a full queue, secure defaults
echo "k-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')" >"$T/apikeys"
KEY=$(cat "$T/apikeys")
# shellcheck disable=SC2046
"$BIN/sa-coordinator" --model "$M" --listen 'tcp://127.0.0.1:*' --http 127.0.0.1:0 $(sec coordinator) \
  --served-model-name tiny --api-key-file "$T/apikeys" --max-requests 1 >"$T/c2.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -q '^http http' "$T/c2.log" && break; sleep 0.05; done
URL=$(grep -ao '^http http://[^ ]*' "$T/c2.log" | head -n 1 | cut -d' ' -f2)
[[ -n $URL ]] || fail "second coordinator: $(cat "$T/c2.log")"
expect 401 -- "no API key" GET /v1/models
expect 401 -- "wrong API key" GET /v1/models -H "Authorization: Bearer nope"
[[ $(code GET /v1/models -H "Authorization: Bearer $KEY") == 200 ]] || fail "the right key is refused"
pass "the right API key is accepted"
[[ $(code GET /health) == 503 ]] || fail "/health without replicas: $(cat "$T/body")"
pass "/health without encoders or replicas: 503 $(cat "$T/body")"
curl -s --max-time 3 "$URL/v1/chat/completions" -H "Authorization: Bearer $KEY" \
  -d '{"model":"tiny","messages":[{"role":"user","content":"wait"}]}' >/dev/null 2>&1 &
for _ in $(seq 50); do
  [[ $(code GET /metrics -H "Authorization: Bearer $KEY"; grep -c '^sa_requests_waiting 1' "$T/body") == 2001 ]] && break
  sleep 0.05
done
got=$(curl -s -D "$T/hdr" -o "$T/body" -w '%{http_code}' "$URL/v1/chat/completions" \
  -H "Authorization: Bearer $KEY" -d '{"model":"tiny","messages":[{"role":"user","content":"x"}]}')
[[ $got == 429 ]] || fail "queue full: HTTP $got $(cat "$T/body")"
grep -qi '^retry-after:' "$T/hdr" || fail "429 without Retry-After"
pass "a full queue: 429 with Retry-After"
# shellcheck disable=SC2046
if "$BIN/sa-coordinator" --model "$M" --listen 'tcp://127.0.0.1:*' --http 0.0.0.0:0 $(sec coordinator) \
  >"$T/c3.log" 2>&1; then
  fail "HTTP on 0.0.0.0 without keys was accepted"
fi
grep -q "insecure-http" "$T/c3.log" || fail "the refusal does not say how: $(cat "$T/c3.log")"
pass "HTTP on 0.0.0.0 without an API key file is refused"
