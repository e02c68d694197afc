/*
 * cpu_avx512bf16 — the bf16 dot-product matmul of the CPU backend (compiled
 * with -mavx512bf16; called only when the CPU has it).
 *
 * Numbers: the activations x are rounded to bf16 (round to nearest even, as
 * a bf16 reference model holds them), the weights are used as stored, and
 * vdpbf16ps multiplies the bf16 pairs exactly and accumulates in fp32. This
 * is the one ISA whose results differ from the fp32 paths by more than
 * summation order: x loses its low 16 bits (|x - bf16(x)| <= 2^-9 |x|).
 *
 * One summation order for every M (batch invariance): for each output,
 *   s = (accumulate ? y_old : 0) + (bias ? bias : 0)
 *   for each K block of KC (= 2048) elements, in order:
 *     16 fp32 lanes, lane l summing the pairs at k = 32t + 2l, 32t + 2l + 1
 *     over t by vdpbf16ps, then hsum (one fixed tree, hsum16 below);
 *     s += that block's sum
 * The row-streaming loop (few rows: decode) and the blocked loop (prefill:
 * a bf16 x block of MC x KC kept in L2 while NR W rows of KC sit in L1)
 * compute exactly that, so a row's outputs are bit-identical whatever M is,
 * whichever loop ran and however the columns were split across threads.
 *
 * Register block: MR = 4 x rows by NR = 6 W rows, 24 zmm accumulators; per
 * 32 k: 6 W loads and 4 x loads for 24 vdpbf16ps.
 */
#include "cpu_impl.h"

#include <immintrin.h>
#include <string.h>

#define KC 2048 /* K block: a multiple of 32, independent of M */
#define MC 64   /* x rows per L2 block (MC * KC * 2 = 256 KiB) */
#define MR 4
#define NR 6
/* Up to this many rows the row-streaming loop runs (each W row is read
 * once per MR rows, so W streams from memory at most twice). */
#define STREAM_MAX_M 8

static inline float bf16f(uint16_t h) {
  union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
  return v.f;
}

/* The one horizontal sum (a fixed tree: halves, then quarters, ...). */
static inline float hsum16(__m512 v) {
  __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v),
                           _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
  __m128 d = _mm_add_ss(c, _mm_movehdup_ps(c));
  return _mm_cvtss_f32(d);
}

/* dst[0, n) = bf16(src[0, n)) (round to nearest even), then zeros up to
 * npad (a multiple of 32). */
static void to_bf16(uint16_t *dst, const float *src, int n, int npad) {
  int i = 0;
  for (; i + 32 <= n; i += 32) {
    __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + i + 16), _mm512_loadu_ps(src + i));
    _mm512_storeu_si512(dst + i, (__m512i)v);
  }
  if (i < n) {
    __mmask32 mk = (__mmask32)((1ull << (n - i)) - 1u);
    __m512 lo = _mm512_maskz_loadu_ps((__mmask16)mk, src + i);
    __m512 hi = _mm512_maskz_loadu_ps((__mmask16)(mk >> 16), src + i + 16);
    _mm512_storeu_si512(dst + i, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    i += 32;
  }
  for (; i < npad; i += 32)
    _mm512_storeu_si512(dst + i, _mm512_setzero_si512());
}

/* acc[i][j] = the K-block sum of x row i and W row j over kc elements (xb
 * rows: bf16, zero-padded to a multiple of 32, stride xs; W rows: stride K,
 * masked at the block's end). Adds each block sum into y: on the first block
 * s = init + sum, later y += sum. */
static inline __attribute__((always_inline)) void
kblock(float *y, int ys, const uint16_t *xb, size_t xs, const uint16_t *w, size_t K,
       int kc, int first, const uint16_t *bias, int accumulate, const int MB,
       const int NB) {
  __m512 acc[MR][NR];
#pragma GCC unroll 4
  for (int i = 0; i < MB; i++)
#pragma GCC unroll 6
    for (int j = 0; j < NB; j++)
      acc[i][j] = _mm512_setzero_ps();
  int k = 0;
  for (; k + 32 <= kc; k += 32) {
    __m512bh wv[NR];
#pragma GCC unroll 6
    for (int j = 0; j < NB; j++)
      wv[j] = (__m512bh)_mm512_loadu_si512(w + (size_t)j * K + k);
#pragma GCC unroll 4
    for (int i = 0; i < MB; i++) {
      __m512bh xv = (__m512bh)_mm512_loadu_si512(xb + (size_t)i * xs + k);
#pragma GCC unroll 6
      for (int j = 0; j < NB; j++)
        acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[j]);
    }
  }
  if (k < kc) {
    __mmask32 mk = (__mmask32)((1ull << (kc - k)) - 1u);
    __m512bh wv[NR];
#pragma GCC unroll 6
    for (int j = 0; j < NB; j++)
      wv[j] = (__m512bh)_mm512_maskz_loadu_epi16(mk, w + (size_t)j * K + k);
#pragma GCC unroll 4
    for (int i = 0; i < MB; i++) {
      __m512bh xv = (__m512bh)_mm512_loadu_si512(xb + (size_t)i * xs + k);
#pragma GCC unroll 6
      for (int j = 0; j < NB; j++)
        acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[j]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < MB; i++)
#pragma GCC unroll 6
    for (int j = 0; j < NB; j++) {
      float h = hsum16(acc[i][j]);
      float *yo = y + (size_t)i * ys + j;
      if (first) {
        float s = accumulate ? *yo : 0.0f;
        if (bias)
          s += bf16f(bias[j]);
        *yo = s + h;
      } else {
        *yo += h;
      }
    }
}

#define NB_CASE(MB, NB)                                                       \
  case NB: kblock(y, ys, xb, xs, w, K, kc, first, bias, accumulate, MB, NB); break;

#define MB_CASE(MB)                                                           \
  case MB:                                                                    \
    switch (nb) {                                                             \
      NB_CASE(MB, 6) NB_CASE(MB, 5) NB_CASE(MB, 4) NB_CASE(MB, 3)             \
      NB_CASE(MB, 2) default: kblock(y, ys, xb, xs, w, K, kc, first, bias,    \
                                     accumulate, MB, 1); break;               \
    }                                                                         \
    break;

/* One register block of mb <= MR rows by nb <= NR columns over one K block. */
static void tile(float *y, int ys, const uint16_t *xb, size_t xs, const uint16_t *w,
                 size_t K, int kc, int first, const uint16_t *bias, int accumulate,
                 int mb, int nb) {
  switch (mb) {
    MB_CASE(4) MB_CASE(3) MB_CASE(2) default:
    switch (nb) {
      NB_CASE(1, 6) NB_CASE(1, 5) NB_CASE(1, 4) NB_CASE(1, 3) NB_CASE(1, 2)
      default: kblock(y, ys, xb, xs, w, K, kc, first, bias, accumulate, 1, 1); break;
    }
  }
}

static inline int pad32(int n) { return (n + 31) & ~31; }

static void mm_dot(float *y, const float *x, const uint16_t *w, const uint16_t *bias,
                   int M, int N, int K, int n0, int n1, int accumulate, void *scratch,
                   size_t scratch_bytes) {
  uint16_t *xb = scratch;
  int N_ = N;
  if (M <= STREAM_MAX_M && (size_t)M * (size_t)pad32(K) * 2 <= scratch_bytes) {
    /* Row-streaming: x in bf16 whole; each W row is read start to end. */
    size_t xs = (size_t)pad32(K);
    for (int m = 0; m < M; m++)
      to_bf16(xb + (size_t)m * xs, x + (size_t)m * K, K, (int)xs);
    for (int n = n0; n < n1; n += NR) {
      int nb = n1 - n < NR ? n1 - n : NR;
      if (n + NR < n1) /* the next panel's first lines */
        for (int j = 0; j < nb; j++)
          _mm_prefetch((const char *)(w + (size_t)(n + NR + j) * K), _MM_HINT_T0);
      for (int m = 0; m < M; m += MR) {
        int mb = M - m < MR ? M - m : MR;
        for (int kb = 0; kb < K; kb += KC)
          tile(y + (size_t)m * N_ + n, N_, xb + (size_t)m * xs + kb, xs,
               w + (size_t)n * K + kb, (size_t)K, K - kb < KC ? K - kb : KC, kb == 0,
               bias ? bias + n : NULL, accumulate, mb, nb);
      }
    }
    return;
  }
  /* Blocked: for each K block and each MC-row x block (bf16, in L2), sweep
   * the columns NR W rows at a time (in L1 across the x block's rows). */
  for (int kb = 0; kb < K; kb += KC) {
    int kc = K - kb < KC ? K - kb : KC;
    size_t xs = (size_t)pad32(kc);
    for (int mb0 = 0; mb0 < M; mb0 += MC) {
      int mc = M - mb0 < MC ? M - mb0 : MC;
      for (int m = 0; m < mc; m++)
        to_bf16(xb + (size_t)m * xs, x + (size_t)(mb0 + m) * K + kb, kc, (int)xs);
      for (int n = n0; n < n1; n += NR) {
        int nb = n1 - n < NR ? n1 - n : NR;
        for (int m = 0; m < mc; m += MR) {
          int mb = mc - m < MR ? mc - m : MR;
          tile(y + (size_t)(mb0 + m) * N_ + n, N_, xb + (size_t)m * xs, xs,
               w + (size_t)n * K + kb, (size_t)K, kc, kb == 0, bias ? bias + n : NULL,
               accumulate, mb, nb);
        }
      }
    }
  }
}

const sa__cpu_kern_t sa__cpu_kern_avx512bf16 = {
    .name = "avx512bf16",
    .mm_small = NULL,
    .mm_dot = mm_dot,
    .attn_scores = sa__cpu_attn_scores_avx512,
    .attn_values = sa__cpu_attn_values_avx512,
    .q8_to_f32 = sa__cpu_q8_to_f32_avx512,
    .bf16_to_f32 = sa__cpu_bf16_to_f32_avx512,
    .exp_sum = sa__cpu_exp_sum_avx512,
    .silu_mul = sa__cpu_silu_mul_avx512,
    .gelu = sa__cpu_gelu_avx512,
};
