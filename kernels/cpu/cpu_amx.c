/*
 * cpu_amx — the AMX-BF16 matmul of the CPU backend (compiled with
 * -mamx-tile -mamx-bf16 and AVX-512; called only when the CPU has AMX and
 * the kernel granted this process the tile state: sa__cpu_amx_usable).
 *
 * Numbers: as cpu_avx512bf16.c — x rounded to bf16 (nearest even), the
 * weights as stored, exact bf16 products accumulated in fp32 (TDPBF16PS:
 * per output, the k pairs in order; denormal inputs and results flushed).
 *
 * One summation order for every M (batch invariance): for each output,
 *   s = (accumulate ? y_old : 0) + (bias ? bias : 0)
 *   for each K block of KC (= 1024) elements, in order:
 *     the block's pairs accumulated from zero in a tile; s += that sum
 * Every M runs the same loop, so a row's outputs are bit-identical alone or
 * in any batch, however the columns were split across threads.
 *
 * Tiles: C[n][m] = W·xᵀ. A = 16 W rows x 32 k, loaded straight from the
 * weights (row stride K), so W is never repacked and the decode GEMV
 * streams it once; B = 16 x rows packed as k pairs (VNNI), made per K block
 * and MC-row block in this thread's scratch; four C tiles (two W groups by
 * two x groups), so each A and B load feeds two TDPBF16PS; up to 16 x rows
 * (decode) use two C tiles and load the next chunk's A tiles while the
 * current ones multiply, and prefetch the next 32 W rows. W rows past the
 * column range's end or a K block with a ragged end are copied into a
 * zero-padded buffer first (a tile load reads whole 64-byte rows).
 */
#include "cpu_impl.h"
#include "kernels.h"
#include "tensor.h"

#include <immintrin.h>
#include <string.h>

#define KC 1024 /* K block: a multiple of 32, independent of M */
#define MC 256  /* x rows packed per block: MC * KC * 2 = 512 KiB */

typedef struct {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} __attribute__((packed)) tilecfg_t;

/* Tile state is per thread: configured on a thread's first matmul. */
static __thread int tiles_ready;

static void tiles_config(void) {
  tilecfg_t c;
  memset(&c, 0, sizeof(c));
  c.palette = 1;
  for (int t = 0; t < 8; t++) {
    c.colsb[t] = 64;
    c.rows[t] = 16;
  }
  _tile_loadconfig(&c);
  tiles_ready = 1;
}

static inline float bf16f(uint16_t h) {
  union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
  return v.f;
}

/* Packs x rows [0, mc) (stride K, from column k0, kc columns) as B tiles:
 * group g (16 rows), chunk c (32 columns) is 1 KiB at xp + (g * nch + c) *
 * 512 bf16, row r holding the pair (2r, 2r + 1) of the chunk for the 16 rows.
 * Rows past mc and columns past kc are zero. */
static void pack_x(uint16_t *xp, const float *x, size_t K, int k0, int mc, int kc) {
  int nch = (kc + 31) / 32, ng = (mc + 15) / 16;
  uint32_t *d = (uint32_t *)xp;
  uint16_t row[32] __attribute__((aligned(64)));
  for (int g = 0; g < ng; g++)
    for (int c = 0; c < nch; c++) {
      uint32_t *t = d + ((size_t)g * nch + c) * 256;
      int kn = kc - c * 32 < 32 ? kc - c * 32 : 32;
      __mmask32 mk = kn == 32 ? 0xffffffffu : (__mmask32)((1u << kn) - 1u);
      for (int i = 0; i < 16; i++) {
        int m = g * 16 + i;
        if (m >= mc) {
          for (int r = 0; r < 16; r++)
            t[r * 16 + i] = 0;
          continue;
        }
        const float *src = x + (size_t)m * K + k0 + c * 32;
        __m512 lo = _mm512_maskz_loadu_ps((__mmask16)mk, src);
        __m512 hi = _mm512_maskz_loadu_ps((__mmask16)(mk >> 16), src + 16);
        _mm512_store_si512(row, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        const uint32_t *rp = (const uint32_t *)row;
        for (int r = 0; r < 16; r++)
          t[r * 16 + i] = rp[r];
      }
    }
}

/* Adds the C tile c[n][m] (16 x 16, as stored) into y[m][n] for m < mv,
 * n < nv; on the block `first`, y = init + c instead. */
static void add_tile(float *y, size_t N, const float *c, int mv, int nv, int first,
                     const uint16_t *bias, int accumulate) {
  for (int m = 0; m < mv; m++) {
    float *yo = y + (size_t)m * N;
    for (int n = 0; n < nv; n++) {
      float h = c[n * 16 + m];
      if (first) {
        float s = accumulate ? yo[n] : 0.0f;
        if (bias)
          s += bf16f(bias[n]);
        yo[n] = s + h;
      } else {
        yo[n] += h;
      }
    }
  }
}

/* W rows [n, n + nv) x columns [k0, k0 + kc) into a 16-row buffer of
 * stride ks (>= kc rounded up to 32) with zeros around. */
static void pad_w(uint16_t *wp, size_t ks, const uint16_t *w, size_t K, int n, int nv,
                  int k0, int kc) {
  memset(wp, 0, 16 * ks * 2);
  for (int j = 0; j < nv; j++)
    memcpy(wp + (size_t)j * ks, w + (size_t)(n + j) * K + k0, (size_t)kc * 2);
}

/* A tiles of W rows [n, n + 32) x columns [kb, kb + kc): straight from W,
 * or from a padded copy in wpad at the edges. */
static void a_tiles(const uint16_t **a0, size_t *as0, const uint16_t **a1, size_t *as1,
                    uint16_t *wpad, const uint16_t *w, int K, int n, int nv0, int nv1, int kb,
                    int kc) {
  size_t ks = (size_t)(kc + 31) / 32 * 32;
  *a0 = w + (size_t)n * K + kb, *a1 = *a0 + (size_t)16 * K;
  *as0 = (size_t)K * 2, *as1 = *as0;
  if (nv0 < 16 || kc % 32) {
    pad_w(wpad, ks, w, (size_t)K, n, nv0, kb, kc);
    *a0 = wpad, *as0 = ks * 2;
  }
  if (nv1 < 16 || kc % 32) {
    if (nv1 > 0)
      pad_w(wpad + 16 * ks, ks, w, (size_t)K, n + 16, nv1, kb, kc);
    else
      memset(wpad + 16 * ks, 0, 16 * ks * 2);
    *a1 = wpad + 16 * ks, *as1 = ks * 2;
  }
}

/* Up to 16 x rows (packed at b0, nch chunks of one K block) against 32 W
 * rows: two C tiles, A double-buffered, stored to ct; pfs bytes from pf
 * prefetched per chunk pair (pf NULL: none). */
static void tiles16(float *ct, const uint16_t *a0, size_t as0, const uint16_t *a1, size_t as1,
                    const uint16_t *b0, int nch, const char *pf, size_t pfs) {
  _tile_zero(0);
  _tile_zero(1);
  int c = 0;
  for (; c + 2 <= nch; c += 2) {
    if (pf)
      for (size_t o = 0; o < pfs; o += 64)
        _mm_prefetch(pf + (size_t)c / 2 * pfs + o, _MM_HINT_T0);
    _tile_loadd(4, a0 + c * 32, as0);
    _tile_loadd(5, a1 + c * 32, as1);
    _tile_loadd(2, a0 + c * 32 + 32, as0);
    _tile_loadd(3, a1 + c * 32 + 32, as1);
    _tile_loadd(6, b0 + (size_t)c * 512, 64);
    _tile_loadd(7, b0 + (size_t)c * 512 + 512, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 5, 6);
    _tile_dpbf16ps(0, 2, 7);
    _tile_dpbf16ps(1, 3, 7);
  }
  if (c < nch) {
    _tile_loadd(4, a0 + c * 32, as0);
    _tile_loadd(5, a1 + c * 32, as1);
    _tile_loadd(6, b0 + (size_t)c * 512, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 5, 6);
  }
  _tile_stored(0, ct, 64);
  _tile_stored(1, ct + 512, 64);
}

/* Few x rows (M <= 16, decode): x packed whole (block kb at xp + 16 kb),
 * then for each 32 W rows their K blocks in order, so W streams row after
 * row (block-major, rows longer than one block were read a KC slice per
 * pass: strided, and no hardware prefetcher followed; the down projection
 * ran at ~60 % of the other shapes' bandwidth). Each block's tiles and its
 * add into y are those of the block-major loop: the same bits. */
static void mm_amx_rows(float *y, const float *x, const uint16_t *w, const uint16_t *bias,
                        int M, int N, int K, int n0, int n1, int accumulate, uint16_t *xp,
                        uint16_t *wpad, float *ct) {
  for (int kb = 0; kb < K; kb += KC)
    pack_x(xp + (size_t)kb * 16, x, (size_t)K, kb, M, K - kb < KC ? K - kb : KC);
  size_t pfs = (size_t)K * 64 / (size_t)((K + 31) / 32); /* bytes per 2 chunks */
  for (int n = n0; n < n1; n += 32) {
    int nv0 = n1 - n < 16 ? n1 - n : 16;
    int nv1 = n1 - n - 16 < 0 ? 0 : (n1 - n - 16 < 16 ? n1 - n - 16 : 16);
    const char *pf = n + 64 <= n1 ? (const char *)(w + (size_t)(n + 32) * K) : NULL;
    for (int kb = 0; kb < K; kb += KC) {
      int kc = K - kb < KC ? K - kb : KC;
      const uint16_t *a0, *a1;
      size_t as0, as1;
      a_tiles(&a0, &as0, &a1, &as1, wpad, w, K, n, nv0, nv1, kb, kc);
      tiles16(ct, a0, as0, a1, as1, xp + (size_t)kb * 16, (kc + 31) / 32,
              pf ? pf + (size_t)kb / 64 * pfs : NULL, pfs);
      const uint16_t *bb = bias ? bias + n : NULL;
      add_tile(y + n, (size_t)N, ct, M, nv0, kb == 0, bb, accumulate);
      if (nv1 > 0)
        add_tile(y + n + 16, (size_t)N, ct + 512, M, nv1, kb == 0, bb ? bb + 16 : NULL,
                 accumulate);
    }
  }
}

static void mm_amx(float *y, const float *x, const uint16_t *w, const uint16_t *bias,
                   int M, int N, int K, int n0, int n1, int accumulate, void *scratch,
                   size_t scratch_bytes) {
  (void)scratch_bytes;
  if (!tiles_ready)
    tiles_config();
  uint16_t *xp = scratch;                              /* MC x KC packed: 512 KiB */
  uint16_t *wpad = xp + (size_t)MC * KC;               /* 2 x 16 x KC: 64 KiB */
  float *ct = (float *)(wpad + (size_t)2 * 16 * KC);   /* 4 C tiles: 4 KiB */
  if (M <= 16 && (size_t)16 * ((size_t)(K + 31) / 32 * 32) <= (size_t)MC * KC) {
    mm_amx_rows(y, x, w, bias, M, N, K, n0, n1, accumulate, xp, wpad, ct);
    return;
  }
  for (int kb = 0; kb < K; kb += KC) {
    int kc = K - kb < KC ? K - kb : KC;
    int nch = (kc + 31) / 32;
    for (int mb = 0; mb < M; mb += MC) {
      int mc = M - mb < MC ? M - mb : MC;
      int ng = (mc + 15) / 16;
      pack_x(xp, x + (size_t)mb * K, (size_t)K, kb, mc, kc);
      for (int n = n0; n < n1; n += 32) {
        int nv0 = n1 - n < 16 ? n1 - n : 16;
        int nv1 = n1 - n - 16 < 0 ? 0 : (n1 - n - 16 < 16 ? n1 - n - 16 : 16);
        const uint16_t *a0, *a1;
        size_t as0, as1;
        a_tiles(&a0, &as0, &a1, &as1, wpad, w, K, n, nv0, nv1, kb, kc);
        if (ng == 1) { /* up to 16 x rows, K too long for mm_amx_rows to pack */
          tiles16(ct, a0, as0, a1, as1, xp, nch, NULL, 0);
          float *yb = y + (size_t)mb * N + n;
          const uint16_t *bb = bias ? bias + n : NULL;
          add_tile(yb, (size_t)N, ct, mc, nv0, kb == 0, bb, accumulate);
          if (nv1 > 0)
            add_tile(yb + 16, (size_t)N, ct + 512, mc, nv1, kb == 0, bb ? bb + 16 : NULL,
                     accumulate);
          continue;
        }
        for (int g = 0; g < ng; g += 2) {
          const uint16_t *b0 = xp + (size_t)g * nch * 512;
          const uint16_t *b1 = g + 1 < ng ? b0 + (size_t)nch * 512 : b0;
          _tile_zero(0);
          _tile_zero(1);
          _tile_zero(2);
          _tile_zero(3);
          for (int c = 0; c < nch; c++) {
            _tile_loadd(4, a0 + c * 32, as0);
            _tile_loadd(5, a1 + c * 32, as1);
            _tile_loadd(6, b0 + (size_t)c * 512, 64);
            _tile_loadd(7, b1 + (size_t)c * 512, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
          }
          _tile_stored(0, ct, 64);
          _tile_stored(1, ct + 256, 64);
          _tile_stored(2, ct + 512, 64);
          _tile_stored(3, ct + 768, 64);
          int m = mb + g * 16;
          int mv0 = mc - g * 16 < 16 ? mc - g * 16 : 16;
          int mv1 = g + 1 < ng ? (mc - g * 16 - 16 < 16 ? mc - g * 16 - 16 : 16) : 0;
          float *yb = y + (size_t)m * N + n;
          const uint16_t *bb = bias ? bias + n : NULL;
          add_tile(yb, (size_t)N, ct, mv0, nv0, kb == 0, bb, accumulate);
          add_tile(yb + (size_t)16 * N, (size_t)N, ct + 256, mv1, nv0, kb == 0, bb,
                   accumulate);
          if (nv1 > 0) {
            add_tile(yb + 16, (size_t)N, ct + 512, mv0, nv1, kb == 0, bb ? bb + 16 : NULL,
                     accumulate);
            add_tile(yb + (size_t)16 * N + 16, (size_t)N, ct + 768, mv1, nv1, kb == 0,
                     bb ? bb + 16 : NULL, accumulate);
          }
        }
      }
    }
  }
}

/* ------------------------------------------------------------------------ */
/* The quantized matmul (kernels.h matmul_q) with AMX-INT8 from
 * SA__MMQ_AMX_MIN_M rows of x on; fewer (decode of one to three sequences)
 * go to the VNNI kernel, which streams W once per row of x. Same bits as
 * sa__mmq_scalar: the tiles give each block's exact integer sum, then one
 * fmaf per block in order.
 *
 * Tiles: C[n][m]. A = 16 W rows x 64 bytes = a pair of blocks (b, b + 1):
 * Q8_0 straight from the weights; Q4_0 unpacked to unsigned nibbles (low
 * nibbles of both blocks, then high nibbles) in a buffer, multiplied by
 * TDPBUSD with the -8 taken off as 8 sum(x). B = 16 x rows packed as k
 * quads in the A row's k order, twice per pair: once with only block b's k
 * (block b + 1's zero) and once the other way, so two TDPBxxD on one A tile
 * give the two blocks' sums apart. Per block the C tile is stored and
 * folded into 16 fp32 accumulators (one per W row, lanes over x rows). */

#define MCQ 128 /* x rows packed per pass */
#ifndef SA__MMQ_AMX_MIN_M
#define SA__MMQ_AMX_MIN_M 4 /* fewer rows of x: the VNNI kernel (measured crossover) */
#endif

/* The pair's k order: for k in 0..63 of the A row, which block (0: b,
 * 1: b + 1) and which element of it. */
static inline void pair_k(int wtype, int k, int *blk, int *el) {
  if (wtype == SA_WQ_Q8_0) {
    *blk = k >> 5, *el = k & 31;
  } else { /* [b 0..15, b+1 0..15, b 16..31, b+1 16..31] */
    *blk = (k >> 4) & 1, *el = (k & 15) + (k >= 32 ? 16 : 0);
  }
}

/* Packs rows [0, mc) of xq (K columns) as B tiles: m-tile g, pair p,
 * half h (block 2p + h alone) is 1 KiB at bp + ((g * np + p) * 2 + h) *
 * 1024, row r holding for each of the 16 rows the bytes of k 4r..4r+3.
 * Also xd and (Q4_0) the block sums of x transposed per m-tile:
 * xdt[(g * KB + b) * 16 + i], sxt likewise. Rows past mc are zero. */
static void pack_xq(int8_t *bp, float *xdt, int32_t *sxt, const int8_t *xq, const float *xd,
                    int K, int mc, int wtype) {
  int KB = K / 32, np = (KB + 1) / 2, ng = (mc + 15) / 16;
  for (int g = 0; g < ng; g++)
    for (int i = 0; i < 16; i++) {
      int m = g * 16 + i;
      const int8_t *xr = xq + (size_t)m * K;
      for (int b = 0; b < KB; b++) {
        xdt[((size_t)g * KB + b) * 16 + i] = m < mc ? xd[(size_t)m * KB + b] : 0.0f;
        int32_t t = 0;
        if (m < mc && wtype == SA_WQ_Q4_0) /* only Q4_0's -8 needs them */
          for (int j = 0; j < 32; j++)
            t += xr[b * 32 + j];
        sxt[((size_t)g * KB + b) * 16 + i] = t;
      }
      for (int p = 0; p < np; p++)
        for (int h = 0; h < 2; h++) {
          int8_t *t = bp + (((size_t)g * np + p) * 2 + h) * 1024;
          for (int k = 0; k < 64; k++) {
            int blk, el;
            pair_k(wtype, k, &blk, &el);
            int b = 2 * p + blk;
            int8_t v = m < mc && blk == h && b < KB ? xr[b * 32 + el] : 0;
            t[(k >> 2) * 64 + i * 4 + (k & 3)] = v;
          }
        }
    }
}

/* Folds the stored C tiles of blocks b .. b + nb - 1 (c: 256 int32 each,
 * [n][m]) into acc[i] (W row i, lanes over x rows): acc = fma(isum,
 * wd[n, b] * xd[m, b], acc), blocks in order. */
static inline __attribute__((always_inline)) void fold(__m512 *acc, const int32_t *c,
                                                       const float *xdt, const int32_t *sxt,
                                                       const float *wdt, int g, int KB, int b,
                                                       int nb, int wtype) {
  for (int h = 0; h < nb; h++) {
    int bb = b + h;
    __m512 xv = _mm512_loadu_ps(xdt + ((size_t)g * KB + bb) * 16);
    __m512i corr = _mm512_setzero_si512();
    if (wtype == SA_WQ_Q4_0)
      corr = _mm512_slli_epi32(_mm512_loadu_si512(sxt + ((size_t)g * KB + bb) * 16), 3);
    const int32_t *ch = c + h * 256;
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) {
      __m512i is = _mm512_sub_epi32(_mm512_loadu_si512(ch + i * 16), corr);
      __m512 cb = _mm512_mul_ps(_mm512_set1_ps(wdt[bb * 16 + i]), xv);
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), cb, acc[i]);
    }
  }
}

void sa__mmq_amx(float *y, const int8_t *xq, const float *xd, int wtype, const void *wq,
                 const uint16_t *wd, const uint16_t *bias, int M, int N, int K, int n0, int n1,
                 int accumulate, void *scratch, size_t scratch_bytes) {
  int KB = K / 32, np = (KB + 1) / 2;
  size_t need = (size_t)MCQ * np * 128 + (size_t)2 * (MCQ / 16) * KB * 64 + (size_t)KB * 64 +
                8192 + 2048;
  if (M < SA__MMQ_AMX_MIN_M || K == 0 || need > scratch_bytes) {
    sa__mmq_avx512vnni(y, xq, xd, wtype, wq, wd, bias, M, N, K, n0, n1, accumulate, scratch,
                       scratch_bytes);
    return;
  }
  if (!tiles_ready)
    tiles_config();
  int8_t *bp = scratch;                                      /* MCQ x np x 128 */
  float *xdt = (float *)(bp + (size_t)MCQ * np * 128);       /* (MCQ/16) x KB x 16 */
  int32_t *sxt = (int32_t *)(xdt + (size_t)(MCQ / 16) * KB * 16);
  float *wdt = (float *)(sxt + (size_t)(MCQ / 16) * KB * 16); /* KB x 16 */
  int32_t *ct = (int32_t *)(wdt + (size_t)KB * 16);          /* 2 x 2 C tiles */
  uint8_t *abuf = (uint8_t *)(ct + 1024);                    /* 16 x 64 A */
  size_t row_bytes = sa_wq_bytes(wtype, 1, K);
  for (int mb = 0; mb < M; mb += MCQ) {
    int mc = M - mb < MCQ ? M - mb : MCQ, ng = (mc + 15) / 16;
    pack_xq(bp, xdt, sxt, xq + (size_t)mb * K, xd + (size_t)mb * KB, K, mc, wtype);
    for (int n = n0; n < n1; n += 16) {
      int nv = n1 - n < 16 ? n1 - n : 16;
      for (int b = 0; b < KB; b++)
        for (int i = 0; i < 16; i++)
          wdt[b * 16 + i] = i < nv ? _cvtsh_ss(wd[(size_t)(n + i) * KB + b]) : 0.0f;
      for (int g = 0; g < ng; g++) {
        __m512 acc[16];
        for (int i = 0; i < 16; i++)
          acc[i] = _mm512_setzero_ps();
        for (int p = 0; p < np; p++) {
          int b = 2 * p, two = b + 1 < KB;
          const void *a = (const uint8_t *)wq + (size_t)n * row_bytes + (size_t)b * 32;
          size_t as = row_bytes;
          if (wtype == SA_WQ_Q4_0) {
            const __m256i m15 = _mm256_set1_epi8(15);
            for (int i = 0; i < 16; i++) {
              __m256i v = _mm256_setzero_si256();
              const uint8_t *src = (const uint8_t *)wq + (size_t)(n + i) * row_bytes + b * 16;
              if (i < nv)
                v = two ? _mm256_loadu_si256((const __m256i *)src)
                        : _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)src));
              _mm256_storeu_si256((__m256i *)(abuf + i * 64), _mm256_and_si256(v, m15));
              _mm256_storeu_si256((__m256i *)(abuf + i * 64 + 32),
                                  _mm256_and_si256(_mm256_srli_epi16(v, 4), m15));
            }
            a = abuf, as = 64;
          } else if (nv < 16 || !two) { /* a tile row reads 64 bytes: pad the edges */
            memset(abuf, 0, 16 * 64);
            for (int i = 0; i < nv; i++)
              memcpy(abuf + i * 64, (const uint8_t *)wq + (size_t)(n + i) * row_bytes + b * 32,
                     two ? 64 : 32);
            a = abuf, as = 64;
          }
          if (g == 0) /* the 16 rows' next pairs, ahead of the tile loads */
            for (int i = 0; i < nv; i++)
              _mm_prefetch((const char *)wq + (size_t)(n + i) * row_bytes +
                               (size_t)(b + 8) * (wtype == SA_WQ_Q8_0 ? 32 : 16),
                           _MM_HINT_T0);
          /* C tiles 0, 1 for even pairs and 2, 3 for odd ones: the fold of
           * the previous pair runs while this pair's products are made */
          const int8_t *bt = bp + ((size_t)g * np + p) * 2048;
          _tile_loadd(4, a, as);
          _tile_loadd(6, bt, 64);
          _tile_loadd(7, bt + 1024, 64);
          if (p & 1) {
            _tile_zero(2);
            _tile_zero(3);
            if (wtype == SA_WQ_Q8_0) {
              _tile_dpbssd(2, 4, 6);
              _tile_dpbssd(3, 4, 7);
            } else {
              _tile_dpbusd(2, 4, 6);
              _tile_dpbusd(3, 4, 7);
            }
          } else {
            _tile_zero(0);
            _tile_zero(1);
            if (wtype == SA_WQ_Q8_0) {
              _tile_dpbssd(0, 4, 6);
              _tile_dpbssd(1, 4, 7);
            } else {
              _tile_dpbusd(0, 4, 6);
              _tile_dpbusd(1, 4, 7);
            }
          }
          if (p > 0)
            fold(acc, ct + ((p - 1) & 1) * 512, xdt, sxt, wdt, g, KB, 2 * (p - 1), 2, wtype);
          if (p & 1) {
            _tile_stored(2, ct + 512, 64);
            _tile_stored(3, ct + 768, 64);
          } else {
            _tile_stored(0, ct, 64);
            _tile_stored(1, ct + 256, 64);
          }
        }
        {
          int b = 2 * (np - 1);
          fold(acc, ct + ((np - 1) & 1) * 512, xdt, sxt, wdt, g, KB, b, b + 1 < KB ? 2 : 1,
               wtype);
        }
        /* acc[i] lane j = output (m = mb + 16 g + j, n + i) */
        float out[16 * 16];
        for (int i = 0; i < 16; i++)
          _mm512_storeu_ps(out + i * 16, acc[i]);
        int mv = mc - g * 16 < 16 ? mc - g * 16 : 16;
        for (int j = 0; j < mv; j++) {
          float *yo = y + (size_t)(mb + g * 16 + j) * N + n;
          for (int i = 0; i < nv; i++) {
            float init = accumulate ? yo[i] : 0.0f;
            if (bias)
              init += bf16f(bias[n + i]);
            yo[i] = init + out[i * 16 + j];
          }
        }
      }
    }
  }
}

/* --- attention scores from a bf16 cache ------------------------------------
 * C[key][head] = K · qᵀ on tiles: A = 16 keys x 32 dims (the keys' bf16
 * slices where they lie, else copied into kt, zero-padded), B = the
 * group's queries as bf16 pairs (attn_qpack: chunk c is 1 KiB, row r
 * holding dims (32c + 2r, 32c + 2r + 1) of heads 0..15, zeros past G and
 * hd). Each key's sum runs over the chunks in order, whatever keys share
 * its tile. */

static void attn_qpack_amx(uint16_t *qp, const float *q, int G, int hd) {
  uint32_t *d = (uint32_t *)qp;
  memset(qp, 0, ATTN_QP_BYTES(hd));
  for (int g = 0; g < G; g++)
    for (int k = 0; k < hd; k += 2) {
      uint32_t lo = sa_f32_to_bf16(q[(size_t)g * hd + k]);
      uint32_t hi = k + 1 < hd ? sa_f32_to_bf16(q[(size_t)g * hd + k + 1]) : 0;
      d[(k / 32) * 256 + (k % 32) / 2 * 16 + g] = lo | hi << 16;
    }
}

static void attn_scores_bf16_amx(float *s, size_t ss, const uint16_t *qp, int G, int hd,
                                 const uint16_t *const *k, int n, float scale, uint16_t *kt) {
  if (!tiles_ready)
    tiles_config();
  int nch = (hd + 31) / 32;
  /* 16 keys at one stride (a cache block's rows) load straight from the
   * cache; others are copied into kt first. The same tiles either way. */
  const char *k0 = (const char *)k[0];
  ptrdiff_t st = n == 16 && hd % 32 == 0 ? (const char *)k[1] - k0 : 0;
  for (int i = 2; st && i < 16; i++)
    if ((const char *)k[i] - k0 != st * i)
      st = 0;
  const uint16_t *a = (const uint16_t *)k0;
  if (st <= 0) {
    size_t ks = ATTN_KT_STRIDE(hd) / 2; /* bf16 per key row */
    for (int i = 0; i < 16; i++) {
      uint16_t *d = kt + (size_t)i * ks;
      if (i < n) {
        memcpy(d, k[i], (size_t)hd * 2);
        memset(d + hd, 0, (ks - (size_t)hd) * 2);
      } else {
        memset(d, 0, ks * 2);
      }
    }
    a = kt, st = (ptrdiff_t)ks * 2;
  }
  _tile_zero(0);
  for (int c = 0; c < nch; c++) {
    _tile_loadd(1, a + (size_t)c * 32, (long)st);
    _tile_loadd(2, qp + (size_t)c * 512, 64);
    _tile_dpbf16ps(0, 1, 2);
  }
  float C[16 * 16] __attribute__((aligned(64)));
  _tile_stored(0, C, 64);
  for (int g = 0; g < G; g++)
    for (int i = 0; i < n; i++)
      s[(size_t)g * ss + i] = scale * C[i * 16 + g];
}

/* Values: C[head][dim] = bf16(e) · V on tiles, 32 keys a block. A = the
 * G heads' weights of the block's keys as bf16 (rows past G and keys past
 * n zero); B, one tile per 16 dims: row r holds keys 2r and 2r + 1
 * interleaved dim by dim (vpermt2w of the two cache rows); the block's sums
 * from zero, then added into o (after the running correction c). */
static void attn_values_bf16_amx(float *o, const float *c, const float *e, size_t es, int G,
                                 int hd, const uint16_t *const *v, int n, uint16_t *vt) {
  if (!tiles_ready)
    tiles_config();
  int nch = (hd + 31) / 32, nt = (hd + 15) / 16;
  uint16_t *at = vt, *bt = vt + 512;
  float *ct = (float *)(bt + (size_t)nt * 512);
  __mmask16 m0 = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1u);
  __mmask16 m1 = n >= 32 ? 0xffff : n > 16 ? (__mmask16)((1u << (n - 16)) - 1u) : 0;
  for (int g = 0; g < 16; g++) {
    __m512i row = _mm512_setzero_si512();
    if (g < G) {
      __m512 lo = _mm512_maskz_loadu_ps(m0, e + (size_t)g * es);
      __m512 hi = _mm512_maskz_loadu_ps(m1, e + (size_t)g * es + 16);
      row = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
    }
    _mm512_store_si512(at + g * 32, row);
  }
  /* word i of lo: key a's dim i / 2 (i even) or key b's (odd); hi: dims
   * 16 + i / 2 */
  static const uint16_t IL[32] __attribute__((aligned(64))) = {
      0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
      8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  static const uint16_t IH[32] __attribute__((aligned(64))) = {
      16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
      24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  __m512i il = _mm512_load_si512(IL), ih = _mm512_load_si512(IH);
  for (int r = 0; r < 16; r++)
    for (int h = 0; h < nch; h++) {
      int dn = hd - 32 * h;
      __mmask32 dm = dn >= 32 ? 0xffffffffu : (__mmask32)((1u << dn) - 1u);
      __m512i a = 2 * r < n ? _mm512_maskz_loadu_epi16(dm, v[2 * r] + 32 * h)
                            : _mm512_setzero_si512();
      __m512i b = 2 * r + 1 < n ? _mm512_maskz_loadu_epi16(dm, v[2 * r + 1] + 32 * h)
                                : _mm512_setzero_si512();
      _mm512_store_si512(bt + (size_t)(2 * h) * 512 + r * 32, _mm512_permutex2var_epi16(a, il, b));
      if (2 * h + 1 < nt)
        _mm512_store_si512(bt + (size_t)(2 * h + 1) * 512 + r * 32,
                           _mm512_permutex2var_epi16(a, ih, b));
    }
  _tile_loadd(0, at, 64);
  for (int t = 0; t < nt; t++) {
    _tile_zero(2);
    _tile_loadd(1, bt + (size_t)t * 512, 64);
    _tile_dpbf16ps(2, 0, 1);
    _tile_stored(2, ct, 64);
    int dn = hd - 16 * t;
    __mmask16 dm = dn >= 16 ? 0xffff : (__mmask16)((1u << dn) - 1u);
    for (int g = 0; g < G; g++) {
      float *og = o + (size_t)g * hd + 16 * t;
      __m512 ov = _mm512_maskz_loadu_ps(dm, og);
      if (c)
        ov = _mm512_mul_ps(ov, _mm512_set1_ps(c[g]));
      _mm512_mask_storeu_ps(og, dm, _mm512_add_ps(ov, _mm512_load_ps(ct + g * 16)));
    }
  }
}

const sa__cpu_kern_t sa__cpu_kern_amx = {
    .name = "amx",
    .mm_small = NULL,
    .mm_dot = mm_amx,
    .attn_scores = sa__cpu_attn_scores_avx512,
    .attn_values = sa__cpu_attn_values_avx512,
    .attn_qpack = attn_qpack_amx,
    .attn_scores_bf16 = attn_scores_bf16_amx,
    .attn_values_bf16 = attn_values_bf16_amx,
    .q8_to_f32 = sa__cpu_q8_to_f32_avx512,
    .bf16_to_f32 = sa__cpu_bf16_to_f32_avx512,
    .exp_sum = sa__cpu_exp_sum_avx512,
    .silu_mul = sa__cpu_silu_mul_avx512,
    .gelu = sa__cpu_gelu_avx512,
};
