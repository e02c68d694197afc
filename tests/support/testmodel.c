/* testmodel — see testmodel.h. */
#include "testmodel.h"
#include "tokenizer_synth.h"

#include "sa_error.h"
#include "safetensors.h"
#include "tensor.h"
#include "tokenizer.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int sa_testmodel_preset(const char *preset, sa_model_config_t *c,
                        int *n_merges) {
  if (!preset || !c)
    return SA_EINVAL;
  memset(c, 0, sizeof *c);
  c->rms_norm_eps = 1e-6f;
  c->rope_theta = 1000000.0f;
  c->dtype = SA_DTYPE_BF16;
  c->audio.present = true;
  c->audio.n_mels = 128;
  c->audio.n_ctx = 1500;
  c->audio.n_state = 64;
  c->audio.n_layer = 2;
  c->audio.n_head = 4;
  c->audio.adapter_hidden = 128;
  c->audio.kernel_size = 3;
  c->audio.adapter_stride = 2;
  int merges = 300;
  if (strcmp(preset, "tiny") == 0) {
    c->hidden_size = 64;
    c->num_hidden_layers = 3;
    c->num_attention_heads = 4;
    c->num_key_value_heads = 2;
    c->head_dim = 16;
    c->intermediate_size = 128;
    c->vocab_size = 0; /* tokenizer size rounded up to 64, set by write */
    c->max_position_embeddings = 4096;
    c->tie_word_embeddings = false;
  } else if (strcmp(preset, "medium") == 0) {
    /* for experiments on emulated hosts: the tiny tokenizer, but enough
     * decoder (8 x 384, 13 M parameters) that a step's cost is compute in
     * the stages, not messaging */
    c->hidden_size = 384;
    c->num_hidden_layers = 8;
    c->num_attention_heads = 6;
    c->num_key_value_heads = 2;
    c->head_dim = 64;
    c->intermediate_size = 1024;
    c->vocab_size = 0;
    c->max_position_embeddings = 4096;
    c->tie_word_embeddings = false;
  } else if (strcmp(preset, "small") == 0) {
    /* Qwen2.5-0.5B's decoder */
    c->hidden_size = 896;
    c->num_hidden_layers = 24;
    c->num_attention_heads = 14;
    c->num_key_value_heads = 2;
    c->head_dim = 64;
    c->intermediate_size = 4864;
    c->vocab_size = 151936;
    c->max_position_embeddings = 32768;
    c->tie_word_embeddings = true;
  } else {
    return SA_EINVAL;
  }
  c->audio.llm_dim = c->hidden_size;
  if (n_merges)
    *n_merges = merges;
  return 0;
}

/* Philox4x32-10 (the same generator as model/sampler; kept here because
 * core links nothing above it). */
static void philox(uint32_t c[4], const uint32_t key[2]) {
  uint32_t k0 = key[0], k1 = key[1];
  for (int r = 0; r < 10; r++) {
    if (r) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    uint64_t p0 = (uint64_t)0xD2511F53u * c[0];
    uint64_t p1 = (uint64_t)0xCD9E8D57u * c[2];
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c[1] ^ k0, n1 = (uint32_t)p1;
    uint32_t n2 = (uint32_t)(p0 >> 32) ^ c[3] ^ k1, n3 = (uint32_t)p0;
    c[0] = n0, c[1] = n1, c[2] = n2, c[3] = n3;
  }
}

enum { K_WEIGHT, K_NORM, K_NORM_BIAS, K_POS };

typedef struct {
  char name[96];
  int ndim;
  int64_t shape[3];
  int kind;
} spec_t;

typedef struct {
  spec_t *v;
  int n, cap;
} specs_t;

static int add(specs_t *s, int kind, int ndim, int64_t a, int64_t b,
               int64_t c, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

static int add(specs_t *s, int kind, int ndim, int64_t a, int64_t b,
               int64_t c, const char *fmt, ...) {
  if (s->n == s->cap) {
    int nc = s->cap ? 2 * s->cap : 64;
    spec_t *nv = realloc(s->v, sizeof(spec_t) * (size_t)nc);
    if (!nv)
      return SA_ENOMEM;
    s->v = nv;
    s->cap = nc;
  }
  spec_t *t = &s->v[s->n++];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(t->name, sizeof t->name, fmt, ap);
  va_end(ap);
  t->ndim = ndim;
  t->shape[0] = a;
  t->shape[1] = b;
  t->shape[2] = c;
  t->kind = kind;
  return 0;
}

static int build_specs(const sa_model_config_t *c, specs_t *s) {
  int H = c->hidden_size, hd = c->head_dim, V = c->vocab_size;
  int q = c->num_attention_heads * hd, kv = c->num_key_value_heads * hd;
  int I = c->intermediate_size;
  int rc = 0;
#define A(...)                                                                 \
  do {                                                                         \
    if ((rc = add(s, __VA_ARGS__)) != 0)                                       \
      return rc;                                                               \
  } while (0)
  A(K_WEIGHT, 2, V, H, 0, "model.embed_tokens.weight");
  for (int i = 0; i < c->num_hidden_layers; i++) {
    A(K_NORM, 1, H, 0, 0, "model.layers.%d.input_layernorm.weight", i);
    A(K_WEIGHT, 2, q, H, 0, "model.layers.%d.self_attn.q_proj.weight", i);
    A(K_WEIGHT, 1, q, 0, 0, "model.layers.%d.self_attn.q_proj.bias", i);
    A(K_WEIGHT, 2, kv, H, 0, "model.layers.%d.self_attn.k_proj.weight", i);
    A(K_WEIGHT, 1, kv, 0, 0, "model.layers.%d.self_attn.k_proj.bias", i);
    A(K_WEIGHT, 2, kv, H, 0, "model.layers.%d.self_attn.v_proj.weight", i);
    A(K_WEIGHT, 1, kv, 0, 0, "model.layers.%d.self_attn.v_proj.bias", i);
    A(K_WEIGHT, 2, H, q, 0, "model.layers.%d.self_attn.o_proj.weight", i);
    A(K_NORM, 1, H, 0, 0, "model.layers.%d.post_attention_layernorm.weight",
      i);
    A(K_WEIGHT, 2, I, H, 0, "model.layers.%d.mlp.gate_proj.weight", i);
    A(K_WEIGHT, 2, I, H, 0, "model.layers.%d.mlp.up_proj.weight", i);
    A(K_WEIGHT, 2, H, I, 0, "model.layers.%d.mlp.down_proj.weight", i);
  }
  A(K_NORM, 1, H, 0, 0, "model.norm.weight");
  if (!c->tie_word_embeddings)
    A(K_WEIGHT, 2, V, H, 0, "lm_head.weight");
  if (c->audio.present) {
    int S = c->audio.n_state, M = c->audio.n_mels, Ah = c->audio.adapter_hidden;
    int k = c->audio.kernel_size;
    A(K_WEIGHT, 3, S, M, 3, "encoder.conv1.weight");
    A(K_WEIGHT, 1, S, 0, 0, "encoder.conv1.bias");
    A(K_WEIGHT, 3, S, S, 3, "encoder.conv2.weight");
    A(K_WEIGHT, 1, S, 0, 0, "encoder.conv2.bias");
    A(K_POS, 2, c->audio.n_ctx, S, 0, "encoder.positional_embedding");
    for (int i = 0; i < c->audio.n_layer; i++) {
      A(K_NORM, 1, S, 0, 0, "encoder.blocks.%d.attn_ln.weight", i);
      A(K_NORM_BIAS, 1, S, 0, 0, "encoder.blocks.%d.attn_ln.bias", i);
      A(K_WEIGHT, 2, S, S, 0, "encoder.blocks.%d.attn.query.weight", i);
      A(K_WEIGHT, 1, S, 0, 0, "encoder.blocks.%d.attn.query.bias", i);
      A(K_WEIGHT, 2, S, S, 0, "encoder.blocks.%d.attn.key.weight", i);
      A(K_WEIGHT, 2, S, S, 0, "encoder.blocks.%d.attn.value.weight", i);
      A(K_WEIGHT, 1, S, 0, 0, "encoder.blocks.%d.attn.value.bias", i);
      A(K_WEIGHT, 2, S, S, 0, "encoder.blocks.%d.attn.out.weight", i);
      A(K_WEIGHT, 1, S, 0, 0, "encoder.blocks.%d.attn.out.bias", i);
      A(K_NORM, 1, S, 0, 0, "encoder.blocks.%d.mlp_ln.weight", i);
      A(K_NORM_BIAS, 1, S, 0, 0, "encoder.blocks.%d.mlp_ln.bias", i);
      A(K_WEIGHT, 2, 4 * S, S, 0, "encoder.blocks.%d.mlp.0.weight", i);
      A(K_WEIGHT, 1, 4 * S, 0, 0, "encoder.blocks.%d.mlp.0.bias", i);
      A(K_WEIGHT, 2, S, 4 * S, 0, "encoder.blocks.%d.mlp.2.weight", i);
      A(K_WEIGHT, 1, S, 0, 0, "encoder.blocks.%d.mlp.2.bias", i);
    }
    A(K_NORM, 1, S, 0, 0, "encoder.after_norm.weight");
    A(K_NORM_BIAS, 1, S, 0, 0, "encoder.after_norm.bias");
    A(K_WEIGHT, 3, S, S, k, "adapter.conv.weight");
    A(K_WEIGHT, 1, S, 0, 0, "adapter.conv.bias");
    A(K_WEIGHT, 2, Ah, S, 0, "adapter.linear1.weight");
    A(K_WEIGHT, 1, Ah, 0, 0, "adapter.linear1.bias");
    A(K_WEIGHT, 2, H, Ah, 0, "adapter.linear2.weight");
    A(K_WEIGHT, 1, H, 0, 0, "adapter.linear2.bias");
  }
#undef A
  return 0;
}

/* n bf16 values of tensor `index`: N(0,1) by Box-Muller from Philox keyed by
 * the seed, counter (pair index, tensor index), mapped by kind. */
static void fill(uint16_t *dst, size_t n, uint64_t seed, uint32_t index,
                 int kind, float std) {
  const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  for (size_t i = 0; i < n; i += 2) {
    uint64_t j = i / 2;
    uint32_t c[4] = {(uint32_t)j, (uint32_t)(j >> 32), index, 0x5a17u};
    philox(c, key);
    double u1 = ((double)c[0] + 1.0) * (1.0 / 4294967296.0); /* (0, 1] */
    double u2 = (double)c[1] * (1.0 / 4294967296.0);
    double r = sqrt(-2.0 * log(u1)), a = 6.283185307179586 * u2;
    double z[2] = {r * cos(a), r * sin(a)};
    for (int t = 0; t < 2 && i + (size_t)t < n; t++) {
      double v;
      switch (kind) {
      case K_NORM: v = 1.0 + 0.1 * z[t]; break;
      case K_NORM_BIAS: v = 0.02 * z[t]; break;
      case K_POS: v = 0.1 * z[t]; break;
      default: v = (double)std * z[t]; break;
      }
      dst[i + (size_t)t] = sa_f32_to_bf16((float)v);
    }
  }
}

static int mkdir_p(const char *dir) {
  char buf[4096];
  if (strlen(dir) >= sizeof buf)
    return SA_EINVAL;
  strcpy(buf, dir);
  for (char *p = buf + 1; *p; p++) {
    if (*p == '/') {
      *p = 0;
      if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return SA_EIO;
      *p = '/';
    }
  }
  if (mkdir(buf, 0755) != 0 && errno != EEXIST)
    return SA_EIO;
  return 0;
}

int sa_testmodel_write(const char *preset, uint64_t seed, const char *dir,
                       char *err, size_t err_cap) {
  char ebuf[256];
  if (!err) {
    err = ebuf;
    err_cap = sizeof ebuf;
  }
  sa_model_config_t c;
  int n_merges = 0;
  int rc = sa_testmodel_preset(preset, &c, &n_merges);
  if (rc) {
    snprintf(err, err_cap, "unknown preset '%s' (want tiny, medium or small)",
             preset ? preset : "(null)");
    return rc;
  }
  if ((rc = mkdir_p(dir)) != 0) {
    snprintf(err, err_cap, "cannot create %s: %s", dir, strerror(errno));
    return rc;
  }
  if ((rc = sa_tokenizer_write_synthetic(dir, n_merges, err, err_cap)) != 0)
    return rc;
  sa_tokenizer_t *tok = sa_tokenizer_load(dir, err, err_cap);
  if (!tok)
    return SA_EFORMAT;
  size_t tv = sa_tokenizer_vocab_size(tok);
  sa_tokenizer_destroy(&tok);
  if (c.vocab_size == 0)
    c.vocab_size = (int)((tv + 63) / 64 * 64);
  if ((size_t)c.vocab_size < tv) {
    snprintf(err, err_cap, "tokenizer has %zu ids, more than vocab %d", tv,
             c.vocab_size);
    return SA_EINVAL;
  }
  /* Small models get HF's initializer_range; the tiny one a larger spread so
   * attention and MLP visibly move the logits (a stronger oracle test). */
  float std = strcmp(preset, "tiny") == 0 ? 0.08f : 0.02f;

  char path[4200];
  snprintf(path, sizeof path, "%s/config.json", dir);
  if ((rc = sa_config_write(path, &c)) != 0) {
    snprintf(err, err_cap, "cannot write %s: %s", path, sa_strerror(rc));
    return rc;
  }

  specs_t s = {0};
  sa_st_tensor_t *ts = NULL;
  uint16_t *payload = NULL;
  if ((rc = build_specs(&c, &s)) != 0)
    goto fail;
  size_t total = 0;
  for (int i = 0; i < s.n; i++) {
    size_t n = 1;
    for (int d = 0; d < s.v[i].ndim; d++)
      n *= (size_t)s.v[i].shape[d];
    total += n;
  }
  ts = calloc((size_t)s.n, sizeof *ts);
  payload = malloc(total * 2 + 2);
  if (!ts || !payload) {
    rc = SA_ENOMEM;
    snprintf(err, err_cap, "out of memory for %zu bytes of weights",
             total * 2);
    goto fail;
  }
  size_t off = 0;
  for (int i = 0; i < s.n; i++) {
    sa_st_tensor_t *t = &ts[i];
    t->name = s.v[i].name;
    t->desc.dtype = SA_DTYPE_BF16;
    t->desc.ndim = s.v[i].ndim;
    size_t n = 1;
    for (int d = 0; d < s.v[i].ndim; d++) {
      t->desc.shape[d] = s.v[i].shape[d];
      n *= (size_t)s.v[i].shape[d];
    }
    fill(payload + off, n, seed, (uint32_t)i, s.v[i].kind, std);
    t->data = payload + off;
    t->nbytes = n * 2;
    off += n;
  }
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  rc = sa_st_write(path, ts, (size_t)s.n, err, err_cap);
fail:
  free(payload);
  free(ts);
  free(s.v);
  return rc;
}
