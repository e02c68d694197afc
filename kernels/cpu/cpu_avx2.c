/*
 * cpu_avx2 — AVX2 + FMA kernels of the CPU backend (compiled with
 * -mavx2 -mfma; called only when the CPU has them).
 *
 * Same scheme as cpu_avx512.c at 8 lanes: bf16 weights are widened to fp32
 * exactly and multiplied with fp32 FMA. Register block 4 W rows x up to 2 x
 * rows (8 ymm accumulators + 4 weight vectors fit the 16 registers).
 * Attention differs: scores put keys, not dims, in the lanes (scores_all),
 * and a bf16 KV cache is widened in registers, never into scratch.
 */
#include "cpu_impl.h"
#include "kernels.h"

#include <immintrin.h>
#include <string.h>

static inline __m256 ldw(const uint16_t *p) {
  __m128i h = _mm_loadu_si128((const __m128i *)p);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float bf16f(uint16_t h) {
  union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
  return v.f;
}

static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

static inline __attribute__((always_inline)) void
block(float *y, const float *x, const uint16_t *w, const uint16_t *bias,
      int N, int K, int m0, int n, int accumulate, const int NB,
      const int MB) {
  __m256 acc[2][4];
#pragma GCC unroll 4
  for (int i = 0; i < MB; i++)
#pragma GCC unroll 4
    for (int j = 0; j < NB; j++)
      acc[i][j] = _mm256_setzero_ps();
  const uint16_t *wr[4];
  const float *xr[2];
#pragma GCC unroll 4
  for (int j = 0; j < NB; j++)
    wr[j] = w + (size_t)(n + j) * K;
#pragma GCC unroll 4
  for (int i = 0; i < MB; i++)
    xr[i] = x + (size_t)(m0 + i) * K;
  /* prefetch the next NB W rows, one line per step (see cpu_avx512.c) */
  const char *pf = (const char *)(w + (size_t)(n + NB) * K);
  int k = 0;
  for (; k + 8 <= K; k += 8) {
    _mm_prefetch(pf + (size_t)k * 2 * NB, _MM_HINT_T0);
    __m256 wv[4];
#pragma GCC unroll 4
    for (int j = 0; j < NB; j++)
      wv[j] = ldw(wr[j] + k);
#pragma GCC unroll 4
    for (int i = 0; i < MB; i++) {
      __m256 xv = _mm256_loadu_ps(xr[i] + k);
#pragma GCC unroll 4
      for (int j = 0; j < NB; j++)
        acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < MB; i++)
#pragma GCC unroll 4
    for (int j = 0; j < NB; j++) {
      float s = hsum(acc[i][j]);
      for (int kk = k; kk < K; kk++)
        s += xr[i][kk] * bf16f(wr[j][kk]);
      float *yo = y + (size_t)(m0 + i) * N + n + j;
      if (bias)
        s += bf16f(bias[n + j]);
      if (accumulate)
        s += *yo;
      *yo = s;
    }
}

/* W rows in tiles of NT when there is more than one block of x rows (see
 * cpu_avx512.c): x rows stay in L1 while they sweep a tile held in L2, and
 * the next tile is prefetched into L2 meanwhile. The per-element arithmetic
 * does not depend on M, the tiling or the prefetching. */
#define NT 64
#define TILE_BYTES (192 * 1024)

static void mm_small(float *y, const float *x, const uint16_t *w,
                     const uint16_t *bias, int M, int N, int K, int n0, int n1,
                     int accumulate) {
  int n4 = n0 + ((n1 - n0) & ~3);
  int nt = (int)(TILE_BYTES / ((size_t)K * 2)) & ~3;
  nt = M <= 2 ? 4 : nt > NT ? NT : nt < 8 ? 8 : nt;
  for (int t = n0; t < n4; t += nt) {
    int t_end = t + nt < n4 ? t + nt : n4;
    int nx_end = t_end + nt < n4 ? t_end + nt : n4;
    sa__tile_pf_t pf;
    sa__tile_pf_init(&pf, w, K, t_end, M <= 2 ? t_end : nx_end,
                     (size_t)((M + 1) / 2) * (size_t)((t_end - t) / 4));
    int m = 0;
    for (; m + 2 <= M; m += 2)
      for (int n = t; n < t_end; n += 4) {
        block(y, x, w, bias, N, K, m, n, accumulate, 4, 2);
        sa__tile_pf_step(&pf);
      }
    if (m < M)
      for (int n = t; n < t_end; n += 4) {
        block(y, x, w, bias, N, K, m, n, accumulate, 4, 1);
        sa__tile_pf_step(&pf);
      }
  }
  for (int n = n4; n < n1; n++) {
    int m = 0;
    for (; m + 2 <= M; m += 2)
      block(y, x, w, bias, N, K, m, n, accumulate, 1, 2);
    if (m < M)
      block(y, x, w, bias, N, K, m, n, accumulate, 1, 1);
  }
}

/* Dims d..d+3 of 8 keys as 4 columns, lane p = key p: kb[p] are fp32
 * head slices, or (BF) bf16 ones widened on the way (exact). Rows p and
 * p + 4 share a register, and two 4x4 transposes (one per 128-bit lane)
 * turn the rows into columns. */
static inline __attribute__((always_inline)) void
columns4(__m256 *c, const void *const *kb, int d, const int BF) {
  __m256 r[4];
#pragma GCC unroll 4
  for (int j = 0; j < 4; j++)
    if (BF) {
      __m128i lo = _mm_loadl_epi64((const __m128i *)((const uint16_t *)kb[j] + d));
      __m128i hi = _mm_loadl_epi64((const __m128i *)((const uint16_t *)kb[j + 4] + d));
      r[j] = _mm256_castsi256_ps(
          _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_unpacklo_epi64(lo, hi)), 16));
    } else {
      r[j] = _mm256_loadu2_m128((const float *)kb[j + 4] + d, (const float *)kb[j] + d);
    }
  __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  c[0] = _mm256_shuffle_ps(t0, t2, 0x44);
  c[1] = _mm256_shuffle_ps(t0, t2, 0xee);
  c[2] = _mm256_shuffle_ps(t1, t3, 0x44);
  c[3] = _mm256_shuffle_ps(t1, t3, 0xee);
}

/* The scores' key columns on the stack: COLS_HD dims of 16 keys (8 KiB). */
#define COLS_HD 128

/* Dims [d0, d1) of 16 keys as columns into kt (dim d's 16 keys at
 * kt + 16 (d - d0)). */
static inline __attribute__((always_inline)) void
fill_columns(float *kt, const void *const *kb, int d0, int d1, const int BF) {
  for (int d = d0; d < d1; d += 4) {
    __m256 c[4], c8[4];
    columns4(c, kb, d, BF);
    columns4(c8, kb + 8, d, BF);
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
      _mm256_storeu_ps(kt + 16 * (d - d0 + j), c[j]);
      _mm256_storeu_ps(kt + 16 * (d - d0 + j) + 8, c8[j]);
    }
  }
}

/* NH <= 4 heads' scores of 16 keys from their columns: two accumulators a
 * head with the keys in their lanes, q[g][d] broadcast once for both. kt
 * holds all hd dims when filled (hd <= COLS_HD), else each COLS_HD dims
 * are turned into columns here in turn, the sums going on in registers. */
static inline __attribute__((always_inline)) void
scores_heads(float *s, size_t ss, const float *q, int hd, const void *const *kb, float *kt,
             int filled, int g0, int i, int nb, __m256 vs, const int NH, const int BF) {
  __m256 acc[4][2];
#pragma GCC unroll 4
  for (int h = 0; h < NH; h++)
    acc[h][0] = acc[h][1] = _mm256_setzero_ps();
  for (int d0 = 0; d0 < hd; d0 += COLS_HD) {
    int d1 = hd - d0 < COLS_HD ? hd : d0 + COLS_HD;
    if (!filled)
      fill_columns(kt, kb, d0, d1, BF);
    for (int d = d0; d < d1; d++) {
      __m256 c0 = _mm256_loadu_ps(kt + 16 * (d - d0)), c1 = _mm256_loadu_ps(kt + 16 * (d - d0) + 8);
#pragma GCC unroll 4
      for (int h = 0; h < NH; h++) {
        __m256 b = _mm256_broadcast_ss(q + (size_t)(g0 + h) * hd + d);
        acc[h][0] = _mm256_fmadd_ps(b, c0, acc[h][0]);
        acc[h][1] = _mm256_fmadd_ps(b, c1, acc[h][1]);
      }
    }
  }
#pragma GCC unroll 4
  for (int h = 0; h < NH; h++) {
    float *o = s + (size_t)(g0 + h) * ss + i, t[16];
    __m256 v0 = _mm256_mul_ps(acc[h][0], vs), v1 = _mm256_mul_ps(acc[h][1], vs);
    if (nb == 16) {
      _mm256_storeu_ps(o, v0);
      _mm256_storeu_ps(o + 8, v1);
    } else {
      _mm256_storeu_ps(t, v0);
      _mm256_storeu_ps(t + 8, v1);
      memcpy(o, t, sizeof(float) * (size_t)nb);
    }
  }
}

/* Scores as the scalar kernel defines them, 16 keys at a time: the keys
 * turned into columns on the stack (kt, in L1; once for all heads when hd
 * <= COLS_HD), then up to 4 heads together with the keys in the lanes of
 * their accumulators, so each key's sum runs over d in order, one FMA a
 * dim, whatever the block -- no horizontal sums (the kernel before this
 * one, dims in the lanes and a tree across them at the end, spent a third
 * of its time on those sums and their scalar stores). A short block
 * repeats its first key. BF: the keys are bf16 slices (attn_scores_widen),
 * widened in registers: the same bits as an fp32 cache of the same values. */
static inline __attribute__((always_inline)) void
scores_all(float *s, size_t ss, const float *q, int G, int hd, const void *const *k, int n,
           float scale, const int BF) {
  __m256 vs = _mm256_set1_ps(scale);
  float kt[16 * COLS_HD];
  int filled = hd <= COLS_HD;
  for (int i = 0; i < n; i += 16) {
    int nb = n - i < 16 ? n - i : 16;
    const void *kb[16];
#pragma GCC unroll 16
    for (int p = 0; p < 16; p++)
      kb[p] = k[i + (p < nb ? p : 0)];
    if (filled)
      fill_columns(kt, kb, 0, hd, BF);
    for (int g0 = 0; g0 < G; g0 += 4) {
#define SH(NH) scores_heads(s, ss, q, hd, kb, kt, filled, g0, i, nb, vs, NH, BF)
      switch (G - g0 < 4 ? G - g0 : 4) {
      case 4: SH(4); break;
      case 3: SH(3); break;
      case 2: SH(2); break;
      default: SH(1); break;
      }
#undef SH
    }
  }
}

static void attn_scores(float *s, size_t ss, const float *q, int G, int hd,
                        const float *const *k, int n, float scale) {
  if (hd % 4) {
    sa__cpu_kern_scalar.attn_scores(s, ss, q, G, hd, k, n, scale);
    return;
  }
  scores_all(s, ss, q, G, hd, (const void *const *)k, n, scale, 0);
}

/* Rows whose hd the SIMD kernels do not take: n <= 16 of them widened into
 * wide (n * hd floats of the caller's scratch), p[i] pointing at them, for
 * the scalar kernels. */
static void widen_rows(float *wide, const float **p, const uint16_t *const *k, int n, int hd) {
  for (int i = 0; i < n; i++) {
    for (int d = 0; d < hd; d++)
      wide[(size_t)i * hd + d] = bf16f(k[i][d]);
    p[i] = wide + (size_t)i * hd;
  }
}

static void attn_scores_widen(float *s, size_t ss, const float *q, int G, int hd,
                              const uint16_t *const *k, int n, float scale, float *wide) {
  if (hd % 4) {
    const float *p[16];
    widen_rows(wide, p, k, n, hd);
    sa__cpu_kern_scalar.attn_scores(s, ss, q, G, hd, p, n, scale);
    return;
  }
  scores_all(s, ss, q, G, hd, (const void *const *)k, n, scale, 1);
}

/* As the AVX-512 values_block: NG heads x NV vectors of 8 in registers;
 * BF: v[i] are bf16 slices (attn_values_widen), each vector widened in
 * registers once for the NG heads, else fp32. */
static inline __attribute__((always_inline)) void
values_block(float *o, const float *c, const float *e, size_t es, int hd,
             const void *const *v, int n, int g0, int d0, const int NG, const int NV,
             const int BF) {
  __m256 acc[4][2];
#pragma GCC unroll 4
  for (int g = 0; g < NG; g++)
#pragma GCC unroll 2
    for (int t = 0; t < NV; t++) {
      acc[g][t] = _mm256_loadu_ps(o + (size_t)(g0 + g) * hd + d0 + 8 * t);
      if (c)
        acc[g][t] = _mm256_mul_ps(acc[g][t], _mm256_set1_ps(c[g0 + g]));
    }
  for (int i = 0; i < n; i++) {
    __m256 vv[2];
#pragma GCC unroll 2
    for (int t = 0; t < NV; t++)
      vv[t] = BF ? ldw((const uint16_t *)v[i] + d0 + 8 * t)
                 : _mm256_loadu_ps((const float *)v[i] + d0 + 8 * t);
#pragma GCC unroll 4
    for (int g = 0; g < NG; g++) {
      __m256 eb = _mm256_set1_ps(e[(size_t)(g0 + g) * es + i]);
#pragma GCC unroll 2
      for (int t = 0; t < NV; t++)
        acc[g][t] = _mm256_fmadd_ps(eb, vv[t], acc[g][t]);
    }
  }
#pragma GCC unroll 4
  for (int g = 0; g < NG; g++)
#pragma GCC unroll 2
    for (int t = 0; t < NV; t++)
      _mm256_storeu_ps(o + (size_t)(g0 + g) * hd + d0 + 8 * t, acc[g][t]);
}

static inline __attribute__((always_inline)) void
values_all(float *o, const float *c, const float *e, size_t es, int G, int hd,
           const void *const *v, int n, const int BF) {
  for (int d0 = 0; d0 < hd; d0 += 16) {
    int two = hd - d0 >= 16;
    for (int g0 = 0; g0 < G; g0 += 4) {
      int ng = G - g0 < 4 ? G - g0 : 4;
#define VB(NG)                                                                 \
  (two ? values_block(o, c, e, es, hd, v, n, g0, d0, NG, 2, BF)               \
       : values_block(o, c, e, es, hd, v, n, g0, d0, NG, 1, BF))
      switch (ng) {
      case 4: VB(4); break;
      case 3: VB(3); break;
      case 2: VB(2); break;
      default: VB(1); break;
      }
#undef VB
    }
  }
}

static void attn_values(float *o, const float *c, const float *e, size_t es, int G, int hd,
                        const float *const *v, int n) {
  if (hd % 8) {
    sa__cpu_kern_scalar.attn_values(o, c, e, es, G, hd, v, n);
    return;
  }
  values_all(o, c, e, es, G, hd, (const void *const *)v, n, 0);
}

static void attn_values_widen(float *o, const float *c, const float *e, size_t es, int G,
                              int hd, const uint16_t *const *v, int n, float *wide) {
  if (hd % 8) { /* 16 keys a call, the scale with the first (the same bits) */
    for (int i = 0; i < n; i += 16) {
      const float *p[16];
      int nb = n - i < 16 ? n - i : 16;
      widen_rows(wide, p, v + i, nb, hd);
      sa__cpu_kern_scalar.attn_values(o, i ? NULL : c, e + i, es, G, hd, p, nb);
    }
    return;
  }
  values_all(o, c, e, es, G, hd, (const void *const *)v, n, 1);
}

/* 8 int8 of a q8 KV block, widened to fp32 (exact). */
static inline __m256 ldq8(const uint8_t *q) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q)));
}

static void q8_to_f32(float *dst, const uint8_t *src, int n) {
  for (int b = 0; b < n / SA_QK; b++, dst += SA_QK, src += SA_KV_Q8_0_BLOCK) {
    __m256 d = _mm256_set1_ps(sa__kv_q8_d(src));
    for (int h = 0; h < SA_QK; h += 8)
      _mm256_storeu_ps(dst + h, _mm256_mul_ps(d, ldq8(src + 4 + h)));
  }
}

static void bf16_to_f32(float *dst, const uint16_t *src, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, ldw(src + i));
  for (; i < n; i++)
    dst[i] = bf16f(src[i]);
}

/* exp(v) for v <= 0: the polynomial of cpu_avx512.c; 2^n built in the
 * exponent bits (n >= -126 after the clamp, so no denormals). */
static inline __m256 exp_le0(__m256 v) {
  v = _mm256_max_ps(v, _mm256_set1_ps(-87.0f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(v, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), v);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static float exp_sum(float *x, int n, float mx) {
  __m256 vm = _mm256_set1_ps(mx), s = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 e = exp_le0(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(x + i, e);
    s = _mm256_add_ps(s, e);
  }
  float t = hsum(s);
  if (i < n) { /* the tail through the same polynomial, via a padded copy */
    float tmp[8] = {0};
    memcpy(tmp, x + i, sizeof(float) * (size_t)(n - i));
    _mm256_storeu_ps(tmp, exp_le0(_mm256_sub_ps(_mm256_loadu_ps(tmp), vm)));
    for (int k = 0; k < n - i; k++) {
      x[i + k] = tmp[k];
      t += tmp[k];
    }
  }
  return t;
}

static inline __m256 silu(__m256 g) { /* as in cpu_avx512.c */
  __m256 z = _mm256_setzero_ps();
  __m256 a = _mm256_max_ps(g, _mm256_sub_ps(z, g));
  __m256 e = exp_le0(_mm256_sub_ps(z, a));
  __m256 d = _mm256_add_ps(e, _mm256_set1_ps(1.0f));
  __m256 num = _mm256_blendv_ps(_mm256_set1_ps(1.0f), e, _mm256_cmp_ps(g, z, _CMP_LT_OQ));
  return _mm256_mul_ps(g, _mm256_div_ps(num, d));
}

static inline __m256 gelu(__m256 v) { /* as in cpu_avx512.c */
  __m256 z = _mm256_setzero_ps();
  __m256 x = _mm256_mul_ps(v, _mm256_set1_ps(0.70710678118654752f));
  __m256 a = _mm256_max_ps(x, _mm256_sub_ps(z, x));
  __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f),
                           _mm256_fmadd_ps(a, _mm256_set1_ps(0.3275911f), _mm256_set1_ps(1.0f)));
  __m256 p = _mm256_set1_ps(1.061405429f);
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
  p = _mm256_mul_ps(p, t);
  __m256 e = exp_le0(_mm256_sub_ps(z, _mm256_mul_ps(a, a)));
  __m256 erfa = _mm256_fnmadd_ps(p, e, _mm256_set1_ps(1.0f));
  __m256 erfx = _mm256_blendv_ps(erfa, _mm256_sub_ps(z, erfa), _mm256_cmp_ps(x, z, _CMP_LT_OQ));
  return _mm256_mul_ps(_mm256_mul_ps(v, _mm256_set1_ps(0.5f)),
                       _mm256_add_ps(erfx, _mm256_set1_ps(1.0f)));
}

static void silu_mul(float *y, const float *g, const float *u, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_mul_ps(silu(_mm256_loadu_ps(g + i)), _mm256_loadu_ps(u + i)));
  if (i < n) { /* the tail through the same code, via padded copies */
    float tg[8] = {0}, tu[8] = {0};
    memcpy(tg, g + i, sizeof(float) * (size_t)(n - i));
    memcpy(tu, u + i, sizeof(float) * (size_t)(n - i));
    _mm256_storeu_ps(tg, _mm256_mul_ps(silu(_mm256_loadu_ps(tg)), _mm256_loadu_ps(tu)));
    memcpy(y + i, tg, sizeof(float) * (size_t)(n - i));
  }
}

static void gelu_n(float *x, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(x + i, gelu(_mm256_loadu_ps(x + i)));
  if (i < n) {
    float t[8] = {0};
    memcpy(t, x + i, sizeof(float) * (n - i));
    _mm256_storeu_ps(t, gelu(_mm256_loadu_ps(t)));
    memcpy(x + i, t, sizeof(float) * (n - i));
  }
}

const sa__cpu_kern_t sa__cpu_kern_avx2 = {
    .name = "avx2",
    .mm_small = mm_small,
    .attn_scores = attn_scores,
    .attn_values = attn_values,
    .attn_scores_widen = attn_scores_widen,
    .attn_values_widen = attn_values_widen,
    .q8_to_f32 = q8_to_f32,
    .bf16_to_f32 = bf16_to_f32,
    .exp_sum = exp_sum,
    .silu_mul = silu_mul,
    .gelu = gelu_n,
};
