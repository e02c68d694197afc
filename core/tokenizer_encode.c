/*
 * tokenizer_encode — text to ids: validate UTF-8 -> split on added tokens
 * (raw text) -> NFC -> split on "normalized" added tokens -> regex
 * pre-tokenize -> BPE per word (min-heap of candidate merges, lowest rank
 * then leftmost, as Hugging Face does). Read-only on the tables, so encodes
 * may run concurrently.
 */
#include "tokenizer.h"

#include "sa_error.h"
#include "tokenizer_impl.h"
#include "utf8.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline int merge_find(const sa_tokenizer_t *t, int32_t a, int32_t b,
                             uint32_t *rank, int32_t *nid) {
  uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
  size_t i = sa__tok_hash_u64(key) & t->mmask;
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
    int32_t id = sa__tok_vocab_find(t, w, n);
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
int sa__tok_mark_whole_tokens(sa_tokenizer_t *t) {
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

