/* The tiny model end to end on CUDA gives the CPU backend's greedy tokens:
 * the same checkpoint (core/testmodel, written here), the same decoder code
 * (model/decoder) on each backend, 48 greedy tokens after a 40-token prompt
 * prefilled in two chunks. Also checks the first-step logits agree within a
 * tolerance. Prints "skipped: no GPU" and exits 77 without a GPU. */
#include "decoder.h"
#include "kernels.h"
#include "kv.h"
#include "sa_cuda.h"
#include "sa_error.h"
#include "testmodel.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PROMPT 40
#define GEN 48

/* Greedy generation on backend spec; writes GEN tokens and the logits of the
 * first sampled position. 0 or an error. */
static int run(const char *spec, const char *dir, int32_t *out, float **first_logits, int *V) {
  char err[512];
  sa_backend_t *be = sa_backend_new(spec, 1);
  if (!be)
    return SA_ENODEV;
  sa_decoder_t *dec = NULL;
  sa_kv_t *kv = NULL;
  sa_decoder_opts_t o = {.first_layer = 0, .last_layer = -1, .max_tokens = 32, .max_seqs = 1,
                         .max_logit_rows = 1, .max_seq_len = PROMPT + GEN + 1};
  int rc = sa_decoder_load(be, dir, NULL, &o, &dec, err, sizeof err);
  if (rc) {
    fprintf(stderr, "%s: %s\n", spec, err);
    sa_backend_destroy(&be);
    return rc;
  }
  sa_kv_opts_t ko;
  sa_decoder_kv_opts(dec, 0, 16, 1, &ko);
  if ((rc = sa_kv_new(be, &ko, &kv)) || (rc = sa_kv_seq_add(kv, 1)))
    goto out;
  *V = sa_decoder_config(dec)->vocab_size;
  float *logits = malloc(sizeof(float) * (size_t)*V);
  int32_t seq[PROMPT + GEN];
  for (int i = 0; i < PROMPT; i++)
    seq[i] = (i * 37 + 11) % (*V - 16); /* ordinary tokens */
  int len = 0, n = PROMPT;
  uint64_t sid = 1;
  for (int g = 0; g < GEN && rc == 0; g++) {
    while (len < n && rc == 0) {
      int32_t k = n - len > 24 ? 24 : n - len; /* two prefill chunks, then 1 */
      int32_t row = k - 1;
      sa_decoder_batch_t b = {.n_seqs = 1, .seq_ids = &sid, .n_new = &k, .tokens = seq + len,
                              .n_logits = len + k == n, .logit_rows = &row, .logits = logits};
      rc = sa_decoder_step(dec, kv, &b);
      len += k;
    }
    if (rc)
      break;
    if (g == 0) {
      *first_logits = malloc(sizeof(float) * (size_t)*V);
      memcpy(*first_logits, logits, sizeof(float) * (size_t)*V);
    }
    int best = 0;
    for (int v = 1; v < *V; v++)
      if (logits[v] > logits[best])
        best = v;
    out[g] = best;
    seq[n++] = best;
  }
  free(logits);
out:
  sa_kv_destroy(&kv);
  sa_decoder_destroy(&dec);
  sa_backend_destroy(&be);
  return rc;
}

int main(void) {
  if (sa_cuda_device_count() <= 0) {
    printf("skipped: no GPU\n");
    return 77;
  }
  char dir[] = "/tmp/sa-cuda-model.XXXXXX";
  if (!mkdtemp(dir))
    return 1;
  char err[512];
  if (sa_testmodel_write("tiny", 1234, dir, err, sizeof err)) {
    fprintf(stderr, "testmodel: %s\n", err);
    return 1;
  }
  int32_t cpu[GEN], gpu[GEN];
  float *lc = NULL, *lg = NULL;
  int V = 0;
  int rc = run("cpu", dir, cpu, &lc, &V);
  if (rc == 0)
    rc = run("cuda", dir, gpu, &lg, &V);
  if (rc) {
    fprintf(stderr, "FAIL: %s\n", sa_strerror(rc));
    return 1;
  }
  float maxabs = 0, maxd = 0;
  for (int v = 0; v < V; v++) {
    if (fabsf(lc[v]) > maxabs)
      maxabs = fabsf(lc[v]);
    if (fabsf(lc[v] - lg[v]) > maxd)
      maxd = fabsf(lc[v] - lg[v]);
  }
  printf("first-step logits: max |cpu - cuda| = %.3g (max |logit| %.3g)\n", maxd, maxabs);
  int same = memcmp(cpu, gpu, sizeof cpu) == 0;
  printf("greedy tokens: %s\n", same ? "identical" : "DIFFER");
  if (!same)
    for (int g = 0; g < GEN; g++)
      printf("  %2d cpu %d cuda %d\n", g, cpu[g], gpu[g]);
  free(lc);
  free(lg);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", dir);
  if (maxd > 1e-3f * maxabs) {
    printf("FAIL: logits differ by more than 1e-3 of max |logit|\n");
    return 1;
  }
  return same ? 0 : 1;
}
