/* Unit tests of the quantized matmul and the q8 activation blocks
 * (kernels.h matmul_q, quantize_q8; docs/quantization.md).
 *
 *  - Against an independent reading of the format: y is recomputed in
 *    double from the dequantized values, each weight decoded from the
 *    documented layout (Q4_0: low nibble = element j, high = j + 16, minus
 *    8) and each activation as xq * xd. Bound 1e-5 S + 1e-6, S the sum of
 *    the terms' magnitudes: a wrong nibble order or a dropped block is off
 *    by ~S.
 *  - The q8 blocks against the definition (max|x| / 127, round half to
 *    even, clamp), and the quantization error within d / 2.
 *  - Every CPU path this machine has (scalar, avx2, avx512vnni; 1 and 3
 *    threads) bit-identical to the reference backend: the definition fixes
 *    the order of every fp32 operation.
 *  - The largest block sums (x and w at their extremes): no path may wrap.
 *  - Batch invariance: a row's outputs are bit-identical alone or in a
 *    batch of 2..40 rows.
 *  - Q8_0 and Q4_0 re-laid as R8 by pack_q (the AVX2 path's layouts): the
 *    same bits on every path, alone or in a batch.
 *  - Bad arguments: K % 32 != 0, an unknown format, R8 that pack_q did not
 *    make or that is not whole groups of 8 rows. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "sa_error.h"
#include "tensor.h"

static const char *ISAS[] = {"scalar", "avx2", "avx512", "avx512bf16", "avx512bf16-fma", "amx"};
#define N_ISAS 6

static sa_backend_t *ref, *cpu1, *cpu3;

static uint64_t rng = 0x2545f4914f6cdd1dull;
static uint32_t urand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)(rng >> 32);
}
static float frand(void) { return (float)(urand() * (2.0 / 4294967296.0) - 1.0); }

static int setup(void **state) {
  (void)state;
  ref = sa_backend_ref_new();
  cpu1 = sa_backend_new("cpu", 1);
  cpu3 = sa_backend_new("cpu", 3);
  return ref && cpu1 && cpu3 ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  sa_backend_destroy(&ref);
  sa_backend_destroy(&cpu1);
  sa_backend_destroy(&cpu3);
  return 0;
}

/* Weight element (n, k) of a quantized W, decoded from the documented
 * layout, as an integer (times its block's scale). */
static int w_int(int wtype, const void *wq, int n, int k, int K) {
  if (wtype == SA_WQ_Q8_0)
    return ((const int8_t *)wq)[(size_t)n * K + k];
  int b = k / 32, j = k % 32;
  uint8_t byte = ((const uint8_t *)wq)[(size_t)n * (K / 2) + (size_t)b * 16 + (j % 16)];
  return (j < 16 ? (byte & 15) : (byte >> 4)) - 8;
}

typedef struct {
  int wtype, M, N, K;
  void *wq;
  uint16_t *wd, *bias;
  float *x, *y0;
  int8_t *xq;
  float *xd;
} qcase_t;

/* Set for qcase_make to build the largest integer sums instead of random
 * ones: x at +-127 (row 0 all +, the others random signs), Q8_0 weights at
 * +-127 (even rows with x row 0's signs), Q4_0 bytes at 0xff or 0x00
 * (nibbles 15 and 0). A kernel that sums in 16 bits where a block's sums
 * do not fit would wrap. */
static int qcase_extreme;

static void qcase_make(qcase_t *c, int wtype, int M, int N, int K, int use_bias) {
  c->wtype = wtype, c->M = M, c->N = N, c->K = K;
  size_t wb = sa_wq_bytes(wtype, N, K);
  c->wq = malloc(wb + 1);
  for (size_t i = 0; i < wb; i++)
    ((uint8_t *)c->wq)[i] = wtype == SA_WQ_Q8_0 ? (uint8_t)(int8_t)((int)(urand() % 255) - 127)
                                                : (uint8_t)urand();
  if (qcase_extreme)
    for (size_t i = 0; i < wb; i++) {
      int hi = (i / (wtype == SA_WQ_Q8_0 ? K : K / 2)) % 2 == 0 || urand() % 2;
      ((uint8_t *)c->wq)[i] = wtype == SA_WQ_Q8_0 ? (uint8_t)(int8_t)(hi ? 127 : -127)
                                                  : (hi ? 0xff : 0x00);
    }
  c->wd = malloc(sizeof(uint16_t) * (size_t)N * (K / 32) + 2);
  for (size_t i = 0; i < (size_t)N * (K / 32); i++)
    c->wd[i] = sa_f32_to_f16(frand() * 0.02f);
  c->bias = NULL;
  if (use_bias) {
    c->bias = malloc(sizeof(uint16_t) * N);
    for (int i = 0; i < N; i++)
      c->bias[i] = sa_f32_to_bf16(frand());
  }
  c->x = malloc(sizeof(float) * (size_t)M * K + 4);
  for (size_t i = 0; i < (size_t)M * K; i++)
    c->x[i] = frand() * (i % 97 == 0 ? 20.0f : 2.0f); /* some outliers per block */
  if (qcase_extreme)
    for (size_t i = 0; i < (size_t)M * K; i++)
      c->x[i] = i < (size_t)K || urand() % 2 ? 1.0f : -1.0f;
  else if (M * K >= 64) { /* an all-zero block, an exact -0 and a NaN-free extreme */
    for (int j = 0; j < 32; j++)
      c->x[j] = 0.0f;
    c->x[33] = -0.0f;
  }
  c->y0 = malloc(sizeof(float) * (size_t)M * N + 4);
  for (size_t i = 0; i < (size_t)M * N; i++)
    c->y0[i] = frand();
  c->xq = malloc((size_t)M * K + 1);
  c->xd = malloc(sizeof(float) * (size_t)M * (K / 32) + 4);
}

static void qcase_free(qcase_t *c) {
  free(c->wq), free(c->wd), free(c->bias), free(c->x), free(c->y0), free(c->xq), free(c->xd);
}

static void test_quantize_rows(void **state) {
  (void)state;
  qcase_t c;
  qcase_make(&c, SA_WQ_Q8_0, 5, 1, 4864, 0);
  assert_int_equal(sa_op_quantize_q8(ref, c.xq, c.xd, c.x, c.M, c.K), 0);
  for (int m = 0; m < c.M; m++)
    for (int b = 0; b < c.K / 32; b++) {
      const float *xb = c.x + (size_t)m * c.K + b * 32;
      double amax = 0;
      for (int j = 0; j < 32; j++)
        amax = fmax(amax, fabs(xb[j]));
      float d = (float)amax / 127.0f;
      assert_true(c.xd[(size_t)m * (c.K / 32) + b] == d);
      for (int j = 0; j < 32; j++) {
        int q = c.xq[(size_t)m * c.K + b * 32 + j];
        assert_true(q >= -127 && q <= 127);
        /* round to nearest: the error is at most half a step */
        assert_true(fabs((double)q * d - xb[j]) <= (0.5 + 2e-5) * d + 1e-30);
        if (d == 0)
          assert_int_equal(q, 0);
      }
    }
  /* every CPU path and thread count gives the same bytes */
  int8_t *q2 = malloc((size_t)c.M * c.K);
  float *d2 = malloc(sizeof(float) * c.M * (c.K / 32));
  for (int t = 0; t < 2; t++) {
    sa_backend_t *be = t ? cpu3 : cpu1;
    assert_int_equal(sa_op_quantize_q8(be, q2, d2, c.x, c.M, c.K), 0);
    assert_memory_equal(q2, c.xq, (size_t)c.M * c.K);
    assert_memory_equal(d2, c.xd, sizeof(float) * c.M * (c.K / 32));
  }
  free(q2), free(d2);
  qcase_free(&c);
}

/* Every CPU path this machine has, on 1 and 3 threads, gives the bits yr
 * for case c with the weight (wq, wd) of format wtype (y: scratch). */
static void every_path_equals(const qcase_t *c, int wtype, const void *wq, const uint16_t *wd,
                              int accumulate, const float *yr, float *y) {
  int M = c->M, N = c->N, K = c->K;
  for (int ci = 0; ci < N_ISAS * 2; ci++) {
    sa_backend_t *be = (ci & 1) ? cpu3 : cpu1;
    if (!sa_cpu_isa_supported(ISAS[ci / 2]))
      continue;
    assert_int_equal(sa_cpu_set_isa(be, ISAS[ci / 2]), 0);
    memcpy(y, c->y0, sizeof(float) * M * N);
    assert_int_equal(sa_op_matmul_q(be, y, c->xq, c->xd, wtype, wq, wd, c->bias, M, N, K,
                                    accumulate),
                     0);
    if (memcmp(y, yr, sizeof(float) * M * N) != 0) {
      for (int i = 0; i < M * N; i++)
        if (memcmp(&y[i], &yr[i], 4)) {
          fprintf(stderr, "matmul_q type %d M%d N%d K%d [%s/%s, %d threads]: output %d "
                  "%.9g != reference %.9g\n", wtype, M, N, K, ISAS[ci / 2],
                  sa_cpu_q_isa(be), be->threads, i, y[i], yr[i]);
          break;
        }
      fail();
    }
  }
}

/* One case: reference vs the independent double sum, then every CPU path
 * bit-identical to the reference. */
static void matmul_q_case(int wtype, int M, int N, int K, int use_bias, int accumulate) {
  qcase_t c;
  qcase_make(&c, wtype, M, N, K, use_bias);
  assert_int_equal(sa_op_quantize_q8(ref, c.xq, c.xd, c.x, M, K), 0);
  float *yr = malloc(sizeof(float) * (size_t)M * N + 4), *y = malloc(sizeof(float) * M * N + 4);
  memcpy(yr, c.y0, sizeof(float) * M * N);
  assert_int_equal(sa_op_matmul_q(ref, yr, c.xq, c.xd, wtype, c.wq, c.wd, c.bias, M, N, K,
                                  accumulate),
                   0);
  int KB = K / 32;
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      double s = 0, S = 0;
      for (int k = 0; k < K; k++) {
        double t = (double)c.xq[(size_t)m * K + k] * c.xd[(size_t)m * KB + k / 32] *
                   w_int(wtype, c.wq, n, k, K) * sa_f16_to_f32(c.wd[(size_t)n * KB + k / 32]);
        s += t, S += fabs(t);
      }
      if (c.bias)
        s += sa_bf16_to_f32(c.bias[n]), S += fabs(sa_bf16_to_f32(c.bias[n]));
      if (accumulate)
        s += c.y0[(size_t)m * N + n], S += fabs(c.y0[(size_t)m * N + n]);
      double got = yr[(size_t)m * N + n];
      if (!(fabs(got - s) <= 1e-5 * S + 1e-6)) {
        fprintf(stderr, "matmul_q type %d M%d N%d K%d: (%d,%d) got %.9g want %.9g (S %.3g)\n",
                wtype, M, N, K, m, n, got, s, S);
        fail();
      }
    }
  every_path_equals(&c, wtype, c.wq, c.wd, accumulate, yr, y);
  /* re-laid as R8 by the AVX2 path's pack_q: the same bits on every path,
   * the ISA switched after packing included */
  int r8 = wtype == SA_WQ_Q8_0 ? SA_WQ_Q8_0_R8 : SA_WQ_Q4_0_R8;
  if (N % 8 == 0 && sa_cpu_isa_supported("avx2")) {
    size_t wb = sa_wq_bytes(wtype, N, K), db = sizeof(uint16_t) * (size_t)N * (K / 32);
    void *pq = malloc(wb + 1);
    uint16_t *pd = malloc(db + 2);
    memcpy(pq, c.wq, wb), memcpy(pd, c.wd, db);
    assert_int_equal(sa_cpu_set_isa(cpu1, "avx2"), 0);
    assert_int_equal(sa_op_pack_q(cpu1, wtype, pq, pd, N, K), r8);
    assert_true(memcmp(pq, c.wq, wb) != 0); /* re-laid, not left as it was */
    assert_int_equal(sa_op_matmul_q(ref, y, c.xq, c.xd, r8, pq, pd, c.bias, M, N, K,
                                    accumulate),
                     SA_EINVAL); /* the reference has no pack_q: never reads R8 */
    every_path_equals(&c, r8, pq, pd, accumulate, yr, y);
    free(pq), free(pd);
  }
  sa_cpu_set_isa(cpu1, "auto");
  sa_cpu_set_isa(cpu3, "auto");
  free(yr), free(y);
  qcase_free(&c);
}

static void test_matmul_q(void **state) {
  (void)state;
  static const int shapes[][3] = {{1, 1, 32},   {1, 17, 64},   {3, 40, 96},  {1, 33, 4864},
                                  {2, 16, 4512}, {5, 31, 160}, {1, 130, 896}, {20, 9, 288},
                                  /* 16+ rows over 3 threads: one column range a thread */
                                  {40, 200, 1024},
                                  /* whole groups of 8 rows: re-laid as R8 too */
                                  {1, 24, 4864}, {3, 8, 896}, {17, 56, 160}};
  for (int wt = SA_WQ_Q8_0; wt <= SA_WQ_Q4_0; wt++)
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
      matmul_q_case(wt, shapes[i][0], shapes[i][1], shapes[i][2], (int)(i & 1), (int)(i / 2 & 1));
}

static void test_matmul_q_extremes(void **state) {
  (void)state;
  qcase_extreme = 1;
  for (int wt = SA_WQ_Q8_0; wt <= SA_WQ_Q4_0; wt++) {
    matmul_q_case(wt, 3, 17, 96, 0, 0);
    matmul_q_case(wt, 2, 9, 4864, 1, 1);
    matmul_q_case(wt, 2, 24, 4864, 0, 1);
  }
  qcase_extreme = 0;
}

static void test_matmul_q_batch_invariant(void **state) {
  (void)state;
  for (int wt = SA_WQ_Q8_0; wt <= SA_WQ_Q8_0_R8; wt++) {
    qcase_t c;
    int base = wt == SA_WQ_Q4_0_R8 ? SA_WQ_Q4_0 : wt == SA_WQ_Q8_0_R8 ? SA_WQ_Q8_0 : wt;
    int M = 40, N = SA_WQ_IS_R8(wt) ? 72 : 70, K = 4512;
    qcase_make(&c, base, M, N, K, 1);
    assert_int_equal(sa_op_quantize_q8(cpu1, c.xq, c.xd, c.x, M, K), 0);
    if (SA_WQ_IS_R8(wt)) {
      if (!sa_cpu_isa_supported("avx2")) {
        qcase_free(&c);
        continue;
      }
      assert_int_equal(sa_cpu_set_isa(cpu1, "avx2"), 0);
      assert_int_equal(sa_op_pack_q(cpu1, base, c.wq, c.wd, N, K), wt);
      assert_int_equal(sa_cpu_set_isa(cpu3, "avx2"), 0);
    }
    float *all = malloc(sizeof(float) * M * N), *one = malloc(sizeof(float) * N);
    for (int t = 0; t < 2; t++) {
      sa_backend_t *be = t ? cpu3 : cpu1;
      for (int Mb = 1; Mb <= M; Mb += 13) {
        assert_int_equal(sa_op_matmul_q(be, all, c.xq, c.xd, wt, c.wq, c.wd, c.bias, Mb, N, K,
                                        0),
                         0);
        int m = Mb - 1; /* the batch's last row, alone */
        assert_int_equal(sa_op_matmul_q(be, one, c.xq + (size_t)m * K, c.xd + (size_t)m * (K / 32),
                                        wt, c.wq, c.wd, c.bias, 1, N, K, 0),
                         0);
        assert_memory_equal(one, all + (size_t)m * N, sizeof(float) * N);
      }
    }
    free(all), free(one);
    qcase_free(&c);
  }
  sa_cpu_set_isa(cpu1, "auto");
  sa_cpu_set_isa(cpu3, "auto");
}

static void test_bad_args(void **state) {
  (void)state;
  float y[4] = {0}, xd[4] = {0}, x[64] = {0};
  int8_t xq[64] = {0};
  uint8_t wq[64] = {0};
  uint16_t wd[4] = {0};
  assert_int_equal(sa_op_matmul_q(cpu1, y, xq, xd, SA_WQ_Q8_0, wq, wd, NULL, 1, 1, 33, 0),
                   SA_EINVAL);
  assert_int_equal(sa_op_matmul_q(cpu1, y, xq, xd, 7, wq, wd, NULL, 1, 1, 32, 0), SA_EINVAL);
  assert_int_equal(sa_op_matmul_q(cpu1, y, NULL, xd, SA_WQ_Q4_0, wq, wd, NULL, 1, 1, 32, 0),
                   SA_EINVAL);
  assert_int_equal(sa_op_quantize_q8(cpu1, xq, xd, x, 1, 48), SA_EINVAL);
  assert_int_equal(sa_op_quantize_q8(cpu1, xq, xd, NULL, 1, 32), SA_EINVAL);
  assert_int_equal(sa_op_matmul_q(cpu1, y, xq, xd, SA_WQ_Q8_0, wq, wd, NULL, 0, 1, 32, 0), 0);
  assert_int_equal(sa_wq_bytes(SA_WQ_Q4_0, 3, 64), 96);
  assert_int_equal(sa_wq_bytes(SA_WQ_Q8_0, 3, 64), 192);
  assert_int_equal(sa_wq_bytes(SA_WQ_Q8_0, 3, 65), 0);
  assert_int_equal(sa_wq_bytes(9, 3, 64), 0);
  /* R8: whole groups of 8 rows; made only by pack_q, which takes Q8_0 and Q4_0 */
  assert_int_equal(sa_wq_bytes(SA_WQ_Q4_0_R8, 3, 64), 0);
  assert_int_equal(sa_wq_bytes(SA_WQ_Q4_0_R8, 8, 64), 256);
  assert_int_equal(sa_wq_bytes(SA_WQ_Q8_0_R8, 8, 64), 512);
  assert_int_equal(sa_wq_bytes(SA_WQ_Q8_0_R8, 12, 64), 0);
  assert_int_equal(sa_op_matmul_q(cpu1, y, xq, xd, SA_WQ_Q4_0_R8, wq, wd, NULL, 1, 3, 32, 0),
                   SA_EINVAL);
  assert_int_equal(sa_op_pack_q(cpu1, SA_WQ_Q4_0_R8, wq, wd, 8, 32), SA_EINVAL);
  assert_int_equal(sa_op_matmul_q(cpu1, y, xq, xd, 5, wq, wd, NULL, 1, 8, 32, 0), SA_EINVAL);
  assert_int_equal(sa_op_pack_q(cpu1, SA_WQ_Q4_0, wq, wd, 8, 48), SA_EINVAL);
  assert_int_equal(sa_op_pack_q(cpu1, SA_WQ_Q4_0, NULL, wd, 8, 32), SA_EINVAL);
  assert_int_equal(sa_op_pack_q(ref, SA_WQ_Q4_0, wq, wd, 8, 32), SA_WQ_Q4_0); /* no pack_q */
  assert_int_equal(sa_op_pack_q(cpu1, SA_WQ_Q8_0, wq, wd, 2, 32), SA_WQ_Q8_0);
  /* the formats' names (bench-decode prints them) */
  assert_string_equal(sa_wq_name(0), "bf16");
  assert_string_equal(sa_wq_name(SA_WQ_Q4_0_R8), "q4_0_r8");
  assert_string_equal(sa_wq_name(SA_WQ_Q8_0_R8), "q8_0_r8");
  assert_string_equal(sa_wq_name(SA_WQ_COUNT_), "?");
  assert_string_equal(sa_wq_name(-1), "?");
  assert_int_equal(sa_op_pack_q(cpu1, SA_WQ_Q4_0, wq, wd, 3, 32), SA_WQ_Q4_0); /* N % 8 */
  fprintf(stderr, "quantized path here: %s\n", sa_cpu_q_isa(cpu1));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_quantize_rows),
      cmocka_unit_test(test_matmul_q),
      cmocka_unit_test(test_matmul_q_extremes),
      cmocka_unit_test(test_matmul_q_batch_invariant),
      cmocka_unit_test(test_bad_args),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
