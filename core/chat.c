/* chat — the Step-Audio chat template to token ids; see chat.h. */
#include "chat.h"

#include "sa_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


typedef struct {
  int32_t *ids;
  size_t n, cap;
  sa_chat_span_t *spans;
  size_t n_spans, spans_cap;
  char *text; /* pending text piece (role line + text parts) */
  size_t text_len, text_cap;
} builder_t;

static int push_ids(builder_t *b, const int32_t *ids, size_t n) {
  if (b->n + n > b->cap) {
    size_t c = b->cap ? b->cap : 256;
    while (c < b->n + n)
      c *= 2;
    int32_t *p = realloc(b->ids, c * sizeof *p);
    if (!p)
      return SA_ENOMEM;
    b->ids = p;
    b->cap = c;
  }
  memcpy(b->ids + b->n, ids, n * sizeof *ids);
  b->n += n;
  return 0;
}

static int push_id(builder_t *b, int32_t id) { return push_ids(b, &id, 1); }

static int push_text(builder_t *b, const char *s, size_t n) {
  if (b->text_len + n + 1 > b->text_cap) {
    size_t c = b->text_cap ? b->text_cap : 256;
    while (c < b->text_len + n + 1)
      c *= 2;
    char *p = realloc(b->text, c);
    if (!p)
      return SA_ENOMEM;
    b->text = p;
    b->text_cap = c;
  }
  memcpy(b->text + b->text_len, s, n);
  b->text_len += n;
  return 0;
}

/* Encodes the pending text piece and appends its ids. */
static int flush_text(const sa_tokenizer_t *tok, builder_t *b, unsigned tflags,
                      char *err, size_t cap) {
  if (b->text_len == 0)
    return 0;
  int32_t *ids = NULL;
  size_t n = 0;
  int rc = sa_tokenizer_encode(tok, b->text, b->text_len, tflags, &ids, &n, err,
                               cap);
  if (rc == 0)
    rc = push_ids(b, ids, n);
  free(ids);
  b->text_len = 0;
  return rc;
}

static int lookup(const sa_tokenizer_t *tok, const char *s, int32_t *id,
                  char *err, size_t cap) {
  *id = sa_tokenizer_token_id(tok, s);
  if (*id < 0) {
    sa_set_err(err, cap, "tokenizer has no %s token (not a Step-Audio tokenizer?)",
            s);
    return SA_ENOENT;
  }
  return 0;
}

int sa_chat_build(const sa_tokenizer_t *tok, const char *system,
                  const sa_chat_part_t *parts, size_t n_parts, unsigned flags,
                  sa_chat_prompt_t *out, char *err, size_t cap) {
  builder_t b = {0};
  int rc;
  if (err && cap)
    err[0] = 0;
  if (out)
    memset(out, 0, sizeof *out);
  if (!tok || !out || (n_parts && !parts)) {
    sa_set_err(err, cap, "no tokenizer, output or parts");
    return SA_EINVAL;
  }
  unsigned tflags = (flags & SA_CHAT_TEXT_SPECIAL) ? 0 : SA_TOKENIZER_NO_SPECIAL;
  int32_t bot, eot, astart, aend, apatch, think = -1;
  if ((rc = lookup(tok, "<|BOT|>", &bot, err, cap)) ||
      (rc = lookup(tok, "<|EOT|>", &eot, err, cap)) ||
      (rc = lookup(tok, "<audio_start>", &astart, err, cap)) ||
      (rc = lookup(tok, "<audio_end>", &aend, err, cap)) ||
      (rc = lookup(tok, "<audio_patch>", &apatch, err, cap)))
    return rc;
  if (!(flags & SA_CHAT_NO_THINK) &&
      (rc = lookup(tok, "<think>", &think, err, cap)))
    return rc;
  for (size_t i = 0; i < n_parts; i++) {
    const sa_chat_part_t *p = &parts[i];
    if (p->kind == SA_CHAT_PART_TEXT) {
      if (!p->text && p->text_len) {
        sa_set_err(err, cap, "part %zu: text is NULL", i);
        return SA_EINVAL;
      }
    } else if (p->kind == SA_CHAT_PART_AUDIO) {
      if (!p->chunk_tokens && p->n_chunks) {
        sa_set_err(err, cap, "part %zu: chunk_tokens is NULL", i);
        return SA_EINVAL;
      }
      for (size_t c = 0; c < p->n_chunks; c++)
        if (p->chunk_tokens[c] < 0) {
          sa_set_err(err, cap, "part %zu chunk %zu: negative token count %d", i, c,
                  (int)p->chunk_tokens[c]);
          return SA_EINVAL;
        }
    } else {
      sa_set_err(err, cap, "part %zu: unknown kind %d", i, (int)p->kind);
      return SA_EINVAL;
    }
  }

  if (system) {
    if ((rc = push_id(&b, bot)) || (rc = push_text(&b, "system\n", 7)) ||
        (rc = push_text(&b, system, strlen(system))) ||
        (rc = flush_text(tok, &b, tflags, err, cap)) || (rc = push_id(&b, eot)))
      goto fail;
  }
  if ((rc = push_id(&b, bot)) || (rc = push_text(&b, "human\n", 6)))
    goto fail;
  for (size_t i = 0; i < n_parts; i++) {
    const sa_chat_part_t *p = &parts[i];
    if (p->kind == SA_CHAT_PART_TEXT) {
      if ((rc = push_text(&b, p->text, p->text_len)))
        goto fail;
      continue;
    }
    if ((rc = flush_text(tok, &b, tflags, err, cap)))
      goto fail;
    for (size_t c = 0; c < p->n_chunks; c++) {
      size_t k = (size_t)p->chunk_tokens[c];
      if ((rc = push_id(&b, astart)))
        goto fail;
      if (b.n_spans == b.spans_cap) {
        size_t sc = b.spans_cap ? b.spans_cap * 2 : 8;
        sa_chat_span_t *s = realloc(b.spans, sc * sizeof *s);
        if (!s) {
          rc = SA_ENOMEM;
          goto fail;
        }
        b.spans = s;
        b.spans_cap = sc;
      }
      b.spans[b.n_spans++] = (sa_chat_span_t){.first = b.n, .count = k};
      for (size_t j = 0; j < k; j++)
        if ((rc = push_id(&b, apatch)))
          goto fail;
      if ((rc = push_id(&b, aend)))
        goto fail;
    }
  }
  if ((rc = flush_text(tok, &b, tflags, err, cap)) || (rc = push_id(&b, eot)) ||
      (rc = push_id(&b, bot)) || (rc = push_text(&b, "assistant\n", 10)) ||
      (rc = flush_text(tok, &b, tflags, err, cap)))
    goto fail;
  if (!(flags & SA_CHAT_NO_THINK)) {
    if ((rc = push_id(&b, think)) || (rc = push_text(&b, "\n", 1)) ||
        (rc = flush_text(tok, &b, tflags, err, cap)))
      goto fail;
  }
  free(b.text);
  out->ids = b.ids;
  out->n_ids = b.n;
  out->spans = b.spans;
  out->n_spans = b.n_spans;
  return 0;
fail:
  if (err && cap && !err[0])
    sa_set_err(err, cap, "%s", sa_strerror(rc));
  free(b.ids);
  free(b.spans);
  free(b.text);
  return rc;
}

void sa_chat_prompt_free(sa_chat_prompt_t *p) {
  if (!p)
    return;
  free(p->ids);
  free(p->spans);
  memset(p, 0, sizeof *p);
}
