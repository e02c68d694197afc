/*
 * cpu_avx512 — AVX-512F kernels of the CPU backend (compiled with
 * -mavx512f/bw/vl -mfma; called only when the CPU has them).
 *
 * The matmul widens bf16 weights to fp32 exactly (zero-extend and shift left
 * 16) and uses fp32 FMA, so results are exact in the inputs and differ from
 * the reference only by fp32 summation order. The register block is 4 W rows
 * x up to 4 x rows (16 zmm accumulators): each W row is loaded from memory
 * once per block of 4 x rows and, for M <= 4, exactly once overall, so the
 * decode GEMV streams W at memory bandwidth.
 */
#include "cpu_impl.h"
#include "kernels.h"

#include <immintrin.h>
#include <string.h>

static inline __m512 ldw(const uint16_t *p) {
  __m256i h = _mm256_loadu_si256((const __m256i *)p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline __m512 ldw_mask(const uint16_t *p, __mmask16 mk) {
  __m256i h = _mm256_maskz_loadu_epi16(mk, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline float bf16f(uint16_t h) {
  union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
  return v.f;
}

/* NB W rows x MB x rows, full K. NB, MB are compile-time constants at every
 * call site so the accumulator array lives in registers. */
static inline __attribute__((always_inline)) void
block(float *y, const float *x, const uint16_t *w, const uint16_t *bias,
      int N, int K, int m0, int n, int accumulate, const int NB,
      const int MB, const int PF) {
  __m512 acc[4][4];
#pragma GCC unroll 4
  for (int i = 0; i < MB; i++)
#pragma GCC unroll 4
    for (int j = 0; j < NB; j++)
      acc[i][j] = _mm512_setzero_ps();
  const uint16_t *wr[4];
  const float *xr[4];
#pragma GCC unroll 4
  for (int j = 0; j < NB; j++)
    wr[j] = w + (size_t)(n + j) * K;
#pragma GCC unroll 4
  for (int i = 0; i < MB; i++)
    xr[i] = x + (size_t)(m0 + i) * K;
  /* The next NB W rows follow these in memory: prefetch them, two lines per
   * step, so the decode GEMV keeps DRAM busy across short rows (the hardware
   * prefetcher ramps up too slowly on 4 interleaved streams of K * 2 bytes;
   * at K = 896 that cost about 30% of the bandwidth). A hint: never faults. */
  const char *pf = (const char *)(w + (size_t)(n + NB) * K);
  int k = 0;
  for (; k + 16 <= K; k += 16) {
    if (PF) {
      _mm_prefetch(pf + (size_t)k * 2 * NB, _MM_HINT_T0); /* NB*K*2 bytes over K/16 steps */
      _mm_prefetch(pf + (size_t)k * 2 * NB + 64, _MM_HINT_T0);
    }
    __m512 wv[4];
#pragma GCC unroll 4
    for (int j = 0; j < NB; j++)
      wv[j] = ldw(wr[j] + k);
#pragma GCC unroll 4
    for (int i = 0; i < MB; i++) {
      __m512 xv = _mm512_loadu_ps(xr[i] + k);
#pragma GCC unroll 4
      for (int j = 0; j < NB; j++)
        acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  if (k < K) {
    __mmask16 mk = (__mmask16)((1u << (K - k)) - 1u);
    __m512 wv[4];
#pragma GCC unroll 4
    for (int j = 0; j < NB; j++)
      wv[j] = ldw_mask(wr[j] + k, mk);
#pragma GCC unroll 4
    for (int i = 0; i < MB; i++) {
      __m512 xv = _mm512_maskz_loadu_ps(mk, xr[i] + k);
#pragma GCC unroll 4
      for (int j = 0; j < NB; j++)
        acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < MB; i++)
#pragma GCC unroll 4
    for (int j = 0; j < NB; j++) {
      float s = _mm512_reduce_add_ps(acc[i][j]);
      float *yo = y + (size_t)(m0 + i) * N + n + j;
      if (bias)
        s += bf16f(bias[n + j]);
      if (accumulate)
        s += *yo;
      *yo = s;
    }
}

#define MB_SWITCH(NB, PF)                                                      \
  switch (mb) {                                                                \
  case 4: block(y, x, w, bias, N, K, m, n, accumulate, NB, 4, PF); break;      \
  case 3: block(y, x, w, bias, N, K, m, n, accumulate, NB, 3, PF); break;      \
  case 2: block(y, x, w, bias, N, K, m, n, accumulate, NB, 2, PF); break;      \
  default: block(y, x, w, bias, N, K, m, n, accumulate, NB, 1, PF); break;     \
  }

/* With more than one block of x rows, W rows go in tiles of NT: each block
 * of 4 x rows (14 KiB at K = 896, in L1) sweeps the tile (NT * K * 2 bytes,
 * 112 KiB at K = 896, in L2), so every block runs like the decode case
 * instead of re-widening W rows against x rows evicted from L1 (measured on
 * Zen 4, 1 thread, N 4864 K 896: M 8-64 went from 50-68 to 88-96 GFLOP/s).
 * While a tile is swept, the next tile (contiguous in memory) is prefetched
 * into L2 a slice after every block, so no sweep waits on DRAM: with the
 * weights in DRAM, the first sweep of each tile used to run at memory speed
 * (1 thread, M 16: ~78 instead of ~100 GFLOP/s). Only the first tile of a
 * range streams with the in-block prefetch of the decode case.
 * The blocks and their arithmetic do not change with M, the tiling or the
 * prefetching, so results stay bit-identical for any M (batch invariance). */
#define NT 64
/* A tile and the next one being prefetched stay well inside a 1 MiB L2:
 * fewer rows per tile when rows are long (down projection, K = 4864). */
#define TILE_BYTES (192 * 1024)

void sa__cpu_mm_small_avx512(float *y, const float *x, const uint16_t *w,
                             const uint16_t *bias, int M, int N, int K, int n0,
                             int n1, int accumulate) {
  int n4 = n0 + ((n1 - n0) & ~3); /* end of the whole groups of 4 W rows */
  if (M <= 4) {
    for (int n = n0; n < n4; n += 4) {
      int m = 0, mb = M;
      MB_SWITCH(4, 1)
    }
  } else {
    int nt = (int)(TILE_BYTES / ((size_t)K * 2)) & ~3;
    nt = nt > NT ? NT : nt < 8 ? 8 : nt;
    for (int t = n0; t < n4; t += nt) {
      int t_end = t + nt < n4 ? t + nt : n4;
      int nx_end = t_end + nt < n4 ? t_end + nt : n4;
      sa__tile_pf_t pf;
      sa__tile_pf_init(&pf, w, K, t_end, nx_end,
                       (size_t)((M + 3) / 4) * (size_t)((t_end - t) / 4));
      for (int m = 0; m < M; m += 4) {
        int mb = M - m < 4 ? M - m : 4;
        for (int n = t; n < t_end; n += 4) {
          if (t == n0 && m == 0)
            MB_SWITCH(4, 1)
          else
            MB_SWITCH(4, 0)
          sa__tile_pf_step(&pf);
        }
      }
    }
  }
  for (int n = n4; n < n1; n++)
    for (int m = 0; m < M; m += 4) {
      int mb = M - m < 4 ? M - m : 4;
      MB_SWITCH(1, 1)
    }
}

/* The sums of 16 accumulators as one vector: lane p = the sum of the 16
 * lanes of a[KMAP[p]] (the tree's output order; KMAP is its own inverse).
 * Every lane's sum takes the same tree: (l0+l8 + l4+l12) + ... in the same
 * order whichever accumulator it came from. */
static const int KMAP[16] = {0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15};

static inline __m512 sum16(const __m512 *a) {
  __m512 x[8], z[4], w[2];
#pragma GCC unroll 8
  for (int j = 0; j < 8; j++) /* 256-bit halves: a[j]'s in the low, a[j + 8]'s in the high */
    x[j] = _mm512_add_ps(_mm512_shuffle_f32x4(a[j], a[j + 8], 0x44),
                         _mm512_shuffle_f32x4(a[j], a[j + 8], 0xee));
#pragma GCC unroll 4
  for (int j = 0; j < 4; j++) /* 128-bit lanes: a[j], a[j + 8], a[j + 4], a[j + 12] */
    z[j] = _mm512_add_ps(_mm512_shuffle_f32x4(x[j], x[j + 4], 0x88),
                         _mm512_shuffle_f32x4(x[j], x[j + 4], 0xdd));
#pragma GCC unroll 2
  for (int j = 0; j < 2; j++)
    w[j] = _mm512_add_ps(_mm512_shuffle_ps(z[j], z[j + 2], 0x44),
                         _mm512_shuffle_ps(z[j], z[j + 2], 0xee));
  return _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], 0x88), _mm512_shuffle_ps(w[0], w[1], 0xdd));
}

/* acc[a] += q's NV vectors from d0 on against key kb[a]'s (q in registers,
 * each key's pointer read once). */
static inline __attribute__((always_inline)) void
scores_block(__m512 *acc, const float *qg, const float *const *kb, int d0, const int NV) {
  __m512 qv[4];
#pragma GCC unroll 4
  for (int t = 0; t < NV; t++)
    qv[t] = _mm512_loadu_ps(qg + d0 + 16 * t);
#pragma GCC unroll 16
  for (int a = 0; a < 16; a++) {
    const float *p = kb[a] + d0;
#pragma GCC unroll 4
    for (int t = 0; t < NV; t++)
      acc[a] = _mm512_fmadd_ps(qv[t], _mm512_loadu_ps(p + 16 * t), acc[a]);
  }
}

/* Scores of 16 keys at a time per head: one accumulator per key (q's
 * vectors against the key's, in order of d), the 16 sums by sum16. */
void sa__cpu_attn_scores_avx512(float *s, size_t ss, const float *q, int G, int hd,
                                const float *const *k, int n, float scale) {
  if (hd % 16) {
    sa__cpu_kern_scalar.attn_scores(s, ss, q, G, hd, k, n, scale);
    return;
  }
  __m512 vs = _mm512_set1_ps(scale);
  for (int i = 0; i < n; i += 16) {
    int nb = n - i < 16 ? n - i : 16;
    const float *kb[16];
#pragma GCC unroll 16
    for (int p = 0; p < 16; p++) /* a short block repeats its first key */
      kb[KMAP[p]] = k[i + (p < nb ? p : 0)];
    for (int g = 0; g < G; g++) {
      const float *qg = q + (size_t)g * hd;
      __m512 acc[16];
#pragma GCC unroll 16
      for (int a = 0; a < 16; a++)
        acc[a] = _mm512_setzero_ps();
      for (int d0 = 0; d0 < hd; d0 += 64) {
        switch ((hd - d0) / 16 < 4 ? (hd - d0) / 16 : 4) {
        case 4: scores_block(acc, qg, kb, d0, 4); break;
        case 3: scores_block(acc, qg, kb, d0, 3); break;
        case 2: scores_block(acc, qg, kb, d0, 2); break;
        default: scores_block(acc, qg, kb, d0, 1); break;
        }
      }
      __mmask16 mk = nb == 16 ? (__mmask16)0xffff : (__mmask16)((1u << nb) - 1u);
      _mm512_mask_storeu_ps(s + (size_t)g * ss + i, mk, _mm512_mul_ps(sum16(acc), vs));
    }
  }
}

/* NG heads x NV vectors (16 floats each) of the output held in registers
 * over all n keys: each value vector is loaded once for the NG heads. */
static inline __attribute__((always_inline)) void
values_block(float *o, const float *c, const float *e, size_t es, int hd,
             const float *const *v, int n, int g0, int d0, const int NG, const int NV) {
  __m512 acc[4][4];
#pragma GCC unroll 4
  for (int g = 0; g < NG; g++)
#pragma GCC unroll 4
    for (int t = 0; t < NV; t++) {
      acc[g][t] = _mm512_loadu_ps(o + (size_t)(g0 + g) * hd + d0 + 16 * t);
      if (c)
        acc[g][t] = _mm512_mul_ps(acc[g][t], _mm512_set1_ps(c[g0 + g]));
    }
  for (int i = 0; i < n; i++) {
    __m512 vv[4];
#pragma GCC unroll 4
    for (int t = 0; t < NV; t++)
      vv[t] = _mm512_loadu_ps(v[i] + d0 + 16 * t);
#pragma GCC unroll 4
    for (int g = 0; g < NG; g++) {
      __m512 eb = _mm512_set1_ps(e[(size_t)(g0 + g) * es + i]);
#pragma GCC unroll 4
      for (int t = 0; t < NV; t++)
        acc[g][t] = _mm512_fmadd_ps(eb, vv[t], acc[g][t]);
    }
  }
#pragma GCC unroll 4
  for (int g = 0; g < NG; g++)
#pragma GCC unroll 4
    for (int t = 0; t < NV; t++)
      _mm512_storeu_ps(o + (size_t)(g0 + g) * hd + d0 + 16 * t, acc[g][t]);
}

#define NV_SWITCH(NG)                                                          \
  switch (nv) {                                                                \
  case 4: values_block(o, c, e, es, hd, v, n, g0, d0, NG, 4); break;          \
  case 3: values_block(o, c, e, es, hd, v, n, g0, d0, NG, 3); break;          \
  case 2: values_block(o, c, e, es, hd, v, n, g0, d0, NG, 2); break;          \
  default: values_block(o, c, e, es, hd, v, n, g0, d0, NG, 1); break;         \
  }

void sa__cpu_attn_values_avx512(float *o, const float *c, const float *e, size_t es, int G,
                                int hd, const float *const *v, int n) {
  if (hd % 16) {
    sa__cpu_kern_scalar.attn_values(o, c, e, es, G, hd, v, n);
    return;
  }
  for (int d0 = 0; d0 < hd; d0 += 64) {
    int nv = (hd - d0) / 16 < 4 ? (hd - d0) / 16 : 4;
    for (int g0 = 0; g0 < G; g0 += 4) {
      switch (G - g0 < 4 ? G - g0 : 4) {
      case 4: NV_SWITCH(4) break;
      case 3: NV_SWITCH(3) break;
      case 2: NV_SWITCH(2) break;
      default: NV_SWITCH(1) break;
      }
    }
  }
}

/* 16 int8 of a q8 KV block, widened to fp32 (exact). */
static inline __m512 ldq8(const uint8_t *q) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q)));
}

void sa__cpu_q8_to_f32_avx512(float *dst, const uint8_t *src, int n) {
  for (int b = 0; b < n / SA_QK; b++, dst += SA_QK, src += SA_KV_Q8_0_BLOCK) {
    __m512 d = _mm512_set1_ps(sa__kv_q8_d(src));
    _mm512_storeu_ps(dst, _mm512_mul_ps(d, ldq8(src + 4)));
    _mm512_storeu_ps(dst + 16, _mm512_mul_ps(d, ldq8(src + 20)));
  }
}

void sa__cpu_bf16_to_f32_avx512(float *dst, const uint16_t *src, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, ldw(src + i));
  if (i < n) {
    __mmask16 mk = (__mmask16)((1u << (n - i)) - 1u);
    _mm512_mask_storeu_ps(dst + i, mk, ldw_mask(src + i, mk));
  }
}

/* exp(v) for v <= 0 (Cephes expf: range reduction by ln 2 in two parts,
 * degree-6 polynomial; scalef applies 2^n and underflows to 0 gracefully). */
static inline __m512 exp_le0(__m512 v) {
  v = _mm512_max_ps(v, _mm512_set1_ps(-103.0f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), v);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

float sa__cpu_exp_sum_avx512(float *x, int n, float mx) {
  __m512 vm = _mm512_set1_ps(mx), s = _mm512_setzero_ps();
  for (int i = 0; i < n; i += 16) {
    int r = n - i;
    __mmask16 mk = r >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << r) - 1u);
    __m512 e = exp_le0(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, x + i), vm));
    _mm512_mask_storeu_ps(x + i, mk, e);
    s = _mm512_add_ps(s, _mm512_maskz_mov_ps(mk, e));
  }
  return _mm512_reduce_add_ps(s);
}

/* silu(g) = g * sigmoid(g), sigmoid from e = exp(-|g|) <= 1:
 * 1 / (1 + e) for g >= 0, e / (1 + e) below. */
static inline __m512 silu(__m512 g) {
  __m512 e = exp_le0(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(g)));
  __m512 d = _mm512_add_ps(e, _mm512_set1_ps(1.0f));
  __mmask16 neg = _mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_LT_OQ);
  __m512 num = _mm512_mask_blend_ps(neg, _mm512_set1_ps(1.0f), e);
  return _mm512_mul_ps(g, _mm512_div_ps(num, d));
}

void sa__cpu_silu_mul_avx512(float *y, const float *g, const float *u, int n) {
  for (int i = 0; i < n; i += 16) {
    int r = n - i;
    __mmask16 mk = r >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << r) - 1u);
    __m512 s = silu(_mm512_maskz_loadu_ps(mk, g + i));
    _mm512_mask_storeu_ps(y + i, mk, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(mk, u + i)));
  }
}

/* gelu(v) = v/2 (1 + erf(v / sqrt 2)); erf(a) for a >= 0 is
 * 1 - t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) exp(-a^2), t = 1 / (1 + p a),
 * odd in a. */
static inline __m512 gelu(__m512 v) {
  __m512 x = _mm512_mul_ps(v, _mm512_set1_ps(0.70710678118654752f));
  __m512 a = _mm512_abs_ps(x);
  __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f),
                           _mm512_fmadd_ps(a, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.0f)));
  __m512 p = _mm512_set1_ps(1.061405429f);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
  p = _mm512_mul_ps(p, t);
  __m512 e = exp_le0(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(a, a)));
  __m512 erfa = _mm512_fnmadd_ps(p, e, _mm512_set1_ps(1.0f));
  __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  __m512 erfx = _mm512_mask_sub_ps(erfa, neg, _mm512_setzero_ps(), erfa);
  return _mm512_mul_ps(_mm512_mul_ps(v, _mm512_set1_ps(0.5f)),
                       _mm512_add_ps(erfx, _mm512_set1_ps(1.0f)));
}

void sa__cpu_gelu_avx512(float *x, size_t n) {
  for (size_t i = 0; i < n; i += 16) {
    size_t r = n - i;
    __mmask16 mk = r >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << r) - 1u);
    _mm512_mask_storeu_ps(x + i, mk, gelu(_mm512_maskz_loadu_ps(mk, x + i)));
  }
}

const sa__cpu_kern_t sa__cpu_kern_avx512 = {
    .name = "avx512",
    .mm_small = sa__cpu_mm_small_avx512,
    .attn_scores = sa__cpu_attn_scores_avx512,
    .attn_values = sa__cpu_attn_values_avx512,
    .q8_to_f32 = sa__cpu_q8_to_f32_avx512,
    .bf16_to_f32 = sa__cpu_bf16_to_f32_avx512,
    .exp_sum = sa__cpu_exp_sum_avx512,
    .silu_mul = sa__cpu_silu_mul_avx512,
    .gelu = sa__cpu_gelu_avx512,
};
