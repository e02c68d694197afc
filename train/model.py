"""model — Step-Audio-R1's architecture in PyTorch, for training at toy sizes.

The same math as docs/model.md (what model/*.c computes) and the same
parameter names as the checkpoints the loader reads:
  mel       log-mel as the front end computes it (per clip: the clamp at
            max - 8 is over the clip's own chunk, clips are < 25 s)
  encoder   Whisper-style (conv1, conv2 stride 2, positions, blocks with a
            key-less-bias attention, average pool 2, after_norm), keys masked
            unless 2j + ((T+1) mod 2) < T - 2
  adapter   conv k3 s2 + GELU, linear1 + ReLU, linear2 -> decoder rows
  decoder   Qwen2: RMSNorm, q/k/v with bias, o without, rotate-half RoPE,
            grouped-query causal attention, SiLU-gated MLP, untied head
A batch holds clips of one length (one task) so the encoder needs no
padding; decoder sequences are right-padded and the loss masks the pads.
"""
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

N_FFT, HOP, RIGHT_PAD = 400, 160, 479


def mel_filters(sr=16000, n_fft=N_FFT, n_mels=128):
    """librosa.filters.mel defaults (Slaney scale and norm), float32."""
    def hz_to_mel(f):
        f = np.asanyarray(f, dtype=np.float64)
        lin = f / (200.0 / 3)
        return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) /
                        (np.log(6.4) / 27.0), lin)

    def mel_to_hz(m):
        m = np.asanyarray(m, dtype=np.float64)
        return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)),
                        m * 200.0 / 3)
    fft = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mf = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2.0), n_mels + 2))
    fd = np.diff(mf)
    ramps = np.subtract.outer(mf, fft)
    w = np.zeros((n_mels, 1 + n_fft // 2))
    for i in range(n_mels):
        w[i] = np.maximum(0, np.minimum(-ramps[i] / fd[i], ramps[i + 2] / fd[i + 1]))
    w *= (2.0 / (mf[2:n_mels + 2] - mf[:n_mels]))[:, None]
    return torch.from_numpy(w.astype(np.float32))


class LogMel(nn.Module):
    def __init__(self, n_mels=128):
        super().__init__()
        self.register_buffer("filters", mel_filters(n_mels=n_mels), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    @torch.no_grad()
    def forward(self, audio):  # [B, N] float32 -> [B, n_mels, T]
        x = F.pad(audio, (0, RIGHT_PAD))
        st = torch.stft(x, N_FFT, HOP, window=self.window, center=True, pad_mode="reflect",
                        return_complex=True)
        mel = self.filters @ (st[..., :-1].abs() ** 2)
        ls = torch.clamp(mel, min=1e-10).log10()
        ls = torch.maximum(ls, ls.amax(dim=(1, 2), keepdim=True) - 8.0)
        return (ls + 4.0) / 4.0


class EncAttention(nn.Module):
    def __init__(self, S, nh):
        super().__init__()
        self.nh = nh
        self.query = nn.Linear(S, S)
        self.key = nn.Linear(S, S, bias=False)
        self.value = nn.Linear(S, S)
        self.out = nn.Linear(S, S)

    def forward(self, x, bias):  # x [B, T, S]
        B, T, S = x.shape
        hd = S // self.nh
        q, k, v = (m(x).view(B, T, self.nh, hd).transpose(1, 2)
                   for m in (self.query, self.key, self.value))
        o = attention(q, k, v, bias)
        return self.out(o.transpose(1, 2).reshape(B, T, S))


def attention(q, k, v, bias):
    """softmax(q k^T / sqrt(d) + bias) v (torch 1.13 has no fused kernel)."""
    s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1])) + bias
    return torch.softmax(s, dim=-1) @ v


def causal_mask(T):
    return torch.full((T, T), -1e9).triu(1)  # finite: exp underflows to 0 all the same


class EncBlock(nn.Module):
    def __init__(self, S, nh):
        super().__init__()
        self.attn = EncAttention(S, nh)
        self.attn_ln = nn.LayerNorm(S)
        self.mlp = nn.Sequential(nn.Linear(S, 4 * S), nn.GELU(), nn.Linear(4 * S, S))
        self.mlp_ln = nn.LayerNorm(S)

    def forward(self, x, bias):
        x = x + self.attn(self.attn_ln(x), bias)
        return x + self.mlp(self.mlp_ln(x))


class Encoder(nn.Module):
    def __init__(self, a):
        super().__init__()
        S = a["n_audio_state"]
        self.conv1 = nn.Conv1d(a["n_mels"], S, 3, padding=1)
        self.conv2 = nn.Conv1d(S, S, 3, stride=2, padding=1)
        self.positional_embedding = nn.Parameter(torch.randn(a["n_audio_ctx"], S) * 0.02)
        self.blocks = nn.ModuleList([EncBlock(S, a["n_audio_head"])
                                     for _ in range(a["n_audio_layer"])])
        self.after_norm = nn.LayerNorm(S)

    def forward(self, mel):  # [B, n_mels, T] -> [B, T3, S], enc_len
        T = mel.shape[-1]
        x_len = T - 2
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # [B, T2, S]
        T2 = x.shape[1]
        frames = torch.arange(T)[(T + 1) % 2::2][:T2]
        bias = torch.where(frames < x_len, 0.0, -1e9)[None, None, None, :]
        x = x + self.positional_embedding[:T2]
        for b in self.blocks:
            x = b(x, bias)
        x = F.avg_pool1d(x.transpose(1, 2), 2, 2).transpose(1, 2)
        return self.after_norm(x), (x_len + 1) // 2 // 2


class Adapter(nn.Module):
    def __init__(self, a, H):
        super().__init__()
        S = a["n_audio_state"]
        self.conv = nn.Conv1d(S, S, a["kernel_size"], a["adapter_stride"], padding=1)
        self.linear1 = nn.Linear(S, a["adapter_hidden_size"])
        self.linear2 = nn.Linear(a["adapter_hidden_size"], H)

    def forward(self, x):  # [B, T3, S]
        x = F.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return self.linear2(F.relu(self.linear1(x)))


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SelfAttn(nn.Module):
    def __init__(self, c):
        super().__init__()
        H, hd = c["hidden_size"], c["head_dim"]
        self.nh, self.nkv, self.hd = c["num_attention_heads"], c["num_key_value_heads"], hd
        self.q_proj = nn.Linear(H, self.nh * hd)
        self.k_proj = nn.Linear(H, self.nkv * hd)
        self.v_proj = nn.Linear(H, self.nkv * hd)
        self.o_proj = nn.Linear(self.nh * hd, H, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        rep = self.nh // self.nkv
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        o = attention(q, k, v, causal_mask(T))
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.nh * self.hd))


def rope(x, cos, sin):
    h = x.shape[-1] // 2
    rot = torch.cat((-x[..., h:], x[..., :h]), -1)
    return x * cos + rot * sin


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        H, I, eps = c["hidden_size"], c["intermediate_size"], c["rms_norm_eps"]
        self.input_layernorm = RMSNorm(H, eps)
        self.self_attn = SelfAttn(c)
        self.post_attention_layernorm = RMSNorm(H, eps)
        self.mlp = nn.Module()
        self.mlp.gate_proj = nn.Linear(H, I, bias=False)
        self.mlp.up_proj = nn.Linear(H, I, bias=False)
        self.mlp.down_proj = nn.Linear(I, H, bias=False)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        h = self.post_attention_layernorm(x)
        return x + self.mlp.down_proj(F.silu(self.mlp.gate_proj(h)) * self.mlp.up_proj(h))


class Decoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList([Layer(c) for _ in range(c["num_hidden_layers"])])
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])

    def forward(self, h):
        T, hd = h.shape[1], self.c["head_dim"]
        inv = 1.0 / (self.c["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.arange(T).float()[:, None] * inv[None]
        ang = torch.cat((ang, ang), -1)
        cos, sin = ang.cos(), ang.sin()
        for layer in self.layers:
            h = layer(h, cos, sin)
        return self.norm(h)


class StepAudio(nn.Module):
    """The whole model. forward(audio [B, N], ids [B, L], patch_id) -> logits
    [B, L, V]; the ids' <audio_patch> positions take the adapter's rows in
    order (each row of ids has exactly as many patches as the clip has
    audio tokens)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        a = config["audio_encoder_config"]
        self.mel = LogMel(a["n_mels"])
        self.encoder = Encoder(a)
        self.adapter = Adapter(a, config["hidden_size"])
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config["hidden_size"], config["vocab_size"], bias=False)

    def audio_rows(self, audio):
        x, enc_len = self.encoder(self.mel(audio))
        n = max((enc_len - 1) // 2 + 1, 0)
        return self.adapter(x)[:, :n]

    def forward(self, audio, ids, patch_id, with_rows=False):
        rows = self.audio_rows(audio)  # [B, n, H]
        h = self.model.embed_tokens(ids)
        mask = ids == patch_id
        h = h.masked_scatter(mask[..., None], rows.reshape(-1, rows.shape[-1]).to(h.dtype))
        logits = self.lm_head(self.model(h))
        return (logits, rows) if with_rows else logits


def audio_tokens(n_samples):
    """Audio tokens of a clip shorter than one 25 s chunk (docs/model.md)."""
    T = (n_samples + RIGHT_PAD) // HOP
    enc_len = (T - 2 + 1) // 2 // 2
    return max((enc_len - 1) // 2 + 1, 0)


def state_for_export(m):
    """Checkpoint names as the loader reads them."""
    out = {}
    for k, v in m.state_dict().items():
        if k.startswith("mel."):
            continue
        out[k] = v.detach().float().contiguous()
    return out


def save_safetensors(tensors, out_dir, max_bytes=4 << 20):
    """bf16 safetensors, sharded so no file is over max_bytes (with the
    index the loader reads when there is more than one)."""
    names = sorted(tensors)
    shards, cur, size = [], [], 0
    for n in names:
        b = tensors[n].numel() * 2
        if cur and size + b + 64 * (len(cur) + 1) + 4096 > max_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(n)
        size += b
    shards.append(cur)
    files = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    wmap = {}
    for fname, group in zip(files, shards):
        header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
        for n in group:
            t = tensors[n].to(torch.bfloat16).contiguous()
            raw = t.view(torch.int16).numpy().astype("<i2").tobytes()
            header[n] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
            blobs.append(raw)
            off += len(raw)
            wmap[n] = fname
        hj = json.dumps(header, separators=(",", ":")).encode()
        hj += b" " * ((8 - len(hj) % 8) % 8)
        with open(os.path.join(out_dir, fname), "wb") as f:
            f.write(struct.pack("<Q", len(hj)))
            f.write(hj)
            for b in blobs:
                f.write(b)
        assert os.path.getsize(os.path.join(out_dir, fname)) <= max_bytes, fname
    if len(files) > 1:
        total = sum(tensors[n].numel() * 2 for n in names)
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, f, indent=1)
            f.write("\n")
    for stale in os.listdir(out_dir):
        if stale.endswith(".safetensors") and stale not in files:
            os.remove(os.path.join(out_dir, stale))
    if len(files) == 1 and os.path.exists(os.path.join(out_dir, "model.safetensors.index.json")):
        os.remove(os.path.join(out_dir, "model.safetensors.index.json"))
    return files


def round_bf16_(m):
    """Rounds every parameter to bf16 in place (what the export stores)."""
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.to(torch.bfloat16).float())


def load(model_dir):
    """A StepAudio from a checkpoint folder this module wrote (bf16, exact)."""
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    net = StepAudio(cfg)
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    files = (sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx)
             else ["model.safetensors"])
    sd = {}
    for fn in files:
        with open(os.path.join(model_dir, fn), "rb") as f:
            (hl,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(hl))
            base = 8 + hl
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                assert info["dtype"] == "BF16", f"{fn}: {name} is {info['dtype']}"
                a, b = info["data_offsets"]
                f.seek(base + a)
                u = np.frombuffer(f.read(b - a), dtype="<u2").astype(np.uint32) << 16
                sd[name] = torch.from_numpy(u.view(np.float32).reshape(info["shape"]).copy())
    net.load_state_dict(sd, strict=False)
    missing = set(k for k in net.state_dict() if not k.startswith("mel.")) - set(sd)
    assert not missing, f"missing tensors: {sorted(missing)[:5]}"
    return net
