/*
 * test_cuda_kernels — every op of the CUDA backend against the plain CPU
 * reference (sa_backend_ref_new) over odd shapes, with absolute + relative
 * tolerances stated per op. Needs a GPU: without one it prints
 * "skipped: no GPU" and exits 77 (ctest: skipped). Not a speed test
 * (bench-cuda is).
 *
 * Tolerances: |cuda - ref| <= atol + rtol * |ref| element-wise. The
 * reference sums in double; CUDA sums in fp32, so sums of K terms get
 * atol ∝ sqrt(K). Matmul with M > 8 runs bf16 tensor-core GEMMs on x split
 * into hi + lo bf16 (~16 mantissa bits of x), hence 1e-4-level bounds.
 */
#include "kernels.h"
#include "sa_cuda.h"
#include "sa_error.h"
#include "tensor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static sa_backend_t *R, *C; /* reference, CUDA */
static int g_fail, g_checks;

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* uniform in [-1, 1) */
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return (float)((g_rng >> 40) * (1.0 / 16777216.0)) * 2.f - 1.f;
}
static int irand(int n) { return (int)(((frand() + 1.f) * 0.5f) * n) % n; }

static float *frandv(size_t n, float scale) {
  float *v = malloc(sizeof(float) * (n ? n : 1));
  for (size_t i = 0; i < n; i++)
    v[i] = frand() * scale;
  return v;
}
static uint16_t *brandv(size_t n, float scale) {
  uint16_t *v = malloc(sizeof(uint16_t) * (n ? n : 1));
  for (size_t i = 0; i < n; i++)
    v[i] = sa_f32_to_bf16(frand() * scale);
  return v;
}

/* A buffer mirrored on both backends. */
typedef struct {
  void *r, *c;
  size_t n;
} pair_t;

static pair_t mk(const void *host, size_t n) {
  pair_t p = {R->ops->alloc(R, n), C->ops->alloc(C, n), n};
  if (!p.r || !p.c) {
    fprintf(stderr, "FATAL: alloc %zu bytes failed\n", n);
    exit(1);
  }
  if (host) {
    R->ops->upload(R, p.r, host, n);
    C->ops->upload(C, p.c, host, n);
  } else {
    R->ops->memset0(R, p.r, n);
    C->ops->memset0(C, p.c, n);
  }
  return p;
}
static void fr(pair_t *p) {
  R->ops->free(R, p->r);
  C->ops->free(C, p->c);
}

static void expect_rc(const char *what, int got, int want) {
  g_checks++;
  if (got != want) {
    printf("FAIL %s: rc %d (%s), want %d (%s)\n", what, got, sa_err_name(got),
           want, sa_err_name(want));
    g_fail++;
  }
}

/* Compares n floats of the pair; prints the worst element on failure. */
static void cmp(const char *what, pair_t *p, size_t n, double atol,
                double rtol) {
  float *a = malloc(sizeof(float) * (n ? n : 1));
  float *b = malloc(sizeof(float) * (n ? n : 1));
  expect_rc("sync", C->ops->sync(C), 0);
  R->ops->download(R, a, p->r, n * sizeof(float));
  int rc = C->ops->download(C, b, p->c, n * sizeof(float));
  g_checks++;
  if (rc) {
    printf("FAIL %s: download rc %d\n", what, rc);
    g_fail++;
    goto out;
  }
  size_t bad = 0, worst = 0;
  double worst_r = -1, max_abs = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - b[i]);
    double lim = atol + rtol * fabs((double)a[i]);
    if (!(d <= lim)) /* NaN fails too */
      bad++;
    double r = d / lim;
    if (!(r <= worst_r)) {
      worst_r = r;
      worst = i;
    }
    if (d > max_abs)
      max_abs = d;
  }
  if (bad) {
    printf("FAIL %s: %zu of %zu beyond tolerance; worst [%zu] ref %.9g cuda "
           "%.9g\n",
           what, bad, n, worst, a[worst], b[worst]);
    g_fail++;
  } else {
    printf("ok   %-48s n=%-8zu max|d|=%.3g\n", what, n, max_abs);
  }
out:
  free(a);
  free(b);
}

/* The n bytes of both sides equal (a quantized cache: no float view). */
static void cmp_bytes(const char *what, pair_t *p, size_t n) {
  unsigned char *a = malloc(n ? n : 1), *b = malloc(n ? n : 1);
  expect_rc("sync", C->ops->sync(C), 0);
  R->ops->download(R, a, p->r, n);
  int rc = C->ops->download(C, b, p->c, n);
  g_checks++;
  size_t at = n;
  for (size_t i = 0; i < n && !rc; i++)
    if (a[i] != b[i]) {
      at = i;
      break;
    }
  if (rc || at < n) {
    printf("FAIL %s: rc %d, first differing byte %zu of %zu\n", what, rc, at, n);
    g_fail++;
  } else {
    printf("ok   %-48s n=%-8zu bytes equal\n", what, n);
  }
  free(a);
  free(b);
}

/* Runs `call` on both backends (expression using be and X(p) for the pair's
 * pointer on be) and checks both return want. */
#define BOTH(what, want, call)                                                 \
  do {                                                                         \
    int rc_[2];                                                                \
    for (int side_ = 0; side_ < 2; side_++) {                                  \
      sa_backend_t *be = side_ ? C : R;                                        \
      rc_[side_] = (call);                                                     \
    }                                                                          \
    expect_rc(what " (ref)", rc_[0], want);                                    \
    expect_rc(what " (cuda)", rc_[1], want);                                   \
  } while (0)
#define X(p) (be == R ? (p).r : (p).c)

static void test_matmul(sa_backend_t *cu, const char *tag, double tol_scale) {
  static const int shapes[][3] = {
      {1, 1, 1},      {1, 37, 29},    {1, 64, 64},    {1, 300, 520},
      {2, 100, 256},  {3, 129, 77},   {4, 50, 512},   {5, 33, 1000},
      {8, 257, 136},  {9, 65, 200},   {17, 300, 96},  {33, 70, 130},
      {64, 128, 256}, {65, 97, 333},  {130, 257, 512}, {300, 64, 40},
  };
  sa_backend_t *saved = C;
  C = cu;
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
    for (int variant = 0; variant < 2; variant++) {
      int with_bias = (s + variant) & 1, acc = variant;
      float *x = frandv((size_t)M * K, 1.f), *y0 = frandv((size_t)M * N, 1.f);
      uint16_t *w = brandv((size_t)N * K, 1.f), *b = brandv(N, 1.f);
      pair_t px = mk(x, sizeof(float) * M * K), pw = mk(w, 2ull * N * K);
      pair_t pb = mk(b, 2ull * N), py = mk(y0, sizeof(float) * M * N);
      char name[96];
      snprintf(name, sizeof name, "matmul%s M=%d N=%d K=%d bias=%d acc=%d",
               tag, M, N, K, with_bias, acc);
      BOTH("matmul", 0,
           sa_op_matmul_bf16(be, X(py), X(px), X(pw),
                                with_bias ? X(pb) : NULL, M, N, K, acc));
      /* Terms are |x w| <= 1; errors grow like sqrt(K). */
      double atol = tol_scale * (M <= 8 ? 1e-5 : 1e-4) * sqrt((double)K);
      cmp(name, &py, (size_t)M * N, atol, tol_scale * 1e-4);
      fr(&px), fr(&pw), fr(&pb), fr(&py);
      free(x), free(y0), free(w), free(b);
    }
  }
  float dummy = 0;
  (void)dummy;
  BOTH("matmul M<0", SA_EINVAL,
       sa_op_matmul_bf16(be, NULL, NULL, NULL, NULL, -1, 4, 4, 0));
  C = saved;
}

static void test_norms(void) {
  static const int Hs[] = {1, 7, 128, 1000, 4097};
  for (size_t i = 0; i < sizeof Hs / sizeof Hs[0]; i++) {
    int M = 3, H = Hs[i];
    float *x = frandv((size_t)M * H, 3.f);
    uint16_t *w = brandv(H, 2.f), *b = brandv(H, 1.f);
    pair_t px = mk(x, sizeof(float) * M * H), py = mk(NULL, sizeof(float) * M * H);
    pair_t pw = mk(w, 2ull * H), pb = mk(b, 2ull * H);
    char name[64];
    snprintf(name, sizeof name, "rmsnorm M=%d H=%d", M, H);
    BOTH("rmsnorm", 0,
         sa_op_rmsnorm(be, X(py), X(px), X(pw), M, H, 1e-6f));
    cmp(name, &py, (size_t)M * H, 1e-5, 1e-5);
    snprintf(name, sizeof name, "layernorm M=%d H=%d", M, H);
    BOTH("layernorm", 0,
         sa_op_layernorm(be, X(py), X(px), X(pw), X(pb), M, H, 1e-5f));
    cmp(name, &py, (size_t)M * H, 1e-5, 1e-5);
    snprintf(name, sizeof name, "rmsnorm in place M=%d H=%d", M, H);
    BOTH("rmsnorm in place", 0,
         sa_op_rmsnorm(be, X(px), X(px), X(pw), M, H, 1e-6f));
    cmp(name, &px, (size_t)M * H, 1e-5, 1e-5);
    fr(&px), fr(&py), fr(&pw), fr(&pb);
    free(x), free(w), free(b);
  }
  BOTH("rmsnorm H=0", SA_EINVAL,
       sa_op_rmsnorm(be, NULL, NULL, NULL, 1, 0, 1e-6f));
}

static void test_rope(void) {
  static const int hds[] = {2, 6, 64, 128};
  static const float thetas[] = {10000.f, 1e6f};
  for (size_t i = 0; i < sizeof hds / sizeof hds[0]; i++) {
    int M = 5, nh = 3, hd = hds[i], stride = nh * hd + 7;
    float theta = thetas[i & 1];
    float *x = frandv((size_t)M * stride, 1.f);
    int32_t pos[5] = {0, 1, 17, 4095, 31999};
    pair_t px = mk(x, sizeof(float) * M * stride), pp = mk(pos, sizeof pos);
    char name[64];
    snprintf(name, sizeof name, "rope hd=%d theta=%g stride=%d", hd,
             (double)theta, stride);
    BOTH("rope", 0,
         sa_op_rope(be, X(px), X(pp), M, nh, hd, stride, theta));
    cmp(name, &px, (size_t)M * stride, 1e-5, 1e-5);
    fr(&px), fr(&pp);
    free(x);
  }
  BOTH("rope odd hd", SA_EINVAL,
       sa_op_rope(be, NULL, NULL, 1, 1, 3, 3, 1e4f));
}

static void test_elementwise(void) {
  static const size_t ns[] = {1, 1001, 100003};
  for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
    size_t n = ns[i];
    float *a = frandv(n, 4.f), *b = frandv(n, 4.f);
    pair_t pa = mk(a, sizeof(float) * n), pb = mk(b, sizeof(float) * n);
    char name[64];
    snprintf(name, sizeof name, "gelu n=%zu", n);
    BOTH("gelu", 0, sa_op_gelu(be, X(pa), n));
    cmp(name, &pa, n, 1e-6, 1e-6);
    snprintf(name, sizeof name, "relu n=%zu", n);
    BOTH("relu", 0, sa_op_relu(be, X(pb), n));
    cmp(name, &pb, n, 0, 0);
    snprintf(name, sizeof name, "add n=%zu", n);
    BOTH("add", 0, sa_op_add(be, X(pa), X(pb), n));
    cmp(name, &pa, n, 1e-6, 1e-6);
    fr(&pa), fr(&pb);
    free(a), free(b);
  }
  static const int Is[] = {1, 13, 777};
  for (size_t i = 0; i < sizeof Is / sizeof Is[0]; i++) {
    int M = 3, I = Is[i];
    float *gu = frandv((size_t)M * 2 * I, 6.f);
    pair_t pg = mk(gu, sizeof(float) * M * 2 * I), py = mk(NULL, sizeof(float) * M * I);
    char name[64];
    snprintf(name, sizeof name, "silu_mul M=%d I=%d", M, I);
    BOTH("silu_mul", 0, sa_op_silu_mul(be, X(py), X(pg), M, I));
    cmp(name, &py, (size_t)M * I, 1e-6, 1e-5);
    fr(&pg), fr(&py);
    free(gu);
  }
  static const int Ns[] = {1, 33, 1000, 50000};
  for (size_t i = 0; i < sizeof Ns / sizeof Ns[0]; i++) {
    int M = 4, N = Ns[i];
    float *x = frandv((size_t)M * N, 10.f);
    pair_t px = mk(x, sizeof(float) * M * N);
    char name[64];
    snprintf(name, sizeof name, "softmax M=%d N=%d", M, N);
    BOTH("softmax", 0, sa_op_softmax(be, X(px), M, N));
    cmp(name, &px, (size_t)M * N, 1e-7, 1e-5);
    fr(&px);
    free(x);
  }
}

static void test_embed(void) {
  int V = 100, H = 77, M = 9;
  uint16_t *t = brandv((size_t)V * H, 1.f);
  int32_t ids[9] = {0, 99, 5, 5, 42, 1, 98, 7, 63};
  pair_t pt = mk(t, 2ull * V * H), pi = mk(ids, sizeof ids);
  pair_t py = mk(NULL, sizeof(float) * M * H);
  BOTH("embed", 0, sa_op_embed(be, X(py), X(pt), X(pi), M, H, V));
  cmp("embed V=100 H=77 M=9", &py, (size_t)M * H, 0, 0);
  int32_t bad[2][2] = {{3, 100}, {-1, 0}};
  for (int k = 0; k < 2; k++) {
    pair_t pbad = mk(bad[k], sizeof bad[k]);
    BOTH("embed id out of range", SA_ERANGE,
         sa_op_embed(be, X(py), X(pt), X(pbad), 2, H, V));
    fr(&pbad);
  }
  expect_rc("sync after embed ERANGE", C->ops->sync(C), 0);
  fr(&pt), fr(&pi), fr(&py);
  free(t);
}

/* Writes n_pos keys per sequence with kv_write, then runs attention, with
 * the cache in kv_type (a bf16 cache is checked through attention). */
static void test_attention_case_t(int nh, int nkv, int hd, int bs, int n_seqs,
                                  const int *ctx, const int *n_new, int kvt) {
  int kv_dim = nkv * hd, max_blocks = 0, total_pos = 0, rows = 0;
  for (int s = 0; s < n_seqs; s++) {
    int nb = (ctx[s] + bs - 1) / bs;
    if (nb > max_blocks)
      max_blocks = nb;
    total_pos += ctx[s];
    rows += n_new[s];
  }
  int n_blocks = n_seqs * max_blocks + 3, max_ctx = 0;
  /* Block tables: a random permutation of the blocks. */
  int *perm = malloc(sizeof(int) * n_blocks);
  for (int i = 0; i < n_blocks; i++)
    perm[i] = i;
  for (int i = n_blocks - 1; i > 0; i--) {
    int j = irand(i + 1), t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
  int32_t *bt = malloc(sizeof(int32_t) * n_seqs * max_blocks);
  int32_t *slot = malloc(sizeof(int32_t) * total_pos);
  int32_t *qs = malloc(sizeof(int32_t) * (n_seqs + 1));
  int32_t *cl = malloc(sizeof(int32_t) * n_seqs);
  int p = 0;
  qs[0] = 0;
  for (int s = 0; s < n_seqs; s++) {
    for (int b = 0; b < max_blocks; b++)
      bt[s * max_blocks + b] = perm[s * max_blocks + b];
    for (int i = 0; i < ctx[s]; i++)
      slot[p++] = bt[s * max_blocks + i / bs] * bs + i % bs;
    qs[s + 1] = qs[s] + n_new[s];
    cl[s] = ctx[s];
    if (ctx[s] > max_ctx)
      max_ctx = ctx[s];
  }
  /* Fused qkv rows for the keys: [q | k | v | pad]. */
  int kstride = nh * hd + 2 * kv_dim + 3;
  float *kv = frandv((size_t)total_pos * kstride, 1.f);
  int q_stride = nh * hd + 5;
  float *q = frandv((size_t)rows * q_stride, 1.f);
  size_t cache_f = (size_t)n_blocks * bs * kv_dim; /* values; fp32 bytes >= any type's */
  pair_t pkc = mk(NULL, cache_f * 4), pvc = mk(NULL, cache_f * 4);
  pair_t pkv = mk(kv, sizeof(float) * total_pos * kstride);
  pair_t pslot = mk(slot, sizeof(int32_t) * total_pos);
  pair_t pq = mk(q, sizeof(float) * rows * q_stride);
  pair_t pbt = mk(bt, sizeof(int32_t) * n_seqs * max_blocks);
  pair_t pqs = mk(qs, sizeof(int32_t) * (n_seqs + 1));
  pair_t pcl = mk(cl, sizeof(int32_t) * n_seqs);
  pair_t pout = mk(NULL, sizeof(float) * rows * nh * hd);
  char name[128];
  BOTH("kv_write", 0,
       sa_op_kv_write(be, X(pkc), X(pvc), kvt,
                         (float *)X(pkv) + nh * hd,
                         (float *)X(pkv) + nh * hd + kv_dim, kstride,
                         X(pslot), total_pos, kv_dim));
  if (kvt == SA_KV_F32) {
    snprintf(name, sizeof name, "kv_write k M=%d kv_dim=%d", total_pos, kv_dim);
    cmp(name, &pkc, cache_f, 0, 0);
    snprintf(name, sizeof name, "kv_write v M=%d kv_dim=%d", total_pos, kv_dim);
    cmp(name, &pvc, cache_f, 0, 0);
  } else if (kvt == SA_KV_Q8_0) { /* the same rule to the bit */
    size_t nbytes = (size_t)n_blocks * bs * sa_kv_row_bytes(kvt, kv_dim);
    snprintf(name, sizeof name, "kv_write q8 k M=%d kv_dim=%d", total_pos, kv_dim);
    cmp_bytes(name, &pkc, nbytes);
    snprintf(name, sizeof name, "kv_write q8 v M=%d kv_dim=%d", total_pos, kv_dim);
    cmp_bytes(name, &pvc, nbytes);
  }
  for (int side = 0; side < 2; side++) {
    sa_backend_t *be = side ? C : R;
    sa_attn_batch_t b = {n_seqs,     X(pqs), X(pcl), X(pbt),
                         max_blocks, bs,     max_ctx};
    int rc = sa_op_attention(be, X(pout), X(pq), q_stride, X(pkc), X(pvc), kvt,
                                &b, nh, nkv, hd, 1.f / sqrtf((float)hd));
    expect_rc(side ? "attention (cuda)" : "attention (ref)", rc, 0);
  }
  snprintf(name, sizeof name,
           "attention nh=%d nkv=%d hd=%d bs=%d seqs=%d rows=%d kv %s", nh, nkv, hd,
           bs, n_seqs, rows, kvt == SA_KV_BF16 ? "bf16" : kvt == SA_KV_Q8_0 ? "q8_0" : "f32");
  cmp(name, &pout, (size_t)rows * nh * hd, 2e-6 * sqrt((double)hd), 1e-4);
  fr(&pkc), fr(&pvc), fr(&pkv), fr(&pslot), fr(&pq), fr(&pbt), fr(&pqs),
      fr(&pcl), fr(&pout);
  free(perm), free(bt), free(slot), free(qs), free(cl), free(kv), free(q);
}

static void test_attention_case(int nh, int nkv, int hd, int bs, int n_seqs,
                                const int *ctx, const int *n_new) {
  test_attention_case_t(nh, nkv, hd, bs, n_seqs, ctx, n_new, SA_KV_F32);
  test_attention_case_t(nh, nkv, hd, bs, n_seqs, ctx, n_new, SA_KV_BF16);
  if (hd % 32 == 0)
    test_attention_case_t(nh, nkv, hd, bs, n_seqs, ctx, n_new, SA_KV_Q8_0);
}

static void test_attention(void) {
  const int ctx1[] = {1, 37, 70}, new1[] = {1, 37, 3};
  test_attention_case(6, 2, 64, 16, 3, ctx1, new1);
  test_attention_case(4, 4, 30, 5, 3, ctx1, new1); /* hd % 4 != 0 */
  const int ctx2[] = {300}, new2[] = {1};           /* decode, long context */
  test_attention_case(8, 1, 128, 16, 1, ctx2, new2);
  const int ctx3[] = {5, 9, 1, 40}, new3[] = {2, 9, 1, 1};
  test_attention_case(14, 2, 36, 7, 4, ctx3, new3);

  /* kv_write with slot < 0: the reference refuses at once, CUDA at sync. */
  int32_t slot = -1;
  float row[8] = {0};
  pair_t pc = mk(NULL, 64), ps = mk(&slot, 4), pr = mk(row, sizeof row);
  expect_rc("kv_write slot<0 (ref)",
            sa_op_kv_write(R, pc.r, pc.r, SA_KV_F32, pr.r, pr.r, 8, ps.r, 1, 8),
            SA_ERANGE);
  int rc = sa_op_kv_write(C, pc.c, pc.c, SA_KV_F32, pr.c, pr.c, 8, ps.c, 1, 8);
  if (rc == 0)
    rc = C->ops->sync(C);
  expect_rc("kv_write slot<0 (cuda, at sync)", rc, SA_ERANGE);
  expect_rc("sync clears the flag", C->ops->sync(C), 0);
  fr(&pc), fr(&ps), fr(&pr);

  static const int cases[][4] = {{37, 3, 20, 30}, {64, 2, 64, 64},
                                 {100, 4, 36, 1}, {5, 1, 256, 5}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int T = cases[i][0], nh = cases[i][1], hd = cases[i][2], nv = cases[i][3];
    size_t n = (size_t)T * nh * hd;
    float *q = frandv(n, 1.f), *k = frandv(n, 1.f), *v = frandv(n, 1.f);
    pair_t pq = mk(q, 4 * n), pk = mk(k, 4 * n), pv = mk(v, 4 * n),
           po = mk(NULL, 4 * n);
    char name[96];
    snprintf(name, sizeof name, "attention_dense T=%d nh=%d hd=%d n_valid=%d",
             T, nh, hd, nv);
    BOTH("attention_dense", 0,
         sa_op_attention_dense(be, X(po), X(pq), X(pk), X(pv), T, nh, hd,
                                  nv, 1.f / sqrtf((float)hd)));
    cmp(name, &po, n, 2e-6 * sqrt((double)hd), 1e-4);
    fr(&pq), fr(&pk), fr(&pv), fr(&po);
    free(q), free(k), free(v);
  }
}

static void test_conv1d(void) {
  /* Tin, Cin, Cout, Kw, stride, pad */
  static const int cs[][6] = {{50, 7, 11, 3, 1, 1},   {100, 80, 64, 3, 2, 1},
                              {9, 3, 5, 4, 3, 0},     {200, 16, 24, 3, 1, 1},
                              {3, 2, 3, 5, 1, 2},     {1, 1, 1, 1, 1, 0}};
  for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
    int Tin = cs[i][0], Cin = cs[i][1], Cout = cs[i][2], Kw = cs[i][3],
        st = cs[i][4], pad = cs[i][5];
    int Tout = (Tin + 2 * pad - Kw) / st + 1;
    float *x = frandv((size_t)Tin * Cin, 1.f);
    uint16_t *w = brandv((size_t)Cout * Cin * Kw, 1.f), *b = brandv(Cout, 1.f);
    pair_t px = mk(x, sizeof(float) * Tin * Cin),
           pw = mk(w, 2ull * Cout * Cin * Kw), pb = mk(b, 2ull * Cout),
           py = mk(NULL, sizeof(float) * Tout * Cout);
    size_t wsr = R->ops->conv1d_ws_bytes(Tin, Cin, Kw, st, pad);
    size_t wsc = C->ops->conv1d_ws_bytes(Tin, Cin, Kw, st, pad);
    void *wr = wsr ? R->ops->alloc(R, wsr) : NULL;
    void *wc = wsc ? C->ops->alloc(C, wsc) : NULL;
    char name[96];
    snprintf(name, sizeof name, "conv1d Tin=%d Cin=%d Cout=%d Kw=%d s=%d p=%d",
             Tin, Cin, Cout, Kw, st, pad);
    BOTH("conv1d", 0,
         sa_op_conv1d(be, X(py), X(px), X(pw), (i & 1) ? NULL : X(pb), Tin,
                         Cin, Cout, Kw, st, pad, be == R ? wr : wc));
    cmp(name, &py, (size_t)Tout * Cout, 1e-4 * sqrt((double)Cin * Kw), 1e-4);
    if (wr)
      R->ops->free(R, wr);
    if (wc)
      C->ops->free(C, wc);
    fr(&px), fr(&pw), fr(&pb), fr(&py);
    free(x), free(w), free(b);
  }
}

/* Quantized weights (kernels.h matmul_q): the definition fixes every fp32
 * operation, so the q8 blocks of x and the outputs must equal the
 * reference's bit for bit (tolerance 0), Q8_0 and Q4_0, decode and batch. */
static void test_matmul_q(void) {
  static const int shapes[][3] = {{1, 70, 896}, {5, 33, 4864}, {20, 17, 96}, {1, 1, 32}};
  for (int wt = SA_WQ_Q8_0; wt <= SA_WQ_Q4_0; wt++)
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
      int M = shapes[i][0], N = shapes[i][1], K = shapes[i][2], KB = K / SA_QK;
      size_t wb = sa_wq_bytes(wt, N, K);
      uint8_t *w = malloc(wb);
      for (size_t j = 0; j < wb; j++)
        w[j] = wt == SA_WQ_Q8_0 ? (uint8_t)(int8_t)(irand(255) - 127) : (uint8_t)irand(256);
      uint16_t *wd = malloc(sizeof(uint16_t) * (size_t)N * KB);
      for (size_t j = 0; j < (size_t)N * KB; j++)
        wd[j] = sa_f32_to_f16(frand() * 0.02f);
      float *x = frandv((size_t)M * K, 2.f);
      uint16_t *bias = brandv((size_t)N, 1.f);
      pair_t px = mk(x, sizeof(float) * M * K), pw = mk(w, wb);
      pair_t pwd = mk(wd, sizeof(uint16_t) * N * KB), pb = mk(bias, sizeof(uint16_t) * N);
      pair_t pxq = mk(NULL, (size_t)M * K), pxd = mk(NULL, sizeof(float) * M * KB);
      pair_t py = mk(NULL, sizeof(float) * M * N);
      char name[96];
      BOTH("quantize_q8", 0, sa_op_quantize_q8(be, X(pxq), X(pxd), X(px), M, K));
      snprintf(name, sizeof name, "quantize_q8 scales M=%d K=%d", M, K);
      cmp(name, &pxd, (size_t)M * KB, 0, 0);
      BOTH("matmul_q", 0,
           sa_op_matmul_q(be, X(py), X(pxq), X(pxd), wt, X(pw), X(pwd), X(pb), M, N, K, 0));
      snprintf(name, sizeof name, "matmul_q %s M=%d N=%d K=%d", wt == SA_WQ_Q8_0 ? "q8_0" : "q4_0",
               M, N, K);
      cmp(name, &py, (size_t)M * N, 0, 0);
      fr(&px), fr(&pw), fr(&pwd), fr(&pb), fr(&pxq), fr(&pxd), fr(&py);
      free(w), free(wd), free(x), free(bias);
    }
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  /* SA_TEST_BACKEND=cpu runs this harness against the CPU backend instead
   * (to check the harness itself on a machine without a GPU). */
  const char *spec = getenv("SA_TEST_BACKEND");
  if (!spec)
    spec = "cuda:0";
  if (strncmp(spec, "cuda", 4) == 0 && sa_cuda_device_count() == 0) {
    printf("skipped: no GPU\n");
    return 77;
  }
  R = sa_backend_ref_new();
  C = sa_backend_new(spec, 1);
  if (!R || !C) {
    printf("FAIL: could not create backends (ref %p, cuda %p)\n", (void *)R,
           (void *)C);
    return 1;
  }
  test_matmul(C, "", 1.0);
  /* The bf16-rounded-x mode (SA_CUDA_MATMUL=bf16) is PyTorch-bf16 accurate
   * only: x loses 8 mantissa bits for M > 8. */
  setenv("SA_CUDA_MATMUL", "bf16", 1);
  sa_backend_t *c16 = sa_backend_new(spec, 1);
  unsetenv("SA_CUDA_MATMUL");
  if (c16) {
    test_matmul(c16, " [x bf16]", 100.0);
    sa_backend_destroy(&c16);
  } else {
    printf("FAIL: cuda backend with SA_CUDA_MATMUL=bf16\n");
    g_fail++;
  }
  test_norms();
  test_rope();
  test_elementwise();
  test_embed();
  test_attention();
  test_conv1d();
  test_matmul_q();
  sa_backend_destroy(&C);
  sa_backend_destroy(&R);
  printf("%d of %d checks failed\n", g_fail, g_checks);
  return g_fail ? 1 : 0;
}
