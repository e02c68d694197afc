/*
 * detok — ids back to text: whole sequences (sa_tokenizer_decode) and the
 * streaming decoder that emits only complete, valid UTF-8 (sa_detok_*).
 */
#include "tokenizer.h"

#include "sa_error.h"
#include "tokenizer_impl.h"
#include "utf8.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
