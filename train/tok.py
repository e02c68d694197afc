"""tok — a small byte-level BPE in Qwen2's tokenizer.json format.

Trained on the task text (questions, reasoning, answers, the chat
template's role names). Deterministic: pairs are merged by count, ties
broken by the pair's text. The file has Qwen2's normalizer (NFC),
pre-tokenizer (the split regex, then ByteLevel without its own regex),
ByteLevel decoder and the special tokens the Step-Audio chat template
needs, so core/tokenizer.c reads it as it reads a real Qwen2.5 vocabulary.

`Tokenizer.encode` is the same algorithm for the ASCII text the tasks use
(the regex below is Qwen2's with \\p{L} and \\p{N} narrowed to ASCII);
train.py checks it against `sa-model tokenize` before training starts.
"""
import collections
import json
import os
import re

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
ASCII_SPLIT = re.compile(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]|"
                         r" ?[^\sA-Za-z0-9]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# id order and flags as `sa-model init` writes them
SPECIAL = [("<|endoftext|>", True), ("<|BOT|>", True), ("<|EOT|>", True),
           ("<audio_start>", True), ("<audio_end>", True), ("<audio_patch>", True),
           ("<think>", False), ("</think>", False)]


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


B2U = bytes_to_unicode()


def pieces(text):
    """Pre-tokenize: the split regex, then each piece's bytes as characters."""
    return ["".join(B2U[b] for b in m.encode("utf-8")) for m in ASCII_SPLIT.findall(text)]


def train(corpus, n_merges):
    words = collections.Counter()
    for t in corpus:
        words.update(pieces(t))
    seqs = {w: list(w) for w in words}
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for w, c in words.items():
            s = seqs[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        for w in seqs:
            s, out, i = seqs[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == best[0] and s[i + 1] == best[1]:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    vocab = {ch: i for i, ch in enumerate(sorted(B2U.values(), key=ord))}
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    return vocab, merges


def write(out_dir, vocab, merges):
    n = len(vocab)
    added = [{"id": n + i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": sp} for i, (c, sp) in enumerate(SPECIAL)]
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tj = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated",
             "invert": False}, bl]},
        "post_processor": bl, "decoder": bl,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": False,
                  "byte_fallback": False, "ignore_merges": False, "vocab": vocab,
                  "merges": [[a, b] for a, b in merges]},
    }
    with open(os.path.join(out_dir, "tokenizer.json"), "w") as f:
        json.dump(tj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    cfg = {"add_bos_token": False, "add_eos_token": False, "add_prefix_space": False,
           "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"}
                                    for a in added},
           "bos_token": None, "eos_token": "<|EOT|>", "pad_token": "<|endoftext|>",
           "model_max_length": 4096, "tokenizer_class": "Qwen2Tokenizer",
           "clean_up_tokenization_spaces": False}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
        f.write("\n")


class Tokenizer:
    def __init__(self, path):
        tj = json.load(open(path))
        self.vocab = tj["model"]["vocab"]
        self.rank = {tuple(m): i for i, m in enumerate(tj["model"]["merges"])}
        self.special = {a["content"]: a["id"] for a in tj["added_tokens"]}
        self.id2tok = {i: t for t, i in self.vocab.items()}
        self.id2tok.update({i: t for t, i in self.special.items()})
        self.u2b = {u: b for b, u in B2U.items()}
        alt = "|".join(re.escape(s) for s in sorted(self.special, key=len, reverse=True))
        self.split_special = re.compile(f"({alt})")
        self.size = len(self.vocab) + len(self.special)

    def _bpe(self, piece):
        s = list(piece)
        while len(s) > 1:
            best, bi = None, -1
            for i, p in enumerate(zip(s, s[1:])):
                r = self.rank.get(p)
                if r is not None and (best is None or r < best):
                    best, bi = r, i
            if best is None:
                break
            s[bi:bi + 2] = [s[bi] + s[bi + 1]]
        return [self.vocab[t] for t in s]

    def encode(self, text):
        ids = []
        for part in self.split_special.split(text):
            if not part:
                continue
            if part in self.special:
                ids.append(self.special[part])
            else:
                for p in pieces(part):
                    ids.extend(self._bpe(p))
        return ids

    def decode(self, ids):
        out = bytearray()
        for i in ids:
            t = self.id2tok[i]
            if t in self.special:
                out += t.encode()
            else:
                out += bytes(self.u2b[c] for c in t)
        return out.decode("utf-8", "replace")
