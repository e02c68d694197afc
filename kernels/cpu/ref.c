/*
 * ref — the plain reference CPU backend ("ref").
 *
 * Every op of sa_backend_ops_t as the plainest loops that are obviously
 * right: sums accumulate in double, no blocking, no threads, no SIMD. This is
 * the definition the optimised CPU backend (cpu.c) and the CUDA backend are
 * tested against. It is slow on purpose and is not meant for serving.
 *
 * Memory is host memory from aligned_alloc(64); upload/download/copy are
 * memcpy and sync is a no-op.
 */
#include "backend_impl.h"
#include "cpu_impl.h"
#include "kernels.h"
#include "log.h"
#include "sa_error.h"
#include "tensor.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static float bf(uint16_t h) { return sa_bf16_to_f32(h); }

static int ref_matmul_bf16(sa_backend_t *be, float *y, const float *x,
                           const uint16_t *w, const uint16_t *bias, int M,
                           int N, int K, int accumulate) {
  (void)be;
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      double s = 0.0;
      for (int k = 0; k < K; k++)
        s += (double)x[(size_t)m * K + k] * (double)bf(w[(size_t)n * K + k]);
      if (bias)
        s += bf(bias[n]);
      if (accumulate)
        s += y[(size_t)m * N + n];
      y[(size_t)m * N + n] = (float)s;
    }
  return 0;
}

static int ref_matmul_q(sa_backend_t *be, float *y, const int8_t *xq, const float *xd,
                        int wtype, const void *wq, const uint16_t *wd, const uint16_t *bias,
                        int M, int N, int K, int accumulate) {
  (void)be;
  sa__mmq_scalar(y, xq, xd, wtype, wq, wd, bias, M, N, K, 0, N, accumulate);
  return 0;
}

static int ref_quantize_q8(sa_backend_t *be, int8_t *xq, float *xd, const float *x, int M,
                           int K) {
  (void)be;
  for (int m = 0; m < M; m++)
    sa__q8_quantize_row(xq + (size_t)m * K, xd + (size_t)m * (K / SA_QK), x + (size_t)m * K,
                        K);
  return 0;
}

static int ref_rmsnorm(sa_backend_t *be, float *y, const float *x,
                       const uint16_t *w, int M, int H, float eps) {
  (void)be;
  for (int m = 0; m < M; m++) {
    const float *xr = x + (size_t)m * H;
    float *yr = y + (size_t)m * H;
    double ss = 0.0;
    for (int i = 0; i < H; i++)
      ss += (double)xr[i] * xr[i];
    double r = 1.0 / sqrt(ss / H + eps);
    for (int i = 0; i < H; i++)
      yr[i] = (float)(xr[i] * r * bf(w[i]));
  }
  return 0;
}

static int ref_layernorm(sa_backend_t *be, float *y, const float *x,
                         const uint16_t *w, const uint16_t *b, int M, int H,
                         float eps) {
  (void)be;
  for (int m = 0; m < M; m++) {
    const float *xr = x + (size_t)m * H;
    float *yr = y + (size_t)m * H;
    double mean = 0.0, var = 0.0;
    for (int i = 0; i < H; i++)
      mean += xr[i];
    mean /= H;
    for (int i = 0; i < H; i++)
      var += (xr[i] - mean) * (xr[i] - mean);
    var /= H;
    double r = 1.0 / sqrt(var + eps);
    for (int i = 0; i < H; i++)
      yr[i] = (float)((xr[i] - mean) * r * bf(w[i]) + bf(b[i]));
  }
  return 0;
}

/* The angle follows Hugging Face's fp32 computation exactly:
 * inv_freq = 1 / theta^(2i/hd) in fp32, angle = fp32(pos) * inv_freq rounded
 * to fp32, then cos/sin of that fp32 angle. Matching the rounding of the
 * angle matters at large positions (pos * inv_freq ~ 1e4 rad). */
static int ref_rope(sa_backend_t *be, float *x, const int32_t *pos, int M,
                    int n_heads, int hd, int row_stride, float theta) {
  (void)be;
  int half = hd / 2;
  for (int m = 0; m < M; m++)
    for (int h = 0; h < n_heads; h++) {
      float *v = x + (size_t)m * row_stride + (size_t)h * hd;
      for (int i = 0; i < half; i++) {
        float inv = 1.0f / powf(theta, (float)(2 * i) / (float)hd);
        float ang = (float)pos[m] * inv;
        double c = cos((double)ang), s = sin((double)ang);
        double a = v[i], b = v[i + half];
        v[i] = (float)(a * c - b * s);
        v[i + half] = (float)(b * c + a * s);
      }
    }
  return 0;
}

static int ref_silu_mul(sa_backend_t *be, float *y, const float *gu, int M,
                        int I) {
  (void)be;
  for (int m = 0; m < M; m++)
    for (int i = 0; i < I; i++) {
      double g = gu[(size_t)m * 2 * I + i];
      double u = gu[(size_t)m * 2 * I + I + i];
      y[(size_t)m * I + i] = (float)(g / (1.0 + exp(-g)) * u);
    }
  return 0;
}

static int ref_gelu(sa_backend_t *be, float *x, size_t n) {
  (void)be;
  for (size_t i = 0; i < n; i++)
    x[i] = (float)(0.5 * x[i] * (1.0 + erf(x[i] / sqrt(2.0))));
  return 0;
}

static int ref_relu(sa_backend_t *be, float *x, size_t n) {
  (void)be;
  for (size_t i = 0; i < n; i++)
    if (x[i] < 0.0f)
      x[i] = 0.0f;
  return 0;
}

static int ref_add(sa_backend_t *be, float *y, const float *x, size_t n) {
  (void)be;
  for (size_t i = 0; i < n; i++)
    y[i] += x[i];
  return 0;
}

static int ref_softmax(sa_backend_t *be, float *x, int M, int N) {
  (void)be;
  for (int m = 0; m < M; m++) {
    float *r = x + (size_t)m * N;
    double mx = r[0], s = 0.0;
    for (int i = 1; i < N; i++)
      if (r[i] > mx)
        mx = r[i];
    for (int i = 0; i < N; i++)
      s += exp(r[i] - mx);
    for (int i = 0; i < N; i++)
      r[i] = (float)(exp(r[i] - mx) / s);
  }
  return 0;
}

static int ref_embed(sa_backend_t *be, float *y, const uint16_t *table,
                     const int32_t *ids, int M, int H, int V) {
  (void)be;
  for (int m = 0; m < M; m++) {
    if (ids[m] < 0 || ids[m] >= V)
      return SA_ERANGE;
    for (int i = 0; i < H; i++)
      y[(size_t)m * H + i] = bf(table[(size_t)ids[m] * H + i]);
  }
  return 0;
}

static int ref_kv_write(sa_backend_t *be, void *k_cache, void *v_cache, int kv_type,
                        const float *k, const float *v, int row_stride,
                        const int32_t *slot, int M, int kv_dim) {
  (void)be;
  for (int m = 0; m < M; m++) {
    if (slot[m] < 0)
      return SA_ERANGE;
    if (kv_type == SA_KV_Q8_0) {
      size_t row = sa_kv_row_bytes(kv_type, kv_dim), at = (size_t)slot[m] * row;
      sa__kv_q8_write_row((uint8_t *)k_cache + at, k + (size_t)m * row_stride, kv_dim);
      sa__kv_q8_write_row((uint8_t *)v_cache + at, v + (size_t)m * row_stride, kv_dim);
      continue;
    }
    for (int i = 0; i < kv_dim; i++) {
      size_t at = (size_t)slot[m] * kv_dim + i;
      float kx = k[(size_t)m * row_stride + i], vx = v[(size_t)m * row_stride + i];
      if (kv_type == SA_KV_BF16) {
        ((uint16_t *)k_cache)[at] = sa_f32_to_bf16(kx);
        ((uint16_t *)v_cache)[at] = sa_f32_to_bf16(vx);
      } else {
        ((float *)k_cache)[at] = kx;
        ((float *)v_cache)[at] = vx;
      }
    }
  }
  return 0;
}

/* One query row against keys 0..n_keys-1 given by pointer arrays: softmax of
 * scale * q·k, weighted sum of v. Dots are recomputed per pass (plain). */
static void ref_attend(float *out, const float *q, const float *const *kp,
                       const float *const *vp, int n_keys, int hd,
                       float scale) {
  double mx = -INFINITY, sum = 0.0;
  for (int p = 0; p < n_keys; p++) {
    double s = 0.0;
    for (int d = 0; d < hd; d++)
      s += (double)q[d] * kp[p][d];
    s *= scale;
    if (s > mx)
      mx = s;
  }
  for (int p = 0; p < n_keys; p++) {
    double s = 0.0;
    for (int d = 0; d < hd; d++)
      s += (double)q[d] * kp[p][d];
    sum += exp(s * scale - mx);
  }
  for (int d = 0; d < hd; d++) {
    double o = 0.0;
    for (int p = 0; p < n_keys; p++) {
      double s = 0.0;
      for (int e = 0; e < hd; e++)
        s += (double)q[e] * kp[p][e];
      o += exp(s * scale - mx) / sum * vp[p][d];
    }
    out[d] = (float)o;
  }
}

static int ref_attention(sa_backend_t *be, float *out, const float *q,
                         int q_stride, const void *k_cache, const void *v_cache,
                         int kv_type, const sa_attn_batch_t *batch,
                         int nh, int nkv, int hd, float scale) {
  (void)be;
  int group = nh / nkv, kv_dim = nkv * hd, bs = batch->block_size;
  const float **kp = NULL, **vp = NULL;
  float *kw = NULL, *vw = NULL; /* bf16 or q8 cache: the rows widened */
  int cap = 0, rc = 0;
  for (int s = 0; s < batch->n_seqs; s++) {
    int r0 = batch->q_start[s], r1 = batch->q_start[s + 1];
    int ctx = batch->ctx_len[s], n_new = r1 - r0;
    if (n_new < 0 || n_new > ctx || ctx > batch->max_blocks * bs ||
        ctx > batch->max_ctx) {
      rc = SA_EINVAL;
      goto done;
    }
    if (ctx > cap) { /* the reference may allocate: it is not a hot path */
      free(kp);
      free(vp);
      free(kw);
      free(vw);
      cap = ctx;
      kp = malloc(sizeof(*kp) * cap);
      vp = malloc(sizeof(*vp) * cap);
      kw = malloc(sizeof(float) * (size_t)cap * hd);
      vw = malloc(sizeof(float) * (size_t)cap * hd);
      if (!kp || !vp || !kw || !vw) {
        rc = SA_ENOMEM;
        goto done;
      }
    }
    for (int i = 0; i < n_new; i++) {
      int pos = ctx - n_new + i, row = r0 + i;
      for (int h = 0; h < nh; h++) {
        int kvh = h / group;
        for (int p = 0; p <= pos; p++) {
          int blk = batch->block_table[(size_t)s * batch->max_blocks + p / bs];
          if (blk < 0) {
            rc = SA_ERANGE;
            goto done;
          }
          size_t off = ((size_t)blk * bs + p % bs) * kv_dim + (size_t)kvh * hd;
          if (kv_type == SA_KV_Q8_0) {
            size_t at = ((size_t)blk * bs + p % bs) * sa_kv_row_bytes(kv_type, kv_dim) +
                        (size_t)kvh * (hd / SA_QK) * SA_KV_Q8_0_BLOCK;
            sa__kv_q8_read_row(kw + (size_t)p * hd, (const uint8_t *)k_cache + at, hd);
            sa__kv_q8_read_row(vw + (size_t)p * hd, (const uint8_t *)v_cache + at, hd);
            kp[p] = kw + (size_t)p * hd;
            vp[p] = vw + (size_t)p * hd;
          } else if (kv_type == SA_KV_BF16) {
            for (int d = 0; d < hd; d++) {
              kw[(size_t)p * hd + d] = bf(((const uint16_t *)k_cache)[off + d]);
              vw[(size_t)p * hd + d] = bf(((const uint16_t *)v_cache)[off + d]);
            }
            kp[p] = kw + (size_t)p * hd;
            vp[p] = vw + (size_t)p * hd;
          } else {
            kp[p] = (const float *)k_cache + off;
            vp[p] = (const float *)v_cache + off;
          }
        }
        ref_attend(out + (size_t)row * nh * hd + (size_t)h * hd,
                   q + (size_t)row * q_stride + (size_t)h * hd, kp, vp,
                   pos + 1, hd, scale);
      }
    }
  }
done:
  free(kp);
  free(vp);
  free(kw);
  free(vw);
  return rc;
}

static int ref_attention_dense(sa_backend_t *be, float *out, const float *q,
                               const float *k, const float *v, int T, int nh,
                               int hd, int n_valid, float scale) {
  (void)be;
  const float **kp = malloc(sizeof(*kp) * (T ? T : 1));
  const float **vp = malloc(sizeof(*vp) * (T ? T : 1));
  if (!kp || !vp) {
    free(kp);
    free(vp);
    return SA_ENOMEM;
  }
  int D = nh * hd;
  for (int h = 0; h < nh; h++) {
    for (int j = 0; j < n_valid; j++) {
      kp[j] = k + (size_t)j * D + (size_t)h * hd;
      vp[j] = v + (size_t)j * D + (size_t)h * hd;
    }
    for (int t = 0; t < T; t++)
      ref_attend(out + (size_t)t * D + (size_t)h * hd,
                 q + (size_t)t * D + (size_t)h * hd, kp, vp, n_valid, hd,
                 scale);
  }
  free(kp);
  free(vp);
  return 0;
}

static int ref_conv1d(sa_backend_t *be, float *y, const float *x,
                      const uint16_t *w, const uint16_t *bias, int Tin,
                      int Cin, int Cout, int Kw, int stride, int pad,
                      void *ws) {
  (void)be;
  (void)ws;
  int Tout = Tin + 2 * pad - Kw < 0 ? 0 : (Tin + 2 * pad - Kw) / stride + 1;
  for (int t = 0; t < Tout; t++)
    for (int co = 0; co < Cout; co++) {
      double s = bias ? bf(bias[co]) : 0.0;
      for (int ci = 0; ci < Cin; ci++)
        for (int kk = 0; kk < Kw; kk++) {
          int ti = t * stride - pad + kk;
          if (ti < 0 || ti >= Tin)
            continue;
          s += (double)x[(size_t)ti * Cin + ci] *
               bf(w[((size_t)co * Cin + ci) * Kw + kk]);
        }
      y[(size_t)t * Cout + co] = (float)s;
    }
  return 0;
}

static size_t ref_conv1d_ws_bytes(int Tin, int Cin, int Kw, int stride,
                                  int pad) {
  (void)Tin, (void)Cin, (void)Kw, (void)stride, (void)pad;
  return 0;
}

static void ref_destroy(sa_backend_t *be) { free(be); }

static const sa_backend_ops_t ref_ops = {
    .name = "ref",
    .alloc = sa__host_alloc,
    .free = sa__host_free,
    .upload = sa__host_copy,
    .download = sa__host_copy,
    .copy = sa__host_copy,
    .memset0 = sa__host_memset0,
    .sync = sa__host_sync,
    .matmul_bf16 = ref_matmul_bf16,
    .matmul_q = ref_matmul_q,
    .quantize_q8 = ref_quantize_q8,
    .rmsnorm = ref_rmsnorm,
    .layernorm = ref_layernorm,
    .rope = ref_rope,
    .silu_mul = ref_silu_mul,
    .gelu = ref_gelu,
    .relu = ref_relu,
    .add = ref_add,
    .softmax = ref_softmax,
    .embed = ref_embed,
    .kv_write = ref_kv_write,
    .attention = ref_attention,
    .attention_dense = ref_attention_dense,
    .conv1d = ref_conv1d,
    .conv1d_ws_bytes = ref_conv1d_ws_bytes,
    .destroy = ref_destroy,
};

sa_backend_t *sa_backend_ref_new(void) {
  sa_backend_t *be = calloc(1, sizeof(*be));
  if (!be) {
    SA_LOG_ERROR("ref backend: out of memory");
    return NULL;
  }
  be->ops = &ref_ops;
  be->threads = 1;
  return be;
}
