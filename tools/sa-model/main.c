/*
 * sa-model — checkpoint tools: init a random test model, inspect a
 * checkpoint, tokenize, dump logits, generate (the single-process reference
 * the cluster's output is compared with), and the audio dumps (pcm, mel,
 * encode) when cmd_audio.c is built in.
 */
#include "sa_model.h"

#include "log.h"
#include "sa_error.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const char *name;
  int (*fn)(int, char **);
  const char *help;
} cmd_t;

static cmd_t g_cmds[] = {
    {"init", sa_model_cmd_init, "write a random test model (tiny|medium|small)"},
    {"inspect", sa_model_cmd_inspect, "summarise a checkpoint"},
    {"tokenize", sa_model_cmd_tokenize, "print the token ids of a text"},
    {"logits", sa_model_cmd_logits, "dump logits over a prompt as .npy"},
    {"generate", sa_model_cmd_generate, "reference generation (one process)"},
    {"quantize", sa_model_cmd_quantize, "write a Q8_0 or Q4_0 copy of a checkpoint"},
    {"pcm", NULL, "decode audio to 16 kHz mono PCM (.npy)"},
    {"mel", NULL, "dump the log-mel spectrogram (.npy)"},
    {"encode", NULL, "dump audio encoder embeddings (.npy)"},
};

static void usage(FILE *f) {
  fprintf(f, "usage: sa-model COMMAND [options]   (COMMAND --help for more)\n"
             "commands:\n");
  for (size_t i = 0; i < sizeof g_cmds / sizeof g_cmds[0]; i++)
    if (g_cmds[i].fn)
      fprintf(f, "  %-10s %s\n", g_cmds[i].name, g_cmds[i].help);
}

int main(int argc, char **argv) {
  sa_log_init("sa-model");
  g_cmds[6].fn = sa_model_cmd_pcm;
  g_cmds[7].fn = sa_model_cmd_mel;
  g_cmds[8].fn = sa_model_cmd_encode;
  if (argc < 2 || sa_model_is_help(argv[1])) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (size_t i = 0; i < sizeof g_cmds / sizeof g_cmds[0]; i++)
    if (g_cmds[i].fn && strcmp(argv[1], g_cmds[i].name) == 0)
      return g_cmds[i].fn(argc - 1, argv + 1);
  fprintf(stderr, "sa-model: unknown command '%s'\n", argv[1]);
  usage(stderr);
  return 2;
}

bool sa_model_is_help(const char *a) {
  return a && (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0);
}

bool sa_model_parse_i64(const char *s, int64_t *out) {
  if (!s || !*s)
    return false;
  char *end = NULL;
  errno = 0;
  long long v = strtoll(s, &end, 0);
  if (errno || *end)
    return false;
  *out = v;
  return true;
}

bool sa_model_parse_f32(const char *s, float *out) {
  if (!s || !*s)
    return false;
  char *end = NULL;
  errno = 0;
  float v = strtof(s, &end);
  if (errno || *end || !isfinite(v))
    return false;
  *out = v;
  return true;
}

int sa_model_parse_ids(const char *s, int32_t **ids, size_t *n) {
  size_t cap = 16, k = 0;
  int32_t *v = malloc(cap * sizeof *v);
  if (!v)
    return SA_ENOMEM;
  const char *p = s;
  for (;;) {
    while (*p == ',' || *p == ' ' || *p == '\t' || *p == '\n' || *p == '[' ||
           *p == ']')
      p++;
    if (!*p)
      break;
    char *end;
    errno = 0;
    long x = strtol(p, &end, 10);
    if (end == p || errno || x < 0 || x > INT32_MAX) {
      free(v);
      return SA_EINVAL;
    }
    if (k == cap) {
      int32_t *nv = realloc(v, 2 * cap * sizeof *v);
      if (!nv) {
        free(v);
        return SA_ENOMEM;
      }
      v = nv;
      cap *= 2;
    }
    v[k++] = (int32_t)x;
    p = end;
  }
  *ids = v;
  *n = k;
  return 0;
}

sa_backend_t *sa_model_backend(const char *dev, int threads) {
  return sa_backend_new(dev ? dev : "cpu", threads);
}
