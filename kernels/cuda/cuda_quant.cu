/*
 * cuda_quant — the quantized matmul and the q8 activation blocks on CUDA
 * (kernels.h matmul_q, quantize_q8), bit-identical to the CPU's
 * (kernels/cpu/quant.c): the block dots are exact integers and each output
 * adds its blocks in order with one fmaf each.
 *
 * matmul_q: a warp per output (m, n). Each lane takes one block of a run
 * of 32 (its 32 bytes of x and of W: the warp reads 1 KiB of a W row at
 * once), computes the block's integer dot and c_b; then every lane folds
 * the 32 (isum, c) pairs in block order through shuffles, so the sum's
 * order is the scalar one.
 * quantize_q8: a warp per block of 32 (a lane per element): the max by a
 * shuffle reduction (max is exact in any order), then the same operations
 * as the scalar row quantizer.
 */
#include "cuda_impl.h"

__device__ static inline int32_t q_block_dot(const int8_t *xb, int wtype, const void *wq,
                                             size_t n, int b, int K) {
  int32_t s = 0;
  if (wtype == SA_WQ_Q8_0) {
    const int8_t *w = (const int8_t *)wq + n * (size_t)K + (size_t)b * SA_QK;
    for (int j = 0; j < SA_QK; j += 4) {
      int xv = *(const int *)(xb + j), wv = *(const int *)(w + j);
      s = __dp4a(xv, wv, s);
    }
  } else {
    const uint8_t *w = (const uint8_t *)wq + n * (size_t)(K / 2) + (size_t)b * (SA_QK / 2);
    for (int j = 0; j < SA_QK / 2; j++) {
      s += (int32_t)xb[j] * ((w[j] & 15) - 8);
      s += (int32_t)xb[j + SA_QK / 2] * ((w[j] >> 4) - 8);
    }
  }
  return s;
}

__global__ static void k_matmul_q(float *y, const int8_t *xq, const float *xd, int wtype,
                                  const void *wq, const uint16_t *wd, const uint16_t *bias,
                                  int M, int N, int K, int accumulate) {
  long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  int lane = threadIdx.x & 31;
  if (warp >= (long long)M * N)
    return;
  int m = (int)(warp / N), n = (int)(warp % N);
  int KB = K / SA_QK;
  const int8_t *xr = xq + (size_t)m * K;
  float s = 0.0f;
  for (int b0 = 0; b0 < KB; b0 += 32) {
    int b = b0 + lane;
    float isum = 0.0f, c = 0.0f;
    if (b < KB) {
      isum = (float)q_block_dot(xr + (size_t)b * SA_QK, wtype, wq, (size_t)n, b, K);
      c = xd[(size_t)m * KB + b] * __half2float(__ushort_as_half(wd[(size_t)n * KB + b]));
    }
    int run = KB - b0 < 32 ? KB - b0 : 32;
    for (int i = 0; i < run; i++)
      s = fmaf(__shfl_sync(0xffffffffu, isum, i), __shfl_sync(0xffffffffu, c, i), s);
  }
  if (lane == 0) {
    float *yo = y + (size_t)m * N + n;
    float init = accumulate ? *yo : 0.0f;
    if (bias)
      init += __uint_as_float((unsigned)bias[n] << 16);
    *yo = init + s;
  }
}

__global__ static void k_quantize_q8(int8_t *xq, float *xd, const float *x, long long blocks) {
  long long blk = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  int lane = threadIdx.x & 31;
  if (blk >= blocks)
    return;
  float v = x[blk * SA_QK + lane];
  float amax = fabsf(v);
  amax = amax != amax ? 0.0f : amax; /* fmaxf in the scalar loop skips NaN */
  for (int o = 16; o; o >>= 1)
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  float d = __fdiv_rn(amax, 127.0f);
  float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
  float r = rintf(__fmul_rn(v, id));
  r = r > -127.0f ? r : -127.0f;
  r = r < 127.0f ? r : 127.0f;
  xq[blk * SA_QK + lane] = (int8_t)r;
  if (lane == 0)
    xd[blk] = d;
}

cudaError_t sa__cuda_matmul_q(cudaStream_t st, float *y, const int8_t *xq, const float *xd,
                              int wtype, const void *wq, const uint16_t *wd,
                              const uint16_t *bias, int M, int N, int K, int accumulate) {
  long long threads = (long long)M * N * 32;
  k_matmul_q<<<(unsigned)((threads + 255) / 256), 256, 0, st>>>(y, xq, xd, wtype, wq, wd, bias,
                                                                  M, N, K, accumulate);
  return cudaGetLastError();
}

cudaError_t sa__cuda_quantize_q8(cudaStream_t st, int8_t *xq, float *xd, const float *x, int M,
                                 int K) {
  long long blocks = (long long)M * (K / SA_QK);
  k_quantize_q8<<<(unsigned)((blocks * 32 + 255) / 256), 256, 0, st>>>(xq, xd, x, blocks);
  return cudaGetLastError();
}
