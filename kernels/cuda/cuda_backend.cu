/*
 * cuda_backend — the CUDA backend of kernels.h: the ops table, device memory,
 * the stream, cuBLAS and the matmul dispatch. Kernels live in cuda_gemv.cu,
 * cuda_elementwise.cu and cuda_attention.cu. Not a memory pool: ops->alloc
 * is cudaMalloc and is only for load/admission time.
 *
 * One stream per backend; every op is enqueued on it and returns before the
 * GPU has finished (download and sync wait). Every CUDA and cuBLAS call and
 * every launch is checked; a failure logs one line and returns SA_ECUDA.
 * Errors that only the device can see (kv_write slot < 0, attention block
 * table entry < 0) set a device flag that ops->sync reports as SA_ERANGE.
 *
 * Matmul numbers: x is fp32 and W bf16. M <= SA_CUDA_GEMV_MAX_M runs the own
 * GEMV kernel that reads x exactly. Larger M uses cuBLAS bf16 GEMMs with fp32
 * accumulation on x split as x ≈ hi + lo (both bf16, 16 mantissa bits), so
 * results stay close to fp32 math at twice the tensor-core work; the
 * environment variable SA_CUDA_MATMUL=bf16 (read at creation) drops lo and
 * rounds x to bf16 instead (PyTorch bf16 numbers, half the work).
 * Scratch (cuBLAS workspace, the bf16 copies of x, the stacked GEMM output,
 * the pinned id buffer) is reserved at creation; a step never allocates:
 * large M is processed in row chunks that fit the scratch.
 *
 * Reference: the plain CPU backend (kernels/cpu/ref.c) op for op. Tests:
 * tests/cuda/test_cuda_kernels.c test_matmul (M = 1..300 on odd N, K; GEMV
 * path atol 1e-5·sqrt(K), split-GEMM path 1e-4·sqrt(K), rtol 1e-4, and with
 * SA_CUDA_MATMUL=bf16 at 100x those bounds), tests/cuda/test_cuda_model.c (the tiny model's
 * logits against the CPU backend) and test_cuda_nccl.c (two GPUs).
 * Benchmark: bench-cuda "prefill GEMM" (TFLOP/s against measured cuBLAS
 * peak, split and bf16 modes).
 */
#include "cuda_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "sa_cuda.h"
}

#define SA_CUDA_CUBLAS_WS (32u << 20)
#define SA_CUDA_XS_BYTES (128u << 20)
#define SA_CUDA_GOUT_BYTES (32u << 20)
#define SA_CUDA_IDS_CAP (1u << 20)
#define SA_CUDA_ROPE_CAP 4096 /* max hd / 2, = sa_cuda_t.h_inv_freq */

#define CK(call)                                                               \
  do {                                                                         \
    cudaError_t e_ = (call);                                                   \
    if (e_ != cudaSuccess) {                                                   \
      SA_LOG_ERROR("cuda: %s: %s (%s)", #call, cudaGetErrorString(e_),         \
                   cudaGetErrorName(e_));                                      \
      return SA_ECUDA;                                                         \
    }                                                                          \
  } while (0)

#define CKB(call)                                                              \
  do {                                                                         \
    cublasStatus_t s_ = (call);                                                \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                         \
      SA_LOG_ERROR("cublas: %s: %s", #call, cublasGetStatusString(s_));        \
      return SA_ECUDA;                                                         \
    }                                                                          \
  } while (0)

/* Every op makes the backend's device current: ops may run on any thread. */
#define ENTER(be)                                                              \
  sa_cuda_t *cx = (sa_cuda_t *)(be);                                           \
  CK(cudaSetDevice(cx->device))

/* --- memory ---------------------------------------------------------------- */

static void *cu_alloc(sa_backend_t *be, size_t bytes) {
  sa_cuda_t *cx = (sa_cuda_t *)be;
  void *p = NULL;
  cudaError_t e = cudaSetDevice(cx->device);
  if (e == cudaSuccess)
    e = cudaMalloc(&p, bytes ? bytes : 64);
  if (e != cudaSuccess) {
    SA_LOG_ERROR("cuda: cudaMalloc(%zu bytes) on device %d: %s", bytes,
                 cx->device, cudaGetErrorString(e));
    return NULL;
  }
  return p;
}

static void cu_free(sa_backend_t *be, void *p) {
  sa_cuda_t *cx = (sa_cuda_t *)be;
  if (!p)
    return;
  cudaError_t e = cudaSetDevice(cx->device);
  if (e == cudaSuccess)
    e = cudaFree(p);
  if (e != cudaSuccess)
    SA_LOG_ERROR("cuda: cudaFree: %s", cudaGetErrorString(e));
}

static int cu_upload(sa_backend_t *be, void *dst, const void *src, size_t n) {
  ENTER(be);
  if (n == 0)
    return 0;
  if (!dst || !src)
    return SA_EINVAL;
  /* From pageable memory the copy is staged before the call returns, so
   * the caller may reuse src at once. */
  CK(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, cx->stream));
  return 0;
}

static int cu_download(sa_backend_t *be, void *dst, const void *src,
                       size_t n) {
  ENTER(be);
  if (n == 0)
    return 0;
  if (!dst || !src)
    return SA_EINVAL;
  CK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, cx->stream));
  CK(cudaStreamSynchronize(cx->stream));
  return 0;
}

static int cu_copy(sa_backend_t *be, void *dst, const void *src, size_t n) {
  ENTER(be);
  if (n == 0)
    return 0;
  if (!dst || !src)
    return SA_EINVAL;
  CK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, cx->stream));
  return 0;
}

static int cu_memset0(sa_backend_t *be, void *dst, size_t n) {
  ENTER(be);
  if (n == 0)
    return 0;
  if (!dst)
    return SA_EINVAL;
  CK(cudaMemsetAsync(dst, 0, n, cx->stream));
  return 0;
}

static int cu_sync(sa_backend_t *be) {
  ENTER(be);
  unsigned *hf = (unsigned *)cx->h_ids; /* the first pinned word */
  CK(cudaMemcpyAsync(hf, cx->dflag, sizeof(unsigned), cudaMemcpyDeviceToHost,
                     cx->stream));
  CK(cudaStreamSynchronize(cx->stream));
  const unsigned f = *hf;
  if (f) {
    CK(cudaMemsetAsync(cx->dflag, 0, sizeof(unsigned), cx->stream));
    CK(cudaStreamSynchronize(cx->stream));
    if (f & SA_CUDA_FLAG_SLOT)
      SA_LOG_ERROR("cuda: kv_write got a slot < 0 (row skipped)");
    if (f & SA_CUDA_FLAG_BLOCK)
      SA_LOG_ERROR("cuda: attention met a block table entry < 0 or beyond "
                   "max_blocks (keys skipped)");
    return SA_ERANGE;
  }
  return 0;
}

/* --- matmul ---------------------------------------------------------------- */

/* C[rows, nc] (row-major, ldc) = X[rows, K] · W[nc, K]ᵀ, bf16 in, fp32 out.
 * In cuBLAS's column-major terms: Cᵀ (nc × rows) = op_T(W) · X. */
static int gemm(sa_cuda_t *cx, float *c, int ldc, const uint16_t *x, int rows,
                const uint16_t *w, int nc, int K, float beta) {
  const float alpha = 1.f;
  CKB(cublasGemmEx(cx->cublas, CUBLAS_OP_T, CUBLAS_OP_N, nc, rows, K, &alpha,
                   w, CUDA_R_16BF, K, x, CUDA_R_16BF, K, &beta, c, CUDA_R_32F,
                   ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return 0;
}

/* y[rows, N] (+)= (hi + lo)[rows, K] · W[N, K]ᵀ + bias, where xhl holds hi
 * [rows, K] followed by lo [rows, K] (lo only when split). */
static int gemm_rows(sa_cuda_t *cx, float *y, const uint16_t *xhl, int rows,
                     const uint16_t *w, const uint16_t *bias, int N, int K,
                     int acc, int split) {
  const int nx = split ? 2 : 1;
  if (rows <= SA_CUDA_STACK_MAX_M) {
    /* Memory-bound: one GEMM over the stacked [hi; lo] rows reads W once;
     * the halves are summed (with bias and y) by the combine kernel. */
    size_t nc_max = cx->gout_bytes / ((size_t)nx * rows * sizeof(float));
    if (nc_max > (size_t)N)
      nc_max = (size_t)N;
    for (int n0 = 0; n0 < N; n0 += (int)nc_max) {
      const int nc = (int)((size_t)(N - n0) < nc_max ? (size_t)(N - n0) : nc_max);
      int rc = gemm(cx, cx->gout, nc, xhl, nx * rows, w + (size_t)n0 * K, nc,
                    K, 0.f);
      if (rc)
        return rc;
      CK(sa__cuda_combine(cx->stream, y + n0, N, cx->gout,
                          split ? cx->gout + (size_t)rows * nc : NULL, nc,
                          bias ? bias + n0 : NULL, rows, nc, acc));
    }
    return 0;
  }
  /* Compute-bound: GEMMs accumulate straight into y. */
  float beta = 0.f;
  if (bias || acc) {
    if (bias)
      CK(sa__cuda_combine(cx->stream, y, N, NULL, NULL, 0, bias, rows, N, acc));
    beta = 1.f;
  }
  int rc = gemm(cx, y, N, xhl, rows, w, N, K, beta);
  if (!rc && split)
    rc = gemm(cx, y, N, xhl + (size_t)rows * K, rows, w, N, K, 1.f);
  return rc;
}

static int cu_matmul_bf16(sa_backend_t *be, float *y, const float *x,
                          const uint16_t *w, const uint16_t *bias, int M,
                          int N, int K, int accumulate) {
  ENTER(be);
  if (K == 0) {
    CK(sa__cuda_combine(cx->stream, y, N, NULL, NULL, 0, bias, M, N,
                        accumulate));
    return 0;
  }
  if (M <= SA_CUDA_GEMV_MAX_M) {
    CK(sa__cuda_gemv(cx->stream, cx->sm_count, y, x, w, bias, M, N, K,
                     accumulate));
    return 0;
  }
  const int nx = cx->split_x ? 2 : 1;
  const size_t per_row = (size_t)nx * K * sizeof(uint16_t);
  size_t mc = cx->xs_bytes / per_row;
  if (mc == 0) {
    SA_LOG_ERROR("cuda: matmul K=%d exceeds the reserved scratch", K);
    return SA_EINVAL;
  }
  for (int m0 = 0; m0 < M; m0 += (int)mc) {
    const int rows = (int)((size_t)(M - m0) < mc ? (size_t)(M - m0) : mc);
    CK(sa__cuda_split_bf16(cx->stream, cx->xs,
                           cx->split_x ? cx->xs + (size_t)rows * K : NULL,
                           x + (size_t)m0 * K, rows, K));
    int rc = gemm_rows(cx, y + (size_t)m0 * N, cx->xs, rows, w, bias, N, K,
                       accumulate, cx->split_x);
    if (rc)
      return rc;
  }
  return 0;
}

/* --- row and element ops --------------------------------------------------- */

static int cu_matmul_q(sa_backend_t *be, float *y, const int8_t *xq, const float *xd,
                       int wtype, const void *wq, const uint16_t *wd, const uint16_t *bias,
                       int M, int N, int K, int accumulate) {
  ENTER(be);
  CK(sa__cuda_matmul_q(cx->stream, y, xq, xd, wtype, wq, wd, bias, M, N, K, accumulate));
  return 0;
}

static int cu_quantize_q8(sa_backend_t *be, int8_t *xq, float *xd, const float *x, int M,
                          int K) {
  ENTER(be);
  CK(sa__cuda_quantize_q8(cx->stream, xq, xd, x, M, K));
  return 0;
}

static int cu_rmsnorm(sa_backend_t *be, float *y, const float *x,
                      const uint16_t *w, int M, int H, float eps) {
  ENTER(be);
  CK(sa__cuda_rmsnorm(cx->stream, y, x, w, M, H, eps));
  return 0;
}

static int cu_layernorm(sa_backend_t *be, float *y, const float *x,
                        const uint16_t *w, const uint16_t *b, int M, int H,
                        float eps) {
  ENTER(be);
  CK(sa__cuda_layernorm(cx->stream, y, x, w, b, M, H, eps));
  return 0;
}

static int cu_rope(sa_backend_t *be, float *x, const int32_t *pos, int M,
                   int n_heads, int hd, int row_stride, float theta) {
  ENTER(be);
  if (hd / 2 > SA_CUDA_ROPE_CAP) /* this kernel's limit */
    return SA_EINVAL;
  if (M == 0)
    return 0;
  if (cx->rope_hd != hd || cx->rope_theta != theta) {
    /* The inverse frequencies are computed on the host exactly as the
     * reference does (libm powf), so angles round identically. The copy
     * from pageable memory is staged before cudaMemcpyAsync returns. */
    float *inv = cx->h_inv_freq;
    for (int i = 0; i < hd / 2; i++)
      inv[i] = 1.0f / powf(theta, (float)(2 * i) / (float)hd);
    CK(cudaMemcpyAsync(cx->inv_freq, inv, sizeof(float) * (hd / 2),
                       cudaMemcpyHostToDevice, cx->stream));
    cx->rope_hd = hd;
    cx->rope_theta = theta;
  }
  CK(sa__cuda_rope(cx->stream, x, pos, cx->inv_freq, M, n_heads, hd,
                   row_stride));
  return 0;
}

static int cu_silu_mul(sa_backend_t *be, float *y, const float *gu, int M,
                       int I) {
  ENTER(be);
  CK(sa__cuda_silu_mul(cx->stream, y, gu, M, I));
  return 0;
}

static int cu_gelu(sa_backend_t *be, float *x, size_t n) {
  ENTER(be);
  CK(sa__cuda_unary(cx->stream, SA_CUDA_UNARY_GELU, x, n));
  return 0;
}

static int cu_relu(sa_backend_t *be, float *x, size_t n) {
  ENTER(be);
  CK(sa__cuda_unary(cx->stream, SA_CUDA_UNARY_RELU, x, n));
  return 0;
}

static int cu_add(sa_backend_t *be, float *y, const float *x, size_t n) {
  ENTER(be);
  CK(sa__cuda_add(cx->stream, y, x, n));
  return 0;
}

static int cu_softmax(sa_backend_t *be, float *x, int M, int N) {
  ENTER(be);
  CK(sa__cuda_softmax(cx->stream, x, M, N));
  return 0;
}

static int cu_embed(sa_backend_t *be, float *y, const uint16_t *table,
                    const int32_t *ids, int M, int H, int V) {
  ENTER(be);
  if ((size_t)M > cx->h_ids_cap) {
    SA_LOG_ERROR("cuda: embed M=%d exceeds the reserved %zu ids", M,
                 cx->h_ids_cap);
    return SA_EINVAL;
  }
  /* Range check on the host (kernels.h promises SA_ERANGE from this call):
   * the ids are small and the step needs them on the GPU only after this. */
  CK(cudaMemcpyAsync(cx->h_ids, ids, sizeof(int32_t) * M,
                     cudaMemcpyDeviceToHost, cx->stream));
  CK(cudaStreamSynchronize(cx->stream));
  for (int m = 0; m < M; m++)
    if (cx->h_ids[m] < 0 || cx->h_ids[m] >= V) {
      SA_LOG_ERROR("cuda: embed id %d at row %d outside [0, %d)",
                   (int)cx->h_ids[m], m, V);
      return SA_ERANGE;
    }
  CK(sa__cuda_embed(cx->stream, y, table, ids, M, H, V));
  return 0;
}

/* --- attention ------------------------------------------------------------- */

static int cu_kv_write(sa_backend_t *be, void *k_cache, void *v_cache, int kv_type,
                       const float *k, const float *v, int row_stride,
                       const int32_t *slot, int M, int kv_dim) {
  ENTER(be);
  CK(sa__cuda_kv_write(cx->stream, k_cache, v_cache, kv_type, k, v, row_stride, slot,
                       M, kv_dim, cx->dflag));
  return 0;
}

static int cu_attention(sa_backend_t *be, float *out, const float *q,
                        int q_stride, const void *k_cache, const void *v_cache,
                        int kv_type, const sa_attn_batch_t *batch,
                        int nh, int nkv, int hd, float scale) {
  ENTER(be);
  if (hd > SA_CUDA_ATTN_MAX_HD) /* this kernel's limit */
    return SA_EINVAL;
  CK(sa__cuda_attention(cx->stream, cx->sm_count, out, q, q_stride, k_cache,
                        v_cache, kv_type, batch, nh, nkv, hd, scale, cx->dflag));
  return 0;
}

static int cu_attention_dense(sa_backend_t *be, float *out, const float *q,
                              const float *k, const float *v, int T, int nh,
                              int hd, int n_valid, float scale) {
  ENTER(be);
  if (hd > SA_CUDA_ATTN_MAX_HD) /* this kernel's limit */
    return SA_EINVAL;
  CK(sa__cuda_attention_dense(cx->stream, cx->sm_count, out, q, k, v, T, nh,
                              hd, n_valid, scale));
  return 0;
}

/* --- conv1d ---------------------------------------------------------------- */

static int conv_tout(int Tin, int Kw, int stride, int pad) {
  return Tin + 2 * pad - Kw < 0 ? 0 : (Tin + 2 * pad - Kw) / stride + 1;
}

/* im2col as bf16 hi and lo halves: 2 × Tout × Cin·Kw × 2 bytes. */
static size_t cu_conv1d_ws_bytes(int Tin, int Cin, int Kw, int stride,
                                 int pad) {
  if (Tin < 0 || Cin <= 0 || Kw <= 0 || stride <= 0 || pad < 0)
    return 0;
  return (size_t)2 * conv_tout(Tin, Kw, stride, pad) * Cin * Kw *
         sizeof(uint16_t);
}

static int cu_conv1d(sa_backend_t *be, float *y, const float *x,
                     const uint16_t *w, const uint16_t *bias, int Tin, int Cin,
                     int Cout, int Kw, int stride, int pad, void *ws) {
  ENTER(be);
  const int Tout = conv_tout(Tin, Kw, stride, pad);
  if (Tout == 0)
    return 0;
  uint16_t *col = (uint16_t *)ws;
  CK(sa__cuda_im2col(cx->stream, col, x, Tin, Cin, Kw, stride, pad, Tout,
                     cx->split_x));
  return gemm_rows(cx, y, col, Tout, w, bias, Cout, Cin * Kw, 0, cx->split_x);
}

/* --- lifetime -------------------------------------------------------------- */

static void cu_destroy(sa_backend_t *be) {
  sa_cuda_t *cx = (sa_cuda_t *)be;
  if (!cx)
    return;
  cudaSetDevice(cx->device);
  if (cx->stream)
    cudaStreamSynchronize(cx->stream);
  if (cx->cublas)
    cublasDestroy(cx->cublas);
  cudaFree(cx->cublas_ws);
  cudaFree(cx->xs);
  cudaFree(cx->gout);
  cudaFree(cx->dflag);
  cudaFree(cx->inv_freq);
  if (cx->h_ids)
    cudaFreeHost(cx->h_ids);
  if (cx->stream)
    cudaStreamDestroy(cx->stream);
  free(cx);
}

static const sa_backend_ops_t cuda_ops_table = {
    /* name */ "cuda",
    /* alloc */ cu_alloc,
    /* free */ cu_free,
    /* upload */ cu_upload,
    /* download */ cu_download,
    /* copy */ cu_copy,
    /* memset0 */ cu_memset0,
    /* sync */ cu_sync,
    /* matmul_bf16 */ cu_matmul_bf16,
    /* matmul_q */ cu_matmul_q,
    /* pack_q */ NULL, /* the CUDA kernels read the row-major layouts */
    /* quantize_q8 */ cu_quantize_q8,
    /* rmsnorm */ cu_rmsnorm,
    /* layernorm */ cu_layernorm,
    /* rope */ cu_rope,
    /* silu_mul */ cu_silu_mul,
    /* gelu */ cu_gelu,
    /* relu */ cu_relu,
    /* add */ cu_add,
    /* softmax */ cu_softmax,
    /* embed */ cu_embed,
    /* kv_write */ cu_kv_write,
    /* attention */ cu_attention,
    /* attention_dense */ cu_attention_dense,
    /* conv1d */ cu_conv1d,
    /* conv1d_ws_bytes */ cu_conv1d_ws_bytes,
    /* destroy */ cu_destroy,
};

#define CKN(call)                                                              \
  do {                                                                         \
    cudaError_t e_ = (call);                                                   \
    if (e_ != cudaSuccess) {                                                   \
      SA_LOG_ERROR("cuda: device %d: %s: %s", device, #call,                   \
                   cudaGetErrorString(e_));                                    \
      goto fail;                                                               \
    }                                                                          \
  } while (0)

#define CKBN(call)                                                             \
  do {                                                                         \
    cublasStatus_t s_ = (call);                                                \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                         \
      SA_LOG_ERROR("cublas: device %d: %s: %s", device, #call,                 \
                   cublasGetStatusString(s_));                                 \
      goto fail;                                                               \
    }                                                                          \
  } while (0)

extern "C" sa_backend_t *sa__backend_cuda_new(int device) {
  int count = sa_cuda_device_count();
  if (device < 0 || device >= count) {
    SA_LOG_ERROR("cuda: device %d not available (%d CUDA device(s) found)",
                 device, count);
    return NULL;
  }
  sa_cuda_t *cx = (sa_cuda_t *)calloc(1, sizeof(*cx));
  if (!cx) {
    SA_LOG_ERROR("cuda: out of host memory");
    return NULL;
  }
  cx->be.ops = &cuda_ops_table;
  cx->be.impl = cx;
  cx->device = device;
  cx->rope_hd = -1;
  {
    const char *mode = getenv("SA_CUDA_MATMUL");
    cx->split_x = !(mode && strcmp(mode, "bf16") == 0);
  }
  CKN(cudaSetDevice(device));
  CKN(cudaDeviceGetAttribute(&cx->sm_count, cudaDevAttrMultiProcessorCount,
                             device));
  CKN(cudaStreamCreateWithFlags(&cx->stream, cudaStreamNonBlocking));
  CKBN(cublasCreate(&cx->cublas));
  CKBN(cublasSetStream(cx->cublas, cx->stream));
  cx->cublas_ws_bytes = SA_CUDA_CUBLAS_WS;
  CKN(cudaMalloc(&cx->cublas_ws, cx->cublas_ws_bytes));
  CKBN(cublasSetWorkspace(cx->cublas, cx->cublas_ws, cx->cublas_ws_bytes));
  cx->xs_bytes = SA_CUDA_XS_BYTES;
  CKN(cudaMalloc((void **)&cx->xs, cx->xs_bytes));
  cx->gout_bytes = SA_CUDA_GOUT_BYTES;
  CKN(cudaMalloc((void **)&cx->gout, cx->gout_bytes));
  CKN(cudaMalloc((void **)&cx->dflag, sizeof(unsigned)));
  CKN(cudaMemset(cx->dflag, 0, sizeof(unsigned)));
  CKN(cudaMalloc((void **)&cx->inv_freq, sizeof(float) * SA_CUDA_ROPE_CAP));
  cx->h_ids_cap = SA_CUDA_IDS_CAP;
  CKN(cudaMallocHost((void **)&cx->h_ids, sizeof(int32_t) * cx->h_ids_cap));
  {
    cudaDeviceProp prop;
    CKN(cudaGetDeviceProperties(&prop, device));
    SA_LOG_INFO("cuda: device %d %s, %d SMs, %.1f GiB, matmul x %s", device,
                prop.name, cx->sm_count,
                (double)prop.totalGlobalMem / (1024.0 * 1024 * 1024),
                cx->split_x ? "split hi+lo bf16" : "rounded to bf16");
  }
  return &cx->be;
fail:
  cu_destroy(&cx->be);
  return NULL;
}

extern "C" int sa_cuda_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError(); /* clear the (non-sticky) error */
    return 0;
  }
  return n;
}

extern "C" void *sa_cuda_backend_stream(sa_backend_t *be) {
  if (!be || be->ops != &cuda_ops_table)
    return NULL;
  return (void *)((sa_cuda_t *)be)->stream;
}

extern "C" int sa_cuda_backend_device(sa_backend_t *be) {
  if (!be || be->ops != &cuda_ops_table)
    return -1;
  return ((sa_cuda_t *)be)->device;
}
