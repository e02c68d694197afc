/*
 * inproc — decode steps of sa_decoder in this process: the compute a
 * sa-worker's compute thread runs for one StepBatch (stage.c run_step), with
 * no RPC around it. Over all layers this is the single-process baseline;
 * over one stage's layer range it is that stage's compute time, which the
 * pipelined step latency is compared with.
 */
#include "pipeline.h"

#include "decoder.h"
#include "kernels.h"
#include "kv.h"
#include "sa_bench.h"
#include "sa_error.h"
#include "sampler.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int bp_inproc_decode(const bp_inproc_opts_t *o, int first, int last, int threads, int B,
                     int reps, double *step_s, double *tps) {
  char err[512] = "";
  int P = o->prompt_len, rc = SA_ENOMEM;
  sa_backend_t *be = sa_backend_new("cpu", threads);
  if (!be)
    return SA_ENODEV;
  sa_decoder_opts_t dopt = {.first_layer = first,
                            .last_layer = last,
                            .max_tokens = B * P > B ? B * P : B,
                            .max_seqs = B,
                            .max_logit_rows = B,
                            .max_seq_len = P + o->warmup + o->steps + 8};
  sa_decoder_t *dec = NULL;
  sa_kv_t *kv = NULL;
  sa_sampler_t *smp = NULL;
  float *logits = NULL, *hid_in = NULL, *hid_out = NULL;
  int32_t *tok = NULL, *nn = NULL, *pos = NULL, *rows = NULL, *hist = NULL;
  uint64_t *ids = NULL;
  if ((rc = sa_decoder_load(be, o->model_dir, NULL, &dopt, &dec, err, sizeof err))) {
    fprintf(stderr, "bench-pipeline: load layers %d:%d: %s\n", first, last, err);
    goto out;
  }
  const sa_model_config_t *c = sa_decoder_config(dec);
  int H = c->hidden_size, V = c->vocab_size, L = c->num_hidden_layers;
  int is_first = first == 0, is_last = last < 0 || last == L;
  int seq_len = dopt.max_seq_len;
  sa_kv_opts_t ko;
  sa_decoder_kv_opts(dec, 0, B * ((seq_len + 15) / 16) + 8, B + 1, &ko);
  rc = SA_ENOMEM;
  if (sa_kv_new(be, &ko, &kv))
    goto out;
  tok = calloc((size_t)B * P, sizeof *tok);
  nn = calloc((size_t)B, sizeof *nn);
  pos = calloc((size_t)B, sizeof *pos);
  rows = calloc((size_t)B, sizeof *rows);
  ids = calloc((size_t)B, sizeof *ids);
  hist = calloc((size_t)B * seq_len, sizeof *hist);
  logits = is_last ? calloc((size_t)B * V, sizeof *logits) : NULL;
  /* a middle stage gets and gives hidden rows: any finite values will do */
  hid_in = is_first ? NULL : calloc((size_t)B * P * H, sizeof *hid_in);
  hid_out = is_last ? NULL : calloc((size_t)B * P * H, sizeof *hid_out);
  smp = is_last ? sa_sampler_new(V) : NULL;
  if (!tok || !nn || !pos || !rows || !ids || !hist || (is_last && (!logits || !smp)) ||
      (!is_first && !hid_in) || (!is_last && !hid_out))
    goto out;
  for (size_t i = 0; hid_in && i < (size_t)B * P * H; i++)
    hid_in[i] = (float)((i * 2654435761u) % 2001) * 1e-3f - 1.0f;
  sa_sampler_params_t sp;
  sa_sampler_params_default(&sp);
  sp.greedy = true;
  sp.temperature = 0;
  for (int rep = 0; rep < reps; rep++) {
    /* prefill the prompt but its last token once and fork it to the other
     * sequences (KV of full blocks shared, the partial block copied; the
     * attention reads as much as with B separate prefills, which would
     * cost B times the prefill compute); the last prompt token is the first
     * decode input, as the coordinator schedules it (sched.c) */
    int P1 = P - 1 > 0 ? P - 1 : 1;
    for (int s = 0; s < B; s++) {
      ids[s] = (uint64_t)(rep * 1000 + s + 1);
      memcpy(hist + (size_t)s * seq_len, o->prompt, sizeof(int32_t) * (size_t)P);
    }
    if ((rc = sa_kv_seq_add(kv, ids[0])))
      goto out;
    nn[0] = P1;
    pos[0] = 0;
    memcpy(tok, o->prompt, sizeof(int32_t) * (size_t)P1);
    sa_decoder_batch_t b = {.n_seqs = 1, .seq_ids = ids, .n_new = nn, .pos0 = pos,
                            .tokens = tok, .hidden_in = hid_in, .hidden_out = hid_out,
                            .n_logits = 0, .logit_rows = rows, .logits = logits};
    if ((rc = sa_decoder_step(dec, kv, &b))) {
      fprintf(stderr, "bench-pipeline: prefill: %s\n", sa_strerror(rc));
      goto out;
    }
    for (int s = 1; s < B; s++)
      if ((rc = sa_kv_fork(kv, ids[0], ids[s]))) {
        fprintf(stderr, "bench-pipeline: fork: %s\n", sa_strerror(rc));
        goto out;
      }
    b.n_seqs = B;
    int len = P1; /* tokens in the cache */
    for (int s = 0; s < B; s++) {
      nn[s] = 1;
      rows[s] = s;
      tok[s] = o->prompt[P1 < P ? P1 : P - 1];
    }
    b.n_logits = is_last ? B : 0;
    double t_dec = 0;
    for (int k = -o->warmup; k < o->steps; k++) {
      for (int s = 0; s < B; s++)
        pos[s] = len;
      double t0 = sa_bench_now();
      if ((rc = sa_decoder_step(dec, kv, &b))) {
        fprintf(stderr, "bench-pipeline: decode: %s\n", sa_strerror(rc));
        goto out;
      }
      double ts = sa_bench_now();
      for (int s = 0; is_last && s < B; s++) { /* as the last stage does */
        int32_t *h = hist + (size_t)s * seq_len;
        int32_t t = -1;
        h[len] = tok[s];
        sa_sample_key_t key = {.seed = 0, .chain = 0, .position = (uint64_t)len + 1};
        if ((rc = sa_sampler_sample(smp, &sp, logits + (size_t)s * V, V, h, (size_t)len + 1,
                                    key, &t, NULL)))
          goto out;
        tok[s] = t;
      }
      double dt = sa_bench_now() - t0;
      len++;
      if (k >= 0) {
        if (o->sample_s)
          o->sample_s[rep * o->steps + k] = is_last ? sa_bench_now() - ts : 0;
        step_s[rep * o->steps + k] = dt;
        t_dec += dt;
      }
    }
    tps[rep] = (double)B * o->steps / t_dec;
    for (int s = 0; s < B; s++)
      sa_kv_free(kv, ids[s]);
  }
  rc = 0;
out:
  free(tok);
  free(nn);
  free(pos);
  free(rows);
  free(ids);
  free(hist);
  free(logits);
  free(hid_in);
  free(hid_out);
  sa_sampler_destroy(&smp);
  sa_kv_destroy(&kv);
  sa_decoder_destroy(&dec);
  sa_backend_destroy(&be);
  return rc;
}
