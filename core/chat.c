/* chat — the Step-Audio chat template to token ids; see chat.h. */
#include "chat.h"

#include "sa_error.h"

#include <stdarg.h>
#include <stdbool.h>
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

/* Checks one turn's parts before anything is built. */
static int check_parts(const sa_chat_turn_t *t, size_t ti, char *err, size_t cap) {
  if (t->n_parts && !t->parts) {
    sa_set_err(err, cap, "turn %zu: parts is NULL", ti);
    return SA_EINVAL;
  }
  for (size_t i = 0; i < t->n_parts; i++) {
    const sa_chat_part_t *p = &t->parts[i];
    if (p->kind == SA_CHAT_PART_TEXT) {
      if (!p->text && p->text_len) {
        sa_set_err(err, cap, "turn %zu part %zu: text is NULL", ti, i);
        return SA_EINVAL;
      }
    } else if (p->kind == SA_CHAT_PART_AUDIO) {
      if (!p->chunk_tokens && p->n_chunks) {
        sa_set_err(err, cap, "turn %zu part %zu: chunk_tokens is NULL", ti, i);
        return SA_EINVAL;
      }
      for (size_t c = 0; c < p->n_chunks; c++)
        if (p->chunk_tokens[c] < 0) {
          sa_set_err(err, cap, "turn %zu part %zu chunk %zu: negative token count %d", ti, i,
                     c, (int)p->chunk_tokens[c]);
          return SA_EINVAL;
        }
    } else {
      sa_set_err(err, cap, "turn %zu part %zu: unknown kind %d", ti, i, (int)p->kind);
      return SA_EINVAL;
    }
  }
  return 0;
}

typedef struct {
  int32_t bot, eot, astart, aend, apatch, think;
} marks_t;

/* Appends one chunk's <audio_start> n x <audio_patch> <audio_end> and its span. */
static int push_chunk(builder_t *b, const marks_t *m, size_t k) {
  int rc;
  if ((rc = push_id(b, m->astart)))
    return rc;
  if (b->n_spans == b->spans_cap) {
    size_t sc = b->spans_cap ? b->spans_cap * 2 : 8;
    sa_chat_span_t *s = realloc(b->spans, sc * sizeof *s);
    if (!s)
      return SA_ENOMEM;
    b->spans = s;
    b->spans_cap = sc;
  }
  b->spans[b->n_spans++] = (sa_chat_span_t){.first = b->n, .count = k};
  for (size_t j = 0; j < k; j++)
    if ((rc = push_id(b, m->apatch)))
      return rc;
  return push_id(b, m->aend);
}

/* <|BOT|>role\n{parts} — the caller ends it (or leaves it open). */
static int push_turn(const sa_tokenizer_t *tok, builder_t *b, const marks_t *m,
                     const sa_chat_turn_t *t, unsigned tflags, char *err, size_t cap) {
  static const char *const role_line[] = {"human\n", "assistant\n", "system\n"};
  const char *rl = role_line[t->role];
  int rc;
  if ((rc = push_id(b, m->bot)) || (rc = push_text(b, rl, strlen(rl))))
    return rc;
  for (size_t i = 0; i < t->n_parts; i++) {
    const sa_chat_part_t *p = &t->parts[i];
    if (p->kind == SA_CHAT_PART_TEXT) {
      if ((rc = push_text(b, p->text, p->text_len)))
        return rc;
      continue;
    }
    if ((rc = flush_text(tok, b, tflags, err, cap)))
      return rc;
    for (size_t c = 0; c < p->n_chunks; c++)
      if ((rc = push_chunk(b, m, (size_t)p->chunk_tokens[c])))
        return rc;
  }
  return flush_text(tok, b, tflags, err, cap);
}

int sa_chat_render(const sa_tokenizer_t *tok, const sa_chat_turn_t *turns, size_t n_turns,
                   unsigned flags, sa_chat_prompt_t *out, char *err, size_t cap) {
  builder_t b = {0};
  marks_t m = {.think = -1};
  int rc;
  if (err && cap)
    err[0] = 0;
  if (out)
    memset(out, 0, sizeof *out);
  if (!tok || !out || !turns || n_turns == 0) {
    sa_set_err(err, cap, "no tokenizer, output or turns");
    return SA_EINVAL;
  }
  bool cont = flags & SA_CHAT_CONTINUE;
  for (size_t t = 0; t < n_turns; t++) {
    if ((unsigned)turns[t].role > SA_CHAT_SYSTEM) {
      sa_set_err(err, cap, "turn %zu: unknown role %d", t, (int)turns[t].role);
      return SA_EINVAL;
    }
    if ((rc = check_parts(&turns[t], t, err, cap)))
      return rc;
  }
  if (cont && turns[n_turns - 1].role != SA_CHAT_ASSISTANT) {
    sa_set_err(err, cap, "only an assistant turn can be continued");
    return SA_EINVAL;
  }
  unsigned tflags = (flags & SA_CHAT_TEXT_SPECIAL) ? 0 : SA_TOKENIZER_NO_SPECIAL;
  bool gen = !cont && !(flags & SA_CHAT_NO_GEN_PROMPT);
  if ((rc = lookup(tok, "<|BOT|>", &m.bot, err, cap)) ||
      (rc = lookup(tok, "<|EOT|>", &m.eot, err, cap)) ||
      (rc = lookup(tok, "<audio_start>", &m.astart, err, cap)) ||
      (rc = lookup(tok, "<audio_end>", &m.aend, err, cap)) ||
      (rc = lookup(tok, "<audio_patch>", &m.apatch, err, cap)))
    return rc;
  if (gen && !(flags & SA_CHAT_NO_THINK) && (rc = lookup(tok, "<think>", &m.think, err, cap)))
    return rc;

  for (size_t t = 0; t < n_turns; t++) {
    if ((rc = push_turn(tok, &b, &m, &turns[t], tflags, err, cap)))
      goto fail;
    if ((!cont || t + 1 < n_turns) && (rc = push_id(&b, m.eot)))
      goto fail;
  }
  if (gen) {
    if ((rc = push_id(&b, m.bot)) || (rc = push_text(&b, "assistant\n", 10)) ||
        (rc = flush_text(tok, &b, tflags, err, cap)))
      goto fail;
    if (!(flags & SA_CHAT_NO_THINK) &&
        ((rc = push_id(&b, m.think)) || (rc = push_text(&b, "\n", 1)) ||
         (rc = flush_text(tok, &b, tflags, err, cap))))
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

int sa_chat_build(const sa_tokenizer_t *tok, const char *system,
                  const sa_chat_part_t *parts, size_t n_parts, unsigned flags,
                  sa_chat_prompt_t *out, char *err, size_t cap) {
  sa_chat_part_t sys_part = {.kind = SA_CHAT_PART_TEXT, .text = system,
                             .text_len = system ? strlen(system) : 0};
  sa_chat_turn_t turns[2];
  size_t n = 0;
  if (system)
    turns[n++] = (sa_chat_turn_t){.role = SA_CHAT_SYSTEM, .parts = &sys_part, .n_parts = 1};
  turns[n++] = (sa_chat_turn_t){.role = SA_CHAT_HUMAN, .parts = parts, .n_parts = n_parts};
  if (n_parts && !parts) {
    if (out)
      memset(out, 0, sizeof *out);
    sa_set_err(err, cap, "no tokenizer, output or parts");
    return SA_EINVAL;
  }
  return sa_chat_render(tok, turns, n, flags, out, err, cap);
}

void sa_chat_prompt_free(sa_chat_prompt_t *p) {
  if (!p)
    return;
  free(p->ids);
  free(p->spans);
  memset(p, 0, sizeof *p);
}
