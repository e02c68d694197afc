/*
 * bench-cot — speculative long-CoT batching (docs/architecture.md §5) measured end to end
 * on loopback: sa-coordinator and two sa-worker stages (a 2-stage pipeline)
 * on the small preset (Qwen2.5-0.5B-sized), driven by sa-client processes.
 *
 * For each n in --chains (default 1,2,4,8,16):
 *   chains       one request with n chains (one prefill, forked KV);
 *   independent  n concurrent requests of one chain each (n prefills).
 * Printed per run: the prompt tokens prefilled, tokens generated, elapsed
 * time, aggregate decode tokens/s and per chain for the chains runs —
 * (generated - n) / (elapsed - t1), where t1 is the elapsed time of a
 * max_tokens = 1 request of the same prompt (prefill + first step), measured
 * once before — end-to-end tokens/s (generated / elapsed), and the peak KV
 * blocks in use per stage from Coordinator/Status polled every 20 ms (the
 * last stage's figure is fresh from every step; others come with 1 s
 * heartbeats). A last pair of runs uses a long prompt and short chains to
 * compare the KV blocks of n = 8 chains with those of n = 1.
 *
 * The machine's own limits (memory bandwidth, OpenBLAS sgemm peak) are
 * measured first, and the bandwidth ceiling of one decode step (every weight
 * byte read once per step, bf16 as on disk) is printed beside n = 1.
 *
 * Not a test: figures depend on the machine. A CLI: it may allocate, print
 * and exit.
 */
#include "log.h"
#include "rpc.h"
#include "sa.pb-c.h"
#include "sa_bench.h"
#include "sa_error.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CHILDREN 64
#define MAX_STAGES 8

static pid_t g_services[8];
static int g_n_services;
static char g_tmp[256];

static void usage(FILE *f) {
  fprintf(f,
          "usage: bench-cot [--model DIR] [--bin DIR] [--chains 1,2,4,8,16]\n"
          "                 [--prompt-tokens N] [--max-tokens N]\n"
          "                 [--kv-prompt-tokens N] [--kv-max-tokens N]\n"
          "                 [--no-independent] [--no-limits]\n"
          "  --model DIR           checkpoint (default <build>/models/small-seed1,\n"
          "                        written with sa-model init --preset small if absent)\n"
          "  --bin DIR             sa-coordinator, sa-worker, sa-client, sa-model\n"
          "                        (default <build>/bin)\n"
          "  --chains L            chain counts to run (default 1,2,4,8,16)\n"
          "  --prompt-tokens N     prompt length of the throughput runs (about 400)\n"
          "  --max-tokens N        tokens per chain (32)\n"
          "  --kv-prompt-tokens N  prompt of the KV comparison, n = 1 vs 8 (1200;\n"
          "                        0 = skip it)\n"
          "  --kv-max-tokens N     tokens per chain there (16)\n"
          "  --no-independent      skip the n independent requests\n"
          "  --no-limits           skip measuring bandwidth and sgemm peak\n"
          "  --state                the coordinator journals (--state in a temporary\n"
          "                        folder): run with and without it for the journal's\n"
          "                        cost in decode tokens/s (the fdatasync floor is\n"
          "                        printed)\n"
          "Workers run with 1 thread each. Default run: a few minutes on 2 cores.\n");
}

static int parse_list(const char *s, int *v, int cap) {
  int n = 0;
  while (*s && n < cap) {
    char *end;
    long x = strtol(s, &end, 10);
    if (end == s || x <= 0 || x > 64)
      return -1;
    v[n++] = (int)x;
    if (*end && *end != ',')
      return -1;
    s = *end == ',' ? end + 1 : end;
  }
  return n;
}

/* ------------------------------------------------------------- processes */

/* Starts argv[0] with stdout and stderr to `out` (or /dev/null). */
static pid_t spawn(char *const argv[], const char *out) {
  pid_t pid = fork();
  if (pid < 0) {
    perror("bench-cot: fork");
    return -1;
  }
  if (pid == 0) {
    int fd = open(out ? out : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    execv(argv[0], argv);
    _exit(127);
  }
  return pid;
}

static void stop_services(void) {
  for (int i = 0; i < g_n_services; i++)
    kill(g_services[i], SIGTERM);
  for (int i = 0; i < g_n_services; i++)
    waitpid(g_services[i], NULL, 0);
  g_n_services = 0;
}

static void on_signal(int sig) {
  (void)sig;
  for (int i = 0; i < g_n_services; i++)
    kill(g_services[i], SIGTERM);
  _exit(130);
}

static int run_wait(char *const argv[]) {
  pid_t p = spawn(argv, NULL);
  int st = 0;
  if (p < 0 || waitpid(p, &st, 0) < 0)
    return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* --------------------------------------------------------------- status */

typedef struct {
  int n;
  char node[MAX_STAGES][64];
  int first_layer[MAX_STAGES];
  int64_t used[MAX_STAGES], shared[MAX_STAGES];
  int replicas_ready;
} status_t;

static int get_status(const char *coord, status_t *out) {
  Sa__StatusRequest rq = SA__STATUS_REQUEST__INIT;
  uint8_t buf[16];
  size_t len = sa__status_request__pack(&rq, buf);
  sa_rpc_reply_t *rep = NULL;
  int rc = sa_rpc_call_sync(coord, NULL, "Coordinator/Status", buf, len, NULL, 0, 2000, &rep);
  if (rc)
    return rc;
  if (rep->status != SA_STATUS_OK) {
    sa_rpc_reply_free(&rep);
    return SA_EUNAVAIL;
  }
  Sa__StatusResponse *st = sa__status_response__unpack(NULL, rep->body_len, rep->body);
  sa_rpc_reply_free(&rep);
  if (!st)
    return SA_EPROTO;
  memset(out, 0, sizeof *out);
  out->replicas_ready = st->replicas_ready;
  for (size_t i = 0; i < st->n_workers && out->n < MAX_STAGES; i++) {
    const Sa__WorkerInfo *w = st->workers[i];
    if (w->role != SA__ROLE__ROLE_STAGE)
      continue;
    /* keep the stages in layer order */
    int k = out->n++;
    while (k > 0 && out->first_layer[k - 1] > w->first_layer) {
      out->first_layer[k] = out->first_layer[k - 1];
      out->used[k] = out->used[k - 1];
      out->shared[k] = out->shared[k - 1];
      memcpy(out->node[k], out->node[k - 1], sizeof out->node[k]);
      k--;
    }
    snprintf(out->node[k], sizeof out->node[k], "%s", w->node_id);
    out->first_layer[k] = w->first_layer;
    out->used[k] = w->kv_blocks_used;
    out->shared[k] = w->kv_blocks_shared;
  }
  sa__status_response__free_unpacked(st, NULL);
  return 0;
}

/* Waits until every stage reports 0 KV blocks (requests done, freed). */
static void wait_idle(const char *coord) {
  for (int i = 0; i < 100; i++) {
    status_t s;
    if (get_status(coord, &s) == 0) {
      int64_t used = 0;
      for (int k = 0; k < s.n; k++)
        used += s.used[k];
      if (used == 0)
        return;
    }
    usleep(50000);
  }
  fprintf(stderr, "bench-cot: warning: KV blocks still in use after the runs\n");
}

/* ------------------------------------------------------------------ runs */

typedef struct {
  int n, clients;
  int64_t prompt_tokens;      /* prefilled, over all requests */
  int64_t generated;
  double ttft, elapsed;       /* max over the requests */
  double decode_tps, e2e_tps;
  int64_t peak_used[MAX_STAGES], peak_shared[MAX_STAGES];
  int n_stages;
  bool ok;
} run_t;

typedef struct {
  const char *bin, *coord;
  const char *prompt;
  int max_tokens;
  double t1; /* elapsed of a max_tokens = 1 request of this prompt; 0 = unknown */
} ctx_t;

/* Runs `clients` concurrent sa-client submits of n chains each and polls
 * Status meanwhile. */
static int run_case(const ctx_t *cx, int clients, int n, run_t *r) {
  memset(r, 0, sizeof *r);
  r->n = n;
  r->clients = clients;
  pid_t pids[MAX_CHILDREN];
  char outs[MAX_CHILDREN][300];
  char client[512], ns[16], mt[16], seed[32];
  snprintf(client, sizeof client, "%s/sa-client", cx->bin);
  snprintf(ns, sizeof ns, "%d", n);
  snprintf(mt, sizeof mt, "%d", cx->max_tokens);
  for (int i = 0; i < clients; i++) {
    snprintf(outs[i], sizeof outs[i], "%s/run-%d.json", g_tmp, i);
    snprintf(seed, sizeof seed, "%d", 1000 + i);
    char *argv[] = {client, "submit", "--insecure", "--no-audio", "--prompt", (char *)cx->prompt, "-n", ns,
                    "--vote", "none", "--max-tokens", mt, "--temperature", "0.8", "--seed",
                    seed, "--json", "--timeout", "900", "--coordinator", (char *)cx->coord,
                    NULL};
    pids[i] = spawn(argv, outs[i]);
    if (pids[i] < 0)
      return -1;
  }
  int left = clients;
  bool failed = false;
  while (left > 0) {
    status_t s;
    if (get_status(cx->coord, &s) == 0) {
      r->n_stages = s.n;
      for (int k = 0; k < s.n; k++) {
        if (s.used[k] > r->peak_used[k])
          r->peak_used[k] = s.used[k];
        if (s.shared[k] > r->peak_shared[k])
          r->peak_shared[k] = s.shared[k];
      }
    }
    for (int i = 0; i < clients; i++) {
      if (pids[i] <= 0)
        continue;
      int st;
      if (waitpid(pids[i], &st, WNOHANG) == pids[i]) {
        pids[i] = 0;
        left--;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
          failed = true;
      }
    }
    if (left > 0)
      usleep(20000);
  }
  if (failed) {
    fprintf(stderr, "bench-cot: a client failed; see %s/run-*.json\n", g_tmp);
    return -1;
  }
  for (int i = 0; i < clients; i++) {
    FILE *f = fopen(outs[i], "r");
    if (!f)
      return -1;
    char *line = NULL, *last = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
      free(last);
      last = strdup(line);
    }
    free(line);
    fclose(f);
    cJSON *o = last ? cJSON_Parse(last) : NULL;
    free(last);
    cJSON *type = o ? cJSON_GetObjectItem(o, "type") : NULL;
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "final") != 0) {
      fprintf(stderr, "bench-cot: no final result in %s\n", outs[i]);
      cJSON_Delete(o);
      return -1;
    }
    r->prompt_tokens += (int64_t)cJSON_GetObjectItem(o, "prompt_tokens")->valuedouble;
    r->generated += (int64_t)cJSON_GetObjectItem(o, "tokens_generated")->valuedouble;
    double ttft = cJSON_GetObjectItem(o, "time_to_first_token_s")->valuedouble;
    double el = cJSON_GetObjectItem(o, "elapsed_s")->valuedouble;
    if (ttft > r->ttft)
      r->ttft = ttft;
    if (el > r->elapsed)
      r->elapsed = el;
    cJSON_Delete(o);
  }
  /* decode rate: one request only (n independent ones interleave their
   * prefills with decode steps) */
  double dt = r->elapsed - cx->t1;
  r->decode_tps = clients == 1 && cx->t1 > 0 && dt > 0 ? (double)(r->generated - n) / dt : 0;
  r->e2e_tps = r->elapsed > 0 ? (double)r->generated / r->elapsed : 0;
  r->ok = true;
  wait_idle(cx->coord);
  return 0;
}

static void print_run(const char *what, const run_t *r) {
  int chains = r->n * r->clients;
  char dec[64] = "decode       -                    ";
  if (r->decode_tps > 0)
    snprintf(dec, sizeof dec, "decode %7.2f tok/s (%6.2f/chain)", r->decode_tps,
             r->decode_tps / chains);
  printf("  %-12s n=%-3d prefill %5lld tok  gen %4lld  total %6.2f s  %s  e2e %6.2f tok/s  "
         "peak KV",
         what, chains, (long long)r->prompt_tokens, (long long)r->generated, r->elapsed, dec,
         r->e2e_tps);
  for (int k = 0; k < r->n_stages; k++)
    printf(" s%d %lld/%lld", k, (long long)r->peak_used[k], (long long)r->peak_shared[k]);
  printf(" (used/shared)\n");
  fflush(stdout);
}

/* A prompt of about `tokens` tokens (template included), calibrated with
 * sa-model tokenize on the model's tokenizer. Caller frees. */
static char *make_prompt(const char *bin, const char *model, int tokens) {
  static const char *const words[] = {"reason", "about", "the", "sound", "of", "rain",
                                      "on", "a", "tin", "roof", "and", "then", "answer"};
  size_t nw = sizeof words / sizeof words[0];
  int probe_words = 200;
  size_t cap = (size_t)probe_words * 16 + 1;
  char *p = malloc(cap);
  if (!p)
    return NULL;
  p[0] = '\0';
  for (int i = 0; i < probe_words; i++) {
    strcat(p, words[i % nw]);
    strcat(p, " ");
  }
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "'%s/sa-model' tokenize --model '%s' --text '%s' | wc -w", bin,
           model, p);
  FILE *f = popen(cmd, "r");
  int ids = 0;
  if (!f || fscanf(f, "%d", &ids) != 1 || ids <= 0) {
    if (f)
      pclose(f);
    free(p);
    fprintf(stderr, "bench-cot: could not tokenize with %s/sa-model\n", bin);
    return NULL;
  }
  pclose(f);
  const int overhead = 30; /* chat template and the default system prompt, about */
  int want_words = (int)((double)(tokens > overhead ? tokens - overhead : 1) * probe_words / ids);
  if (want_words < 1)
    want_words = 1;
  free(p);
  p = malloc((size_t)want_words * 16 + 1);
  if (!p)
    return NULL;
  p[0] = '\0';
  for (int i = 0; i < want_words; i++) {
    strcat(p, words[i % nw]);
    strcat(p, " ");
  }
  return p;
}

int main(int argc, char **argv) {
  sa_log_init("bench-cot");
  sa_log_set_level(SA_LOG_LEVEL_ERROR);
  char model[512], bin[512];
  snprintf(model, sizeof model, "%s/models/small-seed1", SA_BINARY_DIR);
  snprintf(bin, sizeof bin, "%s/bin", SA_BINARY_DIR);
  int chains[16] = {1, 2, 4, 8, 16}, n_chains = 5;
  int prompt_tokens = 400, max_tokens = 32, kv_prompt = 1200, kv_max_tokens = 16;
  bool independent = true, limits = true, state = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--model") && v) {
      snprintf(model, sizeof model, "%s", v);
      i++;
    } else if (!strcmp(a, "--bin") && v) {
      snprintf(bin, sizeof bin, "%s", v);
      i++;
    } else if (!strcmp(a, "--chains") && v) {
      n_chains = parse_list(v, chains, 16);
      i++;
      if (n_chains <= 0) {
        fprintf(stderr, "bench-cot: --chains takes a list like 1,2,4 (each 1..64)\n");
        return 2;
      }
    } else if ((!strcmp(a, "--prompt-tokens") || !strcmp(a, "--max-tokens") ||
                !strcmp(a, "--kv-prompt-tokens") || !strcmp(a, "--kv-max-tokens")) && v) {
      int x = atoi(v);
      i++;
      if (x < 0 || x > 30000 || (x == 0 && strcmp(a, "--kv-prompt-tokens") != 0)) {
        fprintf(stderr, "bench-cot: bad %s %s\n", a, v);
        return 2;
      }
      if (!strcmp(a, "--prompt-tokens"))
        prompt_tokens = x;
      else if (!strcmp(a, "--max-tokens"))
        max_tokens = x;
      else if (!strcmp(a, "--kv-prompt-tokens"))
        kv_prompt = x;
      else
        kv_max_tokens = x;
    } else if (!strcmp(a, "--no-independent")) {
      independent = false;
    } else if (!strcmp(a, "--no-limits")) {
      limits = false;
    } else if (!strcmp(a, "--state")) {
      state = true;
    } else {
      usage(stderr);
      return 2;
    }
  }
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  snprintf(g_tmp, sizeof g_tmp, "/tmp/bench-cot.XXXXXX");
  if (!mkdtemp(g_tmp)) {
    perror("bench-cot: mkdtemp");
    return 1;
  }
  printf("bench-cot: speculative long-CoT batching, 2-stage pipeline on loopback\n");
  printf("machine: %d CPUs, LLC %zu KiB\n", sa_bench_cpus(), sa_bench_llc_bytes() / 1024);

  /* the model */
  char cfg[600];
  snprintf(cfg, sizeof cfg, "%s/config.json", model);
  struct stat st;
  if (stat(cfg, &st) != 0) {
    printf("writing the small preset to %s (once; about 1 GB)...\n", model);
    fflush(stdout);
    char tool[600];
    snprintf(tool, sizeof tool, "%s/sa-model", bin);
    char *av[] = {tool, "init", "--preset", "small", "--seed", "1", "--out", model, NULL};
    if (run_wait(av) != 0) {
      fprintf(stderr, "bench-cot: sa-model init failed\n");
      return 1;
    }
  }
  int layers = 0;
  FILE *cf = fopen(cfg, "r");
  if (cf) {
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, cf);
    buf[n] = '\0';
    fclose(cf);
    char *p = strstr(buf, "\"num_hidden_layers\"");
    if (p && (p = strchr(p, ':')))
      layers = atoi(p + 1);
  }
  if (layers < 2) {
    fprintf(stderr, "bench-cot: cannot read num_hidden_layers from %s\n", cfg);
    return 1;
  }
  char wpath[600];
  snprintf(wpath, sizeof wpath, "%s/model.safetensors", model);
  double weight_bytes = stat(wpath, &st) == 0 ? (double)st.st_size : 0;

  /* the machine's limits */
  double bw = 0, peak = 0;
  if (limits) {
    sa_bench_bw_t b = {0};
    if (sa_bench_mem_bandwidth(0, 0, 0, &b) == 0)
      bw = b.read_gbs;
    peak = sa_bench_sgemm_peak(0);
    printf("limits: memory read %.1f GB/s (%d threads, %zu MiB), sgemm peak %.1f GFLOP/s\n", bw,
           b.threads, b.bytes >> 20, peak);
    if (bw > 0 && weight_bytes > 0)
      printf("        one decode step reads every weight once: %.0f MB (bf16 on disk) -> "
             "at most %.1f steps/s, i.e. %.1f tok/s for n = 1 and n tok/s x that for n "
             "chains while weight-bound\n",
             weight_bytes / 1e6, bw * 1e9 / weight_bytes, bw * 1e9 / weight_bytes);
    if (peak > 0 && weight_bytes > 0) /* 2 flops per weight per token (bf16: 2 bytes) */
      printf("        compute: %.2f GFLOP per token -> at most %.1f tok/s over all chains at "
             "sgemm peak (the ceiling of aggregate decode for large n)\n",
             weight_bytes / 1e9, peak * 1e9 / weight_bytes);
  }

  /* the cluster */
  char coord_bin[600], worker_bin[600], ep_file[300], log[300], layers0[32], layers1[32];
  snprintf(coord_bin, sizeof coord_bin, "%s/sa-coordinator", bin);
  snprintf(worker_bin, sizeof worker_bin, "%s/sa-worker", bin);
  snprintf(ep_file, sizeof ep_file, "%s/coord.ep", g_tmp);
  snprintf(log, sizeof log, "%s/coordinator.log", g_tmp);
  char state_dir[300];
  snprintf(state_dir, sizeof state_dir, "%s/state", g_tmp);
  char *cav[] = {coord_bin, "--insecure", "--model", model, "--listen", "tcp://127.0.0.1:*",
                 "--endpoint-file", ep_file, "--max-chains", "64",
                 state ? "--state" : NULL, state_dir, NULL};
  if (state)
    printf("coordinator journal: %s/journal (fdatasync floor on this disk: %.0f us, "
           "bench-journal measures it; one sync per coordinator pass)\n",
           state_dir, sa_bench_fdatasync_us(g_tmp, 50));
  g_services[g_n_services++] = spawn(cav, log);
  char coord[256] = "";
  for (int i = 0; i < 200 && !coord[0]; i++) {
    FILE *f = fopen(ep_file, "r");
    if (f) {
      if (!fgets(coord, sizeof coord, f))
        coord[0] = '\0';
      fclose(f);
      coord[strcspn(coord, "\r\n")] = '\0';
    }
    if (!coord[0])
      usleep(50000);
  }
  if (!coord[0]) {
    fprintf(stderr, "bench-cot: the coordinator did not start (%s)\n", log);
    stop_services();
    return 1;
  }
  snprintf(layers0, sizeof layers0, "0:%d", layers / 2);
  snprintf(layers1, sizeof layers1, "%d:%d", layers / 2, layers);
  for (int s = 0; s < 2; s++) {
    char name[16];
    snprintf(name, sizeof name, "stage%d", s);
    snprintf(log, sizeof log, "%s/%s.log", g_tmp, name);
    char *wav[] = {worker_bin, "--insecure", "--model", model, "--layers", s ? layers1 : layers0,
                   "--replica", "r0", "--coordinator", coord, "--threads", "1",
                   "--kv-mem", "512MiB", "--node-id", name, NULL};
    g_services[g_n_services++] = spawn(wav, log);
  }
  bool ready = false;
  for (int i = 0; i < 1200 && !ready; i++) { /* loading ~1 GB of weights */
    status_t s;
    ready = get_status(coord, &s) == 0 && s.replicas_ready >= 1;
    if (!ready)
      usleep(100000);
  }
  if (!ready) {
    fprintf(stderr, "bench-cot: the pipeline did not become ready (logs in %s)\n", g_tmp);
    stop_services();
    return 1;
  }
  printf("cluster: coordinator %s, stages %s and %s (1 thread each), logs in %s\n", coord,
         layers0, layers1, g_tmp);

  char *prompt = make_prompt(bin, model, prompt_tokens);
  if (!prompt) {
    stop_services();
    return 1;
  }
  /* warm-up, then t1: prefill + first step of this prompt */
  ctx_t cx = {.bin = bin, .coord = coord, .prompt = prompt, .max_tokens = 1};
  run_t warm, first;
  if (run_case(&cx, 1, 1, &warm) != 0 || run_case(&cx, 1, 1, &first) != 0) {
    stop_services();
    return 1;
  }
  cx.t1 = first.elapsed;
  cx.max_tokens = max_tokens;
  printf("\nthroughput: prompt %lld tokens (prefill + first token %.2f s = %.0f prompt tok/s), "
         "%d tokens per chain, vote none, temperature 0.8\n",
         (long long)first.prompt_tokens, first.elapsed,
         first.elapsed > 0 ? (double)first.prompt_tokens / first.elapsed : 0, max_tokens);
  double tps1 = 0, tps8 = 0;
  int rc = 0;
  for (int i = 0; i < n_chains; i++) {
    run_t a, b;
    if (run_case(&cx, 1, chains[i], &a) != 0) {
      rc = 1;
      break;
    }
    print_run("chains", &a);
    if (chains[i] == 1)
      tps1 = a.decode_tps;
    if (chains[i] == 8)
      tps8 = a.decode_tps;
    if (independent && chains[i] > 1) {
      if (run_case(&cx, chains[i], 1, &b) != 0) {
        rc = 1;
        break;
      }
      print_run("independent", &b);
      printf("  %-12s prefill tokens %lld vs %lld (%.1fx fewer), peak KV last stage %lld vs "
             "%lld blocks (%.2fx)\n",
             "", (long long)a.prompt_tokens, (long long)b.prompt_tokens,
             a.prompt_tokens ? (double)b.prompt_tokens / (double)a.prompt_tokens : 0,
             (long long)a.peak_used[a.n_stages - 1], (long long)b.peak_used[b.n_stages - 1],
             b.peak_used[b.n_stages - 1]
                 ? (double)a.peak_used[a.n_stages - 1] / (double)b.peak_used[b.n_stages - 1]
                 : 0);
    }
  }
  free(prompt);

  double kv_ratio = 0;
  if (rc == 0 && kv_prompt > 0) {
    char *long_prompt = make_prompt(bin, model, kv_prompt);
    if (long_prompt) {
      cx.prompt = long_prompt;
      cx.max_tokens = kv_max_tokens;
      cx.t1 = 0; /* not measured for this prompt: no decode rate */
      run_t k1, k8;
      printf("\nKV: long prompt, %d tokens per chain\n", kv_max_tokens);
      if (run_case(&cx, 1, 1, &k1) == 0 && run_case(&cx, 1, 8, &k8) == 0) {
        print_run("chains", &k1);
        print_run("chains", &k8);
        int l = k1.n_stages - 1;
        if (l >= 0 && k1.peak_used[l] > 0)
          kv_ratio = (double)k8.peak_used[l] / (double)k1.peak_used[l];
        printf("  peak KV blocks on the last stage: n=8 %lld, n=1 %lld -> %.2fx (8 copies of "
               "the prompt would be about 8x)\n",
               (long long)k8.peak_used[l], (long long)k1.peak_used[l], kv_ratio);
      } else {
        rc = 1;
      }
      free(long_prompt);
    }
  }
  stop_services();

  printf("\ntargets:\n");
  if (tps1 > 0 && tps8 > 0)
    printf("  aggregate decode n=8 / n=1 = %.2fx (target >= 4x): %s\n", tps8 / tps1,
           tps8 >= 4 * tps1 ? "met" : "NOT met");
  else
    printf("  aggregate decode n=8 / n=1: not measured (--chains must hold 1 and 8)\n");
  if (kv_ratio > 0)
    printf("  KV blocks n=8 / n=1, long prompt, short chains = %.2fx (target <= 1.3x): %s\n",
           kv_ratio, kv_ratio <= 1.3 ? "met" : "NOT met");
  if (rc == 0) {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd) != 0)
      fprintf(stderr, "bench-cot: could not remove %s\n", g_tmp);
  }
  return rc;
}
