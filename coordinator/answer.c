/*
 * answer — what a chain answered, normalised so that votes compare like with
 * like. Pure: text in, text out; no request, no state.
 *
 * Answers. A chain's answer is the text after </think> up to <|EOT|> (or
 * max_tokens). A chain that ends without </think>, or with nothing left after
 * normalisation, has no answer: it never wins a vote and it breaks a window
 * streak. Chains cancelled by the vote or by the client have no answer.
 *
 * Normalisation (what the vote compares), in order:
 *  1. Unicode NFKC and case folding (utf8proc); text that is not UTF-8 is
 *     compared byte for byte after ASCII lower-casing;
 *  2. trimming; a wrapper \boxed{X} keeps X; a leading "final answer",
 *     "the answer is" or "answer", with an optional ':', is dropped;
 *  3. an option letter a-j — "A", "A.", "A)", "A:", "(A)", "[A]", "*A*",
 *     "Option A", "Choice (A)" — standing alone or followed by whitespace
 *     ("A. Paris" -> "a"; "a cat", "e.g. x" stay text) becomes that letter;
 *  4. otherwise punctuation (ASCII and Unicode P*) is dropped, whitespace
 *     runs become one space, and numbers are rewritten: a '-' sign directly
 *     before a number is kept, "," between groups of three digits is a
 *     thousands separator ("1,000" -> "1000"; "1,2" stays two numbers "1 2"),
 *     trailing fractional zeros and leading integer zeros go ("1,000.50" ->
 *     "1000.5", "3.0" -> "3", "007" -> "7", ".5" -> "0.5", "-0" -> "0"), and
 *     '/' or ':' between digits is kept ("1/2", "3:45"). Output is cut at
 *     the caller's capacity (on a code point boundary).
 *
 */
#include "answer.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

static const char *skip_ws(const char *s) {
  while (*s && isspace((unsigned char)*s))
    s++;
  return s;
}

/* If s starts with word (case already folded) followed by a non-letter,
 * returns the text after it, else NULL. */
static const char *after_word(const char *s, const char *word) {
  size_t n = strlen(word);
  if (strncmp(s, word, n) != 0 || isalnum((unsigned char)s[n]))
    return NULL;
  return s + n;
}

static const char *strip_prefixes(const char *s) {
  static const char *const prefixes[] = {"final answer", "the answer is", "the answer", "answer"};
  for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
    const char *p = after_word(s, prefixes[i]);
    if (!p)
      continue;
    p = skip_ws(p);
    if (!strncmp(p, "is", 2) && !isalnum((unsigned char)p[2]))
      p = skip_ws(p + 2);
    if (*p == ':')
      p = skip_ws(p + 1);
    return p;
  }
  return s;
}

/* Rule 3: the option letter at s, or 0. */
static char option_letter(const char *s) {
  const char *p = s, *q;
  if ((q = after_word(p, "option")) || (q = after_word(p, "choice")))
    p = skip_ws(q);
  size_t open = strspn(p, "([*'\"`");
  if (open > 2)
    return 0;
  char c = p[open];
  if (c < 'a' || c > 'j')
    return 0;
  const char *e = p + open + 1;
  size_t close = strspn(e, ")]*'\"`.:");
  if (close > 3)
    return 0;
  e += close;
  if (*e && !isspace((unsigned char)*e))
    return 0; /* "e.g.", "a-b", "ab" */
  if (close == 0 && open == 0 && *skip_ws(e) && p == s)
    return 0; /* "a cat": a bare letter followed by text is a word */
  return c;
}

static bool is_unicode_punct(utf8proc_int32_t cp) {
  switch (utf8proc_category(cp)) {
  case UTF8PROC_CATEGORY_PC: case UTF8PROC_CATEGORY_PD: case UTF8PROC_CATEGORY_PS:
  case UTF8PROC_CATEGORY_PE: case UTF8PROC_CATEGORY_PI: case UTF8PROC_CATEGORY_PF:
  case UTF8PROC_CATEGORY_PO:
    return true;
  default:
    return false;
  }
}

typedef struct {
  char *out;
  size_t o, cap;
  bool space; /* a space is pending before the next output */
  bool full;  /* something did not fit: the rest is dropped */
} outbuf_t;

/* Appends n bytes (one code point or one number) if they fit whole. */
static void put(outbuf_t *b, const char *s, size_t n) {
  size_t need = n + (b->space && b->o > 0);
  if (b->full || b->o + need + 1 > b->cap) {
    b->full = true;
    return;
  }
  if (b->space && b->o > 0)
    b->out[b->o++] = ' ';
  b->space = false;
  memcpy(b->out + b->o, s, n);
  b->o += n;
}

/* Reads a number at *ps (a digit, or '-'/'.' before one) and writes it in
 * canonical form. Advances *ps past it. */
static void put_number(outbuf_t *b, const char **ps) {
  const char *q = *ps;
  char num[80];
  size_t k = 0;
  bool neg = false;
  if (*q == '-') {
    neg = true;
    q++;
  }
  for (int part = 0; part < 4 && k + 8 < sizeof num; part++) {
    /* integer digits, with thousands separators */
    size_t start = k;
    while (k + 2 < sizeof num) {
      if (isdigit((unsigned char)*q)) {
        num[k++] = *q++;
      } else if (*q == ',' && k > start && isdigit((unsigned char)q[1]) &&
                 isdigit((unsigned char)q[2]) && isdigit((unsigned char)q[3]) &&
                 !isdigit((unsigned char)q[4])) {
        q++;
      } else {
        break;
      }
    }
    /* leading zeros of the integer part */
    size_t lead = 0;
    while (start + lead + 1 < k && num[start + lead] == '0')
      lead++;
    if (lead) {
      memmove(num + start, num + start + lead, k - start - lead);
      k -= lead;
    }
    if (k == start)
      num[k++] = '0'; /* ".5" */
    if (*q == '.' && isdigit((unsigned char)q[1])) {
      size_t dot = k;
      num[k++] = '.';
      q++;
      while (isdigit((unsigned char)*q) && k + 2 < sizeof num)
        num[k++] = *q++;
      while (isdigit((unsigned char)*q)) /* too long: drop the tail */
        q++;
      while (k > dot + 1 && num[k - 1] == '0')
        k--;
      if (k == dot + 1)
        k = dot;
    }
    if ((*q == '/' || *q == ':') && isdigit((unsigned char)q[1]) && k + 8 < sizeof num) {
      num[k++] = *q++;
      continue;
    }
    break;
  }
  while (isdigit((unsigned char)*q)) /* a number longer than num: drop the tail */
    q++;
  *ps = q;
  bool zero = k == 1 && num[0] == '0';
  if (b->o > 0 && isdigit((unsigned char)b->out[b->o - 1]))
    b->space = true; /* "1,2" -> "1 2", not "12" */
  char tmp[82];
  size_t n = 0;
  if (neg && !zero)
    tmp[n++] = '-';
  memcpy(tmp + n, num, k);
  put(b, tmp, n + k);
}

void coord_answer_normalize(const char *in, char *out, size_t cap) {
  if (!out || cap == 0)
    return;
  out[0] = '\0';
  if (!in || cap < 2)
    return;
  utf8proc_uint8_t *folded = NULL;
  utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)in, 0, &folded,
                                    UTF8PROC_NULLTERM | UTF8PROC_STABLE | UTF8PROC_COMPAT |
                                        UTF8PROC_COMPOSE | UTF8PROC_CASEFOLD);
  bool utf8 = n >= 0;
  if (!utf8) { /* not UTF-8: ASCII lower-case, compare the rest raw */
    folded = (utf8proc_uint8_t *)strdup(in);
    if (!folded)
      return;
    for (utf8proc_uint8_t *p = folded; *p; p++)
      *p = (utf8proc_uint8_t)tolower(*p);
  }
  const char *s = skip_ws((const char *)folded);
  /* \boxed{X} -> X (the first one, as reasoning models write it) */
  char *boxed = strstr(s, "\\boxed{");
  if (boxed) {
    char *x = boxed + 7, *e = x;
    int depth = 1;
    for (; *e; e++) {
      if (*e == '{')
        depth++;
      else if (*e == '}' && --depth == 0)
        break;
    }
    if (*e == '}') {
      *e = '\0';
      s = skip_ws(x);
    }
  }
  s = strip_prefixes(s);
  char letter = option_letter(s);
  if (letter) {
    out[0] = letter;
    out[1] = '\0';
    free(folded);
    return;
  }
  outbuf_t b = {.out = out, .o = 0, .cap = cap};
  const char *q = s;
  while (*q && !b.full) {
    unsigned char c = (unsigned char)*q;
    bool prev_alnum = q > s && isalnum((unsigned char)q[-1]);
    if (isdigit(c) || (c == '-' && isdigit((unsigned char)q[1]) && !prev_alnum) ||
        (c == '.' && isdigit((unsigned char)q[1]) && !prev_alnum)) {
      put_number(&b, &q);
      continue;
    }
    if (c < 0x80 || !utf8) {
      q++;
      if (isspace(c))
        b.space = true;
      else if (!(c < 0x80 && ispunct(c)))
        put(&b, (const char *)&c, 1);
      continue;
    }
    utf8proc_int32_t cp;
    utf8proc_ssize_t len = utf8proc_iterate((const utf8proc_uint8_t *)q, -1, &cp);
    if (len <= 0) { /* cannot happen after utf8proc_map; be safe */
      q++;
      continue;
    }
    if (utf8proc_category(cp) == UTF8PROC_CATEGORY_ZS)
      b.space = true;
    else if (!is_unicode_punct(cp))
      put(&b, q, (size_t)len);
    q += len;
  }
  out[b.o] = '\0';
  free(folded);
}
