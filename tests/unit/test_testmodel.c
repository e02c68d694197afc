/* test_testmodel — sa-model init's checkpoints: deterministic bytes, the R1
 * tensor layout (names, shapes, bf16), the Step special tokens, and that the
 * decoder and the audio encoder load what it writes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "audio_encoder.h"
#include "config.h"
#include "decoder.h"
#include "kernels.h"
#include "sa_error.h"
#include "safetensors.h"
#include "testmodel.h"
#include "tokenizer.h"

static char g_dir[3][128];

static int setup(void **state) {
  (void)state;
  const uint64_t seeds[3] = {7, 7, 8};
  for (int i = 0; i < 3; i++) {
    snprintf(g_dir[i], sizeof g_dir[i], "/tmp/sa_test_testmodel_%d_%d",
             (int)getpid(), i);
    char err[256] = "";
    if (sa_testmodel_write("tiny", seeds[i], g_dir[i], err, sizeof err)) {
      fprintf(stderr, "%s\n", err);
      return -1;
    }
  }
  return 0;
}

static int teardown(void **state) {
  (void)state;
  for (int i = 0; i < 3; i++) {
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir[i]);
    if (system(cmd) != 0)
      return -1;
  }
  return 0;
}

static void *slurp(const char *dir, const char *file, size_t *n) {
  char p[256];
  snprintf(p, sizeof p, "%s/%s", dir, file);
  FILE *f = fopen(p, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  *n = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  void *b = malloc(*n);
  assert_int_equal(fread(b, 1, *n, f), *n);
  fclose(f);
  return b;
}

static void test_deterministic(void **state) {
  (void)state;
  size_t n0, n1, n2;
  void *a = slurp(g_dir[0], "model.safetensors", &n0);
  void *b = slurp(g_dir[1], "model.safetensors", &n1);
  void *c = slurp(g_dir[2], "model.safetensors", &n2);
  assert_int_equal(n0, n1);
  assert_memory_equal(a, b, n0);
  assert_int_equal(n0, n2);
  assert_memory_not_equal(a, c, n0); /* another seed, other weights */
  free(a);
  free(b);
  free(c);
}

static void test_layout(void **state) {
  (void)state;
  sa_model_config_t cfg;
  char err[256];
  assert_int_equal(sa_config_load(g_dir[0], &cfg, err, sizeof err), 0);
  assert_true(cfg.audio.present);
  assert_int_equal(cfg.audio.llm_dim, cfg.hidden_size);
  sa_st_t *st = NULL;
  assert_int_equal(sa_st_open(g_dir[0], NULL, NULL, &st, err, sizeof err), 0);
  int H = cfg.hidden_size, S = cfg.audio.n_state, V = cfg.vocab_size;
  int A = cfg.audio.adapter_hidden, M = cfg.audio.n_mels;
  struct {
    const char *name;
    int ndim;
    int64_t s[3];
  } want[] = {
      {"model.embed_tokens.weight", 2, {V, H}},
      {"model.layers.0.self_attn.q_proj.bias", 1, {H}},
      {"model.layers.2.mlp.down_proj.weight", 2, {H, cfg.intermediate_size}},
      {"model.norm.weight", 1, {H}},
      {"lm_head.weight", 2, {V, H}},
      {"encoder.conv1.weight", 3, {S, M, 3}},
      {"encoder.conv2.weight", 3, {S, S, 3}},
      {"encoder.positional_embedding", 2, {cfg.audio.n_ctx, S}},
      {"encoder.blocks.1.attn.key.weight", 2, {S, S}},
      {"encoder.blocks.1.mlp.0.weight", 2, {4 * S, S}},
      {"encoder.blocks.1.mlp.2.bias", 1, {S}},
      {"encoder.after_norm.bias", 1, {S}},
      {"adapter.conv.weight", 3, {S, S, 3}},
      {"adapter.linear1.weight", 2, {A, S}},
      {"adapter.linear2.weight", 2, {H, A}},
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    const sa_st_tensor_t *t = NULL;
    if (sa_st_get(st, want[i].name, SA_DTYPE_BF16, want[i].ndim, want[i].s,
                  &t, err, sizeof err))
      fail_msg("%s", err);
  }
  assert_null(sa_st_find(st, "encoder.blocks.0.attn.key.bias"));
  assert_int_equal(sa_st_count(st),
                   1 + 12 * cfg.num_hidden_layers + 2 + 5 +
                       15 * cfg.audio.n_layer + 2 + 6);
  /* the audio encoder helper's loader takes it */
  sa_backend_t *be = sa_backend_ref_new();
  sa_audio_encoder_t *enc = NULL;
  if (sa_audio_encoder_new(be, &cfg, st, &enc, err, sizeof err))
    fail_msg("audio encoder: %s", err);
  assert_int_equal(sa_audio_encoder_hidden(enc), H);
  sa_audio_encoder_destroy(&enc);
  sa_st_close(&st);
  /* and the decoder */
  sa_decoder_t *dec = NULL;
  if (sa_decoder_load(be, g_dir[0], NULL, NULL, &dec, err, sizeof err))
    fail_msg("decoder: %s", err);
  sa_decoder_destroy(&dec);
  sa_backend_destroy(&be);

  sa_tokenizer_t *tok = sa_tokenizer_load(g_dir[0], err, sizeof err);
  assert_non_null(tok);
  assert_true(sa_tokenizer_vocab_size(tok) <= (size_t)V);
  const char *sp[] = {"<|BOT|>", "<|EOT|>", "<audio_start>", "<audio_patch>",
                      "<audio_end>", "<think>", "</think>"};
  for (size_t i = 0; i < sizeof sp / sizeof sp[0]; i++)
    assert_true(sa_tokenizer_token_id(tok, sp[i]) >= 0);
  sa_tokenizer_destroy(&tok);

  sa_model_config_t small;
  assert_int_equal(sa_testmodel_preset("small", &small, NULL), 0);
  assert_int_equal(small.hidden_size, 896);
  assert_int_equal(small.num_hidden_layers, 24);
  assert_int_equal(small.vocab_size, 151936);
  assert_int_equal(sa_testmodel_preset("huge", &small, NULL), SA_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_deterministic),
      cmocka_unit_test(test_layout),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
