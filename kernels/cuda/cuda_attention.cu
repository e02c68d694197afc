/*
 * cuda_attention — attention kernels of the CUDA backend: causal GQA over the
 * paged KV cache (prefill and decode) and the encoder's dense attention with
 * a key-validity bound. Not flash attention: one warp per (query row, head)
 * with an online softmax over tiles of 32 keys, fp32 arithmetic (a bf16
 * paged cache is widened on load).
 *
 * How it works: the warp's query (pre-scaled) sits in shared memory; each
 * lane scores one key of the tile (a full dot product, q read by broadcast),
 * the warp takes the tile max and sum with shuffles, then accumulates V with
 * lanes owning output dims (coalesced 128-byte reads of each V row). The grid
 * is persistent and loops over (row, head) items because the number of rows
 * of a paged batch lives in device memory (q_start[n_seqs]). Query heads that
 * share a KV head are adjacent items, so their K/V reads hit L2.
 * Known limit: one sequence with few heads leaves SMs idle in decode (no
 * split-KV), and K is read row-per-lane (L1 absorbs the stride).
 *
 * Reference: sa_backend_ref_new's attention_paged / attention_dense
 * (kernels/cpu/ref.c, sums in double). Test: tests/cuda/test_cuda_kernels.c
 * test_attention (GQA groups, block sizes, chunked prefill, masked keys;
 * |cuda - ref| <= 2e-6·sqrt(head_dim) + 1e-4·|ref|) and, whole-model,
 * tests/cuda/test_cuda_model.c. Benchmark: bench-cuda "paged attention
 * decode" (GB/s of KV read against the measured device bandwidth).
 */
#include "cuda_impl.h"

#include <math.h>

namespace {

constexpr int kWarps = 4;
constexpr int kMaxD = SA_CUDA_ATTN_MAX_HD / 32; /* output dims per lane */

struct attn_args {
  float *out;
  const float *q;
  int q_stride;
  const void *k, *v; /* float, bf16 or q8 blocks (paged cache of kv_type) */
  /* paged */
  int paged;
  int n_seqs;
  const int32_t *q_start, *ctx_len, *block_table;
  int max_blocks, block_size;
  unsigned *flag;
  /* dense */
  int T, n_valid;
  int nh, nkv, hd;
  float scale;
  int vec4; /* hd % 4 == 0, kv row stride % 4 == 0, bases 16-byte aligned */
};

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/* Value i of a cache of element type T (i counts values, as in fp32). */
struct kv_q8 { /* a q8 cache (kernels.h SA_KV_Q8_0): blocks of d, then 32 int8 */
  uint8_t byte;
};
__device__ __forceinline__ float kv_at(const float *p, long long i) { return __ldg(p + i); }
__device__ __forceinline__ float kv_at(const uint16_t *p, long long i) {
  return __uint_as_float((unsigned)__ldg(p + i) << 16);
}
__device__ __forceinline__ float kv_at(const kv_q8 *p, long long i) {
  const uint8_t *blk = (const uint8_t *)p + (i >> 5) * SA_KV_Q8_0_BLOCK;
  return __ldg((const float *)blk) * (float)(int8_t)__ldg(blk + 4 + (i & 31));
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32) attn_kernel(attn_args a) {
  const T *ak = (const T *)a.k, *av = (const T *)a.v;
  __shared__ float qs[kWarps][SA_CUDA_ATTN_MAX_HD];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int hd = a.hd;
  const int rows = a.paged ? a.q_start[a.n_seqs] : a.T;
  const long total = (long)rows * a.nh;
  const int group = a.nh / a.nkv;
  const int kv_stride = a.paged ? a.nkv * hd : a.nh * hd; /* floats per key */
  for (long item = (long)blockIdx.x * kWarps + warp; item < total;
       item += (long)gridDim.x * kWarps) {
    const int row = (int)(item / a.nh), h = (int)(item % a.nh);
    int n_keys, kvh;
    const int32_t *bt = nullptr;
    if (a.paged) {
      int lo = 0, hi = a.n_seqs - 1; /* last s with q_start[s] <= row */
      while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (a.q_start[mid] <= row)
          lo = mid;
        else
          hi = mid - 1;
      }
      const int s = lo;
      const int n_new = a.q_start[s + 1] - a.q_start[s];
      n_keys = a.ctx_len[s] - n_new + (row - a.q_start[s]) + 1;
      kvh = h / group;
      bt = a.block_table + (size_t)s * a.max_blocks;
    } else {
      n_keys = a.n_valid;
      kvh = h;
    }
    const float *qr = a.q + (size_t)row * a.q_stride + (size_t)h * hd;
    for (int d = lane; d < hd; d += 32)
      qs[warp][d] = qr[d] * a.scale;
    __syncwarp();

    float m = -INFINITY, l = 0.f, acc[kMaxD];
#pragma unroll
    for (int i = 0; i < kMaxD; i++)
      acc[i] = 0.f;
    for (int t0 = 0; t0 < n_keys; t0 += 32) {
      const int j = t0 + lane;
      float sc = -INFINITY;
      long long off = -1;
      if (j < n_keys) {
        if (a.paged) {
          const int bi = j / a.block_size;
          const int blk = bi < a.max_blocks ? bt[bi] : -1;
          if (blk >= 0)
            off = ((long long)blk * a.block_size + j % a.block_size) *
                      kv_stride + (long long)kvh * hd;
          else
            atomicOr(a.flag, SA_CUDA_FLAG_BLOCK);
        } else {
          off = (long long)j * kv_stride + (long long)kvh * hd;
        }
      }
      if (off >= 0) {
        float s = 0.f;
        if (sizeof(T) == 4 && a.vec4) {
          for (int d = 0; d < hd; d += 4) {
            const float4 kv4 =
                __ldg(reinterpret_cast<const float4 *>((const float *)ak + off + d));
            s = fmaf(qs[warp][d], kv4.x, s);
            s = fmaf(qs[warp][d + 1], kv4.y, s);
            s = fmaf(qs[warp][d + 2], kv4.z, s);
            s = fmaf(qs[warp][d + 3], kv4.w, s);
          }
        } else {
          for (int d = 0; d < hd; d++)
            s = fmaf(qs[warp][d], kv_at(ak, off + d), s);
        }
        sc = s;
      }
      const float m_new = fmaxf(m, warp_max(sc));
      if (m_new == -INFINITY) /* whole tile masked (bad block) */
        continue;
      const float alpha = expf(m - m_new); /* 0 when m = -inf */
      const float p = off >= 0 ? expf(sc - m_new) : 0.f;
      l = l * alpha + warp_sum(p);
#pragma unroll
      for (int i = 0; i < kMaxD; i++)
        acc[i] *= alpha;
      const int nt = min(32, n_keys - t0);
      for (int jj = 0; jj < nt; jj++) {
        const float pj = __shfl_sync(0xffffffffu, p, jj);
        const long long oj = __shfl_sync(0xffffffffu, off, jj);
        if (oj < 0)
          continue;
#pragma unroll
        for (int i = 0; i < kMaxD; i++) {
          const int d = lane + 32 * i;
          if (d < hd)
            acc[i] = fmaf(pj, kv_at(av, oj + d), acc[i]);
        }
      }
      m = m_new;
    }
    const float inv = l > 0.f ? 1.f / l : 0.f;
    float *orow = a.out + (size_t)row * a.nh * hd + (size_t)h * hd;
#pragma unroll
    for (int i = 0; i < kMaxD; i++) {
      const int d = lane + 32 * i;
      if (d < hd)
        orow[d] = acc[i] * inv;
    }
    __syncwarp(); /* qs is rewritten by the next item */
  }
}

int aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

} // namespace

cudaError_t sa__cuda_attention(cudaStream_t st, int sm_count, float *out,
                               const float *q, int q_stride, const void *kc,
                               const void *vc, int kv_type, const sa_attn_batch_t *b,
                               int nh, int nkv, int hd, float scale,
                               unsigned *flag) {
  attn_args a = {};
  a.out = out;
  a.q = q;
  a.q_stride = q_stride;
  a.k = kc;
  a.v = vc;
  a.paged = 1;
  a.n_seqs = b->n_seqs;
  a.q_start = b->q_start;
  a.ctx_len = b->ctx_len;
  a.block_table = b->block_table;
  a.max_blocks = b->max_blocks;
  a.block_size = b->block_size;
  a.flag = flag;
  a.nh = nh;
  a.nkv = nkv;
  a.hd = hd;
  a.scale = scale;
  a.vec4 = hd % 4 == 0 && aligned16(kc) && aligned16(vc);
  /* Rows are unknown on the host: a persistent grid of a full wave. */
  if (kv_type == SA_KV_Q8_0)
    attn_kernel<kv_q8><<<(unsigned)(sm_count * 16), kWarps * 32, 0, st>>>(a);
  else if (kv_type == SA_KV_BF16)
    attn_kernel<uint16_t><<<(unsigned)(sm_count * 16), kWarps * 32, 0, st>>>(a);
  else
    attn_kernel<float><<<(unsigned)(sm_count * 16), kWarps * 32, 0, st>>>(a);
  return cudaGetLastError();
}

cudaError_t sa__cuda_attention_dense(cudaStream_t st, int sm_count, float *out,
                                     const float *q, const float *k,
                                     const float *v, int T, int nh, int hd,
                                     int n_valid, float scale) {
  if (T == 0)
    return cudaSuccess;
  attn_args a = {};
  a.out = out;
  a.q = q;
  a.q_stride = nh * hd;
  a.k = k;
  a.v = v;
  a.paged = 0;
  a.T = T;
  a.n_valid = n_valid;
  a.nh = nh;
  a.nkv = nh;
  a.hd = hd;
  a.scale = scale;
  a.vec4 = hd % 4 == 0 && aligned16(k) && aligned16(v);
  const long items = (long)T * nh;
  long blocks = (items + kWarps - 1) / kWarps;
  if (blocks > (long)sm_count * 16)
    blocks = (long)sm_count * 16;
  attn_kernel<float><<<(unsigned)blocks, kWarps * 32, 0, st>>>(a);
  return cudaGetLastError();
}
