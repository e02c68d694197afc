/* Golden test of the audio path: every fixture clip goes through model/audio
 * (FFmpeg decode), model/mel, the audio encoder and the adaptor on the tiny
 * checkpoint (core/testmodel, seed ETU_SEED), on the reference and the
 * optimised CPU backends, and is compared with the embeddings of the
 * independent PyTorch oracle (tests/oracle/encoder_oracle.py, committed in
 * tests/oracle/golden/encoder/): max |c - golden| <= 1e-3 * max |golden| per
 * clip, the same per-chunk token counts and the same row count. Kernels that
 * round activations to bf16 (amx, avx512bf16: the CPU backend's pick where
 * the CPU has them) are held instead to the oracle's own bf16 error
 * (bf16_max_diff in meta.json); the exact AVX-512 kernels run too. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "audio.h"
#include "audio_encoder.h"
#include "config.h"
#include "encoder_test_util.h"
#include "kernels.h"
#include "log.h"
#include "sa_error.h"
#include "safetensors.h"

#define GOLDEN SA_SOURCE_DIR "/tests/oracle/golden/encoder"

static char g_model[256];
static cJSON *g_meta;

static void run_backend(sa_backend_t *be, const char *label) {
  char err[256];
  const char *kern = strcmp(label, "cpu") == 0 ? sa_cpu_isa(be) : "";
  int rounds = sa_cpu_rounds_activations(be);
  sa_model_config_t cfg;
  assert_int_equal(sa_config_load(g_model, &cfg, err, sizeof err), 0);
  sa_st_t *st = NULL;
  assert_int_equal(sa_st_open(g_model, NULL, NULL, &st, err, sizeof err), 0);
  sa_audio_encoder_t *enc = NULL;
  if (sa_audio_encoder_new(be, &cfg, st, &enc, err, sizeof err) != 0)
    fail_msg("%s", err);
  sa_audio_encoder_ws_t *ws = NULL;
  assert_int_equal(sa_audio_encoder_ws_new(enc, &ws), 0);
  const int H = sa_audio_encoder_hidden(enc);

  cJSON *clips = cJSON_GetObjectItem(g_meta, "clips");
  assert_non_null(clips);
  int n_clips = 0;
  for (cJSON *c = clips->child; c; c = c->next, n_clips++) {
    const char *file = cJSON_GetObjectItem(c, "file")->valuestring;
    int rows_want = cJSON_GetObjectItem(c, "rows")->valueint;
    int stride = cJSON_GetObjectItem(c, "row_stride")->valueint;
    cJSON *ctj = cJSON_GetObjectItem(c, "chunk_tokens");
    assert_int_equal(cJSON_GetObjectItem(c, "hidden")->valueint, H);

    char path[512];
    snprintf(path, sizeof path, "%s/audio/%s", SA_FIXTURES_DIR, file);
    size_t len = 0;
    void *bytes = etu_read_file(path, &len);
    assert_non_null(bytes);
    float *pcm = NULL;
    size_t n = 0;
    assert_int_equal(sa_audio_decode(bytes, len, NULL, &pcm, &n, err,
                                     sizeof err),
                     0);
    assert_int_equal(n, cJSON_GetObjectItem(c, "samples")->valueint);
    int ct[16], nc = 0;
    int64_t total = 0, got = 0;
    sa_audio_count_tokens((int64_t)n, &nc, &total);
    assert_int_equal(nc, cJSON_GetArraySize(ctj));
    assert_int_equal(total, rows_want);
    float *out = malloc((size_t)(total ? total : 1) * H * sizeof(float));
    assert_int_equal(sa_audio_encoder_encode_pcm(enc, ws, pcm, n, out, total,
                                                 ct, 16, &got, NULL),
                     0);
    assert_int_equal(got, rows_want);
    for (int i = 0; i < nc; i++)
      assert_int_equal(ct[i], cJSON_GetArrayItem(ctj, i)->valueint);

    snprintf(path, sizeof path, "%s/%s.npy", GOLDEN, c->string);
    int64_t gr = 0, gc = 0;
    float *g = etu_read_npy_f32(path, &gr, &gc);
    assert_non_null(g);
    assert_int_equal(gc, H);
    assert_int_equal(gr, (rows_want + stride - 1) / stride);
    double gmax = 0, md = 0, sum = 0;
    for (int64_t r = 0; r < gr; r++)
      for (int k = 0; k < H; k++) {
        double gv = g[r * H + k], cv = out[(r * stride) * H + k];
        gmax = fmax(gmax, fabs(gv));
        md = fmax(md, fabs(gv - cv));
      }
    for (int64_t i = 0; i < total * H; i++)
      sum += out[i];
    double sum_abs = cJSON_GetObjectItem(c, "sum_abs")->valuedouble;
    double gsum = cJSON_GetObjectItem(c, "sum")->valuedouble;
    double tol = 1e-3 * gmax, stol = 1e-3 * sum_abs;
    if (rounds) {
      tol = fmax(tol, cJSON_GetObjectItem(c, "bf16_max_diff")->valuedouble);
      stol = fmax(stol, tol * (double)total * H); /* every element off by up to tol */
    }
    printf("%s %-10s %-48s rows %4lld  max|golden| %.4f  max|diff| %.3g (%.2g of "
           "max)  sum %.4f vs %.4f\n", label, kern, file, (long long)got, gmax, md,
           md / gmax, sum, gsum);
    assert_true(gmax > 0.1); /* a real signal, not all zeros */
    assert_true(md <= tol);
    assert_true(fabs(sum - gsum) <= stol);
    free(g);
    free(out);
    free(pcm);
    free(bytes);
  }
  assert_int_equal(n_clips, 4);
  sa_audio_encoder_ws_destroy(&ws);
  sa_audio_encoder_destroy(&enc);
  sa_st_close(&st);
}

static void test_golden_ref(void **state) {
  (void)state;
  sa_backend_t *be = sa_backend_ref_new();
  assert_non_null(be);
  run_backend(be, "ref");
  sa_backend_destroy(&be);
}

static void test_golden_cpu(void **state) {
  (void)state;
  sa_backend_t *be = sa_backend_new("cpu", 2);
  assert_non_null(be);
  run_backend(be, "cpu");
  if (sa_cpu_isa_supported("avx512") && strcmp(sa_cpu_isa(be), "avx512") != 0) {
    assert_int_equal(sa_cpu_set_isa(be, "avx512"), 0); /* the exact path too */
    run_backend(be, "cpu");
  }
  sa_backend_destroy(&be);
}

static int setup(void **state) {
  (void)state;
  size_t len = 0;
  char *txt = etu_read_file(GOLDEN "/meta.json", &len);
  if (!txt) {
    fprintf(stderr, "cannot read %s\n", GOLDEN "/meta.json");
    return -1;
  }
  g_meta = cJSON_ParseWithLength(txt, len);
  free(txt);
  if (!g_meta)
    return -1;
  cJSON *seed = cJSON_GetObjectItem(g_meta, "seed");
  if (!seed || seed->valueint != ETU_SEED) {
    fprintf(stderr, "golden data was made with another seed\n");
    return -1;
  }
  return etu_make_tiny(g_model, sizeof g_model);
}

static int teardown(void **state) {
  (void)state;
  etu_rm_tree(g_model);
  cJSON_Delete(g_meta);
  return 0;
}

int main(void) {
  sa_log_init("test_encoder_golden");
  etu_require_fixtures();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_golden_ref),
      cmocka_unit_test(test_golden_cpu),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
