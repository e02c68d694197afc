/*
 * quant_avx2 — the quantized matmul (Q8_0, Q4_0 weights; q8 rows of x)
 * with AVX2 for CPUs without AVX-512 VNNI. Same bits as sa__mmq_scalar
 * (quant.c): the block dots are exact integers, and each output adds its
 * blocks in order with one fmaf per block.
 *
 * Vectorised over 8 output rows n at once, one block per step:
 *   - Q8_0: x's block as |x| (u8) once per step for all 8 rows; each row's
 *     32 bytes take x's sign (vpsignb), and vpmaddubsw |x|·±w then
 *     vpmaddwd by ones leave 8 int32 partial sums per row (|x| <= 127 and
 *     |w| <= 127, which the loader checks, cannot saturate a pair in int16);
 *     a vphaddd tree turns the 8 rows' lanes into their 8 block sums in row
 *     order;
 *   - Q4_0: rows j and j + 4 share a vector (16 bytes each); its low
 *     nibbles times x[0..15] and high nibbles times x[16..31] (x's halves
 *     broadcast) by vpmaddubsw (pairs of 15 · 127: no saturation) add up
 *     in 16-bit lanes, two vphaddw levels sum 16 products a lane (at most
 *     16 · 15 · 127 = 30480: exact), and vpmaddwd by ones the block's 32
 *     into int32, rows in order; the -8 of every nibble comes off the
 *     block sums as 8 · sum(x) (made once per row of x);
 *   - s = fma(float(isum), xd[b] · wd[n, b], s) per block, in order; the 8
 *     rows' fp16 scales are turned into fp32 columns [b][8] once per group
 *     of rows (an 8 x 8 transpose of 16-bit lanes, 8 blocks at a time).
 *   - the R8 layouts (what the CPU backend's pack_q makes of Q8_0 and Q4_0
 *     for this path; kernels.h) hold 4 bytes of every row in the row's own
 *     32-bit lane of each vector of a step, and the 8 rows' scales as one
 *     fp16 column, so x's 4 matching bytes broadcast to every lane and
 *     the lanes end as the 8 rows' block sums in row order, with no
 *     inserts, no hadd tree and no transpose of scales. Q4_0_R8: 4 vectors,
 *     whose low and high nibbles meet x[4k..4k+3] and x[16+4k..]; the 8
 *     vpmaddubsw add up in 16-bit lanes (8 · 2 · 15 · 127 = 30480: exact),
 *     then one vpmaddwd by ones. Twice the rate of the row-major step from
 *     L1/L2 on a Zen 3. Q8_0_R8: 8 vectors, each |x| · (w with x's sign)
 *     by vpmaddubsw and vpmaddwd, added in int32.
 * The format is a constant in each instance of group(), so the row loop
 * unrolls with the 8 sums in registers. The W rows are read once per row
 * of x; on the first, each step prefetches the next group's rows (one
 * contiguous stream, as much a step as the step reads: cpu_avx2.c's GEMV
 * does the same; long Q8_0 rows are prefetched row by row, below) and a
 * line of its scales every 4 blocks.
 */
#include "cpu_impl.h"
#include "kernels.h"
#include "tensor.h"

#include <immintrin.h>
#include <string.h>

/* Q8_0 rows of ROW_PF_MIN bytes or more (the down projection's 4,864) are
 * prefetched row by row, ROW_PF bytes ahead in each, not as the next group's
 * one stream: that stream runs 8 rows (39 KB) ahead, past L1. Measured on a
 * Zen 3 (AVX2), 896 x 4864, interleaved in one process, medians of 51:
 * 11.3 -> 15.5 GB/s on one thread, 13.8 -> 15.4 on two. Rows of 896 bytes
 * (gate|up) lost a third that way, and Q4_0's rows of 2,432 bytes gained
 * nothing (10-20 % slower on one thread): both keep the group stream. */
#define ROW_PF 256
#define ROW_PF_MIN 4096

/* Row m's outputs n..n+rows-1 from the 8 sums s: y = ((y if accumulate
 * else 0) + bias) + s, as kernels.h fixes the order. */
static inline void store_rows(float *yo, __m256 s, const uint16_t *bias, int n, int rows,
                              int accumulate) {
  float out[8];
  _mm256_storeu_ps(out, s);
  for (int r = 0; r < rows; r++) {
    float init = accumulate ? yo[r] : 0.0f;
    if (bias)
      init += sa_bf16_to_f32(bias[n + r]);
    yo[r] = init + out[r];
  }
}

/* The 8 block sums of rows 0..7 (p[r]: row r's 8 int32 partial sums). */
static inline __m256i reduce8(const __m256i *p) {
  __m256i h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
  __m256i h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
  return _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20),
                          _mm256_permute2x128_si256(h0, h1, 0x31));
}

/* sc[b][r] = float(wdr[r][b]) for the blocks [0, KB): 8 blocks at a time by
 * a transpose of the rows' 8 fp16 scales, then 4 by the same transpose of
 * 8-byte loads (rows of 896 end in 28 = 3 x 8 + 4 blocks: 2-5 % of a GEMV
 * on a Zen 3 against converting those 4 one by one), the rest one by one. */
static void scales8(float *sc, const uint16_t *const *wdr, int KB) {
  int b = 0;
  for (; b + 8 <= KB; b += 8) {
    __m128i r[8], a[8], c[8];
    for (int i = 0; i < 8; i++)
      r[i] = _mm_loadu_si128((const __m128i *)(wdr[i] + b));
    for (int i = 0; i < 4; i++) { /* a[2i]: rows 2i, 2i+1 of blocks 0..3; a[2i+1]: 4..7 */
      a[2 * i] = _mm_unpacklo_epi16(r[2 * i], r[2 * i + 1]);
      a[2 * i + 1] = _mm_unpackhi_epi16(r[2 * i], r[2 * i + 1]);
    }
    for (int h = 0; h < 2; h++) { /* rows 4h..4h+3: c[4h + j] holds blocks 2j, 2j+1 */
      c[4 * h + 0] = _mm_unpacklo_epi32(a[4 * h + 0], a[4 * h + 2]);
      c[4 * h + 1] = _mm_unpackhi_epi32(a[4 * h + 0], a[4 * h + 2]);
      c[4 * h + 2] = _mm_unpacklo_epi32(a[4 * h + 1], a[4 * h + 3]);
      c[4 * h + 3] = _mm_unpackhi_epi32(a[4 * h + 1], a[4 * h + 3]);
    }
    for (int j = 0; j < 4; j++) {
      _mm256_storeu_ps(sc + (size_t)(b + 2 * j) * 8,
                       _mm256_cvtph_ps(_mm_unpacklo_epi64(c[j], c[4 + j])));
      _mm256_storeu_ps(sc + (size_t)(b + 2 * j + 1) * 8,
                       _mm256_cvtph_ps(_mm_unpackhi_epi64(c[j], c[4 + j])));
    }
  }
  if (b + 4 <= KB) { /* 4 blocks: each row's 8 bytes, the same transpose */
    __m128i r[8], a[8], c[8];
    for (int i = 0; i < 8; i++)
      r[i] = _mm_loadl_epi64((const __m128i *)(wdr[i] + b));
    for (int i = 0; i < 4; i++)
      a[2 * i] = _mm_unpacklo_epi16(r[2 * i], r[2 * i + 1]);
    for (int h = 0; h < 2; h++) {
      c[4 * h + 0] = _mm_unpacklo_epi32(a[4 * h + 0], a[4 * h + 2]);
      c[4 * h + 1] = _mm_unpackhi_epi32(a[4 * h + 0], a[4 * h + 2]);
    }
    for (int j = 0; j < 2; j++) {
      _mm256_storeu_ps(sc + (size_t)(b + 2 * j) * 8,
                       _mm256_cvtph_ps(_mm_unpacklo_epi64(c[j], c[4 + j])));
      _mm256_storeu_ps(sc + (size_t)(b + 2 * j + 1) * 8,
                       _mm256_cvtph_ps(_mm_unpackhi_epi64(c[j], c[4 + j])));
    }
    b += 4;
  }
  for (; b < KB; b++)
    for (int r = 0; r < 8; r++)
      sc[(size_t)b * 8 + r] = _cvtsh_ss(wdr[r][b]);
}

void sa__q8_block_sums(int32_t *sx, const int8_t *xq, int M, int K) {
  const __m256i flip = _mm256_set1_epi8((char)0x80);
  for (size_t i = 0; i < (size_t)M * (K / SA_QK); i++) {
    /* sum of (x + 128) by 8-byte groups, less 32 * 128 */
    __m256i v = _mm256_sad_epu8(
        _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(xq + i * SA_QK)), flip),
        _mm256_setzero_si256());
    __m128i t = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    t = _mm_add_epi64(t, _mm_unpackhi_epi64(t, t));
    sx[i] = (int32_t)_mm_cvtsi128_si32(t) - 32 * 128;
  }
}

/* One group of 8 rows (row pointers wr, their scales sc [KB][8]) against
 * every row of x; wtype is a constant in each caller. */
static inline __attribute__((always_inline)) void group(
    const int wtype, float *y, const int8_t *xq, const float *xd, const uint8_t *const *wr,
    const float *sc, const uint16_t *bias, int M, int N, int K, int n, int rows,
    int accumulate, const int32_t *sx, const char *pf, const char *pfd) {
  int KB = K / SA_QK;
  const size_t bb = wtype == SA_WQ_Q8_0 ? SA_QK : SA_QK / 2; /* a block's bytes */
  const size_t rb = (size_t)KB * bb;                           /* a row's */
  const int row_pf = wtype == SA_WQ_Q8_0 && rb >= ROW_PF_MIN;
  const __m256i ones = _mm256_set1_epi16(1), nib = _mm256_set1_epi8(15);
  for (int m = 0; m < M; m++) {
    const int8_t *xr = xq + (size_t)m * K;
    const float *dr = xd + (size_t)m * KB;
    __m256 s = _mm256_setzero_ps();
    for (int b = 0; b < KB; b++) {
      const int8_t *xb = xr + (size_t)b * SA_QK;
      __m256i is;
      if (m == 0) {
        if (row_pf) { /* each row's line ROW_PF bytes on, then the next group's */
          size_t p = (size_t)b * bb + ROW_PF;
          if (p % 64 < bb)
            for (int r = 0; r < 8; r++)
              _mm_prefetch((const char *)(p < rb ? wr[r] + p : wr[r] + 8 * rb + (p - rb)),
                           _MM_HINT_T0);
        } else { /* the next group's 8 rows (8 * bb bytes a step) */
          for (size_t o = 0; o < 8 * bb; o += 64)
            _mm_prefetch(pf + (size_t)b * 8 * bb + o, _MM_HINT_T0);
        }
        if (b % 4 == 0) /* and its scales */
          _mm_prefetch(pfd + (size_t)b * 16, _MM_HINT_T0);
      }
      if (wtype == SA_WQ_Q8_0) {
        __m256i xv = _mm256_loadu_si256((const __m256i *)xb), xa = _mm256_abs_epi8(xv);
        __m256i p[8];
#pragma GCC unroll 8
        for (int r = 0; r < 8; r++) {
          __m256i w = _mm256_loadu_si256((const __m256i *)(wr[r] + (size_t)b * bb));
          p[r] = _mm256_madd_epi16(_mm256_maddubs_epi16(xa, _mm256_sign_epi8(w, xv)), ones);
        }
        is = reduce8(p);
      } else { /* rows j and j + 4 in one vector's halves */
        __m256i xlo = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)xb));
        __m256i xhi = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(xb + 16)));
        __m256i v[4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
          __m256i w = _mm256_inserti128_si256(
              _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(wr[j] + (size_t)b * bb))),
              _mm_loadu_si128((const __m128i *)(wr[j + 4] + (size_t)b * bb)), 1);
          /* 16-bit lanes of 4 products each (<= 4 * 15 * 127) */
          v[j] = _mm256_add_epi16(
              _mm256_maddubs_epi16(_mm256_and_si256(w, nib), xlo),
              _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w, 4), nib), xhi));
        }
        /* 8, then 16 products a lane (<= 30480: exact in int16), then the
         * block's 32 in int32: [rows 0..3 | rows 4..7] */
        is = _mm256_madd_epi16(_mm256_hadd_epi16(_mm256_hadd_epi16(v[0], v[1]),
                                                 _mm256_hadd_epi16(v[2], v[3])),
                               ones);
      }
      if (wtype == SA_WQ_Q4_0) /* sum (nibble - 8) x = sum nibble x - 8 sum x */
        is = _mm256_sub_epi32(is, _mm256_set1_epi32(8 * sx[(size_t)m * KB + b]));
      __m256 c = _mm256_mul_ps(_mm256_set1_ps(dr[b]), _mm256_loadu_ps(sc + (size_t)b * 8));
      s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), c, s);
    }
    store_rows(y + (size_t)m * N + n, s, bias, n, rows, accumulate);
  }
}

/* Groups [g0, g1) of an R8 weight against every row of x (see the top);
 * wtype is a constant in each caller. */
static inline __attribute__((always_inline)) void groups_r8(
    const int wtype, float *y, const int8_t *xq, const float *xd, const uint8_t *wq,
    const uint16_t *wd, const uint16_t *bias, int M, int N, int K, int g0, int g1,
    int accumulate, const int32_t *sx) {
  const int KB = K / SA_QK;
  const size_t sb = wtype == SA_WQ_Q8_0_R8 ? 256 : 128; /* a step's bytes */
  const size_t gb = (size_t)KB * sb; /* a group's: the next group is gb on */
  const __m256i ones = _mm256_set1_epi16(1), nib = _mm256_set1_epi8(15);
  for (int g = g0; g < g1; g++) {
    const uint8_t *wg = wq + (size_t)g * gb;
    const uint16_t *dg = wd + (size_t)g * KB * 8;
    for (int m = 0; m < M; m++) {
      const int8_t *xr = xq + (size_t)m * K;
      const float *dr = xd + (size_t)m * KB;
      __m256 s = _mm256_setzero_ps();
      for (int b = 0; b < KB; b++) {
        const uint8_t *w = wg + (size_t)b * sb;
        const int8_t *xb = xr + (size_t)b * SA_QK;
        if (m == 0) { /* the next group's step, and a line of its scales every 4 */
          for (size_t o = 0; o < sb; o += 64)
            _mm_prefetch((const char *)w + gb + o, _MM_HINT_T0);
          if (b % 4 == 0)
            _mm_prefetch((const char *)(dg + (size_t)KB * 8 + (size_t)b * 8), _MM_HINT_T0);
        }
        __m256i is;
        if (wtype == SA_WQ_Q8_0_R8) { /* |x| · (w with x's sign), 4 bytes a lane */
          is = _mm256_setzero_si256();
#pragma GCC unroll 8
          for (int k = 0; k < 8; k++) {
            int32_t x4;
            memcpy(&x4, xb + 4 * k, 4);
            __m256i xv = _mm256_set1_epi32(x4);
            __m256i wv = _mm256_loadu_si256((const __m256i *)(w + 32 * k));
            is = _mm256_add_epi32(
                is, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(xv),
                                                           _mm256_sign_epi8(wv, xv)),
                                      ones));
          }
        } else { /* nibbles · x in 16-bit lanes, then -8 · sum(x) */
          __m256i acc = _mm256_setzero_si256();
#pragma GCC unroll 4
          for (int k = 0; k < 4; k++) {
            __m256i wv = _mm256_loadu_si256((const __m256i *)(w + 32 * k));
            int32_t xl, xh;
            memcpy(&xl, xb + 4 * k, 4);
            memcpy(&xh, xb + 16 + 4 * k, 4);
            acc = _mm256_add_epi16(
                acc, _mm256_add_epi16(
                         _mm256_maddubs_epi16(_mm256_and_si256(wv, nib), _mm256_set1_epi32(xl)),
                         _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(wv, 4), nib),
                                              _mm256_set1_epi32(xh))));
          }
          is = _mm256_sub_epi32(_mm256_madd_epi16(acc, ones),
                                _mm256_set1_epi32(8 * sx[(size_t)m * KB + b]));
        }
        __m128i d8 = _mm_loadu_si128((const __m128i *)(dg + (size_t)b * 8));
        __m256 c = _mm256_mul_ps(_mm256_set1_ps(dr[b]), _mm256_cvtph_ps(d8));
        s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), c, s);
      }
      store_rows(y + (size_t)m * N + (size_t)g * 8, s, bias, g * 8, 8, accumulate);
    }
  }
}

void sa__mmq_avx2(float *y, const int8_t *xq, const float *xd, int wtype, const void *wq,
                  const uint16_t *wd, const uint16_t *bias, int M, int N, int K, int n0, int n1,
                  int accumulate, void *scratch, size_t scratch_bytes) {
  int KB = K / SA_QK;
  size_t sc_bytes = (size_t)KB * 8 * sizeof(float);
  /* rows of x per pass: as many as scratch holds block sums for (Q4_0) */
  int mc = K && sc_bytes < scratch_bytes
               ? (int)((scratch_bytes - sc_bytes) / ((size_t)KB * sizeof(int32_t)))
               : 0;
  if (K == 0 || mc < 1) {
    sa__mmq_scalar(y, xq, xd, wtype, wq, wd, bias, M, N, K, n0, n1, accumulate);
    return;
  }
  float *sc = scratch; /* [KB][8] */
  int32_t *sx = (int32_t *)((char *)scratch + sc_bytes);
  size_t row_bytes = sa_wq_bytes(wtype, 1, K);
  for (int m0 = 0; m0 < M; m0 += mc) {
    int mn = M - m0 < mc ? M - m0 : mc;
    const int8_t *xqc = xq + (size_t)m0 * K;
    const float *xdc = xd + (size_t)m0 * KB;
    float *yc = y + (size_t)m0 * N;
    if (wtype == SA_WQ_Q4_0 || wtype == SA_WQ_Q4_0_R8)
      sa__q8_block_sums(sx, xqc, mn, K);
    /* n0 and n1 fall on groups of 8 rows: the caller's ranges are of 16 */
    if (wtype == SA_WQ_Q8_0_R8) {
      groups_r8(SA_WQ_Q8_0_R8, yc, xqc, xdc, wq, wd, bias, mn, N, K, n0 / 8, n1 / 8,
                accumulate, sx);
      continue;
    }
    if (wtype == SA_WQ_Q4_0_R8) {
      groups_r8(SA_WQ_Q4_0_R8, yc, xqc, xdc, wq, wd, bias, mn, N, K, n0 / 8, n1 / 8,
                accumulate, sx);
      continue;
    }
    for (int n = n0; n < n1; n += 8) {
      int rows = n1 - n < 8 ? n1 - n : 8;
      const uint8_t *wr[8];
      const uint16_t *wdr[8];
      for (int r = 0; r < 8; r++) { /* rows past the end repeat the last one */
        size_t row = (size_t)n + (size_t)(r < rows ? r : rows - 1);
        wr[r] = (const uint8_t *)wq + row * row_bytes;
        wdr[r] = wd + row * KB;
      }
      scales8(sc, wdr, KB);
      /* the next group's rows and scales (a prefetch past the end is dropped) */
      const char *pf = (const char *)wq + (size_t)(n + 8) * row_bytes;
      const char *pfd = (const char *)(wd + (size_t)(n + 8) * KB);
      if (wtype == SA_WQ_Q8_0)
        group(SA_WQ_Q8_0, yc, xqc, xdc, wr, sc, bias, mn, N, K, n, rows, accumulate, sx, pf,
              pfd);
      else
        group(SA_WQ_Q4_0, yc, xqc, xdc, wr, sc, bias, mn, N, K, n, rows, accumulate, sx, pf,
              pfd);
    }
  }
}
