/*
 * quant_avx512vnni — the quantized matmul (Q8_0, Q4_0 weights; q8 rows of
 * x) with AVX-512 VNNI: the decode GEMV and small batches. Same bits as
 * sa__mmq_scalar (quant.c): the block dots are exact integers, and each
 * output adds its blocks in order with one fmaf per block.
 *
 * Vectorised over 16 output rows n at once, two blocks per step:
 *   - x's two blocks (64 bytes) as |x| (u8) and the mask of its negative
 *     bytes, once per step for all 16 rows;
 *   - each row's 64 bytes of W (Q4_0: 32 bytes widened to the same order),
 *     negated where x is negative, vpdpbusd |x|·±w: 16 int32 lanes, 8 per
 *     block;
 *   - a transposing reduction turns the 16 rows' lanes into two vectors of
 *     16 block sums (block b and b + 1, rows in order);
 *   - s = fma(float(isum), xd[b] · wd[n, b], s) per block, in order.
 * The W rows are read once per row of x; the group's scales are transposed
 * to fp32 [K/32][16] in scratch first.
 */
#include "cpu_impl.h"
#include "kernels.h"

#include <immintrin.h>
#include <string.h>

/* Row r's 64 bytes (blocks b, b + 1) as signed values in block order; only
 * block b when `one` (the upper half is then zero for Q8_0, -8 for Q4_0:
 * x's upper half is zero there, so it adds nothing). */
static inline __m512i load_w(int wtype, const void *wq, size_t n, int K, int b, int one) {
  if (wtype == SA_WQ_Q8_0) {
    const int8_t *p = (const int8_t *)wq + n * (size_t)K + (size_t)b * SA_QK;
    return one ? _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)p))
               : _mm512_loadu_si512(p);
  }
  const uint8_t *p = (const uint8_t *)wq + n * (size_t)(K / 2) + (size_t)b * (SA_QK / 2);
  __m512i v = one ? _mm512_zextsi128_si512(_mm_loadu_si128((const __m128i *)p))
                  : _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)p));
  /* [c0, c0, c1, c1] (16-byte chunks), low nibbles of the first copy of
   * each, high nibbles of the second: elements 0..15, 16..31 of each block */
  v = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3), v);
  v = _mm512_srlv_epi64(v, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
  v = _mm512_and_si512(v, _mm512_set1_epi8(15));
  return _mm512_sub_epi8(v, _mm512_set1_epi8(8));
}

/* 4 vectors of 4 chunks of 4 partial sums -> per chunk c the 4 totals
 * [P.c, Q.c, R.c, S.c]. */
static inline __m512i reduce4(__m512i P, __m512i Q, __m512i R, __m512i S) {
  __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(P, Q), _mm512_unpackhi_epi32(P, Q));
  __m512i t2 = _mm512_add_epi32(_mm512_unpacklo_epi32(R, S), _mm512_unpackhi_epi32(R, S));
  return _mm512_add_epi32(_mm512_unpacklo_epi64(t1, t2), _mm512_unpackhi_epi64(t1, t2));
}

void sa__mmq_avx512vnni(float *y, const int8_t *xq, const float *xd, int wtype, const void *wq,
                        const uint16_t *wd, const uint16_t *bias, int M, int N, int K, int n0,
                        int n1, int accumulate, void *scratch, size_t scratch_bytes) {
  int KB = K / SA_QK;
  if (K == 0 || (size_t)KB * 16 * sizeof(float) > scratch_bytes) {
    sa__mmq_scalar(y, xq, xd, wtype, wq, wd, bias, M, N, K, n0, n1, accumulate);
    return;
  }
  float *sc = scratch; /* [KB][16] */
  /* lanes of the two reduce4 results holding block b (idx0) and b + 1
   * (idx1) of rows 0..15 (see the header) */
  int i0[16], i1[16];
  for (int r = 0; r < 16; r++) {
    int rr = r & 7, k = rr >> 1, hi = r >= 8 ? 16 : 0;
    i0[r] = hi + ((rr & 1) ? 8 + k : k);
    i1[r] = hi + ((rr & 1) ? 12 + k : 4 + k);
  }
  const __m512i idx0 = _mm512_loadu_si512(i0), idx1 = _mm512_loadu_si512(i1);
  for (int n = n0; n < n1; n += 16) {
    int rows = n1 - n < 16 ? n1 - n : 16;
    __mmask16 keep = (__mmask16)((1u << rows) - 1);
    size_t row[16];
    for (int r = 0; r < 16; r++)
      row[r] = (size_t)n + (size_t)(r < rows ? r : rows - 1);
    for (int b = 0; b < KB; b++)
      for (int r = 0; r < 16; r++)
        sc[(size_t)b * 16 + r] = _cvtsh_ss(wd[row[r] * KB + b]);
    for (int m = 0; m < M; m++) {
      const int8_t *xr = xq + (size_t)m * K;
      const float *dr = xd + (size_t)m * KB;
      __m512 s = _mm512_setzero_ps();
      for (int b = 0; b < KB; b += 2) {
        int one = b + 1 == KB;
        const int8_t *xb = xr + (size_t)b * SA_QK;
        __m512i xv = one ? _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)xb))
                         : _mm512_loadu_si512(xb);
        __m512i xa = _mm512_abs_epi8(xv);
        __mmask64 neg = _mm512_movepi8_mask(xv);
        __m512i p[8];
        for (int r = 0; r < 16; r += 2) {
          __m512i wa = load_w(wtype, wq, row[r], K, b, one);
          __m512i wb = load_w(wtype, wq, row[r + 1], K, b, one);
          wa = _mm512_mask_sub_epi8(wa, neg, _mm512_setzero_si512(), wa);
          wb = _mm512_mask_sub_epi8(wb, neg, _mm512_setzero_si512(), wb);
          __m512i da = _mm512_dpbusd_epi32(_mm512_setzero_si512(), xa, wa);
          __m512i db = _mm512_dpbusd_epi32(_mm512_setzero_si512(), xa, wb);
          /* [A.b, A.b+1, B.b, B.b+1], 4 partial sums each */
          p[r / 2] = _mm512_add_epi32(_mm512_shuffle_i32x4(da, db, _MM_SHUFFLE(2, 0, 2, 0)),
                                      _mm512_shuffle_i32x4(da, db, _MM_SHUFFLE(3, 1, 3, 1)));
        }
        __m512i u0 = reduce4(p[0], p[1], p[2], p[3]);
        __m512i u1 = reduce4(p[4], p[5], p[6], p[7]);
        __m512 c0 = _mm512_mul_ps(_mm512_set1_ps(dr[b]), _mm512_loadu_ps(sc + (size_t)b * 16));
        s = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_permutex2var_epi32(u0, idx0, u1)), c0, s);
        if (!one) {
          __m512 c1 = _mm512_mul_ps(_mm512_set1_ps(dr[b + 1]),
                                    _mm512_loadu_ps(sc + (size_t)(b + 1) * 16));
          s = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_permutex2var_epi32(u0, idx1, u1)), c1,
                              s);
        }
      }
      float *yo = y + (size_t)m * N + n;
      __m512 init = accumulate ? _mm512_maskz_loadu_ps(keep, yo) : _mm512_setzero_ps();
      if (bias) {
        __m256i bb = _mm256_maskz_loadu_epi16(keep, bias + n);
        init = _mm512_add_ps(init, _mm512_castsi512_ps(_mm512_slli_epi32(
                                       _mm512_cvtepu16_epi32(bb), 16)));
      }
      _mm512_mask_storeu_ps(yo, keep, _mm512_add_ps(init, s));
    }
  }
}
