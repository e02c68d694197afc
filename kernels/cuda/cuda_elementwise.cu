/*
 * cuda_elementwise — the CUDA backend's row and element kernels: norms, RoPE,
 * activations, residual add, softmax, embedding, KV cache writes, im2col and
 * the bf16 split/combine helpers of the matmul path. Not the matmul itself
 * (cuda_gemv.cu, cuBLAS) nor attention (cuda_attention.cu).
 *
 * Row kernels (norms, softmax) run one block per row with a block reduction
 * in fp32; element kernels are grid-stride loops. These ops are a small
 * share of a layer's time next to the weight reads, so they aim at being
 * simple and exact (expf, erff, two-pass variance) rather than clever.
 *
 * Reference: the plain CPU backend (kernels/cpu/ref.c). Tests:
 * tests/cuda/test_cuda_kernels.c test_norms, test_rope, test_elementwise,
 * test_embed, test_conv1d (odd row lengths; norms 1e-5, activations and
 * adds 1e-6..1e-7 + 1e-5 relative, embedding and KV writes bit-exact).
 * Benchmark: none of its own (a few percent of a step; bench-cuda times
 * whole ops where it matters).
 */
#include "cuda_impl.h"

#include <math.h>

namespace {

constexpr int kRowThreads = 256;

__device__ __forceinline__ float bf(uint16_t h) {
  return __uint_as_float((unsigned)h << 16);
}

/* Round to nearest even, as sa_f32_to_bf16 (NaN kept quiet). */
__device__ __forceinline__ uint16_t to_bf(float f) {
  unsigned u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    return (uint16_t)((u >> 16) | 0x0040u);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* Sum (or max) over the block; every thread gets the result. */
template <bool MAX> __device__ float block_reduce(float v, float *sh) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float t = __shfl_xor_sync(0xffffffffu, v, o);
    v = MAX ? fmaxf(v, t) : v + t;
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int nw = blockDim.x >> 5;
  __syncthreads(); /* sh may still be read by a previous reduction */
  if (lane == 0)
    sh[warp] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : (MAX ? -INFINITY : 0.f);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float t = __shfl_xor_sync(0xffffffffu, v, o);
    v = MAX ? fmaxf(v, t) : v + t;
  }
  return v;
}

unsigned grid_for(size_t n, int threads) {
  size_t b = (n + threads - 1) / threads;
  return (unsigned)(b > 65535u * 8 ? 65535u * 8 : (b ? b : 1));
}

__global__ void split_kernel(uint16_t *hi, uint16_t *lo, const float *x,
                             size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    const float v = x[i];
    const uint16_t h = to_bf(v);
    hi[i] = h;
    if (lo)
      lo[i] = to_bf(v - bf(h));
  }
}

__global__ void combine_kernel(float *y, int ldy, const float *g,
                               const float *g2, int ldg,
                               const uint16_t *bias, int M, int N, int acc) {
  const size_t n_all = (size_t)M * N;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n_all;
       i += (size_t)gridDim.x * blockDim.x) {
    const int m = (int)(i / N), n = (int)(i % N);
    float s = 0.f;
    if (g)
      s = g[(size_t)m * ldg + n];
    if (g2)
      s += g2[(size_t)m * ldg + n];
    if (bias)
      s += bf(bias[n]);
    float *yp = y + (size_t)m * ldy + n;
    *yp = acc ? *yp + s : s;
  }
}

__global__ void rmsnorm_kernel(float *y, const float *x, const uint16_t *w,
                               int H, float eps) {
  __shared__ float sh[32];
  const float *xr = x + (size_t)blockIdx.x * H;
  float *yr = y + (size_t)blockIdx.x * H;
  float ss = 0.f;
  for (int i = threadIdx.x; i < H; i += blockDim.x)
    ss += xr[i] * xr[i];
  ss = block_reduce<false>(ss, sh);
  const float r = 1.f / sqrtf(ss / (float)H + eps);
  for (int i = threadIdx.x; i < H; i += blockDim.x)
    yr[i] = xr[i] * r * bf(w[i]);
}

__global__ void layernorm_kernel(float *y, const float *x, const uint16_t *w,
                                 const uint16_t *b, int H, float eps) {
  __shared__ float sh[32];
  const float *xr = x + (size_t)blockIdx.x * H;
  float *yr = y + (size_t)blockIdx.x * H;
  float s = 0.f;
  for (int i = threadIdx.x; i < H; i += blockDim.x)
    s += xr[i];
  const float mean = block_reduce<false>(s, sh) / (float)H;
  float v = 0.f;
  for (int i = threadIdx.x; i < H; i += blockDim.x) {
    const float d = xr[i] - mean;
    v += d * d;
  }
  const float r = 1.f / sqrtf(block_reduce<false>(v, sh) / (float)H + eps);
  for (int i = threadIdx.x; i < H; i += blockDim.x)
    yr[i] = (xr[i] - mean) * r * bf(w[i]) + bf(b[i]);
}

/* One block per (row, head); inv_freq is the host-computed fp32 table so the
 * angle pos * inv_freq rounds exactly as the reference's. */
__global__ void rope_kernel(float *x, const int32_t *pos,
                            const float *inv_freq, int n_heads, int hd,
                            int row_stride) {
  const int m = blockIdx.x / n_heads, h = blockIdx.x % n_heads;
  const int half = hd / 2;
  float *v = x + (size_t)m * row_stride + (size_t)h * hd;
  const float p = (float)pos[m];
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float ang = __fmul_rn(p, inv_freq[i]);
    double s, c;
    sincos((double)ang, &s, &c);
    const double a = v[i], b = v[i + half];
    v[i] = (float)(a * c - b * s);
    v[i + half] = (float)(b * c + a * s);
  }
}

__global__ void silu_mul_kernel(float *y, const float *gu, int M, int I) {
  const size_t n = (size_t)M * I;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    const size_t m = i / I, j = i % I;
    const float g = gu[m * 2 * I + j], u = gu[m * 2 * I + I + j];
    y[i] = g / (1.f + expf(-g)) * u;
  }
}

__global__ void unary_kernel(int op, float *x, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    const float v = x[i];
    x[i] = op == SA_CUDA_UNARY_GELU ? 0.5f * v * (1.f + erff(v * 0.70710678118654752f))
                                    : fmaxf(v, 0.f);
  }
}

__global__ void add_kernel(float *y, const float *x, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    y[i] += x[i];
}

__global__ void softmax_kernel(float *x, int N) {
  __shared__ float sh[32];
  float *xr = x + (size_t)blockIdx.x * N;
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < N; i += blockDim.x)
    mx = fmaxf(mx, xr[i]);
  mx = block_reduce<true>(mx, sh);
  float s = 0.f;
  for (int i = threadIdx.x; i < N; i += blockDim.x) {
    const float e = expf(xr[i] - mx);
    xr[i] = e;
    s += e;
  }
  const float inv = 1.f / block_reduce<false>(s, sh);
  for (int i = threadIdx.x; i < N; i += blockDim.x)
    xr[i] *= inv;
}

/* ids were range-checked on the host; an id out of range still writes 0s. */
__global__ void embed_kernel(float *y, const uint16_t *table,
                             const int32_t *ids, int H, int V) {
  const int m = blockIdx.x;
  const int id = ids[m];
  float *yr = y + (size_t)m * H;
  const bool ok = id >= 0 && id < V;
  const uint16_t *tr = table + (size_t)(ok ? id : 0) * H;
  for (int i = threadIdx.x; i < H; i += blockDim.x)
    yr[i] = ok ? bf(tr[i]) : 0.f;
}

template <typename T> __device__ __forceinline__ T kv_store(float x);
template <> __device__ __forceinline__ float kv_store<float>(float x) { return x; }
template <> __device__ __forceinline__ uint16_t kv_store<uint16_t>(float x) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}

template <typename T>
__global__ void kv_write_kernel(T *kc, T *vc, const float *k,
                                const float *v, int row_stride,
                                const int32_t *slot, int kv_dim,
                                unsigned *flag) {
  const int m = blockIdx.x;
  const int s = slot[m];
  if (s < 0) {
    if (threadIdx.x == 0)
      atomicOr(flag, SA_CUDA_FLAG_SLOT);
    return;
  }
  for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
    kc[(size_t)s * kv_dim + i] = kv_store<T>(k[(size_t)m * row_stride + i]);
    vc[(size_t)s * kv_dim + i] = kv_store<T>(v[(size_t)m * row_stride + i]);
  }
}

/* q8 KV rows (kernels.h SA_KV_Q8_0): one warp per block of 32 values, the
 * CPU's rule to the bit (IEEE division, round-half-even, NaN -> -127). */
__global__ void kv_write_q8_kernel(uint8_t *kc, uint8_t *vc, const float *k, const float *v,
                                   int row_stride, const int32_t *slot, int kv_dim,
                                   unsigned *flag) {
  const int m = blockIdx.x, lane = threadIdx.x & 31;
  const int s = slot[m];
  if (s < 0) {
    if (threadIdx.x == 0)
      atomicOr(flag, SA_CUDA_FLAG_SLOT);
    return;
  }
  const int nb = kv_dim / SA_QK;
  const size_t row = (size_t)nb * SA_KV_Q8_0_BLOCK;
  for (int w = threadIdx.x >> 5; w < 2 * nb; w += blockDim.x >> 5) {
    const int b = w % nb;
    const float x = (w < nb ? k : v)[(size_t)m * row_stride + (size_t)b * SA_QK + lane];
    float amax = fabsf(x);
    for (int o = 16; o > 0; o >>= 1)
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    const float q = fminf(fmaxf(rintf(x * id), -127.0f), 127.0f);
    uint8_t *blk = (w < nb ? kc : vc) + (size_t)s * row + (size_t)b * SA_KV_Q8_0_BLOCK;
    blk[4 + lane] = (uint8_t)(int8_t)q;
    if (lane < 4)
      blk[lane] = ((const uint8_t *)&d)[lane];
  }
}

__global__ void im2col_kernel(uint16_t *col, const float *x, int Tin, int Cin,
                              int Kw, int stride, int pad, int Tout,
                              int split) {
  const size_t ck = (size_t)Cin * Kw, n = (size_t)Tout * ck;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    const int t = (int)(i / ck);
    const int r = (int)(i % ck);
    const int c = r / Kw, kk = r % Kw;
    const int ti = t * stride + kk - pad;
    const float v = (ti >= 0 && ti < Tin) ? x[(size_t)ti * Cin + c] : 0.f;
    const uint16_t h = to_bf(v);
    col[i] = h;
    if (split)
      col[n + i] = to_bf(v - bf(h));
  }
}

} // namespace

#define SA_LAUNCH_1D(kernel, n, ...)                                           \
  do {                                                                         \
    if ((n) == 0)                                                              \
      return cudaSuccess;                                                      \
    kernel<<<grid_for((n), 256), 256, 0, st>>>(__VA_ARGS__);                   \
    return cudaGetLastError();                                                 \
  } while (0)

cudaError_t sa__cuda_split_bf16(cudaStream_t st, uint16_t *hi, uint16_t *lo,
                                const float *x, int M, int K) {
  const size_t n = (size_t)M * K;
  SA_LAUNCH_1D(split_kernel, n, hi, lo, x, n);
}

cudaError_t sa__cuda_combine(cudaStream_t st, float *y, int ldy,
                             const float *g, const float *g2, int ldg,
                             const uint16_t *bias, int M, int N, int acc) {
  const size_t n = (size_t)M * N;
  SA_LAUNCH_1D(combine_kernel, n, y, ldy, g, g2, ldg, bias, M, N, acc);
}

cudaError_t sa__cuda_rmsnorm(cudaStream_t st, float *y, const float *x,
                             const uint16_t *w, int M, int H, float eps) {
  if (M == 0)
    return cudaSuccess;
  rmsnorm_kernel<<<M, kRowThreads, 0, st>>>(y, x, w, H, eps);
  return cudaGetLastError();
}

cudaError_t sa__cuda_layernorm(cudaStream_t st, float *y, const float *x,
                               const uint16_t *w, const uint16_t *b, int M,
                               int H, float eps) {
  if (M == 0)
    return cudaSuccess;
  layernorm_kernel<<<M, kRowThreads, 0, st>>>(y, x, w, b, H, eps);
  return cudaGetLastError();
}

cudaError_t sa__cuda_rope(cudaStream_t st, float *x, const int32_t *pos,
                          const float *inv_freq, int M, int n_heads, int hd,
                          int row_stride) {
  if (M == 0)
    return cudaSuccess;
  const int half = hd / 2;
  const int threads = half >= 128 ? 128 : ((half + 31) / 32) * 32;
  rope_kernel<<<(unsigned)M * n_heads, threads, 0, st>>>(x, pos, inv_freq,
                                                        n_heads, hd, row_stride);
  return cudaGetLastError();
}

cudaError_t sa__cuda_silu_mul(cudaStream_t st, float *y, const float *gu,
                              int M, int I) {
  const size_t n = (size_t)M * I;
  SA_LAUNCH_1D(silu_mul_kernel, n, y, gu, M, I);
}

cudaError_t sa__cuda_unary(cudaStream_t st, int op, float *x, size_t n) {
  SA_LAUNCH_1D(unary_kernel, n, op, x, n);
}

cudaError_t sa__cuda_add(cudaStream_t st, float *y, const float *x, size_t n) {
  SA_LAUNCH_1D(add_kernel, n, y, x, n);
}

cudaError_t sa__cuda_softmax(cudaStream_t st, float *x, int M, int N) {
  if (M == 0)
    return cudaSuccess;
  softmax_kernel<<<M, kRowThreads, 0, st>>>(x, N);
  return cudaGetLastError();
}

cudaError_t sa__cuda_embed(cudaStream_t st, float *y, const uint16_t *table,
                           const int32_t *ids, int M, int H, int V) {
  if (M == 0)
    return cudaSuccess;
  embed_kernel<<<M, kRowThreads, 0, st>>>(y, table, ids, H, V);
  return cudaGetLastError();
}

cudaError_t sa__cuda_kv_write(cudaStream_t st, void *kc, void *vc, int kv_type,
                              const float *k, const float *v, int row_stride,
                              const int32_t *slot, int M, int kv_dim,
                              unsigned *flag) {
  if (M == 0)
    return cudaSuccess;
  if (kv_type == SA_KV_Q8_0)
    kv_write_q8_kernel<<<M, kRowThreads, 0, st>>>((uint8_t *)kc, (uint8_t *)vc, k, v,
                                                  row_stride, slot, kv_dim, flag);
  else if (kv_type == SA_KV_BF16)
    kv_write_kernel<uint16_t><<<M, kRowThreads, 0, st>>>(
        (uint16_t *)kc, (uint16_t *)vc, k, v, row_stride, slot, kv_dim, flag);
  else
    kv_write_kernel<float><<<M, kRowThreads, 0, st>>>((float *)kc, (float *)vc, k, v,
                                                      row_stride, slot, kv_dim, flag);
  return cudaGetLastError();
}

cudaError_t sa__cuda_im2col(cudaStream_t st, uint16_t *col, const float *x,
                            int Tin, int Cin, int Kw, int stride, int pad,
                            int Tout, int split) {
  const size_t n = (size_t)Tout * Cin * Kw;
  SA_LAUNCH_1D(im2col_kernel, n, col, x, Tin, Cin, Kw, stride, pad, Tout,
               split);
}
