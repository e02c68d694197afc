/*
 * tokenizer_impl — the tokenizer's tables and internals, shared by
 * tokenizer_core.c, tokenizer_load.c, tokenizer_encode.c and detok.c (and
 * the synthetic tokenizer writer in tests/support). Not a public header.
 *
 * Layout after load (all read-only, so encodes may run concurrently):
 *  - every id has its decoded bytes in one arena (raw bytes for BPE tokens,
 *    the content for added tokens);
 *  - the BPE vocabulary is a hash map raw bytes -> id, so BPE works on raw
 *    bytes and never converts to the byte-level alphabet at encode time;
 *  - merges are a hash map (left id, right id) -> (rank, merged id);
 *  - added tokens are indexed by first byte, longest first.
 */
#ifndef SA_TOKENIZER_IMPL_H
#define SA_TOKENIZER_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

struct pcre2_real_code_8; /* PCRE2's compiled pattern (pcre2_code) */

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
  struct pcre2_real_code_8 *re; /* NULL: no split (the whole piece is one word) */
};


/* Hashes for the vocabulary and merge tables. */
uint64_t sa__tok_hash_bytes(const void *p, size_t n);
uint64_t sa__tok_hash_u64(uint64_t x);
/* The smallest power of two >= max(n, 16). */
size_t sa__tok_pow2_at_least(size_t n);
/* The BPE token whose raw bytes are p[0..n), or -1. */
int32_t sa__tok_vocab_find(const sa_tokenizer_t *t, const void *p, size_t n);
/* A byte-level vocabulary string to raw bytes in out (capacity at least n):
 * the raw length, or -1 for a character outside the alphabet. */
long sa__tok_bytelevel_decode_str(const char *s, size_t n, uint8_t *out);
/* Sets FLAG_WHOLE on every BPE token its own bytes encode to (load time). */
int sa__tok_mark_whole_tokens(sa_tokenizer_t *t);

/* The Qwen2 pre-tokenizer split pattern (used when tokenizer.json has a
 * ByteLevel pre-tokenizer with use_regex but no Split, and by the writer). */
extern const char sa__tokenizer_qwen2_pattern[];

/* GPT-2's bytes_to_unicode: byte b is written as code point
 * sa__bytelevel_cp(b) in vocabulary strings. */
uint32_t sa__bytelevel_cp(uint8_t b);

/* Inverse: the byte of code point cp, or -1 if cp is not a byte-level char. */
int sa__bytelevel_byte(uint32_t cp);

/* Writes the byte-level string of raw[0..n) (UTF-8, NUL-terminated) into
 * out[cap]; returns its length or -1 if it does not fit. */
long sa__bytelevel_encode(const uint8_t *raw, size_t n, char *out, size_t cap);


#endif /* SA_TOKENIZER_IMPL_H */
