/*
 * sa-encoder — the encoder node: serves Encoder/Encode (audio bytes ->
 * embedding rows) over core/rpc, optionally registered with a coordinator.
 * The command line and process lifetime only; the work is in
 * encoder_service.c; membership is core's registrar.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "audio_encoder.h"
#include "config.h"
#include "encoder_service.h"
#include "kernels.h"
#include "log.h"
#include "memtrim.h"
#include "registrar.h"
#include "rpc.h"
#include "safetensors.h"
#include "security.h"

static void usage(FILE *f) {
  fprintf(f,
"usage: sa-encoder --model DIR --listen ENDPOINT [options]\n"
"\n"
"Serves Encoder/Encode: any audio container/codec in, one embedding row per\n"
"audio token out (12.5 Hz, 25 s chunks), as a tensor frame [tokens, hidden].\n"
"\n"
"  --model DIR            checkpoint folder (config.json + safetensors)\n"
"  --listen ENDPOINT      ZeroMQ endpoint to bind, e.g. tcp://127.0.0.1:7100\n"
"                         (tcp://127.0.0.1:* picks a free port); the bound\n"
"                         endpoint is printed on stdout as 'listening ENDPOINT'\n"
"  --threads N            encode worker threads (default 1): decode and mel\n"
"                         run in parallel, the encoder runs one at a time\n"
"  --queue N              requests waiting beyond the busy workers before\n"
"                         new ones get RESOURCE_EXHAUSTED (default 16)\n"
"  --device SPEC          backend: cpu (default), ref, cuda or cuda:N\n"
"  --backend-threads N    CPU backend compute threads (default 0 = per core)\n"
"  --max-audio-s S        longest audio accepted in seconds (default 1200)\n"
"  --max-bytes N          largest audio payload in bytes (default 64 MiB)\n"
"  --coordinator ADDR     register with and heartbeat to this coordinator;\n"
"                         when unreachable, log and retry, keep serving\n"
"  --advertise ADDR       endpoint sent to the coordinator (default: bound)\n"
"  --node-id ID           node id sent to the coordinator (default host:pid)\n"
"  --test-gate FIFO       tests only: each request waits for one byte on FIFO\n"
SA_SEC_USAGE
"  -h, --help             this text\n");
}

static int parse_int(const char *s, long lo, long hi, int *out) {
  char *end = NULL;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || !end || *end || v < lo || v > hi)
    return -1;
  *out = (int)v;
  return 0;
}

typedef struct {
  uv_loop_t *loop;
  uv_signal_t sigint, sigterm;
  sa_rpc_server_t *srv;
  sa_encoder_service_t *svc;
  sa_registrar_t *reg;
  sa_sec_t sec;
  sa_memtrim_t *trim;
  uv_timer_t drain_timer;
  bool draining, stopped;
  int drain_ticks;
} app_t;

static void stop_now(app_t *a) {
  if (a->stopped) /* e.g. the drain call's callback, cancelled by the stop itself */
    return;
  a->stopped = true;
  sa_registrar_stop(&a->reg);
  sa_encoder_service_stop(&a->svc);
  sa_rpc_server_destroy(&a->srv);
  sa_rpc_auth_destroy(&a->sec.auth);
  sa_memtrim_stop(&a->trim);
  uv_close((uv_handle_t *)&a->drain_timer, NULL);
  uv_close((uv_handle_t *)&a->sigint, NULL);
  uv_close((uv_handle_t *)&a->sigterm, NULL);
}

/* While draining: stop once nothing is queued or running (audio already
 * sent here finishes), or after 30 s. */
static void on_drain_tick(uv_timer_t *t) {
  app_t *a = t->data;
  if (sa_encoder_service_depth(a->svc) == 0 || ++a->drain_ticks >= 150) {
    SA_LOG_INFO("drained (%d requests left); stopping", sa_encoder_service_depth(a->svc));
    uv_timer_stop(t);
    stop_now(a);
  }
}

static void on_drain_answer(void *user, bool ok) {
  app_t *a = user;
  if (!ok) {
    uv_timer_stop(&a->drain_timer);
    stop_now(a);
  }
}

/* SIGTERM: drain first (no new audio comes here), then stop; a second
 * signal, SIGINT, or no coordinator: stop at once. */
static void on_signal(uv_signal_t *h, int signum) {
  app_t *a = h->data;
  if (signum == SIGTERM && !a->draining && sa_registrar_registered(a->reg) &&
      sa_registrar_drain(a->reg, on_drain_answer, a) == 0) {
    SA_LOG_INFO("signal %d: draining, then stopping", signum);
    a->draining = true;
    uv_timer_start(&a->drain_timer, on_drain_tick, 200, 200);
    return;
  }
  SA_LOG_INFO("signal %d: shutting down", signum);
  uv_timer_stop(&a->drain_timer);
  stop_now(a);
}

/* The encoder's figures for each heartbeat. */
static void report_load(void *user, sa_registrar_load_t *out) {
  sa_encoder_service_t *svc = user;
  out->load = sa_encoder_service_load(svc);
  out->queue_depth = sa_encoder_service_depth(svc);
}

int main(int argc, char **argv) {
  const char *model = NULL, *listen = NULL, *device = "cpu",
             *coordinator = NULL, *advertise = NULL, *node_id = NULL,
             *gate = NULL;
  int threads = 1, queue = 16, backend_threads = 0, max_audio_s = 1200;
  long max_bytes = 64L << 20;
  sa_sec_args_t sa = {0};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    int bad = 0;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      usage(stdout);
      return 0;
    }
#define OPT(name) (!strcmp(a, (name)) && (v ? (i++, 1) : (bad = 2, 0)))
    if (OPT("--model"))
      model = v;
    else if (OPT("--listen"))
      listen = v;
    else if (OPT("--device"))
      device = v;
    else if (OPT("--coordinator"))
      coordinator = v;
    else if (OPT("--advertise"))
      advertise = v;
    else if (OPT("--node-id"))
      node_id = v;
    else if (OPT("--test-gate"))
      gate = v;
    else if (OPT("--key"))
      sa.key = v;
    else if (OPT("--allow"))
      sa.allow = v;
    else if (!strcmp(a, "--insecure"))
      sa.insecure = true;
    else if (!strcmp(a, "--allow-insecure-network"))
      sa.allow_insecure_network = true;
    else if (OPT("--threads"))
      bad = parse_int(v, 1, 256, &threads);
    else if (OPT("--queue"))
      bad = parse_int(v, 0, 1 << 20, &queue);
    else if (OPT("--backend-threads"))
      bad = parse_int(v, 0, 1024, &backend_threads);
    else if (OPT("--max-audio-s"))
      bad = parse_int(v, 1, 24 * 3600, &max_audio_s);
    else if (OPT("--max-bytes")) {
      int mb;
      bad = parse_int(v, 1, INT_MAX, &mb);
      max_bytes = mb;
    } else if (!bad) {
      fprintf(stderr, "sa-encoder: unknown option '%s' (see --help)\n", a);
      return 2;
    }
#undef OPT
    if (bad) {
      fprintf(stderr, "sa-encoder: %s for %s\n",
              bad == 2 ? "missing value" : "bad value", a);
      return 2;
    }
  }
  if (!model || !listen) {
    fprintf(stderr, "sa-encoder: --model and --listen are required\n");
    usage(stderr);
    return 2;
  }
  sa_log_init("sa-encoder");
  signal(SIGPIPE, SIG_IGN);

  char err[512];
  int rc, status = 1;
  app_t app = {0};
  sa_rpc_opts_t co;
  sa_rpc_opts_default(&co);
  co.max_msg_bytes = 1u << 20; /* Register and Heartbeat replies */
  if (sa_sec_open_args(&app.sec, &sa, SA_ROLE_ENCODER, err, sizeof err) ||
      sa_sec_check_bind(&app.sec, listen, sa.allow_insecure_network, err, sizeof err) ||
      (coordinator && sa_sec_coordinator_opts(&app.sec, &co, err, sizeof err))) {
    fprintf(stderr, "sa-encoder: %s\n", err);
    return 2;
  }
  sa_model_config_t cfg;
  sa_st_t *st = NULL;
  sa_backend_t *be = NULL;
  sa_audio_encoder_t *enc = NULL;
  uv_loop_t loop;
  bool loop_init = false;

  if ((rc = sa_config_load(model, &cfg, err, sizeof err)) != 0) {
    SA_LOG_ERROR("%s", err);
    goto out;
  }
  if (!cfg.audio.present) {
    SA_LOG_ERROR("%s: config.json has no audio_encoder_config", model);
    goto out;
  }
  if ((rc = sa_st_open(model, NULL, NULL, &st, err, sizeof err)) != 0) {
    SA_LOG_ERROR("%s", err);
    goto out;
  }
  if (!(be = sa_backend_new(device, backend_threads)))
    goto out;
  if ((rc = sa_audio_encoder_new(be, &cfg, st, &enc, err, sizeof err)) != 0) {
    SA_LOG_ERROR("%s", err);
    goto out;
  }
  sa_st_close(&st); /* weights live on the backend now */

  uv_loop_init(&loop);
  loop_init = true;
  app.loop = &loop;
  sa_rpc_opts_t ro;
  sa_rpc_opts_default(&ro);
  /* Let oversize audio reach our own check (INVALID_ARGUMENT with a reason);
   * far larger messages are refused by the rpc layer. */
  ro.max_msg_bytes = (size_t)max_bytes * 2 + (1u << 20);
  char domain[32];
  sa_sec_server_opts(&app.sec, &ro, SA_ROLE_COORDINATOR, domain);
  if ((rc = sa_sec_serve(&app.sec, &loop)) != 0 ||
      (rc = sa_rpc_server_new(&loop, &ro, &app.srv)) != 0 ||
      (rc = sa_rpc_server_bind(app.srv, listen)) != 0) {
    SA_LOG_ERROR("cannot serve on %s: %s", listen, sa_strerror(rc));
    goto out;
  }
  sa_encoder_service_opts_t so = {.threads = threads,
                                  .queue = queue,
                                  .max_bytes = (size_t)max_bytes,
                                  .max_seconds = max_audio_s,
                                  .test_gate = gate};
  if ((rc = sa_encoder_service_start(&loop, app.srv, enc, &so, &app.svc)) !=
      0) {
    SA_LOG_ERROR("cannot start the encode service: %s", sa_strerror(rc));
    goto out;
  }
  static const sa_sec_rule_t rules[] = {{"Encoder/Encode", SA_ROLE_COORDINATOR}};
  sa_sec_guard(app.srv, &app.sec, rules, 1);
  const char *bound = sa_rpc_server_endpoint(app.srv);
  if (coordinator) {
    char idbuf[300];
    if (!node_id) {
      char host[256] = "localhost";
      gethostname(host, sizeof host - 1);
      snprintf(idbuf, sizeof idbuf, "%s:%d", host, (int)getpid());
      node_id = idbuf;
    }
    sa_registrar_opts_t go = {.coordinator = coordinator,
                              .node_id = node_id,
                              .address = advertise ? advertise : bound,
                              .model_id = model,
                              .backend = device,
                              .hidden_size = sa_audio_encoder_hidden(enc),
                              .max_audio_s = max_audio_s};
    go.rpc = &co;
    if ((rc = sa_registrar_start(&loop, &go, report_load, app.svc, &app.reg)) != 0) {
      SA_LOG_ERROR("cannot start coordinator registration: %s",
                   sa_strerror(rc));
      goto out;
    }
  }
  uv_signal_init(&loop, &app.sigint);
  uv_signal_init(&loop, &app.sigterm);
  app.sigint.data = app.sigterm.data = &app;
  uv_signal_start(&app.sigint, on_signal, SIGINT);
  uv_signal_start(&app.sigterm, on_signal, SIGTERM);
  uv_timer_init(&loop, &app.drain_timer);
  app.drain_timer.data = &app;
  app.trim = sa_memtrim_start(&loop, 2000);

  printf("listening %s\n", bound);
  fflush(stdout);
  SA_LOG_INFO("serving Encoder/Encode on %s (%s, %d workers, queue %d, "
              "hidden %d)", bound, device, threads, queue,
              sa_audio_encoder_hidden(enc));
  uv_run(&loop, UV_RUN_DEFAULT);
  status = 0;
out:
  if (loop_init) {
    sa_registrar_stop(&app.reg);
    sa_encoder_service_stop(&app.svc);
    sa_rpc_server_destroy(&app.srv);
    sa_rpc_auth_destroy(&app.sec.auth);
    sa_memtrim_stop(&app.trim);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0)
      SA_LOG_WARN("loop closed with handles still open");
  }
  sa_audio_encoder_destroy(&enc);
  sa_backend_destroy(&be);
  sa_st_close(&st);
  sa_sec_close(&app.sec);
  return status;
}
