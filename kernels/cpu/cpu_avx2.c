/*
 * cpu_avx2 — AVX2 + FMA kernels of the CPU backend (compiled with
 * -mavx2 -mfma; called only when the CPU has them).
 *
 * Same scheme as cpu_avx512.c at 8 lanes: bf16 weights are widened to fp32
 * exactly and multiplied with fp32 FMA. Register block 4 W rows x up to 2 x
 * rows (8 ymm accumulators + 4 weight vectors fit the 16 registers).
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

/* The sums of 8 accumulators as one vector: lane p = the sum of the 8
 * lanes of a[KMAP[p]] (the tree's output order; KMAP is its own inverse),
 * every lane by the same tree. */
static const int KMAP[8] = {0, 2, 1, 3, 4, 6, 5, 7};

static inline __m256 sum8(const __m256 *a) {
  __m256 x[4], w[2];
#pragma GCC unroll 4
  for (int j = 0; j < 4; j++) /* 128-bit lanes: a[j]'s in the low, a[j + 4]'s in the high */
    x[j] = _mm256_add_ps(_mm256_permute2f128_ps(a[j], a[j + 4], 0x20),
                         _mm256_permute2f128_ps(a[j], a[j + 4], 0x31));
#pragma GCC unroll 2
  for (int j = 0; j < 2; j++)
    w[j] = _mm256_add_ps(_mm256_shuffle_ps(x[j], x[j + 2], 0x44),
                         _mm256_shuffle_ps(x[j], x[j + 2], 0xee));
  return _mm256_add_ps(_mm256_shuffle_ps(w[0], w[1], 0x88), _mm256_shuffle_ps(w[0], w[1], 0xdd));
}

static inline __attribute__((always_inline)) void
scores_block(__m256 *acc, const float *qg, const float *const *kb, int d0, const int NV) {
  __m256 qv[4];
#pragma GCC unroll 4
  for (int t = 0; t < NV; t++)
    qv[t] = _mm256_loadu_ps(qg + d0 + 8 * t);
#pragma GCC unroll 8
  for (int a = 0; a < 8; a++) {
    const float *p = kb[a] + d0;
#pragma GCC unroll 4
    for (int t = 0; t < NV; t++)
      acc[a] = _mm256_fmadd_ps(qv[t], _mm256_loadu_ps(p + 8 * t), acc[a]);
  }
}

/* As sa__cpu_attn_scores_avx512, 8 keys at a time. */
static void attn_scores(float *s, size_t ss, const float *q, int G, int hd,
                        const float *const *k, int n, float scale) {
  if (hd % 8) {
    sa__cpu_kern_scalar.attn_scores(s, ss, q, G, hd, k, n, scale);
    return;
  }
  __m256 vs = _mm256_set1_ps(scale);
  for (int i = 0; i < n; i += 8) {
    int nb = n - i < 8 ? n - i : 8;
    const float *kb[8];
#pragma GCC unroll 8
    for (int p = 0; p < 8; p++) /* a short block repeats its first key */
      kb[KMAP[p]] = k[i + (p < nb ? p : 0)];
    for (int g = 0; g < G; g++) {
      const float *qg = q + (size_t)g * hd;
      __m256 acc[8];
#pragma GCC unroll 8
      for (int a = 0; a < 8; a++)
        acc[a] = _mm256_setzero_ps();
      for (int d0 = 0; d0 < hd; d0 += 32) {
        switch ((hd - d0) / 8 < 4 ? (hd - d0) / 8 : 4) {
        case 4: scores_block(acc, qg, kb, d0, 4); break;
        case 3: scores_block(acc, qg, kb, d0, 3); break;
        case 2: scores_block(acc, qg, kb, d0, 2); break;
        default: scores_block(acc, qg, kb, d0, 1); break;
        }
      }
      float r[8];
      _mm256_storeu_ps(r, _mm256_mul_ps(sum8(acc), vs));
      memcpy(s + (size_t)g * ss + i, r, sizeof(float) * nb);
    }
  }
}

/* As the AVX-512 values_block: NG heads x NV vectors of 8 in registers. */
static inline __attribute__((always_inline)) void
values_block(float *o, const float *c, const float *e, size_t es, int hd,
             const float *const *v, int n, int g0, int d0, const int NG, const int NV) {
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
      vv[t] = _mm256_loadu_ps(v[i] + d0 + 8 * t);
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

static void attn_values(float *o, const float *c, const float *e, size_t es, int G, int hd,
                        const float *const *v, int n) {
  if (hd % 8) {
    sa__cpu_kern_scalar.attn_values(o, c, e, es, G, hd, v, n);
    return;
  }
  for (int d0 = 0; d0 < hd; d0 += 16) {
    int two = hd - d0 >= 16;
    for (int g0 = 0; g0 < G; g0 += 4) {
      int ng = G - g0 < 4 ? G - g0 : 4;
#define VB(NG)                                                                 \
  (two ? values_block(o, c, e, es, hd, v, n, g0, d0, NG, 2)                   \
       : values_block(o, c, e, es, hd, v, n, g0, d0, NG, 1))
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
    .q8_to_f32 = q8_to_f32,
    .bf16_to_f32 = bf16_to_f32,
    .exp_sum = exp_sum,
    .silu_mul = silu_mul,
    .gelu = gelu_n,
};
