#!/usr/bin/env bash
# The OpenAI Python SDK (pinned in tests/integration/requirements.txt, in the
# venv scripts/setup makes) against the HTTP API: a streamed chat completion
# with an input_audio part, a non-streamed one with n = 2, a conversation of
# several turns whose prompt length equals Hugging Face's tokenizer on the
# rendered template, and errors raised as the SDK's own exception classes.
# Exits 77 without the venv.
BIN=$1
PY=$(cd "$(dirname "$0")/../.." && pwd)/.venv-test/bin/python
if ! "$PY" -c "import openai, tokenizers" 2>/dev/null; then
  echo "skipped: no .venv-test with the openai and tokenizers packages (scripts/setup installs them)"
  exit 77
fi
source "$(dirname "$0")/lib.sh"

M=$T/model
make_model "$M" 31
make_clips "$T/clips" 1
start_coordinator "$M" --http 127.0.0.1:0 --served-model-name tiny
start_encoder "$M" encoder0
start_worker "$M" 0:1 r0 s0
start_worker "$M" 1: r0 s1
wait_ready 1 1
URL=$(grep -ao '^http http://[^ ]*' "$T/coordinator.log" | head -n 1 | cut -d' ' -f2)
[[ -n $URL ]] || fail "the coordinator did not print its HTTP URL"

"$PY" - "$URL" "$T/clips/clip0.wav" "$M/tokenizer.json" <<'PYEOF' || fail "OpenAI SDK checks failed (above)"
import base64, sys
import openai
import tokenizers

url, clip, tokjson = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=url + "/v1", api_key="unused-on-loopback", max_retries=0)
assert [m.id for m in client.models.list()] == ["tiny"]

audio = base64.b64encode(open(clip, "rb").read()).decode()
messages = [{"role": "user", "content": [
    {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
    {"type": "text", "text": "What is happening?"}]}]
text, finish, usage = "", None, None
for chunk in client.chat.completions.create(
        model="tiny", messages=messages, stream=True, max_tokens=24, temperature=0.7, seed=11,
        stream_options={"include_usage": True}):
    for c in chunk.choices:
        text += c.delta.content or ""
        finish = c.finish_reason or finish
    usage = chunk.usage or usage
assert text and finish in ("stop", "length"), (text, finish)
assert usage.completion_tokens >= 1 and usage.prompt_tokens > 0, usage
print("ok: streamed", len(text), "chars, finish", finish, "usage", usage.completion_tokens)

r = client.chat.completions.create(model="tiny", messages=messages, n=2, max_tokens=8,
                                   temperature=0.9, seed=5)
assert len(r.choices) == 2 and all(c.message.role == "assistant" for c in r.choices), r
print("ok: n=2 ->", [c.finish_reason for c in r.choices])

# A conversation: history with the earlier answer's reasoning kept, a later
# system turn, and the three endings. Usage's prompt_tokens must equal Hugging
# Face's tokenizer on the template rendered by hand (docs/model.md).
hf = tokenizers.Tokenizer.from_file(tokjson)
history = [{"role": "system", "content": "Be brief."},
           {"role": "human", "content": "Name a sound."},
           {"role": "assistant", "content": "<think>\nA bell.\n</think>\nA bell."},
           {"role": "system", "content": "One word."},
           {"role": "user", "content": [{"type": "text", "text": "And "},
                                        {"type": "text", "text": "another?"}]}]
rendered = ("<|BOT|>system\nBe brief.<|EOT|><|BOT|>human\nName a sound.<|EOT|>"
            "<|BOT|>assistant\n<think>\nA bell.\n</think>\nA bell.<|EOT|>"
            "<|BOT|>system\nOne word.<|EOT|><|BOT|>human\nAnd another?")
def complete(msgs, **extra):
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=6,
                                       temperature=0.8, seed=3, extra_body=extra)
    return r.choices[0].message.content, r.usage.prompt_tokens
def hf_count(s):
    return len(hf.encode(s, add_special_tokens=False).ids)
gen = complete(history)
want = hf_count(rendered + "<|EOT|><|BOT|>assistant\n<think>\n")
assert gen[1] == want, ("generation prompt", gen, want)
prefix = complete(history + [{"role": "assistant", "content": "<think>\n", "eot": False}],
                  continue_final_message=True, add_generation_prompt=False)
assert prefix == gen, ("a <think>\\n prefix must equal the generation prompt", prefix, gen)
longer = complete(history + [{"role": "assistant", "content": "<think>\nIt rings"}],
                  continue_final_message=True, add_generation_prompt=False)
want = hf_count(rendered + "<|EOT|><|BOT|>assistant\n<think>\nIt rings")
assert longer[1] == want, ("continued prefix", longer, want)
closed = complete(history, add_generation_prompt=False)
assert closed[1] == hf_count(rendered + "<|EOT|>"), ("no generation prompt", closed)
print("ok: conversation prompt tokens", gen[1], longer[1], closed[1], "= Hugging Face's")

try:
    client.chat.completions.create(model="gpt-9", messages=messages, max_tokens=4)
    raise SystemExit("unknown model accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404 and "gpt-9" in str(e), e
    print("ok: unknown model -> NotFoundError")
try:
    client.chat.completions.create(model="tiny", max_tokens=4,
                                   messages=[{"role": "robot", "content": "x"}])
    raise SystemExit("unknown role accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and e.body and e.body.get("param") == "messages", e.body
    print("ok: unknown role -> BadRequestError, param messages")
PYEOF
pass "the OpenAI SDK ${PY##*/} streams, forks and gets errors as its own exceptions"
