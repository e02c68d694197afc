/*
 * config — see config.h.
 *
 * Field names are those of Step-Audio 2 / Step-Audio-R1's config.json
 * (StepAudio2Config: `text_config` is a Qwen2 config, `audio_encoder_config`
 * a StepAudio2EncoderConfig). R1 writes the decoder fields at top level.
 *
 * Defaults for missing optional fields:
 *   decoder (Qwen2Config):  num_key_value_heads = num_attention_heads
 *                           (alias: num_attention_groups), head_dim =
 *                           hidden_size / num_attention_heads,
 *                           max_position_embeddings 32768, rms_norm_eps 1e-6,
 *                           rope_theta 10000, tie_word_embeddings false,
 *                           torch_dtype (alias: dtype) bfloat16.
 *   audio encoder (StepAudio2EncoderConfig / the modeling code):
 *                           n_mels 128, n_audio_ctx 1500, kernel_size 3,
 *                           adapter_stride 2, llm_dim = hidden_size, adapter
 *                           hidden 2048 (fixed in the modeling code; our
 *                           optional key `adapter_hidden_size` overrides it
 *                           for small test models).
 * Required: hidden_size, num_hidden_layers, num_attention_heads,
 * intermediate_size, vocab_size; and, when audio_encoder_config is present,
 * n_audio_state, n_audio_layer, n_audio_head. A JSON null counts as absent.
 * Unknown keys (architectures, rope_scaling, n_codebook_size, ...) are
 * ignored. This module reads no weights and knows nothing of tokenizers.
 */
#include "config.h"

#include "sa_error.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CFG_MAX_FILE ((size_t)16 << 20) /* a config.json is a few KB */
#define CFG_ADAPTER_HIDDEN 2048

/* Where fields are looked up: `first` (text_config or audio_encoder_config),
 * then `second` (top level, or NULL). Labels name the field as found. */
typedef struct {
  const cJSON *first, *second;
  const char *first_prefix; /* "text_config." / "audio_encoder_config." / "" */
  char *err;
  size_t cap;
} cfg_scope_t;

static const cJSON *cfg_find(const cfg_scope_t *s, const char *name,
                             char *label, size_t label_cap) {
  const cJSON *j = s->first ? cJSON_GetObjectItemCaseSensitive(s->first, name)
                            : NULL;
  if (j && !cJSON_IsNull(j)) {
    snprintf(label, label_cap, "%s%s", s->first_prefix, name);
    return j;
  }
  j = s->second ? cJSON_GetObjectItemCaseSensitive(s->second, name) : NULL;
  if (j && !cJSON_IsNull(j)) {
    snprintf(label, label_cap, "%s", name);
    return j;
  }
  snprintf(label, label_cap, "%s%s", s->first_prefix, name);
  return NULL;
}

/* Reads an integer field. *found tells whether it was present; a missing
 * required field is an error. Range checks are validation's job. */
static int cfg_int(const cfg_scope_t *s, const char *name, bool required,
                   int def, int *out, bool *found) {
  char label[96];
  const cJSON *j = cfg_find(s, name, label, sizeof label);
  if (found)
    *found = j != NULL;
  if (!j) {
    if (required) {
      sa_set_err(s->err, s->cap, "config: missing required field '%s'", label);
      return SA_EFORMAT;
    }
    *out = def;
    return 0;
  }
  double d = cJSON_IsNumber(j) ? j->valuedouble : NAN;
  if (!isfinite(d) || d != floor(d) || d < INT_MIN || d > INT_MAX) {
    sa_set_err(s->err, s->cap, "config: field '%s' must be an integer", label);
    return SA_EFORMAT;
  }
  *out = (int)d;
  return 0;
}

static int cfg_float(const cfg_scope_t *s, const char *name, float def,
                     float *out) {
  char label[96];
  const cJSON *j = cfg_find(s, name, label, sizeof label);
  if (!j) {
    *out = def;
    return 0;
  }
  if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble) ||
      !isfinite((float)j->valuedouble)) {
    sa_set_err(s->err, s->cap, "config: field '%s' must be a finite number",
            label);
    return SA_EFORMAT;
  }
  *out = (float)j->valuedouble;
  return 0;
}

static int cfg_bool(const cfg_scope_t *s, const char *name, bool def,
                    bool *out) {
  char label[96];
  const cJSON *j = cfg_find(s, name, label, sizeof label);
  if (!j) {
    *out = def;
    return 0;
  }
  if (!cJSON_IsBool(j)) {
    sa_set_err(s->err, s->cap, "config: field '%s' must be true or false",
            label);
    return SA_EFORMAT;
  }
  *out = cJSON_IsTrue(j);
  return 0;
}

static int cfg_dtype(const cfg_scope_t *s, sa_dtype_t *out) {
  char label[96];
  const cJSON *j = cfg_find(s, "torch_dtype", label, sizeof label);
  if (!j)
    j = cfg_find(s, "dtype", label, sizeof label);
  if (!j) {
    *out = SA_DTYPE_BF16;
    return 0;
  }
  const char *v = cJSON_IsString(j) ? j->valuestring : NULL;
  if (v && strcmp(v, "bfloat16") == 0)
    *out = SA_DTYPE_BF16;
  else if (v && strcmp(v, "float16") == 0)
    *out = SA_DTYPE_F16;
  else if (v && strcmp(v, "float32") == 0)
    *out = SA_DTYPE_F32;
  else {
    sa_set_err(s->err, s->cap, "config: field '%s' must be \"bfloat16\", "
                            "\"float16\" or \"float32\" (got %s%.32s%s)",
            label, v ? "\"" : "", v ? v : "a non-string", v ? "\"" : "");
    return SA_EFORMAT;
  }
  return 0;
}

static const char *cfg_dtype_name(sa_dtype_t dt) {
  switch (dt) {
  case SA_DTYPE_BF16: return "bfloat16";
  case SA_DTYPE_F16: return "float16";
  case SA_DTYPE_F32: return "float32";
  default: return NULL;
  }
}

#define CFG_POSITIVE(field, label)                                             \
  do {                                                                         \
    if ((field) <= 0) {                                                        \
      sa_set_err(err, err_cap, "config: field '%s' must be positive (got %d)",    \
              (label), (field));                                               \
      return SA_EFORMAT;                                                       \
    }                                                                          \
  } while (0)

int sa_config_validate(const sa_model_config_t *c, char *err, size_t err_cap) {
  CFG_POSITIVE(c->hidden_size, "hidden_size");
  CFG_POSITIVE(c->num_hidden_layers, "num_hidden_layers");
  CFG_POSITIVE(c->num_attention_heads, "num_attention_heads");
  CFG_POSITIVE(c->num_key_value_heads, "num_key_value_heads");
  CFG_POSITIVE(c->head_dim, "head_dim");
  CFG_POSITIVE(c->intermediate_size, "intermediate_size");
  CFG_POSITIVE(c->vocab_size, "vocab_size");
  CFG_POSITIVE(c->max_position_embeddings, "max_position_embeddings");
  if (c->num_attention_heads % c->num_key_value_heads != 0) {
    sa_set_err(err, err_cap, "config: field 'num_key_value_heads' (%d) must "
                          "divide num_attention_heads (%d)",
            c->num_key_value_heads, c->num_attention_heads);
    return SA_EFORMAT;
  }
  if (c->head_dim % 2 != 0) {
    sa_set_err(err, err_cap, "config: field 'head_dim' (%d) must be even for "
                          "rotary embeddings", c->head_dim);
    return SA_EFORMAT;
  }
  if ((long long)c->head_dim * c->num_attention_heads > INT_MAX) {
    sa_set_err(err, err_cap, "config: field 'head_dim' (%d) x "
                          "num_attention_heads (%d) is too large",
            c->head_dim, c->num_attention_heads);
    return SA_EFORMAT;
  }
  if (!(c->rms_norm_eps > 0) || !isfinite(c->rms_norm_eps)) {
    sa_set_err(err, err_cap, "config: field 'rms_norm_eps' must be a positive "
                          "number (got %g)", (double)c->rms_norm_eps);
    return SA_EFORMAT;
  }
  if (!(c->rope_theta > 0) || !isfinite(c->rope_theta)) {
    sa_set_err(err, err_cap, "config: field 'rope_theta' must be a positive "
                          "number (got %g)", (double)c->rope_theta);
    return SA_EFORMAT;
  }
  if (!cfg_dtype_name(c->dtype)) {
    sa_set_err(err, err_cap, "config: field 'torch_dtype' must be bfloat16, "
                          "float16 or float32 (got %s)",
            sa_dtype_name(c->dtype));
    return SA_EFORMAT;
  }
  if (!c->audio.present)
    return 0;
  const char *p = "audio_encoder_config.";
  char lb[64];
#define CFG_A_POSITIVE(f, name)                                                \
  do {                                                                         \
    snprintf(lb, sizeof lb, "%s%s", p, name);                                  \
    CFG_POSITIVE(c->audio.f, lb);                                              \
  } while (0)
  CFG_A_POSITIVE(n_mels, "n_mels");
  CFG_A_POSITIVE(n_state, "n_audio_state");
  CFG_A_POSITIVE(n_layer, "n_audio_layer");
  CFG_A_POSITIVE(n_head, "n_audio_head");
  CFG_A_POSITIVE(n_ctx, "n_audio_ctx");
  CFG_A_POSITIVE(adapter_hidden, "adapter_hidden_size");
  CFG_A_POSITIVE(kernel_size, "kernel_size");
  CFG_A_POSITIVE(adapter_stride, "adapter_stride");
  CFG_A_POSITIVE(llm_dim, "llm_dim");
#undef CFG_A_POSITIVE
  if (c->audio.n_state % c->audio.n_head != 0) {
    sa_set_err(err, err_cap, "config: field '%sn_audio_head' (%d) must divide "
                          "n_audio_state (%d)", p, c->audio.n_head,
            c->audio.n_state);
    return SA_EFORMAT;
  }
  if (c->audio.llm_dim != c->hidden_size) {
    sa_set_err(err, err_cap, "config: field '%sllm_dim' (%d) must equal "
                          "hidden_size (%d)", p, c->audio.llm_dim,
            c->hidden_size);
    return SA_EFORMAT;
  }
  return 0;
}

int sa_config_parse(const char *json, size_t len, sa_model_config_t *out,
                    char *err, size_t err_cap) {
  int rc = SA_EFORMAT;
  char *text = NULL;
  cJSON *root = NULL;
  sa_model_config_t c;
  memset(&c, 0, sizeof c);

  if (!json || !out) {
    sa_set_err(err, err_cap, "config: invalid arguments");
    return SA_EINVAL;
  }
  /* cJSON gets a NUL-terminated private copy: no read past `len`. */
  text = malloc(len + 1);
  if (!text) {
    sa_set_err(err, err_cap, "config: out of memory");
    return SA_ENOMEM;
  }
  memcpy(text, json, len);
  text[len] = '\0';
  root = cJSON_ParseWithLength(text, len + 1);
  if (!root || !cJSON_IsObject(root)) {
    sa_set_err(err, err_cap, "config: not a JSON object");
    goto fail;
  }
  const cJSON *tc = cJSON_GetObjectItemCaseSensitive(root, "text_config");
  if (tc && cJSON_IsNull(tc))
    tc = NULL;
  if (tc && !cJSON_IsObject(tc)) {
    sa_set_err(err, err_cap, "config: field 'text_config' must be an object");
    goto fail;
  }
  cfg_scope_t s = {.first = tc ? tc : root, .second = tc ? root : NULL,
                   .first_prefix = tc ? "text_config." : "", .err = err,
                   .cap = err_cap};
  bool has_kv, has_hd;
  if ((rc = cfg_int(&s, "hidden_size", true, 0, &c.hidden_size, NULL)) ||
      (rc = cfg_int(&s, "num_hidden_layers", true, 0, &c.num_hidden_layers,
                    NULL)) ||
      (rc = cfg_int(&s, "num_attention_heads", true, 0,
                    &c.num_attention_heads, NULL)) ||
      (rc = cfg_int(&s, "intermediate_size", true, 0, &c.intermediate_size,
                    NULL)) ||
      (rc = cfg_int(&s, "vocab_size", true, 0, &c.vocab_size, NULL)) ||
      (rc = cfg_int(&s, "num_key_value_heads", false, 0,
                    &c.num_key_value_heads, &has_kv)))
    goto fail;
  if (!has_kv &&
      (rc = cfg_int(&s, "num_attention_groups", false, c.num_attention_heads,
                    &c.num_key_value_heads, NULL)))
    goto fail;
  if ((rc = cfg_int(&s, "head_dim", false, 0, &c.head_dim, &has_hd)) ||
      (rc = cfg_int(&s, "max_position_embeddings", false, 32768,
                    &c.max_position_embeddings, NULL)) ||
      (rc = cfg_float(&s, "rms_norm_eps", 1e-6f, &c.rms_norm_eps)) ||
      (rc = cfg_float(&s, "rope_theta", 10000.0f, &c.rope_theta)) ||
      (rc = cfg_bool(&s, "tie_word_embeddings", false,
                     &c.tie_word_embeddings)) ||
      (rc = cfg_dtype(&s, &c.dtype)))
    goto fail;
  rc = SA_EFORMAT;
  if (!has_hd) {
    if (c.hidden_size <= 0 || c.num_attention_heads <= 0) {
      /* validation below names the field */
    } else if (c.hidden_size % c.num_attention_heads != 0) {
      sa_set_err(err, err_cap, "config: field 'num_attention_heads' (%d) must "
                            "divide hidden_size (%d) when head_dim is not "
                            "given", c.num_attention_heads, c.hidden_size);
      goto fail;
    } else {
      c.head_dim = c.hidden_size / c.num_attention_heads;
    }
  }

  const cJSON *ac = cJSON_GetObjectItemCaseSensitive(root,
                                                     "audio_encoder_config");
  if (ac && !cJSON_IsNull(ac)) {
    if (!cJSON_IsObject(ac)) {
      sa_set_err(err, err_cap, "config: field 'audio_encoder_config' must be "
                            "an object");
      goto fail;
    }
    cfg_scope_t a = {.first = ac, .first_prefix = "audio_encoder_config.",
                     .err = err, .cap = err_cap};
    c.audio.present = true;
    if ((rc = cfg_int(&a, "n_audio_state", true, 0, &c.audio.n_state,
                      NULL)) ||
        (rc = cfg_int(&a, "n_audio_layer", true, 0, &c.audio.n_layer,
                      NULL)) ||
        (rc = cfg_int(&a, "n_audio_head", true, 0, &c.audio.n_head, NULL)) ||
        (rc = cfg_int(&a, "n_mels", false, 128, &c.audio.n_mels, NULL)) ||
        (rc = cfg_int(&a, "n_audio_ctx", false, 1500, &c.audio.n_ctx,
                      NULL)) ||
        (rc = cfg_int(&a, "kernel_size", false, 3, &c.audio.kernel_size,
                      NULL)) ||
        (rc = cfg_int(&a, "adapter_stride", false, 2,
                      &c.audio.adapter_stride, NULL)) ||
        (rc = cfg_int(&a, "adapter_hidden_size", false, CFG_ADAPTER_HIDDEN,
                      &c.audio.adapter_hidden, NULL)) ||
        (rc = cfg_int(&a, "llm_dim", false, c.hidden_size, &c.audio.llm_dim,
                      NULL)))
      goto fail;
  }
  rc = sa_config_validate(&c, err, err_cap);
  if (rc != 0)
    goto fail;
  *out = c;
fail:
  cJSON_Delete(root);
  free(text);
  return rc;
}

void sa_config_model_name(const char *dir, char *out, size_t cap) {
  if (!out || cap == 0)
    return;
  size_t n = dir ? strlen(dir) : 0;
  while (n > 1 && dir[n - 1] == '/')
    n--;
  const char *b = dir + n;
  while (b > dir && b[-1] != '/')
    b--;
  if (dir + n > b)
    snprintf(out, cap, "%.*s", (int)(dir + n - b), b);
  else /* "/" or "": no component to name it by */
    snprintf(out, cap, "model");
}

int sa_config_load(const char *dir, sa_model_config_t *out, char *err,
                   size_t err_cap) {
  if (!dir || !out)
    return SA_EINVAL;
  size_t n = strlen(dir);
  char *path = malloc(n + sizeof "/config.json");
  if (!path)
    return SA_ENOMEM;
  struct stat sb;
  if (n > 5 && strcmp(dir + n - 5, ".json") == 0 && stat(dir, &sb) == 0 &&
      S_ISREG(sb.st_mode))
    memcpy(path, dir, n + 1);
  else
    snprintf(path, n + sizeof "/config.json", "%s/config.json", dir);

  int rc;
  char *buf = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) {
    int e = errno;
    sa_set_err(err, err_cap, "%s: cannot open: %s", path, strerror(e));
    rc = e == ENOENT || e == ENOTDIR ? SA_ENOENT : SA_EIO;
    goto fail;
  }
  rc = SA_EIO;
  long sz;
  if (fseek(f, 0, SEEK_END) != 0 || (sz = ftell(f)) < 0 ||
      fseek(f, 0, SEEK_SET) != 0) {
    sa_set_err(err, err_cap, "%s: cannot read", path);
    goto fail;
  }
  if ((size_t)sz > CFG_MAX_FILE) {
    rc = SA_EFORMAT;
    sa_set_err(err, err_cap, "%s: %ld bytes, too large for a config.json", path,
            sz);
    goto fail;
  }
  buf = malloc((size_t)sz + 1);
  if (!buf) {
    rc = SA_ENOMEM;
    goto fail;
  }
  if (fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
    sa_set_err(err, err_cap, "%s: read failed", path);
    goto fail;
  }
  char msg[256] = "";
  rc = sa_config_parse(buf, (size_t)sz, out, msg, sizeof msg);
  if (rc != 0)
    sa_set_err(err, err_cap, "%s: %s", path, msg);
fail:
  if (f)
    fclose(f);
  free(buf);
  free(path);
  return rc;
}

/* Prints the shortest decimal form that reads back as the same float. */
static void cfg_float_str(char *buf, size_t cap, float v) {
  for (int prec = 6; prec <= 9; prec++) {
    snprintf(buf, cap, "%.*g", prec, (double)v);
    if (strtof(buf, NULL) == v)
      break;
  }
  /* JSON numbers need a digit before any exponent; %g gives that. Make a
   * whole number read as a float in Python (1000000 -> 1000000.0). */
  if (!strpbrk(buf, ".eEn"))
    strncat(buf, ".0", cap - strlen(buf) - 1);
}

int sa_config_write(const char *path, const sa_model_config_t *c) {
  if (!path || !c)
    return SA_EINVAL;
  char msg[256];
  if (sa_config_validate(c, msg, sizeof msg) != 0)
    return SA_EFORMAT;
  char eps[48], theta[48];
  cfg_float_str(eps, sizeof eps, c->rms_norm_eps);
  cfg_float_str(theta, sizeof theta, c->rope_theta);

  size_t tl = strlen(path) + 16;
  char *tmp = malloc(tl);
  if (!tmp)
    return SA_ENOMEM;
  snprintf(tmp, tl, "%s.tmp%d", path, (int)getpid() % 100000);
  FILE *f = fopen(tmp, "w");
  if (!f) {
    free(tmp);
    return SA_EIO;
  }
  int ok = fprintf(f,
                   "{\n"
                   "  \"architectures\": [\"StepAudio2ForCausalLM\"],\n"
                   "  \"model_type\": \"step_audio_2\",\n"
                   "  \"hidden_size\": %d,\n"
                   "  \"num_hidden_layers\": %d,\n"
                   "  \"num_attention_heads\": %d,\n"
                   "  \"num_key_value_heads\": %d,\n"
                   "  \"head_dim\": %d,\n"
                   "  \"intermediate_size\": %d,\n"
                   "  \"vocab_size\": %d,\n"
                   "  \"max_position_embeddings\": %d,\n"
                   "  \"rms_norm_eps\": %s,\n"
                   "  \"rope_theta\": %s,\n"
                   "  \"hidden_act\": \"silu\",\n"
                   "  \"tie_word_embeddings\": %s,\n"
                   "  \"torch_dtype\": \"%s\"",
                   c->hidden_size, c->num_hidden_layers,
                   c->num_attention_heads, c->num_key_value_heads,
                   c->head_dim, c->intermediate_size, c->vocab_size,
                   c->max_position_embeddings, eps, theta,
                   c->tie_word_embeddings ? "true" : "false",
                   cfg_dtype_name(c->dtype)) > 0;
  if (ok && c->audio.present) {
    ok = fprintf(f,
                 ",\n  \"audio_encoder_config\": {\n"
                 "    \"n_mels\": %d,\n"
                 "    \"n_audio_ctx\": %d,\n"
                 "    \"n_audio_state\": %d,\n"
                 "    \"n_audio_head\": %d,\n"
                 "    \"n_audio_layer\": %d,\n"
                 "    \"llm_dim\": %d,\n"
                 "    \"kernel_size\": %d,\n"
                 "    \"adapter_stride\": %d",
                 c->audio.n_mels, c->audio.n_ctx, c->audio.n_state,
                 c->audio.n_head, c->audio.n_layer, c->audio.llm_dim,
                 c->audio.kernel_size, c->audio.adapter_stride) > 0;
    if (ok && c->audio.adapter_hidden != CFG_ADAPTER_HIDDEN)
      ok = fprintf(f, ",\n    \"adapter_hidden_size\": %d",
                   c->audio.adapter_hidden) > 0;
    if (ok)
      ok = fputs("\n  }", f) >= 0;
  }
  if (ok)
    ok = fputs("\n}\n", f) >= 0;
  if (fclose(f) != 0)
    ok = 0;
  if (ok && rename(tmp, path) != 0)
    ok = 0;
  if (!ok)
    unlink(tmp);
  free(tmp);
  return ok ? 0 : SA_EIO;
}
