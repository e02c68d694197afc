/*
 * cuda_gemv — the decode GEMV: y[M,N] (+)= x[M,K]·W[N,K]ᵀ + bias for small M
 * (1..SA_CUDA_GEMV_MAX_M), bf16 W, fp32 x read exactly, fp32 accumulation.
 * Not a general GEMM: larger M goes to cuBLAS (cuda_backend.cu).
 *
 * Why it runs at memory bandwidth: W is read exactly once, 16 bytes (8 bf16)
 * per lane per load, coalesced across the warp (a warp streams 512 contiguous
 * bytes of a row per step); each warp owns R rows of W and issues 2×R such
 * loads before using them, so enough bytes are in flight per SM. x (M rows of
 * K floats) is small and re-read from L1/L2; each x load feeds R rows of W,
 * which keeps the L1 traffic per W byte (2·M/R) within L1 bandwidth.
 * Shapes with K % 8 != 0 or misaligned pointers take a scalar path (correct,
 * not fast).
 *
 * Reference: the plain CPU backend's matmul (kernels/cpu/ref.c, sums in
 * double). Test: tests/cuda/test_cuda_kernels.c test_matmul for M <= 8
 * (atol 1e-5·sqrt(K), rtol 1e-4; odd N and K, bias and accumulate).
 * Benchmark: bench-cuda "decode GEMV" (M = 1..32, GB/s of weights read as a
 * fraction of theoretical and measured HBM bandwidth; weights rotate over
 * >= 256 MiB so L2 cannot hold them).
 */
#include "cuda_impl.h"

namespace {

constexpr int kWarps = 8; /* warps per block */

__device__ __forceinline__ void bf16x8_to_f32(const uint4 &u, float f[8]) {
  const unsigned v[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    f[2 * i] = __uint_as_float(v[i] << 16);
    f[2 * i + 1] = __uint_as_float(v[i] & 0xffff0000u);
  }
}

__device__ __forceinline__ float bf16_to_f32(uint16_t h) {
  return __uint_as_float((unsigned)h << 16);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <int MT, int R>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_kernel(float *__restrict__ y, const float *__restrict__ x,
                const uint16_t *__restrict__ w,
                const uint16_t *__restrict__ bias, int M, int N, int K,
                int accumulate, int vec) {
  const int lane = threadIdx.x & 31;
  const int n0 = (blockIdx.x * kWarps + (threadIdx.x >> 5)) * R;
  if (n0 >= N)
    return;
  float acc[R][MT];
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int m = 0; m < MT; m++)
      acc[r][m] = 0.f;
  /* Rows past N are clamped to row N-1 (loaded, never stored). */
  const uint16_t *wr[R];
#pragma unroll
  for (int r = 0; r < R; r++)
    wr[r] = w + (size_t)min(n0 + r, N - 1) * K;

  int kdone = 0;
  if (vec) {
    const int chunks = K >> 3; /* 8 bf16 per 16-byte load */
    int c = lane;
    /* Two chunks per lane per iteration: 2·R independent 16-byte loads. */
    for (; c + 32 < chunks; c += 64) {
      uint4 wv[2][R];
#pragma unroll
      for (int u = 0; u < 2; u++)
#pragma unroll
        for (int r = 0; r < R; r++)
          wv[u][r] = __ldg(reinterpret_cast<const uint4 *>(wr[r]) + c + 32 * u);
#pragma unroll
      for (int u = 0; u < 2; u++) {
        const int k = (c + 32 * u) << 3;
        float wf[R][8];
#pragma unroll
        for (int r = 0; r < R; r++)
          bf16x8_to_f32(wv[u][r], wf[r]);
#pragma unroll
        for (int m = 0; m < MT; m++) {
          if (m < M) {
            const float4 *xp =
                reinterpret_cast<const float4 *>(x + (size_t)m * K + k);
            const float4 a = __ldg(xp), b = __ldg(xp + 1);
            const float xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
            for (int r = 0; r < R; r++)
#pragma unroll
              for (int j = 0; j < 8; j++)
                acc[r][m] = fmaf(wf[r][j], xv[j], acc[r][m]);
          }
        }
      }
    }
    for (; c < chunks; c += 32) {
      const int k = c << 3;
      float wf[R][8];
#pragma unroll
      for (int r = 0; r < R; r++)
        bf16x8_to_f32(__ldg(reinterpret_cast<const uint4 *>(wr[r]) + c), wf[r]);
#pragma unroll
      for (int m = 0; m < MT; m++) {
        if (m < M) {
          const float4 *xp =
              reinterpret_cast<const float4 *>(x + (size_t)m * K + k);
          const float4 a = __ldg(xp), b = __ldg(xp + 1);
          const float xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
          for (int r = 0; r < R; r++)
#pragma unroll
            for (int j = 0; j < 8; j++)
              acc[r][m] = fmaf(wf[r][j], xv[j], acc[r][m]);
        }
      }
    }
    kdone = chunks << 3;
  }
  /* Scalar path: the whole row when !vec, else nothing (vec needs K % 8 == 0). */
  for (int k = kdone + lane; k < K; k += 32) {
    float wf[R];
#pragma unroll
    for (int r = 0; r < R; r++)
      wf[r] = bf16_to_f32(wr[r][k]);
#pragma unroll
    for (int m = 0; m < MT; m++) {
      if (m < M) {
        const float xv = x[(size_t)m * K + k];
#pragma unroll
        for (int r = 0; r < R; r++)
          acc[r][m] = fmaf(wf[r], xv, acc[r][m]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int m = 0; m < MT; m++)
      acc[r][m] = warp_sum(acc[r][m]);
  /* Lane r*MT+m stores (r, m): stores spread over lanes. */
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int m = 0; m < MT; m++) {
      const int n = n0 + r;
      if (lane == r * MT + m && m < M && n < N) {
        float s = acc[r][m];
        if (bias)
          s += bf16_to_f32(bias[n]);
        float *yp = y + (size_t)m * N + n;
        if (accumulate)
          s += *yp;
        *yp = s;
      }
    }
}

template <int MT, int R>
cudaError_t launch(cudaStream_t st, float *y, const float *x,
                   const uint16_t *w, const uint16_t *bias, int M, int N,
                   int K, int accumulate, int vec) {
  const long groups = (N + R - 1) / R;
  const unsigned blocks = (unsigned)((groups + kWarps - 1) / kWarps);
  gemv_kernel<MT, R><<<blocks, kWarps * 32, 0, st>>>(y, x, w, bias, M, N, K,
                                                    accumulate, vec);
  return cudaGetLastError();
}

} // namespace

cudaError_t sa__cuda_gemv(cudaStream_t st, int sm_count, float *y,
                          const float *x, const uint16_t *w,
                          const uint16_t *bias, int M, int N, int K,
                          int accumulate) {
  (void)sm_count;
  const int vec = (K % 8) == 0 && ((uintptr_t)w % 16) == 0 &&
                  ((uintptr_t)x % 16) == 0;
  if (M <= 1)
    return launch<1, 2>(st, y, x, w, bias, M, N, K, accumulate, vec);
  if (M <= 2)
    return launch<2, 2>(st, y, x, w, bias, M, N, K, accumulate, vec);
  if (M <= 4)
    return launch<4, 2>(st, y, x, w, bias, M, N, K, accumulate, vec);
  return launch<8, 4>(st, y, x, w, bias, M, N, K, accumulate, vec);
}
