#!/usr/bin/env python3
"""Decoder oracle: golden logits and greedy tokens for the tiny test model.

An independent fp32 reference for model/decoder: Hugging Face transformers'
Qwen2ForCausalLM, built from our config.json and the bf16 weights of the
checkpoint that `sa-model init --preset tiny --seed 1234` writes (weights
widened to fp32, every op in fp32, eager attention). Audio-style embedding
rows enter through inputs_embeds.

Writes tests/oracle/golden/decoder/:
  meta.json                    preset, seed, shapes
  case{1,2}_ids.npy            int32 [T] prompt ids
  case2_embed_pos.npy          int32 [n] positions that take given rows
  case2_embeds.npy             float32 [n, H] the rows
  case{1,2}_logits.npy         float32 [T, V] logits at every prompt position
  case{1,2}_greedy.npy         int32 [64] greedy continuation (argmax, no cache)
  case{1,2}_greedy_margin.npy  float32 [64] top-1 minus top-2 logit at each
                               greedy step (a step whose margin a backend's
                               logit error can cross may flip)
  case{1,2}_logits_bf16.npy    float32 [T, V] the same model run in bf16 (HF's
                               bf16 inference: every op's output rounded to
                               bf16): the error a bf16 reference makes, the
                               bound for backends that round activations

Regenerate (needs scripts/setup --oracle and a built sa-model):
  .venv-oracle/bin/python tests/oracle/decoder_oracle.py \
      --sa-model build/bin/sa-model
tests/unit/test_oracle_decoder.c rebuilds the same checkpoint through the
init code and compares.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import Qwen2Config, Qwen2ForCausalLM

PRESET = "tiny"
SEED = 1234
N_GREEDY = 64


def build_model(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    c = c.get("text_config", c) if "hidden_size" not in c else c
    cfg = Qwen2Config(
        vocab_size=c["vocab_size"],
        hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=c["num_attention_heads"],
        num_key_value_heads=c["num_key_value_heads"],
        max_position_embeddings=c["max_position_embeddings"],
        rms_norm_eps=c["rms_norm_eps"],
        rope_theta=c["rope_theta"],
        tie_word_embeddings=c["tie_word_embeddings"],
        hidden_act="silu",
        use_sliding_window=False,
        attention_dropout=0.0,
        attn_implementation="eager",
    )
    assert c.get("head_dim", cfg.hidden_size // cfg.num_attention_heads) == \
        cfg.hidden_size // cfg.num_attention_heads
    sd = load_file(os.path.join(model_dir, "model.safetensors"))
    dec = {k: v.to(torch.float32) for k, v in sd.items()
           if k.startswith("model.") or k == "lm_head.weight"}
    for k, v in sd.items():
        assert v.dtype == torch.bfloat16, (k, v.dtype)
    model = Qwen2ForCausalLM(cfg).to(torch.float32).eval()
    missing, unexpected = model.load_state_dict(dec, strict=False)
    allowed_missing = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    assert set(missing) <= allowed_missing, missing
    assert not unexpected, unexpected
    if cfg.tie_word_embeddings:
        model.tie_weights()
    return model, cfg


@torch.no_grad()
def logits_of(model, ids, embed_pos=None, embeds=None):
    x = model.model.embed_tokens(torch.tensor([ids], dtype=torch.long))
    if embed_pos is not None and len(embed_pos):
        x[0, torch.tensor(embed_pos, dtype=torch.long)] = \
            torch.tensor(embeds, dtype=torch.float32).to(x.dtype)
    pos = torch.arange(len(ids)).unsqueeze(0)
    out = model(inputs_embeds=x, position_ids=pos, use_cache=False)
    return out.logits[0].float().numpy()


def greedy(model, ids, embed_pos, embeds, n):
    seq = list(ids)
    out = []
    for _ in range(n):
        lg = logits_of(model, seq, embed_pos, embeds)
        t = int(np.argmax(lg[-1]))
        out.append(t)
        seq.append(t)
    return np.array(out, dtype=np.int32)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sa-model", default="build/bin/sa-model",
                    help="sa-model binary used to write the tiny checkpoint")
    ap.add_argument("--model-dir", help="use this checkpoint instead")
    ap.add_argument("--out", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "golden", "decoder"))
    args = ap.parse_args()
    torch.manual_seed(0)
    tmp = None
    model_dir = args.model_dir
    if not model_dir:
        tmp = tempfile.TemporaryDirectory()
        model_dir = tmp.name
        subprocess.run([args.sa_model, "init", "--preset", PRESET, "--seed",
                        str(SEED), "--out", model_dir], check=True)
    model, cfg = build_model(model_dir)
    V, H = cfg.vocab_size, cfg.hidden_size
    rng = np.random.RandomState(7)
    # ids below the tokenizer's base vocabulary plus a few high ones
    ids1 = rng.randint(0, V, size=23).astype(np.int32)
    ids2 = rng.randint(0, V, size=40).astype(np.int32)
    embed_pos = np.arange(5, 15, dtype=np.int32)      # 10 "audio" rows
    embeds = (rng.standard_normal((len(embed_pos), H)) * 0.5).astype(np.float32)

    os.makedirs(args.out, exist_ok=True)
    lg1 = logits_of(model, ids1.tolist())
    lg2 = logits_of(model, ids2.tolist(), embed_pos.tolist(), embeds)
    g1 = greedy(model, ids1.tolist(), None, None, N_GREEDY)
    g2 = greedy(model, ids2.tolist(), embed_pos.tolist(), embeds, N_GREEDY)
    mb = model.to(torch.bfloat16)
    lg1b = logits_of(mb, ids1.tolist())
    lg2b = logits_of(mb, ids2.tolist(), embed_pos.tolist(), embeds)
    model = model.to(torch.float32)
    print("bf16 reference: max |dlogit| case1 %.3g, case2 %.3g"
          % (np.abs(lg1b - lg1).max(), np.abs(lg2b - lg2).max()))
    save = {
        "case1_logits_bf16": lg1b.astype(np.float32),
        "case2_logits_bf16": lg2b.astype(np.float32),
        "case1_ids": ids1, "case1_logits": lg1.astype(np.float32),
        "case1_greedy": g1,
        "case2_ids": ids2, "case2_embed_pos": embed_pos,
        "case2_embeds": embeds, "case2_logits": lg2.astype(np.float32),
        "case2_greedy": g2,
    }
    for k, v in save.items():
        np.save(os.path.join(args.out, k + ".npy"), v)
    meta = {"preset": PRESET, "seed": SEED, "vocab": V, "hidden": H,
            "n_greedy": N_GREEDY,
            "reference": "transformers %s Qwen2ForCausalLM fp32 eager, torch %s"
                         % (__import__("transformers").__version__,
                            torch.__version__)}
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    # margins tell whether greedy ties could flip on rounding
    for name, ids, ep, em, g in (("case1", ids1, None, None, g1),
                                 ("case2", ids2, embed_pos, embeds, g2)):
        seq = list(ids) + list(g)
        lg = logits_of(model, seq[:-1], ep, em)[len(ids) - 1:]
        top2 = np.sort(lg, axis=1)[:, -2:]
        np.save(os.path.join(args.out, name + "_greedy_margin.npy"),
                (top2[:, 1] - top2[:, 0]).astype(np.float32))
        print("%s: max|logit| %.3f, smallest greedy top-2 margin %.2e"
              % (name, np.abs(lg).max(), (top2[:, 1] - top2[:, 0]).min()))
    print("wrote", args.out)
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
