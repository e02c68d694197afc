# Shared helpers for the integration tests: start real sa-cluster processes
# on loopback (every process binds tcp://127.0.0.1:* and reports the port it
# got), wait for health, and clean everything up on exit. Everything runs
# with CurveZMQ on, as a deployment does: a key per role in $T/keys (made
# with sa-keys), the allow-list $T/keys/allow, and sa-client using the client
# key through SA_KEY / SA_ALLOW.
#
# Usage: source lib.sh BIN_DIR ; every test runs under ctest's timeout too.
set -euo pipefail

BIN=${BIN:?set BIN to the folder holding sa-coordinator, sa-worker, ...}
T=$(mktemp -d /tmp/sa-it.XXXXXX)
PIDS=()
export OPENBLAS_NUM_THREADS=1
export SA_LOG_LEVEL=${SA_LOG_LEVEL:-info}

# make_keys DIR -> a key per role in DIR, their public keys in DIR/allow
make_keys() {
  local d=$1 r
  mkdir -p "$d"
  for r in coordinator encoder stage client operator; do
    "$BIN/sa-keys" gen "$r" --role "$r" --dir "$d" >/dev/null
    "$BIN/sa-keys" allow "$d/allow" "$d/$r.pub" >/dev/null
  done
}
KEYS=$T/keys
make_keys "$KEYS"
export SA_KEY=$KEYS/client.key SA_ALLOW=$KEYS/allow
# sec ROLE -> the --key/--allow arguments of a process of ROLE
sec() { echo "--key $KEYS/$1.key --allow $KEYS/allow"; }

cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.2
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [[ $rc -ne 0 ]]; then
    echo "---- logs (test failed, rc=$rc) ----"
    for f in "$T"/*.log; do [[ -f $f ]] && { echo "== $f"; tail -n 30 "$f"; }; done
  fi
  rm -rf "$T"
  exit $rc
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }

# make_model DIR SEED
make_model() { "$BIN/sa-model" init --preset tiny --seed "$2" --out "$1" >/dev/null; }

# start_coordinator MODEL [extra args] -> sets COORD
start_coordinator() {
  local model=$1; shift
  # shellcheck disable=SC2046
  "$BIN/sa-coordinator" --model "$model" --listen 'tcp://127.0.0.1:*' $(sec coordinator) \
    --endpoint-file "$T/coord.ep" "$@" >"$T/coordinator.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do [[ -s $T/coord.ep ]] && break; sleep 0.05; done
  [[ -s $T/coord.ep ]] || fail "coordinator did not start"
  COORD=$(cat "$T/coord.ep")
}

# start_encoder MODEL NAME
start_encoder() {
  # shellcheck disable=SC2046
  "$BIN/sa-encoder" --model "$1" --listen 'tcp://127.0.0.1:*' --coordinator "$COORD" \
    $(sec encoder) --backend-threads 1 >"$T/$2.log" 2>&1 &
  PIDS+=($!)
}

# start_worker MODEL LAYERS REPLICA NAME [extra args] ; pid in LAST_PID
start_worker() {
  local model=$1 layers=$2 rep=$3 name=$4; shift 4
  # shellcheck disable=SC2046
  "$BIN/sa-worker" --model "$model" --layers "$layers" --replica "$rep" $(sec stage) \
    --coordinator "$COORD" --threads 1 --kv-mem 8MiB --node-id "$name" "$@" \
    >"$T/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=($LAST_PID)
}

# wait_ready N_REPLICAS N_ENCODERS
wait_ready() {
  for _ in $(seq 200); do
    local js
    js=$("$BIN/sa-client" status --json --coordinator "$COORD" 2>/dev/null || true)
    local reps encs
    reps=$(grep -o '"replicas_ready":[0-9]*' <<<"$js" | cut -d: -f2 || true)
    encs=$(grep -o '{[^{}]*"role":"encoder"[^{}]*}' <<<"$js" | grep -c '"healthy":true' || true)
    if [[ ${reps:-0} -ge $1 && $encs -ge $2 ]]; then return 0; fi
    sleep 0.1
  done
  "$BIN/sa-client" status --coordinator "$COORD" || true
  fail "cluster not ready: want $1 replicas and $2 encoders"
}

# tokens_of JSON_FINAL_LINE -> space-separated token ids of chain 0 (empty,
# never a failed pipeline, when there are none: callers compare and say why)
tokens_of() {
  chain_tokens "$1" 0
}

# chain_tokens JSON_FINAL_LINE I -> space-separated token ids of chain I; the
# line is cut at each chain object, so text fields (which may hold any
# character) cannot hide the match
chain_tokens() {
  sed 's/{"chain":/\n{"chain":/g' <<<"$1" | grep -a "^{\"chain\":$2," |
    grep -o '"tokens":\[[0-9,]*\]' | sed 's/"tokens":\[//; s/\]//; s/,/ /g' || true
}

# final_of FILE -> the client's final event line (sa-client --json output)
final_of() {
  grep -a '"type":"final"' "$1" | tail -n 1 || true
}

# make_clips DIR N -> N short wav clips of different sounds and lengths
make_clips() {
  local d=$1 n=$2
  mkdir -p "$d"
  for i in $(seq 0 $((n - 1))); do
    local f=$((220 + 97 * i)) dur
    dur=$(awk "BEGIN{print 1.0 + 0.7 * $i}")
    sox -q -n -r 16000 -c 1 -b 16 "$d/clip$i.wav" synth "$dur" sine "$f" sine $((f * 3 / 2)) \
      tremolo 3 40 vol 0.5
  done
}

# kv_used_total -> sum of KV blocks used over every stage (from status); -1
# when the coordinator does not answer (a dead coordinator frees nothing)
kv_used_total() {
  local js
  js=$("$BIN/sa-client" status --json --coordinator "$COORD" 2>/dev/null) || { echo -1; return; }
  grep -o '"kv_blocks_used":[0-9]*' <<<"$js" | cut -d: -f2 | awk '{s+=$1} END{print s+0}'
}
