/* Unit tests for core/config: the real Step-Audio-R1 sizes in the flat form
 * and the same numbers in the nested form parse to the same struct; the
 * Step-Audio 2 mini layout; documented defaults; write -> parse round trips
 * (and the written file is the flat form, checked with cJSON); and every
 * invalid config gives SA_EFORMAT with a message naming the field. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "sa_error.h"

/* Step-Audio-R1 (32B): flat form, decoder fields at top level. */
static const char *k_r1_flat =
    "{\n"
    "  \"architectures\": [\"StepAudio2ForCausalLM\"],\n"
    "  \"model_type\": \"step_audio_2\",\n"
    "  \"hidden_size\": 5120,\n"
    "  \"num_hidden_layers\": 64,\n"
    "  \"num_attention_heads\": 40,\n"
    "  \"num_key_value_heads\": 8,\n"
    "  \"intermediate_size\": 27648,\n"
    "  \"vocab_size\": 158720,\n"
    "  \"rms_norm_eps\": 1e-06,\n"
    "  \"rope_theta\": 1000000.0,\n"
    "  \"max_position_embeddings\": 65536,\n"
    "  \"tie_word_embeddings\": false,\n"
    "  \"torch_dtype\": \"bfloat16\",\n"
    "  \"rope_scaling\": null,\n"
    "  \"audio_encoder_config\": {\n"
    "    \"n_mels\": 128, \"n_audio_ctx\": 1500, \"n_audio_state\": 1280,\n"
    "    \"n_audio_head\": 20, \"n_audio_layer\": 32, \"n_codebook_size\": 4096,\n"
    "    \"llm_dim\": 5120, \"kernel_size\": 3, \"adapter_stride\": 2\n"
    "  }\n"
    "}\n";

/* The same numbers in the nested form (torch_dtype stays at top level, as
 * HF writes it for composite configs). */
static const char *k_r1_nested =
    "{\"architectures\": [\"StepAudio2ForCausalLM\"],\n"
    " \"torch_dtype\": \"bfloat16\",\n"
    " \"text_config\": {\"hidden_size\": 5120, \"num_hidden_layers\": 64,\n"
    "   \"num_attention_heads\": 40, \"num_key_value_heads\": 8,\n"
    "   \"intermediate_size\": 27648, \"vocab_size\": 158720,\n"
    "   \"rms_norm_eps\": 1e-6, \"rope_theta\": 1e6,\n"
    "   \"max_position_embeddings\": 65536, \"tie_word_embeddings\": false},\n"
    " \"audio_encoder_config\": {\"n_mels\": 128, \"n_audio_ctx\": 1500,\n"
    "   \"n_audio_state\": 1280, \"n_audio_head\": 20, \"n_audio_layer\": 32,\n"
    "   \"llm_dim\": 5120, \"kernel_size\": 3, \"adapter_stride\": 2}}";

static void assert_r1(const sa_model_config_t *c) {
  assert_int_equal(c->hidden_size, 5120);
  assert_int_equal(c->num_hidden_layers, 64);
  assert_int_equal(c->num_attention_heads, 40);
  assert_int_equal(c->num_key_value_heads, 8);
  assert_int_equal(c->head_dim, 128);
  assert_int_equal(c->intermediate_size, 27648);
  assert_int_equal(c->vocab_size, 158720);
  assert_int_equal(c->max_position_embeddings, 65536);
  assert_true(c->rms_norm_eps == 1e-6f);
  assert_true(c->rope_theta == 1e6f);
  assert_false(c->tie_word_embeddings);
  assert_int_equal(c->dtype, SA_DTYPE_BF16);
  assert_true(c->audio.present);
  assert_int_equal(c->audio.n_mels, 128);
  assert_int_equal(c->audio.n_state, 1280);
  assert_int_equal(c->audio.n_layer, 32);
  assert_int_equal(c->audio.n_head, 20);
  assert_int_equal(c->audio.n_ctx, 1500);
  assert_int_equal(c->audio.adapter_hidden, 2048);
  assert_int_equal(c->audio.kernel_size, 3);
  assert_int_equal(c->audio.adapter_stride, 2);
  assert_int_equal(c->audio.llm_dim, 5120);
}

static void assert_same(const sa_model_config_t *a, const sa_model_config_t *b) {
  assert_int_equal(a->hidden_size, b->hidden_size);
  assert_int_equal(a->num_hidden_layers, b->num_hidden_layers);
  assert_int_equal(a->num_attention_heads, b->num_attention_heads);
  assert_int_equal(a->num_key_value_heads, b->num_key_value_heads);
  assert_int_equal(a->head_dim, b->head_dim);
  assert_int_equal(a->intermediate_size, b->intermediate_size);
  assert_int_equal(a->vocab_size, b->vocab_size);
  assert_int_equal(a->max_position_embeddings, b->max_position_embeddings);
  assert_true(a->rms_norm_eps == b->rms_norm_eps);
  assert_true(a->rope_theta == b->rope_theta);
  assert_int_equal(a->tie_word_embeddings, b->tie_word_embeddings);
  assert_int_equal(a->dtype, b->dtype);
  assert_int_equal(a->audio.present, b->audio.present);
  assert_int_equal(a->audio.n_mels, b->audio.n_mels);
  assert_int_equal(a->audio.n_state, b->audio.n_state);
  assert_int_equal(a->audio.n_layer, b->audio.n_layer);
  assert_int_equal(a->audio.n_head, b->audio.n_head);
  assert_int_equal(a->audio.n_ctx, b->audio.n_ctx);
  assert_int_equal(a->audio.adapter_hidden, b->audio.adapter_hidden);
  assert_int_equal(a->audio.kernel_size, b->audio.kernel_size);
  assert_int_equal(a->audio.adapter_stride, b->audio.adapter_stride);
  assert_int_equal(a->audio.llm_dim, b->audio.llm_dim);
}

static int parse(const char *json, sa_model_config_t *c, char *err,
                 size_t cap) {
  /* exact-size copy without a NUL: the parser must honour len */
  size_t n = strlen(json);
  char *copy = malloc(n ? n : 1);
  memcpy(copy, json, n);
  int rc = sa_config_parse(copy, n, c, err, cap);
  free(copy);
  return rc;
}

static void test_r1_flat_and_nested(void **state) {
  (void)state;
  sa_model_config_t flat, nested;
  char err[256] = "";
  assert_int_equal(parse(k_r1_flat, &flat, err, sizeof err), 0);
  assert_r1(&flat);
  assert_int_equal(parse(k_r1_nested, &nested, err, sizeof err), 0);
  assert_r1(&nested);
  assert_same(&flat, &nested);
}

/* Step-Audio 2 mini's layout (nested, Qwen2.5-7B-sized decoder). */
static void test_step_audio2_mini(void **state) {
  (void)state;
  const char *j =
      "{\"architectures\": [\"StepAudio2ForCausalLM\"], \"model_type\": "
      "\"step_audio_2\", \"torch_dtype\": \"bfloat16\",\n"
      " \"text_config\": {\"hidden_size\": 3584, \"intermediate_size\": 18944,"
      " \"num_hidden_layers\": 28, \"num_attention_heads\": 28,"
      " \"num_attention_groups\": 4, \"num_key_value_heads\": 4,"
      " \"max_position_embeddings\": 16384, \"vocab_size\": 158720,"
      " \"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000.0,"
      " \"eos_token_id\": [151643, 151645]},\n"
      " \"audio_encoder_config\": {\"n_mels\": 128, \"n_audio_ctx\": 1500,"
      " \"n_audio_state\": 1280, \"n_audio_head\": 20, \"n_audio_layer\": 32,"
      " \"n_codebook_size\": 4096, \"llm_dim\": 3584, \"kernel_size\": 3,"
      " \"adapter_stride\": 2}}";
  sa_model_config_t c;
  char err[256] = "";
  assert_int_equal(parse(j, &c, err, sizeof err), 0);
  assert_int_equal(c.hidden_size, 3584);
  assert_int_equal(c.num_attention_heads, 28);
  assert_int_equal(c.num_key_value_heads, 4);
  assert_int_equal(c.head_dim, 128);
  assert_int_equal(c.max_position_embeddings, 16384);
  assert_int_equal(c.audio.llm_dim, 3584);
}

static void test_defaults(void **state) {
  (void)state;
  const char *j = "{\"hidden_size\": 64, \"num_hidden_layers\": 2,"
                  " \"num_attention_heads\": 4, \"intermediate_size\": 128,"
                  " \"vocab_size\": 300, \"head_dim\": null}";
  sa_model_config_t c;
  char err[256] = "";
  assert_int_equal(parse(j, &c, err, sizeof err), 0);
  assert_int_equal(c.num_key_value_heads, 4); /* = num_attention_heads */
  assert_int_equal(c.head_dim, 16);
  assert_int_equal(c.max_position_embeddings, 32768);
  assert_true(c.rms_norm_eps == 1e-6f);
  assert_true(c.rope_theta == 10000.0f);
  assert_false(c.tie_word_embeddings);
  assert_int_equal(c.dtype, SA_DTYPE_BF16);
  assert_false(c.audio.present);

  /* audio with only its required fields; num_attention_groups alias;
   * "dtype" alias; head_dim given where heads do not divide hidden. */
  const char *k = "{\"hidden_size\": 60, \"num_hidden_layers\": 2,"
                  " \"num_attention_heads\": 8, \"num_attention_groups\": 2,"
                  " \"head_dim\": 8, \"intermediate_size\": 128,"
                  " \"vocab_size\": 300, \"dtype\": \"float16\","
                  " \"audio_encoder_config\": {\"n_audio_state\": 32,"
                  " \"n_audio_layer\": 1, \"n_audio_head\": 4}}";
  assert_int_equal(parse(k, &c, err, sizeof err), 0);
  assert_int_equal(c.num_key_value_heads, 2);
  assert_int_equal(c.head_dim, 8);
  assert_int_equal(c.dtype, SA_DTYPE_F16);
  assert_true(c.audio.present);
  assert_int_equal(c.audio.n_mels, 128);
  assert_int_equal(c.audio.n_ctx, 1500);
  assert_int_equal(c.audio.kernel_size, 3);
  assert_int_equal(c.audio.adapter_stride, 2);
  assert_int_equal(c.audio.adapter_hidden, 2048);
  assert_int_equal(c.audio.llm_dim, 60);
}

static void write_and_parse(const sa_model_config_t *in, const char *dir) {
  char path[256], err[256] = "";
  snprintf(path, sizeof path, "%s/config.json", dir);
  assert_int_equal(sa_config_write(path, in), 0);
  sa_model_config_t out;
  assert_int_equal(sa_config_load(dir, &out, err, sizeof err), 0);
  assert_same(in, &out);
  /* via the file path too */
  assert_int_equal(sa_config_load(path, &out, err, sizeof err), 0);
  assert_same(in, &out);

  /* The written file is the flat R1 form. */
  FILE *f = fopen(path, "rb");
  char buf[4096];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  cJSON *root = cJSON_Parse(buf);
  assert_non_null(root);
  assert_null(cJSON_GetObjectItemCaseSensitive(root, "text_config"));
  const cJSON *h = cJSON_GetObjectItemCaseSensitive(root, "hidden_size");
  assert_true(cJSON_IsNumber(h) && h->valueint == in->hidden_size);
  const cJSON *a = cJSON_GetObjectItemCaseSensitive(root,
                                                    "audio_encoder_config");
  assert_int_equal(a != NULL, in->audio.present);
  if (a) {
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(a, "n_audio_state");
    assert_true(cJSON_IsNumber(s) && s->valueint == in->audio.n_state);
  }
  cJSON_Delete(root);
  unlink(path);
}

static void test_write_round_trip(void **state) {
  (void)state;
  char dir[] = "/tmp/sa_cfg_test_XXXXXX";
  assert_non_null(mkdtemp(dir));
  sa_model_config_t r1;
  char err[256] = "";
  assert_int_equal(parse(k_r1_flat, &r1, err, sizeof err), 0);
  write_and_parse(&r1, dir);

  /* A tiny test model: odd float values, tied embeddings, f32, a small
   * adaptor hidden size, no division of hidden by heads. */
  sa_model_config_t tiny = {
      .hidden_size = 96, .num_hidden_layers = 3, .num_attention_heads = 5,
      .num_key_value_heads = 1, .head_dim = 16, .intermediate_size = 200,
      .vocab_size = 1000, .max_position_embeddings = 4096,
      .rms_norm_eps = 1e-5f, .rope_theta = 12345.678f,
      .tie_word_embeddings = true, .dtype = SA_DTYPE_F32,
      .audio = {.present = true, .n_mels = 128, .n_state = 64, .n_layer = 2,
                .n_head = 4, .n_ctx = 1500, .adapter_hidden = 48,
                .kernel_size = 3, .adapter_stride = 2, .llm_dim = 96}};
  write_and_parse(&tiny, dir);
  tiny.audio = (typeof(tiny.audio)){0};
  tiny.rms_norm_eps = 0.1f; /* not exact in binary: 9 digits needed */
  write_and_parse(&tiny, dir);

  /* An invalid struct is refused and nothing is written. */
  char path[256];
  snprintf(path, sizeof path, "%s/config.json", dir);
  tiny.num_key_value_heads = 3;
  assert_int_equal(sa_config_validate(&tiny, err, sizeof err), SA_EFORMAT);
  assert_non_null(strstr(err, "num_key_value_heads"));
  assert_int_equal(sa_config_write(path, &tiny), SA_EFORMAT);
  assert_int_equal(access(path, F_OK), -1);

  /* Missing file. */
  sa_model_config_t out;
  assert_int_equal(sa_config_load(dir, &out, err, sizeof err), SA_ENOENT);
  assert_non_null(strstr(err, "config.json"));
  assert_int_equal(rmdir(dir), 0);
}

/* Replaces (or with value NULL removes) `key` in the object at `where`
 * ("" = top level, else a member object) of the R1 flat config. */
static char *r1_with(const char *where, const char *key, const char *value) {
  cJSON *root = cJSON_Parse(k_r1_flat);
  cJSON *obj = where[0] ? cJSON_GetObjectItemCaseSensitive(root, where) : root;
  cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
  if (value)
    cJSON_AddItemToObject(obj, key, cJSON_Parse(value));
  char *s = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  return s;
}

typedef struct {
  const char *where, *key, *value; /* the edit */
  const char *field;               /* must be named in the message */
} bad_cfg_t;

static void test_invalid(void **state) {
  (void)state;
  const char *A = "audio_encoder_config";
  const bad_cfg_t cases[] = {
      {"", "hidden_size", "0", "hidden_size"},
      {"", "hidden_size", "-5120", "hidden_size"},
      {"", "hidden_size", "\"5120\"", "hidden_size"},
      {"", "hidden_size", "5120.5", "hidden_size"},
      {"", "hidden_size", "1e10", "hidden_size"},
      {"", "hidden_size", NULL, "hidden_size"},
      {"", "num_hidden_layers", NULL, "num_hidden_layers"},
      {"", "num_hidden_layers", "0", "num_hidden_layers"},
      {"", "num_attention_heads", "48", "num_attention_heads"}, /* !| 5120 */
      {"", "num_attention_heads", "0", "num_attention_heads"},
      {"", "num_key_value_heads", "7", "num_key_value_heads"},
      {"", "num_key_value_heads", "-8", "num_key_value_heads"},
      {"", "head_dim", "127", "head_dim"},
      {"", "head_dim", "0", "head_dim"},
      {"", "num_attention_heads", "1024", "head_dim"}, /* 5120/1024 = 5 */
      {"", "intermediate_size", "0", "intermediate_size"},
      {"", "vocab_size", NULL, "vocab_size"},
      {"", "vocab_size", "true", "vocab_size"},
      {"", "max_position_embeddings", "0", "max_position_embeddings"},
      {"", "rms_norm_eps", "0", "rms_norm_eps"},
      {"", "rms_norm_eps", "-1e-6", "rms_norm_eps"},
      {"", "rms_norm_eps", "\"1e-6\"", "rms_norm_eps"},
      {"", "rope_theta", "-10000", "rope_theta"},
      {"", "rope_theta", "1e300", "rope_theta"}, /* not a finite float */
      {"", "tie_word_embeddings", "\"yes\"", "tie_word_embeddings"},
      {"", "torch_dtype", "\"int8\"", "torch_dtype"},
      {"", "torch_dtype", "16", "torch_dtype"},
      {"", "text_config", "[]", "text_config"},
      {"", "audio_encoder_config", "5", "audio_encoder_config"},
      {A, "n_audio_head", "7", "n_audio_head"}, /* !| 1280 */
      {A, "n_audio_head", NULL, "audio_encoder_config.n_audio_head"},
      {A, "n_audio_state", "0", "n_audio_state"},
      {A, "n_audio_layer", NULL, "audio_encoder_config.n_audio_layer"},
      {A, "n_mels", "-128", "n_mels"},
      {A, "n_audio_ctx", "0", "n_audio_ctx"},
      {A, "kernel_size", "0", "kernel_size"},
      {A, "adapter_stride", "\"2\"", "adapter_stride"},
      {A, "llm_dim", "4096", "llm_dim"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const bad_cfg_t *c = &cases[i];
    char *json = r1_with(c->where, c->key, c->value);
    sa_model_config_t out;
    memset(&out, 0x5a, sizeof out);
    char err[256] = "";
    int rc = parse(json, &out, err, sizeof err);
    if (rc != SA_EFORMAT || !strstr(err, c->field)) {
      print_error("case %zu (%s%s%s = %s): rc %s, message \"%s\", expected "
                  "'%s' named\n", i, c->where, c->where[0] ? "." : "", c->key,
                  c->value ? c->value : "(removed)", sa_err_name(rc), err,
                  c->field);
      fail();
    }
    /* *out untouched on error */
    unsigned char *p = (unsigned char *)&out;
    for (size_t k = 0; k < sizeof out; k++)
      assert_int_equal(p[k], 0x5a);
    free(json);
  }

  /* Not JSON at all, or not an object. */
  const char *junk[] = {"", "{", "[1,2]", "\"x\"", "{\"hidden_size\": }", "nul"};
  for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
    sa_model_config_t out;
    char err[256] = "";
    assert_int_equal(parse(junk[i], &out, err, sizeof err), SA_EFORMAT);
    assert_non_null(strstr(err, "JSON"));
  }

  /* In the nested form a field is named with its path. */
  sa_model_config_t out;
  char err[256] = "";
  const char *n = "{\"text_config\": {\"hidden_size\": \"big\"}}";
  assert_int_equal(parse(n, &out, err, sizeof err), SA_EFORMAT);
  assert_non_null(strstr(err, "text_config.hidden_size"));
}

static void test_model_name(void **state) {
  (void)state;
  char n[16];
  sa_config_model_name("/models/step-audio-r1/", n, sizeof n);
  assert_string_equal(n, "step-audio-r1");
  sa_config_model_name("tiny", n, sizeof n);
  assert_string_equal(n, "tiny");
  sa_config_model_name("a/b//", n, sizeof n);
  assert_string_equal(n, "b");
  sa_config_model_name("/", n, sizeof n);
  assert_string_equal(n, "model");
  sa_config_model_name("x/a-very-long-model-name", n, sizeof n);
  assert_string_equal(n, "a-very-long-mod"); /* cut to fit */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_model_name),
      cmocka_unit_test(test_r1_flat_and_nested),
      cmocka_unit_test(test_step_audio2_mini),
      cmocka_unit_test(test_defaults),
      cmocka_unit_test(test_write_round_trip),
      cmocka_unit_test(test_invalid),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
