/* Unit tests of the reference CPU backend ("ref") against small cases
 * computed by hand, so the definition every other backend is tested against
 * cannot be silently wrong: a 2x2 matmul, norms of known vectors, RoPE at
 * position 0 (identity) and 1, GELU/SiLU at known points, softmax summing to
 * one, attention with one key returning v, a two-key causal case, a conv1d
 * worked out on paper, and bad shapes returning SA_EINVAL / SA_ERANGE. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <string.h>

#include "kernels.h"
#include "sa_error.h"
#include "tensor.h"

#define NEAR(a, b, tol) assert_true(fabs((double)(a) - (double)(b)) <= (tol))

static sa_backend_t *be;

static int setup(void **state) {
  (void)state;
  be = sa_backend_ref_new();
  return be ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  sa_backend_destroy(&be);
  return 0;
}

static void bf16v(uint16_t *dst, const float *src, int n) {
  for (int i = 0; i < n; i++)
    dst[i] = sa_f32_to_bf16(src[i]);
}

static void test_matmul_2x2(void **state) {
  (void)state;
  float x[4] = {1, 2, 3, 4};
  float wf[4] = {1, 0.5f, -1, 2}, bf[2] = {0.25f, -1};
  uint16_t w[4], b[2];
  bf16v(w, wf, 4);
  bf16v(b, bf, 2);
  float y[4];
  assert_int_equal(sa_op_matmul_bf16(be, y, x, w, NULL, 2, 2, 2, 0), 0);
  NEAR(y[0], 2.0, 0);  /* 1*1 + 2*0.5 */
  NEAR(y[1], 3.0, 0);  /* -1 + 4 */
  NEAR(y[2], 5.0, 0);  /* 3 + 2 */
  NEAR(y[3], 5.0, 0);  /* -3 + 8 */
  assert_int_equal(sa_op_matmul_bf16(be, y, x, w, b, 2, 2, 2, 1), 0);
  NEAR(y[0], 4.25, 0); /* 2 + 2 + 0.25 */
  NEAR(y[1], 5.0, 0);  /* 3 + 3 - 1 */
  NEAR(y[3], 9.0, 0);
  /* a 1 x 3 row against 1 output: 0.5*2 + 0.25*4 + 1*(-3) */
  float x3[3] = {0.5f, 0.25f, 1}, w3f[3] = {2, 4, -3};
  uint16_t w3[3];
  bf16v(w3, w3f, 3);
  assert_int_equal(sa_op_matmul_bf16(be, y, x3, w3, NULL, 1, 1, 3, 0), 0);
  NEAR(y[0], -1.0, 0);
  assert_int_equal(sa_op_matmul_bf16(be, y, x, w, NULL, -1, 2, 2, 0),
                   SA_EINVAL);
}

static void test_norms(void **state) {
  (void)state;
  float x[2] = {3, 4}, y[2];
  float wf[2] = {1, 2};
  uint16_t w[2];
  bf16v(w, wf, 2);
  assert_int_equal(sa_op_rmsnorm(be, y, x, w, 1, 2, 0.0f), 0);
  double r = sqrt(12.5); /* mean(9, 16) */
  NEAR(y[0], 3 / r, 1e-6);
  NEAR(y[1], 8 / r, 1e-6);
  float x4[4] = {1, 2, 3, 4}, y4[4];
  float w4f[4] = {1, 1, 2, 1}, b4f[4] = {0.5f, 0.5f, 0.5f, 0};
  uint16_t w4[4], b4[4];
  bf16v(w4, w4f, 4);
  bf16v(b4, b4f, 4);
  assert_int_equal(sa_op_layernorm(be, y4, x4, w4, b4, 1, 4, 0.0f), 0);
  double sd = sqrt(1.25); /* mean 2.5, biased variance 1.25 */
  NEAR(y4[0], -1.5 / sd + 0.5, 1e-6);
  NEAR(y4[1], -0.5 / sd + 0.5, 1e-6);
  NEAR(y4[2], 2 * 0.5 / sd + 0.5, 1e-6);
  NEAR(y4[3], 1.5 / sd, 1e-6);
  /* in place (y aliases x) */
  assert_int_equal(sa_op_rmsnorm(be, x, x, w, 1, 2, 0.0f), 0);
  NEAR(x[1], 8 / r, 1e-6);
}

static void test_rope(void **state) {
  (void)state;
  /* 2 heads of hd 4 inside a row of stride 10 (2 floats untouched) */
  float x[10], x0[10];
  for (int i = 0; i < 10; i++)
    x[i] = x0[i] = (float)(i + 1);
  int32_t pos = 0;
  assert_int_equal(sa_op_rope(be, x, &pos, 1, 2, 4, 10, 100.0f), 0);
  for (int i = 0; i < 10; i++)
    NEAR(x[i], x0[i], 0); /* position 0 is the identity */
  pos = 1;
  assert_int_equal(sa_op_rope(be, x, &pos, 1, 2, 4, 10, 100.0f), 0);
  /* pair (0, 2) turns by 1 rad; pair (1, 3) by 100^(-1/2) = 0.1 rad */
  NEAR(x[0], 1 * cos(1.0) - 3 * sin(1.0), 1e-6);
  NEAR(x[2], 3 * cos(1.0) + 1 * sin(1.0), 1e-6);
  NEAR(x[1], 2 * cos(0.1) - 4 * sin(0.1), 1e-6);
  NEAR(x[3], 4 * cos(0.1) + 2 * sin(0.1), 1e-6);
  NEAR(x[4], 5 * cos(1.0) - 7 * sin(1.0), 1e-6); /* head 1, same angles */
  NEAR(x[8], 9, 0);
  NEAR(x[9], 10, 0);
  assert_int_equal(sa_op_rope(be, x, &pos, 1, 2, 3, 10, 100.0f), SA_EINVAL);
}

static void test_activations(void **state) {
  (void)state;
  float g[6] = {0, 1, -2, 5, 2, 3}; /* gate [0,1,-2], up [5,2,3] */
  float y[3];
  assert_int_equal(sa_op_silu_mul(be, y, g, 1, 3), 0);
  NEAR(y[0], 0, 0);
  NEAR(y[1], 2 / (1 + exp(-1.0)), 1e-6);
  NEAR(y[2], 3 * -2 / (1 + exp(2.0)), 1e-6);
  float v[4] = {0, 1, -1, 3};
  assert_int_equal(sa_op_gelu(be, v, 4), 0);
  NEAR(v[0], 0, 0);
  NEAR(v[1], 0.8413447460685429, 1e-6); /* Phi(1) */
  NEAR(v[2], -0.15865525393145707, 1e-6);
  NEAR(v[3], 3 * 0.9986501019683699, 1e-6);
  float r[3] = {-1, 0, 2};
  assert_int_equal(sa_op_relu(be, r, 3), 0);
  NEAR(r[0], 0, 0);
  NEAR(r[2], 2, 0);
  float a[2] = {1, 2}, b[2] = {0.5f, -4};
  assert_int_equal(sa_op_add(be, a, b, 2), 0);
  NEAR(a[0], 1.5, 0);
  NEAR(a[1], -2, 0);
}

static void test_softmax(void **state) {
  (void)state;
  float x[6] = {0, (float)log(2.0), 0, 1000, 1000, -1000};
  assert_int_equal(sa_op_softmax(be, x, 2, 3), 0);
  NEAR(x[0], 0.25, 1e-6);
  NEAR(x[1], 0.5, 1e-6);
  NEAR(x[2], 0.25, 1e-6);
  NEAR(x[3], 0.5, 1e-6); /* max-subtracted: no overflow */
  NEAR(x[4], 0.5, 1e-6);
  NEAR(x[5], 0, 1e-30);
  float z[7] = {3, -1, 2, 0.5f, 7, -3, 1};
  assert_int_equal(sa_op_softmax(be, z, 1, 7), 0);
  double s = 0;
  for (int i = 0; i < 7; i++)
    s += z[i];
  NEAR(s, 1.0, 1e-6);
}

static void test_embed(void **state) {
  (void)state;
  float tf[6] = {1, 2, 3, 4, 5, 6};
  uint16_t t[6];
  bf16v(t, tf, 6);
  int32_t ids[3] = {2, 0, 2};
  float y[6];
  assert_int_equal(sa_op_embed(be, y, t, ids, 3, 2, 3), 0);
  NEAR(y[0], 5, 0);
  NEAR(y[1], 6, 0);
  NEAR(y[2], 1, 0);
  NEAR(y[5], 6, 0);
  ids[1] = 3;
  assert_int_equal(sa_op_embed(be, y, t, ids, 3, 2, 3), SA_ERANGE);
  ids[1] = -1;
  assert_int_equal(sa_op_embed(be, y, t, ids, 3, 2, 3), SA_ERANGE);
}

/* Attention over a paged cache of block size 2, hd 2, 1 KV head, 2 query
 * heads (GQA group 2). Sequence 0 has one token; sequence 1 has 3 tokens,
 * the last two new, in blocks 3 then 1. */
static void test_attention(void **state) {
  (void)state;
  float kc[4 * 2 * 2] = {0}, vc[4 * 2 * 2] = {0};
  /* new rows: seq0 pos0; seq1 pos1, pos2 (pos0 of seq1 already cached) */
  float k[3 * 2] = {1, 0, /**/ 0, 1, /**/ 1, 1};
  float v[3 * 2] = {7, -7, /**/ 2, 4, /**/ -6, 8};
  int32_t slot[3] = {0 * 2 + 0, 3 * 2 + 1, 1 * 2 + 0};
  kc[(3 * 2 + 0) * 2 + 0] = 1; /* seq1 pos0: k = (1, 0), v = (10, 0) */
  vc[(3 * 2 + 0) * 2 + 0] = 10;
  assert_int_equal(sa_op_kv_write(be, kc, vc, SA_KV_F32, k, v, 2, slot, 3, 2), 0);
  NEAR(kc[(3 * 2 + 1) * 2 + 1], 1, 0);
  NEAR(vc[(1 * 2 + 0) * 2 + 1], 8, 0);

  float q[3 * 4] = {5, 5, 0, 0, /* seq0 row, heads 0 and 1 */
                    0, 0, 1, 0, /* seq1 pos1 */
                    0, 0, 0, 1 /* seq1 pos2 */};
  int32_t q_start[3] = {0, 1, 3}, ctx[2] = {1, 3};
  int32_t table[2 * 2] = {0, -1, 3, 1};
  sa_attn_batch_t b = {2, q_start, ctx, table, 2, 2, 3};
  float out[3 * 4];
  assert_int_equal(sa_op_attention(be, out, q, 4, kc, vc, SA_KV_F32, &b, 2, 1, 2, 1.0f),
                   0);
  /* one key: the output is v whatever q is */
  NEAR(out[0], 7, 1e-6);
  NEAR(out[1], -7, 1e-6);
  NEAR(out[2], 7, 1e-6);
  NEAR(out[3], -7, 1e-6);
  /* seq1 pos1, head 0: q = 0 -> uniform over pos0, pos1 */
  NEAR(out[4], (10 + 2) / 2.0, 1e-6);
  NEAR(out[5], (0 + 4) / 2.0, 1e-6);
  /* head 1: q = (1,0): scores 1, 0 -> weights e/(e+1), 1/(e+1) */
  double e = exp(1.0);
  NEAR(out[6], (10 * e + 2) / (e + 1), 1e-5);
  NEAR(out[7], 4 / (e + 1), 1e-6);
  /* seq1 pos2, head 1: q = (0,1): scores 0, 1, 1 over pos 0..2 */
  NEAR(out[10], (10 + 2 * e - 6 * e) / (1 + 2 * e), 1e-5);
  NEAR(out[11], (0 + 4 * e + 8 * e) / (1 + 2 * e), 1e-5);
  /* the cache must hold the sequence: ctx beyond the table is invalid */
  ctx[1] = 5;
  b.max_ctx = 5;
  assert_int_equal(sa_op_attention(be, out, q, 4, kc, vc, SA_KV_F32, &b, 2, 1, 2, 1.0f),
                   SA_EINVAL);
  ctx[1] = 3;
  assert_int_equal(sa_op_attention(be, out, q, 4, kc, vc, SA_KV_F32, &b, 3, 2, 2, 1.0f),
                   SA_EINVAL); /* nh not a multiple of nkv */
}

static void test_attention_dense(void **state) {
  (void)state;
  /* T 3, 1 head, hd 1; only key 0 valid -> every row gets v[0] */
  float q[3] = {1, -2, 3}, k[3] = {1, 2, 3}, v[3] = {4, 5, 6}, out[3];
  assert_int_equal(
      sa_op_attention_dense(be, out, q, k, v, 3, 1, 1, 1, 1.0f), 0);
  for (int t = 0; t < 3; t++)
    NEAR(out[t], 4, 1e-6);
  /* two valid keys, q=1: scores 1, 2 -> (4 + 5e)/(1 + e) */
  assert_int_equal(
      sa_op_attention_dense(be, out, q, k, v, 3, 1, 1, 2, 1.0f), 0);
  double e = exp(1.0);
  NEAR(out[0], (4 + 5 * e) / (1 + e), 1e-5);
  assert_int_equal(
      sa_op_attention_dense(be, out, q, k, v, 3, 1, 1, 0, 1.0f), SA_EINVAL);
}

static void test_conv1d(void **state) {
  (void)state;
  float x[3] = {1, 2, 3}, y[3];
  float wf[3] = {1, 2, 3}, bf[1] = {0.5f};
  uint16_t w[3], b[1];
  bf16v(w, wf, 3);
  bf16v(b, bf, 1);
  size_t ws_n = be->ops->conv1d_ws_bytes(3, 1, 3, 1, 1);
  float ws[64];
  assert_true(ws_n <= sizeof(ws));
  assert_int_equal(sa_op_conv1d(be, y, x, w, NULL, 3, 1, 1, 3, 1, 1, ws), 0);
  NEAR(y[0], 0 * 1 + 1 * 2 + 2 * 3, 0);
  NEAR(y[1], 1 * 1 + 2 * 2 + 3 * 3, 0);
  NEAR(y[2], 2 * 1 + 3 * 2 + 0 * 3, 0);
  /* stride 2: Tout = (3 + 2 - 3) / 2 + 1 = 2, plus bias */
  assert_int_equal(sa_op_conv1d(be, y, x, w, b, 3, 1, 1, 3, 2, 1, ws), 0);
  NEAR(y[0], 8.5, 0);
  NEAR(y[1], 8.5, 0);
  /* 2 in channels x 2 out channels, Kw 1: a per-frame matmul */
  float x2[4] = {1, 2, 3, 4}, y2[4];
  float w2f[4] = {1, 1, 2, -1}; /* [Cout, Cin, 1] */
  uint16_t w2[4];
  bf16v(w2, w2f, 4);
  assert_int_equal(sa_op_conv1d(be, y2, x2, w2, NULL, 2, 2, 2, 1, 1, 0, ws),
                   0);
  NEAR(y2[0], 3, 0);
  NEAR(y2[1], 0, 0);
  NEAR(y2[2], 7, 0);
  NEAR(y2[3], 2, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_matmul_2x2),   cmocka_unit_test(test_norms),
      cmocka_unit_test(test_rope),         cmocka_unit_test(test_activations),
      cmocka_unit_test(test_softmax),      cmocka_unit_test(test_embed),
      cmocka_unit_test(test_attention),    cmocka_unit_test(test_attention_dense),
      cmocka_unit_test(test_conv1d),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
