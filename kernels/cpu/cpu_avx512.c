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

float sa__cpu_dot_avx512(const float *a, const float *b, int n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16),
                         _mm512_loadu_ps(b + i + 16), s1);
  }
  for (; i < n; i += 16) {
    int r = n - i;
    __mmask16 mk = r >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << r) - 1u);
    s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, a + i),
                         _mm512_maskz_loadu_ps(mk, b + i), s0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

void sa__cpu_scale_axpy_avx512(float *y, float c, float a, const float *x,
                               int n) {
  __m512 vc = _mm512_set1_ps(c), va = _mm512_set1_ps(a);
  int i = 0;
  /* whole vectors unmasked: attention calls this once per key on the same
   * y, and a load is not forwarded from a masked store (it waits for the
   * store to reach L1: the value pass ran ~4x slower with masks) */
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i),
                                            _mm512_mul_ps(vc, _mm512_loadu_ps(y + i))));
  if (i < n) {
    __mmask16 mk = (__mmask16)((1u << (n - i)) - 1u);
    __m512 yv = _mm512_maskz_loadu_ps(mk, y + i);
    __m512 xv = _mm512_maskz_loadu_ps(mk, x + i);
    _mm512_mask_storeu_ps(y + i, mk, _mm512_fmadd_ps(va, xv, _mm512_mul_ps(vc, yv)));
  }
}

float sa__cpu_dot_bf16_avx512(const float *a, const uint16_t *b, int n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), ldw(b + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), ldw(b + i + 16), s1);
  }
  for (; i < n; i += 16) {
    int r = n - i;
    __mmask16 mk = r >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << r) - 1u);
    s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, a + i), ldw_mask(b + i, mk), s0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

void sa__cpu_scale_axpy_bf16_avx512(float *y, float c, float a, const uint16_t *x, int n) {
  __m512 vc = _mm512_set1_ps(c), va = _mm512_set1_ps(a);
  int i = 0;
  for (; i + 16 <= n; i += 16) /* unmasked: see sa__cpu_scale_axpy_avx512 */
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, ldw(x + i),
                                            _mm512_mul_ps(vc, _mm512_loadu_ps(y + i))));
  if (i < n) {
    __mmask16 mk = (__mmask16)((1u << (n - i)) - 1u);
    __m512 yv = _mm512_maskz_loadu_ps(mk, y + i);
    _mm512_mask_storeu_ps(y + i, mk, _mm512_fmadd_ps(va, ldw_mask(x + i, mk),
                                                     _mm512_mul_ps(vc, yv)));
  }
}

/* 16 int8 of a q8 KV block, widened to fp32 (exact). */
static inline __m512 ldq8(const uint8_t *q) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q)));
}

float sa__cpu_dot_q8_avx512(const float *a, const uint8_t *b, int n) {
  __m512 s = _mm512_setzero_ps();
  for (int k = 0; k < n / SA_QK; k++, a += SA_QK, b += SA_KV_Q8_0_BLOCK) {
    float d = sa__kv_q8_d(b);
    __m512 t = _mm512_mul_ps(_mm512_loadu_ps(a), ldq8(b + 4));
    t = _mm512_fmadd_ps(_mm512_loadu_ps(a + 16), ldq8(b + 20), t);
    s = _mm512_fmadd_ps(_mm512_set1_ps(d), t, s);
  }
  return _mm512_reduce_add_ps(s);
}

void sa__cpu_scale_axpy_q8_avx512(float *y, float c, float a, const uint8_t *x, int n) {
  __m512 vc = _mm512_set1_ps(c);
  for (int k = 0; k < n / SA_QK; k++, y += SA_QK, x += SA_KV_Q8_0_BLOCK) {
    float d = sa__kv_q8_d(x);
    __m512 ad = _mm512_set1_ps(a * d);
    _mm512_storeu_ps(y, _mm512_fmadd_ps(ad, ldq8(x + 4), _mm512_mul_ps(vc, _mm512_loadu_ps(y))));
    _mm512_storeu_ps(y + 16, _mm512_fmadd_ps(ad, ldq8(x + 20),
                                             _mm512_mul_ps(vc, _mm512_loadu_ps(y + 16))));
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
    .dot = sa__cpu_dot_avx512,
    .scale_axpy = sa__cpu_scale_axpy_avx512,
    .dot_bf16 = sa__cpu_dot_bf16_avx512,
    .scale_axpy_bf16 = sa__cpu_scale_axpy_bf16_avx512,
    .dot_q8 = sa__cpu_dot_q8_avx512,
    .scale_axpy_q8 = sa__cpu_scale_axpy_q8_avx512,
    .bf16_to_f32 = sa__cpu_bf16_to_f32_avx512,
    .exp_sum = sa__cpu_exp_sum_avx512,
    .silu_mul = sa__cpu_silu_mul_avx512,
    .gelu = sa__cpu_gelu_avx512,
};
