#!/usr/bin/env bash
# Quantized checkpoints end to end (docs/quantization.md): sa-model quantize
# writes Q8_0 and Q4_0 copies (and, in two runs, a mixed one); a
# pipeline whose stages run different formats (layer 0 Q4_0, the rest Q8_0)
# gives exactly the tokens of sa-model generate on the same mixed
# checkpoint; a quantized weight without its scales, or with a wrong shape,
# fails the load with a message naming the tensor.
#   usage: test_quantize.sh BIN_DIR
BIN=$1
source "$(dirname "$0")/lib.sh"

M=$T/model
make_model "$M" 23
make_clips "$T/clips" 2
L=$(grep -o '"num_hidden_layers": *[0-9]*' "$M/config.json" | grep -o '[0-9]*$')
Q=$BIN/sa-model

"$Q" quantize --help | grep -q "q4_0" || fail "quantize --help"
"$Q" quantize "$M" "$T/x" --type q3 2>/dev/null && fail "an unknown --type was accepted"
"$Q" quantize "$M" "$T/q8" --type q8_0 >"$T/q8.out" 2>&1 || fail "quantize q8_0: $(cat "$T/q8.out")"
"$Q" quantize "$M" "$T/q4" --type q4_0 >"$T/q4.out" 2>&1 || fail "quantize q4_0: $(cat "$T/q4.out")"
grep -q '"format":[[:space:]]*"q4_0"' "$T/q4/config.json" || fail "config.json lacks quantization_config"
# layer 0 in Q4_0, then the rest in Q8_0 (the Q4_0 weights are kept)
"$Q" quantize "$M" "$T/mix0" --type q4_0 --layers 0:1 >/dev/null 2>&1 || fail "quantize --layers"
"$Q" quantize "$T/mix0" "$T/mix" --type q8_0 >"$T/mix.out" 2>&1 || fail "quantize mix: $(cat "$T/mix.out")"
grep -q "warning" "$T/mix.out" && fail "re-quantizing warned: $(cat "$T/mix.out")"
pass "quantize: q8_0, q4_0 and a mixed checkpoint ($(grep -o '[0-9.]* MB -> [0-9.]* MB' "$T/q4.out"))"

# a pipeline of stages in different formats equals generate on the mixed model
start_coordinator "$T/mix"
start_encoder "$T/mix" encoder0
start_worker "$T/q4" "0:1" r0 stage0
start_worker "$T/q8" "1:$L" r0 stage1
wait_ready 1 1
for mode in "--temperature 0" "--temperature 0.9 --seed 11"; do
  # shellcheck disable=SC2086
  "$BIN/sa-client" submit "$T/clips/clip1.wav" --prompt "What is it?" --max-tokens 24 $mode \
    --json --coordinator "$COORD" >"$T/c.json" 2>"$T/c.err" || fail "submit: $(cat "$T/c.err")"
  got=$(tokens_of "$(final_of "$T/c.json")")
  # shellcheck disable=SC2086
  want=$("$Q" generate --model "$T/mix" --audio "$T/clips/clip1.wav" --prompt "What is it?" \
    --max-tokens 24 $mode --ids --threads 1 2>/dev/null | grep -a '^ids:' | sed 's/^ids: *//')
  [[ -n $want && "$got" == "$want" ]] || fail "$mode: cluster [$got] != generate [$want]"
done
pass "stage 0 in Q4_0 and stage 1 in Q8_0: the cluster's tokens equal generate on the mixed model"

# malformed quantized checkpoints: a scale tensor dropped, a q tensor's shape
# cut, a Q8_0 value of -128 (outside -127..127: the kernels negate w by x's
# sign, and -(-128) does not fit a byte)
python3 - "$T/q8/model.safetensors" "$T" <<'PY'
import json, os, shutil, struct, sys
src, T = sys.argv[1], sys.argv[2]
raw = open(src, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr, data = json.loads(raw[8:8 + n]), raw[8 + n:]
def write(name, h, data=data):
    d = os.path.join(T, name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(os.path.dirname(src)):
        if f != "model.safetensors":
            shutil.copy(os.path.join(os.path.dirname(src), f), d)
    b = json.dumps(h).encode()
    b += b" " * (-len(b) % 8)
    open(os.path.join(d, "model.safetensors"), "wb").write(struct.pack("<Q", len(b)) + b + data)
h = dict(hdr); del h["model.layers.0.mlp.down_proj.weight_scale"]
write("noscale", h)
h = json.loads(json.dumps(hdr))
t = h["model.layers.0.self_attn.o_proj.weight"]
t["shape"] = [t["shape"][0] // 2, t["shape"][1]]
a, b = t["data_offsets"]; t["data_offsets"] = [a, a + (b - a) // 2]
write("badshape", h)
t = hdr["model.layers.0.mlp.down_proj.weight"]
assert t["dtype"] == "I8", t
a = t["data_offsets"][0] + 37
write("minus128", hdr, data[:a] + b"\x80" + data[a + 1:])
PY
for bad in noscale badshape minus128; do
  if "$Q" generate --model "$T/$bad" --prompt hi --max-tokens 2 >"$T/$bad.out" 2>&1; then
    fail "$bad: generate accepted a malformed checkpoint"
  fi
  grep -q "model.layers.0" "$T/$bad.out" || fail "$bad: error does not name the tensor: $(cat "$T/$bad.out")"
done
pass "a missing scale, a wrong shape or a Q8_0 -128: the load fails naming the tensor ($(grep -m1 -o 'decoder: [^;]*' "$T/noscale.out"); $(grep -m1 -o 'decoder: [^;]*' "$T/minus128.out"))"
