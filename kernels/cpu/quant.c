/*
 * quant — the scalar definition of the quantized matmul and of the q8
 * activation blocks (kernels.h: matmul_q, quantize_q8).
 *
 * Every other path (AVX2, AVX-512 VNNI, AMX-INT8, CUDA) computes the same
 * bits: a block's dot is an exact integer, and the blocks are added to one
 * fp32 sum per output in order with one fmaf each, so only the integer
 * part may be computed in any order. The reference backend and the CPU
 * backend's "scalar" path call these functions.
 */
#include "cpu_impl.h"
#include "kernels.h"
#include "sa_error.h"
#include "tensor.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void sa__q8_quantize_row(int8_t *q, float *d, const float *x, int K) {
  for (int b = 0; b < K / SA_QK; b++) {
    const float *xb = x + (size_t)b * SA_QK;
    float amax = 0.0f;
    for (int j = 0; j < SA_QK; j++)
      amax = fmaxf(amax, fabsf(xb[j]));
    float db = amax / 127.0f;
    float id = db != 0.0f ? 1.0f / db : 0.0f;
    for (int j = 0; j < SA_QK; j++) {
      /* clamped as x86's max(v, -127) then min(v, 127): keeps -128 out,
       * and a NaN (a broken model's) becomes -127 on every path */
      float v = nearbyintf(xb[j] * id);
      v = v > -127.0f ? v : -127.0f;
      v = v < 127.0f ? v : 127.0f;
      q[(size_t)b * SA_QK + j] = (int8_t)v;
    }
    d[b] = db;
  }
}

void sa__kv_q8_write_row(uint8_t *dst, const float *x, int kv_dim) {
  for (int b = 0; b < kv_dim / SA_QK; b++) {
    uint8_t *blk = dst + (size_t)b * SA_KV_Q8_0_BLOCK;
    float d;
    sa__q8_quantize_row((int8_t *)(blk + 4), &d, x + (size_t)b * SA_QK, SA_QK);
    memcpy(blk, &d, 4);
  }
}

void sa__kv_q8_read_row(float *dst, const uint8_t *src, int n) {
  for (int b = 0; b < n / SA_QK; b++) {
    const uint8_t *blk = src + (size_t)b * SA_KV_Q8_0_BLOCK;
    float d = sa__kv_q8_d(blk);
    for (int j = 0; j < SA_QK; j++)
      dst[b * SA_QK + j] = d * (float)(int8_t)blk[4 + j];
  }
}

/* Where byte j of block b of row n of an R8 weight with blocks of bb bytes
 * lies, and its scale (kernels.h: SA_WQ_Q8_0_R8, SA_WQ_Q4_0_R8). */
static size_t r8_byte(int n, int b, int j, int KB, size_t bb) {
  return ((size_t)(n / 8) * KB + b) * 8 * bb + (size_t)(j / 4) * 32 + (size_t)(n % 8) * 4 + j % 4;
}
static size_t r8_scale(int n, int b, int KB) {
  return ((size_t)(n / 8) * KB + b) * 8 + n % 8;
}

/* The exact integer dot of a q8 activation block with block b of row n. */
static int32_t block_dot(const int8_t *xb, int wtype, const void *wq, int n, int b, int K) {
  const uint8_t *wb = wq;
  int32_t s = 0;
  if (wtype == SA_WQ_Q8_0 || wtype == SA_WQ_Q8_0_R8) {
    for (int j = 0; j < SA_QK; j++) {
      size_t at = wtype == SA_WQ_Q8_0 ? (size_t)n * K + (size_t)b * SA_QK + j
                                      : r8_byte(n, b, j, K / SA_QK, SA_QK);
      s += (int32_t)xb[j] * (int8_t)wb[at];
    }
  } else {
    for (int j = 0; j < SA_QK / 2; j++) {
      size_t at = wtype == SA_WQ_Q4_0 ? (size_t)n * (K / 2) + (size_t)b * (SA_QK / 2) + j
                                      : r8_byte(n, b, j, K / SA_QK, SA_QK / 2);
      s += (int32_t)xb[j] * ((wb[at] & 15) - 8);
      s += (int32_t)xb[j + SA_QK / 2] * ((wb[at] >> 4) - 8);
    }
  }
  return s;
}

int sa__q_pack_r8(int wtype, uint8_t *wq, uint16_t *wd, int N, int K) {
  int KB = K / SA_QK;
  size_t bb = wtype == SA_WQ_Q8_0 ? SA_QK : SA_QK / 2, rb = (size_t)KB * bb;
  uint8_t *q = malloc(8 * rb);
  uint16_t *d = malloc((size_t)8 * KB * 2);
  if (!q || !d) {
    free(q);
    free(d);
    return SA_ENOMEM;
  }
  for (int g = 0; g < N / 8; g++) { /* a group's rows are contiguous in both layouts */
    memcpy(q, wq + (size_t)g * 8 * rb, 8 * rb);
    memcpy(d, wd + (size_t)g * 8 * KB, (size_t)8 * KB * 2);
    for (int r = 0; r < 8; r++)
      for (int b = 0; b < KB; b++) {
        for (size_t j = 0; j < bb; j += 4) /* 4 bytes stay together */
          memcpy(wq + r8_byte(8 * g + r, b, (int)j, KB, bb), q + r * rb + b * bb + j, 4);
        wd[r8_scale(8 * g + r, b, KB)] = d[(size_t)r * KB + b];
      }
  }
  free(q);
  free(d);
  return 0;
}

void sa__mmq_scalar(float *y, const int8_t *xq, const float *xd, int wtype, const void *wq,
                    const uint16_t *wd, const uint16_t *bias, int M, int N, int K, int n0,
                    int n1, int accumulate) {
  int KB = K / SA_QK;
  for (int m = 0; m < M; m++)
    for (int n = n0; n < n1; n++) {
      float s = 0.0f;
      for (int b = 0; b < KB; b++) {
        size_t sd = SA_WQ_IS_R8(wtype) ? r8_scale(n, b, KB) : (size_t)n * KB + b;
        float c = xd[(size_t)m * KB + b] * sa_f16_to_f32(wd[sd]);
        s = fmaf((float)block_dot(xq + (size_t)m * K + (size_t)b * SA_QK, wtype, wq, n, b, K),
                 c, s);
      }
      float *yo = y + (size_t)m * N + n;
      float init = accumulate ? *yo : 0.0f;
      if (bias)
        init += sa_bf16_to_f32(bias[n]);
      *yo = init + s;
    }
}
