/* libFuzzer target over sa_tokenizer_encode with the synthetic tokenizer
 * (written to a temporary folder once, so no fixtures are needed): any bytes
 * give either SA_EINVAL (exactly when they are not valid UTF-8, judged by
 * utf8proc) or ids that decode back to the NFC text, and streaming those ids
 * emits only valid UTF-8 that adds up to the full decode. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <utf8proc.h>

#include "sa_error.h"
#include "tokenizer.h"
#include "tokenizer_synth.h"
#include "utf8.h"

#define CHECK(c)                                                               \
  do {                                                                         \
    if (!(c))                                                                  \
      __builtin_trap();                                                        \
  } while (0)

static sa_tokenizer_t *g_tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  char dir[] = "/tmp/sa_fuzz_tok_XXXXXX";
  char err[256];
  CHECK(mkdtemp(dir) != NULL);
  CHECK(sa_tokenizer_write_synthetic(dir, 300, err, sizeof err) == 0);
  g_tok = sa_tokenizer_load(dir, err, sizeof err);
  CHECK(g_tok != NULL);
  char path[64];
  snprintf(path, sizeof path, "%s/tokenizer.json", dir);
  unlink(path);
  snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
  unlink(path);
  rmdir(dir);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int32_t *ids = NULL;
  size_t n = 0;
  char err[256];
  int rc = sa_tokenizer_encode(g_tok, (const char *)data, size, 0, &ids, &n, err,
                               sizeof err);
  int valid = sa_utf8_valid(data, size);
  if (!valid) {
    CHECK(rc == SA_EINVAL && ids == NULL && err[0]);
    return 0;
  }
  CHECK(rc == 0);
  char *out;
  size_t out_len;
  CHECK(sa_tokenizer_decode(g_tok, ids, n, &out, &out_len) == 0);
  /* NFC applies between added tokens (as in HF), so compare whole-text NFC
   * only when no added token can occur. */
  if (!memchr(data, '<', size)) {
    utf8proc_uint8_t *nfc = NULL;
    utf8proc_ssize_t m = utf8proc_map(data, (utf8proc_ssize_t)size, &nfc,
                                      UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    CHECK(m >= 0);
    CHECK((size_t)m == out_len && memcmp(nfc, out, out_len) == 0);
    free(nfc);
  }
  size_t cap = sa_tokenizer_max_token_bytes(g_tok) * 3 + 8, got = 0, k;
  char *chunk = malloc(cap), *acc = malloc(out_len * 3 + 16);
  CHECK(chunk && acc);
  sa_detok_t d;
  sa_detok_init(&d, g_tok);
  for (size_t i = 0; i < n; i++) {
    CHECK(sa_detok_push(&d, ids[i], chunk, cap, &k) == 0);
    CHECK(sa_utf8_valid((const uint8_t *)chunk, k));
    memcpy(acc + got, chunk, k);
    got += k;
  }
  CHECK(sa_detok_flush(&d, chunk, cap, &k) == 0 && k == 0);
  CHECK(got == out_len && memcmp(acc, out, out_len) == 0);
  free(chunk);
  free(acc);
  free(out);
  free(ids);
  return 0;
}
