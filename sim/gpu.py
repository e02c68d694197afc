"""GPU cost model of a decoder step: a roofline of its bytes and FLOPs.

A stage's step over B tokens (decode rows and prefill rows alike) at the
context lengths of their sequences costs

    time = max(bytes / (HBM bandwidth x bw_eff), flops / (peak x flop_eff))
           + layers x launch + host

  bytes  = its layers' weights (read once per step, whatever B) + the KV
           cache every row reads (ctx x 2 x kv_heads x head_dim x 2 B a
           layer) + the rows' own K, V written; the first stage reads B
           embedding rows, the last the LM head (vocab x hidden) once;
  flops  = 2 x B x parameters of its layers (+ the head on the last stage)
           + attention: 4 x ctx x heads x head_dim a row a layer;
  launch = the kernels of one layer (no CUDA graphs assumed: 10 kernels at
           ~4 us; a parameter);
  host   = the stage process's per-step CPU work (RPC, protobuf), measured on
           this machine's CPU (sa-sim calibrate: stage.per_step).

Hops: activations of B rows (hidden x 2 B each, bf16) over the link between
two stages -- NVLink inside a host of gpus_per_host, the host network
between hosts -- cost latency + bytes / bandwidth. The last stage's sampled
tokens go to the coordinator over the host network (bytes negligible).

The encoder (Whisper-style, state 1280 x 32 layers, 25 Hz) is compute-bound
on a GPU: 2 x parameters x frames FLOPs per clip plus its attention, at
flop_eff of peak.

Datasheet figures: dense bf16 tensor-core peak (no sparsity), HBM bandwidth,
memory, NVLink bandwidth per direction. The efficiency factors are
assumptions, stated in sim/README.md, not measurements.
"""

GPUS = {
    # name: peak bf16 dense FLOP/s, HBM bytes/s, memory bytes, NVLink bytes/s per direction
    "H100": {"flops": 989e12, "hbm": 3.35e12, "mem": 80e9, "nvlink": 450e9,
             "source": "NVIDIA H100 SXM5 datasheet: 989 TFLOPS bf16 dense, 3.35 TB/s, 80 GB, "
                       "NVLink 900 GB/s (both directions)"},
    "H200": {"flops": 989e12, "hbm": 4.8e12, "mem": 141e9, "nvlink": 450e9,
             "source": "NVIDIA H200 SXM datasheet: 989 TFLOPS bf16 dense, 4.8 TB/s, 141 GB, "
                       "NVLink 900 GB/s"},
    "A100": {"flops": 312e12, "hbm": 2.039e12, "mem": 80e9, "nvlink": 300e9,
             "source": "NVIDIA A100 SXM4 80GB datasheet: 312 TFLOPS bf16 dense, 2.039 TB/s, "
                       "NVLink 600 GB/s"},
    "L40S": {"flops": 362e12, "hbm": 0.864e12, "mem": 48e9, "nvlink": 0.0,
             "source": "NVIDIA L40S datasheet: 362 TFLOPS bf16 dense (733 with sparsity), "
                       "864 GB/s GDDR6, 48 GB, PCIe Gen4 x16 (no NVLink)"},
}

# Step-Audio-R1 (docs/model.md): decoder and encoder shapes
STEP_AUDIO_R1 = {
    "hidden": 5120, "layers": 64, "heads": 40, "kv_heads": 8, "head_dim": 128,
    "intermediate": 27648, "vocab": 158720, "bytes_per_param": 2,
    "encoder": {"state": 1280, "layers": 32, "adaptor_hidden": 2048},
}

LINKS = {
    # host network between hosts, per direction; PCIe for GPUs without NVLink
    "ib400": {"bw": 50e9, "latency": 20e-6, "source": "400 Gb/s InfiniBand / RoCE"},
    "eth100": {"bw": 12.5e9, "latency": 30e-6, "source": "100 Gb/s Ethernet"},
    "pcie4": {"bw": 32e9, "latency": 10e-6, "source": "PCIe Gen4 x16, 32 GB/s a direction"},
    "nvlink": {"latency": 8e-6},
}


class Model:
    def __init__(self, m=STEP_AUDIO_R1):
        self.m = m
        h, kv = m["hidden"], m["kv_heads"] * m["head_dim"]
        q = m["heads"] * m["head_dim"]
        # q, k, v (with biases) and o; gate, up, down; two RMSNorm weights
        self.layer_params = (h * q + q + 2 * (h * kv + kv) + q * h +
                             3 * h * m["intermediate"] + 2 * h)
        self.head_params = m["vocab"] * h
        self.kv_bytes_token_layer = 2 * kv * m["bytes_per_param"]
        self.bpp = m["bytes_per_param"]
        e = m["encoder"]
        s = e["state"]
        # blocks (attention 4 s^2, MLP 8 s^2), conv1 (128 mels, k3), conv2 and
        # the adaptor's conv (s x s, k3), the adaptor's two linears
        self.enc_params = (e["layers"] * 12 * s * s + 3 * 128 * s + 2 * 3 * s * s +
                           s * e["adaptor_hidden"] + e["adaptor_hidden"] * h)

    def weights_bytes(self, layers, first, last):
        b = layers * self.layer_params * self.bpp
        if first:
            b += self.head_params * self.bpp  # the embedding table: same shape as the head
        if last:
            b += self.head_params * self.bpp
        return b


class GpuCost:
    """Stage, encoder and hop costs of a GPU cluster (simcore.Cost's stage and
    encoder; the coordinator is a CPU process, costed by simcore.Cost)."""

    def __init__(self, cal):
        self.c = cal
        g = cal["gpu"]
        self.gpu = dict(GPUS[g["type"]])
        self.gpu.update({k: g[k] for k in ("flops", "hbm", "mem", "nvlink") if k in g})
        self.bw_eff, self.flop_eff = g.get("bw_eff", 0.8), g.get("flop_eff", 0.6)
        self.launch = g.get("launch_per_layer_s", 40e-6)
        self.host = cal.get("host_per_step_s", 150e-6)
        self.model = Model(cal.get("model_shape", STEP_AUDIO_R1))
        self.m = self.model.m
        self.busy = {"hbm": 0.0, "flops": 0.0, "overhead": 0.0}  # stage seconds by bound

    def stage(self, layers, tokens, ctx_tokens, sampled, first=False, last=False, prompt=0):
        # (prompt: of the tokens, a prefill chunk's; the roofline counts them alike)
        m, md = self.m, self.model
        bytes_ = md.weights_bytes(layers, False, last)
        bytes_ += layers * md.kv_bytes_token_layer * (ctx_tokens + tokens)
        if first:
            bytes_ += tokens * m["hidden"] * md.bpp
        flops = 2 * tokens * layers * md.layer_params
        flops += layers * 4 * ctx_tokens * m["heads"] * m["head_dim"]
        if last:
            flops += 2 * sampled * md.head_params  # logits only for the sampled rows
        t_mem = bytes_ / (self.gpu["hbm"] * self.bw_eff)
        t_fl = flops / (self.gpu["flops"] * self.flop_eff)
        self.busy["hbm" if t_mem >= t_fl else "flops"] += max(t_mem, t_fl)
        self.busy["overhead"] += layers * self.launch + self.host
        return max(t_mem, t_fl) + layers * self.launch + self.host

    def message(self):
        """Stage/Fork or Stage/Free: the host's handling of a message and a
        kernel (a fork copies one partial KV block per child)."""
        return self.host + self.launch

    def encoder(self, audio_s):
        """The encoder's blocks run at 50 Hz (100 Hz mel, conv2 stride 2),
        attention within 25 s chunks (1250 frames)."""
        e = self.m["encoder"]
        frames = audio_s * 50.0
        flops = 2 * self.model.enc_params * frames
        flops += e["layers"] * 4 * frames * min(frames, 1250) * e["state"]
        return flops / (self.gpu["flops"] * self.flop_eff) + e["layers"] * self.launch + self.host

    def hop(self, tokens, same_host):
        """Seconds to pass B rows of activations to the next stage."""
        b = tokens * self.m["hidden"] * self.model.bpp
        if same_host and self.gpu["nvlink"]:
            return LINKS["nvlink"]["latency"] + b / self.gpu["nvlink"]
        link = LINKS[self.c.get("network", "ib400")]
        return link["latency"] + b / link["bw"]

    def kv_blocks(self, layers, first, last, block_tokens):
        """KV blocks one stage's GPU holds: memory x mem_frac minus weights."""
        free = self.gpu["mem"] * self.c["gpu"].get("mem_frac", 0.9) - \
            self.model.weights_bytes(layers, first, last)
        per_block = self.model.kv_bytes_token_layer * layers * block_tokens
        return max(0, int(free // per_block))
