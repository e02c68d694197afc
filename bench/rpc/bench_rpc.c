/*
 * bench-rpc — what core/rpc costs over raw ZeroMQ.
 *
 * Measures, over tcp loopback with the server on its own thread:
 *   - round trip (median, p99) with a 1 KiB payload carried as the protobuf
 *     body frame (copied), and with a 1 MiB payload carried as a tensor frame
 *     (sent zero-copy, echoed back by forwarding the received frame);
 *   - one-way throughput: 1 MiB tensor frames, 8 calls in flight, empty
 *     replies.
 * The baseline is plain ZeroMQ in the same run: a DEALER client and a ROUTER
 * echo/sink server with blocking zmq_recv/zmq_send, the same payloads
 * (zero-copy zmq_msg_init_data for 1 MiB) and the same transport. Each
 * measurement runs --runs times alternating RPC and raw; the table shows the
 * median over runs. Ratios: latency rpc/raw, throughput raw/rpc (lower is
 * better, 1.0 = no overhead). Timings never decide anything.
 *
 * CurveZMQ: a second rpc server with keys (and the process's authenticator)
 * and a channel with keys; round trips of 1 KiB, 1 MiB and 16 MiB against
 * the plain-text rpc path of the same run, beside the machine's own AEAD
 * throughput (libsodium's crypto_secretbox, XSalsa20-Poly1305, one core) —
 * what CURVE's per-frame encryption costs at best.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>
#include <uv.h>
#include <zmq.h>

#include "log.h"
#include "rpc.h"

#define KIB 1024
#define MIB (1024 * 1024)
#define INFLIGHT 8

static uint8_t *g_payload; /* 16 MiB, shared read-only by every sender */
/* CurveZMQ keys of the second server and of its one client */
static char g_srv_pub[41], g_srv_sec[41], g_cli_pub[41], g_cli_sec[41];
static uint8_t g_cli_raw[32];

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}
static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}
static double median_d(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_d);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
/* median and p99 in microseconds of n samples in ns */
static void stats(uint64_t *ns, int n, double *med, double *p99) {
  qsort(ns, (size_t)n, sizeof *ns, cmp_u64);
  *med = ns[n / 2] / 1e3;
  int i = (int)((n - 1) * 0.99 + 0.5);
  *p99 = ns[i] / 1e3;
}

/* ------------------------------------------------------------ rpc server */

typedef struct {
  uv_loop_t loop;
  uv_async_t stop;
  sa_rpc_server_t *srv;
  char endpoint[256];
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool ready;
  bool curve;
  sa_rpc_auth_t *auth;
} rpc_srv_t;

static bool accept_client(const char *domain, const char *address, const uint8_t key[32],
                          char *user_id, size_t cap, void *user) {
  (void)domain, (void)address, (void)user;
  snprintf(user_id, cap, "bench");
  return memcmp(key, g_cli_raw, 32) == 0;
}

static void echo_h(sa_rpc_call_t *call, void *user) {
  (void)user;
  size_t len;
  const void *b = sa_rpc_call_request(call, &len);
  sa_rpc_frame_t fr[1];
  int n = sa_rpc_call_n_tensors(call) > 0;
  if (n)
    sa_rpc_call_forward_tensor(call, 0, &fr[0]);
  sa_rpc_call_reply(call, SA_STATUS_OK, NULL, b, len, fr, n);
}

static void sink_h(sa_rpc_call_t *call, void *user) {
  (void)user;
  sa_rpc_call_reply(call, SA_STATUS_OK, NULL, NULL, 0, NULL, 0);
}

static void rpc_stop_cb(uv_async_t *a) {
  rpc_srv_t *s = a->data;
  sa_rpc_server_destroy(&s->srv);
  sa_rpc_auth_destroy(&s->auth);
  uv_close((uv_handle_t *)a, NULL);
}

static void *rpc_srv_main(void *arg) {
  rpc_srv_t *s = arg;
  uv_loop_init(&s->loop);
  uv_async_init(&s->loop, &s->stop, rpc_stop_cb);
  s->stop.data = s;
  sa_rpc_opts_t o;
  sa_rpc_opts_default(&o);
  o.max_msg_bytes = 64u << 20;
  if (s->curve) {
    o.curve_public_key = g_srv_pub;
    o.curve_secret_key = g_srv_sec;
    if (sa_rpc_auth_new(&s->loop, accept_client, NULL, &s->auth) != 0) {
      fprintf(stderr, "bench-rpc: cannot start the authenticator\n");
      exit(1);
    }
  }
  if (sa_rpc_server_new(&s->loop, &o, &s->srv) != 0 ||
      sa_rpc_server_register(s->srv, "Bench/Echo", SA_RPC_UNARY, echo_h, NULL) ||
      sa_rpc_server_register(s->srv, "Bench/Sink", SA_RPC_UNARY, sink_h, NULL) ||
      sa_rpc_server_bind(s->srv, "tcp://127.0.0.1:*") != 0) {
    fprintf(stderr, "bench-rpc: cannot start the rpc server\n");
    exit(1);
  }
  pthread_mutex_lock(&s->mu);
  snprintf(s->endpoint, sizeof s->endpoint, "%s", sa_rpc_server_endpoint(s->srv));
  s->ready = true;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
  uv_run(&s->loop, UV_RUN_DEFAULT);
  uv_loop_close(&s->loop);
  return NULL;
}

/* ------------------------------------------------------------ rpc client */

typedef struct {
  uv_loop_t *loop;
  sa_rpc_channel_t *ch;
  size_t bytes;
  bool as_tensor;
  const char *method;
  int target, started, done, errors;
  uint64_t t0;
  uint64_t *lat;
} rpc_run_t;

static int rpc_start(rpc_run_t *r);

static void rpc_cb(sa_rpc_channel_t *ch, const sa_rpc_result_t *res, void *user) {
  (void)ch;
  rpc_run_t *r = user;
  if (res->status != SA_STATUS_OK)
    r->errors++;
  if (r->lat)
    r->lat[r->done] = uv_hrtime() - r->t0;
  r->done++;
  if (r->started < r->target)
    rpc_start(r);
}

static int rpc_start(rpc_run_t *r) {
  sa_rpc_frame_t fr = {.desc = {.dtype = SA_DTYPE_U8, .ndim = 1,
                                .shape = {(int64_t)r->bytes}},
                       .data = g_payload, .nbytes = r->bytes,
                       .free_fn = sa_rpc_free_none};
  r->started++;
  if (r->lat)
    r->t0 = uv_hrtime();
  int rc = r->as_tensor
               ? sa_rpc_channel_call(r->ch, r->method, NULL, 0, &fr, 1, NULL, rpc_cb, r, NULL)
               : sa_rpc_channel_call(r->ch, r->method, g_payload, r->bytes, NULL, 0, NULL,
                                     rpc_cb, r, NULL);
  if (rc != 0) {
    fprintf(stderr, "bench-rpc: call failed: %s\n", sa_strerror(rc));
    exit(1);
  }
  return 0;
}

/* Round trips one at a time; lat gets n samples (ns). */
static void rpc_rtt(uv_loop_t *loop, sa_rpc_channel_t *ch, size_t bytes,
                   bool as_tensor, int n, uint64_t *lat) {
  rpc_run_t r = {.loop = loop, .ch = ch, .bytes = bytes, .as_tensor = as_tensor,
                 .method = "Bench/Echo", .target = n, .lat = lat};
  rpc_start(&r);
  while (r.done < n)
    uv_run(loop, UV_RUN_ONCE);
  if (r.errors)
    fprintf(stderr, "bench-rpc: %d calls failed\n", r.errors);
}

/* n calls of bytes each, INFLIGHT at once; returns GB/s. */
static double rpc_tput(uv_loop_t *loop, sa_rpc_channel_t *ch, size_t bytes, int n) {
  rpc_run_t r = {.loop = loop, .ch = ch, .bytes = bytes, .as_tensor = true,
                 .method = "Bench/Sink", .target = n};
  uint64_t t0 = uv_hrtime();
  for (int i = 0; i < INFLIGHT && i < n; i++)
    rpc_start(&r);
  while (r.done < n)
    uv_run(loop, UV_RUN_ONCE);
  double s = (uv_hrtime() - t0) / 1e9;
  return (double)bytes * n / s / 1e9;
}

/* ------------------------------------------------------------- raw zmq */

typedef struct {
  void *ctx, *echo, *sink;
  char echo_ep[256], sink_ep[256];
  volatile bool stop;
} raw_srv_t;

static void *raw_srv_main(void *arg) {
  raw_srv_t *s = arg;
  zmq_pollitem_t it[2] = {{s->echo, 0, ZMQ_POLLIN, 0}, {s->sink, 0, ZMQ_POLLIN, 0}};
  while (!s->stop) {
    if (zmq_poll(it, 2, 100) <= 0)
      continue;
    for (int k = 0; k < 2; k++) {
      if (!(it[k].revents & ZMQ_POLLIN))
        continue;
      void *sock = k == 0 ? s->echo : s->sink;
      for (;;) { /* [id, payload] */
        zmq_msg_t id, m;
        zmq_msg_init(&id);
        zmq_msg_init(&m);
        if (zmq_msg_recv(&id, sock, ZMQ_DONTWAIT) < 0) {
          zmq_msg_close(&id);
          zmq_msg_close(&m);
          break;
        }
        zmq_msg_recv(&m, sock, 0);
        zmq_msg_send(&id, sock, ZMQ_SNDMORE);
        if (k == 0) {
          zmq_msg_send(&m, sock, 0); /* echo: the same message, no copy */
        } else {
          zmq_msg_close(&m);
          zmq_send(sock, "", 0, 0);
        }
      }
    }
  }
  return NULL;
}

static void raw_send_payload(void *sock, size_t bytes) {
  zmq_msg_t m;
  if (bytes >= MIB)
    zmq_msg_init_data(&m, g_payload, bytes, NULL, NULL); /* zero-copy */
  else {
    zmq_msg_init_size(&m, bytes);
    memcpy(zmq_msg_data(&m), g_payload, bytes);
  }
  zmq_msg_send(&m, sock, 0);
}

static void raw_recv(void *sock) {
  zmq_msg_t m;
  zmq_msg_init(&m);
  zmq_msg_recv(&m, sock, 0);
  zmq_msg_close(&m);
}

static void raw_rtt(void *sock, size_t bytes, int n, uint64_t *lat) {
  for (int i = 0; i < n; i++) {
    uint64_t t0 = uv_hrtime();
    raw_send_payload(sock, bytes);
    raw_recv(sock);
    lat[i] = uv_hrtime() - t0;
  }
}

static double raw_tput(void *sock, size_t bytes, int n) {
  uint64_t t0 = uv_hrtime();
  int sent = 0, got = 0;
  for (; sent < INFLIGHT && sent < n; sent++)
    raw_send_payload(sock, bytes);
  while (got < n) {
    raw_recv(sock);
    got++;
    if (sent < n) {
      raw_send_payload(sock, bytes);
      sent++;
    }
  }
  double s = (uv_hrtime() - t0) / 1e9;
  return (double)bytes * n / s / 1e9;
}

/* ------------------------------------------------------------------ main */

static void usage(void) {
  printf("usage: bench-rpc [--iters N] [--runs R]\n"
         "  Round-trip latency and one-way throughput of core/rpc beside raw\n"
         "  ZeroMQ DEALER/ROUTER, tcp loopback, server on a second thread.\n"
         "  --iters N  round trips per run for 1 KiB (default 4000); 1 MiB uses\n"
         "             N/4 round trips and N/4 throughput calls (min 50)\n"
         "  --runs R   runs per measurement, alternating rpc and raw (default 5);\n"
         "             the table prints the median over runs\n"
         "  1 KiB payload = protobuf body frame (copied); 1 MiB payload = tensor\n"
         "  frame, zero-copy (raw: zmq_msg_init_data). Then CurveZMQ against plain\n"
         "  text through core/rpc (1 KiB, 1 MiB, 16 MiB round trips) and the\n"
         "  machine's AEAD throughput (libsodium XSalsa20-Poly1305, one core).\n");
}

int main(int argc, char **argv) {
  int iters = 4000, runs = 5;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage();
      return 0;
    } else if (!strcmp(argv[i], "--iters") && i + 1 < argc) {
      iters = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
      runs = atoi(argv[++i]);
    } else {
      usage();
      return 2;
    }
  }
  if (iters < 100 || runs < 1 || runs > 64) {
    fprintf(stderr, "bench-rpc: need --iters >= 100 and 1 <= --runs <= 64\n");
    return 2;
  }
  sa_log_init("bench-rpc");
  int big_iters = iters / 4 < 50 ? 50 : iters / 4;
  g_payload = malloc(16 * MIB);
  for (int i = 0; i < 16 * MIB; i++)
    g_payload[i] = (uint8_t)(i * 131 + 7);

  if (sodium_init() < 0 || zmq_curve_keypair(g_srv_pub, g_srv_sec) ||
      zmq_curve_keypair(g_cli_pub, g_cli_sec)) {
    fprintf(stderr, "bench-rpc: no CURVE (libzmq without libsodium?)\n");
    return 1;
  }
  zmq_z85_decode(g_cli_raw, g_cli_pub);
  rpc_srv_t rs = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
  rpc_srv_t cs = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .curve = true};
  pthread_t rth, cth;
  pthread_create(&rth, NULL, rpc_srv_main, &rs);
  pthread_create(&cth, NULL, rpc_srv_main, &cs);
  rpc_srv_t *both[2] = {&rs, &cs};
  for (int k = 0; k < 2; k++) {
    pthread_mutex_lock(&both[k]->mu);
    while (!both[k]->ready)
      pthread_cond_wait(&both[k]->cv, &both[k]->mu);
    pthread_mutex_unlock(&both[k]->mu);
  }

  raw_srv_t raw = {0};
  raw.ctx = zmq_ctx_new();
  raw.echo = zmq_socket(raw.ctx, ZMQ_ROUTER);
  raw.sink = zmq_socket(raw.ctx, ZMQ_ROUTER);
  int hwm = 10000, zero = 0;
  void *socks[2] = {raw.echo, raw.sink};
  for (int k = 0; k < 2; k++) {
    zmq_setsockopt(socks[k], ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(socks[k], ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(socks[k], ZMQ_LINGER, &zero, sizeof zero);
    zmq_bind(socks[k], "tcp://127.0.0.1:*");
  }
  size_t sz = sizeof raw.echo_ep;
  zmq_getsockopt(raw.echo, ZMQ_LAST_ENDPOINT, raw.echo_ep, &sz);
  sz = sizeof raw.sink_ep;
  zmq_getsockopt(raw.sink, ZMQ_LAST_ENDPOINT, raw.sink_ep, &sz);
  pthread_t wth;
  pthread_create(&wth, NULL, raw_srv_main, &raw);
  void *rc_echo = zmq_socket(raw.ctx, ZMQ_DEALER);
  void *rc_sink = zmq_socket(raw.ctx, ZMQ_DEALER);
  zmq_setsockopt(rc_echo, ZMQ_LINGER, &zero, sizeof zero);
  zmq_setsockopt(rc_sink, ZMQ_LINGER, &zero, sizeof zero);
  zmq_connect(rc_echo, raw.echo_ep);
  zmq_connect(rc_sink, raw.sink_ep);

  uv_loop_t loop;
  uv_loop_init(&loop);
  sa_rpc_channel_t *ch = NULL, *chc = NULL;
  sa_rpc_opts_t co;
  sa_rpc_opts_default(&co);
  co.max_msg_bytes = 64u << 20;
  if (sa_rpc_channel_new(&loop, rs.endpoint, &co, &ch) != 0) {
    fprintf(stderr, "bench-rpc: cannot create the channel\n");
    return 1;
  }
  co.curve_public_key = g_cli_pub;
  co.curve_secret_key = g_cli_sec;
  co.curve_server_key = g_srv_pub;
  if (sa_rpc_channel_new(&loop, cs.endpoint, &co, &chc) != 0) {
    fprintf(stderr, "bench-rpc: cannot create the CurveZMQ channel\n");
    return 1;
  }

  uint64_t *lat = malloc(sizeof(uint64_t) * (size_t)(iters > 200 ? iters : 200)); /* warm-ups take 200 */
  /* warm up both paths (connections, allocator) */
  rpc_rtt(&loop, ch, KIB, false, 200, lat);
  rpc_rtt(&loop, ch, MIB, true, 20, lat);
  raw_rtt(rc_echo, KIB, 200, lat);
  raw_rtt(rc_echo, MIB, 20, lat);

  enum { K_MED, K_P99, M_MED, M_P99, TPUT, NM };
  double rv[NM][64], zv[NM][64];
  printf("bench-rpc: tcp loopback, %d runs; per run: %d x 1 KiB, %d x 1 MiB round "
         "trips, %d x 1 MiB one-way with %d in flight\n",
         runs, iters, big_iters, big_iters, INFLIGHT);
  for (int r = 0; r < runs; r++) {
    double a, b;
    rpc_rtt(&loop, ch, KIB, false, iters, lat);
    stats(lat, iters, &a, &b);
    rv[K_MED][r] = a, rv[K_P99][r] = b;
    raw_rtt(rc_echo, KIB, iters, lat);
    stats(lat, iters, &a, &b);
    zv[K_MED][r] = a, zv[K_P99][r] = b;
    rpc_rtt(&loop, ch, MIB, true, big_iters, lat);
    stats(lat, big_iters, &a, &b);
    rv[M_MED][r] = a, rv[M_P99][r] = b;
    raw_rtt(rc_echo, MIB, big_iters, lat);
    stats(lat, big_iters, &a, &b);
    zv[M_MED][r] = a, zv[M_P99][r] = b;
    rv[TPUT][r] = rpc_tput(&loop, ch, MIB, big_iters);
    zv[TPUT][r] = raw_tput(rc_sink, MIB, big_iters);
    printf("  run %d: 1KiB rtt med %.1f/%.1f us  1MiB rtt med %.1f/%.1f us  "
           "tput %.2f/%.2f GB/s (rpc/raw)\n",
           r + 1, rv[K_MED][r], zv[K_MED][r], rv[M_MED][r], zv[M_MED][r],
           rv[TPUT][r], zv[TPUT][r]);
  }
  double R[NM], Z[NM];
  for (int k = 0; k < NM; k++) {
    R[k] = median_d(rv[k], runs);
    Z[k] = median_d(zv[k], runs);
  }
  printf("\n%-34s %12s %12s %8s %8s\n", "measurement (median over runs)", "sa rpc",
         "raw zmq", "ratio", "target");
  printf("%-34s %9.1f us %9.1f us %8.2f %8s\n", "1 KiB body  round trip  median",
         R[K_MED], Z[K_MED], R[K_MED] / Z[K_MED], "<=1.5");
  printf("%-34s %9.1f us %9.1f us %8.2f %8s\n", "1 KiB body  round trip  p99",
         R[K_P99], Z[K_P99], R[K_P99] / Z[K_P99], "");
  printf("%-34s %9.1f us %9.1f us %8.2f %8s\n", "1 MiB tensor round trip median",
         R[M_MED], Z[M_MED], R[M_MED] / Z[M_MED], "<=1.2");
  printf("%-34s %9.1f us %9.1f us %8.2f %8s\n", "1 MiB tensor round trip p99",
         R[M_P99], Z[M_P99], R[M_P99] / Z[M_P99], "");
  printf("%-34s %9.2f GB/s %7.2f GB/s %6.2f %8s\n", "1 MiB one-way, 8 in flight",
         R[TPUT], Z[TPUT], Z[TPUT] / R[TPUT], "<=1.2");
  printf("(ratio: latency rpc/raw, throughput raw/rpc; 1.00 = no overhead)\n");

  /* --- CurveZMQ against plain text, both through core/rpc */
  rpc_rtt(&loop, chc, KIB, false, 200, lat); /* handshake, warm-up */
  rpc_rtt(&loop, chc, MIB, true, 20, lat);
  static const size_t sizes[3] = {KIB, MIB, 16 * MIB};
  static const char *names[3] = {"1 KiB body", "1 MiB tensor", "16 MiB tensor"};
  double cv[3][64], pv[3][64];
  for (int r = 0; r < runs; r++)
    for (int k = 0; k < 3; k++) {
      int n = k == 0 ? iters : k == 1 ? big_iters : (big_iters / 8 < 10 ? 10 : big_iters / 8);
      double a, b;
      rpc_rtt(&loop, ch, sizes[k], k > 0, n, lat);
      stats(lat, n, &a, &b);
      pv[k][r] = a;
      rpc_rtt(&loop, chc, sizes[k], k > 0, n, lat);
      stats(lat, n, &a, &b);
      cv[k][r] = a;
    }
  /* the machine's AEAD: XSalsa20-Poly1305 over 1 MiB, one core */
  uint8_t key[crypto_secretbox_KEYBYTES], nonce[crypto_secretbox_NONCEBYTES] = {0};
  randombytes_buf(key, sizeof key);
  uint8_t *box = malloc(MIB + crypto_secretbox_MACBYTES);
  double aead[64];
  for (int r = 0; r < runs; r++) {
    uint64_t t0 = uv_hrtime();
    for (int i = 0; i < 64; i++)
      crypto_secretbox_easy(box, g_payload, MIB, nonce, key);
    aead[r] = 64.0 * MIB / ((uv_hrtime() - t0) / 1e9) / 1e9;
  }
  free(box);
  double A = median_d(aead, runs);
  printf("\n%-34s %12s %12s %8s\n", "core/rpc round trip (median)", "CurveZMQ", "plain",
         "ratio");
  for (int k = 0; k < 3; k++) {
    double c = median_d(cv[k], runs), p = median_d(pv[k], runs);
    printf("%-34s %9.1f us %9.1f us %8.2f\n", names[k], c, p, c / p);
  }
  printf("machine AEAD (XSalsa20-Poly1305, 1 core): %.2f GB/s = %.0f us per MiB; a round\n"
         "trip seals and opens each MiB twice: >= %.0f us of crypto per MiB echoed\n",
         A, MIB / A / 1e3, 4 * MIB / A / 1e3);

  sa_rpc_channel_destroy(&ch);
  sa_rpc_channel_destroy(&chc);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  uv_async_send(&rs.stop);
  uv_async_send(&cs.stop);
  pthread_join(rth, NULL);
  pthread_join(cth, NULL);
  raw.stop = true;
  pthread_join(wth, NULL);
  zmq_close(rc_echo);
  zmq_close(rc_sink);
  zmq_close(raw.echo);
  zmq_close(raw.sink);
  zmq_ctx_term(raw.ctx);
  free(lat);
  free(g_payload);
  return 0;
}
