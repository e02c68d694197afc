/*
 * bench-decode — decoder tokens/s on the small preset (Qwen2.5-0.5B-sized)
 * against the machine's own limits measured in the same run.
 *
 * For each batch size B: B sequences are prefilled to --ctx tokens, then
 * decode steps of B rows (one new token per sequence, LM head on every row,
 * the last stage's work) are timed. Printed per B: median step time,
 * tokens/s, bytes read per step (bf16 weights of all layers + LM head, plus
 * the KV cache read by attention), the bandwidth roofline time of those
 * bytes and the fraction of it achieved; and the GEMM rate (2 * matmul
 * params * B flops per step) beside OpenBLAS sgemm peak. A prefill chunk is
 * timed too (GFLOP/s vs sgemm peak). --profile times each distinct matmul
 * shape alone at M = 1 and M = 16 to show where a step's time goes.
 *
 * The model folder defaults to <build>/models/small-seed1, created with the
 * init code if absent (about 1 GB, written once).
 */
#include "decoder.h"
#include "kernels.h"
#include "kv.h"
#include "log.h"
#include "sa_bench.h"
#include "sa_error.h"
#include "tensor.h"
#include "testmodel.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define PREFILL_MAX 4096 /* longer contexts are allocated, not computed */

static void usage(FILE *f) {
  fprintf(f,
          "usage: bench-decode [--model DIR] [--threads N] [--batches 1,16]\n"
          "                    [--ctx N] [--steps N] [--prefill N] [--profile]\n"
          "                    [--device cpu|ref]\n"
          "  --model DIR    checkpoint (default <build>/models/small-seed1,\n"
          "                 written with the small preset if absent)\n"
          "  --threads N    backend threads (default 0 = online CPUs)\n"
          "  --batches L    batch sizes to time (default 1,16)\n"
          "  --ctx N        context length of each sequence before timing (128;\n"
          "                 beyond 4096 the cache is written with noise, not prefilled)\n"
          "  --steps N      decode steps timed per batch size (16)\n"
          "  --prefill N    prefill chunk timed for GEMM GFLOP/s (256; 0 = skip)\n"
          "  --profile      time each matmul shape alone (M = 1 and 16)\n"
          "  The KV cache is bf16 (SA_KV_TYPE=f32: fp32, q8_0: q8 blocks); the weights' format\n"
          "  is the checkpoint's (sa-model quantize makes Q8_0 / Q4_0 copies).\n");
}

static int parse_list(const char *s, int *v, int cap) {
  int n = 0;
  while (*s && n < cap) {
    char *end;
    long x = strtol(s, &end, 10);
    if (end == s || x <= 0 || x > 4096)
      return -1;
    v[n++] = (int)x;
    s = *end == ',' ? end + 1 : end;
    if (*end && *end != ',')
      return -1;
  }
  return n;
}

/* Median seconds of one matmul of shape [M,K]x[N,K]^T over rotating weight
 * copies (so W comes from DRAM, as in a real step). */
/* Appends n tokens to sequence id and writes every layer's K and V rows
 * with values of an attention-sized spread (what a prefill would leave, not
 * what it would compute). */
static int fill_context(sa_backend_t *be, sa_kv_t *kv, uint64_t id, int n, int kvd, int L) {
  enum { CHUNK = 512 };
  int32_t *slot = malloc(sizeof(int32_t) * (size_t)n);
  float *rows = malloc(sizeof(float) * (size_t)CHUNK * kvd);
  int rc = slot && rows ? sa_kv_append(kv, id, n, slot) : SA_ENOMEM;
  uint64_t x = 0x9e3779b97f4a7c15ull ^ id;
  for (size_t i = 0; !rc && i < (size_t)CHUNK * kvd; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    rows[i] = (float)((double)(x >> 40) / (double)(1u << 24) * 4.0 - 2.0);
  }
  for (int l = 0; !rc && l < L; l++) {
    void *k, *v;
    rc = sa_kv_layer(kv, l, &k, &v);
    for (int p = 0; !rc && p < n; p += CHUNK)
      rc = sa_op_kv_write(be, k, v, sa_kv_type(kv), rows, rows, kvd, slot + p,
                          n - p < CHUNK ? n - p : CHUNK, kvd);
  }
  free(slot);
  free(rows);
  return rc;
}

static double time_matmul(sa_backend_t *be, int M, int N, int K, int reps) {
  size_t wb = (size_t)N * K * 2;
  int copies = (int)((512u << 20) / wb) + 1;
  if (copies > 64)
    copies = 64;
  uint16_t *w = be->ops->alloc(be, wb * copies);
  float *x = be->ops->alloc(be, (size_t)M * K * 4);
  float *y = be->ops->alloc(be, (size_t)M * N * 4);
  if (!w || !x || !y)
    return -1;
  for (size_t i = 0; i < wb / 2 * copies; i++)
    w[i] = sa_f32_to_bf16((float)((i * 2654435761u) % 1000) * 1e-4f - 0.05f);
  for (size_t i = 0; i < (size_t)M * K; i++)
    x[i] = (float)(i % 13) * 0.1f;
  double *t = malloc(sizeof(double) * reps);
  for (int r = -copies; r < reps; r++) {
    const uint16_t *wc = w + (size_t)N * K * (size_t)((r + copies) % copies);
    double t0 = sa_bench_now();
    sa_op_matmul_bf16(be, y, x, wc, NULL, M, N, K, 0);
    be->ops->sync(be);
    if (r >= 0)
      t[r] = sa_bench_now() - t0;
  }
  double med = sa_bench_median(t, reps);
  free(t);
  be->ops->free(be, w);
  be->ops->free(be, x);
  be->ops->free(be, y);
  return med;
}

int main(int argc, char **argv) {
  sa_log_init("bench-decode");
  const char *model = NULL, *dev = "cpu";
  int threads = 0, ctx = 128, steps = 16, prefill = 256, profile = 0;
  int batches[8] = {1, 16}, n_batches = 2;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--profile")) {
      profile = 1;
    } else if (v && !strcmp(a, "--model")) {
      model = v, i++;
    } else if (v && !strcmp(a, "--device")) {
      dev = v, i++;
    } else if (v && !strcmp(a, "--threads")) {
      threads = atoi(v), i++;
    } else if (v && !strcmp(a, "--ctx")) {
      ctx = atoi(v), i++;
    } else if (v && !strcmp(a, "--steps")) {
      steps = atoi(v), i++;
    } else if (v && !strcmp(a, "--prefill")) {
      prefill = atoi(v), i++;
    } else if (v && !strcmp(a, "--batches")) {
      if ((n_batches = parse_list(v, batches, 8)) <= 0) {
        usage(stderr);
        return 2;
      }
      i++;
    } else {
      usage(stderr);
      return 2;
    }
  }
  if (ctx < 1 || steps < 1 || prefill < 0 || threads < 0) {
    usage(stderr);
    return 2;
  }
  char mdir[1024], err[512] = "";
  if (!model) {
    snprintf(mdir, sizeof mdir, "%s/models/small-seed1", SA_BINARY_DIR);
    char probe[1100];
    snprintf(probe, sizeof probe, "%s/model.safetensors", mdir);
    struct stat sb;
    if (stat(probe, &sb) != 0) {
      printf("writing the small preset to %s ...\n", mdir);
      fflush(stdout);
      double t0 = sa_bench_now();
      if (sa_testmodel_write("small", 1, mdir, err, sizeof err)) {
        fprintf(stderr, "bench-decode: init: %s\n", err);
        return 1;
      }
      printf("  done in %.1f s\n", sa_bench_now() - t0);
    }
    model = mdir;
  }

  /* the machine's limits, measured now */
  int nthr = threads ? threads : sa_bench_cpus();
  sa_bench_bw_t bw;
  if (sa_bench_mem_bandwidth(nthr, 0, 0, &bw)) {
    fprintf(stderr, "bench-decode: bandwidth measurement failed\n");
    return 1;
  }
  double peak = sa_bench_sgemm_peak(nthr);
  printf("machine: %d threads, memory read %.2f GB/s (%s; a plain loop %.2f; copy %.2f GB/s, "
         "%zu MiB buffer), OpenBLAS sgemm peak %.1f GFLOP/s\n",
         nthr, bw.read_gbs, bw.read_how, bw.read_plain_gbs, bw.copy_gbs, bw.bytes >> 20, peak);

  sa_backend_t *be = sa_backend_new(dev, threads);
  if (!be)
    return 1;
  int maxB = 1;
  for (int i = 0; i < n_batches; i++)
    if (batches[i] > maxB)
      maxB = batches[i];
  int filled = ctx > PREFILL_MAX ? 0 : ctx; /* tokens one context step computes */
  int max_tokens = maxB > filled ? maxB : filled;
  if (prefill > max_tokens)
    max_tokens = prefill;
  sa_decoder_opts_t o = {.first_layer = 0, .last_layer = -1,
                         .max_tokens = max_tokens, .max_seqs = maxB,
                         .max_logit_rows = maxB,
                         .max_seq_len = ctx + steps + 8 > prefill
                                            ? ctx + steps + 8 : prefill};
  sa_decoder_t *dec = NULL;
  double t0 = sa_bench_now();
  if (sa_decoder_load(be, model, NULL, &o, &dec, err, sizeof err)) {
    fprintf(stderr, "bench-decode: %s\n", err);
    return 1;
  }
  const sa_model_config_t *c = sa_decoder_config(dec);
  sa_decoder_info_t info;
  sa_decoder_info(dec, &info);
  printf("model: %s: hidden %d, %d layers, %d/%d heads, intermediate %d, "
         "vocab %d; loaded in %.1f s\n", model, c->hidden_size,
         c->num_hidden_layers, c->num_attention_heads,
         c->num_key_value_heads, c->intermediate_size, c->vocab_size,
         sa_bench_now() - t0);
  size_t wbytes = info.layer_bytes + info.lm_head_bytes + info.norm_bytes;
  int H = c->hidden_size, V = c->vocab_size, L = c->num_hidden_layers;
  int kvd = c->num_key_value_heads * c->head_dim;
  int qd = c->num_attention_heads * c->head_dim;
  /* matmul parameters per token: qkv, o, gate|up, down per layer + head */
  double mparams = (double)L * ((double)(qd + 2 * kvd) * H + (double)H * qd +
                                3.0 * H * c->intermediate_size) +
                   (double)V * H;
  printf("weights read per decode step: %.1f MB (layers %.1f MB + LM head "
         "%.1f MB)\n", wbytes / 1e6, info.layer_bytes / 1e6,
         info.lm_head_bytes / 1e6);
  printf("weights in memory:");
  for (int t = 0; t < SA_WQ_COUNT_; t++)
    if (info.matrices[t])
      printf(" %d %s", info.matrices[t], sa_wq_name(t));
  const char *qisa = sa_cpu_q_isa(be);
  printf(" (matrices; quantized ones on the %s path)\n", qisa[0] ? qisa : be->ops->name);
  printf("KV cache: %s (SA_KV_TYPE), context %d%s\n", sa_kv_type_name(sa_kv_type_default()),
         ctx, ctx > PREFILL_MAX ? " (written with noise, not prefilled)" : "");

  sa_kv_opts_t ko;
  int blocks = maxB * ((o.max_seq_len + 15) / 16) + 8;
  sa_decoder_kv_opts(dec, 0, blocks, maxB + 1, &ko);
  sa_kv_t *kv = NULL;
  if (sa_kv_new(be, &ko, &kv)) {
    fprintf(stderr, "bench-decode: KV pool\n");
    return 1;
  }
  int32_t *tok = malloc(sizeof(int32_t) * (size_t)max_tokens);
  float *logits = malloc(sizeof(float) * (size_t)maxB * V);
  int32_t *rows = malloc(sizeof(int32_t) * (size_t)maxB);
  uint64_t *ids = malloc(sizeof(uint64_t) * (size_t)maxB);
  int32_t *nn = malloc(sizeof(int32_t) * (size_t)maxB);
  double *ts = malloc(sizeof(double) * (size_t)steps);
  for (int i = 0; i < max_tokens; i++)
    tok[i] = (i * 7919 + 13) % V;

  if (prefill > 0) { /* GEMM rate of one long prefill chunk */
    uint64_t id = 1000000;
    int32_t n = prefill, row = prefill - 1;
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
      sa_kv_seq_add(kv, id);
      sa_decoder_batch_t b = {.n_seqs = 1, .seq_ids = &id, .n_new = &n,
                              .tokens = tok, .n_logits = 1,
                              .logit_rows = &row, .logits = logits};
      double s0 = sa_bench_now();
      int rc = sa_decoder_step(dec, kv, &b);
      double dt = sa_bench_now() - s0;
      sa_kv_free(kv, id);
      if (rc) {
        fprintf(stderr, "bench-decode: prefill: %s\n", sa_strerror(rc));
        return 1;
      }
      if (dt < best)
        best = dt;
    }
    double fl = 2.0 * (mparams - (double)V * H) * prefill + 2.0 * V * H;
    printf("prefill %d tokens: %.3f s (best of 3), %.0f tokens/s, %.1f "
           "GFLOP/s = %.0f%% of sgemm peak\n", prefill, best, prefill / best,
           fl / best / 1e9, 100.0 * fl / best / 1e9 / peak);
  }

  for (int bi = 0; bi < n_batches; bi++) {
    int B = batches[bi];
    for (int s = 0; s < B; s++) {
      ids[s] = (uint64_t)(bi * 1000 + s + 1);
      if (sa_kv_seq_add(kv, ids[s]))
        return 1;
      int32_t n = ctx, row = ctx - 1;
      sa_decoder_batch_t b = {.n_seqs = 1, .seq_ids = &ids[s], .n_new = &n,
                              .tokens = tok, .n_logits = 1,
                              .logit_rows = &row, .logits = logits};
      /* past PREFILL_MAX tokens the context is not computed (an O(ctx²)
       * prefill of 16k tokens would take minutes on a small CPU) but
       * written with rows of noise: a cache never written reads the
       * kernel's zero page, which sits in cache, and measures nothing
       * real */
      int rc = ctx > PREFILL_MAX ? fill_context(be, kv, ids[s], ctx, kvd, L)
                                 : sa_decoder_step(dec, kv, &b);
      if (rc) {
        fprintf(stderr, "bench-decode: context prefill: %s\n", sa_strerror(rc));
        return 1;
      }
    }
    for (int s = 0; s < B; s++) {
      nn[s] = 1;
      rows[s] = s;
    }
    for (int r = -2; r < steps; r++) { /* two warm-up steps */
      sa_decoder_batch_t b = {.n_seqs = B, .seq_ids = ids, .n_new = nn,
                              .tokens = tok + 1, .n_logits = B,
                              .logit_rows = rows, .logits = logits};
      double s0 = sa_bench_now();
      int rc = sa_decoder_step(dec, kv, &b);
      double dt = sa_bench_now() - s0;
      if (rc) {
        fprintf(stderr, "bench-decode: decode: %s\n", sa_strerror(rc));
        return 1;
      }
      if (r >= 0)
        ts[r] = dt;
    }
    double med = sa_bench_median(ts, steps);
    double avg_ctx = ctx + 2 + steps / 2.0;
    double kvbytes = (double)B * avg_ctx * (double)sa_kv_row_bytes(ko.kv_type, kvd) * 2.0 * L;
    double bytes = (double)wbytes + kvbytes;
    double roof_bw = bytes / (bw.read_gbs * 1e9);
    double flops = 2.0 * mparams * B;
    double roof_fl = flops / (peak * 1e9);
    double roof = roof_bw > roof_fl ? roof_bw : roof_fl;
    double gf = flops / med / 1e9;
    printf("batch %2d: step %.2f ms, %.1f tokens/s, %.1f MB of weights read "
           "per token\n"
           "  reads %.1f MB/step (weights %.1f + KV %.1f): %.2f GB/s = %.0f%% "
           "of measured read bandwidth (bandwidth roofline %.2f ms)\n"
           "  matmul %.1f GFLOP/s = %.0f%% of sgemm peak (compute roofline "
           "%.2f ms)\n"
           "  achieved %.0f%% of the roofline max(bandwidth, compute) = %.2f "
           "ms\n",
           B, med * 1e3, B / med, wbytes / 1e6 / B, bytes / 1e6, wbytes / 1e6, kvbytes / 1e6,
           bytes / med / 1e9, 100.0 * roof_bw / med, roof_bw * 1e3, gf,
           100.0 * gf / peak, roof_fl * 1e3, 100.0 * roof / med, roof * 1e3);
    /* where the time goes: a few more steps with per-op timing */
    sa_decoder_profile(dec, 1);
    for (int r = 0; r < 4; r++) {
      sa_decoder_batch_t b = {.n_seqs = B, .seq_ids = ids, .n_new = nn,
                              .tokens = tok + 1, .n_logits = B,
                              .logit_rows = rows, .logits = logits};
      if (sa_decoder_step(dec, kv, &b))
        return 1;
    }
    sa_decoder_prof_t pr;
    sa_decoder_profile_read(dec, &pr);
    sa_decoder_profile(dec, 0);
    double tot = 0;
    for (int i = 0; i < SA_DEC_PROF_COUNT_; i++)
      tot += pr.seconds[i];
    printf("  per step by op (profiled, synced after each op; %.2f ms):",
           tot / pr.steps * 1e3);
    for (int i = 0; i < SA_DEC_PROF_COUNT_; i++)
      if (pr.seconds[i] / tot >= 0.005)
        printf(" %s %.2f ms (%.0f%%)", sa_decoder_prof_name(i),
               pr.seconds[i] / pr.steps * 1e3, 100.0 * pr.seconds[i] / tot);
    printf("\n");
    for (int s = 0; s < B; s++)
      sa_kv_free(kv, ids[s]);
  }

  if (profile) {
    struct {
      const char *name;
      int N, K, per_step;
    } sh[] = {
        {"qkv", qd + 2 * kvd, H, L},
        {"o_proj", H, qd, L},
        {"gate|up", 2 * c->intermediate_size, H, L},
        {"down", H, c->intermediate_size, L},
        {"lm_head", V, H, 1},
    };
    int Ms[2] = {1, 16};
    for (int mi = 0; mi < 2; mi++) {
      double total = 0;
      printf("profile M=%d (each shape alone, weights from DRAM):\n", Ms[mi]);
      for (size_t i = 0; i < sizeof sh / sizeof sh[0]; i++) {
        double t = time_matmul(be, Ms[mi], sh[i].N, sh[i].K, 21);
        double gbs = (double)sh[i].N * sh[i].K * 2 / t / 1e9;
        total += t * sh[i].per_step;
        printf("  %-8s %6dx%-5d %8.1f us  %6.2f GB/s (%3.0f%% of read bw) "
               "%7.1f GFLOP/s  x%d/step = %.2f ms\n", sh[i].name, sh[i].N,
               sh[i].K, t * 1e6, gbs, 100.0 * gbs / bw.read_gbs,
               2.0 * Ms[mi] * sh[i].N * sh[i].K / t / 1e9, sh[i].per_step,
               t * sh[i].per_step * 1e3);
      }
      printf("  matmuls alone: %.2f ms per step\n", total * 1e3);
    }
  }
  free(tok);
  free(logits);
  free(rows);
  free(ids);
  free(nn);
  free(ts);
  sa_kv_destroy(&kv);
  sa_decoder_destroy(&dec);
  sa_backend_destroy(&be);
  return 0;
}
