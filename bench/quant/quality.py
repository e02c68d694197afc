"""quality — what quantizing costs in next-token distribution, against bf16.

    /usr/bin/python3 bench/quant/quality.py [--bin build/bin] [--work build/quant-quality]

For each model below, writes its Q8_0 and Q4_0 copies with `sa-model
quantize` (LM head Q8_0), runs the whole decoder over the prompt with
`sa-model logits` (bf16 weights, then each copy, then bf16 weights with a
q8_0 KV cache: SA_KV_TYPE=q8_0) and prints, over every
position: the mean KL(p_bf16 || p_quant) in nats, the largest, and how
often the top-1 token agrees.
  oracle   the golden decoder case's model (tiny preset, seed 1234) over
           its golden prompt ids (tests/oracle/golden/decoder/case1_ids.npy)
  r1-mini  the shipped model over a held-out task's full target text
           (prompt, reasoning, answer; no audio rows)
  small    Qwen2.5-0.5B-shaped random weights (seed 1) over a text
Numbers come from our engine for both sides (the bf16 logits are checked
against HF Qwen2 by tests/test_oracle_decoder).
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(cmd, env=None):
    r = subprocess.run(cmd, capture_output=True, text=True,
                       env=dict(os.environ, OPENBLAS_NUM_THREADS="1", **(env or {})))
    if r.returncode:
        raise SystemExit(f"quality: {' '.join(cmd)} failed:\n{r.stderr[-600:]}")
    return r.stdout


def logits(bin_dir, model, prompt_args, out, kv="bf16"):
    run([os.path.join(bin_dir, "sa-model"), "logits", "--model", model, *prompt_args,
         "--out", out, "--threads", "2"], env={"SA_KV_TYPE": kv})
    return np.load(out).astype(np.float64)


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "bin"))
    ap.add_argument("--work", default=os.path.join(ROOT, "build", "quant-quality"))
    ap.add_argument("--skip-small", action="store_true", help="no 0.5B-shaped model (~1 GB)")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    sam = os.path.join(a.bin, "sa-model")
    cases = []
    oracle = os.path.join(a.work, "oracle")
    if not os.path.exists(os.path.join(oracle, "config.json")):
        run([sam, "init", "--preset", "tiny", "--seed", "1234", "--out", oracle])
    ids = np.load(os.path.join(ROOT, "tests", "oracle", "golden", "decoder", "case1_ids.npy"))
    cases.append(("oracle", oracle, ["--ids", ",".join(str(int(i)) for i in ids.ravel())]))
    r1 = os.path.join(ROOT, "models", "r1-mini")
    if os.path.exists(os.path.join(r1, "config.json")):
        sys.path.insert(0, os.path.join(ROOT, "train"))
        import tasks as T
        rng = np.random.default_rng(9003)
        ex = T.example(rng, "count", T.SpeechCache())
        text = (f"<|BOT|>human\n{ex['question']}<|EOT|><|BOT|>assistant\n<think>\n"
                f"{T.target_text(ex)}<|EOT|>")
        cases.append(("r1-mini", r1, ["--prompt", text]))
    if not a.skip_small:
        small = os.path.join(ROOT, "build", "models", "small-seed1")
        if not os.path.exists(os.path.join(small, "config.json")):
            run([sam, "init", "--preset", "small", "--seed", "1", "--out", small])
        cases.append(("small", small, ["--prompt", "The audio encoder has an output frame "
                                       "rate of 25 Hz and is frozen during the entire training "
                                       "process. An audio adaptor with a downsampling rate of "
                                       "2 connects it to the decoder."]))
    print(f"{'model':8s} {'format':7s} {'positions':>9s} {'mean KL':>10s} {'max KL':>10s} "
          f"{'top-1 agree':>11s}")
    for name, model, prompt in cases:
        ref = log_softmax(logits(a.bin, model, prompt, os.path.join(a.work, f"{name}-bf16.npy")))
        for fmt in ("q8_0", "q4_0", "kv-q8_0"):
            if fmt.startswith("kv-"):  # bf16 weights, the KV cache quantized
                with open(os.path.join(model, "config.json")) as f:
                    cfg = json.load(f)
                hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
                if hd % 32:  # a q8 block must not straddle two heads
                    print(f"{name:8s} {fmt:7s} (head dim {hd}: not a multiple of 32)")
                    continue
                q = logits(a.bin, model, prompt, os.path.join(a.work, f"{name}-{fmt}.npy"),
                           kv=fmt[3:])
            else:
                qdir = os.path.join(a.work, f"{name}-{fmt}")
                run([sam, "quantize", model, qdir, "--type", fmt])
                q = logits(a.bin, qdir, prompt, os.path.join(a.work, f"{name}-{fmt}.npy"))
            q = log_softmax(q)
            kl = (np.exp(ref) * (ref - q)).sum(axis=-1)
            agree = (ref.argmax(-1) == q.argmax(-1)).mean()
            print(f"{name:8s} {fmt:7s} {len(kl):9d} {kl.mean():10.2e} {kl.max():10.2e} "
                  f"{100 * agree:10.1f} %", flush=True)


if __name__ == "__main__":
    main()
