/* sa-model logits — float32 [T, V] logits over every prompt position. */
#include "sa_model.h"

#include "decoder.h"
#include "kv.h"
#include "npy.h"
#include "sa_error.h"
#include "tokenizer.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void help(FILE *f) {
  fprintf(f,
          "usage: sa-model logits --model DIR (--ids LIST | --prompt TEXT)\n"
          "                       --out FILE.npy [--device cpu|ref] [--threads N]\n"
          "Runs the whole decoder [0, L) over the prompt in one step and writes\n"
          "float32 logits [T, V] for every position. --ids takes ids separated\n"
          "by commas or spaces; --prompt is tokenized as is (no chat template).\n");
}

int sa_model_cmd_logits(int argc, char **argv) {
  const char *model = NULL, *ids_s = NULL, *prompt = NULL, *out = NULL;
  const char *dev = "cpu";
  int64_t threads = 0;
  static const struct option lo[] = {
      {"model", 1, 0, 'm'},  {"ids", 1, 0, 'i'},     {"prompt", 1, 0, 'p'},
      {"out", 1, 0, 'o'},    {"device", 1, 0, 'd'},  {"threads", 1, 0, 't'},
      {"help", 0, 0, 'h'},   {0, 0, 0, 0}};
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
    switch (c) {
    case 'm': model = optarg; break;
    case 'i': ids_s = optarg; break;
    case 'p': prompt = optarg; break;
    case 'o': out = optarg; break;
    case 'd': dev = optarg; break;
    case 't':
      if (!sa_model_parse_i64(optarg, &threads) || threads < 0 || threads > 1024) {
        fprintf(stderr, "logits: bad --threads\n");
        return 2;
      }
      break;
    case 'h': help(stdout); return 0;
    default: help(stderr); return 2;
    }
  }
  if (!model || !out || (!ids_s == !prompt) || optind != argc) {
    help(stderr);
    return 2;
  }
  char err[512] = "";
  int32_t *ids = NULL;
  size_t T = 0;
  int rc = 0, status = 1;
  sa_backend_t *be = NULL;
  sa_decoder_t *dec = NULL;
  sa_kv_t *kv = NULL;
  float *logits = NULL;
  int32_t *rows = NULL;
  if (ids_s) {
    if ((rc = sa_model_parse_ids(ids_s, &ids, &T)) != 0) {
      fprintf(stderr, "logits: bad --ids list\n");
      return 2;
    }
  } else {
    sa_tokenizer_t *tok = sa_tokenizer_load(model, err, sizeof err);
    if (!tok) {
      fprintf(stderr, "logits: %s\n", err);
      return 1;
    }
    rc = sa_tokenizer_encode(tok, prompt, strlen(prompt), 0, &ids, &T, err,
                             sizeof err);
    sa_tokenizer_destroy(&tok);
    if (rc) {
      fprintf(stderr, "logits: %s\n", err);
      return 1;
    }
  }
  if (T == 0 || T > 65536) {
    fprintf(stderr, "logits: need 1..65536 prompt tokens, got %zu\n", T);
    goto done;
  }
  be = sa_model_backend(dev, (int)threads);
  if (!be) {
    fprintf(stderr, "logits: no backend '%s'\n", dev);
    goto done;
  }
  sa_decoder_opts_t o = {.first_layer = 0, .last_layer = -1,
                         .max_tokens = (int)T, .max_seqs = 1,
                         .max_logit_rows = (int)T, .max_seq_len = (int)T};
  if ((rc = sa_decoder_load(be, model, NULL, &o, &dec, err, sizeof err))) {
    fprintf(stderr, "logits: %s\n", err);
    goto done;
  }
  sa_kv_opts_t ko;
  sa_decoder_kv_opts(dec, 0, (int)((T + 15) / 16), 1, &ko);
  if ((rc = sa_kv_new(be, &ko, &kv)) || (rc = sa_kv_seq_add(kv, 1))) {
    fprintf(stderr, "logits: KV cache: %s\n", sa_strerror(rc));
    goto done;
  }
  int V = sa_decoder_config(dec)->vocab_size;
  logits = malloc(T * (size_t)V * sizeof(float));
  rows = malloc(T * sizeof(int32_t));
  if (!logits || !rows) {
    fprintf(stderr, "logits: out of memory\n");
    goto done;
  }
  for (size_t i = 0; i < T; i++)
    rows[i] = (int32_t)i;
  uint64_t sid = 1;
  int32_t n_new = (int32_t)T;
  sa_decoder_batch_t b = {.n_seqs = 1, .seq_ids = &sid, .n_new = &n_new,
                          .tokens = ids, .n_logits = (int)T,
                          .logit_rows = rows, .logits = logits};
  if ((rc = sa_decoder_step(dec, kv, &b))) {
    fprintf(stderr, "logits: step failed: %s\n", sa_strerror(rc));
    goto done;
  }
  int64_t shape[2] = {(int64_t)T, V};
  if ((rc = sa_npy_write_f32(out, logits, 2, shape))) {
    fprintf(stderr, "logits: cannot write %s\n", out);
    goto done;
  }
  printf("wrote logits [%zu, %d] to %s\n", T, V, out);
  status = 0;
done:
  free(ids);
  free(rows);
  free(logits);
  sa_kv_destroy(&kv);
  sa_decoder_destroy(&dec);
  sa_backend_destroy(&be);
  return status;
}
