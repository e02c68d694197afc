/*
 * ops — the checked entry points of the backend interface (kernels.h).
 *
 * Every argument and shape check of a math op is made here, once, above
 * the backend table (as ggml checks shapes in ggml_mul_mat before any
 * backend sees them); an op with nothing to do returns 0 here. The
 * backends' ops assume arguments that passed these checks. What a backend
 * still checks is its own: capacity limits of its kernels or scratch, and
 * conditions only its memory can tell (ids, slots and block-table entries,
 * which may sit in device memory).
 */
#include "kernels.h"

#include "sa_error.h"

#include <stddef.h>

int sa_op_matmul_bf16(sa_backend_t *be, float *y, const float *x, const uint16_t *w,
                      const uint16_t *bias, int M, int N, int K, int accumulate) {
  if (!be || M < 0 || N < 0 || K < 0)
    return SA_EINVAL;
  if ((size_t)M * (size_t)N == 0)
    return 0;
  if (!y || (K && (!x || !w)))
    return SA_EINVAL;
  return be->ops->matmul_bf16(be, y, x, w, bias, M, N, K, accumulate);
}

size_t sa_wq_bytes(int wtype, int N, int K) {
  if (N < 0 || K < 0 || K % SA_QK)
    return 0;
  if (SA_WQ_IS_R8(wtype) && N % 8)
    return 0;
  if (wtype == SA_WQ_Q8_0 || wtype == SA_WQ_Q8_0_R8)
    return (size_t)N * (size_t)K;
  if (wtype == SA_WQ_Q4_0 || wtype == SA_WQ_Q4_0_R8)
    return (size_t)N * (size_t)K / 2;
  return 0;
}

const char *sa_wq_name(int wtype) {
  static const char *const names[SA_WQ_COUNT_] = {"bf16", "q8_0", "q4_0", "q4_0_r8", "q8_0_r8"};
  return wtype >= 0 && wtype < SA_WQ_COUNT_ ? names[wtype] : "?";
}

int sa_op_matmul_q(sa_backend_t *be, float *y, const int8_t *xq, const float *xd, int wtype,
                   const void *wq, const uint16_t *wd, const uint16_t *bias, int M, int N, int K,
                   int accumulate) {
  if (!be || M < 0 || N < 0 || K < 0 || K % SA_QK || wtype < SA_WQ_Q8_0 ||
      wtype > SA_WQ_Q8_0_R8)
    return SA_EINVAL;
  /* R8 comes in whole groups of 8 rows, and only from the backend's pack_q */
  if (SA_WQ_IS_R8(wtype) && (N % 8 || !be->ops->pack_q))
    return SA_EINVAL;
  if ((size_t)M * (size_t)N == 0)
    return 0;
  if (!y || (K && (!xq || !xd || !wq || !wd)))
    return SA_EINVAL;
  if (!be->ops->matmul_q)
    return SA_EUNIMPL;
  return be->ops->matmul_q(be, y, xq, xd, wtype, wq, wd, bias, M, N, K, accumulate);
}

int sa_op_pack_q(sa_backend_t *be, int wtype, void *wq, uint16_t *wd, int N, int K) {
  int empty = N == 0 || K == 0;
  if (!be || N < 0 || K < 0 || K % SA_QK || (wtype != SA_WQ_Q8_0 && wtype != SA_WQ_Q4_0) ||
      (!empty && (!wq || !wd)))
    return SA_EINVAL;
  if (!be->ops->pack_q || empty)
    return wtype;
  return be->ops->pack_q(be, wtype, wq, wd, N, K);
}

int sa_op_quantize_q8(sa_backend_t *be, int8_t *xq, float *xd, const float *x, int M, int K) {
  if (!be || M < 0 || K < 0 || K % SA_QK)
    return SA_EINVAL;
  if ((size_t)M * (size_t)K == 0)
    return 0;
  if (!xq || !xd || !x)
    return SA_EINVAL;
  if (!be->ops->quantize_q8)
    return SA_EUNIMPL;
  return be->ops->quantize_q8(be, xq, xd, x, M, K);
}

int sa_op_rmsnorm(sa_backend_t *be, float *y, const float *x, const uint16_t *w, int M, int H,
                  float eps) {
  if (!be || M < 0 || H <= 0 || (M && (!y || !x || !w)))
    return SA_EINVAL;
  return M ? be->ops->rmsnorm(be, y, x, w, M, H, eps) : 0;
}

int sa_op_layernorm(sa_backend_t *be, float *y, const float *x, const uint16_t *w,
                    const uint16_t *b, int M, int H, float eps) {
  if (!be || M < 0 || H <= 0 || (M && (!y || !x || !w || !b)))
    return SA_EINVAL;
  return M ? be->ops->layernorm(be, y, x, w, b, M, H, eps) : 0;
}

int sa_op_rope(sa_backend_t *be, float *x, const int32_t *pos, int M, int n_heads, int hd,
               int row_stride, float theta) {
  if (!be || M < 0 || n_heads <= 0 || hd <= 0 || (hd & 1) ||
      row_stride < (long long)n_heads * hd || (M && (!x || !pos)))
    return SA_EINVAL;
  return M ? be->ops->rope(be, x, pos, M, n_heads, hd, row_stride, theta) : 0;
}

int sa_op_silu_mul(sa_backend_t *be, float *y, const float *gu, int M, int I) {
  if (!be || M < 0 || I < 0)
    return SA_EINVAL;
  if ((size_t)M * (size_t)I == 0)
    return 0;
  if (!y || !gu)
    return SA_EINVAL;
  return be->ops->silu_mul(be, y, gu, M, I);
}

int sa_op_gelu(sa_backend_t *be, float *x, size_t n) {
  if (!be || (n && !x))
    return SA_EINVAL;
  return n ? be->ops->gelu(be, x, n) : 0;
}

int sa_op_relu(sa_backend_t *be, float *x, size_t n) {
  if (!be || (n && !x))
    return SA_EINVAL;
  return n ? be->ops->relu(be, x, n) : 0;
}

int sa_op_add(sa_backend_t *be, float *y, const float *x, size_t n) {
  if (!be || (n && (!x || !y)))
    return SA_EINVAL;
  return n ? be->ops->add(be, y, x, n) : 0;
}

int sa_op_softmax(sa_backend_t *be, float *x, int M, int N) {
  if (!be || M < 0 || N <= 0 || (M && !x))
    return SA_EINVAL;
  return M ? be->ops->softmax(be, x, M, N) : 0;
}

int sa_op_embed(sa_backend_t *be, float *y, const uint16_t *table, const int32_t *ids, int M,
                int H, int V) {
  if (!be || M < 0 || H <= 0 || V <= 0 || (M && (!y || !table || !ids)))
    return SA_EINVAL;
  return M ? be->ops->embed(be, y, table, ids, M, H, V) : 0;
}

size_t sa_kv_row_bytes(int kv_type, int kv_dim) {
  if (kv_dim <= 0)
    return 0;
  switch (kv_type) {
  case SA_KV_F32: return (size_t)kv_dim * 4;
  case SA_KV_BF16: return (size_t)kv_dim * 2;
  case SA_KV_Q8_0: return kv_dim % SA_QK ? 0 : (size_t)kv_dim / SA_QK * SA_KV_Q8_0_BLOCK;
  default: return 0;
  }
}

int sa_op_kv_write(sa_backend_t *be, void *k_cache, void *v_cache, int kv_type, const float *k,
                   const float *v, int row_stride, const int32_t *slot, int M, int kv_dim) {
  if (!be || M < 0 || kv_dim <= 0 || row_stride < kv_dim || !sa_kv_row_bytes(kv_type, kv_dim) ||
      (M && (!k_cache || !v_cache || !k || !v || !slot)))
    return SA_EINVAL;
  return M ? be->ops->kv_write(be, k_cache, v_cache, kv_type, k, v, row_stride, slot, M, kv_dim)
           : 0;
}

int sa_op_attention(sa_backend_t *be, float *out, const float *q, int q_stride,
                    const void *k_cache, const void *v_cache, int kv_type,
                    const sa_attn_batch_t *batch, int nh, int nkv, int hd, float scale) {
  if (!be || !batch || nh <= 0 || nkv <= 0 || hd <= 0 || nh % nkv ||
      !sa_kv_row_bytes(kv_type, nkv * hd) || (kv_type == SA_KV_Q8_0 && hd % SA_QK) ||
      q_stride < (long long)nh * hd || batch->n_seqs < 0 || batch->block_size <= 0 ||
      batch->max_blocks < 0 || batch->max_ctx < 0)
    return SA_EINVAL;
  if (batch->n_seqs == 0)
    return 0;
  if (!out || !q || !k_cache || !v_cache || !batch->q_start || !batch->ctx_len ||
      !batch->block_table)
    return SA_EINVAL;
  return be->ops->attention(be, out, q, q_stride, k_cache, v_cache, kv_type, batch, nh, nkv, hd,
                           scale);
}

int sa_op_attention_dense(sa_backend_t *be, float *out, const float *q, const float *k,
                          const float *v, int T, int nh, int hd, int n_valid, float scale) {
  if (!be || T < 0 || nh <= 0 || hd <= 0 || (T && (n_valid < 1 || n_valid > T)) ||
      (T && (!out || !q || !k || !v)))
    return SA_EINVAL;
  return T ? be->ops->attention_dense(be, out, q, k, v, T, nh, hd, n_valid, scale) : 0;
}

int sa_op_conv1d_tout(int Tin, int Kw, int stride, int pad) {
  if (Tin < 0 || Kw <= 0 || stride <= 0 || pad < 0)
    return 0;
  long long span = (long long)Tin + 2LL * pad - Kw;
  return span < 0 ? 0 : (int)(span / stride + 1);
}

int sa_op_conv1d(sa_backend_t *be, float *y, const float *x, const uint16_t *w,
                 const uint16_t *bias, int Tin, int Cin, int Cout, int Kw, int stride, int pad,
                 void *ws) {
  if (!be || Tin < 0 || Cin <= 0 || Cout <= 0 || Kw <= 0 || stride <= 0 || pad < 0 ||
      (long long)Cin * Kw > 0x7fffffff)
    return SA_EINVAL;
  if (sa_op_conv1d_tout(Tin, Kw, stride, pad) == 0)
    return 0;
  if (!y || !x || !w || (!ws && be->ops->conv1d_ws_bytes(Tin, Cin, Kw, stride, pad)))
    return SA_EINVAL;
  return be->ops->conv1d(be, y, x, w, bias, Tin, Cin, Cout, Kw, stride, pad, ws);
}
