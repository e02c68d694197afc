/*
 * tokenizer_core — the tokenizer's tables and what reads them: hashing, the
 * byte-level alphabet, vocabulary lookup, token <-> id lookups and destroy
 * (see tokenizer.h; the layout is described in tokenizer_impl.h). Loading
 * is tokenizer_load.c, encoding tokenizer_encode.c, decoding detok.c.
 */
#include "tokenizer.h"

#include "sa_error.h"
#include "tokenizer_impl.h"
#include "utf8.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char sa__tokenizer_qwen2_pattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";


/* ------------------------------------------------------------------------ */
/* small helpers                                                            */


uint64_t sa__tok_hash_bytes(const void *p, size_t n) {
  const uint8_t *s = p;
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) {
    h ^= s[i];
    h *= 1099511628211ull;
  }
  return h ^ (h >> 29);
}

uint64_t sa__tok_hash_u64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

size_t sa__tok_pow2_at_least(size_t n) {
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

int32_t sa__tok_vocab_find(const sa_tokenizer_t *t, const void *p, size_t n) {
  if (!t->vslots)
    return -1;
  size_t i = sa__tok_hash_bytes(p, n) & t->vmask;
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

/* Converts a byte-level vocabulary string to raw bytes in out (capacity at
 * least strlen(s)). Returns the raw length, or -1 if s has a character
 * outside the byte-level alphabet (or is not UTF-8). */
long sa__tok_bytelevel_decode_str(const char *s, size_t n, uint8_t *out) {
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
  long rn = sa__tok_bytelevel_decode_str(token, n, raw);
  if (rn > 0) {
    id = sa__tok_vocab_find(tok, raw, (size_t)rn);
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

