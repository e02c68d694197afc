/* sa-model inspect — config summary and tensor listing of a checkpoint. */
#include "sa_model.h"

#include "config.h"
#include "sa_error.h"
#include "safetensors.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void help(FILE *f) {
  fprintf(f, "usage: sa-model inspect [--layers] [--tensors] DIR\n"
             "Prints the config, the tensor count and bytes by group.\n"
             "  --layers   bytes and tensor count of each decoder layer\n"
             "  --tensors  every tensor with dtype and shape\n");
}

int sa_model_cmd_inspect(int argc, char **argv) {
  int layers = 0, tensors = 0;
  static const struct option lo[] = {{"layers", 0, 0, 'l'},
                                     {"tensors", 0, 0, 't'},
                                     {"help", 0, 0, 'h'},
                                     {0, 0, 0, 0}};
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
    switch (c) {
    case 'l': layers = 1; break;
    case 't': tensors = 1; break;
    case 'h': help(stdout); return 0;
    default: help(stderr); return 2;
    }
  }
  if (optind + 1 != argc) {
    help(stderr);
    return 2;
  }
  const char *dir = argv[optind];
  char err[512] = "";
  sa_model_config_t cfg;
  int rc = sa_config_load(dir, &cfg, err, sizeof err);
  if (rc) {
    fprintf(stderr, "inspect: %s\n", err);
    return 1;
  }
  sa_st_t *st = NULL;
  if ((rc = sa_st_open(dir, NULL, NULL, &st, err, sizeof err))) {
    fprintf(stderr, "inspect: %s\n", err);
    return 1;
  }
  printf("decoder: hidden %d, layers %d, heads %d, kv heads %d, head_dim %d, "
         "intermediate %d, vocab %d, rope_theta %g, rms_eps %g, tied %s, %s\n",
         cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
         cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size,
         cfg.vocab_size, cfg.rope_theta, cfg.rms_norm_eps,
         cfg.tie_word_embeddings ? "yes" : "no", sa_dtype_name(cfg.dtype));
  if (cfg.audio.present)
    printf("encoder: state %d, layers %d, heads %d, mels %d, ctx %d, "
           "adapter hidden %d, kernel %d, stride %d\n",
           cfg.audio.n_state, cfg.audio.n_layer, cfg.audio.n_head,
           cfg.audio.n_mels, cfg.audio.n_ctx, cfg.audio.adapter_hidden,
           cfg.audio.kernel_size, cfg.audio.adapter_stride);
  else
    printf("encoder: none\n");
  size_t n = sa_st_count(st), total = 0, dec = 0, enc = 0, ada = 0, other = 0;
  int L = cfg.num_hidden_layers;
  size_t *lb = calloc((size_t)(L > 0 ? L : 1), sizeof *lb);
  int *lc = calloc((size_t)(L > 0 ? L : 1), sizeof *lc);
  for (size_t i = 0; i < n; i++) {
    const sa_st_tensor_t *t = sa_st_at(st, i);
    total += t->nbytes;
    if (strncmp(t->name, "model.", 6) == 0 || strcmp(t->name, "lm_head.weight") == 0)
      dec += t->nbytes;
    else if (strncmp(t->name, "encoder.", 8) == 0)
      enc += t->nbytes;
    else if (strncmp(t->name, "adapter.", 8) == 0)
      ada += t->nbytes;
    else
      other += t->nbytes;
    if (strncmp(t->name, "model.layers.", 13) == 0 && lb) {
      int l = atoi(t->name + 13);
      if (l >= 0 && l < L) {
        lb[l] += t->nbytes;
        lc[l]++;
      }
    }
    if (tensors) {
      char d[128];
      printf("  %-60s %s\n", t->name, sa_tensor_desc_str(&t->desc, d, sizeof d));
    }
  }
  printf("tensors: %zu, %zu bytes (decoder %zu, encoder %zu, adapter %zu, "
         "other %zu)\n", n, total, dec, enc, ada, other);
  if (layers && lb)
    for (int l = 0; l < L; l++)
      printf("  layer %3d: %2d tensors, %zu bytes\n", l, lc[l], lb[l]);
  free(lb);
  free(lc);
  sa_st_close(&st);
  return 0;
}
