/*
 * vote — answer normalisation and the vote over a request's chains, with
 * early consensus (DESIGN §6).
 *
 * Normalisation rules (documented for users in README):
 *  1. the answer is the text after </think> up to <|EOT|>; a chain that ends
 *     without </think> or with only whitespace after it has no answer;
 *  2. Unicode case folding and NFKC (utf8proc), then trimming;
 *  3. a leading option letter — "A", "A.", "A)", "(A)", "A:" or "Option A"
 *     followed by a separator or the end — normalises to that letter alone;
 *  4. otherwise: punctuation is dropped except inside numbers, whitespace
 *     runs become one space, and a number loses thousands separators and
 *     trailing fractional zeros ("1,000.50" -> "1000.5", "3.0" -> "3").
 */
#include "coord.h"

#include "log.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

static int is_sep(unsigned char c) {
  return c == 0 || isspace(c) || c == '.' || c == ')' || c == ':' || c == ',' || c == ']';
}

void coord_normalize_answer(const char *in, char *out, size_t cap) {
  out[0] = '\0';
  if (!in || cap < 2)
    return;
  utf8proc_uint8_t *folded = NULL;
  utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)in, 0, &folded,
                                    UTF8PROC_NULLTERM | UTF8PROC_STABLE | UTF8PROC_COMPAT |
                                        UTF8PROC_COMPOSE | UTF8PROC_CASEFOLD);
  if (n < 0) /* not UTF-8: compare raw */
    folded = (utf8proc_uint8_t *)strdup(in);
  if (!folded)
    return;
  const char *s = (const char *)folded;
  while (*s && isspace((unsigned char)*s))
    s++;
  /* option letter */
  const char *p = s;
  if (!strncmp(p, "option ", 7))
    p += 7;
  if (*p == '(' && p[1] >= 'a' && p[1] <= 'j' && p[2] == ')') {
    out[0] = p[1];
    out[1] = '\0';
    free(folded);
    return;
  }
  if (*p >= 'a' && *p <= 'j' &&
      (p[1] == 0 || p[1] == '.' || p[1] == ')' || p[1] == ':' ||
       (p != s && is_sep((unsigned char)p[1])))) {
    /* "a", "a.", "a)", "a:", "option a ..." — but not a word like "a cat" */
    out[0] = *p;
    out[1] = '\0';
    free(folded);
    return;
  }
  size_t o = 0;
  bool space = false;
  for (const char *q = s; *q && o + 2 < cap; q++) {
    unsigned char c = (unsigned char)*q;
    if (isdigit(c)) {
      /* a number: digits with ',' thousands and one '.' */
      char num[64];
      size_t k = 0;
      bool dot = false;
      while (*q && k + 1 < sizeof num) {
        if (isdigit((unsigned char)*q))
          num[k++] = *q;
        else if (*q == ',' && isdigit((unsigned char)q[1]))
          ; /* thousands separator */
        else if (*q == '.' && !dot && isdigit((unsigned char)q[1])) {
          dot = true;
          num[k++] = '.';
        } else
          break;
        q++;
      }
      num[k] = '\0';
      if (dot) {
        while (k > 0 && num[k - 1] == '0')
          num[--k] = '\0';
        if (k > 0 && num[k - 1] == '.')
          num[--k] = '\0';
      }
      if (space && o > 0)
        out[o++] = ' ';
      space = false;
      for (size_t t = 0; t < k && o + 2 < cap; t++)
        out[o++] = num[t];
      q--;
      continue;
    }
    if (isspace(c)) {
      space = true;
      continue;
    }
    if (c < 0x80 && ispunct(c))
      continue;
    if (space && o > 0)
      out[o++] = ' ';
    space = false;
    out[o++] = (char)c;
  }
  out[o] = '\0';
  free(folded);
}

typedef struct {
  const char *norm;
  int votes;
  int first_chain;
} tally_t;

static int tally(request_t *r, tally_t *t, int *n_t) {
  int n = 0;
  for (int i = 0; i < r->n_chains; i++) {
    chain_t *c = &r->chains[i];
    if (c->state != CHAIN_DONE || !c->normalized[0])
      continue;
    int k;
    for (k = 0; k < n; k++)
      if (!strcmp(t[k].norm, c->normalized))
        break;
    if (k == n) {
      t[n].norm = c->normalized;
      t[n].votes = 0;
      t[n].first_chain = i;
      n++;
    }
    t[k].votes++;
  }
  *n_t = n;
  int best = -1;
  for (int k = 0; k < n; k++)
    if (best < 0 || t[k].votes > t[best].votes)
      best = k;
  return best;
}

static void cancel_rest(request_t *r) {
  for (int i = 0; i < r->n_chains; i++) {
    chain_t *c = &r->chains[i];
    if (c->state == CHAIN_DONE)
      continue;
    c->state = CHAIN_DONE;
    c->finish = SA__FINISH_REASON__FINISH_CANCELLED;
    r->chains_done++;
    r->tokens_saved += r->max_tokens - c->n_tokens;
    coord_chain_free(r, c);
  }
}

/* A chain just finished: normalise its answer and apply early consensus. */
void coord_chain_done(request_t *r, chain_t *c) {
  if (c->in_answer && c->answer)
    coord_normalize_answer(c->answer, c->normalized, sizeof c->normalized);
  if (r->n_chains < 2 || r->vote_rule == SA__VOTE_RULE__VOTE_NONE)
    return;
  tally_t t[COORD_MAX_CHAINS];
  int n_t;
  int best = tally(r, t, &n_t);
  if (best < 0)
    return;
  int running = r->n_chains - r->chains_done;
  if (r->vote_rule == SA__VOTE_RULE__VOTE_MAJORITY) {
    /* decided once no other answer can catch up, even if every running chain
     * agreed with it */
    int second = 0;
    for (int k = 0; k < n_t; k++)
      if (k != best && t[k].votes > second)
        second = t[k].votes;
    if (running > 0 && t[best].votes > second + running)
      cancel_rest(r);
  } else if (r->vote_rule == SA__VOTE_RULE__VOTE_FIRST_K_AGREE) {
    int k = r->vote_k > 0 ? r->vote_k : 2;
    if (t[best].votes >= k && running > 0)
      cancel_rest(r);
  }
}

void coord_vote(request_t *r, Sa__FinalResult *fr) {
  tally_t t[COORD_MAX_CHAINS];
  int n_t;
  int best = tally(r, t, &n_t);
  if (best < 0) {
    fr->answer = "";
    fr->votes = 0;
    return;
  }
  chain_t *c = &r->chains[t[best].first_chain];
  fr->answer = c->answer ? c->answer : "";
  fr->votes = t[best].votes;
}
