#!/usr/bin/env python3
"""encoder_oracle — independent PyTorch reference of the audio encoder + adaptor.

Writes the golden data that tests/unit/test_encoder_golden.c compares the C
encoder against. Everything here is written from docs/model.md and the public
Step-Audio 2 code, NOT from our C sources:

  * audio: the fixture WAVs are read with Python's `wave` module (PCM16 ->
    x / 32768), channels averaged with equal weight (model/audio's downmix);
    all fixture clips are 16 kHz already, so there is no resampling.
  * mel: torch.stft (n_fft 400, hop 160, periodic Hann, centred, reflect
    padding) after 479 zeros of right padding, power spectrum without the last
    frame, librosa's default Slaney mel filterbank (re-derived below in numpy,
    librosa is not installed), log10(max(mel, 1e-10)), clamp at max - 8,
    (x + 4) / 4.
  * encoder + adaptor: plain torch modules mirroring Step-Audio 2's
    AudioEncoder / Adaptor, run in float64 from the checkpoint's bf16 weights
    (every weight is exactly representable), each 25 s chunk alone.

Usage (the tiny checkpoint comes from `sa-model init --preset tiny --seed N`):
    /usr/bin/python3 tests/oracle/encoder_oracle.py --model /tmp/tiny \
        --fixtures tests/fixtures/audio --out tests/oracle/golden/encoder

The same modules are also run in bf16; each clip's max |bf16 - float64| is
recorded as bf16_max_diff (the bound for backends that round activations).

Output: one <clip>.npy per clip (float32 [rows, hidden]: the embedding rows,
every `row_stride`-th row when the clip has many) and meta.json with the
chunk token counts, the full shape, the row stride and sum / sum|x| / max|x|
over all rows.
"""
import argparse
import copy
import json
import math
import os
import struct
import sys
import wave

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

CHUNK = 400000  # 25 s at 16 kHz


# ----------------------------------------------------------------- weights
def load_safetensors(path):
    """Minimal safetensors reader: {name: float64 tensor}. bf16 -> exact."""
    out = {}
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(hlen))
        base = 8 + hlen
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            f.seek(base + a)
            raw = f.read(b - a)
            dt = info["dtype"]
            if dt == "BF16":
                u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
                arr = u.view(np.float32)
            elif dt == "F32":
                arr = np.frombuffer(raw, dtype="<f4")
            elif dt == "F16":
                arr = np.frombuffer(raw, dtype="<f2").astype(np.float32)
            else:
                continue
            out[name] = torch.from_numpy(
                arr.astype(np.float64).reshape(info["shape"]))
    return out


def load_model_weights(model_dir):
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(idx):
        files = sorted(set(json.load(open(idx))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    w = {}
    for f in files:
        w.update(load_safetensors(os.path.join(model_dir, f)))
    return w


def load_config(model_dir):
    c = json.load(open(os.path.join(model_dir, "config.json")))
    a = c["audio_encoder_config"]
    text = c.get("text_config", c)
    return {
        "n_mels": a.get("n_mels", 128),
        "n_ctx": a.get("n_audio_ctx", 1500),
        "n_state": a["n_audio_state"],
        "n_head": a["n_audio_head"],
        "n_layer": a["n_audio_layer"],
        "kernel_size": a.get("kernel_size", 3),
        "adapter_stride": a.get("adapter_stride", 2),
        "hidden": text["hidden_size"],
    }


# --------------------------------------------------------------------- mel
def hz_to_mel(f):  # Slaney (librosa htk=False)
    f = np.asanyarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(f >= min_log_hz,
                    min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep,
                    mels)


def mel_to_hz(m):
    m = np.asanyarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel,
                    min_log_hz * np.exp(logstep * (m - min_log_mel)), freqs)


def mel_filters(sr=16000, n_fft=400, n_mels=128):
    """librosa.filters.mel(sr, n_fft, n_mels) defaults: fmin 0, fmax sr/2,
    Slaney scale, Slaney area norm, float32 result."""
    fftfreqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2.0), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((n_mels, 1 + n_fft // 2))
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, None]
    return weights.astype(np.float32)


def log_mel(audio, n_mels):
    """audio: float32 torch [N] -> [n_mels, T] float32 (the reference's
    log_mel_spectrogram with padding=479)."""
    audio = F.pad(audio, (0, 479))
    window = torch.hann_window(400)
    stft = torch.stft(audio, 400, 160, window=window, return_complex=True)
    mag = stft[..., :-1].abs() ** 2
    filters = torch.from_numpy(mel_filters(n_mels=n_mels))
    mel = filters @ mag
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def read_wav_mono(path):
    with wave.open(path, "rb") as w:
        assert w.getsampwidth() == 2, "fixture clips are PCM16"
        assert w.getframerate() == 16000, "fixture clips are 16 kHz"
        ch = w.getnchannels()
        d = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    x = d.reshape(-1, ch).astype(np.float32) / 32768.0
    return x.mean(axis=1, dtype=np.float32) if ch > 1 else x[:, 0]


# ----------------------------------------------------------------- modules
class Attention(nn.Module):
    def __init__(self, S, nh):
        super().__init__()
        self.nh = nh
        self.query = nn.Linear(S, S)
        self.key = nn.Linear(S, S, bias=False)
        self.value = nn.Linear(S, S)
        self.out = nn.Linear(S, S)

    def forward(self, x, bias):
        T, S = x.shape
        hd = S // self.nh
        q = self.query(x).view(T, self.nh, hd).transpose(0, 1)
        k = self.key(x).view(T, self.nh, hd).transpose(0, 1)
        v = self.value(x).view(T, self.nh, hd).transpose(0, 1)
        s = (q @ k.transpose(1, 2)) / math.sqrt(hd) + bias  # [nh, T, T]
        w = torch.softmax(s, dim=-1)
        return self.out((w @ v).transpose(0, 1).reshape(T, S))


class Block(nn.Module):
    def __init__(self, S, nh):
        super().__init__()
        self.attn = Attention(S, nh)
        self.attn_ln = nn.LayerNorm(S)
        self.mlp = nn.Sequential(nn.Linear(S, 4 * S), nn.GELU(), nn.Linear(4 * S, S))
        self.mlp_ln = nn.LayerNorm(S)

    def forward(self, x, bias):
        x = x + self.attn(self.attn_ln(x), bias)
        return x + self.mlp(self.mlp_ln(x))


class Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        S = c["n_state"]
        self.conv1 = nn.Conv1d(c["n_mels"], S, 3, padding=1)
        self.conv2 = nn.Conv1d(S, S, 3, stride=2, padding=1)
        self.positional_embedding = nn.Embedding(c["n_ctx"], S)
        self.blocks = nn.ModuleList([Block(S, c["n_head"]) for _ in range(c["n_layer"])])
        self.avg_pooler = nn.AvgPool1d(2, stride=2)
        self.after_norm = nn.LayerNorm(S)

    def forward(self, mel):  # mel [n_mels, T]
        T = mel.shape[-1]
        x_len = T - 2
        x = F.gelu(self.conv1(mel[None]))
        x = F.gelu(self.conv2(x))[0].t()  # [T2, S]
        T2 = x.shape[0]
        # key j visible iff frame 2j + ((T+1) % 2) of the mel is < x_len
        frames = torch.arange(T)[(T + 1) % 2::2][:T2]
        bias = torch.where(frames < x_len, 0.0, -1e10).to(x.dtype)[None, None, :]
        x = x + self.positional_embedding.weight[:T2]
        for b in self.blocks:
            x = b(x, bias)
        x = self.avg_pooler(x.t()[None])[0].t()
        enc_len = (x_len + 1) // 2 // 2
        return self.after_norm(x), enc_len


class Adaptor(nn.Module):
    def __init__(self, c, A, H):
        super().__init__()
        S = c["n_state"]
        self.conv = nn.Conv1d(S, S, c["kernel_size"], c["adapter_stride"], padding=1)
        self.linear1 = nn.Linear(S, A)
        self.linear2 = nn.Linear(A, H)

    def forward(self, x):  # [T3, S]
        x = F.gelu(self.conv(x.t()[None]))[0].t()
        return self.linear2(F.relu(self.linear1(x)))


def build(model_dir):
    c = load_config(model_dir)
    w = load_model_weights(model_dir)
    if "encoder.positional_embedding.weight" not in w:
        w["encoder.positional_embedding.weight"] = w["encoder.positional_embedding"]
    enc = Encoder(c).double()
    A = w["adapter.linear1.weight"].shape[0]
    ada = Adaptor(c, A, c["hidden"]).double()
    esd = {k[len("encoder."):]: v for k, v in w.items()
           if k.startswith("encoder.") and k != "encoder.positional_embedding"}
    asd = {k[len("adapter."):]: v for k, v in w.items() if k.startswith("adapter.")}
    enc.load_state_dict(esd, strict=True)
    ada.load_state_dict(asd, strict=True)
    enc.eval()
    ada.eval()
    return c, enc, ada


@torch.no_grad()
def encode_pcm(c, enc, ada, pcm, dtype=torch.float64):
    rows, counts = [], []
    for off in range(0, len(pcm), CHUNK):
        mel = log_mel(torch.from_numpy(np.ascontiguousarray(pcm[off:off + CHUNK])),
                      c["n_mels"])
        x, enc_len = enc(mel.to(dtype))
        n = (enc_len - 1) // 2 + 1
        n = max(n, 0)
        counts.append(n)
        if n > 0:
            rows.append(ada(x)[:n])
    emb = torch.cat(rows) if rows else torch.zeros(0, c["hidden"], dtype=torch.float64)
    return emb.double().numpy(), counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="tiny checkpoint folder")
    ap.add_argument("--fixtures", required=True, help="folder of .wav clips")
    ap.add_argument("--out", required=True, help="golden output folder")
    ap.add_argument("--seed", type=int, default=None,
                    help="seed the checkpoint was made with (recorded)")
    ap.add_argument("--max-bytes", type=int, default=48 * 1024,
                    help="largest .npy per clip; rows are subsampled to fit")
    args = ap.parse_args()
    torch.set_num_threads(1)
    c, enc, ada = build(args.model)
    # the same modules in bf16 (every op's output rounded to bf16, as bf16
    # inference runs): its error is the bound for backends that round
    # activations to bf16
    enc_b, ada_b = copy.deepcopy(enc).to(torch.bfloat16), copy.deepcopy(ada).to(torch.bfloat16)
    os.makedirs(args.out, exist_ok=True)
    meta = {"model_config": c, "seed": args.seed,
            "tolerance": "max|c - golden| <= 1e-3 * max|golden| per clip (backends "
                         "that round activations to bf16: <= bf16_max_diff, the error of "
                         "the same modules run in bf16)",
            "clips": {}}
    for name in sorted(os.listdir(args.fixtures)):
        if not name.endswith(".wav"):
            continue
        pcm = read_wav_mono(os.path.join(args.fixtures, name))
        emb, counts = encode_pcm(c, enc, ada, pcm)
        rows = emb.shape[0]
        row_bytes = 4 * emb.shape[1]
        stride = max(1, -(-rows * row_bytes // args.max_bytes))
        sub = emb[::stride].astype(np.float32)
        emb_b, _ = encode_pcm(c, enc_b, ada_b, pcm, torch.bfloat16)
        bf16_err = float(np.abs(emb_b[::stride] - emb[::stride]).max()) if rows else 0.0
        stem = os.path.splitext(name)[0]
        np.save(os.path.join(args.out, stem + ".npy"), sub)
        meta["clips"][stem] = {
            "file": name, "samples": int(len(pcm)), "chunk_tokens": counts,
            "rows": int(rows), "hidden": int(emb.shape[1]), "row_stride": int(stride),
            "sum": float(emb.sum()), "sum_abs": float(np.abs(emb).sum()),
            "max_abs": float(np.abs(emb).max()) if rows else 0.0,
            "bf16_max_diff": bf16_err,
        }
        print(f"{name}: {len(pcm)} samples, chunk tokens {counts}, "
              f"rows {rows} (stride {stride})", file=sys.stderr)
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
