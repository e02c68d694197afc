/*
 * sa-coordinator — the cluster's point of control: the registry of encoders
 * and stages, Submit for clients, scheduling of every sequence's steps over
 * the pipeline replicas, voting and streaming. One libuv loop; holds no
 * weights. This file parses options and wires the modules (coord.h says
 * which calls which); it holds no logic of its own.
 */
#include "coord.h"

#include "config.h"
#include "log.h"
#include "memtrim.h"
#include "pipeline.h"
#include "registry.h"
#include "request.h"
#include "rpc.h"
#include "sa_error.h"
#include "sa_time.h"
#include "http.h"
#include "security.h"
#include "submit.h"
#include "wal.h"

#include <sodium.h>
#include <uv.h>

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
  fprintf(f,
          "usage: sa-coordinator --model DIR [--listen ADDR] [options]\n"
          "\n"
          "Runs the sa-cluster coordinator: workers and encoders register with it,\n"
          "clients Submit audio to it (sa-client submit clip.wav).\n"
          "\n"
          "  --model DIR            checkpoint folder (config.json, tokenizer.json);\n"
          "                         the coordinator reads no weights\n"
          "  --listen ADDR          ZeroMQ endpoint (default tcp://127.0.0.1:7700)\n"
          "  --max-tokens-limit N   largest max_tokens a request may ask (default 8192)\n"
          "  --max-chains N         largest n (parallel chains) a request may ask (default 16)\n"
          "  --max-audio-bytes N    largest audio upload (default 64 MiB)\n"
          "  --max-audio-s N        longest audio in seconds (default 1200)\n"
          "  --audio-budget N       audio bytes held for encoding over all requests;\n"
          "                         uploads beyond it get RESOURCE_EXHAUSTED (default\n"
          "                         4 x --max-audio-bytes)\n"
          "  --max-requests N       requests running + queued before RESOURCE_EXHAUSTED\n"
          "                         (default 256; ended ones kept for a resume do not\n"
          "                         count)\n"
          "  --prefill-chunk N      prompt tokens per prefill step (default 128)\n"
          "  --step-timeout-ms N    deadline of one pipeline step (default 60000)\n"
          "  --extra-microbatches N micro-batches in flight per replica beyond one\n"
          "                         per stage (default 0; more hides the return trip\n"
          "                         but shrinks each micro-batch)\n"
          "  --heartbeat-timeout-ms N  mark a worker down after this silence (default 5000)\n"
          "  --forget-after-ms N    forget a worker down this long (default 65000)\n"
          "  --system TEXT          default system prompt (default: none)\n"
          "  --state DIR            journal every request in DIR/journal: a coordinator\n"
          "                         started again on DIR (after a crash or a stop)\n"
          "                         resumes them, and clients resume their streams\n"
          "                         (default: none; nothing survives the process)\n"
          "  --keep-finished-s N    keep a request that ended while no client held its\n"
          "                         stream (after a restart) for Coordinator/Resume\n"
          "                         (default 300)\n"
          "  --http HOST:PORT       serve the OpenAI-compatible HTTP API there (off by\n"
          "                         default; sa-cluster's local topology uses\n"
          "                         127.0.0.1:8000)\n"
          "  --api-key-file FILE    HTTP API keys, one a line (Authorization: Bearer KEY);\n"
          "                         without it HTTP binds only to loopback\n"
          "  --insecure-http        allow HTTP on a non-loopback address without keys\n"
          "  --served-model-name N  the model name HTTP clients use (default: the\n"
          "                         model folder's name)\n"
          "  --http-max-body N      largest HTTP request body in bytes (default: the\n"
          "                         audio limit x 4/3 + 1 MiB, for base64)\n"
          "  --reasoning-split      HTTP: thinking in reasoning_content, the answer in\n"
          "                         content (vLLM's --reasoning-parser convention)\n"
          SA_SEC_USAGE
          "  --endpoint-file PATH   write the bound endpoint there once listening\n"
          "                         (with --listen tcp://127.0.0.1:* for a free port)\n"
          "  --log-level L          error|warn|info|debug (default info; env SA_LOG_LEVEL)\n"
          "  -h, --help             this help\n");
}

/* Everything the coordinator is, wired once in main. */
typedef struct {
  coord_opts_t opts;
  coord_model_t model;
  sa_model_config_t cfg;
  sa_tokenizer_t *tok;
  uv_loop_t *loop;
  sa_rpc_server_t *srv;
  coord_registry_t reg;
  coord_pipeline_t pl;
  coord_requests_t set;
  coord_submit_t sub;
  coord_http_t *http;
  sa_sec_t sec;
  sa_memtrim_t *trim;
  coord_wal_t *wal;
  uv_prepare_t pass; /* once per loop turn, before the loop waits */
  uv_idle_t kick;    /* a turn without sleeping after a pass with work */
  uv_timer_t tick;
  uv_signal_t sigterm, sigint;
} coord_t;

static void on_kick(uv_idle_t *h) { uv_idle_stop(h); }

/* The pass: what callbacks recorded since the last turn is applied here.
 * It may send calls on channels whose own prepare handle already ran this
 * turn; a send can consume the edge of ZeroMQ's edge-triggered fd, so a
 * reply that arrived meanwhile would not wake the poll. After a pass with
 * work the idle handle makes libuv poll with timeout 0: the next turn's
 * prepare handles drain those sockets again before the loop may sleep. */
static void on_pass(uv_prepare_t *h) {
  coord_t *co = h->data;
  if (coord_requests_process(&co->set))
    uv_idle_start(&co->kick, on_kick);
}

static void on_tick(uv_timer_t *t) {
  coord_t *co = t->data;
  coord_registry_check(&co->reg, sa_now_ms());
  coord_requests_touch(&co->set);
}

static void on_signal(uv_signal_t *s, int sig) {
  coord_t *co = s->data;
  SA_LOG_INFO("signal %d: shutting down", sig);
  coord_requests_shutdown(&co->set);
  coord_requests_process(&co->set); /* every client's stream ends now */
  sa_rpc_server_destroy(&co->srv);
  coord_http_stop(&co->http);
  coord_registry_close(&co->reg);
  sa_rpc_auth_destroy(&co->sec.auth);
  sa_memtrim_stop(&co->trim);
  uv_timer_stop(&co->tick);
  uv_close((uv_handle_t *)&co->pass, NULL);
  uv_close((uv_handle_t *)&co->kick, NULL);
  uv_close((uv_handle_t *)&co->tick, NULL);
  uv_close((uv_handle_t *)&co->sigterm, NULL);
  uv_close((uv_handle_t *)&co->sigint, NULL);
}

static long parse_long(const char *s, const char *name, long lo, long hi) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (!*s || *end || errno == ERANGE || v < lo || v > hi) {
    fprintf(stderr, "sa-coordinator: %s must be an integer in [%ld, %ld]\n", name, lo, hi);
    exit(2);
  }
  return v;
}

int main(int argc, char **argv) {
  sa_log_init("sa-coordinator");
  /* a write to an HTTP client that left must fail with EPIPE, not kill the
   * process (ZeroMQ's own sends never raise SIGPIPE) */
  signal(SIGPIPE, SIG_IGN);
  if (sodium_init() < 0) { /* random request ids, API key comparison */
    fprintf(stderr, "sa-coordinator: libsodium could not start\n");
    return 1;
  }
  static coord_t co;
  coord_opts_t *o = &co.opts;
  snprintf(o->listen, sizeof o->listen, "tcp://127.0.0.1:7700");
  o->max_tokens_limit = 8192;
  o->max_chains = 16;
  o->max_audio_bytes = 64u << 20;
  o->max_audio_s = 1200;
  o->max_prompt_bytes = 64 * 1024;
  o->max_requests = 256;
  o->prefill_chunk = 128;
  o->extra_microbatches = 0;
  o->step_timeout_ms = 60000;
  o->heartbeat_timeout_ms = 5000;
  o->encode_timeout_ms = 120000;
  static const struct option longopts[] = {
      {"model", required_argument, 0, 'm'},
      {"listen", required_argument, 0, 'l'},
      {"max-tokens-limit", required_argument, 0, 1},
      {"max-chains", required_argument, 0, 2},
      {"max-audio-bytes", required_argument, 0, 3},
      {"max-audio-s", required_argument, 0, 4},
      {"max-requests", required_argument, 0, 5},
      {"prefill-chunk", required_argument, 0, 6},
      {"step-timeout-ms", required_argument, 0, 7},
      {"heartbeat-timeout-ms", required_argument, 0, 8},
      {"system", required_argument, 0, 9},
      {"log-level", required_argument, 0, 10},
      {"endpoint-file", required_argument, 0, 11},
      {"extra-microbatches", required_argument, 0, 12},
      {"http", required_argument, 0, 13},
      {"api-key-file", required_argument, 0, 14},
      {"insecure-http", no_argument, 0, 15},
      {"served-model-name", required_argument, 0, 16},
      {"http-max-body", required_argument, 0, 17},
      {"reasoning-split", no_argument, 0, 18},
      {"audio-budget", required_argument, 0, 19},
      {"forget-after-ms", required_argument, 0, 20},
      {"state", required_argument, 0, 21},
      {"keep-finished-s", required_argument, 0, 22},
      SA_SEC_LONGOPTS,
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  const char *endpoint_file = NULL;
  coord_http_opts_t ho = {0};
  sa_sec_args_t sa = {0};
  int forget_ms = 65000;
  const char *state_dir = NULL;
  int keep_s = 300;
  long http_max_body = 0;
  int opt;
  while ((opt = getopt_long(argc, argv, "m:l:h", longopts, NULL)) != -1) {
    switch (opt) {
    case 'm': snprintf(o->model_dir, sizeof o->model_dir, "%s", optarg); break;
    case 'l': snprintf(o->listen, sizeof o->listen, "%s", optarg); break;
    case 1: o->max_tokens_limit = (int)parse_long(optarg, "--max-tokens-limit", 1, 1 << 20); break;
    case 2: o->max_chains = (int)parse_long(optarg, "--max-chains", 1, COORD_MAX_CHAINS); break;
    case 3: o->max_audio_bytes = (size_t)parse_long(optarg, "--max-audio-bytes", 1, 1L << 32); break;
    case 4: o->max_audio_s = (int)parse_long(optarg, "--max-audio-s", 1, 86400); break;
    case 5: o->max_requests = (int)parse_long(optarg, "--max-requests", 1, 1 << 20); break;
    case 6: o->prefill_chunk = (int)parse_long(optarg, "--prefill-chunk", 1, 1 << 16); break;
    case 7: o->step_timeout_ms = (int)parse_long(optarg, "--step-timeout-ms", 10, 3600000); break;
    case 8: o->heartbeat_timeout_ms = (int)parse_long(optarg, "--heartbeat-timeout-ms", 100, 3600000); break;
    case 9: snprintf(o->default_system, sizeof o->default_system, "%s", optarg); break;
    case 10: {
      sa_log_level_t lv;
      if (sa_log_parse_level(optarg, &lv)) {
        fprintf(stderr, "sa-coordinator: bad --log-level %s\n", optarg);
        return 2;
      }
      sa_log_set_level(lv);
      break;
    }
    case 11: endpoint_file = optarg; break;
    case 12: o->extra_microbatches = (int)parse_long(optarg, "--extra-microbatches", 0, 64); break;
    case 13: ho.listen = optarg; break;
    case 14: ho.api_key_file = optarg; break;
    case 15: ho.insecure = true; break;
    case 16: ho.served_model_name = optarg; break;
    case 17: http_max_body = parse_long(optarg, "--http-max-body", 1024, 1L << 34); break;
    case 18: ho.reasoning_split = true; break;
    case 19: o->audio_budget = (size_t)parse_long(optarg, "--audio-budget", 1, 1L << 40); break;
    case 20: forget_ms = (int)parse_long(optarg, "--forget-after-ms", 100, 86400000); break;
    case 21: state_dir = optarg; break;
    case 22: keep_s = (int)parse_long(optarg, "--keep-finished-s", 0, 86400 * 7); break;
    case 'h': usage(stdout); return 0;
    default:
      if (sa_sec_args_take(&sa, opt, optarg))
        break;
      usage(stderr);
      return 2;
    }
  }
  if (!o->audio_budget)
    o->audio_budget = 4 * o->max_audio_bytes;
  if (o->audio_budget < o->max_audio_bytes) {
    fprintf(stderr, "sa-coordinator: --audio-budget must be at least --max-audio-bytes\n");
    return 2;
  }
  if (!o->model_dir[0]) {
    fprintf(stderr, "sa-coordinator: --model DIR is required\n");
    usage(stderr);
    return 2;
  }
  char err[512];
  if (sa_config_load(o->model_dir, &co.cfg, err, sizeof err)) {
    fprintf(stderr, "sa-coordinator: %s\n", err);
    return 1;
  }
  co.tok = sa_tokenizer_load(o->model_dir, err, sizeof err);
  if (!co.tok) {
    fprintf(stderr, "sa-coordinator: tokenizer: %s\n", err);
    return 1;
  }
  coord_model_t *m = &co.model;
  m->hidden_size = co.cfg.hidden_size;
  m->num_layers = co.cfg.num_hidden_layers;
  m->max_position_embeddings = co.cfg.max_position_embeddings;
  m->tok_eot = sa_tokenizer_token_id(co.tok, "<|EOT|>");
  m->tok_think_end = sa_tokenizer_token_id(co.tok, "</think>");
  m->tok_audio_patch = sa_tokenizer_token_id(co.tok, "<audio_patch>");
  if (m->tok_eot < 0 || m->tok_audio_patch < 0) {
    fprintf(stderr, "sa-coordinator: the tokenizer lacks <|EOT|> or <audio_patch>\n");
    return 1;
  }
  if (sa_sec_open_args(&co.sec, &sa, SA_ROLE_COORDINATOR, err, sizeof err) ||
      sa_sec_check_bind(&co.sec, o->listen, sa.allow_insecure_network, err, sizeof err)) {
    fprintf(stderr, "sa-coordinator: %s\n", err);
    return 2;
  }
  co.loop = uv_default_loop();
  int rc = sa_sec_serve(&co.sec, co.loop);
  if (rc) {
    fprintf(stderr, "sa-coordinator: authenticator: %s\n", sa_strerror(rc));
    return 1;
  }
  sa_rpc_opts_t ro;
  char domain[32];
  sa_rpc_opts_default(&ro);
  ro.max_msg_bytes = o->max_audio_bytes + (1u << 20);
  sa_sec_server_opts(&co.sec, &ro,
                     SA_ROLE_CLIENT | SA_ROLE_OPERATOR | SA_ROLE_STAGE | SA_ROLE_ENCODER, domain);
  rc = sa_rpc_server_new(co.loop, &ro, &co.srv);
  if (rc == 0)
    rc = sa_rpc_server_bind(co.srv, o->listen);
  if (rc) {
    fprintf(stderr, "sa-coordinator: cannot listen on %s: %s\n", o->listen, sa_strerror(rc));
    return 1;
  }
  if (endpoint_file) {
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s.tmp", endpoint_file);
    FILE *f = fopen(tmp, "w");
    if (!f || fprintf(f, "%s\n", sa_rpc_server_endpoint(co.srv)) < 0 || fclose(f) ||
        rename(tmp, endpoint_file)) {
      fprintf(stderr, "sa-coordinator: cannot write %s\n", endpoint_file);
      return 1;
    }
  }
  /* bottom up: registry, pipeline, requests, client RPCs */
  coord_registry_init(&co.reg, co.loop, m->num_layers, m->hidden_size, o->heartbeat_timeout_ms,
                      &coord_requests_registry_cbs, &co.set);
  coord_pipeline_init(&co.pl, o, m, &co.reg, &coord_requests_pipeline_cbs, &co.set);
  coord_requests_init(&co.set, o, m, co.tok, &co.reg, &coord_pipeline_ops, &co.pl);
  coord_submit_init(&co.sub, o, &co.set, &co.reg, &co.pl);
  co.reg.sec = &co.sec;
  co.reg.max_audio_s = o->max_audio_s;
  co.reg.forget_ms = forget_ms;
  co.sub.sec = &co.sec;
  coord_registry_serve(&co.reg, co.srv);
  coord_submit_serve(&co.sub, co.srv);
  static const sa_sec_rule_t rules[] = {
      {"Coordinator/Submit", SA_ROLE_CLIENT | SA_ROLE_OPERATOR},
      {"Coordinator/Resume", SA_ROLE_CLIENT | SA_ROLE_OPERATOR},
      {"Coordinator/Cancel", SA_ROLE_CLIENT | SA_ROLE_OPERATOR},
      {"Coordinator/Status", SA_ROLE_CLIENT | SA_ROLE_OPERATOR},
      /* an operator drains anything; a stage or encoder only itself */
      {"Coordinator/Drain", SA_ROLE_OPERATOR | SA_ROLE_STAGE | SA_ROLE_ENCODER},
      {"Coordinator/Register", SA_ROLE_STAGE | SA_ROLE_ENCODER},
      {"Coordinator/Heartbeat", SA_ROLE_STAGE | SA_ROLE_ENCODER},
  };
  sa_sec_guard(co.srv, &co.sec, rules, (int)(sizeof rules / sizeof rules[0]));
  ho.sec = &co.sec;
  if (ho.listen) {
    char model_name[256];
    if (!ho.served_model_name) { /* the model folder's name */
      sa_config_model_name(o->model_dir, model_name, sizeof model_name);
      ho.served_model_name = model_name;
    }
    ho.max_body_bytes = http_max_body ? (size_t)http_max_body
                                      : o->max_audio_bytes / 3 * 4 + 4 + (1u << 20);
    char herr[512];
    if (coord_http_start(co.loop, &ho, o, m, sa_tokenizer_vocab_size(co.tok), &co.set, &co.reg,
                         &co.pl, &co.http, herr, sizeof herr)) {
      fprintf(stderr, "sa-coordinator: %s\n", herr);
      return 1;
    }
    printf("http %s\n", coord_http_url(co.http));
    fflush(stdout);
    SA_LOG_INFO("HTTP API on %s (model \"%s\")", coord_http_url(co.http),
                ho.served_model_name);
  }
  co.set.keep_ms = keep_s * 1000;
  if (state_dir) { /* before the loop runs: no request arrives meanwhile */
    int resumed = 0, kept = 0;
    if (coord_wal_open(state_dir, &co.wal, err, sizeof err) ||
        coord_requests_recover(&co.set, co.wal, keep_s * 1000, &resumed, &kept, err,
                               sizeof err)) {
      fprintf(stderr, "sa-coordinator: --state %s: %s\n", state_dir, err);
      return 1;
    }
    SA_LOG_INFO("state in %s: %d request(s) resume, %d ended kept", state_dir, resumed, kept);
  }
  uv_prepare_init(co.loop, &co.pass);
  co.pass.data = &co;
  uv_prepare_start(&co.pass, on_pass);
  uv_idle_init(co.loop, &co.kick);
  uv_unref((uv_handle_t *)&co.kick);
  uv_timer_init(co.loop, &co.tick);
  co.tick.data = &co;
  uv_timer_start(&co.tick, on_tick, 500, 500);
  co.trim = sa_memtrim_start(co.loop, 2000); /* RSS comes down after bursts */
  uv_signal_init(co.loop, &co.sigterm);
  uv_signal_init(co.loop, &co.sigint);
  co.sigterm.data = co.sigint.data = &co;
  uv_signal_start(&co.sigterm, on_signal, SIGTERM);
  uv_signal_start(&co.sigint, on_signal, SIGINT);
  SA_LOG_INFO("listening on %s (%s); model %s (%d layers, hidden %d)",
              sa_rpc_server_endpoint(co.srv),
              co.sec.insecure ? "INSECURE: plain text, no authentication" : "CurveZMQ",
              o->model_dir, co.cfg.num_hidden_layers, co.cfg.hidden_size);
  uv_run(co.loop, UV_RUN_DEFAULT);
  coord_requests_close(&co.set);
  coord_wal_close(&co.wal);
  sa_sec_close(&co.sec);
  sa_tokenizer_destroy(&co.tok);
  uv_loop_close(co.loop);
  return 0;
}
