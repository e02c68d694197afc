/*
 * kernels — the one backend interface for the decoder's and the encoder's math.
 *
 * A backend is a table of function pointers (sa_backend_ops_t) plus a context,
 * filled once (sa_backend_new("cpu") or "cuda[:N]"). Model code calls whole
 * ops over batches, never scalar ops. The CPU backend always builds and is
 * the reference; CUDA builds when a toolkit is found and must match it.
 *
 * Numbers: weights are bf16 (PyTorch layout: a Linear's weight is [N, K],
 * row-major, y = x·Wᵀ + b), activations and KV cache are fp32 (the CPU
 * backend's amx and avx512bf16 matmuls round x to bf16 on the way in), every sum
 * accumulates in fp32. Pointers passed to ops are backend memory from
 * ops->alloc (host memory for CPU, device memory for CUDA), except where a
 * parameter says "host". Ops are asynchronous on CUDA (one stream per
 * backend); call ops->sync before reading results on the host.
 *
 * Shapes use fixed letters: M rows (tokens in a batch), K inner, N outputs,
 * H hidden, nh query heads, nkv KV heads, hd head dim.
 *
 * Model code calls the checked entry points sa_op_* below, never the table:
 * every argument and shape check is made there once (kernels/ops.c), and an
 * op with nothing to do returns 0 there. A backend's ops assume arguments
 * that passed those checks; they check only their own capacity limits and
 * what only their memory can tell (ids, slots, block-table entries).
 * Every op returns 0 or a negative SA_E* code (SA_EINVAL for a bad shape).
 * Ops allocate nothing; scratch comes from `ws` buffers the caller sized with
 * the *_ws_bytes queries, or from workspace reserved in sa_backend_new.
 * This header exposes no CUDA types.
 */
#ifndef SA_KERNELS_H
#define SA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

typedef struct sa_backend sa_backend_t;

/* Paged KV attention batch. A batch holds n_seqs sequences; sequence s
 * contributes rows [q_start[s], q_start[s+1]) of q (its new tokens, in
 * order) and has ctx_len[s] tokens in the cache in total, its new tokens
 * included (they were written with kv_write before attention). New token i of
 * sequence s sits at position ctx_len[s] - n_new + i and attends causally to
 * positions 0..that position. Position p of sequence s lives in block
 * block_table[s * max_blocks + p / block_size], slot p % block_size.
 * Index arrays are backend memory (device memory on CUDA). */
typedef struct {
  int n_seqs;
  const int32_t *q_start;     /* [n_seqs + 1], q_start[0] = 0 */
  const int32_t *ctx_len;     /* [n_seqs] */
  const int32_t *block_table; /* [n_seqs, max_blocks] */
  int max_blocks;
  int block_size;
  int max_ctx; /* upper bound of ctx_len over the batch (host value) */
} sa_attn_batch_t;

/* Quantized weight formats (docs/quantization.md). W[N, K] is cut into
 * blocks of SA_QK = 32 along K (K % 32 == 0); block b of row n has an fp16
 * scale wd[n * K/32 + b].
 *   SA_WQ_Q8_0: wq int8 [N, K], w = d * q (q in -127..127).
 *   SA_WQ_Q4_0: wq uint8 [N, K/2]: block b of row n is bytes
 *               [n*K/2 + 16b, +16); element j < 16 of the block is the low
 *               nibble of byte j, element j + 16 its high nibble;
 *               w = d * (nibble - 8).
 *   SA_WQ_Q8_0_R8, SA_WQ_Q4_0_R8: Q8_0, Q4_0 with each group of 8 rows
 *               interleaved (made by the backend's pack_q, never stored in
 *               a file; N % 8 == 0). With B a block's bytes (32, 16),
 *               block b of rows 8g..8g+7 is the 8B bytes at
 *               (g * K/32 + b) * 8B, byte 32k + 4r + i being byte 4k + i
 *               (i < 4) of row 8g + r's block; its 8 scales are
 *               wd[(g * K/32 + b) * 8 + r]. The same values. */
#define SA_QK 32

/* KV cache element types (kv_write, attention). A cached row (one token's
 * kv_dim keys or values) is kv_dim fp32 (SA_KV_F32), kv_dim bf16 rounded to
 * nearest even (SA_KV_BF16), or kv_dim / 32 blocks of SA_KV_Q8_0_BLOCK bytes
 * (SA_KV_Q8_0): an fp32 scale d, then 32 int8 q, value = d * q, made by the
 * q8 rule of quantize_q8 (d = max|x| / 127, q = round-half-even(x / d));
 * kv_dim and the head dim % 32 == 0. */
enum { SA_KV_F32 = 0, SA_KV_BF16 = 1, SA_KV_Q8_0 = 2 };
#define SA_KV_Q8_0_BLOCK (4 + SA_QK)
/* Bytes of one cached row of kv_dim values of kv_type (0 for an unknown
 * type, or a kv_dim the type cannot hold). */
size_t sa_kv_row_bytes(int kv_type, int kv_dim);
enum { SA_WQ_Q8_0 = 1, SA_WQ_Q4_0 = 2, SA_WQ_Q4_0_R8 = 3, SA_WQ_Q8_0_R8 = 4,
       SA_WQ_COUNT_ /* formats, with 0 = bf16 */ };
/* Whether a format is one of the interleaved ones (pack_q's). */
#define SA_WQ_IS_R8(t) ((t) == SA_WQ_Q4_0_R8 || (t) == SA_WQ_Q8_0_R8)

typedef struct sa_backend_ops {
  const char *name; /* "cpu", "cuda" */

  /* --- memory --- */
  /* Backend memory, 64-byte aligned; NULL when out of memory. Never called
   * on a step path: model code allocates at load/admission time. */
  void *(*alloc)(sa_backend_t *be, size_t bytes);
  void (*free)(sa_backend_t *be, void *p);
  /* Copies between host and backend memory, and within backend memory. */
  int (*upload)(sa_backend_t *be, void *dst, const void *host_src, size_t n);
  int (*download)(sa_backend_t *be, void *host_dst, const void *src, size_t n);
  int (*copy)(sa_backend_t *be, void *dst, const void *src, size_t n);
  int (*memset0)(sa_backend_t *be, void *dst, size_t n);
  /* Waits until every op queued so far has finished. */
  int (*sync)(sa_backend_t *be);

  /* --- dense math --- */
  /* y[M,N] = x[M,K] · W[N,K]ᵀ (+ bias[N] if bias != NULL) (+ y if accumulate).
   * W and bias are bf16. M = 1 is the decode GEMV and must run at memory
   * bandwidth. */
  int (*matmul_bf16)(sa_backend_t *be, float *y, const float *x,
                     const uint16_t *w, const uint16_t *bias, int M, int N,
                     int K, int accumulate);
  /* Quantized weights (SA_WQ_*, layout above the table): rows of x enter
   * as q8 blocks made by quantize_q8. For output (m, n), with isum_b the
   * exact integer dot of block b of row m of xq and block b of W's row n
   * (Q4_0: nibble - 8), and c_b = xd[m, b] * float(wd[n, b]) rounded to
   * fp32, the blocks are summed in order from s = 0 as
   *   s = fmaf((float)isum_b, c_b, s)          for b = 0, 1, ..., K/32 - 1
   * and y[m, n] = ((y if accumulate else 0) + bf16(bias[n]) or 0) + s.
   * One order for every M, thread count and backend: a row's outputs are
   * bit-identical alone or in any batch, on any backend. K % 32 == 0. */
  int (*matmul_q)(sa_backend_t *be, float *y, const int8_t *xq, const float *xd,
                  int wtype, const void *wq, const uint16_t *wd,
                  const uint16_t *bias, int M, int N, int K, int accumulate);
  /* Optional (NULL: every layout stays as loaded). Re-lays a quantized
   * weight in backend memory, in place, into the layout this backend's
   * matmul_q reads fastest, and returns the wtype to pass from then on
   * (wtype itself when it keeps the layout; < 0 on error, the weight then
   * unchanged). A backend reads the R8 formats only if its pack_q made them. */
  int (*pack_q)(sa_backend_t *be, int wtype, void *wq, uint16_t *wd, int N, int K);
  /* The q8 blocks of x[M, K] (K % 32 == 0): for each block of 32 of a row,
   * d = max|x| / 127 (fp32 division), q = round-half-even(x * (1 / d))
   * (0 where d = 0); xq int8 [M, K], xd fp32 [M, K/32]. */
  int (*quantize_q8)(sa_backend_t *be, int8_t *xq, float *xd, const float *x,
                     int M, int K);
  /* y[M,H] = x / sqrt(mean(x²) + eps) * w (w bf16 [H]). y may alias x. */
  int (*rmsnorm)(sa_backend_t *be, float *y, const float *x, const uint16_t *w,
                 int M, int H, float eps);
  /* y[M,H] = (x - mean) / sqrt(var + eps) * w + b (biased variance; w, b
   * bf16 [H]). y may alias x. */
  int (*layernorm)(sa_backend_t *be, float *y, const float *x,
                   const uint16_t *w, const uint16_t *b, int M, int H,
                   float eps);
  /* In place on x[M, n_heads * hd]: rotate-half RoPE (HF Qwen2) at positions
   * pos[M] (backend memory): for i < hd/2, with f = pos * theta^(-2i/hd),
   * (x_i, x_{i+hd/2}) -> (x_i cos f - x_{i+hd/2} sin f,
   *                       x_{i+hd/2} cos f + x_i sin f).
   * row_stride is the distance in floats between rows (>= n_heads * hd), so
   * q and k can be rotated inside a fused qkv buffer. */
  int (*rope)(sa_backend_t *be, float *x, const int32_t *pos, int M,
              int n_heads, int hd, int row_stride, float theta);
  /* y[M,I] = silu(gu[M, 0:I]) * gu[M, I:2I] where gu is the [M, 2I] output
   * of a fused gate|up matmul. */
  int (*silu_mul)(sa_backend_t *be, float *y, const float *gu, int M, int I);
  /* In place exact GELU: 0.5 x (1 + erf(x / sqrt 2)). n elements. */
  int (*gelu)(sa_backend_t *be, float *x, size_t n);
  /* In place ReLU over n elements. */
  int (*relu)(sa_backend_t *be, float *x, size_t n);
  /* y[i] += x[i] over n elements (residual add). */
  int (*add)(sa_backend_t *be, float *y, const float *x, size_t n);
  /* In place row softmax over x[M,N] (max-subtracted, fp32). */
  int (*softmax)(sa_backend_t *be, float *x, int M, int N);
  /* y[M,H] = table[ids[m], :] (table bf16 [V,H], ids backend memory).
   * Returns SA_ERANGE for an id outside [0, V). */
  int (*embed)(sa_backend_t *be, float *y, const uint16_t *table,
               const int32_t *ids, int M, int H, int V);

  /* --- attention --- */
  /* Writes new keys/values into the paged cache: for row m, slot[m] is
   * block * block_size + offset; k_cache/v_cache are
   * [n_blocks, block_size] rows of kv_type (sa_kv_row_bytes each); k, v
   * rows are read with row_stride (floats) so they can sit inside a fused
   * qkv buffer. */
  int (*kv_write)(sa_backend_t *be, void *k_cache, void *v_cache, int kv_type,
                  const float *k, const float *v, int row_stride,
                  const int32_t *slot, int M, int kv_dim);
  /* Causal GQA attention over the paged cache (see sa_attn_batch_t).
   * q rows are read with q_stride floats; out is [M, nh * hd] contiguous.
   * Query head h uses KV head h / (nh / nkv). scale = 1/sqrt(hd) usually.
   * The cache is of kv_type (as kv_write wrote it); bf16 and q8 keys and
   * values are read in place (bf16 widened exactly, q8 as d * q per block),
   * the arithmetic stays fp32. */
  int (*attention)(sa_backend_t *be, float *out, const float *q, int q_stride,
                   const void *k_cache, const void *v_cache, int kv_type,
                   const sa_attn_batch_t *batch, int nh, int nkv, int hd,
                   float scale);
  /* Dense non-causal multi-head attention for the audio encoder:
   * q, k, v, out are [T, nh * hd] contiguous; key j is visible iff
   * j < n_valid (every query row sees the same keys; n_valid >= 1). */
  int (*attention_dense)(sa_backend_t *be, float *out, const float *q,
                         const float *k, const float *v, int T, int nh,
                         int hd, int n_valid, float scale);
  /* 1-D convolution over time, channels-last: x [Tin, Cin] -> y [Tout, Cout]
   * with weight bf16 [Cout, Cin, Kw] (PyTorch Conv1d layout), bias bf16
   * [Cout] or NULL, stride and zero padding pad on both sides:
   * Tout = (Tin + 2 pad - Kw) / stride + 1. ws holds conv1d_ws_bytes. */
  int (*conv1d)(sa_backend_t *be, float *y, const float *x, const uint16_t *w,
                const uint16_t *bias, int Tin, int Cin, int Cout, int Kw,
                int stride, int pad, void *ws);
  size_t (*conv1d_ws_bytes)(int Tin, int Cin, int Kw, int stride, int pad);

  /* Releases the backend and everything it reserved. */
  void (*destroy)(sa_backend_t *be);
} sa_backend_ops_t;

struct sa_backend {
  const sa_backend_ops_t *ops;
  void *impl; /* backend private state */
  int threads;
};

/* --- the checked entry points: one per math op of the table, with the
 * same arguments and meaning (see the table above); `be` first. Each
 * returns SA_EINVAL for a NULL backend, a negative or inconsistent size or
 * a NULL pointer where data is needed, 0 at once when there is nothing to
 * do, and otherwise what the backend's op returns. --- */
int sa_op_matmul_bf16(sa_backend_t *be, float *y, const float *x, const uint16_t *w,
                      const uint16_t *bias, int M, int N, int K, int accumulate);
int sa_op_matmul_q(sa_backend_t *be, float *y, const int8_t *xq, const float *xd, int wtype,
                   const void *wq, const uint16_t *wd, const uint16_t *bias, int M, int N, int K,
                   int accumulate);
/* pack_q's checked entry: wtype itself where the backend has no pack_q. */
int sa_op_pack_q(sa_backend_t *be, int wtype, void *wq, uint16_t *wd, int N, int K);
int sa_op_quantize_q8(sa_backend_t *be, int8_t *xq, float *xd, const float *x, int M, int K);
/* Bytes of a quantized W[N, K] of format wtype (the q part; the scales are
 * N * K/32 fp16), or 0 for an unknown format or K % 32 != 0. */
size_t sa_wq_bytes(int wtype, int N, int K);
/* A weight format's name ("bf16" for 0, "q8_0", "q4_0", "q4_0_r8",
 * "q8_0_r8"; "?" for any other value): static. */
const char *sa_wq_name(int wtype);
int sa_op_rmsnorm(sa_backend_t *be, float *y, const float *x, const uint16_t *w, int M, int H,
                  float eps);
int sa_op_layernorm(sa_backend_t *be, float *y, const float *x, const uint16_t *w,
                    const uint16_t *b, int M, int H, float eps);
int sa_op_rope(sa_backend_t *be, float *x, const int32_t *pos, int M, int n_heads, int hd,
               int row_stride, float theta);
int sa_op_silu_mul(sa_backend_t *be, float *y, const float *gu, int M, int I);
int sa_op_gelu(sa_backend_t *be, float *x, size_t n);
int sa_op_relu(sa_backend_t *be, float *x, size_t n);
int sa_op_add(sa_backend_t *be, float *y, const float *x, size_t n);
int sa_op_softmax(sa_backend_t *be, float *x, int M, int N);
int sa_op_embed(sa_backend_t *be, float *y, const uint16_t *table, const int32_t *ids, int M,
                int H, int V);
int sa_op_kv_write(sa_backend_t *be, void *k_cache, void *v_cache, int kv_type, const float *k,
                   const float *v, int row_stride, const int32_t *slot, int M, int kv_dim);
int sa_op_attention(sa_backend_t *be, float *out, const float *q, int q_stride,
                    const void *k_cache, const void *v_cache, int kv_type,
                    const sa_attn_batch_t *batch,
                    int nh, int nkv, int hd, float scale);
int sa_op_attention_dense(sa_backend_t *be, float *out, const float *q, const float *k,
                          const float *v, int T, int nh, int hd, int n_valid, float scale);
int sa_op_conv1d(sa_backend_t *be, float *y, const float *x, const uint16_t *w,
                 const uint16_t *bias, int Tin, int Cin, int Cout, int Kw, int stride, int pad,
                 void *ws);
/* Output length of sa_op_conv1d: (Tin + 2 pad - Kw) / stride + 1, or 0 when
 * the kernel does not fit (or for invalid sizes). */
int sa_op_conv1d_tout(int Tin, int Kw, int stride, int pad);

/* Creates a backend from a spec: "cpu" or "cuda" / "cuda:N". `threads` is
 * the CPU thread count (0 = one per core); ignored by CUDA. Returns NULL and
 * logs why (e.g. no GPU, or CUDA not built). Caller owns the result. */
sa_backend_t *sa_backend_new(const char *spec, int threads);
/* Destroys *be (may be NULL) and sets it NULL. */
void sa_backend_destroy(sa_backend_t **be);

/* The plain reference CPU backend: simple loops, always built, the
 * definition every optimised backend is tested against. Caller owns it. */
sa_backend_t *sa_backend_ref_new(void);

/* --- controls of the optimised "cpu" backend (tests and benchmarks) ---
 * Call these only while no op is running on `be`. */
/* Picks the matmul path: "scalar", "avx2", "avx512" (exact fp32),
 * "avx512bf16", "avx512bf16-fma" (the same bits on fp32 FMA), "amx" (x
 * rounded to bf16; docs/model.md) or "auto" (the default: amx, else
 * whichever of avx512bf16 and avx512bf16-fma issues more flops here, else
 * avx512, avx2, scalar; the SA_CPU_ISA environment variable sets the
 * default at creation). Returns 0, SA_EINVAL for an unknown name or a
 * non-"cpu" backend, SA_EUNAVAIL when this CPU lacks the instructions. */
int sa_cpu_set_isa(sa_backend_t *be, const char *isa);
/* 1 when the path in use rounds matmul inputs to bf16 (amx, avx512bf16*),
 * else 0 (also for a non-"cpu" backend). */
int sa_cpu_rounds_activations(const sa_backend_t *be);
/* Name of the SIMD path in use (static string); "" for a non-"cpu" backend. */
const char *sa_cpu_isa(const sa_backend_t *be);
/* Name of the path matmul_q uses ("scalar", "avx2", "avx512vnni", "amx");
 * "" for a non-"cpu" backend. It follows sa_cpu_set_isa: scalar -> scalar,
 * avx2 -> avx2, the AVX-512 paths -> avx512vnni where the CPU has VNNI,
 * amx -> AMX-INT8 tiles from M = 4 on (avx512vnni below). */
const char *sa_cpu_q_isa(const sa_backend_t *be);
/* 1 when this CPU can run the named SIMD path, else 0. */
int sa_cpu_isa_supported(const char *isa);
/* Sets the smallest M that matmul_bf16 serves with fp32 W tiles + OpenBLAS
 * sgemm instead of the streaming kernel (m >= 1; 0 = the measured default
 * of the SIMD path in use). Returns 0 or SA_EINVAL. */
int sa_cpu_set_sgemm_min_m(sa_backend_t *be, int m);
/* The smallest M served by sgemm now, or SA_EINVAL for a non-"cpu" backend. */
int sa_cpu_sgemm_min_m(const sa_backend_t *be);

#endif /* SA_KERNELS_H */
