/*
 * quant_avx2 — the quantized matmul (Q8_0, Q4_0 weights; q8 rows of x)
 * with AVX2 for CPUs without AVX-512 VNNI. Same bits as sa__mmq_scalar
 * (quant.c): exact integer block dots, then one fmaf per block in order.
 *
 * Vectorised over 8 output rows, one block per step: |x| (u8) times w with
 * x's sign (vpsignb) by vpmaddubsw (pairs; |x|, |w| <= 127 cannot saturate
 * int16) and vpmaddwd into 8 int32 lanes per row; a vphaddd tree turns the
 * 8 rows' lanes into their 8 block sums in row order.
 */
#include "cpu_impl.h"
#include "kernels.h"
#include "tensor.h"

#include <immintrin.h>

static inline __m256i load_w(int wtype, const void *wq, size_t n, int K, int b) {
  if (wtype == SA_WQ_Q8_0)
    return _mm256_loadu_si256(
        (const __m256i *)((const int8_t *)wq + n * (size_t)K + (size_t)b * SA_QK));
  __m128i v = _mm_loadu_si128(
      (const __m128i *)((const uint8_t *)wq + n * (size_t)(K / 2) + (size_t)b * (SA_QK / 2)));
  __m128i m = _mm_set1_epi8(15);
  __m256i w = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
  return _mm256_sub_epi8(w, _mm256_set1_epi8(8));
}

void sa__mmq_avx2(float *y, const int8_t *xq, const float *xd, int wtype, const void *wq,
                  const uint16_t *wd, const uint16_t *bias, int M, int N, int K, int n0, int n1,
                  int accumulate, void *scratch, size_t scratch_bytes) {
  int KB = K / SA_QK;
  if (K == 0 || (size_t)KB * 8 * sizeof(float) > scratch_bytes) {
    sa__mmq_scalar(y, xq, xd, wtype, wq, wd, bias, M, N, K, n0, n1, accumulate);
    return;
  }
  float *sc = scratch; /* [KB][8] */
  const __m256i ones = _mm256_set1_epi16(1);
  for (int n = n0; n < n1; n += 8) {
    int rows = n1 - n < 8 ? n1 - n : 8;
    size_t row[8];
    for (int r = 0; r < 8; r++)
      row[r] = (size_t)n + (size_t)(r < rows ? r : rows - 1);
    for (int b = 0; b < KB; b++)
      for (int r = 0; r < 8; r++)
        sc[(size_t)b * 8 + r] = _cvtsh_ss(wd[row[r] * KB + b]);
    for (int m = 0; m < M; m++) {
      const int8_t *xr = xq + (size_t)m * K;
      const float *dr = xd + (size_t)m * KB;
      __m256 s = _mm256_setzero_ps();
      for (int b = 0; b < KB; b++) {
        __m256i xv = _mm256_loadu_si256((const __m256i *)(xr + (size_t)b * SA_QK));
        __m256i xa = _mm256_abs_epi8(xv);
        __m256i p[8];
        for (int r = 0; r < 8; r++) {
          __m256i w = _mm256_sign_epi8(load_w(wtype, wq, row[r], K, b), xv);
          p[r] = _mm256_madd_epi16(_mm256_maddubs_epi16(xa, w), ones);
        }
        __m256i h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
        __m256i h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
        __m256i is = _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20),
                                      _mm256_permute2x128_si256(h0, h1, 0x31));
        __m256 c = _mm256_mul_ps(_mm256_set1_ps(dr[b]), _mm256_loadu_ps(sc + (size_t)b * 8));
        s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), c, s);
      }
      float out[8], *yo = y + (size_t)m * N + n;
      _mm256_storeu_ps(out, s);
      for (int r = 0; r < rows; r++) {
        float init = accumulate ? yo[r] : 0.0f;
        if (bias)
          init += sa_bf16_to_f32(bias[n + r]);
        yo[r] = init + out[r];
      }
    }
  }
}
