/*
 * tokenizer_synth — writes a small, Qwen-shaped byte-level BPE tokenizer for
 * test models (tokenizer_synth.h). The merges are
 * learned by plain BPE training (most frequent adjacent pair, ties to the
 * smallest id pair) on the pre-tokenized text embedded below, so a fresh
 * machine can build the tiny model with nothing from outside the repository.
 * This is not a production trainer: no special handling of frequencies
 * below 2, no alphabet limits, no progress reporting.
 */
#include "tokenizer_synth.h"

#include "sa_error.h"
#include "tokenizer_impl.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <pcre2.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SYNTH_MAX_MERGES 2000

/* Training text: English prose, code, numbers and a few other scripts. */
static const char k_corpus[] =
    "The quick brown fox jumps over the lazy dog. The dog sleeps in the sun "
    "while the fox runs into the forest. Audio reasoning models listen to a "
    "recording, think about what they hear, and then answer the question. "
    "What is the speaker saying? Which instrument is playing in the "
    "background? How many people are talking, and what is the emotion of "
    "their voices? The model reads the audio as a sequence of embeddings, "
    "one for every eighty milliseconds of sound, and writes its reasoning "
    "between the think tags before it gives the final answer.\n"
    "A woman is speaking after a short piece of music is played. There is "
    "a man laughing in the distance, and the sound of rain on a window. "
    "The answer is B. The answer is C, because the tempo is slow and the "
    "melody is played on a piano. I think the speaker is happy; the pitch "
    "rises at the end of each sentence.\n\n"
    "Please transcribe the following audio clip. Please summarize the "
    "conversation in one sentence. Please translate the speech into French. "
    "Describe the sounds you hear, in the order you hear them.\n"
    "It's a sunny day, isn't it? We'll see. They've been here, she'd said, "
    "and you're right: I'm sure he'll come back.\n\n"
    "int main(int argc, char **argv) {\n"
    "  for (int i = 0; i < argc; i++) {\n"
    "    printf(\"%d: %s\\n\", i, argv[i]);\n"
    "  }\n"
    "  return 0;\n"
    "}\n\n"
    "static int sa_tokenizer_encode(const char *text, size_t len) {\n"
    "  if (text == NULL || len == 0)\n"
    "    return -1;\n"
    "  return (int)len;\n"
    "}\n\n"
    "def tokenize(text: str) -> list[int]:\n"
    "    ids = []\n"
    "    for word in text.split():\n"
    "        ids.append(vocab.get(word, 0))\n"
    "    return ids\n\n"
    "import numpy as np\n"
    "x = np.zeros((16, 128), dtype=np.float32)\n"
    "print(x.shape, x.mean(), x.std())\n"
    "{\"role\": \"user\", \"content\": \"What do you hear?\"}\n"
    "{\"role\": \"assistant\", \"content\": \"A dog barking.\"}\n"
    "<div class=\"note\">Hello, world!</div>\n"
    "SELECT name, count(*) FROM users WHERE age > 30 GROUP BY name;\n"
    "1234567890 3.14159 2.71828 1e-10 0x1F 2025-01-31 12:30:45 +49 30 "
    "1,000,000 50% $19.99 #1 @user a+b=c x*y/z (a|b)&c ~x ^y `code`\n"
    "Tabs\tand\tspaces   and\r\nWindows line endings\r\n\r\n"
    "Le chat noir dort sur le canapé. Où est la bibliothèque ? "
    "C'est très intéressant, n'est-ce pas ? Élève, garçon, façade, naïve.\n"
    "Der schnelle braune Fuchs springt über den faulen Hund. Größe, "
    "Straße, Mädchen, schön, Übung.\n"
    "El niño come una manzana. ¿Dónde está la estación? ¡Qué bien! "
    "Mañana, corazón, canción.\n"
    "Быстрая коричневая лиса прыгает через ленивую собаку. Привет, мир! "
    "Спасибо, хорошо.\n"
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από το τεμπέλικο σκυλί.\n"
    "你好，世界！今天天气很好。我们一起去听音乐吧。这是一个测试句子。"
    "音频推理模型可以理解声音。\n"
    "こんにちは、世界。今日はいい天気ですね。カタカナとひらがな。"
    "音楽を聴きましょう。\n"
    "안녕하세요, 세계! 오늘 날씨가 좋네요. 음악을 들어요.\n"
    "مرحبا بالعالم. كيف حالك اليوم؟\n"
    "שלום עולם. מה שלומך?\n"
    "नमस्ते दुनिया। आप कैसे हैं?\n"
    "สวัสดีชาวโลก ภาษาไทย\n"
    "Emoji: 😀 😂 👍🏽 ❤️ 🎵 🎶 🔊 👨‍👩‍👧‍👦 🏳️‍🌈 ✅ ❌ → ← ≤ ≥ ∑ ∞ °C µs Å ﬁ\n"
    "The end of the text is near. The end. The end. The end of the test.\n";


typedef struct {
  const char *p; /* into k_corpus */
  size_t n;
} span_t;

typedef struct {
  int32_t *sym; /* current symbols */
  size_t n;
  uint32_t count; /* occurrences in the corpus */
} word_t;

typedef struct {
  uint8_t *bytes; /* raw bytes of each token, concatenated */
  size_t len, cap;
  uint32_t *off, *tlen;
  size_t n, ncap;
} toks_t;

static int cmp_span(const void *a, const void *b) {
  const span_t *x = a, *y = b;
  size_t m = x->n < y->n ? x->n : y->n;
  int c = memcmp(x->p, y->p, m);
  if (c)
    return c;
  return x->n < y->n ? -1 : x->n > y->n;
}

static int toks_add(toks_t *t, const uint8_t *p, size_t n) {
  if (t->len + n > t->cap) {
    size_t c = t->cap ? t->cap * 2 : 4096;
    while (c < t->len + n)
      c *= 2;
    uint8_t *b = realloc(t->bytes, c);
    if (!b)
      return SA_ENOMEM;
    t->bytes = b;
    t->cap = c;
  }
  if (t->n == t->ncap) {
    size_t c = t->ncap ? t->ncap * 2 : 512;
    uint32_t *o = realloc(t->off, c * sizeof *o);
    if (!o)
      return SA_ENOMEM;
    t->off = o;
    o = realloc(t->tlen, c * sizeof *o);
    if (!o)
      return SA_ENOMEM;
    t->tlen = o;
    t->ncap = c;
  }
  memcpy(t->bytes + t->len, p, n);
  t->off[t->n] = (uint32_t)t->len;
  t->tlen[t->n] = (uint32_t)n;
  t->len += n;
  t->n++;
  return 0;
}

/* Pre-tokenizes the corpus with the Qwen2 pattern into unique words. */
static int split_corpus(word_t **words_out, size_t *nw_out, char *err,
                        size_t cap) {
  int ec;
  PCRE2_SIZE eo;
  pcre2_code *re = pcre2_compile((PCRE2_SPTR)sa__tokenizer_qwen2_pattern,
                                 PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                                 &ec, &eo, NULL);
  if (!re) {
    sa_set_err(err, cap, "split regex does not compile");
    return SA_EINTERNAL;
  }
  pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
  size_t n = sizeof k_corpus - 1, pos = 0, ns = 0, scap = 1024;
  span_t *sp = malloc(scap * sizeof *sp);
  word_t *words = NULL;
  int rc = 0;
  if (!md || !sp) {
    rc = SA_ENOMEM;
    goto out;
  }
  while (pos < n) {
    int m = pcre2_match(re, (PCRE2_SPTR)k_corpus, n, pos, 0, md, NULL);
    if (m < 0)
      break;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    if (ov[1] == ov[0]) {
      pos++;
      continue;
    }
    if (ns == scap) {
      scap *= 2;
      span_t *s2 = realloc(sp, scap * sizeof *sp);
      if (!s2) {
        rc = SA_ENOMEM;
        goto out;
      }
      sp = s2;
    }
    sp[ns++] = (span_t){k_corpus + ov[0], ov[1] - ov[0]};
    pos = ov[1];
  }
  qsort(sp, ns, sizeof *sp, cmp_span);
  words = calloc(ns ? ns : 1, sizeof *words);
  if (!words) {
    rc = SA_ENOMEM;
    goto out;
  }
  size_t nw = 0;
  for (size_t i = 0; i < ns; i++) {
    if (nw && cmp_span(&sp[i], &sp[i - 1]) == 0) {
      words[nw - 1].count++;
      continue;
    }
    word_t *w = &words[nw++];
    w->sym = malloc(sp[i].n * sizeof *w->sym);
    if (!w->sym) {
      rc = SA_ENOMEM;
      goto out;
    }
    w->n = sp[i].n;
    w->count = 1;
    /* byte token ids: the 256 bytes ordered by their byte-level code point */
    for (size_t k = 0; k < sp[i].n; k++) {
      uint32_t cp = sa__bytelevel_cp((uint8_t)sp[i].p[k]);
      int32_t id = 0;
      for (int b = 0; b < 256; b++)
        if (sa__bytelevel_cp((uint8_t)b) < cp)
          id++;
      w->sym[k] = id;
    }
  }
  *words_out = words;
  *nw_out = nw;
  words = NULL;
out:
  if (words) {
    for (size_t i = 0; i < ns; i++)
      free(words[i].sym);
    free(words);
  }
  free(sp);
  if (md)
    pcre2_match_data_free(md);
  pcre2_code_free(re);
  return rc;
}

#define PAIR_SLOTS 65536u

typedef struct {
  uint64_t key; /* a << 32 | b, UINT64_MAX empty */
  uint64_t count;
} pair_slot_t;

/* Learns up to n_merges merges; merges[2k], merges[2k+1] are the pair. */
static int train(toks_t *toks, int32_t *merges, int n_merges, char *err,
                 size_t cap) {
  word_t *words = NULL;
  size_t nw = 0;
  pair_slot_t *slots = malloc(PAIR_SLOTS * sizeof *slots);
  int rc = slots ? split_corpus(&words, &nw, err, cap) : SA_ENOMEM;
  if (rc)
    goto out;
  for (int m = 0; m < n_merges; m++) {
    memset(slots, 0xFF, PAIR_SLOTS * sizeof *slots);
    for (size_t w = 0; w < nw; w++)
      for (size_t i = 0; i + 1 < words[w].n; i++) {
        uint64_t key = ((uint64_t)(uint32_t)words[w].sym[i] << 32) |
                       (uint32_t)words[w].sym[i + 1];
        size_t h = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 48) & (PAIR_SLOTS - 1);
        while (slots[h].key != UINT64_MAX && slots[h].key != key)
          h = (h + 1) & (PAIR_SLOTS - 1);
        if (slots[h].key == UINT64_MAX) {
          slots[h].key = key;
          slots[h].count = 0;
        }
        slots[h].count += words[w].count;
      }
    uint64_t best = UINT64_MAX, best_count = 0;
    for (size_t h = 0; h < PAIR_SLOTS; h++)
      if (slots[h].key != UINT64_MAX &&
          (slots[h].count > best_count ||
           (slots[h].count == best_count && slots[h].key < best))) {
        best = slots[h].key;
        best_count = slots[h].count;
      }
    if (best_count == 0) {
      sa_set_err(err, cap, "the built-in text allows only %d merges (asked for %d)",
              m, n_merges);
      rc = SA_ERANGE;
      goto out;
    }
    int32_t a = (int32_t)(best >> 32), b = (int32_t)(uint32_t)best;
    /* the merged token's bytes; reuse an existing token with the same bytes */
    uint8_t buf[512];
    size_t la = toks->tlen[a], lb = toks->tlen[b];
    if (la + lb > sizeof buf) {
      sa_set_err(err, cap, "merged token too long");
      rc = SA_EINTERNAL;
      goto out;
    }
    memcpy(buf, toks->bytes + toks->off[a], la);
    memcpy(buf + la, toks->bytes + toks->off[b], lb);
    int32_t nid = -1;
    for (size_t t = 256; t < toks->n && nid < 0; t++)
      if (toks->tlen[t] == la + lb &&
          memcmp(toks->bytes + toks->off[t], buf, la + lb) == 0)
        nid = (int32_t)t;
    if (nid < 0) {
      if ((rc = toks_add(toks, buf, la + lb)))
        goto out;
      nid = (int32_t)toks->n - 1;
    }
    merges[2 * m] = a;
    merges[2 * m + 1] = b;
    for (size_t w = 0; w < nw; w++) {
      size_t o = 0;
      for (size_t i = 0; i < words[w].n; i++) {
        if (i + 1 < words[w].n && words[w].sym[i] == a && words[w].sym[i + 1] == b) {
          words[w].sym[o++] = nid;
          i++;
        } else {
          words[w].sym[o++] = words[w].sym[i];
        }
      }
      words[w].n = o;
    }
  }
out:
  for (size_t w = 0; w < nw; w++)
    free(words[w].sym);
  free(words);
  free(slots);
  return rc;
}

typedef struct {
  const char *content;
  int special;
} synth_added_t;

static const synth_added_t k_added[] = {
    {"<|endoftext|>", 1}, {"<|BOT|>", 1},       {"<|EOT|>", 1},
    {"<audio_start>", 1}, {"<audio_end>", 1},   {"<audio_patch>", 1},
    {"<think>", 0},       {"</think>", 0},
};
#define N_ADDED (sizeof k_added / sizeof *k_added)

static cJSON *bytelevel_obj(const char *type) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "type", type);
  cJSON_AddBoolToObject(o, "add_prefix_space", 0);
  cJSON_AddBoolToObject(o, "trim_offsets", 0);
  cJSON_AddBoolToObject(o, "use_regex", 0);
  return o;
}

static cJSON *added_obj(const synth_added_t *a, int id, int with_id) {
  cJSON *o = cJSON_CreateObject();
  if (with_id)
    cJSON_AddNumberToObject(o, "id", id);
  cJSON_AddStringToObject(o, "content", a->content);
  cJSON_AddBoolToObject(o, "single_word", 0);
  cJSON_AddBoolToObject(o, "lstrip", 0);
  cJSON_AddBoolToObject(o, "rstrip", 0);
  cJSON_AddBoolToObject(o, "normalized", 0);
  cJSON_AddBoolToObject(o, "special", a->special);
  return o;
}

static int write_json(const char *dir, const char *name, cJSON *doc,
                      char *err, size_t cap) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  char *s = cJSON_Print(doc);
  if (!s) {
    sa_set_err(err, cap, "out of memory printing %s", name);
    return SA_ENOMEM;
  }
  FILE *f = fopen(path, "wb");
  int rc = 0;
  if (!f) {
    sa_set_err(err, cap, "cannot create %s: %s", path, strerror(errno));
    rc = SA_EIO;
  } else {
    size_t n = strlen(s);
    if (fwrite(s, 1, n, f) != n || fputc('\n', f) == EOF) {
      sa_set_err(err, cap, "cannot write %s: %s", path, strerror(errno));
      rc = SA_EIO;
    }
    if (fclose(f) != 0 && !rc) {
      sa_set_err(err, cap, "cannot write %s: %s", path, strerror(errno));
      rc = SA_EIO;
    }
  }
  free(s);
  return rc;
}

int sa_tokenizer_write_synthetic(const char *dir, int n_merges, char *err,
                                 size_t cap) {
  if (err && cap)
    err[0] = 0;
  if (!dir || n_merges < 0 || n_merges > SYNTH_MAX_MERGES) {
    sa_set_err(err, cap, "n_merges must be in [0, %d]", SYNTH_MAX_MERGES);
    return SA_EINVAL;
  }
  toks_t toks = {0};
  int32_t *merges = malloc((size_t)(n_merges ? n_merges : 1) * 2 * sizeof *merges);
  cJSON *doc = NULL, *cfg = NULL;
  int rc = merges ? 0 : SA_ENOMEM;
  if (rc)
    goto out;
  /* byte tokens: ids 0..255 in the order of their byte-level code points */
  for (uint32_t cp = 0; cp < 324; cp++) {
    int b = sa__bytelevel_byte(cp);
    if (b < 0)
      continue;
    uint8_t c = (uint8_t)b;
    if ((rc = toks_add(&toks, &c, 1)))
      goto out;
  }
  if ((rc = train(&toks, merges, n_merges, err, cap)))
    goto out;

  char s[2048], s2[2048];
  doc = cJSON_CreateObject();
  cJSON_AddStringToObject(doc, "version", "1.0");
  cJSON_AddNullToObject(doc, "truncation");
  cJSON_AddNullToObject(doc, "padding");
  cJSON *added = cJSON_AddArrayToObject(doc, "added_tokens");
  for (size_t i = 0; i < N_ADDED; i++)
    cJSON_AddItemToArray(added, added_obj(&k_added[i], (int)(toks.n + i), 1));
  cJSON *norm = cJSON_AddObjectToObject(doc, "normalizer");
  cJSON_AddStringToObject(norm, "type", "NFC");
  cJSON *pre = cJSON_AddObjectToObject(doc, "pre_tokenizer");
  cJSON_AddStringToObject(pre, "type", "Sequence");
  cJSON *pl = cJSON_AddArrayToObject(pre, "pretokenizers");
  cJSON *split = cJSON_CreateObject();
  cJSON_AddStringToObject(split, "type", "Split");
  cJSON *pat = cJSON_AddObjectToObject(split, "pattern");
  cJSON_AddStringToObject(pat, "Regex", sa__tokenizer_qwen2_pattern);
  cJSON_AddStringToObject(split, "behavior", "Isolated");
  cJSON_AddBoolToObject(split, "invert", 0);
  cJSON_AddItemToArray(pl, split);
  cJSON_AddItemToArray(pl, bytelevel_obj("ByteLevel"));
  cJSON_AddItemToObject(doc, "post_processor", bytelevel_obj("ByteLevel"));
  cJSON_AddItemToObject(doc, "decoder", bytelevel_obj("ByteLevel"));
  cJSON *model = cJSON_AddObjectToObject(doc, "model");
  cJSON_AddStringToObject(model, "type", "BPE");
  cJSON_AddNullToObject(model, "dropout");
  cJSON_AddNullToObject(model, "unk_token");
  cJSON_AddStringToObject(model, "continuing_subword_prefix", "");
  cJSON_AddStringToObject(model, "end_of_word_suffix", "");
  cJSON_AddBoolToObject(model, "fuse_unk", 0);
  cJSON_AddBoolToObject(model, "byte_fallback", 0);
  cJSON_AddBoolToObject(model, "ignore_merges", 0);
  cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
  for (size_t i = 0; i < toks.n; i++) {
    if (sa__bytelevel_encode(toks.bytes + toks.off[i], toks.tlen[i], s, sizeof s) < 0) {
      rc = SA_EINTERNAL;
      goto out;
    }
    cJSON_AddNumberToObject(vocab, s, (double)i);
  }
  cJSON *ml = cJSON_AddArrayToObject(model, "merges");
  for (int m = 0; m < n_merges; m++) {
    int32_t a = merges[2 * m], b = merges[2 * m + 1];
    if (sa__bytelevel_encode(toks.bytes + toks.off[a], toks.tlen[a], s, sizeof s) < 0 ||
        sa__bytelevel_encode(toks.bytes + toks.off[b], toks.tlen[b], s2, sizeof s2) < 0) {
      rc = SA_EINTERNAL;
      goto out;
    }
    const char *pair[2] = {s, s2};
    cJSON_AddItemToArray(ml, cJSON_CreateStringArray(pair, 2));
  }

  cfg = cJSON_CreateObject();
  cJSON_AddBoolToObject(cfg, "add_bos_token", 0);
  cJSON_AddBoolToObject(cfg, "add_eos_token", 0);
  cJSON_AddBoolToObject(cfg, "add_prefix_space", 0);
  cJSON *dec = cJSON_AddObjectToObject(cfg, "added_tokens_decoder");
  for (size_t i = 0; i < N_ADDED; i++) {
    char key[32];
    snprintf(key, sizeof key, "%zu", toks.n + i);
    cJSON_AddItemToObject(dec, key, added_obj(&k_added[i], 0, 0));
  }
  cJSON_AddNullToObject(cfg, "bos_token");
  cJSON_AddStringToObject(cfg, "eos_token", "<|EOT|>");
  cJSON_AddStringToObject(cfg, "pad_token", "<|endoftext|>");
  cJSON_AddBoolToObject(cfg, "clean_up_tokenization_spaces", 0);
  cJSON_AddNumberToObject(cfg, "model_max_length", 65536);
  cJSON_AddStringToObject(cfg, "tokenizer_class", "PreTrainedTokenizerFast");
  cJSON_AddBoolToObject(cfg, "split_special_tokens", 0);

  if ((rc = write_json(dir, "tokenizer.json", doc, err, cap)))
    goto out;
  rc = write_json(dir, "tokenizer_config.json", cfg, err, cap);
out:
  if (rc && err && cap && !err[0])
    sa_set_err(err, cap, "%s", sa_strerror(rc));
  cJSON_Delete(doc);
  cJSON_Delete(cfg);
  free(merges);
  free(toks.bytes);
  free(toks.off);
  free(toks.tlen);
  return rc;
}
