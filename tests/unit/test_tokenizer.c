/* Unit tests for core/tokenizer against the real Qwen2.5 byte-level BPE in
^ * tests/fixtures/tokenizer: every line of cases.jsonl (reference ids
 * produced by Hugging Face tokenizers) must be reproduced exactly, decode
 * must give back the NFC text, streaming decode must emit only complete
 * UTF-8, concurrent encodes must agree, and bad input / bad files must fail
 * cleanly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

#include "sa_error.h"
#include "tokenizer.h"
#include "utf8.h"

#define TOK_DIR SA_FIXTURES_DIR "/tokenizer/qwen-bpe"
#define CASES SA_FIXTURES_DIR "/tokenizer/cases.jsonl"

typedef struct {
  char *text;
  size_t len;
  int32_t *ids;
  size_t n;
} tcase_t;

static sa_tokenizer_t *g_tok;
static tcase_t *g_cases;
static size_t g_ncases;

static int load_cases(void) {
  FILE *f = fopen(CASES, "rb");
  if (!f)
    return -1;
  char *line = NULL;
  size_t cap = 0;
  ssize_t r;
  while ((r = getline(&line, &cap, f)) > 0) {
    cJSON *o = cJSON_ParseWithLength(line, (size_t)r);
    if (!o)
      continue;
    cJSON *t = cJSON_GetObjectItem(o, "text"), *ids = cJSON_GetObjectItem(o, "ids");
    if (cJSON_IsString(t) && cJSON_IsArray(ids)) {
      g_cases = realloc(g_cases, (g_ncases + 1) * sizeof *g_cases);
      tcase_t *c = &g_cases[g_ncases++];
      c->text = strdup(t->valuestring);
      c->len = strlen(t->valuestring);
      c->n = (size_t)cJSON_GetArraySize(ids);
      c->ids = malloc((c->n + 1) * sizeof *c->ids);
      size_t k = 0;
      cJSON *e;
      cJSON_ArrayForEach(e, ids) c->ids[k++] = (int32_t)e->valuedouble;
    }
    cJSON_Delete(o);
  }
  free(line);
  fclose(f);
  return 0;
}

static void test_all_cases(void **state) {
  (void)state;
  assert_int_equal(g_ncases, 226);
  size_t bad = 0;
  for (size_t i = 0; i < g_ncases; i++) {
    tcase_t *c = &g_cases[i];
    int32_t *ids;
    size_t n;
    char err[256];
    assert_int_equal(sa_tokenizer_encode(g_tok, c->text, c->len, 0, &ids, &n,
                                         err, sizeof err),
                     0);
    int same = n == c->n && (n == 0 || memcmp(ids, c->ids, n * 4) == 0);
    if (!same) {
      bad++;
      fprintf(stderr, "case %zu mismatch: %s\n  got %zu ids:", i, c->text, n);
      for (size_t k = 0; k < n; k++)
        fprintf(stderr, " %d", ids[k]);
      fprintf(stderr, "\n want %zu ids:", c->n);
      for (size_t k = 0; k < c->n; k++)
        fprintf(stderr, " %d", c->ids[k]);
      fprintf(stderr, "\n");
    }
    free(ids);
  }
  assert_int_equal(bad, 0);
}

static void test_decode_is_nfc(void **state) {
  (void)state;
  for (size_t i = 0; i < g_ncases; i++) {
    tcase_t *c = &g_cases[i];
    char *out;
    size_t out_len;
    /* the reference ids, so decode is checked independently of encode */
    assert_int_equal(sa_tokenizer_decode(g_tok, c->ids, c->n, &out, &out_len), 0);
    utf8proc_uint8_t *nfc = utf8proc_NFC((const utf8proc_uint8_t *)c->text);
    assert_non_null(nfc);
    if (strlen((char *)nfc) != out_len || memcmp(nfc, out, out_len) != 0)
      fail_msg("case %zu: decode gives \"%s\", NFC text is \"%s\"", i, out,
               (char *)nfc);
    free(nfc);
    free(out);
  }
}

/* GPT-2 bytes_to_unicode, written out here independently of the library. */
static void byte_token(int b, char out[4]) {
  int cp;
  if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) {
    cp = b;
  } else {
    int k = 0;
    for (int x = 0; x < b; x++)
      if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255)))
        k++;
    cp = 256 + k;
  }
  if (cp < 0x80) {
    out[0] = (char)cp;
    out[1] = 0;
  } else {
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    out[2] = 0;
  }
}

static void test_stream_split_emoji(void **state) {
  (void)state;
  const unsigned char emoji[] = {0xF0, 0x9F, 0x98, 0x80}; /* U+1F600 */
  int32_t ids[6];
  for (int i = 0; i < 4; i++) {
    char s[4];
    byte_token(emoji[i], s);
    ids[i] = sa_tokenizer_token_id(g_tok, s);
    assert_true(ids[i] >= 0);
  }
  ids[4] = sa_tokenizer_token_id(g_tok, "a");
  ids[5] = sa_tokenizer_token_id(g_tok, "<|endoftext|>");
  assert_int_equal(ids[5], 151643);
  sa_detok_t d;
  sa_detok_init(&d, g_tok);
  char out[64];
  size_t n;
  for (int i = 0; i < 3; i++) {
    assert_int_equal(sa_detok_push(&d, ids[i], out, sizeof out, &n), 0);
    assert_int_equal(n, 0);
  }
  assert_int_equal(sa_detok_push(&d, ids[3], out, sizeof out, &n), 0);
  assert_int_equal(n, 4);
  assert_memory_equal(out, emoji, 4);
  assert_int_equal(sa_detok_push(&d, ids[4], out, sizeof out, &n), 0);
  assert_int_equal(n, 1);
  assert_int_equal(out[0], 'a');
  assert_int_equal(sa_detok_push(&d, ids[5], out, sizeof out, &n), 0);
  assert_int_equal(n, 13);
  assert_memory_equal(out, "<|endoftext|>", 13);

  /* a cut character followed by ASCII: held bytes can never complete */
  assert_int_equal(sa_detok_push(&d, ids[0], out, sizeof out, &n), 0);
  assert_int_equal(n, 0);
  assert_int_equal(sa_detok_push(&d, ids[4], out, sizeof out, &n), 0);
  assert_int_equal(n, 4);
  assert_memory_equal(out, "\xEF\xBF\xBD" "a", 4);
  /* a cut character at the end of the stream */
  assert_int_equal(sa_detok_push(&d, ids[0], out, sizeof out, &n), 0);
  assert_int_equal(sa_detok_push(&d, ids[1], out, sizeof out, &n), 0);
  assert_int_equal(n, 0);
  assert_int_equal(sa_detok_flush(&d, out, sizeof out, &n), 0);
  assert_int_equal(n, 3);
  assert_int_equal(sa_detok_flush(&d, out, sizeof out, &n), 0);
  assert_int_equal(n, 0);
  /* bad id */
  assert_int_equal(sa_detok_push(&d, -1, out, sizeof out, &n), SA_ERANGE);
  assert_int_equal(sa_detok_push(&d, 1 << 30, out, sizeof out, &n), SA_ERANGE);
}

/* Stream every case's reference ids token by token: each chunk is valid
 * UTF-8 and the chunks add up to the full decode (the cases are valid UTF-8). */
static void test_stream_cases(void **state) {
  (void)state;
  size_t cap = sa_tokenizer_max_token_bytes(g_tok) * 3 + 8;
  char *chunk = malloc(cap);
  for (size_t i = 0; i < g_ncases; i++) {
    tcase_t *c = &g_cases[i];
    char *full;
    size_t full_len;
    assert_int_equal(sa_tokenizer_decode(g_tok, c->ids, c->n, &full, &full_len), 0);
    char *acc = malloc(full_len * 3 + 16);
    size_t acc_len = 0, n;
    sa_detok_t d;
    sa_detok_init(&d, g_tok);
    for (size_t k = 0; k < c->n; k++) {
      assert_int_equal(sa_detok_push(&d, c->ids[k], chunk, cap, &n), 0);
      assert_true(sa_utf8_valid(chunk, n));
      memcpy(acc + acc_len, chunk, n);
      acc_len += n;
    }
    assert_int_equal(sa_detok_flush(&d, chunk, cap, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(acc_len, full_len);
    assert_memory_equal(acc, full, full_len);
    free(acc);
    free(full);
  }
  free(chunk);
}

static void test_invalid_utf8(void **state) {
  (void)state;
  const char *bad[] = {"abc\xff", "\xc3", "x\xc0\xaf", "\xed\xa0\x80",
                       "\xf4\x90\x80\x80", "ok\x80ok", "\xe2\x82"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    int32_t *ids = (int32_t *)1;
    size_t n = 99;
    char err[128] = "";
    assert_int_equal(sa_tokenizer_encode(g_tok, bad[i], strlen(bad[i]), 0,
                                         &ids, &n, err, sizeof err),
                     SA_EINVAL);
    assert_null(ids);
    assert_int_equal(n, 0);
    assert_non_null(strstr(err, "UTF-8"));
  }
  /* NUL is a character, not an end */
  int32_t *ids;
  size_t n;
  assert_int_equal(sa_tokenizer_encode(g_tok, "a\0b", 3, 0, &ids, &n, NULL, 0), 0);
  assert_int_equal(n, 3);
  free(ids);
}

static void test_lookup_and_flags(void **state) {
  (void)state;
  assert_int_equal(sa_tokenizer_vocab_size(g_tok), 151665 + 4);
  assert_int_equal(sa_tokenizer_token_id(g_tok, "<|im_start|>"), 151644);
  assert_int_equal(sa_tokenizer_token_id(g_tok, "<|EOT|>"), -1);
  assert_int_equal(sa_tokenizer_token_id(g_tok, "Hello"), 9707);
  assert_int_equal(sa_tokenizer_token_id(g_tok, "\xc4\xa0world"), 1879); /* Ġworld */
  char buf[64];
  assert_int_equal(sa_tokenizer_id_to_token(g_tok, 1879, buf, sizeof buf), 7);
  assert_string_equal(buf, "\xc4\xa0world");
  assert_int_equal(sa_tokenizer_id_to_token(g_tok, 151667, buf, sizeof buf), 7);
  assert_string_equal(buf, "<think>");
  assert_int_equal(sa_tokenizer_id_to_token(g_tok, 1879, buf, 3), SA_ERANGE);
  assert_int_equal(sa_tokenizer_id_to_token(g_tok, -5, buf, sizeof buf), SA_ERANGE);
  assert_true(sa_tokenizer_is_special(g_tok, 151643));
  assert_false(sa_tokenizer_is_special(g_tok, 151667)); /* <think> */
  assert_false(sa_tokenizer_is_special(g_tok, 64));

  /* NO_SPECIAL: special tokens become text, non-special added ones stay */
  const char *s = "a<|endoftext|><think>";
  int32_t *ids;
  size_t n;
  assert_int_equal(sa_tokenizer_encode(g_tok, s, strlen(s), 0, &ids, &n, NULL, 0), 0);
  assert_int_equal(n, 3);
  assert_int_equal(ids[1], 151643);
  free(ids);
  assert_int_equal(sa_tokenizer_encode(g_tok, s, strlen(s), SA_TOKENIZER_NO_SPECIAL,
                                       &ids, &n, NULL, 0),
                   0);
  assert_true(n > 3);
  assert_int_equal(ids[n - 1], 151667);
  for (size_t i = 0; i < n; i++)
    assert_int_not_equal(ids[i], 151643);
  char *out;
  size_t out_len;
  assert_int_equal(sa_tokenizer_decode(g_tok, ids, n, &out, &out_len), 0);
  assert_string_equal(out, s);
  free(out);
  free(ids);

  /* encode_into: exact fit, too small */
  int32_t small[2];
  assert_int_equal(sa_tokenizer_encode_into(g_tok, "Hello world", 11, 0, small, 2,
                                            &n, NULL, 0),
                   0);
  assert_int_equal(n, 2);
  assert_int_equal(small[0], 9707);
  assert_int_equal(small[1], 1879);
  assert_int_equal(sa_tokenizer_encode_into(g_tok, "Hello world again", 17, 0,
                                            small, 2, &n, NULL, 0),
                   SA_ERANGE);
  assert_int_equal(n, 3);
  int32_t bad_id = 999999;
  assert_int_equal(sa_tokenizer_decode(g_tok, &bad_id, 1, &out, &out_len), SA_ERANGE);
}

/* Long inputs: a 200 KB run of one letter and of spaces (BPE on huge words). */
static void test_long_words(void **state) {
  (void)state;
  size_t n = 200000;
  char *s = malloc(n);
  int32_t *ids;
  size_t k;
  for (int pass = 0; pass < 2; pass++) {
    memset(s, pass ? ' ' : 'a', n);
    assert_int_equal(sa_tokenizer_encode(g_tok, s, n, 0, &ids, &k, NULL, 0), 0);
    assert_true(k > 0 && k < n);
    char *out;
    size_t out_len;
    assert_int_equal(sa_tokenizer_decode(g_tok, ids, k, &out, &out_len), 0);
    assert_int_equal(out_len, n);
    assert_memory_equal(out, s, n);
    free(out);
    free(ids);
  }
  free(s);
}

static void *encode_all(void *arg) {
  size_t *bad = arg;
  for (int rep = 0; rep < 3; rep++)
    for (size_t i = 0; i < g_ncases; i++) {
      int32_t *ids;
      size_t n;
      if (sa_tokenizer_encode(g_tok, g_cases[i].text, g_cases[i].len, 0, &ids, &n,
                              NULL, 0) != 0 ||
          n != g_cases[i].n || (n && memcmp(ids, g_cases[i].ids, n * 4)))
        (*bad)++;
      free(ids);
    }
  return NULL;
}

static void test_threads(void **state) {
  (void)state;
  pthread_t th[4];
  size_t bad[4] = {0};
  for (int i = 0; i < 4; i++)
    assert_int_equal(pthread_create(&th[i], NULL, encode_all, &bad[i]), 0);
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    assert_int_equal(bad[i], 0);
  }
}

static char g_tmpdir[256];

static const char *write_tmp(const char *name, const char *body) {
  static char path[512];
  snprintf(path, sizeof path, "%s/%s", g_tmpdir, name);
  FILE *f = fopen(path, "wb");
  fputs(body, f);
  fclose(f);
  return path;
}

#define PRE                                                                    \
  "\"normalizer\":{\"type\":\"NFC\"},\"pre_tokenizer\":{\"type\":\"ByteLevel\"," \
  "\"add_prefix_space\":false,\"use_regex\":true},\"decoder\":{\"type\":"      \
  "\"ByteLevel\"},"

static void expect_load_error(const char *name, const char *body,
                              const char *needle) {
  char err[512] = "";
  sa_tokenizer_t *t = sa_tokenizer_load(write_tmp(name, body), err, sizeof err);
  if (t) {
    sa_tokenizer_destroy(&t);
    fail_msg("%s: loaded, expected an error with \"%s\"", name, needle);
  }
  if (!strstr(err, needle))
    fail_msg("%s: error \"%s\" lacks \"%s\"", name, err, needle);
}

static void test_bad_files(void **state) {
  (void)state;
  char err[512];
  assert_null(sa_tokenizer_load("/nonexistent/tok.json", err, sizeof err));
  assert_non_null(strstr(err, "cannot open"));
  expect_load_error("notjson.json", "this is { not json", "not valid JSON");
  expect_load_error("empty.json", "", "not valid JSON");
  expect_load_error("array.json", "[1,2]", "not a JSON object");
  expect_load_error("nomodel.json", "{" PRE "\"x\":1}", "no \"model\"");
  expect_load_error("wordpiece.json",
                    "{" PRE "\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}",
                    "not supported");
  expect_load_error("nomerges.json",
                    "{" PRE "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0}}}",
                    "\"merges\" array");
  /* a tiny vocabulary lacks most byte tokens */
  expect_load_error("nobytes.json",
                    "{" PRE "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},"
                    "\"merges\":[]}}",
                    "lacks the byte-level token");
  expect_load_error("badid.json",
                    "{" PRE "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"x\"},"
                    "\"merges\":[]}}",
                    "no valid id");
  expect_load_error("regex.json",
                    "{\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":"
                    "[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(unclosed\"},"
                    "\"behavior\":\"Isolated\",\"invert\":false},{\"type\":"
                    "\"ByteLevel\",\"use_regex\":false}]},\"model\":{\"type\":"
                    "\"BPE\",\"vocab\":{},\"merges\":[]}}",
                    "does not compile");
  expect_load_error("norm.json",
                    "{\"normalizer\":{\"type\":\"Lowercase\"},\"model\":{\"type\":"
                    "\"BPE\",\"vocab\":{},\"merges\":[]}}",
                    "unsupported normalizer");

  /* bad merges: build a full byte vocabulary, then break the merges */
  char *vocab = malloc(1 << 16);
  size_t o = 0;
  o += (size_t)sprintf(vocab + o, "{");
  for (int b = 0; b < 256; b++) {
    char s[4];
    byte_token(b, s);
    if (s[0] == '"' || s[0] == '\\')
      o += (size_t)sprintf(vocab + o, "\"\\%s\":%d,", s, b);
    else
      o += (size_t)sprintf(vocab + o, "\"%s\":%d,", s, b);
  }
  o += (size_t)sprintf(vocab + o, "\"ab\":256}");
  char *doc = malloc(1 << 17);
  const char *merges[][2] = {
      {"[\"a b\"]", NULL},        /* valid */
      {"[\"a c\"]", "merged token"}, /* "ac" not in the vocab */
      {"[\"a zz\"]", "not in the vocab"},
      {"[\"ab\"]", "not \"left right\""},
      {"[[\"a\"]]", "neither"},
      {"[7]", "neither"},
      {"{}", "\"merges\" array"},
  };
  for (size_t i = 0; i < sizeof merges / sizeof *merges; i++) {
    sprintf(doc, "{" PRE "\"added_tokens\":[{\"id\":257,\"content\":\"<x>\","
                 "\"special\":true}],\"model\":{\"type\":\"BPE\",\"vocab\":%s,"
                 "\"merges\":%s}}",
            vocab, merges[i][0]);
    if (!merges[i][1]) {
      sa_tokenizer_t *t = sa_tokenizer_load(write_tmp("ok.json", doc), err, sizeof err);
      if (!t)
        fail_msg("valid small tokenizer did not load: %s", err);
      assert_int_equal(sa_tokenizer_vocab_size(t), 258);
      int32_t *ids;
      size_t n;
      assert_int_equal(sa_tokenizer_encode(t, "abc<x>", 6, 0, &ids, &n, NULL, 0), 0);
      assert_int_equal(n, 3);
      assert_int_equal(ids[0], 256);
      assert_int_equal(ids[2], 257);
      free(ids);
      sa_tokenizer_destroy(&t);
      assert_null(t);
    } else {
      expect_load_error("badmerge.json", doc, merges[i][1]);
    }
  }
  /* duplicate ids */
  sprintf(doc, "{" PRE "\"added_tokens\":[{\"id\":256,\"content\":\"<x>\"}],"
               "\"model\":{\"type\":\"BPE\",\"vocab\":%s,\"merges\":[]}}",
          vocab);
  sa_tokenizer_t *t = sa_tokenizer_load(write_tmp("dup.json", doc), err, sizeof err);
  assert_non_null(t); /* an added token may reuse a vocab id (HF allows it) */
  sa_tokenizer_destroy(&t);
  free(doc);
  free(vocab);
  sa_tokenizer_destroy(&t); /* NULL is fine */
}

int main(void) {
  struct stat st;
  if (stat(TOK_DIR "/tokenizer.json", &st) != 0 || stat(CASES, &st) != 0) {
    fprintf(stderr, "fixtures not found at %s (re-run cmake)\n", SA_FIXTURES_DIR "/tokenizer");
    return 1;
  }
  char err[512];
  g_tok = sa_tokenizer_load(TOK_DIR, err, sizeof err);
  if (!g_tok) {
    fprintf(stderr, "load failed: %s\n", err);
    return 1;
  }
  if (load_cases() != 0)
    return 1;
  snprintf(g_tmpdir, sizeof g_tmpdir, "/tmp/sa_test_tok_XXXXXX");
  if (!mkdtemp(g_tmpdir))
    return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_all_cases),    cmocka_unit_test(test_decode_is_nfc),
      cmocka_unit_test(test_stream_split_emoji), cmocka_unit_test(test_stream_cases),
      cmocka_unit_test(test_invalid_utf8), cmocka_unit_test(test_lookup_and_flags),
      cmocka_unit_test(test_long_words),   cmocka_unit_test(test_threads),
      cmocka_unit_test(test_bad_files),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  sa_tokenizer_destroy(&g_tok);
  for (size_t i = 0; i < g_ncases; i++) {
    free(g_cases[i].text);
    free(g_cases[i].ids);
  }
  free(g_cases);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmpdir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", g_tmpdir);
  return rc;
}
