/*
 * bench-http — what the HTTP front door costs beside the native RPC.
 *
 * A real sa-coordinator (--http on loopback) and one sa-worker on the tiny
 * test model, so that model compute is small next to what is measured:
 *   - requests of max_tokens 1, one after another: end-to-end latency
 *     (median, p99) and requests/s over Coordinator/Submit (our RPC, a new
 *     connection per request as sa-client makes) and over POST
 *     /v1/chat/completions (libcurl) both on one kept-alive connection and
 *     on a new connection per request (like for like with the RPC row);
 *   - one streamed request of --tokens tokens: the median time between two
 *     tokens as the client sees them, RPC deltas against SSE chunks; their
 *     difference is SSE's cost per token.
 * The machine's own limits, measured in the same run: a TCP loopback round
 * trip of 64 bytes between two threads, and a raw ZeroMQ echo round trip.
 * Medians over --runs runs, alternating RPC and HTTP. Timings decide
 * nothing.
 */
#include "../pipeline/pipeline.h"

#include "log.h"
#include "sa_bench.h"
#include "sa_error.h"
#include "testmodel.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------- TCP loopback round trip */

static int g_listen_fd;

static void *echo_main(void *arg) {
  (void)arg;
  int fd = accept(g_listen_fd, NULL, NULL);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  char buf[64];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof buf, MSG_WAITALL)) == (ssize_t)sizeof buf)
    if (send(fd, buf, sizeof buf, 0) != (ssize_t)sizeof buf)
      break;
  close(fd);
  return NULL;
}

/* Median round trip of 64 bytes over TCP loopback, seconds; -1 on error. */
static double tcp_rtt(int reps) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  g_listen_fd = socket(AF_INET, SOCK_STREAM, 0);
  if (g_listen_fd < 0 || bind(g_listen_fd, (struct sockaddr *)&a, sizeof a) ||
      listen(g_listen_fd, 1) || getsockname(g_listen_fd, (struct sockaddr *)&a, &al))
    return -1;
  pthread_t th;
  pthread_create(&th, NULL, echo_main, NULL);
  int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  if (connect(fd, (struct sockaddr *)&a, sizeof a))
    return -1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  double *t = calloc((size_t)reps, sizeof *t);
  char buf[64] = {0};
  for (int i = 0; i < reps; i++) {
    double t0 = sa_bench_now();
    if (send(fd, buf, sizeof buf, 0) != (ssize_t)sizeof buf ||
        recv(fd, buf, sizeof buf, MSG_WAITALL) != (ssize_t)sizeof buf)
      break;
    t[i] = sa_bench_now() - t0;
  }
  close(fd);
  pthread_join(th, NULL);
  close(g_listen_fd);
  double m = sa_bench_median(t, reps);
  free(t);
  return m;
}

/* --------------------------------------------------------------- HTTP */

typedef struct {
  double t0;
  double *t_chunk; /* arrival of each "data: {" chunk with content */
  int n, cap;
  size_t bytes;
} sink_t;

static size_t on_body(char *p, size_t sz, size_t n, void *user) {
  sink_t *s = user;
  size_t len = sz * n;
  s->bytes += len;
  /* count content chunks: every "\"content\":" in what arrived */
  double now = sa_bench_now();
  for (size_t i = 0; i + 10 <= len; i++)
    if (!memcmp(p + i, "\"content\":", 10) && s->n < s->cap)
      s->t_chunk[s->n++] = now;
  return len;
}

/* One chat completion; returns the HTTP status, fills *s. */
static long http_post(CURL *c, const char *url, const char *body, sink_t *s) {
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, s);
  s->t0 = sa_bench_now();
  s->n = 0;
  s->bytes = 0;
  if (curl_easy_perform(c) != CURLE_OK)
    return -1;
  long code = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
  return code;
}

/* ------------------------------------------------------------------ main */

static void usage(FILE *f) {
  fprintf(f, "usage: bench-http [--requests N] [--tokens T] [--runs R]\n"
             "  HTTP API against the native RPC on a local tiny-model cluster.\n"
             "  --requests N  max_tokens-1 requests per run and protocol (default 200)\n"
             "  --tokens T    tokens of the streamed request (default 256)\n"
             "  --runs R      runs, alternating RPC and HTTP (default 5)\n");
}

static double diff_median(const double *t, int n) {
  if (n < 2)
    return 0;
  double *d = malloc(sizeof(double) * (size_t)(n - 1));
  for (int i = 1; i < n; i++)
    d[i - 1] = t[i] - t[i - 1];
  double m = sa_bench_median(d, n - 1);
  free(d);
  return m;
}

int main(int argc, char **argv) {
  int requests = 200, tokens = 256, runs = 5;
  static const struct option lo[] = {{"requests", required_argument, 0, 'n'},
                                     {"tokens", required_argument, 0, 't'},
                                     {"runs", required_argument, 0, 'r'},
                                     {"help", no_argument, 0, 'h'},
                                     {0, 0, 0, 0}};
  int o;
  while ((o = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
    if (o == 'n')
      requests = atoi(optarg);
    else if (o == 't')
      tokens = atoi(optarg);
    else if (o == 'r')
      runs = atoi(optarg);
    else {
      usage(o == 'h' ? stdout : stderr);
      return o == 'h' ? 0 : 2;
    }
  }
  if (requests < 10 || requests > 100000 || tokens < 8 || tokens > 2000 || runs < 1 ||
      runs > 50) {
    fprintf(stderr, "bench-http: --requests 10..100000, --tokens 8..2000, --runs 1..50\n");
    return 2;
  }
  sa_log_set_level(SA_LOG_LEVEL_WARN);
  char mdir[1200], cdir[1200], logs[1200] = "/tmp/bench-http.XXXXXX", err[512];
  snprintf(mdir, sizeof mdir, "%s/models/tiny-bench", SA_BINARY_DIR);
  struct stat st;
  if (stat(mdir, &st) != 0 && sa_testmodel_write("tiny", 1, mdir, err, sizeof err)) {
    fprintf(stderr, "bench-http: cannot write the tiny model: %s\n", err);
    return 1;
  }
  sa_model_config_t cfg;
  int n_merges;
  sa_testmodel_preset("tiny", &cfg, &n_merges);
  snprintf(cdir, sizeof cdir, "%s/models/tiny-bench-coord", SA_BINARY_DIR);
  if (bp_coord_model_write(mdir, cdir, cfg.vocab_size) || !mkdtemp(logs)) {
    fprintf(stderr, "bench-http: cannot prepare the coordinator's model or logs\n");
    return 1;
  }
  bp_cluster_opts_t co = {.n_stages = 1, .threads_per_stage = 1, .kv_mem = "64MiB",
                          .http = "127.0.0.1:0"};
  snprintf(co.bin_dir, sizeof co.bin_dir, "%s/bin", SA_BINARY_DIR);
  snprintf(co.model_dir, sizeof co.model_dir, "%s", mdir);
  snprintf(co.coord_model, sizeof co.coord_model, "%s", cdir);
  snprintf(co.log_dir, sizeof co.log_dir, "%s", logs);
  co.first[0] = 0;
  co.last[0] = cfg.num_hidden_layers;
  bp_cluster_t cl;
  atexit(bp_cluster_stop_all);
  if (bp_cluster_start(&co, 60, &cl)) {
    fprintf(stderr, "bench-http: the cluster did not start (logs in %s)\n", logs);
    return 1;
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  CURL *c = curl_easy_init();
  char url[400], body1[256], bodyS[256];
  snprintf(url, sizeof url, "%s/v1/chat/completions", cl.http_url);
  snprintf(body1, sizeof body1,
           "{\"model\":\"bench\",\"max_tokens\":1,\"temperature\":0,"
           "\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}");
  snprintf(bodyS, sizeof bodyS,
           "{\"model\":\"bench\",\"max_tokens\":%d,\"temperature\":0,\"stream\":true,"
           "\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}",
           tokens);
  /* the coordinator's model ends generation only at max_tokens (bench-pipeline's
   * extended vocabulary), so every request makes exactly its tokens */
  double *lat_rpc = calloc((size_t)(runs * requests), sizeof(double));
  double *lat_http = calloc((size_t)(runs * requests), sizeof(double));
  double *lat_new = calloc((size_t)(runs * requests), sizeof(double));
  double *rps_rpc = calloc((size_t)runs, sizeof(double)), *rps_http = calloc((size_t)runs, sizeof(double));
  double *itl_rpc = calloc((size_t)runs, sizeof(double)), *itl_http = calloc((size_t)runs, sizeof(double));
  sink_t sink = {.cap = tokens + 16};
  sink.t_chunk = calloc((size_t)sink.cap, sizeof(double));
  int failures = 0;
  for (int r = 0; r < runs; r++) {
    double t0 = sa_bench_now();
    for (int i = 0; i < requests; i++) {
      bp_req_t q;
      if (bp_cluster_submit(cl.endpoint, "Hi", 1, 1, 30, &q, NULL, 0, NULL))
        failures++;
      lat_rpc[r * requests + i] = q.t_end - q.t_submit;
      bp_reqs_free(&q, 1);
    }
    rps_rpc[r] = requests / (sa_bench_now() - t0);
    t0 = sa_bench_now();
    for (int i = 0; i < requests; i++) {
      double t1 = sa_bench_now();
      if (http_post(c, url, body1, &sink) != 200)
        failures++;
      lat_http[r * requests + i] = sa_bench_now() - t1;
    }
    rps_http[r] = requests / (sa_bench_now() - t0);
    curl_easy_setopt(c, CURLOPT_FRESH_CONNECT, 1L);
    curl_easy_setopt(c, CURLOPT_FORBID_REUSE, 1L);
    for (int i = 0; i < requests; i++) {
      double t1 = sa_bench_now();
      if (http_post(c, url, body1, &sink) != 200)
        failures++;
      lat_new[r * requests + i] = sa_bench_now() - t1;
    }
    curl_easy_setopt(c, CURLOPT_FRESH_CONNECT, 0L);
    curl_easy_setopt(c, CURLOPT_FORBID_REUSE, 0L);
    bp_req_t q;
    if (bp_cluster_submit(cl.endpoint, "Hi", tokens, 1, 60, &q, NULL, 0, NULL))
      failures++;
    itl_rpc[r] = diff_median(q.t_tok, q.n_tok);
    bp_reqs_free(&q, 1);
    if (http_post(c, url, bodyS, &sink) != 200 || sink.n < tokens / 2)
      failures++;
    itl_http[r] = diff_median(sink.t_chunk, sink.n);
    fprintf(stderr, "run %d/%d: rpc %.0f req/s, http %.0f req/s\n", r + 1, runs, rps_rpc[r],
            rps_http[r]);
  }
  double rtt = tcp_rtt(2000);
  bp_hop_t hop;
  int hop_ok = bp_hop_measure(1024, 500, false, &hop) == 0;
  int n = runs * requests;
  printf("\nbench-http (tiny model, 1 stage; medians; %d runs x %d requests; %d failures)\n",
         runs, requests, failures);
  printf("machine limits: TCP loopback round trip (64 B) %.1f us", rtt * 1e6);
  if (hop_ok)
    printf("; raw ZeroMQ echo (1 KiB) %.1f us", hop.rtt_echo_med * 1e6);
  printf("\n\n%-44s %12s %12s %8s\n", "measurement", "native RPC", "HTTP", "ratio");
  double mr = sa_bench_median(lat_rpc, n), mh = sa_bench_median(lat_http, n);
  double mn = sa_bench_median(lat_new, n);
  printf("%-44s %9.1f us %9.1f us %8.2f\n", "max_tokens 1, new connection each (median)",
         mr * 1e6, mn * 1e6, mn / mr);
  printf("%-44s %12s %9.1f us %8.2f\n", "max_tokens 1, HTTP kept alive (median)", "", mh * 1e6,
         mh / mr);
  double pr = sa_bench_p99(lat_rpc, n), ph = sa_bench_p99(lat_http, n);
  printf("%-44s %9.1f us %9.1f us %8.2f\n", "max_tokens 1, kept alive / RPC (p99)", pr * 1e6,
         ph * 1e6, ph / pr);
  double rr = sa_bench_median(rps_rpc, runs), rh = sa_bench_median(rps_http, runs);
  printf("%-44s %9.0f /s %9.0f /s %8.2f\n", "requests/s, one at a time", rr, rh, rr / rh);
  double ir = sa_bench_median(itl_rpc, runs), ih = sa_bench_median(itl_http, runs);
  printf("%-44s %9.1f us %9.1f us %8.2f\n", "time between streamed tokens (median)", ir * 1e6,
         ih * 1e6, ih / ir);
  printf("\nlike for like (a new connection per request): HTTP %+.1f us per request (%.1f TCP "
         "round trips);\nSSE %+.1f us per streamed token\n",
         (mn - mr) * 1e6, rtt > 0 ? (mn - mr) / rtt : 0, (ih - ir) * 1e6);
  curl_easy_cleanup(c);
  curl_global_cleanup();
  bp_cluster_stop(&cl);
  return failures ? 1 : 0;
}
