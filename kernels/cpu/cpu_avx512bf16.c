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

/* A K block's sum h into an output: on the block `first`, y = (accumulate ?
 * y : 0) + (bias ? *bias : 0) + h, later y += h. */
static inline void put_sum(float *yo, float h, int first, const uint16_t *bias,
                           int accumulate) {
  if (first) {
    float s = accumulate ? *yo : 0.0f;
    if (bias)
      s += bf16f(*bias);
    *yo = s + h;
  } else {
    *yo += h;
  }
}

/* The first n <= 32 of src rounded to bf16 (nearest even), zeros after. */
static inline __m512i bf16x32(const float *src, int n) {
  __mmask32 mk = n >= 32 ? 0xffffffffu : (__mmask32)((1u << n) - 1u);
  __m512 lo = _mm512_maskz_loadu_ps((__mmask16)mk, src);
  __m512 hi = _mm512_maskz_loadu_ps((__mmask16)(mk >> 16), src + 16);
  return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

/* dst[0, n) = bf16(src[0, n)) (round to nearest even), then zeros up to
 * npad (a multiple of 32). */
static void to_bf16(uint16_t *dst, const float *src, int n, int npad) {
  int i = 0;
  for (; i < n; i += 32)
    _mm512_storeu_si512(dst + i, bf16x32(src + i, n - i));
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
    for (int j = 0; j < NB; j++)
      put_sum(y + (size_t)i * ys + j, hsum16(acc[i][j]), first, bias ? bias + j : NULL,
              accumulate);
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

/* ------------------------------------------------------------------------ */
/* The same bits on fp32 FMA (the avx512bf16-fma table)                      */
/*
 * vdpbf16ps computes, per lane, acc = fma(x_even, w_even, fma(x_odd, w_odd,
 * acc)) exactly: the odd pair first, each step rounded to nearest even,
 * denormal inputs read as zero and denormal results flushed (checked
 * against the instruction on 32 M random lanes, NaNs and denormals
 * included). The bf16 values widened to fp32 are exact, so two FMAs under
 * MXCSR FTZ|DAZ give the bits of one vdpbf16ps. Where vdpbf16ps issues
 * half as often as an FMA (Sapphire Rapids: one per two cycles on one port,
 * against two FMAs a cycle), this runs the same summation at up to twice
 * the rate. Only the register loops run under FTZ|DAZ; the horizontal sums
 * and the writes into y run under the caller's MXCSR, as in the loops above.
 *
 * Layout: a 32-element chunk of x or W becomes 32 floats, the 16 odd
 * elements (lane l holds k = 2l + 1) then the 16 even ones. x rows are split
 * once per call (streaming loop) or per MC-row block (blocked loop); W rows
 * are split on the fly in the streaming loop and packed per FC-row panel in
 * the blocked loop, which then runs SUB chunks at a time so the panel's
 * sub-block stays in L1 while the x block streams from L2 (the tile's
 * accumulators are kept in scratch between sub-blocks: same operations,
 * same order).
 *
 * Register block: FR = 4 x rows by FC = 5 W rows, 20 accumulators, 8 x and
 * 2 W registers; per chunk 8 x loads and 2 W loads per column for 40 FMAs.
 * Measured on one Sapphire Rapids core with all operands in L1, this block
 * runs at ~150 GFLOP/s (2 x 11 and 3 x 7 were slower); in the GEMM, x
 * streaming from L2 costs about a third of that.
 */
#define FR 4
#define FC 5
#define SUB 32 /* chunks per sub-block: a panel's 5 x 1024 floats (20 KiB) */
#define MCF 64 /* x rows per blocked-loop block: 64 x KC floats (512 KiB) */
#define FTZ_DAZ 0x8040u

/* One chunk (32 bf16 as 16 dwords) as fp32: odd elements, then even. */
static inline void split_bf16(__m512i v, __m512 *odd, __m512 *even) {
  *odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u)));
  *even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

/* x rows [0, mc) (stride K, columns [k0, k0 + kc)) rounded to bf16 as
 * to_bf16 does and split, row m at xf + m * xs; columns past kc are zero up
 * to the chunk's end. */
static void split_x(float *xf, size_t xs, const float *x, size_t K, int k0, int mc, int kc) {
  for (int m = 0; m < mc; m++) {
    const float *src = x + (size_t)m * K + k0;
    float *d = xf + (size_t)m * xs;
    for (int k = 0; k < kc; k += 32, d += 32) {
      __m512 o, e;
      split_bf16(bf16x32(src + k, kc - k), &o, &e);
      _mm512_store_ps(d, o);
      _mm512_store_ps(d + 16, e);
    }
  }
}

/* Chunk c of a W row: from the packed panel (stride in floats), or split on
 * the fly from the bf16 row (masked to `tail` elements in a ragged last
 * chunk). */
static inline __attribute__((always_inline)) void
w_chunk(const void *w, size_t off, int c, int tail, __m512 *o, __m512 *e, const int RAW) {
  if (RAW) {
    const uint16_t *p = (const uint16_t *)w + off + (size_t)c * 32;
    __m512i v = tail < 32 ? _mm512_maskz_loadu_epi16((__mmask32)((1u << tail) - 1u), p)
                          : _mm512_loadu_si512(p);
    split_bf16(v, o, e);
  } else {
    const float *p = (const float *)w + off + (size_t)c * 32;
    *o = _mm512_load_ps(p);
    *e = _mm512_load_ps(p + 16);
  }
}

/* a[i][j] += chunks [0, nc) of x row i (xf + i * xs) and W row j (w + j *
 * ws), two FMAs per chunk, odd half first; the last chunk of a raw W row
 * holds `tail` elements. */
static inline __attribute__((always_inline)) void
fma_chunks(__m512 a[FR][FC], const float *xf, size_t xs, const void *w, size_t ws, int nc,
           int tail, const int MB, const int NB, const int RAW) {
  for (int c = 0; c < nc; c++) {
    int t = c == nc - 1 ? tail : 32;
    __m512 xo[FR], xe[FR];
#pragma GCC unroll 4
    for (int i = 0; i < MB; i++) {
      xo[i] = _mm512_load_ps(xf + (size_t)i * xs + (size_t)c * 32);
      xe[i] = _mm512_load_ps(xf + (size_t)i * xs + (size_t)c * 32 + 16);
    }
#pragma GCC unroll 5
    for (int j = 0; j < NB; j++) {
      __m512 wo, we;
      w_chunk(w, (size_t)j * ws, c, t, &wo, &we, RAW);
#pragma GCC unroll 4
      for (int i = 0; i < MB; i++)
        a[i][j] = _mm512_fmadd_ps(xo[i], wo, a[i][j]);
#pragma GCC unroll 4
      for (int i = 0; i < MB; i++)
        a[i][j] = _mm512_fmadd_ps(xe[i], we, a[i][j]);
    }
  }
}

/* Streaming: one K block of an MB x NB register block, W rows raw (stride
 * K), sums put into y. */
static inline __attribute__((always_inline)) void
fstream(float *y, int ys, const float *xf, size_t xs, const uint16_t *w, size_t K, int kc,
        int first, const uint16_t *bias, int accumulate, const int MB, const int NB) {
  __m512 a[FR][FC];
#pragma GCC unroll 4
  for (int i = 0; i < MB; i++)
#pragma GCC unroll 5
    for (int j = 0; j < NB; j++)
      a[i][j] = _mm512_setzero_ps();
  unsigned csr = _mm_getcsr();
  _mm_setcsr(csr | FTZ_DAZ);
  fma_chunks(a, xf, xs, w, K, (kc + 31) / 32, kc % 32 ? kc % 32 : 32, MB, NB, 1);
  _mm_setcsr(csr);
  for (int i = 0; i < MB; i++)
    for (int j = 0; j < NB; j++)
      put_sum(y + (size_t)i * ys + j, hsum16(a[i][j]), first, bias ? bias + j : NULL,
              accumulate);
}

/* Blocked: nc chunks of a register block from the packed panel, the
 * accumulators kept at acc (tile (i, j) at (i * FC + j) * 16) between
 * sub-blocks, zero on the first. Runs under FTZ|DAZ (set by the caller). */
static inline __attribute__((always_inline)) void
fpanel(float *acc, const float *xf, size_t xs, const float *wf, size_t ws, int nc, int first,
       const int MB, const int NB) {
  __m512 a[FR][FC];
#pragma GCC unroll 4
  for (int i = 0; i < MB; i++)
#pragma GCC unroll 5
    for (int j = 0; j < NB; j++)
      a[i][j] = _mm512_setzero_ps();
  if (!first)
#pragma GCC unroll 4
    for (int i = 0; i < MB; i++)
#pragma GCC unroll 5
      for (int j = 0; j < NB; j++)
        a[i][j] = _mm512_load_ps(acc + (size_t)(i * FC + j) * 16);
  fma_chunks(a, xf, xs, wf, ws, nc, 32, MB, NB, 0);
#pragma GCC unroll 4
  for (int i = 0; i < MB; i++)
#pragma GCC unroll 5
    for (int j = 0; j < NB; j++)
      _mm512_store_ps(acc + (size_t)(i * FC + j) * 16, a[i][j]);
}

/* Every register-block shape of both, by [MB - 1][NB - 1]. */
typedef void (*fstream_fn)(float *, int, const float *, size_t, const uint16_t *, size_t, int,
                           int, const uint16_t *, int);
typedef void (*fpanel_fn)(float *, const float *, size_t, const float *, size_t, int, int);
#define FS(MB, NB)                                                                          \
  static void fstream_##MB##_##NB(float *y, int ys, const float *xf, size_t xs,             \
                                  const uint16_t *w, size_t K, int kc, int first,           \
                                  const uint16_t *bias, int accumulate) {                   \
    fstream(y, ys, xf, xs, w, K, kc, first, bias, accumulate, MB, NB);                      \
  }
#define FP(MB, NB)                                                                          \
  static void fpanel_##MB##_##NB(float *acc, const float *xf, size_t xs, const float *wf,   \
                                 size_t ws, int nc, int first) {                            \
    fpanel(acc, xf, xs, wf, ws, nc, first, MB, NB);                                         \
  }
#define FS_ROW(MB) FS(MB, 1) FS(MB, 2) FS(MB, 3) FS(MB, 4) FS(MB, 5)
#define FP_ROW(MB) FP(MB, 1) FP(MB, 2) FP(MB, 3) FP(MB, 4) FP(MB, 5)
FS_ROW(1) FS_ROW(2) FS_ROW(3) FS_ROW(4)
FP_ROW(1) FP_ROW(2) FP_ROW(3) FP_ROW(4)
#define FS_FNS(MB) {fstream_##MB##_1, fstream_##MB##_2, fstream_##MB##_3, fstream_##MB##_4, \
                    fstream_##MB##_5}
#define FP_FNS(MB) {fpanel_##MB##_1, fpanel_##MB##_2, fpanel_##MB##_3, fpanel_##MB##_4, \
                    fpanel_##MB##_5}
static const fstream_fn FSTREAM[FR][FC] = {FS_FNS(1), FS_FNS(2), FS_FNS(3), FS_FNS(4)};
static const fpanel_fn FPANEL[FR][FC] = {FP_FNS(1), FP_FNS(2), FP_FNS(3), FP_FNS(4)};

static void mm_fma(float *y, const float *x, const uint16_t *w, const uint16_t *bias, int M,
                   int N, int K, int n0, int n1, int accumulate, void *scratch,
                   size_t scratch_bytes) {
  size_t xs = (size_t)pad32(K);
  if (M <= STREAM_MAX_M && (size_t)M * xs * 4 <= scratch_bytes) {
    /* Streaming: x split whole; each W row read start to end. */
    float *xf = scratch;
    split_x(xf, xs, x, (size_t)K, 0, M, K);
    for (int n = n0; n < n1; n += FC) {
      int nb = n1 - n < FC ? n1 - n : FC;
      for (int m = 0; m < M; m += FR) {
        int mb = M - m < FR ? M - m : FR;
        for (int kb = 0; kb < K; kb += KC)
          FSTREAM[mb - 1][nb - 1](y + (size_t)m * N + n, N, xf + (size_t)m * xs + kb, xs,
                                  w + (size_t)n * K + kb, (size_t)K,
                                  K - kb < KC ? K - kb : KC, kb == 0, bias ? bias + n : NULL,
                                  accumulate);
      }
    }
    return;
  }
  /* Blocked: per K block and MCF-row x block (split, in L2), per panel of
   * FC W rows (packed), SUB chunks at a time over the block's rows. Row
   * strides are padded by 48 floats so rows do not share L1 sets. */
  size_t ks = KC + 48, xbytes = (size_t)MCF * ks * 4, wbytes = (size_t)FC * ks * 4;
  if (xbytes + wbytes + (size_t)MCF * FC * 64 > scratch_bytes) {
    mm_dot(y, x, w, bias, M, N, K, n0, n1, accumulate, scratch, scratch_bytes);
    return;
  }
  float *xf = scratch, *wf = xf + xbytes / 4, *acc = wf + wbytes / 4;
  for (int kb = 0; kb < K; kb += KC) {
    int kc = K - kb < KC ? K - kb : KC, nch = (kc + 31) / 32;
    for (int mb0 = 0; mb0 < M; mb0 += MCF) {
      int mc = M - mb0 < MCF ? M - mb0 : MCF;
      split_x(xf, ks, x + (size_t)mb0 * K, (size_t)K, kb, mc, kc);
      for (int n = n0; n < n1; n += FC) {
        int nb = n1 - n < FC ? n1 - n : FC;
        for (int j = 0; j < nb; j++) /* the panel: W rows split like x */
          for (int c = 0; c < nch; c++) {
            __m512 o, e;
            w_chunk(w, (size_t)(n + j) * K + kb, c, c == nch - 1 && kc % 32 ? kc % 32 : 32,
                    &o, &e, 1);
            _mm512_store_ps(wf + (size_t)j * ks + (size_t)c * 32, o);
            _mm512_store_ps(wf + (size_t)j * ks + (size_t)c * 32 + 16, e);
          }
        unsigned csr = _mm_getcsr();
        _mm_setcsr(csr | FTZ_DAZ);
        for (int c0 = 0; c0 < nch; c0 += SUB) {
          int nc = nch - c0 < SUB ? nch - c0 : SUB;
          for (int m = 0; m < mc; m += FR) {
            int mb = mc - m < FR ? mc - m : FR;
            FPANEL[mb - 1][nb - 1](acc + (size_t)m * FC * 16, xf + (size_t)m * ks + c0 * 32,
                                   ks, wf + (size_t)c0 * 32, ks, nc, c0 == 0);
          }
        }
        _mm_setcsr(csr);
        for (int m = 0; m < mc; m++)
          for (int j = 0; j < nb; j++)
            put_sum(y + (size_t)(mb0 + m) * N + n + j,
                    hsum16(_mm512_load_ps(acc + (size_t)(m * FC + j) * 16)), kb == 0,
                    bias ? bias + n + j : NULL, accumulate);
      }
    }
  }
}

/* 1 when vdpbf16ps issues at least as many flops per second as fp32 FMA on
 * this core (one vdpbf16ps = 64 flops, one FMA = 32): the pick between the
 * two tables below, whose bits are the same. Timed on registers, best of 3
 * short runs of each (under 0.1 ms in all). */
int sa__cpu_dpbf16_full_rate(void) {
  double best[2] = {1e30, 1e30};
  for (int rep = 0; rep < 3; rep++)
    for (int kind = 0; kind < 2; kind++) {
      __m512 acc[12];
      for (int i = 0; i < 12; i++)
        acc[i] = _mm512_setzero_ps();
      __m512 a = _mm512_set1_ps(1.0f), b = _mm512_set1_ps(0.5f);
      unsigned long long t0 = __rdtsc();
      for (int it = 0; it < 2000; it++) {
        if (kind)
#pragma GCC unroll 12
          for (int i = 0; i < 12; i++)
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)a, (__m512bh)b);
        else
#pragma GCC unroll 12
          for (int i = 0; i < 12; i++)
            acc[i] = _mm512_fmadd_ps(a, b, acc[i]);
        __asm__ volatile("" : "+v"(a), "+v"(b));
      }
      double dt = (double)(__rdtsc() - t0);
      float s = 0;
      for (int i = 0; i < 12; i++)
        s += _mm512_reduce_add_ps(acc[i]);
      __asm__ volatile("" ::"x"(s));
      if (dt < best[kind])
        best[kind] = dt;
    }
  return best[1] <= 2 * best[0]; /* per instruction: 2x the flops of an FMA */
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

/* The same numbers as avx512bf16 (x rounded to bf16, vdpbf16ps's bits),
 * the matmul on fp32 FMA: the pick where vdpbf16ps is half rate. */
const sa__cpu_kern_t sa__cpu_kern_avx512bf16_fma = {
    .name = "avx512bf16-fma",
    .mm_small = NULL,
    .mm_dot = mm_fma,
    .attn_scores = sa__cpu_attn_scores_avx512,
    .attn_values = sa__cpu_attn_values_avx512,
    .q8_to_f32 = sa__cpu_q8_to_f32_avx512,
    .bf16_to_f32 = sa__cpu_bf16_to_f32_avx512,
    .exp_sum = sa__cpu_exp_sum_avx512,
    .silu_mul = sa__cpu_silu_mul_avx512,
    .gelu = sa__cpu_gelu_avx512,
};
