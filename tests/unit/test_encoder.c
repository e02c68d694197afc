/* Audio encoder length formulas (docs/model.md) against hand-derived values,
 * and the encoder's refusal of bad shapes. The numbers below are worked out
 * by hand from T = floor((N + 479) / 160), x_len = T - 2,
 * enc_len = floor(floor((x_len + 1) / 2) / 2), tokens = floor((enc_len - 1)
 * / 2) + 1 with Python's floor division; the golden embeddings are checked in
 * test_encoder_golden.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>

#include "audio_encoder.h"
#include "config.h"
#include "encoder_test_util.h"
#include "kernels.h"
#include "log.h"
#include "sa_error.h"
#include "safetensors.h"

static void check_chunks(int64_t n_samples, int n_chunks, const int *tokens) {
  int nc = -1;
  int64_t total = -1, want = 0;
  sa_audio_count_tokens(n_samples, &nc, &total);
  assert_int_equal(nc, n_chunks);
  for (int c = 0; c < n_chunks; c++) {
    int64_t off = (int64_t)c * SA_AUDIO_CHUNK_SAMPLES;
    int64_t n = n_samples - off < SA_AUDIO_CHUNK_SAMPLES ? n_samples - off
                                                         : SA_AUDIO_CHUNK_SAMPLES;
    assert_int_equal(sa_audio_chunk_tokens(sa_audio_mel_frames(n)), tokens[c]);
    want += tokens[c];
  }
  assert_int_equal(total, want);
}

static void test_lengths(void **state) {
  (void)state;
  /* a full chunk: T 2502, x_len 2500, enc_len 625, 313 tokens */
  assert_int_equal(sa_audio_mel_frames(400000), 2502);
  assert_int_equal(sa_audio_encoder_len(2502), 625);
  assert_int_equal(sa_audio_chunk_tokens(2502), 313);
  /* 0.1 s = 1600 samples: T 12, x_len 10, enc_len 2, 1 token */
  assert_int_equal(sa_audio_mel_frames(1600), 12);
  assert_int_equal(sa_audio_encoder_len(12), 2);
  check_chunks(1600, 1, (int[]){1});
  /* exactly 25 s: one chunk */
  check_chunks(400000, 1, (int[]){313});
  /* 25.01 s: a tail of 160 samples, T 3, x_len 1, enc_len 0 -> 0 tokens
   * ((0 - 1) // 2 + 1 = 0 with floor division; C's / would say 1) */
  assert_int_equal(sa_audio_mel_frames(160), 3);
  assert_int_equal(sa_audio_encoder_len(3), 0);
  check_chunks(400160, 2, (int[]){313, 0});
  /* 61 s: 25 + 25 + 11 s; the tail has 176000 samples: T 1102, x_len 1100,
   * enc_len 275, 138 tokens */
  assert_int_equal(sa_audio_mel_frames(176000), 1102);
  assert_int_equal(sa_audio_encoder_len(1102), 275);
  check_chunks(976000, 3, (int[]){313, 313, 138});
  /* 0.01 s alone: no tokens at all */
  check_chunks(160, 1, (int[]){0});
  /* small T by hand: T 5 -> x_len 3, enc_len 1, 1 token; T 4 -> 0 */
  assert_int_equal(sa_audio_chunk_tokens(5), 1);
  assert_int_equal(sa_audio_chunk_tokens(4), 0);
  assert_int_equal(sa_audio_chunk_tokens(0), 0);
  /* 10 s: T 1002, enc_len 250, 125 tokens; 20 s: T 2002, enc_len 500, 250 */
  assert_int_equal(sa_audio_chunk_tokens(1002), 125);
  assert_int_equal(sa_audio_chunk_tokens(2002), 250);
  check_chunks(0, 0, NULL);
}

static void test_bad_shapes(void **state) {
  (void)state;
  char dir[256], err[256];
  assert_int_equal(etu_make_tiny(dir, sizeof dir), 0);
  sa_model_config_t cfg;
  assert_int_equal(sa_config_load(dir, &cfg, err, sizeof err), 0);
  sa_st_t *st = NULL;
  assert_int_equal(sa_st_open(dir, NULL, NULL, &st, err, sizeof err), 0);
  sa_backend_t *be = sa_backend_ref_new();
  assert_non_null(be);
  sa_audio_encoder_t *enc = NULL;
  /* a config that disagrees with the weights is refused, naming a tensor */
  sa_model_config_t bad = cfg;
  bad.audio.n_state *= 2;
  assert_int_equal(sa_audio_encoder_new(be, &bad, st, &enc, err, sizeof err),
                   SA_EFORMAT);
  assert_null(enc);
  assert_non_null(strstr(err, "encoder."));
  assert_int_equal(sa_audio_encoder_new(be, &cfg, st, &enc, err, sizeof err),
                   0);
  sa_audio_encoder_ws_t *ws = NULL;
  assert_int_equal(sa_audio_encoder_ws_new(enc, &ws), 0);
  const int H = sa_audio_encoder_hidden(enc);
  float *mel = calloc((size_t)128 * 2600, sizeof(float));
  float *out = calloc((size_t)400 * H, sizeof(float));
  const float *mels[2] = {mel, mel};
  int T[2] = {2503, 0}, ct[2] = {-1, -1};
  int64_t rows = -1;
  /* longer than a 25 s chunk */
  assert_int_equal(sa_audio_encoder_run(enc, ws, mels, T, 1, out, 400, ct,
                                        &rows),
                   SA_EINVAL);
  /* output too small: 313 rows into 300 */
  T[0] = 2502;
  assert_int_equal(sa_audio_encoder_run(enc, ws, mels, T, 1, out, 300, ct,
                                        &rows),
                   SA_ERANGE);
  /* a chunk without tokens is skipped and reports 0 */
  T[0] = 4;
  T[1] = 12;
  assert_int_equal(sa_audio_encoder_run(enc, ws, mels, T, 2, out, 400, ct,
                                        &rows),
                   0);
  assert_int_equal(ct[0], 0);
  assert_int_equal(ct[1], 1);
  assert_int_equal(rows, 1);
  free(mel);
  free(out);
  sa_audio_encoder_ws_destroy(&ws);
  sa_audio_encoder_destroy(&enc);
  assert_null(enc);
  sa_backend_destroy(&be);
  sa_st_close(&st);
  etu_rm_tree(dir);
}

int main(void) {
  sa_log_init("test_encoder");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lengths),
      cmocka_unit_test(test_bad_shapes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
