/* Unit tests for sa_tokenizer_write_synthetic: the written tokenizer.json has
 * the Qwen structure (checked by reading the JSON here, not through the
 * loader), loads back, round-trips text, finds the Step-Audio special tokens,
 * is byte-for-byte deterministic, and its BPE output matches a naive
 * reference BPE written in this file (lowest-rank pair, merge all, repeat).
 * Needs no fixtures. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <utf8proc.h>

#include "sa_error.h"
#include "tokenizer.h"
#include "tokenizer_synth.h"

#define N_MERGES 400

static const char k_qwen2_regex[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}"
    "\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static char g_dir[256], g_dir2[256];
static sa_tokenizer_t *g_tok;
static cJSON *g_doc;

static char *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  long sz = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)sz + 1);
  if (fread(b, 1, (size_t)sz, f) != (size_t)sz) {
    free(b);
    fclose(f);
    return NULL;
  }
  b[sz] = 0;
  fclose(f);
  *n = (size_t)sz;
  return b;
}

static void test_structure(void **state) {
  (void)state;
  cJSON *d = g_doc;
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(d, "normalizer"), "type")
                          ->valuestring,
                      "NFC");
  cJSON *pre = cJSON_GetObjectItem(d, "pre_tokenizer");
  assert_string_equal(cJSON_GetObjectItem(pre, "type")->valuestring, "Sequence");
  cJSON *pl = cJSON_GetObjectItem(pre, "pretokenizers");
  assert_int_equal(cJSON_GetArraySize(pl), 2);
  cJSON *split = cJSON_GetArrayItem(pl, 0);
  assert_string_equal(cJSON_GetObjectItem(split, "type")->valuestring, "Split");
  assert_string_equal(
      cJSON_GetObjectItem(cJSON_GetObjectItem(split, "pattern"), "Regex")->valuestring,
      k_qwen2_regex);
  assert_string_equal(cJSON_GetObjectItem(split, "behavior")->valuestring, "Isolated");
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(pl, 1), "type")->valuestring,
                      "ByteLevel");
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(d, "decoder"), "type")
                          ->valuestring,
                      "ByteLevel");
  cJSON *model = cJSON_GetObjectItem(d, "model");
  assert_string_equal(cJSON_GetObjectItem(model, "type")->valuestring, "BPE");
  int nv = cJSON_GetArraySize(cJSON_GetObjectItem(model, "vocab"));
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(model, "merges")), N_MERGES);
  assert_true(nv > 256 && nv <= 256 + N_MERGES);
  /* added tokens follow the BPE vocabulary */
  const char *names[] = {"<|endoftext|>", "<|BOT|>",       "<|EOT|>", "<audio_start>",
                         "<audio_end>",   "<audio_patch>", "<think>", "</think>"};
  cJSON *added = cJSON_GetObjectItem(d, "added_tokens");
  assert_int_equal(cJSON_GetArraySize(added), 8);
  for (int i = 0; i < 8; i++) {
    cJSON *a = cJSON_GetArrayItem(added, i);
    assert_string_equal(cJSON_GetObjectItem(a, "content")->valuestring, names[i]);
    assert_int_equal((int)cJSON_GetObjectItem(a, "id")->valuedouble, nv + i);
    assert_int_equal(cJSON_IsTrue(cJSON_GetObjectItem(a, "special")), i < 6);
    assert_int_equal(sa_tokenizer_token_id(g_tok, names[i]), nv + i);
    assert_int_equal(sa_tokenizer_is_special(g_tok, nv + i), i < 6);
  }
  assert_int_equal(sa_tokenizer_vocab_size(g_tok), (size_t)nv + 8);

  size_t n;
  char path[300];
  snprintf(path, sizeof path, "%s/tokenizer_config.json", g_dir);
  char *cfg_s = slurp(path, &n);
  assert_non_null(cfg_s);
  cJSON *cfg = cJSON_Parse(cfg_s);
  assert_non_null(cfg);
  assert_string_equal(cJSON_GetObjectItem(cfg, "eos_token")->valuestring, "<|EOT|>");
  char key[16];
  snprintf(key, sizeof key, "%d", nv + 2);
  cJSON *eot = cJSON_GetObjectItem(cJSON_GetObjectItem(cfg, "added_tokens_decoder"), key);
  assert_non_null(eot);
  assert_string_equal(cJSON_GetObjectItem(eot, "content")->valuestring, "<|EOT|>");
  cJSON_Delete(cfg);
  free(cfg_s);
}

static void test_deterministic(void **state) {
  (void)state;
  char err[256];
  assert_int_equal(sa_tokenizer_write_synthetic(g_dir2, N_MERGES, err, sizeof err), 0);
  const char *files[] = {"tokenizer.json", "tokenizer_config.json"};
  for (int i = 0; i < 2; i++) {
    char p1[300], p2[300];
    snprintf(p1, sizeof p1, "%s/%s", g_dir, files[i]);
    snprintf(p2, sizeof p2, "%s/%s", g_dir2, files[i]);
    size_t n1, n2;
    char *a = slurp(p1, &n1), *b = slurp(p2, &n2);
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1);
    free(a);
    free(b);
  }
  /* fewer merges: a prefix of the same merge list */
  assert_int_equal(sa_tokenizer_write_synthetic(g_dir2, 50, err, sizeof err), 0);
  char p[300];
  snprintf(p, sizeof p, "%s/tokenizer.json", g_dir2);
  size_t n;
  char *s = slurp(p, &n);
  cJSON *d = cJSON_Parse(s);
  cJSON *m50 = cJSON_GetObjectItem(cJSON_GetObjectItem(d, "model"), "merges");
  cJSON *m400 = cJSON_GetObjectItem(cJSON_GetObjectItem(g_doc, "model"), "merges");
  assert_int_equal(cJSON_GetArraySize(m50), 50);
  for (int i = 0; i < 50; i++)
    assert_true(cJSON_Compare(cJSON_GetArrayItem(m50, i), cJSON_GetArrayItem(m400, i), 1));
  cJSON_Delete(d);
  free(s);
}

static void test_roundtrip(void **state) {
  (void)state;
  const char *texts[] = {
      "",
      "The answer is B.",
      "Completely unseen words: xylophone quartz zephyr",
      ("e\xcc\x81" "cole cafe\xcc\x81 \xef\xac\x81"), /* combining marks, ligature */
      "你好，世界！ こんにちは 안녕하세요 Привет",
      "👨‍👩‍👧‍👦 🏳️‍🌈 👍🏽\r\n\r\n\t\t  trailing  ",
      "int main(void) { return 0; }\n",
      "<|BOT|>human\nWhat is this?<|EOT|><|BOT|>assistant\n<think>\n",
      "I'M YOU'RE he's we'd they'll 1234567890",
  };
  for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
    int32_t *ids;
    size_t n;
    char err[128];
    assert_int_equal(
        sa_tokenizer_encode(g_tok, texts[i], strlen(texts[i]), 0, &ids, &n, err, sizeof err),
        0);
    char *out;
    size_t out_len;
    assert_int_equal(sa_tokenizer_decode(g_tok, ids, n, &out, &out_len), 0);
    utf8proc_uint8_t *nfc = utf8proc_NFC((const utf8proc_uint8_t *)texts[i]);
    assert_string_equal(out, (char *)nfc);
    free(nfc);
    free(out);
    free(ids);
  }
  /* special tokens are single ids, <think> too */
  int32_t *ids;
  size_t n;
  const char *s = "<|BOT|>system\nhi<|EOT|><think>";
  assert_int_equal(sa_tokenizer_encode(g_tok, s, strlen(s), 0, &ids, &n, NULL, 0), 0);
  assert_int_equal(ids[0], sa_tokenizer_token_id(g_tok, "<|BOT|>"));
  assert_int_equal(ids[n - 1], sa_tokenizer_token_id(g_tok, "<think>"));
  assert_int_equal(ids[n - 2], sa_tokenizer_token_id(g_tok, "<|EOT|>"));
  free(ids);
}

/* Naive reference BPE on byte-level strings using the merges as written. */
static int merge_rank(cJSON *merges, const char *a, const char *b) {
  int r = 0;
  cJSON *m;
  cJSON_ArrayForEach(m, merges) {
    if (strcmp(m->child->valuestring, a) == 0 && strcmp(m->child->next->valuestring, b) == 0)
      return r;
    r++;
  }
  return -1;
}

static void bytelevel(const unsigned char *s, char syms[][64], int *n) {
  *n = 0;
  for (; *s; s++) {
    int b = *s, cp;
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) {
      cp = b;
    } else {
      int k = 0;
      for (int x = 0; x < b; x++)
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255)))
          k++;
      cp = 256 + k;
    }
    char *o = syms[(*n)++];
    if (cp < 0x80) {
      o[0] = (char)cp;
      o[1] = 0;
    } else {
      o[0] = (char)(0xC0 | (cp >> 6));
      o[1] = (char)(0x80 | (cp & 0x3F));
      o[2] = 0;
    }
  }
}

static void test_reference_bpe(void **state) {
  (void)state;
  cJSON *model = cJSON_GetObjectItem(g_doc, "model");
  cJSON *merges = cJSON_GetObjectItem(model, "merges");
  cJSON *vocab = cJSON_GetObjectItem(model, "vocab");
  /* each is one pre-token under the Qwen2 split */
  const char *words[] = {"the",        " the",       " reasoning", " listen",
                         "Hello",      " tokenizer", " answer",    " speaker",
                         " sentence",  " bibliothèque", " Straße",  " приветствую",
                         "interesting", " 😀🎵",      "...",        " international"};
  for (size_t w = 0; w < sizeof words / sizeof *words; w++) {
    static char syms[128][64];
    int n;
    bytelevel((const unsigned char *)words[w], syms, &n);
    for (;;) {
      int best = -1, at = -1;
      for (int i = 0; i + 1 < n; i++) {
        int r = merge_rank(merges, syms[i], syms[i + 1]);
        if (r >= 0 && (best < 0 || r < best)) {
          best = r;
          at = i;
        }
      }
      if (best < 0)
        break;
      (void)at;
      /* merge every occurrence of that pair, left to right */
      cJSON *m = cJSON_GetArrayItem(merges, best);
      const char *a = m->child->valuestring, *b = m->child->next->valuestring;
      int o = 0;
      for (int i = 0; i < n; i++) {
        if (i + 1 < n && strcmp(syms[i], a) == 0 && strcmp(syms[i + 1], b) == 0) {
          char tmp[64];
          snprintf(tmp, sizeof tmp, "%s%s", a, b);
          strcpy(syms[o++], tmp);
          i++;
        } else {
          if (o != i)
            memmove(syms[o], syms[i], strlen(syms[i]) + 1);
          o++;
        }
      }
      n = o;
    }
    int32_t *ids;
    size_t k;
    assert_int_equal(sa_tokenizer_encode(g_tok, words[w], strlen(words[w]), 0, &ids, &k,
                                         NULL, 0),
                     0);
    if ((int)k != n)
      fail_msg("\"%s\": %zu ids, reference has %d", words[w], k, n);
    for (int i = 0; i < n; i++) {
      cJSON *v = cJSON_GetObjectItemCaseSensitive(vocab, syms[i]);
      assert_non_null(v);
      assert_int_equal(ids[i], (int32_t)v->valuedouble);
    }
    free(ids);
  }
  /* the merges do shorten common words */
  int32_t *ids;
  size_t k;
  assert_int_equal(sa_tokenizer_encode(g_tok, " the", 4, 0, &ids, &k, NULL, 0), 0);
  assert_int_equal(k, 1);
  free(ids);
}

static void test_args(void **state) {
  (void)state;
  char err[256];
  assert_int_equal(sa_tokenizer_write_synthetic(g_dir2, -1, err, sizeof err), SA_EINVAL);
  assert_int_equal(sa_tokenizer_write_synthetic(g_dir2, 2001, err, sizeof err), SA_EINVAL);
  assert_int_equal(sa_tokenizer_write_synthetic("/nonexistent/dir", 10, err, sizeof err),
                   SA_EIO);
  assert_non_null(strstr(err, "cannot create"));
  /* zero merges: pure byte tokens */
  assert_int_equal(sa_tokenizer_write_synthetic(g_dir2, 0, err, sizeof err), 0);
  sa_tokenizer_t *t = sa_tokenizer_load(g_dir2, err, sizeof err);
  assert_non_null(t);
  assert_int_equal(sa_tokenizer_vocab_size(t), 264);
  int32_t *ids;
  size_t n;
  assert_int_equal(sa_tokenizer_encode(t, "héllo", 6, 0, &ids, &n, NULL, 0), 0);
  assert_int_equal(n, 6);
  free(ids);
  sa_tokenizer_destroy(&t);
  /* the largest supported count either works or says the text is too small */
  int rc = sa_tokenizer_write_synthetic(g_dir2, 2000, err, sizeof err);
  assert_true(rc == 0 || (rc == SA_ERANGE && strstr(err, "allows only")));
}

/* Added-token flags on a copy of the synthetic file: "normalized": true
 * matches in the NFC text, lstrip/rstrip swallow neighbouring whitespace,
 * single_word refuses matches inside words. */
static void add_tok(cJSON *arr, int id, const char *content, int norm, int l, int r,
                    int sw) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "id", id);
  cJSON_AddStringToObject(o, "content", content);
  cJSON_AddBoolToObject(o, "single_word", sw);
  cJSON_AddBoolToObject(o, "lstrip", l);
  cJSON_AddBoolToObject(o, "rstrip", r);
  cJSON_AddBoolToObject(o, "normalized", norm);
  cJSON_AddBoolToObject(o, "special", 1);
  cJSON_AddItemToArray(arr, o);
}

static void test_added_flags(void **state) {
  (void)state;
  cJSON *d = cJSON_Duplicate(g_doc, 1);
  cJSON *arr = cJSON_GetObjectItem(d, "added_tokens");
  int base = (int)sa_tokenizer_vocab_size(g_tok);
  add_tok(arr, base, "\xc3\xa9X", 1, 0, 0, 0); /* "éX", NFC form */
  add_tok(arr, base + 1, "<L>", 0, 1, 0, 0);
  add_tok(arr, base + 2, "<R>", 0, 0, 1, 0);
  add_tok(arr, base + 3, "cat", 0, 0, 0, 1);
  char path[300];
  snprintf(path, sizeof path, "%s/tokenizer.json", g_dir2);
  char *js = cJSON_Print(d);
  FILE *f = fopen(path, "wb");
  fputs(js, f);
  fclose(f);
  free(js);
  cJSON_Delete(d);
  char err[256];
  sa_tokenizer_t *t = sa_tokenizer_load(path, err, sizeof err);
  if (!t)
    fail_msg("load: %s", err);
  struct {
    const char *text;
    int32_t want_added; /* the added id that must appear, -1: none */
    const char *decoded;
  } cases[] = {
      {"e\xcc\x81X", base, "\xc3\xa9X"},        /* matched after NFC */
      {"a   <L>b", base + 1, "a<L>b"},          /* lstrip eats the spaces */
      {"a<R>  \n b", base + 2, "a<R>b"},        /* rstrip eats them */
      {"the cat sat", base + 3, "the cat sat"}, /* a word of its own */
      {"concatenate", -1, "concatenate"},       /* inside a word: no match */
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    int32_t *ids;
    size_t n;
    assert_int_equal(sa_tokenizer_encode(t, cases[i].text, strlen(cases[i].text), 0,
                                         &ids, &n, err, sizeof err),
                     0);
    int found = 0, hit = 0;
    for (size_t k = 0; k < n; k++) {
      found |= ids[k] >= base;
      hit |= ids[k] == cases[i].want_added;
    }
    if (cases[i].want_added >= 0 && !hit)
      fail_msg("\"%s\": added token %d not matched", cases[i].text, cases[i].want_added);
    if (cases[i].want_added < 0)
      assert_false(found);
    char *out;
    size_t ol;
    assert_int_equal(sa_tokenizer_decode(t, ids, n, &out, &ol), 0);
    assert_string_equal(out, cases[i].decoded);
    free(out);
    free(ids);
  }
  sa_tokenizer_destroy(&t);
}

int main(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/sa_test_synth_XXXXXX");
  snprintf(g_dir2, sizeof g_dir2, "/tmp/sa_test_synth2_XXXXXX");
  if (!mkdtemp(g_dir) || !mkdtemp(g_dir2))
    return 1;
  char err[256];
  if (sa_tokenizer_write_synthetic(g_dir, N_MERGES, err, sizeof err) != 0) {
    fprintf(stderr, "write failed: %s\n", err);
    return 1;
  }
  g_tok = sa_tokenizer_load(g_dir, err, sizeof err);
  if (!g_tok) {
    fprintf(stderr, "load failed: %s\n", err);
    return 1;
  }
  char path[300];
  snprintf(path, sizeof path, "%s/tokenizer.json", g_dir);
  size_t n;
  char *s = slurp(path, &n);
  g_doc = cJSON_Parse(s);
  free(s);
  if (!g_doc)
    return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_structure), cmocka_unit_test(test_deterministic),
      cmocka_unit_test(test_roundtrip), cmocka_unit_test(test_reference_bpe),
      cmocka_unit_test(test_args),      cmocka_unit_test(test_added_flags),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  cJSON_Delete(g_doc);
  sa_tokenizer_destroy(&g_tok);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", g_dir, g_dir2);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove temp dirs\n");
  return rc;
}
