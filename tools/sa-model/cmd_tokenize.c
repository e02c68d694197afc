/* sa-model tokenize — prints the token ids of a text. */
#include "sa_model.h"

#include "sa_error.h"
#include "tokenizer.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void help(FILE *f) {
  fprintf(f, "usage: sa-model tokenize --model DIR --text TEXT [--no-special]\n"
             "Prints the ids (space separated) of TEXT as encoded by DIR's\n"
             "tokenizer.json: no template, no BOS/EOS. --no-special treats\n"
             "special token strings as plain text.\n");
}

int sa_model_cmd_tokenize(int argc, char **argv) {
  const char *model = NULL, *text = NULL;
  unsigned flags = 0;
  static const struct option lo[] = {{"model", 1, 0, 'm'}, {"text", 1, 0, 't'},
                                     {"no-special", 0, 0, 'n'},
                                     {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
    switch (c) {
    case 'm': model = optarg; break;
    case 't': text = optarg; break;
    case 'n': flags |= SA_TOKENIZER_NO_SPECIAL; break;
    case 'h': help(stdout); return 0;
    default: help(stderr); return 2;
    }
  }
  if (!model || !text || optind != argc) {
    help(stderr);
    return 2;
  }
  char err[512] = "";
  sa_tokenizer_t *tok = sa_tokenizer_load(model, err, sizeof err);
  if (!tok) {
    fprintf(stderr, "tokenize: %s\n", err);
    return 1;
  }
  int32_t *ids = NULL;
  size_t n = 0;
  int rc = sa_tokenizer_encode(tok, text, strlen(text), flags, &ids, &n, err,
                               sizeof err);
  if (rc) {
    fprintf(stderr, "tokenize: %s (%s)\n", err, sa_strerror(rc));
    sa_tokenizer_destroy(&tok);
    return 1;
  }
  for (size_t i = 0; i < n; i++)
    printf(i ? " %d" : "%d", ids[i]);
  printf("\n");
  free(ids);
  sa_tokenizer_destroy(&tok);
  return 0;
}
