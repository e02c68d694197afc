/* decoder — see decoder.h. */
#include "decoder.h"
#include "sa_time.h"

#include "log.h"
#include "sa_error.h"
#include "safetensors.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A linear layer's weight W[N, K] in backend memory: bf16, or quantized
 * (kernels.h SA_WQ_*: the q part and the fp16 scales). */
typedef struct {
  int type;     /* 0 = bf16, else SA_WQ_* (an R8 one once the backend packs) */
  void *w;      /* bf16 [N, K] or the q part */
  uint16_t *wd; /* quantized: scales [N, K/32] */
} dec_w_t;

typedef struct {
  uint16_t *ln1, *bqkv, *ln2; /* backend, bf16 */
  dec_w_t qkv, o, gu, down;
} dec_layer_t;

struct sa_decoder {
  sa_backend_t *be;
  sa_model_config_t cfg;
  sa_decoder_opts_t o;
  int H, nh, nkv, hd, I, V, L, qdim, kvdim, qkvdim;
  bool first_stage, last_stage;
  dec_layer_t *layers; /* [last - first] */
  uint16_t *embed;     /* [V, H] (first stage, or tied last stage) */
  dec_w_t lm_head;     /* [V, H]; .w == embed when tied (and not quantized) */
  uint16_t *norm;      /* [H] */
  sa_decoder_info_t info;
  int max_bpseq;
  /* backend workspaces */
  float *x, *h, *qkv, *att, *gu, *act; /* [Mmax, ...] */
  float *lrow, *logit;                 /* [Rmax, H], [Rmax, V] */
  int8_t *xq;                          /* q8 blocks of a matmul's x, when any */
  float *xd;                           /* weight is quantized: [Mmax, Kmax] */
  int32_t *d_ids, *d_pos, *d_slot, *d_qstart, *d_ctx, *d_btab;
  int prof_on;
  sa_decoder_prof_t prof;
  /* host scratch */
  int32_t *ids, *pos, *slot, *qstart, *ctx, *btab, *old_len;
};

/* ------------------------------------------------------------------ load */

typedef struct {
  int first, last, L;
  bool embed, head, tied;
} filter_arg_t;

static bool want_tensor(const char *name, void *arg) {
  const filter_arg_t *f = arg;
  if (strncmp(name, "model.layers.", 13) == 0) {
    char *end = NULL;
    long i = strtol(name + 13, &end, 10);
    return end != name + 13 && *end == '.' && i >= f->first && i < f->last;
  }
  if (strcmp(name, "model.embed_tokens.weight") == 0)
    return f->embed || (f->head && f->tied);
  if (strcmp(name, "model.norm.weight") == 0)
    return f->head;
  /* a tied head may still come as its own quantized lm_head (sa-model
   * quantize writes one): then it is used */
  if (strcmp(name, "lm_head.weight") == 0 || strcmp(name, "lm_head.weight_scale") == 0)
    return f->head;
  return false;
}

/* Copies tensor `name` of shape [d0(, d1)] as bf16 into host dst (converting
 * f32/f16). */
static int get_bf16(const sa_st_t *st, const char *name, int ndim, int64_t d0,
                    int64_t d1, uint16_t *dst, const uint16_t **direct,
                    char *err, size_t cap) {
  const sa_st_tensor_t *t = sa_st_find(st, name);
  if (!t) {
    snprintf(err, cap, "decoder: tensor '%s' missing", name);
    return SA_ENOENT;
  }
  int64_t want[2] = {d0, d1};
  bool ok = t->desc.ndim == ndim;
  for (int i = 0; ok && i < ndim; i++)
    ok = t->desc.shape[i] == want[i];
  if (!ok) {
    char have[96];
    snprintf(err, cap, "decoder: tensor '%s' is %s, expected [%lld%s%lld]",
             name, sa_tensor_desc_str(&t->desc, have, sizeof have),
             (long long)d0, ndim == 2 ? "," : "", ndim == 2 ? (long long)d1 : 0LL);
    if (ndim == 1)
      snprintf(err, cap, "decoder: tensor '%s' is %s, expected [%lld]", name,
               have, (long long)d0);
    return SA_EFORMAT;
  }
  size_t n = (size_t)sa_tensor_desc_numel(&t->desc);
  if (t->desc.dtype == SA_DTYPE_BF16) {
    if (direct) {
      *direct = t->data;
      return 0;
    }
    memcpy(dst, t->data, n * 2);
    return 0;
  }
  if (t->desc.dtype != SA_DTYPE_F32 && t->desc.dtype != SA_DTYPE_F16) {
    snprintf(err, cap, "decoder: tensor '%s' has dtype %s (want bf16/f16/f32)",
             name, sa_dtype_name(t->desc.dtype));
    return SA_EFORMAT;
  }
  if (direct)
    *direct = NULL;
  float *f = malloc(n * sizeof(float) + 4);
  if (!f) {
    snprintf(err, cap, "decoder: out of memory converting '%s'", name);
    return SA_ENOMEM;
  }
  sa_to_f32_n(f, t->data, t->desc.dtype, n);
  sa_f32_to_bf16_n(dst, f, n);
  free(f);
  return 0;
}

/* Allocates backend memory for n bf16 values and fills it from tensor
 * `name`. stage is a host buffer of at least n values (used only when the
 * tensor needs conversion). */
static int load_one(sa_decoder_t *d, const sa_st_t *st, const char *name,
                    int ndim, int64_t d0, int64_t d1, uint16_t **out,
                    uint16_t *stage, char *err, size_t cap) {
  size_t n = (size_t)d0 * (size_t)(ndim == 2 ? d1 : 1);
  const uint16_t *src = NULL;
  int rc = get_bf16(st, name, ndim, d0, d1, stage, &src, err, cap);
  if (rc)
    return rc;
  *out = d->be->ops->alloc(d->be, n * 2);
  if (!*out) {
    snprintf(err, cap, "decoder: cannot allocate %zu bytes for '%s'", n * 2,
             name);
    return SA_ENOMEM;
  }
  rc = d->be->ops->upload(d->be, *out, src ? src : stage, n * 2);
  if (rc)
    snprintf(err, cap, "decoder: upload of '%s' failed: %s", name,
             sa_strerror(rc));
  return rc;
}

/* Concatenates the rows of n_parts tensors (each [rows_i, K], or [rows_i]
 * for biases) into one backend buffer. */
static int load_fused(sa_decoder_t *d, const sa_st_t *st, int n_parts,
                      char names[][96], const int64_t *rows, int64_t K,
                      uint16_t **out, uint16_t *stage, char *err, size_t cap) {
  size_t total = 0;
  for (int i = 0; i < n_parts; i++)
    total += (size_t)rows[i] * (size_t)(K > 0 ? K : 1);
  size_t off = 0;
  for (int i = 0; i < n_parts; i++) {
    int rc = get_bf16(st, names[i], K > 0 ? 2 : 1, rows[i], K, stage + off,
                      NULL, err, cap);
    if (rc)
      return rc;
    off += (size_t)rows[i] * (size_t)(K > 0 ? K : 1);
  }
  *out = d->be->ops->alloc(d->be, total * 2);
  if (!*out) {
    snprintf(err, cap, "decoder: cannot allocate %zu bytes for '%s'",
             total * 2, names[0]);
    return SA_ENOMEM;
  }
  return d->be->ops->upload(d->be, *out, stage, total * 2);
}

/* The quantized format a tensor's dtype stands for (docs/quantization.md):
 * int8 is Q8_0, uint8 Q4_0; 0 for a float tensor. */
static int q_type_of(const sa_st_tensor_t *t) {
  return t->desc.dtype == SA_DTYPE_I8 ? SA_WQ_Q8_0 : t->desc.dtype == SA_DTYPE_U8 ? SA_WQ_Q4_0 : 0;
}

/* Loads the weight made of the rows of n_parts tensors (each [rows_i, K])
 * into *out: bf16 (converted from f16/f32 as needed), or quantized when the
 * tensors are (every part in the same format, with its "<name>_scale").
 * Adds the backend bytes to *bytes. */
static int load_w_as(sa_decoder_t *d, const sa_st_t *st, int n_parts, char names[][96],
                     const int64_t *rows, int64_t K, dec_w_t *out, uint16_t *stage,
                     size_t *bytes, char *err, size_t cap) {
  const sa_st_tensor_t *t0 = sa_st_find(st, names[0]);
  int type = t0 ? q_type_of(t0) : 0;
  int64_t R = 0;
  for (int i = 0; i < n_parts; i++)
    R += rows[i];
  if (!type) {
    out->type = 0;
    *bytes += (size_t)R * (size_t)K * 2;
    if (n_parts == 1)
      return load_one(d, st, names[0], 2, rows[0], K, (uint16_t **)&out->w, stage, err, cap);
    return load_fused(d, st, n_parts, names, rows, K, (uint16_t **)&out->w, stage, err, cap);
  }
  if (K % SA_QK) {
    snprintf(err, cap, "decoder: tensor '%s' is quantized but its rows (%lld) are not a "
             "multiple of %d", names[0], (long long)K, SA_QK);
    return SA_EFORMAT;
  }
  size_t qrow = sa_wq_bytes(type, 1, (int)K), KB = (size_t)K / SA_QK;
  uint8_t *q = (uint8_t *)stage; /* the stage holds R * K bf16: more than R * qrow */
  uint16_t *sc = malloc((size_t)R * KB * 2 + 2);
  if (!sc) {
    snprintf(err, cap, "decoder: out of host memory for '%s'", names[0]);
    return SA_ENOMEM;
  }
  int rc = 0;
  size_t off = 0;
  for (int i = 0; i < n_parts && !rc; i++) {
    char sname[112];
    snprintf(sname, sizeof sname, "%s_scale", names[i]);
    const sa_st_tensor_t *t = sa_st_find(st, names[i]), *ts = sa_st_find(st, sname);
    const uint8_t *bad;
    if (!t || q_type_of(t) != type) {
      snprintf(err, cap, "decoder: tensor '%s' is %s but '%s' is %s: the parts of a fused "
               "weight must share one format", names[0], sa_dtype_name(t0->desc.dtype),
               names[i], t ? sa_dtype_name(t->desc.dtype) : "missing");
      rc = SA_EFORMAT;
    } else if (t->desc.ndim != 2 || t->desc.shape[0] != rows[i] ||
               t->desc.shape[1] != (int64_t)qrow) {
      char have[96];
      snprintf(err, cap, "decoder: quantized tensor '%s' is %s, expected [%lld,%zu]", names[i],
               sa_tensor_desc_str(&t->desc, have, sizeof have), (long long)rows[i], qrow);
      rc = SA_EFORMAT;
    } else if (!ts || ts->desc.dtype != SA_DTYPE_F16 || ts->desc.ndim != 2 ||
               ts->desc.shape[0] != rows[i] || ts->desc.shape[1] != (int64_t)KB) {
      snprintf(err, cap, "decoder: quantized tensor '%s' needs '%s' as f16 [%lld,%zu]",
               names[i], sname, (long long)rows[i], KB);
      rc = SA_EFORMAT;
    } else if (type == SA_WQ_Q8_0 && (bad = memchr(t->data, 0x80, (size_t)rows[i] * qrow))) {
      /* the kernels negate w by x's sign: -(-128) does not fit a byte */
      size_t at = (size_t)(bad - (const uint8_t *)t->data);
      snprintf(err, cap, "decoder: Q8_0 tensor '%s' holds -128 at row %zu, column %zu; Q8_0 "
               "values lie in -127..127 (docs/quantization.md)", names[i], at / qrow, at % qrow);
      rc = SA_EFORMAT;
    } else {
      memcpy(q + off * qrow, t->data, (size_t)rows[i] * qrow);
      memcpy(sc + off * KB, ts->data, (size_t)rows[i] * KB * 2);
      off += (size_t)rows[i];
    }
  }
  if (!rc) {
    out->type = type;
    out->w = d->be->ops->alloc(d->be, (size_t)R * qrow);
    out->wd = d->be->ops->alloc(d->be, (size_t)R * KB * 2);
    if (!out->w || !out->wd) {
      snprintf(err, cap, "decoder: cannot allocate %zu bytes for '%s'",
               (size_t)R * (qrow + KB * 2), names[0]);
      rc = SA_ENOMEM;
    }
  }
  if (!rc)
    rc = d->be->ops->upload(d->be, out->w, q, (size_t)R * qrow);
  if (!rc)
    rc = d->be->ops->upload(d->be, out->wd, sc, (size_t)R * KB * 2);
  if (!rc) { /* into the layout the backend reads fastest (kernels.h pack_q) */
    int t = sa_op_pack_q(d->be, type, out->w, out->wd, (int)R, (int)K);
    if (t < 0) {
      snprintf(err, cap, "decoder: cannot re-lay '%s' for the backend: %s", names[0],
               sa_strerror(t));
      rc = t;
    } else {
      out->type = t;
    }
  }
  if (!rc)
    *bytes += (size_t)R * (qrow + KB * 2);
  free(sc);
  return rc;
}

/* load_w_as, counting the matrix under the format it is held in
 * (sa_decoder_info_t.matrices). */
static int load_w(sa_decoder_t *d, const sa_st_t *st, int n_parts, char names[][96],
                  const int64_t *rows, int64_t K, dec_w_t *out, uint16_t *stage, size_t *bytes,
                  char *err, size_t cap) {
  int rc = load_w_as(d, st, n_parts, names, rows, K, out, stage, bytes, err, cap);
  if (!rc && out->type >= 0 && out->type < SA_WQ_COUNT_)
    d->info.matrices[out->type]++;
  return rc;
}

static void *ws_alloc(sa_decoder_t *d, size_t bytes) {
  d->info.ws_bytes += bytes;
  return d->be->ops->alloc(d->be, bytes ? bytes : 64);
}

int sa_decoder_load(sa_backend_t *be, const char *dir,
                    const sa_model_config_t *cfg,
                    const sa_decoder_opts_t *opts, sa_decoder_t **out,
                    char *err, size_t err_cap) {
  char ebuf[256];
  if (!err) {
    err = ebuf;
    err_cap = sizeof ebuf;
  }
  err[0] = 0;
  if (!be || !dir || !out) {
    snprintf(err, err_cap, "decoder: missing argument");
    return SA_EINVAL;
  }
  *out = NULL;
  int rc = 0;
  sa_st_t *st = NULL;
  uint16_t *stage = NULL;
  sa_decoder_t *d = calloc(1, sizeof *d);
  if (!d)
    return SA_ENOMEM;
  d->be = be;
  if (cfg) {
    d->cfg = *cfg;
  } else if ((rc = sa_config_load(dir, &d->cfg, err, err_cap)) != 0) {
    goto fail;
  }
  const sa_model_config_t *c = &d->cfg;
  d->H = c->hidden_size;
  d->nh = c->num_attention_heads;
  d->nkv = c->num_key_value_heads;
  d->hd = c->head_dim;
  d->I = c->intermediate_size;
  d->V = c->vocab_size;
  d->L = c->num_hidden_layers;
  d->qdim = d->nh * d->hd;
  d->kvdim = d->nkv * d->hd;
  d->qkvdim = d->qdim + 2 * d->kvdim;
  d->o = opts ? *opts : (sa_decoder_opts_t){0, -1, 0, 0, 0, 0, 0};
  sa_decoder_opts_t *o = &d->o;
  if (o->last_layer < 0)
    o->last_layer = d->L;
  if (o->max_tokens <= 0)
    o->max_tokens = 512;
  if (o->max_seqs <= 0)
    o->max_seqs = 64;
  if (o->max_logit_rows <= 0)
    o->max_logit_rows = o->max_seqs;
  if (o->max_seq_len <= 0)
    o->max_seq_len = 4096;
  if (o->block_size <= 0)
    o->block_size = 16;
  if (o->first_layer < 0 || o->first_layer >= o->last_layer ||
      o->last_layer > d->L || d->H <= 0 || d->nh <= 0 || d->nkv <= 0 ||
      d->nh % d->nkv || d->hd <= 0 || d->hd % 2 || d->V <= 0 || d->I <= 0) {
    snprintf(err, err_cap, "decoder: bad layer range [%d,%d) of %d layers or "
             "bad config", o->first_layer, o->last_layer, d->L);
    rc = SA_EINVAL;
    goto fail;
  }
  d->first_stage = o->first_layer == 0;
  d->last_stage = o->last_layer == d->L;
  d->max_bpseq = (o->max_seq_len + o->block_size - 1) / o->block_size;

  filter_arg_t fa = {o->first_layer, o->last_layer, d->L, d->first_stage,
                     d->last_stage, c->tie_word_embeddings};
  if ((rc = sa_st_open(dir, want_tensor, &fa, &st, err, err_cap)) != 0)
    goto fail;

  size_t H = (size_t)d->H;
  size_t stage_n = (size_t)2 * d->I * H;
  if ((size_t)d->qkvdim * H > stage_n)
    stage_n = (size_t)d->qkvdim * H;
  if ((size_t)d->V * H > stage_n && (d->first_stage || d->last_stage))
    stage_n = (size_t)d->V * H;
  stage = malloc(stage_n * 2);
  int nl = o->last_layer - o->first_layer;
  d->layers = calloc((size_t)nl, sizeof(dec_layer_t));
  if (!stage || !d->layers) {
    rc = SA_ENOMEM;
    snprintf(err, err_cap, "decoder: out of host memory");
    goto fail;
  }

  size_t lbytes = 0;
  int kmax_q = 0; /* longest K of a quantized matmul: the x blocks' row */
  for (int li = 0; li < nl; li++) {
    int l = o->first_layer + li;
    dec_layer_t *w = &d->layers[li];
    char nm[3][96];
    char name[96];
#define LNAME(buf, suffix) snprintf((buf), 96, "model.layers.%d.%s", l, suffix)
    LNAME(name, "input_layernorm.weight");
    if ((rc = load_one(d, st, name, 1, d->H, 0, &w->ln1, stage, err, err_cap)))
      goto fail;
    LNAME(name, "post_attention_layernorm.weight");
    if ((rc = load_one(d, st, name, 1, d->H, 0, &w->ln2, stage, err, err_cap)))
      goto fail;
    int64_t qkv_rows[3] = {d->qdim, d->kvdim, d->kvdim};
    LNAME(nm[0], "self_attn.q_proj.weight");
    LNAME(nm[1], "self_attn.k_proj.weight");
    LNAME(nm[2], "self_attn.v_proj.weight");
    if ((rc = load_w(d, st, 3, nm, qkv_rows, d->H, &w->qkv, stage, &lbytes, err, err_cap)))
      goto fail;
    LNAME(nm[0], "self_attn.q_proj.bias");
    LNAME(nm[1], "self_attn.k_proj.bias");
    LNAME(nm[2], "self_attn.v_proj.bias");
    if ((rc = load_fused(d, st, 3, nm, qkv_rows, 0, &w->bqkv, stage, err,
                         err_cap)))
      goto fail;
    int64_t o_rows[1] = {d->H};
    LNAME(nm[0], "self_attn.o_proj.weight");
    if ((rc = load_w(d, st, 1, nm, o_rows, d->qdim, &w->o, stage, &lbytes, err, err_cap)))
      goto fail;
    int64_t gu_rows[2] = {d->I, d->I};
    LNAME(nm[0], "mlp.gate_proj.weight");
    LNAME(nm[1], "mlp.up_proj.weight");
    if ((rc = load_w(d, st, 2, nm, gu_rows, d->H, &w->gu, stage, &lbytes, err, err_cap)))
      goto fail;
    LNAME(nm[0], "mlp.down_proj.weight");
    if ((rc = load_w(d, st, 1, nm, o_rows, d->I, &w->down, stage, &lbytes, err, err_cap)))
      goto fail;
    lbytes += (2 * H + (size_t)d->qkvdim) * 2; /* norms, qkv bias */
    kmax_q = w->qkv.type || w->gu.type ? (d->H > kmax_q ? d->H : kmax_q) : kmax_q;
    kmax_q = w->o.type && d->qdim > kmax_q ? d->qdim : kmax_q;
    kmax_q = w->down.type && d->I > kmax_q ? d->I : kmax_q;
#undef LNAME
  }
  d->info.layer_bytes = lbytes;

  size_t vh = (size_t)d->V * H;
  /* a last stage needs the table as its head only when tied without a
   * quantized lm_head of its own */
  bool head_is_embed = d->last_stage && c->tie_word_embeddings && !sa_st_find(st, "lm_head.weight");
  if (d->first_stage || head_is_embed) {
    if ((rc = load_one(d, st, "model.embed_tokens.weight", 2, d->V, d->H,
                       &d->embed, stage, err, err_cap)))
      goto fail;
    d->info.embed_bytes = vh * 2;
  }
  if (d->last_stage) {
    if ((rc = load_one(d, st, "model.norm.weight", 1, d->H, 0, &d->norm,
                       stage, err, err_cap)))
      goto fail;
    d->info.norm_bytes = H * 2;
    char hn[1][96] = {"lm_head.weight"};
    int64_t v_rows[1] = {d->V};
    size_t hbytes = 0;
    if (head_is_embed) {
      d->lm_head = (dec_w_t){0, d->embed, NULL};
      hbytes = vh * 2;
      d->info.matrices[0]++;
    } else if ((rc = load_w(d, st, 1, hn, v_rows, d->H, &d->lm_head, stage, &hbytes, err,
                            err_cap))) {
      goto fail;
    }
    if (d->lm_head.type && d->H > kmax_q)
      kmax_q = d->H;
    d->info.lm_head_bytes = hbytes;
  }
  free(stage);
  stage = NULL;
  sa_st_close(&st);

  /* workspaces */
  size_t M = (size_t)o->max_tokens, S = (size_t)o->max_seqs;
  size_t R = (size_t)o->max_logit_rows;
  d->x = ws_alloc(d, M * H * 4);
  d->h = ws_alloc(d, M * H * 4);
  d->qkv = ws_alloc(d, M * (size_t)d->qkvdim * 4);
  d->att = ws_alloc(d, M * (size_t)d->qdim * 4);
  d->gu = ws_alloc(d, M * 2 * (size_t)d->I * 4);
  d->act = ws_alloc(d, M * (size_t)d->I * 4);
  d->d_ids = ws_alloc(d, M * 4);
  d->d_pos = ws_alloc(d, M * 4);
  d->d_slot = ws_alloc(d, M * 4);
  d->d_qstart = ws_alloc(d, (S + 1) * 4);
  d->d_ctx = ws_alloc(d, S * 4);
  d->d_btab = ws_alloc(d, S * (size_t)d->max_bpseq * 4);
  if (d->last_stage) {
    d->lrow = ws_alloc(d, R * H * 4);
    d->logit = ws_alloc(d, R * (size_t)d->V * 4);
  }
  if (kmax_q) {
    size_t rows_q = M > R ? M : R;
    d->xq = ws_alloc(d, rows_q * (size_t)kmax_q);
    d->xd = ws_alloc(d, rows_q * (size_t)(kmax_q / SA_QK) * 4);
    if (!d->xq || !d->xd) {
      snprintf(err, err_cap, "decoder: cannot allocate workspaces (%zu bytes)",
               d->info.ws_bytes);
      rc = SA_ENOMEM;
      goto fail;
    }
  }
  d->ids = malloc(M * 4);
  d->pos = malloc(M * 4);
  d->slot = malloc(M * 4);
  d->qstart = malloc((S + 1) * 4);
  d->ctx = malloc(S * 4);
  d->old_len = malloc(S * 4);
  d->btab = calloc(S * (size_t)d->max_bpseq, 4);
  if (!d->x || !d->h || !d->qkv || !d->att || !d->gu || !d->act ||
      !d->d_ids || !d->d_pos || !d->d_slot || !d->d_qstart || !d->d_ctx ||
      !d->d_btab || (d->last_stage && (!d->lrow || !d->logit)) || !d->ids ||
      !d->pos || !d->slot || !d->qstart || !d->ctx || !d->old_len ||
      !d->btab) {
    snprintf(err, err_cap, "decoder: cannot allocate workspaces (%zu bytes)",
             d->info.ws_bytes);
    rc = SA_ENOMEM;
    goto fail;
  }
  if ((rc = be->ops->sync(be)) != 0)
    goto fail;
  *out = d;
  return 0;
fail:
  if (!err[0])
    snprintf(err, err_cap, "decoder: load failed: %s", sa_strerror(rc));
  free(stage);
  sa_st_close(&st);
  sa_decoder_destroy(&d);
  return rc ? rc : SA_EINTERNAL;
}

void sa_decoder_destroy(sa_decoder_t **dp) {
  if (!dp || !*dp)
    return;
  sa_decoder_t *d = *dp;
  sa_backend_t *be = d->be;
#define BFREE(p)                                                               \
  do {                                                                         \
    if (p)                                                                     \
      be->ops->free(be, (p));                                                  \
  } while (0)
  if (d->layers) {
    for (int i = 0; i < d->o.last_layer - d->o.first_layer; i++) {
      dec_layer_t *w = &d->layers[i];
      BFREE(w->ln1);
      BFREE(w->bqkv);
      BFREE(w->ln2);
      dec_w_t *ws[4] = {&w->qkv, &w->o, &w->gu, &w->down};
      for (int k = 0; k < 4; k++) {
        BFREE(ws[k]->w);
        BFREE(ws[k]->wd);
      }
    }
    free(d->layers);
  }
  if (d->lm_head.w != d->embed)
    BFREE(d->lm_head.w);
  BFREE(d->lm_head.wd);
  BFREE(d->xq);
  BFREE(d->xd);
  BFREE(d->embed);
  BFREE(d->norm);
  BFREE(d->x);
  BFREE(d->h);
  BFREE(d->qkv);
  BFREE(d->att);
  BFREE(d->gu);
  BFREE(d->act);
  BFREE(d->lrow);
  BFREE(d->logit);
  BFREE(d->d_ids);
  BFREE(d->d_pos);
  BFREE(d->d_slot);
  BFREE(d->d_qstart);
  BFREE(d->d_ctx);
  BFREE(d->d_btab);
#undef BFREE
  free(d->ids);
  free(d->pos);
  free(d->slot);
  free(d->qstart);
  free(d->ctx);
  free(d->old_len);
  free(d->btab);
  free(d);
  *dp = NULL;
}

/* ------------------------------------------------------------------ step */

#define CK(expr)                                                               \
  do {                                                                         \
    if ((rc = (expr)) != 0)                                                    \
      goto fail;                                                               \
  } while (0)

/* Runs an op; with profiling on, waits for it and charges its time. */
#define OP(cls, expr)                                                          \
  do {                                                                         \
    double t0_ = d->prof_on ? sa_now_s() : 0.0;                                   \
    CK(expr);                                                                  \
    if (d->prof_on) {                                                          \
      CK(op->sync(be));                                                        \
      d->prof.seconds[cls] += sa_now_s() - t0_;                                   \
    }                                                                          \
  } while (0)

/* y[M,N] (+)= x[M,K] · Wᵀ (+ bias) in W's format: a quantized W takes x's
 * q8 blocks, made here into the decoder's workspace. */
static int matmul(sa_decoder_t *d, float *y, const float *x, const dec_w_t *w,
                  const uint16_t *bias, int M, int N, int K, int accumulate) {
  if (!w->type)
    return sa_op_matmul_bf16(d->be, y, x, w->w, bias, M, N, K, accumulate);
  int rc = sa_op_quantize_q8(d->be, d->xq, d->xd, x, M, K);
  return rc ? rc : sa_op_matmul_q(d->be, y, d->xq, d->xd, w->type, w->w, w->wd, bias, M, N, K,
                                  accumulate);
}

int sa_decoder_step(sa_decoder_t *d, sa_kv_t *kv,
                    const sa_decoder_batch_t *b) {
  if (!d || !kv || !b || b->n_seqs <= 0 || b->n_seqs > d->o.max_seqs ||
      !b->seq_ids || !b->n_new)
    return SA_EINVAL;
  if (sa_kv_block_size(kv) != d->o.block_size)
    return SA_EINVAL;
  sa_backend_t *be = d->be;
  const sa_backend_ops_t *op = be->ops;
  const int S = b->n_seqs, H = d->H;
  long Ml = 0;
  for (int s = 0; s < S; s++) {
    if (b->n_new[s] <= 0)
      return SA_EINVAL;
    Ml += b->n_new[s];
  }
  if (Ml > d->o.max_tokens)
    return SA_EINVAL;
  const int M = (int)Ml;
  /* inputs and outputs this stage needs */
  if (d->first_stage) {
    if (!b->tokens || b->n_embed < 0 || b->n_embed > M ||
        (b->n_embed && (!b->embed_rows || !b->embeds)))
      return SA_EINVAL;
  } else if (!b->hidden_in && !b->hidden_device) {
    return SA_EINVAL;
  }
  if (d->last_stage) {
    if (b->n_logits < 0 || b->n_logits > d->o.max_logit_rows ||
        (b->n_logits && (!b->logit_rows || !b->logits)))
      return SA_EINVAL;
    for (int i = 0; i < b->n_logits; i++)
      if (b->logit_rows[i] < 0 || b->logit_rows[i] >= M)
        return SA_EINVAL;
  } else if (!b->hidden_out && !b->hidden_device) {
    return SA_EINVAL;
  }
  if (d->first_stage) {
    for (int i = 0; i < b->n_embed; i++)
      if (b->embed_rows[i] < 0 || b->embed_rows[i] >= M)
        return SA_EINVAL;
    memcpy(d->ids, b->tokens, (size_t)M * 4);
    for (int i = 0; i < b->n_embed; i++)
      d->ids[b->embed_rows[i]] = 0;
    for (int i = 0; i < M; i++)
      if (d->ids[i] < 0 || d->ids[i] >= d->V)
        return SA_ERANGE;
  }

  /* KV: check positions, then append each sequence (undone on error). */
  for (int s = 0; s < S; s++) {
    int len = sa_kv_seq_len(kv, b->seq_ids[s]);
    if (len < 0)
      return SA_ENOENT;
    if (b->pos0 && b->pos0[s] != len)
      return SA_ESTATE;
    d->old_len[s] = len;
  }
  int rc = 0, appended = 0, max_nb = 0, max_ctx = 0;
  int m = 0;
  d->qstart[0] = 0;
  for (int s = 0; s < S; s++) {
    int n = b->n_new[s];
    if ((long)d->old_len[s] + n > d->o.max_seq_len) {
      rc = SA_EINVAL;
      goto fail;
    }
    CK(sa_kv_append(kv, b->seq_ids[s], n, d->slot + m));
    appended = s + 1;
    for (int i = 0; i < n; i++)
      d->pos[m + i] = d->old_len[s] + i;
    m += n;
    d->qstart[s + 1] = m;
    d->ctx[s] = d->old_len[s] + n;
    if (d->ctx[s] > max_ctx)
      max_ctx = d->ctx[s];
  }
  /* A sequence appearing twice in one batch would read stale lengths. */
  for (int s = 0; s < S; s++) {
    int nb = 0;
    sa_kv_block_table(kv, b->seq_ids[s], &nb);
    if (nb > max_nb)
      max_nb = nb;
    if (sa_kv_seq_len(kv, b->seq_ids[s]) != d->ctx[s]) {
      rc = SA_EINVAL;
      goto fail;
    }
  }
  if (max_nb > d->max_bpseq) {
    rc = SA_EINVAL;
    goto fail;
  }
  for (int s = 0; s < S; s++) {
    int nb = 0;
    const int32_t *t = sa_kv_block_table(kv, b->seq_ids[s], &nb);
    memcpy(d->btab + (size_t)s * max_nb, t, (size_t)nb * 4);
    for (int j = nb; j < max_nb; j++)
      d->btab[(size_t)s * max_nb + j] = 0;
  }
  OP(SA_DEC_PROF_INPUT, op->upload(be, d->d_pos, d->pos, (size_t)M * 4));
  OP(SA_DEC_PROF_INPUT, op->upload(be, d->d_slot, d->slot, (size_t)M * 4));
  OP(SA_DEC_PROF_INPUT, op->upload(be, d->d_qstart, d->qstart, (size_t)(S + 1) * 4));
  OP(SA_DEC_PROF_INPUT, op->upload(be, d->d_ctx, d->ctx, (size_t)S * 4));
  OP(SA_DEC_PROF_INPUT, op->upload(be, d->d_btab, d->btab, (size_t)S * max_nb * 4));
  sa_attn_batch_t ab = {.n_seqs = S, .q_start = d->d_qstart,
                        .ctx_len = d->d_ctx, .block_table = d->d_btab,
                        .max_blocks = max_nb, .block_size = d->o.block_size,
                        .max_ctx = max_ctx};

  /* input rows */
  if (d->first_stage) {
    OP(SA_DEC_PROF_INPUT, op->upload(be, d->d_ids, d->ids, (size_t)M * 4));
    OP(SA_DEC_PROF_INPUT, sa_op_embed(be, d->x, d->embed, d->d_ids, M, H, d->V));
    for (int i = 0; i < b->n_embed; i++) /* runs of rows go in one copy */ {
      int j = i;
      while (j + 1 < b->n_embed && b->embed_rows[j + 1] == b->embed_rows[j] + 1)
        j++;
      OP(SA_DEC_PROF_INPUT, op->upload(be, d->x + (size_t)b->embed_rows[i] * H,
                    b->embeds + (size_t)i * H, (size_t)(j - i + 1) * H * 4));
      i = j;
    }
  } else if (!b->hidden_device) {
    OP(SA_DEC_PROF_INPUT, op->upload(be, d->x, b->hidden_in, (size_t)M * H * 4));
  }

  const float eps = d->cfg.rms_norm_eps, theta = d->cfg.rope_theta;
  const float scale = 1.0f / sqrtf((float)d->hd);
  const int kvt = sa_kv_type(kv);
  for (int li = 0; li < d->o.last_layer - d->o.first_layer; li++) {
    const dec_layer_t *w = &d->layers[li];
    void *kc, *vc;
    CK(sa_kv_layer(kv, d->o.first_layer + li, &kc, &vc));
    OP(SA_DEC_PROF_NORM, sa_op_rmsnorm(be, d->h, d->x, w->ln1, M, H, eps));
    OP(SA_DEC_PROF_QKV, matmul(d, d->qkv, d->h, &w->qkv, w->bqkv, M, d->qkvdim, H, 0));
    OP(SA_DEC_PROF_ROPE, sa_op_rope(be, d->qkv, d->d_pos, M, d->nh, d->hd, d->qkvdim, theta));
    OP(SA_DEC_PROF_ROPE, sa_op_rope(be, d->qkv + d->qdim, d->d_pos, M, d->nkv, d->hd, d->qkvdim,
                theta));
    OP(SA_DEC_PROF_KV_WRITE, sa_op_kv_write(be, kc, vc, kvt, d->qkv + d->qdim, d->qkv + d->qdim + d->kvdim,
                    d->qkvdim, d->d_slot, M, d->kvdim));
    OP(SA_DEC_PROF_ATTENTION, sa_op_attention(be, d->att, d->qkv, d->qkvdim, kc, vc, kvt, &ab, d->nh, d->nkv,
                     d->hd, scale));
    OP(SA_DEC_PROF_O_PROJ, matmul(d, d->x, d->att, &w->o, NULL, M, H, d->qdim, 1));
    OP(SA_DEC_PROF_NORM, sa_op_rmsnorm(be, d->h, d->x, w->ln2, M, H, eps));
    OP(SA_DEC_PROF_GATE_UP, matmul(d, d->gu, d->h, &w->gu, NULL, M, 2 * d->I, H, 0));
    OP(SA_DEC_PROF_SILU_MUL, sa_op_silu_mul(be, d->act, d->gu, M, d->I));
    OP(SA_DEC_PROF_DOWN, matmul(d, d->x, d->act, &w->down, NULL, M, H, d->I, 1));
  }

  if (d->last_stage) {
    int R = b->n_logits;
    if (R > 0) {
      for (int r = 0; r < R; r++)
        OP(SA_DEC_PROF_LM_HEAD, op->copy(be, d->lrow + (size_t)r * H,
                    d->x + (size_t)b->logit_rows[r] * H, (size_t)H * 4));
      OP(SA_DEC_PROF_LM_HEAD, sa_op_rmsnorm(be, d->lrow, d->lrow, d->norm, R, H, eps));
      OP(SA_DEC_PROF_LM_HEAD, matmul(d, d->logit, d->lrow, &d->lm_head, NULL, R, d->V, H,
                         0));
      OP(SA_DEC_PROF_OUTPUT, op->download(be, b->logits, d->logit, (size_t)R * d->V * 4));
    }
  } else if (!b->hidden_device) {
    OP(SA_DEC_PROF_OUTPUT, op->download(be, b->hidden_out, d->x, (size_t)M * H * 4));
  }
  OP(SA_DEC_PROF_OUTPUT, op->sync(be));
  if (d->prof_on)
    d->prof.steps++;
  return 0;
fail:
  for (int s = 0; s < appended; s++)
    sa_kv_truncate(kv, b->seq_ids[s], d->old_len[s]);
  return rc;
}

/* --------------------------------------------------------------- queries */

void sa_decoder_kv_opts(const sa_decoder_t *d, size_t budget_bytes,
                        int n_blocks, int max_seqs, sa_kv_opts_t *out) {
  memset(out, 0, sizeof *out);
  out->first_layer = d->o.first_layer;
  out->last_layer = d->o.last_layer;
  out->kv_dim = d->kvdim;
  out->block_size = d->o.block_size;
  out->budget_bytes = budget_bytes;
  out->n_blocks = n_blocks;
  out->max_seqs = max_seqs;
  out->max_seq_len = d->o.max_seq_len;
  out->kv_type = sa_kv_type_default();
  if (out->kv_type == SA_KV_Q8_0 && d->hd % SA_QK) {
    SA_LOG_ERROR("SA_KV_TYPE=q8_0 needs a head dim that is a multiple of %d; this model's is "
                 "%d (use bf16 or f32)", SA_QK, d->hd);
    out->kv_type = -1; /* the pool refuses it */
  }
}

int sa_kv_type_default(void) {
  const char *e = getenv("SA_KV_TYPE");
  if (!e || !*e || !strcmp(e, "bf16"))
    return SA_KV_BF16;
  if (!strcmp(e, "f32"))
    return SA_KV_F32;
  if (!strcmp(e, "q8_0"))
    return SA_KV_Q8_0;
  SA_LOG_ERROR("SA_KV_TYPE=%s: not one of bf16 (the default), f32, q8_0", e);
  return -1;
}

const char *sa_kv_type_name(int kv_type) {
  return kv_type == SA_KV_F32 ? "f32" : kv_type == SA_KV_BF16 ? "bf16"
                                   : kv_type == SA_KV_Q8_0 ? "q8_0" : "?";
}

void *sa_decoder_hidden_dev(sa_decoder_t *dec) { return dec ? dec->x : NULL; }

const sa_model_config_t *sa_decoder_config(const sa_decoder_t *d) {
  return &d->cfg;
}

const sa_decoder_opts_t *sa_decoder_opts(const sa_decoder_t *d) {
  return &d->o;
}

void sa_decoder_info(const sa_decoder_t *d, sa_decoder_info_t *out) {
  *out = d->info;
}

void sa_decoder_profile(sa_decoder_t *d, int enable) {
  d->prof_on = enable != 0;
  memset(&d->prof, 0, sizeof d->prof);
}

void sa_decoder_profile_read(const sa_decoder_t *d, sa_decoder_prof_t *out) {
  *out = d->prof;
}

const char *sa_decoder_prof_name(int op) {
  static const char *const names[SA_DEC_PROF_COUNT_] = {
      "input", "rmsnorm", "qkv", "rope", "kv_write", "attention",
      "o_proj", "gate_up", "silu_mul", "down", "lm_head", "output"};
  return op >= 0 && op < SA_DEC_PROF_COUNT_ ? names[op] : "?";
}
