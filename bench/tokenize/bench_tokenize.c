/*
 * bench-tokenize — how fast core/tokenizer loads and encodes.
 *
 * Text: the "text" fields of tests/fixtures/tokenizer/cases.jsonl joined
 * by newlines and repeated to --mb MiB (English, code, CJK, Arabic, emoji,
 * whitespace runs...), or, without fixtures, a built-in mixed paragraph
 * repeated. Tokenizer: --tokenizer PATH, else the Qwen fixture, else a
 * synthetic one (1000 merges) written to a temporary folder. Prints the load
 * time, and the median over --reps runs of encode and decode throughput on
 * one thread. Timing is reported, never judged.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "sa_bench.h"
#include "tokenizer.h"
#include "tokenizer_synth.h"

static const char k_builtin[] =
    "The quick brown fox jumps over the lazy dog; audio models reason about "
    "sound. int main(void) { return 0; }\n  def f(x): return x * 2\n"
    "École café naïve Straße — 你好，世界！こんにちは 안녕하세요 Привет мир "
    "مرحبا 👍🏽 🎵 1234567890 3.14159\r\n\t\t   trailing   \n\n";

/* CPU seconds of this process: unlike wall time it does not count time the
 * machine spent on other processes (shared build machines). */
static double cpu_now(void) {
  struct rusage r;
  getrusage(RUSAGE_SELF, &r);
  return r.ru_utime.tv_sec + r.ru_utime.tv_usec * 1e-6 + r.ru_stime.tv_sec +
         r.ru_stime.tv_usec * 1e-6;
}

static void usage(const char *argv0) {
  printf("usage: %s [--tokenizer PATH] [--mb N] [--reps N]\n"
         "  --tokenizer PATH  tokenizer.json or its folder (default: the Qwen "
         "fixture, else a synthetic tokenizer)\n"
         "  --mb N            MiB of text to encode (default 1)\n"
         "  --reps N          timed runs; the median is printed (default 7)\n",
         argv0);
}

/* Joins the fixture texts; returns NULL when the file is absent. */
static char *fixture_text(size_t *len) {
  FILE *f = fopen(SA_FIXTURES_DIR "/tokenizer/cases.jsonl", "rb");
  if (!f)
    return NULL;
  char *line = NULL, *buf = NULL;
  size_t lcap = 0, n = 0, cap = 0;
  ssize_t r;
  while ((r = getline(&line, &lcap, f)) > 0) {
    cJSON *o = cJSON_ParseWithLength(line, (size_t)r);
    cJSON *t = cJSON_GetObjectItem(o, "text");
    if (cJSON_IsString(t)) {
      size_t k = strlen(t->valuestring);
      if (n + k + 2 > cap) {
        cap = (n + k + 2) * 2;
        buf = realloc(buf, cap);
      }
      memcpy(buf + n, t->valuestring, k);
      n += k;
      buf[n++] = '\n';
    }
    cJSON_Delete(o);
  }
  free(line);
  fclose(f);
  *len = n;
  return buf;
}

int main(int argc, char **argv) {
  const char *path = NULL;
  double mb = 1;
  int reps = 7;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(argv[0]);
      return 0;
    } else if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) {
      path = argv[++i];
    } else if (!strcmp(argv[i], "--mb") && i + 1 < argc) {
      mb = atof(argv[++i]);
    } else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
      reps = atoi(argv[++i]);
    } else {
      usage(argv[0]);
      return 2;
    }
  }
  if (mb <= 0 || reps < 1 || reps > 1000) {
    usage(argv[0]);
    return 2;
  }
  char err[512], tmpdir[] = "/tmp/sa_bench_tok_XXXXXX";
  int made_tmp = 0;
  struct stat st;
  if (!path && stat(SA_FIXTURES_DIR "/tokenizer/qwen-bpe/tokenizer.json", &st) == 0)
    path = SA_FIXTURES_DIR "/tokenizer/qwen-bpe";
  if (!path) {
    if (!mkdtemp(tmpdir) || sa_tokenizer_write_synthetic(tmpdir, 1000, err, sizeof err)) {
      fprintf(stderr, "cannot write a synthetic tokenizer: %s\n", err);
      return 1;
    }
    path = tmpdir;
    made_tmp = 1;
  }
  double t0 = sa_bench_now();
  sa_tokenizer_t *tok = sa_tokenizer_load(path, err, sizeof err);
  double t_load = sa_bench_now() - t0;
  if (!tok) {
    fprintf(stderr, "load failed: %s\n", err);
    return 1;
  }

  size_t unit_len;
  char *unit = fixture_text(&unit_len);
  const char *src = unit ? "fixture cases.jsonl texts, repeated" : "built-in mixed text, repeated";
  if (!unit) {
    unit_len = sizeof k_builtin - 1;
    unit = malloc(unit_len);
    memcpy(unit, k_builtin, unit_len);
  }
  size_t target = (size_t)(mb * 1024 * 1024), len = 0;
  char *text = malloc(target + unit_len);
  while (len < target) {
    memcpy(text + len, unit, unit_len);
    len += unit_len;
  }

  double *enc = calloc((size_t)reps, sizeof *enc), *dec = calloc((size_t)reps, sizeof *dec);
  double *enc_cpu = calloc((size_t)reps, sizeof *enc_cpu);
  size_t n_ids = 0;
  for (int r = 0; r < reps; r++) {
    int32_t *ids;
    size_t n;
    double ca = cpu_now();
    double a = sa_bench_now();
    if (sa_tokenizer_encode(tok, text, len, 0, &ids, &n, err, sizeof err)) {
      fprintf(stderr, "encode failed: %s\n", err);
      return 1;
    }
    double b = sa_bench_now();
    enc_cpu[r] = cpu_now() - ca;
    char *out;
    size_t out_len;
    if (sa_tokenizer_decode(tok, ids, n, &out, &out_len)) {
      fprintf(stderr, "decode failed\n");
      return 1;
    }
    double c = sa_bench_now();
    enc[r] = b - a;
    dec[r] = c - b;
    n_ids = n;
    free(out);
    free(ids);
  }
  double me = sa_bench_median(enc, reps), md = sa_bench_median(dec, reps);
  double mc = sa_bench_median(enc_cpu, reps);
  printf("tokenizer: %s (%zu ids)\n", path, sa_tokenizer_vocab_size(tok));
  printf("text: %s, %.2f MiB, %zu tokens (%.2f bytes/token)\n", src,
         len / 1048576.0, n_ids, (double)len / (double)(n_ids ? n_ids : 1));
  printf("load: %.3f s\n", t_load);
  printf("encode: %.2f MB/s  (%.0f tokens/s, median of %d, 1 thread)\n",
         len / me / 1e6, n_ids / me, reps);
  printf("encode: %.2f MB/s of CPU time (median; equals wall time on an idle "
         "core)\n",
         len / mc / 1e6);
  printf("decode: %.1f MB/s  (median of %d)\n", len / md / 1e6, reps);
  free(enc);
  free(enc_cpu);
  free(dec);
  free(text);
  free(unit);
  sa_tokenizer_destroy(&tok);
  if (made_tmp) {
    char p[128];
    snprintf(p, sizeof p, "%s/tokenizer.json", tmpdir);
    unlink(p);
    snprintf(p, sizeof p, "%s/tokenizer_config.json", tmpdir);
    unlink(p);
    rmdir(tmpdir);
  }
  return 0;
}
