/*
 * bench-pipeline — decode throughput and inter-token latency of one process
 * against a pipeline of P sa-worker stages behind a real sa-coordinator on
 * loopback, with the same total thread count, on the small preset.
 *
 * Measured in one run:
 *  - the machine: memory bandwidth and OpenBLAS sgemm peak (sa_bench);
 *  - one activation hop: a raw ZeroMQ DEALER/ROUTER round trip of an [M, H]
 *    f32 frame to a forked process (hop.c);
 *  - one process: B sequences decoded by sa_decoder over all layers with T
 *    threads, LM head and greedy sampling on every row (inproc.c);
 *  - P stages: sa-coordinator + P sa-worker processes with T/P threads each
 *    (at least 1), B concurrent Coordinator/Submit requests (text only,
 *    greedy); each streamed token is timestamped (cluster.c). Throughput and
 *    latency are taken over the steady window in which all B requests are
 *    decoding (after each has streamed --warmup tokens, before the first one
 *    finishes): the coordinator prefills one request per micro-batch, so the
 *    B requests start one after another and each asks for enough tokens to
 *    overlap;
 *  - each stage's compute alone: its layer range in this process with its
 *    thread count at the micro-batch size the coordinator uses (B/P rows),
 *    so that the pipelined latency splits into compute and the rest.
 * Pipeline efficiency = pipelined tokens/s / one-process tokens/s at each B.
 * The machine is shared and its speed drifts, so each pipelined run is paired
 * with a one-process run just before it (the cluster idles meanwhile) and the
 * efficiency quoted is the median of the paired ratios over --repeats; other
 * figures are medians over the runs.
 */
#include "pipeline.h"

#include "chat.h"
#include "config.h"
#include "log.h"
#include "sa_bench.h"
#include "sa_error.h"
#include "testmodel.h"
#include "tokenizer.h"

#include <libgen.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_LIST 8

static void usage(FILE *f) {
  fprintf(f,
          "usage: bench-pipeline [options]\n"
          "\n"
          "Decode tokens/s and inter-token latency: one process (sa_decoder over all\n"
          "layers, T threads) vs P pipeline stages (sa-coordinator + P sa-worker\n"
          "processes on loopback, T/P threads each, requests over RPC), at each batch\n"
          "size; pipeline efficiency = pipelined / one-process tokens/s. Also prints the\n"
          "raw ZeroMQ cost of one activation hop, each stage's compute alone, memory\n"
          "bandwidth and sgemm peak, all measured in the same run.\n"
          "\n"
          "  --model DIR      checkpoint (default <build>/models/small-seed1, written with\n"
          "                   the small preset if absent)\n"
          "  --threads T      total compute threads (default 2)\n"
          "  --batches L      concurrent requests / batch sizes (default 1,32)\n"
          "  --stages L       pipeline depths (default 2,4)\n"
          "  --decode N       decode tokens timed per request (default 24)\n"
          "  --warmup N       decode tokens per request before timing (default 2)\n"
          "  --repeats N      runs of each configuration; medians quoted (default 5)\n"
          "  --prompt TEXT    user text of every request (default \"Hi\")\n"
          "  --split S        measured (layer ranges balanced by the compute time of a\n"
          "                   layer and of the LM head + sampling, timed in this\n"
          "                   process at the micro-batch size; default), weights\n"
          "                   (the LM head counted as layers of equal bytes) or even\n"
          "  --extra-microbatches N  micro-batches in flight beyond one per stage\n"
          "                   (sa-coordinator's option; default 0)\n"
          "  --hop-reps N     ZeroMQ round trips per payload size (default 300)\n"
          "  --quick          --decode 8 --repeats 1 --stages 2 --hop-reps 100\n"
          "  --keep-logs      keep the processes' logs (printed path)\n"
          "  --curve          run the cluster with CurveZMQ on every link (keys made\n"
          "                   for the run); default: --insecure plain text\n"
          "  -h, --help       this help\n");
}

static int parse_list(const char *s, int *v, int cap) {
  int n = 0;
  while (*s && n < cap) {
    char *end;
    long x = strtol(s, &end, 10);
    if (end == s || x <= 0 || x > 256 || (*end && *end != ','))
      return -1;
    v[n++] = (int)x;
    s = *end == ',' ? end + 1 : end;
  }
  return *s ? -1 : n;
}

static void print_load(const char *when) {
  double la[3] = {0, 0, 0};
  if (getloadavg(la, 3) == 3)
    printf("load average %s: %.2f %.2f %.2f (%d CPUs)\n", when, la[0], la[1], la[2],
           sa_bench_cpus());
}

/* Splits L layers into P ranges minimising the largest stage cost, where a
 * layer costs 1 and the last stage also pays `head` (LM head in layers). */
static void split_layers(int L, int P, double head, int balanced, int *first, int *last) {
  if (!balanced || P == 1) {
    for (int s = 0; s < P; s++) {
      first[s] = L * s / P;
      last[s] = L * (s + 1) / P;
    }
    return;
  }
  /* best[s][l]: min over splits of layers [0,l) into s stages of max cost */
  double best[BP_MAX_STAGES + 1][257];
  int cut[BP_MAX_STAGES + 1][257];
  for (int s = 0; s <= P; s++)
    for (int l = 0; l <= L; l++)
      best[s][l] = 1e30;
  best[0][0] = 0;
  for (int s = 1; s <= P; s++)
    for (int l = s; l <= L; l++)
      for (int k = s - 1; k < l; k++) {
        double c = (double)(l - k) + (s == P && l == L ? head : 0);
        double m = best[s - 1][k] > c ? best[s - 1][k] : c;
        if (m < best[s][l]) {
          best[s][l] = m;
          cut[s][l] = k;
        }
      }
  int l = L;
  for (int s = P; s >= 1; s--) {
    last[s - 1] = l;
    first[s - 1] = cut[s][l];
    l = cut[s][l];
  }
}

typedef struct {
  double tps;     /* steady-window tokens/s */
  double *gaps;   /* inter-token gaps in the window */
  int n_gaps;
  int window_tokens;
  double window_s, ta, tb;
} window_t;

/* The steady window of one run: every request has streamed more than
 * `warm` tokens and none has finished. Returns 0 or SA_ERANGE if the
 * requests did not overlap. */
static int steady_window(const bp_req_t *r, int B, int warm, window_t *w) {
  double ta = -1e30, tb = 1e30;
  for (int i = 0; i < B; i++) {
    if (r[i].n_tok <= warm + 1)
      return SA_ERANGE;
    if (r[i].t_tok[warm] > ta)
      ta = r[i].t_tok[warm];
    if (r[i].t_tok[r[i].n_tok - 1] < tb)
      tb = r[i].t_tok[r[i].n_tok - 1];
  }
  if (tb <= ta)
    return SA_ERANGE;
  int cnt = 0;
  for (int i = 0; i < B; i++)
    for (int k = 0; k < r[i].n_tok; k++) {
      double t = r[i].t_tok[k];
      if (t > ta && t <= tb)
        cnt++;
      if (k > 0 && r[i].t_tok[k - 1] >= ta && t <= tb)
        w->gaps[w->n_gaps++] = t - r[i].t_tok[k - 1];
    }
  w->tps = cnt / (tb - ta);
  w->ta = ta;
  w->tb = tb;
  w->window_tokens = cnt;
  w->window_s = tb - ta;
  return 0;
}

/* Rows of a micro-batch when B sequences decode over P stages with `extra`
 * micro-batches beyond one per stage (as sa-coordinator splits them). */
static int mb_rows(int B, int P, int extra) { return (B + P + extra - 1) / (P + extra); }

/* The LM head (+ greedy sampling) of the last stage in units of one layer's
 * decode compute, timed in this process: layers [0, L/2) and then the last
 * layer with the head, `rows` sequences, `threads` threads, medians of a few
 * steps. By weights alone the head looks heavier than it runs: a layer also
 * pays attention, norms and activations. The two are timed in alternation,
 * ROUNDS times, and the median ratio is taken: on a shared machine one timing
 * taken during a slow phase once made the head look 11.5 layers instead of
 * ~9 and gave an 18:6 split that left the first stage 10% heavier. */
static int measure_head(const bp_inproc_opts_t *io, int L, int rows, int threads,
                        double *head) {
  enum { STEPS = 5, ROUNDS = 5 };
  bp_inproc_opts_t o = *io;
  o.warmup = 1;
  o.steps = STEPS;
  o.sample_s = NULL;
  double st[STEPS], tps, ratio[ROUNDS], layer_ms[ROUNDS], head_ms[ROUNDS];
  int half = L / 2 > 0 ? L / 2 : 1;
  if (half >= L) { /* one layer: nothing to split */
    *head = 0;
    return 0;
  }
  for (int r = 0; r < ROUNDS; r++) {
    if (bp_inproc_decode(&o, 0, half, threads, rows, 1, st, &tps))
      return 1;
    double layer = sa_bench_median(st, STEPS) / half;
    if (bp_inproc_decode(&o, L - 1, L, threads, rows, 1, st, &tps))
      return 1;
    double last = sa_bench_median(st, STEPS);
    ratio[r] = last / layer - 1 > 0 ? last / layer - 1 : 0;
    layer_ms[r] = layer * 1e3;
    head_ms[r] = (last - layer) * 1e3;
  }
  double lo = ratio[0], hi = ratio[0];
  for (int r = 1; r < ROUNDS; r++) {
    lo = ratio[r] < lo ? ratio[r] : lo;
    hi = ratio[r] > hi ? ratio[r] : hi;
  }
  *head = sa_bench_median(ratio, ROUNDS);
  printf("measured split cost (%d rows, %d thread(s), median of %d alternating rounds): a "
         "layer %.2f ms, LM head + sampling %.2f ms = %.2f layers (rounds %.2f..%.2f)\n",
         rows, threads, ROUNDS, sa_bench_median(layer_ms, ROUNDS),
         sa_bench_median(head_ms, ROUNDS), *head, lo, hi);
  return 0;
}

static double dmedian(const double *v, int n) {
  double *c = malloc(sizeof(double) * (size_t)(n ? n : 1));
  if (!c)
    return NAN;
  memcpy(c, v, sizeof(double) * (size_t)n);
  double m = sa_bench_median(c, n);
  free(c);
  return m;
}

static void on_signal(int sig) {
  bp_cluster_stop_all();
  signal(sig, SIG_DFL);
  raise(sig);
}

/* results per (configuration, batch) */
typedef struct {
  double tps, itl_med, itl_p99;
  double eff; /* median of per-repeat pipelined / one-process ratios */
  double eff_lo, eff_hi; /* their range */
  int ok;
} res_t;

int main(int argc, char **argv) {
  setenv("SA_LOG_LEVEL", "warn", 0); /* no per-backend info lines */
  sa_log_init("bench-pipeline");
  const char *model = NULL, *prompt = "Hi", *split = "measured";
  int threads = 2, decode = 24, warm = 2, reps = 5, hop_reps = 300, quick = 0, keep = 0;
  int batches[MAX_LIST] = {1, 32}, n_batches = 2, stages[MAX_LIST] = {2, 4}, n_stages = 2;
  int extra_mb = 0, curve = 0;
  int stages_set = 0, decode_set = 0, reps_set = 0, hop_set = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--quick")) {
      quick = 1;
    } else if (!strcmp(a, "--keep-logs")) {
      keep = 1;
    } else if (!strcmp(a, "--curve")) {
      curve = 1;
    } else if (v && !strcmp(a, "--model")) {
      model = v, i++;
    } else if (v && !strcmp(a, "--prompt")) {
      prompt = v, i++;
    } else if (v && !strcmp(a, "--split")) {
      split = v, i++;
    } else if (v && !strcmp(a, "--threads")) {
      threads = atoi(v), i++;
    } else if (v && !strcmp(a, "--decode")) {
      decode = atoi(v), decode_set = 1, i++;
    } else if (v && !strcmp(a, "--warmup")) {
      warm = atoi(v), i++;
    } else if (v && !strcmp(a, "--repeats")) {
      reps = atoi(v), reps_set = 1, i++;
    } else if (v && !strcmp(a, "--extra-microbatches")) {
      extra_mb = atoi(v), i++;
    } else if (v && !strcmp(a, "--hop-reps")) {
      hop_reps = atoi(v), hop_set = 1, i++;
    } else if (v && !strcmp(a, "--batches")) {
      if ((n_batches = parse_list(v, batches, MAX_LIST)) <= 0)
        goto bad;
      i++;
    } else if (v && !strcmp(a, "--stages")) {
      if ((n_stages = parse_list(v, stages, MAX_LIST)) <= 0)
        goto bad;
      stages_set = 1;
      i++;
    } else {
      goto bad;
    }
  }
  if (quick) {
    if (!decode_set)
      decode = 8;
    if (!reps_set)
      reps = 1;
    if (!stages_set)
      stages[0] = 2, n_stages = 1;
    if (!hop_set)
      hop_reps = 100;
  }
  if (threads < 1 || decode < 2 || warm < 0 || reps < 1 || hop_reps < 1 || extra_mb < 0 ||
      extra_mb > 64 ||
      (strcmp(split, "measured") && strcmp(split, "weights") && strcmp(split, "even")))
    goto bad;
  for (int i = 0; i < n_stages; i++)
    if (stages[i] > BP_MAX_STAGES)
      goto bad;
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  atexit(bp_cluster_stop_all);

  /* ---- the model ---- */
  char mdir[1024], err[512] = "";
  if (!model) {
    snprintf(mdir, sizeof mdir, "%s/models/small-seed1", SA_BINARY_DIR);
    char probe[1100];
    snprintf(probe, sizeof probe, "%s/model.safetensors", mdir);
    struct stat sb;
    if (stat(probe, &sb) != 0) {
      printf("writing the small preset to %s ...\n", mdir);
      fflush(stdout);
      if (sa_testmodel_write("small", 1, mdir, err, sizeof err)) {
        fprintf(stderr, "bench-pipeline: init: %s\n", err);
        return 1;
      }
    }
    model = mdir;
  }
  sa_model_config_t cfg;
  if (sa_config_load(model, &cfg, err, sizeof err)) {
    fprintf(stderr, "bench-pipeline: %s\n", err);
    return 1;
  }
  int H = cfg.hidden_size, L = cfg.num_hidden_layers, V = cfg.vocab_size;
  int kvd = cfg.num_key_value_heads * cfg.head_dim, qd = cfg.num_attention_heads * cfg.head_dim;
  double layer_params = (double)H * (qd + 2 * kvd) + (double)qd * H + 3.0 * H * cfg.intermediate_size;
  double head_layers = (double)V * H / layer_params;

  /* the prompt, built as the coordinator builds it */
  sa_tokenizer_t *tok = sa_tokenizer_load(model, err, sizeof err);
  if (!tok) {
    fprintf(stderr, "bench-pipeline: tokenizer: %s\n", err);
    return 1;
  }
  sa_chat_part_t part = {.kind = SA_CHAT_PART_TEXT, .text = prompt, .text_len = strlen(prompt)};
  sa_chat_prompt_t cp;
  if (sa_chat_build(tok, NULL, &part, 1, 0, &cp, err, sizeof err)) {
    fprintf(stderr, "bench-pipeline: prompt: %s\n", err);
    return 1;
  }
  sa_tokenizer_destroy(&tok);
  int max_batch = 1, max_p = 1;
  for (int i = 0; i < n_batches; i++)
    max_batch = batches[i] > max_batch ? batches[i] : max_batch;
  for (int i = 0; i < n_stages; i++)
    max_p = stages[i] > max_p ? stages[i] : max_p;

  printf("bench-pipeline: model %s: hidden %d, %d layers, vocab %d; LM head = %.1f layers "
         "of weights\n", model, H, L, V, head_layers);
  printf("prompt %zu tokens (\"%s\" in the chat template); %d warm-up + %d timed decode tokens "
         "per request; %d repeat(s); %d threads in all\n", cp.n_ids, prompt, warm, decode, reps,
         threads);
  print_load("at start");

  /* ---- the machine ---- */
  sa_bench_bw_t bw;
  if (sa_bench_mem_bandwidth(threads, 0, 0, &bw)) {
    fprintf(stderr, "bench-pipeline: bandwidth measurement failed\n");
    return 1;
  }
  double peak = sa_bench_sgemm_peak(threads);
  printf("machine: memory read %.2f GB/s (%s), copy %.2f GB/s (%zu MiB, %d threads); "
         "OpenBLAS sgemm peak %.1f GFLOP/s (%d threads)\n", bw.read_gbs, bw.read_how,
         bw.copy_gbs, bw.bytes >> 20, bw.threads, peak, threads);
  fflush(stdout);

  /* ---- one hop: raw ZeroMQ round trips ---- */
  int rows_set[2 * MAX_LIST * MAX_LIST + 1], n_rows = 0;
  for (int bi = 0; bi < n_batches; bi++)
    for (int pi = -1; pi < n_stages; pi++) {
      int m = pi < 0 ? batches[bi] : mb_rows(batches[bi], stages[pi], extra_mb);
      int dup = 0;
      for (int k = 0; k < n_rows; k++)
        dup |= rows_set[k] == m;
      if (!dup)
        rows_set[n_rows++] = m;
    }
  bp_hop_t hops[2 * MAX_LIST * MAX_LIST + 1];
  printf("one hop, raw ZeroMQ DEALER -> ROUTER (another process) over tcp loopback%s, %d round "
         "trips each:\n", curve ? ", CurveZMQ" : "", hop_reps);
  for (int k = 0; k < n_rows; k++) {
    size_t bytes = (size_t)rows_set[k] * H * sizeof(float);
    if (bp_hop_measure(bytes, hop_reps, curve, &hops[k])) {
      fprintf(stderr, "bench-pipeline: ZeroMQ round trip failed\n");
      return 1;
    }
    printf("  [%2d, %d] f32 (%6.1f KiB): payload + 8-byte ack %6.1f us (p99 %6.1f); payload "
           "both ways %6.1f us (p99 %6.1f) -> one way ~%.1f us\n", rows_set[k], H, bytes / 1024.0,
           hops[k].rtt_ack_med * 1e6, hops[k].rtt_ack_p99 * 1e6, hops[k].rtt_echo_med * 1e6,
           hops[k].rtt_echo_p99 * 1e6, hops[k].rtt_echo_med * 0.5e6);
  }
  fflush(stdout);

  /* ---- one process: run beside each pipelined run (see below) ---- */
  bp_inproc_opts_t io = {.model_dir = model, .prompt = cp.ids, .prompt_len = (int)cp.n_ids,
                         .warmup = warm, .steps = decode};
  int n_single_max = reps * n_stages;
  double *steps = malloc(sizeof(double) * (size_t)n_single_max * decode * n_batches);
  double *stps = malloc(sizeof(double) * (size_t)n_single_max * n_batches);
  double *tps = malloc(sizeof(double) * (size_t)reps);
  double *ratio = malloc(sizeof(double) * (size_t)reps);
  int n_single[MAX_LIST] = {0};
  if (!steps || !stps || !tps || !ratio)
    return 1;

  /* ---- pipelines ---- */
  char tmpl[] = "/tmp/bench-pipeline.XXXXXX";
  char *tdir = mkdtemp(tmpl);
  if (!tdir) {
    perror("bench-pipeline: mkdtemp");
    return 1;
  }
  bp_cluster_opts_t co;
  memset(&co, 0, sizeof co);
  char exe[1024];
  ssize_t el = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (el > 0) {
    exe[el] = 0;
    snprintf(co.bin_dir, sizeof co.bin_dir, "%s", dirname(exe));
  } else {
    snprintf(co.bin_dir, sizeof co.bin_dir, "%s/bin", SA_BINARY_DIR);
  }
  snprintf(co.model_dir, sizeof co.model_dir, "%s", model);
  snprintf(co.coord_model, sizeof co.coord_model, "%s/coord-model", tdir);
  snprintf(co.log_dir, sizeof co.log_dir, "%s", tdir);
  co.kv_mem = "128MiB";
  co.extra_microbatches = extra_mb;
  co.curve = curve;
  if (bp_coord_model_write(model, co.coord_model, V)) {
    fprintf(stderr, "bench-pipeline: cannot write the coordinator's tokenizer\n");
    return 1;
  }
  res_t piped[MAX_LIST][MAX_LIST];
  double comp[MAX_LIST][MAX_LIST][BP_MAX_STAGES]; /* stage compute per step, s */
  double samp[MAX_LIST][MAX_LIST];                  /* last stage's sampling, s */
  double busy[MAX_LIST][MAX_LIST][BP_MAX_STAGES];   /* busy fraction in the window */
  int n_busy[MAX_LIST][MAX_LIST];
  static bp_load_t loads[4096];
  int n_loads = 0;
  memset(busy, 0, sizeof busy);
  memset(n_busy, 0, sizeof n_busy);
  memset(piped, 0, sizeof piped);
  memset(comp, 0, sizeof comp);
  int tpstage[MAX_LIST];
  bp_req_t *reqs = calloc((size_t)max_batch, sizeof *reqs);
  double *gaps = malloc(sizeof(double) * (size_t)reps * max_batch * (decode + max_batch + warm + 8));
  if (!reqs || !gaps)
    return 1;
  for (int pi = 0; pi < n_stages; pi++) {
    int P = stages[pi];
    co.n_stages = P;
    co.threads_per_stage = threads / P > 0 ? threads / P : 1;
    tpstage[pi] = co.threads_per_stage;
    double head = head_layers;
    if (!strcmp(split, "measured") && P > 1) {
      int rows = mb_rows(max_batch, P, extra_mb);
      if (measure_head(&io, L, rows, co.threads_per_stage, &head))
        return 1;
    }
    split_layers(L, P, head, strcmp(split, "even") != 0, co.first, co.last);
    printf("%d stages (%s split:", P, split);
    for (int s = 0; s < P; s++)
      printf(" %d:%d", co.first[s], co.last[s]);
    printf("), %d thread(s) per stage", co.threads_per_stage);
    if (P * co.threads_per_stage > sa_bench_cpus())
      printf(" -- %d single-thread stages OVERSUBSCRIBE %d cores", P, sa_bench_cpus());
    printf("; plus the coordinator and this client:\n");
    print_load("  before starting");
    fflush(stdout);
    static bp_cluster_t cl; /* static: the atexit handler may stop it after main returns */
    double t0 = sa_bench_now();
    if (bp_cluster_start(&co, 180, &cl))
      return 1;
    printf("  cluster ready in %.1f s at %s\n", sa_bench_now() - t0, cl.endpoint);
    /* warm-up: page in the weights, start the threads */
    if (bp_cluster_submit(cl.endpoint, prompt, 4, 1, 120, reqs, NULL, 0, NULL)) {
      fprintf(stderr, "bench-pipeline: warm-up request failed (logs in %s)\n", tdir);
      keep = 1;
      bp_cluster_stop(&cl);
      bp_reqs_free(reqs, 1);
      return 1;
    }
    bp_reqs_free(reqs, 1);
    for (int bi = 0; bi < n_batches; bi++) {
      int B = batches[bi];
      /* request i starts about i/P micro-batch rounds after request 0 */
      int ramp = B > 1 ? (B + P - 1) / P + 2 : 0;
      int max_tokens = warm + ramp + decode;
      double *rt = tps;
      window_t w = {.gaps = gaps};
      int ok = 1;
      for (int r = 0; r < reps && ok; r++) {
        /* one process first, at the same moment of the machine's load: the
         * efficiency is the median of these paired ratios */
        int si = bi * n_single_max + n_single[bi];
        if (bp_inproc_decode(&io, 0, -1, threads, B, 1, steps + (size_t)si * decode, &stps[si]))
          return 1;
        n_single[bi]++;
        if (bp_cluster_submit(cl.endpoint, prompt, max_tokens, B, 300, reqs, loads, 4096,
                              &n_loads)) {
          fprintf(stderr, "bench-pipeline: %d-stage run at batch %d failed (logs in %s)\n", P,
                  B, tdir);
          keep = 1;
          ok = 0;
        } else {
          window_t one = {.gaps = gaps + w.n_gaps};
          if (steady_window(reqs, B, warm, &one)) {
            fprintf(stderr, "bench-pipeline: the %d requests never all decoded at once\n", B);
            ok = 0;
          } else {
            rt[r] = one.tps;
            ratio[r] = one.tps / stps[si];
            w.n_gaps += one.n_gaps;
            /* a heartbeat's load covers the second before it */
            for (int q = 0; q < n_loads; q++)
              if (loads[q].t >= one.ta + 1.2 && loads[q].t <= one.tb) {
                for (int st = 0; st < P; st++)
                  busy[pi][bi][st] += loads[q].load[st];
                n_busy[pi][bi]++;
              }
            if (r == 0)
              printf("  batch %2d: %d tokens per request; steady window %.2f s, %d tokens",
                     B, max_tokens, one.window_s, one.window_tokens);
          }
        }
        bp_reqs_free(reqs, B);
      }
      if (ok) {
        piped[pi][bi].eff = dmedian(ratio, reps);
        piped[pi][bi].eff_lo = piped[pi][bi].eff_hi = ratio[0];
        for (int r = 1; r < reps; r++) {
          piped[pi][bi].eff_lo = ratio[r] < piped[pi][bi].eff_lo ? ratio[r] : piped[pi][bi].eff_lo;
          piped[pi][bi].eff_hi = ratio[r] > piped[pi][bi].eff_hi ? ratio[r] : piped[pi][bi].eff_hi;
        }
        piped[pi][bi].tps = dmedian(rt, reps);
        piped[pi][bi].itl_med = sa_bench_median(w.gaps, w.n_gaps);
        piped[pi][bi].itl_p99 = sa_bench_p99(w.gaps, w.n_gaps);
        piped[pi][bi].ok = 1;
        printf(" -> %7.2f tokens/s, inter-token %7.1f ms (p99 %7.1f)\n",
               piped[pi][bi].tps, piped[pi][bi].itl_med * 1e3, piped[pi][bi].itl_p99 * 1e3);
        printf("            per repeat: one process / pipelined tokens/s:");
        for (int r = 0; r < reps; r++)
          printf(" %.2f/%.2f", stps[bi * n_single_max + n_single[bi] - reps + r], rt[r]);
        printf("\n");
      }
      fflush(stdout);
    }
    print_load("  after the runs");
    bp_cluster_stop(&cl);
    /* each stage's compute alone, at the coordinator's micro-batch size */
    printf("  each stage alone in this process (%d thread(s), micro-batch rows = B/%d):\n",
           co.threads_per_stage, P + extra_mb);
    bp_inproc_opts_t so = io;
    double sst[5];
    so.warmup = 1;
    so.steps = 5;
    for (int bi = 0; bi < n_batches; bi++) {
      int m = mb_rows(batches[bi], P, extra_mb);
      printf("    batch %2d (micro-batch %2d):", batches[bi], m);
      for (int s = 0; s < P; s++) {
        double st[5], tp;
        so.sample_s = s == P - 1 ? sst : NULL;
        if (bp_inproc_decode(&so, co.first[s], co.last[s] == L ? -1 : co.last[s],
                             co.threads_per_stage, m, 1, st, &tp))
          return 1;
        comp[pi][bi][s] = dmedian(st, 5);
        printf(" stage %d %.1f ms", s, comp[pi][bi][s] * 1e3);
      }
      samp[pi][bi] = dmedian(sst, 5);
      printf(" (of which greedy sampling of %d rows %.1f ms)\n", m, samp[pi][bi] * 1e3);
      fflush(stdout);
    }
  }

  /* ---- summary ---- */
  res_t single[MAX_LIST];
  for (int bi = 0; bi < n_batches; bi++) {
    int n = n_single[bi];
    double *st = stps + (size_t)bi * n_single_max;
    double *sv = steps + (size_t)bi * n_single_max * decode;
    single[bi].tps = n ? dmedian(st, n) : NAN;
    single[bi].itl_med = n ? dmedian(sv, n * decode) : NAN;
    single[bi].itl_p99 = n ? sa_bench_p99(sv, n * decode) : NAN;
    single[bi].ok = n > 0;
  }
  printf("\nsummary (medians; tokens/s = all requests together; inter-token = per request;\n"
         "efficiency = median over repeats of pipelined / one-process tokens/s, each pair run\n"
         "back to back; one process: %d threads, over all its runs)\n", threads);
  printf("  %-28s %5s %10s %10s %10s %10s\n", "configuration", "batch", "tokens/s", "ITL ms",
         "ITL p99", "efficiency");
  for (int bi = 0; bi < n_batches; bi++) {
    printf("  %-28s %5d %10.2f %10.1f %10.1f %10s\n", "1 process", batches[bi],
           single[bi].tps, single[bi].itl_med * 1e3, single[bi].itl_p99 * 1e3, "1");
    for (int pi = 0; pi < n_stages; pi++) {
      char name[64];
      snprintf(name, sizeof name, "%d stages x %d thread(s)%s", stages[pi], tpstage[pi],
               stages[pi] * tpstage[pi] > sa_bench_cpus() ? " (!)" : "");
      if (!piped[pi][bi].ok) {
        printf("  %-28s %5d %10s\n", name, batches[bi], "failed");
        continue;
      }
      printf("  %-28s %5d %10.2f %10.1f %10.1f %10.3f\n", name, batches[bi], piped[pi][bi].tps,
             piped[pi][bi].itl_med * 1e3, piped[pi][bi].itl_p99 * 1e3, piped[pi][bi].eff);
    }
  }
  for (int pi = 0; pi < n_stages; pi++)
    if (stages[pi] * tpstage[pi] > sa_bench_cpus()) {
      printf("  (!) %d stages x %d thread(s) oversubscribe the %d cores\n", stages[pi],
             tpstage[pi], sa_bench_cpus());
      break;
    }
  printf("\nwhere the pipelined time goes (per token of one request, ms):\n");
  for (int pi = 0; pi < n_stages; pi++)
    for (int bi = 0; bi < n_batches; bi++) {
      if (!piped[pi][bi].ok)
        continue;
      int P = stages[pi], B = batches[bi], m = mb_rows(B, P, extra_mb);
      int k = (B + m - 1) / m; /* micro-batches in flight */
      double sum = 0, mx = 0;
      for (int s = 0; s < P; s++) {
        sum += comp[pi][bi][s];
        mx = comp[pi][bi][s] > mx ? comp[pi][bi][s] : mx;
      }
      double ideal = sum > k * mx ? sum : k * mx;
      double itl = piped[pi][bi].itl_med;
      int hk = 0;
      for (int q = 0; q < n_rows; q++)
        if (rows_set[q] == m)
          hk = q;
      printf("  %d stages, batch %2d: %d micro-batch(es) of %d in flight; stage compute sum "
             "%.1f, slowest %.1f -> ideal %.1f (%.2f tokens/s = %.3f of one process); measured "
             "%.1f; rest %.1f (%.0f%%)",
             P, B, k, m, sum * 1e3, mx * 1e3, ideal * 1e3, B / ideal, B / ideal / single[bi].tps,
             itl * 1e3, (itl - ideal) * 1e3, 100.0 * (itl - ideal) / itl);
      if (k == 1)
        printf("; over %d sends + %d replies = %.2f ms each vs raw ZeroMQ one way %.3f ms",
               P, P, (itl - ideal) / (2 * P) * 1e3, hops[hk].rtt_echo_med * 0.5e3);
      printf("\n");
      if (n_busy[pi][bi] == 0) {
        printf("    stage busy fractions: no heartbeat inside the steady window (raise --decode)\n");
        continue;
      }
      printf("    stage busy (worker heartbeats, %d samples): ", n_busy[pi][bi]);
      double fsum = 0;
      for (int s = 0; s < P; s++) {
        fsum += busy[pi][bi][s] / n_busy[pi][bi];
        double f = busy[pi][bi][s] / n_busy[pi][bi];
        double alone = k * comp[pi][bi][s];
        printf("%sstage %d %.0f%% = %.1f ms/token computing (%.1f alone, x%.2f), %.1f idle",
               s ? "; " : "", s, 100 * f, f * itl * 1e3, alone * 1e3, f * itl / alone,
               (1 - f) * itl * 1e3);
      }
      printf("\n");
      if (k == 1) { /* one micro-batch: a stage computes or the batch is between stages */
        double gap = (1 - fsum) * itl, msg = (gap - samp[pi][bi]) / (2 * P);
        printf("    no stage computing: %.1f ms per token = the last stage's sampling %.1f ms "
               "(outside the busy time) + %.2f ms per message (%d sends + %d replies, the "
               "coordinator included; heartbeat busy fractions are +-~2%%)\n",
               gap * 1e3, samp[pi][bi] * 1e3, msg * 1e3, P, P);
      }
      else
        printf("    per cycle of %d micro-batches the last stage also samples %d rows: %.1f ms "
               "(counted idle above)\n", k, B, k * samp[pi][bi] * 1e3);
    }
  for (int bi = 0; bi < n_batches; bi++)
    for (int pi = 0; pi < n_stages; pi++)
      if (stages[pi] == 2 && batches[bi] == 32 && piped[pi][bi].ok)
        printf("\ntarget: efficiency at batch 32 over 2 stages = %.3f (pairs %.3f..%.3f over %d "
               "repeats; goal >= 0.9): %s\n",
               piped[pi][bi].eff, piped[pi][bi].eff_lo, piped[pi][bi].eff_hi, reps,
               piped[pi][bi].eff >= 0.9 ? "met" : "NOT met");
  print_load("at the end");
  if (keep) {
    printf("logs kept in %s\n", tdir);
  } else {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tdir);
    if (system(cmd) != 0)
      fprintf(stderr, "bench-pipeline: could not remove %s\n", tdir);
  }
  sa_chat_prompt_free(&cp);
  free(steps);
  free(stps);
  free(tps);
  free(ratio);
  free(reqs);
  free(gaps);
  return 0;
bad:
  usage(stderr);
  return 2;
}
