/*
 * cuda_impl — private state and kernel launchers of the CUDA backend, shared
 * by the .cu files of kernels/cuda. Not a public header: it names CUDA types.
 * Launchers enqueue on the given stream and return the launch's cudaError_t
 * (cudaGetLastError after the launch); the ops in cuda_backend.cu turn any
 * error into SA_ECUDA with a log line.
 */
#ifndef SA_CUDA_IMPL_H
#define SA_CUDA_IMPL_H

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "kernels.h"
#include "log.h"
#include "sa_error.h"
}

/* Bits of the device error flag, read and cleared by ops->sync. */
#define SA_CUDA_FLAG_SLOT 1u  /* kv_write: slot < 0 */
#define SA_CUDA_FLAG_BLOCK 2u /* attention: block_table entry < 0 */

/* Decode GEMV kernel handles M <= this; larger M goes to cuBLAS. */
#define SA_CUDA_GEMV_MAX_M 8
/* M up to this runs as one cuBLAS GEMM over stacked [x_hi; x_lo] rows (W read
 * once: the memory-bound regime); larger M as two GEMMs accumulating in y. */
#define SA_CUDA_STACK_MAX_M 64

typedef struct sa_cuda {
  sa_backend_t be; /* first member: (sa_cuda_t *)be */
  int device;
  int sm_count;
  cudaStream_t stream;
  cublasHandle_t cublas;
  void *cublas_ws; /* cuBLAS workspace, fixed at creation */
  size_t cublas_ws_bytes;
  uint16_t *xs; /* bf16 hi/lo split of matmul inputs */
  size_t xs_bytes;
  float *gout; /* stacked GEMM output scratch */
  size_t gout_bytes;
  unsigned *dflag;  /* device error flag */
  int32_t *h_ids;   /* pinned host copy of embed ids */
  size_t h_ids_cap; /* in ids */
  float *inv_freq;  /* device RoPE inverse frequencies for (rope_theta, rope_hd) */
  float h_inv_freq[4096]; /* host staging of inv_freq (hd / 2 <= 4096) */
  float rope_theta;
  int rope_hd;
  int split_x; /* 1: x = hi + lo in bf16 (near fp32); 0: x rounded to bf16 */
} sa_cuda_t;

/* --- launchers (cuda_gemv.cu) --- */
/* y[M,N] (+)= x[M,K]·W[N,K]ᵀ + bias, fp32 x read exactly, M <= GEMV_MAX_M. */
cudaError_t sa__cuda_gemv(cudaStream_t st, int sm_count, float *y,
                          const float *x, const uint16_t *w,
                          const uint16_t *bias, int M, int N, int K,
                          int accumulate);

/* --- launchers (cuda_quant.cu) --- */
/* kernels.h matmul_q and quantize_q8, bit-identical to the CPU's. */
cudaError_t sa__cuda_matmul_q(cudaStream_t st, float *y, const int8_t *xq, const float *xd,
                              int wtype, const void *wq, const uint16_t *wd,
                              const uint16_t *bias, int M, int N, int K, int accumulate);
cudaError_t sa__cuda_quantize_q8(cudaStream_t st, int8_t *xq, float *xd, const float *x, int M,
                                 int K);

/* --- launchers (cuda_elementwise.cu) --- */
/* hi[m,k] = bf16(x), lo[m,k] = bf16(x - hi) over x[M,K]; hi and lo are
 * [M,K]. lo may be NULL (rounding only). */
cudaError_t sa__cuda_split_bf16(cudaStream_t st, uint16_t *hi, uint16_t *lo,
                                const float *x, int M, int K);
/* y[m, n] = (acc ? y : 0) + g[m, n] + (g2 ? g2[m, n] : 0) + bias[n] over
 * y[M, N] with leading dimension ldy; g and g2 have leading dimension ldg. */
cudaError_t sa__cuda_combine(cudaStream_t st, float *y, int ldy,
                             const float *g, const float *g2, int ldg,
                             const uint16_t *bias, int M, int N, int acc);
cudaError_t sa__cuda_rmsnorm(cudaStream_t st, float *y, const float *x,
                             const uint16_t *w, int M, int H, float eps);
cudaError_t sa__cuda_layernorm(cudaStream_t st, float *y, const float *x,
                               const uint16_t *w, const uint16_t *b, int M,
                               int H, float eps);
cudaError_t sa__cuda_rope(cudaStream_t st, float *x, const int32_t *pos,
                          const float *inv_freq, int M, int n_heads, int hd,
                          int row_stride);
cudaError_t sa__cuda_silu_mul(cudaStream_t st, float *y, const float *gu,
                              int M, int I);
cudaError_t sa__cuda_unary(cudaStream_t st, int op, float *x, size_t n);
#define SA_CUDA_UNARY_GELU 0
#define SA_CUDA_UNARY_RELU 1
cudaError_t sa__cuda_add(cudaStream_t st, float *y, const float *x, size_t n);
cudaError_t sa__cuda_softmax(cudaStream_t st, float *x, int M, int N);
cudaError_t sa__cuda_embed(cudaStream_t st, float *y, const uint16_t *table,
                           const int32_t *ids, int M, int H, int V);
cudaError_t sa__cuda_kv_write(cudaStream_t st, void *kc, void *vc, int kv_type,
                              const float *k, const float *v, int row_stride,
                              const int32_t *slot, int M, int kv_dim,
                              unsigned *flag);
/* col[t, c*Kw + k] = x[t*stride + k - pad, c] (0 outside), written as bf16
 * hi at col and lo at col + Tout*Cin*Kw (lo skipped when split == 0). */
cudaError_t sa__cuda_im2col(cudaStream_t st, uint16_t *col, const float *x,
                            int Tin, int Cin, int Kw, int stride, int pad,
                            int Tout, int split);

/* --- launchers (cuda_attention.cu) --- */
/* Paged causal GQA attention (kernels.h); rows come from q_start on the
 * device, so the grid is persistent and loops over (row, head) items. */
cudaError_t sa__cuda_attention(cudaStream_t st, int sm_count, float *out,
                               const float *q, int q_stride, const void *kc,
                               const void *vc, int kv_type, const sa_attn_batch_t *b,
                               int nh, int nkv, int hd, float scale,
                               unsigned *flag);
cudaError_t sa__cuda_attention_dense(cudaStream_t st, int sm_count, float *out,
                                     const float *q, const float *k,
                                     const float *v, int T, int nh, int hd,
                                     int n_valid, float scale);
#define SA_CUDA_ATTN_MAX_HD 256

#endif /* SA_CUDA_IMPL_H */
