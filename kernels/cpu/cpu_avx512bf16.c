/*
 * cpu_avx512bf16 — AVX512-BF16 matmul of the CPU backend (compiled with
 * -mavx512bf16; called only when the CPU has it).
 *
 * vdpbf16ps multiplies bf16 pairs exactly and accumulates in fp32, but it
 * needs the activation x in bf16 too, which alone would lose 16 bits of x.
 * This kernel keeps it exact: x = hi + mid + lo, each a bf16 (the three
 * parts cover x's 24-bit significand; only subnormal parts below ~2^-110
 * |x| are flushed), and issues three vdpbf16ps per 32 elements. W is used as
 * stored, with no widening. Measured on Zen 4 it is not faster than the
 * widening AVX-512F kernel (cpu_avx512.c), so it is selectable
 * (sa_cpu_set_isa "avx512bf16") but not the default. Other ops reuse the
 * AVX-512F kernels.
 */
#include "cpu_impl.h"

#include <immintrin.h>

static inline float bf16f(uint16_t h) {
  union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
  return v.f;
}

static inline __m512bh join(__m256bh a, __m256bh b) {
  return (__m512bh)_mm512_inserti64x4(
      _mm512_castsi256_si512((__m256i)a), (__m256i)b, 1);
}

/* Splits 32 floats (masked) into three bf16 vectors whose sum is exact. */
static inline void split(const float *p, __mmask32 mk, __m512bh out[3]) {
  __m512 v[2] = {_mm512_maskz_loadu_ps((__mmask16)mk, p),
                 _mm512_maskz_loadu_ps((__mmask16)(mk >> 16), p + 16)};
  __m256bh part[3][2];
  for (int h = 0; h < 2; h++) {
    __m512 r = v[h];
    for (int t = 0; t < 3; t++) {
      part[t][h] = _mm512_cvtneps_pbh(r);
      if (t < 2)
        r = _mm512_sub_ps(r, _mm512_cvtpbh_ps(part[t][h]));
    }
  }
  for (int t = 0; t < 3; t++)
    out[t] = join(part[t][0], part[t][1]);
}

static inline __attribute__((always_inline)) void
block(float *y, const float *x, const uint16_t *w, const uint16_t *bias,
      int N, int K, int m0, int n, int accumulate, const int NB,
      const int MB) {
  __m512 acc[4][4];
#pragma GCC unroll 4
  for (int i = 0; i < MB; i++)
#pragma GCC unroll 4
    for (int j = 0; j < NB; j++)
      acc[i][j] = _mm512_setzero_ps();
  for (int k = 0; k < K; k += 32) {
    __mmask32 mk = K - k >= 32 ? (__mmask32)0xffffffffu
                               : (__mmask32)((1u << (K - k)) - 1u);
    __m512bh wv[4];
#pragma GCC unroll 4
    for (int j = 0; j < NB; j++)
      wv[j] = (__m512bh)_mm512_maskz_loadu_epi16(mk, w + (size_t)(n + j) * K + k);
#pragma GCC unroll 4
    for (int i = 0; i < MB; i++) {
      __m512bh xs[3];
      split(x + (size_t)(m0 + i) * K + k, mk, xs);
#pragma GCC unroll 4
      for (int j = 0; j < NB; j++) {
        acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xs[0], wv[j]);
        acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xs[1], wv[j]);
        acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xs[2], wv[j]);
      }
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

#define MB_SWITCH(NB)                                                          \
  switch (mb) {                                                                \
  case 4: block(y, x, w, bias, N, K, m, n, accumulate, NB, 4); break;          \
  case 3: block(y, x, w, bias, N, K, m, n, accumulate, NB, 3); break;          \
  case 2: block(y, x, w, bias, N, K, m, n, accumulate, NB, 2); break;          \
  default: block(y, x, w, bias, N, K, m, n, accumulate, NB, 1); break;         \
  }

static void mm_small(float *y, const float *x, const uint16_t *w,
                     const uint16_t *bias, int M, int N, int K, int n0, int n1,
                     int accumulate) {
  int n = n0;
  for (; n + 4 <= n1; n += 4)
    for (int m = 0; m < M; m += 4) {
      int mb = M - m < 4 ? M - m : 4;
      MB_SWITCH(4)
    }
  for (; n < n1; n++)
    for (int m = 0; m < M; m += 4) {
      int mb = M - m < 4 ? M - m : 4;
      MB_SWITCH(1)
    }
}

const sa__cpu_kern_t sa__cpu_kern_avx512bf16 = {
    .name = "avx512bf16",
    .mm_small = mm_small,
    .dot = sa__cpu_dot_avx512,
    .scale_axpy = sa__cpu_scale_axpy_avx512,
    .bf16_to_f32 = sa__cpu_bf16_to_f32_avx512,
    .exp_sum = sa__cpu_exp_sum_avx512,
    .silu_mul = sa__cpu_silu_mul_avx512,
    .gelu = sa__cpu_gelu_avx512,
};
