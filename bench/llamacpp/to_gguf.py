#!/usr/bin/python3
"""to_gguf — our decoder's weights as a llama.cpp GGUF (architecture qwen2),
so that llama.cpp runs the very tensors bench-decode runs.

  to_gguf.py MODEL_DIR OUT.gguf    (PYTHONPATH: llama.cpp's gguf-py; numpy)

The decoder is Qwen2.5-shaped (docs/model.md), so every tensor has a qwen2
name in llama.cpp; matrices keep their bf16 bytes as they are, norms and
biases become f32 (as llama.cpp's own converter writes them). The audio
encoder and adaptor are left out: llama.cpp has no use for them. No
tokenizer is written ("no_vocab" with the vocabulary size): llama-bench and
llama-batched-bench feed random token ids and never detokenise.
"""
import json
import os
import struct
import sys

NAMES = {  # ours (after model.layers.N.) -> llama.cpp's (after blk.N.)
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def die(msg):
    print("to_gguf: " + msg, file=sys.stderr)
    sys.exit(2)


def read_safetensors(path):
    """{name: (dtype, shape, bytes)} from a safetensors file."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            die("%s: not a safetensors file" % path)
        n = struct.unpack("<Q", raw)[0]
        if n > 100 << 20:
            die("%s: header of %d bytes" % (path, n))
        size = os.fstat(f.fileno()).st_size
        try:
            head = json.loads(f.read(n))
            base = 8 + n
            out = {}
            for name, t in head.items():
                if name == "__metadata__":
                    continue
                a, b = t["data_offsets"]
                if not 0 <= a <= b <= size - base:
                    die("%s: %s: data outside the file" % (path, name))
                f.seek(base + a)
                out[name] = (t["dtype"], t["shape"], f.read(b - a))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            die("%s: a malformed safetensors header (%s)" % (path, e))
    return out


def main():
    if len(sys.argv) != 3 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if len(sys.argv) == 2 else 2
    model, out = sys.argv[1], sys.argv[2]
    global np, gguf
    try:
        import numpy as np
        import gguf
    except ImportError as e:
        die("%s (numpy: apt-get install python3-numpy; gguf: PYTHONPATH=<llama.cpp>/gguf-py)"
            % e)
    with open(os.path.join(model, "config.json")) as f:
        cfg = json.load(f)
    need = ("max_position_embeddings", "hidden_size", "num_hidden_layers", "intermediate_size",
            "num_attention_heads", "num_key_value_heads", "rope_theta", "rms_norm_eps",
            "vocab_size")
    if not isinstance(cfg, dict) or any(k not in cfg for k in need):
        die("%s/config.json: needs %s" % (model, ", ".join(need)))
    t = read_safetensors(os.path.join(model, "model.safetensors"))
    if not all(("model.layers.%d.%s" % (i, k)) in t for i in range(cfg["num_hidden_layers"])
               for k in NAMES) or "model.embed_tokens.weight" not in t:
        die("%s: not a Qwen2-shaped decoder (a layer tensor is missing)" % model)
    if any(dt != "BF16" for name, (dt, _, _) in t.items() if name.startswith("model.")):
        die("a bf16 checkpoint is expected (quantize with llama-quantize afterwards)")

    w = gguf.GGUFWriter(out, "qwen2")
    w.add_name("sa-cluster decoder (%s)" % os.path.basename(os.path.normpath(model)))
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_tokenizer_model("no_vocab")

    def put(name, src):
        dt, shape, data = t[src]
        if len(shape) == 1:  # norms and biases: f32
            a = (np.frombuffer(data, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
            w.add_tensor(name, a)
        else:
            w.add_tensor(name, np.frombuffer(data, dtype=np.uint8).reshape(shape[0], -1),
                         raw_dtype=gguf.GGMLQuantizationType.BF16)

    put("token_embd.weight", "model.embed_tokens.weight")
    for i in range(cfg["num_hidden_layers"]):
        for ours, theirs in NAMES.items():
            put("blk.%d.%s" % (i, theirs), "model.layers.%d.%s" % (i, ours))
    put("output_norm.weight", "model.norm.weight")
    if not cfg.get("tie_word_embeddings") and "lm_head.weight" in t:
        put("output.weight", "lm_head.weight")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("to_gguf: wrote %s" % out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
