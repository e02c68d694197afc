/* cpu_impl — private to kernels/cpu: the per-ISA kernel table.
 *
 * cpu.c picks one table at run time (__builtin_cpu_supports, or
 * sa_cpu_set_isa). The scalar table is always present; the others live in
 * files compiled with their -m flags and may only be called on a CPU that
 * supports them. Not a public header. */
#ifndef SA_CPU_IMPL_H
#define SA_CPU_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
  const char *name;
  /* Small-M matmul over output columns [n0, n1): for m < M, n0 <= n < n1,
   * y[m*N + n] = sum_k x[m*K + k] * bf16(w[n*K + k]) (+ bias[n]) (+ y old).
   * Streams the W rows once; fp32 accumulate. M is small (<= ~32). */
  void (*mm_small)(float *y, const float *x, const uint16_t *w,
                   const uint16_t *bias, int M, int N, int K, int n0, int n1,
                   int accumulate);
  /* Or (when not NULL, instead of mm_small for every M): the bf16
   * dot-product matmul over columns [n0, n1), x rounded to bf16, one
   * summation order for every M (cpu_avx512bf16.c); scratch is this
   * thread's (at least 256 KiB; more lets more rows take the streaming
   * loop). K >= 1 (cpu.c serves K = 0). */
  void (*mm_dot)(float *y, const float *x, const uint16_t *w,
                 const uint16_t *bias, int M, int N, int K, int n0, int n1,
                 int accumulate, void *scratch, size_t scratch_bytes);
  /* Attention over n keys for the G query heads of one KV head (cpu.c
   * attend): q holds G head vectors of hd floats; k[i], v[i] point at key
   * i's fp32 head slice (in the cache, or widened into scratch).
   * Scores: s[g * ss + i] = scale * sum_d q[g * hd + d] * k[i][d]; each
   * key's sum in an order that does not depend on i or n (SIMD versions
   * score blocks of keys, a short block padded with repeats of its first
   * key).
   * Values: o[g * hd + d] = o[g * hd + d] * (c ? c[g] : 1) + e[g * es + i] *
   * v[i][d] for keys i = 0 .. n-1 in order (fused in the SIMD versions). */
  void (*attn_scores)(float *s, size_t ss, const float *q, int G, int hd,
                      const float *const *k, int n, float scale);
  void (*attn_values)(float *o, const float *c, const float *e, size_t es, int G, int hd,
                      const float *const *v, int n);
  /* Optional (NULL: bf16 keys are widened and go to attn_scores): scores
   * straight from a bf16 cache, the queries rounded to bf16 as bf16
   * inference holds them (cpu_amx.c). attn_qpack packs the G head vectors
   * of q (hd floats each) into qp (ATTN_QP_BYTES(hd), 64-byte aligned);
   * attn_scores_bf16 then does s[g * ss + i] = scale * sum_d bf16(q[g][d]) *
   * k[i][d] for n <= 16 keys (k[i]: key i's bf16 head slice in the cache;
   * kt: 16 * ATTN_KT_STRIDE(hd) bytes of 64-byte aligned scratch). Each
   * key's sum in an order that depends on neither i nor n. */
  void (*attn_qpack)(uint16_t *qp, const float *q, int G, int hd);
  void (*attn_scores_bf16)(float *s, size_t ss, const uint16_t *qp, int G, int hd,
                           const uint16_t *const *k, int n, float scale, uint16_t *kt);
  /* With them: the values straight from a bf16 cache, for n <= 32 keys
   * (v[i]: key i's bf16 head slice), the weights e rounded to bf16:
   * o[g * hd + d] = o[g * hd + d] * (c ? c[g] : 1) + (the block's sum over
   * keys of bf16(e[g * es + i]) * v[i][d], summed from zero). vt:
   * ATTN_VT_BYTES(hd) of 64-byte aligned scratch. */
  void (*attn_values_bf16)(float *o, const float *c, const float *e, size_t es, int G,
                           int hd, const uint16_t *const *v, int n, uint16_t *vt);
  /* Optional, where attn_scores_bf16 is not (NULL: bf16 keys and values are
   * widened into scratch first): attn_scores over n <= 16 keys and
   * attn_values over n <= 32 whose k[i], v[i] are bf16 head slices in the
   * cache, widened in registers -- the same bits as widening them and
   * calling attn_scores, attn_values (cpu_avx2.c). wide: 16 * hd floats of
   * scratch, for head dims the SIMD loops do not take. */
  void (*attn_scores_widen)(float *s, size_t ss, const float *q, int G, int hd,
                            const uint16_t *const *k, int n, float scale, float *wide);
  void (*attn_values_widen)(float *o, const float *c, const float *e, size_t es, int G,
                            int hd, const uint16_t *const *v, int n, float *wide);
  /* dst[i] = a q8 KV row (kernels.h SA_KV_Q8_0, n % 32 == 0) widened to
   * fp32: d * q[i] per block (the bits of sa__kv_q8_read_row). */
  void (*q8_to_f32)(float *dst, const uint8_t *src, int n);
  /* dst[i] = bf16 src[i] widened to fp32 (exact). */
  void (*bf16_to_f32)(float *dst, const uint16_t *src, size_t n);
  /* x[i] = exp(x[i] - mx) over n floats (x[i] <= mx), returns their sum.
   * SIMD versions use a degree-6 polynomial after range reduction (Cephes
   * expf: ~1 ulp), the scalar one libm's expf. */
  float (*exp_sum)(float *x, int n, float mx);
  /* y[i] = silu(g[i]) * u[i] over n floats (same exp as exp_sum). */
  void (*silu_mul)(float *y, const float *g, const float *u, int n);
  /* x[i] = gelu(x[i]) = x/2 (1 + erf(x / sqrt 2)) in place; SIMD versions
   * take erf from Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7), the scalar
   * one libm's erff. */
  void (*gelu)(float *x, size_t n);
} sa__cpu_kern_t;

/* Bytes of a packed query group (attn_qpack) and of one key's row in kt
 * (attn_scores_bf16): the head dim in chunks of 32. */
#define ATTN_QP_BYTES(hd) ((size_t)((hd) + 31) / 32 * 1024)
#define ATTN_KT_STRIDE(hd) ((size_t)((hd) + 31) / 32 * 64)
/* attn_values_bf16's scratch: the weights' tile, the values' tiles (one per
 * 16 dims) and one tile of sums. */
#define ATTN_VT_BYTES(hd) ((size_t)((hd) + 15) / 16 * 1024 + 2048)

extern const sa__cpu_kern_t sa__cpu_kern_scalar;
extern const sa__cpu_kern_t sa__cpu_kern_avx2;
extern const sa__cpu_kern_t sa__cpu_kern_avx512;
extern const sa__cpu_kern_t sa__cpu_kern_avx512bf16;
extern const sa__cpu_kern_t sa__cpu_kern_avx512bf16_fma;
/* 1 when vdpbf16ps issues at least the flops of fp32 FMA on this core
 * (cpu_avx512bf16.c; call only where AVX512-BF16 is present). */
int sa__cpu_dpbf16_full_rate(void);
extern const sa__cpu_kern_t sa__cpu_kern_amx;

/* Shared by the AVX-512 files. */
void sa__cpu_mm_small_avx512(float *y, const float *x, const uint16_t *w,
                             const uint16_t *bias, int M, int N, int K, int n0,
                             int n1, int accumulate);
void sa__cpu_attn_scores_avx512(float *s, size_t ss, const float *q, int G, int hd,
                                const float *const *k, int n, float scale);
void sa__cpu_attn_values_avx512(float *o, const float *c, const float *e, size_t es, int G,
                                int hd, const float *const *v, int n);
void sa__cpu_q8_to_f32_avx512(float *dst, const uint8_t *src, int n);
void sa__cpu_bf16_to_f32_avx512(float *dst, const uint16_t *src, size_t n);
float sa__cpu_exp_sum_avx512(float *x, int n, float mx);
void sa__cpu_silu_mul_avx512(float *y, const float *g, const float *u, int n);
void sa__cpu_gelu_avx512(float *x, size_t n);

/* Prefetch of the next W tile (rows [r0, r1), contiguous) into L2 while the
 * current tile is swept: a slice of whole cache lines after each of the
 * sweep's `blocks` register blocks (see cpu_avx512.c). A hint: never faults. */
typedef struct {
  const char *p, *end;
  size_t slice;
} sa__tile_pf_t;

static inline void sa__tile_pf_init(sa__tile_pf_t *pf, const uint16_t *w, int K, int r0,
                                    int r1, size_t blocks) {
  pf->p = (const char *)(w + (size_t)r0 * K);
  pf->end = (const char *)(w + (size_t)r1 * K);
  size_t bytes = (size_t)(pf->end - pf->p);
  pf->slice = ((bytes + (blocks ? blocks : 1) - 1) / (blocks ? blocks : 1) + 63) & ~(size_t)63;
}

static inline void sa__tile_pf_step(sa__tile_pf_t *pf) {
  for (size_t b = 0; b < pf->slice && pf->p < pf->end; b += 64, pf->p += 64)
    __builtin_prefetch(pf->p, 0, 2);
}

/* The quantized matmul over output columns [n0, n1) (kernels.h matmul_q:
 * the bits are defined by sa__mmq_scalar in quant.c); scratch is this
 * thread's (at least 256 KiB). */
typedef void (*sa__mmq_fn)(float *y, const int8_t *xq, const float *xd, int wtype,
                           const void *wq, const uint16_t *wd, const uint16_t *bias, int M,
                           int N, int K, int n0, int n1, int accumulate, void *scratch,
                           size_t scratch_bytes);
void sa__mmq_scalar(float *y, const int8_t *xq, const float *xd, int wtype, const void *wq,
                    const uint16_t *wd, const uint16_t *bias, int M, int N, int K, int n0,
                    int n1, int accumulate);
void sa__mmq_avx2(float *y, const int8_t *xq, const float *xd, int wtype, const void *wq,
                  const uint16_t *wd, const uint16_t *bias, int M, int N, int K, int n0, int n1,
                  int accumulate, void *scratch, size_t scratch_bytes);
/* Re-lays Q8_0 or Q4_0 W[N, K] (N % 8 == 0) as its R8 format, in place
 * (kernels.h); SA_ENOMEM (W unchanged) when a group's copy cannot be
 * allocated. */
int sa__q_pack_r8(int wtype, uint8_t *wq, uint16_t *wd, int N, int K);
/* Each block's sum of x for rows [0, M) of the q8 rows xq: sx [M, K/32]
 * (Q4_0's -8 comes off as 8 * sum(x); AVX2, quant_avx2.c). */
void sa__q8_block_sums(int32_t *sx, const int8_t *xq, int M, int K);
void sa__mmq_avx512vnni(float *y, const int8_t *xq, const float *xd, int wtype, const void *wq,
                        const uint16_t *wd, const uint16_t *bias, int M, int N, int K, int n0,
                        int n1, int accumulate, void *scratch, size_t scratch_bytes);
void sa__mmq_amx(float *y, const int8_t *xq, const float *xd, int wtype, const void *wq,
                 const uint16_t *wd, const uint16_t *bias, int M, int N, int K, int n0, int n1,
                 int accumulate, void *scratch, size_t scratch_bytes);
/* The q8 blocks of one row (kernels.h quantize_q8). */
void sa__q8_quantize_row(int8_t *q, float *d, const float *x, int K);
/* A q8 KV cache row (kernels.h SA_KV_Q8_0): kv_dim / 32 blocks of an fp32
 * scale then 32 int8, by sa__q8_quantize_row's rule; and a row's n values
 * back (d * q), for the reference backend. */
void sa__kv_q8_write_row(uint8_t *dst, const float *x, int kv_dim);
void sa__kv_q8_read_row(float *dst, const uint8_t *src, int n);
/* The scale d of a q8 KV block (its first 4 bytes, fp32). */
static inline float sa__kv_q8_d(const uint8_t *blk) {
  float d;
  memcpy(&d, blk, sizeof d);
  return d;
}

#endif
