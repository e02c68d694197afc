#!/usr/bin/env bash
# CurveZMQ end to end, as an attacker on the same host would try it: keys
# not in the allow-list cannot register (not even taking over a node id),
# submit, or send a StepBatch to a stage (whose server never sees the
# frame); a plain-text peer gets nothing; a key of the wrong role is turned
# away per method; a client with the wrong server key fails by itself, with
# a readable error; one client cannot cancel or watch another's request; bad
# key files stop a process at start with a clear error. The cluster keeps
# serving throughout. sa-probe (tests/integration/sa_probe.c) is the
# attacker's RPC client: any key, any method.
BIN=$1
source "$(dirname "$0")/lib.sh"

M=$T/model
make_model "$M" 41
# a second allowed key of two roles, for the ownership checks
for k in stage2:stage client2:client; do
  "$BIN/sa-keys" gen "${k%%:*}" --role "${k##*:}" --dir "$KEYS" >/dev/null
  "$BIN/sa-keys" allow "$KEYS/allow" "$KEYS/${k%%:*}.pub" >/dev/null
done
make_clips "$T/clips" 1
start_coordinator "$M"
start_encoder "$M" encoder0
start_worker "$M" 0:1 r0 s0
start_worker "$M" 1: r0 s1
wait_ready 1 1
ep_of() { "$BIN/sa-probe" "$COORD" Status --key "$KEYS/client.key" --server-key "$KEYS/coordinator.pub" |
  awk -v n="$1" '$1 == "worker" && $2 == n {print $3}'; }
S0=$(ep_of s0)
[[ -n $S0 ]] || fail "no address for s0"
refused() { "$BIN/sa-probe" "$COORD" Status --key "$KEYS/client.key" --server-key "$KEYS/coordinator.pub" |
  awk '$1 == "handshakes_refused" {print $2}'; }

# --- strangers: a key set of their own; they know the real public keys
make_keys "$T/evil"
mkdir -p "$T/evil/real"
"$BIN/sa-keys" allow "$T/evil/real" "$KEYS/coordinator.pub" >/dev/null

# a stranger stage tries to take over node id s0
"$BIN/sa-worker" --model "$M" --layers 0:1 --replica r0 --node-id s0 --coordinator "$COORD" \
  --key "$T/evil/stage.key" --allow "$T/evil/real" --threads 1 --kv-mem 8MiB \
  >"$T/evil-stage.log" 2>&1 &
EVIL=$!
PIDS+=($EVIL)
for _ in $(seq 100); do grep -q "refused.*not in the allow-list" "$T/coordinator.log" && break; sleep 0.1; done
grep -q "refused.*not in the allow-list" "$T/coordinator.log" ||
  fail "the coordinator did not log refusing the stranger stage"
kill "$EVIL"
[[ $(ep_of s0) == "$S0" ]] || fail "s0 moved to $(ep_of s0)"
pass "a stage key not in the allow-list is refused at the handshake; s0 stays at $S0"

# a stranger client cannot submit: it fails by itself, saying why
if SA_KEY=$T/evil/client.key SA_ALLOW=$T/evil/real timeout 60 "$BIN/sa-client" submit \
  "$T/clips/clip0.wav" --max-tokens 2 --coordinator "$COORD" >"$T/evil.out" 2>&1; then
  fail "a stranger's submit was accepted"
fi
grep -q "refused this key" "$T/evil.out" || fail "the stranger's error: $(cat "$T/evil.out")"
pass "a client key not in the allow-list: $(grep -o 'refused this key.*' "$T/evil.out" | head -c 80)"

# nobody but the coordinator and stages reaches a stage; the stage never
# sees the frame (no Step is run: its KV stays untouched, it logs the refusal)
out=$("$BIN/sa-probe" "$S0" Step --key "$T/evil/stage.key" --server-key "$KEYS/stage.pub")
[[ $out == UNAUTHENTICATED* ]] || fail "a stranger's StepBatch: $out"
out=$("$BIN/sa-probe" "$S0" Step --key "$KEYS/client.key" --server-key "$KEYS/stage.pub")
[[ $out == UNAUTHENTICATED* ]] || fail "a client's StepBatch: $out"
grep -q "security: refused.*this server takes coordinator,stage" "$T/s0.log" ||
  fail "s0 did not log the refusals"
pass "a stranger's and a client's StepBatch are refused at s0's handshake"

# a plain-text peer gets nothing
out=$("$BIN/sa-probe" "$COORD" Submit)
[[ $out != OK* ]] || fail "a plain-text Submit was answered OK"
out=$("$BIN/sa-probe" "$S0" Step)
[[ $out != OK* ]] || fail "a plain-text StepBatch was answered OK"
pass "plain-text peers: ${out%% *}"

# roles: a stage key cannot submit, a client key cannot register
out=$("$BIN/sa-probe" "$COORD" Submit --key "$KEYS/stage.key" --server-key "$KEYS/coordinator.pub")
[[ $out == PERMISSION_DENIED* ]] || fail "a stage key submitting: $out"
out=$("$BIN/sa-probe" "$COORD" Register --key "$KEYS/client.key" --server-key "$KEYS/coordinator.pub")
[[ $out == PERMISSION_DENIED* ]] || fail "a client key registering: $out"
out=$("$BIN/sa-probe" "$COORD" Drain --id r0 --key "$KEYS/client.key" --server-key "$KEYS/coordinator.pub")
[[ $out == PERMISSION_DENIED* ]] || fail "a client key draining: $out"
out=$("$BIN/sa-probe" "$COORD" Drain --id s1 --key "$KEYS/stage2.key" --server-key "$KEYS/coordinator.pub")
[[ $out == PERMISSION_DENIED*"only drain itself"* ]] || fail "another stage's key draining s1: $out"
pass "a stage key cannot submit, a client key cannot register or drain"

# a node id belongs to its key: another allowed stage key cannot take s0
out=$("$BIN/sa-probe" "$COORD" Register --id s0 --key "$KEYS/stage2.key" \
  --server-key "$KEYS/coordinator.pub")
[[ $out == PERMISSION_DENIED*"another key"* ]] || fail "stage2 taking s0: $out"
out=$("$BIN/sa-probe" "$COORD" Heartbeat --id s0 --key "$KEYS/stage2.key" \
  --server-key "$KEYS/coordinator.pub")
[[ $out == PERMISSION_DENIED*"another key"* ]] || fail "stage2 heartbeating for s0: $out"
[[ $(ep_of s0) == "$S0" ]] || fail "s0 moved"
pass "another key cannot take over node id s0 ($out)"

# the wrong server key: the client ends by itself with a readable error
if SA_ALLOW=$T/evil/allow timeout 60 "$BIN/sa-client" status --coordinator "$COORD" \
  >"$T/wrong.out" 2>&1; then
  fail "status with the wrong server key succeeded"
fi
grep -qi "handshake\|refused" "$T/wrong.out" || fail "wrong server key: $(cat "$T/wrong.out")"
pass "wrong server key: $(head -c 120 "$T/wrong.out")"

# ownership: client2 can neither cancel nor watch client's request
"$BIN/sa-client" submit "$T/clips/clip0.wav" --max-tokens 4000 --json --coordinator "$COORD" \
  >"$T/long.out" 2>&1 &
LONG=$!
PIDS+=($LONG)
for _ in $(seq 100); do grep -q '"request_id"' "$T/long.out" && break; sleep 0.1; done
ID=$(grep -m1 -ao '"request_id":"[^"]*"' "$T/long.out" | cut -d'"' -f4 | head -n 1)
[[ $ID == cli-* && ${#ID} -eq 28 ]] || fail "request id: '$ID' ($(head -c 300 "$T/long.out"))"
probe2() { "$BIN/sa-probe" "$COORD" "$1" --id "$ID" --key "$KEYS/$2.key" \
  --server-key "$KEYS/coordinator.pub"; }
out=$(probe2 Cancel client2)
grep -q "found 0" <<<"$out" || fail "client2 cancelling client's request: $out"
out=$(probe2 Status client2)
grep -q "request_found 0" <<<"$out" || fail "client2 sees client's request: $out"
out=$(probe2 Status client)
grep -q "request_found 1" <<<"$out" || fail "the owner does not see its request: $out"
# nor take its stream over by its id (Submit: ALREADY_EXISTS, Resume: NOT_FOUND)
if SA_KEY=$KEYS/client2.key "$BIN/sa-client" submit "$T/clips/clip0.wav" --request-id "$ID" \
  --json --coordinator "$COORD" >"$T/steal.out" 2>"$T/steal.err"; then
  fail "client2 resumed client's request"
fi
grep -q '"type":"delta"' "$T/steal.out" && fail "client2 got text of client's request"
grep -q "NOT_FOUND\|ALREADY_EXISTS" "$T/steal.err" || fail "client2 taking over: $(cat "$T/steal.err")"
kill -INT "$LONG" 2>/dev/null || true
wait "$LONG" 2>/dev/null || true
grep -q '"type":"final"' "$T/long.out" && ! grep -q '"finish_reason":"cancel' "$T/long.out" &&
  fail "client's request ended early: $(tail -c 300 "$T/long.out")"
pass "request $ID: client2 can neither cancel, see nor resume it; its owner can"

# bad key files stop a process at start, saying why
cp "$KEYS/coordinator.key" "$T/open.key"
chmod 644 "$T/open.key"
if "$BIN/sa-coordinator" --model "$M" --listen 'tcp://127.0.0.1:*' --key "$T/open.key" \
  --allow "$KEYS/allow" >"$T/bad1.log" 2>&1; then fail "a 0644 key was accepted"; fi
grep -q "chmod 600" "$T/bad1.log" || fail "0644 key: $(cat "$T/bad1.log")"
sed 's/public-key = "./public-key = "~/' "$KEYS/coordinator.key" >"$T/z85.key"
chmod 600 "$T/z85.key"
if "$BIN/sa-coordinator" --model "$M" --listen 'tcp://127.0.0.1:*' --key "$T/z85.key" \
  --allow "$KEYS/allow" >"$T/bad2.log" 2>&1; then fail "a bad Z85 key was accepted"; fi
grep -q "Z85" "$T/bad2.log" || fail "bad Z85: $(cat "$T/bad2.log")"
if "$BIN/sa-coordinator" --model "$M" --listen 'tcp://0.0.0.0:*' --insecure \
  >"$T/bad3.log" 2>&1; then fail "plain text on 0.0.0.0 was accepted"; fi
grep -q "allow-insecure-network" "$T/bad3.log" || fail "insecure bind: $(cat "$T/bad3.log")"
pass "bad permissions, bad Z85 and plain text off loopback are refused at start"

# refusals are counted, and the cluster still serves
n=$(refused)
[[ ${n:-0} -ge 2 ]] || fail "handshakes_refused = $n"
"$BIN/sa-client" submit "$T/clips/clip0.wav" --max-tokens 3 --json --coordinator "$COORD" \
  >"$T/ok.out" 2>&1 || fail "the cluster stopped serving: $(cat "$T/ok.out")"
pass "$n handshakes refused; the cluster still serves"
