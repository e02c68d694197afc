/*
 * tokenizer_load — sa_tokenizer_load: tokenizer.json (and
 * tokenizer_config.json) into the tables of tokenizer_impl.h. Every field is
 * checked; a file that is not what we support fails with the reason.
 */
#include "tokenizer.h"

#include "sa_error.h"
#include "tokenizer_impl.h"
#include "utf8.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <pcre2.h>
#include <sys/stat.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* GPT-2's ByteLevel pattern, for a ByteLevel pre-tokenizer with use_regex. */
static const char k_gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|"
    "\\s+(?!\\S)|\\s+";


static int arena_put(sa_tokenizer_t *t, const void *p, size_t n,
                     uint32_t *off) {
  if (t->arena_len + n + 1 > t->arena_cap) {
    size_t cap = t->arena_cap ? t->arena_cap : 1 << 16;
    while (t->arena_len + n + 1 > cap)
      cap *= 2;
    if (cap > UINT32_MAX)
      return SA_ERANGE;
    char *a = realloc(t->arena, cap);
    if (!a)
      return SA_ENOMEM;
    t->arena = a;
    t->arena_cap = cap;
  }
  *off = (uint32_t)t->arena_len;
  memcpy(t->arena + t->arena_len, p, n);
  t->arena_len += n;
  t->arena[t->arena_len++] = 0;
  return 0;
}

/* Inserts id (whose bytes are already in the arena); returns the id that
 * already had those bytes, or -1 after inserting. */
static int32_t vocab_insert(sa_tokenizer_t *t, int32_t id) {
  const char *p = t->arena + t->tok_off[id];
  size_t n = t->tok_len[id];
  size_t i = sa__tok_hash_bytes(p, n) & t->vmask;
  for (;;) {
    uint32_t s = t->vslots[i];
    if (!s) {
      t->vslots[i] = (uint32_t)id + 1;
      return -1;
    }
    int32_t o = (int32_t)(s - 1);
    if (t->tok_len[o] == n && memcmp(t->arena + t->tok_off[o], p, n) == 0)
      return o;
    i = (i + 1) & t->vmask;
  }
}

static char *read_file(const char *path, size_t *len, char *err, size_t cap) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    sa_set_err(err, cap, "cannot open %s: %s", path, strerror(errno));
    return NULL;
  }
  char *buf = NULL;
  if (fseek(f, 0, SEEK_END) != 0)
    goto io;
  long sz = ftell(f);
  if (sz < 0 || fseek(f, 0, SEEK_SET) != 0)
    goto io;
  buf = malloc((size_t)sz + 1);
  if (!buf) {
    sa_set_err(err, cap, "out of memory reading %s", path);
    fclose(f);
    return NULL;
  }
  if (fread(buf, 1, (size_t)sz, f) != (size_t)sz)
    goto io;
  buf[sz] = 0;
  fclose(f);
  *len = (size_t)sz;
  return buf;
io:
  sa_set_err(err, cap, "cannot read %s: %s", path, strerror(errno));
  free(buf);
  fclose(f);
  return NULL;
}

static int json_bool(const cJSON *o, const char *key, int dflt) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (cJSON_IsBool(v))
    return cJSON_IsTrue(v);
  return dflt;
}

static int is_str(const cJSON *o, const char *key, const char *want) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsString(v) && strcmp(v->valuestring, want) == 0;
}

/* Reads the normalizer: null, NFC, or a Sequence of those. */
static int load_normalizer(sa_tokenizer_t *t, const cJSON *n, char *err,
                           size_t cap) {
  if (!n || cJSON_IsNull(n))
    return 0;
  if (is_str(n, "type", "NFC")) {
    t->nfc = 1;
    return 0;
  }
  if (is_str(n, "type", "Sequence")) {
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
    const cJSON *c;
    if (!cJSON_IsArray(l))
      goto bad;
    cJSON_ArrayForEach(c, l) {
      int rc = load_normalizer(t, c, err, cap);
      if (rc)
        return rc;
    }
    return 0;
  }
bad:;
  const cJSON *ty = cJSON_GetObjectItemCaseSensitive(n, "type");
  sa_set_err(err, cap, "unsupported normalizer %s (only NFC)",
          cJSON_IsString(ty) ? ty->valuestring : "(no type)");
  return SA_EUNIMPL;
}

static int compile_re(sa_tokenizer_t *t, const char *pat, int literal,
                      char *err, size_t cap) {
  int ec;
  PCRE2_SIZE eo;
  uint32_t opts = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
  t->re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, opts, &ec,
                        &eo, NULL);
  if (!t->re) {
    PCRE2_UCHAR msg[160];
    pcre2_get_error_message(ec, msg, sizeof msg);
    sa_set_err(err, cap, "pre-tokenizer regex does not compile at %zu: %s",
            (size_t)eo, (const char *)msg);
    return SA_EFORMAT;
  }
  (void)pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE); /* optional speed-up */
  return 0;
}

/* Accepts: Split(Isolated) + ByteLevel(use_regex false), or ByteLevel with
 * use_regex (GPT-2 pattern), each optionally inside a Sequence. */
static int load_pretok(sa_tokenizer_t *t, const cJSON *p, int *have_bl,
                       char *err, size_t cap) {
  if (!p || cJSON_IsNull(p))
    return 0;
  const cJSON *ty = cJSON_GetObjectItemCaseSensitive(p, "type");
  const char *type = cJSON_IsString(ty) ? ty->valuestring : "(no type)";
  if (strcmp(type, "Sequence") == 0) {
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
    const cJSON *c;
    if (!cJSON_IsArray(l)) {
      sa_set_err(err, cap, "pre_tokenizer Sequence without a pretokenizers list");
      return SA_EFORMAT;
    }
    cJSON_ArrayForEach(c, l) {
      int rc = load_pretok(t, c, have_bl, err, cap);
      if (rc)
        return rc;
    }
    return 0;
  }
  if (strcmp(type, "Split") == 0) {
    if (t->re) {
      sa_set_err(err, cap, "more than one regex pre-tokenizer is not supported");
      return SA_EUNIMPL;
    }
    if (!is_str(p, "behavior", "Isolated") || json_bool(p, "invert", 0)) {
      sa_set_err(err, cap, "Split pre-tokenizer: only behavior Isolated, "
                        "invert false is supported");
      return SA_EUNIMPL;
    }
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
    const cJSON *rx = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
    const cJSON *lit = cJSON_GetObjectItemCaseSensitive(pat, "String");
    if (cJSON_IsString(rx))
      return compile_re(t, rx->valuestring, 0, err, cap);
    if (cJSON_IsString(lit))
      return compile_re(t, lit->valuestring, 1, err, cap);
    sa_set_err(err, cap, "Split pre-tokenizer without a Regex or String pattern");
    return SA_EFORMAT;
  }
  if (strcmp(type, "ByteLevel") == 0) {
    if (json_bool(p, "add_prefix_space", 0)) {
      sa_set_err(err, cap, "ByteLevel add_prefix_space is not supported");
      return SA_EUNIMPL;
    }
    *have_bl = 1;
    if (json_bool(p, "use_regex", 1)) {
      if (t->re) {
        sa_set_err(err, cap, "Split followed by ByteLevel use_regex is not "
                          "supported");
        return SA_EUNIMPL;
      }
      return compile_re(t, k_gpt2_pattern, 0, err, cap);
    }
    return 0;
  }
  sa_set_err(err, cap, "unsupported pre_tokenizer %s", type);
  return SA_EUNIMPL;
}

/* Added tokens sorted by first byte, then longest first, then id. */
typedef struct {
  uint8_t first;
  uint32_t len;
  int32_t id;
  uint32_t idx;
} sort_key_t;

static int cmp_sort_key(const void *a, const void *b) {
  const sort_key_t *x = a, *y = b;
  if (x->first != y->first)
    return x->first < y->first ? -1 : 1;
  if (x->len != y->len)
    return x->len > y->len ? -1 : 1;
  return x->id < y->id ? -1 : x->id > y->id;
}

static int load_added(sa_tokenizer_t *t, const cJSON *arr, char *err,
                      size_t cap) {
  if (!arr || cJSON_IsNull(arr))
    return 0;
  if (!cJSON_IsArray(arr)) {
    sa_set_err(err, cap, "added_tokens is not an array");
    return SA_EFORMAT;
  }
  size_t n = (size_t)cJSON_GetArraySize(arr);
  t->added = calloc(n ? n : 1, sizeof *t->added);
  if (!t->added)
    return SA_ENOMEM;
  const cJSON *o;
  cJSON_ArrayForEach(o, arr) {
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(o, "content");
    if (!cJSON_IsNumber(id) || !cJSON_IsString(c) || !c->valuestring[0] ||
        id->valuedouble < 0 || id->valuedouble >= (double)INT32_MAX ||
        id->valuedouble != (double)(int32_t)id->valuedouble) {
      sa_set_err(err, cap, "added_tokens[%zu]: needs an integer id >= 0 and a "
                        "non-empty content",
              t->n_added);
      return SA_EFORMAT;
    }
    size_t len = strlen(c->valuestring);
    if (sa_utf8_check((const uint8_t *)c->valuestring, len) != len) {
      sa_set_err(err, cap, "added_tokens[%zu]: content is not UTF-8", t->n_added);
      return SA_EFORMAT;
    }
    added_tok_t *a = &t->added[t->n_added++];
    a->id = (int32_t)id->valuedouble;
    a->len = (uint32_t)len;
    a->special = (uint8_t)json_bool(o, "special", 0);
    a->normalized = (uint8_t)json_bool(o, "normalized", !a->special);
    a->lstrip = (uint8_t)json_bool(o, "lstrip", 0);
    a->rstrip = (uint8_t)json_bool(o, "rstrip", 0);
    a->single_word = (uint8_t)json_bool(o, "single_word", 0);
    /* content is copied into the arena once ids are known (see finish) */
    a->content = c->valuestring;
  }
  return 0;
}

/* Parses model.vocab into the id table and the vocab hash. */
static int load_vocab(sa_tokenizer_t *t, const cJSON *vocab, size_t n_ids,
                      char *err, size_t cap) {
  uint8_t *raw = NULL;
  size_t raw_cap = 0;
  int rc = 0;
  const cJSON *e;
  cJSON_ArrayForEach(e, vocab) {
    if (!cJSON_IsNumber(e) || !e->string) {
      sa_set_err(err, cap, "model.vocab: value of \"%s\" is not an id",
              e->string ? e->string : "?");
      rc = SA_EFORMAT;
      goto out;
    }
    int32_t id = (int32_t)e->valuedouble;
    if (t->tok_kind[id] != TOK_HOLE) {
      sa_set_err(err, cap, "model.vocab: id %d appears twice", (int)id);
      rc = SA_EFORMAT;
      goto out;
    }
    size_t n = strlen(e->string);
    if (n + 1 > raw_cap) {
      raw_cap = (n + 1) * 2;
      uint8_t *r = realloc(raw, raw_cap);
      if (!r) {
        rc = SA_ENOMEM;
        goto out;
      }
      raw = r;
    }
    long rn = sa__tok_bytelevel_decode_str(e->string, n, raw);
    if (rn < 0) {
      /* not in the byte-level alphabet: unreachable by BPE; decodes as is */
      if ((rc = arena_put(t, e->string, n, &t->tok_off[id])))
        goto out;
      t->tok_len[id] = (uint32_t)n;
      t->tok_kind[id] = TOK_RAW;
      continue;
    }
    if ((rc = arena_put(t, raw, (size_t)rn, &t->tok_off[id])))
      goto out;
    t->tok_len[id] = (uint32_t)rn;
    t->tok_kind[id] = TOK_BPE;
    if (rn == 0) {
      sa_set_err(err, cap, "model.vocab: empty token for id %d", (int)id);
      rc = SA_EFORMAT;
      goto out;
    }
    int32_t dup = vocab_insert(t, id);
    if (dup >= 0) {
      sa_set_err(err, cap, "model.vocab: ids %d and %d have the same string",
              (int)dup, (int)id);
      rc = SA_EFORMAT;
      goto out;
    }
  }
  (void)n_ids;
out:
  free(raw);
  return rc;
}

static int32_t vocab_find_str(const sa_tokenizer_t *t, const char *s,
                              uint8_t *scratch) {
  long rn = sa__tok_bytelevel_decode_str(s, strlen(s), scratch);
  if (rn <= 0)
    return -1;
  return sa__tok_vocab_find(t, scratch, (size_t)rn);
}

static int load_merges(sa_tokenizer_t *t, const cJSON *merges, char *err,
                       size_t cap) {
  size_t n = (size_t)cJSON_GetArraySize(merges);
  t->mmask = sa__tok_pow2_at_least(n * 2 + 1) - 1;
  t->merges = malloc((t->mmask + 1) * sizeof *t->merges);
  uint8_t *scratch = malloc(t->arena_len + 64);
  char *pair = NULL;
  size_t pair_cap = 0;
  int rc = 0;
  if (!t->merges || !scratch) {
    rc = SA_ENOMEM;
    goto out;
  }
  for (size_t i = 0; i <= t->mmask; i++)
    t->merges[i].key = UINT64_MAX;
  size_t rank = 0;
  const cJSON *m;
  cJSON_ArrayForEach(m, merges) {
    const char *a, *b;
    if (cJSON_IsString(m)) {
      /* "left right" */
      size_t len = strlen(m->valuestring);
      if (len + 1 > pair_cap) {
        pair_cap = 2 * len + 2;
        char *p = realloc(pair, pair_cap);
        if (!p) {
          rc = SA_ENOMEM;
          goto out;
        }
        pair = p;
      }
      memcpy(pair, m->valuestring, len + 1);
      char *sp = strchr(pair, ' ');
      if (!sp || sp == pair || !sp[1] || strchr(sp + 1, ' ')) {
        sa_set_err(err, cap, "model.merges[%zu]: \"%s\" is not \"left right\"",
                rank, m->valuestring);
        rc = SA_EFORMAT;
        goto out;
      }
      *sp = 0;
      a = pair;
      b = sp + 1;
    } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 &&
               cJSON_IsString(m->child) && cJSON_IsString(m->child->next)) {
      a = m->child->valuestring;
      b = m->child->next->valuestring;
    } else {
      sa_set_err(err, cap, "model.merges[%zu] is neither \"a b\" nor [\"a\",\"b\"]",
              rank);
      rc = SA_EFORMAT;
      goto out;
    }
    int32_t ia = vocab_find_str(t, a, scratch);
    int32_t ib = vocab_find_str(t, b, scratch);
    if (ia < 0 || ib < 0) {
      sa_set_err(err, cap, "model.merges[%zu]: token \"%s\" is not in the vocab",
              rank, ia < 0 ? a : b);
      rc = SA_EFORMAT;
      goto out;
    }
    size_t la = t->tok_len[ia], lb = t->tok_len[ib];
    memcpy(scratch, t->arena + t->tok_off[ia], la);
    memcpy(scratch + la, t->arena + t->tok_off[ib], lb);
    int32_t in = sa__tok_vocab_find(t, scratch, la + lb);
    if (in < 0) {
      sa_set_err(err, cap, "model.merges[%zu]: merged token \"%s%s\" is not in "
                        "the vocab",
              rank, a, b);
      rc = SA_EFORMAT;
      goto out;
    }
    uint64_t key = ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib;
    size_t i = sa__tok_hash_u64(key) & t->mmask;
    while (t->merges[i].key != UINT64_MAX && t->merges[i].key != key)
      i = (i + 1) & t->mmask;
    if (t->merges[i].key == UINT64_MAX) { /* a repeated merge keeps its rank */
      t->merges[i] = (merge_slot_t){.key = key, .rank = (uint32_t)rank,
                                    .new_id = in};
    }
    rank++;
  }
out:
  free(scratch);
  free(pair);
  return rc;
}

static int finish_added(sa_tokenizer_t *t, char *err, size_t cap) {
  uint32_t count[256] = {0};
  for (size_t i = 0; i < t->n_added; i++) {
    added_tok_t *a = &t->added[i];
    uint32_t off;
    if (t->tok_kind[a->id] == TOK_ADDED) {
      sa_set_err(err, cap, "added_tokens: id %d appears twice", (int)a->id);
      return SA_EFORMAT;
    }
    int rc = arena_put(t, a->content, a->len, &off);
    if (rc)
      return rc;
    t->tok_off[a->id] = off;
    t->tok_len[a->id] = a->len;
    t->tok_kind[a->id] = TOK_ADDED;
    t->tok_flags[a->id] = a->special ? FLAG_SPECIAL : 0;
    count[(uint8_t)a->content[0]]++;
    if (a->normalized)
      t->any_normalized_added = 1;
  }
  /* arena may have moved: re-point contents */
  for (size_t i = 0; i < t->n_added; i++)
    t->added[i].content = t->arena + t->tok_off[t->added[i].id];
  t->first_idx = malloc((t->n_added ? t->n_added : 1) * sizeof *t->first_idx);
  if (!t->first_idx)
    return SA_ENOMEM;
  t->first_off[0] = 0;
  for (int b = 0; b < 256; b++)
    t->first_off[b + 1] = t->first_off[b] + count[b];
  sort_key_t *keys = malloc((t->n_added ? t->n_added : 1) * sizeof *keys);
  if (!keys)
    return SA_ENOMEM;
  for (size_t i = 0; i < t->n_added; i++) {
    keys[i].first = (uint8_t)t->added[i].content[0];
    keys[i].len = t->added[i].len;
    keys[i].id = t->added[i].id;
    keys[i].idx = (uint32_t)i;
  }
  qsort(keys, t->n_added, sizeof *keys, cmp_sort_key);
  for (size_t i = 0; i < t->n_added; i++)
    t->first_idx[i] = keys[i].idx;
  free(keys);
  return 0;
}


static int load_json(sa_tokenizer_t *t, const cJSON *root, char *err,
                     size_t cap) {
  int rc;
  if (!cJSON_IsObject(root)) {
    sa_set_err(err, cap, "tokenizer.json is not a JSON object");
    return SA_EFORMAT;
  }
  const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
  if (!cJSON_IsObject(model)) {
    sa_set_err(err, cap, "tokenizer.json has no \"model\" object");
    return SA_EFORMAT;
  }
  const cJSON *ty = cJSON_GetObjectItemCaseSensitive(model, "type");
  if (ty && !(cJSON_IsString(ty) && strcmp(ty->valuestring, "BPE") == 0)) {
    sa_set_err(err, cap, "model type %s is not supported (only BPE)",
            cJSON_IsString(ty) ? ty->valuestring : "(not a string)");
    return SA_EUNIMPL;
  }
  const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
  const cJSON *pfx =
      cJSON_GetObjectItemCaseSensitive(model, "continuing_subword_prefix");
  const cJSON *sfx = cJSON_GetObjectItemCaseSensitive(model, "end_of_word_suffix");
  if ((dropout && !cJSON_IsNull(dropout)) || json_bool(model, "byte_fallback", 0) ||
      (cJSON_IsString(pfx) && pfx->valuestring[0]) ||
      (cJSON_IsString(sfx) && sfx->valuestring[0])) {
    sa_set_err(err, cap, "BPE dropout, byte_fallback, continuing_subword_prefix "
                      "and end_of_word_suffix are not supported");
    return SA_EUNIMPL;
  }
  t->ignore_merges = json_bool(model, "ignore_merges", 0);
  const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
  const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
  if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges)) {
    sa_set_err(err, cap, "model needs a \"vocab\" object and a \"merges\" array");
    return SA_EFORMAT;
  }

  if ((rc = load_normalizer(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"),
                            err, cap)))
    return rc;
  int have_bl = 0;
  if ((rc = load_pretok(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"),
                        &have_bl, err, cap)))
    return rc;
  if (!have_bl) {
    sa_set_err(err, cap, "pre_tokenizer has no ByteLevel step: only byte-level "
                      "BPE is supported");
    return SA_EUNIMPL;
  }
  const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder");
  if (dec && !cJSON_IsNull(dec) && !is_str(dec, "type", "ByteLevel")) {
    sa_set_err(err, cap, "decoder must be ByteLevel");
    return SA_EUNIMPL;
  }
  if ((rc = load_added(t, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"),
                       err, cap)))
    return rc;

  /* id space */
  double max_id = -1;
  size_t n_vocab = 0;
  const cJSON *e;
  cJSON_ArrayForEach(e, vocab) {
    if (!cJSON_IsNumber(e) || e->valuedouble < 0 ||
        e->valuedouble >= (double)INT32_MAX ||
        e->valuedouble != (double)(int32_t)e->valuedouble) {
      sa_set_err(err, cap, "model.vocab: \"%s\" has no valid id",
              e->string ? e->string : "?");
      return SA_EFORMAT;
    }
    if (e->valuedouble > max_id)
      max_id = e->valuedouble;
    n_vocab++;
  }
  for (size_t i = 0; i < t->n_added; i++)
    if (t->added[i].id > max_id)
      max_id = t->added[i].id;
  t->n_ids = (size_t)(max_id + 1);
  if (t->n_ids > ((size_t)n_vocab + t->n_added) * 4 + 1024) {
    sa_set_err(err, cap, "ids are too sparse (largest %.0f for %zu tokens)",
            max_id, n_vocab + t->n_added);
    return SA_EFORMAT;
  }
  t->tok_off = calloc(t->n_ids + 1, sizeof *t->tok_off);
  t->tok_len = calloc(t->n_ids + 1, sizeof *t->tok_len);
  t->tok_kind = calloc(t->n_ids + 1, 1);
  t->tok_flags = calloc(t->n_ids + 1, 1);
  t->vmask = sa__tok_pow2_at_least(n_vocab * 2 + 1) - 1;
  t->vslots = calloc(t->vmask + 1, sizeof *t->vslots);
  if (!t->tok_off || !t->tok_len || !t->tok_kind || !t->tok_flags ||
      !t->vslots)
    return SA_ENOMEM;

  if ((rc = load_vocab(t, vocab, t->n_ids, err, cap)))
    return rc;
  for (int b = 0; b < 256; b++) {
    uint8_t c = (uint8_t)b;
    t->byte_id[b] = sa__tok_vocab_find(t, &c, 1);
    if (t->byte_id[b] < 0) {
      sa_set_err(err, cap, "model.vocab lacks the byte-level token for byte 0x%02x",
              b);
      return SA_EFORMAT;
    }
  }
  if ((rc = load_merges(t, merges, err, cap)))
    return rc;
  if ((rc = finish_added(t, err, cap)))
    return rc;
  for (size_t i = 0; i < t->n_ids; i++)
    if (t->tok_len[i] > t->max_token_bytes)
      t->max_token_bytes = t->tok_len[i];
  return sa__tok_mark_whole_tokens(t);
}

sa_tokenizer_t *sa_tokenizer_load(const char *path_or_dir, char *err,
                                  size_t cap) {
  char path[4096];
  struct stat st;
  char *buf = NULL;
  cJSON *root = NULL;
  sa_tokenizer_t *t = NULL;
  if (err && cap)
    err[0] = 0;
  if (!path_or_dir) {
    sa_set_err(err, cap, "no tokenizer path");
    return NULL;
  }
  if (stat(path_or_dir, &st) == 0 && S_ISDIR(st.st_mode))
    snprintf(path, sizeof path, "%s/tokenizer.json", path_or_dir);
  else
    snprintf(path, sizeof path, "%s", path_or_dir);
  size_t len = 0;
  if (!(buf = read_file(path, &len, err, cap)))
    return NULL;
  const char *end = NULL;
  root = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
  if (!root) {
    size_t at = end && end >= buf ? (size_t)(end - buf) : 0;
    sa_set_err(err, cap, "%s is not valid JSON (error near byte %zu)", path, at);
    goto fail;
  }
  t = calloc(1, sizeof *t);
  if (!t) {
    sa_set_err(err, cap, "out of memory");
    goto fail;
  }
  int rc = load_json(t, root, err, cap);
  if (rc) {
    if (err && cap && !err[0])
      sa_set_err(err, cap, "%s", sa_strerror(rc));
    /* prefix the path for context */
    if (err && cap) {
      char tmp[512];
      snprintf(tmp, sizeof tmp, "%s", err);
      sa_set_err(err, cap, "%s: %s", path, tmp);
    }
    goto fail;
  }
  cJSON_Delete(root);
  free(buf);
  return t;
fail:
  sa_tokenizer_destroy(&t);
  cJSON_Delete(root);
  free(buf);
  return NULL;
}

