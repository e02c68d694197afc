/*
 * tokenizer — byte-level BPE from a Hugging Face tokenizer.json; see
 * tokenizer.h for what is and is not supported.
 *
 * Layout after load (all read-only, so encodes may run concurrently):
 *  - every id has its decoded bytes in one arena (raw bytes for BPE tokens,
 *    the content for added tokens);
 *  - the BPE vocabulary is a hash map raw bytes -> id, so BPE works on raw
 *    bytes and never converts to the byte-level alphabet at encode time;
 *  - merges are a hash map (left id, right id) -> (rank, merged id);
 *  - added tokens are indexed by first byte, longest first.
 * Encode: validate UTF-8 -> split on added tokens (raw text) -> NFC ->
 * split on "normalized" added tokens -> regex pre-tokenize -> BPE per word
 * (min-heap of candidate merges, lowest rank then leftmost, as HF does).
 */
#include "tokenizer.h"

#include "sa_error.h"
#include "tokenizer_impl.h"
#include "utf8.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <pcre2.h>
#include <utf8proc.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

const char sa__tokenizer_qwen2_pattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* GPT-2's ByteLevel pattern, for a ByteLevel pre-tokenizer with use_regex. */
static const char k_gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|"
    "\\s+(?!\\S)|\\s+";

enum { TOK_HOLE = 0, TOK_BPE = 1, TOK_RAW = 2, TOK_ADDED = 3 };
enum {
  FLAG_SPECIAL = 1, /* added token marked "special" */
  FLAG_WHOLE = 2,   /* BPE of this token's own bytes gives this token */
};

typedef struct {
  const char *content; /* points into the arena */
  uint32_t len;
  int32_t id;
  uint8_t special, normalized, lstrip, rstrip, single_word;
} added_tok_t;

/* One merge: (left id << 32 | right id) -> rank and merged id; 16 bytes, so
 * a lookup touches one cache line. */
typedef struct {
  uint64_t key;
  uint32_t rank;
  int32_t new_id;
} merge_slot_t;

struct sa_tokenizer {
  size_t n_ids;
  uint32_t *tok_off; /* [n_ids] offset of the decoded bytes in arena */
  uint32_t *tok_len; /* [n_ids] */
  uint8_t *tok_kind; /* [n_ids] TOK_* */
  uint8_t *tok_flags; /* [n_ids] FLAG_* */
  char *arena;
  size_t arena_len, arena_cap;
  size_t max_token_bytes;

  /* vocab: raw bytes -> id (TOK_BPE ids only); slots hold id + 1, 0 = empty */
  uint32_t *vslots;
  size_t vmask;

  /* merges: key = left << 32 | right; value rank and merged id */
  merge_slot_t *merges; /* open addressing; key UINT64_MAX = empty */
  size_t mmask;

  int32_t byte_id[256];
  int ignore_merges;

  added_tok_t *added;
  size_t n_added;
  /* for each first byte, indices into added[] ordered by length desc */
  uint32_t first_off[257];
  uint32_t *first_idx;
  int any_normalized_added;

  int nfc;
  pcre2_code *re; /* NULL: no split (the whole piece is one word) */
};

/* ------------------------------------------------------------------------ */
/* small helpers                                                            */


static uint64_t hash_bytes(const void *p, size_t n) {
  const uint8_t *s = p;
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) {
    h ^= s[i];
    h *= 1099511628211ull;
  }
  return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

static size_t pow2_at_least(size_t n) {
  size_t p = 16;
  while (p < n)
    p <<= 1;
  return p;
}

/* bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68
 * bytes to 256, 257, ... in byte order. */
uint32_t sa__bytelevel_cp(uint8_t b) {
  static uint32_t table[256];
  static int ready; /* benign: every thread computes the same table */
  if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) {
    uint32_t t[256];
    uint32_t next = 256;
    for (int i = 0; i < 256; i++) {
      int printable = (i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) ||
                      (i >= 0xAE && i <= 0xFF);
      t[i] = printable ? (uint32_t)i : next++;
    }
    for (int i = 0; i < 256; i++)
      __atomic_store_n(&table[i], t[i], __ATOMIC_RELAXED);
    __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
  }
  return table[b];
}

int sa__bytelevel_byte(uint32_t cp) {
  if (cp >= 324)
    return -1;
  static int16_t inv[324];
  static int ready;
  if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) {
    int16_t t[324];
    for (int i = 0; i < 324; i++)
      t[i] = -1;
    for (int b = 0; b < 256; b++)
      t[sa__bytelevel_cp((uint8_t)b)] = (int16_t)b;
    for (int i = 0; i < 324; i++)
      __atomic_store_n(&inv[i], t[i], __ATOMIC_RELAXED);
    __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
  }
  return inv[cp];
}

long sa__bytelevel_encode(const uint8_t *raw, size_t n, char *out,
                          size_t cap) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    uint32_t cp = sa__bytelevel_cp(raw[i]);
    if (cp < 0x80) {
      if (o + 1 >= cap)
        return -1;
      out[o++] = (char)cp;
    } else {
      if (o + 2 >= cap)
        return -1;
      out[o++] = (char)(0xC0 | (cp >> 6));
      out[o++] = (char)(0x80 | (cp & 0x3F));
    }
  }
  if (o >= cap)
    return -1;
  out[o] = 0;
  return (long)o;
}

/* ------------------------------------------------------------------------ */
/* load                                                                     */

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

static int32_t vocab_find(const sa_tokenizer_t *t, const void *p, size_t n) {
  if (!t->vslots)
    return -1;
  size_t i = hash_bytes(p, n) & t->vmask;
  for (;;) {
    uint32_t s = t->vslots[i];
    if (!s)
      return -1;
    int32_t id = (int32_t)(s - 1);
    if (t->tok_len[id] == n && memcmp(t->arena + t->tok_off[id], p, n) == 0)
      return id;
    i = (i + 1) & t->vmask;
  }
}

/* Inserts id (whose bytes are already in the arena); returns the id that
 * already had those bytes, or -1 after inserting. */
static int32_t vocab_insert(sa_tokenizer_t *t, int32_t id) {
  const char *p = t->arena + t->tok_off[id];
  size_t n = t->tok_len[id];
  size_t i = hash_bytes(p, n) & t->vmask;
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

static inline int merge_find(const sa_tokenizer_t *t, int32_t a, int32_t b,
                             uint32_t *rank, int32_t *nid) {
  uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
  size_t i = hash_u64(key) & t->mmask;
  for (;;) {
    const merge_slot_t *m = &t->merges[i];
    if (m->key == UINT64_MAX)
      return 0;
    if (m->key == key) {
      *rank = m->rank;
      *nid = m->new_id;
      return 1;
    }
    i = (i + 1) & t->mmask;
  }
}

/* Converts a byte-level vocabulary string to raw bytes in out (capacity at
 * least strlen(s)). Returns the raw length, or -1 if s has a character
 * outside the byte-level alphabet (or is not UTF-8). */
static long bytelevel_decode_str(const char *s, size_t n, uint8_t *out) {
  size_t i = 0, o = 0;
  while (i < n) {
    size_t adv;
    uint32_t cp;
    if (sa_utf8_decode((const uint8_t *)s + i, n - i, &adv, &cp) != 1)
      return -1;
    int b = sa__bytelevel_byte(cp);
    if (b < 0)
      return -1;
    out[o++] = (uint8_t)b;
    i += adv;
  }
  return (long)o;
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
    long rn = bytelevel_decode_str(e->string, n, raw);
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
  long rn = bytelevel_decode_str(s, strlen(s), scratch);
  if (rn <= 0)
    return -1;
  return vocab_find(t, scratch, (size_t)rn);
}

static int load_merges(sa_tokenizer_t *t, const cJSON *merges, char *err,
                       size_t cap) {
  size_t n = (size_t)cJSON_GetArraySize(merges);
  t->mmask = pow2_at_least(n * 2 + 1) - 1;
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
    int32_t in = vocab_find(t, scratch, la + lb);
    if (in < 0) {
      sa_set_err(err, cap, "model.merges[%zu]: merged token \"%s%s\" is not in "
                        "the vocab",
              rank, a, b);
      rc = SA_EFORMAT;
      goto out;
    }
    uint64_t key = ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib;
    size_t i = hash_u64(key) & t->mmask;
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

static int mark_whole_tokens(sa_tokenizer_t *t);

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
  t->vmask = pow2_at_least(n_vocab * 2 + 1) - 1;
  t->vslots = calloc(t->vmask + 1, sizeof *t->vslots);
  if (!t->tok_off || !t->tok_len || !t->tok_kind || !t->tok_flags ||
      !t->vslots)
    return SA_ENOMEM;

  if ((rc = load_vocab(t, vocab, t->n_ids, err, cap)))
    return rc;
  for (int b = 0; b < 256; b++) {
    uint8_t c = (uint8_t)b;
    t->byte_id[b] = vocab_find(t, &c, 1);
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
  return mark_whole_tokens(t);
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

void sa_tokenizer_destroy(sa_tokenizer_t **tok) {
  if (!tok || !*tok)
    return;
  sa_tokenizer_t *t = *tok;
  free(t->tok_off);
  free(t->tok_len);
  free(t->tok_kind);
  free(t->tok_flags);
  free(t->arena);
  free(t->vslots);
  free(t->merges);
  free(t->added);
  free(t->first_idx);
  if (t->re)
    pcre2_code_free(t->re);
  free(t);
  *tok = NULL;
}

size_t sa_tokenizer_vocab_size(const sa_tokenizer_t *tok) { return tok->n_ids; }

size_t sa_tokenizer_max_token_bytes(const sa_tokenizer_t *tok) {
  return tok->max_token_bytes;
}

/* ------------------------------------------------------------------------ */
/* encode                                                                   */

typedef struct {
  int32_t *ids;
  size_t n, cap;
  int fixed; /* caller's buffer: count past cap, never grow */
} out_t;

typedef struct {
  /* BPE scratch, grown per call */
  int32_t *sym;
  int32_t *prev, *next;
  uint64_t *heap; /* rank << 32 | pos */
  size_t cap;
  pcre2_match_data *md;
  int no_fast_path; /* set while load checks FLAG_WHOLE */
} scratch_t;

static int out_push(out_t *o, int32_t id) {
  if (o->n == o->cap) {
    if (o->fixed) {
      o->n++;
      return 0;
    }
    size_t c = o->cap ? o->cap * 2 : 64;
    int32_t *p = realloc(o->ids, c * sizeof *p);
    if (!p)
      return SA_ENOMEM;
    o->ids = p;
    o->cap = c;
  }
  if (o->n < o->cap)
    o->ids[o->n] = id;
  o->n++;
  return 0;
}

static int scratch_reserve(scratch_t *s, size_t n) {
  if (n <= s->cap)
    return 0;
  size_t c = s->cap ? s->cap : 64;
  while (c < n)
    c *= 2;
  int32_t *a = realloc(s->sym, c * sizeof *a);
  if (!a)
    return SA_ENOMEM;
  s->sym = a;
  a = realloc(s->prev, c * sizeof *a);
  if (!a)
    return SA_ENOMEM;
  s->prev = a;
  a = realloc(s->next, c * sizeof *a);
  if (!a)
    return SA_ENOMEM;
  s->next = a;
  uint64_t *h = realloc(s->heap, 2 * c * sizeof *h);
  if (!h)
    return SA_ENOMEM;
  s->heap = h;
  s->cap = c;
  return 0;
}

static inline void heap_push(uint64_t *h, size_t *n, uint64_t v) {
  size_t i = (*n)++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (h[p] <= v)
      break;
    h[i] = h[p];
    i = p;
  }
  h[i] = v;
}

static inline uint64_t heap_pop(uint64_t *h, size_t *n) {
  uint64_t top = h[0];
  uint64_t v = h[--(*n)];
  size_t i = 0, m = *n;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= m)
      break;
    if (c + 1 < m && h[c + 1] < h[c])
      c++;
    if (v <= h[c])
      break;
    h[i] = h[c];
    i = c;
  }
  if (m)
    h[i] = v;
  return top;
}

/* BPE of one pre-token w[0..n) (raw bytes). */
static int bpe_word(const sa_tokenizer_t *t, scratch_t *s, const uint8_t *w,
                    size_t n, out_t *o) {
  if (n == 1)
    return out_push(o, t->byte_id[w[0]]);
  if (!s->no_fast_path) {
    /* a word that is itself a token whose own BPE gives that token (checked
     * at load) needs no merging; with ignore_merges any vocab hit counts */
    int32_t id = vocab_find(t, w, n);
    if (id >= 0 && (t->ignore_merges || (t->tok_flags[id] & FLAG_WHOLE)))
      return out_push(o, id);
  }
  int rc = scratch_reserve(s, n);
  if (rc)
    return rc;
  int32_t *sym = s->sym, *prev = s->prev, *next = s->next;
  uint64_t *heap = s->heap;
  size_t hn = 0;
  for (size_t i = 0; i < n; i++) {
    sym[i] = t->byte_id[w[i]];
    prev[i] = (int32_t)i - 1;
    next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
  }
  for (size_t i = 0; i + 1 < n; i++) {
    uint32_t r;
    int32_t nid;
    if (merge_find(t, sym[i], sym[i + 1], &r, &nid))
      heap_push(heap, &hn, ((uint64_t)r << 32) | i);
  }
  while (hn) {
    uint64_t top = heap_pop(heap, &hn);
    uint32_t r = (uint32_t)(top >> 32);
    int32_t pos = (int32_t)(uint32_t)top;
    if (sym[pos] < 0)
      continue; /* absorbed into its left neighbour */
    int32_t nx = next[pos];
    if (nx < 0)
      continue;
    uint32_t cr;
    int32_t nid;
    if (!merge_find(t, sym[pos], sym[nx], &cr, &nid) || cr != r)
      continue; /* stale: the pair changed since it was queued */
    sym[pos] = nid;
    sym[nx] = -1;
    next[pos] = next[nx];
    if (next[nx] >= 0)
      prev[next[nx]] = pos;
    if (prev[pos] >= 0 &&
        merge_find(t, sym[prev[pos]], sym[pos], &cr, &nid))
      heap_push(heap, &hn, ((uint64_t)cr << 32) | (uint32_t)prev[pos]);
    if (next[pos] >= 0 && merge_find(t, sym[pos], sym[next[pos]], &cr, &nid))
      heap_push(heap, &hn, ((uint64_t)cr << 32) | (uint32_t)pos);
  }
  for (int32_t i = 0; i >= 0; i = next[i])
    if ((rc = out_push(o, sym[i])))
      return rc;
  return 0;
}

/* Sets FLAG_WHOLE on every BPE token that its own bytes encode to, so
 * encode can skip the merges for words that are whole tokens (most words). */
static int mark_whole_tokens(sa_tokenizer_t *t) {
  scratch_t s = {.no_fast_path = 1};
  out_t o = {0};
  int rc = 0;
  for (size_t id = 0; id < t->n_ids; id++) {
    if (t->tok_kind[id] != TOK_BPE)
      continue;
    o.n = 0;
    if ((rc = bpe_word(t, &s, (const uint8_t *)t->arena + t->tok_off[id],
                       t->tok_len[id], &o)))
      break;
    if (o.n == 1 && o.ids[0] == (int32_t)id)
      t->tok_flags[id] |= FLAG_WHOLE;
  }
  free(o.ids);
  free(s.sym);
  free(s.prev);
  free(s.next);
  free(s.heap);
  return rc;
}

/* Pre-tokenizes p[0..n) (valid UTF-8) and runs BPE on every word. */
static int encode_plain(const sa_tokenizer_t *t, scratch_t *s, const char *p,
                        size_t n, out_t *o, char *err, size_t cap) {
  if (n == 0)
    return 0;
  if (!t->re)
    return bpe_word(t, s, (const uint8_t *)p, n, o);
  if (!s->md) {
    s->md = pcre2_match_data_create_from_pattern(t->re, NULL);
    if (!s->md)
      return SA_ENOMEM;
  }
  size_t pos = 0, last = 0;
  int rc;
  while (pos <= n) {
    int m = pcre2_match(t->re, (PCRE2_SPTR)p, n, pos, PCRE2_NO_UTF_CHECK,
                        s->md, NULL);
    if (m == PCRE2_ERROR_NOMATCH)
      break;
    if (m < 0) {
      PCRE2_UCHAR msg[160];
      pcre2_get_error_message(m, msg, sizeof msg);
      sa_set_err(err, cap, "pre-tokenizer regex failed at byte %zu: %s", pos,
              (const char *)msg);
      return SA_EINTERNAL;
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(s->md);
    size_t ms = ov[0], me = ov[1];
    if (me == ms) { /* empty match: step one character */
      if (ms >= n)
        break;
      size_t adv;
      sa_utf8_decode((const uint8_t *)p + ms, n - ms, &adv, NULL);
      pos = ms + adv;
      continue;
    }
    if (ms > last && (rc = bpe_word(t, s, (const uint8_t *)p + last,
                                    ms - last, o)))
      return rc;
    if ((rc = bpe_word(t, s, (const uint8_t *)p + ms, me - ms, o)))
      return rc;
    last = pos = me;
  }
  if (last < n)
    return bpe_word(t, s, (const uint8_t *)p + last, n - last, o);
  return 0;
}

static int is_ws(const uint8_t *p, size_t n, size_t *adv, int back) {
  /* ASCII whitespace and Unicode White_Space via utf8proc category. */
  uint32_t cp;
  if (!back) {
    if (sa_utf8_decode(p, n, adv, &cp) != 1)
      return 0;
  } else {
    /* p points one past the char; walk back over continuation bytes */
    size_t k = 1;
    while (k < n && k < 4 && (p[-(long)k] & 0xC0) == 0x80)
      k++;
    if (sa_utf8_decode(p - k, k, adv, &cp) != 1 || *adv != k)
      return 0;
  }
  if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D) || cp == 0x85)
    return 1;
  utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
  return c == UTF8PROC_CATEGORY_ZS || c == UTF8PROC_CATEGORY_ZL ||
         c == UTF8PROC_CATEGORY_ZP;
}

static int is_word_char_before(const uint8_t *base, size_t at) {
  if (at == 0)
    return 0;
  size_t k = 1;
  while (k < at && k < 4 && (base[at - k] & 0xC0) == 0x80)
    k++;
  size_t adv;
  uint32_t cp;
  if (sa_utf8_decode(base + at - k, k, &adv, &cp) != 1)
    return 0;
  if (cp == '_')
    return 1;
  utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
  return c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_NO &&
         (c <= UTF8PROC_CATEGORY_LO || c >= UTF8PROC_CATEGORY_ND);
}

static int is_word_char_at(const uint8_t *base, size_t at, size_t n) {
  if (at >= n)
    return 0;
  size_t adv;
  uint32_t cp;
  if (sa_utf8_decode(base + at, n - at, &adv, &cp) != 1)
    return 0;
  if (cp == '_')
    return 1;
  utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
  return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) ||
         (c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO);
}

/* Finds the leftmost-longest added token in p[from..n) whose "normalized"
 * flag equals want_norm. Returns its index or -1; *ms,*me = the span it
 * takes (widened by lstrip/rstrip, never left of lo). */
static long find_added(const sa_tokenizer_t *t, const uint8_t *p, size_t lo,
                       size_t from, size_t n, int want_norm, unsigned flags,
                       size_t *ms, size_t *me) {
  for (size_t i = from; i < n; i++) {
    uint8_t c = p[i];
    uint32_t b = t->first_off[c], e = t->first_off[c + 1];
    for (uint32_t k = b; k < e; k++) {
      const added_tok_t *a = &t->added[t->first_idx[k]];
      if (a->normalized != want_norm)
        continue;
      if (a->special && (flags & SA_TOKENIZER_NO_SPECIAL))
        continue;
      if (a->len > n - i || memcmp(p + i, a->content, a->len) != 0)
        continue;
      if (a->single_word && (is_word_char_before(p, i) ||
                             is_word_char_at(p, i + a->len, n)))
        continue;
      size_t s = i, en = i + a->len, adv;
      if (a->lstrip)
        while (s > lo && is_ws(p + s, s - lo, &adv, 1))
          s -= adv;
      if (a->rstrip)
        while (en < n && is_ws(p + en, n - en, &adv, 0))
          en += adv;
      *ms = s;
      *me = en;
      return (long)t->first_idx[k];
    }
  }
  return -1;
}

/* NFC-normalized text (or the piece itself) -> split on normalized added
 * tokens -> encode_plain. */
static int encode_piece(const sa_tokenizer_t *t, scratch_t *s, const char *p,
                        size_t n, unsigned flags, out_t *o, char *err,
                        size_t cap) {
  if (n == 0)
    return 0;
  utf8proc_uint8_t *norm = NULL;
  if (t->nfc) {
    int need = 0;
    for (size_t i = 0; i < n; i++)
      if ((uint8_t)p[i] >= 0xCC) { /* a code point >= U+0300 */
        need = 1;
        break;
      }
    if (need) {
      utf8proc_ssize_t r =
          utf8proc_map((const utf8proc_uint8_t *)p, (utf8proc_ssize_t)n, &norm,
                       UTF8PROC_STABLE | UTF8PROC_COMPOSE);
      if (r < 0) {
        sa_set_err(err, cap, "NFC failed: %s", utf8proc_errmsg(r));
        return r == UTF8PROC_ERROR_NOMEM ? SA_ENOMEM : SA_EINVAL;
      }
      p = (const char *)norm;
      n = (size_t)r;
    }
  }
  int rc = 0;
  if (!t->any_normalized_added) {
    rc = encode_plain(t, s, p, n, o, err, cap);
  } else {
    size_t last = 0, ms, me;
    long k;
    while ((k = find_added(t, (const uint8_t *)p, last, last, n, 1, flags, &ms,
                           &me)) >= 0) {
      if ((rc = encode_plain(t, s, p + last, ms - last, o, err, cap)))
        goto out;
      if ((rc = out_push(o, t->added[k].id)))
        goto out;
      last = me;
    }
    rc = encode_plain(t, s, p + last, n - last, o, err, cap);
  }
out:
  free(norm);
  return rc;
}

static int encode_impl(const sa_tokenizer_t *t, const char *text, size_t len,
                       unsigned flags, out_t *o, char *err, size_t cap) {
  if (err && cap)
    err[0] = 0;
  if (!t || (!text && len)) {
    sa_set_err(err, cap, "no tokenizer or text");
    return SA_EINVAL;
  }
  size_t bad = sa_utf8_check((const uint8_t *)text, len);
  if (bad != len) {
    sa_set_err(err, cap, "text is not valid UTF-8 at byte %zu (0x%02x)", bad,
            (unsigned)(uint8_t)text[bad]);
    return SA_EINVAL;
  }
  scratch_t s = {0};
  int rc = 0;
  size_t last = 0, ms, me;
  long k;
  while ((k = find_added(t, (const uint8_t *)text, last, last, len, 0, flags,
                         &ms, &me)) >= 0) {
    if ((rc = encode_piece(t, &s, text + last, ms - last, flags, o, err, cap)))
      goto out;
    if ((rc = out_push(o, t->added[k].id)))
      goto out;
    last = me;
  }
  rc = encode_piece(t, &s, text + last, len - last, flags, o, err, cap);
out:
  free(s.sym);
  free(s.prev);
  free(s.next);
  free(s.heap);
  if (s.md)
    pcre2_match_data_free(s.md);
  return rc;
}

int sa_tokenizer_encode(const sa_tokenizer_t *tok, const char *text,
                        size_t len, unsigned flags, int32_t **ids, size_t *n,
                        char *err, size_t cap) {
  out_t o = {0};
  *ids = NULL;
  *n = 0;
  int rc = encode_impl(tok, text, len, flags, &o, err, cap);
  if (rc) {
    free(o.ids);
    return rc;
  }
  *ids = o.ids;
  *n = o.n;
  return 0;
}

int sa_tokenizer_encode_into(const sa_tokenizer_t *tok, const char *text,
                             size_t len, unsigned flags, int32_t *ids,
                             size_t cap_ids, size_t *n, char *err, size_t cap) {
  out_t o = {.ids = ids, .cap = cap_ids, .fixed = 1};
  *n = 0;
  int rc = encode_impl(tok, text, len, flags, &o, err, cap);
  if (rc)
    return rc;
  *n = o.n;
  if (o.n > cap_ids) {
    sa_set_err(err, cap, "text needs %zu ids, buffer holds %zu", o.n, cap_ids);
    return SA_ERANGE;
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* decode and lookup                                                        */

int sa_tokenizer_decode(const sa_tokenizer_t *tok, const int32_t *ids,
                        size_t n, char **out, size_t *out_len) {
  *out = NULL;
  *out_len = 0;
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    if (ids[i] < 0 || (size_t)ids[i] >= tok->n_ids)
      return SA_ERANGE;
    total += tok->tok_len[ids[i]];
  }
  char *buf = malloc(total + 1);
  if (!buf)
    return SA_ENOMEM;
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    memcpy(buf + o, tok->arena + tok->tok_off[ids[i]], tok->tok_len[ids[i]]);
    o += tok->tok_len[ids[i]];
  }
  buf[o] = 0;
  *out = buf;
  *out_len = o;
  return 0;
}

int32_t sa_tokenizer_token_id(const sa_tokenizer_t *tok, const char *token) {
  if (!tok || !token || !token[0])
    return -1;
  size_t n = strlen(token);
  uint8_t c = (uint8_t)token[0];
  for (uint32_t k = tok->first_off[c]; k < tok->first_off[c + 1]; k++) {
    const added_tok_t *a = &tok->added[tok->first_idx[k]];
    if (a->len == n && memcmp(a->content, token, n) == 0)
      return a->id;
  }
  uint8_t stackbuf[256];
  uint8_t *raw = n <= sizeof stackbuf ? stackbuf : malloc(n);
  if (!raw)
    return -1;
  int32_t id = -1;
  long rn = bytelevel_decode_str(token, n, raw);
  if (rn > 0) {
    id = vocab_find(tok, raw, (size_t)rn);
  } else {
    /* a token outside the byte-level alphabet is stored as written */
    for (size_t i = 0; i < tok->n_ids && id < 0; i++)
      if (tok->tok_kind[i] == TOK_RAW && tok->tok_len[i] == n &&
          memcmp(tok->arena + tok->tok_off[i], token, n) == 0)
        id = (int32_t)i;
  }
  if (raw != stackbuf)
    free(raw);
  return id;
}

int sa_tokenizer_id_to_token(const sa_tokenizer_t *tok, int32_t id, char *buf,
                             size_t cap) {
  if (cap)
    buf[0] = 0;
  if (id < 0 || (size_t)id >= tok->n_ids)
    return SA_ERANGE;
  const char *p = tok->arena + tok->tok_off[id];
  size_t n = tok->tok_len[id];
  switch (tok->tok_kind[id]) {
  case TOK_HOLE:
    return SA_ENOENT;
  case TOK_BPE: {
    long r = sa__bytelevel_encode((const uint8_t *)p, n, buf, cap);
    if (r < 0) {
      if (cap)
        buf[0] = 0;
      return SA_ERANGE;
    }
    return (int)r;
  }
  default:
    if (n + 1 > cap)
      return SA_ERANGE;
    memcpy(buf, p, n);
    buf[n] = 0;
    return (int)n;
  }
}

bool sa_tokenizer_is_special(const sa_tokenizer_t *tok, int32_t id) {
  if (id < 0 || (size_t)id >= tok->n_ids)
    return false;
  return (tok->tok_flags[id] & FLAG_SPECIAL) != 0;
}

/* ------------------------------------------------------------------------ */
/* streaming decode                                                         */

static const char k_fffd[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

void sa_detok_init(sa_detok_t *d, const sa_tokenizer_t *tok) {
  d->tok = tok;
  d->n_pending = 0;
}

int sa_detok_push(sa_detok_t *d, int32_t id, char *out, size_t cap,
                  size_t *out_len) {
  const sa_tokenizer_t *t = d->tok;
  *out_len = 0;
  if (id < 0 || (size_t)id >= t->n_ids)
    return SA_ERANGE;
  const uint8_t *tb = (const uint8_t *)t->arena + t->tok_off[id];
  size_t tn = t->tok_len[id];
  /* worst case: every byte becomes U+FFFD */
  if (cap < (tn + d->n_pending) * 3)
    return SA_ERANGE;
  /* view = pending ++ token bytes, walked without copying the token */
  uint8_t tmp[8];
  size_t np = d->n_pending, o = 0;
  size_t i = 0, total = np + tn;
#define AT(k) ((k) < np ? d->pending[(k)] : tb[(k) - np])
  while (i < total) {
    uint8_t c = AT(i);
    if (c < 0x80) {
      out[o++] = (char)c;
      i++;
      continue;
    }
    size_t avail = total - i < 4 ? total - i : 4, adv;
    for (size_t k = 0; k < avail; k++)
      tmp[k] = AT(i + k);
    int r = sa_utf8_decode(tmp, avail, &adv, NULL);
    if (r == 1) {
      memcpy(out + o, tmp, adv);
      o += adv;
    } else if (r == 0) {
      memcpy(d->pending, tmp, adv); /* incomplete: hold back */
      d->n_pending = adv;
      *out_len = o;
      return 0;
    } else {
      memcpy(out + o, k_fffd, 3);
      o += 3;
    }
    i += adv;
  }
#undef AT
  d->n_pending = 0;
  *out_len = o;
  return 0;
}

int sa_detok_flush(sa_detok_t *d, char *out, size_t cap, size_t *out_len) {
  *out_len = 0;
  if (d->n_pending == 0)
    return 0;
  if (cap < 3)
    return SA_ERANGE;
  memcpy(out, k_fffd, 3); /* one maximal subpart -> one U+FFFD */
  *out_len = 3;
  d->n_pending = 0;
  return 0;
}
