/* sa-model quantize — writes a Q8_0 or Q4_0 copy of a checkpoint
 * (docs/quantization.md): the decoder's linear weights (q, k, v, o, gate,
 * up, down) in the chosen format, the LM head in --head's (a tied head gets
 * its own lm_head tensor), everything else (embeddings, norms, biases, the
 * audio encoder and adaptor) as it was. The other files of the folder
 * (config, tokenizer) are copied; config.json gains a quantization_config
 * entry that says what was done (the loader reads the format from each
 * tensor's dtype). */
#include "sa_model.h"

#include "safetensors.h"
#include "sa_error.h"
#include "tensor.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void help(FILE *f) {
  fprintf(f,
          "usage: sa-model quantize IN OUT --type q8_0|q4_0 [--head q8_0|q4_0|bf16]\n"
          "                         [--layers A:B]\n"
          "Writes OUT (a folder) with the decoder's linear weights of checkpoint\n"
          "folder IN quantized in blocks of 32 with an fp16 scale each:\n"
          "  q8_0  int8 values, 8.5 bits a weight (docs/quantization.md)\n"
          "  q4_0  4-bit values, 4.5 bits a weight\n"
          "  --head  the LM head's format (default q8_0: the head is the most\n"
          "          sensitive matrix); a tied head is written as its own tensor\n"
          "  --layers A:B  only decoder layers A..B-1 (default all); weights that\n"
          "          are quantized already are kept, so two runs mix formats\n"
          "Embeddings, norms, biases and the audio encoder stay as they are; the\n"
          "other files of IN (config.json, tokenizer) are copied. A weight whose\n"
          "rows are not a multiple of 32 stays unquantized (with a warning).\n");
}

/* Q8_0 of one row of K floats: per block d = max|x| / 127 stored as fp16,
 * q = round(x / d) with the stored d. */
static void quant_q8_row(int8_t *q, uint16_t *sc, const float *x, int K) {
  for (int b = 0; b < K / 32; b++) {
    const float *xb = x + b * 32;
    float amax = 0;
    for (int j = 0; j < 32; j++)
      amax = fmaxf(amax, fabsf(xb[j]));
    sc[b] = sa_f32_to_f16(amax / 127.0f);
    float d = sa_f16_to_f32(sc[b]);
    for (int j = 0; j < 32; j++) {
      float v = d > 0 ? roundf(xb[j] / d) : 0.0f;
      q[b * 32 + j] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
    }
  }
}

/* Q4_0 (ggml's rule): per block d = m / -8 where m is the value of largest
 * magnitude (so it maps to -8 exactly), q = round(x / d) + 8 in 0..15;
 * element j in the low nibble of byte j, j + 16 in the high nibble. */
static void quant_q4_row(uint8_t *q, uint16_t *sc, const float *x, int K) {
  for (int b = 0; b < K / 32; b++) {
    const float *xb = x + b * 32;
    float m = 0;
    for (int j = 0; j < 32; j++)
      if (fabsf(xb[j]) > fabsf(m))
        m = xb[j];
    sc[b] = sa_f32_to_f16(m / -8.0f);
    float d = sa_f16_to_f32(sc[b]);
    uint8_t nib[32];
    for (int j = 0; j < 32; j++) {
      float v = d != 0 ? roundf(xb[j] / d) + 8 : 8.0f;
      nib[j] = (uint8_t)(v < 0 ? 0 : v > 15 ? 15 : v);
    }
    for (int j = 0; j < 16; j++)
      q[b * 16 + j] = (uint8_t)(nib[j] | nib[j + 16] << 4);
  }
}

static int fmt_of(const char *s) {
  if (!strcmp(s, "q8_0"))
    return SA_WQ_Q8_0;
  if (!strcmp(s, "q4_0"))
    return SA_WQ_Q4_0;
  if (!strcmp(s, "bf16"))
    return 0;
  return -1;
}

/* True for the decoder's linear weights of layers [lo, hi). */
static int is_linear(const char *name, long lo, long hi) {
  static const char *suf[] = {".self_attn.q_proj.weight", ".self_attn.k_proj.weight",
                              ".self_attn.v_proj.weight", ".self_attn.o_proj.weight",
                              ".mlp.gate_proj.weight",    ".mlp.up_proj.weight",
                              ".mlp.down_proj.weight"};
  if (strncmp(name, "model.layers.", 13))
    return 0;
  char *end;
  long l = strtol(name + 13, &end, 10);
  if (end == name + 13 || *end != '.' || l < lo || l >= hi)
    return 0;
  size_t n = strlen(name);
  for (size_t i = 0; i < sizeof suf / sizeof suf[0]; i++) {
    size_t m = strlen(suf[i]);
    if (n > m && !strcmp(name + n - m, suf[i]))
      return 1;
  }
  return 0;
}

typedef struct {
  sa_st_tensor_t *t;
  size_t n, cap;
  void **owned;
  size_t n_owned;
} out_list_t;

static int push(out_list_t *o, const char *name, sa_dtype_t dt, int64_t d0, int64_t d1,
                const void *data, int own) {
  if (o->n == o->cap) {
    size_t cap = o->cap ? 2 * o->cap : 256;
    sa_st_tensor_t *t = realloc(o->t, cap * sizeof *t);
    void **ow = realloc(o->owned, cap * sizeof *ow);
    if (!t || !ow)
      return SA_ENOMEM;
    o->t = t, o->owned = ow, o->cap = cap;
  }
  sa_st_tensor_t *t = &o->t[o->n++];
  memset(t, 0, sizeof *t);
  t->name = strdup(name);
  t->desc.dtype = dt;
  t->desc.ndim = d1 ? 2 : 1;
  t->desc.shape[0] = d0;
  t->desc.shape[1] = d1;
  t->data = data;
  if (own)
    o->owned[o->n_owned++] = (void *)data;
  return t->name ? 0 : SA_ENOMEM;
}

/* Quantizes 2-D tensor t (any float dtype) as `name` in format fmt. */
static int push_quantized(out_list_t *o, const char *name, const sa_st_tensor_t *t, int fmt) {
  int64_t N = t->desc.shape[0], K = t->desc.shape[1];
  size_t qrow = sa_wq_bytes(fmt, 1, (int)K);
  uint8_t *q = malloc((size_t)N * qrow + 1);
  uint16_t *sc = malloc((size_t)N * (K / 32) * 2 + 2);
  float *row = malloc((size_t)K * 4 + 4);
  if (!q || !sc || !row) {
    free(q), free(sc), free(row);
    return SA_ENOMEM;
  }
  size_t esz = sa_dtype_size(t->desc.dtype);
  for (int64_t n = 0; n < N; n++) {
    sa_to_f32_n(row, (const char *)t->data + (size_t)n * K * esz, t->desc.dtype, (size_t)K);
    if (fmt == SA_WQ_Q8_0)
      quant_q8_row((int8_t *)q + n * qrow, sc + n * (K / 32), row, (int)K);
    else
      quant_q4_row(q + n * qrow, sc + n * (K / 32), row, (int)K);
  }
  free(row);
  char sname[512];
  if (snprintf(sname, sizeof sname, "%s_scale", name) >= (int)sizeof sname) {
    fprintf(stderr, "quantize: tensor name too long: %.80s...\n", name);
    free(q), free(sc);
    return SA_EINVAL;
  }
  int rc = push(o, name, fmt == SA_WQ_Q8_0 ? SA_DTYPE_I8 : SA_DTYPE_U8, N, (int64_t)qrow, q, 1);
  if (!rc)
    rc = push(o, sname, SA_DTYPE_F16, N, K / 32, sc, 1);
  return rc;
}

static int copy_file(const char *from, const char *to) {
  FILE *a = fopen(from, "rb"), *b = a ? fopen(to, "wb") : NULL;
  int rc = a && b ? 0 : SA_EIO;
  char buf[65536];
  size_t n;
  while (!rc && (n = fread(buf, 1, sizeof buf, a)) > 0)
    if (fwrite(buf, 1, n, b) != n)
      rc = SA_EIO;
  if (a && ferror(a))
    rc = SA_EIO;
  if (a)
    fclose(a);
  if (b && fclose(b))
    rc = SA_EIO;
  return rc;
}

/* config.json with "quantization_config" added. */
static int write_config(const char *in, const char *out, const char *type, const char *head) {
  FILE *f = fopen(in, "rb");
  if (!f)
    return SA_ENOENT;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  rewind(f);
  char *s = n > 0 && n < (1 << 24) ? malloc((size_t)n + 1) : NULL;
  int ok = s && fread(s, 1, (size_t)n, f) == (size_t)n;
  fclose(f);
  if (!ok) {
    free(s);
    return SA_EIO;
  }
  s[n] = 0;
  cJSON *j = cJSON_Parse(s);
  free(s);
  if (!j)
    return SA_EFORMAT;
  cJSON *q = cJSON_CreateObject();
  cJSON_AddStringToObject(q, "quant_method", "sa");
  cJSON_AddStringToObject(q, "format", type);
  cJSON_AddNumberToObject(q, "block_size", 32);
  cJSON_AddStringToObject(q, "lm_head", head);
  cJSON_DeleteItemFromObject(j, "quantization_config");
  cJSON_AddItemToObject(j, "quantization_config", q);
  char *txt = cJSON_Print(j);
  cJSON_Delete(j);
  FILE *g = txt ? fopen(out, "wb") : NULL;
  int rc = g && fputs(txt, g) >= 0 && fputc('\n', g) != EOF ? 0 : SA_EIO;
  if (g && fclose(g))
    rc = SA_EIO;
  free(txt);
  return rc;
}

int sa_model_cmd_quantize(int argc, char **argv) {
  const char *type = NULL, *head = "q8_0";
  long l_lo = 0, l_hi = 1L << 30;
  static const struct option lo[] = {{"type", 1, 0, 't'},
                                     {"head", 1, 0, 'H'},
                                     {"layers", 1, 0, 'l'},
                                     {"help", 0, 0, 'h'},
                                     {0, 0, 0, 0}};
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
    switch (c) {
    case 't': type = optarg; break;
    case 'H': head = optarg; break;
    case 'l': {
      char *e1, *e2;
      l_lo = strtol(optarg, &e1, 10);
      l_hi = *e1 == ':' ? strtol(e1 + 1, &e2, 10) : -1;
      if (e1 == optarg || *e1 != ':' || *e2 || l_lo < 0 || l_hi <= l_lo) {
        fprintf(stderr, "quantize: --layers wants A:B with 0 <= A < B\n");
        return 2;
      }
      break;
    }
    case 'h': help(stdout); return 0;
    default: help(stderr); return 2;
    }
  }
  if (!type || optind + 2 != argc) {
    help(stderr);
    return 2;
  }
  int fmt = fmt_of(type), hfmt = fmt_of(head);
  if (fmt <= 0 || hfmt < 0) {
    fprintf(stderr, "quantize: --type takes q8_0 or q4_0, --head q8_0, q4_0 or bf16\n");
    return 2;
  }
  const char *in = argv[optind], *out = argv[optind + 1];
  if (!strcmp(in, out)) {
    fprintf(stderr, "quantize: OUT must differ from IN\n");
    return 2;
  }
  char err[512] = "";
  sa_st_t *st = NULL;
  int rc = sa_st_open(in, NULL, NULL, &st, err, sizeof err);
  if (rc) {
    fprintf(stderr, "quantize: %s\n", err);
    return 1;
  }
  if (mkdir(out, 0755) && errno != EEXIST) {
    fprintf(stderr, "quantize: cannot create %s: %s\n", out, strerror(errno));
    sa_st_close(&st);
    return 1;
  }
  out_list_t o = {0};
  size_t n_q = 0, n_kept = 0, bytes_in = 0;
  int has_head = sa_st_find(st, "lm_head.weight") != NULL;
  size_t total = sa_st_count(st);
  for (size_t i = 0; i < total && !rc; i++) {
    const sa_st_tensor_t *t = sa_st_at(st, i);
    bytes_in += t->nbytes;
    int want = is_linear(t->name, l_lo, l_hi) ? fmt
               : !strcmp(t->name, "lm_head.weight") ? hfmt : 0;
    int is_float = t->desc.dtype == SA_DTYPE_BF16 || t->desc.dtype == SA_DTYPE_F16 ||
                   t->desc.dtype == SA_DTYPE_F32;
    if (want && (t->desc.dtype == SA_DTYPE_I8 || t->desc.dtype == SA_DTYPE_U8))
      want = 0; /* quantized already (an earlier run): kept with its scales */
    if (want && (!is_float || t->desc.ndim != 2 || t->desc.shape[1] % 32)) {
      fprintf(stderr, "quantize: warning: %s (%s) kept as it is\n", t->name,
              !is_float ? "not a float tensor" : "rows not a multiple of 32");
      want = 0;
    }
    if (want) {
      rc = push_quantized(&o, t->name, t, want);
      n_q++;
    } else {
      rc = push(&o, t->name, t->desc.dtype, 0, 0, t->data, 0);
      if (!rc)
        o.t[o.n - 1].desc = t->desc; /* any shape, as it was */
      n_kept++;
    }
    /* a tied head gets its own quantized lm_head, made from the table */
    if (!rc && hfmt && !has_head && !strcmp(t->name, "model.embed_tokens.weight") &&
        t->desc.ndim == 2 && t->desc.shape[1] % 32 == 0) {
      rc = push_quantized(&o, "lm_head.weight", t, hfmt);
      n_q++;
    }
    if ((i + 1) % 32 == 0 || i + 1 == total)
      fprintf(stderr, "\rquantize: %zu / %zu tensors", i + 1, total);
  }
  fprintf(stderr, "\n");
  char path[4096];
  size_t bytes_out = 0;
  if (!rc) {
    for (size_t i = 0; i < o.n; i++)
      bytes_out += (size_t)sa_tensor_desc_numel(&o.t[i].desc) * sa_dtype_size(o.t[i].desc.dtype);
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    rc = sa_st_write(path, o.t, o.n, err, sizeof err);
    if (rc)
      fprintf(stderr, "quantize: %s\n", err);
  }
  /* the folder's other files: config (with what was done), tokenizer, ... */
  DIR *dir = rc ? NULL : opendir(in);
  struct dirent *e;
  while (dir && !rc && (e = readdir(dir))) {
    size_t n = strlen(e->d_name);
    char from[4096];
    snprintf(from, sizeof from, "%s/%s", in, e->d_name);
    struct stat sb;
    if (stat(from, &sb) || !S_ISREG(sb.st_mode) ||
        (n > 12 && !strcmp(e->d_name + n - 12, ".safetensors")) ||
        !strcmp(e->d_name, "model.safetensors.index.json"))
      continue;
    snprintf(path, sizeof path, "%s/%s", out, e->d_name);
    rc = !strcmp(e->d_name, "config.json") ? write_config(from, path, type, head)
                                           : copy_file(from, path);
    if (rc)
      fprintf(stderr, "quantize: copying %s: %s\n", from, sa_strerror(rc));
  }
  if (dir)
    closedir(dir);
  if (!rc)
    printf("quantize: %s -> %s: %zu weights in %s (head %s), %zu tensors kept; %.1f MB -> "
           "%.1f MB\n",
           in, out, n_q, type, hfmt ? head : "as it was", n_kept, bytes_in / 1e6, bytes_out / 1e6);
  for (size_t i = 0; i < o.n; i++)
    free((char *)o.t[i].name);
  for (size_t i = 0; i < o.n_owned; i++)
    free(o.owned[i]);
  free(o.t);
  free(o.owned);
  sa_st_close(&st);
  return rc ? 1 : 0;
}
