/* test_decoder — the layer-range forward against a plain dense reference
 * written here (double precision, no paging, no fusion), on the reference
 * and the optimised CPU backends: prefill, decode, mixed batches, forks,
 * embedding rows, pipeline splits, tied heads, and the error contract. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "config.h"
#include "decoder.h"
#include "kernels.h"
#include "kv.h"
#include "sa_error.h"
#include "safetensors.h"
#include "tensor.h"

enum { H = 32, NH = 4, NKV = 2, HD = 8, IM = 48, V = 50, L = 3 };

/* ------------------------------------------------ checkpoint + reference */

typedef struct {
  float *embed, *lm, *norm;
  float *ln1[L], *ln2[L], *wq[L], *bq[L], *wk[L], *bk[L], *wv[L], *bv[L],
      *wo[L], *wg[L], *wu[L], *wd[L];
} ref_w_t;

static ref_w_t g_w;
static char g_dir[2][256]; /* [0] untied, [1] tied */
static sa_model_config_t g_cfg[2];

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float rnd(float scale) {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  double u = (double)(g_rng >> 11) / 9007199254740992.0;
  /* bf16-exact values so the reference and the checkpoint agree bit for bit */
  return sa_bf16_to_f32(sa_f32_to_bf16((float)((u * 2 - 1) * scale)));
}

static float *mkw(size_t n, float scale, float offset) {
  float *p = malloc(n * sizeof(float));
  for (size_t i = 0; i < n; i++)
    p[i] = sa_bf16_to_f32(sa_f32_to_bf16(offset + rnd(scale)));
  return p;
}

typedef struct {
  sa_st_tensor_t t[64 * L];
  char names[64 * L][96];
  uint16_t *bufs[64 * L];
  int n;
} ckpt_t;

static void put(ckpt_t *c, const char *name, const float *w, int d0, int d1) {
  int i = c->n++;
  snprintf(c->names[i], 96, "%s", name);
  size_t n = (size_t)d0 * (size_t)(d1 ? d1 : 1);
  c->bufs[i] = malloc(n * 2);
  sa_f32_to_bf16_n(c->bufs[i], w, n);
  c->t[i].name = c->names[i];
  c->t[i].desc.dtype = SA_DTYPE_BF16;
  c->t[i].desc.ndim = d1 ? 2 : 1;
  c->t[i].desc.shape[0] = d0;
  c->t[i].desc.shape[1] = d1;
  c->t[i].data = c->bufs[i];
  c->t[i].nbytes = n * 2;
}

static void write_ckpt(int tied) {
  ckpt_t *c = calloc(1, sizeof *c);
  char nm[96];
  put(c, "model.embed_tokens.weight", g_w.embed, V, H);
  for (int l = 0; l < L; l++) {
#define P(suffix, w, d0, d1)                                                   \
  snprintf(nm, sizeof nm, "model.layers.%d.%s", l, suffix);                    \
  put(c, nm, w, d0, d1)
    P("input_layernorm.weight", g_w.ln1[l], H, 0);
    P("post_attention_layernorm.weight", g_w.ln2[l], H, 0);
    P("self_attn.q_proj.weight", g_w.wq[l], NH * HD, H);
    P("self_attn.q_proj.bias", g_w.bq[l], NH * HD, 0);
    P("self_attn.k_proj.weight", g_w.wk[l], NKV * HD, H);
    P("self_attn.k_proj.bias", g_w.bk[l], NKV * HD, 0);
    P("self_attn.v_proj.weight", g_w.wv[l], NKV * HD, H);
    P("self_attn.v_proj.bias", g_w.bv[l], NKV * HD, 0);
    P("self_attn.o_proj.weight", g_w.wo[l], H, NH * HD);
    P("mlp.gate_proj.weight", g_w.wg[l], IM, H);
    P("mlp.up_proj.weight", g_w.wu[l], IM, H);
    P("mlp.down_proj.weight", g_w.wd[l], H, IM);
#undef P
  }
  put(c, "model.norm.weight", g_w.norm, H, 0);
  if (!tied)
    put(c, "lm_head.weight", g_w.lm, V, H);
  char path[300], err[256];
  snprintf(path, sizeof path, "%s/model.safetensors", g_dir[tied]);
  assert_int_equal(sa_st_write(path, c->t, (size_t)c->n, err, sizeof err), 0);
  sa_model_config_t *cf = &g_cfg[tied];
  memset(cf, 0, sizeof *cf);
  cf->hidden_size = H;
  cf->num_hidden_layers = L;
  cf->num_attention_heads = NH;
  cf->num_key_value_heads = NKV;
  cf->head_dim = HD;
  cf->intermediate_size = IM;
  cf->vocab_size = V;
  cf->max_position_embeddings = 1024;
  cf->rms_norm_eps = 1e-6f;
  cf->rope_theta = 10000.0f;
  cf->tie_word_embeddings = tied;
  cf->dtype = SA_DTYPE_BF16;
  snprintf(path, sizeof path, "%s/config.json", g_dir[tied]);
  assert_int_equal(sa_config_write(path, cf), 0);
  for (int i = 0; i < c->n; i++)
    free(c->bufs[i]);
  free(c);
}

static int setup(void **state) {
  (void)state;
  g_w.embed = mkw((size_t)V * H, 1.0f, 0);
  g_w.lm = mkw((size_t)V * H, 0.3f, 0);
  g_w.norm = mkw(H, 0.2f, 1.0f);
  for (int l = 0; l < L; l++) {
    g_w.ln1[l] = mkw(H, 0.2f, 1.0f);
    g_w.ln2[l] = mkw(H, 0.2f, 1.0f);
    g_w.wq[l] = mkw((size_t)NH * HD * H, 0.3f, 0);
    g_w.bq[l] = mkw((size_t)NH * HD, 0.5f, 0);
    g_w.wk[l] = mkw((size_t)NKV * HD * H, 0.3f, 0);
    g_w.bk[l] = mkw((size_t)NKV * HD, 0.5f, 0);
    g_w.wv[l] = mkw((size_t)NKV * HD * H, 0.3f, 0);
    g_w.bv[l] = mkw((size_t)NKV * HD, 0.5f, 0);
    g_w.wo[l] = mkw((size_t)H * NH * HD, 0.3f, 0);
    g_w.wg[l] = mkw((size_t)IM * H, 0.3f, 0);
    g_w.wu[l] = mkw((size_t)IM * H, 0.3f, 0);
    g_w.wd[l] = mkw((size_t)H * IM, 0.3f, 0);
  }
  for (int t = 0; t < 2; t++) {
    snprintf(g_dir[t], sizeof g_dir[t], "/tmp/sa_test_decoder_%d_%d",
             (int)getpid(), t);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", g_dir[t]);
    if (system(cmd) != 0)
      return -1;
    write_ckpt(t);
  }
  return 0;
}

static int teardown(void **state) {
  (void)state;
  for (int t = 0; t < 2; t++) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir[t]);
    if (system(cmd) != 0)
      return -1;
  }
  return 0;
}

static void matvec(double *y, const float *W, const float *b, const double *x,
                   int N, int K) {
  for (int n = 0; n < N; n++) {
    double s = b ? b[n] : 0.0;
    for (int k = 0; k < K; k++)
      s += (double)W[(size_t)n * K + k] * x[k];
    y[n] = s;
  }
}

static void rms(double *y, const double *x, const float *w) {
  double ss = 0;
  for (int i = 0; i < H; i++)
    ss += x[i] * x[i];
  double r = 1.0 / sqrt(ss / H + 1e-6);
  for (int i = 0; i < H; i++)
    y[i] = x[i] * r * w[i];
}

static void rope(double *v, int heads, int pos, double theta) {
  for (int h = 0; h < heads; h++)
    for (int i = 0; i < HD / 2; i++) {
      double f = pos * pow(theta, -2.0 * i / HD);
      double a = v[h * HD + i], b = v[h * HD + i + HD / 2];
      v[h * HD + i] = a * cos(f) - b * sin(f);
      v[h * HD + i + HD / 2] = b * cos(f) + a * sin(f);
    }
}

/* Dense reference: logits[T, V] of a whole sequence. emb_row[t] >= 0 takes
 * row emb[emb_row[t]] instead of the token's embedding. */
static void reference(const int32_t *tok, int T, const float *emb,
                      const int *emb_row, int tied, double *logits) {
  double *x = calloc((size_t)T * H, sizeof(double));
  double *K = calloc((size_t)T * NKV * HD, sizeof(double));
  double *Vv = calloc((size_t)T * NKV * HD, sizeof(double));
  double *Q = calloc((size_t)T * NH * HD, sizeof(double));
  double h[H], a[NH * HD], o[H], g[IM], u[IM];
  for (int t = 0; t < T; t++)
    for (int i = 0; i < H; i++)
      x[t * H + i] = (emb_row && emb_row[t] >= 0)
                         ? emb[(size_t)emb_row[t] * H + i]
                         : g_w.embed[(size_t)tok[t] * H + i];
  for (int l = 0; l < L; l++) {
    for (int t = 0; t < T; t++) {
      rms(h, x + t * H, g_w.ln1[l]);
      matvec(Q + t * NH * HD, g_w.wq[l], g_w.bq[l], h, NH * HD, H);
      matvec(K + t * NKV * HD, g_w.wk[l], g_w.bk[l], h, NKV * HD, H);
      matvec(Vv + t * NKV * HD, g_w.wv[l], g_w.bv[l], h, NKV * HD, H);
      rope(Q + t * NH * HD, NH, t, 10000.0);
      rope(K + t * NKV * HD, NKV, t, 10000.0);
    }
    for (int t = 0; t < T; t++) {
      for (int hh = 0; hh < NH; hh++) {
        int kh = hh / (NH / NKV);
        double sc[512], mx = -1e300, z = 0;
        for (int j = 0; j <= t; j++) {
          double s = 0;
          for (int d = 0; d < HD; d++)
            s += Q[t * NH * HD + hh * HD + d] * K[j * NKV * HD + kh * HD + d];
          sc[j] = s / sqrt((double)HD);
          if (sc[j] > mx)
            mx = sc[j];
        }
        for (int j = 0; j <= t; j++)
          z += (sc[j] = exp(sc[j] - mx));
        for (int d = 0; d < HD; d++) {
          double s = 0;
          for (int j = 0; j <= t; j++)
            s += sc[j] / z * Vv[j * NKV * HD + kh * HD + d];
          a[hh * HD + d] = s;
        }
      }
      matvec(o, g_w.wo[l], NULL, a, H, NH * HD);
      for (int i = 0; i < H; i++)
        x[t * H + i] += o[i];
      rms(h, x + t * H, g_w.ln2[l]);
      matvec(g, g_w.wg[l], NULL, h, IM, H);
      matvec(u, g_w.wu[l], NULL, h, IM, H);
      for (int i = 0; i < IM; i++)
        g[i] = g[i] / (1 + exp(-g[i])) * u[i];
      matvec(o, g_w.wd[l], NULL, g, H, IM);
      for (int i = 0; i < H; i++)
        x[t * H + i] += o[i];
    }
  }
  for (int t = 0; t < T; t++) {
    rms(h, x + t * H, g_w.norm);
    matvec(logits + (size_t)t * V, tied ? g_w.embed : g_w.lm, NULL, h, V, H);
  }
  free(x);
  free(K);
  free(Vv);
  free(Q);
}

/* max |a - b| <= tol * max |b| */
static void close_to(const float *a, const double *b, size_t n, double tol) {
  double mb = 0, md = 0;
  for (size_t i = 0; i < n; i++) {
    mb = fmax(mb, fabs(b[i]));
    md = fmax(md, fabs(a[i] - b[i]));
  }
  if (!(md <= tol * mb))
    fail_msg("max |diff| %g > %g * max |ref| %g", md, tol, mb);
}

/* ---------------------------------------------------------------- tests */

/* 0: the reference backend; 1: the CPU backend with the kernels it picks;
 * 2: the CPU backend with the exact fp32 AVX-512 kernels (where present). */
static sa_backend_t *backend(int which) {
  if (!which)
    return sa_backend_ref_new();
  sa_backend_t *be = sa_backend_new("cpu", 2);
  if (be && which == 2 && sa_cpu_isa_supported("avx512"))
    assert_int_equal(sa_cpu_set_isa(be, "avx512"), 0);
  return be;
}

/* Logit tolerance (relative to max |logit|): 1e-4 for exact fp32 kernels;
 * 2e-2 for kernels that round activations to bf16 (amx, avx512bf16): each
 * matmul input then carries a relative error up to 2^-9, measured here at
 * 0.3-0.6 % of max |logit| through 3 layers; a wrong index or a dropped
 * term moves logits by tens of percent. */
static double tol_for(sa_backend_t *be) {
  return sa_cpu_rounds_activations(be) ? 2e-2 : 1e-4;
}

static sa_decoder_t *load(sa_backend_t *be, int tied, int first, int last,
                          int max_tokens, int max_seqs) {
  sa_decoder_opts_t o = {.first_layer = first, .last_layer = last,
                         .max_tokens = max_tokens, .max_seqs = max_seqs,
                         .max_logit_rows = max_tokens, .max_seq_len = 256};
  sa_decoder_t *d = NULL;
  char err[256] = "";
  int rc = sa_decoder_load(be, g_dir[tied], NULL, &o, &d, err, sizeof err);
  if (rc)
    fail_msg("load: %s", err);
  return d;
}

/* Prefill in uneven chunks then decode one token at a time; logits of every
 * row checked against the dense reference of the whole sequence. */
static void run_prefill_decode(int which, int tied) {
  sa_backend_t *be = backend(which);
  assert_non_null(be);
  sa_decoder_t *d = load(be, tied, 0, L, 64, 4);
  sa_kv_opts_t ko;
  sa_decoder_kv_opts(d, 0, 64, 4, &ko);
  /* exact kernels keep an exact (fp32) KV cache; rounding ones bf16 */
  ko.kv_type = sa_cpu_rounds_activations(be) ? SA_KV_BF16 : SA_KV_F32;
  sa_kv_t *kv = NULL;
  assert_int_equal(sa_kv_new(be, &ko, &kv), 0);
  enum { T = 45 };
  int32_t tok[T];
  for (int i = 0; i < T; i++)
    tok[i] = (i * 7 + 3) % V;
  double *ref = malloc(sizeof(double) * T * V);
  reference(tok, T, NULL, NULL, tied, ref);
  float *lg = malloc(sizeof(float) * T * V);
  uint64_t id = 77;
  assert_int_equal(sa_kv_seq_add(kv, id), 0);
  int chunks[] = {17, 1, 20}; /* 38 prompt tokens, then 7 decode steps */
  int p = 0;
  for (int c = 0; c < 3 + 7; c++) {
    int32_t n = c < 3 ? chunks[c] : 1;
    int32_t rows[64];
    for (int i = 0; i < n; i++)
      rows[i] = i;
    int32_t pos0 = p;
    sa_decoder_batch_t b = {.n_seqs = 1, .seq_ids = &id, .n_new = &n,
                            .pos0 = &pos0, .tokens = tok + p, .n_logits = n,
                            .logit_rows = rows, .logits = lg + (size_t)p * V};
    assert_int_equal(sa_decoder_step(d, kv, &b), 0);
    p += n;
  }
  assert_int_equal(p, T);
  assert_int_equal(sa_kv_seq_len(kv, id), T);
  close_to(lg, ref, (size_t)T * V, tol_for(be));
  free(ref);
  free(lg);
  sa_kv_destroy(&kv);
  sa_decoder_destroy(&d);
  sa_backend_destroy(&be);
}

static void test_prefill_decode_ref(void **s) { (void)s; run_prefill_decode(0, 0); }
static void test_prefill_decode_cpu(void **s) { (void)s; run_prefill_decode(1, 0); }
static void test_prefill_decode_cpu_fp32(void **s) { (void)s; run_prefill_decode(2, 0); }
static void test_tied_head(void **s) { (void)s; run_prefill_decode(1, 1); }

/* The whole model and a two-stage split after layer `split` on one CPU
 * backend, each with its own KV pool. */
typedef struct {
  sa_backend_t *be;
  sa_decoder_t *full, *s0, *s1;
  sa_kv_t *kv, *kv0, *kv1;
} pipe_t;

static sa_kv_t *kv_of(sa_backend_t *be, const sa_decoder_t *d) {
  sa_kv_opts_t ko;
  sa_kv_t *kv = NULL;
  sa_decoder_kv_opts(d, 0, 64, 8, &ko);
  /* exact kernels keep an exact (fp32) KV cache; rounding ones bf16 */
  ko.kv_type = sa_cpu_rounds_activations(be) ? SA_KV_BF16 : SA_KV_F32;
  assert_int_equal(sa_kv_new(be, &ko, &kv), 0);
  return kv;
}

static void pipe_open(pipe_t *p, int split) {
  p->be = backend(1);
  p->full = load(p->be, 0, 0, L, 64, 8);
  p->s0 = load(p->be, 0, 0, split, 64, 8);
  p->s1 = load(p->be, 0, split, L, 64, 8);
  p->kv = kv_of(p->be, p->full);
  p->kv0 = kv_of(p->be, p->s0);
  p->kv1 = kv_of(p->be, p->s1);
}

static void pipe_close(pipe_t *p) {
  sa_kv_destroy(&p->kv);
  sa_kv_destroy(&p->kv0);
  sa_kv_destroy(&p->kv1);
  sa_decoder_destroy(&p->full);
  sa_decoder_destroy(&p->s0);
  sa_decoder_destroy(&p->s1);
  sa_backend_destroy(&p->be);
}

/* One batch mixing a prefill chunk, decodes of forked children and a fresh
 * sequence with embedding rows; then a two-stage pipeline gives the same. */
static void test_mixed_batch_fork_embeds_pipeline(void **state) {
  (void)state;
  pipe_t pp;
  pipe_open(&pp, 1);
  sa_decoder_t *full = pp.full, *s0 = pp.s0, *s1 = pp.s1;
  sa_kv_t *kv = pp.kv, *kv0 = pp.kv0, *kv1 = pp.kv1;
  sa_decoder_info_t i0, i1;
  sa_decoder_info(s0, &i0);
  sa_decoder_info(s1, &i1);
  assert_true(i0.embed_bytes > 0 && i0.lm_head_bytes == 0);
  assert_true(i1.embed_bytes == 0 && i1.lm_head_bytes > 0);
  assert_int_equal(i1.layer_bytes, 2 * i0.layer_bytes);
  /* qkv, o, gate|up, down a layer, all bf16; the last stage's head too */
  assert_true(i0.matrices[0] > 0 && i0.matrices[0] % 4 == 0);
  assert_int_equal(i1.matrices[0], 2 * i0.matrices[0] + 1);
  for (int t = 1; t < SA_WQ_COUNT_; t++)
    assert_int_equal(i0.matrices[t] + i1.matrices[t], 0);

  /* parent: 21-token prompt */
  enum { TP = 21 };
  int32_t ptok[TP + 2];
  for (int i = 0; i < TP + 2; i++)
    ptok[i] = (i * 11 + 5) % V;
  sa_kv_t *kvs[3] = {kv, kv0, kv1};
  for (int k = 0; k < 3; k++)
    assert_int_equal(sa_kv_seq_add(kvs[k], 1), 0);
  float *lg = malloc(sizeof(float) * 64 * V);
  float *hid = malloc(sizeof(float) * 64 * H);
  float *lg2 = malloc(sizeof(float) * 64 * V);
  {
    uint64_t id = 1;
    int32_t n = TP, row = TP - 1;
    sa_decoder_batch_t b = {.n_seqs = 1, .seq_ids = &id, .n_new = &n,
                            .tokens = ptok, .n_logits = 1, .logit_rows = &row,
                            .logits = lg};
    assert_int_equal(sa_decoder_step(full, kv, &b), 0);
    b.hidden_out = hid;
    b.n_logits = 0;
    assert_int_equal(sa_decoder_step(s0, kv0, &b), 0);
    b.hidden_out = NULL;
    b.hidden_in = hid;
    b.tokens = NULL;
    b.n_logits = 1;
    b.logits = lg2;
    assert_int_equal(sa_decoder_step(s1, kv1, &b), 0);
    assert_memory_equal(lg, lg2, sizeof(float) * V);
  }
  /* fork two children: 2 and 3 */
  for (int k = 0; k < 3; k++) {
    assert_int_equal(sa_kv_fork(kvs[k], 1, 2), 0);
    assert_int_equal(sa_kv_fork(kvs[k], 1, 3), 0);
    assert_int_equal(sa_kv_seq_add(kvs[k], 4), 0);
  }
  /* batch: child 2 decodes token a, child 3 decodes token b, seq 4
   * prefills 9 rows of which rows 2..5 are given embeddings, parent 1
   * prefills 2 more tokens. */
  enum { T4 = 9 };
  int32_t tok4[T4];
  int er4[T4];
  float emb[4 * H];
  for (int i = 0; i < 4 * H; i++)
    emb[i] = rnd(1.0f);
  for (int i = 0; i < T4; i++) {
    tok4[i] = (i * 5 + 1) % V;
    er4[i] = (i >= 2 && i <= 5) ? i - 2 : -1;
  }
  uint64_t ids[4] = {2, 3, 4, 1};
  int32_t nn[4] = {1, 1, T4, 2};
  int32_t pos0[4] = {TP, TP, 0, TP};
  int32_t toks[1 + 1 + T4 + 2];
  toks[0] = 7;
  toks[1] = 9;
  memcpy(toks + 2, tok4, sizeof tok4);
  toks[2 + T4] = ptok[TP];
  toks[3 + T4] = ptok[TP + 1];
  int32_t erows[4] = {2 + 2, 2 + 3, 2 + 4, 2 + 5};
  int32_t lrows[5] = {0, 1, 2 + T4 - 1, 2 + 3, 2 + T4 + 1};
  sa_decoder_batch_t b = {.n_seqs = 4, .seq_ids = ids, .n_new = nn,
                          .pos0 = pos0, .tokens = toks, .n_embed = 4,
                          .embed_rows = erows, .embeds = emb, .n_logits = 5,
                          .logit_rows = lrows, .logits = lg};
  assert_int_equal(sa_decoder_step(full, kv, &b), 0);
  b.n_logits = 0;
  b.hidden_out = hid;
  assert_int_equal(sa_decoder_step(s0, kv0, &b), 0);
  b.hidden_out = NULL;
  b.hidden_in = hid;
  b.tokens = NULL;
  b.n_embed = 0;
  b.n_logits = 5;
  b.logits = lg2;
  assert_int_equal(sa_decoder_step(s1, kv1, &b), 0);
  /* pipeline = single process, bit for bit (same kernels, same rows) */
  assert_memory_equal(lg, lg2, sizeof(float) * 5 * V);

  /* against the dense reference */
  double *ref = malloc(sizeof(double) * (TP + 2) * V);
  int32_t c2[TP + 1];
  memcpy(c2, ptok, sizeof(int32_t) * TP);
  c2[TP] = 7;
  reference(c2, TP + 1, NULL, NULL, 0, ref);
  close_to(lg + 0 * V, ref + (size_t)TP * V, V, tol_for(pp.be));
  c2[TP] = 9;
  reference(c2, TP + 1, NULL, NULL, 0, ref);
  close_to(lg + 1 * V, ref + (size_t)TP * V, V, tol_for(pp.be));
  reference(tok4, T4, emb, er4, 0, ref);
  close_to(lg + 2 * V, ref + (size_t)(T4 - 1) * V, V, tol_for(pp.be));
  close_to(lg + 3 * V, ref + (size_t)3 * V, V, tol_for(pp.be)); /* an embedding row */
  reference(ptok, TP + 2, NULL, NULL, 0, ref);
  close_to(lg + 4 * V, ref + (size_t)(TP + 1) * V, V, tol_for(pp.be));
  free(ref);
  free(lg);
  free(lg2);
  free(hid);
  pipe_close(&pp);
}

/* Activations handed between stages in backend memory (hidden_device, the
 * path an NCCL link takes) give the logits of the single process, bit for
 * bit, over a prefill and decode steps; without it, a missing hidden_in or
 * hidden_out is refused. */
static void test_pipeline_device_io(void **state) {
  (void)state;
  pipe_t pp;
  pipe_open(&pp, 2);
  sa_backend_t *be = pp.be;
  sa_decoder_t *full = pp.full, *s0 = pp.s0, *s1 = pp.s1;
  sa_kv_t *kv = pp.kv, *kv0 = pp.kv0, *kv1 = pp.kv1;
  assert_non_null(sa_decoder_hidden_dev(s0));
  assert_true(sa_decoder_hidden_dev(s0) != sa_decoder_hidden_dev(s1));
  uint64_t ids[2] = {5, 6};
  sa_kv_t *kvs[3] = {kv, kv0, kv1};
  for (int k = 0; k < 3; k++)
    for (int i = 0; i < 2; i++)
      assert_int_equal(sa_kv_seq_add(kvs[k], ids[i]), 0);
  float *lg = malloc(sizeof(float) * 2 * V), *lg2 = malloc(sizeof(float) * 2 * V);
  int32_t toks[24];
  for (int i = 0; i < 24; i++)
    toks[i] = (i * 7 + 3) % V;
  int32_t nn[2] = {11, 13}, pos[2] = {0, 0}, lrows[2] = {10, 23};
  for (int step = 0; step < 4; step++) {
    int M = nn[0] + nn[1];
    sa_decoder_batch_t b = {.n_seqs = 2, .seq_ids = ids, .n_new = nn, .pos0 = pos,
                            .tokens = toks, .n_logits = 2, .logit_rows = lrows,
                            .logits = lg};
    assert_int_equal(sa_decoder_step(full, kv, &b), 0);
    b.n_logits = 0;
    assert_int_equal(sa_decoder_step(s0, kv0, &b), SA_EINVAL); /* no hidden_out */
    b.hidden_device = true;
    assert_int_equal(sa_decoder_step(s0, kv0, &b), 0);
    /* the hand-over: what an NCCL send/receive pair does between GPUs */
    assert_int_equal(be->ops->copy(be, sa_decoder_hidden_dev(s1), sa_decoder_hidden_dev(s0),
                                   sizeof(float) * (size_t)M * H), 0);
    b.tokens = NULL;
    b.n_logits = 2;
    b.logits = lg2;
    b.hidden_device = false;
    assert_int_equal(sa_decoder_step(s1, kv1, &b), SA_EINVAL); /* no hidden_in */
    b.hidden_device = true;
    assert_int_equal(sa_decoder_step(s1, kv1, &b), 0);
    assert_memory_equal(lg, lg2, sizeof(float) * 2 * V);
    /* next: one decode token each */
    for (int i = 0; i < 2; i++) {
      pos[i] += nn[i];
      nn[i] = 1;
      toks[i] = (int32_t)((step * 13 + i * 29 + 1) % V);
    }
    lrows[0] = 0;
    lrows[1] = 1;
  }
  free(lg);
  free(lg2);
  pipe_close(&pp);
}

/* The cluster's output is compared exactly with single-process generation:
 * a sequence's logits must not depend on what else is in the batch or on
 * how its prompt was chunked. Bit-for-bit on the optimised CPU backend. */
static void test_batch_invariance(void **state) {
  (void)state;
  sa_backend_t *be = backend(1);
  sa_decoder_t *d = load(be, 0, 0, L, 64, 8);
  sa_kv_opts_t ko;
  sa_decoder_kv_opts(d, 0, 64, 8, &ko);
  /* exact kernels keep an exact (fp32) KV cache; rounding ones bf16 */
  ko.kv_type = sa_cpu_rounds_activations(be) ? SA_KV_BF16 : SA_KV_F32;
  sa_kv_t *kv = NULL;
  assert_int_equal(sa_kv_new(be, &ko, &kv), 0);
  enum { T = 20 };
  int32_t tok[T + 1];
  for (int i = 0; i <= T; i++)
    tok[i] = (i * 13 + 2) % V;
  float *alone = malloc(sizeof(float) * V * 2);
  float *mixed = malloc(sizeof(float) * V * 8);
  /* alone: one chunk of T, then one decode step */
  uint64_t a = 1;
  assert_int_equal(sa_kv_seq_add(kv, a), 0);
  int32_t n = T, row = T - 1;
  sa_decoder_batch_t b = {.n_seqs = 1, .seq_ids = &a, .n_new = &n,
                          .tokens = tok, .n_logits = 1, .logit_rows = &row,
                          .logits = alone};
  assert_int_equal(sa_decoder_step(d, kv, &b), 0);
  n = 1;
  row = 0;
  b.tokens = tok + T;
  b.logits = alone + V;
  assert_int_equal(sa_decoder_step(d, kv, &b), 0);
  /* mixed: chunks 7 + 13 beside other sequences, then decode in a batch */
  uint64_t ids[3] = {2, 3, 4};
  for (int i = 0; i < 3; i++)
    assert_int_equal(sa_kv_seq_add(kv, ids[i]), 0);
  int32_t other[16];
  for (int i = 0; i < 16; i++)
    other[i] = (i * 3 + 1) % V;
  {
    int32_t nn[3] = {5, 7, 1}, toks[13], rows[3] = {4, 11, 12};
    memcpy(toks, other, 5 * 4);
    memcpy(toks + 5, tok, 7 * 4);
    toks[12] = other[9];
    sa_decoder_batch_t m = {.n_seqs = 3, .seq_ids = ids, .n_new = nn,
                            .tokens = toks, .n_logits = 3, .logit_rows = rows,
                            .logits = mixed};
    assert_int_equal(sa_decoder_step(d, kv, &m), 0);
  }
  {
    uint64_t mid[2] = {3, 2};
    int32_t nn[2] = {13, 1}, toks[14], rows[2] = {12, 13};
    memcpy(toks, tok + 7, 13 * 4);
    toks[13] = other[5];
    sa_decoder_batch_t m = {.n_seqs = 2, .seq_ids = mid, .n_new = nn,
                            .tokens = toks, .n_logits = 2, .logit_rows = rows,
                            .logits = mixed};
    assert_int_equal(sa_decoder_step(d, kv, &m), 0);
    assert_memory_equal(mixed, alone, sizeof(float) * V);
  }
  {
    uint64_t mid[3] = {4, 3, 2};
    int32_t nn[3] = {1, 1, 1}, toks[3] = {other[1], tok[T], other[6]};
    int32_t rows[3] = {0, 1, 2};
    sa_decoder_batch_t m = {.n_seqs = 3, .seq_ids = mid, .n_new = nn,
                            .tokens = toks, .n_logits = 3, .logit_rows = rows,
                            .logits = mixed};
    assert_int_equal(sa_decoder_step(d, kv, &m), 0);
    assert_memory_equal(mixed + V, alone + V, sizeof(float) * V);
  }
  free(alone);
  free(mixed);
  sa_kv_destroy(&kv);
  sa_decoder_destroy(&d);
  sa_backend_destroy(&be);
}

static void test_errors(void **state) {
  (void)state;
  sa_backend_t *be = backend(0);
  sa_decoder_t *d = load(be, 0, 0, L, 8, 2);
  sa_kv_opts_t ko;
  sa_decoder_kv_opts(d, 0, 2, 4, &ko); /* 32 tokens of KV */
  /* exact kernels keep an exact (fp32) KV cache; rounding ones bf16 */
  ko.kv_type = sa_cpu_rounds_activations(be) ? SA_KV_BF16 : SA_KV_F32;
  sa_kv_t *kv = NULL;
  assert_int_equal(sa_kv_new(be, &ko, &kv), 0);
  uint64_t id = 5, id2 = 6;
  assert_int_equal(sa_kv_seq_add(kv, id), 0);
  int32_t tok[16] = {0}, row = 0, n = 9;
  float lg[V];
  sa_decoder_batch_t b = {.n_seqs = 1, .seq_ids = &id, .n_new = &n,
                          .tokens = tok, .n_logits = 1, .logit_rows = &row,
                          .logits = lg};
  assert_int_equal(sa_decoder_step(d, kv, &b), SA_EINVAL); /* > max_tokens */
  n = 8;
  tok[3] = V; /* outside the vocabulary */
  assert_int_equal(sa_decoder_step(d, kv, &b), SA_ERANGE);
  tok[3] = 1;
  int32_t p0 = 3;
  b.pos0 = &p0;
  assert_int_equal(sa_decoder_step(d, kv, &b), SA_ESTATE);
  b.pos0 = NULL;
  row = 8;
  assert_int_equal(sa_decoder_step(d, kv, &b), SA_EINVAL); /* bad row */
  row = 7;
  for (int i = 0; i < 3; i++)
    assert_int_equal(sa_decoder_step(d, kv, &b), 0); /* 24 tokens */
  assert_int_equal(sa_kv_seq_add(kv, id2), 0);
  /* batch of two: id takes the last block's 8 slots, id2 needs a block
   * that is not there: nothing may stick */
  uint64_t ids[2] = {id, id2};
  int32_t nn[2] = {4, 4}, rows2[2] = {3, 7};
  float lg2[2 * V];
  sa_decoder_batch_t b2 = {.n_seqs = 2, .seq_ids = ids, .n_new = nn,
                           .tokens = tok, .n_logits = 2, .logit_rows = rows2,
                           .logits = lg2};
  assert_int_equal(sa_decoder_step(d, kv, &b2), SA_EFULL);
  assert_int_equal(sa_kv_seq_len(kv, id), 24);
  assert_int_equal(sa_kv_seq_len(kv, id2), 0);
  uint64_t dup[2] = {id, id};
  b2.seq_ids = dup;
  assert_int_equal(sa_decoder_step(d, kv, &b2), SA_EINVAL);
  assert_int_equal(sa_kv_seq_len(kv, id), 24);
  uint64_t ghost = 99;
  b.seq_ids = &ghost;
  assert_int_equal(sa_decoder_step(d, kv, &b), SA_ENOENT);
  sa_kv_destroy(&kv);
  sa_decoder_destroy(&d);

  /* loading: bad range, missing directory */
  sa_decoder_opts_t o = {.first_layer = 2, .last_layer = 2};
  char err[256];
  assert_int_equal(sa_decoder_load(be, g_dir[0], NULL, &o, &d, err, sizeof err),
                   SA_EINVAL);
  o.first_layer = 0;
  o.last_layer = -1;
  assert_true(sa_decoder_load(be, "/nonexistent/dir", NULL, &o, &d, err,
                              sizeof err) < 0);
  assert_null(d);
  sa_backend_destroy(&be);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_prefill_decode_ref),
      cmocka_unit_test(test_prefill_decode_cpu),
      cmocka_unit_test(test_prefill_decode_cpu_fp32),
      cmocka_unit_test(test_tied_head),
      cmocka_unit_test(test_mixed_batch_fork_embeds_pipeline),
      cmocka_unit_test(test_pipeline_device_io),
      cmocka_unit_test(test_batch_invariance),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
