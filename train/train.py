"""train — trains the small Step-Audio-R1-architecture reasoning model.

    /usr/bin/python3 train/train.py --out models/sa-reason [--steps N] [--seed S]

Builds the tokenizer from the task text, then trains the whole model
(encoder and adapter included, from scratch) on a stream of generated
examples (train/tasks.py, seeds 1000+) on the CPU, and writes a checkpoint
the loader reads: config.json, bf16 safetensors (no file over 4 MiB),
tokenizer.json, tokenizer_config.json, and train_log.jsonl. The result is
reproducible from --seed on one machine (torch's CPU kernels may round
differently on another CPU).

The loss is the cross-entropy of the assistant's text only: the reasoning
after the prompt's "<think>\\n", "\\n</think>\\n", the answer and <|EOT|>.
Progress (step, loss, examples/s, time left) goes to stderr every
--log-every steps; a checkpoint is exported every --save-every steps, so an
interrupted run leaves a usable model.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model as M  # noqa: E402
import tasks as T  # noqa: E402
import tok  # noqa: E402

# decoder and encoder sizes (about 1.7 M parameters; bf16 about 3.4 MB)
CONFIG = {
    "architectures": ["StepAudio2ForCausalLM"], "model_type": "step_audio_2",
    "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 384,
    "vocab_size": 0, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "audio_encoder_config": {
        "n_mels": 128, "n_audio_ctx": 1500, "n_audio_state": 128, "n_audio_head": 4,
        "n_audio_layer": 2, "llm_dim": 128, "kernel_size": 3, "adapter_stride": 2,
        "adapter_hidden_size": 256},
}
MIX = {"count": 0.4, "compare": 0.15, "arith": 0.3, "voice": 0.15}


def prompt_text(question, n_audio):
    """The chat template (core/chat.c) with no system text: the human turn
    holds the audio then the question; the assistant turn opens <think>."""
    return ("<|BOT|>human\n<audio_start>" + "<audio_patch>" * n_audio + "<audio_end>" +
            question + "<|EOT|><|BOT|>assistant\n<think>\n")


def build_tokenizer(out):
    rng = np.random.default_rng(7)
    sp = T.SpeechCache()
    corpus = ["human\n", "assistant\n", "system\n"]
    for i in range(2000):
        ex = T.example(rng, T.TASKS[i % 4], sp)
        corpus += [ex["question"], T.target_text(ex)]
    vocab, merges = tok.train(corpus, 320)
    tok.write(out, vocab, merges)
    return tok.Tokenizer(os.path.join(out, "tokenizer.json"))


def batch(rng, task, n, tk, speech):
    exs = [T.example(rng, task, speech) for _ in range(n)]
    audio = torch.from_numpy(np.stack([e["clip"] for e in exs]))
    na = M.audio_tokens(audio.shape[1])
    events = torch.from_numpy(np.stack([T.frame_labels(e, na) for e in exs]))
    seqs, lmask = [], []
    for e in exs:
        p = tk.encode(prompt_text(e["question"], na))
        t = tk.encode(T.target_text(e) + "<|EOT|>")
        seqs.append(p + t)
        lmask.append([0] * len(p) + [1] * len(t))
    L = max(len(s) for s in seqs)
    pad = tk.special["<|endoftext|>"]
    ids = torch.full((n, L), pad, dtype=torch.long)
    m = torch.zeros((n, L), dtype=torch.bool)
    for i, (s, k) in enumerate(zip(seqs, lmask)):
        ids[i, :len(s)] = torch.tensor(s)
        m[i, :len(k)] = torch.tensor(k, dtype=torch.bool)
    return audio, ids, m, events


@torch.no_grad()
def greedy(net, tk, clip, question, max_new=120):
    na = M.audio_tokens(len(clip))
    ids = tk.encode(prompt_text(question, na))
    audio = torch.from_numpy(clip)[None]
    rows = net.audio_rows(audio)
    patch, eot = tk.special["<audio_patch>"], tk.special["<|EOT|>"]
    out = []
    for _ in range(max_new):
        x = torch.tensor([ids + out])
        h = net.model.embed_tokens(x)
        h = h.masked_scatter((x == patch)[..., None], rows.reshape(-1, rows.shape[-1]))
        nxt = int(net.lm_head(net.model(h)[:, -1]).argmax(-1))
        if nxt == eot:
            break
        out.append(nxt)
    text = tk.decode(out)
    return text.split("</think>")[-1].strip() if "</think>" in text else "", text


def evaluate(net, tk, seed, n):
    rng = np.random.default_rng(seed)
    sp = T.SpeechCache()
    hit = {t: [0, 0] for t in T.TASKS}
    for i in range(n):
        ex = T.example(rng, T.TASKS[i % 4], sp)
        ans, _ = greedy(net, tk, ex["clip"], ex["question"])
        hit[ex["task"]][0] += ans == ex["answer"]
        hit[ex["task"]][1] += 1
    return {t: h[0] / max(h[1], 1) for t, h in hit.items()}


def init_weights(net):
    """Linear layers N(0, 0.02), the residual outputs scaled down further (a
    deep stack starts near identity), biases zero; the convolutions and the
    adapter's linears He-initialised, so the sound reaches the decoder at the
    scale of a token embedding. (With 0.02 and torch's default biases there
    too, the conv features came out ~0.04, the blocks' random outputs and the
    biases drowned them, the audio rows were nearly constant, and a first
    training never learned to listen: greedy accuracy stayed at chance.)"""
    for name, p in net.named_parameters():
        if name.endswith(".bias") and "_ln" not in name and "norm" not in name:
            torch.nn.init.zeros_(p)  # torch's default bias (±1/sqrt(fan_in)) swamped the signal
        elif p.dim() == 3 or name.startswith("adapter.linear"):  # the sound's path
            torch.nn.init.kaiming_normal_(p, nonlinearity="relu")
        elif p.dim() >= 2 and "embed" not in name and "positional" not in name:
            torch.nn.init.normal_(p, std=0.02)
        if name.endswith("o_proj.weight") or name.endswith("down_proj.weight") or \
                name.endswith("attn.out.weight") or name.endswith("mlp.2.weight"):
            p.data.mul_(1 / math.sqrt(2 * 4))


def check_grads(net, tk):
    """Refuses to train when this torch's float32 gradients disagree with
    float64 ones on a small batch (relative error over 1e-3 in any tensor):
    a CPU kernel returning wrong gradients makes a run that never learns."""
    import copy
    rng = np.random.default_rng(12345)
    audio, ids, _, _ = batch(rng, "compare", 2, tk, T.SpeechCache())
    grads = []
    for dt in (torch.float32, torch.float64):
        m = copy.deepcopy(net).to(dt)
        m.zero_grad()
        lg = m(audio.to(dt), ids, tk.special["<audio_patch>"])
        lg.double().pow(2).mean().backward()
        grads.append({n: p.grad.double() for n, p in m.named_parameters() if p.grad is not None})
    for n, g64 in grads[1].items():
        err = (grads[0][n] - g64).norm() / (g64.norm() + 1e-12)
        if not err <= 1e-3:
            raise SystemExit(f"train: float32 gradient of {n} is off by {err:.3g} (relative) "
                             "against float64 on this machine; refusing to train")


def clip_grads(params, max_norm):
    """Scales the gradients to a total norm of at most max_norm; returns the
    norm. Summed in float64 here: torch 1.13's clip_grad_norm_ now and then
    returned NaN on finite gradients on this CPU (and then wrote NaN into
    every gradient)."""
    gs = [p.grad for p in params if p.grad is not None]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in gs))
    if torch.isfinite(norm) and norm > max_norm:
        for g in gs:
            g.mul_(float(max_norm / norm))
    return norm


def export(net, out):
    cfg = dict(net.config)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    return M.save_safetensors(M.state_for_export(net), out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="checkpoint folder to write")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--init", metavar="DIR",
                    help="start from this checkpoint's weights (same config and tokenizer)")
    ap.add_argument("--aux", type=float, default=1.0,
                    help="weight of the auxiliary loss: each audio row's event class "
                         "(what sounds there: beep onset, tone pitch, word, voice), "
                         "from a linear head that is not exported")
    ap.add_argument("--init-only", action="store_true",
                    help="write the tokenizer and the untrained model, then stop")
    a = ap.parse_args()
    if not 0 <= a.seed < T.TRAIN_SEED_BASE:
        raise SystemExit(f"train: --seed must be in [0, {T.TRAIN_SEED_BASE})")
    torch.set_num_threads(a.threads)
    # torch 1.13's oneDNN (mkldnn) backward returned gradients of ~1e22 for
    # the encoder and adapter on this Sapphire Rapids CPU (float64 and the
    # native kernels give ~1), which clipping then turned into no learning
    # at all: the cause of the chance-level runs. Its forward is fine.
    torch.backends.mkldnn.enabled = False
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    tk = build_tokenizer(a.out)
    cfg = json.loads(json.dumps(CONFIG))
    cfg["vocab_size"] = (tk.size + 63) // 64 * 64
    net = M.StepAudio(cfg)
    init_weights(net)
    if a.init:
        src = M.load(a.init)
        if src.config["vocab_size"] != cfg["vocab_size"]:
            raise SystemExit(f"train: {a.init} has another vocabulary")
        net.load_state_dict(src.state_dict())
        print(f"train: weights from {a.init}", file=sys.stderr)
    aux_head = torch.nn.Linear(cfg["hidden_size"], T.N_EVENTS)
    n_par = sum(p.numel() for p in net.parameters())
    print(f"train: {n_par / 1e6:.2f} M parameters, vocab {cfg['vocab_size']} "
          f"({tk.size} tokens)", file=sys.stderr)
    if a.init_only:
        export(net, a.out)
        return
    params = list(net.parameters()) + list(aux_head.parameters())
    check_grads(net, tk)
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warm = max(1, min(200, a.steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 *
                                                    (1 + math.cos(math.pi * min(s, a.steps) / a.steps))))
    rng = np.random.default_rng(T.TRAIN_SEED_BASE + a.seed)
    speech = T.SpeechCache()
    names, probs = list(MIX), np.array(list(MIX.values()))
    log = open(os.path.join(a.out, "train_log.jsonl"), "w")
    t0, seen, ema, skipped = time.time(), 0, None, 0
    for step in range(1, a.steps + 1):
        task = names[rng.choice(len(names), p=probs)]
        audio, ids, m, events = batch(rng, task, a.batch, tk, speech)
        logits, rows = net(audio, ids[:, :-1], tk.special["<audio_patch>"], with_rows=True)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                               reduction="none")
        w = m[:, 1:].reshape(-1).float()
        loss = (loss * w).sum() / w.sum()
        if a.aux > 0:
            aux = F.cross_entropy(aux_head(rows).reshape(-1, T.N_EVENTS), events.reshape(-1))
            loss = loss + a.aux * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = clip_grads(params, 1.0)
        if not (torch.isfinite(loss) and torch.isfinite(gn)):
            skipped += 1  # a non-finite step is dropped, not applied
            print(f"train: step {step}: non-finite loss ({loss.item():.3g}) or gradient norm "
                  f"({gn.item():.3g}), skipped ({skipped} so far)",
                  file=sys.stderr, flush=True)
            sched.step()
            continue
        opt.step()
        sched.step()
        seen += a.batch
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % a.log_every == 0 or step == a.steps:
            el = time.time() - t0
            rec = {"step": step, "loss": round(ema, 4), "lr": sched.get_last_lr()[0],
                   "examples": seen, "seconds": round(el, 1)}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(f"train: step {step}/{a.steps} loss {ema:.3f} {seen / el:.1f} ex/s, "
                  f"{el / 60:.1f} min, ~{el / step * (a.steps - step) / 60:.1f} min left",
                  file=sys.stderr, flush=True)
        if step % a.eval_every == 0 or step == a.steps:
            net.eval()
            acc = evaluate(net, tk, 7777, 40)
            net.train()
            log.write(json.dumps({"step": step, "greedy_acc_40": acc}) + "\n")
            print(f"train: step {step} greedy accuracy (40 clips) {acc}", file=sys.stderr,
                  flush=True)
        if step % a.save_every == 0 or step == a.steps:
            export(net, a.out)
    log.close()


if __name__ == "__main__":
    main()
