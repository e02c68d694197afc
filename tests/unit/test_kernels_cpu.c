/* Unit tests of the optimised CPU backend against the reference backend,
 * over odd shapes, on every SIMD path this machine supports (scalar always;
 * avx2, avx512, avx512bf16 when present) and with 1 and 3 threads (3 so the
 * column/row splits are uneven). Both matmul paths are forced: the streaming
 * small-M kernel and the fp32-tile + OpenBLAS sgemm path.
 *
 * Tolerances, per op (fp32 activations, fp32 accumulation vs the reference's
 * double accumulation):
 *   matmul, conv1d: |y - ref| <= 1e-5 * S + 1e-6, S = sum_k |x_k w_k| + |b| + |y0|
 *     (fp32 summation error grows like sqrt(K) eps S; a dropped term of a
 *     K = 1000 sum would be ~1e-3 S);
 *   norms, rope, activations, softmax: 1e-5 absolute + 1e-5 relative;
 *   attention: 2e-5 absolute + 1e-4 relative; embed, kv_write: exact. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
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

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* uniform in [-1, 1) */
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (float)((rng >> 40) * (1.0 / (1ull << 23)) - 1.0);
}
static void fill(float *p, size_t n, float scale) {
  for (size_t i = 0; i < n; i++)
    p[i] = frand() * scale;
}
static void fill_bf16(uint16_t *p, size_t n, float scale) {
  for (size_t i = 0; i < n; i++)
    p[i] = sa_f32_to_bf16(frand() * scale);
}

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

/* Calls body for each (supported ISA, thread count) configuration. */
#define FOR_EACH_CONFIG(be, isa_name)                                          \
  for (int ci_ = 0; ci_ < N_ISAS * 2; ci_++)                                   \
    for (sa_backend_t *be = (ci_ & 1) ? cpu3 : cpu1; be; be = NULL)            \
      for (const char *isa_name = ISAS[ci_ / 2];                               \
           isa_name && sa_cpu_isa_supported(isa_name) &&                       \
           sa_cpu_set_isa(be, isa_name) == 0;                                  \
           isa_name = NULL)

static void check_close(const char *what, const float *got, const float *want,
                        const double *bound, size_t n, double atol,
                        double rtol, const char *isa, int threads) {
  for (size_t i = 0; i < n; i++) {
    double tol = bound ? bound[i] : atol + rtol * fabs(want[i]);
    double d = fabs((double)got[i] - want[i]);
    if (!(d <= tol)) {
      fprintf(stderr, "%s [%s, %d threads]: element %zu got %.9g want %.9g "
              "(|d| %.3g > tol %.3g)\n", what, isa, threads, i, got[i],
              want[i], d, tol);
      fail();
    }
  }
}

/* --- matmul --------------------------------------------------------------- */

/* avx512bf16 and amx round x to bf16 before their dot products
 * (sa_cpu_rounds_activations): they are checked against the reference on
 * bf16(x), with the same bound. */

static float *bf16_rounded(const float *x, size_t n) {
  float *r = malloc(sizeof(float) * n + 4);
  for (size_t i = 0; i < n; i++)
    r[i] = sa_bf16_to_f32(sa_f32_to_bf16(x[i]));
  return r;
}

/* yr = the reference backend's matmul of x (from y0), bound = the
 * tolerance 1e-5 S + 1e-6 per output. */
static void matmul_ref(const float *x, const uint16_t *w, const uint16_t *b,
                       const float *y0, int M, int N, int K, int accumulate,
                       float *yr, double *bound) {
  memcpy(yr, y0, sizeof(float) * M * N);
  assert_int_equal(sa_op_matmul_bf16(ref, yr, x, w, b, M, N, K, accumulate), 0);
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      double s = 0;
      for (int k = 0; k < K; k++)
        s += fabs(x[(size_t)m * K + k] * sa_bf16_to_f32(w[(size_t)n * K + k]));
      if (b)
        s += fabs(sa_bf16_to_f32(b[n]));
      if (accumulate)
        s += fabs(y0[(size_t)m * N + n]);
      bound[(size_t)m * N + n] = 1e-5 * s + 1e-6;
    }
}

static void matmul_case(int M, int N, int K, int use_bias, int accumulate) {
  float *x = malloc(sizeof(float) * M * K + 4);
  uint16_t *w = malloc(sizeof(uint16_t) * N * K + 4);
  uint16_t *bias = malloc(sizeof(uint16_t) * N);
  float *y0 = malloc(sizeof(float) * M * N), *yr = malloc(sizeof(float) * M * N);
  float *yrb = malloc(sizeof(float) * M * N), *y = malloc(sizeof(float) * M * N);
  double *bound = malloc(sizeof(double) * M * N), *boundb = malloc(sizeof(double) * M * N);
  fill(x, (size_t)M * K, 2.0f);
  fill_bf16(w, (size_t)N * K, 0.5f);
  fill_bf16(bias, N, 1.0f);
  fill(y0, (size_t)M * N, 1.0f);
  const uint16_t *b = use_bias ? bias : NULL;
  float *xb = bf16_rounded(x, (size_t)M * K);
  matmul_ref(x, w, b, y0, M, N, K, accumulate, yr, bound);
  matmul_ref(xb, w, b, y0, M, N, K, accumulate, yrb, boundb);
  char what[96];
  for (int path = 0; path < 2; path++) {
    FOR_EACH_CONFIG(be, isa) {
      /* path 0: streaming kernel for every M; path 1: sgemm for every M */
      assert_int_equal(sa_cpu_set_sgemm_min_m(be, path ? 1 : 1 << 30), 0);
      memcpy(y, y0, sizeof(float) * M * N);
      assert_int_equal(sa_op_matmul_bf16(be, y, x, w, b, M, N, K, accumulate), 0);
      snprintf(what, sizeof(what), "matmul %s M%d N%d K%d bias%d acc%d",
               path ? "sgemm" : "stream", M, N, K, use_bias, accumulate);
      int rx = !path && sa_cpu_rounds_activations(be);
      check_close(what, y, rx ? yrb : yr, rx ? boundb : bound, (size_t)M * N, 0, 0,
                  isa, be->threads);
      if (path) /* sgemm does not depend on the SIMD path beyond W widening */
        break;
    }
  }
  sa_cpu_set_sgemm_min_m(cpu1, 0);
  sa_cpu_set_sgemm_min_m(cpu3, 0);
  free(x), free(xb), free(w), free(bias), free(y0), free(yr), free(yrb), free(y);
  free(bound), free(boundb);
}

/* Batch invariance (docs/faults.md): every row's outputs are bit-identical
 * whether the row is multiplied alone or among M = 1 ... 300 rows (both of
 * avx512bf16's loops), with 1 or 3 threads, on every path. K = 4500 spans
 * three K blocks with a ragged last one. */
static void test_matmul_batch_invariant(void **state) {
  (void)state;
  enum { MMAX = 300, N = 37, K = 4500 };
  float *x = malloc(sizeof(float) * MMAX * K);
  uint16_t *w = malloc(2 * (size_t)N * K), *b = malloc(2 * N);
  float *alone = malloc(sizeof(float) * MMAX * N), *y = malloc(sizeof(float) * MMAX * N);
  fill(x, (size_t)MMAX * K, 1.0f);
  fill_bf16(w, (size_t)N * K, 0.5f);
  fill_bf16(b, N, 1.0f);
  static const int Ms[] = {2, 3, 5, 8, 9, 64, 65, 300};
  FOR_EACH_CONFIG(be, isa) {
    assert_int_equal(sa_cpu_set_isa(cpu1, isa), 0);
    for (int m = 0; m < MMAX; m++)
      assert_int_equal(sa_op_matmul_bf16(cpu1, alone + (size_t)m * N, x + (size_t)m * K,
                                         w, b, 1, N, K, 0), 0);
    for (size_t i = 0; i < sizeof(Ms) / sizeof(Ms[0]); i++) {
      int M = Ms[i];
      const float *xs = x + (size_t)(MMAX - M) * K; /* the last M rows */
      assert_int_equal(sa_op_matmul_bf16(be, y, xs, w, b, M, N, K, 0), 0);
      if (memcmp(y, alone + (size_t)(MMAX - M) * N, sizeof(float) * M * N) != 0) {
        fprintf(stderr, "matmul [%s, %d threads]: rows differ in a batch of %d\n", isa,
                be->threads, M);
        fail();
      }
    }
  }
  free(x), free(w), free(b), free(alone), free(y);
}

/* avx512bf16-fma computes vdpbf16ps's bits by FMA (cpu_avx512bf16.c): the
 * two tables agree bit for bit on both loops (M = 5 streams, M = 70 takes
 * the blocked loop), with 1 and 3 threads, also where products and sums
 * fall into the denormal range (vdpbf16ps flushes them). */
static void test_matmul_fma_same_bits(void **state) {
  (void)state;
  if (!sa_cpu_isa_supported("avx512bf16"))
    skip();
  enum { M = 70, N = 23, K = 2500 };
  float *x = malloc(sizeof(float) * M * K), *y0 = malloc(sizeof(float) * M * N), *y[2];
  uint16_t *w = malloc(2 * (size_t)N * K), *b = malloc(2 * N);
  y[0] = malloc(sizeof(float) * M * N), y[1] = malloc(sizeof(float) * M * N);
  static const float xs[] = {1.0f, 1e-19f}, ws[] = {0.5f, 1e-19f};
  static const int Ms[] = {5, M};
  static const char *isas[] = {"avx512bf16", "avx512bf16-fma"};
  for (int sc = 0; sc < 2; sc++) {
    fill(x, (size_t)M * K, xs[sc]);
    fill_bf16(w, (size_t)N * K, ws[sc]);
    fill_bf16(b, N, xs[sc] * ws[sc]);
    fill(y0, (size_t)M * N, xs[sc] * ws[sc]);
    for (int bt = 0; bt < 2; bt++)
      for (int mi = 0; mi < 2; mi++) {
        sa_backend_t *be = bt ? cpu3 : cpu1;
        for (int t = 0; t < 2; t++) {
          assert_int_equal(sa_cpu_set_isa(be, isas[t]), 0);
          memcpy(y[t], y0, sizeof(float) * M * N);
          assert_int_equal(sa_op_matmul_bf16(be, y[t], x, w, b, Ms[mi], N, K, 1), 0);
        }
        if (memcmp(y[0], y[1], sizeof(float) * Ms[mi] * N) != 0) {
          fprintf(stderr, "matmul M%d scale %g, %d threads: avx512bf16-fma differs from "
                  "avx512bf16\n", Ms[mi], xs[sc] * ws[sc], be->threads);
          fail();
        }
      }
  }
  sa_cpu_set_isa(cpu1, "auto");
  sa_cpu_set_isa(cpu3, "auto");
  free(x), free(y0), free(w), free(b), free(y[0]), free(y[1]);
}

static void test_matmul(void **state) {
  (void)state;
  static const int Ms[] = {1, 2, 3, 7, 17, 33};
  static const int Ns[] = {1, 15, 33, 257};
  static const int Ks[] = {1, 15, 33, 257, 1000};
  int i = 0;
  for (size_t a = 0; a < 6; a++)
    for (size_t bn = 0; bn < 4; bn++)
      for (size_t c = 0; c < 5; c++, i++)
        matmul_case(Ms[a], Ns[bn], Ks[c], i & 1, (i >> 1) & 1);
  /* wide enough to split across threads with uneven ranges */
  matmul_case(1, 1000, 896, 1, 0);
  matmul_case(5, 1001, 129, 0, 1);
  matmul_case(64, 300, 200, 1, 1);
  /* K = 0: y = bias (+ y) */
  float y[3] = {1, 2, 3};
  uint16_t bias[3] = {sa_f32_to_bf16(0.5f), 0, sa_f32_to_bf16(-1.f)};
  assert_int_equal(sa_op_matmul_bf16(cpu3, y, NULL, NULL, bias, 1, 3, 0, 1), 0);
  assert_true(y[0] == 1.5f && y[1] == 2.f && y[2] == 2.f);
  assert_int_equal(sa_op_matmul_bf16(cpu1, y, y, bias, NULL, 1, -3, 1, 0),
                   SA_EINVAL);
}

/* --- row ops -------------------------------------------------------------- */

static void test_rows(void **state) {
  (void)state;
  static const int shapes[][2] = {{1, 1}, {3, 15}, {7, 33}, {2, 1000}, {70, 896}};
  for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
    int M = shapes[s][0], H = shapes[s][1];
    size_t n = (size_t)M * H;
    float *x = malloc(sizeof(float) * n * 2), *yr = malloc(sizeof(float) * n * 2);
    float *y = malloc(sizeof(float) * n * 2);
    uint16_t *w = malloc(2 * H), *b = malloc(2 * H);
    int32_t *ids = malloc(sizeof(int32_t) * M);
    fill(x, n * 2, 3.0f);
    fill_bf16(w, H, 2.0f);
    fill_bf16(b, H, 1.0f);
    for (int m = 0; m < M; m++)
      ids[m] = (m * 7 + 3) % H;
    FOR_EACH_CONFIG(be, isa) {
      int t = be->threads;
      assert_int_equal(sa_op_rmsnorm(ref, yr, x, w, M, H, 1e-6f), 0);
      assert_int_equal(sa_op_rmsnorm(be, y, x, w, M, H, 1e-6f), 0);
      check_close("rmsnorm", y, yr, NULL, n, 1e-5, 1e-5, isa, t);
      assert_int_equal(sa_op_layernorm(ref, yr, x, w, b, M, H, 1e-5f), 0);
      assert_int_equal(sa_op_layernorm(be, y, x, w, b, M, H, 1e-5f), 0);
      check_close("layernorm", y, yr, NULL, n, 1e-5, 1e-5, isa, t);
      assert_int_equal(sa_op_silu_mul(ref, yr, x, M, H), 0);
      assert_int_equal(sa_op_silu_mul(be, y, x, M, H), 0);
      check_close("silu_mul", y, yr, NULL, n, 1e-5, 1e-5, isa, t);
      memcpy(yr, x, sizeof(float) * n);
      memcpy(y, x, sizeof(float) * n);
      assert_int_equal(sa_op_softmax(ref, yr, M, H), 0);
      assert_int_equal(sa_op_softmax(be, y, M, H), 0);
      check_close("softmax", y, yr, NULL, n, 1e-6, 1e-5, isa, t);
      /* table [V = H rows, H] from w repeated: ids index rows */
      uint16_t *table = malloc(2 * (size_t)H * H);
      fill_bf16(table, (size_t)H * H, 1.0f);
      assert_int_equal(sa_op_embed(ref, yr, table, ids, M, H, H), 0);
      assert_int_equal(sa_op_embed(be, y, table, ids, M, H, H), 0);
      assert_memory_equal(y, yr, sizeof(float) * n);
      ids[M - 1] = H;
      assert_int_equal(sa_op_embed(be, y, table, ids, M, H, H), SA_ERANGE);
      ids[M - 1] = ((M - 1) * 7 + 3) % H;
      free(table);
      /* element-wise on n2 = 2n elements (crosses the chunking) */
      size_t n2 = n * 2;
      float *a = malloc(sizeof(float) * n2), *ar = malloc(sizeof(float) * n2);
      memcpy(a, x, sizeof(float) * n2);
      memcpy(ar, x, sizeof(float) * n2);
      assert_int_equal(sa_op_gelu(ref, ar, n2), 0);
      assert_int_equal(sa_op_gelu(be, a, n2), 0);
      check_close("gelu", a, ar, NULL, n2, 1e-6, 1e-5, isa, t);
      assert_int_equal(sa_op_relu(ref, ar, n2), 0);
      assert_int_equal(sa_op_relu(be, a, n2), 0);
      check_close("relu", a, ar, NULL, n2, 1e-6, 1e-5, isa, t);
      assert_int_equal(sa_op_add(ref, ar, x, n2), 0);
      assert_int_equal(sa_op_add(be, a, x, n2), 0);
      check_close("add", a, ar, NULL, n2, 1e-6, 1e-5, isa, t);
      free(a), free(ar);
    }
    free(x), free(yr), free(y), free(w), free(b), free(ids);
  }
}

static void test_big_elementwise(void **state) {
  (void)state;
  /* big enough to run on the pool */
  size_t n = 300001;
  float *a = malloc(sizeof(float) * n), *ar = malloc(sizeof(float) * n);
  float *x = malloc(sizeof(float) * n);
  fill(x, n, 4.0f);
  memcpy(a, x, sizeof(float) * n);
  memcpy(ar, x, sizeof(float) * n);
  assert_int_equal(sa_op_gelu(ref, ar, n), 0);
  assert_int_equal(sa_op_gelu(cpu3, a, n), 0);
  check_close("gelu big", a, ar, NULL, n, 1e-6, 1e-5, sa_cpu_isa(cpu3), 3);
  assert_int_equal(sa_op_add(ref, ar, x, n), 0);
  assert_int_equal(sa_op_add(cpu3, a, x, n), 0);
  check_close("add big", a, ar, NULL, n, 1e-6, 1e-5, sa_cpu_isa(cpu3), 3);
  free(a), free(ar), free(x);
}

static void test_rope(void **state) {
  (void)state;
  static const int cfg[][4] = {/* M, heads, hd, extra stride */
                               {1, 1, 2, 0}, {3, 2, 16, 5}, {17, 7, 64, 0},
                               {5, 14, 64, 128}};
  for (size_t c = 0; c < 4; c++) {
    int M = cfg[c][0], nh = cfg[c][1], hd = cfg[c][2];
    int stride = nh * hd + cfg[c][3];
    size_t n = (size_t)M * stride;
    float *x = malloc(sizeof(float) * n), *xr = malloc(sizeof(float) * n);
    float *x0 = malloc(sizeof(float) * n);
    int32_t *pos = malloc(sizeof(int32_t) * M);
    fill(x0, n, 1.0f);
    for (int m = 0; m < M; m++)
      pos[m] = m == 0 ? 0 : (m * 977) % 40000; /* large positions too */
    FOR_EACH_CONFIG(be, isa) {
      memcpy(x, x0, sizeof(float) * n);
      memcpy(xr, x0, sizeof(float) * n);
      assert_int_equal(sa_op_rope(ref, xr, pos, M, nh, hd, stride, 1e6f), 0);
      assert_int_equal(sa_op_rope(be, x, pos, M, nh, hd, stride, 1e6f), 0);
      check_close("rope", x, xr, NULL, n, 1e-5, 1e-5, isa, be->threads);
    }
    free(x), free(xr), free(x0), free(pos);
  }
}

/* --- attention -------------------------------------------------------------- */

typedef struct {
  int n_new, ctx;
} seq_t;

/* Builds a paged batch, writes every cached token with kv_write on both
 * backends (checking the caches match exactly), and compares attention;
 * with the cache in kv_type (fp32, or bf16: the same tolerance, the
 * reference reading the same rounded values). amx reads a bf16 cache on
 * tiles with the queries and the softmax weights e rounded to bf16
 * (attn_scores_bf16, attn_values_bf16): it is held to the reference on
 * bf16(q), within the same bound plus what rounding each weight moves an
 * output, at most 2^-8 sum_i e_i |v_i[d]| / sum_i e_i (bf16 keeps 8
 * significant bits): 2^-8 times the reference attention of |V|. */
static void attention_case_t(const seq_t *seqs, int n_seqs, int nh, int nkv,
                             int hd, int bs, int kvt) {
  int kv_dim = nkv * hd, max_ctx = 0, M = 0, total = 0;
  for (int s = 0; s < n_seqs; s++) {
    max_ctx = seqs[s].ctx > max_ctx ? seqs[s].ctx : max_ctx;
    M += seqs[s].n_new;
    total += seqs[s].ctx;
  }
  int max_blocks = (max_ctx + bs - 1) / bs + 1;
  int n_blocks = n_seqs * max_blocks + 3;
  size_t cache_n = (size_t)n_blocks * bs, esz = sa_kv_row_bytes(kvt, kv_dim); /* rows */
  void *kc = calloc(cache_n, esz), *vc = calloc(cache_n, esz);
  void *kc2 = calloc(cache_n, esz), *vc2 = calloc(cache_n, esz);
  int32_t *table = malloc(sizeof(int32_t) * n_seqs * max_blocks);
  int32_t q_start[64], ctx[64];
  /* blocks handed out in a scrambled order */
  int next = 0;
  for (int s = 0; s < n_seqs; s++)
    for (int i = 0; i < max_blocks; i++)
      table[s * max_blocks + i] = (int32_t)(((next++) * 7 + 2) % n_blocks);
  /* tokens: row stride of a fused qkv buffer (q | k | v) */
  int stride = nh * hd + 2 * kv_dim;
  float *qkv = malloc(sizeof(float) * (size_t)total * stride);
  int32_t *slot = malloc(sizeof(int32_t) * total);
  fill(qkv, (size_t)total * stride, 1.5f);
  int r = 0;
  for (int s = 0; s < n_seqs; s++)
    for (int p = 0; p < seqs[s].ctx; p++, r++)
      slot[r] = table[s * max_blocks + p / bs] * bs + p % bs;
  assert_int_equal(sa_op_kv_write(ref, kc, vc, kvt, qkv + nh * hd,
                                      qkv + nh * hd + kv_dim, stride, slot,
                                      total, kv_dim), 0);
  assert_int_equal(sa_op_kv_write(cpu3, kc2, vc2, kvt, qkv + nh * hd,
                                       qkv + nh * hd + kv_dim, stride, slot,
                                       total, kv_dim), 0);
  assert_memory_equal(kc, kc2, esz * cache_n);
  assert_memory_equal(vc, vc2, esz * cache_n);
  /* queries: the last n_new tokens of each sequence, packed */
  float *q = malloc(sizeof(float) * ((size_t)M + 1) * stride);
  int row = 0;
  r = 0;
  q_start[0] = 0;
  for (int s = 0; s < n_seqs; s++) {
    for (int p = 0; p < seqs[s].ctx; p++, r++)
      if (p >= seqs[s].ctx - seqs[s].n_new)
        memcpy(q + (size_t)row++ * stride, qkv + (size_t)r * stride,
               sizeof(float) * stride);
    q_start[s + 1] = row;
    ctx[s] = seqs[s].ctx;
  }
  sa_attn_batch_t b = {n_seqs, q_start, ctx, table, max_blocks, bs, max_ctx};
  size_t on = (size_t)M * nh * hd;
  float *out = malloc(sizeof(float) * on + 4), *outr = malloc(sizeof(float) * on + 4);
  float scale = 1.0f / sqrtf((float)hd);
  assert_int_equal(sa_op_attention(ref, outr, q, stride, kc, vc, kvt, &b, nh, nkv,
                                       hd, scale), 0);
  float *qb = bf16_rounded(q, ((size_t)M + 1) * stride), *outrb = malloc(sizeof(float) * on + 4);
  float *outabs = malloc(sizeof(float) * on + 4);
  double *boundb = malloc(sizeof(double) * on + 8);
  assert_int_equal(sa_op_attention(ref, outrb, qb, stride, kc, vc, kvt, &b, nh, nkv, hd, scale),
                   0);
  if (kvt == SA_KV_BF16) { /* the bound above: attention of |V| (sign bits cleared) */
    uint16_t *va = malloc(esz * cache_n);
    memcpy(va, vc, esz * cache_n);
    for (size_t i = 0; i < esz * cache_n / 2; i++)
      va[i] &= 0x7fff;
    assert_int_equal(
        sa_op_attention(ref, outabs, qb, stride, kc, va, kvt, &b, nh, nkv, hd, scale), 0);
    for (size_t i = 0; i < on; i++)
      boundb[i] = 2e-5 + 1e-4 * fabs(outrb[i]) + ldexp(outabs[i], -8);
    free(va);
  }
  FOR_EACH_CONFIG(be, isa) {
    memset(out, 0xff, sizeof(float) * on);
    assert_int_equal(sa_op_attention(be, out, q, stride, kc, vc, kvt, &b, nh, nkv,
                                        hd, scale), 0);
    char what[64];
    snprintf(what, sizeof(what), "attention nh%d nkv%d hd%d bs%d kv%s", nh, nkv, hd, bs,
             kvt == SA_KV_BF16 ? "bf16" : kvt == SA_KV_Q8_0 ? "q8_0" : "f32");
    int rq = kvt == SA_KV_BF16 && strcmp(isa, "amx") == 0;
    check_close(what, out, rq ? outrb : outr, rq ? boundb : NULL, on, 2e-5, 1e-4, isa,
                be->threads);
    /* the first sequence alone gives the same bits: a batch of many rows
     * takes each row's KV heads together, a small one each (row, head) */
    sa_attn_batch_t b1 = {1, q_start, ctx, table, max_blocks, bs, max_ctx};
    size_t on1 = (size_t)q_start[1] * nh * hd;
    float *out1 = malloc(sizeof(float) * on1 + 4);
    assert_int_equal(sa_op_attention(be, out1, q, stride, kc, vc, kvt, &b1, nh, nkv, hd, scale),
                     0);
    assert_memory_equal(out1, out, sizeof(float) * on1);
    free(out1);
    /* a bf16 cache, widened into scratch or in registers (avx2's
     * attn_scores_widen), gives the bits of an fp32 cache holding the
     * same values -- every path but amx, which rounds q and e */
    if (kvt == SA_KV_BF16 && strcmp(isa, "amx") != 0) {
      size_t nv = esz * cache_n / 2;
      float *kf = malloc(sizeof(float) * nv), *vf = malloc(sizeof(float) * nv);
      float *outf = malloc(sizeof(float) * on + 4);
      for (size_t i = 0; i < nv; i++) {
        kf[i] = sa_bf16_to_f32(((const uint16_t *)kc)[i]);
        vf[i] = sa_bf16_to_f32(((const uint16_t *)vc)[i]);
      }
      assert_int_equal(sa_op_attention(be, outf, q, stride, kf, vf, SA_KV_F32, &b, nh, nkv, hd,
                                       scale), 0);
      assert_memory_equal(outf, out, sizeof(float) * on);
      free(kf), free(vf), free(outf);
    }
  }
  free(kc), free(vc), free(kc2), free(vc2), free(table), free(qkv), free(slot);
  free(q), free(qb), free(out), free(outr), free(outrb), free(outabs), free(boundb);
}

static void attention_case(const seq_t *seqs, int n_seqs, int nh, int nkv, int hd, int bs) {
  attention_case_t(seqs, n_seqs, nh, nkv, hd, bs, SA_KV_F32);
  attention_case_t(seqs, n_seqs, nh, nkv, hd, bs, SA_KV_BF16);
  if (hd % 32 == 0) /* q8 blocks must not straddle heads */
    attention_case_t(seqs, n_seqs, nh, nkv, hd, bs, SA_KV_Q8_0);
}

/* The q8 KV cache row against its documented layout (kernels.h SA_KV_Q8_0),
 * read here byte by byte: per block of 32, an fp32 d = max|x| / 127, then 32
 * int8 with |d * q - x| <= d / 2; an all-zero block has d = 0 and q = 0;
 * every ISA writes the same bytes. */
static void test_kv_q8_layout(void **state) {
  (void)state;
  enum { KVD = 96, ROWS = 3 };
  float x[ROWS * KVD];
  fill(x, sizeof x / sizeof x[0], 3.0f);
  for (int j = 0; j < SA_QK; j++)
    x[KVD + 32 + j] = 0.0f; /* row 1, block 1: zeros */
  x[2 * KVD + 5] = -40.0f; /* row 2, block 0: one large value sets d */
  size_t row = sa_kv_row_bytes(SA_KV_Q8_0, KVD);
  assert_int_equal(row, (size_t)KVD / 32 * 36);
  assert_int_equal(sa_kv_row_bytes(SA_KV_Q8_0, 48), 0); /* not whole blocks */
  uint8_t kc[ROWS * KVD / 32 * 36], vc[sizeof kc];
  int32_t slot[ROWS] = {2, 0, 1};
  assert_int_equal(sa_op_kv_write(ref, kc, vc, SA_KV_Q8_0, x, x, KVD, slot, ROWS, KVD), 0);
  for (int m = 0; m < ROWS; m++)
    for (int b = 0; b < KVD / 32; b++) {
      const uint8_t *blk = kc + (size_t)slot[m] * row + (size_t)b * 36;
      const float *xb = x + (size_t)m * KVD + b * 32;
      float d, amax = 0.0f;
      memcpy(&d, blk, 4);
      for (int j = 0; j < 32; j++)
        amax = fmaxf(amax, fabsf(xb[j]));
      assert_true(d == amax / 127.0f);
      for (int j = 0; j < 32; j++) {
        int q = (int8_t)blk[4 + j];
        assert_true(q >= -127 && q <= 127);
        assert_true(fabsf(d * (float)q - xb[j]) <= d * 0.5f * 1.0001f);
        if (amax == 0.0f)
          assert_int_equal(q, 0);
      }
    }
  assert_memory_equal(kc, vc, sizeof kc);
  FOR_EACH_CONFIG(be, isa) {
    uint8_t kc2[sizeof kc], vc2[sizeof kc];
    assert_int_equal(sa_op_kv_write(be, kc2, vc2, SA_KV_Q8_0, x, x, KVD, slot, ROWS, KVD), 0);
    assert_memory_equal(kc, kc2, sizeof kc);
  }
  /* attention refuses a head dim that would split a block */
  sa_attn_batch_t b = {1, (int32_t[]){0, 1}, (int32_t[]){1}, (int32_t[]){0}, 1, 4, 1};
  float q[2 * 48] = {0}, out[2 * 48];
  assert_int_equal(sa_op_attention(ref, out, q, 96, kc, vc, SA_KV_Q8_0, &b, 2, 2, 48, 1.0f),
                   SA_EINVAL);
}

static void test_attention(void **state) {
  (void)state;
  /* decode, prefill, chunked prefill and an idle sequence in one batch */
  const seq_t mix[] = {{1, 1}, {37, 37}, {1, 50}, {5, 33}, {0, 17}, {1, 16}};
  /* nh, nkv, hd; 40/2: groups of 20 query heads, more than the kernel
   * attends at once (16); 64/64: more KV heads a row than the scratch holds
   * the scores of at once (waves of 61 groups); hd 24 and 6: head dims
   * the 8-lane kernels take only in part (avx2's scores take 4 dims a step,
   * its values 8) or not at all; hd 136: past the 128 dims avx2's scores
   * turn into columns at once */
  static const int heads[][3] = {{2, 2, 16}, {4, 2, 24}, {7, 1, 64}, {14, 2, 64}, {40, 2, 8},
                                 {64, 64, 32}, {3, 1, 6}, {6, 1, 136}};
  for (size_t h = 0; h < sizeof heads / sizeof heads[0]; h++) {
    attention_case(mix, 6, heads[h][0], heads[h][1], heads[h][2], 16);
    attention_case(mix, 6, heads[h][0], heads[h][1], heads[h][2], 5);
  }
  /* longer than one online-softmax chunk, decode and prefill tail */
  const seq_t longs[] = {{1, 1100}, {3, 700}};
  attention_case(longs, 2, 4, 2, 32, 16);
  attention_case(longs, 2, 14, 2, 64, 16);
}

static void test_attention_dense(void **state) {
  (void)state;
  /* the last two: scores spread over ~+-60 and ~+-200 (softmax exponents
   * down to where exp underflows), odd key counts (SIMD tails) */
  static const int cfg[][5] = {/* T, nh, hd, n_valid, q/k amplitude */
                               {1, 1, 8, 1, 2},      {7, 3, 16, 4, 2}, {33, 2, 64, 33, 2},
                               {600, 2, 32, 555, 2}, {45, 2, 64, 43, 6}, {29, 1, 64, 27, 12}};
  for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
    int T = cfg[c][0], nh = cfg[c][1], hd = cfg[c][2], nv = cfg[c][3];
    size_t n = (size_t)T * nh * hd;
    float *q = malloc(sizeof(float) * n), *k = malloc(sizeof(float) * n);
    float *v = malloc(sizeof(float) * n), *o = malloc(sizeof(float) * n);
    float *orf = malloc(sizeof(float) * n);
    fill(q, n, (float)cfg[c][4]), fill(k, n, (float)cfg[c][4]), fill(v, n, 1.0f);
    float scale = 1.0f / sqrtf((float)hd);
    assert_int_equal(sa_op_attention_dense(ref, orf, q, k, v, T, nh, hd, nv,
                                               scale), 0);
    FOR_EACH_CONFIG(be, isa) {
      assert_int_equal(sa_op_attention_dense(be, o, q, k, v, T, nh, hd, nv,
                                                scale), 0);
      check_close("attention_dense", o, orf, NULL, n, 2e-5, 1e-4, isa,
                  be->threads);
    }
    free(q), free(k), free(v), free(o), free(orf);
  }
}

/* --- conv1d ---------------------------------------------------------------- */

static void test_conv1d(void **state) {
  (void)state;
  static const int cfg[][6] = {/* Tin, Cin, Cout, Kw, stride, pad */
                               {1, 3, 5, 3, 1, 1},   {7, 17, 33, 3, 2, 1},
                               {20, 3, 5, 3, 1, 1},  {81, 16, 40, 3, 2, 1},
                               {70, 5, 9, 1, 1, 0},  {9, 4, 6, 5, 3, 2}};
  for (size_t c = 0; c < 6; c++) {
    int Tin = cfg[c][0], Cin = cfg[c][1], Cout = cfg[c][2], Kw = cfg[c][3];
    int st = cfg[c][4], pad = cfg[c][5];
    int Tout = (Tin + 2 * pad - Kw) / st + 1;
    float *x = malloc(sizeof(float) * Tin * Cin);
    uint16_t *w = malloc(2 * (size_t)Cout * Cin * Kw), *b = malloc(2 * Cout);
    float *y = malloc(sizeof(float) * Tout * Cout), *yr = malloc(sizeof(float) * Tout * Cout);
    double *bound = malloc(sizeof(double) * Tout * Cout);
    fill(x, (size_t)Tin * Cin, 2.0f);
    fill_bf16(w, (size_t)Cout * Cin * Kw, 0.5f);
    fill_bf16(b, Cout, 1.0f);
    float *xb = bf16_rounded(x, (size_t)Tin * Cin), *yrb = malloc(sizeof(float) * Tout * Cout);
    assert_int_equal(sa_op_conv1d(ref, yr, x, w, b, Tin, Cin, Cout, Kw, st,
                                      pad, NULL), 0);
    assert_int_equal(sa_op_conv1d(ref, yrb, xb, w, b, Tin, Cin, Cout, Kw, st,
                                      pad, NULL), 0);
    for (int t = 0; t < Tout; t++)
      for (int co = 0; co < Cout; co++) {
        double s = fabs(sa_bf16_to_f32(b[co]));
        for (int ci = 0; ci < Cin; ci++)
          for (int kk = 0; kk < Kw; kk++) {
            int ti = t * st - pad + kk;
            if (ti >= 0 && ti < Tin)
              s += fabs(x[ti * Cin + ci] *
                        sa_bf16_to_f32(w[((size_t)co * Cin + ci) * Kw + kk]));
          }
        bound[t * Cout + co] = 1e-5 * s + 1e-6;
      }
    size_t wsb = cpu1->ops->conv1d_ws_bytes(Tin, Cin, Kw, st, pad);
    void *ws = malloc(wsb + 64);
    FOR_EACH_CONFIG(be, isa) {
      assert_int_equal(sa_op_conv1d(be, y, x, w, b, Tin, Cin, Cout, Kw, st,
                                       pad, ws), 0);
      check_close("conv1d", y, sa_cpu_rounds_activations(be) ? yrb : yr, bound, (size_t)Tout * Cout,
                  0, 0, isa, be->threads);
    }
    free(xb), free(yrb), free(x), free(w), free(b), free(y), free(yr), free(bound), free(ws);
  }
}

static void test_controls(void **state) {
  (void)state;
  assert_int_equal(sa_cpu_set_isa(cpu1, "scalar"), 0);
  assert_string_equal(sa_cpu_isa(cpu1), "scalar");
  assert_int_equal(sa_cpu_set_isa(cpu1, "sse9"), SA_EINVAL);
  assert_int_equal(sa_cpu_set_isa(ref, "scalar"), SA_EINVAL);
  assert_string_equal(sa_cpu_isa(ref), "");
  assert_int_equal(sa_cpu_set_isa(cpu1, "auto"), 0);
  assert_int_equal(sa_cpu_set_isa(cpu1, "scalar"), 0);
  assert_int_equal(sa_cpu_sgemm_min_m(cpu1), INT_MAX); /* sgemm is opt-in */
  assert_int_equal(sa_cpu_set_sgemm_min_m(cpu1, 3), 0);
  assert_int_equal(sa_cpu_sgemm_min_m(cpu1), 3);
  assert_int_equal(sa_cpu_set_sgemm_min_m(cpu1, 0), 0);
  assert_int_equal(sa_cpu_set_sgemm_min_m(cpu1, -1), SA_EINVAL);
  assert_int_equal(sa_cpu_sgemm_min_m(ref), SA_EINVAL);
  assert_int_equal(sa_cpu_set_isa(cpu1, "auto"), 0);
  assert_true(sa_cpu_isa_supported("scalar"));
  assert_false(sa_cpu_isa_supported("nope"));
  for (int i = 1; i < N_ISAS; i++)
    if (!sa_cpu_isa_supported(ISAS[i]))
      assert_int_equal(sa_cpu_set_isa(cpu1, ISAS[i]), SA_EUNAVAIL);
  fprintf(stderr, "cpu kernels: auto picks %s; tested paths:", sa_cpu_isa(cpu1));
  for (int i = 0; i < N_ISAS; i++)
    if (sa_cpu_isa_supported(ISAS[i]))
      fprintf(stderr, " %s", ISAS[i]);
  fprintf(stderr, "\n");
  sa_backend_t *be0 = sa_backend_new("cpu", 0);
  assert_non_null(be0);
  assert_true(be0->threads >= 1);
  sa_backend_destroy(&be0);
  assert_null(be0);
}

/* Backend buffers: 64-byte aligned; from 1 MiB on on 2 MiB boundaries (for
 * huge pages) and usable to their last byte, with or without SA_NO_THP. */
static void test_alloc(void **state) {
  (void)state;
  const size_t sizes[] = {1, 100, (1u << 20) - 1, 1u << 20, (3u << 20) + 5};
  for (int pass = 0; pass < 2; pass++) {
    if (pass)
      setenv("SA_NO_THP", "1", 1);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
      uint8_t *p = cpu1->ops->alloc(cpu1, sizes[i]);
      assert_non_null(p);
      size_t align = sizes[i] >= (1u << 20) && !pass ? (2u << 20) : 64;
      assert_int_equal((uintptr_t)p % align, 0);
      memset(p, 0xA5, sizes[i]);
      assert_int_equal(p[sizes[i] - 1], 0xA5);
      cpu1->ops->free(cpu1, p);
    }
    unsetenv("SA_NO_THP");
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_controls),   cmocka_unit_test(test_matmul),
      cmocka_unit_test(test_rows),       cmocka_unit_test(test_big_elementwise),
      cmocka_unit_test(test_rope),       cmocka_unit_test(test_attention),
      cmocka_unit_test(test_kv_q8_layout),
      cmocka_unit_test(test_attention_dense), cmocka_unit_test(test_conv1d),
      cmocka_unit_test(test_matmul_batch_invariant),
      cmocka_unit_test(test_matmul_fma_same_bits),
      cmocka_unit_test(test_alloc),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
