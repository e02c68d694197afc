/*
 * quant_avx512vnni — the quantized matmul (Q8_0, Q4_0 weights; q8 rows of
 * x) with AVX-512 VNNI: the decode GEMV and small batches. Same bits as
 * sa__mmq_scalar (quant.c): the block dots are exact integers, and each
 * output adds its blocks in order with one fmaf per block.
 *
 * Vectorised over 16 output rows n at once, two blocks per step:
 *   - Q8_0: x's two blocks (64 bytes) as |x| (u8) and the mask of its
 *     negative bytes, once per step for all 16 rows; each row's 64 bytes
 *     negated where x is negative, vpdpbusd |x|·±w: 16 int32 lanes, 8 per
 *     block;
 *   - Q4_0: each row's 32 bytes as unsigned nibbles (low, then high), x
 *     permuted once per step to the same order, vpdpbusd nibble·x; the
 *     -8 of every nibble comes off the block sums as 8 · sum(x) (the
 *     row's block sums of x are made once per row of x, in scratch);
 *   - a transposing reduction turns the 16 rows' lanes into two vectors of
 *     16 block sums (block b and b + 1, rows in order);
 *   - s = fma(float(isum), xd[b] · wd[n, b], s) per block, in order.
 * The W rows are read once per row of x; each step gathers the 16 rows'
 * two fp16 scales as one dword each.
 */
#include "cpu_impl.h"
#include "kernels.h"

#include <immintrin.h>
#include <string.h>

#ifndef PF_AHEAD
#define PF_AHEAD 512 /* bytes of a W row prefetched ahead of the step */
#endif

/* Q8_0: row p's blocks b, b + 1 (b alone when `one`: the upper half is
 * zero), in element order. */
static inline __m512i load_q8(const uint8_t *p, int b, int one) {
  p += (size_t)b * SA_QK;
  return one ? _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)p))
             : _mm512_loadu_si512(p);
}

/* Q4_0: row p's blocks b, b + 1 as nibbles (0..15, unsigned) in the order
 * [b 0..15, b+1 0..15, b 16..31, b+1 16..31] (16-byte chunks): low
 * nibbles, then high nibbles. x is permuted to the same order once per
 * step (x_q4_order). */
static inline __m512i load_q4(const uint8_t *p, int b, int one) {
  p += (size_t)b * (SA_QK / 2);
  __m256i v = one ? _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)p))
                  : _mm256_loadu_si256((const __m256i *)p);
  const __m256i m = _mm256_set1_epi8(15);
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(v, m)),
                            _mm256_and_si256(_mm256_srli_epi16(v, 4), m), 1);
}

static inline __m512i x_q4_order(__m512i x) {
  return _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 4, 5, 2, 3, 6, 7), x);
}

/* 4 vectors of 4 chunks of 4 partial sums -> per chunk c the 4 totals
 * [P.c, Q.c, R.c, S.c]. */
static inline __m512i reduce4(__m512i P, __m512i Q, __m512i R, __m512i S) {
  __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(P, Q), _mm512_unpackhi_epi32(P, Q));
  __m512i t2 = _mm512_add_epi32(_mm512_unpacklo_epi32(R, S), _mm512_unpackhi_epi32(R, S));
  return _mm512_add_epi32(_mm512_unpacklo_epi64(t1, t2), _mm512_unpackhi_epi64(t1, t2));
}

/* One group of 16 rows (row pointers wr, scales' rows wdr) against every
 * row of x; wtype is a constant in each caller, so each format gets its own
 * loop. */
static inline __attribute__((always_inline)) void group(
    const int wtype, float *y, const int8_t *xq, const float *xd, const uint8_t *const *wr,
    const uint16_t *const *wdr, const uint16_t *bias, int M, int N, int K, int n, int rows,
    int accumulate, const __m512i idx0, const __m512i idx1, const int32_t *sx) {
  int KB = K / SA_QK;
  __mmask16 keep = (__mmask16)((1u << rows) - 1);
  /* offsets of the rows' scales from row 0's (in fp16 units) for gathers */
  int32_t off[16];
  for (int r = 0; r < 16; r++)
    off[r] = (int32_t)(wdr[r] - wdr[0]);
  const __m512i vo = _mm512_loadu_si512(off);
  for (int m = 0; m < M; m++) {
    const int8_t *xr = xq + (size_t)m * K;
    const float *dr = xd + (size_t)m * KB;
    const int32_t *sxr = sx + (size_t)m * KB;
    __m512 s = _mm512_setzero_ps();
    for (int b = 0; b < KB; b += 2) {
      int one = b + 1 == KB;
      const int8_t *xb = xr + (size_t)b * SA_QK;
      __m512i xv = one ? _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)xb))
                       : _mm512_loadu_si512(xb);
      __m512i p[8];
      if (m == 0) /* W comes from DRAM once: the 16 rows, PF_AHEAD bytes ahead */
        for (int r = 0; r < 16; r++)
          _mm_prefetch((const char *)wr[r] + (size_t)b * (wtype == SA_WQ_Q8_0 ? 32 : 16) +
                           PF_AHEAD,
                       _MM_HINT_T0);
      if (wtype == SA_WQ_Q8_0) { /* |x| times w with x's sign */
        __m512i xa = _mm512_abs_epi8(xv);
        __mmask64 neg = _mm512_movepi8_mask(xv);
#pragma GCC unroll 8
        for (int r = 0; r < 16; r += 2) {
          __m512i wa = load_q8(wr[r], b, one), wb = load_q8(wr[r + 1], b, one);
          wa = _mm512_mask_sub_epi8(wa, neg, _mm512_setzero_si512(), wa);
          wb = _mm512_mask_sub_epi8(wb, neg, _mm512_setzero_si512(), wb);
          __m512i da = _mm512_dpbusd_epi32(_mm512_setzero_si512(), xa, wa);
          __m512i db = _mm512_dpbusd_epi32(_mm512_setzero_si512(), xa, wb);
          /* [A.b, A.b+1, B.b, B.b+1], 4 partial sums each */
          p[r / 2] = _mm512_add_epi32(_mm512_shuffle_i32x4(da, db, _MM_SHUFFLE(2, 0, 2, 0)),
                                      _mm512_shuffle_i32x4(da, db, _MM_SHUFFLE(3, 1, 3, 1)));
        }
      } else { /* nibbles (unsigned) times x; the -8 comes off below */
        __m512i xp = x_q4_order(xv);
#pragma GCC unroll 8
        for (int r = 0; r < 16; r += 2) {
          __m512i da = _mm512_dpbusd_epi32(_mm512_setzero_si512(), load_q4(wr[r], b, one), xp);
          __m512i db =
              _mm512_dpbusd_epi32(_mm512_setzero_si512(), load_q4(wr[r + 1], b, one), xp);
          /* chunks [b, b+1, b, b+1] -> [A.b, A.b+1, B.b, B.b+1] */
          p[r / 2] = _mm512_add_epi32(_mm512_shuffle_i32x4(da, db, _MM_SHUFFLE(1, 0, 1, 0)),
                                      _mm512_shuffle_i32x4(da, db, _MM_SHUFFLE(3, 2, 3, 2)));
        }
      }
      __m512i u0 = reduce4(p[0], p[1], p[2], p[3]);
      __m512i u1 = reduce4(p[4], p[5], p[6], p[7]);
      __m512 w0, w1 = _mm512_setzero_ps();
      if (one && b > 0) { /* a gather of (b, b + 1) would read past the last row */
        __m512i g = _mm512_i32gather_epi32(vo, (const void *)(wdr[0] + b - 1), 2);
        w0 = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(g, 16)));
      } else if (one) { /* K = 32 */
        float t[16];
        for (int r = 0; r < 16; r++)
          t[r] = _cvtsh_ss(wdr[r][0]);
        w0 = _mm512_loadu_ps(t);
      } else {
        __m512i g = _mm512_i32gather_epi32(vo, (const void *)(wdr[0] + b), 2);
        w0 = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g));
        w1 = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(g, 16)));
      }
      __m512 c0 = _mm512_mul_ps(_mm512_set1_ps(dr[b]), w0);
      __m512i i0 = _mm512_permutex2var_epi32(u0, idx0, u1);
      __m512i i1 = _mm512_permutex2var_epi32(u0, idx1, u1);
      if (wtype == SA_WQ_Q4_0) { /* sum (nibble - 8) x = sum nibble x - 8 sum x */
        i0 = _mm512_sub_epi32(i0, _mm512_set1_epi32(8 * sxr[b]));
        i1 = _mm512_sub_epi32(i1, _mm512_set1_epi32(one ? 0 : 8 * sxr[b + 1]));
      }
      s = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i0), c0, s);
      if (!one) {
        __m512 c1 = _mm512_mul_ps(_mm512_set1_ps(dr[b + 1]), w1);
        s = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1), c1, s);
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

void sa__mmq_avx512vnni(float *y, const int8_t *xq, const float *xd, int wtype, const void *wq,
                        const uint16_t *wd, const uint16_t *bias, int M, int N, int K, int n0,
                        int n1, int accumulate, void *scratch, size_t scratch_bytes) {
  int KB = K / SA_QK;
  /* rows of x per pass: as many as scratch holds block sums for (Q4_0) */
  int mc = K ? (int)(scratch_bytes / ((size_t)KB * sizeof(int32_t))) : 0;
  if (K == 0 || mc < 1) {
    sa__mmq_scalar(y, xq, xd, wtype, wq, wd, bias, M, N, K, n0, n1, accumulate);
    return;
  }
  /* lanes of the two reduce4 results holding block b (idx0) and b + 1
   * (idx1) of rows 0..15 (see the header) */
  int i0[16], i1[16];
  for (int r = 0; r < 16; r++) {
    int rr = r & 7, k = rr >> 1, hi = r >= 8 ? 16 : 0;
    i0[r] = hi + ((rr & 1) ? 8 + k : k);
    i1[r] = hi + ((rr & 1) ? 12 + k : 4 + k);
  }
  const __m512i idx0 = _mm512_loadu_si512(i0), idx1 = _mm512_loadu_si512(i1);
  size_t row_bytes = sa_wq_bytes(wtype, 1, K);
  int32_t *sx = scratch;
  for (int m0 = 0; m0 < M; m0 += mc) {
    int mn = M - m0 < mc ? M - m0 : mc;
    const int8_t *xqc = xq + (size_t)m0 * K;
    const float *xdc = xd + (size_t)m0 * KB;
    float *yc = y + (size_t)m0 * N;
    if (wtype == SA_WQ_Q4_0)
      sa__q8_block_sums(sx, xqc, mn, K);
    for (int n = n0; n < n1; n += 16) {
      int rows = n1 - n < 16 ? n1 - n : 16;
      const uint8_t *wr[16];
      const uint16_t *wdr[16];
      for (int r = 0; r < 16; r++) { /* rows past the end repeat the last one */
        size_t row = (size_t)n + (size_t)(r < rows ? r : rows - 1);
        wr[r] = (const uint8_t *)wq + row * row_bytes;
        wdr[r] = wd + row * KB;
      }
      if (wtype == SA_WQ_Q8_0)
        group(SA_WQ_Q8_0, yc, xqc, xdc, wr, wdr, bias, mn, N, K, n, rows, accumulate, idx0, idx1,
              sx);
      else
        group(SA_WQ_Q4_0, yc, xqc, xdc, wr, wdr, bias, mn, N, K, n, rows, accumulate, idx0, idx1,
              sx);
    }
  }
}
