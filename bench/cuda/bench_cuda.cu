/*
 * bench-cuda — measured speed of the CUDA backend's hot ops against the
 * device's own limits:
 *   - peaks: theoretical HBM bandwidth (memory clock × bus width × 2), a
 *     measured device-to-device cudaMemcpy bandwidth, and cuBLAS bf16 GEMM
 *     (fp32 accumulate) on a large square as the measured FLOP peak;
 *   - decode GEMV (M = 1..32) in GB/s of weights read, as a fraction of both
 *     bandwidth figures (weights rotate over >= 256 MiB so L2 cannot hold them);
 *   - paged attention decode in GB/s of KV read;
 *   - prefill GEMM (M = 512..4096, 5120 × 5120) in TFLOP/s (2·M·N·K per call)
 *     with x split hi+lo (default) and rounded to bf16 (SA_CUDA_MATMUL=bf16).
 * Exits 77 with "skipped: no GPU" when there is none. Not a test: it checks
 * nothing, it prints figures.
 */
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "kernels.h"
#include "sa_cuda.h"
#include "sa_error.h"
}

#define DIE_IF(cond, ...)                                                      \
  do {                                                                         \
    if (cond) {                                                                \
      fprintf(stderr, "bench-cuda: " __VA_ARGS__);                             \
      fprintf(stderr, "\n");                                                   \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)
#define CK(call)                                                               \
  do {                                                                         \
    cudaError_t e_ = (call);                                                   \
    DIE_IF(e_ != cudaSuccess, "%s: %s", #call, cudaGetErrorString(e_));        \
  } while (0)
#define OK(call)                                                               \
  do {                                                                         \
    int rc_ = (call);                                                          \
    DIE_IF(rc_ != 0, "%s: %s", #call, sa_strerror(rc_));                       \
  } while (0)

static double g_bw_theory, g_bw_copy, g_flops_peak; /* bytes/s, flop/s */

/* Times `body` (enqueued on stream st) over iters runs after 2 warm-ups;
 * returns seconds per run. */
template <typename F> static double time_it(cudaStream_t st, int iters, F body) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < 2; i++)
    body(i);
  CK(cudaStreamSynchronize(st));
  CK(cudaEventRecord(a, st));
  for (int i = 0; i < iters; i++)
    body(i);
  CK(cudaEventRecord(b, st));
  CK(cudaEventSynchronize(b));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, a, b));
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  return ms * 1e-3 / iters;
}

static void fill_bf16(sa_backend_t *be, void *dst, size_t n) {
  uint16_t *h = (uint16_t *)malloc(n * 2);
  for (size_t i = 0; i < n; i++)
    h[i] = (uint16_t)(0x3c00u + (i * 2654435761u >> 24) % 0x100u); /* ~[0.0078,0.0156) */
  OK(be->ops->upload(be, dst, h, n * 2));
  free(h);
}

static void fill_f32(sa_backend_t *be, void *dst, size_t n, float v) {
  float *h = (float *)malloc(n * 4);
  for (size_t i = 0; i < n; i++)
    h[i] = v * (float)((i * 2654435761u >> 20) % 1000) / 1000.f;
  OK(be->ops->upload(be, dst, h, n * 4));
  free(h);
}

static void peaks(int dev) {
  cudaDeviceProp p;
  CK(cudaGetDeviceProperties(&p, dev));
  int clk_khz = 0, bus_bits = 0;
  CK(cudaDeviceGetAttribute(&clk_khz, cudaDevAttrMemoryClockRate, dev));
  CK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev));
  g_bw_theory = 2.0 * clk_khz * 1e3 * bus_bits / 8.0;
  printf("device %d: %s, sm_%d%d, %d SMs, %.1f GiB, L2 %.0f MiB\n", dev, p.name,
         p.major, p.minor, p.multiProcessorCount,
         p.totalGlobalMem / 1073741824.0, p.l2CacheSize / 1048576.0);
  printf("peak  HBM theoretical (2 x %d MHz x %d bit): %.0f GB/s\n",
         clk_khz / 1000, bus_bits, g_bw_theory / 1e9);

  cudaStream_t st;
  CK(cudaStreamCreate(&st));
  size_t n = (size_t)1 << 30;
  void *a, *b;
  CK(cudaMalloc(&a, n));
  CK(cudaMalloc(&b, n));
  CK(cudaMemset(a, 1, n));
  double t = time_it(st, 10, [&](int) {
    CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, st));
  });
  g_bw_copy = 2.0 * n / t; /* read + write */
  printf("peak  D2D cudaMemcpy (1 GiB, read+write): %.0f GB/s = %.2f of "
         "theoretical\n",
         g_bw_copy / 1e9, g_bw_copy / g_bw_theory);
  CK(cudaFree(a));
  CK(cudaFree(b));

  cublasHandle_t h;
  DIE_IF(cublasCreate(&h) != CUBLAS_STATUS_SUCCESS, "cublasCreate");
  cublasSetStream(h, st);
  const int S = 8192;
  void *A, *B, *C;
  CK(cudaMalloc(&A, (size_t)S * S * 2));
  CK(cudaMalloc(&B, (size_t)S * S * 2));
  CK(cudaMalloc(&C, (size_t)S * S * 4));
  CK(cudaMemset(A, 0, (size_t)S * S * 2));
  CK(cudaMemset(B, 0, (size_t)S * S * 2));
  const float one = 1.f, zero = 0.f;
  t = time_it(st, 10, [&](int) {
    cublasStatus_t s = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, S, S, S, &one,
                                    A, CUDA_R_16BF, S, B, CUDA_R_16BF, S, &zero,
                                    C, CUDA_R_32F, S, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT);
    DIE_IF(s != CUBLAS_STATUS_SUCCESS, "cublasGemmEx: %d", (int)s);
  });
  g_flops_peak = 2.0 * S * S * S / t;
  printf("peak  cuBLAS bf16 GEMM %dx%dx%d (fp32 out): %.1f TFLOP/s (measured "
         "FLOP peak)\n\n",
         S, S, S, g_flops_peak / 1e12);
  cublasDestroy(h);
  CK(cudaFree(A));
  CK(cudaFree(B));
  CK(cudaFree(C));
  CK(cudaStreamDestroy(st));
}

static void bench_gemv(sa_backend_t *be, int M, int N, int K) {
  cudaStream_t st = (cudaStream_t)sa_cuda_backend_stream(be);
  const size_t wbytes = (size_t)N * K * 2;
  int copies = (int)((256u << 20) / wbytes) + 1;
  if (copies > 64)
    copies = 64;
  uint16_t **w = (uint16_t **)calloc(copies, sizeof(*w));
  for (int i = 0; i < copies; i++) {
    w[i] = (uint16_t *)be->ops->alloc(be, wbytes);
    DIE_IF(!w[i], "alloc W");
    fill_bf16(be, w[i], (size_t)N * K);
  }
  float *x = (float *)be->ops->alloc(be, (size_t)M * K * 4);
  float *y = (float *)be->ops->alloc(be, (size_t)M * N * 4);
  fill_f32(be, x, (size_t)M * K, 1.f);
  double t = time_it(st, 50, [&](int i) {
    OK(sa_op_matmul_bf16(be, y, x, w[i % copies], NULL, M, N, K, 0));
  });
  double bytes = wbytes + (double)M * K * 4 + (double)M * N * 4;
  double bw = bytes / t;
  printf("gemv  M=%-2d N=%-6d K=%-5d %8.1f us %7.0f GB/s = %.2f of theoretical, "
         "%.2f of memcpy\n",
         M, N, K, t * 1e6, bw / 1e9, bw / g_bw_theory, bw / g_bw_copy);
  for (int i = 0; i < copies; i++)
    be->ops->free(be, w[i]);
  free(w);
  be->ops->free(be, x);
  be->ops->free(be, y);
}

static void bench_attention(sa_backend_t *be, int n_seqs, int ctx) {
  cudaStream_t st = (cudaStream_t)sa_cuda_backend_stream(be);
  const int nh = 40, nkv = 8, hd = 128, bs = 16;
  const int kv_dim = nkv * hd, max_blocks = (ctx + bs - 1) / bs;
  const size_t n_blocks = (size_t)n_seqs * max_blocks;
  const size_t cache_f = n_blocks * bs * kv_dim;
  float *kc = (float *)be->ops->alloc(be, cache_f * 4);
  float *vc = (float *)be->ops->alloc(be, cache_f * 4);
  DIE_IF(!kc || !vc, "alloc KV cache (%zu MiB)", cache_f * 8 >> 20);
  OK(be->ops->memset0(be, kc, cache_f * 4));
  OK(be->ops->memset0(be, vc, cache_f * 4));
  float *q = (float *)be->ops->alloc(be, (size_t)n_seqs * nh * hd * 4);
  float *out = (float *)be->ops->alloc(be, (size_t)n_seqs * nh * hd * 4);
  fill_f32(be, q, (size_t)n_seqs * nh * hd, 1.f);
  int32_t *h_bt = (int32_t *)malloc(sizeof(int32_t) * n_blocks);
  int32_t *h_qs = (int32_t *)malloc(sizeof(int32_t) * (n_seqs + 1));
  int32_t *h_cl = (int32_t *)malloc(sizeof(int32_t) * n_seqs);
  for (size_t i = 0; i < n_blocks; i++)
    h_bt[i] = (int32_t)i;
  for (int s = 0; s <= n_seqs; s++)
    h_qs[s] = s;
  for (int s = 0; s < n_seqs; s++)
    h_cl[s] = ctx;
  int32_t *bt = (int32_t *)be->ops->alloc(be, sizeof(int32_t) * n_blocks);
  int32_t *qs = (int32_t *)be->ops->alloc(be, sizeof(int32_t) * (n_seqs + 1));
  int32_t *cl = (int32_t *)be->ops->alloc(be, sizeof(int32_t) * n_seqs);
  OK(be->ops->upload(be, bt, h_bt, sizeof(int32_t) * n_blocks));
  OK(be->ops->upload(be, qs, h_qs, sizeof(int32_t) * (n_seqs + 1)));
  OK(be->ops->upload(be, cl, h_cl, sizeof(int32_t) * n_seqs));
  sa_attn_batch_t b = {n_seqs, qs, cl, bt, max_blocks, bs, ctx};
  double t = time_it(st, 10, [&](int) {
    OK(sa_op_attention(be, out, q, nh * hd, kc, vc, SA_KV_F32, &b, nh, nkv, hd,
                          1.f / sqrtf((float)hd)));
  });
  OK(be->ops->sync(be));
  double bytes = 2.0 * n_seqs * ctx * kv_dim * 4;
  double bw = bytes / t;
  printf("attn  decode seqs=%-3d ctx=%-5d nh=%d nkv=%d hd=%d %8.1f us %7.0f "
         "GB/s of KV = %.2f of theoretical, %.2f of memcpy\n",
         n_seqs, ctx, nh, nkv, hd, t * 1e6, bw / 1e9, bw / g_bw_theory,
         bw / g_bw_copy);
  be->ops->free(be, kc);
  be->ops->free(be, vc);
  be->ops->free(be, q);
  be->ops->free(be, out);
  be->ops->free(be, bt);
  be->ops->free(be, qs);
  be->ops->free(be, cl);
  free(h_bt);
  free(h_qs);
  free(h_cl);
}

static void bench_gemm(sa_backend_t *be, const char *tag, int M, int N, int K) {
  cudaStream_t st = (cudaStream_t)sa_cuda_backend_stream(be);
  uint16_t *w = (uint16_t *)be->ops->alloc(be, (size_t)N * K * 2);
  float *x = (float *)be->ops->alloc(be, (size_t)M * K * 4);
  float *y = (float *)be->ops->alloc(be, (size_t)M * N * 4);
  DIE_IF(!w || !x || !y, "alloc GEMM");
  fill_bf16(be, w, (size_t)N * K);
  fill_f32(be, x, (size_t)M * K, 1.f);
  double t = time_it(st, 10, [&](int) {
    OK(sa_op_matmul_bf16(be, y, x, w, NULL, M, N, K, 0));
  });
  double fl = 2.0 * M * N * K / t;
  printf("gemm  %-14s M=%-4d N=%d K=%d %8.1f us %6.1f TFLOP/s = %.2f of "
         "cuBLAS bf16 peak\n",
         tag, M, N, K, t * 1e6, fl / 1e12, fl / g_flops_peak);
  be->ops->free(be, w);
  be->ops->free(be, x);
  be->ops->free(be, y);
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (sa_cuda_device_count() == 0) {
    printf("skipped: no GPU\n");
    return 77;
  }
  peaks(0);
  sa_backend_t *be = sa_backend_new("cuda:0", 0);
  DIE_IF(!be, "sa_backend_new(cuda:0) failed");
  static const int gemv_shapes[][2] = {{5120, 5120}, {27648, 5120},
                                       {5120, 27648}, {151936, 896}};
  for (size_t s = 0; s < sizeof gemv_shapes / sizeof gemv_shapes[0]; s++)
    bench_gemv(be, 1, gemv_shapes[s][0], gemv_shapes[s][1]);
  static const int Ms[] = {2, 4, 8, 16, 32};
  for (size_t i = 0; i < sizeof Ms / sizeof Ms[0]; i++)
    bench_gemv(be, Ms[i], 5120, 5120);
  printf("\n");
  bench_attention(be, 32, 4096);
  bench_attention(be, 8, 16384);
  bench_attention(be, 1, 32768);
  printf("\n");
  static const int Pm[] = {512, 1024, 2048, 4096};
  for (size_t i = 0; i < sizeof Pm / sizeof Pm[0]; i++)
    bench_gemm(be, "x split hi+lo", Pm[i], 5120, 5120);
  sa_backend_destroy(&be);
  setenv("SA_CUDA_MATMUL", "bf16", 1);
  be = sa_backend_new("cuda:0", 0);
  DIE_IF(!be, "sa_backend_new(cuda:0) [bf16] failed");
  for (size_t i = 0; i < sizeof Pm / sizeof Pm[0]; i++)
    bench_gemm(be, "x bf16", Pm[i], 5120, 5120);
  bench_gemv(be, 16, 5120, 5120);
  bench_gemv(be, 32, 5120, 5120);
  sa_backend_destroy(&be);
  return 0;
}
