/*
 * audio_encoder — Step-Audio 2 audio encoder + adaptor forward (see
 * audio_encoder.h). Module order and names follow docs/model.md, checked
 * against the public Step-Audio 2 code (AudioEncoder / Adaptor).
 *
 * Layout: activations are channels-last fp32, [frames, channels] row-major,
 * so every Linear is one matmul_bf16 over all frames of the chunk and the
 * convolutions use the backend's channels-last conv1d.
 */
#include "audio_encoder.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "mel.h"
#include "sa_error.h"
#include "tensor.h"

#define LN_EPS 1e-5f

/* Python's floor division for the length formulas. */
static int64_t floordiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0)))
    q--;
  return q;
}

int sa_audio_mel_frames(int64_t n_samples) {
  if (n_samples <= 0)
    return 0;
  return (int)floordiv(n_samples + 479, 160);
}

int sa_audio_encoder_len(int T) {
  int64_t x_len = (int64_t)T - 2;
  int64_t e = floordiv(floordiv(x_len + 1, 2), 2);
  return e < 0 ? 0 : (int)e;
}

int sa_audio_chunk_tokens(int T) {
  int64_t e = sa_audio_encoder_len(T);
  int64_t n = floordiv(e - 1, 2) + 1;
  return n < 0 ? 0 : (int)n;
}

void sa_audio_count_tokens(int64_t n_samples, int *n_chunks,
                           int64_t *total_tokens) {
  int chunks = 0;
  int64_t tokens = 0;
  for (int64_t off = 0; off < n_samples; off += SA_AUDIO_CHUNK_SAMPLES) {
    int64_t n = n_samples - off;
    if (n > SA_AUDIO_CHUNK_SAMPLES)
      n = SA_AUDIO_CHUNK_SAMPLES;
    chunks++;
    tokens += sa_audio_chunk_tokens(sa_audio_mel_frames(n));
  }
  if (n_chunks)
    *n_chunks = chunks;
  if (total_tokens)
    *total_tokens = tokens;
}

/* ------------------------------------------------------------------------ */

typedef struct {
  uint16_t *attn_ln_w, *attn_ln_b;
  uint16_t *q_w, *q_b, *k_w, *v_w, *v_b, *o_w, *o_b;
  uint16_t *mlp_ln_w, *mlp_ln_b;
  uint16_t *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} enc_block_t;

struct sa_audio_encoder {
  sa_backend_t *be;
  int n_mels, S, n_layer, n_head, n_ctx;
  int A;      /* adaptor hidden (linear1 output) */
  int H;      /* output rows' width (linear2 output) */
  int ad_k;   /* adaptor conv kernel */
  int ad_s;   /* adaptor conv stride */
  uint16_t *conv1_w, *conv1_b, *conv2_w, *conv2_b;
  float *pos; /* fp32 [n_ctx, S] */
  enc_block_t *blocks;
  uint16_t *after_w, *after_b;
  uint16_t *pool_w; /* [S, 2S] = [0.5 I | 0.5 I]: avg pool as a matmul */
  uint16_t *ad_conv_w, *ad_conv_b, *l1_w, *l1_b, *l2_w, *l2_b;
};

struct sa_audio_encoder_ws {
  const sa_audio_encoder_t *enc;
  int t_max, t2_max, t3_max, t4_max;
  float *host_in; /* host [t_max, n_mels]: the transposed mel */
  float *xin;     /* [t_max, n_mels] */
  float *c1;      /* [t_max, S] */
  float *x;       /* [t2_max, S] residual stream */
  float *h;       /* [t2_max, S] normed */
  float *q, *k, *v, *o; /* [t2_max, S] */
  float *m;       /* [t2_max, 4S] */
  float *p;       /* [t3_max, S] pooled + after_norm */
  float *a;       /* [t4_max, S] adaptor conv */
  float *l1;      /* [t4_max, A] */
  float *y;       /* [t4_max, H] */
  void *conv_ws;
  size_t conv_ws_bytes;
  sa_mel_t *mel;   /* front end for encode_pcm */
  float *mel_out;  /* host [n_mels, t_max] */
};

/* Out-of-line so that a failed upload path reads simply. */
static void *be_alloc(sa_backend_t *be, size_t bytes) {
  return be->ops->alloc(be, bytes ? bytes : 64);
}

/* Finds `name` with the given shape; converts it to bf16 and uploads it.
 * On success *dst is backend memory owned by the encoder. */
static int load_bf16(sa_audio_encoder_t *e, const sa_st_t *st,
                     const char *name, int ndim, const int64_t *shape,
                     uint16_t **dst, char *err, size_t err_cap) {
  const sa_st_tensor_t *t = sa_st_find(st, name);
  if (!t) {
    snprintf(err, err_cap, "audio encoder: tensor '%s' missing", name);
    return SA_ENOENT;
  }
  bool ok = t->desc.ndim == ndim;
  for (int i = 0; ok && i < ndim; i++)
    ok = t->desc.shape[i] == shape[i];
  if (!ok) {
    char have[96], want[96];
    sa_tensor_desc_t w = {.dtype = t->desc.dtype, .ndim = ndim};
    for (int i = 0; i < ndim; i++)
      w.shape[i] = shape[i];
    snprintf(err, err_cap, "audio encoder: tensor '%s' is %s, expected %s",
             name, sa_tensor_desc_str(&t->desc, have, sizeof have),
             sa_tensor_desc_str(&w, want, sizeof want));
    return SA_EFORMAT;
  }
  size_t n = (size_t)sa_tensor_desc_numel(&t->desc);
  uint16_t *host = NULL;
  const uint16_t *src = NULL;
  if (t->desc.dtype == SA_DTYPE_BF16) {
    src = t->data;
  } else {
    float *f = malloc(n * sizeof(float) + 1);
    host = malloc(n * sizeof(uint16_t) + 1);
    if (!f || !host) {
      free(f);
      free(host);
      snprintf(err, err_cap, "audio encoder: out of memory for '%s'", name);
      return SA_ENOMEM;
    }
    if (sa_to_f32_n(f, t->data, t->desc.dtype, n) != 0) {
      free(f);
      free(host);
      snprintf(err, err_cap, "audio encoder: tensor '%s' has dtype %s, "
               "expected a float dtype", name, sa_dtype_name(t->desc.dtype));
      return SA_EFORMAT;
    }
    sa_f32_to_bf16_n(host, f, n);
    free(f);
    src = host;
  }
  *dst = be_alloc(e->be, n * sizeof(uint16_t));
  int rc = *dst ? e->be->ops->upload(e->be, *dst, src, n * sizeof(uint16_t))
                : SA_ENOMEM;
  free(host);
  if (rc != 0)
    snprintf(err, err_cap, "audio encoder: cannot upload '%s': %s", name,
             sa_strerror(rc));
  return rc;
}

/* The positional embedding is added to fp32 activations, so it is kept in
 * fp32 (exactly the bf16 values). */
static int load_pos(sa_audio_encoder_t *e, const sa_st_t *st, char *err,
                    size_t err_cap) {
  const char *name = "encoder.positional_embedding.weight";
  const sa_st_tensor_t *t = sa_st_find(st, name);
  if (!t) {
    name = "encoder.positional_embedding";
    t = sa_st_find(st, name);
  }
  if (!t) {
    snprintf(err, err_cap, "audio encoder: tensor "
             "'encoder.positional_embedding.weight' missing");
    return SA_ENOENT;
  }
  if (t->desc.ndim != 2 || t->desc.shape[0] != e->n_ctx ||
      t->desc.shape[1] != e->S) {
    char have[96];
    snprintf(err, err_cap, "audio encoder: tensor '%s' is %s, expected "
             "[%d,%d]", name, sa_tensor_desc_str(&t->desc, have, sizeof have),
             e->n_ctx, e->S);
    return SA_EFORMAT;
  }
  size_t n = (size_t)e->n_ctx * e->S;
  float *f = malloc(n * sizeof(float));
  if (!f)
    return SA_ENOMEM;
  if (sa_to_f32_n(f, t->data, t->desc.dtype, n) != 0) {
    free(f);
    snprintf(err, err_cap, "audio encoder: '%s' is not a float tensor", name);
    return SA_EFORMAT;
  }
  /* round to bf16 like every other weight */
  for (size_t i = 0; i < n; i++)
    f[i] = sa_bf16_to_f32(sa_f32_to_bf16(f[i]));
  e->pos = be_alloc(e->be, n * sizeof(float));
  int rc = e->pos ? e->be->ops->upload(e->be, e->pos, f, n * sizeof(float))
                  : SA_ENOMEM;
  free(f);
  return rc;
}

static int make_pool(sa_audio_encoder_t *e) {
  size_t S = (size_t)e->S, n = S * 2 * S;
  uint16_t *h = calloc(n, sizeof(uint16_t));
  if (!h)
    return SA_ENOMEM;
  uint16_t half = sa_f32_to_bf16(0.5f);
  for (size_t i = 0; i < S; i++) {
    h[i * 2 * S + i] = half;
    h[i * 2 * S + S + i] = half;
  }
  e->pool_w = be_alloc(e->be, n * sizeof(uint16_t));
  int rc = e->pool_w ? e->be->ops->upload(e->be, e->pool_w, h,
                                          n * sizeof(uint16_t))
                     : SA_ENOMEM;
  free(h);
  return rc;
}

int sa_audio_encoder_new(sa_backend_t *be, const sa_model_config_t *cfg,
                         const sa_st_t *st, sa_audio_encoder_t **out,
                         char *err, size_t err_cap) {
  char dummy[8];
  if (!err) {
    err = dummy;
    err_cap = sizeof dummy;
  }
  err[0] = '\0';
  if (!out)
    return SA_EINVAL;
  *out = NULL;
  if (!be || !cfg || !st) {
    snprintf(err, err_cap, "audio encoder: missing backend/config/weights");
    return SA_EINVAL;
  }
  if (!cfg->audio.present) {
    snprintf(err, err_cap, "audio encoder: config has no audio_encoder_config");
    return SA_EINVAL;
  }
  const int S = cfg->audio.n_state, nh = cfg->audio.n_head;
  if (S <= 0 || nh <= 0 || S % nh != 0 || cfg->audio.n_mels <= 0 ||
      cfg->audio.n_layer < 0 || cfg->audio.n_ctx <= 0 ||
      cfg->audio.adapter_hidden <= 0 || cfg->hidden_size <= 0 ||
      cfg->audio.kernel_size <= 0 || cfg->audio.adapter_stride <= 0) {
    snprintf(err, err_cap, "audio encoder: bad audio config (state %d, heads "
             "%d, mels %d, ctx %d)", S, nh, cfg->audio.n_mels,
             cfg->audio.n_ctx);
    return SA_EINVAL;
  }
  /* The longest chunk needs ceil(2502 / 2) positions. */
  if (cfg->audio.n_ctx < (SA_AUDIO_CHUNK_MAX_FRAMES + 1) / 2) {
    snprintf(err, err_cap, "audio encoder: n_audio_ctx %d < %d frames of a "
             "25 s chunk", cfg->audio.n_ctx,
             (SA_AUDIO_CHUNK_MAX_FRAMES + 1) / 2);
    return SA_EINVAL;
  }
  sa_audio_encoder_t *e = calloc(1, sizeof *e);
  if (!e)
    return SA_ENOMEM;
  e->be = be;
  e->n_mels = cfg->audio.n_mels;
  e->S = S;
  e->n_layer = cfg->audio.n_layer;
  e->n_head = nh;
  e->n_ctx = cfg->audio.n_ctx;
  /* The adaptor width is taken from the checkpoint: Step-Audio 2 configs do
   * not always name it (the modeling code defaults it to 2048). */
  e->A = cfg->audio.adapter_hidden;
  const sa_st_tensor_t *l1 = sa_st_find(st, "adapter.linear1.weight");
  if (l1 && l1->desc.ndim == 2 && l1->desc.shape[0] > 0 &&
      l1->desc.shape[0] <= (1 << 20) && l1->desc.shape[0] != e->A) {
    SA_LOG_INFO("audio encoder: adaptor width %lld from the checkpoint "
                "(config says %d)", (long long)l1->desc.shape[0], e->A);
    e->A = (int)l1->desc.shape[0];
  }
  e->H = cfg->hidden_size;
  e->ad_k = cfg->audio.kernel_size;
  e->ad_s = cfg->audio.adapter_stride;
  int rc = 0;
  e->blocks = calloc(e->n_layer ? e->n_layer : 1, sizeof *e->blocks);
  if (!e->blocks) {
    rc = SA_ENOMEM;
    goto fail;
  }
  const int64_t s_[1] = {S}, ss[2] = {S, S}, fs[2] = {4 * (int64_t)S, S},
                sf[2] = {S, 4 * (int64_t)S}, f_[1] = {4 * (int64_t)S};
  const int64_t c1[3] = {S, e->n_mels, 3}, c2[3] = {S, S, 3},
                ac[3] = {S, S, e->ad_k};
  const int64_t as[2] = {e->A, S}, a_[1] = {e->A}, ha[2] = {e->H, e->A},
                h_[1] = {e->H};
#define LOAD(name, nd, shape, dst)                                             \
  do {                                                                         \
    if ((rc = load_bf16(e, st, (name), (nd), (shape), &(dst), err,             \
                        err_cap)) != 0)                                        \
      goto fail;                                                               \
  } while (0)
  LOAD("encoder.conv1.weight", 3, c1, e->conv1_w);
  LOAD("encoder.conv1.bias", 1, s_, e->conv1_b);
  LOAD("encoder.conv2.weight", 3, c2, e->conv2_w);
  LOAD("encoder.conv2.bias", 1, s_, e->conv2_b);
  if ((rc = load_pos(e, st, err, err_cap)) != 0)
    goto fail;
  for (int i = 0; i < e->n_layer; i++) {
    enc_block_t *b = &e->blocks[i];
    char nm[128];
#define BLK(suffix, nd, shape, dst)                                            \
  do {                                                                         \
    snprintf(nm, sizeof nm, "encoder.blocks.%d.%s", i, (suffix));              \
    LOAD(nm, (nd), (shape), (dst));                                            \
  } while (0)
    BLK("attn_ln.weight", 1, s_, b->attn_ln_w);
    BLK("attn_ln.bias", 1, s_, b->attn_ln_b);
    BLK("attn.query.weight", 2, ss, b->q_w);
    BLK("attn.query.bias", 1, s_, b->q_b);
    BLK("attn.key.weight", 2, ss, b->k_w);
    BLK("attn.value.weight", 2, ss, b->v_w);
    BLK("attn.value.bias", 1, s_, b->v_b);
    BLK("attn.out.weight", 2, ss, b->o_w);
    BLK("attn.out.bias", 1, s_, b->o_b);
    BLK("mlp_ln.weight", 1, s_, b->mlp_ln_w);
    BLK("mlp_ln.bias", 1, s_, b->mlp_ln_b);
    BLK("mlp.0.weight", 2, fs, b->fc1_w);
    BLK("mlp.0.bias", 1, f_, b->fc1_b);
    BLK("mlp.2.weight", 2, sf, b->fc2_w);
    BLK("mlp.2.bias", 1, s_, b->fc2_b);
#undef BLK
  }
  LOAD("encoder.after_norm.weight", 1, s_, e->after_w);
  LOAD("encoder.after_norm.bias", 1, s_, e->after_b);
  LOAD("adapter.conv.weight", 3, ac, e->ad_conv_w);
  LOAD("adapter.conv.bias", 1, s_, e->ad_conv_b);
  LOAD("adapter.linear1.weight", 2, as, e->l1_w);
  LOAD("adapter.linear1.bias", 1, a_, e->l1_b);
  LOAD("adapter.linear2.weight", 2, ha, e->l2_w);
  LOAD("adapter.linear2.bias", 1, h_, e->l2_b);
#undef LOAD
  if ((rc = make_pool(e)) != 0) {
    snprintf(err, err_cap, "audio encoder: out of backend memory");
    goto fail;
  }
  if ((rc = be->ops->sync(be)) != 0)
    goto fail;
  *out = e;
  return 0;
fail:
  sa_audio_encoder_destroy(&e);
  return rc;
}

void sa_audio_encoder_destroy(sa_audio_encoder_t **encp) {
  if (!encp || !*encp)
    return;
  sa_audio_encoder_t *e = *encp;
  sa_backend_t *be = e->be;
#define FREE(p)                                                                \
  do {                                                                         \
    if (p)                                                                     \
      be->ops->free(be, (p));                                                  \
  } while (0)
  FREE(e->conv1_w);
  FREE(e->conv1_b);
  FREE(e->conv2_w);
  FREE(e->conv2_b);
  FREE(e->pos);
  if (e->blocks) {
    for (int i = 0; i < e->n_layer; i++) {
      enc_block_t *b = &e->blocks[i];
      uint16_t *ps[] = {b->attn_ln_w, b->attn_ln_b, b->q_w, b->q_b,
                        b->k_w, b->v_w, b->v_b, b->o_w, b->o_b,
                        b->mlp_ln_w, b->mlp_ln_b, b->fc1_w, b->fc1_b,
                        b->fc2_w, b->fc2_b};
      for (size_t j = 0; j < sizeof ps / sizeof ps[0]; j++)
        FREE(ps[j]);
    }
    free(e->blocks);
  }
  FREE(e->after_w);
  FREE(e->after_b);
  FREE(e->pool_w);
  FREE(e->ad_conv_w);
  FREE(e->ad_conv_b);
  FREE(e->l1_w);
  FREE(e->l1_b);
  FREE(e->l2_w);
  FREE(e->l2_b);
#undef FREE
  free(e);
  *encp = NULL;
}

int sa_audio_encoder_hidden(const sa_audio_encoder_t *enc) { return enc->H; }
int sa_audio_encoder_n_mels(const sa_audio_encoder_t *enc) {
  return enc->n_mels;
}
sa_backend_t *sa_audio_encoder_backend(const sa_audio_encoder_t *enc) {
  return enc->be;
}

/* ------------------------------------------------------------------------ */

static int conv_out(int tin, int k, int s, int pad) {
  int64_t v = tin + 2 * pad - k;
  return v < 0 ? 0 : (int)(v / s + 1);
}

int sa_audio_encoder_ws_new(const sa_audio_encoder_t *e,
                            sa_audio_encoder_ws_t **out) {
  if (!e || !out)
    return SA_EINVAL;
  *out = NULL;
  sa_audio_encoder_ws_t *w = calloc(1, sizeof *w);
  if (!w)
    return SA_ENOMEM;
  sa_backend_t *be = e->be;
  w->enc = e;
  w->t_max = SA_AUDIO_CHUNK_MAX_FRAMES;
  w->t2_max = conv_out(w->t_max, 3, 2, 1);
  w->t3_max = w->t2_max / 2;
  w->t4_max = conv_out(w->t3_max, e->ad_k, e->ad_s, 1);
  const size_t S = e->S, f4 = sizeof(float);
  size_t cw1 = be->ops->conv1d_ws_bytes(w->t_max, e->n_mels, 3, 1, 1);
  size_t cw2 = be->ops->conv1d_ws_bytes(w->t_max, e->S, 3, 2, 1);
  size_t cw3 = be->ops->conv1d_ws_bytes(w->t3_max, e->S, e->ad_k, e->ad_s, 1);
  w->conv_ws_bytes = cw1 > cw2 ? cw1 : cw2;
  if (cw3 > w->conv_ws_bytes)
    w->conv_ws_bytes = cw3;
  w->host_in = malloc((size_t)w->t_max * e->n_mels * f4);
  w->xin = be_alloc(be, (size_t)w->t_max * e->n_mels * f4);
  w->c1 = be_alloc(be, (size_t)w->t_max * S * f4);
  w->x = be_alloc(be, (size_t)w->t2_max * S * f4);
  w->h = be_alloc(be, (size_t)w->t2_max * S * f4);
  w->q = be_alloc(be, (size_t)w->t2_max * S * f4);
  w->k = be_alloc(be, (size_t)w->t2_max * S * f4);
  w->v = be_alloc(be, (size_t)w->t2_max * S * f4);
  w->o = be_alloc(be, (size_t)w->t2_max * S * f4);
  w->m = be_alloc(be, (size_t)w->t2_max * 4 * S * f4);
  w->p = be_alloc(be, (size_t)(w->t3_max ? w->t3_max : 1) * S * f4);
  w->a = be_alloc(be, (size_t)(w->t4_max ? w->t4_max : 1) * S * f4);
  w->l1 = be_alloc(be, (size_t)(w->t4_max ? w->t4_max : 1) * e->A * f4);
  w->y = be_alloc(be, (size_t)(w->t4_max ? w->t4_max : 1) * e->H * f4);
  w->conv_ws = be_alloc(be, w->conv_ws_bytes);
  w->mel = sa_mel_new(SA_AUDIO_CHUNK_SAMPLES);
  w->mel_out = malloc((size_t)SA_MEL_N_MELS * w->t_max * f4);
  if (!w->mel || !w->mel_out || !w->host_in || !w->xin || !w->c1 || !w->x || !w->h || !w->q || !w->k ||
      !w->v || !w->o || !w->m || !w->p || !w->a || !w->l1 || !w->y ||
      !w->conv_ws) {
    SA_LOG_ERROR("audio encoder: out of memory for the workspace of a 25 s "
                 "chunk");
    sa_audio_encoder_ws_destroy(&w);
    return SA_ENOMEM;
  }
  *out = w;
  return 0;
}

void sa_audio_encoder_ws_destroy(sa_audio_encoder_ws_t **wsp) {
  if (!wsp || !*wsp)
    return;
  sa_audio_encoder_ws_t *w = *wsp;
  sa_backend_t *be = w->enc->be;
  float *bufs[] = {w->xin, w->c1, w->x, w->h, w->q, w->k, w->v,
                   w->o,   w->m,  w->p, w->a, w->l1, w->y};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
    if (bufs[i])
      be->ops->free(be, bufs[i]);
  if (w->conv_ws)
    be->ops->free(be, w->conv_ws);
  free(w->host_in);
  sa_mel_destroy(&w->mel);
  free(w->mel_out);
  free(w);
  *wsp = NULL;
}

/* Keys j of the T2 conv2 frames are visible iff 2j + ((T+1) mod 2) < x_len
 * (the reference slices the frame mask with [(T+1)%2::2]); since the
 * condition is monotone in j the visible keys are a prefix. */
static int visible_keys(int T, int T2) {
  int x_len = T - 2, off = (T + 1) % 2;
  int64_t d = (int64_t)x_len - off;
  int64_t n = d <= 0 ? 0 : (d + 1) / 2;
  return n > T2 ? T2 : (int)n;
}

#define CK(call)                                                               \
  do {                                                                         \
    int rc_ = (call);                                                          \
    if (rc_ != 0)                                                              \
      return rc_;                                                              \
  } while (0)

/* One chunk: mel [n_mels, T] host -> rows [n_tok, H] host. */
static int run_chunk(const sa_audio_encoder_t *e, sa_audio_encoder_ws_t *w,
                     const float *mel, int T, int n_tok, float *out) {
  sa_backend_t *be = e->be;
  const sa_backend_ops_t *op = be->ops;
  const int S = e->S, nm = e->n_mels, hd = S / e->n_head;
  /* [n_mels, T] -> channels-last [T, n_mels] */
  for (int c = 0; c < nm; c++)
    for (int t = 0; t < T; t++)
      w->host_in[(size_t)t * nm + c] = mel[(size_t)c * T + t];
  CK(op->upload(be, w->xin, w->host_in, (size_t)T * nm * sizeof(float)));
  /* conv1 (k3 p1) + GELU; conv2 (k3 s2 p1) + GELU */
  CK(sa_op_conv1d(be, w->c1, w->xin, e->conv1_w, e->conv1_b, T, nm, S, 3, 1, 1,
                w->conv_ws));
  CK(sa_op_gelu(be, w->c1, (size_t)T * S));
  const int T2 = conv_out(T, 3, 2, 1);
  if (T2 > e->n_ctx)
    return SA_EINVAL;
  CK(sa_op_conv1d(be, w->x, w->c1, e->conv2_w, e->conv2_b, T, S, S, 3, 2, 1,
                w->conv_ws));
  CK(sa_op_gelu(be, w->x, (size_t)T2 * S));
  CK(sa_op_add(be, w->x, e->pos, (size_t)T2 * S));
  const int n_valid = visible_keys(T, T2);
  if (n_valid < 1)
    return SA_EINVAL; /* only for chunks with no tokens, never run */
  const float scale = 1.0f / sqrtf((float)hd);
  for (int i = 0; i < e->n_layer; i++) {
    const enc_block_t *b = &e->blocks[i];
    CK(sa_op_layernorm(be, w->h, w->x, b->attn_ln_w, b->attn_ln_b, T2, S,
                     LN_EPS));
    CK(sa_op_matmul_bf16(be, w->q, w->h, b->q_w, b->q_b, T2, S, S, 0));
    CK(sa_op_matmul_bf16(be, w->k, w->h, b->k_w, NULL, T2, S, S, 0));
    CK(sa_op_matmul_bf16(be, w->v, w->h, b->v_w, b->v_b, T2, S, S, 0));
    CK(sa_op_attention_dense(be, w->o, w->q, w->k, w->v, T2, e->n_head, hd,
                           n_valid, scale));
    /* x += out(o): accumulate into the residual */
    CK(sa_op_matmul_bf16(be, w->x, w->o, b->o_w, b->o_b, T2, S, S, 1));
    CK(sa_op_layernorm(be, w->h, w->x, b->mlp_ln_w, b->mlp_ln_b, T2, S,
                     LN_EPS));
    CK(sa_op_matmul_bf16(be, w->m, w->h, b->fc1_w, b->fc1_b, T2, 4 * S, S, 0));
    CK(sa_op_gelu(be, w->m, (size_t)T2 * 4 * S));
    CK(sa_op_matmul_bf16(be, w->x, w->m, b->fc2_w, b->fc2_b, T2, S, 4 * S, 1));
  }
  /* AvgPool1d(2, 2): rows 2t and 2t+1 of x are row t of x viewed as
   * [T3, 2S]; times [0.5 I | 0.5 I]^T that is their mean (exact weights). */
  const int T3 = T2 / 2;
  CK(sa_op_matmul_bf16(be, w->p, w->x, e->pool_w, NULL, T3, S, 2 * S, 0));
  CK(sa_op_layernorm(be, w->p, w->p, e->after_w, e->after_b, T3, S, LN_EPS));
  /* adaptor: conv (k, s, p1) + GELU; linear1 + ReLU; linear2. Rows past
   * n_tok are never used, so the linears run on n_tok rows only. */
  const int T4 = conv_out(T3, e->ad_k, e->ad_s, 1);
  if (n_tok > T4)
    return SA_EINTERNAL;
  CK(sa_op_conv1d(be, w->a, w->p, e->ad_conv_w, e->ad_conv_b, T3, S, S, e->ad_k,
                e->ad_s, 1, w->conv_ws));
  CK(sa_op_gelu(be, w->a, (size_t)n_tok * S));
  CK(sa_op_matmul_bf16(be, w->l1, w->a, e->l1_w, e->l1_b, n_tok, e->A, S, 0));
  CK(sa_op_relu(be, w->l1, (size_t)n_tok * e->A));
  CK(sa_op_matmul_bf16(be, w->y, w->l1, e->l2_w, e->l2_b, n_tok, e->H, e->A, 0));
  CK(op->sync(be));
  CK(op->download(be, out, w->y, (size_t)n_tok * e->H * sizeof(float)));
  return op->sync(be);
}

int sa_audio_encoder_run(const sa_audio_encoder_t *enc,
                         sa_audio_encoder_ws_t *ws, const float *const *mels,
                         const int *T, int n_chunks, float *out,
                         int64_t out_cap_rows, int *chunk_tokens,
                         int64_t *total_rows) {
  if (!enc || !ws || ws->enc != enc || n_chunks < 0 ||
      (n_chunks > 0 && (!mels || !T || !chunk_tokens)))
    return SA_EINVAL;
  int64_t rows = 0;
  if (total_rows)
    *total_rows = 0;
  for (int c = 0; c < n_chunks; c++) {
    int n_tok = sa_audio_chunk_tokens(T[c]);
    chunk_tokens[c] = 0;
    if (n_tok == 0)
      continue;
    if (T[c] < 3 || T[c] > ws->t_max || !mels[c])
      return SA_EINVAL;
    if (rows + n_tok > out_cap_rows)
      return SA_ERANGE;
    int rc = run_chunk(enc, ws, mels[c], T[c], n_tok,
                       out + (size_t)rows * enc->H);
    if (rc != 0)
      return rc;
    chunk_tokens[c] = n_tok;
    rows += n_tok;
    if (total_rows)
      *total_rows = rows;
  }
  return 0;
}

int sa_audio_encoder_encode_pcm(const sa_audio_encoder_t *enc,
                                sa_audio_encoder_ws_t *ws, const float *pcm,
                                size_t n_samples, float *out,
                                int64_t out_cap_rows, int *chunk_tokens,
                                int chunk_cap, int64_t *total_rows,
                                pthread_mutex_t *backend_lock) {
  if (!enc || !ws || ws->enc != enc || !pcm || n_samples == 0 ||
      !chunk_tokens)
    return SA_EINVAL;
  if (enc->n_mels != SA_MEL_N_MELS) {
    SA_LOG_ERROR("audio encoder: the mel front end makes %d bins, the "
                 "encoder wants %d", SA_MEL_N_MELS, enc->n_mels);
    return SA_EINVAL;
  }
  int n_chunks = 0;
  int64_t need = 0;
  sa_audio_count_tokens((int64_t)n_samples, &n_chunks, &need);
  if (n_chunks > chunk_cap || need > out_cap_rows)
    return SA_ERANGE;
  int64_t rows = 0;
  if (total_rows)
    *total_rows = 0;
  for (int c = 0; c < n_chunks; c++) {
    size_t off = (size_t)c * SA_AUDIO_CHUNK_SAMPLES;
    size_t n = n_samples - off;
    if (n > SA_AUDIO_CHUNK_SAMPLES)
      n = SA_AUDIO_CHUNK_SAMPLES;
    chunk_tokens[c] = 0;
    int T = sa_audio_mel_frames((int64_t)n);
    if (sa_audio_chunk_tokens(T) == 0)
      continue;
    size_t frames = 0;
    int rc = sa_mel_compute(ws->mel, pcm + off, n, ws->mel_out,
                            (size_t)SA_MEL_N_MELS * ws->t_max, &frames, NULL);
    if (rc != 0)
      return rc;
    SA_ASSERT((int)frames == T, "mel frame count disagrees with the formula");
    const float *mels[1] = {ws->mel_out};
    int64_t got = 0;
    if (backend_lock)
      pthread_mutex_lock(backend_lock);
    rc = sa_audio_encoder_run(enc, ws, mels, &T, 1,
                              out + (size_t)rows * enc->H, out_cap_rows - rows,
                              &chunk_tokens[c], &got);
    if (backend_lock)
      pthread_mutex_unlock(backend_lock);
    if (rc != 0)
      return rc;
    rows += got;
    if (total_rows)
      *total_rows = rows;
  }
  return 0;
}
