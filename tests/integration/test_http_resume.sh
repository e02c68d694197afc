#!/usr/bin/env bash
# HTTP streams resume (issue #16): every SSE event carries an id; a client
# whose stream broke POSTs again with Last-Event-ID and gets the rest. Here
# the break is a kill -9 of the coordinator (--state): started again on the
# same state dir and address, it resumes the request, and curl's two halves
# together are exactly the stream of a crash-free run. A resume takes the
# request from a live stream too (that one ends), and an id the server does
# not hold is a 404.
BIN=$1
source "$(dirname "$0")/lib.sh"
command -v curl >/dev/null || fail "curl is missing (scripts/setup installs it)"

M=$T/model
make_model "$M" 29
STATE=$T/state
start_coordinator "$M" --http 127.0.0.1:0 --served-model-name tiny --state "$STATE"
CPID=${PIDS[0]}
start_worker "$M" 0:1 r0 s0
start_worker "$M" 1: r0 s1
wait_ready 1 0
URL=$(grep -ao '^http http://[^ ]*' "$T/coordinator.log" | head -n 1 | cut -d' ' -f2)
[[ -n $URL ]] || fail "the coordinator did not print its HTTP URL"
BODY='{"model":"tiny","stream":true,"max_tokens":1500,"temperature":0,"seed":5,"n":2,
       "messages":[{"role":"user","content":"count the birds"}]}'
post() { curl -sN -X POST "$URL/v1/chat/completions" -H 'Content-Type: application/json' \
  -d "$BODY" "$@"; }
# text FILE... -> per choice, its streamed text (content and reasoning), one line each (hex)
text() {
  python3 - "$@" <<'EOF'
import json, sys
out = {}
for path in sys.argv[1:]:
    for line in open(path, encoding="utf-8", errors="surrogateescape"):
        if not line.startswith("data: {"):
            continue
        ev = json.loads(line[6:])
        for ch in ev.get("choices", []):
            d = ch.get("delta", {})
            out.setdefault(ch["index"], []).append(d.get("reasoning_content") or "")
            out[ch["index"]].append(d.get("content") or "")
for i in sorted(out):
    print(i, "".join(out[i]).encode("utf-8", "surrogateescape").hex())
EOF
}

post >"$T/ref.sse" || fail "the reference stream failed"
grep -q '^data: \[DONE\]' "$T/ref.sse" || fail "the reference stream did not end"
grep -q '^id: chatcmpl-[0-9a-f]*/[0-9]*t\?f\?,[0-9]*' "$T/ref.sse" ||
  fail "no SSE event ids: $(head -c 300 "$T/ref.sse")"
pass "SSE events carry ids ($(grep -m1 '^id: ' "$T/ref.sse"))"

post >"$T/a.sse" &
CURL=$!
PIDS+=($CURL)
for _ in $(seq 400); do [[ $(grep -c '^data: {' "$T/a.sse") -ge 20 ]] && break; sleep 0.02; done
kill -9 "$CPID"
wait "$CURL" 2>/dev/null || true
grep -q '^data: \[DONE\]' "$T/a.sse" && fail "the stream ended before the kill; lengthen it"
LAST=$(grep '^id: ' "$T/a.sse" | tail -n 1 | cut -c5-)
[[ -n $LAST ]] || fail "no event id before the kill"
# the same address, a new process on the same state dir
PORT=${URL##*:}
# shellcheck disable=SC2046
"$BIN/sa-coordinator" --model "$M" --listen "$(cat "$T/coord.ep")" $(sec coordinator) \
  --http "127.0.0.1:$PORT" --served-model-name tiny --state "$STATE" >"$T/coordinator2.log" 2>&1 &
CPID=$!
PIDS+=($CPID)
for _ in $(seq 200); do curl -sf "$URL/v1/models" >/dev/null && break; sleep 0.05; done
post -H "Last-Event-ID: $LAST" >"$T/b.sse" || fail "the resumed stream failed"
grep -q '^data: \[DONE\]' "$T/b.sse" || fail "the resumed stream did not end: $(tail -c 300 "$T/b.sse")"
[[ $(text "$T/a.sse" "$T/b.sse") == $(text "$T/ref.sse") ]] ||
  fail "the two halves differ from the crash-free stream (gap or duplicate)"
pass "kill -9 mid-stream: resumed with Last-Event-ID $LAST; the halves equal the crash-free stream"

# a resume takes the request from a live stream, which ends
post >"$T/c.sse" &
CURL=$!
PIDS+=($CURL)
for _ in $(seq 400); do [[ $(grep -c '^data: {' "$T/c.sse") -ge 20 ]] && break; sleep 0.02; done
ID=$(grep '^id: ' "$T/c.sse" | tail -n 1 | cut -c5-)
post -H "Last-Event-ID: $ID" >"$T/d.sse" || fail "resuming a live stream failed"
wait "$CURL" || true
grep -q '^data: \[DONE\]' "$T/d.sse" || fail "the taking stream did not end"
grep -q '^data: \[DONE\]' "$T/c.sse" && fail "the stream taken over ran to its end"
# what the first stream had at that id (it ran on until the takeover)
awk -v id="id: $ID" '{ print } $0 == id { getline; print; exit }' "$T/c.sse" >"$T/c-cut.sse"
[[ $(text "$T/c-cut.sse" "$T/d.sse") == $(text "$T/ref.sse") ]] ||
  fail "the live stream and its taker together differ from the crash-free stream"
pass "a resume took a live stream; together they equal the crash-free stream"

code=$(curl -s -o "$T/nf" -w '%{http_code}' -X POST "$URL/v1/chat/completions" \
  -H "Last-Event-ID: chatcmpl-0000/0" -d "$BODY")
[[ $code == 404 ]] || fail "an unknown Last-Event-ID: HTTP $code $(cat "$T/nf")"
code=$(curl -s -o "$T/nf" -w '%{http_code}' -X POST "$URL/v1/chat/completions" \
  -H "Last-Event-ID: garbage" -d "$BODY")
[[ $code == 404 ]] || fail "a malformed Last-Event-ID: HTTP $code $(cat "$T/nf")"
pass "an unknown or malformed Last-Event-ID: 404"
